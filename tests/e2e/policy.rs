//! The policy stage inside `kairos serve`: priority, ghosts for the
//! holdout, the scheduled arm and its cancellation, recorded in `sends/`.

use std::path::Path;

use serde_json::json;

use crate::support::{Server, post, read_table, strings, templates_with, wait_clock};

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
    let email = "Subject: Promo\n\nHello {{ profile.first_name | default(\"you\") }}\n";
    let templates = templates_with(&[
        ("promo_high.email", email),
        ("promo_low.email", email),
        ("promo_later.email", email),
        ("promo_holdout.email", email),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_rules(
        dir.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n",
        rules.path(),
        templates.path(),
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

/// (rule, step, customer, decision, reason, channel) of every `sends/` row, sorted.
fn decisions(dir: &Path) -> Vec<(String, String, String, String, String, String)> {
    let sends = read_table(dir, "sends");
    let col = |n: &str| strings(&sends, n);
    let (rule, cust, decision, reason, channel) = (
        col("rule"),
        col("customer_id"),
        col("decision"),
        col("reason"),
        col("channel"),
    );
    let step: Vec<i64> = sends
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("step")
                .expect("step")
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("int64")
                .clone();
            a.values().to_vec()
        })
        .collect();
    let mut got: Vec<_> = (0..rule.len())
        .map(|i| {
            (
                rule[i].clone().unwrap_or_default(),
                step[i].to_string(),
                cust[i].clone().unwrap_or_default(),
                decision[i].clone().unwrap_or_default(),
                reason[i].clone().unwrap_or_default(),
                channel[i].clone().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn a_sequence_sends_its_steps_across_a_restart_and_stops_after_a_purchase() {
    let rules = tempfile::tempdir().expect("tempdir");
    rule(
        rules.path(),
        "onboarding",
        "-- cancel_on: purchase\n-- step 1: after=1d\n-- step 2: after=3d channel=sms",
    );
    let templates = templates_with(&[
        ("onboarding.email", "Subject: Welcome\n\nStep 0\n"),
        (
            "onboarding_step1.email",
            "Subject: Tips\n\nStep 1 for {{ profile.email }}\n",
        ),
        (
            "onboarding_step2.sms",
            "\nStep 2: 10% off. Reply STOP to opt out.\n",
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_rules(
        dir.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n",
        rules.path(),
        templates.path(),
    );
    let traits = |c: &str| {
        json!({"email": format!("{c}@example.com"), "phone": "+15550100",
               "consent": {"email": true, "sms": true}})
    };
    let batch = json!({"batch": [
        {"type": "identify", "userId": "c1", "messageId": "i1", "timestamp": "2026-09-01T11:00:00Z", "traits": traits("c1")},
        {"type": "identify", "userId": "c2", "messageId": "i2", "timestamp": "2026-09-01T11:00:00Z", "traits": traits("c2")},
        {"type": "track", "userId": "c1", "messageId": "e1", "event": "Promo Seen", "timestamp": "2026-09-01T12:00:00Z"},
        {"type": "track", "userId": "c2", "messageId": "e2", "event": "Promo Seen", "timestamp": "2026-09-01T12:00:00Z"},
    ]});
    assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T12:00:00Z");
    // Another customer's event moves the event clock past step 1's time.
    let ping = |id: &str, at: &str| json!({"type": "track", "userId": "c3", "messageId": id, "event": "Page Viewed", "timestamp": at});
    let tick = ping("p1", "2026-09-02T13:00:00Z");
    assert_eq!(post(&server, "/v1/track", &tick).await.status(), 200);
    wait_clock(dir.path(), "2026-09-02T13:00:00Z");
    // A crash mid-sequence: the restart knows which steps are left.
    server.kill9();
    server.restart();
    let buy = json!({"type": "track", "userId": "c1", "messageId": "b1", "event": "Order Completed",
        "timestamp": "2026-09-03T10:00:00Z", "properties": {"order_id": "o1", "revenue": 25}});
    assert_eq!(post(&server, "/v1/track", &buy).await.status(), 200);
    let tick = ping("p2", "2026-09-04T13:00:00Z");
    assert_eq!(post(&server, "/v1/track", &tick).await.status(), 200);
    wait_clock(dir.path(), "2026-09-04T13:00:00Z");
    server.stop();

    let row = |step: &str, c: &str, d: &str, r: &str, ch: &str| {
        (
            "onboarding".to_string(),
            step.to_string(),
            c.to_string(),
            d.to_string(),
            r.to_string(),
            ch.to_string(),
        )
    };
    assert_eq!(
        decisions(dir.path()),
        vec![
            row("0", "c1", "send", "", "email"),
            row("0", "c2", "send", "", "email"),
            row("1", "c1", "send", "", "email"),
            row("1", "c2", "send", "", "email"),
            row("2", "c1", "cancelled", "exit:purchase", "sms"),
            row("2", "c2", "send", "", "sms"),
        ]
    );
    // Delivered through the outbox, each send once, none cancelled.
    let deliveries = read_table(dir.path(), "deliveries");
    let sent: std::collections::BTreeSet<String> = strings(&deliveries, "send_id")
        .into_iter()
        .zip(strings(&deliveries, "status"))
        .filter(|(_, s)| s.as_deref() == Some("sent"))
        .filter_map(|(id, _)| id)
        .collect();
    assert_eq!(
        sent.into_iter().collect::<Vec<_>>(),
        vec![
            "onboarding:0:c1:k",
            "onboarding:0:c2:k",
            "onboarding:1:c1:k",
            "onboarding:1:c2:k",
            "onboarding:2:c2:k"
        ]
    );
    let files: Vec<String> = crate::support::files_under(&dir.path().join("outbox"));
    assert_eq!(files.len(), 5, "{files:?}");
    assert_eq!(files.iter().filter(|f| f.ends_with(".eml")).count(), 4);
    let sms = files
        .iter()
        .find(|f| f.ends_with(".json"))
        .expect("the SMS");
    let text = std::fs::read_to_string(sms).expect("read");
    assert!(
        text.contains("Step 2: 10% off") && text.contains("+15550100"),
        "{text}"
    );
}
