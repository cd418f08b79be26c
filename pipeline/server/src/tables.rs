//! Every table under a data root, in one list: what `kairos sql` and the
//! reports register, what compaction merges and erasure rewrites. A new
//! table is added here once.

use arrow::datatypes::SchemaRef;

use kairos_storage::compact::CompactTable;
use kairos_storage::privacy::EraseTable;
use kairos_storage::tables::{self as t, TableRow};

/// Who writes a table, which decides when its hours are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The publisher, from staging (`events/`, `profiles/`, …).
    Publisher,
    /// The rules loop, one file per batch (`firings/`, `assignments/`, `sends/`).
    Batch,
    /// Delivery, one file per batch, rewritten while sends are in flight.
    Delivery,
}

/// One table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Folder under the data root, and its SQL name.
    pub name: &'static str,
    /// Its schema.
    pub schema: SchemaRef,
    /// How its files are sorted.
    pub sort_column: &'static str,
    /// Columns with bloom filters.
    pub bloom_columns: &'static [&'static str],
    /// A row names a person through any of these (erasure).
    pub id_columns: &'static [&'static str],
    /// Who writes it.
    pub writer: Writer,
}

impl Table {
    fn stored<R: TableRow>(id_columns: &'static [&'static str]) -> Table {
        Table {
            name: R::TABLE,
            schema: R::schema(),
            sort_column: R::SORT_COLUMN,
            bloom_columns: R::BLOOM_COLUMNS,
            id_columns,
            writer: Writer::Publisher,
        }
    }

    fn batch(name: &'static str, schema: SchemaRef, writer: Writer) -> Table {
        Table {
            name,
            schema,
            sort_column: "customer_id",
            bloom_columns: &[],
            id_columns: &["customer_id"],
            writer,
        }
    }

    /// The table for erasure rewrites.
    pub fn erase(&self) -> EraseTable {
        EraseTable {
            name: self.name,
            id_columns: self.id_columns,
            sort_column: self.sort_column,
            bloom_columns: self.bloom_columns,
        }
    }

    /// The table for compaction of the hours ending by `until_us`.
    pub fn compact(&self, until_us: i64) -> CompactTable {
        CompactTable {
            name: self.name,
            schema: self.schema.clone(),
            sort_column: self.sort_column,
            bloom_columns: self.bloom_columns,
            until_us,
        }
    }
}

/// Every table, in the order `docs/tables.md` lists them.
pub fn all() -> Vec<Table> {
    vec![
        Table::stored::<kairos_core::event::EventRecord>(&[
            "customer_id",
            "user_id",
            "anonymous_id",
        ]),
        Table::stored::<t::ProfileRow>(&["customer_id"]),
        Table::stored::<t::ChangeRow>(&["customer_id"]),
        Table::stored::<kairos_core::event::IdentityLink>(&["anonymous_id", "user_id"]),
        Table::batch(
            kairos_rules::firings::FIRINGS,
            kairos_rules::firings::FIRINGS_SCHEMA.clone(),
            Writer::Batch,
        ),
        Table::batch(
            kairos_policy::tables::ASSIGNMENTS,
            kairos_policy::tables::ASSIGNMENTS_SCHEMA.clone(),
            Writer::Batch,
        ),
        Table::batch(
            kairos_policy::tables::SENDS,
            kairos_policy::tables::SENDS_SCHEMA.clone(),
            Writer::Batch,
        ),
        Table::batch(
            kairos_messaging::delivery::DELIVERIES,
            kairos_messaging::delivery::DELIVERIES_SCHEMA.clone(),
            Writer::Delivery,
        ),
    ]
}

/// Every table's name and schema, for registering them in SQL.
pub fn schemas() -> Vec<(&'static str, SchemaRef)> {
    all().into_iter().map(|t| (t.name, t.schema)).collect()
}
