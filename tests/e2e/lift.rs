//! Issue 6, done when: a synthetic data set with a known injected lift,
//! replayed through the real binary, gives a report whose 95% confidence
//! intervals contain the true lifts, with no sample-ratio mismatch; and a
//! split configured differently from the one the customers were assigned
//! with is flagged.
//!
//! The data comes from `kairos-dev generate --lift` (the response simulator:
//! every customer abandons one cart and converts at base × (1 + the lift of
//! the arm Kairos' own assignment function gives them). The intervals are
//! narrow enough that a simulator injecting no lift, or twice the lift,
//! fails the test: the triggered interval must also exclude 0 and 2 × 0.20.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::support::{QUIET, Server};

const RULE: &str = "cart_abandonment";
const TOKEN: &str = "rt-lift-6";
/// Large enough that the triggered-vs-holdout interval is about ±0.1 wide
/// (the holdout has a tenth of them, converting at 30%), small enough to
/// replay in a debug build: 40,000 customers took over 3 minutes at a 1 h
/// batch span on a loaded 2-core machine.
const CUSTOMERS: usize = 12_000;
const BASE_RATE: f64 = 0.3;
const TRIGGERED: f64 = 0.20;
const SCHEDULED: f64 = 0.08;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn kairos(args: &[&str], dir: &Path) {
    crate::support::run_kairos(args, dir);
}

async fn report(server: &Server) -> Value {
    let resp = reqwest::Client::new()
        .get(server.url(&format!("/api/experiments/{RULE}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET report");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("report JSON")
}

/// The comparison `control` → `treatment` of the report.
fn comparison<'a>(report: &'a Value, control: &str, treatment: &str) -> &'a Value {
    report["analysis"]["comparisons"]
        .as_array()
        .expect("comparisons")
        .iter()
        .find(|c| c["control"] == control && c["treatment"] == treatment)
        .unwrap_or_else(|| panic!("no {control} → {treatment} in {report}"))
}

fn ci(effect: &Value) -> (f64, f64) {
    assert_eq!(effect["status"], "estimated", "{effect}");
    let ci = effect["ci"].as_array().expect("ci");
    (
        ci[0].as_f64().expect("lower"),
        ci[1].as_f64().expect("upper"),
    )
}

fn assert_inside(truth: f64, effect: &Value, what: &str) {
    let (lo, hi) = ci(effect);
    eprintln!(
        "{what}: true {truth:.4}, estimate {:.4}, 95% CI [{lo:.4}, {hi:.4}]",
        effect["estimate"].as_f64().unwrap_or(f64::NAN)
    );
    assert!(
        lo <= truth && truth <= hi,
        "{what}: the true lift {truth} is outside the reported 95% CI [{lo}, {hi}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_6_injected_lift_lies_inside_the_reported_intervals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir rules");
    let rule_file = rules.join(format!("{RULE}.sql"));
    let rule_text = std::fs::read_to_string(repo(&format!("sql/{RULE}.sql"))).expect("read rule");
    std::fs::write(&rule_file, &rule_text).expect("copy rule");

    let customers = CUSTOMERS.to_string();
    let base = BASE_RATE.to_string();
    let lift = format!("triggered={TRIGGERED},scheduled={SCHEDULED}");
    crate::support::run_kairos_dev(
        &[
            "generate",
            "--seed",
            "6",
            "--customers",
            &customers,
            "--days",
            "14",
            "--out",
            "gen",
            "--lift",
            &lift,
            "--base-rate",
            &base,
            "--lift-rule",
            "rules/cart_abandonment.sql",
        ],
        dir.path(),
    );
    kairos(
        &[
            "replay",
            "--data",
            "data",
            "--rules",
            "rules",
            "--batch-span",
            "6h",
            "--input",
            "gen/profiles.ndjson",
            "gen/events.ndjson",
        ],
        dir.path(),
    );

    let config = format!("{QUIET}[rules]\nenabled = false\n[report]\ntoken = \"{TOKEN}\"\n");
    let server = Server::start_with_env(
        dir.path().join("data").to_str().expect("utf8"),
        &config,
        vec![(
            "KAIROS__RULES__DIR".into(),
            rules.to_str().expect("utf8").into(),
        )],
    );
    let started = Instant::now();
    let r = report(&server).await;
    eprintln!("report took {:.1?}", started.elapsed());

    // Every customer abandoned a cart and was assigned once.
    assert_eq!(r["recipients"], CUSTOMERS as i64, "{}", r["arms"]);
    let srm = &r["srm"];
    assert_eq!(srm["flagged"], false, "assigned as configured: {srm}");

    // Relative lifts of conversion and of revenue per recipient: a
    // converter's spend does not depend on the arm, so both are the
    // injected conversion lift.
    let vs_scheduled = (1.0 + TRIGGERED) / (1.0 + SCHEDULED) - 1.0;
    for (control, treatment, truth) in [
        ("holdout", "triggered", TRIGGERED),
        ("holdout", "scheduled", SCHEDULED),
        ("scheduled", "triggered", vs_scheduled),
    ] {
        let c = comparison(&r, control, treatment);
        let what = format!("{treatment} vs {control}");
        assert_inside(
            truth,
            &c["conversion"]["relative"],
            &format!("{what}, conversion"),
        );
        assert_inside(
            truth,
            &c["revenue"]["relative"],
            &format!("{what}, revenue/recipient"),
        );
    }
    // Absolute conversion lift over holdout: base × lift.
    let c = comparison(&r, "holdout", "triggered");
    assert_inside(
        BASE_RATE * TRIGGERED,
        &c["conversion"]["absolute"],
        "triggered vs holdout, absolute conversion",
    );
    // Power: the data set is big enough to tell +20% from nothing and from
    // twice as much, so a simulator that injected the wrong lift fails.
    let (lo, hi) = ci(&c["conversion"]["relative"]);
    assert!(
        lo > 0.0 && hi < 2.0 * TRIGGERED,
        "triggered vs holdout CI [{lo}, {hi}] should exclude 0 and {}",
        2.0 * TRIGGERED
    );

    // A skewed split: the rule now says 20/20/60, the customers were
    // assigned 10/20/70. The report reads the split per request.
    let skewed = rule_text.replace(
        "split: holdout=10 scheduled=20 triggered=70",
        "split: holdout=20 scheduled=20 triggered=60",
    );
    assert_ne!(skewed, rule_text, "the rule's split line changed");
    std::fs::write(&rule_file, skewed).expect("rewrite rule");
    let r = report(&server).await;
    let srm = &r["srm"];
    assert_eq!(srm["flagged"], true, "10/20/70 observed vs 20/20/60: {srm}");
    assert!(srm["p_value"].as_f64().expect("p") < 0.001, "{srm}");
}
