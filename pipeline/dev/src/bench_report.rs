//! `kairos-dev bench-report`: an experiment report over millions of recipients.
//!
//! `--build` writes a synthetic lake straight from Arrow batches (not through
//! ingest, so 10M recipients take a minute, not an hour): one experiment,
//! `cart_abandonment`, split 10/20/70 (or `--split`, e.g. `50/0` for two
//! even arms) by the real assignment function, over
//! four weeks. Each recipient has the three browse events of the cart they
//! abandoned; a purchase in the 7 days after assignment with probability
//! 10% × (1 + lift: 0, +8%, +20% by arm); a purchase in the week before with
//! 15% (the CUPED covariate); one in the week after the window with 5%.
//! Revenue is exponential with mean 80 plus 20, in whole cents. `sends/` has
//! one decision per recipient: a ghost in holdout, else `send` (95%) or
//! `suppressed`. Every table has the publisher's layout and schema:
//! `<table>/date=…/hour=…/*.parquet`, sorted by customer, zstd, the events'
//! bloom filters.
//!
//! Then it times `experiment_report` (the function behind `kairos report`
//! and the API): the first run in the process (cold: no state kept between
//! reports, though the OS page cache may hold the files) and `--runs` more
//! (warm), and writes the per-arm sums to `DIR/kairos-sums.json`, which
//! `benches/report_duckdb.py` checks its own answer against.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::array::{TimestampMicrosecondArray, new_null_array};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use kairos_experiments::{Arm, Design};
use kairos_report::metrics::{self, Source};
use kairos_report::outcomes::{self, OutcomeKey};
use kairos_storage::tables;

const RULE: &str = "cart_abandonment";
const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;
/// 2026-09-01T00:00:00Z.
const T0: i64 = 1_788_220_800_000_000;
/// Days over which customers qualify.
const ASSIGN_DAYS: i64 = 28;
/// Holdout conversion rate in the window; the arms' lifts over it.
const BASE_RATE: f64 = 0.10;
const LIFT_SCHEDULED: f64 = 0.08;
const LIFT_TRIGGERED: f64 = 0.20;

/// `kairos-dev bench-report` flags.
#[derive(clap::Args)]
pub struct BenchReportArgs {
    /// Recipients (assigned customers) in the synthetic lake.
    #[arg(long, default_value_t = 10_000_000)]
    pub recipients: u32,
    /// The lake (a local directory; keep it out of the repository).
    #[arg(long)]
    pub data: PathBuf,
    /// Write the lake first (replacing its tables); without it the lake
    /// must exist.
    #[arg(long)]
    pub build: bool,
    /// Warm runs timed after the first.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Holdout and scheduled percent (triggered has the rest): `10/20`, or
    /// `50/0` for two even arms, the shape whose statistics once hung.
    /// Give the same split when building and when timing.
    #[arg(long, default_value = "10/20", value_parser = parse_split)]
    pub split: (u8, u8),
}

fn parse_split(s: &str) -> Result<(u8, u8), String> {
    let (h, sch) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: write HOLDOUT/SCHEDULED percent, e.g. 10/20 or 50/0"))?;
    let pct = |v: &str| v.trim().parse::<u8>().map_err(|e| format!("{v:?}: {e}"));
    let (h, sch) = (pct(h)?, pct(sch)?);
    if u16::from(h) + u16::from(sch) > 100 {
        return Err(format!("{s:?}: holdout + scheduled exceed 100%"));
    }
    Ok((h, sch))
}

/// Event kinds of the synthetic clickstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ProductView,
    Page,
    CartAdd,
    Purchase,
}

impl Kind {
    fn names(self) -> (&'static str, &'static str, &'static str) {
        // (call, event as sent, event_type)
        match self {
            Kind::ProductView => ("track", "Product Viewed", "product_view"),
            Kind::Page => ("page", "Cart", "page_view"),
            Kind::CartAdd => ("track", "Product Added", "cart_add"),
            Kind::Purchase => ("track", "Order Completed", "purchase"),
        }
    }
}

/// One event, compact: 33M of them fit in under a gigabyte.
#[derive(Clone, Copy)]
struct Ev {
    t: i64,
    customer: u32,
    /// Revenue in cents (purchases).
    cents: u32,
    kind: Kind,
}

/// One recipient.
#[derive(Clone, Copy)]
struct Recipient {
    at: i64,
    customer: u32,
    arm: Arm,
}

fn customer_id(i: u32) -> String {
    format!("c{i:08}")
}

/// Runs the benchmark.
pub async fn bench_report(args: BenchReportArgs) -> anyhow::Result<()> {
    if args.build {
        let started = Instant::now();
        let (recipients, events) = build(&args.data, args.recipients, args.split)?;
        println!(
            "built {recipients} recipients and {events} events in {:.1?} under {}",
            started.elapsed(),
            args.data.display()
        );
    }
    anyhow::ensure!(
        args.data.join("assignments").is_dir(),
        "{} has no assignments/: run with --build first",
        args.data.display()
    );
    let root =
        kairos_storage::DataRoot::open(args.data.to_str().context("data path is not UTF-8")?)?;
    let (holdout, scheduled) = args.split;
    let designs = [kairos_report::report::RuleDesign {
        rule: RULE.into(),
        holdout,
        scheduled,
        triggered: 100 - holdout - scheduled,
        variants: Vec::new(),
        transactional: false,
    }];
    let options = kairos_report::ReportOptions::default();
    let key = OutcomeKey::of(&options);

    // The outcomes from scratch, as the first report on a lake builds them.
    let kept = args.data.join(outcomes::DIR);
    if kept.exists() {
        std::fs::remove_dir_all(&kept)?;
    }
    let ((_, built), _) = timed(
        "outcomes built from scratch",
        outcomes::refresh(&root, &key),
    )
    .await?;
    println!(
        "  {} days, {} recipients",
        built.days, built.recipients_recomputed
    );
    timed("refresh with nothing new", outcomes::refresh(&root, &key)).await?;

    let mut times = Vec::new();
    let mut last = None;
    for run in 0..=args.runs {
        let started = Instant::now();
        let r = kairos_report::experiment_report(&root, &designs, RULE, &options).await?;
        let took = started.elapsed();
        println!(
            "run {run} ({}): {took:.3?}",
            if run == 0 { "cold" } else { "warm" }
        );
        times.push(took);
        last = Some(r);
    }
    let r = last.context("no run")?;
    let warm = median(&times[1..]);
    println!(
        "report over {} recipients from the outcomes: cold {:.3?}, warm median {:.3?} of {}",
        r.recipients,
        times[0],
        warm,
        times.len() - 1
    );

    // The same sums straight from the raw tables, which must agree.
    let lake = kairos_report::Lake::open(&root)?;
    let (raw, raw_took) = timed(
        "the raw-table query (no outcomes)",
        metrics::arm_sums(&lake, &options, Some(RULE), Source::Raw),
    )
    .await?;
    for a in &r.arms {
        let b = raw
            .0
            .iter()
            .find(|b| b.arm == a.name)
            .with_context(|| format!("the raw query has no arm {}", a.name))?;
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs());
        anyhow::ensure!(
            a.recipients == b.recipients
                && a.conversions == b.conversions
                && a.messages_sent == b.messages
                && close(a.stats.revenue_sum, b.revenue_sum)
                && close(a.stats.revenue_sum_squares, b.revenue_sum_squares),
            "arm {}: the outcomes and the raw tables disagree: {a:?} vs {b:?}",
            a.name
        );
    }
    println!("  same sums in every arm");
    timed(
        "the program view (pooled lifts, incremental revenue, global control)",
        kairos_report::program::program(&root, &designs, &options, 0.0),
    )
    .await?;

    let json = serde_json::to_value(&r)?;
    let arms: Vec<serde_json::Value> = json["arms"]
        .as_array()
        .context("report has no arms")?
        .iter()
        .map(|a| {
            serde_json::json!({
                "arm": a["name"],
                "recipients": a["recipients"],
                "conversions": a["conversions"],
                "revenue_sum": a["stats"]["revenue_sum"],
                "revenue_sum_squares": a["stats"]["revenue_sum_squares"],
                "messages": a["messages_sent"],
                "covariate_sum": a["stats"]["covariate_sum"],
                "sum_products": a["stats"]["revenue_covariate_sum_products"],
            })
        })
        .collect();
    for a in &arms {
        println!("  {a}");
    }
    let file = args.data.join("kairos-sums.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&serde_json::json!({
            "cold_secs": times[0].as_secs_f64(),
            "warm_median_secs": warm.as_secs_f64(),
            "raw_secs": raw_took.as_secs_f64(),
            "outcomes_build_secs": built.elapsed.as_secs_f64(),
            "arms": arms,
        }))?,
    )?;
    println!("per-arm sums in {}", file.display());

    // Data arriving: what a refresh costs, then the lake is put back.
    let n = r.recipients as u32;
    type Arrive = fn(&Path, u32, (u8, u8)) -> anyhow::Result<Vec<PathBuf>>;
    let arrivals: [(&str, Arrive); 2] = [
        ("late purchases in one hour of day 20", late_purchases),
        ("one more hour of live data", live_hour),
    ];
    for (what, arrive) in arrivals {
        let files = arrive(&args.data, n, args.split)?;
        let ((_, s), _) = timed(what, outcomes::refresh(&root, &key)).await?;
        println!(
            "  {} of {} days recomputed ({} recipients)",
            s.days_recomputed, s.days, s.recipients_recomputed
        );
        timed(
            "  then the report",
            kairos_report::experiment_report(&root, &designs, RULE, &options),
        )
        .await?;
        for f in files {
            std::fs::remove_file(f)?;
        }
        outcomes::refresh(&root, &key).await?;
    }
    Ok(())
}

/// Awaits `f`, printing how long it took.
async fn timed<T, E>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<(T, Duration)>
where
    anyhow::Error: From<E>,
{
    let started = Instant::now();
    let out = f.await?;
    let took = started.elapsed();
    println!("{what}: {took:.3?}");
    Ok((out, took))
}

/// `count` purchases in the hour from `hour` by customers below `n`.
fn random_purchases(
    rng: &mut SmallRng,
    hour: i64,
    n: u32,
    count: usize,
) -> impl Iterator<Item = Ev> + '_ {
    (0..count).map(move |_| Ev {
        t: hour + rng.random_range(0..HOUR_US),
        customer: rng.random_range(0..n),
        cents: rng.random_range(500..20_000),
        kind: Kind::Purchase,
    })
}

/// 5,000 purchases by existing recipients, imported late into one hour of
/// day 20; returns the files written.
fn late_purchases(dir: &Path, n: u32, _split: (u8, u8)) -> anyhow::Result<Vec<PathBuf>> {
    let mut rng = SmallRng::seed_from_u64(20);
    let hour = T0 + 20 * DAY_US + 3 * HOUR_US;
    let mut evs: Vec<Ev> = random_purchases(&mut rng, hour, n, 5_000).collect();
    evs.sort_unstable_by_key(|e| (e.customer, e.t));
    Ok(vec![write(
        dir,
        "events",
        hour,
        &events_batch(&evs, 900_000_000)?,
        &["customer_id", "event_id"],
        131_072,
        "late",
    )?])
}

/// The hour after the last assignment: 15,000 new recipients (10M over
/// four weeks is about 14,900 an hour), their cart views, and 4,700
/// purchases by earlier recipients (the hourly rate); returns the files.
fn live_hour(dir: &Path, n: u32, split: (u8, u8)) -> anyhow::Result<Vec<PathBuf>> {
    let mut rng = SmallRng::seed_from_u64(28);
    let design = Design::from_percent(RULE, split.0, split.1);
    let hour = T0 + ASSIGN_DAYS * DAY_US;
    let mut recipients: Vec<Recipient> = (n..n + 15_000)
        .map(|c| Recipient {
            at: hour + rng.random_range(60_000_000..HOUR_US),
            customer: c,
            arm: design.assign(&customer_id(c)).arm,
        })
        .collect();
    recipients.sort_unstable_by_key(|r| r.customer);
    let mut evs: Vec<Ev> = recipients
        .iter()
        .map(|r| Ev {
            t: r.at - 30_000_000,
            customer: r.customer,
            cents: 0,
            kind: Kind::CartAdd,
        })
        .chain(random_purchases(&mut rng, hour, n, 4_700))
        .collect();
    evs.sort_unstable_by_key(|e| (e.customer, e.t));
    Ok(vec![
        write(
            dir,
            "assignments",
            hour,
            &assignments(&recipients)?,
            &[],
            65_536,
            "live",
        )?,
        write(
            dir,
            "sends",
            hour,
            &sends(&recipients)?,
            &[],
            65_536,
            "live",
        )?,
        write(
            dir,
            "events",
            hour,
            &events_batch(&evs, 950_000_000)?,
            &["customer_id", "event_id"],
            131_072,
            "live",
        )?,
    ])
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t.get(t.len() / 2).copied().unwrap_or_default()
}

/// Writes the synthetic lake; returns (recipients, events).
fn build(dir: &Path, n: u32, split: (u8, u8)) -> anyhow::Result<(usize, usize)> {
    for table in ["assignments", "sends", "events", "identities"] {
        let p = dir.join(table);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let design = Design::from_percent(RULE, split.0, split.1);
    let mut rng = SmallRng::seed_from_u64(6);
    let mut recipients = Vec::with_capacity(n as usize);
    let mut events = Vec::with_capacity(n as usize * 34 / 10);
    for c in 0..n {
        let at = T0 + rng.random_range(0..ASSIGN_DAYS * DAY_US);
        let arm = design.assign(&customer_id(c)).arm;
        recipients.push(Recipient {
            at,
            customer: c,
            arm,
        });
        // The abandoned cart, an hour before the rule qualified them.
        let cart = at - HOUR_US;
        for (kind, dt) in [
            (Kind::ProductView, -120_000_000),
            (Kind::CartAdd, 0),
            (Kind::Page, 5_000_000),
        ] {
            events.push(Ev {
                t: cart + dt,
                customer: c,
                cents: 0,
                kind,
            });
        }
        let lift = match arm {
            Arm::Holdout => 0.0,
            Arm::Scheduled => LIFT_SCHEDULED,
            Arm::Triggered => LIFT_TRIGGERED,
        };
        let mut purchase = |rng: &mut SmallRng, p: f64, lo: i64, hi: i64| {
            if rng.random_bool(p) {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                events.push(Ev {
                    t: rng.random_range(lo..hi),
                    customer: c,
                    cents: 2_000 + (-u.ln() * 8_000.0).round() as u32,
                    kind: Kind::Purchase,
                });
            }
        };
        purchase(&mut rng, BASE_RATE * (1.0 + lift), at + 1, at + 7 * DAY_US);
        purchase(&mut rng, 0.15, at - 7 * DAY_US, at - 2 * HOUR_US);
        purchase(&mut rng, 0.05, at + 7 * DAY_US + 1, at + 14 * DAY_US);
    }
    let n_events = events.len();

    // Files per hour of the row's time, rows sorted by customer in each.
    recipients.sort_unstable_by_key(|r| (r.at.div_euclid(HOUR_US), r.customer));
    events.sort_unstable_by_key(|e| (e.t.div_euclid(HOUR_US), e.customer, e.t));
    let hour_groups = |len: usize, hour: &dyn Fn(usize) -> i64| {
        let mut groups = Vec::new();
        let mut start = 0;
        for i in 1..=len {
            if i == len || hour(i) != hour(start) {
                groups.push(start..i);
                start = i;
            }
        }
        groups
    };
    let r_groups = hour_groups(recipients.len(), &|i| recipients[i].at.div_euclid(HOUR_US));
    let e_groups = hour_groups(events.len(), &|i| events[i].t.div_euclid(HOUR_US));

    // Two writers, one per core.
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (recipients, events) = (&recipients, &events);
                let (r_groups, e_groups) = (&r_groups, &e_groups);
                s.spawn(move || -> anyhow::Result<()> {
                    for g in r_groups.iter().skip(w).step_by(2) {
                        let rows = &recipients[g.clone()];
                        write(
                            dir,
                            "assignments",
                            rows[0].at,
                            &assignments(rows)?,
                            &[],
                            65_536,
                            "bench",
                        )?;
                        write(
                            dir,
                            "sends",
                            rows[0].at,
                            &sends(rows)?,
                            &[],
                            65_536,
                            "bench",
                        )?;
                    }
                    for g in e_groups.iter().skip(w).step_by(2) {
                        let rows = &events[g.clone()];
                        write(
                            dir,
                            "events",
                            rows[0].t,
                            &events_batch(rows, g.start)?,
                            &["customer_id", "event_id"],
                            131_072,
                            "bench",
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((n as usize, n_events))
}

fn write(
    dir: &Path,
    table: &str,
    at: i64,
    batch: &RecordBatch,
    bloom: &[&str],
    row_group: usize,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let folder = dir.join(tables::partition_dir(table, at));
    std::fs::create_dir_all(&folder)?;
    let props = tables::writer_properties(&batch.schema(), "customer_id", bloom, row_group);
    let bytes = tables::encode_parquet(batch, props, table)?;
    let file = folder.join(format!("{name}.parquet"));
    std::fs::write(&file, bytes)?;
    Ok(file)
}

fn strs<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn owned(v: impl Iterator<Item = Option<String>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn times(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        v.collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

fn assignments(rows: &[Recipient]) -> anyhow::Result<RecordBatch> {
    let cols = vec![
        strs(rows.iter().map(|_| Some(RULE))),
        strs(rows.iter().map(|_| None)),
        owned(rows.iter().map(|r| Some(customer_id(r.customer)))),
        strs(rows.iter().map(|r| Some(r.arm.as_str()))),
        times(rows.iter().map(|r| Some(r.at))),
        owned(rows.iter().map(|r| Some(format!("cart-{}", r.customer)))),
    ];
    Ok(RecordBatch::try_new(
        kairos_policy::tables::ASSIGNMENTS_SCHEMA.clone(),
        cols,
    )?)
}

/// A ghost in holdout; else a send, one in twenty suppressed (consent),
/// decided by the customer number so the build stays deterministic.
fn sends(rows: &[Recipient]) -> anyhow::Result<RecordBatch> {
    let decision = |r: &Recipient| match r.arm {
        Arm::Holdout => "ghost",
        _ if r.customer % 20 == 7 => "suppressed",
        _ => "send",
    };
    let send_at = |r: &Recipient| match (r.arm, decision(r)) {
        (_, "suppressed") => None,
        (Arm::Scheduled, _) => Some(r.at + 12 * HOUR_US),
        _ => Some(r.at),
    };
    let cols = vec![
        owned(rows.iter().map(|r| {
            Some(format!(
                "{RULE}:0:{}:cart-{}",
                customer_id(r.customer),
                r.customer
            ))
        })),
        strs(rows.iter().map(|_| Some(RULE))),
        Arc::new(Int64Array::from(vec![0; rows.len()])) as ArrayRef,
        owned(rows.iter().map(|r| Some(customer_id(r.customer)))),
        owned(rows.iter().map(|r| Some(format!("cart-{}", r.customer)))),
        strs(rows.iter().map(|r| Some(r.arm.as_str()))),
        strs(rows.iter().map(|_| None)),
        strs(
            rows.iter()
                .map(|r| (decision(r) != "suppressed").then_some("email")),
        ),
        strs(rows.iter().map(|r| Some(decision(r)))),
        strs(rows.iter().map(|r| match decision(r) {
            "suppressed" => Some("no_consent:email"),
            _ if r.arm == Arm::Scheduled => Some("scheduled"),
            _ => None,
        })),
        times(rows.iter().map(send_at)),
        times(rows.iter().map(|r| Some(r.at))),
    ];
    Ok(RecordBatch::try_new(
        kairos_policy::tables::SENDS_SCHEMA.clone(),
        cols,
    )?)
}

/// Events with every column of the real table; `first` numbers event ids.
fn events_batch(rows: &[Ev], first: usize) -> anyhow::Result<RecordBatch> {
    let schema = tables::EVENTS_SCHEMA.clone();
    let n = rows.len();
    let is_purchase = |e: &Ev| e.kind == Kind::Purchase;
    let has_product = |e: &Ev| matches!(e.kind, Kind::ProductView | Kind::CartAdd);
    let null = |name: &str| -> anyhow::Result<ArrayRef> {
        Ok(new_null_array(schema.field_with_name(name)?.data_type(), n))
    };
    let cols = vec![
        owned((0..n).map(|i| Some(format!("bench-{}", first + i)))),
        strs(rows.iter().map(|_| Some("bench"))),
        strs(rows.iter().map(|e| Some(e.kind.names().0))),
        strs(rows.iter().map(|e| Some(e.kind.names().1))),
        strs(rows.iter().map(|e| Some(e.kind.names().2))),
        owned(rows.iter().map(|e| Some(customer_id(e.customer)))),
        owned(rows.iter().map(|e| Some(customer_id(e.customer)))),
        null("anonymous_id")?,
        times(rows.iter().map(|e| Some(e.t))),
        times(rows.iter().map(|e| Some(e.t))),
        null("sent_at")?,
        owned(
            rows.iter()
                .map(|e| has_product(e).then(|| format!("p{}", e.customer % 2_000))),
        ),
        null("category")?,
        Arc::new(
            rows.iter()
                .map(|e| has_product(e).then_some(20.0))
                .collect::<Float64Array>(),
        ),
        null("quantity")?,
        Arc::new(
            rows.iter()
                .map(|e| is_purchase(e).then(|| f64::from(e.cents) / 100.0))
                .collect::<Float64Array>(),
        ),
        strs(rows.iter().map(|e| is_purchase(e).then_some("EUR"))),
        owned(
            rows.iter()
                .enumerate()
                .map(|(i, e)| is_purchase(e).then(|| format!("o{}", first + i))),
        ),
        null("timezone")?,
        strs(rows.iter().map(|_| Some("{}"))),
        strs(rows.iter().map(|_| Some("{}"))),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}
