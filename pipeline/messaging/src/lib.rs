//! Messaging: templates rendered from the profile, computed traits and the
//! firing's columns; channel adapters (the outbox first); delivery with
//! retries, rate limits and an intent log; `deliveries/`.

pub mod channel;
pub mod delivery;
pub mod http;
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

/// Checks the templates every rule sends: each exists for its channel and
/// uses only the rule's output columns, `profile.*`, `customer.*` (computed
/// traits) and `message.*`. A `preferred`-channel message needs a template
/// for every channel it may take (email, SMS, WhatsApp, push).
pub async fn check_rules(
    rules: &[kairos_rules::Rule],
    templates: &Templates,
) -> Vec<template::TemplateError> {
    use kairos_rules::rule::Channel as RuleChannel;
    let computed = computed_trait_names();
    let Ok(ctx) = kairos_rules::check::planning_session() else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for rule in rules {
        let Ok(columns) = kairos_rules::check::plan(&ctx, rule).await else {
            continue; // reported by the rules check
        };
        let columns: std::collections::BTreeSet<String> = columns.into_iter().collect();
        let channels = |c: RuleChannel| -> Vec<(&'static str, bool)> {
            match c {
                RuleChannel::Email => vec![("email", true)],
                RuleChannel::Sms => vec![("sms", true)],
                RuleChannel::Whatsapp => vec![("whatsapp", true)],
                RuleChannel::Push => vec![("push", true)],
                RuleChannel::Webhook => vec![("webhook", true)],
                RuleChannel::Preferred => vec![
                    ("email", true),
                    ("sms", true),
                    ("whatsapp", true),
                    ("push", true),
                ],
            }
        };
        let mut names: Vec<(String, RuleChannel)> = vec![(rule.template.clone(), rule.channel)];
        names.extend(
            rule.variants
                .iter()
                .filter_map(|v| Some((v.template.clone()?, rule.channel))),
        );
        names.extend(rule.steps.iter().map(|s| (s.template.clone(), s.channel)));
        for (name, channel) in names {
            for (ch, required) in channels(channel) {
                if required || templates.has(&name, ch) {
                    errors.extend(templates.check(&name, ch, &columns, &computed));
                }
            }
        }
    }
    errors
}
