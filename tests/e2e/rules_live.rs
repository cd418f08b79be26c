//! The rule engine inside `kairos serve`: deadlines fire on the clock, a
//! purchase in time prevents them, kill -9 neither duplicates nor loses a
//! firing, and nothing old fires on a restart.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;

use crate::support::{Server, firings, post, wait_clock};

/// Rules on the event clock, ticking every 100 ms.
const CONFIG: &str =
    "[rules]\nclock = \"events\"\ninterval_ms = 100\n[publish]\ninterval_secs = 1\n";

fn event(
    user: &str,
    id: &str,
    name: &str,
    at: &str,
    props: serde_json::Value,
) -> serde_json::Value {
    json!({"type": "track", "userId": user, "messageId": id, "event": name, "timestamp": at, "properties": props})
}

#[tokio::test]
async fn cart_abandonment_fires_after_the_delay_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut server = Server::start(data, CONFIG);
    let batch = |items: Vec<serde_json::Value>| json!({"batch": items});

    // 09:00: the rules go live. c0's cart was abandoned before that.
    let r = post(
        &server,
        "/v1/batch",
        &batch(vec![
            event(
                "c0",
                "m0",
                "Product Added",
                "2026-09-01T07:00:00Z",
                json!({"product_id": "p0", "price": 5}),
            ),
            event("c9", "m1", "Page Viewed", "2026-09-01T09:00:00Z", json!({})),
        ]),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");

    // c1 abandons a cart; c2 buys 30 minutes after adding.
    let r = post(
        &server,
        "/v1/batch",
        &batch(vec![
            event(
                "c1",
                "m2",
                "Product Added",
                "2026-09-01T10:00:00Z",
                json!({"product_id": "p1", "price": 20}),
            ),
            event(
                "c2",
                "m3",
                "Product Added",
                "2026-09-01T10:00:00Z",
                json!({"product_id": "p1", "price": 20}),
            ),
            event(
                "c2",
                "m4",
                "Order Completed",
                "2026-09-01T10:30:00Z",
                json!({"order_id": "o2", "revenue": 20}),
            ),
        ]),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T10:30:00Z");
    let before: Vec<_> = firings(dir.path())
        .into_iter()
        .filter(|f| f.0 == "cart_abandonment")
        .collect();
    assert!(before.is_empty(), "nothing is due before 11:00: {before:?}");

    // Kill -9 before the deadline passes; the state comes back from the lake.
    server.kill9();
    server.restart();

    // 11:06 passes c1's deadline (10:00 + 1h). Kill -9 right after the
    // acknowledgement: the batch may or may not have run.
    let r = post(
        &server,
        "/v1/batch",
        &batch(vec![event(
            "c9",
            "m5",
            "Page Viewed",
            "2026-09-01T11:06:00Z",
            json!({}),
        )]),
    )
    .await;
    assert_eq!(r.status(), 200);
    server.kill9();
    server.restart();
    wait_clock(dir.path(), "2026-09-01T11:06:00Z");

    // Later batches (and another crash) add nothing.
    let r = post(
        &server,
        "/v1/batch",
        &batch(vec![event(
            "c9",
            "m6",
            "Page Viewed",
            "2026-09-01T13:00:00Z",
            json!({}),
        )]),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T13:00:00Z");
    server.kill9();
    server.restart();
    let r = post(
        &server,
        "/v1/batch",
        &batch(vec![event(
            "c9",
            "m7",
            "Page Viewed",
            "2026-09-01T14:00:00Z",
            json!({}),
        )]),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T14:00:00Z");
    server.stop();

    let carts: Vec<_> = firings(dir.path())
        .into_iter()
        .filter(|f| f.0 == "cart_abandonment")
        .collect();
    assert_eq!(
        carts,
        vec![(
            "cart_abandonment".to_string(),
            "c1".to_string(),
            "cart-2026-09-01T10:00:00Z".to_string()
        )],
        "exactly c1's cart, once"
    );
    // The order confirmation (transactional, event-driven) fired once too.
    let orders: BTreeSet<_> = firings(dir.path())
        .into_iter()
        .filter(|f| f.0 == "order_confirmation")
        .collect();
    assert_eq!(orders.len(), 1, "{orders:?}");
    let all = firings(dir.path());
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "no duplicate firing: {all:?}");
}

/// A rules folder with `welcome` and a rule that plans but fails at run time.
fn rules_with_a_failing_one() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
    std::fs::copy(sql.join("welcome.sql"), dir.path().join("welcome.sql")).expect("copy");
    std::fs::write(
        dir.path().join("broken.sql"),
        "-- name: broken\n-- description: casts event names to numbers\n-- channel: email\n\nSELECT customer_id, CAST(CAST(event AS INT) AS VARCHAR) AS dedupe_key FROM batch_events\n",
    )
    .expect("write");
    dir
}

#[tokio::test]
async fn a_failing_rule_is_isolated_and_counted() {
    let rules = rules_with_a_failing_one();
    let templates =
        crate::support::templates_with(&[("broken.email", "Subject: never\n\nnever sent\n")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_rules(
        dir.path().to_str().expect("utf8"),
        CONFIG,
        rules.path(),
        templates.path(),
    );
    let r = post(
        &server,
        "/v1/batch",
        &json!({"batch": [
            event("c1", "s1", "Signed Up", "2026-09-01T09:00:00Z", json!({})),
        ]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("kairos_rule_failures_total{rule=\"broken\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("kairos_rule_firings_total{rule=\"welcome\"} 1"),
        "{metrics}"
    );
    server.stop();
    let fired = firings(dir.path());
    assert_eq!(
        fired,
        vec![(
            "welcome".to_string(),
            "c1".to_string(),
            "welcome".to_string()
        )]
    );
}

#[test]
fn serve_refuses_an_invalid_rule_and_says_where() {
    let rules = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        rules.path().join("typo.sql"),
        "-- name: typo\n-- description: x\n-- channel: sms\n\nSELECT customer_id, order_id AS dedupe_key\nFROM batch_events WHERE revnue > 10\n",
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(crate::support::kairos_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--rules")
        .arg(rules.path())
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to start")
            && stderr.contains("typo.sql:6")
            && stderr.contains("revnue"),
        "{stderr}"
    );
}
