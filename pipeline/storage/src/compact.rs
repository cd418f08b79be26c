//! Compaction: the small files of a closed hour become one file, sorted by
//! the table's id column, swapped in atomically.
//!
//! Every publish, micro-batch and delivery chunk adds a file to its hour, and
//! late events add more to hours long closed; engines pay per file. For each
//! closed hour with several files, compaction merges them (schemas unified:
//! columns a file lacks are null) into one file sorted by the id column,
//! written into a fresh folder under `_kairos/compacting/`. That folder and
//! the live `<table>/date=…/hour=…` folder are then exchanged in one
//! `renameat2(RENAME_EXCHANGE)`. A glob reader lists an hour's folder in one
//! go, so it sees every old file or the one new file: never a row twice,
//! never a row missing. A reader that listed the old files and opens one
//! after the exchange gets "not found" and must retry (as with any deleted
//! file), it does not get wrong answers.
//!
//! **Crash safety.** A manifest naming the hour, its input files and the
//! merged file is written before the exchange. At the next run: if the live
//! folder holds the merged file, the exchange happened and the old folder is
//! deleted; otherwise only the unused merged folder is.
//!
//! **Files that arrive meanwhile.** A file published into the hour between
//! the listing and the exchange ends up in the old folder; it is moved back
//! into the live folder (one rename, so still never twice), not deleted.
//! Callers avoid this by compacting only hours no writer touches any more
//! (`until_us`, see `kairos compact`).
//!
//! **Local roots on Linux only.** An object store cannot replace many objects
//! at once for a reader that lists a prefix, so compaction of an `s3://` root
//! would break the glob guarantee; it is refused.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use kairos_core::time::HOUR_US;

use crate::root::DataRoot;
use crate::tables::{encode_parquet, writer_properties};
use crate::{Result, StorageError};

/// Work folders and manifests (not part of any table).
pub const COMPACTING_DIR: &str = "_kairos/compacting";

/// One table to compact.
#[derive(Debug, Clone)]
pub struct CompactTable {
    /// Folder name under the data root.
    pub name: &'static str,
    /// The table's current schema: merged files have exactly these columns.
    pub schema: SchemaRef,
    /// Rows are sorted by this column (then by their order before).
    pub sort_column: &'static str,
    /// Columns with bloom filters, as the publisher writes them.
    pub bloom_columns: &'static [&'static str],
    /// Only hours that end at or before this instant (µs) are compacted.
    pub until_us: i64,
}

/// What a compaction run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CompactStats {
    /// Hours merged.
    pub hours: usize,
    /// Files they had.
    pub files_before: usize,
    /// Rows in them.
    pub rows: usize,
    /// Bytes before and after.
    pub bytes_before: u64,
    /// Bytes of the merged files.
    pub bytes_after: u64,
    /// Hours left alone, with why.
    pub skipped: Vec<String>,
    /// Files that arrived during a merge and were moved back.
    pub moved_back: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// `<table>/date=…/hour=…`, relative to the root.
    live: String,
    /// The work folder, relative to the root.
    work: String,
    /// File names merged.
    inputs: Vec<String>,
    /// The merged file's name.
    output: String,
}

/// Merges every closed hour of `tables` with at least `min_files` files.
/// Blocking (local file I/O); run it on a blocking thread.
pub fn compact(
    root: &DataRoot,
    tables: &[CompactTable],
    min_files: usize,
    row_group_rows: usize,
) -> Result<CompactStats> {
    let dir = local_dir(root)?;
    let mut stats = CompactStats::default();
    recover(&dir, &mut stats)?;
    for table in tables {
        for (live, hour_start) in hour_dirs(&dir.join(table.name))? {
            if hour_start + HOUR_US > table.until_us {
                continue;
            }
            let files = parquet_files(&live)?;
            if files.len() < min_files.max(2) {
                continue;
            }
            merge_hour(&dir, table, &live, &files, row_group_rows, &mut stats)?;
        }
    }
    Ok(stats)
}

fn local_dir(root: &DataRoot) -> Result<PathBuf> {
    root.local_dir.clone().ok_or_else(|| StorageError::Unsupported(format!(
        "compaction of {}: an object store cannot swap many files at once for a glob reader, so only local data roots are compacted",
        root.url
    )))
}

/// `(folder, hour start µs)` of every `date=YYYY-MM-DD/hour=HH` under `table`.
fn hour_dirs(table: &Path) -> Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    for date in read_dir(table)? {
        let Some(day) = name_of(&date)
            .strip_prefix("date=")
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        for hour in read_dir(&date)? {
            let Some(h) = name_of(&hour)
                .strip_prefix("hour=")
                .and_then(|h| h.parse::<u32>().ok())
                .filter(|h| *h < 24)
            else {
                continue;
            };
            let Some(start) = day.and_hms_opt(h, 0, 0) else {
                continue;
            };
            out.push((hour, start.and_utc().timestamp_micros()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StorageError::io(dir.display())(e)),
    }
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// The `*.parquet` file names in `dir`, sorted.
fn parquet_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = read_dir(dir)?
        .iter()
        .filter(|p| p.is_file() && name_of(p).ends_with(".parquet"))
        .map(|p| name_of(p).to_string())
        .collect();
    names.sort();
    Ok(names)
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn merge_hour(
    root: &Path,
    table: &CompactTable,
    live: &Path,
    files: &[String],
    row_group_rows: usize,
    stats: &mut CompactStats,
) -> Result<()> {
    let mut batches = Vec::new();
    let mut bytes_before = 0;
    for name in files {
        let path = live.join(name);
        let file = File::open(&path).map_err(StorageError::io(path.display()))?;
        bytes_before += file.metadata().map(|m| m.len()).unwrap_or(0);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(StorageError::parquet(path.display()))?;
        for batch in reader {
            let batch = batch?;
            match conform(&batch, &table.schema) {
                Some(b) => batches.push(b),
                None => {
                    stats.skipped.push(format!(
                        "{}: {name} has columns this kairos does not know (written by a newer version); left as is",
                        relative(root, live)
                    ));
                    return Ok(());
                }
            }
        }
    }
    let merged = sort(&concat_batches(&table.schema, &batches)?, table.sort_column)?;
    let props = writer_properties(
        &table.schema,
        table.sort_column,
        table.bloom_columns,
        row_group_rows,
    );
    let live_rel = relative(root, live);
    let bytes = encode_parquet(&merged, props, &live_rel)?;

    // The merged file's name is new to the folder, so a manifest can tell
    // whether the exchange happened.
    let stamp = chrono::Utc::now().timestamp_micros();
    let output = format!("compacted-{stamp}.parquet");
    let id = format!("{}-{stamp}", live_rel.replace(['/', '='], "_"));
    let work = root.join(COMPACTING_DIR).join(&id);
    std::fs::create_dir_all(&work).map_err(StorageError::io(work.display()))?;
    write_synced(&work.join(&output), &bytes)?;
    let manifest = Manifest {
        live: live_rel.clone(),
        work: relative(root, &work),
        inputs: files.to_vec(),
        output: output.clone(),
    };
    let manifest_path = root.join(COMPACTING_DIR).join(format!("{id}.json"));
    let json = serde_json::to_vec(&manifest).map_err(|e| StorageError::Corrupt {
        path: manifest_path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_synced(&manifest_path, &json)?;

    exchange(&work, live)?;
    sync_dir(live.parent().unwrap_or(live))?;
    finish(root, &manifest, stats)?;
    std::fs::rename(&manifest_path, done_path(&manifest_path))
        .map_err(StorageError::io(manifest_path.display()))?;

    stats.hours += 1;
    stats.files_before += files.len();
    stats.rows += merged.num_rows();
    stats.bytes_before += bytes_before;
    stats.bytes_after += bytes.len() as u64;
    tracing::debug!(hour = %live_rel, files = files.len(), rows = merged.num_rows(), "compacted");
    Ok(())
}

/// After the exchange: files that are in the old folder but were not
/// merged go back to the live folder (a table file that arrived meanwhile,
/// or anything else someone keeps there). The old folder itself stays for
/// [`GRACE_SECS`]: a reader that opened the hour's folder just before the
/// swap still lists the old names (and then finds them gone, and retries)
/// instead of an emptied folder it would take for an empty hour.
fn finish(root: &Path, m: &Manifest, stats: &mut CompactStats) -> Result<()> {
    let (live, old) = (root.join(&m.live), root.join(&m.work));
    for from in read_dir(&old)? {
        let name = name_of(&from).to_string();
        if m.inputs.contains(&name) || name == m.output {
            continue;
        }
        std::fs::rename(&from, live.join(&name)).map_err(StorageError::io(from.display()))?;
        if name.ends_with(".parquet") {
            stats.moved_back += 1;
            tracing::warn!(hour = %m.live, file = %name, "a file arrived during compaction; moved back, not merged");
        }
    }
    Ok(())
}

/// How long a swapped-out hour folder is kept before a later run deletes it.
pub const GRACE_SECS: u64 = 600;

fn done_path(manifest: &Path) -> PathBuf {
    manifest.with_extension("done")
}

/// Completes or undoes what a crashed run left in `_kairos/compacting/`,
/// and deletes swapped-out folders older than [`GRACE_SECS`].
fn recover(root: &Path, stats: &mut CompactStats) -> Result<()> {
    let dir = root.join(COMPACTING_DIR);
    let entries = read_dir(&dir)?;
    let mut claimed = BTreeSet::new();
    let read_manifest = |path: &Path| -> Result<Manifest> {
        let text = std::fs::read(path).map_err(StorageError::io(path.display()))?;
        serde_json::from_slice(&text).map_err(|e| StorageError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{e}; delete it and the work folder it names"),
        })
    };
    for path in &entries {
        let name = name_of(path);
        if name.ends_with(".done") {
            let m = read_manifest(path)?;
            let age = std::fs::metadata(path)
                .and_then(|md| md.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs());
            if age < GRACE_SECS {
                claimed.insert(root.join(&m.work));
                continue;
            }
            let work = root.join(&m.work);
            if work.exists() {
                std::fs::remove_dir_all(&work).map_err(StorageError::io(work.display()))?;
            }
            std::fs::remove_file(path).map_err(StorageError::io(path.display()))?;
        } else if name.ends_with(".json") {
            let m = read_manifest(path)?;
            if root.join(&m.live).join(&m.output).exists() {
                // Exchanged: the work folder holds the old files.
                finish(root, &m, stats)?;
                claimed.insert(root.join(&m.work));
                std::fs::rename(path, done_path(path)).map_err(StorageError::io(path.display()))?;
            } else {
                // Not exchanged: the work folder holds only the unused merge.
                let work = root.join(&m.work);
                if work.exists() {
                    std::fs::remove_dir_all(&work).map_err(StorageError::io(work.display()))?;
                }
                std::fs::remove_file(path).map_err(StorageError::io(path.display()))?;
            }
        }
    }
    // A work folder without a manifest crashed before the manifest was
    // written, so before any exchange: it holds only a partial merge.
    for path in entries
        .iter()
        .filter(|p| p.is_dir() && !claimed.contains(*p))
    {
        std::fs::remove_dir_all(path).map_err(StorageError::io(path.display()))?;
    }
    Ok(())
}

/// Deletes every swapped-out hour folder now, grace period or not (an
/// erasure must not leave the old copies of the rows it removed for
/// [`GRACE_SECS`]; a reader that listed such an hour gets "not found" and
/// retries). Unfinished compactions are completed or undone first, as at
/// any run. Returns the files deleted. Local roots only; nothing to do
/// elsewhere. Blocking.
pub fn purge_swapped_out(root: &DataRoot) -> Result<usize> {
    let Some(dir) = root.local_dir.clone() else {
        return Ok(0);
    };
    recover(&dir, &mut CompactStats::default())?;
    let mut deleted = 0;
    for path in read_dir(&dir.join(COMPACTING_DIR))? {
        if !name_of(&path).ends_with(".done") {
            continue;
        }
        let text = std::fs::read(&path).map_err(StorageError::io(path.display()))?;
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| StorageError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{e}; delete it and the work folder it names"),
        })?;
        let work = dir.join(&m.work);
        deleted += read_dir(&work)?.len();
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(StorageError::io(work.display()))?;
        }
        std::fs::remove_file(&path).map_err(StorageError::io(path.display()))?;
    }
    Ok(deleted)
}

/// `batch` with exactly `schema`'s columns (missing ones null); `None` when
/// it has a column the schema lacks, which merging would drop.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Option<RecordBatch> {
    if batch
        .schema()
        .fields()
        .iter()
        .any(|f| schema.field_with_name(f.name()).is_err())
    {
        return None;
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    RecordBatch::try_new(schema.clone(), columns).ok()
}

/// Sorted by `column`, ties kept in their order (a stable sort).
fn sort(batch: &RecordBatch, column: &str) -> Result<RecordBatch> {
    let Some(key) = batch.column_by_name(column) else {
        return Ok(batch.clone());
    };
    let order = Arc::new(UInt32Array::from_iter_values(0..batch.num_rows() as u32)) as ArrayRef;
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: key.clone(),
                options: None,
            },
            SortColumn {
                values: order,
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(batch, &indices)?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f = File::create(path).map_err(StorageError::io(path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(StorageError::io(path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir.display()))
}

/// Swaps two folders in one step.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| StorageError::io(b.display())(std::io::Error::from(e)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_a: &Path, b: &Path) -> Result<()> {
    Err(StorageError::Unsupported(format!(
        "compaction of {}: swapping two folders atomically needs Linux (renameat2)",
        b.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    /// 2026-09-01T00:00:00Z.
    const T0: i64 = 1_788_220_800_000_000;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    fn table(until_us: i64) -> CompactTable {
        CompactTable {
            name: "things",
            schema: schema(),
            sort_column: "customer_id",
            bloom_columns: &["customer_id"],
            until_us,
        }
    }

    fn hour_dir(root: &Path, hour: i64) -> PathBuf {
        root.join(crate::tables::partition_dir("things", T0 + hour * HOUR_US))
    }

    /// A file of rows `(customer, n)`, with only the first two columns (an
    /// older schema) when `old` is set.
    fn write(dir: &Path, name: &str, rows: &[(&str, i64)], old: bool) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ids: ArrayRef = Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>());
        let ns: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1)));
        let batch = if old {
            let s = Arc::new(Schema::new(schema().fields()[..2].to_vec()));
            RecordBatch::try_new(s, vec![ids, ns])
        } else {
            let notes: ArrayRef = Arc::new(StringArray::from(vec![Some("x"); rows.len()]));
            RecordBatch::try_new(schema(), vec![ids, ns, notes])
        }
        .expect("batch");
        let props = writer_properties(&batch.schema(), "customer_id", &[], 1024);
        std::fs::write(
            dir.join(name),
            encode_parquet(&batch, props, name).expect("encode"),
        )
        .expect("write");
    }

    /// Every row of every file in `dir`: (customer, n) in file order.
    fn rows(dir: &Path) -> Result<Vec<(String, i64)>> {
        rows_of(dir, &parquet_files(dir)?)
    }

    /// Every row of the files `names` in `dir`.
    fn rows_of(dir: &Path, names: &[String]) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for name in names {
            let path = dir.join(name);
            let file = File::open(&path).map_err(StorageError::io(path.display()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(StorageError::parquet(path.display()))?;
            for b in reader {
                let b = b?;
                let (ids, ns) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_primitive::<Int64Type>(),
                );
                out.extend((0..b.num_rows()).map(|i| (ids.value(i).to_string(), ns.value(i))));
            }
        }
        Ok(out)
    }

    /// The `*.parquet` names in `dir` as a glob reader gets them: one
    /// directory read, file types from the entries (no stat by path).
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        names.sort();
        names
    }

    fn root(dir: &Path) -> DataRoot {
        DataRoot::open(dir.to_str().expect("utf8")).expect("root")
    }

    #[test]
    fn closed_hours_become_one_sorted_file_with_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h0, h1, h2) = (
            hour_dir(dir.path(), 0),
            hour_dir(dir.path(), 1),
            hour_dir(dir.path(), 2),
        );
        write(&h0, "p1.parquet", &[("c", 1), ("a", 2)], false);
        write(&h0, "p2.parquet", &[("b", 3), ("a", 4)], true);
        write(&h0, "p3.parquet", &[("a", 5)], false);
        write(&h1, "p1.parquet", &[("z", 1)], false);
        write(&h2, "p1.parquet", &[("y", 1)], false);
        write(&h2, "p2.parquet", &[("x", 1)], false);
        std::fs::write(h0.join("notes.txt"), "not a table file").expect("write");

        // Hour 2 is not closed before `until`.
        let stats =
            compact(&root(dir.path()), &[table(T0 + 2 * HOUR_US)], 2, 1024).expect("compact");
        assert_eq!(
            (stats.hours, stats.files_before, stats.rows),
            (1, 3, 5),
            "{stats:?}"
        );
        let files = parquet_files(&h0).expect("list");
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].starts_with("compacted-"));
        // Sorted by customer, ties in their order before (file name, row).
        let want: Vec<(String, i64)> = [("a", 2), ("a", 4), ("a", 5), ("b", 3), ("c", 1)]
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect();
        assert_eq!(rows(&h0).expect("read"), want);
        assert!(h0.join("notes.txt").exists(), "other files are left alone");
        assert_eq!(
            parquet_files(&h1).expect("list"),
            ["p1.parquet"],
            "one file: nothing to merge"
        );
        assert_eq!(
            parquet_files(&h2).expect("list").len(),
            2,
            "open hour untouched"
        );
        let left: Vec<String> = read_dir(&dir.path().join(COMPACTING_DIR))
            .expect("list")
            .iter()
            .map(|p| name_of(p).to_string())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "the swapped-out folder and its .done manifest: {left:?}"
        );
        assert!(left.iter().any(|n| n.ends_with(".done")), "{left:?}");

        // The older file's missing column is null in the merged file.
        let file = File::open(h0.join(&files[0])).expect("open");
        let b = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .expect("reader")
            .next()
            .expect("batch")
            .expect("ok");
        assert_eq!(b.schema().fields(), schema().fields());
        assert_eq!(
            b.column(2).null_count(),
            2,
            "the two rows from p2 have no note"
        );

        // A second run finds nothing to do.
        let again =
            compact(&root(dir.path()), &[table(T0 + 2 * HOUR_US)], 2, 1024).expect("compact");
        assert_eq!(again.hours, 0);
    }

    #[test]
    fn a_file_with_unknown_columns_keeps_its_hour_as_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h0 = hour_dir(dir.path(), 0);
        write(&h0, "p1.parquet", &[("a", 1)], false);
        let s = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("future", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            s,
            vec![
                Arc::new(StringArray::from(vec!["b"])),
                Arc::new(Int64Array::from(vec![2])),
                Arc::new(StringArray::from(vec!["new"])),
            ],
        )
        .expect("batch");
        let props = writer_properties(&b.schema(), "customer_id", &[], 1024);
        std::fs::write(
            h0.join("p2.parquet"),
            encode_parquet(&b, props, "p2").expect("encode"),
        )
        .expect("write");
        let stats = compact(&root(dir.path()), &[table(i64::MAX)], 2, 1024).expect("compact");
        assert_eq!(stats.hours, 0);
        assert!(
            stats.skipped[0].contains("newer version"),
            "{:?}",
            stats.skipped
        );
        assert_eq!(parquet_files(&h0).expect("list").len(), 2);
    }

    #[test]
    fn a_crash_is_completed_or_undone_at_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work_root = dir.path().join(COMPACTING_DIR);
        // Crashed after the exchange: live has the merged file, the work
        // folder the old files plus one that arrived meanwhile.
        let h0 = hour_dir(dir.path(), 0);
        write(&h0, "compacted-1.parquet", &[("a", 1), ("b", 2)], false);
        let old = work_root.join("w0");
        write(&old, "p1.parquet", &[("a", 1)], false);
        write(&old, "p2.parquet", &[("b", 2)], false);
        write(&old, "late.parquet", &[("c", 3)], false);
        let m = Manifest {
            live: relative(dir.path(), &h0),
            work: relative(dir.path(), &old),
            inputs: vec!["p1.parquet".into(), "p2.parquet".into()],
            output: "compacted-1.parquet".into(),
        };
        std::fs::write(
            work_root.join("w0.json"),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        // Crashed before the exchange: live keeps its files.
        let h1 = hour_dir(dir.path(), 1);
        write(&h1, "p1.parquet", &[("d", 4)], false);
        let unused = work_root.join("w1");
        write(&unused, "compacted-2.parquet", &[("d", 4)], false);
        let m = Manifest {
            live: relative(dir.path(), &h1),
            work: relative(dir.path(), &unused),
            inputs: vec!["p1.parquet".into()],
            output: "compacted-2.parquet".into(),
        };
        std::fs::write(
            work_root.join("w1.json"),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        // Crashed before the manifest: a partial merge only.
        write(
            &work_root.join("w2"),
            "compacted-3.parquet",
            &[("e", 5)],
            false,
        );

        let stats = compact(&root(dir.path()), &[], 2, 1024).expect("recover");
        assert_eq!(stats.moved_back, 1);
        let mut h0_rows = rows(&h0).expect("read");
        h0_rows.sort();
        assert_eq!(
            h0_rows,
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("c".to_string(), 3)
            ],
            "merged rows once, the late file moved back"
        );
        assert_eq!(rows(&h1).expect("read"), vec![("d".to_string(), 4)]);
        // The swapped-out folder stays for the grace period; the rest goes.
        let mut left: Vec<String> = read_dir(&work_root)
            .expect("list")
            .iter()
            .map(|p| name_of(p).to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["w0", "w0.done"]);
        assert_eq!(
            parquet_files(&old).expect("list"),
            ["p1.parquet", "p2.parquet"]
        );
    }

    /// A reader listing the hour while it is compacted gets every old file
    /// or the one merged file, never a mix (rows twice) and never a part of
    /// either (rows missing); reading what it listed gives every row once,
    /// or "not found" for an old file after the swap (and it retries).
    #[test]
    fn a_reader_never_sees_a_row_twice_or_misses_one_mid_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h0 = hour_dir(dir.path(), 0);
        let files = 150;
        let old: Vec<String> = (0..files).map(|f| format!("p{f:03}.parquet")).collect();
        for (f, name) in old.iter().enumerate() {
            write(&h0, name, &[("a", f as i64), ("b", f as i64)], false);
        }
        let total = 2 * files;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (listings, merged_seen) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let (mut listings, mut merged_seen) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let listed = listing(&h0);
                    let merged = listed.len() == 1 && listed[0].starts_with("compacted-");
                    // A listing that straddles the swap names fewer old
                    // files (the rest are gone from this path already);
                    // what it names is gone too, so reading it fails
                    // instead of returning part of the rows.
                    let straddled = !merged && listed.len() < old.len();
                    assert!(
                        merged || listed.iter().all(|n| old.contains(n)),
                        "a listing mixed the merged file with old ones: {listed:?}"
                    );
                    if straddled {
                        assert!(
                            rows_of(&h0, &listed).is_err(),
                            "read part of the rows: {} of {} files",
                            listed.len(),
                            old.len()
                        );
                    }
                    listings += 1;
                    merged_seen += usize::from(merged);
                    if merged {
                        assert_eq!(rows(&h0).expect("read").len(), total);
                    }
                }
                (listings, merged_seen)
            });
            std::thread::sleep(std::time::Duration::from_millis(30));
            let stats = compact(&root(dir.path()), &[table(i64::MAX)], 2, 1024).expect("compact");
            assert_eq!(stats.rows, total);
            std::thread::sleep(std::time::Duration::from_millis(30));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            reader.join().expect("reader")
        });
        assert!(
            listings > merged_seen && merged_seen > 0,
            "the reader listed before and after the swap ({listings} listings, {merged_seen} after)"
        );
    }
}
