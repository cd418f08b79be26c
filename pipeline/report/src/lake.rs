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

/// A DataFusion session over one data root's tables. Cheap to open: open
/// one per report so newly published files are seen.
pub struct Lake {
    /// The session, with `assignments`, `sends`, `events` and `identities`
    /// registered.
    pub ctx: SessionContext,
}

impl Lake {
    /// Registers the root's tables. A table with no files yet is empty.
    pub fn open(root: &DataRoot) -> datafusion::error::Result<Lake> {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(
                    std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
                )
                .with_information_schema(false),
        );
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        ctx.register_object_store(url.as_ref(), root.store.clone());
        for (name, schema) in tables() {
            let path = ListingTableUrl::parse(format!("{STORE_URL}{name}/"))?;
            let options =
                ListingOptions::new(Arc::new(ParquetFormat::new())).with_file_extension(".parquet");
            let config = ListingTableConfig::new(path)
                .with_listing_options(options)
                .with_schema(schema);
            ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
        }
        Ok(Lake { ctx })
    }
}
