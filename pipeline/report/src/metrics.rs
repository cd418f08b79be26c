//! Per (experiment, arm, variant) sums over the lake, in one SQL query.
//!
//! Recipients are the rows of `assignments/` (intent-to-treat: a holdout,
//! suppressed or cancelled customer counts in the arm it was assigned).
//! Per recipient, with `at` its `assigned_at`:
//! - converted: any event of the conversion type in `(at, at + window]`;
//! - revenue y: Σ `revenue` of the revenue type's events in `(at, at + window]`;
//! - covariate x: the same in `(at − pre_period, at]`;
//! - messages: its `send` decisions in `sends/` for the rule;
//!
//! with events attributed to the canonical customer (anonymous ids mapped
//! through `identities/`, the earliest link winning). Capping cuts y and x
//! at the cap. The arm's sums of these are the sufficient statistics.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};

use crate::attribution::{DAY_US, events_ctes, group_hash, in_windows, lit, window_sums};
use crate::lake::{ID_HASH, Lake};
use crate::options::{Capping, ReportOptions};
use crate::outcomes::{MessageCount, OutcomeKey, Snapshot};

/// One (experiment, arm, variant)'s sums.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmSums {
    /// The experiment (rule).
    pub experiment: String,
    /// `holdout`, `scheduled` or `triggered`.
    pub arm: String,
    /// The triggered arm's variant, if the rule has variants.
    pub variant: Option<String>,
    /// Assigned customers.
    pub recipients: i64,
    /// `send` decisions to them.
    pub messages: i64,
    /// Recipients who converted in the window.
    pub conversions: i64,
    /// Σ window revenue before capping.
    pub revenue_uncapped: f64,
    /// Σ y (capped).
    pub revenue_sum: f64,
    /// Σ y².
    pub revenue_sum_squares: f64,
    /// Σ x (capped pre-period revenue).
    pub covariate_sum: f64,
    /// Σ x².
    pub covariate_sum_squares: f64,
    /// Σ x·y.
    pub sum_products: f64,
    /// The cap applied, if any.
    pub cap: Option<f64>,
    /// Earliest assignment, µs.
    pub first_assigned_us: i64,
    /// Latest assignment, µs.
    pub last_assigned_us: i64,
    /// Recipients whose window had not closed by `data_until`.
    pub open_window: i64,
    /// The UTC day of assignment (days since 1970-01-01) these sums cover,
    /// for per-day rows ([`daily_arm_sums`]); `None` for whole-arm sums.
    pub day: Option<i64>,
}

impl ArmSums {
    /// Adds another row's sums (variants into their arm). Sums are additive.
    pub fn add(&mut self, o: &ArmSums) {
        self.recipients += o.recipients;
        self.messages += o.messages;
        self.conversions += o.conversions;
        self.revenue_uncapped += o.revenue_uncapped;
        self.revenue_sum += o.revenue_sum;
        self.revenue_sum_squares += o.revenue_sum_squares;
        self.covariate_sum += o.covariate_sum;
        self.covariate_sum_squares += o.covariate_sum_squares;
        self.sum_products += o.sum_products;
        self.cap = self.cap.or(o.cap);
        self.first_assigned_us = self.first_assigned_us.min(o.first_assigned_us);
        self.last_assigned_us = self.last_assigned_us.max(o.last_assigned_us);
        self.open_window += o.open_window;
        if self.day != o.day {
            self.day = None;
        }
    }
}

/// Whole-arm sums from per-day rows: the rows of each (experiment, arm,
/// variant) added up, in the order they first appear.
pub fn totals(rows: &[ArmSums]) -> Vec<ArmSums> {
    let mut out: Vec<ArmSums> = Vec::new();
    for r in rows {
        let same = |t: &&mut ArmSums| {
            t.experiment == r.experiment && t.arm == r.arm && t.variant == r.variant
        };
        match out.iter_mut().find(same) {
            Some(t) => t.add(r),
            None => out.push(ArmSums {
                day: None,
                ..r.clone()
            }),
        }
    }
    out
}

/// The latest event time in the lake (µs), if any: windows ending after
/// it are still open. Rows lie in the hour folder of their time
/// (`docs/tables.md`), so only the latest folder holding events is read,
/// not every event's timestamp (0.7 s over 33M events).
pub async fn data_until(lake: &Lake) -> datafusion::error::Result<Option<i64>> {
    let files = lake
        .root
        .list(&object_store::path::Path::from("events"))
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let folders: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| f.location.to_string())
        .filter(|p| p.ends_with(".parquet"))
        .filter_map(|p| p.rsplit_once('/').map(|(dir, _)| dir.to_string()))
        .collect();
    let schema = crate::lake::table_schema("events")
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("no events schema".into()))?;
    for folder in folders.iter().rev() {
        let table = crate::lake::parquet_table(&[format!("{folder}/")], schema.clone())?;
        let batches = lake
            .ctx
            .read_table(table)?
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::max(
                    datafusion::prelude::col("timestamp"),
                )],
            )?
            .collect()
            .await?;
        let until = batches.first().and_then(|b| {
            let c = cast(b.column(0), &DataType::Int64).ok()?;
            let c = c.as_primitive::<Int64Type>();
            (b.num_rows() > 0 && c.is_valid(0)).then(|| c.value(0))
        });
        if until.is_some() {
            return Ok(until);
        }
    }
    Ok(None)
}

/// The SQL computing every arm's sums; `rule` limits it to one experiment;
/// `by_day` splits each arm's sums by UTC day of assignment (the same
/// recipients, caps and windows: only the final grouping differs).
/// `outcomes`, the condition on `g` selecting the rule's groups, reads the
/// maintained `outcomes` and `outcome_groups` tables instead of joining
/// `assignments` to `events`; messages are then left at 0 for the caller.
pub fn sql(
    options: &ReportOptions,
    rule: Option<&str>,
    data_until_us: i64,
    by_day: bool,
    outcomes: Option<&str>,
) -> String {
    let w = options.window_secs as i64 * 1_000_000;
    let p = options.pre_period_secs as i64 * 1_000_000;
    let conv = lit(&options.conversion_event);
    let rev = lit(&options.revenue_event);
    let mut filter = vec!["TRUE".to_string()];
    if let Some(rule) = rule {
        filter.push(format!("experiment = {}", lit(rule)));
    }
    if let Some(f) = options.from_us {
        filter.push(format!("CAST(assigned_at AS BIGINT) >= {f}"));
    }
    if let Some(t) = options.to_us {
        filter.push(format!("CAST(assigned_at AS BIGINT) < {t}"));
    }
    let dated = options.from_us.is_some() || options.to_us.is_some();
    let filter = filter.join(" AND ");
    let day = if by_day {
        format!("at / {DAY_US}")
    } else {
        "CAST(NULL AS BIGINT)".into()
    };
    let msg_filter = rule
        .map(|r| format!(" AND rule = {}", lit(r)))
        .unwrap_or_default();
    // Caps: CTEs are inlined wherever they are named, so a per-experiment
    // cap table (which needs the recipients' groups) is built only for a
    // percentile cap; an absolute cap is a literal, and no cap costs nothing.
    let (caps_cte, cap_of, cap_join, final_cap, final_cap_join) = match options.cap {
        Capping::None => (
            String::new(),
            "CAST(NULL AS DOUBLE)".to_string(),
            String::new(),
            "CAST(NULL AS DOUBLE)".to_string(),
            String::new(),
        ),
        Capping::Absolute { value } => {
            let v = format!("CAST({value:?} AS DOUBLE)");
            (String::new(), v.clone(), String::new(), v, String::new())
        }
        // Nearest rank: the smallest y with at least p% of the positive
        // values at or below it. Counted with the rows' weights (the
        // outcomes' retractions are −1), over all rows of equal y at once
        // (the RANGE frame), so a retraction cancels its row whatever
        // order ties come in.
        Capping::Percentile { percentile } => (
            format!(
                "groups AS (SELECT DISTINCT g, experiment FROM {group_names}),
                 caps AS (
                   SELECT experiment, min(CASE WHEN below >= k THEN y END) AS cap FROM (
                     SELECT groups.experiment, per.y,
                            sum(per.weight) OVER (PARTITION BY groups.experiment ORDER BY per.y
                              RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS below,
                            CAST(ceil({q:?} * sum(per.weight) OVER (PARTITION BY groups.experiment)) AS BIGINT) AS k
                     FROM per JOIN groups ON per.g = groups.g WHERE per.y > 0) GROUP BY experiment),",
                q = percentile / 100.0,
                group_names = if outcomes.is_some() { "outcome_groups" } else { "rcp" },
            ),
            "caps.cap".to_string(),
            "JOIN groups ON per.g = groups.g LEFT JOIN caps ON groups.experiment = caps.experiment"
                .to_string(),
            "c.cap".to_string(),
            "LEFT JOIN caps c ON c.experiment = a.experiment".to_string(),
        ),
    };
    // (experiment, arm, variant) as one integer, so the big aggregations
    // and joins below never hash strings.
    let (g_rcp, g_sends) = (group_hash("experiment"), group_hash("rule"));
    // Messages per arm: the `send` rows carry their arm, so without a date
    // range they are counted straight from `sends` and put on each arm's
    // first day (no per-day use needs them split); with one, only the
    // recipients assigned in the range count, which takes the join.
    let (msg, msg_day) = if outcomes.is_some() {
        (
            "SELECT CAST(NULL AS BIGINT) AS g, CAST(0 AS BIGINT) AS messages WHERE FALSE".into(),
            "TRUE",
        )
    } else if dated {
        (
            format!(
                "SELECT r.g, r.day, count(*) AS messages
                 FROM rcp r JOIN (
                   SELECT rule, {ID_HASH}(customer_id, 1) AS k1, {ID_HASH}(customer_id, 2) AS k2
                   FROM sends WHERE decision = 'send'{msg_filter}) s
                 ON s.rule = r.experiment AND s.k1 = r.k1 AND s.k2 = r.k2
                 GROUP BY r.g, r.day"
            ),
            "m.day IS NOT DISTINCT FROM a.day",
        )
    } else {
        (
            format!(
                "SELECT {g_sends} AS g, messages FROM (
                   SELECT rule, arm, variant, count(*) AS messages
                   FROM sends WHERE decision = 'send'{msg_filter} GROUP BY rule, arm, variant)"
            ),
            "a.day IS NOT DISTINCT FROM a.first_day",
        )
    };
    let day_order = if by_day { ", a.day" } else { "" };
    // Only recipients with a conversion or revenue event in (at − pre-period,
    // at + window] can change a sum; everyone else adds 1 to their group's
    // recipients and 0 to the rest. So recipients are counted straight from
    // `assignments`, events are inner-joined with their time range in the
    // join condition (only buyers are grouped per recipient), on two hashes
    // of the customer id rather than the strings, and the three aggregates
    // are put together by group at the end. BENCHMARKS.md has the numbers.
    let head = if let Some(groups) = outcomes {
        // The maintained outcomes (`outcomes.rs`): one row per recipient
        // with its window sums already taken, and its group as `g` alone
        // (names from `outcome_groups`), so no string is read per row;
        // messages are added from their per-day counts afterwards.
        format!(
            "rcp AS (
               SELECT g, at, {day} AS day, weight
               FROM (SELECT g, CAST(assigned_at AS BIGINT) AS at, weight FROM outcomes WHERE {groups})),
             arms AS (
               SELECT a.*, n.experiment, n.arm, n.variant,
                      min(a.day) OVER (PARTITION BY a.g) AS first_day
               FROM (SELECT g, day,
                       CAST(sum(weight) AS BIGINT) AS recipients,
                       min(at) AS first_assigned, max(at) AS last_assigned,
                       CAST(sum(CASE WHEN at + {w} > {data_until_us} THEN weight ELSE 0 END) AS BIGINT) AS open_window
                     FROM rcp GROUP BY g, day) a
               JOIN outcome_groups n ON n.g = a.g),
             per AS (
               SELECT g, {day} AS day, converted, y, x, weight
               FROM (SELECT g, CAST(assigned_at AS BIGINT) AS at,
                       CASE WHEN converted THEN 1 ELSE 0 END AS converted,
                       revenue AS y, pre_revenue AS x, weight
                     FROM outcomes
                     WHERE {groups} AND (converted OR revenue <> 0.0 OR pre_revenue <> 0.0))),"
        )
    } else {
        format!(
            "{events},
             rcp AS (
               SELECT experiment, arm, variant, {g_rcp} AS g, at, {day} AS day,
                      {ID_HASH}(customer_id, 1) AS k1, {ID_HASH}(customer_id, 2) AS k2
               FROM (SELECT experiment, arm, variant, customer_id, CAST(assigned_at AS BIGINT) AS at
                     FROM assignments WHERE {filter})),
             arms AS (
               SELECT *, min(day) OVER (PARTITION BY g) AS first_day
               FROM (SELECT g, experiment, arm, variant, day,
                       count(*) AS recipients,
                       min(at) AS first_assigned, max(at) AS last_assigned,
                       CAST(sum(CASE WHEN at + {w} > {data_until_us} THEN 1 ELSE 0 END) AS BIGINT) AS open_window
                     FROM rcp GROUP BY g, experiment, arm, variant, day)),
             per AS (
               SELECT r.g, r.day, 1 AS weight, {sums}
               FROM ev JOIN rcp r ON {join}
               GROUP BY r.g, r.day, r.k1, r.k2, r.at),",
            events = events_ctes("events", &conv, &rev, ""),
            sums = window_sums("r", &conv, &rev),
            join = in_windows("r", p, w),
        )
    };
    format!(
        "WITH {head}
         {caps_cte}
         capped AS (
           SELECT per.g, per.day, per.weight, per.converted, per.y,
             CASE WHEN {cap_of} IS NOT NULL AND per.y > {cap_of} THEN {cap_of} ELSE per.y END AS yc,
             CASE WHEN {cap_of} IS NOT NULL AND per.x > {cap_of} THEN {cap_of} ELSE per.x END AS xc
           FROM per {cap_join}),
         hits AS (
           SELECT g, day,
             CAST(sum(weight * converted) AS BIGINT) AS conversions,
             sum(weight * y) AS revenue_uncapped,
             sum(weight * yc) AS revenue_sum, sum(weight * yc * yc) AS revenue_sum_squares,
             sum(weight * xc) AS covariate_sum, sum(weight * xc * xc) AS covariate_sum_squares,
             sum(weight * xc * yc) AS sum_products
           FROM capped GROUP BY g, day),
         msg AS ({msg})
         SELECT a.experiment, a.arm, a.variant, a.day,
           a.recipients,
           CAST(coalesce(m.messages, 0) AS BIGINT) AS messages,
           coalesce(h.conversions, 0) AS conversions,
           coalesce(h.revenue_uncapped, 0.0) AS revenue_uncapped,
           coalesce(h.revenue_sum, 0.0) AS revenue_sum,
           coalesce(h.revenue_sum_squares, 0.0) AS revenue_sum_squares,
           coalesce(h.covariate_sum, 0.0) AS covariate_sum,
           coalesce(h.covariate_sum_squares, 0.0) AS covariate_sum_squares,
           coalesce(h.sum_products, 0.0) AS sum_products,
           {final_cap} AS cap,
           a.first_assigned, a.last_assigned, a.open_window
         FROM arms a
         LEFT JOIN hits h ON h.g = a.g AND (h.day IS NOT DISTINCT FROM a.day)
         LEFT JOIN msg m ON m.g = a.g AND ({msg_day})
         {final_cap_join}
         ORDER BY a.experiment, a.arm, a.variant{day_order}"
    )
}

/// Where a report's per-recipient sums come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Every recipient joined to the raw events.
    Raw,
    /// The maintained outcomes (registered as `outcomes` in the lake) and
    /// their message counts; ignored for a date range.
    Outcomes(&'a Snapshot),
}

/// Every arm's sums (of `rule` only, when given), sorted by experiment,
/// arm and variant.
pub async fn arm_sums(
    lake: &Lake,
    options: &ReportOptions,
    rule: Option<&str>,
    source: Source<'_>,
) -> datafusion::error::Result<(Vec<ArmSums>, Option<i64>)> {
    query(lake, options, rule, false, source).await
}

/// Like [`arm_sums`], one row per arm and UTC day of assignment (sorted by
/// day within each arm); [`totals`] adds them up to [`arm_sums`]' rows, so
/// one query serves a report and its cumulative series.
pub async fn daily_arm_sums(
    lake: &Lake,
    options: &ReportOptions,
    rule: Option<&str>,
    source: Source<'_>,
) -> datafusion::error::Result<(Vec<ArmSums>, Option<i64>)> {
    query(lake, options, rule, true, source).await
}

async fn query(
    lake: &Lake,
    options: &ReportOptions,
    rule: Option<&str>,
    by_day: bool,
    source: Source<'_>,
) -> datafusion::error::Result<(Vec<ArmSums>, Option<i64>)> {
    let dated = options.from_us.is_some() || options.to_us.is_some();
    let snapshot = match source {
        Source::Outcomes(s) if !dated && s.key == OutcomeKey::of(options) => {
            s.register(lake)?;
            Some(s)
        }
        _ => None,
    };
    let until = data_until(lake).await?;
    let q = sql(
        options,
        rule,
        until.unwrap_or(i64::MIN / 2),
        by_day,
        snapshot.map(|s| s.groups_of(rule)).as_deref(),
    );
    let batches = lake.ctx.sql(&q).await?.collect().await?;
    let mut out = Vec::new();
    for b in &batches {
        read_rows(b, &mut out)?;
    }
    if let Some(s) = snapshot {
        add_messages(&mut out, &s.messages);
    }
    Ok((out, until))
}

/// Puts each arm's `send` count on its first row (its first day), as the
/// raw query does.
fn add_messages(rows: &mut [ArmSums], counts: &[MessageCount]) {
    let mut seen: Option<(String, String, Option<String>)> = None;
    for r in rows {
        let id = (r.experiment.clone(), r.arm.clone(), r.variant.clone());
        if seen.as_ref() == Some(&id) {
            continue;
        }
        r.messages = counts
            .iter()
            // NULL and '' alike, as `group_hash` has them.
            .filter(|c| {
                c.rule == id.0
                    && c.arm == id.1
                    && c.variant.as_deref().unwrap_or("") == id.2.as_deref().unwrap_or("")
            })
            .map(|c| c.messages)
            .sum();
        seen = Some(id);
    }
}

fn read_rows(b: &RecordBatch, out: &mut Vec<ArmSums>) -> datafusion::error::Result<()> {
    let col = |name: &str, ty: &DataType| -> datafusion::error::Result<_> {
        let c = b.column_by_name(name).ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!("no column {name}"))
        })?;
        Ok(cast(c, ty)?)
    };
    let (experiment, arm, variant) = (
        col("experiment", &DataType::Utf8)?,
        col("arm", &DataType::Utf8)?,
        col("variant", &DataType::Utf8)?,
    );
    let (experiment, arm, variant) = (
        experiment.as_string::<i32>(),
        arm.as_string::<i32>(),
        variant.as_string::<i32>(),
    );
    let ints: Vec<_> = [
        "recipients",
        "messages",
        "conversions",
        "first_assigned",
        "last_assigned",
        "open_window",
        "day",
    ]
    .iter()
    .map(|n| col(n, &DataType::Int64))
    .collect::<Result<_, _>>()?;
    let floats: Vec<_> = [
        "revenue_uncapped",
        "revenue_sum",
        "revenue_sum_squares",
        "covariate_sum",
        "covariate_sum_squares",
        "sum_products",
        "cap",
    ]
    .iter()
    .map(|n| col(n, &DataType::Float64))
    .collect::<Result<_, _>>()?;
    let int = |k: usize, i: usize| {
        let a = ints[k].as_primitive::<Int64Type>();
        if a.is_valid(i) { a.value(i) } else { 0 }
    };
    let float = |k: usize, i: usize| {
        let a = floats[k].as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i))
    };
    for i in 0..b.num_rows() {
        out.push(ArmSums {
            experiment: experiment.value(i).to_string(),
            arm: arm.value(i).to_string(),
            variant: variant.is_valid(i).then(|| variant.value(i).to_string()),
            recipients: int(0, i),
            messages: int(1, i),
            conversions: int(2, i),
            revenue_uncapped: float(0, i).unwrap_or(0.0),
            revenue_sum: float(1, i).unwrap_or(0.0),
            revenue_sum_squares: float(2, i).unwrap_or(0.0),
            covariate_sum: float(3, i).unwrap_or(0.0),
            covariate_sum_squares: float(4, i).unwrap_or(0.0),
            sum_products: float(5, i).unwrap_or(0.0),
            cap: float(6, i),
            first_assigned_us: int(3, i),
            last_assigned_us: int(4, i),
            open_window: int(5, i),
            day: ints[6].is_valid(i).then(|| int(6, i)),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::Schema;
    use kairos_storage::DataRoot;

    pub const DAY: i64 = 86_400_000_000;
    /// 2026-09-01T00:00:00Z in µs.
    pub const T0: i64 = 1_788_220_800_000_000;

    fn strs(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(v.iter().copied().collect::<StringArray>())
    }
    fn times(v: &[i64]) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v.to_vec()).with_timezone("UTC"))
    }

    /// Writes one Parquet file of `table` with `cols` (a partition folder
    /// like the publisher's, to show the listing recurses).
    pub fn write(root: &Path, table: &str, file: &str, cols: Vec<(&str, ArrayRef)>) {
        let dir = root.join(table).join("date=2026-09-01/hour=00");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let fields: Vec<_> = cols
            .iter()
            .map(|(n, a)| datafusion::arrow::datatypes::Field::new(*n, a.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .expect("batch");
        let f = std::fs::File::create(dir.join(file)).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    /// A tiny lake with known answers, for experiment `cart` (and a second
    /// experiment `other` sharing customers, to show they stay apart):
    ///
    /// | customer | arm | assigned | in window (7d) | before |
    /// | h1 | holdout | T0 | purchase 10 at +1d | — |
    /// | h2 | holdout | T0 | purchase 20 at +8d (outside) | purchase 5 at −2d |
    /// | t1 | triggered | T0 | purchases 30 at +1h and 1000 at +6d | — |
    /// | t2 | triggered | T0+1d | — (a purchase exactly at assignment counts before) | purchase 7 at +0 |
    /// | t3 | triggered | T0 | anonymous `anon-3` buys 40 at +2d, linked to t3 | — |
    ///
    /// t1 got two messages, t2 one and one suppressed; h1 a ghost.
    pub fn tiny_lake(dir: &Path) {
        write(
            dir,
            "assignments",
            "b1.parquet",
            vec![
                ("experiment", strs(&[Some("cart"); 6])),
                ("variant", strs(&[None; 6])),
                (
                    "customer_id",
                    strs(&[
                        Some("h1"),
                        Some("h2"),
                        Some("t1"),
                        Some("t2"),
                        Some("t3"),
                        Some("z9"),
                    ]),
                ),
                (
                    "arm",
                    strs(&[
                        Some("holdout"),
                        Some("holdout"),
                        Some("triggered"),
                        Some("triggered"),
                        Some("triggered"),
                        Some("triggered"),
                    ]),
                ),
                (
                    "assigned_at",
                    times(&[T0, T0, T0, T0 + DAY, T0, T0 + 30 * DAY]),
                ),
                ("firing_key", strs(&[Some("k"); 6])),
            ],
        );
        // Another experiment, another file: h1 is in both.
        write(
            dir,
            "assignments",
            "b2.parquet",
            vec![
                ("experiment", strs(&[Some("other")])),
                ("variant", strs(&[None])),
                ("customer_id", strs(&[Some("h1")])),
                ("arm", strs(&[Some("triggered")])),
                ("assigned_at", times(&[T0 - 5 * DAY])),
                ("firing_key", strs(&[Some("k")])),
            ],
        );
        write(
            dir,
            "sends",
            "b1.parquet",
            vec![
                (
                    "rule",
                    strs(&[
                        Some("cart"),
                        Some("cart"),
                        Some("cart"),
                        Some("cart"),
                        Some("cart"),
                        Some("other"),
                        Some("cart"),
                    ]),
                ),
                (
                    "customer_id",
                    strs(&[
                        Some("t1"),
                        Some("t1"),
                        Some("t2"),
                        Some("t2"),
                        Some("h1"),
                        Some("h1"),
                        Some("gc"),
                    ]),
                ),
                (
                    "arm",
                    strs(&[
                        Some("triggered"),
                        Some("triggered"),
                        Some("triggered"),
                        Some("triggered"),
                        Some("holdout"),
                        Some("triggered"),
                        Some("holdout"),
                    ]),
                ),
                (
                    "variant",
                    strs(&[None, None, None, None, None, None, Some("global_control")]),
                ),
                (
                    "decision",
                    strs(&[
                        Some("send"),
                        Some("send"),
                        Some("send"),
                        Some("suppressed"),
                        Some("ghost"),
                        Some("send"),
                        Some("ghost"),
                    ]),
                ),
                ("decided_at", times(&[T0; 7])),
            ],
        );
        let ev = [
            ("h1", "purchase", T0 + DAY, Some(10.0)),
            ("h2", "purchase", T0 + 8 * DAY, Some(20.0)),
            ("h2", "purchase", T0 - 2 * DAY, Some(5.0)),
            ("h2", "checkout_start", T0 + DAY, Some(99.0)),
            ("t1", "purchase", T0 + 3_600_000_000, Some(30.0)),
            ("t1", "purchase", T0 + 6 * DAY, Some(1000.0)),
            ("t2", "purchase", T0 + DAY, Some(7.0)),
            ("t2", "product_view", T0 + 2 * DAY, None),
            ("anon-3", "purchase", T0 + 2 * DAY, Some(40.0)),
        ];
        write(
            dir,
            "events",
            "e1.parquet",
            vec![
                (
                    "event_id",
                    strs(&ev.iter().map(|_| Some("x")).collect::<Vec<_>>()),
                ),
                (
                    "customer_id",
                    strs(&ev.iter().map(|e| Some(e.0)).collect::<Vec<_>>()),
                ),
                (
                    "event_type",
                    strs(&ev.iter().map(|e| Some(e.1)).collect::<Vec<_>>()),
                ),
                (
                    "timestamp",
                    times(&ev.iter().map(|e| e.2).collect::<Vec<_>>()),
                ),
                (
                    "revenue",
                    Arc::new(ev.iter().map(|e| e.3).collect::<Float64Array>()),
                ),
            ],
        );
        write(
            dir,
            "identities",
            "i1.parquet",
            vec![
                ("anonymous_id", strs(&[Some("anon-3"), Some("anon-3")])),
                ("user_id", strs(&[Some("t3"), Some("h1")])),
                ("call", strs(&[Some("identify"), Some("alias")])),
                ("linked_at", times(&[T0 - DAY, T0 + 3 * DAY])),
            ],
        );
    }

    pub async fn sums(dir: &Path, options: &ReportOptions) -> Vec<ArmSums> {
        let root = DataRoot::open(dir.to_str().expect("utf8")).expect("root");
        let lake = Lake::open(&root).expect("lake");
        arm_sums(&lake, options, Some("cart"), Source::Raw)
            .await
            .expect("query")
            .0
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + b.abs())
    }

    #[tokio::test]
    async fn recipients_conversions_and_revenue_in_the_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let rows = sums(dir.path(), &ReportOptions::default()).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        let (h, t) = (&rows[0], &rows[1]);
        assert_eq!((h.arm.as_str(), t.arm.as_str()), ("holdout", "triggered"));
        assert_eq!(h.experiment, "cart");
        // Recipients: the assignment rows; the global-control send row
        // (`gc`) is not a recipient.
        assert_eq!((h.recipients, t.recipients), (2, 4));
        // Messages: `send` decisions only, of this rule.
        assert_eq!((h.messages, t.messages), (0, 3));
        // h1 bought inside the window, h2 only after it; t1 and t3 (via the
        // anonymous id, the earliest link) inside; t2's purchase at the
        // very assignment instant counts before, not after; z9 nothing.
        assert_eq!((h.conversions, t.conversions), (1, 2));
        assert!(
            close(h.revenue_sum, 10.0),
            "checkout_start revenue is not purchase revenue"
        );
        assert!(close(h.revenue_sum_squares, 100.0));
        assert!(close(t.revenue_sum, 1030.0 + 40.0));
        assert!(close(t.revenue_sum_squares, 1030.0f64.powi(2) + 1600.0));
        // Pre-period (7 days before, up to and including the assignment):
        // h2's 5, t2's 7.
        assert!(close(h.covariate_sum, 5.0) && close(h.covariate_sum_squares, 25.0));
        assert!(close(t.covariate_sum, 7.0) && close(t.covariate_sum_squares, 49.0));
        assert!(close(h.sum_products, 0.0) && close(t.sum_products, 0.0));
        assert_eq!(h.cap, None);
        assert_eq!(
            (t.first_assigned_us, t.last_assigned_us),
            (T0, T0 + 30 * DAY)
        );
        // The latest event is h2's purchase at T0+8d: only z9's window
        // (assigned at T0+30d) is still open; t2's closes exactly then.
        assert_eq!((h.open_window, t.open_window), (0, 1));
    }

    #[tokio::test]
    async fn window_pre_period_and_dates_change_the_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let mut o = ReportOptions {
            window_secs: 9 * 86_400,
            ..ReportOptions::default()
        };
        o.pre_period_secs = 86_400;
        let rows = sums(dir.path(), &o).await;
        // h2's purchase at +8d is now inside; its −2d one outside the pre-period.
        assert_eq!(rows[0].conversions, 2);
        assert!(close(rows[0].revenue_sum, 30.0));
        assert!(close(rows[0].covariate_sum, 0.0));
        // A conversion event with no events: nobody converts, revenue stays.
        o.conversion_event = "signup".into();
        let rows = sums(dir.path(), &o).await;
        assert_eq!((rows[0].conversions, rows[1].conversions), (0, 0));
        assert!(close(rows[1].revenue_sum, 1070.0));
        // Assigned on or after 2026-09-02: t2 and z9 only.
        let o = ReportOptions::default()
            .with_params(&[("from".to_string(), "2026-09-02".to_string())].into())
            .expect("valid");
        let rows = sums(dir.path(), &o).await;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].arm.as_str(), rows[0].recipients), ("triggered", 2));
    }

    #[tokio::test]
    async fn capping_cuts_each_recipients_revenue() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let o = ReportOptions {
            cap: Capping::Absolute { value: 35.0 },
            ..ReportOptions::default()
        };
        let rows = sums(dir.path(), &o).await;
        let t = &rows[1];
        assert_eq!(t.cap, Some(35.0));
        // t1's 1030 becomes 35, t3's 40 becomes 35.
        assert!(close(t.revenue_sum, 70.0), "{t:?}");
        assert!(close(t.revenue_sum_squares, 2.0 * 35.0 * 35.0));
        assert!(close(t.revenue_uncapped, 1070.0));
        assert!(close(rows[0].revenue_sum, 10.0));
        // Positive window revenues 10, 40, 1030: the 50th percentile
        // (nearest rank, ceil(0.5·3) = 2nd) is 40.
        let o = ReportOptions {
            cap: Capping::Percentile { percentile: 50.0 },
            ..ReportOptions::default()
        };
        let rows = sums(dir.path(), &o).await;
        assert_eq!(rows[1].cap, Some(40.0));
        assert!(close(rows[1].revenue_sum, 80.0));
        assert!(close(rows[0].revenue_sum, 10.0));
    }

    #[tokio::test]
    async fn per_day_rows_add_up_to_the_arms() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let lake = Lake::open(&root).expect("lake");
        let o = ReportOptions {
            cap: Capping::Percentile { percentile: 50.0 },
            ..ReportOptions::default()
        };
        let (daily, _) = daily_arm_sums(&lake, &o, Some("cart"), Source::Raw)
            .await
            .expect("query");
        // holdout: both on T0's day; triggered: T0 (t1, t3), T0+1d (t2), T0+30d (z9).
        let keys: Vec<(&str, Option<i64>, i64)> = daily
            .iter()
            .map(|r| (r.arm.as_str(), r.day, r.recipients))
            .collect();
        let d0 = T0 / DAY_US;
        assert_eq!(
            keys,
            [
                ("holdout", Some(d0), 2),
                ("triggered", Some(d0), 2),
                ("triggered", Some(d0 + 1), 1),
                ("triggered", Some(d0 + 30), 1)
            ]
        );
        // The cap is the experiment's, not a day's: t1's 1030 is cut at 40.
        assert!(close(daily[1].revenue_sum, 80.0), "{:?}", daily[1]);
        // Whole numbers: the sums are exact in any order.
        assert_eq!(totals(&daily), sums(dir.path(), &o).await);
    }

    #[tokio::test]
    async fn an_empty_lake_has_no_arms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = sums(dir.path(), &ReportOptions::default()).await;
        assert!(rows.is_empty());
    }
}
