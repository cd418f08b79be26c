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

/// A fake SMS provider on loopback: records every request and answers
/// per recipient: `+15550101` fails once with 500 then succeeds, `+15550102`
/// is an invalid number (400, permanent), others succeed.
async fn fake_twilio() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    async fn messages(
        State(seen): State<Seen>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        assert_eq!(
            headers["authorization"], "Basic QUMxOnRvaw==",
            "basic auth with SID and token"
        );
        let mut s = seen.lock().expect("lock");
        s.push(body.clone());
        let tries = s.iter().filter(|b| **b == body).count();
        if body.contains("To=%2B15550101") && tries == 1 {
            return (StatusCode::INTERNAL_SERVER_ERROR, "try again".into());
        }
        if body.contains("To=%2B15550102") {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"code": 21211, "message": "Invalid 'To' Phone Number"}"#.into(),
            );
        }
        (StatusCode::CREATED, format!(r#"{{"sid": "SM{tries}"}}"#))
    }
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/AC1/Messages.json",
            axum::routing::post(messages),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A `promo` rule sending one SMS per `promo_seen` firing (deduplicated on
/// `dedupe_key`, an SQL expression), and its template `body`.
fn promo_sms(dedupe_key: &str, body: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let rules = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        rules.path().join("promo.sql"),
        format!(
            "-- name: promo\n-- description: test\n-- channel: sms\n\nSELECT customer_id, {dedupe_key} AS dedupe_key FROM batch_events WHERE event_type = 'promo_seen'\n"
        ),
    )
    .expect("rule");
    let templates = crate::support::templates_with(&[("promo.sms", body)]);
    (rules, templates)
}

// Several threads: the fake provider answers while the test blocks on
// the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_through_the_provider_api_retrying_5xx_and_never_retrying_a_bad_number() {
    let (base, seen) = fake_twilio().await;
    let (rules, templates) = promo_sms(
        "'k'",
        "\nHi {{ profile.first_name | default(\"there\") }}, 10% off today. Reply STOP to opt out.\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n\
         [messaging.channels.sms]\nprovider = \"twilio\"\nbase_url = \"{base}\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15550199\"\n"
    );
    let mut server = Server::start_with_rules(
        dir.path().to_str().expect("utf8"),
        &config,
        rules.path(),
        templates.path(),
    );
    let mut batch = Vec::new();
    for (i, phone) in ["+15550101", "+15550102", "+15550103"].iter().enumerate() {
        let c = format!("c{i}");
        batch.push(json!({"type": "identify", "userId": c, "messageId": format!("i{i}"), "timestamp": "2026-09-01T08:00:00Z",
            "traits": {"phone": phone, "first_name": format!("N{i}"), "consent": {"sms": true}}}));
        batch.push(json!({"type": "track", "userId": c, "messageId": format!("e{i}"), "event": "Promo Seen", "timestamp": "2026-09-01T09:00:00Z"}));
    }
    assert_eq!(
        post(&server, "/v1/batch", &json!({ "batch": batch }))
            .await
            .status(),
        200
    );
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");
    // The workers finish every handed message before a clean stop returns.
    server.stop();

    let d = read_table(dir.path(), "deliveries");
    let mut got: Vec<(String, String, String)> = strings(&d, "customer_id")
        .into_iter()
        .zip(strings(&d, "status"))
        .zip(strings(&d, "provider_message_id"))
        .map(|((c, s), id)| {
            (
                c.unwrap_or_default(),
                s.unwrap_or_default(),
                id.unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    let errors = strings(&d, "error");
    assert_eq!(
        got,
        vec![
            ("c0".into(), "retry".into(), "".into()),
            ("c0".into(), "sent".into(), "SM2".into()),
            ("c1".into(), "failed".into(), "".into()),
            ("c2".into(), "sent".into(), "SM1".into()),
        ],
        "{errors:?}"
    );
    assert!(
        errors.iter().flatten().any(|e| e.contains("21211")),
        "{errors:?}"
    );
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(
        requests.len(),
        4,
        "one retry, no retry of the bad number: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|b| b.contains("Body=Hi+N2%2C+10%25+off+today")),
        "{requests:?}"
    );
}

/// POSTs a form to `path` on `server`, signed as Twilio signs it for the
/// public URL `public`.
async fn twilio_post(
    server: &Server,
    public: &str,
    path: &str,
    form: &[(&str, &str)],
    token: &str,
) -> reqwest::Response {
    let params: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signature =
        kairos_messaging::callbacks::twilio_signature(token, &format!("{public}{path}"), &params);
    reqwest::Client::new()
        .post(server.url(path))
        .header("x-twilio-signature", signature)
        .form(&params)
        .send()
        .await
        .expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reply_stops_the_next_sms_and_status_callbacks_are_recorded() {
    let (base, seen) = fake_twilio().await;
    // One firing per promo event (its id is the dedupe key).
    let (rules, templates) = promo_sms("event_id", "\nHi, 10% off today. Reply STOP to opt out.\n");
    let dir = tempfile::tempdir().expect("tempdir");
    // Twilio signs the URL it was given: the public one, not our loopback.
    let public = "https://kairos.example";
    let config = format!(
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[publish]\ninterval_secs = 1\n[policy]\ncaps = []\nquiet_hours = \"\"\n\
         [messaging]\npublic_url = \"{public}\"\n\
         [messaging.channels.sms]\nprovider = \"twilio\"\nbase_url = \"{base}\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15550199\"\n"
    );
    let mut server = Server::start_with_rules(
        dir.path().to_str().expect("utf8"),
        &config,
        rules.path(),
        templates.path(),
    );
    let batch = json!({"batch": [
        {"type": "identify", "userId": "c0", "messageId": "i0", "timestamp": "2026-09-01T08:00:00Z",
         "traits": {"phone": "+1 555-0103", "consent": {"sms": true}}},
        {"type": "track", "userId": "c0", "messageId": "e0", "event": "Promo Seen", "timestamp": "2026-09-01T09:00:00Z"},
    ]});
    assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");

    // The message named its status callback; the provider reports delivery.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let callback = loop {
        let first = seen.lock().expect("lock").first().cloned();
        if let Some(body) = first {
            let form: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{body}"))
                .expect("form")
                .query_pairs()
                .into_owned()
                .collect();
            break form
                .into_iter()
                .find(|(k, _)| k == "StatusCallback")
                .map(|(_, v)| v)
                .expect("StatusCallback in the Twilio request");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SMS reached the provider"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let path = callback
        .strip_prefix(public)
        .unwrap_or_else(|| panic!("{callback} is not under the public URL"))
        .to_string();
    assert!(path.starts_with("/callbacks/sms/"), "{path}");
    let delivered = [
        ("MessageSid", "SM1"),
        ("MessageStatus", "delivered"),
        ("To", "+15550103"),
    ];
    let forged = twilio_post(&server, public, &path, &delivered, "not the token").await;
    assert_eq!(forged.status(), 403, "a wrong signature is refused");
    let ok = twilio_post(&server, public, &path, &delivered, "tok").await;
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);

    // The customer replies STOP; their number is found in the profile
    // (once published), written differently.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while crate::support::rows(&read_table(dir.path(), "profiles")) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "profiles never published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let stop = [
        ("MessageSid", "SMin1"),
        ("From", "+15550103"),
        ("To", "+15550199"),
        ("Body", "Stop"),
    ];
    let r = twilio_post(&server, public, "/callbacks/sms", &stop, "tok").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.expect("body").contains("<Response>"),
        "TwiML answer"
    );

    // The next promo (after the STOP, in event time) sends nothing.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let next = json!({"type": "track", "userId": "c0", "messageId": "e1", "event": "Promo Seen", "timestamp": later});
    assert_eq!(post(&server, "/v1/track", &next).await.status(), 200);
    wait_clock(dir.path(), &later);
    server.stop();

    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "one SMS only: the STOP came between"
    );
    let sends = read_table(dir.path(), "sends");
    let decisions: Vec<(Option<String>, Option<String>)> = strings(&sends, "decision")
        .into_iter()
        .zip(strings(&sends, "reason"))
        .collect();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert!(
        decisions
            .iter()
            .any(|(d, r)| d.as_deref() == Some("suppressed")
                && r.as_deref().is_some_and(|r| r.contains("sms"))),
        "the second promo is suppressed for SMS consent: {decisions:?}"
    );
    // Both callbacks are events: the delivery receipt and the opt-out.
    let events = read_table(dir.path(), "events");
    let types: Vec<Option<String>> = strings(&events, "event_type");
    assert_eq!(
        types
            .iter()
            .filter(|t| t.as_deref() == Some("message_status"))
            .count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| t.as_deref() == Some("sms_opt_out"))
            .count(),
        1,
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsubscribe_link_confirms_then_records_one_opt_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        dir.path().to_str().expect("utf8"),
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[policy]\ncaps = []\nquiet_hours = \"\"\n",
    );
    let order = json!({"batch": [
        {"type": "identify", "userId": "ana", "messageId": "i1", "timestamp": "2026-09-01T08:00:00Z",
         "traits": {"email": "ana@example.com", "consent": {"email": true}}},
        {"type": "track", "userId": "ana", "messageId": "o1", "event": "Order Completed",
         "timestamp": "2026-09-01T09:00:00Z", "properties": {"order_id": "o1", "revenue": 30}},
    ]});
    assert_eq!(post(&server, "/v1/batch", &order).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");
    // The order confirmation (transactional, at once) lands in the outbox.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let eml = loop {
        if let Some(p) = files(&dir.path().join("outbox"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "eml"))
        {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no email delivered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(eml).expect("eml");
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .and_then(|l| l.strip_suffix('>'))
        .expect("List-Unsubscribe header")
        .to_string();
    let path = &url[url.find("/u/").expect("/u/ path")..];
    let client = reqwest::Client::new();
    let page = client.get(server.url(path)).send().await.expect("get");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("<form method=\"post\">") && html.contains("emails"),
        "{html}"
    );
    for _ in 0..2 {
        let r = client.post(server.url(path)).send().await.expect("post");
        assert_eq!(r.status(), 200, "a second click is fine too");
    }
    let forged = format!("{}x", path);
    assert_eq!(
        client
            .post(server.url(&forged))
            .send()
            .await
            .expect("post")
            .status(),
        404
    );
    server.stop();

    let events = read_table(dir.path(), "events");
    let unsubscribes: Vec<_> = strings(&events, "event_type")
        .into_iter()
        .zip(strings(&events, "customer_id"))
        .filter(|(t, _)| t.as_deref() == Some("email_unsubscribe"))
        .collect();
    assert_eq!(
        unsubscribes,
        vec![(Some("email_unsubscribe".into()), Some("ana".into()))],
        "recorded once"
    );
}

/// A real SMTP server (aiosmtpd, installed by `.ci/setup-test-env`) on a
/// loopback port, writing what it receives into a Maildir.
struct Aiosmtpd {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Aiosmtpd {
    fn start() -> Option<Aiosmtpd> {
        let python = crate::support::external("KAIROS_TEST_PYTHON")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let maildir = tempfile::tempdir().expect("tempdir");
        let child = std::process::Command::new(python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .spawn()
            .expect("start aiosmtpd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(Aiosmtpd {
            child,
            port,
            maildir,
        })
    }

    fn messages(&self) -> Vec<String> {
        files(&self.maildir.path().join("mail/new"))
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read mail"))
            .collect()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_arrives_at_a_real_smtp_server_with_its_headers() {
    let Some(smtp) = Aiosmtpd::start() else {
        eprintln!("KAIROS_TEST_PYTHON not set: run .ci/setup-test-env (the test command does)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[rules]\nclock = \"events\"\ninterval_ms = 50\n[messaging]\nfrom = \"Shop <shop@example.com>\"\npublic_url = \"https://shop.example\"\n\
         [messaging.channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        smtp.port
    );
    let mut server = Server::start(dir.path().to_str().expect("utf8"), &config);
    let order = json!({"batch": [
        {"type": "identify", "userId": "ana", "messageId": "i1", "timestamp": "2026-09-01T08:00:00Z",
         "traits": {"email": "ana@example.com", "first_name": "Ana", "consent": {"email": true}}},
        {"type": "track", "userId": "ana", "messageId": "o1", "event": "Order Completed",
         "timestamp": "2026-09-01T09:00:00Z", "properties": {"order_id": "o1", "revenue": 30, "currency": "EUR"}},
    ]});
    assert_eq!(post(&server, "/v1/batch", &order).await.status(), 200);
    wait_clock(dir.path(), "2026-09-01T09:00:00Z");
    server.stop();

    let mail = smtp.messages();
    assert_eq!(mail.len(), 1, "one order confirmation: {mail:?}");
    for needle in [
        "From: Shop <shop@example.com>",
        "To: ana@example.com",
        "Subject: Your order is confirmed",
        "Message-ID: <order_confirmation_0_ana_order_o1-",
        "List-Unsubscribe: <https://shop.example/u/",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Hi Ana,",
        "Thank you for your order of 30",
    ] {
        assert!(
            mail[0].contains(needle),
            "{needle:?} missing in:\n{}",
            mail[0]
        );
    }
    let d = read_table(dir.path(), "deliveries");
    assert_eq!(strings(&d, "provider"), vec![Some("smtp".to_string())]);
    assert_eq!(strings(&d, "status"), vec![Some("sent".to_string())]);
}
