//! The `firings/` table: one row per rule firing.
//!
//! Files are named by batch (`firings/date=…/hour=…/<batch id>.parquet`,
//! partitioned by the batch's rule clock), so redoing a batch after a crash
//! rewrites the same object and a reader never sees a firing twice.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use kairos_core::time::HOUR_US;
use kairos_storage::columns;
use kairos_storage::tables::{self, partition_dir, read_parquet};
use kairos_storage::{DataRoot, StorageError};

use crate::engine::Firing;

/// Table folder.
pub const FIRINGS: &str = "firings";

/// `firings/` schema.
pub static FIRINGS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("rule", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("dedupe_key", DataType::Utf8, false),
        Field::new("due_at", ts(), false),
        Field::new("clock", ts(), false),
        Field::new("fired_at", ts(), false),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("context", DataType::Utf8, false),
    ]))
});

/// The id of batch `n`: sorts in batch order.
pub fn batch_id(n: u64) -> String {
    format!("b{n:012}")
}

/// Firings as a record batch, sorted by customer.
pub fn firings_batch(
    firings: &[Firing],
    batch: &str,
    fired_at_us: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut refs: Vec<&Firing> = firings.iter().collect();
    refs.sort_by(|a, b| (&a.customer_id, &a.rule).cmp(&(&b.customer_id, &b.rule)));
    let s = |f: &dyn Fn(&Firing) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(refs.iter().map(|x| f(x))))
    };
    let t = |f: &dyn Fn(&Firing) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(refs.iter().map(|x| f(x)))
                .with_timezone("UTC"),
        )
    };
    let cols = vec![
        s(&|x| &x.rule),
        s(&|x| &x.customer_id),
        s(&|x| &x.dedupe_key),
        t(&|x| x.due_at_us),
        t(&|x| x.clock_us),
        t(&|_| fired_at_us),
        Arc::new(StringArray::from_iter_values(refs.iter().map(|_| batch))),
        s(&|x| &x.context),
    ];
    RecordBatch::try_new(FIRINGS_SCHEMA.clone(), cols)
}

/// Where batch `batch`'s firings go.
pub fn firings_path(batch: &str, clock_us: i64) -> ObjectPath {
    ObjectPath::from(format!(
        "{}/{batch}.parquet",
        partition_dir(FIRINGS, clock_us)
    ))
}

/// Writes one batch's firings in one PUT, stamped `fired_at_us`.
pub async fn write(
    root: &DataRoot,
    firings: &[Firing],
    batch: &str,
    clock_us: i64,
    fired_at_us: i64,
) -> Result<ObjectPath, StorageError> {
    let data = firings_batch(firings, batch, fired_at_us)?;
    write_table(root, FIRINGS, &data, batch, clock_us).await
}

/// Writes a later stage's rows for batch `batch` to
/// `<table>/date=…/hour=…/<batch>.parquet` in one PUT (sorted as given).
pub async fn write_table(
    root: &DataRoot,
    table: &str,
    rows: &RecordBatch,
    batch: &str,
    clock_us: i64,
) -> Result<ObjectPath, StorageError> {
    let path = ObjectPath::from(format!(
        "{}/{batch}.parquet",
        partition_dir(table, clock_us)
    ));
    // No bloom filter: a batch's file is small, and a default-sized filter
    // cost more than the rest of the write.
    let props = tables::writer_properties(&rows.schema(), "customer_id", &[], 65_536);
    let bytes = tables::encode_parquet(rows, props, path.as_ref())?;
    root.store
        .put(&path, Bytes::from(bytes).into())
        .await
        .map_err(|source| StorageError::ObjectStore {
            path: path.to_string(),
            source,
        })?;
    Ok(path)
}

/// The Parquet files of a per-batch table (`firings/`, `sends/`, …),
/// leaving out batch `skip`'s (being redone).
pub async fn batch_files(
    root: &DataRoot,
    table: &str,
    skip: Option<&str>,
) -> Result<Vec<ObjectPath>, StorageError> {
    let skip = skip.map(|s| format!("{s}.parquet"));
    Ok(root
        .list(&ObjectPath::from(table))
        .await?
        .into_iter()
        .map(|m| m.location)
        .filter(|p| {
            let name = p.filename().unwrap_or_default();
            name.ends_with(".parquet") && skip.as_deref() != Some(name)
        })
        .collect())
}

/// The past firings at rule clock `since_us` or later, as (rule, customer,
/// key, clock), skipping the file of batch `skip`. Hour partitions that
/// ended before `since_us` are not read.
pub async fn load(
    root: &DataRoot,
    skip: Option<&str>,
    since_us: i64,
) -> Result<Vec<(String, String, String, i64)>, StorageError> {
    let mut out = Vec::new();
    for path in batch_files(root, FIRINGS, skip).await? {
        if partition_hour_us(&path).is_some_and(|start| start + HOUR_US <= since_us) {
            continue;
        }
        let names = ["rule", "customer_id", "dedupe_key", "clock"];
        for b in read_parquet(root, &path, Some(&names)).await? {
            let table = path.to_string();
            let (r, c, k) = (
                columns::strings(&b, &table, "rule")?,
                columns::strings(&b, &table, "customer_id")?,
                columns::strings(&b, &table, "dedupe_key")?,
            );
            let clock = columns::timestamps_us(&b, &table, "clock")?;
            for i in 0..b.num_rows() {
                if clock.value(i) < since_us {
                    continue;
                }
                out.push((
                    r.value(i).to_string(),
                    c.value(i).to_string(),
                    k.value(i).to_string(),
                    clock.value(i),
                ));
            }
        }
    }
    Ok(out)
}

/// The start (µs) of the `date=YYYY-MM-DD/hour=HH` partition `path` is in;
/// `None` for a path without one, which [`load`] then reads whole (never
/// skips): a file it cannot place may hold firings inside the horizon.
pub(crate) fn partition_hour_us(path: &ObjectPath) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for part in path.parts() {
        let part = part.as_ref();
        if let Some(d) = part.strip_prefix("date=") {
            date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = h.parse::<u32>().ok();
        }
    }
    let start = date?.and_hms_opt(hour?, 0, 0)?.and_utc();
    Some(start.timestamp_micros())
}

/// Batch ids that have a firings file.
pub async fn batches(root: &DataRoot) -> Result<HashSet<String>, StorageError> {
    Ok(root
        .list(&ObjectPath::from(FIRINGS))
        .await?
        .iter()
        .filter_map(|m| {
            m.location
                .filename()
                .and_then(|n| n.strip_suffix(".parquet"))
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(customer: &str, clock_us: i64) -> Firing {
        Firing {
            rule: "r".into(),
            customer_id: customer.into(),
            dedupe_key: "k".into(),
            due_at_us: clock_us,
            clock_us,
            context: "{}".into(),
        }
    }

    #[tokio::test]
    async fn load_reads_only_firings_since_the_horizon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let day = 86_400_000_000i64;
        let (old, new) = (5 * day, 20 * day);
        // A batch's file sits in its batch clock's hour; its rows' clocks
        // are at or before it.
        write(&root, &[firing("a", old)], &batch_id(1), old, old)
            .await
            .expect("write");
        write(
            &root,
            &[firing("b", new - HOUR_US), firing("c", new)],
            &batch_id(2),
            new,
            new,
        )
        .await
        .expect("write");
        let who = |v: Vec<(String, String, String, i64)>| -> Vec<String> {
            let mut w: Vec<String> = v.into_iter().map(|f| f.1).collect();
            w.sort();
            w
        };
        assert_eq!(
            who(load(&root, None, i64::MIN).await.expect("load")),
            ["a", "b", "c"]
        );
        assert_eq!(
            who(load(&root, None, 10 * day).await.expect("load")),
            ["b", "c"]
        );
        assert_eq!(
            who(load(&root, None, new).await.expect("load")),
            ["c"],
            "a row before `since` in a newer file is dropped too"
        );
        assert_eq!(
            who(load(&root, Some(&batch_id(2)), i64::MIN)
                .await
                .expect("load")),
            ["a"],
            "the batch being redone is skipped"
        );
        assert_eq!(
            partition_hour_us(&firings_path(&batch_id(3), new + 1_000)),
            Some(new)
        );
    }
}
