//! The publisher: staged frames become glob-safe Parquet files.
//!
//! One publish takes a set of sealed staging segments and:
//!
//! 1. writes an *intent* `_kairos/publishing/<publish id>.json` naming them;
//! 2. reads their items, drops `(source, messageId)` pairs already published
//!    ([`DedupeIndex`]), merges identifies into profiles ([`ProfileState`]);
//! 3. writes one file per table and hour, `<table>/date=…/hour=…/<publish id>.parquet`,
//!    each in a single atomic PUT;
//! 4. deletes the segments, then the intent.
//!
//! A crash anywhere leaves the intent behind. The next publish (in this or a
//! restarted process) redoes it first: the dedupe index and profile state
//! ignore files named by that publish id, so the redo computes exactly the
//! same files and overwrites the ones already written. A glob reader may see
//! part of an interrupted publish's files early, but never a row twice and
//! never half a file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use kairos_core::event::{EventRecord, IdentityLink, ProfileUpdate, StagedItem};
use kairos_core::time::{HOUR_US, hour_bucket};

use crate::dedupe::{DedupeIndex, id_key};
use crate::profiles::ProfileState;
use crate::root::DataRoot;
use crate::staging::{
    Position, Segment, StagingLog, WriterId, decode_frames, list_segments, remove_writer_dir,
    writer_is_live,
};
use crate::tables::{self, ChangeRow, ProfileRow, TableRow, partition_dir};
use crate::{Result, StorageError};

/// Where publish intents live (not part of any table).
pub const PUBLISHING_DIR: &str = "_kairos/publishing";

/// What one publish call did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PublishStats {
    /// Staging segments consumed.
    pub segments: usize,
    /// Staged items read.
    pub items: usize,
    /// Items dropped as already published.
    pub duplicates: usize,
    /// Items dropped because they name an erased customer.
    pub suppressed: usize,
    /// Rows written to `events/`.
    pub events: usize,
    /// Rows written to `profiles/`.
    pub profiles: usize,
    /// Rows written to `profile_changes/`.
    pub changes: usize,
    /// Rows written to `identities/`.
    pub identities: usize,
    /// Parquet files written.
    pub files: usize,
    /// Bytes of torn frames ignored (a crash mid-append; never acknowledged).
    pub torn_bytes: usize,
    /// Interrupted publishes redone.
    pub redone: usize,
    /// Age of the oldest segment taken: how long data waited to be published.
    pub oldest_age: std::time::Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    publish_id: String,
    segments: Vec<String>,
    /// Bytes of this process's own segments in it (for the backlog count).
    #[serde(default)]
    own_bytes: u64,
}

/// Settings for [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Hours of ids kept in memory by the dedupe index.
    pub dedupe_window_hours: u32,
    /// Most staged bytes taken into one publish, bounding memory.
    pub max_publish_bytes: u64,
    /// On an object store, another writer's segments older than this are
    /// taken as orphans of a crashed process and published.
    pub orphan_after: Duration,
}

impl PublisherOptions {
    /// The options `[publish]` and `[dedupe]` configure. A segment of another
    /// writer counts as orphaned after three publish intervals without being
    /// published by its owner.
    pub fn from_config(config: &kairos_core::Config) -> PublisherOptions {
        PublisherOptions {
            row_group_rows: config.publish.row_group_rows,
            dedupe_window_hours: config.dedupe.window_hours,
            max_publish_bytes: 256 << 20,
            orphan_after: Duration::from_secs(config.publish.interval_secs.max(1) * 3),
        }
    }
}

/// How far a consumer of the staging log (the rule engine) has durably
/// consumed each writer's frames. With a gate, the publisher takes only
/// segments wholly consumed, so the engine can always redo its last batch
/// from staging after a crash.
pub type ConsumedGate = Arc<std::sync::Mutex<std::collections::HashMap<WriterId, Position>>>;

/// Publishes this process's sealed staging segments (and orphans).
pub struct Publisher {
    gate: Option<ConsumedGate>,
    root: DataRoot,
    log: Arc<Mutex<StagingLog>>,
    writer: WriterId,
    opts: PublisherOptions,
    dedupe: DedupeIndex,
    profiles: Option<ProfileState>,
    counter: u64,
    backlog: Arc<std::sync::atomic::AtomicU64>,
    suppression: Option<Arc<crate::privacy::Suppression>>,
}

impl Publisher {
    /// A publisher for the segments `log` writes.
    pub async fn new(
        root: DataRoot,
        log: Arc<Mutex<StagingLog>>,
        opts: PublisherOptions,
    ) -> Publisher {
        let (writer, backlog) = {
            let l = log.lock().await;
            (l.writer().clone(), l.backlog())
        };
        let dedupe = DedupeIndex::new(opts.dedupe_window_hours);
        Publisher {
            gate: None,
            root,
            log,
            writer,
            opts,
            dedupe,
            profiles: None,
            counter: 0,
            backlog,
            suppression: None,
        }
    }

    /// Drops items naming an erased customer (staged before the erasure).
    pub fn with_suppression(mut self, s: Arc<crate::privacy::Suppression>) -> Publisher {
        self.suppression = Some(s);
        self
    }

    /// Forgets the merged profiles held in memory; the next publish reloads
    /// them from `profiles/` (after an erasure rewrote it).
    pub fn reload_profiles(&mut self) {
        self.profiles = None;
    }

    /// Publishes only segments `gate` says are consumed.
    pub fn with_gate(mut self, gate: ConsumedGate) -> Publisher {
        self.gate = Some(gate);
        self
    }

    /// Publishes everything sealed so far. After an error the in-memory
    /// state is dropped and rebuilt from the tables on the next call, which
    /// redoes the failed publish from its intent.
    pub async fn publish(&mut self) -> Result<PublishStats> {
        let result = self.publish_all().await;
        if result.is_err() {
            self.dedupe = DedupeIndex::new(self.opts.dedupe_window_hours);
            self.profiles = None;
        }
        result
    }

    async fn publish_all(&mut self) -> Result<PublishStats> {
        let mut stats = PublishStats::default();
        let intents = self.pending_intents().await?;
        if self.profiles.is_none() {
            // The unfinished publishes are redone below and apply their
            // updates then; one whose segments were being deleted has
            // whole files, and redoing it only finishes the deletes.
            let skip = interrupted(&self.root).await?.unfinished;
            self.profiles = Some(ProfileState::load(&self.root, &skip).await?);
        }
        let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
        for intent in &intents {
            taken.extend(intent.segments.iter().cloned());
            self.run(intent, &mut stats).await?;
            stats.redone += 1;
        }

        let watermark = self.log.lock().await.rotate();
        let now = Utc::now();
        let orphan_after =
            chrono::Duration::from_std(self.opts.orphan_after).unwrap_or(chrono::Duration::MAX);
        let mut live: std::collections::HashMap<WriterId, bool> = std::collections::HashMap::new();
        let mut dead = std::collections::BTreeSet::new();
        let mut blocked = std::collections::BTreeSet::new();
        let mut ready: Vec<Segment> = Vec::new();
        for s in list_segments(&self.root).await? {
            if taken.contains(&s.path.to_string()) {
                continue;
            }
            let take = if s.writer == self.writer {
                s.seq < watermark
            } else {
                // Another writer's segments: publish them only once it is
                // gone (lock free on a local root; quiet for a while on an
                // object store), so two processes never publish one segment.
                let is_live = *live.entry(s.writer.clone()).or_insert_with(|| {
                    writer_is_live(&self.root, &s.writer)
                        .unwrap_or(now - s.last_modified <= orphan_after)
                });
                if !is_live {
                    dead.insert(s.writer.clone());
                }
                !is_live
            };
            // A poisoned gate still holds whole entries (see the runner).
            let consumed = self.gate.as_ref().is_none_or(|g| {
                g.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&s.writer)
                    .is_some_and(|p| p.covers(s.seq, s.size))
            });
            if !consumed {
                blocked.insert(s.writer.clone());
            }
            if take && consumed {
                stats.oldest_age = stats
                    .oldest_age
                    .max((now - s.last_modified).to_std().unwrap_or_default());
                ready.push(s);
            }
        }

        let mut chunk: Vec<String> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut own_bytes = 0u64;
        for s in &ready {
            let size = s.size;
            if !chunk.is_empty() && chunk_bytes + size > self.opts.max_publish_bytes {
                self.start(std::mem::take(&mut chunk), own_bytes, &mut stats)
                    .await?;
                chunk_bytes = 0;
                own_bytes = 0;
            }
            chunk.push(s.path.to_string());
            chunk_bytes += size;
            if s.writer == self.writer {
                own_bytes += size;
            }
        }
        if !chunk.is_empty() {
            self.start(chunk, own_bytes, &mut stats).await?;
        }
        for writer in dead.difference(&blocked) {
            remove_writer_dir(&self.root, &writer);
        }
        self.dedupe.evict();
        Ok(stats)
    }

    async fn start(
        &mut self,
        segments: Vec<String>,
        own_bytes: u64,
        stats: &mut PublishStats,
    ) -> Result<()> {
        self.counter += 1;
        let intent = Intent {
            publish_id: format!("{}-{:06}", self.writer.0, self.counter),
            segments,
            own_bytes,
        };
        let path = intent_path(&intent.publish_id);
        let body = serde_json::to_vec(&intent).map_err(|e| StorageError::Corrupt {
            path: path.to_string(),
            reason: format!("the publish intent does not serialise: {e}"),
        })?;
        self.root
            .store
            .put(&path, Bytes::from(body).into())
            .await
            .map_err(StorageError::store(&path))?;
        self.run(&intent, stats).await
    }

    async fn pending_intents(&self) -> Result<Vec<Intent>> {
        let dir = ObjectPath::from(PUBLISHING_DIR);
        let metas = self.root.list(&dir).await?;
        let mut out = Vec::new();
        for m in metas {
            // Finished intents are deleted between list and read: skip them.
            let Some(bytes) = self.root.read(&m.location).await? else {
                continue;
            };
            let intent: Intent =
                serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                    path: m.location.to_string(),
                    reason: e.to_string(),
                })?;
            out.push(intent);
        }
        out.sort_by(|a, b| a.publish_id.cmp(&b.publish_id));
        Ok(out)
    }

    /// Carries out one intent; safe to repeat.
    async fn run(&mut self, intent: &Intent, stats: &mut PublishStats) -> Result<()> {
        let started = std::time::Instant::now();
        let mut items = Vec::new();
        // Object-store staging holds one small object per group commit: fetch
        // them concurrently, in order.
        let paths: Vec<ObjectPath> = intent
            .segments
            .iter()
            .map(|s| ObjectPath::from(s.as_str()))
            .collect();
        let fetched: Vec<Option<Bytes>> =
            futures::stream::iter(paths.into_iter().map(|p| fetch(self.root.clone(), p)))
                .buffered(16)
                .try_collect()
                .await?;
        for (seg, bytes) in intent.segments.iter().zip(fetched) {
            // Segments are deleted only after every file is written, so a
            // missing one means this intent had finished its files.
            let Some(bytes) = bytes else {
                return self.finish(intent).await;
            };
            let (frames, torn) = decode_frames(&bytes);
            if torn > 0 {
                // A crash mid-append leaves an unacknowledged tail; more
                // than one frame's worth would be corruption.
                tracing::warn!(segment = %seg, bytes = torn, "ignored a torn tail of a staged segment");
            }
            stats.torn_bytes += torn;
            for frame in frames {
                for line in frame.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let item: StagedItem =
                        serde_json::from_slice(line).map_err(|e| StorageError::Corrupt {
                            path: seg.to_string(),
                            reason: e.to_string(),
                        })?;
                    items.push(item);
                }
            }
        }
        stats.segments += intent.segments.len();
        stats.items += items.len();
        let read = started.elapsed();

        let mut refreshed = std::collections::HashSet::new();
        let mut events: BTreeMap<i64, Vec<EventRecord>> = BTreeMap::new();
        let mut identities: BTreeMap<i64, Vec<IdentityLink>> = BTreeMap::new();
        let mut updates: Vec<ProfileUpdate> = Vec::new();
        for item in items {
            if let Some(s) = &self.suppression
                && s.any(item.customer_ids())
            {
                stats.suppressed += 1;
                continue;
            }
            let hour = hour_bucket(item.timestamp_us());
            if refreshed.insert(hour) {
                self.dedupe
                    .refresh(&self.root, hour, &intent.publish_id)
                    .await?;
            }
            let (source, id) = item.dedupe_parts();
            let table = match &item {
                StagedItem::Event(_) => tables::EVENTS,
                StagedItem::Profile(_) => tables::PROFILES,
                StagedItem::Identity(_) => tables::IDENTITIES,
            };
            if !self.dedupe.insert(hour, id_key(table, source, id)) {
                stats.duplicates += 1;
                continue;
            }
            match item {
                StagedItem::Event(e) => events.entry(hour).or_default().push(e),
                StagedItem::Identity(i) => identities.entry(hour).or_default().push(i),
                StagedItem::Profile(p) => updates.push(p),
            }
        }

        let mut profile_rows: BTreeMap<i64, Vec<ProfileRow>> = BTreeMap::new();
        let mut change_rows: BTreeMap<i64, Vec<ChangeRow>> = BTreeMap::new();
        updates.sort_by_key(|u| u.timestamp_us);
        let state = self.profiles.get_or_insert_with(ProfileState::default);
        for u in &updates {
            if let Some((row, changes)) = state.apply(u) {
                let hour = hour_bucket(u.timestamp_us);
                profile_rows.entry(hour).or_default().push(row);
                change_rows.entry(hour).or_default().extend(changes);
            }
        }

        let id = &intent.publish_id;
        let prepared = started.elapsed();
        for (hour, rows) in events {
            stats.events += rows.len();
            let file = self.write(hour, id, rows).await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        for (hour, rows) in profile_rows {
            stats.profiles += rows.len();
            let file = self.write(hour, id, rows).await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        for (hour, rows) in change_rows {
            stats.changes += rows.len();
            self.write(hour, id, rows).await?;
            stats.files += 1;
        }
        for (hour, rows) in identities {
            stats.identities += rows.len();
            let file = self.write(hour, id, rows).await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        tracing::debug!(publish = %id, read_ms = read.as_millis() as u64, prepare_ms = (prepared - read).as_millis() as u64,
            write_ms = (started.elapsed() - prepared).as_millis() as u64, "publish timings");
        self.finish(intent).await
    }

    /// Sorts and encodes rows off the async runtime, then PUTs the file;
    /// returns its path. Sorting references, not the rows, because moving
    /// 300-byte records through a sort was a seventh of publish time.
    async fn write<R: TableRow>(
        &self,
        hour: i64,
        publish_id: &str,
        rows: Vec<R>,
    ) -> Result<String> {
        let path = format!(
            "{}/{publish_id}.parquet",
            partition_dir(R::TABLE, hour * HOUR_US)
        );
        let p = path.clone();
        let rg = self.opts.row_group_rows;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut refs: Vec<&R> = rows.iter().collect();
            refs.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            let batch = R::batch(&refs)?;
            let props =
                tables::writer_properties(&R::schema(), R::SORT_COLUMN, R::BLOOM_COLUMNS, rg);
            tables::encode_parquet(&batch, props, &p)
        })
        .await
        .map_err(|e| StorageError::io(&path)(std::io::Error::other(e)))??;
        let location = ObjectPath::from(path.as_str());
        self.root
            .store
            .put(&location, Bytes::from(bytes).into())
            .await
            .map_err(StorageError::store(&location))?;
        Ok(location.to_string())
    }

    async fn finish(&self, intent: &Intent) -> Result<()> {
        for seg in &intent.segments {
            let path = ObjectPath::from(seg.as_str());
            match self.root.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StorageError::store(&path)(e)),
            }
        }
        let path = intent_path(&intent.publish_id);
        match self.root.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::store(&path)(e)),
        }
        if intent.publish_id.starts_with(&self.writer.0) {
            let _ = self
                .backlog
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(intent.own_bytes))
                });
        }
        Ok(())
    }
}

/// Publishes a crash interrupted, as readers of the lake must take them.
/// A publish writes every file, then deletes its segments, then its
/// intent; so while any of its segments is gone its files are whole.
#[derive(Debug, Default)]
pub struct Interrupted {
    /// Publishes whose files may be partial: readers skip their files
    /// (every segment of theirs is still staged; read them from there).
    pub unfinished: Vec<String>,
    /// Segments still staged of publishes whose files are whole (the crash
    /// came while the segments were being deleted): readers take the files
    /// and skip these segments, or would count their items twice.
    pub published_segments: std::collections::HashSet<String>,
}

/// The publishes a crash interrupted, from their intents.
pub async fn interrupted(root: &DataRoot) -> Result<Interrupted> {
    let mut out = Interrupted::default();
    let intents = root.list(&ObjectPath::from(PUBLISHING_DIR)).await?;
    if intents.is_empty() {
        return Ok(out);
    }
    let staged: std::collections::HashSet<String> = list_segments(root)
        .await?
        .into_iter()
        .map(|s| s.path.to_string())
        .collect();
    for m in intents {
        // Finished intents are deleted between list and read.
        let Some(bytes) = root.read(&m.location).await? else {
            continue;
        };
        // An intent that does not read cannot say which files to skip:
        // folding them and their still-staged segments counts events twice.
        let intent: Intent = serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
            path: m.location.to_string(),
            reason: format!(
                "a publish intent without a readable publish_id and segments ({e}); it names \
                 the files and segments readers must skip: inspect it (the publisher refuses \
                 it too)"
            ),
        })?;
        if intent.segments.iter().all(|s| staged.contains(s)) {
            out.unfinished.push(intent.publish_id);
        } else {
            out.published_segments
                .extend(intent.segments.into_iter().filter(|s| staged.contains(s)));
        }
    }
    Ok(out)
}

async fn fetch(root: DataRoot, path: ObjectPath) -> Result<Option<Bytes>> {
    root.read(&path).await
}

fn intent_path(publish_id: &str) -> ObjectPath {
    ObjectPath::from(format!("{PUBLISHING_DIR}/{publish_id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::event::{Commerce, ProfileUpdate};

    fn event(id: &str, customer: &str, ts: i64) -> StagedItem {
        StagedItem::Event(EventRecord {
            event_id: id.into(),
            source: "s".into(),
            call: "track".into(),
            event: "Order Completed".into(),
            event_type: "purchase".into(),
            customer_id: customer.into(),
            user_id: Some(customer.into()),
            anonymous_id: None,
            timestamp_us: ts,
            received_at_us: ts,
            sent_at_us: None,
            commerce: Commerce {
                revenue: Some(1.0),
                ..Default::default()
            },
            timezone: None,
            properties: kairos_core::event::Json::empty_object(),
            context: kairos_core::event::Json::empty_object(),
        })
    }

    fn identify(id: &str, ts: i64, tier: &str) -> StagedItem {
        StagedItem::Profile(ProfileUpdate {
            event_id: id.into(),
            source: "s".into(),
            customer_id: "c1".into(),
            timestamp_us: ts,
            received_at_us: ts,
            traits: [("loyalty_tier".to_string(), serde_json::json!(tier))]
                .into_iter()
                .collect(),
            first_only: Default::default(),
        })
    }

    fn frame(items: &[StagedItem]) -> Vec<u8> {
        let mut out = Vec::new();
        for i in items {
            serde_json::to_writer(&mut out, i).expect("json");
            out.push(b'\n');
        }
        out
    }

    fn opts() -> PublisherOptions {
        PublisherOptions {
            row_group_rows: 1000,
            dedupe_window_hours: 24,
            max_publish_bytes: 1 << 30,
            orphan_after: Duration::from_secs(3600),
        }
    }

    fn count(dir: &std::path::Path, table: &str) -> (usize, Vec<String>) {
        let mut files = Vec::new();
        let mut stack = vec![dir.join(table)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        let mut rows = 0;
        for f in &files {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(f).expect("open"),
            )
            .expect("parquet")
            .build()
            .expect("reader");
            rows += r.map(|b| b.expect("batch").num_rows()).sum::<usize>();
        }
        (
            rows,
            files.iter().map(|f| f.display().to_string()).collect(),
        )
    }

    /// A crash after some files were written (and before the segments were
    /// deleted) is redone by the next process with the same names: every row
    /// once, no trait change lost.
    #[tokio::test]
    async fn interrupted_publish_is_redone_without_duplicates_or_losses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let h = HOUR_US;
        let items = vec![
            event("e1", "c1", 10 * h),
            event("e2", "c2", 10 * h + 5),
            event("e1", "c1", 10 * h),
            event("e3", "c1", 11 * h + 1),
            identify("i1", 10 * h, "silver"),
            identify("i2", 11 * h, "gold"),
        ];
        let log = Arc::new(Mutex::new(
            StagingLog::open(root.clone(), WriterId("w1".into())).expect("log"),
        ));
        log.lock()
            .await
            .append(&frame(&items))
            .await
            .expect("append");
        let seg = dir.path().join("_staging/w1/0000000000000000.log");
        let seg_bytes = std::fs::read(&seg).expect("segment");

        let mut first = Publisher::new(root.clone(), log.clone(), opts()).await;
        let stats = first.publish().await.expect("publish");
        assert_eq!(
            (
                stats.events,
                stats.duplicates,
                stats.profiles,
                stats.changes
            ),
            (3, 1, 2, 2)
        );
        let (events_before, event_files) = count(dir.path(), "events");
        let changes_before = count(dir.path(), "profile_changes").0;
        assert_eq!(events_before, 3);
        assert!(!seg.exists(), "published segments are deleted");
        drop(first);
        drop(log);

        // Rewind to "crashed midway": segment and intent back, one output file missing.
        std::fs::create_dir_all(seg.parent().expect("parent")).expect("dir");
        std::fs::write(&seg, &seg_bytes).expect("restore segment");
        let intent = Intent {
            publish_id: "w1-000001".into(),
            segments: vec!["_staging/w1/0000000000000000.log".into()],
            own_bytes: 0,
        };
        std::fs::create_dir_all(dir.path().join(PUBLISHING_DIR)).expect("dir");
        std::fs::write(
            dir.path().join(PUBLISHING_DIR).join("w1-000001.json"),
            serde_json::to_vec(&intent).expect("json"),
        )
        .expect("intent");
        std::fs::remove_file(&event_files[0]).expect("lose one file");

        let log2 = Arc::new(Mutex::new(
            StagingLog::open(root.clone(), WriterId("w2".into())).expect("log"),
        ));
        let stats = Publisher::new(root.clone(), log2, opts())
            .await
            .publish()
            .await
            .expect("redo");
        assert_eq!(stats.redone, 1);
        assert_eq!(
            count(dir.path(), "events").0,
            events_before,
            "every row exactly once"
        );
        assert_eq!(
            count(dir.path(), "profile_changes").0,
            changes_before,
            "changes recomputed, not lost"
        );
        assert!(
            !dir.path()
                .join(PUBLISHING_DIR)
                .join("w1-000001.json")
                .exists()
        );
    }

    #[tokio::test]
    async fn another_live_writers_segments_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let other = StagingLog::open(root.clone(), WriterId("live".into())).expect("log");
        let mut other = other;
        other
            .append(&frame(&[event("x1", "c9", HOUR_US)]))
            .await
            .expect("append");
        other.rotate();
        let mine = Arc::new(Mutex::new(
            StagingLog::open(root.clone(), WriterId("me".into())).expect("log"),
        ));
        let stats = Publisher::new(root.clone(), mine.clone(), opts())
            .await
            .publish()
            .await
            .expect("publish");
        assert_eq!(stats.events, 0, "a live writer publishes its own segments");
        drop(other);
        let stats = Publisher::new(root.clone(), mine, opts())
            .await
            .publish()
            .await
            .expect("publish");
        assert_eq!(stats.events, 1, "a dead writer's segments are adopted");
    }
}
