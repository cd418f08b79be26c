//! Table schemas and Parquet encoding.
//!
//! Every table lives at `<table>/date=YYYY-MM-DD/hour=HH/<publish id>.parquet`
//! (Hive partitions on the row's time, UTC). Files are sorted by
//! `customer_id` (identities: `anonymous_id`), carry page and row-group
//! statistics and bloom filters on the id columns so per-customer look-ups
//! prune, and are written whole in one PUT, so no reader ever sees half a file.
//! The column meanings are documented in `docs/tables.md`.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use kairos_core::event::{EventRecord, IdentityLink};

use crate::{Result, StorageError};

/// Table names under the data root.
pub const EVENTS: &str = "events";
/// Latest-known profile snapshots, one row per change.
pub const PROFILES: &str = "profiles";
/// One row per changed trait.
pub const PROFILE_CHANGES: &str = "profile_changes";
/// anonymous id -> user id links.
pub const IDENTITIES: &str = "identities";

/// The version of the table layout; bumped on every (additive) change.
pub const SCHEMA_VERSION: u32 = 1;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// `events/` schema.
pub static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("event_id", false),
        utf8("source", false),
        utf8("call", false),
        utf8("event", false),
        utf8("event_type", false),
        utf8("customer_id", false),
        utf8("user_id", true),
        utf8("anonymous_id", true),
        Field::new("timestamp", ts(), false),
        Field::new("received_at", ts(), false),
        Field::new("sent_at", ts(), true),
        utf8("product_id", true),
        utf8("category", true),
        Field::new("price", DataType::Float64, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("revenue", DataType::Float64, true),
        utf8("currency", true),
        utf8("order_id", true),
        utf8("timezone", true),
        utf8("properties", false),
        utf8("context", false),
    ]))
});

/// `profiles/` schema: the whole merged profile after each change.
pub static PROFILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("customer_id", false),
        Field::new("updated_at", ts(), false),
        utf8("event_id", false),
        utf8("source", false),
        utf8("email", true),
        utf8("phone", true),
        utf8("first_name", true),
        utf8("timezone", true),
        utf8("loyalty_tier", true),
        utf8("preferred_channel", true),
        utf8("traits", false),
    ]))
});

/// Traits promoted to their own `profiles/` columns (also kept in `traits`).
pub const PROMOTED_TRAITS: [&str; 6] = [
    "email",
    "phone",
    "first_name",
    "timezone",
    "loyalty_tier",
    "preferred_channel",
];

/// `profile_changes/` schema.
pub static PROFILE_CHANGES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("customer_id", false),
        utf8("trait", false),
        utf8("old_value", true),
        utf8("new_value", true),
        Field::new("changed_at", ts(), false),
        utf8("event_id", false),
    ]))
});

/// `identities/` schema.
pub static IDENTITIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("anonymous_id", false),
        utf8("user_id", false),
        utf8("call", false),
        Field::new("linked_at", ts(), false),
        utf8("event_id", false),
        utf8("source", false),
    ]))
});

/// A profile snapshot row (see [`PROFILES_SCHEMA`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    /// Customer.
    pub customer_id: String,
    /// When this state became true (the identify's event time), µs.
    pub updated_at_us: i64,
    /// The identify that caused it.
    pub event_id: String,
    /// Its source.
    pub source: String,
    /// The full merged traits.
    pub traits: serde_json::Map<String, serde_json::Value>,
}

/// A `profile_changes/` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// Customer.
    pub customer_id: String,
    /// Trait name.
    pub name: String,
    /// JSON text of the old value; `None` when the trait is new.
    pub old_value: Option<String>,
    /// JSON text of the new value; `None` when the trait was set to null.
    pub new_value: Option<String>,
    /// When, µs.
    pub changed_at_us: i64,
    /// The identify that caused it.
    pub event_id: String,
}

/// A row type of one table: where it goes, how it sorts, how it encodes.
pub trait TableRow: Send + Sync + 'static {
    /// Table folder under the data root.
    const TABLE: &'static str;
    /// Column the files are sorted by.
    const SORT_COLUMN: &'static str;
    /// Columns with bloom filters.
    const BLOOM_COLUMNS: &'static [&'static str];
    /// The table's schema.
    fn schema() -> SchemaRef;
    /// Sort key: the sort column's value, then time.
    fn sort_key(&self) -> (&str, i64);
    /// Builds a batch from rows in the given order.
    fn batch(rows: &[&Self]) -> Result<RecordBatch>;
}

impl TableRow for EventRecord {
    const TABLE: &'static str = EVENTS;
    const SORT_COLUMN: &'static str = "customer_id";
    const BLOOM_COLUMNS: &'static [&'static str] = &["customer_id", "event_id"];
    fn schema() -> SchemaRef {
        EVENTS_SCHEMA.clone()
    }
    fn sort_key(&self) -> (&str, i64) {
        (&self.customer_id, self.timestamp_us)
    }
    fn batch(rows: &[&Self]) -> Result<RecordBatch> {
        events_batch(rows)
    }
}

impl TableRow for ProfileRow {
    const TABLE: &'static str = PROFILES;
    const SORT_COLUMN: &'static str = "customer_id";
    const BLOOM_COLUMNS: &'static [&'static str] = &["customer_id"];
    fn schema() -> SchemaRef {
        PROFILES_SCHEMA.clone()
    }
    fn sort_key(&self) -> (&str, i64) {
        (&self.customer_id, self.updated_at_us)
    }
    fn batch(rows: &[&Self]) -> Result<RecordBatch> {
        profiles_batch(rows)
    }
}

impl TableRow for ChangeRow {
    const TABLE: &'static str = PROFILE_CHANGES;
    const SORT_COLUMN: &'static str = "customer_id";
    const BLOOM_COLUMNS: &'static [&'static str] = &["customer_id"];
    fn schema() -> SchemaRef {
        PROFILE_CHANGES_SCHEMA.clone()
    }
    fn sort_key(&self) -> (&str, i64) {
        (&self.customer_id, self.changed_at_us)
    }
    fn batch(rows: &[&Self]) -> Result<RecordBatch> {
        changes_batch(rows)
    }
}

impl TableRow for IdentityLink {
    const TABLE: &'static str = IDENTITIES;
    const SORT_COLUMN: &'static str = "anonymous_id";
    const BLOOM_COLUMNS: &'static [&'static str] = &["anonymous_id", "user_id"];
    fn schema() -> SchemaRef {
        IDENTITIES_SCHEMA.clone()
    }
    fn sort_key(&self) -> (&str, i64) {
        (&self.anonymous_id, self.timestamp_us)
    }
    fn batch(rows: &[&Self]) -> Result<RecordBatch> {
        identities_batch(rows)
    }
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn times(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish().with_timezone("UTC"))
}

fn floats(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    let mut b = Float64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn ints(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// Builds an `events/` batch; rows are written in the order given.
pub fn events_batch(rows: &[&EventRecord]) -> Result<RecordBatch> {
    let r = rows;
    let cols: Vec<ArrayRef> = vec![
        strings(r.iter().map(|e| Some(e.event_id.as_str()))),
        strings(r.iter().map(|e| Some(e.source.as_str()))),
        strings(r.iter().map(|e| Some(e.call.as_str()))),
        strings(r.iter().map(|e| Some(e.event.as_str()))),
        strings(r.iter().map(|e| Some(e.event_type.as_str()))),
        strings(r.iter().map(|e| Some(e.customer_id.as_str()))),
        strings(r.iter().map(|e| e.user_id.as_deref())),
        strings(r.iter().map(|e| e.anonymous_id.as_deref())),
        times(r.iter().map(|e| Some(e.timestamp_us))),
        times(r.iter().map(|e| Some(e.received_at_us))),
        times(r.iter().map(|e| e.sent_at_us)),
        strings(r.iter().map(|e| e.commerce.product_id.as_deref())),
        strings(r.iter().map(|e| e.commerce.category.as_deref())),
        floats(r.iter().map(|e| e.commerce.price)),
        ints(r.iter().map(|e| e.commerce.quantity)),
        floats(r.iter().map(|e| e.commerce.revenue)),
        strings(r.iter().map(|e| e.commerce.currency.as_deref())),
        strings(r.iter().map(|e| e.commerce.order_id.as_deref())),
        strings(r.iter().map(|e| e.timezone.as_deref())),
        strings(r.iter().map(|e| Some(e.properties.as_str()))),
        strings(r.iter().map(|e| Some(e.context.as_str()))),
    ];
    Ok(RecordBatch::try_new(EVENTS_SCHEMA.clone(), cols)?)
}

fn trait_str<'a>(p: &'a ProfileRow, name: &str) -> Option<&'a str> {
    p.traits.get(name).and_then(|v| v.as_str())
}

/// Builds a `profiles/` batch.
pub fn profiles_batch(rows: &[&ProfileRow]) -> Result<RecordBatch> {
    let r = rows;
    let mut cols: Vec<ArrayRef> = vec![
        strings(r.iter().map(|p| Some(p.customer_id.as_str()))),
        times(r.iter().map(|p| Some(p.updated_at_us))),
        strings(r.iter().map(|p| Some(p.event_id.as_str()))),
        strings(r.iter().map(|p| Some(p.source.as_str()))),
    ];
    for name in PROMOTED_TRAITS {
        cols.push(strings(r.iter().map(|p| trait_str(p, name))));
    }
    let traits: Vec<String> = r
        .iter()
        .map(|p| serde_json::Value::Object(p.traits.clone()).to_string())
        .collect();
    cols.push(strings(traits.iter().map(|t| Some(t.as_str()))));
    Ok(RecordBatch::try_new(PROFILES_SCHEMA.clone(), cols)?)
}

/// Builds a `profile_changes/` batch.
pub fn changes_batch(rows: &[&ChangeRow]) -> Result<RecordBatch> {
    let r = rows;
    let cols: Vec<ArrayRef> = vec![
        strings(r.iter().map(|c| Some(c.customer_id.as_str()))),
        strings(r.iter().map(|c| Some(c.name.as_str()))),
        strings(r.iter().map(|c| c.old_value.as_deref())),
        strings(r.iter().map(|c| c.new_value.as_deref())),
        times(r.iter().map(|c| Some(c.changed_at_us))),
        strings(r.iter().map(|c| Some(c.event_id.as_str()))),
    ];
    Ok(RecordBatch::try_new(PROFILE_CHANGES_SCHEMA.clone(), cols)?)
}

/// Builds an `identities/` batch.
pub fn identities_batch(rows: &[&IdentityLink]) -> Result<RecordBatch> {
    let r = rows;
    let cols: Vec<ArrayRef> = vec![
        strings(r.iter().map(|i| Some(i.anonymous_id.as_str()))),
        strings(r.iter().map(|i| Some(i.user_id.as_str()))),
        strings(r.iter().map(|i| Some(i.call.as_str()))),
        times(r.iter().map(|i| Some(i.timestamp_us))),
        strings(r.iter().map(|i| Some(i.event_id.as_str()))),
        strings(r.iter().map(|i| Some(i.source.as_str()))),
    ];
    Ok(RecordBatch::try_new(IDENTITIES_SCHEMA.clone(), cols)?)
}

/// Columns written without dictionary encoding.
const NO_DICTIONARY: [&str; 5] = ["event_id", "properties", "context", "traits", "order_id"];

/// Writer settings: zstd, page statistics, bloom filters on the id columns,
/// and the sort order recorded so engines can use it.
pub fn writer_properties(
    schema: &Schema,
    sort_column: &str,
    bloom_columns: &[&str],
    row_group_rows: usize,
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!(
            "kairos {} (schema v{SCHEMA_VERSION})",
            env!("CARGO_PKG_VERSION")
        ));
    if let Ok(idx) = schema.index_of(sort_column) {
        b = b.set_sorting_columns(Some(vec![SortingColumn {
            column_idx: idx as i32,
            descending: false,
            nulls_first: false,
        }]));
    }
    // Unique or free-text columns never fit a dictionary; trying costs a
    // third of the encode time before the writer falls back.
    for col in NO_DICTIONARY {
        if schema.index_of(col).is_ok() {
            b = b.set_column_dictionary_enabled(ColumnPath::from(col), false);
        }
    }
    // A row group holds no more distinct values than rows; sizing the
    // filter for parquet's default (a million) allocated and zeroed
    // 1.2 MB per column and file before folding it down again.
    for col in bloom_columns {
        let path = ColumnPath::from(*col);
        b = b
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(path, row_group_rows.max(1) as u64);
    }
    b.build()
}

/// Files of fewer rows are written with Snappy instead of zstd: zstd
/// creates a compression context per column, which on a micro-batch's
/// few rows cost more than everything else in the file (10% of a replay's
/// CPU went to creating them). Such files are small whatever the codec,
/// and compaction rewrites an hour's files as one.
pub const SMALL_FILE_ROWS: usize = 4096;

/// `props` for a file of `rows` rows under [`SMALL_FILE_ROWS`]: Snappy,
/// and bloom filters sized for those rows.
fn small_file(props: WriterProperties, schema: &Schema, rows: usize) -> WriterProperties {
    let bloom: Vec<ColumnPath> = schema
        .fields()
        .iter()
        .map(|f| ColumnPath::from(f.name().as_str()))
        .filter(|path| props.bloom_filter_properties(path).is_some())
        .collect();
    let mut b = props.into_builder().set_compression(Compression::SNAPPY);
    for path in bloom {
        b = b.set_column_bloom_filter_max_ndv(path, rows.max(1) as u64);
    }
    b.build()
}

/// Encodes one batch as a complete Parquet file in memory (zstd; Snappy
/// below [`SMALL_FILE_ROWS`]).
pub fn encode_parquet(
    batch: &RecordBatch,
    props: WriterProperties,
    path_for_errors: &str,
) -> Result<Vec<u8>> {
    let props = if batch.num_rows() < SMALL_FILE_ROWS {
        small_file(props, &batch.schema(), batch.num_rows())
    } else {
        props
    };
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 4096);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(StorageError::parquet(path_for_errors))?;
    w.write(batch)
        .map_err(StorageError::parquet(path_for_errors))?;
    w.close().map_err(StorageError::parquet(path_for_errors))?;
    Ok(buf)
}

/// Reads a published file, only `columns` when given (all when `None`).
pub async fn read_parquet(
    root: &crate::DataRoot,
    location: &object_store::path::Path,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = location.to_string();
    let bytes = root
        .read(location)
        .await?
        .ok_or_else(|| StorageError::Corrupt {
            path: path.clone(),
            reason: "listed but gone; another process may be compacting, retry".into(),
        })?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(StorageError::parquet(&path))?;
    if let Some(columns) = columns {
        let schema = builder.parquet_schema();
        let leaves = columns
            .iter()
            .filter_map(|c| schema.columns().iter().position(|d| d.name() == *c));
        let mask = ProjectionMask::leaves(schema, leaves);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(StorageError::parquet(&path))?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// `<table>/date=YYYY-MM-DD/hour=HH/` for an instant.
pub fn partition_dir(table: &str, us: i64) -> String {
    let (date, hour) = kairos_core::time::partition_of(us);
    format!("{table}/date={date}/hour={hour:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn codec_of(rows: usize) -> Compression {
        let schema = Arc::new(Schema::new(vec![utf8("customer_id", false)]));
        let ids: Vec<String> = (0..rows).map(|i| format!("c{i}")).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids))])
            .expect("batch");
        let props = writer_properties(&schema, "customer_id", &[], 65_536);
        let bytes = encode_parquet(&batch, props, "t").expect("encodes");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("reads");
        reader.metadata().row_group(0).column(0).compression()
    }

    #[test]
    fn small_files_use_snappy_and_the_others_zstd() {
        assert_eq!(codec_of(3), Compression::SNAPPY);
        assert_eq!(codec_of(SMALL_FILE_ROWS - 1), Compression::SNAPPY);
        assert!(matches!(codec_of(SMALL_FILE_ROWS), Compression::ZSTD(_)));
    }

    #[test]
    fn bloom_filters_are_sized_for_the_rows_and_find_every_id() {
        use parquet::file::properties::ReaderProperties;
        use parquet::file::serialized_reader::ReadOptionsBuilder;
        let schema = Arc::new(Schema::new(vec![utf8("customer_id", false)]));
        let props = writer_properties(&schema, "customer_id", &["customer_id"], 65_536);
        let path = ColumnPath::from("customer_id");
        assert_eq!(
            props.bloom_filter_properties(&path).map(|b| b.ndv()),
            Some(65_536)
        );
        let small = small_file(props.clone(), &schema, 3);
        assert_eq!(
            small.bloom_filter_properties(&path).map(|b| b.ndv()),
            Some(3)
        );

        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["a", "b", "c"]))],
        )
        .expect("batch");
        let bytes = encode_parquet(&batch, props, "t").expect("encodes");
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(bytes::Bytes::from(bytes), options)
            .expect("reads");
        let row_group = reader.get_row_group(0).expect("row group");
        let filter = row_group
            .get_column_bloom_filter(0)
            .expect("a bloom filter");
        for id in ["a", "b", "c"] {
            assert!(filter.check(&id), "{id} missing from the bloom filter");
        }
    }
}
