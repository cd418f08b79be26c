//! Per-recipient outcomes, maintained as data arrives, so a report reads
//! one row per recipient instead of joining every recipient to the raw
//! events (0.5 s instead of 9 s for 10M recipients, `BENCHMARKS.md`).
//!
//! For one choice of window, pre-period, conversion and revenue event (the
//! [`OutcomeKey`]), every assignment gets a row: its experiment, arm,
//! variant, customer and time, whether it converted in the window, its
//! window revenue and its pre-period revenue (uncapped: caps are applied
//! when a report reads them). Rows live in files per UTC day of assignment
//! under `_kairos/outcomes/data/`, and `state.json` beside them names the
//! current files of every day.
//!
//! A day's outcomes depend on that day's `assignments/` files, the
//! `events/` files whose hours can fall in one of its windows (the day
//! widened by the pre-period before and the window after), and the
//! identity links of those events' anonymous ids. [`refresh`] compares
//! the tables with what the state has taken into account and, per day:
//! leaves it alone; adds a *diff* when only new event files reach it (for
//! each recipient they touch, a retraction of its current row, weight −1,
//! and its new row); or recomputes it in full when its assignments
//! changed, an event file it read went away (compaction), or a new
//! identity link reaches it. Reports sum `weight × value`. Messages per arm
//! come from a per-day count of `sends/`, kept the same way.
//!
//! Readers take the files named by one `state.json` (never a listing), so
//! a report never sees a day twice while a refresh writes its successor;
//! replaced files are deleted [`GRACE_SECS`] after they were retired.
//!
//! This relies on what `docs/tables.md` promises: a row lies in the
//! folder of its table's time column, and a published file changes only
//! as a whole (compaction swaps in new names; erasure and retention
//! rewrite a file in one PUT or delete it), which shows as a new file
//! name or size. These files are derived and can always be rebuilt: an
//! erasure deletes all of `_kairos/outcomes/` at once (they name the
//! person) and the next refresh starts over. `docs/reports.md` has the
//! columns and the measurements.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch, kernels::cmp::eq};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use kairos_storage::DataRoot;

use crate::attribution::{DAY_US, events_ctes, group_hash, in_windows, lit, window_sums};
use crate::lake::{ID_HASH, Lake, parquet_table, tables};
use crate::{ReportError, ReportOptions};

/// Where the outcomes live under the data root.
pub const DIR: &str = "_kairos/outcomes";
/// Replaced day files are deleted this long after they were replaced, so a
/// report that read `state.json` just before can still open them.
pub const GRACE_SECS: u64 = 600;
/// Bumped when the files' columns or meaning change: a state of another
/// version is rebuilt.
const VERSION: u32 = 4;
/// Days recomputed in full by one query: its output (about 60 MB per
/// million recipients) stays in memory until written, and each query reads
/// the events its days' windows reach again, so this bounds memory at the
/// price of reading some events twice in a rebuild.
const FULL_DAYS: usize = 14;
/// A day's diffs are merged into one file beyond this many, so a report
/// opens few files per day.
const MAX_DIFFS: usize = 8;
const HOUR_US: i64 = kairos_core::time::HOUR_US;

/// What the outcomes measure: reports asking for the same window,
/// pre-period and events read them; any other question reads the raw
/// tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeKey {
    /// Attribution window after assignment, seconds.
    pub window_secs: u64,
    /// Pre-period before assignment, seconds.
    pub pre_period_secs: u64,
    /// The conversion event type.
    pub conversion_event: String,
    /// The event type whose revenue counts.
    pub revenue_event: String,
}

impl OutcomeKey {
    /// The key of a report's options.
    pub fn of(options: &ReportOptions) -> OutcomeKey {
        OutcomeKey {
            window_secs: options.window_secs,
            pre_period_secs: options.pre_period_secs,
            conversion_event: options.conversion_event.clone(),
            revenue_event: options.revenue_event.clone(),
        }
    }

    fn window_us(&self) -> i64 {
        self.window_secs as i64 * 1_000_000
    }

    fn pre_us(&self) -> i64 {
        self.pre_period_secs as i64 * 1_000_000
    }
}

/// One day of assignments' outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DayState {
    /// Fingerprint of its `assignments/` files (hex).
    assignments: String,
    /// Its files, relative to the data root: the base (a full
    /// recomputation, every row weight 1) first, then the diffs.
    files: Vec<String>,
    /// Its rows.
    recipients: u64,
    /// The (experiment, arm, variant) groups in it.
    groups: Vec<Group>,
}

/// An (experiment, arm, variant) and its hash `g`, the column the outcome
/// files carry instead of three strings per row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Group {
    /// `kairos_id_hash(experiment ␟ arm ␟ variant, 3)`.
    pub g: i64,
    /// The experiment (rule).
    pub experiment: String,
    /// The arm.
    pub arm: String,
    /// The variant, if any.
    pub variant: Option<String>,
}

/// One day of `sends/`: `send` decisions per (rule, arm, variant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SendDay {
    inputs: String,
    counts: Vec<MessageCount>,
}

/// `send` decisions of one (rule, arm, variant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageCount {
    /// The rule (experiment).
    pub rule: String,
    /// The arm.
    pub arm: String,
    /// The variant, if any.
    pub variant: Option<String>,
    /// `send` decisions.
    pub messages: i64,
}

/// A file replaced by a refresh, deleted after [`GRACE_SECS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Retired {
    file: String,
    at_us: i64,
}

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct State {
    version: u32,
    key: OutcomeKey,
    /// Per UTC day of assignment (`YYYY-MM-DD`).
    days: BTreeMap<String, DayState>,
    /// Per UTC day of `sends/`.
    sends: BTreeMap<String, SendDay>,
    /// The `identities/` files already taken into account (path → size).
    identities: BTreeMap<String, u64>,
    /// The `events/` files already taken into account (path → size): every
    /// day is up to date with exactly these.
    events: BTreeMap<String, u64>,
    retired: Vec<Retired>,
    /// When this state was written, µs.
    refreshed_at_us: i64,
    /// The highest row version written so far.
    last_version: i64,
}

impl State {
    fn empty(key: &OutcomeKey) -> State {
        State {
            version: VERSION,
            key: key.clone(),
            days: BTreeMap::new(),
            sends: BTreeMap::new(),
            identities: BTreeMap::new(),
            events: BTreeMap::new(),
            retired: Vec::new(),
            refreshed_at_us: 0,
            last_version: 0,
        }
    }
}

/// The columns of an outcome file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("experiment", DataType::Utf8, true),
        Field::new("arm", DataType::Utf8, true),
        Field::new("variant", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new(
            "assigned_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        // `(experiment, arm, variant)` hashed as in the report's SQL.
        Field::new("g", DataType::Int64, true),
        Field::new("converted", DataType::Boolean, true),
        Field::new("revenue", DataType::Float64, true),
        Field::new("pre_revenue", DataType::Float64, true),
        // 1 for a recipient's row, −1 for a retraction of an earlier row
        // of the same recipient (see `apply_events`).
        Field::new("weight", DataType::Int64, true),
        // The refresh that wrote the row (µs): a recipient's current row is
        // its weight-1 row of the highest version.
        Field::new("version", DataType::Int64, true),
        // `kairos_id_hash(customer_id, 1)` and `(…, 2)`: a diff finds the
        // recipients new events touch by these, filtered in the scan.
        Field::new("k1", DataType::Int64, true),
        Field::new("k2", DataType::Int64, true),
        // The UTC day of the assignment's folder: the file the row is in.
        Field::new("day", DataType::Utf8, true),
    ]))
}

/// What a report reads: the outcome files of one state and the message
/// counts.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Outcome files, relative to the data root.
    pub files: Vec<String>,
    /// `send` decisions per (rule, arm, variant), summed over days.
    pub messages: Vec<MessageCount>,
    /// What the outcomes measure.
    pub key: OutcomeKey,
    /// Every group in the files.
    pub groups: Vec<Group>,
}

impl Snapshot {
    fn of(state: &State) -> Snapshot {
        let mut totals: BTreeMap<(String, String, Option<String>), i64> = BTreeMap::new();
        for c in state.sends.values().flat_map(|d| &d.counts) {
            *totals
                .entry((c.rule.clone(), c.arm.clone(), c.variant.clone()))
                .or_default() += c.messages;
        }
        Snapshot {
            files: state
                .days
                .values()
                .flat_map(|d| d.files.iter().cloned())
                .collect(),
            messages: totals
                .into_iter()
                .map(|((rule, arm, variant), messages)| MessageCount {
                    rule,
                    arm,
                    variant,
                    messages,
                })
                .collect(),
            key: state.key.clone(),
            groups: state
                .days
                .values()
                .flat_map(|d| d.groups.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    /// An SQL condition on `g` selecting `rule`'s rows (every row without one).
    pub fn groups_of(&self, rule: Option<&str>) -> String {
        let gs: Vec<String> = self
            .groups
            .iter()
            .filter(|g| rule.is_none_or(|r| g.experiment == r))
            .map(|g| g.g.to_string())
            .collect();
        match (rule, gs.is_empty()) {
            (None, _) => "TRUE".into(),
            (Some(_), true) => "FALSE".into(),
            (Some(_), false) => format!("g IN ({})", gs.join(", ")),
        }
    }

    /// Registers the files as the table `outcomes` of `lake`.
    pub fn register(&self, lake: &Lake) -> datafusion::error::Result<()> {
        let table = parquet_table(&self.files, schema())?;
        lake.ctx.deregister_table("outcomes")?;
        lake.ctx.register_table("outcomes", table)?;
        let groups = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("g", DataType::Int64, false),
                Field::new("experiment", DataType::Utf8, false),
                Field::new("arm", DataType::Utf8, false),
                Field::new("variant", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                    self.groups.iter().map(|g| g.g),
                )),
                Arc::new(StringArray::from_iter_values(
                    self.groups.iter().map(|g| g.experiment.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    self.groups.iter().map(|g| g.arm.as_str()),
                )),
                Arc::new(
                    self.groups
                        .iter()
                        .map(|g| g.variant.as_deref())
                        .collect::<StringArray>(),
                ),
            ],
        )?;
        lake.ctx.deregister_table("outcome_groups")?;
        lake.ctx.register_table(
            "outcome_groups",
            Arc::new(MemTable::try_new(groups.schema(), vec![vec![groups]])?),
        )?;
        Ok(())
    }
}

/// What one [`refresh`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RefreshStats {
    /// Days of assignments recomputed in full.
    pub days_recomputed: usize,
    /// Days brought up to date by a diff: only new `events/` files reached
    /// them, so only the recipients those events touch were rewritten.
    pub days_diffed: usize,
    /// Rows in those diffs (a retraction and a new row per recipient).
    pub diff_rows: u64,
    /// Their recipients.
    pub recipients_recomputed: u64,
    /// Days of `sends/` recounted.
    pub send_days_recounted: usize,
    /// Days in the state after the refresh.
    pub days: usize,
    /// Whether everything was rebuilt (no state, another key or version).
    pub rebuilt: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// One refresh at a time per process: a report waiting here finds the work
/// of the one before it done.
static REFRESHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The outcomes a process reads its reports from, with how stale they may
/// be. `serve` refreshes them in the background as data arrives; a report
/// reuses the last snapshot while it is younger than `max_age` and
/// otherwise refreshes first (exact: the default, `max_age` 0).
pub struct Outcomes {
    max_age: Duration,
    last: std::sync::Mutex<Option<Checked>>,
}

/// The last snapshot this process brought up to date, and when.
struct Checked {
    root: String,
    key: OutcomeKey,
    at: Instant,
    snapshot: Snapshot,
}

impl Outcomes {
    /// Reports refresh first whenever their snapshot is older than `max_age`.
    /// At most half of [`GRACE_SECS`], so a kept snapshot never names
    /// files another refresh has deleted.
    pub fn new(max_age: Duration) -> Outcomes {
        Outcomes {
            max_age: max_age.min(Duration::from_secs(GRACE_SECS / 2)),
            last: std::sync::Mutex::new(None),
        }
    }

    /// Reports always see every published row.
    pub fn exact() -> Outcomes {
        Outcomes::new(Duration::ZERO)
    }

    /// The outcomes a report with `options` can read; `None` when it must
    /// read the raw tables: a date range (messages are then counted per
    /// recipient), or outcomes kept for another key. A lake without
    /// outcomes gets them for this key. A refresh that fails (a read-only
    /// root, say) is logged and the report reads the raw tables.
    pub async fn for_report(&self, root: &DataRoot, options: &ReportOptions) -> Option<Snapshot> {
        if options.from_us.is_some() || options.to_us.is_some() {
            return None;
        }
        let key = OutcomeKey::of(options);
        if let Some(s) = self.recent(root, &key) {
            return Some(s);
        }
        match self.refresh_snapshot(root, &key, false).await {
            Ok(done) => done.map(|(snapshot, _)| snapshot),
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the outcomes (check that the data root is writable and has space); this report reads the raw tables");
                None
            }
        }
    }

    /// Brings the outcomes for `key` up to date (see [`refresh`]) and keeps
    /// the snapshot for the reports that follow.
    pub async fn refresh(
        &self,
        root: &DataRoot,
        key: &OutcomeKey,
    ) -> Result<RefreshStats, ReportError> {
        let done = self.refresh_snapshot(root, key, true).await?;
        done.map(|(_, stats)| stats)
            .ok_or_else(|| ReportError::Outcomes("a refresh for any key skipped (a bug)".into()))
    }

    /// [`refresh_if`], keeping the snapshot for the reports that follow.
    async fn refresh_snapshot(
        &self,
        root: &DataRoot,
        key: &OutcomeKey,
        other_keys: bool,
    ) -> Result<Option<(Snapshot, RefreshStats)>, ReportError> {
        let Some((snapshot, stats)) = refresh_if(root, key, other_keys).await? else {
            return Ok(None);
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checked {
            root: root.url.clone(),
            key: key.clone(),
            at: Instant::now(),
            snapshot: snapshot.clone(),
        });
        Ok(Some((snapshot, stats)))
    }

    /// The kept snapshot of `root` for `key` if younger than `max_age`.
    fn recent(&self, root: &DataRoot, key: &OutcomeKey) -> Option<Snapshot> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|c| c.root == root.url && c.key == *key && c.at.elapsed() <= self.max_age)
            .map(|c| c.snapshot.clone())
    }
}

fn state_path() -> ObjectPath {
    ObjectPath::from(format!("{DIR}/state.json"))
}

/// What `state.json` holds: the state when it is one of this version,
/// and every file it names either way (a state of another version or key
/// is replaced, and its files retired, not orphaned).
#[derive(Default)]
struct Stored {
    state: Option<State>,
    files: Vec<String>,
}

/// Reads `state.json`. A store error is an error (a report then reads the
/// raw tables, and nothing is rebuilt over a hiccup); a damaged state is
/// logged and read as none.
async fn read_state(root: &DataRoot) -> Result<Stored, ReportError> {
    let Some(bytes) = root.read(&state_path()).await.map_err(storage)? else {
        return Ok(Stored::default());
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "{DIR}/state.json is damaged; the outcomes are rebuilt");
            return Ok(Stored::default());
        }
    };
    // Any version: `days.*.files[]` (or `days.*.file`) and `retired[].file`.
    let mut files = Vec::new();
    if let Some(days) = value["days"].as_object() {
        for d in days.values() {
            files.extend(d["file"].as_str().map(str::to_string));
            if let Some(fs) = d["files"].as_array() {
                files.extend(fs.iter().filter_map(|f| f.as_str().map(str::to_string)));
            }
        }
    }
    if let Some(rs) = value["retired"].as_array() {
        files.extend(
            rs.iter()
                .filter_map(|r| r["file"].as_str().map(str::to_string)),
        );
    }
    let state = serde_json::from_value::<State>(value)
        .ok()
        .filter(|s| s.version == VERSION);
    Ok(Stored { state, files })
}

fn storage(e: kairos_storage::StorageError) -> ReportError {
    ReportError::Outcomes(e.to_string())
}

/// A published file: its path and size, and the hour its folder names.
#[derive(Clone, Debug)]
struct Listed {
    path: String,
    size: u64,
    hour_us: i64,
}

impl Listed {
    fn day(&self) -> String {
        kairos_core::time::partition_of(self.hour_us).0
    }
}

/// The hour of a `…/date=YYYY-MM-DD/hour=HH/…` path, µs.
fn hour_of(path: &str) -> Option<i64> {
    let date = path.split('/').find_map(|p| p.strip_prefix("date="))?;
    let hour: u32 = path
        .split('/')
        .find_map(|p| p.strip_prefix("hour="))?
        .parse()
        .ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let t = day.and_hms_opt(hour, 0, 0)?.and_utc();
    Some(t.timestamp_micros())
}

fn day_start(day: &str) -> Option<i64> {
    hour_of(&format!("date={day}/hour=00"))
}

async fn list(root: &DataRoot, table: &str) -> Result<Vec<Listed>, ReportError> {
    let mut out: Vec<Listed> = root
        .list(&ObjectPath::from(table))
        .await
        .map_err(storage)?
        .into_iter()
        .filter_map(|m| {
            let path = m.location.to_string();
            let hour_us = hour_of(&path)?;
            path.ends_with(".parquet").then_some(Listed {
                path,
                size: m.size,
                hour_us,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.hour_us, &a.path).cmp(&(b.hour_us, &b.path)));
    Ok(out)
}

fn fingerprint<'a>(files: impl Iterator<Item = &'a Listed>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update(&f.size.to_le_bytes());
    }
    format!("{:032x}", h.digest128())
}

/// The instants `[from, to)` whose events can count for a recipient
/// assigned on `day` (which starts at `start`): its windows reach from
/// `start − pre-period` to the day's end plus the window.
fn event_range(start: i64, key: &OutcomeKey) -> (i64, i64) {
    (start - key.pre_us(), start + DAY_US + key.window_us() + 1)
}

/// Brings the outcomes for `key` up to date (rebuilding them when they
/// were kept for another key) and returns what a report reads.
pub async fn refresh(
    root: &DataRoot,
    key: &OutcomeKey,
) -> Result<(Snapshot, RefreshStats), ReportError> {
    let done = refresh_if(root, key, true).await?;
    done.ok_or_else(|| ReportError::Outcomes("a refresh for any key skipped (a bug)".into()))
}

/// [`refresh`]; when `other_keys` is false, outcomes kept for another key
/// are left alone and the answer is `None`. The state is read once, under
/// the lock, so a refresh always starts from the latest one.
async fn refresh_if(
    root: &DataRoot,
    key: &OutcomeKey,
    other_keys: bool,
) -> Result<Option<(Snapshot, RefreshStats)>, ReportError> {
    let _one = REFRESHING.lock().await;
    let started = Instant::now();
    let stored = read_state(root).await?;
    if !other_keys && stored.state.as_ref().is_some_and(|s| s.key != *key) {
        return Ok(None);
    }
    let old = stored.state.filter(|s| s.key == *key);
    let mut stats = RefreshStats {
        rebuilt: old.is_none(),
        ..RefreshStats::default()
    };
    let mut state = old.clone().unwrap_or_else(|| State::empty(key));
    // A rebuild replaces another key's or version's outcomes: their files
    // are retired like any replaced file, so reports still reading them
    // have the grace.
    let mut retiring: Vec<String> = if old.is_none() {
        stored.files
    } else {
        Vec::new()
    };

    let (assignments, events, identities, sends) = (
        list(root, "assignments").await?,
        list(root, "events").await?,
        list(root, "identities").await?,
        list(root, "sends").await?,
    );

    // Which event files are new since the last refresh, and which hours
    // lost a file (compaction swaps an hour's files for one).
    let now_events: BTreeMap<&str, u64> =
        events.iter().map(|f| (f.path.as_str(), f.size)).collect();
    let added: Vec<&Listed> = events
        .iter()
        .filter(|f| state.events.get(&f.path) != Some(&f.size))
        .collect();
    let removed_hours: Vec<i64> = state
        .events
        .iter()
        .filter(|(p, size)| now_events.get(p.as_str()) != Some(*size))
        .filter_map(|(p, _)| hour_of(p))
        .collect();
    let reaches = |day: &str, hour_us: i64| {
        let (from, to) = event_range(day_start(day).unwrap_or_default(), key);
        hour_us + HOUR_US > from && hour_us < to
    };

    // Per day: recomputed in full when its assignments changed, an event
    // file it read went away, or it is new; brought up to date by a diff
    // when only new event files reach it; else untouched.
    let mut by_day: BTreeMap<String, Vec<&Listed>> = BTreeMap::new();
    for f in &assignments {
        by_day.entry(f.day()).or_default().push(f);
    }
    let fps: BTreeMap<String, String> = by_day
        .iter()
        .map(|(day, files)| (day.clone(), fingerprint(files.iter().copied())))
        .collect();
    let mut full: BTreeSet<String> = BTreeSet::new();
    let mut diff: BTreeSet<String> = BTreeSet::new();
    for (day, fp) in &fps {
        let kept = state.days.get(day);
        if kept.is_none_or(|d| &d.assignments != fp)
            || removed_hours.iter().any(|h| reaches(day, *h))
        {
            full.insert(day.clone());
            continue;
        }
        if added.iter().any(|f| reaches(day, f.hour_us)) {
            diff.insert(day.clone());
        }
    }
    // New identity links move their anonymous ids' events to another
    // customer: every day whose windows reach an hour holding such events
    // is recomputed in full.
    let new_links: Vec<&Listed> = identities
        .iter()
        .filter(|f| state.identities.get(&f.path) != Some(&f.size))
        .collect();
    if old.is_some() && !new_links.is_empty() && full.len() < fps.len() {
        let hours = linked_event_hours(root, &new_links).await?;
        for day in fps.keys() {
            if hours.iter().any(|h| reaches(day, *h)) {
                full.insert(day.clone());
            }
        }
    }
    diff.retain(|day| !full.contains(day));

    // Versions only grow, even if the clock steps back: a diff's rows must
    // be newer than the rows it retracts.
    let now = kairos_core::time::now_us().max(state.last_version + 1);
    if !full.is_empty() || !diff.is_empty() {
        state.last_version = now;
    }
    let generation = format!("{now}-{:08x}", rand_suffix());
    let retire = |retiring: &mut Vec<String>, files: Vec<String>| retiring.extend(files);
    if !full.is_empty() {
        let t = Instant::now();
        // In runs of at most FULL_DAYS days: a run's files are held in
        // memory until written, and a year rebuilt at once would not fit.
        let days: Vec<String> = full.iter().cloned().collect();
        let mut written = BTreeMap::new();
        for run in days.chunks(FULL_DAYS) {
            let run: BTreeSet<String> = run.iter().cloned().collect();
            written.extend(recompute(root, key, &run, &events, &generation, now).await?);
        }
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "outcomes: full");
        for day in &full {
            if let Some(prev) = state.days.remove(day) {
                retire(&mut retiring, prev.files);
            }
            // A day with assignment files always has rows; one without
            // (all its files moved away) simply drops out.
            if let Some(w) = written.get(day).cloned() {
                stats.recipients_recomputed += w.rows;
                state.days.insert(
                    day.clone(),
                    DayState {
                        assignments: fps[day].clone(),
                        files: vec![w.file],
                        recipients: w.rows,
                        groups: w.groups,
                    },
                );
            }
        }
        stats.days_recomputed = full.len();
    }
    if !diff.is_empty() {
        let days: BTreeMap<String, Vec<String>> = diff
            .iter()
            .filter_map(|d| Some((d.clone(), state.days.get(d)?.files.clone())))
            .collect();
        let new: Vec<String> = added
            .iter()
            .filter(|f| diff.iter().any(|d| reaches(d, f.hour_us)))
            .map(|f| f.path.clone())
            .collect();
        let t = Instant::now();
        let written = apply_events(root, key, &days, &new, &generation, now).await?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "outcomes: diff");
        for (day, mut files) in days {
            if let Some(w) = written.get(&day) {
                stats.diff_rows += w.rows;
                files.push(w.file.clone());
            }
            if files.len() > MAX_DIFFS + 1 {
                let merged = merge_diffs(root, &day, &files[1..], &generation).await?;
                retire(&mut retiring, files.split_off(1));
                files.push(merged);
            }
            if let Some(d) = state.days.get_mut(&day) {
                d.files = files;
            }
        }
        stats.days_diffed = diff.len();
    }
    state.events = events.iter().map(|f| (f.path.clone(), f.size)).collect();
    // Days whose assignment files are all gone.
    let gone: Vec<String> = state
        .days
        .keys()
        .filter(|d| !fps.contains_key(*d))
        .cloned()
        .collect();
    for day in gone {
        if let Some(prev) = state.days.remove(&day) {
            retire(&mut retiring, prev.files);
        }
    }

    // Messages: per day of `sends/`, recounted when its files change.
    let mut send_days: BTreeMap<String, Vec<&Listed>> = BTreeMap::new();
    for f in &sends {
        send_days.entry(f.day()).or_default().push(f);
    }
    let send_inputs: BTreeMap<String, String> = send_days
        .iter()
        .map(|(d, fs)| (d.clone(), fingerprint(fs.iter().copied())))
        .collect();
    let recount: Vec<String> = send_inputs
        .iter()
        .filter(|(d, fp)| state.sends.get(*d).is_none_or(|s| &s.inputs != *fp))
        .map(|(d, _)| d.clone())
        .collect();
    if !recount.is_empty() {
        let t = Instant::now();
        let mut counts = count_sends(root, &recount).await?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "outcomes: sends");
        for day in &recount {
            state.sends.insert(
                day.clone(),
                SendDay {
                    inputs: send_inputs[day].clone(),
                    counts: counts.remove(day).unwrap_or_default(),
                },
            );
        }
    }
    state.sends.retain(|d, _| send_inputs.contains_key(d));
    stats.send_days_recounted = recount.len();
    state.identities = identities
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .collect();

    if old.as_ref() != Some(&state) || !retiring.is_empty() {
        // The grace of a retired file starts when the state that stops
        // naming it is written, not when the refresh began.
        let written = kairos_core::time::now_us();
        state.refreshed_at_us = written;
        state
            .retired
            .extend(retiring.into_iter().map(|file| Retired {
                file,
                at_us: written,
            }));
        let expired: Vec<Retired> = state
            .retired
            .iter()
            .filter(|r| written - r.at_us > GRACE_SECS as i64 * 1_000_000)
            .cloned()
            .collect();
        state.retired.retain(|r| !expired.contains(r));
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| ReportError::Outcomes(e.to_string()))?;
        root.store
            .put(&state_path(), PutPayload::from(json))
            .await
            .map_err(|e| ReportError::Outcomes(format!("writing {DIR}/state.json: {e}")))?;
        // Only after the new state names their successors.
        for r in expired {
            let _ = root.store.delete(&ObjectPath::from(r.file.as_str())).await;
        }
        delete_orphans(root, &state, written).await;
    }
    stats.days = state.days.len();
    stats.elapsed = started.elapsed();
    if stats.days_recomputed > 0 || stats.days_diffed > 0 || stats.send_days_recounted > 0 {
        tracing::info!(
            days = stats.days_recomputed,
            diffed = stats.days_diffed,
            diff_rows = stats.diff_rows,
            recipients = stats.recipients_recomputed,
            send_days = stats.send_days_recounted,
            rebuilt = stats.rebuilt,
            ms = stats.elapsed.as_millis() as u64,
            "outcomes refreshed"
        );
    }
    Ok(Some((Snapshot::of(&state), stats)))
}

/// Deletes day files no state names (a refresh that crashed before its
/// state was written, a damaged state) once they are older than the
/// grace, so a refresh still writing its files is left alone.
async fn delete_orphans(root: &DataRoot, state: &State, now: i64) {
    let named: BTreeSet<&str> = state
        .days
        .values()
        .flat_map(|d| d.files.iter().map(String::as_str))
        .chain(state.retired.iter().map(|r| r.file.as_str()))
        .collect();
    let Ok(files) = root.list(&ObjectPath::from(format!("{DIR}/data"))).await else {
        return;
    };
    for f in files {
        let age_us = now - f.last_modified.timestamp_micros();
        if !named.contains(f.location.as_ref()) && age_us > GRACE_SECS as i64 * 1_000_000 {
            let _ = root.store.delete(&f.location).await;
        }
    }
}

/// A few random bits for file names, so two processes refreshing the same
/// root at once never write the same file.
fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The hours of `events/` holding an event of an anonymous id that one of
/// `links` (new `identities/` files) maps.
async fn linked_event_hours(
    root: &DataRoot,
    links: &[&Listed],
) -> Result<BTreeSet<i64>, ReportError> {
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for f in links {
        let batches = kairos_storage::tables::read_parquet(
            root,
            &ObjectPath::from(f.path.as_str()),
            Some(&["anonymous_id"]),
        )
        .await
        .map_err(storage)?;
        for b in &batches {
            let c = cast(b.column(0), &DataType::Utf8)?;
            ids.extend(c.as_string::<i32>().iter().flatten().map(str::to_string));
        }
    }
    let lake = Lake::for_queries(root, &tables())?;
    let ids: Vec<String> = ids.into_iter().collect();
    let mut hours = BTreeSet::new();
    // Literal lists, so the events' bloom filters and sorted pages skip
    // the files and pages without these ids.
    for chunk in ids.chunks(500) {
        let list: Vec<String> = chunk.iter().map(|i| lit(i)).collect();
        let q = format!(
            "SELECT DISTINCT date, hour FROM events WHERE customer_id IN ({})",
            list.join(", ")
        );
        for b in lake.ctx.sql(&q).await?.collect().await? {
            let (d, h) = (
                cast(b.column(0), &DataType::Utf8)?,
                cast(b.column(1), &DataType::Utf8)?,
            );
            let (d, h) = (d.as_string::<i32>(), h.as_string::<i32>());
            for i in 0..b.num_rows() {
                if let Some(t) = hour_of(&format!("date={}/hour={}", d.value(i), h.value(i))) {
                    hours.insert(t);
                }
            }
        }
    }
    Ok(hours)
}

/// Recomputes the outcomes of `days` in one query and writes one file per
/// day; returns each day's file, rows and groups.
async fn recompute(
    root: &DataRoot,
    key: &OutcomeKey,
    days: &BTreeSet<String>,
    events: &[Listed],
    generation: &str,
    version: i64,
) -> Result<BTreeMap<String, Written>, ReportError> {
    // The listed event files any of the days' windows reach, and only
    // those: a file published since the listing is not in the state's
    // `events` yet, so the next refresh adds it as a diff; read here too,
    // it would count twice.
    let ranges: Vec<(i64, i64)> = days
        .iter()
        .map(|d| event_range(day_start(d).unwrap_or_default(), key))
        .collect();
    let event_files: Vec<String> = events
        .iter()
        .filter(|e| {
            ranges
                .iter()
                .any(|(from, to)| e.hour_us + HOUR_US > *from && e.hour_us < *to)
        })
        .map(|e| e.path.clone())
        .collect();
    let day_list = |set: &BTreeSet<String>| -> String {
        if set.is_empty() {
            "NULL".into()
        } else {
            set.iter().map(|d| lit(d)).collect::<Vec<_>>().join(", ")
        }
    };
    let (w, p) = (key.window_us(), key.pre_us());
    let (conv, rev) = (lit(&key.conversion_event), lit(&key.revenue_event));
    let q = format!(
        "WITH {events},
         rcp AS (
           SELECT date, experiment, arm, variant, customer_id, assigned_at,
                  CAST(assigned_at AS BIGINT) AS at, {g} AS g,
                  {ID_HASH}(customer_id, 1) AS k1, {ID_HASH}(customer_id, 2) AS k2
           FROM assignments WHERE date IN ({days})),
         per AS (
           SELECT r.g, r.k1, r.k2, r.at, {sums}
           FROM ev JOIN rcp r ON {join}
           GROUP BY r.g, r.k1, r.k2, r.at)
         SELECT r.experiment, r.arm, r.variant, r.customer_id, r.assigned_at, r.g,
                coalesce(per.converted, 0) = 1 AS converted,
                coalesce(per.y, 0.0) AS revenue, coalesce(per.x, 0.0) AS pre_revenue,
                CAST(1 AS BIGINT) AS weight, CAST({version} AS BIGINT) AS version,
                r.k1, r.k2, r.date AS day
         FROM rcp r LEFT JOIN per
           ON per.g = r.g AND per.k1 = r.k1 AND per.k2 = r.k2 AND per.at = r.at",
        days = day_list(days),
        events = events_ctes("listed_events", &conv, &rev, ""),
        g = group_hash("experiment"),
        sums = window_sums("r", &conv, &rev),
        join = in_windows("r", p, w),
    );
    let lake = Lake::for_queries(root, &tables())?;
    lake.ctx.register_table(
        "listed_events",
        parquet_table(&event_files, events_schema()?)?,
    )?;
    let stream = lake.ctx.sql(&q).await?.execute_stream().await?;
    write_by_day(root, stream, &format!("{generation}.parquet")).await
}

/// A day's file written by [`write_by_day`].
#[derive(Clone, Debug)]
struct Written {
    file: String,
    rows: u64,
    groups: Vec<Group>,
}

/// The columns of `events/` the outcomes read.
fn events_schema() -> Result<SchemaRef, ReportError> {
    crate::lake::table_schema("events")
        .ok_or_else(|| ReportError::Outcomes("no events schema".into()))
}

/// Writes outcome rows (columns in [`schema`] order) as one file per
/// `day`, named `name` in its folder.
async fn write_by_day(
    root: &DataRoot,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    name: &str,
) -> Result<BTreeMap<String, Written>, ReportError> {
    let schema = schema();
    let day_col = schema.index_of("day")?;
    // Rows come in join order, so no sort order is recorded ("" names no
    // column).
    let props = kairos_storage::tables::writer_properties(&schema, "", &[], 128 * 1024);
    // One writer per day, fed as batches arrive, so memory holds the
    // compressed files rather than every row.
    let mut writers: BTreeMap<String, (ArrowWriter<Vec<u8>>, u64, BTreeMap<i64, Group>)> =
        BTreeMap::new();
    while let Some(batch) = stream.next().await {
        let rows = conform(&batch?, &schema, 0)?;
        let days = rows.column(day_col).as_string::<i32>();
        let distinct: BTreeSet<&str> = days.iter().flatten().collect();
        for day in distinct {
            let mask = eq(days, &StringArray::new_scalar(day))?;
            let part = filter_record_batch(&rows, &mask)?;
            let (w, n, groups) = match writers.get_mut(day) {
                Some(w) => w,
                None => {
                    let w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?;
                    writers
                        .entry(day.to_string())
                        .or_insert((w, 0, BTreeMap::new()))
                }
            };
            w.write(&part)?;
            *n += part.num_rows() as u64;
            note_groups(&part, groups);
        }
    }
    let mut out = BTreeMap::new();
    for (day, (w, rows, groups)) in writers {
        let bytes = w.into_inner()?;
        let file = format!("{DIR}/data/date={day}/{name}");
        root.store
            .put(&ObjectPath::from(file.as_str()), PutPayload::from(bytes))
            .await
            .map_err(|e| ReportError::Outcomes(format!("writing {file}: {e}")))?;
        let groups = groups.into_values().collect();
        out.insert(day, Written { file, rows, groups });
    }
    Ok(out)
}

/// Brings the `days` (each with its current files) up to date with the
/// `new` event files alone: for every recipient those events reach, a
/// retraction of its current row (weight −1) and its new row (weight 1,
/// the new events' sums added). One diff file per day the events reach.
/// Exact because nothing else changed for these days: their assignments,
/// the event files they read and their identity links are as they were
/// (else [`refresh`] recomputes them in full).
async fn apply_events(
    root: &DataRoot,
    key: &OutcomeKey,
    days: &BTreeMap<String, Vec<String>>,
    new: &[String],
    generation: &str,
    version: i64,
) -> Result<BTreeMap<String, Written>, ReportError> {
    let lake = Lake::open(root)?;
    let files: Vec<String> = days.values().flatten().cloned().collect();
    lake.ctx
        .register_table("cur", parquet_table(&files, schema())?)?;
    lake.ctx
        .register_table("new_events", parquet_table(new, events_schema()?)?)?;
    let (w, p) = (key.window_us(), key.pre_us());
    let (conv, rev) = (lit(&key.conversion_event), lit(&key.revenue_event));
    // Three small steps, each result kept in memory, so the days' rows are
    // scanned once (as CTEs, `hit` and `old` were inlined and scanned for
    // every use): the new events; the current rows of the recipients they
    // hit; then the retractions and new rows.
    let ev = format!(
        "WITH {} SELECT * FROM ev",
        events_ctes("new_events", &conv, &rev, "")
    );
    if !keep(&lake, "ev", &ev).await? {
        return Ok(BTreeMap::new());
    }
    // The new events (and the recipients they hit) are the build side of
    // each join with the days' rows, on the stored hashes, so the join's
    // dynamic filter skips every untouched recipient in the scan. (`h.at`
    // is selected so the last join stays an inner join: as a semi join the
    // planner would build it on the days' millions of rows.)
    let old = format!(
        "WITH hit AS (
           SELECT DISTINCT c.g, c.k1, c.k2, c.at
           FROM ev JOIN (SELECT *, CAST(assigned_at AS BIGINT) AS at FROM cur WHERE weight > 0) c
             ON {hit_join})
         SELECT * FROM (
           SELECT c.*, h.at,
                  row_number() OVER (PARTITION BY c.g, c.k1, c.k2, c.assigned_at
                                     ORDER BY c.version DESC) AS rn
           FROM hit h JOIN cur c ON c.k1 = h.k1 AND c.k2 = h.k2 AND c.g = h.g
             AND CAST(c.assigned_at AS BIGINT) = h.at
           WHERE c.weight > 0)
         WHERE rn = 1",
        hit_join = in_windows("c", p, w),
    );
    if !keep(&lake, "old", &old).await? {
        return Ok(BTreeMap::new());
    }
    let q = format!(
        "WITH touch AS (
           SELECT o.g, o.k1, o.k2, o.at, {sums}
           FROM ev JOIN old o ON {join}
           GROUP BY o.g, o.k1, o.k2, o.at)
         SELECT experiment, arm, variant, customer_id, assigned_at, g, converted, revenue,
                pre_revenue, CAST(-1 AS BIGINT) AS weight, CAST({version} AS BIGINT) AS version,
                k1, k2, day
         FROM old
         UNION ALL
         SELECT o.experiment, o.arm, o.variant, o.customer_id, o.assigned_at, o.g,
                o.converted OR t.converted = 1, o.revenue + t.y, o.pre_revenue + t.x,
                CAST(1 AS BIGINT), CAST({version} AS BIGINT), o.k1, o.k2, o.day
         FROM old o JOIN touch t ON o.g = t.g AND o.k1 = t.k1 AND o.k2 = t.k2 AND o.at = t.at",
        sums = window_sums("o", &conv, &rev),
        join = in_windows("o", p, w),
    );
    let stream = lake.ctx.sql(&q).await?.execute_stream().await?;
    write_by_day(root, stream, &format!("{generation}-diff.parquet")).await
}

/// Runs `query` and keeps its rows in memory as table `name`; false when
/// there are none.
async fn keep(lake: &Lake, name: &str, query: &str) -> Result<bool, ReportError> {
    let df = lake.ctx.sql(query).await?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await?;
    let any = batches.iter().any(|b| b.num_rows() > 0);
    lake.ctx
        .register_table(name, Arc::new(MemTable::try_new(schema, vec![batches])?))?;
    Ok(any)
}

/// Merges a day's diff files into one (their rows as they are).
async fn merge_diffs(
    root: &DataRoot,
    day: &str,
    diffs: &[String],
    generation: &str,
) -> Result<String, ReportError> {
    let lake = Lake::open(root)?;
    lake.ctx
        .register_table("diffs", parquet_table(diffs, schema())?)?;
    let batches = lake.ctx.sql("SELECT * FROM diffs").await?.collect().await?;
    let file = format!("{DIR}/data/date={day}/{generation}-diffs.parquet");
    put_rows(root, &file, &batches).await?;
    Ok(file)
}

/// Writes `batches` (outcome rows, columns in [`schema`] order) as `file`
/// unless there are none; returns the rows.
async fn put_rows(
    root: &DataRoot,
    file: &str,
    batches: &[RecordBatch],
) -> Result<u64, ReportError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(0);
    }
    let schema = schema();
    let props = kairos_storage::tables::writer_properties(&schema, "", &[], 128 * 1024);
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
    for b in batches {
        w.write(&conform(b, &schema, 0)?)?;
    }
    root.store
        .put(&ObjectPath::from(file), PutPayload::from(w.into_inner()?))
        .await
        .map_err(|e| ReportError::Outcomes(format!("writing {file}: {e}")))?;
    Ok(rows as u64)
}

/// `batch`'s columns from `skip` on, cast to `schema`'s types by position
/// (DataFusion may hand back views or other string encodings).
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    skip: usize,
) -> Result<RecordBatch, ReportError> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        cols.push(cast(batch.column(i + skip), f.data_type())?);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Adds the groups of `rows` (outcome rows) not yet in `groups`.
fn note_groups(rows: &RecordBatch, groups: &mut BTreeMap<i64, Group>) {
    let g = rows.column(5).as_primitive::<Int64Type>();
    let (e, a, v) = (
        rows.column(0).as_string::<i32>(),
        rows.column(1).as_string::<i32>(),
        rows.column(2).as_string::<i32>(),
    );
    for i in 0..rows.num_rows() {
        if g.is_valid(i) && !groups.contains_key(&g.value(i)) {
            groups.insert(
                g.value(i),
                Group {
                    g: g.value(i),
                    experiment: e.value(i).to_string(),
                    arm: a.value(i).to_string(),
                    variant: v.is_valid(i).then(|| v.value(i).to_string()),
                },
            );
        }
    }
}

/// `send` decisions per (rule, arm, variant) of each of `days` of `sends/`.
async fn count_sends(
    root: &DataRoot,
    days: &[String],
) -> Result<BTreeMap<String, Vec<MessageCount>>, ReportError> {
    let lake = Lake::for_queries(root, &tables())?;
    let list: Vec<String> = days.iter().map(|d| lit(d)).collect();
    let q = format!(
        "SELECT date, rule, arm, variant, count(*) AS messages FROM sends
         WHERE decision = 'send' AND date IN ({}) GROUP BY date, rule, arm, variant",
        list.join(", ")
    );
    let mut out: BTreeMap<String, Vec<MessageCount>> = BTreeMap::new();
    for b in lake.ctx.sql(&q).await?.collect().await? {
        let s = |i: usize| cast(b.column(i), &DataType::Utf8);
        let (d, r, a, v) = (s(0)?, s(1)?, s(2)?, s(3)?);
        let (d, r, a, v) = (
            d.as_string::<i32>(),
            r.as_string::<i32>(),
            a.as_string::<i32>(),
            v.as_string::<i32>(),
        );
        let n = cast(b.column(4), &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.entry(d.value(i).to_string())
                .or_default()
                .push(MessageCount {
                    rule: r.value(i).to_string(),
                    arm: a.value(i).to_string(),
                    variant: v.is_valid(i).then(|| v.value(i).to_string()),
                    messages: n.value(i),
                });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use datafusion::arrow::array::{ArrayRef, Float64Array, TimestampMicrosecondArray};

    use crate::metrics::tests::{DAY, T0, tiny_lake};
    use crate::metrics::{ArmSums, Source, arm_sums, daily_arm_sums};
    use crate::options::Capping;

    fn strs(v: Vec<Option<String>>) -> ArrayRef {
        Arc::new(v.into_iter().collect::<StringArray>())
    }
    fn times(v: Vec<i64>) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    }

    /// Writes `cols` as `table` files named `file`, one per hour folder of
    /// the rows' `time` column, as the publisher lays them out.
    fn write(dir: &Path, table: &str, time: &str, file: &str, cols: Vec<(&str, ArrayRef)>) {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .expect("batch");
        let t = batch.column_by_name(time).expect("time column");
        let t = t.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        let folders: Vec<String> = t
            .values()
            .iter()
            .map(|us| kairos_storage::tables::partition_dir(table, *us))
            .collect();
        for folder in folders.iter().collect::<BTreeSet<_>>() {
            let mask: datafusion::arrow::array::BooleanArray =
                folders.iter().map(|f| Some(f == folder)).collect();
            let part = filter_record_batch(&batch, &mask).expect("filter");
            let path = dir.join(folder);
            std::fs::create_dir_all(&path).expect("mkdir");
            let f = std::fs::File::create(path.join(file)).expect("create");
            let mut w = ArrowWriter::try_new(f, part.schema(), None).expect("writer");
            w.write(&part).expect("write");
            w.close().expect("close");
        }
    }

    /// A small deterministic generator (no dependency needed for this).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    struct Events {
        ids: Vec<Option<String>>,
        types: Vec<Option<String>>,
        at: Vec<i64>,
        revenue: Vec<Option<f64>>,
    }

    /// Purchases: (customer, µs, revenue).
    fn purchases(rows: &[(&str, i64, f64)]) -> Events {
        Events {
            ids: rows.iter().map(|r| Some(r.0.to_string())).collect(),
            types: vec![Some("purchase".into()); rows.len()],
            at: rows.iter().map(|r| r.1).collect(),
            revenue: rows.iter().map(|r| Some(r.2)).collect(),
        }
    }

    fn events(dir: &Path, file: &str, e: Events) {
        write(
            dir,
            "events",
            "timestamp",
            file,
            vec![
                ("customer_id", strs(e.ids)),
                ("event_type", strs(e.types)),
                ("timestamp", times(e.at)),
                ("revenue", Arc::new(Float64Array::from(e.revenue))),
            ],
        );
    }

    fn assignments(dir: &Path, file: &str, rows: &[(&str, &str, Option<&str>, String, i64)]) {
        let s = |f: &dyn Fn(&(&str, &str, Option<&str>, String, i64)) -> Option<String>| {
            strs(rows.iter().map(f).collect())
        };
        write(
            dir,
            "assignments",
            "assigned_at",
            file,
            vec![
                ("experiment", s(&|r| Some(r.0.to_string()))),
                ("arm", s(&|r| Some(r.1.to_string()))),
                ("variant", s(&|r| r.2.map(str::to_string))),
                ("customer_id", s(&|r| Some(r.3.clone()))),
                ("assigned_at", times(rows.iter().map(|r| r.4).collect())),
            ],
        );
    }

    fn sends(dir: &Path, file: &str, rows: &[(&str, &str, String, &str, i64)]) {
        let s = |f: &dyn Fn(&(&str, &str, String, &str, i64)) -> Option<String>| {
            strs(rows.iter().map(f).collect())
        };
        write(
            dir,
            "sends",
            "decided_at",
            file,
            vec![
                ("rule", s(&|r| Some(r.0.to_string()))),
                ("arm", s(&|r| Some(r.1.to_string()))),
                ("customer_id", s(&|r| Some(r.2.clone()))),
                ("decision", s(&|r| Some(r.3.to_string()))),
                ("decided_at", times(rows.iter().map(|r| r.4).collect())),
            ],
        );
    }

    fn identities(dir: &Path, file: &str, links: &[(&str, &str, i64)]) {
        write(
            dir,
            "identities",
            "linked_at",
            file,
            vec![
                (
                    "anonymous_id",
                    strs(links.iter().map(|l| Some(l.0.to_string())).collect()),
                ),
                (
                    "user_id",
                    strs(links.iter().map(|l| Some(l.1.to_string())).collect()),
                ),
                ("linked_at", times(links.iter().map(|l| l.2).collect())),
            ],
        );
    }

    /// 300 customers over 24 days: two experiments (`cart` with three arms
    /// and two variants), purchases and views before, in and after the
    /// windows, anonymous purchases linked to customers, and sends.
    fn random_lake(dir: &Path) {
        let mut r = Lcg(7);
        let mut a = Vec::new();
        let mut s = Vec::new();
        let mut ev = Events {
            ids: vec![],
            types: vec![],
            at: vec![],
            revenue: vec![],
        };
        for c in 0..300 {
            let id = format!("c{c:03}");
            for exp in ["cart", "other"] {
                if r.below(10) < 7 {
                    let arm = ["holdout", "scheduled", "triggered"][r.below(3) as usize];
                    let variant = (arm == "triggered").then(|| ["A", "B"][r.below(2) as usize]);
                    let at = T0 + r.below(24 * 24) as i64 * DAY / 24 + r.below(1000) as i64;
                    a.push((exp, arm, variant, id.clone(), at));
                    if arm != "holdout" && r.below(2) == 0 {
                        s.push((exp, arm, id.clone(), "send", at));
                    }
                }
            }
            for _ in 0..r.below(5) {
                let buy = r.below(3) > 0;
                ev.ids.push(Some(if r.below(8) == 0 {
                    format!("anon-{c}")
                } else {
                    id.clone()
                }));
                ev.types
                    .push(Some(if buy { "purchase" } else { "product_viewed" }.into()));
                ev.at
                    .push(T0 - 8 * DAY + r.below(34 * 24) as i64 * DAY / 24);
                ev.revenue
                    .push(buy.then(|| (r.below(20_000) as f64) / 100.0));
            }
        }
        assignments(dir, "a1.parquet", &a);
        sends(dir, "s1.parquet", &s);
        events(dir, "e1.parquet", ev);
        let links: Vec<(String, String, i64)> = (0..300)
            .step_by(3)
            .map(|c| (format!("anon-{c}"), format!("c{c:03}"), T0))
            .collect();
        let links: Vec<(&str, &str, i64)> = links
            .iter()
            .map(|(a, u, t)| (a.as_str(), u.as_str(), *t))
            .collect();
        identities(dir, "i1.parquet", &links);
    }

    fn root(dir: &Path) -> DataRoot {
        DataRoot::open(dir.to_str().expect("utf8")).expect("root")
    }

    fn same(raw: &[ArmSums], kept: &[ArmSums], what: &str) {
        assert_eq!(raw.len(), kept.len(), "{what}: {raw:#?}\nvs\n{kept:#?}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs());
        for (a, b) in raw.iter().zip(kept) {
            let ints = |x: &ArmSums| {
                (
                    x.experiment.clone(),
                    x.arm.clone(),
                    x.variant.clone(),
                    x.day,
                    x.recipients,
                    x.messages,
                    x.conversions,
                    x.first_assigned_us,
                    x.last_assigned_us,
                    x.open_window,
                )
            };
            assert_eq!(ints(a), ints(b), "{what}");
            let floats = |x: &ArmSums| {
                [
                    x.revenue_uncapped,
                    x.revenue_sum,
                    x.revenue_sum_squares,
                    x.covariate_sum,
                    x.covariate_sum_squares,
                    x.sum_products,
                    x.cap.unwrap_or(-1.0),
                ]
            };
            for (p, q) in floats(a).iter().zip(floats(b)) {
                assert!(close(*p, q), "{what}: {a:?} vs {b:?}");
            }
        }
    }

    /// Every report shape answered from the outcomes equals the raw query.
    async fn check(dir: &Path, snapshot: &Snapshot, what: &str) {
        let lake = Lake::open(&root(dir)).expect("lake");
        let caps = [
            Capping::None,
            Capping::Absolute { value: 60.0 },
            Capping::Percentile { percentile: 90.0 },
        ];
        for cap in caps {
            let o = ReportOptions {
                cap,
                ..ReportOptions::default()
            };
            for rule in [Some("cart"), None] {
                let raw = arm_sums(&lake, &o, rule, Source::Raw).await.expect("raw");
                let kept = arm_sums(&lake, &o, rule, Source::Outcomes(snapshot))
                    .await
                    .expect("kept");
                assert!(!raw.0.is_empty(), "{what}: the lake has arms");
                same(&raw.0, &kept.0, &format!("{what}, {o:?}, {rule:?}"));
            }
            let raw = daily_arm_sums(&lake, &o, Some("cart"), Source::Raw)
                .await
                .expect("raw");
            let kept = daily_arm_sums(&lake, &o, Some("cart"), Source::Outcomes(snapshot))
                .await
                .expect("kept");
            same(&raw.0, &kept.0, &format!("{what}, by day, {o:?}"));
        }
    }

    fn key() -> OutcomeKey {
        OutcomeKey::of(&ReportOptions::default())
    }

    #[tokio::test]
    async fn the_tiny_lake_reads_the_same_from_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let (snapshot, stats) = refresh(&root(dir.path()), &key()).await.expect("refresh");
        assert!(stats.rebuilt && stats.days_recomputed == 1, "{stats:?}");
        check(dir.path(), &snapshot, "tiny").await;
    }

    #[tokio::test]
    async fn only_days_whose_inputs_changed_are_recomputed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        random_lake(d);
        let r = root(d);
        let (snapshot, stats) = refresh(&r, &key()).await.expect("build");
        assert!(stats.rebuilt, "{stats:?}");
        assert_eq!(stats.days, 24, "one file per day of assignments: {stats:?}");
        check(d, &snapshot, "built").await;

        let state = || std::fs::read(d.join(DIR).join("state.json")).expect("state");
        let before = state();
        let (_, stats) = refresh(&r, &key()).await.expect("again");
        assert!(
            before == state(),
            "a refresh that finds nothing writes nothing"
        );
        assert_eq!(
            (
                stats.days_recomputed,
                stats.send_days_recounted,
                stats.rebuilt
            ),
            (0, 0, false),
            "nothing changed: {stats:?}"
        );

        // A late purchase on day 20 of someone assigned on day 16: only the
        // days whose windows (7 days after, 7 before) reach day 20 change.
        let late = purchases(&[
            ("c001", T0 + 20 * DAY + 5, 12.5),
            ("c002", T0 + 20 * DAY + 7, 1000.0),
        ]);
        events(d, "late.parquet", late);
        let (snapshot, stats) = refresh(&r, &key()).await.expect("late event");
        assert_eq!(stats.days_recomputed, 0, "{stats:?}");
        assert!(
            (8..=16).contains(&stats.days_diffed),
            "days 12–23 reach day 20 (the first 12 do not): {stats:?}"
        );
        assert!(
            stats.diff_rows > 0,
            "c001 or c002 was assigned then: {stats:?}"
        );
        check(d, &snapshot, "late event").await;

        // More late purchases, one refresh each: diffs on diffs (merged
        // beyond MAX_DIFFS per day), still the raw answer, with caps.
        for i in 0..(MAX_DIFFS + 2) {
            let c = format!("c{:03}", 10 + i);
            // c001 and c002 again each time: a recipient's diff on its diff.
            let i64 = i as i64;
            let late = purchases(&[
                (&c, T0 + 19 * DAY + i64, 5.0 + i as f64),
                (&c, T0 + 21 * DAY + i64, 300.0 * i as f64),
                ("c001", T0 + 20 * DAY + 100 + i64, 1.5),
                ("c002", T0 + 20 * DAY + 200 + i64, 2.5),
            ]);
            events(d, &format!("late-{i}.parquet"), late);
            let (_, stats) = refresh(&r, &key()).await.expect("another late event");
            assert_eq!(stats.days_recomputed, 0, "{stats:?}");
        }
        let (snapshot, _) = refresh(&r, &key()).await.expect("settled");
        let most = snapshot.files.len();
        assert!(
            most <= 24 * (MAX_DIFFS + 1),
            "diffs are merged: {most} files for 24 days"
        );
        check(d, &snapshot, "many diffs").await;

        // An event file taken away (as compaction swaps an hour's files)
        // makes the days that read it recompute in full.
        let late_dir = d.join(kairos_storage::tables::partition_dir(
            "events",
            T0 + 20 * DAY,
        ));
        std::fs::remove_file(late_dir.join("late.parquet")).expect("remove");
        let (snapshot, stats) = refresh(&r, &key()).await.expect("removed");
        assert!(
            stats.days_recomputed >= 8 && stats.days_diffed == 0,
            "{stats:?}"
        );
        check(d, &snapshot, "event file removed").await;

        // A new link moves anon-1's purchases (none linked before) to c001.
        identities(d, "i2.parquet", &[("anon-1", "c001", T0 + 30 * DAY)]);
        let (snapshot, stats) = refresh(&r, &key()).await.expect("new link");
        check(d, &snapshot, "new link").await;
        // The link changes a customer's revenue only if anon-1 has events.
        let _ = stats;

        // New assignments on a new day (and their sends).
        let new = vec![
            (
                "cart",
                "triggered",
                Some("A"),
                "c001x".to_string(),
                T0 + 26 * DAY,
            ),
            (
                "cart",
                "holdout",
                None,
                "c002x".to_string(),
                T0 + 26 * DAY + 1,
            ),
        ];
        assignments(d, "a2.parquet", &new);
        sends(
            d,
            "s2.parquet",
            &[("cart", "triggered", "c001x".into(), "send", T0 + 26 * DAY)],
        );
        let (snapshot, stats) = refresh(&r, &key()).await.expect("new day");
        assert_eq!(
            (stats.days, stats.send_days_recounted),
            (25, 1),
            "{stats:?}"
        );
        check(d, &snapshot, "new day").await;
    }

    #[tokio::test]
    async fn a_new_identity_link_recomputes_the_days_its_events_reach() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        random_lake(d);
        // anon-zz buys on day 3, then becomes c005 (assigned in some arm).
        events(
            d,
            "zz.parquet",
            purchases(&[("anon-zz", T0 + 3 * DAY + 1, 77.0)]),
        );
        let r = root(d);
        refresh(&r, &key()).await.expect("build");
        identities(d, "i2.parquet", &[("anon-zz", "c005", T0 + 3 * DAY + 2)]);
        let (snapshot, stats) = refresh(&r, &key()).await.expect("link");
        assert!(
            stats.days_recomputed > 0 && stats.days_recomputed <= 11,
            "days 0–10 reach day 3: {stats:?}"
        );
        check(d, &snapshot, "link").await;
    }

    #[tokio::test]
    async fn another_key_reads_raw_tables_and_a_refresh_for_it_rebuilds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        random_lake(d);
        let r = root(d);
        let exact = Outcomes::exact();
        assert!(
            exact
                .for_report(&r, &ReportOptions::default())
                .await
                .is_some()
        );
        let three_days = ReportOptions {
            window_secs: 3 * 86_400,
            ..ReportOptions::default()
        };
        assert!(
            exact.for_report(&r, &three_days).await.is_none(),
            "the outcomes are kept for 7 days: a 3-day report reads the raw tables"
        );
        let dated = ReportOptions {
            from_us: Some(T0),
            ..ReportOptions::default()
        };
        assert!(
            exact.for_report(&r, &dated).await.is_none(),
            "a date range reads the raw tables"
        );
        let seven_files = exact
            .for_report(&r, &ReportOptions::default())
            .await
            .expect("7-day outcomes")
            .files;
        let (snapshot, stats) = refresh(&r, &OutcomeKey::of(&three_days)).await.expect("3d");
        assert!(stats.rebuilt);
        // The 7-day files are retired, not deleted: a report may be
        // reading them.
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(DIR).join("state.json")).expect("state"))
                .expect("json");
        let retired: Vec<&str> = state["retired"]
            .as_array()
            .expect("retired")
            .iter()
            .filter_map(|r| r["file"].as_str())
            .collect();
        for f in &seven_files {
            assert!(d.join(f).exists(), "{f} deleted at once");
            assert!(retired.contains(&f.as_str()), "{f} not retired");
        }
        let lake = Lake::open(&r).expect("lake");
        let raw = arm_sums(&lake, &three_days, None, Source::Raw)
            .await
            .expect("raw");
        let kept = arm_sums(&lake, &three_days, None, Source::Outcomes(&snapshot))
            .await
            .expect("kept");
        same(&raw.0, &kept.0, "3-day window");
        // A 7-day snapshot asked for a 3-day report is not used.
        let (seven, _) = refresh(&r, &key()).await.expect("7d");
        let other = arm_sums(&lake, &three_days, None, Source::Outcomes(&seven))
            .await
            .expect("falls back");
        same(&raw.0, &other.0, "a snapshot of another key is ignored");
    }

    #[tokio::test]
    async fn a_damaged_state_is_rebuilt_and_replaced_files_go_after_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        random_lake(d);
        let r = root(d);
        let (first, _) = refresh(&r, &key()).await.expect("build");
        let state = d.join(DIR).join("state.json");
        // Files replaced by a rebuild are kept while a report may read them.
        std::fs::write(&state, b"{ not json").expect("damage");
        let (second, stats) = refresh(&r, &key()).await.expect("rebuild");
        assert!(stats.rebuilt);
        check(d, &second, "rebuilt").await;
        for f in &first.files {
            assert!(
                d.join(f).exists(),
                "{f} was deleted while a reader may hold it"
            );
        }
        // Once the grace has passed, the next refresh that writes deletes
        // a retired file, and files no state names (here the ones the
        // damaged state named), by their age.
        let mut s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).expect("read")).expect("json");
        assert_eq!(s["retired"].as_array().map(Vec::len), Some(0));
        s["retired"] = serde_json::json!([{"file": second.files[0], "at_us": 0}]);
        // (as if that day had been recomputed since)
        let days = s["days"].as_object_mut().expect("days");
        let first_day = days.keys().next().cloned().expect("a day");
        days.remove(&first_day);
        std::fs::write(&state, serde_json::to_vec(&s).expect("json")).expect("write");
        let old = std::time::SystemTime::now() - Duration::from_secs(GRACE_SECS + 60);
        for f in &first.files[1..] {
            let file = std::fs::File::options()
                .write(true)
                .open(d.join(f))
                .expect("open");
            file.set_modified(old).expect("age");
        }
        let young = &first.files[0];
        sends(
            d,
            "s9.parquet",
            &[("cart", "triggered", "c001".into(), "send", T0)],
        );
        let (third, _) = refresh(&r, &key()).await.expect("refresh");
        assert!(!d.join(&second.files[0]).exists(), "retired past the grace");
        assert!(
            !d.join(&first.files[1]).exists(),
            "an old file no state names"
        );
        assert!(
            d.join(young).exists(),
            "an orphan younger than the grace stays"
        );
        for f in &third.files {
            assert!(d.join(f).exists(), "{f}");
        }
        check(d, &third, "after cleanup").await;
    }
}
