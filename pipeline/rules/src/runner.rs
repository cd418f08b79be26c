//! Durable micro-batches: exactly-once firings across crashes.
//!
//! The staging log is the engine's input queue. Each batch is a range of
//! staged frames per writer, `(from, to]`. A batch runs as:
//!
//! 1. write the checkpoint as *planned*: batch number, input range, rule
//!    clock, the rule clocks before it;
//! 2. tick the engine and write `firings/…/<batch id>.parquet`;
//! 3. write the checkpoint as *done*, then let the publisher take the
//!    frames up to `to` (the consumed gate).
//!
//! After a crash the state is rebuilt from the lake: the published tables
//! plus staged frames up to the last consumed position. A *planned* batch
//! is redone with the same inputs and clock, so it rewrites the same
//! firings file with the same rows; frames after it form the next batch.
//! The publisher never takes an unconsumed frame, so the inputs of a batch
//! to redo are always still in staging.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use kairos_core::event::{IdentityLink, StagedItem};
use kairos_storage::profiles::ProfileState;
use kairos_storage::staging::{FRAME_HEADER, list_segments};
use kairos_storage::tables::{self, read_parquet};
use kairos_storage::{ConsumedGate, DataRoot, Position, StorageError, WriterId};

use crate::engine::{Engine, EngineOptions, TickReport};
use crate::firings;
use crate::rule::{Param, Rule};
use crate::state::{EventParts, State};

/// Where the checkpoint lives.
pub const CHECKPOINT: &str = "_kairos/rules/checkpoint.json";

/// The last batch: its inputs, its clock, and whether it finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Batch number (0: none yet).
    pub batch: u64,
    /// Whether its outputs are written.
    pub done: bool,
    /// Its rule clock, µs.
    pub clock_us: i64,
    /// Consumed positions before it, per writer.
    pub from: BTreeMap<String, Position>,
    /// Consumed positions after it, per writer.
    pub to: BTreeMap<String, Position>,
    /// Rule clocks before it.
    pub clocks_before: BTreeMap<String, i64>,
    /// Rule clocks after it (when done).
    pub clocks_after: BTreeMap<String, i64>,
    /// The latest clock of the batches done before it (none: no batch
    /// yet, or a checkpoint written before this was kept). The latest, not
    /// the last: a clock that stepped back does not take back what a batch
    /// at a later clock handed on.
    #[serde(default)]
    pub latest_done_clock_us: Option<i64>,
}

impl Checkpoint {
    /// The latest clock of the finished batches: the stages handed on
    /// what came due by it (a message due by then went to delivery).
    pub fn released_by(&self) -> Option<i64> {
        if self.done && self.batch > 0 {
            Some(
                self.latest_done_clock_us
                    .map_or(self.clock_us, |c| c.max(self.clock_us)),
            )
        } else {
            self.latest_done_clock_us
        }
    }
}

/// Staged items not yet consumed, with the positions they end at.
#[derive(Debug, Default)]
pub struct Pending {
    /// The items, in log order.
    pub items: Vec<StagedItem>,
    /// Position after the last item, per writer.
    pub to: BTreeMap<String, Position>,
}

/// Decodes a frame payload: one JSON item per line.
pub fn decode_payload(payload: &[u8]) -> Result<Vec<StagedItem>, serde_json::Error> {
    payload
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect()
}

/// What the stages of one batch pass on: rows for their tables, written
/// under the batch's id before the batch is done (so exactly-once like the
/// firings), and typed values for the stages after them (the policy
/// stage's decisions for messaging), so no stage re-reads another's rows
/// from their Arrow form.
#[derive(Default)]
pub struct Outputs {
    tables: Vec<(&'static str, RecordBatch)>,
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Outputs {
    /// Rows for `table`, written with the batch.
    pub fn write(&mut self, table: &'static str, rows: RecordBatch) {
        self.tables.push((table, rows));
    }

    /// Hands `value` to the later stages of this batch (one per type).
    pub fn pass_on<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// What an earlier stage of this batch passed on as a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// A later stage run inside each durable batch (the policy chain, then
/// messaging). It sees the batch's events and firings, and what the
/// stages before it passed on, and adds its rows and values to
/// [`Outputs`]. An error stops the batch before it is done: a restart
/// redoes it. A stage rebuilds its memory from its tables before the
/// runner starts, leaving out the files of [`Recovered::redo_batch`].
pub trait BatchStage: Send + Sync {
    /// The earliest clock at which the stage has work without any new
    /// input (a sequence step come due, a queued send's time), so an idle
    /// tick then must still run and be recorded, and a replay stops there
    /// between events.
    fn next_work(&self) -> Option<i64> {
        None
    }

    /// Decides what the batch means for this stage, given what the stages
    /// before it passed on (data flows one way).
    fn process(
        &mut self,
        report: &TickReport,
        state: &State,
        clock_us: i64,
        outputs: &mut Outputs,
    ) -> Result<(), StorageError>;
}

/// Runs batches durably over one data root.
pub struct Runner {
    root: DataRoot,
    /// The engine.
    pub engine: Engine,
    checkpoint: Checkpoint,
    gate: ConsumedGate,
    stages: Vec<Box<dyn BatchStage>>,
}

/// What recovery found.
pub struct Recovered {
    /// The runner, state rebuilt.
    pub runner: Runner,
    /// A planned batch to redo first: its items and clock.
    pub redo: Option<(Vec<StagedItem>, i64)>,
    /// Staged items after the checkpoint, to run as the next batch.
    pub pending: Pending,
    /// Events folded into the state from the lake.
    pub rebuilt_events: usize,
    /// The batch being redone: stages must ignore its files when they
    /// rebuild, as its outputs are written again.
    pub redo_batch: Option<String>,
}

impl Runner {
    /// Rebuilds the engine from the lake and the checkpoint. Staged frames
    /// of `live_writer` (this process's, handed over in memory as they are
    /// committed) are left to that feed.
    pub async fn recover(
        root: DataRoot,
        rules: Vec<Rule>,
        overrides: &BTreeMap<String, BTreeMap<String, Param>>,
        opts: EngineOptions,
        gate: ConsumedGate,
        live_writer: Option<&WriterId>,
    ) -> Result<Recovered, StorageError> {
        let checkpoint = match root.read(&ObjectPath::from(CHECKPOINT)).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                    path: CHECKPOINT.into(),
                    reason: format!("{e}; restore it from a backup or delete it to start the rules afresh (sweeps then go live now)"),
                })?
            }
            None => Checkpoint::default(),
        };
        let interrupted = kairos_storage::publish::interrupted(&root).await?;
        let skip = interrupted.unfinished;
        // Staged frames, read first: an event staged again (a client's
        // retry) after its first copy was published must not count twice.
        let mut staged = Vec::new();
        for seg in list_segments(&root).await? {
            // A live writer's frames come through its feed; a published
            // segment's items through the lake.
            if live_writer == Some(&seg.writer)
                || interrupted.published_segments.contains(seg.path.as_ref())
            {
                continue;
            }
            let Some(bytes) = root.read(&seg.path).await? else {
                continue;
            };
            let mut end = 0u64;
            let (frames, torn) = kairos_storage::staging::decode_frames(&bytes);
            if torn > 0 {
                tracing::warn!(segment = %seg.path, bytes = torn, "ignored a torn tail of a staged segment");
            }
            let mut decoded = Vec::new();
            for frame in frames {
                end += (FRAME_HEADER + frame.len()) as u64;
                let items = decode_payload(frame).map_err(|e| StorageError::Corrupt {
                    path: seg.path.to_string(),
                    reason: e.to_string(),
                })?;
                decoded.push((Position { seq: seg.seq, end }, items));
            }
            staged.push((seg, decoded));
        }
        let retried = staged_hours(staged.iter().flat_map(|(_, f)| f).flat_map(|(_, i)| i));
        let mut state = State::with_profiles(ProfileState::load(&root, &skip).await?);
        for link in read_identities(&root, &skip).await? {
            state.apply_identity(&link);
        }
        let rebuilt_events = fold_events(&root, &skip, &mut state, &retried).await?;
        let engine_horizon = opts.dedupe_horizon_us;
        let mut engine = Engine::new(rules, overrides, state, opts).map_err(|e| {
            StorageError::Unsupported(format!("starting the rule engine's session: {e}"))
        })?;

        let redo_batch =
            (!checkpoint.done && checkpoint.batch > 0).then(|| firings::batch_id(checkpoint.batch));
        // Only the firings inside the dedupe horizon of the earliest clock
        // a rule may evaluate at next are read: older ones can no longer
        // block a firing. Without a checkpoint, all of them.
        let since = checkpoint
            .clocks_before
            .values()
            .chain(checkpoint.clocks_after.values())
            .copied()
            .chain((checkpoint.batch > 0).then_some(checkpoint.clock_us))
            .min()
            .map_or(i64::MIN, |earliest| earliest.saturating_sub(engine_horizon));
        for (r, c, k, at) in firings::load(&root, redo_batch.as_deref(), since).await? {
            engine.mark_fired(&r, &c, &k, at);
        }
        let (consumed, redo_to) = if checkpoint.done || checkpoint.batch == 0 {
            (&checkpoint.to, None)
        } else {
            (&checkpoint.from, Some(&checkpoint.to))
        };

        // Staged frames: up to `consumed` into the state, then the redo
        // range, then everything after it.
        let mut redo_items = Vec::new();
        let mut pending = Pending::default();
        for (seg, frames) in staged {
            for (at, items) in frames {
                let covered = |m: &BTreeMap<String, Position>| {
                    m.get(&seg.writer.0)
                        .is_some_and(|p| p.covers(at.seq, at.end))
                };
                if covered(consumed) {
                    engine.absorb(&items);
                } else if redo_to.is_some_and(covered) {
                    redo_items.extend(items);
                } else {
                    pending.items.extend(items);
                    pending.to.insert(seg.writer.0.clone(), at);
                }
            }
        }
        let redo = redo_to.map(|_| (redo_items, checkpoint.clock_us));
        engine.set_clocks(if checkpoint.done {
            checkpoint.clocks_after.clone()
        } else {
            checkpoint.clocks_before.clone()
        });
        publish_gate(&gate, consumed);
        Ok(Recovered {
            runner: Runner {
                root,
                engine,
                checkpoint,
                gate,
                stages: Vec::new(),
            },
            redo,
            pending,
            rebuilt_events,
            redo_batch,
        })
    }

    /// Adds a later stage (after it rebuilt its memory).
    pub fn add_stage(&mut self, stage: Box<dyn BatchStage>) {
        self.stages.push(stage);
    }

    /// The earliest clock at which a stage has work without new input.
    pub fn next_work(&self) -> Option<i64> {
        self.stages.iter().filter_map(|s| s.next_work()).min()
    }

    /// The last checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Redoes the planned batch recovery found (same inputs, same clock).
    pub async fn redo(
        &mut self,
        items: Vec<StagedItem>,
        clock_us: i64,
    ) -> Result<TickReport, StorageError> {
        let mut planned = self.checkpoint.clone();
        planned.clock_us = clock_us;
        self.finish(planned, items).await
    }

    /// Runs one batch: `items` end at `to` (per writer); clock `clock_us`.
    pub async fn run(
        &mut self,
        items: Vec<StagedItem>,
        to: &BTreeMap<String, Position>,
        clock_us: i64,
    ) -> Result<TickReport, StorageError> {
        let from = self.checkpoint.to.clone();
        let mut next_to = from.clone();
        for (w, p) in to {
            next_to.insert(w.clone(), *p);
        }
        let planned = Checkpoint {
            batch: self.checkpoint.batch + 1,
            done: false,
            clock_us,
            from,
            to: next_to,
            clocks_before: self.engine.clocks().clone(),
            clocks_after: BTreeMap::new(),
            latest_done_clock_us: self.checkpoint.released_by(),
        };
        if items.is_empty() {
            // A tick without input that fired nothing, left no stage work
            // and moved no sweep's clock writes nothing (no object-store
            // writes while idle). One that moved a sweep's clock is
            // recorded like a batch (a few small writes per cadence
            // boundary): unrecorded, a restart would evaluate the window
            // again and fire what a late event put in it since, which this
            // process never fires (found by kairos-sim seed 157). Recorded,
            // its stages run too, so what a restart takes as handed on is
            // what was (seed 102096). A redo (no input, same clock and
            // rule clocks) does the same.
            let before = self.engine.clocks().clone();
            let report = self.engine.tick(Vec::new(), clock_us).await;
            if report.firings.is_empty()
                && self.next_work().is_none_or(|w| w > clock_us)
                && *self.engine.clocks() == before
            {
                return Ok(report);
            }
            self.put(&planned).await?;
            return self.record(planned, report).await;
        }
        self.put(&planned).await?;
        self.finish(planned, items).await
    }

    async fn finish(
        &mut self,
        planned: Checkpoint,
        items: Vec<StagedItem>,
    ) -> Result<TickReport, StorageError> {
        let report = self.engine.tick(items, planned.clock_us).await;
        self.record(planned, report).await
    }

    async fn record(
        &mut self,
        mut planned: Checkpoint,
        mut report: TickReport,
    ) -> Result<TickReport, StorageError> {
        let before = report.firings.len();
        let state = &self.engine.state;
        report.firings.retain(|f| !state.erased(&f.customer_id));
        if report.firings.len() < before {
            tracing::info!(
                dropped = before - report.firings.len(),
                "firings of erased customers dropped"
            );
        }
        let batch = firings::batch_id(planned.batch);
        if !report.firings.is_empty() {
            let fired_at = self.engine.options().wall.now_us();
            firings::write(
                &self.root,
                &report.firings,
                &batch,
                planned.clock_us,
                fired_at,
            )
            .await?;
        }
        let mut outputs = Outputs::default();
        for stage in &mut self.stages {
            stage.process(&report, &self.engine.state, planned.clock_us, &mut outputs)?;
        }
        for (table, rows) in outputs.tables {
            if rows.num_rows() > 0 {
                firings::write_table(&self.root, table, &rows, &batch, planned.clock_us).await?;
            }
        }
        planned.done = true;
        planned.clocks_after = self.engine.clocks().clone();
        self.put(&planned).await?;
        publish_gate(&self.gate, &planned.to);
        self.checkpoint = planned;
        Ok(report)
    }

    async fn put(&self, c: &Checkpoint) -> Result<(), StorageError> {
        let path = ObjectPath::from(CHECKPOINT);
        let body = serde_json::to_vec_pretty(c).map_err(|e| StorageError::Corrupt {
            path: CHECKPOINT.into(),
            reason: format!("the checkpoint does not serialise: {e}"),
        })?;
        self.root
            .store
            .put(&path, Bytes::from(body).into())
            .await
            .map_err(|source| StorageError::ObjectStore {
                path: CHECKPOINT.into(),
                source,
            })?;
        Ok(())
    }
}

fn publish_gate(gate: &ConsumedGate, to: &BTreeMap<String, Position>) {
    // A panic elsewhere while holding the gate left whole entries (each is
    // one insert); not advancing it would stall publishing for good.
    let mut g = gate
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (w, p) in to {
        g.insert(WriterId(w.clone()), *p);
    }
}

fn published_files(
    metas: Vec<object_store::ObjectMeta>,
    skip: &[String],
) -> impl Iterator<Item = ObjectPath> {
    let skip = skip.to_vec();
    metas.into_iter().map(|m| m.location).filter(move |p| {
        let name = p.filename().unwrap_or_default();
        name.ends_with(".parquet") && !skip.iter().any(|s| name.starts_with(s.as_str()))
    })
}

async fn read_identities(
    root: &DataRoot,
    skip: &[String],
) -> Result<Vec<IdentityLink>, StorageError> {
    let mut out = Vec::new();
    let metas = root.list(&ObjectPath::from(tables::IDENTITIES)).await?;
    for path in published_files(metas, skip) {
        for b in read_parquet(
            root,
            &path,
            Some(&["anonymous_id", "user_id", "event_id", "source"]),
        )
        .await?
        {
            let s = |n: &str| kairos_storage::columns::strings(&b, tables::IDENTITIES, n);
            let (a, u, e, src) = (
                s("anonymous_id")?,
                s("user_id")?,
                s("event_id")?,
                s("source")?,
            );
            for i in 0..b.num_rows() {
                out.push(IdentityLink {
                    event_id: e.value(i).to_string(),
                    source: src.value(i).to_string(),
                    anonymous_id: a.value(i).to_string(),
                    user_id: u.value(i).to_string(),
                    call: "alias".into(),
                    timestamp_us: 0,
                    received_at_us: 0,
                });
            }
        }
    }
    Ok(out)
}

/// Folds every published event into `state`; returns how many.
/// How far back from the newest published hour a restart reads event ids.
const RECENT_EVENT_IDS_US: i64 = 24 * kairos_core::time::HOUR_US;

/// The hours the event times of staged, unpublished events fall in: a
/// staged retry has its first copy's time, so only those hours of the lake
/// can hold a first copy.
fn staged_hours<'a>(items: impl Iterator<Item = &'a StagedItem>) -> HashSet<i64> {
    items
        .filter_map(|item| match item {
            StagedItem::Event(e) => {
                Some(e.timestamp_us - e.timestamp_us.rem_euclid(kairos_core::time::HOUR_US))
            }
            _ => None,
        })
        .collect()
}

async fn fold_events(
    root: &DataRoot,
    skip: &[String],
    state: &mut State,
    staged_hours: &HashSet<i64>,
) -> Result<usize, StorageError> {
    const COLUMNS: [&str; 11] = [
        "order_id",
        "customer_id",
        "event_type",
        "timestamp",
        "product_id",
        "category",
        "price",
        "quantity",
        "revenue",
        "timezone",
        "properties",
    ];
    let mut n = 0;
    let metas = root.list(&ObjectPath::from(tables::EVENTS)).await?;
    let files: Vec<ObjectPath> = published_files(metas, skip).collect();
    // The live state remembers the ids of the events it applied, so a
    // client's retry counts once; a restart must remember them too, or a
    // retry arriving after it counts twice (found by kairos-sim seed 419:
    // a purchase retried after a restart cancelled a welcome again). The
    // ids of the last day of event time are read (a retry has its first
    // copy's time, and the publisher keeps a retry out of the lake only
    // within `dedupe.window_hours`, 24 by default), and those of any hour
    // a staged event falls in.
    let newest = files
        .iter()
        .filter_map(crate::firings::partition_hour_us)
        .max()
        .unwrap_or(i64::MIN);
    let recent_from = newest.saturating_sub(RECENT_EVENT_IDS_US);
    for path in files {
        let check = crate::firings::partition_hour_us(&path)
            .is_some_and(|h| h >= recent_from || staged_hours.contains(&h));
        let with_ids: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .chain(["source", "event_id"])
            .collect();
        let columns: &[&str] = if check { &with_ids } else { &COLUMNS };
        for b in read_parquet(root, &path, Some(columns)).await? {
            let corrupt = || StorageError::Corrupt {
                path: path.to_string(),
                reason: "unexpected events schema".into(),
            };
            if check {
                let (source, id) = (
                    kairos_storage::columns::strings(&b, tables::EVENTS, "source")?,
                    kairos_storage::columns::strings(&b, tables::EVENTS, "event_id")?,
                );
                for i in 0..b.num_rows() {
                    state.remember_event(source.value(i), id.value(i));
                }
            }
            let s = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(corrupt)
            };
            let f = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                    .ok_or_else(corrupt)
            };
            let order = s("order_id")?;
            let (customer, kind, product, category, tz, props) = (
                s("customer_id")?,
                s("event_type")?,
                s("product_id")?,
                s("category")?,
                s("timezone")?,
                s("properties")?,
            );
            let (price, revenue) = (f("price")?, f("revenue")?);
            let quantity = b
                .column_by_name("quantity")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(corrupt)?;
            let at = b
                .column_by_name("timestamp")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                .ok_or_else(corrupt)?;
            fn opt_s(a: &StringArray, i: usize) -> Option<&str> {
                a.is_valid(i).then(|| a.value(i))
            }
            let mut canonical: HashMap<String, String> = HashMap::new();
            for i in 0..b.num_rows() {
                let event_type = kind.value(i);
                let id = customer.value(i);
                let id = canonical
                    .entry(id.to_string())
                    .or_insert_with(|| state.canonical(id).to_string())
                    .clone();
                let needs_props = matches!(
                    event_type,
                    "subscription_start"
                        | "subscription_renew"
                        | "subscription_cancel"
                        | "ticket_close"
                );
                state.fold(
                    &id,
                    &EventParts {
                        event_type,
                        at: at.value(i),
                        product_id: opt_s(product, i),
                        category: opt_s(category, i),
                        price: price.is_valid(i).then(|| price.value(i)),
                        quantity: quantity.is_valid(i).then(|| quantity.value(i)),
                        revenue: revenue.is_valid(i).then(|| revenue.value(i)),
                        order_id: opt_s(order, i),
                        timezone: opt_s(tz, i),
                        properties: needs_props.then(|| props.value(i)),
                    },
                );
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Everything published, as the staged items that made it, sorted by event
/// time: events, profile snapshots (as identify calls carrying the whole
/// profile) and identity links. For backtests over stored history.
pub async fn read_history(root: &DataRoot) -> Result<Vec<StagedItem>, StorageError> {
    use kairos_core::event::{Commerce, EventRecord, Json, ProfileUpdate};
    let skip = kairos_storage::publish::interrupted(root).await?.unfinished;
    let mut out: Vec<StagedItem> = read_identities(root, &skip)
        .await?
        .into_iter()
        .map(StagedItem::Identity)
        .collect();
    let metas = root.list(&ObjectPath::from(tables::PROFILES)).await?;
    for path in published_files(metas, &skip) {
        for b in read_parquet(root, &path, None).await? {
            let s = |n: &str| kairos_storage::columns::strings(&b, tables::PROFILES, n);
            let (id, ev, src, traits) = (
                s("customer_id")?,
                s("event_id")?,
                s("source")?,
                s("traits")?,
            );
            let at = kairos_storage::columns::timestamps_us(&b, tables::PROFILES, "updated_at")?;
            for i in 0..b.num_rows() {
                out.push(StagedItem::Profile(ProfileUpdate {
                    event_id: ev.value(i).to_string(),
                    source: src.value(i).to_string(),
                    customer_id: id.value(i).to_string(),
                    timestamp_us: at.value(i),
                    received_at_us: at.value(i),
                    traits: serde_json::from_str(traits.value(i)).map_err(|e| {
                        StorageError::Corrupt {
                            path: path.to_string(),
                            reason: format!("the traits of {} are not JSON: {e}", id.value(i)),
                        }
                    })?,
                    first_only: Default::default(),
                }));
            }
        }
    }
    let metas = root.list(&ObjectPath::from(tables::EVENTS)).await?;
    for path in published_files(metas, &skip) {
        for b in read_parquet(root, &path, None).await? {
            let corrupt = || StorageError::Corrupt {
                path: path.to_string(),
                reason: "unexpected events schema".into(),
            };
            let s = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(corrupt)
            };
            let t = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                    .ok_or_else(corrupt)
            };
            let f = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                    .ok_or_else(corrupt)
            };
            let quantity = b
                .column_by_name("quantity")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(corrupt)?;
            let (event_id, source, call, event, kind, customer) = (
                s("event_id")?,
                s("source")?,
                s("call")?,
                s("event")?,
                s("event_type")?,
                s("customer_id")?,
            );
            let (user, anon, product, category, currency, order, tz, props, ctx) = (
                s("user_id")?,
                s("anonymous_id")?,
                s("product_id")?,
                s("category")?,
                s("currency")?,
                s("order_id")?,
                s("timezone")?,
                s("properties")?,
                s("context")?,
            );
            let (ts, received, sent) = (t("timestamp")?, t("received_at")?, t("sent_at")?);
            let (price, revenue) = (f("price")?, f("revenue")?);
            let os = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
            let json = |a: &StringArray, i: usize| {
                Json::parse(a.value(i).to_string()).map_err(|e| StorageError::Corrupt {
                    path: path.to_string(),
                    reason: format!("an event's JSON column does not parse: {e}"),
                })
            };
            for i in 0..b.num_rows() {
                out.push(StagedItem::Event(EventRecord {
                    event_id: event_id.value(i).to_string(),
                    source: source.value(i).to_string(),
                    call: call.value(i).to_string(),
                    event: event.value(i).to_string(),
                    event_type: kind.value(i).to_string(),
                    customer_id: customer.value(i).to_string(),
                    user_id: os(user, i),
                    anonymous_id: os(anon, i),
                    timestamp_us: ts.value(i),
                    received_at_us: received.value(i),
                    sent_at_us: sent.is_valid(i).then(|| sent.value(i)),
                    commerce: Commerce {
                        product_id: os(product, i),
                        category: os(category, i),
                        price: price.is_valid(i).then(|| price.value(i)),
                        quantity: quantity.is_valid(i).then(|| quantity.value(i)),
                        revenue: revenue.is_valid(i).then(|| revenue.value(i)),
                        currency: os(currency, i),
                        order_id: os(order, i),
                    },
                    timezone: os(tz, i),
                    properties: json(props, i)?,
                    context: json(ctx, i)?,
                }));
            }
        }
    }
    out.sort_by_key(StagedItem::timestamp_us);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::event::{Commerce, EventRecord, Json};
    use kairos_storage::StagingLog;
    use std::sync::Arc;

    const H: i64 = 3_600_000_000;
    const T0: i64 = 1_788_220_800_000_000; // 2026-09-01T00:00:00Z

    fn signup(id: &str, customer: &str, at: i64) -> StagedItem {
        StagedItem::Event(EventRecord {
            event_id: id.into(),
            source: "t".into(),
            call: "track".into(),
            event: "Signed Up".into(),
            event_type: "signup".into(),
            customer_id: customer.into(),
            user_id: Some(customer.into()),
            anonymous_id: None,
            timestamp_us: at,
            received_at_us: at,
            sent_at_us: None,
            commerce: Commerce::default(),
            timezone: None,
            properties: Json::empty_object(),
            context: Json::empty_object(),
        })
    }

    fn welcome() -> Rule {
        crate::rule::parse(
            std::path::Path::new("sql/welcome.sql"),
            "-- name: welcome\n-- description: d\n-- channel: email\n\nSELECT customer_id, 'welcome' AS dedupe_key FROM batch_events WHERE event_type = 'signup'\n",
        )
        .expect("valid rule")
    }

    /// Found by kairos-sim seed 157: an idle tick ran a sweep and moved
    /// its clock in memory only. A cart whose deadline that tick passed,
    /// arriving late, then never fired in this process but fired after a
    /// restart (which evaluated the window again).
    #[tokio::test]
    async fn an_idle_tick_that_runs_a_sweep_records_its_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let sweep = crate::rule::parse(
            std::path::Path::new("sql/signup_reminder.sql"),
            "-- name: signup_reminder\n-- description: d\n-- channel: email\n-- cadence: 5m\n\nSELECT customer_id, 'k' AS dedupe_key, signed_up_at + INTERVAL '1 hour' AS due_at FROM customers WHERE signed_up_at + INTERVAL '1 hour' <= ${now}\n",
        )
        .expect("valid rule");
        let recover = |root: DataRoot| {
            let sweep = sweep.clone();
            async move {
                Runner::recover(
                    root,
                    vec![sweep],
                    &BTreeMap::new(),
                    EngineOptions::default(),
                    ConsumedGate::default(),
                    None,
                )
                .await
                .expect("recover")
                .runner
            }
        };
        let mut runner = recover(root.clone()).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        runner.add_stage(Box::new(Counter { fail: false }));
        runner.add_stage(Box::new(Reader { seen: seen.clone() }));
        let mut log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let to = stage(&mut log, &[signup("e0", "c0", T0)]).await;
        runner
            .run(vec![signup("e0", "c0", T0)], &to, T0 + 60_000_000)
            .await
            .expect("batch 1");
        // Idle past c0's deadline.
        let idle = T0 + H + 10 * 60_000_000;
        let report = runner
            .run(Vec::new(), &BTreeMap::new(), idle)
            .await
            .expect("idle");
        assert_eq!(report.firings.len(), 1, "c0's reminder");
        assert_eq!(runner.checkpoint().clock_us, idle);
        let report = runner
            .run(Vec::new(), &BTreeMap::new(), idle + 10 * 60_000_000)
            .await
            .expect("idle without firings");
        assert!(report.firings.is_empty());
        let recorded = runner.checkpoint().clocks_after.clone();
        assert_eq!(
            recorded,
            runner.engine.clocks().clone(),
            "the sweep's clock is recorded"
        );
        // Recorded as a whole batch: the stages ran (kairos-sim seed
        // 102096: a restart then agrees on what they handed on).
        assert_eq!(*seen.lock().expect("lock"), vec![0, 1, 0]);
        drop(runner);
        let restarted = recover(root.clone()).await;
        assert_eq!(
            restarted.engine.clocks(),
            &recorded,
            "a restart starts from it"
        );
    }

    async fn publisher(
        root: &DataRoot,
        log: &Arc<tokio::sync::Mutex<StagingLog>>,
    ) -> kairos_storage::Publisher {
        kairos_storage::Publisher::new(
            root.clone(),
            log.clone(),
            kairos_storage::PublisherOptions {
                row_group_rows: 1024,
                dedupe_window_hours: 24,
                max_publish_bytes: 1 << 30,
                orphan_after: std::time::Duration::from_secs(3600),
            },
        )
        .await
    }

    async fn stage(log: &mut StagingLog, items: &[StagedItem]) -> BTreeMap<String, Position> {
        let mut frame = Vec::new();
        for i in items {
            serde_json::to_writer(&mut frame, i).expect("json");
            frame.push(b'\n');
        }
        let at = log.append(&frame).await.expect("append");
        BTreeMap::from([(log.writer().0.clone(), at)])
    }

    async fn try_recover(root: &DataRoot) -> Result<Recovered, StorageError> {
        Runner::recover(
            root.clone(),
            vec![welcome()],
            &BTreeMap::new(),
            EngineOptions::default(),
            ConsumedGate::default(),
            None,
        )
        .await
    }

    async fn recover(root: &DataRoot) -> Recovered {
        try_recover(root).await.expect("recover")
    }

    fn firing_rows(root: &DataRoot) -> Vec<(String, String)> {
        let dir = root.local_dir.clone().expect("local");
        let mut out = Vec::new();
        for entry in walk(&dir.join("firings")) {
            let file = std::fs::File::open(&entry).expect("open");
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("parquet")
                    .build()
                    .expect("reader");
            for b in reader {
                let b = b.expect("batch");
                let c = b.column_by_name("customer_id").expect("col");
                let c = c.as_any().downcast_ref::<StringArray>().expect("str");
                for i in 0..b.num_rows() {
                    out.push((
                        entry
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                        c.value(i).to_string(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_batch_interrupted_before_done_is_redone_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let mut log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let mut runner = recover(&root).await.runner;

        let to = stage(&mut log, &[signup("e1", "c1", T0)]).await;
        runner
            .run(vec![signup("e1", "c1", T0)], &to, T0 + H)
            .await
            .expect("batch 1");
        let to = stage(
            &mut log,
            &[signup("e2", "c2", T0 + H), signup("e3", "c3", T0 + H)],
        )
        .await;
        let report = runner
            .run(
                vec![signup("e2", "c2", T0 + H), signup("e3", "c3", T0 + H)],
                &to,
                T0 + 2 * H,
            )
            .await
            .expect("batch 2");
        assert_eq!(report.firings.len(), 2);
        let before = firing_rows(&root);
        assert_eq!(before.len(), 3);

        // A crash after batch 2's firings were written, before it was done:
        // and more events staged after it that no batch took yet.
        let mut cp: Checkpoint = serde_json::from_slice(
            &std::fs::read(dir.path().join(CHECKPOINT)).expect("checkpoint"),
        )
        .expect("json");
        cp.done = false;
        std::fs::write(
            dir.path().join(CHECKPOINT),
            serde_json::to_vec(&cp).expect("json"),
        )
        .expect("write");
        stage(
            &mut log,
            &[signup("e4", "c4", T0 + 3 * H), signup("e1", "c1", T0)],
        )
        .await;
        drop(runner);

        let rec = recover(&root).await;
        let (items, clock) = rec.redo.expect("batch 2 is redone");
        assert_eq!(
            (items.len(), clock),
            (2, T0 + 2 * H),
            "same inputs, same clock"
        );
        assert_eq!(
            rec.pending.items.len(),
            2,
            "the later frame is the next batch"
        );
        let mut runner = rec.runner;
        let redo = runner.redo(items, clock).await.expect("redo");
        assert_eq!(redo.firings.len(), 2, "c2 and c3 again, into the same file");
        assert_eq!(
            firing_rows(&root),
            before,
            "the same rows in the same files"
        );
        let next = runner
            .run(rec.pending.items, &rec.pending.to, T0 + 4 * H)
            .await
            .expect("batch 3");
        let fired: Vec<&str> = next
            .firings
            .iter()
            .map(|f| f.customer_id.as_str())
            .collect();
        assert_eq!(fired, vec!["c4"], "the retry of c1's signup fires nothing");
    }

    /// Passes on how many firings it saw; fails when told to.
    struct Counter {
        fail: bool,
    }

    struct Counted(usize);

    impl BatchStage for Counter {
        fn process(
            &mut self,
            report: &TickReport,
            _state: &State,
            _clock_us: i64,
            outputs: &mut Outputs,
        ) -> Result<(), StorageError> {
            if self.fail {
                return Err(StorageError::Unsupported("the stage broke".into()));
            }
            outputs.pass_on(Counted(report.firings.len()));
            Ok(())
        }
    }

    /// Checks the earlier stage's value reached it.
    struct Reader {
        seen: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl BatchStage for Reader {
        fn process(
            &mut self,
            _report: &TickReport,
            _state: &State,
            _clock_us: i64,
            outputs: &mut Outputs,
        ) -> Result<(), StorageError> {
            let Counted(n) = outputs
                .get::<Counted>()
                .ok_or_else(|| StorageError::Unsupported("nothing passed on".into()))?;
            self.seen.lock().expect("lock").push(*n);
            Ok(())
        }
    }

    /// Found by the simulator (kairos-sim seed 196): a crash while a
    /// publish deleted its segments left its intent, so recovery skipped
    /// its (whole) files while some of its segments were already gone:
    /// their customers vanished from the rebuilt state (an order
    /// confirmation then found no email address).
    #[tokio::test]
    async fn a_crash_while_a_publish_deletes_its_segments_loses_no_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let log = Arc::new(tokio::sync::Mutex::new(log));
        for (id, customer) in [("e1", "c1"), ("e2", "c2")] {
            let mut l = log.lock().await;
            stage(&mut l, &[signup(id, customer, T0)]).await;
            l.rotate();
        }
        let second = dir.path().join("_staging/w1/0000000000000001.log");
        let kept = std::fs::read(&second).expect("segment 1");
        let mut publisher = publisher(&root, &log).await;
        assert_eq!(publisher.publish().await.expect("publish").events, 2);
        // The crash: segment 0 deleted, segment 1 and the intent not yet.
        std::fs::write(&second, kept).expect("segment 1 back");
        let intent = dir
            .path()
            .join(kairos_storage::publish::PUBLISHING_DIR)
            .join("w1-000001.json");
        std::fs::create_dir_all(intent.parent().expect("dir")).expect("mkdir");
        std::fs::write(
            &intent,
            br#"{"publish_id": "w1-000001", "segments": ["_staging/w1/0000000000000000.log", "_staging/w1/0000000000000001.log"]}"#,
        )
        .expect("intent");
        let rec = recover(&root).await;
        assert_eq!(rec.rebuilt_events, 2, "the publish's files are whole: read");
        assert_eq!(rec.runner.engine.state.len(), 2, "c1 and c2");
        assert!(
            rec.pending.items.is_empty(),
            "segment 1 was published: not taken again"
        );
    }

    /// Found by kairos-sim seed 259: the lake rebuild did not remember
    /// event ids, so a client's retry staged after the first copy was
    /// published counted twice after a restart (a product "viewed" twice
    /// and a browse reminder the live run never sent).
    #[tokio::test]
    async fn a_retry_staged_after_its_first_copy_was_published_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let log = Arc::new(tokio::sync::Mutex::new(log));
        stage(&mut *log.lock().await, &[signup("e1", "c1", T0)]).await;
        let mut publisher = publisher(&root, &log).await;
        assert_eq!(publisher.publish().await.expect("publish").events, 1);
        // The client did not hear back and sends it again.
        stage(&mut *log.lock().await, &[signup("e1", "c1", T0)]).await;
        drop(log);
        let rec = recover(&root).await;
        assert_eq!(rec.rebuilt_events, 1);
        let mut runner = rec.runner;
        runner
            .run(rec.pending.items, &rec.pending.to, T0 + H)
            .await
            .expect("batch");
        let b = runner.engine.state.customers_table(None).expect("table");
        let events = b
            .column_by_name("events")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("events");
        assert_eq!(events.value(0), 1, "the retry is not a second signup");
    }

    /// Found by kairos-sim seed 419: a purchase retried after a restart
    /// (its first copy published before it) was applied again and
    /// cancelled a welcome a second time.
    #[tokio::test]
    async fn a_retry_arriving_after_a_restart_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let log = Arc::new(tokio::sync::Mutex::new(log));
        stage(&mut *log.lock().await, &[signup("e1", "c1", T0)]).await;
        let mut publisher = publisher(&root, &log).await;
        publisher.publish().await.expect("publish");
        let mut runner = recover(&root).await.runner;
        let report = runner
            .run(vec![signup("e1", "c1", T0)], &BTreeMap::new(), T0 + H)
            .await
            .expect("batch");
        assert!(report.firings.is_empty(), "the retry is no new signup");
        let b = runner.engine.state.customers_table(None).expect("table");
        let events = b
            .column_by_name("events")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("events");
        assert_eq!(events.value(0), 1);
    }

    /// Found by kairos-sim seed 63: after the clock stepped back, a
    /// restart took the last batch's clock for what had been handed to
    /// delivery, and a message a later-clocked batch had sent was waiting
    /// again (a late opt-out then recorded it cancelled).
    #[test]
    fn what_was_handed_on_follows_the_latest_clock_not_the_last() {
        let mut c = Checkpoint {
            batch: 4,
            done: true,
            clock_us: 10,
            latest_done_clock_us: Some(20),
            ..Checkpoint::default()
        };
        assert_eq!(c.released_by(), Some(20));
        c.clock_us = 30;
        assert_eq!(c.released_by(), Some(30));
        c.done = false;
        assert_eq!(
            c.released_by(),
            Some(20),
            "a batch not done handed on nothing yet"
        );
        assert_eq!(Checkpoint::default().released_by(), None);
    }

    #[tokio::test]
    async fn an_unreadable_publish_intent_stops_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let path = dir
            .path()
            .join(kairos_storage::publish::PUBLISHING_DIR)
            .join("w1-000001.json");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, b"{\"publish_id\": \"w1-0").expect("write");
        let err = match try_recover(&root).await {
            Ok(_) => panic!("recovered as if nothing were being published"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("w1-000001.json") && err.contains("publish_id"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stages_pass_values_on_and_a_failing_one_leaves_the_batch_to_redo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let mut log =
            StagingLog::open(root.clone(), kairos_storage::WriterId("w1".into())).expect("log");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut runner = recover(&root).await.runner;
        runner.add_stage(Box::new(Counter { fail: false }));
        runner.add_stage(Box::new(Reader { seen: seen.clone() }));
        let to = stage(&mut log, &[signup("e1", "c1", T0)]).await;
        runner
            .run(vec![signup("e1", "c1", T0)], &to, T0 + H)
            .await
            .expect("batch 1");
        assert_eq!(*seen.lock().expect("lock"), vec![1]);
        drop(runner);

        let mut runner = recover(&root).await.runner;
        runner.add_stage(Box::new(Counter { fail: true }));
        let to = stage(&mut log, &[signup("e2", "c2", T0 + H)]).await;
        let err = runner
            .run(vec![signup("e2", "c2", T0 + H)], &to, T0 + 2 * H)
            .await
            .expect_err("the stage failed");
        assert!(err.to_string().contains("the stage broke"), "{err}");
        drop(runner);
        let rec = recover(&root).await;
        let (items, clock) = rec.redo.expect("the batch is redone, not done");
        assert_eq!((items.len(), clock), (1, T0 + 2 * H));
    }
}
