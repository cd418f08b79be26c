//! Delivery through the outbox: rendered from the templates, addressed from
//! the profile, one readable file per message, recorded in `deliveries/`.

use serde_json::json;

use crate::support::{Server, post, read_table, strings, wait_clock};

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_signup_gets_a_rendered_welcome_email_in_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        dir.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n[messaging]\nfrom = \"Shop <shop@example.com>\"\npublic_url = \"https://shop.example/k\"\n",
    );
    // welcome is split holdout 10 / scheduled 20 / triggered 70; these
    // customers fall in the triggered arm (the assignment is deterministic).
    let mut batch = Vec::new();
    for (i, c) in ["ana", "ben", "cho", "dev", "eli", "fay"]
        .iter()
        .enumerate()
    {
        batch.push(
            json!({"type": "identify", "userId": c, "messageId": format!("i{i}"),
            "timestamp": "2026-09-01T08:00:00Z",
            "traits": {"email": format!("{c}@example.com"), "first_name": c.to_uppercase(),
                       "preferred_channel": "email", "consent": {"email": true}}}),
        );
        batch.push(
            json!({"type": "track", "userId": c, "messageId": format!("s{i}"),
            "event": "Signed Up", "timestamp": "2026-09-01T09:00:00Z"}),
        );
    }
    let r = post(&server, "/v1/batch", &json!({ "batch": batch })).await;
    assert_eq!(r.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");
    server.stop();

    let sends = read_table(dir.path(), "sends");
    // Sends due now (no reason to wait); the scheduled arm's wait for 10:00.
    let mut immediate: Vec<String> = strings(&sends, "send_id")
        .into_iter()
        .zip(strings(&sends, "decision"))
        .zip(strings(&sends, "reason"))
        .filter(|((_, d), r)| d.as_deref() == Some("send") && r.is_none())
        .filter_map(|((id, _), _)| id)
        .collect();
    immediate.sort();
    let deliveries = read_table(dir.path(), "deliveries");
    let delivered: Vec<(Option<String>, Option<String>)> = strings(&deliveries, "send_id")
        .into_iter()
        .zip(strings(&deliveries, "status"))
        .collect();
    let outbox = files(&dir.path().join("outbox"));
    assert!(!immediate.is_empty(), "some welcome goes at once");
    let mut sent: Vec<String> = delivered
        .iter()
        .filter(|(_, s)| s.as_deref() == Some("sent"))
        .filter_map(|(id, _)| id.clone())
        .collect();
    sent.sort();
    assert_eq!(
        sent, immediate,
        "every due send delivered once: {delivered:?}"
    );
    assert_eq!(outbox.len(), immediate.len());
    let eml = outbox
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .expect("an .eml");
    let text = std::fs::read_to_string(eml).expect("read eml");
    let to = text
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .expect("To header");
    let name = to.split('@').next().expect("local part").to_uppercase();
    for needle in [
        "From: Shop <shop@example.com>".to_string(),
        format!("Subject: Welcome, {name}!"),
        format!("Hi {name},"),
        "List-Unsubscribe: <https://shop.example/k/u/".to_string(),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click".to_string(),
        "Message-ID: <welcome_0_".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing in:\n{text}");
    }
}
