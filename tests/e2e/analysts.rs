//! Issue 7: the demo and the analyst tools, through the real binary.
//!
//! `kairos demo` replays data-samples/ and a simulated cohort into a lake;
//! `kairos sql`, DuckDB and the three polars notebooks then read it, and
//! every count and every number the notebooks reproduce must agree with
//! `kairos sql` and `kairos report`. A second test runs the demo as a user
//! does (serving) and reads its report pages over HTTP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::support::{external, kairos_bin};

const TABLES: [&str; 8] = [
    "events",
    "profiles",
    "profile_changes",
    "identities",
    "firings",
    "assignments",
    "sends",
    "deliveries",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Runs kairos from the repository root (as the README does); its stdout.
fn kairos(args: &[&str]) -> String {
    crate::support::run_kairos(args, &repo())
}

/// `kairos report cart_abandonment --json` over `data`.
fn report_json(data: &Path) -> Value {
    let out = kairos(&[
        "report",
        "cart_abandonment",
        "--json",
        "--data",
        data.to_str().expect("utf8"),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `kairos sql --format json` rows.
fn sql(data: &Path, query: &str) -> Vec<Value> {
    let out = kairos(&[
        "sql",
        "--data",
        data.to_str().expect("utf8"),
        "--format",
        "json",
        query,
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `{key: n}` from a two-column result.
fn pairs(rows: &[Value], key: &str, n: &str) -> BTreeMap<String, i64> {
    rows.iter()
        .map(|r| {
            (
                r[key].as_str().expect("key").to_string(),
                r[n].as_i64().expect("count"),
            )
        })
        .collect()
}

fn as_map(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .expect("object")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().expect("count")))
        .collect()
}

fn python(python: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(python);
    cmd.args(args).current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn close(what: &str, ours: f64, theirs: f64, tolerance: f64) {
    let scale = theirs.abs().max(1.0);
    assert!(
        (ours - theirs).abs() <= tolerance * scale,
        "{what}: notebook {ours} vs report {theirs}"
    );
}

#[test]
fn issue_7_sql_duckdb_and_the_notebooks_agree_on_the_demo_lake() {
    let Some(py) = external("KAIROS_TEST_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let summary = kairos(&[
        "demo",
        "--no-serve",
        "--dir",
        demo.to_str().expect("utf8"),
        "--customers",
        "1500",
    ]);
    assert!(
        summary.contains("triggered vs holdout: conversion"),
        "{summary}"
    );
    let data = demo.join("data");

    // Every table, by kairos sql and by DuckDB over the documented glob.
    let ours = row_counts(&py, &data);
    for t in [
        "events",
        "profiles",
        "firings",
        "assignments",
        "sends",
        "deliveries",
    ] {
        assert!(ours[t] > 0, "the demo wrote no {t}: {ours:?}");
    }

    // The notebooks, executed headless against the same lake.
    let nb = python(&py, &["notebooks/run.py"], &[("KAIROS_DATA", &data)]);
    let nb: Value = serde_json::from_str(&nb).unwrap_or_else(|e| panic!("{e}: {nb}"));

    let funnel = &nb["1-funnel-and-triggers.ipynb"];
    assert_eq!(
        as_map(&funnel["events_by_type"]),
        pairs(
            &sql(
                &data,
                "SELECT event_type, count(*) AS n FROM events GROUP BY event_type"
            ),
            "event_type",
            "n"
        )
    );
    assert_eq!(
        as_map(&funnel["firings_by_rule"]),
        pairs(
            &sql(
                &data,
                "SELECT rule, count(*) AS n FROM firings GROUP BY rule"
            ),
            "rule",
            "n"
        )
    );
    let steps = &sql(
        &data,
        "WITH r AS (SELECT customer_id,
            max(CASE WHEN event_type = 'product_view' THEN 1 ELSE 0 END) AS v,
            max(CASE WHEN event_type = 'cart_add' THEN 1 ELSE 0 END) AS c,
            max(CASE WHEN event_type = 'checkout_start' THEN 1 ELSE 0 END) AS k,
            max(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS p
          FROM events GROUP BY customer_id)
         SELECT sum(v) AS product_view, sum(v * c) AS cart_add,
                sum(v * c * k) AS checkout_start, sum(v * c * k * p) AS purchase FROM r",
    )[0];
    assert_eq!(
        as_map(&funnel["funnel"]),
        as_map(steps),
        "funnel: notebook vs kairos sql"
    );

    let pressure = &nb["2-message-pressure.ipynb"];
    let weeks = sql(
        &data,
        "SELECT n AS messages, count(*) AS customer_weeks FROM (
           SELECT customer_id, date_trunc('week', send_at) AS w, count(*) AS n
           FROM sends WHERE decision = 'send' GROUP BY 1, 2)
         GROUP BY n",
    );
    let distribution: BTreeMap<String, i64> = weeks
        .iter()
        .map(|r| {
            (
                r["messages"].to_string(),
                r["customer_weeks"].as_i64().expect("n"),
            )
        })
        .collect();
    assert_eq!(as_map(&pressure["distribution"]), distribution);
    let sends = sql(
        &data,
        "SELECT count(*) AS n FROM sends WHERE decision = 'send'",
    );
    assert_eq!(pressure["messages"], sends[0]["n"]);
    assert!(pressure["max_per_customer_week"].as_i64().expect("max") >= 1);

    // Notebook 3 reproduces the report's arms and lifts by hand.
    let report = report_json(&data);
    let deep = &nb["3-experiment-deep-dive.ipynb"];
    let arms = report["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 3, "{arms:?}");
    for arm in arms {
        let name = arm["arm"].as_str().expect("arm");
        let ours = &deep["arms"][name];
        assert_eq!(ours["recipients"], arm["recipients"], "{name}");
        assert_eq!(ours["conversions"], arm["conversions"], "{name}");
        assert_eq!(ours["messages"], arm["messages_sent"], "{name}");
        for (k, theirs) in [
            ("revenue", "revenue"),
            ("conversion_rate", "conversion_rate"),
            ("revenue_per_recipient", "revenue_per_recipient"),
        ] {
            close(
                &format!("{name} {k}"),
                ours[k].as_f64().expect("number"),
                arm[theirs].as_f64().expect("number"),
                1e-9,
            );
        }
    }
    let comparisons = report["analysis"]["comparisons"]
        .as_array()
        .expect("comparisons");
    assert_eq!(comparisons.len(), 3);
    check_lifts(deep, comparisons);

    // Late events in two more imports add two files to each of three old
    // hours; compaction merges them, and both engines still count every
    // row once, and the report is unchanged.
    for batch in ["a", "b"] {
        let file = dir.path().join(format!("late-{batch}.ndjson"));
        let lines: Vec<String> = (0..12)
            .map(|i| {
                serde_json::json!({
                    "type": "track", "userId": format!("late-{i}"), "event": "Product Viewed",
                    "messageId": format!("late-{batch}-{i}"),
                    "timestamp": format!("2026-09-1{}T10:{:02}:00Z", i % 3, i),
                    "properties": {"product_id": "sku-1"}
                })
                .to_string()
            })
            .collect();
        std::fs::write(&file, lines.join("\n")).expect("write late events");
        kairos(&[
            "import",
            "events",
            file.to_str().expect("utf8"),
            "--data",
            data.to_str().expect("utf8"),
        ]);
    }
    let before = row_counts(&py, &data);
    assert_eq!(before["events"], ours["events"] + 24);
    let files_before = parquet_files(&data);
    let out = kairos(&[
        "compact",
        "--data",
        data.to_str().expect("utf8"),
        "--settle",
        "0s",
    ]);
    assert!(out.starts_with("compacted "), "{out}");
    let files_after = parquet_files(&data);
    assert!(
        files_before - files_after >= 6,
        "three hours of three event files each become one: {files_before} files before, {files_after} after: {out}"
    );
    assert_eq!(
        row_counts(&py, &data),
        before,
        "row counts after compaction"
    );
    let again = report_json(&data);
    same_up_to_rounding(
        &again["arms"],
        &report["arms"],
        "the report after compaction",
    );
}

/// `a` equals `b`, except that floating-point numbers may differ in their
/// last bits (sums taken in another order: compaction reorders rows).
fn same_up_to_rounding(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().expect("number"), y.as_f64().expect("number"));
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{what}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{what}: {a} vs {b}");
            for (x, y) in x.iter().zip(y) {
                same_up_to_rounding(x, y, what);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (k, v) in x {
                same_up_to_rounding(v, &y[k], &format!("{what}: {k}"));
            }
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// Parquet files under the tables (not `_kairos/`).
fn parquet_files(data: &Path) -> usize {
    TABLES
        .iter()
        .map(|t| {
            let dir = data.join(t);
            if dir.exists() {
                crate::support::files_under(&dir)
                    .iter()
                    .filter(|p| p.ends_with(".parquet"))
                    .count()
            } else {
                0
            }
        })
        .sum()
}

/// Rows of every table by `kairos sql`, checked against DuckDB's count over
/// the documented glob.
fn row_counts(py: &str, data: &Path) -> BTreeMap<String, i64> {
    let union: Vec<String> = TABLES
        .iter()
        .map(|t| format!("SELECT '{t}' AS t, count(*) AS n FROM {t}"))
        .collect();
    let ours = pairs(&sql(data, &union.join(" UNION ALL ")), "t", "n");
    let duck = python(
        py,
        &[
            "-c",
            r#"
import glob, json, sys, duckdb
root, tables = sys.argv[1], sys.argv[2].split(",")
counts = {}
for t in tables:
    pattern = f"{root}/{t}/**/*.parquet"
    counts[t] = duckdb.sql(f"select count(*) from read_parquet('{pattern}', hive_partitioning = true)").fetchall()[0][0] if glob.glob(pattern, recursive=True) else 0
print(json.dumps(counts))
"#,
            data.to_str().expect("utf8"),
            &TABLES.join(","),
        ],
        &[],
    );
    let duck = as_map(&serde_json::from_str(&duck).expect("duckdb json"));
    assert_eq!(ours, duck, "row counts: kairos sql vs DuckDB");
    ours
}

/// Notebook 3's lifts against the report's comparisons.
fn check_lifts(deep: &Value, comparisons: &[Value]) {
    for c in comparisons {
        let label = format!(
            "{} vs {}",
            c["treatment"].as_str().expect("treatment"),
            c["control"].as_str().expect("control")
        );
        for metric in ["conversion", "revenue"] {
            for scale in ["absolute", "relative"] {
                let theirs = &c[metric][scale];
                let ours = &deep["lifts"][&label][format!("{metric}_{scale}")];
                let what = format!("{label} {metric} {scale}");
                for (k, tolerance) in [("estimate", 1e-9), ("p_value", 1e-6)] {
                    close(
                        &format!("{what} {k}"),
                        ours[k].as_f64().expect("number"),
                        theirs[k].as_f64().expect("number"),
                        tolerance,
                    );
                }
                for i in 0..2 {
                    close(
                        &format!("{what} ci[{i}]"),
                        ours["ci"][i].as_f64().expect("number"),
                        theirs["ci"][i].as_f64().expect("number"),
                        1e-6,
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn issue_7_demo_replays_then_serves_the_report_with_the_simulated_lift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let started = Instant::now();
    let mut child = Command::new(kairos_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&demo)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn kairos demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut summary = Vec::new();
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("demo ended before serving:\n{}", summary.join("\n")))
            .expect("read");
        if let Some(base) = line.strip_prefix("listening on ") {
            break base.to_string();
        }
        summary.push(line);
    };
    eprintln!("demo serving after {:.1?}", started.elapsed());
    // Issue 16: the demo's server needs the read token, and prints a page
    // link carrying it.
    let link = loop {
        let line = lines.next().expect("page links").expect("read");
        if line.contains("/program?token=") {
            break line[line.find("http://").expect("url")..]
                .trim()
                .to_string();
        }
        assert!(
            !line.contains("/experiments"),
            "no token link before {line:?}"
        );
    };
    let token = link.rsplit_once("token=").expect("token").1.to_string();
    let client = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .expect("client")
    };
    let refused = reqwest::get(format!("{base}/api/program"))
        .await
        .expect("GET");
    assert_eq!(refused.status().as_u16(), 401, "reports need the token");
    // The link sets the token as a cookie and leaves the address bar clean.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = plain.get(&link).send().await.expect("GET link");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/program");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite="),
        "{cookie}"
    );
    let page = plain
        .get(format!("{base}/experiments"))
        .header("cookie", cookie.split(';').next().expect("pair"))
        .send()
        .await
        .expect("GET with cookie");
    assert_eq!(
        page.status().as_u16(),
        200,
        "the cookie opens the other pages"
    );
    let summary = summary.join("\n");
    for want in [
        "events ",
        "firings ",
        "sends ",
        "suppressed ",
        "outbox ",
        "triggered vs holdout: conversion +",
        "triggered vs scheduled, conversion (pooled over",
        "incremental revenue, triggered over holdout",
        "/program",
    ] {
        assert!(summary.contains(want), "{want:?} missing from\n{summary}");
    }

    // Demo settings: 8,000 simulated customers, +20% triggered conversion.
    let report: Value = client
        .get(format!("{base}/api/experiments/cart_abandonment"))
        .send()
        .await
        .expect("GET report")
        .json()
        .await
        .expect("report json");
    let c = report["analysis"]["comparisons"]
        .as_array()
        .expect("comparisons")
        .iter()
        .find(|c| c["control"] == "holdout" && c["treatment"] == "triggered")
        .expect("triggered vs holdout");
    let rel = &c["conversion"]["relative"];
    let (lo, hi) = (
        rel["ci"][0].as_f64().expect("lo"),
        rel["ci"][1].as_f64().expect("hi"),
    );
    assert!(
        lo > 0.0 && lo <= 0.20 && 0.20 <= hi,
        "lift 0.20 vs CI [{lo}, {hi}]"
    );
    assert_eq!(report["srm"]["flagged"], false);

    // Issue 15: the program view pools every rule with both arms; the
    // simulated cohort dominates, so the pooled lifts recover it.
    let program: Value = client
        .get(format!("{base}/api/program"))
        .send()
        .await
        .expect("GET program")
        .json()
        .await
        .expect("program json");
    for (control, treatment, truth) in [
        ("holdout", "triggered", 0.20),
        ("holdout", "scheduled", 0.08),
        ("scheduled", "triggered", 1.20 / 1.08 - 1.0),
    ] {
        let c = program["pooled"]
            .as_array()
            .expect("pooled")
            .iter()
            .find(|c| {
                c["control"] == control
                    && c["treatment"] == treatment
                    && c["metric"] == "conversion"
                    && c["scale"] == "relative"
            })
            .unwrap_or_else(|| panic!("no pooled {treatment} vs {control}"));
        let fixed = &c["pooled"]["fixed"];
        let (lo, hi) = (
            fixed["ci"][0].as_f64().expect("lo"),
            fixed["ci"][1].as_f64().expect("hi"),
        );
        eprintln!(
            "pooled {treatment} vs {control}: {} [{lo}, {hi}] over {} rules",
            fixed["estimate"], c["pooled"]["studies"]
        );
        assert!(
            lo <= truth && truth <= hi,
            "{treatment} vs {control}: simulated {truth} outside the pooled CI [{lo}, {hi}]"
        );
    }
    // The demo's cart rule tries three delays with known lifts.
    let timing = &program["timing"][0];
    assert_eq!(timing["rule"], "cart_abandonment", "{}", program["timing"]);
    let points = timing["points"].as_array().expect("points");
    let delays: Vec<i64> = points
        .iter()
        .map(|p| p["delay_secs"].as_i64().expect("delay"))
        .collect();
    assert_eq!(delays, [3600, 6 * 3600, 24 * 3600]);
    for (p, truth) in points.iter().zip([0.16, 0.28, 0.16]) {
        let rel = &p["conversion"]["relative"];
        let (lo, hi) = (
            rel["ci"][0].as_f64().expect("lo"),
            rel["ci"][1].as_f64().expect("hi"),
        );
        eprintln!(
            "delay {}: {} [{lo}, {hi}], simulated {truth}",
            p["variant"], rel["estimate"]
        );
        assert!(
            lo <= truth && truth <= hi,
            "{}: {truth} outside [{lo}, {hi}]",
            p["variant"]
        );
    }
    let total = &program["incremental"]["totals"][0];
    assert_eq!(total["arm"], "triggered");
    assert!(
        total["incremental_revenue"].as_f64().expect("revenue") > 0.0,
        "{total}"
    );
    let page = client
        .get(format!("{base}/program"))
        .send()
        .await
        .expect("GET /program");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("id=\"forest-scheduled-triggered-revenue_per_recipient\""),
        "forest plot missing"
    );

    let page = client
        .get(format!("{base}/experiments/cart_abandonment"))
        .send()
        .await
        .expect("GET page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("triggered beats holdout"), "verdict missing");

    let outbox = demo.join("data/outbox");
    let messages = crate::support::files_under(&outbox);
    assert!(
        messages.iter().any(|p| p.ends_with(".eml")),
        "no email in {}",
        outbox.display()
    );
    child.kill().expect("stop demo");
    let _ = child.wait();
}

#[test]
fn sql_prompt_reads_statements_across_lines_and_keeps_history() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let mut child = Command::new(kairos_bin())
        .args(["sql", "--data"])
        .arg(&data)
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kairos sql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\\d\nSELECT count(*) AS n\n  FROM events;\nSELECT nope FROM events;\n\\format csv\nSELECT 40 + 2 AS answer;\n\\q\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for t in TABLES {
        assert!(
            stdout.contains(&format!("| {t}")),
            "\\d lists {t}:\n{stdout}"
        );
    }
    assert!(stdout.contains("| 0 |"), "the two-line count:\n{stdout}");
    assert!(
        stderr.contains("error:") && stderr.contains("nope"),
        "a bad statement is reported and the prompt goes on:\n{stderr}"
    );
    assert!(stdout.contains("answer\n42\n"), "\\format csv:\n{stdout}");
    let history = std::fs::read_to_string(dir.path().join(".kairos_sql_history")).expect("history");
    assert!(history.contains("SELECT 40 + 2 AS answer;"), "{history}");
}
