//! Checked access to the columns of a batch read back from a table: a
//! missing column or one of another type is an error naming the table and
//! the column, never an empty result (a file written by another version,
//! or by hand, must not read as "no rows").

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

use crate::{Result, StorageError};

fn typed<'a, T: Array + 'static>(
    b: &'a RecordBatch,
    table: &str,
    name: &str,
    expected: &str,
) -> Result<&'a T> {
    let schema = |reason: String| StorageError::Schema {
        table: table.to_string(),
        reason,
    };
    let col = b
        .column_by_name(name)
        .ok_or_else(|| schema(format!("no `{name}` column")))?;
    col.as_any().downcast_ref::<T>().ok_or_else(|| {
        schema(format!(
            "`{name}` is {}, expected {expected}",
            col.data_type()
        ))
    })
}

/// Column `name` of `b` (rows of `table`) as UTF-8 strings.
pub fn strings<'a>(b: &'a RecordBatch, table: &str, name: &str) -> Result<&'a StringArray> {
    typed(b, table, name, "Utf8")
}

/// Column `name` of `b` (rows of `table`) as 64-bit integers.
pub fn int64s<'a>(b: &'a RecordBatch, table: &str, name: &str) -> Result<&'a Int64Array> {
    typed(b, table, name, "Int64")
}

/// Column `name` of `b` (rows of `table`) as µs timestamps.
pub fn timestamps_us<'a>(
    b: &'a RecordBatch,
    table: &str,
    name: &str,
) -> Result<&'a TimestampMicrosecondArray> {
    typed(b, table, name, "Timestamp(µs, UTC)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_missing_or_mistyped_column_is_an_error_naming_it() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let b =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).expect("batch");
        assert_eq!(int64s(&b, "t", "n").expect("typed").value(0), 1);
        let missing = strings(&b, "t", "id").expect_err("missing").to_string();
        assert!(
            missing.contains("`t`") && missing.contains("no `id` column"),
            "{missing}"
        );
        let mistyped = strings(&b, "t", "n").expect_err("mistyped").to_string();
        assert!(
            mistyped.contains("`n` is Int64, expected Utf8"),
            "{mistyped}"
        );
    }
}
