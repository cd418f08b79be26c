//! A replay's batch span changes speed, not results: random event streams
//! through the library's rules, in batches of 10 seconds, 30 minutes, 2
//! hours and 6 hours of event time, fire the same set with the same clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kairos_core::event::{Commerce, EventRecord, StagedItem};
use kairos_rules::engine::NO_CATCH_UP_LIMIT;
use kairos_rules::state::State;
use kairos_rules::{Engine, EngineOptions};

const T0: i64 = 1_788_220_800_000_000; // 2026-09-01T00:00:00Z
const MIN: i64 = 60_000_000;

/// xorshift64*: the same stream for a seed on every machine.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn stream(seed: u64) -> Vec<StagedItem> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    for n in 0..600 {
        // Three days, in sessions: events cluster within minutes.
        let customer = format!("c{}", rng.below(25));
        let at = T0 + rng.below(3 * 24 * 60) as i64 * MIN + rng.below(60_000_000) as i64;
        let (event_type, product, order) = match rng.below(10) {
            0..=4 => ("product_view", Some(format!("p{}", rng.below(4))), None),
            5..=7 => ("cart_add", Some(format!("p{}", rng.below(4))), None),
            8 => (
                "purchase",
                Some(format!("p{}", rng.below(4))),
                Some(format!("o{n}")),
            ),
            _ => ("signup", None, None),
        };
        let commerce = Commerce {
            product_id: product,
            price: Some(10.0),
            quantity: Some(1),
            revenue: order.as_ref().map(|_| 10.0),
            order_id: order,
            ..Commerce::default()
        };
        out.push(StagedItem::Event(EventRecord::track(
            format!("e{n}"),
            "t",
            customer,
            event_type,
            at,
            commerce,
        )));
    }
    out.sort_by_key(StagedItem::timestamp_us);
    out
}

fn library() -> Vec<kairos_rules::Rule> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
    [
        "cart_abandonment",
        "browse_abandonment",
        "order_confirmation",
        "welcome",
    ]
    .iter()
    .map(|name| {
        let file = dir.join(format!("{name}.sql"));
        let text = std::fs::read_to_string(&file).expect("rule file");
        kairos_rules::rule::parse(&file, &text).expect("valid rule")
    })
    .collect()
}

type Fired = BTreeSet<(String, String, String, i64, i64)>;

/// The stream replayed in batches of `span_us`, each at its latest event,
/// going live at the first event (as `kairos replay` does).
async fn replay(items: &[StagedItem], span_us: i64) -> Fired {
    let mut engine = Engine::new(
        library(),
        &BTreeMap::new(),
        State::default(),
        EngineOptions {
            catch_up_us: NO_CATCH_UP_LIMIT,
            event_clock: true,
            ..EngineOptions::default()
        },
    )
    .expect("engine");
    let mut fired = Fired::new();
    engine.tick(Vec::new(), items[0].timestamp_us()).await;
    let mut start = 0;
    while start < items.len() {
        let first = items[start].timestamp_us();
        let end = start
            + items[start..]
                .iter()
                .take_while(|i| i.timestamp_us() - first < span_us)
                .count();
        let clock = items[end - 1].timestamp_us();
        let report = engine.tick(items[start..end].to_vec(), clock).await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        for f in report.firings {
            fired.insert((f.rule, f.customer_id, f.dedupe_key, f.due_at_us, f.clock_us));
        }
        start = end;
    }
    // Past the last event, as a live run would go on.
    let last = items[items.len() - 1].timestamp_us();
    for f in engine.tick(Vec::new(), last + 24 * 60 * MIN).await.firings {
        fired.insert((f.rule, f.customer_id, f.dedupe_key, f.due_at_us, f.clock_us));
    }
    fired
}

#[tokio::test]
async fn random_streams_fire_the_same_whatever_the_batch_span() {
    for seed in [7, 1_234, 98_765] {
        let items = stream(seed);
        let base = replay(&items, 10 * 1_000_000).await;
        let rules: BTreeSet<&str> = base.iter().map(|f| f.0.as_str()).collect();
        assert!(rules.len() >= 3, "seed {seed}: most rules fire: {rules:?}");
        for span in [30 * MIN, 120 * MIN, 360 * MIN] {
            let got = replay(&items, span).await;
            let missing: Vec<_> = base.difference(&got).take(3).collect();
            let extra: Vec<_> = got.difference(&base).take(3).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "seed {seed}, span {} min: only in 10 s: {missing:?}; only in this span: {extra:?}",
                span / MIN
            );
        }
    }
}
