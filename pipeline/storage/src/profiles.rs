//! Profile state: identify calls merged into the latest profile per customer,
//! with every trait change kept as history.
//!
//! Traits merge like Segment's identify: keys sent replace the stored ones,
//! keys not sent are kept. Nested objects merge key by key, so
//! `{"consent":{"sms":false}}` changes only `consent.sms`; changes are
//! reported with dotted names. A late identify (older than the profile's
//! current state) only fills traits the profile does not have yet, so it
//! never overwrites newer values.

use std::collections::HashMap;

use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
use object_store::path::Path as ObjectPath;
use serde_json::{Map, Value};

use kairos_core::event::ProfileUpdate;

use crate::root::DataRoot;
use crate::tables::{ChangeRow, PROFILES, ProfileRow};
use crate::{Result, StorageError};

/// The latest profile of every customer.
#[derive(Default)]
pub struct ProfileState {
    latest: HashMap<String, (i64, Map<String, Value>)>,
}

impl ProfileState {
    /// Loads the latest row per customer from `profiles/`, skipping files
    /// whose name starts with one of `skip_prefixes` (publishes being redone).
    pub async fn load(root: &DataRoot, skip_prefixes: &[String]) -> Result<ProfileState> {
        let dir = ObjectPath::from(PROFILES);
        let metas = root.list(&dir).await?;
        let mut state = ProfileState::default();
        for meta in metas {
            let name = meta.location.filename().unwrap_or_default();
            if !name.ends_with(".parquet")
                || skip_prefixes.iter().any(|p| name.starts_with(p.as_str()))
            {
                continue;
            }
            let path = meta.location.to_string();
            let batches = crate::tables::read_parquet(root, &meta.location, None).await?;
            for b in batches {
                let corrupt = || StorageError::Corrupt {
                    path: path.clone(),
                    reason: "unexpected profiles schema".into(),
                };
                let ids = b
                    .column_by_name("customer_id")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(corrupt)?;
                let at = b
                    .column_by_name("updated_at")
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                    .ok_or_else(corrupt)?;
                let traits = b
                    .column_by_name("traits")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(corrupt)?;
                for i in 0..b.num_rows() {
                    let ts = at.value(i);
                    let newer = state.latest.get(ids.value(i)).is_none_or(|(t, _)| ts >= *t);
                    if newer && traits.is_valid(i) {
                        // A profile read as `{}` would lose its consent
                        // opt-outs and addresses.
                        let map = serde_json::from_str(traits.value(i)).map_err(|e| {
                            StorageError::Corrupt {
                                path: path.clone(),
                                reason: format!(
                                    "the traits of {} are not a JSON object: {e}",
                                    ids.value(i)
                                ),
                            }
                        })?;
                        state.latest.insert(ids.value(i).to_string(), (ts, map));
                    }
                }
            }
        }
        Ok(state)
    }

    /// Customers with a profile.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// True when no customer has a profile.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// The current traits of a customer.
    pub fn get(&self, customer_id: &str) -> Option<&Map<String, Value>> {
        self.latest.get(customer_id).map(|(_, m)| m)
    }

    /// The current traits of a customer and when they last changed (µs).
    pub fn get_with_time(&self, customer_id: &str) -> Option<(i64, &Map<String, Value>)> {
        self.latest.get(customer_id).map(|(t, m)| (*t, m))
    }

    /// Every customer with a profile.
    pub fn customers(&self) -> impl Iterator<Item = &str> {
        self.latest.keys().map(String::as_str)
    }

    /// Applies one identify; returns the new snapshot and the changes, or
    /// `None` when nothing changed.
    pub fn apply(&mut self, u: &ProfileUpdate) -> Option<(ProfileRow, Vec<ChangeRow>)> {
        let (updated_at, traits) = self
            .latest
            .entry(u.customer_id.clone())
            .or_insert_with(|| (i64::MIN, Map::new()));
        let late = u.timestamp_us < *updated_at;
        let first = *updated_at == i64::MIN;
        let mut changes = Vec::new();
        // A client key's protected traits set up a new customer only.
        let first_only = u.first_only.iter().filter(|_| first);
        for (k, v) in u.traits.iter().chain(first_only) {
            merge(traits, k, v, late, k, &mut |name, old, new| {
                changes.push(ChangeRow {
                    customer_id: u.customer_id.clone(),
                    name,
                    old_value: old.map(|o| o.to_string()),
                    new_value: (!new.is_null()).then(|| new.to_string()),
                    changed_at_us: u.timestamp_us,
                    event_id: u.event_id.clone(),
                })
            });
        }
        if changes.is_empty() && !first {
            return None;
        }
        *updated_at = (*updated_at).max(u.timestamp_us);
        let row = ProfileRow {
            customer_id: u.customer_id.clone(),
            updated_at_us: *updated_at,
            event_id: u.event_id.clone(),
            source: u.source.clone(),
            traits: traits.clone(),
        };
        Some((row, changes))
    }
}

fn merge(
    into: &mut Map<String, Value>,
    key: &str,
    value: &Value,
    late: bool,
    path: &str,
    on_change: &mut dyn FnMut(String, Option<&Value>, &Value),
) {
    match (into.get_mut(key), value) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            for (k, v) in new {
                merge(old, k, v, late, &format!("{path}.{k}"), on_change);
            }
        }
        (Some(old), _) if old == value || late => {}
        (old, _) => {
            on_change(path.to_string(), old.as_deref(), value);
            into.insert(key.to_string(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(ts: i64, traits: Value) -> ProfileUpdate {
        ProfileUpdate {
            event_id: format!("m{ts}"),
            source: "s".into(),
            customer_id: "c1".into(),
            timestamp_us: ts,
            received_at_us: ts,
            traits: serde_json::from_value(traits).expect("object"),
            first_only: Default::default(),
        }
    }

    #[test]
    fn first_identify_records_every_trait_as_new() {
        let mut s = ProfileState::default();
        let (row, changes) = s
            .apply(&update(
                1,
                json!({"email":"a@example.com","loyalty_tier":"silver"}),
            ))
            .expect("changed");
        assert_eq!(row.traits["email"], "a@example.com");
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.old_value.is_none()));
    }

    #[test]
    fn tier_upgrade_is_one_change_with_old_and_new() {
        let mut s = ProfileState::default();
        s.apply(&update(
            1,
            json!({"email":"a@example.com","loyalty_tier":"silver"}),
        ));
        let (row, changes) = s
            .apply(&update(2, json!({"loyalty_tier":"gold"})))
            .expect("changed");
        assert_eq!(
            row.traits["email"], "a@example.com",
            "unsent traits are kept"
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "loyalty_tier");
        assert_eq!(changes[0].old_value.as_deref(), Some("\"silver\""));
        assert_eq!(changes[0].new_value.as_deref(), Some("\"gold\""));
    }

    #[test]
    fn same_values_change_nothing() {
        let mut s = ProfileState::default();
        s.apply(&update(1, json!({"loyalty_tier":"silver"})));
        assert!(
            s.apply(&update(2, json!({"loyalty_tier":"silver"})))
                .is_none()
        );
    }

    #[test]
    fn nested_objects_merge_key_by_key() {
        let mut s = ProfileState::default();
        s.apply(&update(1, json!({"consent":{"email":true,"sms":true}})));
        let (row, changes) = s
            .apply(&update(2, json!({"consent":{"sms":false}})))
            .expect("changed");
        assert_eq!(row.traits["consent"], json!({"email":true,"sms":false}));
        assert_eq!(changes[0].name, "consent.sms");
    }

    #[test]
    fn late_identify_never_overwrites_newer_values() {
        let mut s = ProfileState::default();
        s.apply(&update(10, json!({"loyalty_tier":"gold"})));
        let (row, changes) = s
            .apply(&update(5, json!({"loyalty_tier":"silver","city":"Oslo"})))
            .expect("fills city");
        assert_eq!(row.traits["loyalty_tier"], "gold");
        assert_eq!(row.traits["city"], "Oslo");
        assert_eq!(row.updated_at_us, 10);
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn first_only_traits_set_up_a_new_customer_but_never_change_one() {
        let mut s = ProfileState::default();
        let mut signup = update(1, json!({"name": "A"}));
        signup.first_only = [("email".to_string(), json!("a@x.example"))]
            .into_iter()
            .collect();
        let (row, _) = s.apply(&signup).expect("new profile");
        assert_eq!(row.traits["email"], "a@x.example");
        let mut takeover = update(2, json!({"name": "B"}));
        takeover.first_only = [("email".to_string(), json!("attacker@evil.example"))]
            .into_iter()
            .collect();
        let (row, changes) = s.apply(&takeover).expect("name changed");
        assert_eq!(row.traits["email"], "a@x.example", "the address stays");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "name");
    }
}
