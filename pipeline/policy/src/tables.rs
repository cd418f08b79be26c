//! The policy stage's tables, `sends/` and `assignments/`, and the stage
//! as a step of each durable batch.
//!
//! Both tables are written per batch (`<table>/date=…/hour=…/b<batch>.parquet`)
//! by the rules runner, so they are exactly-once like `firings/`. On start
//! the stage rebuilds its memory (assignments, message history, pending
//! messages) from them.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use kairos_experiments::{Arm, Assignment};
use kairos_rules::runner::{BatchStage, Outputs};
use kairos_rules::state::State;
use kairos_rules::{Rule, TickReport};
use kairos_storage::tables::read_parquet;
use kairos_storage::{DataRoot, StorageError, columns};

use crate::consent::Channel;
use crate::stage::{Decision, Fired, RuleMeta, SendRow, Stage, StepMeta};

/// The decisions of one batch, as the policy stage passes them on to
/// messaging (the same rows it writes to `sends/`).
pub struct Decided(pub Vec<SendRow>);

/// `sends/`: one row per decision.
pub const SENDS: &str = "sends";
/// `assignments/`: one row per (experiment, customer), when first assigned.
pub const ASSIGNMENTS: &str = "assignments";

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

/// `sends/` schema.
pub static SENDS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("send_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("dedupe_key", DataType::Utf8, false),
        Field::new("arm", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("decision", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        ts("send_at", true),
        ts("decided_at", false),
    ]))
});

/// `assignments/` schema.
pub static ASSIGNMENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("experiment", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("arm", DataType::Utf8, false),
        ts("assigned_at", false),
        Field::new("firing_key", DataType::Utf8, false),
    ]))
});

fn strings<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn times(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        v.collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

/// Rows of `sends/`, sorted by customer.
pub fn sends_batch(rows: &[SendRow]) -> Result<RecordBatch, ArrowError> {
    let mut r: Vec<&SendRow> = rows.iter().collect();
    r.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    let cols = vec![
        strings(r.iter().map(|x| Some(x.send_id.as_str()))),
        strings(r.iter().map(|x| Some(x.rule.as_str()))),
        Arc::new(r.iter().map(|x| i64::from(x.step)).collect::<Int64Array>()) as ArrayRef,
        strings(r.iter().map(|x| Some(x.customer_id.as_str()))),
        strings(r.iter().map(|x| Some(x.dedupe_key.as_str()))),
        strings(r.iter().map(|x| Some(x.arm.as_str()))),
        strings(r.iter().map(|x| x.variant.as_deref())),
        strings(r.iter().map(|x| x.channel.map(Channel::as_str))),
        strings(r.iter().map(|x| Some(x.decision.as_str()))),
        strings(r.iter().map(|x| x.reason.as_deref())),
        times(r.iter().map(|x| x.send_at)),
        times(r.iter().map(|x| Some(x.decided_at))),
    ];
    RecordBatch::try_new(SENDS_SCHEMA.clone(), cols)
}

/// Rows of `assignments/` for the decisions that made a new assignment.
pub fn assignments_batch(rows: &[SendRow]) -> Result<RecordBatch, ArrowError> {
    let mut r: Vec<&SendRow> = rows.iter().filter(|x| x.new_assignment).collect();
    r.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    let cols = vec![
        strings(r.iter().map(|x| Some(x.rule.as_str()))),
        strings(r.iter().map(|x| x.variant.as_deref())),
        strings(r.iter().map(|x| Some(x.customer_id.as_str()))),
        strings(r.iter().map(|x| Some(x.arm.as_str()))),
        times(r.iter().map(|x| Some(x.decided_at))),
        strings(r.iter().map(|x| Some(x.dedupe_key.as_str()))),
    ];
    RecordBatch::try_new(ASSIGNMENTS_SCHEMA.clone(), cols)
}

fn unknown(table: &str, column: &str, value: &str) -> StorageError {
    StorageError::Schema {
        table: table.into(),
        reason: format!("unknown {column} {value:?}"),
    }
}

fn arm(table: &str, s: &str) -> Result<Arm, StorageError> {
    [Arm::Holdout, Arm::Scheduled, Arm::Triggered]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| unknown(table, "arm", s))
}

fn decision(s: &str) -> Result<Decision, StorageError> {
    [
        Decision::Send,
        Decision::Ghost,
        Decision::Suppressed,
        Decision::Cancelled,
    ]
    .into_iter()
    .find(|d| d.as_str() == s)
    .ok_or_else(|| unknown(SENDS, "decision", s))
}

/// Rebuilds `stage` from `sends/` and `assignments/`, leaving out the files
/// of batch `skip` (being redone).
pub async fn restore(
    stage: &mut Stage,
    root: &DataRoot,
    skip: Option<&str>,
    released_by: Option<i64>,
) -> Result<(), StorageError> {
    for path in kairos_rules::firings::batch_files(root, ASSIGNMENTS, skip).await? {
        for b in read_parquet(root, &path, None).await? {
            let s = |n: &str| columns::strings(&b, ASSIGNMENTS, n);
            let (e, v, c, a) = (
                s("experiment")?,
                s("variant")?,
                s("customer_id")?,
                s("arm")?,
            );
            for i in 0..b.num_rows() {
                stage.remember_assignment(
                    e.value(i),
                    c.value(i),
                    Assignment {
                        arm: arm(ASSIGNMENTS, a.value(i))?,
                        variant: v.is_valid(i).then(|| v.value(i).to_string()),
                        bucket: 0,
                    },
                );
            }
        }
    }
    stage.restore(read_sends(root, skip).await?, released_by);
    Ok(())
}

/// Every `sends/` row in decision order, leaving out the file of batch
/// `skip` (being redone).
pub async fn read_sends(root: &DataRoot, skip: Option<&str>) -> Result<Vec<SendRow>, StorageError> {
    let paths = kairos_rules::firings::batch_files(root, SENDS, skip).await?;
    let mut rows = read_send_files(root, &paths).await?;
    rows.sort_by_key(|r| r.decided_at);
    Ok(rows)
}

/// The rows of batch `batch`'s `sends/` file; none when it was not written.
pub async fn read_batch_sends(root: &DataRoot, batch: &str) -> Result<Vec<SendRow>, StorageError> {
    let name = format!("{batch}.parquet");
    let mut paths = kairos_rules::firings::batch_files(root, SENDS, None).await?;
    paths.retain(|p| p.filename() == Some(name.as_str()));
    read_send_files(root, &paths).await
}

async fn read_send_files(
    root: &DataRoot,
    paths: &[object_store::path::Path],
) -> Result<Vec<SendRow>, StorageError> {
    let mut rows = Vec::new();
    for path in paths {
        for b in read_parquet(root, path, None).await? {
            rows.extend(send_rows(&b)?);
        }
    }
    Ok(rows)
}

/// The rows of one `sends/` record batch (as written, or as read back).
pub fn send_rows(b: &RecordBatch) -> Result<Vec<SendRow>, StorageError> {
    let s = |n: &str| columns::strings(b, SENDS, n);
    let t = |n: &str| columns::timestamps_us(b, SENDS, n);
    let (id, rule, cust, key, a, v, ch, d, reason) = (
        s("send_id")?,
        s("rule")?,
        s("customer_id")?,
        s("dedupe_key")?,
        s("arm")?,
        s("variant")?,
        s("channel")?,
        s("decision")?,
        s("reason")?,
    );
    let step = columns::int64s(b, SENDS, "step")?;
    let (at, decided) = (t("send_at")?, t("decided_at")?);
    (0..b.num_rows())
        .map(|i| {
            let opt = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
            let channel = match opt(ch) {
                Some(name) => {
                    Some(Channel::parse(&name).ok_or_else(|| unknown(SENDS, "channel", &name))?)
                }
                None => None,
            };
            let decision = decision(d.value(i))?;
            let send_at = at.is_valid(i).then(|| at.value(i));
            // The stage decides a send (or a holdout's ghost) with its
            // channel and time; one without is not as written.
            if matches!(decision, Decision::Send | Decision::Ghost)
                && (channel.is_none() || send_at.is_none())
            {
                return Err(StorageError::Schema {
                    table: SENDS.into(),
                    reason: format!(
                        "the {} decision {} has no channel or send_at",
                        decision.as_str(),
                        id.value(i)
                    ),
                });
            }
            Ok(SendRow {
                send_id: id.value(i).to_string(),
                rule: rule.value(i).to_string(),
                step: u32::try_from(step.value(i))
                    .map_err(|_| unknown(SENDS, "step", &step.value(i).to_string()))?,
                customer_id: cust.value(i).to_string(),
                dedupe_key: key.value(i).to_string(),
                arm: arm(SENDS, a.value(i))?,
                variant: opt(v),
                channel,
                decision,
                reason: opt(reason),
                send_at,
                decided_at: decided.value(i),
                new_assignment: false,
            })
        })
        .collect()
}

/// [`RuleMeta`] of a rule file.
pub fn rule_meta(rule: &Rule) -> RuleMeta {
    use kairos_rules::rule::WhenBlocked;
    RuleMeta {
        name: rule.name.as_str().into(),
        channel: rule.channel.fixed(),
        priority: rule.priority,
        cooldown_us: rule.cooldown_secs as i64 * 1_000_000,
        cancel_on: rule.cancel_on.clone(),
        transactional: rule.transactional,
        tags: rule.tags.clone().into(),
        defer_on_conflict: rule.on_conflict == WhenBlocked::Defer,
        defer_when_capped: rule.on_cap == WhenBlocked::Defer,
        design: rule.design(),
        scheduled_at_minutes: rule.scheduled_at_minutes,
        steps: rule
            .steps
            .iter()
            .map(|s| StepMeta {
                number: s.number,
                after_us: i64::try_from(s.after_secs)
                    .unwrap_or(i64::MAX / 1_000_000)
                    .saturating_mul(1_000_000),
                channel: s.channel.fixed(),
                stop_on: s.stop_on.clone(),
            })
            .collect(),
    }
}

impl BatchStage for Stage {
    fn next_work(&self) -> Option<i64> {
        self.next_step_due()
    }

    fn process(
        &mut self,
        report: &TickReport,
        state: &State,
        clock_us: i64,
        outputs: &mut Outputs,
    ) -> Result<(), StorageError> {
        // Each firing is decided at its own clock (a sweep's boundary, which
        // a long replay batch passes long before its end), after the events
        // up to it and before the later ones: a purchase just after the
        // boundary cancels the message as it would in a live run, instead
        // of preventing its decision. Firings of one clock compete. What an
        // event cancels is decided at the event's time, so the batch span
        // never shows in a decision's time.
        // Sequence steps due before an event are decided before it (a
        // purchase after a step's time does not stop it).
        let mut firings: Vec<&kairos_rules::engine::Firing> = report.firings.iter().collect();
        firings.sort_by_key(|f| f.clock_us);
        let mut events = report.events.iter().peekable();
        let mut rows = Vec::new();
        for group in firings.chunk_by(|a, b| a.clock_us == b.clock_us) {
            let at = group[0].clock_us;
            while let Some(e) = events.next_if(|e| e.at <= at) {
                rows.extend(self.decide_due_steps(e.at, state));
                rows.extend(self.observe(&e.customer_id, &e.event_type, e.at, e.at));
            }
            let fired: Vec<Fired> = group
                .iter()
                .map(|f| Fired {
                    rule: f.rule.clone(),
                    customer_id: f.customer_id.clone(),
                    dedupe_key: f.dedupe_key.clone(),
                })
                .collect();
            rows.extend(self.decide(&fired, at, state));
        }
        for e in events {
            rows.extend(self.decide_due_steps(e.at, state));
            rows.extend(self.observe(&e.customer_id, &e.event_type, e.at, e.at));
        }
        // Sequence steps come due by the batch's clock.
        rows.extend(self.decide(&[], clock_us, state));
        self.release(clock_us);
        outputs.write(SENDS, sends_batch(&rows)?);
        outputs.write(ASSIGNMENTS, assignments_batch(&rows)?);
        outputs.pass_on(Decided(rows));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> SendRow {
        SendRow {
            send_id: "r:0:c:k".into(),
            rule: "r".into(),
            step: 1,
            customer_id: "c".into(),
            dedupe_key: "k".into(),
            arm: Arm::Holdout,
            variant: Some("v".into()),
            channel: Some(Channel::Sms),
            decision: Decision::Ghost,
            reason: None,
            send_at: Some(5),
            decided_at: 4,
            new_assignment: false,
        }
    }

    /// `sends/` rows with column `name` replaced by `value` in every row.
    fn with(name: &str, value: &str) -> RecordBatch {
        let b = sends_batch(&[row()]).expect("batch");
        let i = b.schema().index_of(name).expect("column");
        let mut cols = b.columns().to_vec();
        cols[i] = Arc::new(StringArray::from(vec![value]));
        RecordBatch::try_new(b.schema(), cols).expect("same schema")
    }

    #[test]
    fn sends_read_back_as_written() {
        let b = sends_batch(&[row()]).expect("batch");
        assert_eq!(send_rows(&b).expect("rows"), vec![row()]);
    }

    #[test]
    fn a_sends_file_not_as_written_is_an_error_not_fewer_sends() {
        let err = |b: &RecordBatch| send_rows(b).expect_err("refused").to_string();
        // An unknown arm was read as "triggered": a holdout customer messaged.
        assert!(err(&with("arm", "control")).contains("unknown arm \"control\""));
        // An unknown decision was read as "suppressed": a send forgotten.
        assert!(err(&with("decision", "sent")).contains("unknown decision"));
        assert!(err(&with("channel", "fax")).contains("unknown channel \"fax\""));
        let mut no_channel = row();
        no_channel.channel = None;
        let b = sends_batch(&[no_channel]).expect("batch");
        assert!(
            err(&b).contains("has no channel"),
            "a ghost without its channel"
        );
        let b = sends_batch(&[row()]).expect("batch");
        let missing = b.project(&[0, 1, 2]).expect("projection");
        let text = err(&missing);
        assert!(
            text.contains("`sends`") && text.contains("no `customer_id` column"),
            "{text}"
        );
        let mut negative = row();
        negative.step = 0;
        let b = sends_batch(&[negative]).expect("batch");
        let mut cols = b.columns().to_vec();
        cols[2] = Arc::new(Int64Array::from(vec![-1]));
        let b = RecordBatch::try_new(b.schema(), cols).expect("same schema");
        assert!(err(&b).contains("unknown step \"-1\""));
    }
}
