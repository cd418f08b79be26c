//! Erasing a person (GDPR Art. 17): the suppression list, the ids an
//! erasure covers, and rewriting table files without them.
//!
//! **Suppression.** Erased ids are kept only as keyed hashes
//! (HMAC-SHA256 under `_kairos/privacy/key`, made once, mode 0600): a list
//! of the very people who asked to be forgotten must not name them. Ingest
//! and the publisher drop any call that names a suppressed id.
//!
//! **Rewriting.** A table file that holds rows of the person is read,
//! filtered and written back under the same name in one PUT: a local root
//! renames a complete temporary file over it, an object store replaces the
//! object. A glob reader therefore sees each file whole, before or after,
//! never a row twice nor a torn file; and a run that dies half-way is
//! simply run again (files already clean are left alone), which is what
//! makes erasure crash-safe and idempotent. Which tables, and by which
//! columns, is the caller's [`EraseTable`] list.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{concat_batches, filter_record_batch};
use bytes::Bytes;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::columns;
use crate::root::DataRoot;
use crate::tables::{encode_parquet, read_parquet, writer_properties};
use crate::{Result, StorageError};

/// Everything erasure keeps (not a table).
pub const PRIVACY_DIR: &str = "_kairos/privacy";
const KEY_FILE: &str = "_kairos/privacy/key";
const SUPPRESSED_FILE: &str = "_kairos/privacy/suppressed.json";

/// The hashes of every suppressed id, shared by everyone who checks.
pub struct Suppression {
    key: ring::hmac::Key,
    hashes: RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Suppression({} ids)", self.len())
    }
}

#[derive(Serialize, Deserialize, Default)]
struct SuppressedFile {
    /// Hex HMAC-SHA256 (first 16 bytes) of each suppressed id.
    hashes: BTreeSet<String>,
}

impl Suppression {
    /// The list kept in `root` (empty when none was ever written); makes
    /// the key on first use.
    pub async fn load(root: &DataRoot) -> Result<Arc<Suppression>> {
        let key_path = ObjectPath::from(KEY_FILE);
        let key =
            match root.read_secret(&key_path).await? {
                Some(k) => k,
                None => {
                    let k = Bytes::from(kairos_core::secret::random_token(32));
                    match root.put_secret(&key_path, k.clone()).await {
                        Ok(()) => k,
                        // Another process made it first: use theirs.
                        Err(put) => root.read_secret(&key_path).await?.ok_or_else(|| {
                            StorageError::Corrupt {
                                path: KEY_FILE.into(),
                                reason: format!("could not be written ({put}) nor read"),
                            }
                        })?,
                    }
                }
            };
        let list: SuppressedFile = match root.read(&ObjectPath::from(SUPPRESSED_FILE)).await? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| StorageError::Corrupt {
                path: SUPPRESSED_FILE.into(),
                reason: format!("{e}; restore it from a backup: without it erased customers' new events would be kept"),
            })?,
            None => SuppressedFile::default(),
        };
        Ok(Arc::new(Suppression {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            hashes: RwLock::new(list.hashes.into_iter().collect()),
        }))
    }

    /// The keyed hash of `id`, as stored.
    pub fn hash(&self, id: &str) -> String {
        let tag = ring::hmac::sign(&self.key, id.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.hashes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` is suppressed.
    pub fn contains(&self, id: &str) -> bool {
        let set = self.read();
        !set.is_empty() && set.contains(&self.hash(id))
    }

    /// Whether any of `ids` is suppressed.
    pub fn any<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let set = self.read();
        !set.is_empty() && ids.into_iter().any(|id| set.contains(&self.hash(id)))
    }

    /// How many ids are suppressed.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when nothing is suppressed.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Adds `ids` (durably, before returning).
    pub async fn add(&self, root: &DataRoot, ids: &BTreeSet<String>) -> Result<()> {
        let mut next: BTreeSet<String> = self.read().iter().cloned().collect();
        next.extend(ids.iter().map(|id| self.hash(id)));
        self.store(root, next).await
    }

    /// Removes `ids`; returns how many were suppressed.
    pub async fn remove(&self, root: &DataRoot, ids: &[String]) -> Result<usize> {
        let mut next: BTreeSet<String> = self.read().iter().cloned().collect();
        let before = next.len();
        for id in ids {
            next.remove(&self.hash(id));
        }
        let removed = before - next.len();
        self.store(root, next).await?;
        Ok(removed)
    }

    async fn store(&self, root: &DataRoot, hashes: BTreeSet<String>) -> Result<()> {
        let path = ObjectPath::from(SUPPRESSED_FILE);
        let file = SuppressedFile { hashes };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StorageError::Corrupt {
            path: SUPPRESSED_FILE.into(),
            reason: e.to_string(),
        })?;
        root.store
            .put(&path, Bytes::from(bytes).into())
            .await
            .map_err(StorageError::store(&path))?;
        *self
            .hashes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = file.hashes.into_iter().collect();
        Ok(())
    }
}

/// `ids` and every id linked below them in `identities/`: the anonymous
/// ids (and alias previous ids) that became one of them, transitively. An
/// id that one of them became (an upward link) is not followed: that may
/// be someone else (a shared device).
pub async fn linked_ids(root: &DataRoot, ids: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut links: Vec<(String, String)> = Vec::new();
    for meta in root
        .list(&ObjectPath::from(crate::tables::IDENTITIES))
        .await?
    {
        if !meta.location.as_ref().ends_with(".parquet") {
            continue;
        }
        for b in read_parquet(root, &meta.location, Some(&["anonymous_id", "user_id"])).await? {
            // A file whose links do not read would leave the person's
            // anonymous ids un-erased: stop.
            let anon = columns::strings(&b, crate::tables::IDENTITIES, "anonymous_id")?;
            let user = columns::strings(&b, crate::tables::IDENTITIES, "user_id")?;
            for i in 0..b.num_rows() {
                if anon.is_valid(i) && user.is_valid(i) {
                    links.push((anon.value(i).to_string(), user.value(i).to_string()));
                }
            }
        }
    }
    let mut all = ids.clone();
    loop {
        let before = all.len();
        for (anon, user) in &links {
            if all.contains(user) {
                all.insert(anon.clone());
            }
        }
        if all.len() == before {
            return Ok(all);
        }
    }
}

/// The contact addresses (`email`, `phone`) the profiles of `ids` ever
/// held, to find the person's messages in the outbox.
pub async fn contact_values(root: &DataRoot, ids: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for meta in root
        .list(&ObjectPath::from(crate::tables::PROFILES))
        .await?
    {
        if !meta.location.as_ref().ends_with(".parquet") {
            continue;
        }
        for b in read_parquet(
            root,
            &meta.location,
            Some(&["customer_id", "email", "phone"]),
        )
        .await?
        {
            let who = columns::strings(&b, crate::tables::PROFILES, "customer_id")?;
            for col in ["email", "phone"] {
                let v = columns::strings(&b, crate::tables::PROFILES, col)?;
                for i in 0..b.num_rows() {
                    if who.is_valid(i) && ids.contains(who.value(i)) && v.is_valid(i) {
                        let value = v.value(i).trim();
                        if !value.is_empty() {
                            out.insert(value.to_string());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One table erasure rewrites.
#[derive(Debug, Clone)]
pub struct EraseTable {
    /// Folder under the data root.
    pub name: &'static str,
    /// A row goes when any of these holds an erased id.
    pub id_columns: &'static [&'static str],
    /// How the table's files are sorted (kept in the rewrite).
    pub sort_column: &'static str,
    /// Columns with bloom filters (kept in the rewrite).
    pub bloom_columns: &'static [&'static str],
}

/// What an erasure removed, per table: (files rewritten, rows removed).
/// Holds no personal data: it is the audit record's body.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct EraseStats {
    /// Table -> (files rewritten, rows removed).
    pub tables: BTreeMap<String, (usize, usize)>,
    /// Outbox files deleted.
    pub outbox_files: usize,
    /// Other files deleted (report outcomes, swapped-out compaction folders).
    pub derived_files: usize,
}

/// Rewrites every file of `tables` that holds a row naming one of `ids`,
/// without those rows.
pub async fn erase_rows(
    root: &DataRoot,
    tables: &[EraseTable],
    ids: &BTreeSet<String>,
    row_group_rows: usize,
    stats: &mut EraseStats,
) -> Result<()> {
    for table in tables {
        let entry = stats.tables.entry(table.name.to_string()).or_default();
        for meta in root.list(&ObjectPath::from(table.name)).await? {
            if !meta.location.as_ref().ends_with(".parquet") {
                continue;
            }
            // The id columns first: most files do not hold the person.
            let ids_only = read_parquet(root, &meta.location, Some(table.id_columns)).await?;
            if !ids_only
                .iter()
                .map(|b| keep_mask(b, table, ids))
                .collect::<Result<Vec<_>>>()?
                .iter()
                .any(|mask| mask.false_count() > 0)
            {
                continue;
            }
            let batches = read_parquet(root, &meta.location, None).await?;
            let Some(schema) = batches.first().map(RecordBatch::schema) else {
                continue;
            };
            let mut kept = Vec::with_capacity(batches.len());
            let mut removed = 0;
            for b in &batches {
                let mask = keep_mask(b, table, ids)?;
                removed += mask.false_count();
                kept.push(filter_record_batch(b, &mask)?);
            }
            let merged = concat_batches(&schema, &kept)?;
            let props = writer_properties(
                &schema,
                table.sort_column,
                table.bloom_columns,
                row_group_rows,
            );
            let bytes = encode_parquet(&merged, props, meta.location.as_ref())?;
            root.store
                .put(&meta.location, Bytes::from(bytes).into())
                .await
                .map_err(StorageError::store(&meta.location))?;
            entry.0 += 1;
            entry.1 += removed;
        }
    }
    Ok(())
}

/// True for the rows of `b` that name none of `ids` in an id column. An
/// id column missing or of another type is an error: no row would match,
/// and the erasure would report success having removed nothing.
fn keep_mask(b: &RecordBatch, table: &EraseTable, ids: &BTreeSet<String>) -> Result<BooleanArray> {
    let columns: Vec<&StringArray> = table
        .id_columns
        .iter()
        .map(|c| columns::strings(b, table.name, c))
        .collect::<Result<_>>()?;
    Ok((0..b.num_rows())
        .map(|i| {
            Some(
                !columns
                    .iter()
                    .any(|c| c.is_valid(i) && ids.contains(c.value(i))),
            )
        })
        .collect())
}

/// Deletes every object under `prefix` whose bytes mention one of
/// `needles`; returns how many.
pub async fn delete_mentioning(
    root: &DataRoot,
    prefix: &str,
    needles: &BTreeSet<String>,
) -> Result<usize> {
    let mut deleted = 0;
    for meta in root.list(&ObjectPath::from(prefix)).await? {
        let Some(bytes) = root.read(&meta.location).await? else {
            continue;
        };
        if mentions(&bytes, needles) {
            root.store
                .delete(&meta.location)
                .await
                .map_err(StorageError::store(&meta.location))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Whether any object under `prefix` mentions one of `needles`.
pub async fn any_mentioning(
    root: &DataRoot,
    prefix: &str,
    needles: &BTreeSet<String>,
) -> Result<bool> {
    for meta in root.list(&ObjectPath::from(prefix)).await? {
        if let Some(bytes) = root.read(&meta.location).await?
            && mentions(&bytes, needles)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `bytes` hold one of `needles`, as written or as a JSON string
/// (escaped).
fn mentions(bytes: &[u8], needles: &BTreeSet<String>) -> bool {
    needles.iter().any(|n| {
        let escaped = serde_json::to_string(n).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        contains(bytes, n.as_bytes()) || contains(bytes, escaped.as_bytes())
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Deletes every object under `prefix`; returns how many.
pub async fn delete_all(root: &DataRoot, prefix: &str) -> Result<usize> {
    let metas = root.list(&ObjectPath::from(prefix)).await?;
    for meta in &metas {
        root.store
            .delete(&meta.location)
            .await
            .map_err(StorageError::store(&meta.location))?;
    }
    Ok(metas.len())
}

/// One table's retention: files of hours that ended more than `max_age_us`
/// ago lose every row but those `keep` names.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The table, as for erasure.
    pub table: EraseTable,
    /// Longest age, µs.
    pub max_age_us: i64,
    /// Rows kept whatever their age: (column, values), e.g. opt-out events.
    pub keep: Option<(&'static str, &'static [&'static str])>,
}

/// The start (µs) of the hour a table file's path names
/// (`…/date=YYYY-MM-DD/hour=HH/…`), if it names one.
fn hour_of(path: &str) -> Option<i64> {
    let date = path.split('/').find_map(|p| p.strip_prefix("date="))?;
    let hour: u32 = path
        .split('/')
        .find_map(|p| p.strip_prefix("hour="))?
        .parse()
        .ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_micros())
}

/// Applies `rules` as of `now_us`: a file of an hour past its table's
/// age is rewritten with only its kept rows (one PUT, as erasure), or
/// deleted when none remain. Returns, per table, (files changed, rows
/// removed).
pub async fn enforce_retention(
    root: &DataRoot,
    rules: &[Retention],
    now_us: i64,
    row_group_rows: usize,
) -> Result<BTreeMap<String, (usize, usize)>> {
    let mut out = BTreeMap::new();
    for rule in rules {
        let cutoff = now_us.saturating_sub(rule.max_age_us);
        let entry: &mut (usize, usize) = out.entry(rule.table.name.to_string()).or_default();
        for meta in root.list(&ObjectPath::from(rule.table.name)).await? {
            let path = meta.location.as_ref();
            let Some(start) = hour_of(path).filter(|_| path.ends_with(".parquet")) else {
                continue;
            };
            if start + kairos_core::time::HOUR_US > cutoff {
                continue;
            }
            let batches = read_parquet(root, &meta.location, None).await?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let mut kept = Vec::new();
            if let Some((column, values)) = rule.keep {
                for b in &batches {
                    // Without the column every row would go.
                    let c = columns::strings(b, rule.table.name, column)?;
                    let mask: BooleanArray = (0..b.num_rows())
                        .map(|i| Some(c.is_valid(i) && values.contains(&c.value(i))))
                        .collect();
                    kept.push(filter_record_batch(b, &mask)?);
                }
            }
            let left: usize = kept.iter().map(RecordBatch::num_rows).sum();
            if left == rows {
                continue;
            }
            if left == 0 {
                root.store
                    .delete(&meta.location)
                    .await
                    .map_err(StorageError::store(&meta.location))?;
            } else {
                let schema = kept[0].schema();
                let merged = concat_batches(&schema, &kept)?;
                let props = writer_properties(
                    &schema,
                    rule.table.sort_column,
                    rule.table.bloom_columns,
                    row_group_rows,
                );
                let bytes = encode_parquet(&merged, props, path)?;
                root.store
                    .put(&meta.location, Bytes::from(bytes).into())
                    .await
                    .map_err(StorageError::store(&meta.location))?;
            }
            entry.0 += 1;
            entry.1 += rows - left;
        }
    }
    Ok(out)
}

/// Deletes outbox messages of days that ended more than `max_age_us` ago
/// (`<prefix>/YYYY-MM-DD/…`); returns how many.
pub async fn expire_dated(
    root: &DataRoot,
    prefix: &str,
    max_age_us: i64,
    now_us: i64,
) -> Result<usize> {
    let cutoff = now_us.saturating_sub(max_age_us);
    let mut deleted = 0;
    for meta in root.list(&ObjectPath::from(prefix)).await? {
        let day = meta
            .location
            .as_ref()
            .split('/')
            .nth(1)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        let Some(end) = day
            .and_then(|d| d.succ_opt())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
        else {
            continue;
        };
        if end <= cutoff {
            root.store
                .delete(&meta.location)
                .await
                .map_err(StorageError::store(&meta.location))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_without_the_id_column_fails_the_erasure_instead_of_keeping_everyone() {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(&dir.path().display().to_string()).expect("root");
        let schema = Arc::new(Schema::new(vec![Field::new("who", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["c1"]))],
        )
        .expect("batch");
        let bytes =
            encode_parquet(&b, writer_properties(&schema, "", &[], 1024), "t").expect("encode");
        root.store
            .put(
                &ObjectPath::from("t/date=2026-01-01/hour=00/a.parquet"),
                Bytes::from(bytes).into(),
            )
            .await
            .expect("put");
        let table = EraseTable {
            name: "t",
            id_columns: &["customer_id"],
            sort_column: "customer_id",
            bloom_columns: &[],
        };
        let mut stats = EraseStats::default();
        let ids = BTreeSet::from(["c1".to_string()]);
        let err = erase_rows(&root, &[table], &ids, 1024, &mut stats)
            .await
            .expect_err("nothing could be matched");
        assert!(err.to_string().contains("no `customer_id` column"), "{err}");
    }

    #[tokio::test]
    async fn the_list_keeps_hashes_only_and_survives_a_reload() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StorageError::io("tempdir"))?;
        let root = DataRoot::open(&dir.path().display().to_string())?;
        let s = Suppression::load(&root).await?;
        // Ids no hex hash can contain by chance.
        let (user, anon) = ("user-one".to_string(), "anon-nine".to_string());
        assert!(!s.contains(&user));
        s.add(&root, &[user.clone(), anon.clone()].into()).await?;
        assert!(s.contains(&user) && s.contains(&anon) && !s.contains("user-two"));
        let text = std::fs::read_to_string(dir.path().join(SUPPRESSED_FILE))
            .map_err(StorageError::io("list"))?;
        assert!(!text.contains(&user) && !text.contains(&anon), "{text}");
        let again = Suppression::load(&root).await?;
        assert!(
            again.contains(&user),
            "same key, same hashes after a restart"
        );
        assert_eq!(again.remove(&root, std::slice::from_ref(&user)).await?, 1);
        assert!(!again.contains(&user) && again.contains(&anon));
        Ok(())
    }

    #[test]
    fn hours_come_from_the_partition_path() {
        assert_eq!(
            hour_of("events/date=2026-09-01/hour=07/x.parquet"),
            Some(1_788_246_000_000_000)
        );
        assert_eq!(hour_of("events/x.parquet"), None);
        assert_eq!(hour_of("events/date=2026-13-01/hour=07/x.parquet"), None);
    }

    #[test]
    fn mentions_find_raw_and_json_escaped_ids() {
        let needles: BTreeSet<String> = ["a\"b".to_string()].into();
        assert!(mentions(br#"{"id":"a\"b"}"#, &needles));
        assert!(mentions(b"To: a\"b", &needles));
        assert!(!mentions(b"ab", &needles));
    }
}
