//! Deterministic synthetic customer data for Kairos (`kairos generate`).
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
//! zone, with daylight saving time applied by hand because `chrono-tz` is not a
//! dependency.
//!
//! All people are invented: emails are `@example.com` / `@example.net`, phone
//! numbers are in the fictional `+1 555 01xx…` and `+44 7700 900xxx` ranges,
//! IP addresses are from the documentation ranges, and the shop is
//! `shop.example`.

use std::io::{BufWriter, Write};

use anyhow::{Context as _, Result, ensure};
use chrono::{
    DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat,
    TimeZone, Utc, Weekday,
};
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

/// A response simulator for one cart-abandonment experiment, so a report
/// can be checked against a lift that is known in advance.
///
/// Each customer abandons exactly one cart at a random time; the rule
/// qualifies them `delay` later. Their arm is what the live pipeline will
/// give them: [`kairos_experiments::Design::assign`] over the rule's own
/// salt and split and the canonical customer id (the `userId`). A customer
/// converts (buys that cart: `Order Completed` with its revenue) with
/// probability `base_rate × (1 + lift of the arm)`, the holdout's lift being
/// 0, at a time after their message: 6 hours to 3¼ days after qualifying,
/// a day later in the scheduled arm (its send waits for the next scheduled
/// time, at most a day away). Every conversion falls inside a 7-day
/// attribution window whatever replay batch span (up to 6 hours) decides the
/// exact assignment instant. There are no other purchases and no anonymous
/// visitors, so the true conversion lift of an arm over holdout is exactly
/// its `lift`, and so is its revenue-per-recipient lift (what a converter
/// spends does not depend on the arm).
///
/// A rule with variants of the triggered arm (`-- variant 6h: delay=6h`)
/// is simulated too: each variant qualifies its customers after its own
/// `delay` and converts them at its own lift (`triggered:6h=0.28`; the
/// `triggered` lift for variants not named), so a timing experiment has a
/// known answer per delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Lift {
    /// The rule (experiment) name, for messages.
    pub rule: String,
    /// The rule's experiment design: salt and split.
    pub design: kairos_experiments::Design,
    /// The rule's `delay` parameter: qualification comes this long after the
    /// last cart add.
    pub delay: Duration,
    /// Conversion probability of a holdout customer (0 to 1).
    pub base_rate: f64,
    /// Relative conversion lift of the scheduled arm over holdout (0.08 = +8%).
    pub scheduled: f64,
    /// Relative conversion lift of the triggered arm over holdout.
    pub triggered: f64,
    /// The triggered arm's variants, if the rule has them.
    pub variants: Vec<VariantLift>,
}

/// One variant of the triggered arm in the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantLift {
    /// The variant's name in the rule.
    pub name: String,
    /// Its `delay` (its own, else the rule's).
    pub delay: Duration,
    /// Its relative conversion lift over holdout.
    pub lift: f64,
}

impl Lift {
    /// The simulator for `rule` (a cart-abandonment rule: an abandoned cart
    /// qualifies `delay` after the last add; `1h` when it has no `delay`
    /// parameter). `lifts` is `arm=lift,...`, e.g. `triggered=0.20,scheduled=0.08`.
    pub fn for_rule(rule: &kairos_rules::Rule, base_rate: f64, lifts: &str) -> Result<Lift> {
        let delay_of =
            |params: &std::collections::BTreeMap<String, kairos_rules::rule::Param>| match params
                .get("delay")
            {
                Some(kairos_rules::rule::Param::Duration(secs)) => Ok(Some(Duration::seconds(
                    i64::try_from(*secs).context("delay out of range")?,
                ))),
                Some(other) => anyhow::bail!(
                    "rule {}: the simulator reads `delay` as a duration, found {other:?}",
                    rule.name
                ),
                None => Ok(None),
            };
        let delay = delay_of(&rule.params)?.unwrap_or(Duration::hours(1));
        let mut variant_lifts: Vec<(String, f64)> = Vec::new();
        let (mut scheduled, mut triggered) = (0.0, 0.0);
        for part in lifts.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (arm, value) = part
                .split_once('=')
                .with_context(|| format!("--lift {part:?}: write ARM=LIFT, e.g. triggered=0.20"))?;
            let value: f64 = value
                .trim()
                .parse()
                .with_context(|| format!("--lift {part:?}: the lift is a number like 0.20"))?;
            match arm.trim() {
                "scheduled" => scheduled = value,
                "triggered" => triggered = value,
                other => match other.strip_prefix("triggered:") {
                    Some(v) if rule.variants.iter().any(|x| x.name == v) => {
                        variant_lifts.push((v.to_string(), value));
                    }
                    Some(v) => {
                        anyhow::bail!("--lift {other:?}: rule {} has no variant {v:?}", rule.name)
                    }
                    None => anyhow::bail!(
                        "--lift {other:?}: give `scheduled`, `triggered` and/or `triggered:VARIANT` (holdout is the baseline)"
                    ),
                },
            }
        }
        let variants = rule
            .variants
            .iter()
            .map(|v| {
                Ok(VariantLift {
                    name: v.name.clone(),
                    delay: delay_of(&v.params)?.unwrap_or(delay),
                    lift: variant_lifts
                        .iter()
                        .find(|(n, _)| *n == v.name)
                        .map_or(triggered, |(_, l)| *l),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lift = Lift {
            rule: rule.name.clone(),
            design: rule.design(),
            delay,
            base_rate,
            scheduled,
            triggered,
            variants,
        };
        let mut rates: Vec<(String, f64)> = vec![
            (
                "holdout".into(),
                lift.rate(kairos_experiments::Arm::Holdout, None),
            ),
            (
                "scheduled".into(),
                lift.rate(kairos_experiments::Arm::Scheduled, None),
            ),
            (
                "triggered".into(),
                lift.rate(kairos_experiments::Arm::Triggered, None),
            ),
        ];
        for v in &lift.variants {
            rates.push((
                format!("triggered:{}", v.name),
                lift.rate(kairos_experiments::Arm::Triggered, Some(&v.name)),
            ));
        }
        for (arm, p) in rates {
            ensure!(
                (0.0..=1.0).contains(&p),
                "the {arm} arm would convert at {p} (base rate {base_rate} × (1 + lift)): \
                 choose a base rate and lifts that keep every rate between 0 and 1"
            );
        }
        Ok(lift)
    }

    /// The conversion probability of a customer in `arm` (and `variant`).
    pub fn rate(&self, arm: kairos_experiments::Arm, variant: Option<&str>) -> f64 {
        let lift = match arm {
            kairos_experiments::Arm::Holdout => 0.0,
            kairos_experiments::Arm::Scheduled => self.scheduled,
            kairos_experiments::Arm::Triggered => self
                .variants
                .iter()
                .find(|v| Some(v.name.as_str()) == variant)
                .map_or(self.triggered, |v| v.lift),
        };
        self.base_rate * (1.0 + lift)
    }

    /// How long after the last cart add a customer of `variant` qualifies.
    pub fn delay(&self, variant: Option<&str>) -> Duration {
        self.variants
            .iter()
            .find(|v| Some(v.name.as_str()) == variant)
            .map_or(self.delay, |v| v.delay)
    }

    /// The longest delay of any customer.
    fn max_delay(&self) -> Duration {
        self.variants
            .iter()
            .map(|v| v.delay)
            .fold(self.delay, Duration::max)
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

// ---------------------------------------------------------------------------
// Randomness

/// Independent random streams per (seed, purpose, index). SplitMix64 spreads
/// nearby inputs so neighbouring customers get unrelated streams.
fn stream(seed: u64, purpose: u64, index: u64) -> StdRng {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ purpose);
    h = splitmix64(h ^ index);
    StdRng::seed_from_u64(h)
}

const STREAM_PROFILE: u64 = 1;
const STREAM_JOURNEY: u64 = 2;
const STREAM_VISITOR: u64 = 3;
const STREAM_EXPERIMENT: u64 = 4;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Index drawn with probability proportional to `weights` (not all zero).
fn pick_weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut r = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// A uniformly random instant in `[lo, hi)`; `lo` when the range is empty.
fn instant_between(rng: &mut StdRng, lo: DateTime<Utc>, hi: DateTime<Utc>) -> DateTime<Utc> {
    let ms = (hi - lo).num_milliseconds();
    if ms <= 0 {
        return lo;
    }
    lo + Duration::milliseconds(rng.random_range(0..ms))
}

/// A skewed random amount with the given mean (a gamma distribution with
/// shape 2, capped at eight times the mean): most customers are moderate or
/// light users, a few are heavy, few are near zero.
fn heavy_tailed(rng: &mut StdRng, mean: f64) -> f64 {
    // The sum of two exponentials of mean `mean / 2`; `1 - u` is in (0, 1].
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    let amount = -((1.0 - u).ln() + (1.0 - v).ln()) * mean / 2.0;
    amount.min(8.0 * mean)
}

/// A version 4 UUID, as analytics.js uses for anonymous ids.
fn uuid(rng: &mut StdRng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

// ---------------------------------------------------------------------------
// Time zones

/// The customers' IANA zones, with their DST rules written out (no chrono-tz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    London,
    Berlin,
    NewYork,
    LosAngeles,
    Tokyo,
    Sydney,
    Kolkata,
}

/// Zones with the share of customers living there.
const ZONES: [(Zone, u32); 7] = [
    (Zone::Berlin, 22),
    (Zone::London, 18),
    (Zone::NewYork, 20),
    (Zone::LosAngeles, 12),
    (Zone::Tokyo, 9),
    (Zone::Sydney, 9),
    (Zone::Kolkata, 10),
];

impl Zone {
    fn pick(rng: &mut StdRng) -> Self {
        let weights: Vec<u32> = ZONES.iter().map(|(_, w)| *w).collect();
        ZONES[pick_weighted(rng, &weights)].0
    }

    fn iana(self) -> &'static str {
        match self {
            Zone::London => "Europe/London",
            Zone::Berlin => "Europe/Berlin",
            Zone::NewYork => "America/New_York",
            Zone::LosAngeles => "America/Los_Angeles",
            Zone::Tokyo => "Asia/Tokyo",
            Zone::Sydney => "Australia/Sydney",
            Zone::Kolkata => "Asia/Kolkata",
        }
    }

    fn country(self) -> &'static str {
        match self {
            Zone::London => "GB",
            Zone::Berlin => "DE",
            Zone::NewYork | Zone::LosAngeles => "US",
            Zone::Tokyo => "JP",
            Zone::Sydney => "AU",
            Zone::Kolkata => "IN",
        }
    }

    fn locale(self) -> &'static str {
        match self {
            Zone::London => "en-GB",
            Zone::Berlin => "de-DE",
            Zone::NewYork | Zone::LosAngeles => "en-US",
            Zone::Tokyo => "ja-JP",
            Zone::Sydney => "en-AU",
            Zone::Kolkata => "en-IN",
        }
    }

    /// The shop sells in EUR, GBP and USD only; other countries pay in USD.
    fn currency(self) -> Currency {
        match self {
            Zone::London => Currency::Gbp,
            Zone::Berlin => Currency::Eur,
            _ => Currency::Usd,
        }
    }

    fn names(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Zone::Berlin => (&FIRST_NAMES_DE, &LAST_NAMES_DE),
            Zone::Tokyo => (&FIRST_NAMES_JP, &LAST_NAMES_JP),
            Zone::Kolkata => (&FIRST_NAMES_IN, &LAST_NAMES_IN),
            _ => (&FIRST_NAMES_EN, &LAST_NAMES_EN),
        }
    }

    /// Offset from UTC in minutes at instant `t`, daylight saving included.
    fn offset_minutes(self, t: DateTime<Utc>) -> i64 {
        let (standard, summer) = match self {
            Zone::London => (0, 60),
            Zone::Berlin => (60, 120),
            Zone::NewYork => (-300, -240),
            Zone::LosAngeles => (-480, -420),
            Zone::Tokyo => (540, 540),
            Zone::Sydney => (600, 660),
            Zone::Kolkata => (330, 330),
        };
        if self.is_summer_time(t) {
            summer
        } else {
            standard
        }
    }

    fn is_summer_time(self, t: DateTime<Utc>) -> bool {
        let y = t.year();
        let hours = Duration::hours;
        // Transition instants in UTC, from each region's rule.
        let (from, to) = match self {
            // EU: last Sunday of March to last Sunday of October, 01:00 UTC.
            Zone::London | Zone::Berlin => (
                sunday_utc(y, 3, 0).map(|d| d + hours(1)),
                sunday_utc(y, 10, 0).map(|d| d + hours(1)),
            ),
            // US: second Sunday of March 02:00 standard time to first Sunday
            // of November 02:00 daylight time.
            Zone::NewYork => (
                sunday_utc(y, 3, 2).map(|d| d + hours(7)),
                sunday_utc(y, 11, 1).map(|d| d + hours(6)),
            ),
            Zone::LosAngeles => (
                sunday_utc(y, 3, 2).map(|d| d + hours(10)),
                sunday_utc(y, 11, 1).map(|d| d + hours(9)),
            ),
            // New South Wales: summer time spans the new year, from the first
            // Sunday of October 02:00 AEST to the first Sunday of April 03:00
            // AEDT; both are 16:00 UTC on the Saturday before.
            Zone::Sydney => {
                let ends = sunday_utc(y, 4, 1).map(|d| d - hours(8));
                let starts = sunday_utc(y, 10, 1).map(|d| d - hours(8));
                return match (ends, starts) {
                    (Some(ends), Some(starts)) => t < ends || t >= starts,
                    _ => false,
                };
            }
            Zone::Tokyo | Zone::Kolkata => return false,
        };
        match (from, to) {
            (Some(from), Some(to)) => from <= t && t < to,
            _ => false,
        }
    }

    fn to_local(self, t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc() + Duration::minutes(self.offset_minutes(t))
    }

    /// The UTC instant of a local wall-clock time. In the hour around a DST
    /// change the result may be an hour off, which is harmless here.
    fn to_utc(self, local: NaiveDateTime) -> DateTime<Utc> {
        // First guess the offset as if the local time were UTC, then take the
        // offset at the instant that guess gives.
        let guess = (local - Duration::minutes(self.offset_minutes(local.and_utc()))).and_utc();
        (local - Duration::minutes(self.offset_minutes(guess))).and_utc()
    }
}

/// Midnight UTC of the `n`th Sunday (1-based; 0 means the last) of a month.
fn sunday_utc(year: i32, month: u32, n: u8) -> Option<DateTime<Utc>> {
    let date = if n == 0 {
        NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, 5)
            .or_else(|| NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, 4))
    } else {
        NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, n)
    }?;
    Some(date.and_time(NaiveTime::MIN).and_utc())
}

/// How likely a visit is to start in each local hour: quiet nights, a lunch
/// bump and an evening peak.
const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 10, 10, 8, 7, 7, 8, 11, 14, 15, 13, 9, 5,
];

// ---------------------------------------------------------------------------
// Catalog

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Currency {
    Eur,
    Usd,
    Gbp,
}

impl Currency {
    fn code(self) -> &'static str {
        match self {
            Currency::Eur => "EUR",
            Currency::Usd => "USD",
            Currency::Gbp => "GBP",
        }
    }
}

struct Product {
    category: usize,
    name: &'static str,
    /// List price in euro cents; other currencies derive from it.
    eur_cents: u64,
}

const fn product(category: usize, name: &'static str, eur_cents: u64) -> Product {
    Product {
        category,
        name,
        eur_cents,
    }
}

/// (URL slug, display name) per category.
const CATEGORIES: [(&str, &str); 8] = [
    ("shoes", "Shoes"),
    ("apparel", "Apparel"),
    ("bags", "Bags"),
    ("accessories", "Accessories"),
    ("home", "Home"),
    ("kitchen", "Kitchen"),
    ("beauty", "Beauty"),
    ("electronics", "Electronics"),
];

/// The catalog: 60 products with stable prices. Within a category, earlier
/// products are more popular.
const PRODUCTS: [Product; 60] = [
    product(0, "Trail Runner 2", 12_995),
    product(0, "Canvas Low-Top", 5_995),
    product(0, "Everyday Sneaker", 8_995),
    product(0, "Leather Chelsea Boot", 17_995),
    product(0, "Wool Slipper", 4_995),
    product(0, "Hiking Boot", 15_995),
    product(0, "Court Classic", 9_995),
    product(0, "Sandal Flex", 3_995),
    product(1, "Merino Crew Tee", 4_995),
    product(1, "Organic Hoodie", 6_995),
    product(1, "Linen Shirt", 5_995),
    product(1, "Rain Shell Jacket", 14_995),
    product(1, "Chino Trousers", 6_995),
    product(1, "Cable Knit Sweater", 8_995),
    product(1, "Running Shorts", 2_995),
    product(1, "Denim Jacket", 9_995),
    product(2, "Commuter Backpack", 8_995),
    product(2, "Weekender Duffel", 11_995),
    product(2, "Leather Tote", 15_995),
    product(2, "Sling Bag", 3_995),
    product(2, "Laptop Sleeve 14in", 2_995),
    product(2, "Packable Daypack", 2_495),
    product(2, "Card Wallet", 3_495),
    product(3, "Wool Beanie", 2_495),
    product(3, "Polarised Sunglasses", 7_995),
    product(3, "Leather Belt", 4_495),
    product(3, "Cashmere Scarf", 8_995),
    product(3, "Canvas Cap", 1_995),
    product(3, "Analog Watch", 14_995),
    product(3, "Sport Socks 3-Pack", 1_495),
    product(4, "Linen Duvet Cover", 11_995),
    product(4, "Ceramic Table Lamp", 7_995),
    product(4, "Wool Throw", 6_995),
    product(4, "Scented Candle", 1_995),
    product(4, "Cotton Towel Set", 4_995),
    product(4, "Plant Pot Trio", 3_495),
    product(4, "Wall Clock", 3_995),
    product(5, "Cast Iron Skillet", 4_495),
    product(5, "Pour-Over Coffee Set", 3_995),
    product(5, "Chef's Knife", 8_995),
    product(5, "Bamboo Cutting Board", 2_495),
    product(5, "Stoneware Mug Set", 2_995),
    product(5, "Glass Food Containers", 3_495),
    product(5, "Burr Coffee Grinder", 12_995),
    product(5, "Enamel Dutch Oven", 10_995),
    product(6, "Daily Face Cream", 2_495),
    product(6, "Vitamin C Serum", 2_995),
    product(6, "Shea Hand Cream", 995),
    product(6, "Hair Repair Mask", 1_995),
    product(6, "Mineral Sunscreen SPF 50", 1_795),
    product(6, "Bamboo Toothbrush 4-Pack", 895),
    product(6, "Beard Oil", 1_495),
    product(7, "Wireless Earbuds", 9_995),
    product(7, "Bluetooth Speaker", 6_995),
    product(7, "65W Fast Charger", 3_995),
    product(7, "E-Reader Cover", 2_495),
    product(7, "Smart Plug 2-Pack", 2_995),
    product(7, "Fitness Tracker", 7_995),
    product(7, "Power Bank 10000mAh", 3_495),
    product(7, "Noise-Cancelling Headphones", 24_995),
];

/// Popularity of the 1st, 2nd, ... product within a category.
const POPULARITY: [u32; 8] = [9, 7, 6, 5, 4, 3, 3, 2];

fn product_id(p: usize) -> String {
    format!("prod-{:03}", p + 1)
}

fn sku(p: usize) -> String {
    format!("SKU-{}", 1001 + p)
}

fn product_path(p: usize) -> String {
    format!("/p/sku-{}", 1001 + p)
}

/// Price in minor units. USD and GBP prices are derived from the euro price,
/// so each product has one stable price per currency.
fn price_cents(p: usize, currency: Currency) -> u64 {
    convert(PRODUCTS[p].eur_cents, currency)
}

/// A euro price in another currency, at fixed rates, ending in .95.
fn convert(eur: u64, currency: Currency) -> u64 {
    let round_to_95 = |cents: u64| ((cents + 50) / 100 * 100).max(100) - 5;
    match currency {
        Currency::Eur => eur,
        Currency::Usd => round_to_95(eur * 108 / 100),
        Currency::Gbp => round_to_95(eur * 86 / 100),
    }
}

/// Money as a JSON number with two decimals (e.g. 129.95).
fn money(cents: u64) -> Value {
    json!(cents as f64 / 100.0)
}

// ---------------------------------------------------------------------------
// Customers

const FIRST_NAMES_EN: [&str; 12] = [
    "Olivia", "Jack", "Amelia", "Harry", "Emily", "Noah", "Grace", "Liam", "Chloe", "Ethan", "Mia",
    "James",
];
const LAST_NAMES_EN: [&str; 12] = [
    "Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "Walker", "Clarke", "Johnson",
    "Miller", "Davis", "Garcia",
];
const FIRST_NAMES_DE: [&str; 10] = [
    "Lena", "Jonas", "Marie", "Felix", "Hannah", "Lukas", "Emma", "Paul", "Sophie", "Leon",
];
const LAST_NAMES_DE: [&str; 10] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Koch",
];
const FIRST_NAMES_JP: [&str; 8] = [
    "Yui", "Haruto", "Aoi", "Sota", "Hina", "Ren", "Yuna", "Minato",
];
const LAST_NAMES_JP: [&str; 8] = [
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
];
const FIRST_NAMES_IN: [&str; 8] = [
    "Aarav", "Ananya", "Vivaan", "Diya", "Aditya", "Isha", "Arjun", "Saanvi",
];
const LAST_NAMES_IN: [&str; 8] = [
    "Sharma", "Patel", "Iyer", "Reddy", "Gupta", "Nair", "Singh", "Das",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Bronze,
    Silver,
    Gold,
}

impl Tier {
    fn as_str(self) -> &'static str {
        match self {
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        }
    }

    /// Better tiers are more engaged; the factors average out near 1.
    fn activity(self) -> f64 {
        match self {
            Tier::Bronze => 0.85,
            Tier::Silver => 1.15,
            Tier::Gold => 1.5,
        }
    }
}

/// How a customer behaves over the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Ordinary activity spread over the whole span.
    Active,
    /// Active only early on: no events in the last 31 days of the span.
    Lapsed,
    /// No events at all in the span.
    Dormant,
    /// Browses anonymously, then signs up at this instant and carries on.
    SignsUp(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Monthly,
    Annual,
}

impl Plan {
    fn as_str(self) -> &'static str {
        match self {
            Plan::Monthly => "monthly",
            Plan::Annual => "annual",
        }
    }

    fn eur_cents(self) -> u64 {
        match self {
            Plan::Monthly => 999,
            Plan::Annual => 8_900,
        }
    }

    fn next_expiry(self, from: NaiveDate) -> NaiveDate {
        let months = match self {
            Plan::Monthly => Months::new(1),
            Plan::Annual => Months::new(12),
        };
        from.checked_add_months(months)
            .unwrap_or(from + Duration::days(30))
    }
}

/// A paid membership, renewed (or not) on its expiry date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscription {
    plan: Plan,
    expires: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Consent {
    email: bool,
    sms: bool,
    whatsapp: bool,
    push: bool,
}

/// A known customer: everything in their profile plus how they behave.
#[derive(Debug, Clone)]
struct Customer {
    index: usize,
    user_id: String,
    zone: Zone,
    first_name: &'static str,
    last_name: &'static str,
    email: String,
    phone: String,
    tier: Tier,
    preferred_channel: &'static str,
    push_token: Option<String>,
    consent: Consent,
    lifecycle: Lifecycle,
    signup_date: NaiveDate,
    subscription: Option<Subscription>,
    /// When the profile's identify call happens: the customer as known at the
    /// start of the span, or just after sign-up for those who sign up in it.
    profile_ts: DateTime<Utc>,
}

impl Customer {
    fn new(opts: &GenerateOptions, index: usize, span: &Span) -> Self {
        let mut rng = stream(opts.seed, STREAM_PROFILE, index as u64);
        let user_id = format!("{}{index:05}", opts.id_prefix);
        let zone = Zone::pick(&mut rng);
        let (firsts, lasts) = zone.names();
        let first_name = pick(&mut rng, firsts);
        let last_name = pick(&mut rng, lasts);
        let domain = if rng.random_bool(0.75) {
            "example.com"
        } else {
            "example.net"
        };
        let email = format!("{user_id}@{domain}");
        // Only numbers reserved for fiction: +1 555 01xx-xxxx in North
        // America, Ofcom's +44 7700 900xxx drama range for everyone else.
        let phone = match zone {
            Zone::NewYork | Zone::LosAngeles => {
                format!("+155501{:05}", rng.random_range(0..100_000))
            }
            _ => format!("+447700900{:03}", rng.random_range(0..1_000)),
        };
        let tier = match pick_weighted(&mut rng, &[60, 28, 12]) {
            0 => Tier::Bronze,
            1 => Tier::Silver,
            _ => Tier::Gold,
        };
        let push_token = rng.random_bool(0.45).then(|| {
            let bytes: [u8; 32] = rng.random();
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let consent = Consent {
            email: rng.random_bool(0.88),
            sms: rng.random_bool(0.45),
            whatsapp: rng.random_bool(0.3),
            push: push_token.is_some() && rng.random_bool(0.85),
        };
        // People mostly prefer a channel they have consented to; when they
        // have consented to none, the default is email.
        let channels = [
            ("email", consent.email, 5),
            ("sms", consent.sms, 2),
            ("whatsapp", consent.whatsapp, 2),
            ("push", consent.push, 3),
        ];
        let weights: Vec<u32> = channels
            .iter()
            .map(|(_, ok, w)| if *ok { *w } else { 0 })
            .collect();
        let preferred_channel = if weights.iter().any(|w| *w > 0) {
            channels[pick_weighted(&mut rng, &weights)].0
        } else {
            "email"
        };

        let r: f64 = rng.random();
        let lifecycle = if r < 0.04 {
            Lifecycle::Dormant
        } else if r < 0.16 && span.days >= 35 {
            Lifecycle::Lapsed
        } else if (0.16..0.24).contains(&r) && span.days >= 2 {
            let length = span.end - span.start;
            let lo = span.start + length / 10;
            let hi = span.start + length * 4 / 5;
            Lifecycle::SignsUp(instant_between(&mut rng, lo, hi))
        } else {
            Lifecycle::Active
        };
        let signup_date = match lifecycle {
            Lifecycle::SignsUp(t) => zone.to_local(t).date(),
            _ => span.start.date_naive() - Duration::days(rng.random_range(14..=1000)),
        };
        let subscription = (!matches!(lifecycle, Lifecycle::SignsUp(_)) && rng.random_bool(0.25))
            .then(|| {
                let plan = if rng.random_bool(0.7) {
                    Plan::Monthly
                } else {
                    Plan::Annual
                };
                let horizon = match plan {
                    Plan::Monthly => 31,
                    Plan::Annual => 365,
                };
                let expires =
                    span.start.date_naive() + Duration::days(rng.random_range(0..horizon));
                Subscription { plan, expires }
            });
        let profile_ts = match lifecycle {
            Lifecycle::SignsUp(t) => t + Duration::seconds(2),
            _ => span.start,
        };

        Self {
            index,
            user_id,
            zone,
            first_name,
            last_name,
            email,
            phone,
            tier,
            preferred_channel,
            push_token,
            consent,
            lifecycle,
            signup_date,
            subscription,
            profile_ts,
        }
    }

    fn write_profile(&self, out: &mut Vec<u8>, message_id: &str) -> Result<()> {
        let mut traits = Map::new();
        traits.insert("email".into(), json!(self.email));
        traits.insert("phone".into(), json!(self.phone));
        traits.insert("first_name".into(), json!(self.first_name));
        traits.insert("last_name".into(), json!(self.last_name));
        traits.insert("timezone".into(), json!(self.zone.iana()));
        traits.insert("country".into(), json!(self.zone.country()));
        traits.insert("loyalty_tier".into(), json!(self.tier.as_str()));
        traits.insert("preferred_channel".into(), json!(self.preferred_channel));
        if let Some(token) = &self.push_token {
            traits.insert("push_token".into(), json!(token));
        }
        traits.insert(
            "consent".into(),
            json!({
                "email": self.consent.email,
                "sms": self.consent.sms,
                "whatsapp": self.consent.whatsapp,
                "push": self.consent.push,
            }),
        );
        traits.insert(
            "signup_date".into(),
            json!(self.signup_date.format("%Y-%m-%d").to_string()),
        );
        if let Some(sub) = &self.subscription {
            traits.insert(
                "subscription_expires_at".into(),
                json!(sub.expires.format("%Y-%m-%d").to_string()),
            );
            traits.insert("subscription_plan".into(), json!(sub.plan.as_str()));
        }
        write_object(
            out,
            &[
                ("type", json!("identify")),
                ("userId", json!(self.user_id)),
                ("messageId", json!(message_id)),
                ("timestamp", json!(format_ts(self.profile_ts))),
                ("traits", Value::Object(traits)),
                ("context", server_context(self.zone)),
            ],
        )
    }
}

// ---------------------------------------------------------------------------
// Journeys

/// Which ids a call carries: browser calls carry the anonymous id (and the
/// user id once the person is known), server-side calls only the user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anon,
    User,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A `page` call with this page name.
    Page(&'static str),
    /// A `track` call with this event name.
    Track(&'static str),
    Identify,
}

/// One generated call, before it gets its `messageId` and is serialized.
struct Ev {
    ts: DateTime<Utc>,
    call: Call,
    who: Who,
    /// `properties`, or `traits` for an identify call.
    body: Value,
    context: Value,
}

impl Ev {
    fn write(self, out: &mut Vec<u8>, actor: &Actor, message_id: &str) -> Result<()> {
        let mut fields: Vec<(&str, Value)> = Vec::with_capacity(8);
        match self.call {
            Call::Page(name) => {
                fields.push(("type", json!("page")));
                fields.push(("name", json!(name)));
            }
            Call::Track(event) => {
                fields.push(("type", json!("track")));
                fields.push(("event", json!(event)));
            }
            Call::Identify => fields.push(("type", json!("identify"))),
        }
        if let (Who::User | Who::Both, Some(user_id)) = (self.who, &actor.user_id) {
            fields.push(("userId", json!(user_id)));
        }
        if matches!(self.who, Who::Anon | Who::Both) {
            fields.push(("anonymousId", json!(actor.anon_id)));
        }
        fields.push(("messageId", json!(message_id)));
        fields.push(("timestamp", json!(format_ts(self.ts))));
        let body_key = if self.call == Call::Identify {
            "traits"
        } else {
            "properties"
        };
        fields.push((body_key, self.body));
        fields.push(("context", self.context));
        write_object(out, &fields)
    }
}

const SHOP_URL: &str = "https://shop.example";

const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
];

/// Documentation address ranges (RFC 5737): never a real client.
const IP_PREFIXES: [&str; 3] = ["203.0.113", "198.51.100", "192.0.2"];

/// The person behind a journey, as their browser and the shop's servers see
/// them.
struct Actor {
    /// Short label used in cart, order and ticket ids ("00017", "v00003").
    label: String,
    user_id: Option<String>,
    anon_id: String,
    zone: Zone,
    user_agent: &'static str,
    ip: String,
    /// Hours this person's day runs early (negative) or late (positive).
    hour_shift: i64,
    /// Two categories this person mostly shops in.
    favourites: [usize; 2],
}

impl Actor {
    fn new(rng: &mut StdRng, label: String, user_id: Option<String>, zone: Zone) -> Self {
        let anon_id = uuid(rng);
        let user_agent = pick(rng, &USER_AGENTS);
        let ip = format!("{}.{}", pick(rng, &IP_PREFIXES), rng.random_range(1..=254));
        let hour_shift = rng.random_range(-2..=2);
        let first = rng.random_range(0..CATEGORIES.len());
        let second = (first + rng.random_range(1..CATEGORIES.len())) % CATEGORIES.len();
        Self {
            label,
            user_id,
            anon_id,
            zone,
            user_agent,
            ip,
            hour_shift,
            favourites: [first, second],
        }
    }
}

fn server_context(zone: Zone) -> Value {
    json!({
        "library": {"name": "analytics-node", "version": "2.1.2"},
        "timezone": zone.iana(),
    })
}

/// A cart, kept across visits so an abandoned one can be picked up later.
struct Cart {
    id: String,
    items: Vec<(usize, u64)>,
    order_id: Option<String>,
}

/// Builds one person's calls, visit by visit.
struct Journey {
    rng: StdRng,
    actor: Actor,
    currency: Currency,
    events: Vec<Ev>,
    /// Time of the latest call in the current visit.
    clock: DateTime<Utc>,
    visit_start: DateTime<Utc>,
    pages_in_visit: u32,
    /// Path of the page the browser is on, reported in `context.page`.
    page: String,
    /// Ids on browser calls: anonymous until the person signs up or logs in.
    who: Who,
    /// Earlier visits, so new ones do not overlap them.
    visits: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    carts: u32,
    orders: u32,
    tickets: u32,
    /// The product this person keeps looking at but never buys.
    never_buys: Option<usize>,
    purchases: Vec<DateTime<Utc>>,
}

impl Journey {
    fn new(rng: StdRng, actor: Actor, who: Who) -> Self {
        Self {
            rng,
            currency: actor.zone.currency(),
            actor,
            events: Vec::new(),
            clock: DateTime::UNIX_EPOCH,
            visit_start: DateTime::UNIX_EPOCH,
            pages_in_visit: 0,
            page: "/".into(),
            who,
            visits: Vec::new(),
            carts: 0,
            orders: 0,
            tickets: 0,
            never_buys: None,
            purchases: Vec::new(),
        }
    }

    // -- time --------------------------------------------------------------

    /// A start time for a new visit in `[lo, hi)`: a day in the window, an
    /// hour from the person's daily rhythm in their own zone, and (if it can)
    /// not on top of another visit.
    fn visit_time(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> DateTime<Utc> {
        let gap = Duration::minutes(30);
        let mut fallback = lo;
        for attempt in 0..24 {
            let anchor = instant_between(&mut self.rng, lo, hi);
            fallback = anchor;
            let day = self.actor.zone.to_local(anchor).date();
            let hour = (pick_weighted(&mut self.rng, &HOUR_WEIGHTS) as i64 + self.actor.hour_shift)
                .rem_euclid(24);
            let local = day.and_time(NaiveTime::MIN)
                + Duration::hours(hour)
                + Duration::milliseconds(self.rng.random_range(0..3_600_000));
            let t = self.actor.zone.to_utc(local);
            if t < lo || t >= hi {
                continue;
            }
            let overlaps = self
                .visits
                .iter()
                .any(|(s, e)| t + gap > *s && t < *e + gap);
            if overlaps && attempt < 16 {
                continue;
            }
            return t;
        }
        // A window too narrow for the daily rhythm: any instant in it.
        fallback
    }

    fn begin(&mut self, t: DateTime<Utc>) {
        self.clock = t;
        self.visit_start = t;
        self.pages_in_visit = 0;
    }

    fn end(&mut self) {
        self.visits.push((self.visit_start, self.clock));
    }

    // -- calls -------------------------------------------------------------

    fn browser_context(&self) -> Value {
        let path = &self.page;
        json!({
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "ip": self.actor.ip,
            "userAgent": self.actor.user_agent,
            "timezone": self.actor.zone.iana(),
            "locale": self.actor.zone.locale(),
            "page": {"path": path, "url": format!("{SHOP_URL}{path}")},
        })
    }

    /// A `page` call; after the first page of a visit, the person first
    /// spends a while reading the previous one.
    fn page(&mut self, name: &'static str, path: String, title: String) {
        if self.pages_in_visit > 0 {
            self.clock += Duration::milliseconds(self.rng.random_range(8_000..100_000));
        }
        self.pages_in_visit += 1;
        let body = json!({"path": path, "url": format!("{SHOP_URL}{path}"), "title": title});
        self.page = path;
        self.events.push(Ev {
            ts: self.clock,
            call: Call::Page(name),
            who: self.who,
            body,
            context: self.browser_context(),
        });
    }

    /// A `track` call from the browser, a moment after the page loaded or the
    /// button was clicked.
    fn track(&mut self, event: &'static str, properties: Value) {
        self.clock += Duration::milliseconds(self.rng.random_range(150..1_200));
        self.events.push(Ev {
            ts: self.clock,
            call: Call::Track(event),
            who: self.who,
            body: properties,
            context: self.browser_context(),
        });
    }

    /// A `track` call from the shop's servers (billing, support desk, SMS
    /// gateway): user id only, no browser context.
    fn server_track(&mut self, ts: DateTime<Utc>, event: &'static str, properties: Value) {
        self.events.push(Ev {
            ts,
            call: Call::Track(event),
            who: Who::User,
            body: properties,
            context: server_context(self.actor.zone),
        });
    }

    // -- catalog -----------------------------------------------------------

    fn pick_category(&mut self) -> usize {
        if self.rng.random_bool(0.7) {
            self.actor.favourites[self.rng.random_range(0..2)]
        } else {
            self.rng.random_range(0..CATEGORIES.len())
        }
    }

    fn pick_product(&mut self, category: usize) -> usize {
        let members: Vec<usize> = (0..PRODUCTS.len())
            .filter(|p| PRODUCTS[*p].category == category)
            .collect();
        members[pick_weighted(&mut self.rng, &POPULARITY[..members.len()])]
    }

    fn product_properties(&self, p: usize) -> Map<String, Value> {
        let mut props = Map::new();
        props.insert("product_id".into(), json!(product_id(p)));
        props.insert("sku".into(), json!(sku(p)));
        props.insert("category".into(), json!(CATEGORIES[PRODUCTS[p].category].1));
        props.insert("name".into(), json!(PRODUCTS[p].name));
        props.insert("price".into(), money(price_cents(p, self.currency)));
        props.insert("currency".into(), json!(self.currency.code()));
        props
    }

    // -- pieces of a visit -------------------------------------------------

    fn view_home(&mut self) {
        self.page("Home", "/".into(), "Home".into());
    }

    fn view_category(&mut self, c: usize) {
        let (slug, title) = CATEGORIES[c];
        self.page("Category", format!("/c/{slug}"), title.into());
    }

    fn view_product(&mut self, p: usize) {
        self.page("Product", product_path(p), PRODUCTS[p].name.into());
        let props = self.product_properties(p);
        self.track("Product Viewed", Value::Object(props));
    }

    fn add_to_cart(&mut self, cart: &mut Cart, p: usize) {
        let quantity = if self.rng.random_bool(0.8) { 1 } else { 2 };
        cart.items.push((p, quantity));
        let mut props = self.product_properties(p);
        props.insert("quantity".into(), json!(quantity));
        props.insert("cart_id".into(), json!(cart.id));
        self.track("Product Added", Value::Object(props));
    }

    fn new_cart(&mut self) -> Cart {
        self.carts += 1;
        Cart {
            id: format!("cart-{}-{}", self.actor.label, self.carts),
            items: Vec::new(),
            order_id: None,
        }
    }

    /// Checkout Started and, if `complete`, Order Completed for the cart.
    fn checkout(&mut self, cart: &mut Cart, complete: bool) {
        self.page("Checkout", "/checkout".into(), "Checkout".into());
        let order_id = match &cart.order_id {
            Some(id) => id.clone(),
            None => {
                self.orders += 1;
                let id = format!("ord-{}-{}", self.actor.label, self.orders);
                cart.order_id = Some(id.clone());
                id
            }
        };
        let products: Vec<Value> = cart
            .items
            .iter()
            .map(|(p, quantity)| {
                json!({
                    "product_id": product_id(*p),
                    "sku": sku(*p),
                    "name": PRODUCTS[*p].name,
                    "category": CATEGORIES[PRODUCTS[*p].category].1,
                    "price": money(price_cents(*p, self.currency)),
                    "quantity": quantity,
                })
            })
            .collect();
        let revenue: u64 = cart
            .items
            .iter()
            .map(|(p, quantity)| price_cents(*p, self.currency) * quantity)
            .sum();
        let currency = self.currency.code();
        self.track(
            "Checkout Started",
            json!({
                "order_id": order_id,
                "revenue": money(revenue),
                "currency": currency,
                "products": products,
            }),
        );
        if !complete {
            return;
        }
        // Free shipping from 50 in any currency.
        let shipping = if revenue >= 5_000 { 0 } else { 495 };
        self.page(
            "Order Confirmation",
            "/checkout/confirmation".into(),
            "Thank you".into(),
        );
        self.track(
            "Order Completed",
            json!({
                "order_id": order_id,
                "total": money(revenue + shipping),
                "revenue": money(revenue),
                "shipping": money(shipping),
                "tax": money(0),
                "currency": currency,
                "products": products,
            }),
        );
        self.purchases.push(self.clock);
    }

    // -- visits ------------------------------------------------------------

    /// One visit of a random kind somewhere in `[lo, hi)`. People without an
    /// account (`can_buy == false`) browse and fill carts but never check out.
    fn random_visit(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>, can_buy: bool) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        let mut comeback = None;
        match pick_weighted(&mut self.rng, &[42, 10, 33, 5]) {
            0 => self.browse(),
            1 => self.search(),
            2 => comeback = self.shop(can_buy),
            _ if can_buy => self.account(),
            _ => self.browse(),
        }
        self.end();
        if let Some((mut cart, at)) = comeback {
            self.begin(at);
            self.page("Cart", "/cart".into(), "Your cart".into());
            self.checkout(&mut cart, true);
            self.end();
        }
    }

    fn browse(&mut self) {
        if self.rng.random_bool(0.6) {
            self.view_home();
        }
        let c = self.pick_category();
        self.view_category(c);
        for _ in 0..self.rng.random_range(1..=3) {
            let p = if self.rng.random_bool(0.8) {
                self.pick_product(c)
            } else {
                let other = self.pick_category();
                self.pick_product(other)
            };
            self.view_product(p);
        }
    }

    fn search(&mut self) {
        let c = self.pick_category();
        self.page("Search", "/search".into(), "Search".into());
        let p = self.pick_product(c);
        self.view_product(p);
        if self.rng.random_bool(0.4) {
            let p = self.pick_product(c);
            self.view_product(p);
        }
    }

    fn account(&mut self) {
        self.page("Account", "/account".into(), "Your account".into());
        if self.rng.random_bool(0.5) {
            self.page(
                "Order History",
                "/account/orders".into(),
                "Your orders".into(),
            );
        }
    }

    /// Views, adds to cart, and then buys or walks away. Returns the cart and
    /// the time of a later visit that completes it, when the person comes
    /// back: either within 48 hours, or days later (still an abandoned cart
    /// by a 48-hour rule).
    fn shop(&mut self, can_buy: bool) -> Option<(Cart, DateTime<Utc>)> {
        if self.rng.random_bool(0.5) {
            self.view_home();
        }
        let c = self.pick_category();
        self.view_category(c);
        let mut p = self.pick_product(c);
        for _ in 0..self.rng.random_range(0..=1) {
            self.view_product(p);
            p = self.pick_product(c);
        }
        if Some(p) == self.never_buys {
            // This person never puts that one in a cart; they pick another.
            p = (p + 1) % PRODUCTS.len();
        }
        self.view_product(p);
        let mut cart = self.new_cart();
        self.add_to_cart(&mut cart, p);
        if self.rng.random_bool(0.3) {
            let other = self.pick_category();
            let q = self.pick_product(other);
            if q != p && Some(q) != self.never_buys {
                self.view_product(q);
                self.add_to_cart(&mut cart, q);
            }
        }
        self.page("Cart", "/cart".into(), "Your cart".into());
        if !can_buy {
            return None;
        }
        let outcome: f64 = self.rng.random();
        if outcome < 0.42 {
            self.checkout(&mut cart, true);
            return None;
        }
        if outcome < 0.57 {
            // Gave up at the payment step.
            self.checkout(&mut cart, false);
        }
        if !self.rng.random_bool(0.35) {
            return None;
        }
        let delay = if self.rng.random_bool(0.5) {
            Duration::minutes(self.rng.random_range(120..40 * 60))
        } else {
            Duration::minutes(self.rng.random_range(72 * 60..192 * 60))
        };
        Some((cart, self.clock + delay))
    }

    // -- storylines --------------------------------------------------------

    /// Anonymous visits in the days before `t`, then a sign-up at `t`; from
    /// then on browser calls carry both ids.
    fn sign_up(&mut self, t: DateTime<Utc>, earliest: DateTime<Utc>) {
        self.who = Who::Anon;
        let lo = earliest.max(t - Duration::days(6));
        let hi = t - Duration::hours(3);
        if hi > lo {
            for _ in 0..self.rng.random_range(1..=3) {
                self.random_visit(lo, hi, false);
            }
        }
        let arrival = t - Duration::seconds(self.rng.random_range(200..400));
        self.begin(arrival);
        self.view_home();
        // The sign-up page loads before `t`, whatever the reading time.
        self.clock = t - Duration::seconds(110);
        self.page("Sign Up", "/account/signup".into(), "Create account".into());
        self.clock = t;
        self.who = Who::Both;
        let method = pick(&mut self.rng, &["email", "google", "apple"]);
        self.track("Signed Up", json!({ "method": method }));
        self.end();
    }

    /// Three to five visits within six days that all look at the same
    /// product, which this person then never buys.
    fn repeated_views(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let c = self.actor.favourites[0];
        let p = self.pick_product(c);
        self.never_buys = Some(p);
        let block = Duration::days(6).min(hi - lo);
        let first = instant_between(&mut self.rng, lo, hi - block);
        let n = self.rng.random_range(3..=5);
        for k in 0..n {
            let from = first + block * k / n;
            let to = first + block * (k + 1) / n;
            let t = self.visit_time(from, to);
            self.begin(t);
            if self.rng.random_bool(0.4) {
                self.view_home();
            }
            self.view_product(p);
            if self.rng.random_bool(0.4) {
                let other = self.pick_product(c);
                if other != p {
                    self.view_product(other);
                }
            }
            self.end();
        }
    }

    /// A ticket opened on the help page, usually closed by the support desk
    /// between 45 minutes and five days later.
    fn support_ticket(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page("Help", "/help".into(), "Help centre".into());
        self.tickets += 1;
        let ticket_id = format!("tkt-{}-{}", self.actor.label, self.tickets);
        let topic = pick(
            &mut self.rng,
            &["delivery", "returns", "payment", "product", "account"],
        );
        let priority = if self.rng.random_bool(0.2) {
            "high"
        } else {
            "normal"
        };
        self.track(
            "Support Ticket Opened",
            json!({"ticket_id": ticket_id, "category": topic, "priority": priority, "channel": "web"}),
        );
        self.end();
        if self.rng.random_bool(0.85) {
            let closed = self.clock + Duration::minutes(self.rng.random_range(45..5 * 24 * 60));
            let resolution = pick(
                &mut self.rng,
                &["answered", "refunded", "replaced", "no_action"],
            );
            self.server_track(
                closed,
                "Support Ticket Closed",
                json!({"ticket_id": ticket_id, "category": topic, "resolution": resolution}),
            );
        }
    }

    fn subscription_properties(&self, plan: Plan, expires: NaiveDate) -> Value {
        json!({
            "subscription_id": format!("sub-{}", self.actor.label),
            "plan": plan.as_str(),
            "amount": money(convert(plan.eur_cents(), self.currency)),
            "currency": self.currency.code(),
            "expires_at": expires.format("%Y-%m-%d").to_string(),
        })
    }

    /// Joins the membership on the website.
    fn subscribe(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page("Membership", "/membership".into(), "Membership".into());
        let plan = if self.rng.random_bool(0.7) {
            Plan::Monthly
        } else {
            Plan::Annual
        };
        let expires = plan.next_expiry(self.actor.zone.to_local(t).date());
        let props = self.subscription_properties(plan, expires);
        self.track("Subscription Started", props);
        self.end();
    }

    /// The billing job renews the membership early in the morning of each
    /// expiry date before `hi`, until the person lets it lapse.
    fn renewals(&mut self, sub: Subscription, hi: DateTime<Utc>) {
        let mut expires = sub.expires;
        loop {
            let local = expires.and_time(NaiveTime::MIN)
                + Duration::minutes(self.rng.random_range(180..360));
            let t = self.actor.zone.to_utc(local);
            if t >= hi || !self.rng.random_bool(0.7) {
                return;
            }
            expires = sub.plan.next_expiry(expires);
            let props = self.subscription_properties(sub.plan, expires);
            self.server_track(t, "Subscription Renewed", props);
        }
    }

    /// Unsubscribes from marketing email through the preference page.
    fn email_unsubscribe(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page(
            "Email Preferences",
            "/account/email-preferences".into(),
            "Email preferences".into(),
        );
        let date = self.actor.zone.to_local(t).date().format("%Y%m%d");
        let props = json!({
            "campaign_id": format!("cmp-{date}"),
            "campaign_name": "Weekly picks",
            "email_id": format!("eml-{date}-{}", self.actor.label),
            "list": "newsletter",
        });
        self.track("Email Unsubscribed", props);
        self.end();
    }

    /// Replies STOP to a text message; the SMS gateway reports it.
    fn sms_opt_out(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.server_track(
            t,
            "SMS Opted Out",
            json!({"channel": "sms", "keyword": "STOP"}),
        );
    }

    /// A loyalty tier change, sent as an identify call (tier is a trait, not
    /// an event), usually right after a purchase that earned it.
    fn tier_change(&mut self, from: Tier, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let to = match from {
            Tier::Bronze => Tier::Silver,
            Tier::Silver if self.rng.random_bool(0.75) => Tier::Gold,
            Tier::Silver => Tier::Bronze,
            Tier::Gold => Tier::Silver,
        };
        let ts = if !self.purchases.is_empty() && self.rng.random_bool(0.7) {
            pick(&mut self.rng, &self.purchases) + Duration::minutes(self.rng.random_range(1..30))
        } else {
            instant_between(&mut self.rng, lo, hi)
        };
        self.events.push(Ev {
            ts,
            call: Call::Identify,
            who: Who::User,
            body: json!({"loyalty_tier": to.as_str()}),
            context: server_context(self.actor.zone),
        });
    }
}

/// Calls in an average visit of a customer who can buy (measured: carts,
/// checkouts and come-back visits included) and of an anonymous visitor. Used
/// to turn an event budget into a number of visits.
const CALLS_PER_VISIT: f64 = 6.8;
const CALLS_PER_ANONYMOUS_VISIT: f64 = 6.0;

/// How many visits spend `budget` calls on average: the fraction is rounded
/// up or down at random, so small budgets still add up to the right mean.
fn visits_for(rng: &mut StdRng, budget: f64, calls_per_visit: f64) -> usize {
    let visits = (budget.max(0.0) / calls_per_visit + rng.random::<f64>()).floor();
    // Bounds the work for absurd means; 10,000 visits is far beyond a span.
    visits.min(10_000.0) as usize
}

/// A known customer's calls over the span, sorted by time.
fn customer_journey(c: &Customer, opts: &GenerateOptions, span: &Span) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_JOURNEY, c.index as u64);
    let label = format!("{:05}", c.index);
    let actor = Actor::new(&mut rng, label, Some(c.user_id.clone()), c.zone);
    let mut j = Journey::new(rng, actor, Who::Both);
    if c.lifecycle == Lifecycle::Dormant || opts.events_per_customer <= 0.0 {
        return (j.actor, Vec::new());
    }

    // This customer's share of calls: skewed around the mean. Unless the mean
    // is tiny, every customer who is not dormant gets at least one visit's
    // worth (lapsed ones too: they are defined by their early activity), so
    // the customers without any activity are the dormant ones.
    let mean = opts.events_per_customer * c.tier.activity();
    let at_least = if mean > CALLS_PER_VISIT {
        CALLS_PER_VISIT
    } else {
        0.0
    };
    let mut spread = (mean - at_least).max(0.0);
    if c.lifecycle == Lifecycle::Lapsed {
        spread *= 0.5;
    }
    let budget = at_least + heavy_tailed(&mut j.rng, spread);

    // The window this customer is active in.
    let (lo, hi) = match c.lifecycle {
        // (Dormant customers returned above.)
        Lifecycle::Active | Lifecycle::Dormant => (span.start, span.end),
        // Customer::new only picks Lapsed for spans of 35+ days, so this
        // window is at least four days long.
        Lifecycle::Lapsed => (span.start, span.end - Duration::days(31)),
        Lifecycle::SignsUp(t) => {
            j.sign_up(t, span.start);
            (t + Duration::minutes(2), span.end)
        }
    };

    // Storylines go first, so ordinary shopping later knows which product
    // this customer never buys. Customers with almost no budget get none.
    if budget >= 1.0 {
        // Three to five visits of two to four calls each.
        if budget >= 12.0 && j.rng.random_bool(0.25) {
            j.repeated_views(lo, hi);
        }
        if j.rng.random_bool(0.08) {
            j.support_ticket(lo, hi);
        }
        match c.subscription {
            Some(sub) if c.lifecycle == Lifecycle::Active => j.renewals(sub, hi),
            Some(_) => {}
            None => {
                if j.rng.random_bool(0.04) {
                    j.subscribe(lo, hi);
                }
            }
        }
        if c.consent.email && j.rng.random_bool(0.025) {
            j.email_unsubscribe(lo, hi);
        }
        if c.consent.sms && j.rng.random_bool(0.025) {
            j.sms_opt_out(lo, hi);
        }
    }

    // Ordinary visits spend what is left of the budget.
    let left = budget - j.events.len() as f64;
    let min_visits = usize::from(at_least > 0.0);
    for _ in 0..visits_for(&mut j.rng, left, CALLS_PER_VISIT).max(min_visits) {
        j.random_visit(lo, hi, true);
    }

    // Lapsed customers stay silent at the end, so they get no tier change.
    if budget >= 1.0 && c.lifecycle != Lifecycle::Lapsed && j.rng.random_bool(0.055) {
        j.tier_change(c.tier, lo, hi);
    }

    let signed_up_at = match c.lifecycle {
        Lifecycle::SignsUp(t) => Some(t),
        _ => None,
    };
    let mut events = j.events;
    // Follow-ups that would land after the window (a late come-back visit, a
    // ticket closed after the span) are simply not observed.
    events.retain(|e| {
        e.ts >= span.start
            && e.ts < hi
            && !signed_up_at.is_some_and(|t| e.who == Who::Anon && e.ts >= t)
    });
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}

/// Shortest span for the response simulator: a quiet first day, then carts,
/// each followed by its whole 7-day attribution window plus a replay batch.
const LIFT_MIN_DAYS: u32 = 10;

/// The response simulator's journey (see [`Lift`]): one visit that leaves a
/// cart, then, with the arm's probability, a visit that buys it after the
/// message.
fn experiment_journey(
    c: &Customer,
    opts: &GenerateOptions,
    span: &Span,
    lift: &Lift,
) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_EXPERIMENT, c.index as u64);
    let label = format!("{:05}", c.index);
    let actor = Actor::new(&mut rng, label, Some(c.user_id.clone()), c.zone);
    let mut j = Journey::new(rng, actor, Who::Both);
    // Carts from the second day (profiles arrive first) until 8 days and
    // the delay before the end, so every window closes inside the span.
    let lo = span.start + Duration::days(1);
    let hi = span.end - Duration::days(8) - lift.max_delay();
    let t = j.visit_time(lo, hi.max(lo + Duration::hours(1)));
    j.begin(t);
    let category = j.pick_category();
    j.view_category(category);
    let p = j.pick_product(category);
    j.view_product(p);
    let mut cart = j.new_cart();
    j.add_to_cart(&mut cart, p);
    j.page("Cart", "/cart".into(), "Your cart".into());
    j.end();

    // The same function, inputs and salt the policy stage uses.
    let assigned = lift.design.assign(&c.user_id);
    let (arm, variant) = (assigned.arm, assigned.variant.as_deref());
    if j.rng.random_bool(lift.rate(arm, variant)) {
        let qualified = j.clock + lift.delay(variant);
        let message = match arm {
            kairos_experiments::Arm::Scheduled => qualified + Duration::days(1),
            _ => qualified,
        };
        let lag = Duration::hours(6) + Duration::minutes(j.rng.random_range(0..3 * 24 * 60));
        j.begin(message + lag);
        j.page("Cart", "/cart".into(), "Your cart".into());
        j.checkout(&mut cart, true);
        j.end();
    }
    let mut events = j.events;
    events.retain(|e| e.ts < span.end);
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}

/// An anonymous-only visitor: browses and fills carts, never signs up or
/// buys.
fn visitor_journey(opts: &GenerateOptions, index: usize, span: &Span) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_VISITOR, index as u64);
    let zone = Zone::pick(&mut rng);
    let actor = Actor::new(&mut rng, format!("v{index:05}"), None, zone);
    let mut j = Journey::new(rng, actor, Who::Anon);
    if opts.events_per_customer <= 0.0 {
        return (j.actor, Vec::new());
    }
    let budget = heavy_tailed(&mut j.rng, opts.events_per_customer * 0.35);
    // Everyone counted as a visitor visits at least once.
    let visits = visits_for(&mut j.rng, budget, CALLS_PER_ANONYMOUS_VISIT).max(1);
    for _ in 0..visits {
        j.random_visit(span.start, span.end, false);
    }
    let mut events = j.events;
    events.retain(|e| e.ts >= span.start && e.ts < span.end);
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}

// ---------------------------------------------------------------------------
// JSON output

fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Writes a JSON object with its top-level keys in the given order and the
/// keys of nested objects sorted, so the bytes never depend on whether
/// serde_json's `preserve_order` feature is switched on somewhere in the build.
fn write_object(out: &mut Vec<u8>, fields: &[(&str, Value)]) -> Result<()> {
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        write_value(out, value)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(out, value)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
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
    fn utc_offsets_follow_the_2026_dst_changes() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("valid test instant")
                .with_timezone(&Utc)
        };
        let cases = [
            (Zone::London, "2026-10-25T00:59:59Z", 60),
            (Zone::London, "2026-10-25T01:00:00Z", 0),
            (Zone::London, "2026-03-29T01:00:00Z", 60),
            (Zone::Berlin, "2026-09-15T12:00:00Z", 120),
            (Zone::Berlin, "2026-12-15T12:00:00Z", 60),
            (Zone::NewYork, "2026-11-01T05:59:59Z", -240),
            (Zone::NewYork, "2026-11-01T06:00:00Z", -300),
            (Zone::NewYork, "2026-03-08T07:00:00Z", -240),
            (Zone::LosAngeles, "2026-09-15T12:00:00Z", -420),
            (Zone::LosAngeles, "2026-11-01T09:00:00Z", -480),
            (Zone::Sydney, "2026-10-03T15:59:59Z", 600),
            (Zone::Sydney, "2026-10-03T16:00:00Z", 660),
            (Zone::Sydney, "2026-04-04T15:59:59Z", 660),
            (Zone::Sydney, "2026-04-04T16:00:00Z", 600),
            (Zone::Tokyo, "2026-09-15T12:00:00Z", 540),
            (Zone::Kolkata, "2026-09-15T12:00:00Z", 330),
        ];
        for (zone, instant, minutes) in cases {
            assert_eq!(
                zone.offset_minutes(at(instant)),
                minutes,
                "{zone:?} {instant}"
            );
        }
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
        // data-samples/ holds what `kairos generate --sample --out
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
            "data-samples/ is stale: run `kairos generate --sample --out data-samples`"
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
