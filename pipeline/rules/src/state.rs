//! Per-customer state and computed traits, kept up to date from every event.
//!
//! Rules read this state instead of re-scanning raw history, so a batch
//! costs what the batch holds, not what the lake holds. Every field is a
//! fold that does not depend on the order events arrive in (minimum, maximum,
//! sum, latest-by-event-time, sorted lists), so rebuilding the state from the
//! lake after a restart gives exactly the state the live engine had.
//!
//! The state is offered to rules as tables ([`CUSTOMERS_SCHEMA`],
//! [`CARTS_SCHEMA`], [`PRODUCT_VIEWS_SCHEMA`], plus `profiles`), built for
//! the customers of one batch (event-driven rules) or for everyone (sweeps).

use std::collections::VecDeque;

/// The state's maps: hundreds of thousands of lookups per batch, so a fast
/// seeded hash instead of SipHash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`HashMap`].
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use serde_json::Value;

use kairos_core::event::{EventRecord, IdentityLink, ProfileUpdate};
use kairos_storage::profiles::ProfileState;
use kairos_storage::tables::{self, ChangeRow, ProfileRow};

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// `customers`: one row per customer with computed traits.
pub static CUSTOMERS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("customer_id", false),
        ts("first_seen_at", true),
        ts("last_seen_at", true),
        Field::new("events", DataType::Int64, false),
        ts("signed_up_at", true),
        ts("last_purchase_at", true),
        Field::new("orders", DataType::Int64, false),
        Field::new("lifetime_value", DataType::Float64, false),
        utf8("top_category", true),
        utf8("subscription_id", true),
        ts("subscription_expires_at", true),
        utf8("last_ticket_id", true),
        ts("last_ticket_closed_at", true),
        utf8("timezone", true),
    ]))
});

/// `carts`: one row per cart, i.e. the cart adds between two purchases.
pub static CARTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("customer_id", false),
        utf8("cart_id", false),
        ts("started_at", false),
        ts("updated_at", false),
        Field::new("items", DataType::Int64, false),
        Field::new("cart_value", DataType::Float64, false),
        utf8("last_product_id", true),
        ts("purchased_at", true),
    ]))
});

/// `product_views`: one row per customer and product viewed in the last 7 days.
pub static PRODUCT_VIEWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("customer_id", false),
        utf8("product_id", false),
        Field::new("views_24h", DataType::Int64, false),
        Field::new("views_7d", DataType::Int64, false),
        ts("first_viewed_at", false),
        ts("last_viewed_at", false),
        ts("purchased_at", true),
    ]))
});

/// `profiles` as rules see it: the current profile (the `profiles/` schema
/// without `event_id` and `source`).
pub static RULE_PROFILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let full = tables::PROFILES_SCHEMA.clone();
    // The indices come from the same schema, so the projection holds.
    Arc::new(
        full.project(&profile_projection())
            .expect("a projection of the schema's own columns"),
    )
});

fn profile_projection() -> Vec<usize> {
    let full = tables::PROFILES_SCHEMA.clone();
    (0..full.fields().len())
        .filter(|i| !matches!(full.field(*i).name().as_str(), "event_id" | "source"))
        .collect()
}

/// How long cart adds and purchases are kept for the `carts` table.
pub const CART_RETENTION_US: i64 = 30 * DAY_US;
/// How long product views are kept for the `product_views` table.
pub const VIEW_RETENTION_US: i64 = 7 * DAY_US;
/// Event ids remembered to drop client retries the publisher would drop too.
const RECENT_IDS: usize = 4_000_000;

#[derive(Debug, Clone, Copy)]
struct CartAdd {
    at: i64,
    product: Option<u32>,
    value: f64,
}

/// Events that withdraw consent (a channel's, or everything for
/// `unsubscribe`). Kept in the state so that a restart, which rebuilds the
/// state from the lake, never forgets one.
pub const OPT_OUT_EVENTS: [&str; 5] = [
    "unsubscribe",
    "email_unsubscribe",
    "sms_opt_out",
    "whatsapp_opt_out",
    "push_opt_out",
];

/// One customer's folded history.
#[derive(Debug, Default, Clone)]
struct Customer {
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    events: i64,
    signed_up: Option<i64>,
    last_purchase: Option<i64>,
    orders: i64,
    revenue: f64,
    categories: Vec<(u32, u32)>,
    /// (event time of the source event, subscription id, expiry).
    subscription: Option<(i64, Option<String>, Option<i64>)>,
    /// (closed at, ticket id).
    ticket: Option<(i64, Option<String>)>,
    /// (event time, zone).
    timezone: Option<(i64, String)>,
    /// Opt-out events seen, one bit per [`OPT_OUT_EVENTS`] entry; sticky.
    opt_outs: u8,
    cart_adds: Vec<CartAdd>,
    purchases: Vec<i64>,
    views: Vec<(i64, u32)>,
    /// Hashes of the order ids counted: an order counts once in `orders`
    /// however many line items it has.
    order_ids: Vec<u64>,
    /// Hashes of the order lines taken, `(order_id, product_id)`: a line
    /// sent again (the whole order resubmitted under a new messageId)
    /// counts once, in revenue too.
    order_lines: Vec<u64>,
}

impl Customer {
    /// Takes in the history of an anonymous visitor now linked to this
    /// customer, as if its events had been folded here: a restart folds
    /// them here (it applies every link before any event), so the live
    /// state must too.
    fn absorb(&mut self, o: Customer) {
        let later = |a: &Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some((*a).max(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = o.first_seen {
            self.first_seen = min_opt(self.first_seen, t);
        }
        self.last_seen = later(&self.last_seen, o.last_seen);
        self.events += o.events;
        if let Some(t) = o.signed_up {
            self.signed_up = min_opt(self.signed_up, t);
        }
        self.last_purchase = later(&self.last_purchase, o.last_purchase);
        // Orders without an id count each; with one, once across both.
        self.orders += o.orders - o.order_ids.len() as i64;
        for id in o.order_ids {
            if !self.order_ids.contains(&id) {
                self.order_ids.push(id);
                self.orders += 1;
            }
        }
        for line in o.order_lines {
            if !self.order_lines.contains(&line) {
                self.order_lines.push(line);
            }
        }
        self.revenue += o.revenue;
        for (cat, n) in o.categories {
            match self.categories.iter_mut().find(|(k, _)| *k == cat) {
                Some((_, m)) => *m += n,
                None => self.categories.push((cat, n)),
            }
        }
        // The latest by event time wins, as in the fold (ties: this one's).
        if o.subscription
            .as_ref()
            .is_some_and(|(t, _, _)| self.subscription.as_ref().is_none_or(|(s, _, _)| t > s))
        {
            self.subscription = o.subscription;
        }
        if o.ticket
            .as_ref()
            .is_some_and(|(t, _)| self.ticket.as_ref().is_none_or(|(s, _)| t > s))
        {
            self.ticket = o.ticket;
        }
        if o.timezone
            .as_ref()
            .is_some_and(|(t, _)| self.timezone.as_ref().is_none_or(|(s, _)| t > s))
        {
            self.timezone = o.timezone;
        }
        self.opt_outs |= o.opt_outs;
        for a in o.cart_adds {
            insert_sorted(&mut self.cart_adds, a, |a| a.at);
        }
        for p in o.purchases {
            insert_sorted(&mut self.purchases, p, |t| *t);
        }
        for v in o.views {
            insert_sorted(&mut self.views, v, |v| v.0);
        }
    }
}

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn max_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn insert_sorted<T: Copy>(v: &mut Vec<T>, item: T, key: impl Fn(&T) -> i64) {
    let k = key(&item);
    let at = v.partition_point(|x| key(x) <= k);
    v.insert(at, item);
}

/// Interns product and category names: state holds millions of references
/// to a few thousand names.
#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

/// What one batch changed, for the batch-scoped tables.
#[derive(Default)]
pub struct Applied {
    /// Canonical ids of the customers the batch touched.
    pub customers: HashSet<String>,
    /// The batch's events (customer ids made canonical), in time order.
    pub events: Vec<EventRecord>,
    /// Profile changes the batch made.
    pub changes: Vec<ChangeRow>,
    /// Identity links the batch brought.
    pub identities: Vec<IdentityLink>,
    /// Items dropped as retries of an item already applied.
    pub duplicates: usize,
    /// The time of the batch's earliest item, µs.
    pub first_at: Option<i64>,
}

/// All customers' state.
#[derive(Default)]
pub struct State {
    customers: HashMap<String, Customer>,
    names: Names,
    profiles: ProfileState,
    /// anonymous id -> user id.
    identities: HashMap<String, String>,
    recent: HashSet<u128>,
    recent_order: VecDeque<u128>,
    /// Erased customers (`kairos forget`): nothing fires or is sent for
    /// them, whatever this state still holds until the next start.
    suppression: Option<Arc<kairos_storage::privacy::Suppression>>,
    /// The clock of the last [`State::prune`] that walked every customer.
    pruned_at: Option<i64>,
}

/// How often (event time) [`State::prune`] walks every customer. Tables
/// filter by their windows themselves, so pruning only bounds memory; at
/// every sweep boundary it was 3% of a replay.
const PRUNE_EVERY_US: i64 = 3_600_000_000;

impl State {
    /// Checks [`State::erased`] against `s` from now on.
    pub fn set_suppression(&mut self, s: Arc<kairos_storage::privacy::Suppression>) {
        self.suppression = Some(s);
    }

    /// Whether `customer_id` was erased: its firings and queued messages
    /// are dropped.
    pub fn erased(&self, customer_id: &str) -> bool {
        self.suppression
            .as_ref()
            .is_some_and(|s| s.contains(customer_id))
    }

    /// Customers known.
    pub fn len(&self) -> usize {
        self.customers.len()
    }

    /// True before any event.
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }

    /// Starts from published profiles (the rest comes through [`State::apply_event`]).
    pub fn with_profiles(profiles: ProfileState) -> State {
        let mut s = State {
            profiles,
            ..State::default()
        };
        let ids: Vec<String> = s.profiles.customers().map(str::to_string).collect();
        for id in ids {
            s.profile_traits(&id);
        }
        s
    }

    /// A customer's current profile traits.
    pub fn traits(&self, customer_id: &str) -> Option<&serde_json::Map<String, Value>> {
        self.profiles.get(customer_id)
    }

    /// The opt-out events a customer has sent (see [`OPT_OUT_EVENTS`]).
    pub fn opt_outs(&self, customer_id: &str) -> impl Iterator<Item = &'static str> + use<> {
        let bits = self.customers.get(customer_id).map_or(0, |c| c.opt_outs);
        OPT_OUT_EVENTS
            .iter()
            .enumerate()
            .filter(move |(i, _)| bits & (1 << i) != 0)
            .map(|(_, e)| *e)
    }

    /// The canonical customer id of `id` (the user id an anonymous id was linked to).
    pub fn canonical<'a>(&'a self, id: &'a str) -> &'a str {
        self.identities.get(id).map_or(id, String::as_str)
    }

    /// False when this (source, id) was applied already (a client retry).
    /// Marks event `(source, id)` as applied (folded from the lake, where
    /// ids are not read), so a staged copy of it is taken as the retry it is.
    pub fn remember_event(&mut self, source: &str, id: &str) {
        self.first_time("event", source, id);
    }

    fn first_time(&mut self, kind: &str, source: &str, id: &str) -> bool {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [kind, source, id] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        let key = h.digest128();
        if !self.recent.insert(key) {
            return false;
        }
        self.recent_order.push_back(key);
        if self.recent_order.len() > RECENT_IDS
            && let Some(old) = self.recent_order.pop_front()
        {
            self.recent.remove(&old);
        }
        true
    }

    /// Links an anonymous id to a user id.
    pub fn apply_identity(&mut self, link: &IdentityLink) -> bool {
        if !self.first_time("identity", &link.source, &link.event_id) {
            return false;
        }
        // The first link wins, as in docs/tables.md's canonical id.
        if link.anonymous_id != link.user_id && !self.identities.contains_key(&link.anonymous_id) {
            self.identities
                .insert(link.anonymous_id.clone(), link.user_id.clone());
            // What the visitor did before the link is the customer's now
            // (found by kairos-sim seed 259: a restart counted an anonymous
            // product view for the customer and a browse reminder fired
            // that the live run never fired).
            if let Some(visitor) = self.customers.remove(&link.anonymous_id) {
                let user = self.canonical(&link.user_id).to_string();
                self.customers.entry(user).or_default().absorb(visitor);
            }
        }
        true
    }

    /// Merges an identify; returns its trait changes (`None` for a retry).
    pub fn apply_profile(&mut self, update: &ProfileUpdate) -> Option<Vec<ChangeRow>> {
        if !self.first_time("profile", &update.source, &update.event_id) {
            return None;
        }
        let mut update = update.clone();
        update.customer_id = self.canonical(&update.customer_id).to_string();
        let changes = self
            .profiles
            .apply(&update)
            .map(|(_, c)| c)
            .unwrap_or_default();
        self.profile_traits(&update.customer_id);
        Some(changes)
    }

    /// Computed traits that come from the profile (the signup date).
    fn profile_traits(&mut self, customer: &str) {
        let signed = self.profiles.get(customer).and_then(|t| {
            ["signup_date", "created_at", "createdAt"]
                .iter()
                .find_map(|k| t.get(*k).and_then(Value::as_str).and_then(parse_time))
        });
        let c = self.customers.entry(customer.to_string()).or_default();
        if let Some(at) = signed {
            c.signed_up = min_opt(c.signed_up, at);
        }
    }

    /// Folds one event into its customer's state; false for a retry.
    pub fn apply_event(&mut self, e: &EventRecord) -> bool {
        if !self.first_time("event", &e.source, &e.event_id) {
            return false;
        }
        let customer = self.canonical(&e.customer_id).to_string();
        let extra = match e.event_type.as_str() {
            "subscription_start"
            | "subscription_renew"
            | "subscription_cancel"
            | "ticket_close" => Some(e.properties.as_str()),
            _ => None,
        };
        self.fold(
            &customer,
            &EventParts {
                event_type: &e.event_type,
                at: e.timestamp_us,
                product_id: e.commerce.product_id.as_deref(),
                category: e.commerce.category.as_deref(),
                price: e.commerce.price,
                quantity: e.commerce.quantity,
                revenue: e.commerce.revenue,
                order_id: e.commerce.order_id.as_deref(),
                timezone: e.timezone.as_deref(),
                properties: extra,
            },
        );
        true
    }

    /// Folds an event given by its columns (the lake rebuild path).
    pub fn fold(&mut self, customer: &str, e: &EventParts<'_>) {
        let product = e.product_id.map(|p| self.names.id(p));
        let category = e.category.map(|c| self.names.id(c));
        // Look up before inserting: most events are of known customers, and
        // `entry` would allocate the key every time.
        if !self.customers.contains_key(customer) {
            self.customers
                .insert(customer.to_string(), Customer::default());
        }
        let Some(c) = self.customers.get_mut(customer) else {
            return;
        };
        let at = e.at;
        c.first_seen = min_opt(c.first_seen, at);
        c.last_seen = max_opt(c.last_seen, at);
        c.events += 1;
        if let Some(tz) = e.timezone
            && c.timezone.as_ref().is_none_or(|(t, _)| at >= *t)
        {
            c.timezone = Some((at, tz.to_string()));
        }
        if let Some(cat) = category {
            match c.categories.iter_mut().find(|(k, _)| *k == cat) {
                Some((_, n)) => *n += 1,
                None => c.categories.push((cat, 1)),
            }
        }
        if let Some(i) = OPT_OUT_EVENTS.iter().position(|o| *o == e.event_type) {
            c.opt_outs |= 1 << i;
        }
        match e.event_type {
            "signup" => c.signed_up = min_opt(c.signed_up, at),
            "purchase" => {
                // Sources send an order either as one event or as one event
                // per line item sharing the order id (REES46 does). A line
                // is `(order_id, product_id)`: every line of an order closes
                // carts and marks its product bought, the order counts once.
                if let Some(order) = e.order_id {
                    let line = xxhash_rust::xxh3::xxh3_64(
                        format!("{order}\0{}", e.product_id.unwrap_or("")).as_bytes(),
                    );
                    if c.order_lines.contains(&line) {
                        return;
                    }
                    c.order_lines.push(line);
                    let order = xxhash_rust::xxh3::xxh3_64(order.as_bytes());
                    if !c.order_ids.contains(&order) {
                        c.order_ids.push(order);
                        c.orders += 1;
                    }
                } else {
                    c.orders += 1;
                }
                c.last_purchase = max_opt(c.last_purchase, at);
                c.revenue += e.revenue.unwrap_or(0.0);
                insert_sorted(&mut c.purchases, at, |t| *t);
            }
            "cart_add" => {
                let value = e.price.unwrap_or(0.0) * e.quantity.unwrap_or(1) as f64;
                insert_sorted(&mut c.cart_adds, CartAdd { at, product, value }, |a| a.at);
            }
            "product_view" => {
                if let Some(p) = product {
                    insert_sorted(&mut c.views, (at, p), |v| v.0);
                }
            }
            "subscription_start" | "subscription_renew" | "subscription_cancel" => {
                let props: serde_json::Map<String, Value> = e
                    .properties
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                let id = props
                    .get("subscription_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let expires = if e.event_type == "subscription_cancel" {
                    None
                } else {
                    ["expires_at", "renews_at", "current_period_end"]
                        .iter()
                        .find_map(|k| props.get(*k).and_then(Value::as_str).and_then(parse_time))
                };
                if c.subscription.as_ref().is_none_or(|(t, _, _)| at >= *t) {
                    c.subscription = Some((at, id, expires));
                }
            }
            "ticket_close" => {
                if c.ticket.as_ref().is_none_or(|(t, _)| at >= *t) {
                    let id = e
                        .properties
                        .and_then(|p| {
                            serde_json::from_str::<serde_json::Map<String, Value>>(p).ok()
                        })
                        .and_then(|m| {
                            m.get("ticket_id").map(|v| match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                        });
                    c.ticket = Some((at, id));
                }
            }
            _ => {}
        }
    }

    /// Drops cart adds, purchases and views too old for any table, as of
    /// `now`, at most once per [`PRUNE_EVERY_US`] of clock.
    pub fn prune(&mut self, now: i64) {
        if self
            .pruned_at
            .is_some_and(|at| now < at.saturating_add(PRUNE_EVERY_US))
        {
            return;
        }
        self.pruned_at = Some(now);
        for c in self.customers.values_mut() {
            prune_customer(c, now);
        }
    }

    /// The `customers` table for `ids` (all customers when `None`).
    pub fn customers_table(
        &self,
        ids: Option<&HashSet<String>>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut b = CustomerBuilder::default();
        match ids {
            Some(ids) => {
                for id in ids {
                    if let Some(c) = self.customers.get(id) {
                        b.push(id, c, &self.names);
                    }
                }
            }
            None => {
                for (id, c) in &self.customers {
                    b.push(id, c, &self.names);
                }
            }
        }
        b.finish()
    }

    /// The `carts` table as of `now` for `ids` (all when `None`).
    pub fn carts_table(
        &self,
        ids: Option<&HashSet<String>>,
        now: i64,
    ) -> Result<RecordBatch, ArrowError> {
        let mut b = CartBuilder::default();
        self.each(ids, |id, c| b.push(id, c, now, &self.names));
        b.finish()
    }

    /// The `product_views` table as of `now` for `ids` (all when `None`).
    pub fn views_table(
        &self,
        ids: Option<&HashSet<String>>,
        now: i64,
    ) -> Result<RecordBatch, ArrowError> {
        let mut b = ViewBuilder::default();
        self.each(ids, |id, c| b.push(id, c, now, &self.names));
        b.finish()
    }

    /// The `profiles` table for `ids` (all when `None`).
    pub fn profiles_table(&self, ids: Option<&HashSet<String>>) -> Result<RecordBatch, ArrowError> {
        let rows: Vec<ProfileRow> = match ids {
            Some(ids) => ids.iter().filter_map(|id| self.profile_row(id)).collect(),
            None => self
                .profiles
                .customers()
                .filter_map(|id| self.profile_row(id))
                .collect(),
        };
        let refs: Vec<&ProfileRow> = rows.iter().collect();
        tables::profiles_batch(&refs)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?
            .project(&profile_projection())
    }

    fn profile_row(&self, id: &str) -> Option<ProfileRow> {
        let (at, traits) = self.profiles.get_with_time(id)?;
        Some(ProfileRow {
            customer_id: id.to_string(),
            updated_at_us: at,
            event_id: String::new(),
            source: String::new(),
            traits: traits.clone(),
        })
    }

    fn each(&self, ids: Option<&HashSet<String>>, mut f: impl FnMut(&str, &Customer)) {
        match ids {
            Some(ids) => {
                for id in ids {
                    if let Some(c) = self.customers.get(id) {
                        f(id, c);
                    }
                }
            }
            None => {
                for (id, c) in &self.customers {
                    f(id, c);
                }
            }
        }
    }
}

fn prune_customer(c: &mut Customer, now: i64) {
    let carts_from = now - CART_RETENTION_US;
    let views_from = now - VIEW_RETENTION_US;
    let n = c.cart_adds.partition_point(|a| a.at < carts_from);
    c.cart_adds.drain(..n);
    let n = c.purchases.partition_point(|t| *t < carts_from);
    c.purchases.drain(..n);
    let n = c.views.partition_point(|v| v.0 < views_from);
    c.views.drain(..n);
}

/// The columns of one event the state uses.
pub struct EventParts<'a> {
    /// Canonical event type.
    pub event_type: &'a str,
    /// Event time, µs.
    pub at: i64,
    /// `product_id`.
    pub product_id: Option<&'a str>,
    /// `category`.
    pub category: Option<&'a str>,
    /// `price`.
    pub price: Option<f64>,
    /// `quantity`.
    pub quantity: Option<i64>,
    /// `revenue`.
    pub revenue: Option<f64>,
    /// `order_id`.
    pub order_id: Option<&'a str>,
    /// `timezone`.
    pub timezone: Option<&'a str>,
    /// `properties` JSON, needed only for subscription and ticket events.
    pub properties: Option<&'a str>,
}

/// RFC 3339 instants and plain `YYYY-MM-DD` dates (midnight UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    kairos_core::time::parse_rfc3339_us(s).or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
    })
}

fn tsb() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

struct CustomerBuilder {
    id: StringBuilder,
    first: TimestampMicrosecondBuilder,
    last: TimestampMicrosecondBuilder,
    events: Int64Builder,
    signed: TimestampMicrosecondBuilder,
    purchase: TimestampMicrosecondBuilder,
    orders: Int64Builder,
    ltv: Float64Builder,
    category: StringBuilder,
    sub_id: StringBuilder,
    sub_expires: TimestampMicrosecondBuilder,
    ticket_id: StringBuilder,
    ticket_at: TimestampMicrosecondBuilder,
    tz: StringBuilder,
}

impl Default for CustomerBuilder {
    fn default() -> Self {
        CustomerBuilder {
            id: StringBuilder::new(),
            first: tsb(),
            last: tsb(),
            events: Int64Builder::new(),
            signed: tsb(),
            purchase: tsb(),
            orders: Int64Builder::new(),
            ltv: Float64Builder::new(),
            category: StringBuilder::new(),
            sub_id: StringBuilder::new(),
            sub_expires: tsb(),
            ticket_id: StringBuilder::new(),
            ticket_at: tsb(),
            tz: StringBuilder::new(),
        }
    }
}

impl CustomerBuilder {
    fn push(&mut self, id: &str, c: &Customer, names: &Names) {
        self.id.append_value(id);
        self.first.append_option(c.first_seen);
        self.last.append_option(c.last_seen);
        self.events.append_value(c.events);
        self.signed.append_option(c.signed_up);
        self.purchase.append_option(c.last_purchase);
        self.orders.append_value(c.orders);
        self.ltv.append_value(c.revenue);
        // Most frequent; ties go to the name that sorts first, so the
        // answer does not depend on arrival order.
        let top = c
            .categories
            .iter()
            .map(|(k, n)| (*n, names.name(*k)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
        self.category.append_option(top.map(|(_, n)| n));
        let (sid, sexp) = c
            .subscription
            .as_ref()
            .map_or((None, None), |(_, i, e)| (i.as_deref(), *e));
        self.sub_id.append_option(sid);
        self.sub_expires.append_option(sexp);
        let (tat, tid) = c
            .ticket
            .as_ref()
            .map_or((None, None), |(t, i)| (Some(*t), i.as_deref()));
        self.ticket_id.append_option(tid);
        self.ticket_at.append_option(tat);
        self.tz
            .append_option(c.timezone.as_ref().map(|(_, z)| z.as_str()));
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.first.finish()),
            Arc::new(self.last.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.signed.finish()),
            Arc::new(self.purchase.finish()),
            Arc::new(self.orders.finish()),
            Arc::new(self.ltv.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.sub_id.finish()),
            Arc::new(self.sub_expires.finish()),
            Arc::new(self.ticket_id.finish()),
            Arc::new(self.ticket_at.finish()),
            Arc::new(self.tz.finish()),
        ];
        RecordBatch::try_new(CUSTOMERS_SCHEMA.clone(), cols)
    }
}

struct CartBuilder {
    customer: StringBuilder,
    cart: StringBuilder,
    started: TimestampMicrosecondBuilder,
    updated: TimestampMicrosecondBuilder,
    items: Int64Builder,
    value: Float64Builder,
    product: StringBuilder,
    purchased: TimestampMicrosecondBuilder,
}

impl Default for CartBuilder {
    fn default() -> Self {
        CartBuilder {
            customer: StringBuilder::new(),
            cart: StringBuilder::new(),
            started: tsb(),
            updated: tsb(),
            items: Int64Builder::new(),
            value: Float64Builder::new(),
            product: StringBuilder::new(),
            purchased: tsb(),
        }
    }
}

impl CartBuilder {
    /// A cart is the run of cart adds up to the next purchase; the purchase
    /// that ends it is its `purchased_at`. Only what happened by `now` counts.
    fn push(&mut self, id: &str, c: &Customer, now: i64, names: &Names) {
        let from = now - CART_RETENTION_US;
        // The first purchase at or after `t` that has happened by `now`.
        let purchase_from = |t: i64| {
            let i = c.purchases.partition_point(|p| *p < t);
            c.purchases.get(i).copied().filter(|p| *p <= now)
        };
        let mut open: Option<(i64, i64, i64, f64, Option<u32>)> = None;
        for a in c.cart_adds.iter().filter(|a| a.at > from && a.at <= now) {
            if let Some((start, updated, n, v, prod)) = open
                && let Some(p) = purchase_from(start).filter(|p| *p < a.at)
            {
                self.row(id, start, updated, n, v, prod, Some(p), names);
                open = None;
            }
            open = Some(match open {
                Some((s, _, n, v, _)) => (s, a.at, n + 1, v + a.value, a.product),
                None => (a.at, a.at, 1, a.value, a.product),
            });
        }
        if let Some((start, updated, n, v, prod)) = open {
            self.row(id, start, updated, n, v, prod, purchase_from(start), names);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        id: &str,
        start: i64,
        updated: i64,
        items: i64,
        value: f64,
        product: Option<u32>,
        purchased: Option<i64>,
        names: &Names,
    ) {
        self.customer.append_value(id);
        let started = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(start)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        self.cart.append_value(format!("cart-{started}"));
        self.started.append_value(start);
        self.updated.append_value(updated);
        self.items.append_value(items);
        self.value.append_value(value);
        self.product.append_option(product.map(|p| names.name(p)));
        self.purchased.append_option(purchased);
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.customer.finish()),
            Arc::new(self.cart.finish()),
            Arc::new(self.started.finish()),
            Arc::new(self.updated.finish()),
            Arc::new(self.items.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.product.finish()),
            Arc::new(self.purchased.finish()),
        ];
        RecordBatch::try_new(CARTS_SCHEMA.clone(), cols)
    }
}

struct ViewBuilder {
    customer: StringBuilder,
    product: StringBuilder,
    day: Int64Builder,
    week: Int64Builder,
    first: TimestampMicrosecondBuilder,
    last: TimestampMicrosecondBuilder,
    purchased: TimestampMicrosecondBuilder,
}

impl Default for ViewBuilder {
    fn default() -> Self {
        ViewBuilder {
            customer: StringBuilder::new(),
            product: StringBuilder::new(),
            day: Int64Builder::new(),
            week: Int64Builder::new(),
            first: tsb(),
            last: tsb(),
            purchased: tsb(),
        }
    }
}

impl ViewBuilder {
    fn push(&mut self, id: &str, c: &Customer, now: i64, names: &Names) {
        let from = now - VIEW_RETENTION_US;
        let mut per: Vec<(u32, i64, i64, i64, i64)> = Vec::new();
        for (at, p) in c.views.iter().filter(|(at, _)| *at > from && *at <= now) {
            let recent = i64::from(*at > now - DAY_US);
            match per.iter_mut().find(|x| x.0 == *p) {
                Some(x) => {
                    x.1 += recent;
                    x.2 += 1;
                    x.4 = *at;
                }
                None => per.push((*p, recent, 1, *at, *at)),
            }
        }
        for (p, day, week, first, last) in per {
            self.customer.append_value(id);
            self.product.append_value(names.name(p));
            self.day.append_value(day);
            self.week.append_value(week);
            self.first.append_value(first);
            self.last.append_value(last);
            // The customer's first purchase after the first view (any product).
            let i = c.purchases.partition_point(|t| *t < first);
            self.purchased
                .append_option(c.purchases.get(i).copied().filter(|t| *t <= now));
        }
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.customer.finish()),
            Arc::new(self.product.finish()),
            Arc::new(self.day.finish()),
            Arc::new(self.week.finish()),
            Arc::new(self.first.finish()),
            Arc::new(self.last.finish()),
            Arc::new(self.purchased.finish()),
        ];
        RecordBatch::try_new(PRODUCT_VIEWS_SCHEMA.clone(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};

    const H: i64 = 3_600_000_000;

    /// Found by kairos-sim seed 259: a restart applies every identity
    /// link before any event, so an anonymous visitor's views counted for
    /// the customer; the live state kept them under the anonymous id when
    /// the link came after them, and a browse reminder fired only after a
    /// crash. Either order now gives the same state.
    #[test]
    fn a_visitor_s_history_is_the_customer_s_whether_the_link_comes_first_or_last() {
        let link = IdentityLink {
            event_id: "i".into(),
            source: "s".into(),
            anonymous_id: "anon".into(),
            user_id: "c1".into(),
            call: "alias".into(),
            timestamp_us: 3 * H,
            received_at_us: 3 * H,
        };
        let visitor = [
            ev("v1", "anon", "product_view", H),
            ev("v2", "anon", "cart_add", H + 1),
            ev("v3", "anon", "purchase", H + 2),
        ];
        let own = [
            ev("o1", "c1", "product_view", 2 * H),
            ev("o2", "c1", "purchase", 2 * H + 5),
        ];
        let tables = |s: &State| {
            (
                s.customers_table(None).expect("customers"),
                s.views_table(None, 4 * H).expect("views"),
                s.carts_table(None, 4 * H).expect("carts"),
            )
        };
        let mut link_last = State::default();
        for e in visitor.iter().chain(&own) {
            link_last.apply_event(e);
        }
        link_last.apply_identity(&link);
        let mut link_first = State::default();
        link_first.apply_identity(&link);
        for e in visitor.iter().chain(&own) {
            link_first.apply_event(e);
        }
        assert_eq!(link_last.len(), 1, "the visitor is the customer now");
        assert_eq!(tables(&link_last), tables(&link_first));
    }

    fn ev(id: &str, customer: &str, kind: &str, at: i64) -> EventRecord {
        EventRecord {
            event_id: id.into(),
            source: "s".into(),
            call: "track".into(),
            event: kind.into(),
            event_type: kind.into(),
            customer_id: customer.into(),
            user_id: Some(customer.into()),
            anonymous_id: None,
            timestamp_us: at,
            received_at_us: at,
            sent_at_us: None,
            commerce: kairos_core::event::Commerce {
                product_id: Some("p1".into()),
                price: Some(10.0),
                quantity: Some(2),
                revenue: Some(20.0),
                category: Some("bags".into()),
                ..Default::default()
            },
            timezone: None,
            properties: kairos_core::event::Json::empty_object(),
            context: kairos_core::event::Json::empty_object(),
        }
    }

    fn carts(s: &State, now: i64) -> Vec<(i64, Option<i64>, i64)> {
        let b = s.carts_table(None, now).expect("table");
        let started = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        let purchased = b
            .column(7)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        let items = b
            .column(4)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        (0..b.num_rows())
            .map(|i| {
                (
                    started.value(i),
                    purchased.is_valid(i).then(|| purchased.value(i)),
                    items.value(i),
                )
            })
            .collect()
    }

    #[test]
    fn carts_are_the_adds_between_purchases_in_any_arrival_order() {
        let events = [
            ev("a", "c1", "cart_add", 10 * H),
            ev("b", "c1", "cart_add", 11 * H),
            ev("c", "c1", "purchase", 12 * H),
            ev("d", "c1", "cart_add", 20 * H),
        ];
        let mut forward = State::default();
        let mut backward = State::default();
        for e in &events {
            forward.apply_event(e);
        }
        for e in events.iter().rev() {
            backward.apply_event(e);
        }
        let want = vec![(10 * H, Some(12 * H), 2), (20 * H, None, 1)];
        assert_eq!(carts(&forward, 30 * H), want);
        assert_eq!(carts(&backward, 30 * H), want);
        // As of 11:30 the purchase has not happened yet.
        assert_eq!(carts(&forward, 11 * H + H / 2), vec![(10 * H, None, 2)]);
    }

    #[test]
    fn every_line_of_an_order_closes_carts_and_an_order_counts_once() {
        let line = |id: &str, order: &str, product: Option<&str>, at: i64| {
            let mut e = ev(id, "c1", "purchase", at);
            e.commerce.order_id = Some(order.into());
            e.commerce.product_id = product.map(str::to_string);
            e
        };
        let add = |id: &str, product: &str, at: i64| {
            let mut e = ev(id, "c1", "cart_add", at);
            e.commerce.product_id = Some(product.into());
            e
        };
        let mut s = State::default();
        // One order sent line by line (REES46's shape): the second line
        // closes the cart opened after the first.
        s.apply_event(&add("a1", "x", 10 * H));
        s.apply_event(&line("l1", "o1", Some("x"), 10 * H + 60_000_000));
        s.apply_event(&add("a2", "y", 10 * H + 120_000_000));
        s.apply_event(&line("l2", "o1", Some("y"), 10 * H + 172_000_000));
        // A whole order resubmitted under new messageIds, and a line again.
        s.apply_event(&line("w1", "o2", None, 11 * H));
        s.apply_event(&line("w2", "o2", None, 11 * H + 5_000_000));
        s.apply_event(&line("l2-again", "o1", Some("y"), 12 * H));
        assert_eq!(
            carts(&s, 20 * H),
            vec![
                (10 * H, Some(10 * H + 60_000_000), 1),
                (10 * H + 120_000_000, Some(10 * H + 172_000_000), 1)
            ]
        );
        let b = s.customers_table(None).expect("table");
        let orders = b
            .column(6)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        let ltv = b
            .column(7)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .expect("f64");
        assert_eq!(orders.value(0), 2, "o1 and o2");
        assert_eq!(ltv.value(0), 60.0, "two lines of o1 and o2 once, 20 each");
        // The viewed product bought in the order's second line is bought.
        let mut v = ev("v1", "c1", "product_view", 10 * H + 90_000_000);
        v.commerce.product_id = Some("y".into());
        s.apply_event(&v);
        let views = s.views_table(None, 20 * H).expect("table");
        let bought = views
            .column(6)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        assert_eq!(bought.value(0), 10 * H + 172_000_000);
    }

    #[test]
    fn prune_walks_the_customers_at_most_hourly() {
        let mut s = State::default();
        let mut v = ev("v1", "c1", "product_view", H);
        v.commerce.product_id = Some("p".into());
        s.apply_event(&v);
        let views = |s: &State| s.customers["c1"].views.len();
        let first = H + VIEW_RETENTION_US - 30 * 60_000_000;
        s.prune(first);
        assert_eq!(views(&s), 1, "still inside the view window");
        // 45 minutes later the view has left the window, and the table
        // already leaves it out, but the walk waits for the hour.
        s.prune(first + 45 * 60_000_000);
        assert_eq!(views(&s), 1);
        assert_eq!(
            s.views_table(None, first + 45 * 60_000_000)
                .expect("table")
                .num_rows(),
            0
        );
        s.prune(first + PRUNE_EVERY_US);
        assert_eq!(views(&s), 0);
    }

    #[test]
    fn retries_are_applied_once_and_aliases_resolve() {
        let mut s = State::default();
        assert!(s.apply_event(&ev("a", "c1", "purchase", H)));
        assert!(!s.apply_event(&ev("a", "c1", "purchase", H)));
        s.apply_identity(&IdentityLink {
            event_id: "i".into(),
            source: "s".into(),
            anonymous_id: "anon".into(),
            user_id: "c1".into(),
            call: "alias".into(),
            timestamp_us: H,
            received_at_us: H,
        });
        s.apply_event(&ev("b", "anon", "purchase", 2 * H));
        let b = s.customers_table(None).expect("table");
        assert_eq!(b.num_rows(), 1);
        let orders = b
            .column(6)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(orders.value(0), 2);
        let cat = b
            .column(8)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("str");
        assert_eq!(cat.value(0), "bags");
    }

    #[test]
    fn view_counts_follow_the_clock() {
        let mut s = State::default();
        for (i, at) in [H, 2 * H, 30 * H].iter().enumerate() {
            s.apply_event(&ev(&format!("v{i}"), "c1", "product_view", *at));
        }
        let b = s.views_table(None, 31 * H).expect("table");
        let day = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        let week = b
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!((day.value(0), week.value(0)), (1, 3));
        let b = s
            .views_table(None, 7 * 24 * H + 90 * 60_000_000)
            .expect("table");
        let week = b
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(week.value(0), 2, "the 01:00 view left the 7-day window");
        s.prune(9 * 24 * H);
        assert_eq!(
            s.views_table(None, 9 * 24 * H).expect("table").num_rows(),
            0
        );
    }
}
