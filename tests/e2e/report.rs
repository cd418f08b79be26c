//! The report API on a replayed lake: `kairos replay` of data-samples,
//! then `kairos serve` answering /api/experiments, /api/analyze and the
//! token rule, with every number checked against the Parquet tables read
//! here independently (no DataFusion: plain loops over the rows).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use arrow::array::{Array, Float64Array, RecordBatch, TimestampMicrosecondArray};
use serde_json::{Value, json};

use crate::support::{QUIET, Server, kairos_bin, read_table, strings};

const DAY: i64 = 86_400_000_000;
const RULE: &str = "cart_abandonment";
const TOKEN: &str = "rt-3c1f9e";
const WRITE_KEY: &str = "wk-report-test";

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

pub(crate) fn replay(dir: &Path) {
    let out = Command::new(kairos_bin())
        .args(["replay", "--data"])
        .arg(dir)
        .env("KAIROS__MESSAGING__TEMPLATES", repo("templates"))
        .arg("--rules")
        .arg(repo("sql"))
        .args(["--batch-span", "6h", "--input"])
        .arg(repo("data-samples/profiles.ndjson"))
        .arg(repo("data-samples/events.ndjson"))
        .arg(repo("data-samples/policy-scenarios.ndjson"))
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn times(batches: &[RecordBatch], column: &str) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .unwrap_or_else(|| panic!("{column} is not a µs timestamp"));
        out.extend((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i))));
    }
    out
}

fn floats(batches: &[RecordBatch], column: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
            .unwrap_or_else(|| panic!("{column} is not a double"));
        out.extend((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i))));
    }
    out
}

/// One arm's numbers, computed from the tables by hand.
#[derive(Debug, Default)]
struct Expected {
    recipients: i64,
    messages: i64,
    conversions: i64,
    revenue: f64,
    revenue_squares: f64,
}

/// Per arm of `rule`: recipients (assignment rows), `send` decisions to
/// them, purchasers in (assigned_at, assigned_at + window], and purchase
/// revenue there, capped per recipient at `cap`.
fn expected(dir: &Path, rule: &str, window: i64, cap: f64) -> BTreeMap<String, Expected> {
    expected_from(dir, rule, window, cap, i64::MIN)
}

/// [`expected`] for the customers assigned at or after `from` (µs).
fn expected_from(
    dir: &Path,
    rule: &str,
    window: i64,
    cap: f64,
    from: i64,
) -> BTreeMap<String, Expected> {
    let a = read_table(dir, "assignments");
    let (exp, arm, cust, at) = (
        strings(&a, "experiment"),
        strings(&a, "arm"),
        strings(&a, "customer_id"),
        times(&a, "assigned_at"),
    );
    let s = read_table(dir, "sends");
    let (s_rule, s_cust, s_dec) = (
        strings(&s, "rule"),
        strings(&s, "customer_id"),
        strings(&s, "decision"),
    );
    let mut sent: HashMap<String, i64> = HashMap::new();
    for i in 0..s_rule.len() {
        if s_rule[i].as_deref() == Some(rule) && s_dec[i].as_deref() == Some("send") {
            *sent
                .entry(s_cust[i].clone().expect("customer"))
                .or_default() += 1;
        }
    }
    // Anonymous ids map to the user of their earliest link.
    let ids = read_table(dir, "identities");
    let mut link: HashMap<String, (i64, String)> = HashMap::new();
    let (anon, user, linked) = (
        strings(&ids, "anonymous_id"),
        strings(&ids, "user_id"),
        times(&ids, "linked_at"),
    );
    for i in 0..anon.len() {
        let (a, u, t) = (
            anon[i].clone().expect("anon"),
            user[i].clone().expect("user"),
            linked[i].expect("time"),
        );
        let e = link.entry(a).or_insert((t, u.clone()));
        if t < e.0 {
            *e = (t, u);
        }
    }
    let ev = read_table(dir, "events");
    let (e_cust, e_type, e_t, e_rev) = (
        strings(&ev, "customer_id"),
        strings(&ev, "event_type"),
        times(&ev, "timestamp"),
        floats(&ev, "revenue"),
    );
    let mut purchases: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    for i in 0..e_cust.len() {
        if e_type[i].as_deref() == Some("purchase") {
            let c = e_cust[i].clone().expect("customer");
            let c = link.get(&c).map_or(c, |l| l.1.clone());
            purchases
                .entry(c)
                .or_default()
                .push((e_t[i].expect("time"), e_rev[i].unwrap_or(0.0)));
        }
    }
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for i in 0..exp.len() {
        if exp[i].as_deref() != Some(rule) {
            continue;
        }
        let c = cust[i].clone().expect("customer");
        let t0 = at[i].expect("assigned_at");
        if t0 < from {
            continue;
        }
        let e = out.entry(arm[i].clone().expect("arm")).or_default();
        e.recipients += 1;
        e.messages += sent.get(&c).copied().unwrap_or(0);
        let inside: Vec<f64> = purchases
            .get(&c)
            .map(|p| {
                p.iter()
                    .filter(|(t, _)| *t > t0 && *t <= t0 + window)
                    .map(|(_, r)| *r)
                    .collect()
            })
            .unwrap_or_default();
        if !inside.is_empty() {
            e.conversions += 1;
        }
        let y = inside.iter().sum::<f64>().min(cap);
        e.revenue += y;
        e.revenue_squares += y * y;
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

fn check_arms(report: &Value, want: &BTreeMap<String, Expected>, what: &str) {
    let arms = report["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), want.len(), "{what}: arms {arms:?}");
    for a in arms {
        let name = a["name"].as_str().expect("name");
        let w = &want[name];
        let n = a["recipients"].as_i64().expect("recipients");
        assert_eq!(n, w.recipients, "{what}: {name} recipients");
        assert_eq!(a["stats"]["n"], n, "{what}: {name} stats.n");
        assert_eq!(a["messages_sent"], w.messages, "{what}: {name} messages");
        assert_eq!(
            a["conversions"], w.conversions,
            "{what}: {name} conversions"
        );
        assert_eq!(a["stats"]["conversions"], w.conversions);
        let revenue = a["revenue"].as_f64().expect("revenue");
        assert!(
            close(revenue, w.revenue),
            "{what}: {name} revenue {revenue} vs {}",
            w.revenue
        );
        assert!(close(
            a["stats"]["revenue_sum_squares"].as_f64().expect("ss"),
            w.revenue_squares
        ));
        assert!(close(
            a["revenue_per_recipient"].as_f64().expect("rpr"),
            w.revenue / w.recipients as f64
        ));
    }
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value, std::time::Duration) {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let started = Instant::now();
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.expect("json body");
    (status, body, started.elapsed())
}

async fn post_json(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.expect("json body"))
}

#[tokio::test]
async fn report_api_on_a_replayed_sample_lake() {
    let data = tempfile::tempdir().expect("tempdir");
    replay(data.path());
    // The rules stay off: a live sweep on the wall clock must not add
    // assignments while the numbers are compared.
    let config = format!(
        "{QUIET}[rules]\nenabled = false\n[ingest]\nwrite_keys = [\"{WRITE_KEY}\"]\n[report]\ntoken = \"{TOKEN}\"\n"
    );
    let server = Server::start(data.path().to_str().expect("utf8"), &config);
    let t = Some(TOKEN);

    // The token rule: needed even on loopback; a write key is not one.
    let url = server.url(&format!("/api/experiments/{RULE}"));
    assert_eq!(get(&url, None).await.0, 401);
    let (status, body, _) = get(&url, Some(WRITE_KEY)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("write keys")
    );
    let (status, _) = post_json(&server.url("/api/analyze"), Some(WRITE_KEY), "{}").await;
    assert_eq!(status, 401);
    // The OpenAPI document is public.
    let (status, doc, _) = get(&server.url("/api/openapi.json"), None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/experiments/{rule}"]["get"].is_object());

    // The full report, against the tables read by hand.
    let (status, report, first) = get(&url, t).await;
    assert_eq!(status, 200, "{report}");
    let want = expected(data.path(), RULE, 7 * DAY, f64::INFINITY);
    assert_eq!(
        want.len(),
        3,
        "the sample lake has all three arms: {want:?}"
    );
    assert!(want.values().all(|w| w.recipients > 0));
    check_arms(&report, &want, "default");
    assert_eq!(
        report["recipients"],
        want.values().map(|w| w.recipients).sum::<i64>()
    );
    assert_eq!(report["design"]["holdout"], 10);
    let srm = &report["srm"];
    assert!(srm["p_value"].as_f64().expect("srm p") > 0.0, "{srm}");
    let comparisons = report["analysis"]["comparisons"]
        .as_array()
        .expect("comparisons");
    let pairs: Vec<(&str, &str)> = comparisons
        .iter()
        .map(|c| {
            (
                c["control"].as_str().expect("c"),
                c["treatment"].as_str().expect("t"),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("holdout", "triggered"),
            ("holdout", "scheduled"),
            ("scheduled", "triggered")
        ]
    );
    assert!(comparisons[0]["revenue_cuped"]["theta"].is_number());

    // The arms' stats are /api/analyze input: the same analysis comes back.
    let stats: Vec<&Value> = report["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| &a["stats"])
        .collect();
    let (status, analysis) = post_json(
        &server.url("/api/analyze"),
        t,
        &json!({"arms": stats, "comparisons": [
            {"control": "holdout", "treatment": "triggered"},
            {"control": "holdout", "treatment": "scheduled"},
            {"control": "scheduled", "treatment": "triggered"}]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{analysis}");
    assert_eq!(analysis["comparisons"], report["analysis"]["comparisons"]);
    assert_eq!(analysis["srm"], report["srm"]);
    // Malformed input: 400 naming the field.
    let (status, err) = post_json(
        &server.url("/api/analyze"),
        t,
        r#"{"arms": [{"name": "a", "n": 10, "conversions": 1, "revenue_sum": 1, "revenue_sum_squares": 1},
                     {"name": "b", "n": 10, "conversions": "two", "revenue_sum": 1, "revenue_sum_squares": 1}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["path"], "arms[1].conversions", "{err}");

    // A one-day window and a cap: still the hand-computed numbers.
    let (status, short, _) = get(&format!("{url}?window=1d&cap=50&cuped=off"), t).await;
    assert_eq!(status, 200, "{short}");
    check_arms(
        &short,
        &expected(data.path(), RULE, DAY, 50.0),
        "1d window, cap 50",
    );
    assert_eq!(short["cap_value"], 50.0);
    assert!(short["analysis"]["comparisons"][0]["revenue_cuped"].is_null());
    let converted = |r: &Value| -> i64 {
        r["arms"]
            .as_array()
            .expect("arms")
            .iter()
            .map(|a| a["conversions"].as_i64().expect("n"))
            .sum()
    };
    assert!(
        converted(&short) < converted(&report),
        "a shorter window converts fewer"
    );

    // Assigned from 2026-10-01 on only.
    let (status, late, _) = get(&format!("{url}?from=2026-10-01"), t).await;
    assert_eq!(status, 200, "{late}");
    let oct = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
        .expect("time")
        .timestamp_micros();
    let want_late = expected_from(data.path(), RULE, 7 * DAY, f64::INFINITY, oct);
    check_arms(&late, &want_late, "from 2026-10-01");
    assert!(late["recipients"].as_i64() < report["recipients"].as_i64());

    // The CLI: `kairos stats` gives what /api/analyze gives, and names a
    // bad field; `kairos report` prints the same arms.
    let file = data.path().join("sums.json");
    let sums = json!({"arms": stats, "control": "holdout"});
    std::fs::write(&file, sums.to_string()).expect("write sums");
    let out = Command::new(kairos_bin())
        .arg("stats")
        .arg(&file)
        .output()
        .expect("kairos stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).expect("stats prints JSON");
    let (_, http) = post_json(&server.url("/api/analyze"), t, &sums.to_string()).await;
    assert_eq!(cli, http);
    std::fs::write(&file, r#"{"arms": [{"name": "a", "n": -1}]}"#).expect("write");
    let out = Command::new(kairos_bin())
        .arg("stats")
        .arg(&file)
        .output()
        .expect("kairos stats");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("arms[0]"), "{err}");
    let out = Command::new(kairos_bin())
        .args(["report", RULE, "--data"])
        .arg(data.path())
        .arg("--rules")
        .arg(repo("sql"))
        .output()
        .expect("kairos report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for (arm, w) in &want {
        let line = text
            .lines()
            .find(|l| l.starts_with(arm.as_str()))
            .unwrap_or_else(|| panic!("no {arm} row in\n{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], w.recipients.to_string(), "{line}");
        assert_eq!(cols[3], w.conversions.to_string(), "{line}");
    }
    assert!(text.contains("triggered vs scheduled:"), "{text}");

    // Bad input: named.
    let (status, err, _) = get(&format!("{url}?window=soon"), t).await;
    assert_eq!(
        (status, err["param"].as_str()),
        (400, Some("window")),
        "{err}"
    );
    let (status, err, _) = get(&format!("{url}?cupd=off"), t).await;
    assert_eq!(
        (status, err["param"].as_str()),
        (400, Some("cupd")),
        "{err}"
    );
    let (status, err, _) = get(&server.url("/api/experiments/no_such_rule"), t).await;
    assert_eq!(status, 404);
    assert!(
        err["known"]
            .as_array()
            .expect("known")
            .contains(&json!(RULE)),
        "{err}"
    );

    // The overview: every rule, headline numbers matching the report,
    // corrected p-values no smaller than the raw ones.
    let (status, list, list_time) = get(&server.url("/api/experiments"), t).await;
    assert_eq!(status, 200, "{list}");
    let exps = list["experiments"].as_array().expect("experiments");
    let rules_in_sql = std::fs::read_dir(repo("sql"))
        .expect("sql/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(exps.len(), rules_in_sql, "one entry per rule file");
    let cart = exps
        .iter()
        .find(|e| e["rule"] == RULE)
        .expect("cart_abandonment listed");
    assert_eq!(cart["recipients"], report["recipients"]);
    for (h, a) in cart["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .zip(report["arms"].as_array().expect("arms"))
    {
        assert_eq!(h["recipients"], a["recipients"]);
        // Equal up to the order DataFusion's parallel sums took.
        let f = |v: &Value| v["revenue_per_recipient"].as_f64().expect("rpr");
        assert!(close(f(h), f(a)), "{h} vs {a}");
    }
    let c = &cart["comparison"];
    assert_eq!(
        (c["control"].as_str(), c["treatment"].as_str()),
        (Some("holdout"), Some("triggered"))
    );
    let p = c["p_value"].as_f64().expect("p");
    assert!(c["p_value_holm"].as_f64().expect("holm") >= p);
    assert!(c["p_value_bh"].as_f64().expect("bh") >= p);
    // A transactional rule has one arm: listed, nothing compared.
    let oc = exps
        .iter()
        .find(|e| e["rule"] == "order_confirmation")
        .expect("listed");
    assert!(oc["comparison"].is_null());

    // Latency on the sample lake (debug build), for the record.
    let (_, _, again) = get(&url, t).await;
    eprintln!(
        "report latency on the sample lake: first {} ms, again {} ms; overview {} ms",
        first.as_millis(),
        again.as_millis(),
        list_time.as_millis()
    );
}

#[tokio::test]
async fn without_a_token_reports_answer_loopback_clients() {
    let data = tempfile::tempdir().expect("tempdir");
    replay(data.path());
    let server = Server::start(
        data.path().to_str().expect("utf8"),
        &format!("{QUIET}[rules]\nenabled = false\n"),
    );
    let (status, list, _) = get(&server.url("/api/experiments"), None).await;
    assert_eq!(status, 200, "{list}");
    let want = expected(data.path(), "welcome", 7 * DAY, f64::INFINITY);
    let (status, report, _) = get(&server.url("/api/experiments/welcome"), None).await;
    assert_eq!(status, 200, "{report}");
    check_arms(&report, &want, "welcome");
}

/// The first assignment of `rule` in `arm`: (customer, assigned_at µs).
fn recipient(dir: &Path, rule: &str, arm: &str) -> (String, i64) {
    let a = read_table(dir, "assignments");
    let (exp, arms, cust, at) = (
        strings(&a, "experiment"),
        strings(&a, "arm"),
        strings(&a, "customer_id"),
        times(&a, "assigned_at"),
    );
    (0..exp.len())
        .find(|&i| exp[i].as_deref() == Some(rule) && arms[i].as_deref() == Some(arm))
        .map(|i| (cust[i].clone().expect("customer"), at[i].expect("at")))
        .unwrap_or_else(|| panic!("no {arm} recipient of {rule}"))
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("time")
        .to_rfc3339()
}

/// Reports read the per-recipient outcomes `serve` keeps: after a late
/// purchase and an identity link arrive over HTTP, the report still equals
/// the tables read by hand, and moved by exactly those purchases.
#[tokio::test]
async fn report_outcomes_follow_late_purchases_and_identity_links() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path();
    replay(dir);
    let config = format!(
        "[publish]\ninterval_secs = 1\n[rules]\nenabled = false\n[ingest]\nwrite_keys = [\"{WRITE_KEY}\"]\n[report]\ntoken = \"{TOKEN}\"\noutcomes_refresh = \"1s\"\n"
    );
    let server = Server::start(dir.to_str().expect("utf8"), &config);
    let url = server.url(&format!("/api/experiments/{RULE}"));
    let (status, before, _) = get(&url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{before}");
    check_arms(
        &before,
        &expected(dir, RULE, 7 * DAY, f64::INFINITY),
        "before",
    );
    assert!(
        dir.join("_kairos/outcomes/state.json").is_file(),
        "the report was answered from maintained outcomes"
    );

    // A holdout recipient buys an hour after assignment; an anonymous
    // visitor buys two hours after a triggered recipient's assignment and
    // is then identified as that recipient.
    let (h, h_at) = recipient(dir, RULE, "holdout");
    let (t, t_at) = recipient(dir, RULE, "triggered");
    let buy = |who: (&str, &str), id: &str, at: i64, revenue: f64| {
        json!({"type": "track", who.0: who.1, "event": "Order Completed", "messageId": id,
               "timestamp": rfc3339(at), "properties": {"revenue": revenue, "currency": "EUR", "order_id": id}})
    };
    let batch = json!({"batch": [
        buy(("userId", &h), "late-h", h_at + 3_600_000_000, 1234.5),
        buy(("anonymousId", "anon-e2e"), "late-anon", t_at + 7_200_000_000, 4321.0),
        {"type": "identify", "userId": t, "anonymousId": "anon-e2e", "messageId": "late-link",
         "timestamp": rfc3339(t_at + 10_800_000_000)},
    ]});
    let r = reqwest::Client::new()
        .post(server.url("/v1/batch"))
        .bearer_auth(WRITE_KEY)
        .json(&batch)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // Once published, the report moves by exactly those purchases.
    let revenue = |r: &Value, arm: &str| -> f64 {
        r["arms"]
            .as_array()
            .expect("arms")
            .iter()
            .find(|a| a["name"] == arm)
            .and_then(|a| a["revenue"].as_f64())
            .expect("revenue")
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        let (status, after, _) = get(&url, Some(TOKEN)).await;
        assert_eq!(status, 200, "{after}");
        if revenue(&after, "triggered") != revenue(&before, "triggered")
            && revenue(&after, "holdout") != revenue(&before, "holdout")
        {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "the report never saw the late purchases: {after}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    check_arms(
        &after,
        &expected(dir, RULE, 7 * DAY, f64::INFINITY),
        "after",
    );
    assert!(close(
        revenue(&after, "holdout") - revenue(&before, "holdout"),
        1234.5
    ));
    assert!(close(
        revenue(&after, "triggered") - revenue(&before, "triggered"),
        4321.0
    ));
}
