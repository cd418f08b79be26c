//! The lake's tables as DataFusion sees them: each table's folder under
//! the data root, every `*.parquet` below it (the tables are glob-safe, so
//! that is every published row exactly once), with the columns reports
//! read. Files may carry more columns (the schema grows additively); the
//! listed ones are projected.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};

use kairos_storage::DataRoot;

pub use id_hash::ID_HASH;

/// Where DataFusion finds the data root's store.
const STORE_URL: &str = "kairos://lake/";

fn ts(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )
}

fn s(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// The tables a report reads, with the columns it needs.
pub fn tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        (
            "assignments",
            Arc::new(Schema::new(vec![
                s("experiment"),
                s("variant"),
                s("customer_id"),
                s("arm"),
                ts("assigned_at"),
            ])),
        ),
        (
            "sends",
            Arc::new(Schema::new(vec![
                s("rule"),
                s("customer_id"),
                s("arm"),
                s("variant"),
                s("decision"),
                ts("decided_at"),
            ])),
        ),
        (
            "events",
            Arc::new(Schema::new(vec![
                s("customer_id"),
                s("event_type"),
                ts("timestamp"),
                Field::new("revenue", DataType::Float64, true),
            ])),
        ),
        (
            "identities",
            Arc::new(Schema::new(vec![
                s("anonymous_id"),
                s("user_id"),
                ts("linked_at"),
            ])),
        ),
    ]
}

/// The report's columns of one of [`tables`].
pub(crate) fn table_schema(name: &str) -> Option<SchemaRef> {
    tables()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s)
}

/// A DataFusion session over one data root's tables. Cheap to open: open
/// one per report so newly published files are seen.
pub struct Lake {
    /// The session, with `assignments`, `sends`, `events` and `identities`
    /// registered.
    pub ctx: SessionContext,
    /// The data root the tables are read from.
    pub root: DataRoot,
}

impl Lake {
    /// Registers the root's tables with the columns reports read. A table
    /// with no files yet is empty.
    pub fn open(root: &DataRoot) -> datafusion::error::Result<Lake> {
        Lake::with_tables(root, &tables(), false)
    }

    /// A session for ad-hoc queries (`kairos sql`): `tables` with their
    /// whole schemas, plus the Hive directory names `date` (`YYYY-MM-DD`)
    /// and `hour` (`HH`) as string columns, so `WHERE date = '2026-11-20'`
    /// reads only that day's files, and `SHOW TABLES` / `DESCRIBE`.
    pub fn for_queries(
        root: &DataRoot,
        tables: &[(&str, SchemaRef)],
    ) -> datafusion::error::Result<Lake> {
        Lake::with_tables(root, tables, true)
    }

    fn with_tables(
        root: &DataRoot,
        tables: &[(&str, SchemaRef)],
        analyst: bool,
    ) -> datafusion::error::Result<Lake> {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(
                    std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
                )
                .with_information_schema(analyst)
                // Footers are read when a file is scanned anyway; reading
                // every file's statistics while planning cost 0.4 s per
                // query over the 10M-recipient lake (BENCHMARKS.md).
                .with_collect_statistics(false)
                // Late materialisation: `event_type = 'purchase'` is
                // decoded first and the other columns only for its rows.
                .set_bool("datafusion.execution.parquet.pushdown_filters", true),
        );
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            id_hash::IdHash::default(),
        ));
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        ctx.register_object_store(url.as_ref(), root.store.clone());
        for (name, schema) in tables {
            let path = ListingTableUrl::parse(format!("{STORE_URL}{name}/"))?;
            let mut options =
                ListingOptions::new(Arc::new(ParquetFormat::new())).with_file_extension(".parquet");
            if analyst {
                options = options.with_table_partition_cols(vec![
                    ("date".to_string(), DataType::Utf8),
                    ("hour".to_string(), DataType::Utf8),
                ]);
            }
            let config = ListingTableConfig::new(path)
                .with_listing_options(options)
                .with_schema(schema.clone());
            ctx.register_table(*name, Arc::new(ListingTable::try_new(config)?))?;
        }
        Ok(Lake {
            ctx,
            root: root.clone(),
        })
    }
}

/// A table over the Parquet files at `paths` (relative to the root: a
/// folder ending in `/` means every `*.parquet` below it) with `schema`;
/// empty for no paths.
pub(crate) fn parquet_table(
    paths: &[String],
    schema: SchemaRef,
) -> datafusion::error::Result<Arc<dyn datafusion::catalog::TableProvider>> {
    if paths.is_empty() {
        return Ok(Arc::new(datafusion::datasource::MemTable::try_new(
            schema,
            vec![vec![]],
        )?));
    }
    let urls = paths
        .iter()
        .map(|p| ListingTableUrl::parse(format!("{STORE_URL}{p}")))
        .collect::<Result<Vec<_>, _>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::new())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// `kairos_id_hash(id, seed)`: a 64-bit hash of a string id. Joining
/// millions of recipients to their events on two of these (seeds 1 and 2:
/// 128 bits, so two ids collide with probability 2⁻¹²⁸) instead of on the
/// id strings keeps the join's hash table and repartitioning on integers;
/// BENCHMARKS.md has the numbers.
mod id_hash {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Int64Array, StringArrayType};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::common::{Result, ScalarValue, exec_err};
    use datafusion::logical_expr::{
        ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
    };

    /// The function's SQL name.
    pub const ID_HASH: &str = "kairos_id_hash";

    #[derive(Debug, PartialEq, Eq, Hash)]
    pub struct IdHash {
        signature: Signature,
    }

    impl Default for IdHash {
        fn default() -> Self {
            let strings = [DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8];
            IdHash {
                signature: Signature::one_of(
                    strings
                        .into_iter()
                        .map(|s| TypeSignature::Exact(vec![s, DataType::Int64]))
                        .collect(),
                    Volatility::Immutable,
                ),
            }
        }
    }

    fn hash_all<'a>(ids: impl StringArrayType<'a>, seed: u64) -> Int64Array {
        ids.iter()
            .map(|id| id.map(|s| xxhash_rust::xxh3::xxh3_64_with_seed(s.as_bytes(), seed) as i64))
            .collect()
    }

    impl ScalarUDFImpl for IdHash {
        fn name(&self) -> &str {
            ID_HASH
        }

        fn signature(&self) -> &Signature {
            &self.signature
        }

        fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
            Ok(DataType::Int64)
        }

        fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
            let [id, seed] = args.args.as_slice() else {
                return exec_err!("{ID_HASH} takes (id, seed)");
            };
            let ColumnarValue::Scalar(ScalarValue::Int64(Some(seed))) = seed else {
                return exec_err!("{ID_HASH}: the seed must be an integer literal");
            };
            let seed = *seed as u64;
            let ids = id.to_array(args.number_rows)?;
            let out = match ids.data_type() {
                DataType::Utf8 => hash_all(ids.as_string::<i32>(), seed),
                DataType::LargeUtf8 => hash_all(ids.as_string::<i64>(), seed),
                DataType::Utf8View => hash_all(ids.as_string_view(), seed),
                other => return exec_err!("{ID_HASH}: ids must be strings, not {other}"),
            };
            Ok(match id {
                ColumnarValue::Scalar(_) => {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
                }
                ColumnarValue::Array(_) => ColumnarValue::Array(Arc::new(out)),
            })
        }
    }
}
