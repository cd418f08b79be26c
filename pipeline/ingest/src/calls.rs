//! Segment calls: parse and validate each item on its own.
//!
//! The shapes are Segment's HTTP tracking API (`track`, `identify`, `alias`,
//! `page`, `screen`, `group`, `batch`). Each item is checked alone, so one bad
//! item never costs the good ones; its error names the 0-based index, the
//! field and what was wrong.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use kairos_core::event::{
    Commerce, EventRecord, EventTypes, IdentityLink, Json, ProfileUpdate, Scope, StagedItem,
};
use kairos_core::time::{HOUR_US, parse_rfc3339_us};

/// Why one item was refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemError {
    /// 0-based position in the batch (or line in NDJSON).
    pub index: usize,
    /// The offending field, e.g. `timestamp` or `properties.price`.
    pub field: String,
    /// What was wrong and how to fix it.
    pub reason: String,
}

/// The note for a call dropped because it names an erased customer.
pub const SUPPRESSED: &str =
    "names an erased customer, so it was dropped (`kairos unsuppress` undoes the suppression)";

/// A reason is cut to this many bytes: parse errors quote the input, and
/// an answer listing 100 errors must stay small.
const MAX_REASON_BYTES: usize = 300;

/// Nesting deeper than this in `properties`, `context` or `traits` is
/// refused: nothing Kairos or a rule reads is that deep, and bounded depth
/// keeps every later parse and merge (recursive) cheap.
pub const MAX_JSON_DEPTH: usize = 32;

/// Ids longer than this are refused.
pub const MAX_ID_BYTES: usize = 1024;

impl ItemError {
    /// An error for item `index`, its reason cut to a bounded length.
    pub fn new(index: usize, field: impl Into<String>, reason: impl Into<String>) -> ItemError {
        let mut reason = reason.into();
        let mut field = field.into();
        truncate(&mut reason, MAX_REASON_BYTES);
        truncate(&mut field, MAX_REASON_BYTES);
        ItemError {
            index,
            field,
            reason,
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
}

/// Whether JSON `text` nests objects and arrays deeper than `max`.
/// Brackets inside strings do not count.
pub fn deeper_than(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Segment call types Kairos accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    /// A named user action.
    Track,
    /// Traits of a user.
    Identify,
    /// Links a previous id to a user id.
    Alias,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// Membership of a group/account.
    Group,
}

impl CallType {
    /// From the `type` field or a path segment (`track`, `t`, ...).
    pub fn parse(s: &str) -> Option<CallType> {
        Some(match s {
            "track" | "t" => CallType::Track,
            "identify" | "i" => CallType::Identify,
            "alias" | "a" => CallType::Alias,
            "page" | "p" => CallType::Page,
            "screen" | "s" => CallType::Screen,
            "group" | "g" => CallType::Group,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            CallType::Track => "track",
            CallType::Identify => "identify",
            CallType::Alias => "alias",
            CallType::Page => "page",
            CallType::Screen => "screen",
            CallType::Group => "group",
        }
    }
}

/// A string id that SDKs may also send as a number.
#[derive(Debug)]
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            #[serde(borrow)]
            S(Cow<'a, str>),
            N(serde_json::Number),
        }
        let id = match Raw::deserialize(d) {
            Ok(Raw::S(s)) => s.into_owned(),
            Ok(Raw::N(n)) => n.to_string(),
            Err(_) => return Err(serde::de::Error::custom("expected a string or number")),
        };
        // Ids name files' rows, log lines and message references: control
        // characters (newlines, NUL) there only ever mean a broken sender.
        if id.chars().any(char::is_control) {
            return Err(serde::de::Error::custom(
                "contains a control character (newline, tab, NUL, ...); send the id as plain text",
            ));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(serde::de::Error::custom(format!(
                "is {} bytes; ids are at most {MAX_ID_BYTES}",
                id.len()
            )));
        }
        Ok(Id(id))
    }
}

/// A number that may arrive as a numeric string (`"19.99"`).
#[derive(Debug)]
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            F(f64),
            #[serde(borrow)]
            S(Cow<'a, str>),
        }
        let bad = || serde::de::Error::custom("expected a number");
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::F(f) => Ok(Num(f)),
            Raw::S(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Num)
                .ok_or_else(bad),
        }
    }
}

#[derive(Deserialize)]
struct RawCall<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "userId", default)]
    user_id: Option<Id>,
    #[serde(rename = "anonymousId", default)]
    anonymous_id: Option<Id>,
    #[serde(rename = "previousId", default)]
    previous_id: Option<Id>,
    #[serde(rename = "groupId", default)]
    group_id: Option<Id>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", default)]
    message_id: Option<Id>,
}

#[derive(Deserialize, Default)]
struct RawCommerce {
    #[serde(default)]
    product_id: Option<Id>,
    #[serde(default)]
    category: Option<Id>,
    #[serde(default)]
    price: Option<Num>,
    #[serde(default)]
    quantity: Option<Num>,
    #[serde(default)]
    revenue: Option<Num>,
    #[serde(default)]
    total: Option<Num>,
    #[serde(default)]
    currency: Option<Id>,
    #[serde(default)]
    order_id: Option<Id>,
}

#[derive(Deserialize, Default)]
struct RawContext<'a> {
    #[serde(borrow, default)]
    timezone: Option<Cow<'a, str>>,
}

/// Per-request facts every item shares.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The source (hash of the write key, or `open`).
    pub source: &'a str,
    /// Receive time, µs.
    pub received_at_us: i64,
    /// The batch-level `sentAt`, µs, used when an item has none.
    pub batch_sent_at_us: Option<i64>,
}

/// Turns raw calls into staged items.
#[derive(Debug, Clone)]
pub struct Normalizer {
    types: EventTypes,
    max_event_bytes: usize,
    max_future_us: i64,
    protected_traits: Vec<String>,
    suppression: Option<std::sync::Arc<kairos_storage::privacy::Suppression>>,
}

type ItemResult<T> = Result<T, (String, String)>;

fn err<T>(field: &str, reason: impl Into<String>) -> ItemResult<T> {
    Err((field.to_string(), reason.into()))
}

impl Normalizer {
    /// A normalizer with the given event-name mapping and limits.
    pub fn new(types: EventTypes, max_event_bytes: usize, max_future_hours: u32) -> Normalizer {
        Normalizer {
            types,
            max_event_bytes,
            max_future_us: i64::from(max_future_hours) * HOUR_US,
            protected_traits: vec!["email".into(), "phone".into()],
            suppression: None,
        }
    }

    /// Drops calls naming an erased customer (`kairos forget`), answered
    /// as accepted so senders do not retry them.
    pub fn with_suppression(
        mut self,
        s: std::sync::Arc<kairos_storage::privacy::Suppression>,
    ) -> Normalizer {
        self.suppression = Some(s);
        self
    }

    /// Traits a client key may set for a new customer only
    /// (`ingest.protected_traits`; default `email`, `phone`).
    pub fn with_protected_traits(mut self, traits: Vec<String>) -> Normalizer {
        self.protected_traits = traits;
        self
    }

    /// Validates item `index`. `forced` is the call type given by the URL
    /// path; otherwise the item's `type` field decides. Appends 1 or 2
    /// staged items (identify with both ids also links them). Returns the
    /// parts of an accepted item that were left out (a client key's
    /// consent opt-ins), to be answered and counted.
    pub fn item(
        &self,
        raw: &RawValue,
        forced: Option<CallType>,
        index: usize,
        env: &Envelope,
        out: &mut Vec<StagedItem>,
    ) -> Result<Vec<ItemError>, ItemError> {
        let mut ignored = Vec::new();
        let before = out.len();
        self.item_inner(raw, forced, env, out, &mut ignored)
            .map_err(|(field, reason)| ItemError::new(index, field, reason))?;
        if let Some(s) = &self.suppression
            && out[before..].iter().any(|item| s.any(item.customer_ids()))
        {
            out.truncate(before);
            return Ok(vec![ItemError::new(index, "", SUPPRESSED)]);
        }
        Ok(ignored
            .into_iter()
            .map(|(field, reason)| ItemError::new(index, field, reason))
            .collect())
    }

    fn item_inner(
        &self,
        raw: &RawValue,
        forced: Option<CallType>,
        env: &Envelope,
        out: &mut Vec<StagedItem>,
        ignored: &mut Vec<(String, String)>,
    ) -> ItemResult<()> {
        let text = raw.get();
        if text.len() > self.max_event_bytes {
            return err(
                "",
                format!(
                    "event is {} bytes; the limit is {} (ingest.max_event_bytes)",
                    text.len(),
                    self.max_event_bytes
                ),
            );
        }
        if !text.starts_with('{') {
            return err("", "each call must be a JSON object");
        }
        if deeper_than(text, MAX_JSON_DEPTH + 1) {
            return err(
                "",
                format!(
                    "nests deeper than {MAX_JSON_DEPTH} levels in properties, context or traits; flatten it"
                ),
            );
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let call: RawCall = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            (field, e.into_inner().to_string())
        })?;
        let kind = match forced {
            Some(k) => k,
            None => match call.kind.as_deref() {
                Some(t) => CallType::parse(t).map_or_else(
                    || err("type", format!("unknown call type {t:?}; use track, identify, alias, page, screen or group")),
                    Ok,
                )?,
                None => return err("type", "missing; each batch item needs a type (track, identify, ...)"),
            },
        };
        let non_empty = |id: Option<Id>| id.map(|i| i.0).filter(|s| !s.is_empty());
        let user_id = non_empty(call.user_id);
        let anonymous_id = non_empty(call.anonymous_id);

        let sent_at = match call.sent_at.as_deref() {
            Some(s) => Some(parse_rfc3339_us(s).map_or_else(
                || err("sentAt", format!("{s:?} is not an RFC 3339 timestamp")),
                Ok,
            )?),
            None => env.batch_sent_at_us,
        };
        let timestamp = match call.timestamp.as_deref() {
            None => env.received_at_us,
            Some(s) => {
                let ts = parse_rfc3339_us(s).map_or_else(
                    || {
                        err(
                            "timestamp",
                            format!(
                                "{s:?} is not an RFC 3339 timestamp such as 2026-11-26T10:00:00Z"
                            ),
                        )
                    },
                    Ok,
                )?;
                // Segment's clock-skew correction: trust the device clock
                // only for the gap between the event and its sending.
                match sent_at {
                    Some(sent) => env.received_at_us - (sent - ts),
                    None => ts,
                }
            }
        };
        if timestamp > env.received_at_us + self.max_future_us {
            return err(
                "timestamp",
                format!(
                    "is more than {}h in the future (ingest.max_future_hours); check the sender's clock",
                    self.max_future_us / HOUR_US
                ),
            );
        }
        if timestamp < 0 {
            return err("timestamp", "is before 1970");
        }
        let event_id = match non_empty(call.message_id) {
            Some(m) => m,
            // No messageId: derive one from the call so an identical retry dedupes.
            None => format!(
                "kairos-{:032x}",
                xxhash_rust::xxh3::xxh3_128(text.as_bytes())
            ),
        };
        let context = call.context.map(|c| c.get()).unwrap_or("{}");
        let ctx: RawContext = object(context, "context")?;
        let timezone = ctx.timezone.map(Cow::into_owned).filter(|s| !s.is_empty());

        if kind == CallType::Alias {
            let Some(user_id) = user_id else {
                return err("userId", "missing; alias needs userId and previousId");
            };
            let Some(previous) = non_empty(call.previous_id) else {
                return err("previousId", "missing; alias needs userId and previousId");
            };
            out.push(StagedItem::Identity(IdentityLink {
                event_id,
                source: env.source.to_string(),
                anonymous_id: previous,
                user_id,
                call: "alias".into(),
                timestamp_us: timestamp,
                received_at_us: env.received_at_us,
            }));
            return Ok(());
        }
        let Some(customer_id) = user_id.clone().or_else(|| anonymous_id.clone()) else {
            return err("userId", "missing; every call needs userId or anonymousId");
        };

        if kind == CallType::Identify {
            let traits_text = call.traits.map(|t| t.get()).unwrap_or("{}");
            let mut traits: BTreeMap<String, serde_json::Value> = object(traits_text, "traits")?;
            if let Some(tz) = &timezone {
                traits
                    .entry("timezone".into())
                    .or_insert_with(|| serde_json::Value::String(tz.clone()));
            }
            if let (Some(user), Some(anon)) = (&user_id, &anonymous_id) {
                out.push(StagedItem::Identity(IdentityLink {
                    event_id: event_id.clone(),
                    source: env.source.to_string(),
                    anonymous_id: anon.clone(),
                    user_id: user.clone(),
                    call: "identify".into(),
                    timestamp_us: timestamp,
                    received_at_us: env.received_at_us,
                }));
            }
            let first_only = match Scope::of_source(env.source) {
                Scope::Server => BTreeMap::new(),
                Scope::Client => self.restrict_client(&mut traits, ignored),
            };
            out.push(StagedItem::Profile(ProfileUpdate {
                event_id,
                source: env.source.to_string(),
                customer_id,
                timestamp_us: timestamp,
                received_at_us: env.received_at_us,
                traits,
                first_only,
            }));
            return Ok(());
        }

        let (event, event_type, properties) = match kind {
            CallType::Track => {
                let Some(name) = call.event.filter(|e| !e.trim().is_empty()) else {
                    return err(
                        "event",
                        "missing; track needs the event name, e.g. \"Order Completed\"",
                    );
                };
                let t = self.types.canonical(&name);
                (
                    name.into_owned(),
                    t,
                    call.properties
                        .filter(|p| p.get() != "null")
                        .map_or_else(Json::empty_object, Json::from_raw),
                )
            }
            CallType::Page | CallType::Screen => {
                let name = call
                    .name
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| kind.name().to_string());
                let t = if kind == CallType::Page {
                    "page_view"
                } else {
                    "screen_view"
                };
                (
                    name,
                    t.to_string(),
                    call.properties
                        .filter(|p| p.get() != "null")
                        .map_or_else(Json::empty_object, Json::from_raw),
                )
            }
            CallType::Group => {
                let Some(group) = non_empty(call.group_id) else {
                    return err("groupId", "missing; group needs groupId");
                };
                let traits = call.traits.map(|t| t.get()).unwrap_or("{}");
                let _: serde_json::Map<String, serde_json::Value> = object(traits, "traits")?;
                let props = serde_json::json!({ "group_id": group, "traits": serde_json::from_str::<serde_json::Value>(traits).unwrap_or_default() });
                let props = Json::parse(props.to_string())
                    .map_err(|e| ("traits".to_string(), e.to_string()))?;
                ("group".to_string(), "group".to_string(), props)
            }
            // Handled above; nothing more to stage.
            CallType::Identify | CallType::Alias => return Ok(()),
        };
        let commerce = commerce(properties.as_str())?;
        out.push(StagedItem::Event(EventRecord {
            event_id,
            source: env.source.to_string(),
            call: kind.name().to_string(),
            event,
            event_type,
            customer_id,
            user_id,
            anonymous_id,
            timestamp_us: timestamp,
            received_at_us: env.received_at_us,
            sent_at_us: sent_at,
            commerce,
            timezone,
            properties,
            context: call
                .context
                .filter(|c| c.get() != "null")
                .map_or_else(Json::empty_object, Json::from_raw),
        }));
        Ok(())
    }
}

impl Normalizer {
    /// A client key's identify: consent opt-ins are left out (opt-outs
    /// stay), and protected traits move to `first_only`, which sets up a
    /// new customer but never changes an existing one.
    fn restrict_client(
        &self,
        traits: &mut BTreeMap<String, serde_json::Value>,
        ignored: &mut Vec<(String, String)>,
    ) -> BTreeMap<String, serde_json::Value> {
        const WHY: &str =
            "a client key may opt out but not opt in; send consent opt-ins with a server key";
        match traits.get_mut("consent") {
            Some(serde_json::Value::Object(consent)) => consent.retain(|channel, v| {
                let opt_out = *v == serde_json::Value::Bool(false);
                if !opt_out {
                    ignored.push((format!("traits.consent.{channel}"), WHY.into()));
                }
                opt_out
            }),
            Some(serde_json::Value::Null) | None => {}
            Some(_) => {
                traits.remove("consent");
                ignored.push(("traits.consent".into(), WHY.into()));
            }
        }
        if matches!(traits.get("consent"), Some(serde_json::Value::Object(c)) if c.is_empty()) {
            traits.remove("consent");
        }
        self.protected_traits
            .iter()
            .filter_map(|name| traits.remove_entry(name))
            .collect()
    }
}

/// Parses `text` as a JSON object into `T`, naming `field` in errors.
fn object<'a, T: Deserialize<'a>>(text: &'a str, field: &str) -> ItemResult<T> {
    if text == "null" {
        return serde_json::from_str("{}").map_err(|e| (field.to_string(), e.to_string()));
    }
    if !text.starts_with('{') {
        return err(field, "must be a JSON object");
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            field.to_string()
        } else {
            format!("{field}.{inner}")
        };
        (path, e.into_inner().to_string())
    })
}

fn commerce(properties: &str) -> ItemResult<Commerce> {
    let raw: RawCommerce = object(properties, "properties")?;
    let quantity = match raw.quantity {
        Some(Num(q)) if q.fract() == 0.0 && q.abs() < 1e15 => Some(q as i64),
        Some(_) => return err("properties.quantity", "expected a whole number"),
        None => None,
    };
    Ok(Commerce {
        product_id: raw.product_id.map(|i| i.0),
        category: raw.category.map(|i| i.0),
        price: raw.price.map(|n| n.0),
        quantity,
        revenue: raw.revenue.or(raw.total).map(|n| n.0),
        currency: raw.currency.map(|i| i.0),
        order_id: raw.order_id.map(|i| i.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000_000;

    fn run(json: &str, forced: Option<CallType>) -> Result<Vec<StagedItem>, ItemError> {
        let n = Normalizer::new(EventTypes::new(&Default::default()), 32 * 1024, 24);
        let raw: &RawValue = serde_json::from_str(json).expect("valid json");
        let env = Envelope {
            source: "src",
            received_at_us: NOW,
            batch_sent_at_us: None,
        };
        let mut out = Vec::new();
        n.item(raw, forced, 3, &env, &mut out).map(|_| out)
    }

    /// The live loop takes the items ingest parsed; a restart decodes the
    /// same items from their staged JSON. Both must be equal, or a batch
    /// redone after a crash could decide differently than it did live.
    #[test]
    fn staged_items_decode_to_what_ingest_parsed() {
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-samples");
        let n = Normalizer::new(EventTypes::new(&Default::default()), 32 * 1024, 24);
        // After the samples' last day (2026-10-12), so none is in the future.
        let env = Envelope {
            source: "src",
            received_at_us: 1_793_491_200_000_000,
            batch_sent_at_us: None,
        };
        let mut checked = 0;
        for file in [
            "profiles.ndjson",
            "events.ndjson",
            "policy-scenarios.ndjson",
        ] {
            let text = std::fs::read_to_string(samples.join(file)).expect("sample file");
            for (i, line) in text.lines().enumerate() {
                let raw: &RawValue = serde_json::from_str(line).expect("valid json");
                let mut items = Vec::new();
                n.item(raw, None, i, &env, &mut items)
                    .expect("sample lines are valid");
                let mut payload = Vec::new();
                for item in &items {
                    serde_json::to_writer(&mut payload, item).expect("serialise");
                    payload.push(b'\n');
                }
                let decoded: Vec<StagedItem> = payload
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).expect("decode"))
                    .collect();
                assert_eq!(decoded, items, "{line}");
                checked += items.len();
            }
        }
        assert!(checked > 4000, "{checked} items");
    }

    fn event(json: &str) -> EventRecord {
        match run(json, None).expect("valid").pop() {
            Some(StagedItem::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn track_promotes_commerce_fields_and_maps_the_name() {
        let e = event(
            r#"{"type":"track","userId":"u1","event":"Order Completed","messageId":"m1","timestamp":"2026-09-01T10:00:00Z",
            "properties":{"order_id":"o-1","total":"30.5","revenue":25,"currency":"EUR","quantity":2,"extra":{"a":1}},"context":{"timezone":"Europe/Berlin"}}"#,
        );
        assert_eq!(e.event, "Order Completed");
        assert_eq!(e.event_type, "purchase");
        assert_eq!(e.commerce.revenue, Some(25.0), "revenue wins over total");
        assert_eq!(e.commerce.order_id.as_deref(), Some("o-1"));
        assert_eq!(e.commerce.quantity, Some(2));
        assert_eq!(e.timezone.as_deref(), Some("Europe/Berlin"));
        assert!(
            e.properties.as_str().contains("\"extra\""),
            "unpromoted properties are kept"
        );
        assert_eq!(e.customer_id, "u1");
    }

    #[test]
    fn total_is_revenue_when_revenue_is_absent() {
        let e = event(
            r#"{"type":"track","anonymousId":"a1","event":"Order Completed","properties":{"total":12}}"#,
        );
        assert_eq!(e.commerce.revenue, Some(12.0));
        assert_eq!(e.customer_id, "a1");
    }

    #[test]
    fn clock_skew_is_corrected_with_sent_at() {
        // Device clock is 1 hour fast: sent 10 s after the event, by its clock.
        let e = event(
            r#"{"type":"track","userId":"u","event":"x","timestamp":"2026-09-01T11:00:00Z","sentAt":"2026-09-01T11:00:10Z"}"#,
        );
        assert_eq!(e.timestamp_us, NOW - 10_000_000);
    }

    #[test]
    fn missing_timestamp_means_received_time() {
        assert_eq!(event(r#"{"type":"page","userId":"u"}"#).timestamp_us, NOW);
    }

    #[test]
    fn errors_name_index_and_field() {
        let cases = [
            (r#"{"type":"track","event":"x"}"#, "userId"),
            (r#"{"type":"track","userId":"u"}"#, "event"),
            (
                r#"{"type":"track","userId":"u","event":"x","timestamp":"yesterday"}"#,
                "timestamp",
            ),
            (r#"{"type":"track","userId":{"a":1},"event":"x"}"#, "userId"),
            (
                r#"{"type":"track","userId":"u","event":"x","properties":[1]}"#,
                "properties",
            ),
            (
                r#"{"type":"track","userId":"u","event":"x","properties":{"price":"cheap"}}"#,
                "properties.price",
            ),
            (r#"{"type":"teleport","userId":"u"}"#, "type"),
            (r#"{"type":"alias","userId":"u"}"#, "previousId"),
            (
                r#"{"type":"track","userId":"u","event":"x","timestamp":"2099-01-01T00:00:00Z"}"#,
                "timestamp",
            ),
            (
                r#"{"type":"track","userId":"u","event":"x","context":"web"}"#,
                "context",
            ),
        ];
        for (json, field) in cases {
            let e = run(json, None).expect_err(json);
            assert_eq!(
                (e.index, e.field.as_str()),
                (3, field),
                "{json}: {}",
                e.reason
            );
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn identify_with_both_ids_links_them_and_takes_timezone_from_context() {
        let items = run(r#"{"userId":"u1","anonymousId":"a1","traits":{"email":"x@example.com"},"context":{"timezone":"Asia/Tokyo"}}"#, Some(CallType::Identify)).expect("valid");
        assert_eq!(items.len(), 2);
        let StagedItem::Identity(link) = &items[0] else {
            panic!("link first")
        };
        assert_eq!(
            (link.anonymous_id.as_str(), link.user_id.as_str()),
            ("a1", "u1")
        );
        let StagedItem::Profile(p) = &items[1] else {
            panic!("profile")
        };
        assert_eq!(p.traits["timezone"], "Asia/Tokyo");
        assert_eq!(p.customer_id, "u1");
    }

    #[test]
    fn numeric_user_ids_are_strings_and_missing_message_id_is_stable() {
        let a =
            event(r#"{"type":"track","userId":42,"event":"x","timestamp":"2026-09-01T10:00:00Z"}"#);
        let b =
            event(r#"{"type":"track","userId":42,"event":"x","timestamp":"2026-09-01T10:00:00Z"}"#);
        assert_eq!(a.customer_id, "42");
        assert_eq!(a.event_id, b.event_id);
        assert!(a.event_id.starts_with("kairos-"));
    }

    #[test]
    fn oversized_event_is_refused() {
        let big = format!(
            r#"{{"type":"track","userId":"u","event":"x","properties":{{"pad":"{}"}}}}"#,
            "x".repeat(40_000)
        );
        assert!(
            run(&big, None)
                .expect_err("too big")
                .reason
                .contains("max_event_bytes")
        );
    }

    #[test]
    fn deep_nesting_is_refused_and_brackets_in_strings_do_not_count() {
        let nested = |depth: usize| {
            format!(
                r#"{{"type":"track","userId":"u","event":"E","properties":{{"a":{}1{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        // properties is level 2, its array levels 3 and on.
        assert!(run(&nested(MAX_JSON_DEPTH - 2), None).is_ok());
        let e = run(&nested(MAX_JSON_DEPTH), None).expect_err("too deep");
        assert!(e.reason.contains("deeper than 32"), "{}", e.reason);
        assert!(!deeper_than(r#"{"a":"[[[[[[\"[[["}"#, 2));
        assert!(deeper_than(r#"{"a":[[1]]}"#, 2));
    }

    #[test]
    fn control_characters_and_huge_ids_are_refused() {
        let e = run(r#"{"type":"track","userId":"a\nb","event":"E"}"#, None)
            .expect_err("newline in id");
        assert_eq!(e.field, "userId");
        assert!(e.reason.contains("control character"), "{}", e.reason);
        let e = run(
            r#"{"type":"track","anonymousId":"a\u0000","event":"E"}"#,
            None,
        )
        .expect_err("NUL in id");
        assert_eq!(e.field, "anonymousId");
        let long = format!(
            r#"{{"type":"track","userId":"{}","event":"E"}}"#,
            "x".repeat(2000)
        );
        assert!(
            run(&long, None)
                .expect_err("long id")
                .reason
                .contains("at most 1024")
        );
        assert!(run(r#"{"type":"track","userId":"ok id ü","event":"E"}"#, None).is_ok());
    }

    #[test]
    fn reasons_are_bounded() {
        let e = ItemError::new(0, "f", "x".repeat(10_000));
        assert!(e.reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        let e = ItemError::new(0, "f", "é".repeat(1000));
        assert!(e.reason.ends_with('…'), "cut on a character boundary");
    }

    #[test]
    fn a_client_key_cannot_opt_in_nor_change_protected_traits() {
        let n = Normalizer::new(EventTypes::new(&Default::default()), 32 * 1024, 24);
        let raw: &RawValue = serde_json::from_str(
            r#"{"type":"identify","userId":"u1","traits":{"email":"a@x.example","name":"A",
                "consent":{"email":true,"sms":false,"push":"yes"}}}"#,
        )
        .expect("json");
        let run_as = |source: &str| {
            let env = Envelope {
                source,
                received_at_us: NOW,
                batch_sent_at_us: None,
            };
            let mut out = Vec::new();
            let ignored = n.item(raw, None, 7, &env, &mut out).expect("accepted");
            let Some(StagedItem::Profile(p)) = out.pop() else {
                panic!("no profile update")
            };
            (p, ignored)
        };
        let (p, ignored) = run_as("client-abc");
        assert_eq!(
            p.traits["consent"],
            serde_json::json!({"sms": false}),
            "opt-outs stay"
        );
        assert_eq!(p.traits["name"], "A");
        assert!(!p.traits.contains_key("email"));
        assert_eq!(p.first_only["email"], "a@x.example");
        let fields: Vec<&str> = ignored.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["traits.consent.email", "traits.consent.push"]);
        assert!(
            ignored
                .iter()
                .all(|e| e.index == 7 && e.reason.contains("server key"))
        );

        let (p, ignored) = run_as("key-abc");
        assert!(ignored.is_empty());
        assert!(p.first_only.is_empty());
        assert_eq!(p.traits["consent"]["email"], true, "a server key opts in");
    }
}
