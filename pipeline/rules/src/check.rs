//! Planning rules against the real table schemas, without data.
//!
//! `kairos rules check` and server start-up plan every rule's SQL in a
//! DataFusion session whose tables are empty but carry the lake's exact
//! schemas, so a misspelt column, a type error or a missing output column
//! is found before any event arrives.

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;

use crate::plans::{CLOCK_CALL, Plans};

use crate::rule::{Rule, RuleError};

pub use crate::plans::rule_tables;

/// Output columns every rule must return, all strings.
pub const REQUIRED_OUTPUT: [&str; 2] = ["customer_id", "dedupe_key"];

/// A session with every rule table registered and the rule clock: the
/// engine's own (see [`crate::plans`]), so a rule that checks is a rule
/// the engine can plan.
pub fn planning_session() -> datafusion::error::Result<SessionContext> {
    Ok(Plans::new()?.into_session())
}

/// Plans `rule` in `ctx` and checks its output columns; returns their names
/// (what the rule's templates may use).
pub async fn plan(ctx: &SessionContext, rule: &Rule) -> Result<Vec<String>, RuleError> {
    let sql = rule.render_sql(&Default::default(), CLOCK_CALL)?;
    let df = ctx
        .sql(&sql)
        .await
        .map_err(|e| sql_error(rule, &e.to_string()))?;
    let schema = df.schema();
    for col in REQUIRED_OUTPUT {
        match schema.fields().iter().find(|f| f.name() == col) {
            None => {
                return Err(RuleError {
                    file: rule.file.clone(),
                    line: rule.sql_line,
                    message: format!(
                        "the SELECT must return a `{col}` column (alias one with `AS {col}`)"
                    ),
                });
            }
            Some(f)
                if !matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                return Err(RuleError {
                    file: rule.file.clone(),
                    line: rule.sql_line,
                    message: format!(
                        "`{col}` is {}, not a string; cast it: CAST(... AS VARCHAR) AS {col}",
                        f.data_type()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if rule.cadence != crate::rule::Cadence::EveryBatch {
        let due = schema.fields().iter().find(|f| f.name() == "due_at");
        if !due.is_some_and(|f| matches!(f.data_type(), DataType::Timestamp(..))) {
            return Err(RuleError {
                file: rule.file.clone(),
                line: rule.sql_line,
                message: "a sweep (cadence other than `batch`) must return `due_at`, the timestamp its condition became true (e.g. `added_at + ${delay} AS due_at`), so Kairos can tell a new deadline from one that passed before the rule went live".into(),
            });
        }
    }
    Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
}

/// Maps a DataFusion error to a file line: the parser's `Line: N` (relative
/// to the SQL body), else the first body line mentioning the unknown name the
/// planner complains about, else the body's first line.
fn sql_error(rule: &Rule, message: &str) -> RuleError {
    let parser_line = message
        .split("Line: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    let named = ["No field named ", "table '", "Invalid function '"]
        .iter()
        .find_map(|p| {
            let rest = message.split(p).nth(1)?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let name = name
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_lowercase();
            (!name.is_empty()).then_some(name)
        });
    let mentioned = named.and_then(|n| {
        rule.sql
            .lines()
            .position(|l| l.to_lowercase().contains(n.as_str()))
            .map(|i| i + 1)
    });
    let line = parser_line
        .or(mentioned)
        .map_or(rule.sql_line, |n| rule.sql_line + n.saturating_sub(1));
    let first = message.lines().next().unwrap_or(message);
    RuleError {
        file: rule.file.clone(),
        line,
        message: format!("SQL: {first}"),
    }
}

/// Loads and plans every rule in `dir`.
pub async fn check_dir(dir: &std::path::Path) -> (Vec<Rule>, Vec<RuleError>) {
    let (rules, mut errors) = crate::rule::load_dir(dir);
    let ctx = match planning_session() {
        Ok(c) => c,
        Err(e) => {
            errors.push(RuleError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot start the SQL planner: {e}"),
            });
            return (Vec::new(), errors);
        }
    };
    let mut good = Vec::new();
    for rule in rules {
        match plan(&ctx, &rule).await {
            Ok(_) => good.push(rule),
            Err(e) => errors.push(e),
        }
    }
    (good, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rule(name: &str, body: &str) -> Rule {
        let text = format!(
            "-- name: {name}\n-- description: t\n-- channel: email\n-- param delay: 1h\n{body}"
        );
        crate::rule::parse(&PathBuf::from(format!("sql/{name}.sql")), &text)
            .expect("header is valid")
    }

    async fn check(body: &str) -> Result<(), RuleError> {
        plan(&planning_session().expect("session"), &rule("r", body))
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn a_valid_rule_plans() {
        check("SELECT customer_id, event_id AS dedupe_key, revenue\nFROM batch_events\nWHERE event_type = 'purchase' AND timestamp > ${now} - ${delay}")
            .await
            .expect("plans");
        check("SELECT c.customer_id, c.new_value AS dedupe_key FROM profile_changes c WHERE c.trait = 'loyalty_tier'")
            .await
            .expect("plans");
    }

    #[tokio::test]
    async fn unknown_column_is_reported_on_its_line() {
        let e = check(
            "SELECT customer_id, event_id AS dedupe_key\nFROM batch_events\nWHERE revnue > 10",
        )
        .await
        .expect_err("typo");
        assert!(e.message.contains("revnue"), "{e}");
        assert_eq!(e.line, 7, "the typo's own line: {e}");
    }

    #[tokio::test]
    async fn missing_or_mistyped_outputs_are_reported() {
        let e = check("SELECT customer_id FROM batch_events")
            .await
            .expect_err("no dedupe_key");
        assert!(e.message.contains("dedupe_key"), "{e}");
        let e = check("SELECT customer_id, quantity AS dedupe_key FROM batch_events")
            .await
            .expect_err("int key");
        assert!(e.message.contains("CAST"), "{e}");
    }

    #[tokio::test]
    async fn unknown_table_and_syntax_errors_are_reported() {
        assert!(
            check("SELECT customer_id, 'x' AS dedupe_key FROM basket")
                .await
                .expect_err("no table")
                .message
                .contains("basket")
        );
        let e = check("SELECT customer_id, 'x' AS dedupe_key\nFROM batch_events\nWHERE AND")
            .await
            .expect_err("syntax");
        assert_eq!(e.line, 7, "the line of the name the planner rejects: {e}");
    }
}
