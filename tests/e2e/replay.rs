//! `kairos replay` against a live run, and `serve` on a replayed lake.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Server, kairos_bin, post, read_table, strings};

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples")
}

fn sql_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql")
}

/// (rule, customer_id, dedupe_key) of every firing.
fn firing_set(dir: &Path) -> (usize, BTreeSet<(String, String, String)>) {
    let all = crate::support::firings(dir);
    (all.len(), all.into_iter().collect())
}

fn replay(dir: &Path, span: &str) {
    let out = Command::new(kairos_bin())
        .args(["replay", "--data"])
        .arg(dir)
        .env(
            "KAIROS__MESSAGING__TEMPLATES",
            crate::support::repo_templates(),
        )
        .arg("--rules")
        .arg(sql_dir())
        .args(["--batch-span", span, "--input"])
        .arg(samples().join("profiles.ndjson"))
        .arg(samples().join("events.ndjson"))
        .arg(samples().join("policy-scenarios.ndjson"))
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Both sample files as (timestamp µs, call), sorted by event time.
fn sample_calls() -> Vec<(i64, serde_json::Value)> {
    let mut calls = Vec::new();
    for f in [
        "profiles.ndjson",
        "events.ndjson",
        "policy-scenarios.ndjson",
    ] {
        let text = std::fs::read_to_string(samples().join(f)).expect("read sample");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            let t =
                chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().expect("timestamp"))
                    .expect("rfc3339")
                    .timestamp_micros();
            calls.push((t, v));
        }
    }
    calls.sort_by_key(|(t, _)| *t);
    calls
}

fn checkpoint_clock(dir: &Path) -> Option<i64> {
    let bytes = std::fs::read(dir.join("_kairos/rules/checkpoint.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    (v["done"] == true)
        .then(|| v["clock_us"].as_i64())
        .flatten()
}

#[tokio::test]
async fn replay_fires_what_a_live_run_on_the_event_clock_fires() {
    let span_us: i64 = 6 * 3_600_000_000;
    let replayed = tempfile::tempdir().expect("tempdir");
    replay(replayed.path(), "6h");
    let (n, want) = firing_set(replayed.path());
    assert_eq!(n, want.len(), "replay wrote no duplicate");
    assert!(
        want.len() > 100,
        "the samples make every kind of rule fire: {}",
        want.len()
    );
    let rules: BTreeSet<&str> = want.iter().map(|f| f.0.as_str()).collect();
    assert!(
        rules.len() >= 8,
        "most rules fire on the samples: {rules:?}"
    );

    // The same calls posted to a live server, one request per 6 hours of
    // event time, each processed before the next is sent.
    let live = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        live.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 20\ncatch_up = \"12h\"\n[ingest]\nmax_future_hours = 1000000\n",
    );
    let calls = sample_calls();
    let mut start = 0;
    while start < calls.len() {
        let first = calls[start].0;
        let end = start
            + calls[start..]
                .iter()
                .take_while(|(t, _)| *t - first < span_us)
                .count();
        let batch: Vec<_> = calls[start..end].iter().map(|(_, v)| v.clone()).collect();
        let last = calls[end - 1].0;
        let r = post(&server, "/v1/batch", &serde_json::json!({ "batch": batch })).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(20);
        while checkpoint_clock(live.path()).is_none_or(|c| c < last) {
            assert!(Instant::now() < deadline, "live rules stuck before {last}");
            std::thread::sleep(Duration::from_millis(10));
        }
        start = end;
    }
    server.stop();
    let (n, got) = firing_set(live.path());
    assert_eq!(n, got.len(), "live wrote no duplicate");
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "replay-only: {missing:?}\nlive-only: {extra:?}"
    );
}

/// Rows of `table` (every column but those named), formatted, as a set.
fn table_rows(dir: &Path, table: &str, except: &[&str]) -> BTreeSet<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = BTreeSet::new();
    for b in read_table(dir, table) {
        let schema = b.schema();
        let cols: Vec<(String, ArrayFormatter<'_>)> = (0..b.num_columns())
            .filter(|i| !except.contains(&schema.field(*i).name().as_str()))
            .map(|i| {
                let f = ArrayFormatter::try_new(b.column(i).as_ref(), &FormatOptions::default())
                    .expect("formatter");
                (schema.field(i).name().clone(), f)
            })
            .collect();
        for row in 0..b.num_rows() {
            let fields: Vec<String> = cols
                .iter()
                .map(|(name, f)| format!("{name}={}", f.value(row)))
                .collect();
            out.insert(fields.join(" "));
        }
    }
    out
}

#[test]
fn the_batch_span_changes_speed_not_results() {
    // Firings (with their due and evaluation clocks), every policy decision
    // (with its time) and every assignment are the same for batches of 10
    // seconds and 30 minutes of event time. Wall-clock columns and batch
    // ids differ by nature. (6-hour batches differ by one firing here: a
    // cart whose first add leaves the 30-day `carts` window in the middle
    // of a batch without events changes its key there; see docs/rules.md.)
    let spans = ["10s", "30m"];
    let dirs: Vec<tempfile::TempDir> = spans
        .iter()
        .map(|span| {
            let dir = tempfile::tempdir().expect("tempdir");
            replay(dir.path(), span);
            dir
        })
        .collect();
    let tables = [
        ("firings", &["fired_at", "batch_id"][..]),
        ("sends", &[][..]),
        ("assignments", &[][..]),
    ];
    for (table, except) in tables {
        let base = table_rows(dirs[0].path(), table, except);
        assert!(base.len() > 100, "{table}: {} rows", base.len());
        for (span, dir) in spans.iter().zip(&dirs).skip(1) {
            let got = table_rows(dir.path(), table, except);
            let missing: Vec<_> = base.difference(&got).take(5).collect();
            let extra: Vec<_> = got.difference(&base).take(5).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{table} with {span} batches differs from 10s batches ({} vs {} rows)\nonly in 10s: {missing:#?}\nonly in {span}: {extra:#?}",
                base.len(),
                got.len()
            );
        }
    }
}

/// The samples (with `policy-scenarios.ndjson`) make the policy stage take
/// every kind of decision, each named in `docs/tables.md`.
fn every_decision_is_exercised(dir: &Path) {
    let sends = read_table(dir, "sends");
    let decisions = strings(&sends, "decision");
    let reasons = strings(&sends, "reason");
    let seen: BTreeSet<(String, String)> = decisions
        .into_iter()
        .zip(reasons)
        .map(|(d, r)| {
            let r = r.unwrap_or_default();
            // `cap:2 per 24h` and `no_consent:sms` name the cap or channel: keep the kind.
            let kind = r.split(':').next().unwrap_or_default().to_string();
            (d.unwrap_or_default(), kind)
        })
        .collect();
    for (decision, reason) in [
        ("send", ""),
        ("send", "quiet_hours"),
        ("send", "scheduled"),
        ("send", "cap"),
        ("ghost", ""),
        ("suppressed", "capped"),
        ("suppressed", "cooldown"),
        ("suppressed", "priority"),
        ("suppressed", "unsubscribed"),
        ("suppressed", "no_consent"),
        ("suppressed", "no_address"),
        ("cancelled", "cancel_on"),
        ("cancelled", "exit"),
    ] {
        assert!(
            seen.contains(&(decision.to_string(), reason.to_string())),
            "no {decision} with reason {reason:?} in the samples' replay: {seen:?}"
        );
    }
    let steps = sends
        .iter()
        .flat_map(|b| {
            b.column_by_name("step")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
                .map(|a| a.values().to_vec())
                .unwrap_or_default()
        })
        .max();
    assert_eq!(steps, Some(2), "the welcome sequence reaches step 2");
}

#[tokio::test]
async fn serve_on_a_replayed_lake_fires_nothing_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two-hour batches: quiet nights pass in few empty ticks (CI time).
    replay(dir.path(), "2h");
    let (before, _) = firing_set(dir.path());
    assert!(before > 0);
    every_decision_is_exercised(dir.path());

    // A backtest over the same history, rules live from the first day,
    // finds the same firings (nothing is written).
    let out = Command::new(kairos_bin())
        .args([
            "backtest",
            "--from",
            "2026-09-01",
            // The replay's clock stops at the last event; so does this
            // window (a backtest also fires deadlines after the last event).
            "--to",
            "2026-10-12T22:48:55.120Z",
            "--batch-span",
            "2h",
            "--data",
        ])
        .arg(dir.path())
        .arg("--rules-dir")
        .arg(sql_dir())
        .output()
        .expect("run backtest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.ends_with(&format!(" {before} firings"))),
        "backtest and replay disagree:\n{text}"
    );
    assert!(text.contains("messages per customer per week"), "{text}");
    assert_eq!(
        firing_set(dir.path()).0,
        before,
        "a backtest writes nothing"
    );
    // Wall clock: weeks after the samples. Every deadline in them has passed.
    let mut server = Server::start(
        dir.path().to_str().expect("utf8"),
        "[rules]\ninterval_ms = 50\n",
    );
    let r = post(
        &server,
        "/v1/track",
        &serde_json::json!({"userId": "newcomer", "event": "Page Viewed", "messageId": "n1"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    std::thread::sleep(Duration::from_millis(500));
    server.stop();
    let (after, _) = firing_set(dir.path());
    assert_eq!(after, before, "serve after replay fired old conditions");
    let events = read_table(dir.path(), "events");
    assert!(strings(&events, "customer_id").contains(&Some("newcomer".to_string())));
}

#[test]
fn replay_takes_clickstream_csv_and_names_bad_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("clicks.csv");
    // REES46's export shape: event_time "... UTC", event_type view/cart/purchase.
    std::fs::write(
        &csv,
        "event_time,event_type,product_id,category_code,price,user_id\n\
         2019-10-01 09:00:00 UTC,view,44600062,beauty.skin,35.79,541312140\n\
         2019-10-01 10:00:00 UTC,cart,44600062,beauty.skin,35.79,541312140\n\
         yesterday,view,1,x,1.0,1\n\
         2019-10-01 10:05:00 UTC,purchase,3900821,appliances,33.20,554748717\n\
         2019-10-01 11:10:00 UTC,view,3900821,appliances,33.20,554748717\n",
    )
    .expect("write csv");
    let data = dir.path().join("lake");
    let out = Command::new(kairos_bin())
        .args(["replay", "--data"])
        .arg(&data)
        .env(
            "KAIROS__MESSAGING__TEMPLATES",
            crate::support::repo_templates(),
        )
        .arg("--rules")
        .arg(sql_dir())
        .arg("--input")
        .arg(&csv)
        .output()
        .expect("run replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("clicks.csv:4: timestamp"),
        "the bad row is named by its line: {stderr}"
    );
    let (_, fired) = firing_set(&data);
    let got: Vec<(&str, &str)> = fired
        .iter()
        .map(|(r, c, _)| (r.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cart_abandonment", "541312140"),
            ("order_confirmation", "554748717")
        ],
        "{fired:?}"
    );
    let events = read_table(&data, "events");
    assert_eq!(crate::support::rows(&events), 4, "every good row is stored");
    assert!(strings(&events, "category").contains(&Some("beauty.skin".to_string())));
}
