//! The policy stage inside `kairos serve`: priority, ghosts for the
//! holdout, the scheduled arm and its cancellation, recorded in `sends/`.

use std::path::Path;

use serde_json::json;

use crate::support::{Server, post, read_table, strings, wait_clock};

fn rule(dir: &Path, name: &str, header: &str) {
    std::fs::write(
        dir.join(format!("{name}.sql")),
        format!(
            "-- name: {name}\n-- description: test\n-- channel: email\n{header}\n\nSELECT customer_id, 'k' AS dedupe_key FROM batch_events WHERE event_type = 'promo_seen'\n"
        ),
    )
    .expect("write rule");
}

#[tokio::test]
async fn decisions_are_recorded_with_their_reasons() {
    let rules = tempfile::tempdir().expect("tempdir");
    rule(rules.path(), "promo_high", "-- priority: 60");
    rule(rules.path(), "promo_low", "-- priority: 40");
    rule(
        rules.path(),
        "promo_later",
        "-- priority: 10\n-- split: scheduled=100\n-- scheduled_at: 10:00\n-- cancel_on: purchase\n-- on_conflict: defer",
    );
    rule(
        rules.path(),
        "promo_holdout",
        "-- split: holdout=100\n-- transactional: true",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_env(
        dir.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n",
        vec![(
            "KAIROS__RULES__DIR".into(),
            rules.path().display().to_string(),
        )],
    );
    let batch = json!({"batch": [
        {"type": "identify", "userId": "c1", "messageId": "i1", "timestamp": "2026-09-01T11:00:00Z",
         "traits": {"email": "c1@example.com", "consent": {"email": true}, "timezone": "Europe/Berlin"}},
        {"type": "track", "userId": "c1", "messageId": "e1", "event": "Promo Seen", "timestamp": "2026-09-01T12:00:00Z"},
    ]});
    assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T12:00:00Z");
    let buy = json!({"type": "track", "userId": "c1", "messageId": "e2", "event": "Order Completed",
        "timestamp": "2026-09-01T15:00:00Z", "properties": {"order_id": "o1", "revenue": 10}});
    assert_eq!(post(&server, "/v1/track", &buy).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T15:00:00Z");
    server.stop();

    let sends = read_table(dir.path(), "sends");
    let rule = strings(&sends, "rule");
    let decision = strings(&sends, "decision");
    let reason = strings(&sends, "reason");
    let arm = strings(&sends, "arm");
    let mut got: Vec<(String, String, String, String)> = (0..rule.len())
        .map(|i| {
            (
                rule[i].clone().unwrap_or_default(),
                arm[i].clone().unwrap_or_default(),
                decision[i].clone().unwrap_or_default(),
                reason[i].clone().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("promo_high", "triggered", "send", ""),
        ("promo_holdout", "holdout", "ghost", ""),
        (
            "promo_later",
            "scheduled",
            "cancelled",
            "cancel_on:purchase",
        ),
        ("promo_later", "scheduled", "send", "priority:promo_high"),
        (
            "promo_low",
            "triggered",
            "suppressed",
            "priority:promo_high",
        ),
    ];
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(got, want);
    let assignments = read_table(dir.path(), "assignments");
    assert_eq!(
        strings(&assignments, "experiment").len(),
        4,
        "one per rule for c1"
    );
}
