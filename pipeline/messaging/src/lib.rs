//! Messaging: templates rendered from the profile, computed traits and the
//! firing's columns; channel adapters (the outbox first); delivery with
//! retries, rate limits and an intent log; `deliveries/`.

pub mod channel;
pub mod delivery;
pub mod limits;
pub mod outbox;
pub mod template;

use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use serde_json::{Map, Value};

pub use channel::{Adapter, Failure, Outgoing, Receipt};
pub use delivery::{Dispatcher, Messaging, Settings};
pub use template::Templates;

/// A customer's computed traits (the rules' `customers` table row) as
/// JSON, for templates: timestamps as RFC 3339.
pub fn computed_traits(
    state: &kairos_rules::state::State,
    customer_id: &str,
) -> Map<String, Value> {
    let ids = std::iter::once(customer_id.to_string()).collect();
    let batch = state.customers_table(Some(&ids));
    let mut out = Map::new();
    if batch.num_rows() == 0 {
        return out;
    }
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let any = col.as_any();
        let v = if col.is_null(0) {
            Value::Null
        } else if let Some(a) = any.downcast_ref::<StringArray>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<Int64Array>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<Float64Array>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
            chrono::DateTime::<chrono::Utc>::from_timestamp_micros(a.value(0))
                .map_or(Value::Null, |t| Value::from(t.to_rfc3339()))
        } else {
            Value::Null
        };
        if field.name() != "customer_id" {
            out.insert(field.name().clone(), v);
        }
    }
    out
}

/// Names of the computed traits templates may use as `customer.*`.
pub fn computed_trait_names() -> std::collections::BTreeSet<String> {
    kairos_rules::state::CUSTOMERS_SCHEMA
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != "customer_id")
        .collect()
}
