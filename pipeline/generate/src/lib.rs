//! Deterministic synthetic customer data for Kairos (`kairos-dev generate`, and the demo).
//!
//! [`generate`] writes two NDJSON streams in the shape of Segment's HTTP
//! tracking API: one `identify` call per customer (the profiles), and the
//! customers' `page` / `track` calls over a span of days (the events), plus a
//! few `identify` calls in the events for loyalty tier changes.
//!
//! Everything derives from [`GenerateOptions::seed`]. Each customer draws from
//! its own random streams, seeded from `(seed, customer index)`, so the same
//! options always give byte-identical output, and a customer's profile does not
//! depend on how many customers are generated around it.
//!
//! The journeys are shaped so trigger rules have something to fire on:
//! abandoned carts, products viewed again and again without a purchase,
//! customers inactive for 30+ days, sign-ups during the span (anonymous first),
//! anonymous-only visitors, subscription renewals, support tickets, consent
//! changes and tier changes. Local time of day follows each customer's IANA
//! zone (`chrono-tz`).
//!
//! All people are invented: emails are `@example.com` / `@example.net`, phone
//! numbers are in the fictional `+1 555 01xx…` and `+44 7700 900xxx` ranges,
//! IP addresses are from the documentation ranges, and the shop is
//! `shop.example`.

mod catalog;
mod customer;
mod journey;
mod json;
mod lift;
mod random;
mod zone;

use catalog::*;
use customer::*;
use journey::*;
use json::*;
pub use lift::{Lift, VariantLift};
use random::*;
use zone::*;

use std::io::{BufWriter, Write};

use anyhow::{Context as _, Result, ensure};
use chrono::{
    DateTime, Duration, Months, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// What to generate. [`GenerateOptions::sample`] gives the settings of the
/// files checked in under `data-samples/`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Seed for every random choice: the same options give byte-identical output.
    pub seed: u64,
    /// Number of known customers; each gets exactly one profile line. About one
    /// anonymous-only visitor per 25 customers is added to the events on top.
    pub customers: usize,
    /// Length of the span in days (1 to 3660); every timestamp falls in
    /// `[start, start + days)`.
    pub days: u32,
    /// Start of the span.
    pub start: DateTime<Utc>,
    /// Mean number of event lines per customer over the span (anonymous
    /// visitors included). Individual customers spread widely around it: a few
    /// are very active, many are light, some are dormant or lapsed.
    pub events_per_customer: f64,
    /// The response simulator: when set, every customer abandons one cart and
    /// converts at the rate of the arm Kairos will assign them (see [`Lift`]),
    /// instead of following the ordinary journeys.
    pub lift: Option<Lift>,
    /// Customer ids are this prefix and a five-digit index (`cust-00017`);
    /// the demo's simulated cohort uses its own so it can share a data root
    /// with `data-samples/`.
    pub id_prefix: &'static str,
}

impl GenerateOptions {
    /// The settings of the checked-in `data-samples/` files: seed 42, 300
    /// customers, 42 days from 2026-09-01T00:00:00Z, a few thousand events.
    pub fn sample() -> Self {
        Self {
            seed: 42,
            customers: 300,
            days: 42,
            start: Utc
                .with_ymd_and_hms(2026, 9, 1, 0, 0, 0)
                .single()
                .expect("2026-09-01T00:00:00Z is a valid UTC instant"),
            events_per_customer: 12.0,
            lift: None,
            id_prefix: "cust-",
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Lines written to the profiles writer (one `identify` per customer).
    pub profiles: usize,
    /// Lines written to the events writer.
    pub events: usize,
}

/// Writes profiles (identify calls) then events (track/page calls) as NDJSON,
/// one JSON object per line, events sorted by timestamp.
///
/// Both writers are buffered internally and flushed before returning.
///
/// Memory stays bounded for any number of customers: customers are generated
/// one at a time and events are buffered in blocks of at most 10,000 customers
/// (or 500,000 events, whichever comes first), each block sorted by timestamp
/// before it is written. So the events are sorted globally when there are at
/// most 10,000 customers and at most 500,000 events (the sample and ordinary
/// test loads); for larger loads each block is sorted on its own and timestamps
/// restart at every block boundary.
///
/// `messageId`s are `gen-{seed}-{n}`, with `n` counting profiles first and then
/// events in the order they are generated (customer by customer), so they are
/// unique across both files but not in file order.
pub fn generate(
    opts: &GenerateOptions,
    profiles: &mut dyn Write,
    events: &mut dyn Write,
) -> Result<GenerateSummary> {
    generate_in_blocks(opts, profiles, events, BLOCK_CUSTOMERS, BLOCK_EVENTS)
}

/// [`generate`] into `profiles.ndjson` and `events.ndjson` under `out`
/// (created when missing).
pub fn write_files(opts: &GenerateOptions, out: &std::path::Path) -> Result<GenerateSummary> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let create = |name: &str| {
        let path = out.join(name);
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    };
    let (mut profiles, mut events) = (create("profiles.ndjson")?, create("events.ndjson")?);
    generate(opts, &mut profiles, &mut events)
}

/// Customers per sorted block of events (see [`generate`]).
const BLOCK_CUSTOMERS: usize = 10_000;
/// Events per sorted block at most, so a high `events_per_customer` cannot
/// make a block large (a buffered line is roughly 600 bytes).
const BLOCK_EVENTS: usize = 500_000;
/// One anonymous-only visitor is added per this many customers.
const CUSTOMERS_PER_VISITOR: usize = 25;

fn generate_in_blocks(
    opts: &GenerateOptions,
    profiles: &mut dyn Write,
    events: &mut dyn Write,
    block_customers: usize,
    block_events: usize,
) -> Result<GenerateSummary> {
    let span = Span::new(opts)?;
    let mut ids = MessageIds {
        seed: opts.seed,
        next: 0,
    };
    let mut line = Vec::with_capacity(1024);

    let mut profiles = BufWriter::new(profiles);
    for index in 0..opts.customers {
        let customer = Customer::new(opts, index, &span);
        line.clear();
        customer.write_profile(&mut line, &ids.next_id())?;
        line.push(b'\n');
        profiles.write_all(&line).context("writing profiles")?;
    }
    profiles.flush().context("writing profiles")?;

    let mut out = BufWriter::new(events);
    let mut block = Block::default();
    let mut written = 0;
    for index in 0..opts.customers {
        let customer = Customer::new(opts, index, &span);
        let (actor, evs) = match &opts.lift {
            Some(lift) => experiment_journey(&customer, opts, &span, lift),
            None => customer_journey(&customer, opts, &span),
        };
        block.add(&actor, evs, &mut ids)?;
        block.customers += 1;
        if block.customers >= block_customers || block.lines.len() >= block_events {
            written += block.flush(&mut out)?;
        }
    }
    // Visitors join the last block, so a load of up to `block_customers`
    // customers is still sorted as a whole. The response simulator has none:
    // an anonymous visitor's abandoned cart would make them a recipient who
    // never converts.
    let visitors = if opts.lift.is_some() {
        0
    } else {
        opts.customers / CUSTOMERS_PER_VISITOR
    };
    for index in 0..visitors {
        let (actor, evs) = visitor_journey(opts, index, &span);
        block.add(&actor, evs, &mut ids)?;
        if block.lines.len() >= block_events {
            written += block.flush(&mut out)?;
        }
    }
    written += block.flush(&mut out)?;
    out.flush().context("writing events")?;

    Ok(GenerateSummary {
        profiles: opts.customers,
        events: written,
    })
}

/// Serialized event lines waiting to be sorted and written.
#[derive(Default)]
struct Block {
    /// (timestamp in ms, line without newline), in generation order.
    lines: Vec<(i64, Vec<u8>)>,
    customers: usize,
}

impl Block {
    fn add(&mut self, actor: &Actor, evs: Vec<Ev>, ids: &mut MessageIds) -> Result<()> {
        for ev in evs {
            let ts = ev.ts.timestamp_millis();
            let mut line = Vec::with_capacity(640);
            ev.write(&mut line, actor, &ids.next_id())?;
            self.lines.push((ts, line));
        }
        Ok(())
    }

    /// Sorts and writes the buffered lines, returning how many were written.
    fn flush(&mut self, out: &mut dyn Write) -> Result<usize> {
        // A stable sort keeps equal timestamps in generation order, so the
        // output stays deterministic.
        self.lines.sort_by_key(|(ts, _)| *ts);
        for (_, line) in &self.lines {
            out.write_all(line).context("writing events")?;
            out.write_all(b"\n").context("writing events")?;
        }
        let n = self.lines.len();
        self.lines.clear();
        self.customers = 0;
        Ok(n)
    }
}

struct MessageIds {
    seed: u64,
    next: u64,
}

impl MessageIds {
    fn next_id(&mut self) -> String {
        let id = format!("gen-{}-{}", self.seed, self.next);
        self.next += 1;
        id
    }
}

/// The validated time span.
struct Span {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    days: u32,
}

impl Span {
    fn new(opts: &GenerateOptions) -> Result<Self> {
        ensure!(
            (1..=3660).contains(&opts.days),
            "days must be between 1 and 3660, got {}",
            opts.days
        );
        ensure!(
            opts.events_per_customer.is_finite() && opts.events_per_customer >= 0.0,
            "events_per_customer must be a non-negative number, got {}",
            opts.events_per_customer
        );
        let end = opts
            .start
            .checked_add_signed(Duration::days(i64::from(opts.days)))
            .context("start + days is out of range")?;
        if opts.lift.is_some() {
            ensure!(
                opts.days >= LIFT_MIN_DAYS,
                "the response simulator needs --days {LIFT_MIN_DAYS} or more (a day before the \
                 first cart, and each cart's 7-day window inside the span); got {}",
                opts.days
            );
        }
        Ok(Self {
            start: opts.start,
            end,
            days: opts.days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;
    use kairos_experiments::Arm;
    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    /// What one run wrote, raw and parsed.
    struct Output {
        summary: GenerateSummary,
        profiles_raw: Vec<u8>,
        events_raw: Vec<u8>,
        profiles: Vec<Value>,
        events: Vec<Value>,
    }

    fn parse_lines(raw: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(raw).expect("output is UTF-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect()
    }

    fn run(opts: &GenerateOptions) -> Output {
        let (mut profiles_raw, mut events_raw) = (Vec::new(), Vec::new());
        let summary = generate(opts, &mut profiles_raw, &mut events_raw).expect("generate");
        Output {
            summary,
            profiles: parse_lines(&profiles_raw),
            events: parse_lines(&events_raw),
            profiles_raw,
            events_raw,
        }
    }

    /// The sample is shared: generating it once keeps the tests quick.
    fn sample() -> &'static Output {
        static SAMPLE: OnceLock<Output> = OnceLock::new();
        SAMPLE.get_or_init(|| run(&GenerateOptions::sample()))
    }

    fn sample_end() -> DateTime<Utc> {
        let opts = GenerateOptions::sample();
        opts.start + Duration::days(i64::from(opts.days))
    }

    fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
        v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }

    fn f(v: &Value, pointer: &str) -> f64 {
        v.pointer(pointer)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }

    fn ts(v: &Value) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s(v, "/timestamp"))
            .expect("RFC 3339 timestamp")
            .with_timezone(&Utc)
    }

    fn event_name(v: &Value) -> &str {
        s(v, "/event")
    }

    /// userId, or anonymousId for people without one.
    fn person(v: &Value) -> &str {
        match v.get("userId").and_then(Value::as_str) {
            Some(user) => user,
            None => s(v, "/anonymousId"),
        }
    }

    fn named<'a>(events: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> {
        events.iter().filter(move |e| event_name(e) == name)
    }

    #[test]
    fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
        let opts = GenerateOptions {
            customers: 80,
            ..GenerateOptions::sample()
        };
        let a = run(&opts);
        let b = run(&opts);
        assert!(
            a.profiles_raw == b.profiles_raw,
            "profiles differ between runs"
        );
        assert!(a.events_raw == b.events_raw, "events differ between runs");
        let c = run(&GenerateOptions { seed: 43, ..opts });
        assert!(a.profiles_raw != c.profiles_raw);
        assert!(a.events_raw != c.events_raw);
    }

    #[test]
    fn sample_has_the_promised_size() {
        let out = sample();
        assert_eq!(out.summary.profiles, 300);
        assert_eq!(out.profiles.len(), 300);
        assert_eq!(out.summary.events, out.events.len());
        assert!(
            (3000..=6000).contains(&out.events.len()),
            "{} events",
            out.events.len()
        );
        assert!(out.profiles_raw.ends_with(b"\n") && out.events_raw.ends_with(b"\n"));
    }

    #[test]
    fn every_line_is_a_well_formed_segment_call() {
        let out = sample();
        let (start, end) = (GenerateOptions::sample().start, sample_end());
        let mut ids = HashSet::new();
        for (line, is_profile) in out
            .profiles
            .iter()
            .map(|p| (p, true))
            .chain(out.events.iter().map(|e| (e, false)))
        {
            let id = s(line, "/messageId");
            assert!(id.starts_with("gen-42-"), "{line}");
            assert!(ids.insert(id.to_owned()), "duplicate messageId {id}");

            // RFC 3339, UTC, milliseconds: 2026-09-03T14:05:12.345Z
            let raw = s(line, "/timestamp");
            assert_eq!(raw.len(), 24, "{raw}");
            assert!(raw.ends_with('Z') && raw.as_bytes()[19] == b'.', "{raw}");
            let t = ts(line);
            assert!(t >= start && t < end, "{raw} outside the span");

            let kind = s(line, "/type");
            assert!(
                line.get("userId").is_some() || line.get("anonymousId").is_some(),
                "{line}"
            );
            match kind {
                "identify" => {
                    assert!(s(line, "/userId").starts_with("cust-"), "{line}");
                    assert!(line.get("traits").is_some_and(Value::is_object));
                }
                "track" => {
                    assert!(!is_profile);
                    assert!(!event_name(line).is_empty());
                    assert!(line.get("properties").is_some_and(Value::is_object));
                }
                "page" => {
                    assert!(!is_profile);
                    assert!(!s(line, "/name").is_empty());
                    assert!(s(line, "/properties/path").starts_with('/'));
                    assert_eq!(
                        s(line, "/properties/url"),
                        format!("https://shop.example{}", s(line, "/properties/path"))
                    );
                    assert_eq!(s(line, "/context/page/path"), s(line, "/properties/path"));
                }
                other => panic!("unexpected type {other}"),
            }
            if is_profile {
                assert_eq!(kind, "identify");
            }
            assert!(!s(line, "/context/timezone").is_empty(), "{line}");
            // Browser calls carry the full analytics.js context.
            if line.get("anonymousId").is_some() {
                assert_eq!(s(line, "/context/library/name"), "analytics.js");
                assert!(s(line, "/context/userAgent").starts_with("Mozilla/5.0"));
                assert!(!s(line, "/context/locale").is_empty());
                assert!(!s(line, "/context/page/url").is_empty());
            }
        }
    }

    #[test]
    fn events_are_sorted_by_timestamp() {
        let events = &sample().events;
        for pair in events.windows(2) {
            assert!(
                ts(&pair[0]) <= ts(&pair[1]),
                "{} before {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn purchases_carry_order_id_revenue_and_products() {
        let events = &sample().events;
        let started: HashMap<&str, &Value> = named(events, "Checkout Started")
            .map(|e| (s(e, "/properties/order_id"), e))
            .collect();
        let mut orders = HashSet::new();
        let completed: Vec<&Value> = named(events, "Order Completed").collect();
        assert!(completed.len() >= 50, "{} orders", completed.len());
        for order in completed {
            let order_id = s(order, "/properties/order_id");
            assert!(order_id.starts_with("ord-"), "{order}");
            assert!(orders.insert(order_id), "order {order_id} completed twice");
            assert!(
                s(order, "/userId").starts_with("cust-"),
                "guest order {order}"
            );
            let checkout = started.get(order_id).expect("checkout started first");
            assert!(ts(checkout) < ts(order));
            assert_eq!(person(checkout), person(order));

            let revenue = f(order, "/properties/revenue");
            let total = f(order, "/properties/total");
            let shipping = f(order, "/properties/shipping");
            assert!(revenue > 0.0, "{order}");
            assert!((total - revenue - shipping).abs() < 0.005, "{order}");
            assert!(["EUR", "USD", "GBP"].contains(&s(order, "/properties/currency")));
            let products = order
                .pointer("/properties/products")
                .and_then(Value::as_array)
                .expect("products array");
            assert!(!products.is_empty());
            let mut sum = 0.0;
            for p in products {
                assert!(s(p, "/product_id").starts_with("prod-"));
                assert!(!s(p, "/category").is_empty());
                let quantity = p.get("quantity").and_then(Value::as_u64).expect("quantity");
                assert!(quantity >= 1);
                sum += f(p, "/price") * quantity as f64;
            }
            assert!((sum - revenue).abs() < 0.005, "revenue {revenue} != {sum}");
            assert!(
                (f(checkout, "/properties/revenue") - revenue).abs() < 0.005,
                "{checkout}"
            );
        }
    }

    #[test]
    fn products_match_the_catalog_with_stable_prices() {
        assert_eq!(PRODUCTS.len(), 60);
        let used: HashSet<usize> = PRODUCTS.iter().map(|p| p.category).collect();
        assert_eq!(used.len(), CATEGORIES.len());
        let mut prices: HashMap<(String, String), f64> = HashMap::new();
        for e in &sample().events {
            if !matches!(event_name(e), "Product Viewed" | "Product Added") {
                continue;
            }
            let id = s(e, "/properties/product_id");
            let index: usize = id
                .trim_start_matches("prod-")
                .parse::<usize>()
                .expect("numeric product id")
                - 1;
            assert_eq!(s(e, "/properties/sku"), sku(index));
            assert_eq!(s(e, "/properties/name"), PRODUCTS[index].name);
            let price = f(e, "/properties/price");
            assert!(price > 0.0);
            let key = (id.to_owned(), s(e, "/properties/currency").to_owned());
            let seen = *prices.entry(key).or_insert(price);
            assert!(seen == price, "{id} sold at {seen} and {price}");
            if event_name(e) == "Product Added" {
                assert!(s(e, "/properties/cart_id").starts_with("cart-"));
                assert!(e.pointer("/properties/quantity").is_some_and(Value::is_u64));
            }
        }
        // One price per product and currency, and prices end in .95.
        assert_eq!(price_cents(0, Currency::Eur), 12_995);
        for p in 0..PRODUCTS.len() {
            for currency in [Currency::Eur, Currency::Usd, Currency::Gbp] {
                assert_eq!(price_cents(p, currency) % 100, 95);
            }
        }
    }

    #[test]
    fn profiles_and_events_agree() {
        let out = sample();
        let profiles: HashMap<&str, &Value> =
            out.profiles.iter().map(|p| (s(p, "/userId"), p)).collect();
        assert_eq!(profiles.len(), out.profiles.len(), "duplicate userId");
        let mut tier_changes = 0;
        for e in &out.events {
            let Some(user) = e.get("userId").and_then(Value::as_str) else {
                continue;
            };
            let profile = profiles.get(user).expect("every userId has a profile");
            assert_eq!(
                s(e, "/context/timezone"),
                s(profile, "/traits/timezone"),
                "{e}"
            );
            if let Some(currency) = e.pointer("/properties/currency").and_then(Value::as_str) {
                let expected = match s(profile, "/traits/country") {
                    "GB" => "GBP",
                    "DE" => "EUR",
                    _ => "USD",
                };
                assert_eq!(currency, expected, "{e}");
            }
            if s(e, "/type") == "identify" {
                tier_changes += 1;
                let new_tier = s(e, "/traits/loyalty_tier");
                assert!(["bronze", "silver", "gold"].contains(&new_tier));
                assert_ne!(new_tier, s(profile, "/traits/loyalty_tier"), "{e}");
            }
        }
        // About 5% of customers change tier.
        assert!(
            (5..=30).contains(&tier_changes),
            "{tier_changes} tier changes"
        );
    }

    #[test]
    fn profiles_have_the_documented_traits_and_only_fictional_contacts() {
        let zones: Vec<&str> = ZONES.iter().map(|(z, _)| z.iana()).collect();
        let mut with_subscription = 0;
        let mut with_push_token = 0;
        for p in &sample().profiles {
            let user = s(p, "/userId");
            let email = s(p, "/traits/email");
            assert!(
                email == format!("{user}@example.com") || email == format!("{user}@example.net"),
                "{email}"
            );
            let phone = s(p, "/traits/phone");
            let fictional = (phone.starts_with("+155501") && phone.len() == 12)
                || (phone.starts_with("+447700900") && phone.len() == 13);
            assert!(fictional, "{phone}");
            assert!(zones.contains(&s(p, "/traits/timezone")));
            assert_eq!(s(p, "/context/timezone"), s(p, "/traits/timezone"));
            assert!(["bronze", "silver", "gold"].contains(&s(p, "/traits/loyalty_tier")));
            let channel = s(p, "/traits/preferred_channel");
            assert!(["email", "sms", "whatsapp", "push"].contains(&channel));
            for c in ["email", "sms", "whatsapp", "push"] {
                let consent = p.pointer(&format!("/traits/consent/{c}"));
                assert!(consent.is_some_and(Value::is_boolean), "{p}");
            }
            let token = p.pointer("/traits/push_token");
            if token.is_some() {
                with_push_token += 1;
            } else {
                assert!(p.pointer("/traits/consent/push") == Some(&json!(false)));
            }
            assert!(NaiveDate::parse_from_str(s(p, "/traits/signup_date"), "%Y-%m-%d").is_ok());
            if let Some(expiry) = p.pointer("/traits/subscription_expires_at") {
                with_subscription += 1;
                let expiry = expiry.as_str().unwrap_or("");
                assert!(NaiveDate::parse_from_str(expiry, "%Y-%m-%d").is_ok());
            }
        }
        assert!(
            (30..=120).contains(&with_subscription),
            "{with_subscription}"
        );
        assert!((60..=220).contains(&with_push_token), "{with_push_token}");
        for e in &sample().events {
            if let Some(ip) = e.pointer("/context/ip").and_then(Value::as_str) {
                assert!(IP_PREFIXES.iter().any(|p| ip.starts_with(&format!("{p}."))));
            }
        }
    }

    #[test]
    fn sign_ups_start_anonymous_and_link_both_ids() {
        let out = sample();
        let signed_up: Vec<&Value> = named(&out.events, "Signed Up").collect();
        assert!(signed_up.len() >= 5, "{} sign-ups", signed_up.len());
        for su in signed_up {
            let anon = s(su, "/anonymousId");
            let user = s(su, "/userId");
            assert!(!anon.is_empty() && user.starts_with("cust-"), "{su}");
            let at = ts(su);
            for e in out.events.iter().filter(|e| s(e, "/anonymousId") == anon) {
                if ts(e) < at {
                    assert!(e.get("userId").is_none(), "identified before sign-up: {e}");
                } else if e.get("userId").is_some() {
                    assert_eq!(s(e, "/userId"), user);
                }
            }
            assert!(
                out.events
                    .iter()
                    .any(|e| s(e, "/anonymousId") == anon && e.get("userId").is_none()),
                "no anonymous activity before signing up"
            );
            let profile = out
                .profiles
                .iter()
                .find(|p| s(p, "/userId") == user)
                .expect("signed-up customers have a profile");
            assert!(ts(profile) >= at, "profile before sign-up");
            let zone = ZONES
                .iter()
                .map(|(z, _)| *z)
                .find(|z| z.iana() == s(profile, "/traits/timezone"))
                .expect("known zone");
            assert_eq!(
                s(profile, "/traits/signup_date"),
                zone.to_local(at).date().format("%Y-%m-%d").to_string()
            );
        }
    }

    #[test]
    fn some_people_stay_anonymous() {
        let events = &sample().events;
        let identified: HashSet<&str> = events
            .iter()
            .filter(|e| e.get("userId").is_some())
            .map(|e| s(e, "/anonymousId"))
            .collect();
        let anonymous_only: HashSet<&str> = events
            .iter()
            .map(|e| s(e, "/anonymousId"))
            .filter(|a| !a.is_empty() && !identified.contains(a))
            .collect();
        assert!(
            (3..=20).contains(&anonymous_only.len()),
            "{} anonymous-only people",
            anonymous_only.len()
        );
    }

    #[test]
    fn carts_get_abandoned() {
        let events = &sample().events;
        let mut orders: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
        for e in named(events, "Order Completed") {
            orders.entry(person(e)).or_default().push(ts(e));
        }
        let mut abandoned = HashSet::new();
        let mut carts = HashSet::new();
        for e in named(events, "Product Added") {
            let cart = s(e, "/properties/cart_id");
            carts.insert(cart);
            let added = ts(e);
            let bought = orders.get(person(e)).is_some_and(|times| {
                times
                    .iter()
                    .any(|t| *t >= added && *t <= added + Duration::hours(48))
            });
            if !bought {
                abandoned.insert(cart);
            }
        }
        assert!(abandoned.len() >= 30, "{} abandoned carts", abandoned.len());
        assert!(abandoned.len() < carts.len(), "every cart abandoned");
    }

    #[test]
    fn some_products_are_viewed_repeatedly_without_purchase() {
        let events = &sample().events;
        let mut bought: HashSet<(&str, &str)> = HashSet::new();
        for e in named(events, "Order Completed") {
            for p in e
                .pointer("/properties/products")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                bought.insert((person(e), s(p, "/product_id")));
            }
        }
        let mut views: HashMap<(&str, &str), Vec<DateTime<Utc>>> = HashMap::new();
        for e in named(events, "Product Viewed") {
            views
                .entry((person(e), s(e, "/properties/product_id")))
                .or_default()
                .push(ts(e));
        }
        let hits = views
            .iter()
            .filter(|(key, _)| !bought.contains(*key))
            .filter(|(_, times)| {
                // Sorted input, so three views in 7 days are three in a row.
                times.windows(3).any(|w| w[2] - w[0] <= Duration::days(7))
            })
            .count();
        assert!(hits >= 15, "{hits} repeatedly viewed, unbought products");
    }

    #[test]
    fn some_customers_are_inactive_for_30_days() {
        let out = sample();
        let mut last_seen: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for e in &out.events {
            if let Some(user) = e.get("userId").and_then(Value::as_str) {
                last_seen.insert(user, ts(e));
            }
        }
        let cutoff = sample_end() - Duration::days(30);
        let inactive: Vec<&str> = out
            .profiles
            .iter()
            .map(|p| s(p, "/userId"))
            .filter(|u| last_seen.get(u).is_none_or(|t| *t <= cutoff))
            .collect();
        let lapsed = inactive
            .iter()
            .filter(|u| last_seen.contains_key(*u))
            .count();
        assert!(inactive.len() >= 20, "{} inactive", inactive.len());
        assert!(lapsed >= 10, "{lapsed} lapsed after some activity");
        assert!(inactive.len() <= 100, "{} inactive", inactive.len());
    }

    #[test]
    fn lifecycle_events_are_present_and_coherent() {
        let events = &sample().events;
        let count = |name: &str| named(events, name).count();
        for name in [
            "Subscription Started",
            "Subscription Renewed",
            "Support Ticket Opened",
            "Support Ticket Closed",
            "Email Unsubscribed",
            "SMS Opted Out",
        ] {
            assert!(count(name) >= 1, "no {name}");
        }
        let opened: HashMap<&str, &Value> = named(events, "Support Ticket Opened")
            .map(|e| (s(e, "/properties/ticket_id"), e))
            .collect();
        for closed in named(events, "Support Ticket Closed") {
            let id = s(closed, "/properties/ticket_id");
            let open = opened.get(id).expect("closed tickets were opened");
            assert!(ts(open) < ts(closed));
            assert_eq!(s(open, "/userId"), s(closed, "/userId"));
        }
        for e in named(events, "Subscription Renewed") {
            assert!(s(e, "/properties/subscription_id").starts_with("sub-"));
            assert!(f(e, "/properties/amount") > 0.0);
            assert!(e.get("anonymousId").is_none(), "renewals are server-side");
        }
    }

    #[test]
    fn visits_follow_the_local_time_of_day() {
        // Per zone, few visits start in the small hours and many in the
        // evening. A wrong UTC offset would move the evening peak.
        let out = run(&GenerateOptions {
            customers: 1500,
            days: 14,
            ..GenerateOptions::sample()
        });
        let events = &out.events;
        for (zone, _) in ZONES {
            let hours: Vec<u32> = events
                .iter()
                .filter(|e| s(e, "/type") == "page" && s(e, "/context/timezone") == zone.iana())
                .map(|e| zone.to_local(ts(e)).hour())
                .collect();
            assert!(hours.len() >= 100, "{zone:?}: {} pages", hours.len());
            let share = |range: std::ops::RangeInclusive<u32>| {
                hours.iter().filter(|h| range.contains(h)).count() as f64 / hours.len() as f64
            };
            assert!(share(1..=5) < 0.12, "{zone:?}: {} at night", share(1..=5));
            assert!(share(17..=22) > 0.3, "{zone:?}: {} evening", share(17..=22));
        }
    }

    #[test]
    fn local_times_around_the_dst_changes_map_to_one_instant() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("valid test instant")
                .with_timezone(&Utc)
        };
        let local =
            |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("valid local time");
        // The clock springs from 01:00 to 02:00: 01:30 does not exist, and
        // becomes the instant an hour later (02:30 BST).
        assert_eq!(
            Zone::London.to_utc(local("2026-03-29 01:30")),
            at("2026-03-29T01:30:00Z")
        );
        // The clock goes back from 02:00 to 01:00: 01:30 happens twice; the
        // first (BST) is taken.
        assert_eq!(
            Zone::London.to_utc(local("2026-10-25 01:30")),
            at("2026-10-25T00:30:00Z")
        );
        assert_eq!(
            Zone::Sydney.to_local(at("2026-10-03T16:00:00Z")),
            local("2026-10-04 03:00")
        );
        // Local wall-clock times convert back to the same instant.
        for (zone, _) in ZONES {
            let t = at("2026-09-20T18:30:00Z");
            assert_eq!(zone.to_utc(zone.to_local(t)), t, "{zone:?}");
        }
    }

    #[test]
    fn a_customer_does_not_depend_on_how_many_are_generated() {
        let small = run(&GenerateOptions {
            customers: 20,
            ..GenerateOptions::sample()
        });
        assert_eq!(small.profiles[17], sample().profiles[17]);
        assert_eq!(small.profiles.len(), 20);
    }

    #[test]
    fn blocks_hold_the_same_lines_each_sorted() -> Result<()> {
        let opts = GenerateOptions {
            customers: 60,
            ..GenerateOptions::sample()
        };
        let whole = run(&opts);
        let (mut profiles, mut events) = (Vec::new(), Vec::new());
        let summary = generate_in_blocks(&opts, &mut profiles, &mut events, 7, usize::MAX)?;
        assert_eq!(summary, whole.summary);
        assert_eq!(profiles, whole.profiles_raw);
        let mut a: Vec<&[u8]> = events.split(|b| *b == b'\n').collect();
        let mut b: Vec<&[u8]> = whole.events_raw.split(|b| *b == b'\n').collect();
        a.sort();
        b.sort();
        assert!(a == b, "blocks changed the lines");
        // Timestamps only go back at block boundaries: at most one per block
        // of 7 customers (plus the visitors in the last block).
        let lines = parse_lines(&events);
        let restarts = lines.windows(2).filter(|w| ts(&w[1]) < ts(&w[0])).count();
        assert!((1..=60 / 7).contains(&restarts), "{restarts} restarts");
        Ok(())
    }

    #[test]
    fn mean_events_per_customer_is_roughly_honoured() {
        for mean in [5.0, 20.0] {
            let out = run(&GenerateOptions {
                customers: 800,
                events_per_customer: mean,
                ..GenerateOptions::sample()
            });
            let per_customer = out.events.len() as f64 / 800.0;
            assert!(
                per_customer > mean * 0.8 && per_customer < mean * 1.25,
                "mean {mean}: got {per_customer}"
            );
        }
    }

    #[test]
    fn short_spans_and_empty_loads_work() -> Result<()> {
        for days in [1, 2, 7] {
            let opts = GenerateOptions {
                customers: 40,
                days,
                ..GenerateOptions::sample()
            };
            let end = opts.start + Duration::days(i64::from(days));
            let out = run(&opts);
            assert!(!out.events.is_empty());
            for line in out.profiles.iter().chain(&out.events) {
                assert!(
                    ts(line) >= opts.start && ts(line) < end,
                    "{days} days: {line}"
                );
            }
        }
        let (mut profiles, mut events) = (Vec::new(), Vec::new());
        let none = GenerateOptions {
            customers: 0,
            ..GenerateOptions::sample()
        };
        let summary = generate(&none, &mut profiles, &mut events)?;
        assert_eq!(
            summary,
            GenerateSummary {
                profiles: 0,
                events: 0
            }
        );
        assert!(profiles.is_empty() && events.is_empty());

        let quiet = GenerateOptions {
            events_per_customer: 0.0,
            ..GenerateOptions::sample()
        };
        let summary = generate(&quiet, &mut Vec::new(), &mut Vec::new())?;
        assert_eq!(summary.events, 0);
        Ok(())
    }

    #[test]
    fn visit_size_constants_match_the_visits() {
        // The budget-to-visits conversion relies on these averages; a change
        // to the visit flows must update them.
        let span = Span::new(&GenerateOptions::sample()).expect("valid span");
        for (can_buy, expected) in [(true, CALLS_PER_VISIT), (false, CALLS_PER_ANONYMOUS_VISIT)] {
            let mut calls = 0;
            for i in 0..3000 {
                let mut rng = stream(7, 99, i);
                let actor = Actor::new(&mut rng, "t".into(), Some("cust-t".into()), Zone::Berlin);
                let mut j = Journey::new(rng, actor, Who::Both);
                j.random_visit(span.start, span.end, can_buy);
                calls += j.events.len();
            }
            let average = calls as f64 / 3000.0;
            assert!(
                (average / expected - 1.0).abs() < 0.1,
                "can_buy {can_buy}: {average} calls per visit, constant says {expected}"
            );
        }
    }

    #[test]
    fn checked_in_sample_is_up_to_date() -> Result<()> {
        // data-samples/ holds what `kairos-dev generate --sample --out
        // data-samples` writes; a change to the generator must regenerate it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-samples");
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let out = sample();
        assert!(
            read("profiles.ndjson")? == out.profiles_raw
                && read("events.ndjson")? == out.events_raw,
            "data-samples/ is stale: run `cargo run -p kairos-dev -- generate --sample --out data-samples`"
        );
        Ok(())
    }

    #[test]
    fn bad_options_are_rejected() {
        let bad = [
            GenerateOptions {
                days: 0,
                ..GenerateOptions::sample()
            },
            GenerateOptions {
                events_per_customer: f64::NAN,
                ..GenerateOptions::sample()
            },
            GenerateOptions {
                events_per_customer: -1.0,
                ..GenerateOptions::sample()
            },
        ];
        for opts in bad {
            assert!(
                generate(&opts, &mut Vec::new(), &mut Vec::new()).is_err(),
                "{opts:?}"
            );
        }
    }

    #[test]
    fn write_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::other("disk full"))
            }
        }
        let opts = GenerateOptions::sample();
        assert!(generate(&opts, &mut Broken, &mut Vec::new()).is_err());
        assert!(generate(&opts, &mut Vec::new(), &mut Broken).is_err());
    }

    #[test]
    fn nested_keys_are_written_sorted_whatever_the_map_order() -> Result<()> {
        let mut out = Vec::new();
        write_object(
            &mut out,
            &[
                ("type", json!("x")),
                ("a", json!({"z": [1, {"b": 2, "a": 1.5}], "m": "é\""})),
            ],
        )?;
        assert_eq!(
            String::from_utf8(out)?,
            r#"{"type":"x","a":{"m":"é\"","z":[1,{"a":1.5,"b":2}]}}"#
        );
        Ok(())
    }

    fn cart_rule(extra: &str) -> kairos_rules::Rule {
        let text = format!(
            "-- name: cart_abandonment\n-- description: d\n-- channel: email\n\
             -- split: holdout=10 scheduled=20 triggered=70\n-- param delay: 1h\n{extra}\
             SELECT customer_id, 'k' AS dedupe_key FROM carts\n"
        );
        kairos_rules::parse(std::path::Path::new("cart_abandonment.sql"), &text)
            .expect("the test rule parses")
    }

    #[test]
    fn the_response_simulator_converts_each_arm_at_its_rate_after_the_message() {
        let lift = Lift::for_rule(&cart_rule(""), 0.3, "triggered=0.20,scheduled=0.08")
            .expect("valid lifts");
        let opts = GenerateOptions {
            seed: 6,
            customers: 20_000,
            days: 12,
            lift: Some(lift.clone()),
            ..GenerateOptions::sample()
        };
        let out = run(&opts);
        assert_eq!(out.summary.profiles, 20_000);
        // Per customer: the cart add, and the purchase if any.
        let mut carts: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut bought: HashMap<String, DateTime<Utc>> = HashMap::new();
        for e in &out.events {
            let user = s(e, "/userId").to_string();
            assert!(!user.is_empty(), "no anonymous visitors: {e}");
            let t = DateTime::parse_from_rfc3339(s(e, "/timestamp"))
                .expect("timestamp")
                .with_timezone(&Utc);
            match s(e, "/event") {
                "Product Added" => assert!(carts.insert(user, t).is_none(), "one cart each"),
                "Order Completed" => assert!(bought.insert(user, t).is_none(), "one order each"),
                _ => {}
            }
        }
        assert_eq!(carts.len(), 20_000);
        let mut n = [0usize; 3];
        let mut converted = [0usize; 3];
        for (user, cart) in &carts {
            let arm = lift.design.assign(user).arm;
            n[arm as usize] += 1;
            if let Some(t) = bought.get(user) {
                converted[arm as usize] += 1;
                let after = *t - *cart;
                let earliest = lift.delay(None) + Duration::hours(6);
                assert!(after >= earliest, "{user} bought {after} after the cart");
                assert!(
                    after < Duration::days(5),
                    "{user} bought {after} after the cart"
                );
                assert!(*t < opts.start + Duration::days(12));
            }
        }
        for arm in [Arm::Holdout, Arm::Scheduled, Arm::Triggered] {
            let (k, n) = (converted[arm as usize] as f64, n[arm as usize] as f64);
            let p = lift.rate(arm, None);
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!(
                (k - n * p).abs() < 4.0 * sd,
                "{arm:?}: {k} of {n} converted, expected {p} ± {:.4}",
                4.0 * sd / n
            );
        }
        // Deterministic given the seed.
        assert_eq!(run(&opts).events_raw, out.events_raw);
    }

    #[test]
    fn delay_variants_qualify_after_their_delay_and_convert_at_their_lift() {
        let rule = cart_rule("-- variant 1h: delay=1h\n-- variant 24h: delay=24h\n");
        let lift = Lift::for_rule(&rule, 0.3, "triggered=0.2,triggered:24h=0.5").expect("valid");
        assert_eq!(lift.delay(Some("24h")), Duration::hours(24));
        assert_eq!(lift.delay(Some("1h")), Duration::hours(1));
        assert!((lift.rate(Arm::Triggered, Some("24h")) - 0.45).abs() < 1e-12);
        assert!((lift.rate(Arm::Triggered, Some("1h")) - 0.36).abs() < 1e-12);
        let opts = GenerateOptions {
            seed: 7,
            customers: 6_000,
            days: 12,
            lift: Some(lift.clone()),
            ..GenerateOptions::sample()
        };
        let out = run(&opts);
        let (mut carts, mut bought) = (HashMap::new(), HashMap::new());
        for e in &out.events {
            let user = s(e, "/userId").to_string();
            let t = DateTime::parse_from_rfc3339(s(e, "/timestamp"))
                .expect("timestamp")
                .with_timezone(&Utc);
            match s(e, "/event") {
                "Product Added" => {
                    carts.insert(user, t);
                }
                "Order Completed" => {
                    bought.insert(user, t);
                }
                _ => {}
            }
        }
        let (mut n, mut k) = (0.0, 0.0);
        for (user, cart) in &carts {
            let a = lift.design.assign(user);
            let Some(t) = bought.get(user) else {
                if a.variant.as_deref() == Some("24h") {
                    n += 1.0;
                }
                continue;
            };
            let earliest = lift.delay(a.variant.as_deref()) + Duration::hours(6);
            assert!(
                *t - *cart >= earliest,
                "{user}: bought before its variant's message"
            );
            if a.variant.as_deref() == Some("24h") {
                n += 1.0;
                k += 1.0;
            }
        }
        let sd = (n * 0.45 * 0.55f64).sqrt();
        assert!((k - 0.45 * n).abs() < 4.0 * sd, "24h: {k} of {n}");
    }

    #[test]
    fn the_response_simulator_refuses_what_it_cannot_simulate() {
        let rule = cart_rule("");
        let err = |r: &kairos_rules::Rule, base: f64, lifts: &str| {
            Lift::for_rule(r, base, lifts)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&rule, 0.1, "holdout=0.1").contains("baseline"));
        assert!(err(&rule, 0.1, "triggered").contains("ARM=LIFT"));
        assert!(err(&rule, 0.9, "triggered=0.2").contains("between 0 and 1"));
        let variants = cart_rule("-- variant late: delay=6h\n");
        assert!(err(&variants, 0.1, "triggered:soon=0.2").contains("no variant \"soon\""));
        assert!(err(&variants, 0.1, "triggered:late=12").contains("triggered:late arm"));
        let short = GenerateOptions {
            days: 9,
            lift: Some(Lift::for_rule(&rule, 0.1, "triggered=0.2").expect("valid")),
            ..GenerateOptions::sample()
        };
        let e = generate(&short, &mut Vec::new(), &mut Vec::new()).expect_err("too short");
        assert!(e.to_string().contains("--days 10"), "{e}");
    }
}
