//! `kairos-dev bench-rules`: what one micro-batch costs as history grows.
//!
//! Builds the engine's state from a synthetic history (35 days, one
//! customer per 50 events, the event mix of a shop's clickstream), then
//! times the whole rule library on fixed-size batches of new events, and
//! each sweep on its own. Batches cost what they hold, sweeps what the
//! state holds; a simulated day of 2-second ticks combines the two to give
//! the p99 tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use kairos_core::event::{Commerce, EventRecord, StagedItem};
use kairos_rules::Engine;
use kairos_rules::rule::Cadence;
use kairos_rules::state::{EventParts, State};

const DAY_US: i64 = 86_400_000_000;
/// 2026-10-05T00:00:00Z: the clock at the end of the history.
const CLOCK: i64 = 1_791_158_400_000_000;
const PRODUCTS: u64 = 2_000;

fn kind(r: u32) -> &'static str {
    match r {
        0..70 => "product_view",
        70..85 => "page",
        85..95 => "cart_add",
        95..98 => "checkout_start",
        _ => "purchase",
    }
}

fn record(rng: &mut SmallRng, n: u64, customers: u64, at: i64) -> EventRecord {
    let t = kind(rng.random_range(0..100));
    let product = format!("p{}", rng.random_range(0..PRODUCTS));
    let customer = format!("c{}", rng.random_range(0..customers));
    let commerce = Commerce {
        product_id: (t != "page").then_some(product),
        category: Some(format!("cat{}", rng.random_range(0..20))),
        price: Some(20.0),
        quantity: Some(1),
        revenue: (t == "purchase").then_some(40.0),
        currency: None,
        order_id: (t == "purchase").then(|| format!("o{n}")),
    };
    EventRecord::track(format!("bench-{n}"), "bench", customer, t, at, commerce)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark and prints a Markdown report.
pub async fn bench(
    config: kairos_core::Config,
    history: u64,
    batch: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let rules = kairos_server::live::load_rules(&config).await?;
    let customers = (history / 50).max(1);
    let mut rng = SmallRng::seed_from_u64(7);

    let started = Instant::now();
    let mut state = State::default();
    let mut customer = String::new();
    let mut product = String::new();
    let span = 35 * DAY_US;
    for i in 0..history {
        let at = CLOCK - span + (i as i64 * span) / history as i64;
        let t = kind(rng.random_range(0..100));
        customer.clear();
        customer.push('c');
        customer.push_str(&rng.random_range(0..customers).to_string());
        product.clear();
        product.push('p');
        product.push_str(&rng.random_range(0..PRODUCTS).to_string());
        let category = format!("cat{}", rng.random_range(0..20));
        state.fold(
            &customer,
            &EventParts {
                event_type: t,
                at,
                product_id: (t != "page").then_some(product.as_str()),
                category: Some(&category),
                price: Some(20.0),
                quantity: Some(1),
                revenue: (t == "purchase").then_some(40.0),
                order_id: None,
                timezone: None,
                properties: None,
            },
        );
    }
    state.prune(CLOCK);
    let build = started.elapsed();
    let cadences: BTreeMap<String, Cadence> =
        rules.iter().map(|r| (r.name.clone(), r.cadence)).collect();
    let mut engine = Engine::new(rules, &BTreeMap::new(), state, Default::default())?;
    // The rules go live at the end of the history.
    engine.tick(Vec::new(), CLOCK).await;

    let mut times = Vec::new();
    let mut n = history;
    let mut clock = CLOCK;
    let mut firings = 0;
    let mut last_rules = Vec::new();
    for _ in 0..runs {
        let items: Vec<StagedItem> = (0..batch)
            .map(|i| {
                n += 1;
                let at = clock + (i as i64 * 2_000_000) / batch as i64;
                StagedItem::Event(record(&mut rng, n, customers + customers / 5, at))
            })
            .collect();
        clock += 2_000_000;
        let t = Instant::now();
        let report = engine.tick(items, clock).await;
        times.push(t.elapsed());
        firings += report.firings.len();
        last_rules = report.evaluated.clone();
        anyhow::ensure!(report.failures.is_empty(), "{:?}", report.failures);
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];

    // Every sweep at once, a day later: each rule's own time.
    let report = engine.tick(Vec::new(), clock + DAY_US).await;
    let sweeps: Vec<(String, Duration, usize)> = report
        .evaluated
        .into_iter()
        .filter(|(r, ..)| cadences.get(r).is_some_and(|c| *c != Cadence::EveryBatch))
        .collect();

    // A simulated day of 2 s ticks: every tick costs a batch, plus the
    // sweeps whose cadence boundary it crosses.
    let tick_us: i64 = 2_000_000;
    let mut day: Vec<f64> = Vec::with_capacity(43_200);
    for i in 1..=43_200i64 {
        let (a, b) = ((i - 1) * tick_us, i * tick_us);
        let mut d = median.as_secs_f64();
        for (rule, took, _) in &sweeps {
            if let Some(Cadence::EverySecs(s)) = cadences.get(rule) {
                let every = *s as i64 * 1_000_000;
                if b / every > a / every {
                    d += took.as_secs_f64();
                }
            }
        }
        day.push(d);
    }
    day.sort_by(f64::total_cmp);
    let p99 = day[(day.len() as f64 * 0.99) as usize];

    println!(
        "| history events | customers | state build | RSS | batch | batch median | batch max | firings/batch | day p99 tick |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {history} | {} | {:.1} s | {:.0} MiB | {batch} | {:.3} s | {:.3} s | {} | {:.3} s |",
        engine.state.len(),
        build.as_secs_f64(),
        rss_mib(),
        median.as_secs_f64(),
        max.as_secs_f64(),
        firings / runs.max(1),
        p99
    );
    println!("\n| event-driven rule (last batch) | time | rows |\n|---|---:|---:|");
    for (rule, took, rows) in &last_rules {
        println!("| {rule} | {:.3} s | {rows} |", took.as_secs_f64());
    }
    println!("\n| sweep | cadence | time | rows |\n|---|---|---:|---:|");
    for (rule, took, rows) in &sweeps {
        let cadence = match cadences.get(rule) {
            Some(Cadence::EverySecs(s)) => format!("{s} s"),
            _ => "batch".into(),
        };
        println!(
            "| {rule} | {cadence} | {:.3} s | {rows} |",
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// `kairos-dev bench-policy`: the policy stage on one batch of firings against
/// the send history of many customers.
pub async fn bench_policy(
    config: kairos_core::Config,
    customers: u64,
    firings: usize,
) -> anyhow::Result<()> {
    use kairos_policy::caps::SentMessage;
    use kairos_policy::chain::PastMessage;
    let rules = kairos_server::live::load_rules(&config).await?;
    let metas: Vec<_> = rules.iter().map(kairos_policy::tables::rule_meta).collect();
    let names: Vec<String> = metas.iter().map(|m| m.name.to_string()).collect();
    let root = kairos_storage::DataRoot::open(
        std::env::temp_dir()
            .join("kairos-bench-policy-empty")
            .to_str()
            .unwrap_or("/tmp"),
    )?;
    let mut stage = kairos_server::live::policy_stage(&config, metas, &root, None, None).await?;
    let mut rng = SmallRng::seed_from_u64(11);
    let started = Instant::now();
    // Three messages per customer over the last week.
    for c in 0..customers {
        let id = format!("c{c}");
        for _ in 0..3 {
            stage.add_history(
                &id,
                PastMessage {
                    rule: names[rng.random_range(0..names.len())].as_str().into(),
                    priority: 0,
                    step: 0,
                    dedupe_key: format!("k{}", rng.random_range(0..1_000_000)),
                    transactional: false,
                    sent: SentMessage {
                        at: CLOCK - rng.random_range(0..7 * DAY_US),
                        channel: kairos_policy::Channel::Email,
                        tags: std::sync::Arc::from(Vec::new()),
                    },
                },
            );
        }
    }
    let build = started.elapsed();
    let everyone = kairos_policy::stage::Profiles {
        default: serde_json::json!({
            "email": "x@example.com", "phone": "+15550100", "timezone": "Europe/Berlin",
            "consent": {"email": true, "sms": true, "push": true}
        })
        .as_object()
        .cloned(),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut decided = 0;
    for run in 0..5 {
        let fired: Vec<kairos_policy::stage::Fired> = (0..firings)
            .map(|i| kairos_policy::stage::Fired {
                rule: names[rng.random_range(0..names.len())].clone(),
                customer_id: format!("c{}", rng.random_range(0..customers)),
                dedupe_key: format!("r{run}-{i}"),
            })
            .collect();
        let t = Instant::now();
        decided += stage
            .decide(&fired, CLOCK + run * 2_000_000, &everyone)
            .len();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "| customers with history | history build | RSS | firings per batch | decide median | decide max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {customers} | {:.1} s | {:.0} MiB | {firings} | {:.3} s | {:.3} s |",
        build.as_secs_f64(),
        rss_mib(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
    anyhow::ensure!(decided == 5 * firings, "every firing gets a decision");
    Ok(())
}

/// `kairos-dev bench-delivery`: `messages` signed webhook POSTs to a receiver
/// on loopback through the delivery workers (intent file, concurrent calls,
/// a `deliveries/` file per chunk of 256), until every one is recorded.
pub async fn bench_delivery(messages: usize) -> anyhow::Result<()> {
    use kairos_messaging::delivery::Settings;
    use kairos_policy::Channel;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = std::env::temp_dir().join(format!("kairos-bench-delivery-{}", std::process::id()));
    let root = kairos_storage::DataRoot::open(dir.to_str().unwrap_or("/tmp"))?;
    let hook: Arc<dyn kairos_messaging::Adapter> = Arc::new(kairos_messaging::http::Webhook {
        url: format!("http://{addr}/hook"),
        secret: b"bench".to_vec(),
        client: kairos_messaging::http::client(std::time::Duration::from_secs(10))?,
    });
    let dispatcher = kairos_messaging::Dispatcher::start(
        root,
        vec![(Channel::Webhook, hook)],
        Settings::default(),
    );
    let started = Instant::now();
    for i in 0..messages {
        let mut rendered = kairos_messaging::template::Rendered::default();
        rendered.body = format!("Hello customer {i}, your cart is waiting.\n");
        dispatcher.submit(kairos_messaging::Outgoing {
            send_id: format!("cart_abandonment:0:c{i}:k"),
            rule: "cart_abandonment".into(),
            step: 0,
            customer_id: format!("c{i}"),
            channel: Channel::Webhook,
            to: String::new(),
            rendered,
            unsubscribe_url: None,
            reference: "ref".into(),
            status_url: "http://127.0.0.1:8080/callbacks/ref".into(),
            send_at: CLOCK,
        })?;
    }
    dispatcher.finish().await;
    let took = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    println!("| messages | received | time | sends/s | RSS |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {messages} | {got} | {took:.2} s | {:.0} | {:.0} MiB |",
        messages as f64 / took,
        rss_mib()
    );
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(got == messages, "every message arrives once");
    Ok(())
}
