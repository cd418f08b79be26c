//! Exact messageId de-duplication, scoped by event-time hour.
//!
//! A retried call carries the same `messageId` and (after skew correction,
//! within network jitter) the same event time, so the id of an item only has
//! to be compared with ids in its own hour partition and its two
//! neighbours. For each hour the index holds the 128-bit hashes of
//! `(source, messageId)` already published, read once from the partition's
//! files (and re-listed before each publish, so files another ingest process
//! published into the same bucket are seen too). Hours more than
//! `window_hours` behind the newest are dropped from memory and re-read from
//! their files if a late event needs them, so the check stays exact while
//! memory stays bounded: about 40 bytes per id, 40 MB per million ids.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, StringArray};
use object_store::path::Path as ObjectPath;

use crate::root::DataRoot;
use crate::tables::{self, partition_dir};
use crate::{Result, StorageError};

/// The hash of one `(source, messageId)` pair.
pub type IdKey = u128;

/// Hashes a dedupe key. The table is part of it because one identify
/// call lands in both `profiles/` and `identities/` under one messageId.
/// 128 bits make an accidental collision as unlikely as a disk error
/// (below 1e-20 for a billion ids in one hour).
pub fn id_key(table: &str, source: &str, message_id: &str) -> IdKey {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(table.as_bytes());
    h.update(&[0]);
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(message_id.as_bytes());
    h.digest128()
}

#[derive(Default)]
struct Hour {
    ids: HashSet<IdKey>,
    files: HashSet<String>,
}

/// The published ids per hour partition.
pub struct DedupeIndex {
    window_hours: i64,
    hours: HashMap<i64, Hour>,
    newest: i64,
}

/// Tables whose rows carry `event_id` and `source` from a staged call.
const DEDUPED_TABLES: [&str; 3] = [tables::EVENTS, tables::PROFILES, tables::IDENTITIES];

impl DedupeIndex {
    /// An empty index keeping `window_hours` of hours in memory.
    pub fn new(window_hours: u32) -> DedupeIndex {
        DedupeIndex {
            window_hours: i64::from(window_hours.max(1)),
            hours: HashMap::new(),
            newest: i64::MIN,
        }
    }

    /// Loads ids from files of `hour` (and its neighbours) that the index has
    /// not read yet, ignoring files whose name starts with `skip_prefix` (the
    /// publish being redone after a crash).
    pub async fn refresh(&mut self, root: &DataRoot, hour: i64, skip_prefix: &str) -> Result<()> {
        for h in hour - 1..=hour + 1 {
            for table in DEDUPED_TABLES {
                let dir = ObjectPath::from(partition_dir(table, h * kairos_core::time::HOUR_US));
                let metas = root.list(&dir).await?;
                for meta in metas {
                    let name = meta.location.to_string();
                    let file_name = meta.location.filename().unwrap_or_default();
                    if !name.ends_with(".parquet") || file_name.starts_with(skip_prefix) {
                        continue;
                    }
                    if self.hours.get(&h).is_some_and(|e| e.files.contains(&name)) {
                        continue;
                    }
                    let ids = read_ids(root, table, &meta).await?;
                    let entry = self.hours.entry(h).or_default();
                    entry.ids.extend(ids);
                    entry.files.insert(name);
                }
            }
        }
        Ok(())
    }

    /// Records `key` in `hour`; false when it (or the same key in a
    /// neighbouring hour) was seen before.
    pub fn insert(&mut self, hour: i64, key: IdKey) -> bool {
        if (hour - 1..=hour + 1).any(|h| self.hours.get(&h).is_some_and(|e| e.ids.contains(&key))) {
            return false;
        }
        self.newest = self.newest.max(hour);
        self.hours.entry(hour).or_default().ids.insert(key)
    }

    /// Notes that `file` (just published into `hour`) is already indexed.
    pub fn mark_file(&mut self, hour: i64, file: String) {
        self.hours.entry(hour).or_default().files.insert(file);
    }

    /// Drops hours older than the window from memory.
    pub fn evict(&mut self) {
        let keep_from = self.newest.saturating_sub(self.window_hours + 1);
        self.hours.retain(|h, _| *h >= keep_from);
    }

    /// Ids held in memory (for metrics).
    pub fn len(&self) -> usize {
        self.hours.values().map(|h| h.ids.len()).sum()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn read_ids(
    root: &DataRoot,
    table: &str,
    meta: &object_store::ObjectMeta,
) -> Result<Vec<IdKey>> {
    let path = meta.location.to_string();
    let batches = tables::read_parquet(root, &meta.location, Some(&["event_id", "source"])).await?;
    let mut out = Vec::new();
    for b in batches {
        let (Some(ids), Some(sources)) = (
            b.column_by_name("event_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
            b.column_by_name("source")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
        ) else {
            return Err(StorageError::Corrupt {
                path,
                reason: "missing event_id or source column".into(),
            });
        };
        for i in 0..b.num_rows() {
            if ids.is_valid(i) {
                out.push(id_key(table, sources.value(i), ids.value(i)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_in_same_or_neighbour_hour_is_a_duplicate() {
        let mut idx = DedupeIndex::new(24);
        let k = id_key("events", "src", "m1");
        assert!(idx.insert(100, k));
        assert!(!idx.insert(100, k));
        assert!(
            !idx.insert(101, k),
            "skew correction can move a retry across the hour boundary"
        );
        assert!(
            idx.insert(103, k),
            "far apart in event time is a different event"
        );
    }

    #[test]
    fn source_is_part_of_the_key() {
        assert_ne!(id_key("events", "a", "m1"), id_key("events", "b", "m1"));
        assert_ne!(id_key("events", "a", "bm1"), id_key("events", "ab", "m1"));
        assert_ne!(
            id_key("profiles", "a", "m1"),
            id_key("identities", "a", "m1")
        );
    }

    #[test]
    fn evict_keeps_the_window() {
        let mut idx = DedupeIndex::new(2);
        idx.insert(10, 1);
        idx.insert(20, 2);
        idx.evict();
        assert_eq!(idx.len(), 1);
    }
}
