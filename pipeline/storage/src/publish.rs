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
    Segment, StagingLog, WriterId, decode_frames, list_segments, remove_writer_dir, writer_is_live,
};
use crate::tables::{self, ChangeRow, ProfileRow, partition_dir};
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

/// Publishes this process's sealed staging segments (and orphans).
pub struct Publisher {
    root: DataRoot,
    log: Arc<Mutex<StagingLog>>,
    writer: WriterId,
    opts: PublisherOptions,
    dedupe: DedupeIndex,
    profiles: Option<ProfileState>,
    counter: u64,
}

impl Publisher {
    /// A publisher for the segments `log` writes.
    pub async fn new(
        root: DataRoot,
        log: Arc<Mutex<StagingLog>>,
        opts: PublisherOptions,
    ) -> Publisher {
        let writer = log.lock().await.writer().clone();
        let dedupe = DedupeIndex::new(opts.dedupe_window_hours);
        Publisher {
            root,
            log,
            writer,
            opts,
            dedupe,
            profiles: None,
            counter: 0,
        }
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
            let skip: Vec<String> = intents.iter().map(|i| i.publish_id.clone()).collect();
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
            if take {
                stats.oldest_age = stats
                    .oldest_age
                    .max((now - s.last_modified).to_std().unwrap_or_default());
                ready.push(s);
            }
        }

        let mut chunk: Vec<String> = Vec::new();
        let mut chunk_bytes = 0u64;
        for s in &ready {
            let size = s.size;
            if !chunk.is_empty() && chunk_bytes + size > self.opts.max_publish_bytes {
                self.start(std::mem::take(&mut chunk), &mut stats).await?;
                chunk_bytes = 0;
            }
            chunk.push(s.path.to_string());
            chunk_bytes += size;
        }
        if !chunk.is_empty() {
            self.start(chunk, &mut stats).await?;
        }
        for writer in dead {
            remove_writer_dir(&self.root, &writer);
        }
        self.dedupe.evict();
        Ok(stats)
    }

    async fn start(&mut self, segments: Vec<String>, stats: &mut PublishStats) -> Result<()> {
        self.counter += 1;
        let intent = Intent {
            publish_id: format!("{}-{:06}", self.writer.0, self.counter),
            segments,
        };
        let path = intent_path(&intent.publish_id);
        let body = serde_json::to_vec(&intent).unwrap_or_default();
        self.root
            .store
            .put(&path, Bytes::from(body).into())
            .await
            .map_err(StorageError::store(&path))?;
        self.run(&intent, stats).await
    }

    async fn pending_intents(&self) -> Result<Vec<Intent>> {
        let dir = ObjectPath::from(PUBLISHING_DIR);
        let metas: Vec<_> = self
            .root
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(StorageError::store(&dir))?;
        let mut out = Vec::new();
        for m in metas {
            let bytes = self
                .root
                .store
                .get(&m.location)
                .await
                .map_err(StorageError::store(&m.location))?;
            let bytes = bytes
                .bytes()
                .await
                .map_err(StorageError::store(&m.location))?;
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
        let mut items = Vec::new();
        // Object-store staging holds one small object per group commit: fetch
        // them concurrently, in order.
        let paths: Vec<ObjectPath> = intent
            .segments
            .iter()
            .map(|s| ObjectPath::from(s.as_str()))
            .collect();
        let fetched: Vec<Option<Bytes>> =
            futures::stream::iter(paths.into_iter().map(|p| fetch(self.root.store.clone(), p)))
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

        let mut refreshed = std::collections::HashSet::new();
        let mut events: BTreeMap<i64, Vec<EventRecord>> = BTreeMap::new();
        let mut identities: BTreeMap<i64, Vec<IdentityLink>> = BTreeMap::new();
        let mut updates: Vec<ProfileUpdate> = Vec::new();
        for item in items {
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
        let rg = self.opts.row_group_rows;
        for (hour, mut rows) in events {
            rows.sort_by(|a, b| {
                (&a.customer_id, a.timestamp_us).cmp(&(&b.customer_id, b.timestamp_us))
            });
            stats.events += rows.len();
            let file = self
                .write(
                    tables::EVENTS,
                    hour,
                    id,
                    move |rows: &[EventRecord], path: &str| {
                        let refs: Vec<&EventRecord> = rows.iter().collect();
                        let batch = tables::events_batch(&refs)?;
                        let props = tables::writer_properties(
                            &tables::EVENTS_SCHEMA,
                            "customer_id",
                            &["customer_id", "event_id"],
                            rg,
                        );
                        tables::encode_parquet(&batch, props, path)
                    },
                    rows,
                )
                .await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        for (hour, mut rows) in profile_rows {
            rows.sort_by(|a, b| {
                (&a.customer_id, a.updated_at_us).cmp(&(&b.customer_id, b.updated_at_us))
            });
            stats.profiles += rows.len();
            let file = self
                .write(
                    tables::PROFILES,
                    hour,
                    id,
                    move |rows: &[ProfileRow], path: &str| {
                        let refs: Vec<&ProfileRow> = rows.iter().collect();
                        let props = tables::writer_properties(
                            &tables::PROFILES_SCHEMA,
                            "customer_id",
                            &["customer_id"],
                            rg,
                        );
                        tables::encode_parquet(&tables::profiles_batch(&refs)?, props, path)
                    },
                    rows,
                )
                .await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        for (hour, mut rows) in change_rows {
            rows.sort_by(|a, b| {
                (&a.customer_id, a.changed_at_us).cmp(&(&b.customer_id, b.changed_at_us))
            });
            stats.changes += rows.len();
            self.write(
                tables::PROFILE_CHANGES,
                hour,
                id,
                move |rows: &[ChangeRow], path: &str| {
                    let refs: Vec<&ChangeRow> = rows.iter().collect();
                    let props = tables::writer_properties(
                        &tables::PROFILE_CHANGES_SCHEMA,
                        "customer_id",
                        &["customer_id"],
                        rg,
                    );
                    tables::encode_parquet(&tables::changes_batch(&refs)?, props, path)
                },
                rows,
            )
            .await?;
            stats.files += 1;
        }
        for (hour, mut rows) in identities {
            rows.sort_by(|a, b| {
                (&a.anonymous_id, a.timestamp_us).cmp(&(&b.anonymous_id, b.timestamp_us))
            });
            stats.identities += rows.len();
            let file = self
                .write(
                    tables::IDENTITIES,
                    hour,
                    id,
                    move |rows: &[IdentityLink], path: &str| {
                        let refs: Vec<&IdentityLink> = rows.iter().collect();
                        let props = tables::writer_properties(
                            &tables::IDENTITIES_SCHEMA,
                            "anonymous_id",
                            &["anonymous_id", "user_id"],
                            rg,
                        );
                        tables::encode_parquet(&tables::identities_batch(&refs)?, props, path)
                    },
                    rows,
                )
                .await?;
            stats.files += 1;
            self.dedupe.mark_file(hour, file);
        }
        self.finish(intent).await
    }

    /// Encodes rows off the async runtime and PUTs the file; returns its path.
    async fn write<R, F>(
        &self,
        table: &str,
        hour: i64,
        publish_id: &str,
        encode: F,
        rows: Vec<R>,
    ) -> Result<String>
    where
        R: Send + 'static,
        F: FnOnce(&[R], &str) -> Result<Vec<u8>> + Send + 'static,
    {
        let path = format!(
            "{}/{publish_id}.parquet",
            partition_dir(table, hour * HOUR_US)
        );
        let p = path.clone();
        let bytes = tokio::task::spawn_blocking(move || encode(&rows, &p))
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
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store(&path)(e)),
        }
    }
}

async fn fetch(
    store: Arc<dyn object_store::ObjectStore>,
    path: ObjectPath,
) -> Result<Option<Bytes>> {
    match store.get(&path).await {
        Ok(r) => r
            .bytes()
            .await
            .map(Some)
            .map_err(StorageError::store(&path)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StorageError::store(&path)(e)),
    }
}

fn intent_path(publish_id: &str) -> ObjectPath {
    ObjectPath::from(format!("{PUBLISHING_DIR}/{publish_id}.json"))
}
