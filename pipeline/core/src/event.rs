//! The event model: what ingest stages and the publisher turns into tables.
//!
//! Ingest validates each Segment call on its own and turns it into one
//! [`StagedItem`]: behavioural calls (`track`, `page`, `screen`, `group`) become
//! [`EventRecord`]s for `events/`, `identify` becomes a [`ProfileUpdate`] for
//! `profiles/` and `profile_changes/` (plus an [`IdentityLink`] when it carries
//! both ids), and `alias` becomes an [`IdentityLink`] for `identities/`.
//! Times are microseconds since the Unix epoch, UTC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One validated call, as written to the staging log. Externally tagged
/// (`{"event":{...}}`) because serde's internally tagged enums buffer each
/// record before decoding it, which made publishing slower than ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagedItem {
    /// A behavioural event for `events/`.
    Event(EventRecord),
    /// Traits for `profiles/` and `profile_changes/`.
    Profile(ProfileUpdate),
    /// An anonymous id linked to a user id, for `identities/`.
    Identity(IdentityLink),
}

impl StagedItem {
    /// The dedupe key: the source and the call's messageId.
    pub fn dedupe_parts(&self) -> (&str, &str) {
        match self {
            StagedItem::Event(e) => (&e.source, &e.event_id),
            StagedItem::Profile(p) => (&p.source, &p.event_id),
            StagedItem::Identity(i) => (&i.source, &i.event_id),
        }
    }

    /// Every customer id the item names (erasure drops it when one of
    /// them is suppressed).
    pub fn customer_ids(&self) -> Vec<&str> {
        match self {
            StagedItem::Event(e) => [
                Some(e.customer_id.as_str()),
                e.user_id.as_deref(),
                e.anonymous_id.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            StagedItem::Profile(p) => vec![p.customer_id.as_str()],
            StagedItem::Identity(i) => vec![i.anonymous_id.as_str(), i.user_id.as_str()],
        }
    }

    /// Event time, µs since the epoch (UTC): decides the Hive partition.
    pub fn timestamp_us(&self) -> i64 {
        match self {
            StagedItem::Event(e) => e.timestamp_us,
            StagedItem::Profile(p) => p.timestamp_us,
            StagedItem::Identity(i) => i.timestamp_us,
        }
    }
}

/// One behavioural event. Field order is the `events/` column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The call's `messageId` (or a hash of the call when it had none).
    pub event_id: String,
    /// Which write key sent it (a short hash, never the key itself).
    pub source: String,
    /// Segment call type: `track`, `page`, `screen` or `group`.
    pub call: String,
    /// The event name exactly as sent (`page`/`screen` name for those calls).
    pub event: String,
    /// Canonical snake_case type (`product_view`, `purchase`, ...).
    pub event_type: String,
    /// `userId` when present, else `anonymousId`. See `identities/` for merging.
    pub customer_id: String,
    /// `userId` as sent.
    pub user_id: Option<String>,
    /// `anonymousId` as sent.
    pub anonymous_id: Option<String>,
    /// Event time after clock-skew correction, µs.
    pub timestamp_us: i64,
    /// When Kairos received it, µs.
    pub received_at_us: i64,
    /// Client's `sentAt`, µs.
    pub sent_at_us: Option<i64>,
    /// Promoted commerce fields from `properties`. (Nested, not flattened:
    /// serde's flatten buffers every record and halves publish speed.)
    pub commerce: Commerce,
    /// `context.timezone` (IANA).
    pub timezone: Option<String>,
    /// `properties` as JSON text (`{}` when absent).
    pub properties: Json,
    /// `context` as JSON text (`{}` when absent).
    pub context: Json,
}

impl EventRecord {
    /// A `track` call of `event_type` from the known user `customer_id`,
    /// received as it happened, without properties or context: the events
    /// benchmarks and tests build.
    pub fn track(
        event_id: String,
        source: &str,
        customer_id: String,
        event_type: &str,
        at_us: i64,
        commerce: Commerce,
    ) -> EventRecord {
        EventRecord {
            event_id,
            source: source.into(),
            call: "track".into(),
            event: event_type.into(),
            event_type: event_type.into(),
            user_id: Some(customer_id.clone()),
            customer_id,
            anonymous_id: None,
            timestamp_us: at_us,
            received_at_us: at_us,
            sent_at_us: None,
            commerce,
            timezone: None,
            properties: Json::empty_object(),
            context: Json::empty_object(),
        }
    }
}

/// A JSON value kept as its validated text. It is embedded in the staging
/// log as raw JSON, not as an escaped string, so staging and publishing
/// never escape and unescape the (large) `properties` and `context`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<serde_json::value::RawValue>);

impl Json {
    /// A copy of already-validated raw JSON.
    pub fn from_raw(raw: &serde_json::value::RawValue) -> Json {
        Json(raw.to_owned())
    }

    /// Validates `text` as JSON.
    pub fn parse(text: String) -> Result<Json, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Json)
    }

    /// `{}`.
    pub fn empty_object() -> Json {
        Json::parse("{}".to_string())
            .unwrap_or_else(|_| Json(serde_json::value::RawValue::NULL.to_owned()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The Segment e-commerce spec fields promoted to typed columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commerce {
    /// `properties.product_id`.
    pub product_id: Option<String>,
    /// `properties.category`.
    pub category: Option<String>,
    /// `properties.price`.
    pub price: Option<f64>,
    /// `properties.quantity`.
    pub quantity: Option<i64>,
    /// `properties.revenue`, else `properties.total`.
    pub revenue: Option<f64>,
    /// `properties.currency` (ISO 4217).
    pub currency: Option<String>,
    /// `properties.order_id`.
    pub order_id: Option<String>,
}

/// An `identify` call's traits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    /// The call's messageId.
    pub event_id: String,
    /// Which write key sent it.
    pub source: String,
    /// `userId` when present, else `anonymousId`.
    pub customer_id: String,
    /// Event time, µs.
    pub timestamp_us: i64,
    /// Receive time, µs.
    pub received_at_us: i64,
    /// Traits as sent (merged over earlier ones by the publisher).
    pub traits: BTreeMap<String, serde_json::Value>,
    /// Protected traits (`ingest.protected_traits`) sent with a client key:
    /// they set up a new customer but never change an existing one, whose
    /// contact addresses only a server key may change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_only: BTreeMap<String, serde_json::Value>,
}

/// What a source's key may do: `client-…` sources are client keys
/// (browsers, apps: public by nature); everything else (server keys,
/// `open`, Kairos' own calls) has server rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Full rights.
    Server,
    /// No consent opt-ins; protected traits only for new customers.
    Client,
}

impl Scope {
    /// The scope a recorded source name stands for.
    pub fn of_source(source: &str) -> Scope {
        if source.starts_with("client-") {
            Scope::Client
        } else {
            Scope::Server
        }
    }
}

/// An anonymous id (or previous id) that belongs to a user id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityLink {
    /// The call's messageId.
    pub event_id: String,
    /// Which write key sent it.
    pub source: String,
    /// `anonymousId` of an identify, or `previousId` of an alias.
    pub anonymous_id: String,
    /// The canonical id it now maps to.
    pub user_id: String,
    /// `identify` or `alias`.
    pub call: String,
    /// Event time, µs.
    pub timestamp_us: i64,
    /// Receive time, µs.
    pub received_at_us: i64,
}

/// Segment e-commerce (v2) and common spec names, mapped to canonical types.
pub const SPEC_EVENT_TYPES: &[(&str, &str)] = &[
    ("Products Searched", "product_search"),
    ("Product List Viewed", "product_list_view"),
    ("Product List Filtered", "product_list_filter"),
    ("Promotion Viewed", "promotion_view"),
    ("Promotion Clicked", "promotion_click"),
    ("Product Clicked", "product_click"),
    ("Product Viewed", "product_view"),
    ("Product Added", "cart_add"),
    ("Product Removed", "cart_remove"),
    ("Cart Viewed", "cart_view"),
    ("Checkout Started", "checkout_start"),
    ("Checkout Step Viewed", "checkout_step_view"),
    ("Checkout Step Completed", "checkout_step_complete"),
    ("Payment Info Entered", "payment_info"),
    ("Order Completed", "purchase"),
    ("Order Updated", "order_update"),
    ("Order Refunded", "refund"),
    ("Order Cancelled", "order_cancel"),
    ("Coupon Entered", "coupon_enter"),
    ("Coupon Applied", "coupon_apply"),
    ("Coupon Denied", "coupon_deny"),
    ("Coupon Removed", "coupon_remove"),
    ("Product Added to Wishlist", "wishlist_add"),
    ("Product Removed from Wishlist", "wishlist_remove"),
    ("Wishlist Product Added to Cart", "cart_add"),
    ("Product Shared", "product_share"),
    ("Cart Shared", "cart_share"),
    ("Product Reviewed", "product_review"),
    ("Signed Up", "signup"),
    ("Signed In", "signin"),
    ("Signed Out", "signout"),
    ("Subscription Started", "subscription_start"),
    ("Subscription Renewed", "subscription_renew"),
    ("Subscription Cancelled", "subscription_cancel"),
    ("Support Ticket Opened", "ticket_open"),
    ("Support Ticket Closed", "ticket_close"),
    ("Email Unsubscribed", "email_unsubscribe"),
    ("SMS Opted Out", "sms_opt_out"),
    ("WhatsApp Opted Out", "whatsapp_opt_out"),
    ("Push Opted Out", "push_opt_out"),
    ("Unsubscribed", "unsubscribe"),
    // Raw clickstream names (e.g. REES46 exports).
    ("view", "product_view"),
    ("cart", "cart_add"),
    ("remove_from_cart", "cart_remove"),
];

/// Maps event names as sent to canonical types: the spec table, then the
/// user's overrides, then snake_case of the name.
#[derive(Debug, Clone)]
pub struct EventTypes {
    map: std::collections::HashMap<String, String>,
}

impl EventTypes {
    /// The built-in table with `overrides` (from `[events.mapping]`) on top.
    pub fn new(overrides: &BTreeMap<String, String>) -> Self {
        let mut map: std::collections::HashMap<String, String> = SPEC_EVENT_TYPES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        EventTypes { map }
    }

    /// The canonical type of a `track` event name.
    pub fn canonical(&self, name: &str) -> String {
        match self.map.get(name) {
            Some(t) => t.clone(),
            None => snake_case(name),
        }
    }
}

/// `"Wishlist Shared"` -> `"wishlist_shared"`, `"checkoutStarted"` -> `"checkout_started"`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower_or_digit = false;
    for ch in name.trim().chars() {
        if ch.is_alphanumeric() {
            if ch.is_uppercase() && prev_lower_or_digit && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
            prev_lower_or_digit = ch.is_lowercase() || ch.is_numeric();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower_or_digit = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_map_to_canonical_types() {
        let t = EventTypes::new(&BTreeMap::new());
        assert_eq!(t.canonical("Product Viewed"), "product_view");
        assert_eq!(t.canonical("Product Added"), "cart_add");
        assert_eq!(t.canonical("Order Completed"), "purchase");
        assert_eq!(t.canonical("Checkout Started"), "checkout_start");
        assert_eq!(t.canonical("Signed Up"), "signup");
    }

    #[test]
    fn unmapped_names_become_snake_case() {
        let t = EventTypes::new(&BTreeMap::new());
        assert_eq!(t.canonical("Wishlist Shared"), "wishlist_shared");
        assert_eq!(t.canonical("purchase"), "purchase");
        assert_eq!(t.canonical("checkoutStarted"), "checkout_started");
        assert_eq!(t.canonical("  Gift-Card  Redeemed! "), "gift_card_redeemed");
        assert_eq!(t.canonical("Level 2 Done"), "level_2_done");
    }

    #[test]
    fn overrides_win_over_spec() {
        let mut o = BTreeMap::new();
        o.insert("Order Completed".to_string(), "order_done".to_string());
        o.insert("Basket Add".to_string(), "cart_add".to_string());
        let t = EventTypes::new(&o);
        assert_eq!(t.canonical("Order Completed"), "order_done");
        assert_eq!(t.canonical("Basket Add"), "cart_add");
        assert_eq!(t.canonical("Product Viewed"), "product_view");
    }

    #[test]
    fn staged_item_round_trips_through_json() {
        let item = StagedItem::Event(EventRecord {
            event_id: "m1".into(),
            source: "open".into(),
            call: "track".into(),
            event: "Order Completed".into(),
            event_type: "purchase".into(),
            customer_id: "u1".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            timestamp_us: 1_700_000_000_000_000,
            received_at_us: 1_700_000_000_100_000,
            sent_at_us: None,
            commerce: Commerce {
                revenue: Some(12.5),
                order_id: Some("o1".into()),
                ..Default::default()
            },
            timezone: Some("Europe/Berlin".into()),
            properties: Json::parse("{\"revenue\":12.5}".into()).expect("json"),
            context: Json::empty_object(),
        });
        let text = serde_json::to_string(&item).expect("serialize");
        let back: StagedItem = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, item);
    }
}
