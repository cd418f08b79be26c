//! Issue 16: safe defaults and bounded bad input, tried as an attacker
//! would: over raw TCP where the point is what the server reads before it
//! answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{QUIET, Server, read_table, rows, track};

/// Sends `head` (request line and headers, without the blank line) and
/// then `body_prefix` of the body, and returns the status line and the
/// response headers and body read until the server closes or 5 s pass.
fn raw_request(addr: &str, head: &str, body_prefix: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("{head}\r\n\r\n").as_bytes())
        .expect("head");
    // The server may answer and close before all of this is taken.
    let _ = s.write_all(body_prefix);
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status:?}"));
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    (code, String::from_utf8_lossy(&rest).into_owned())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_default_server_generates_credentials_and_trusts_no_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let server = Server::start_secure(data, QUIET);
    let (key, token) = server.generated();
    use std::os::unix::fs::PermissionsExt as _;
    for secret in ["_kairos/access.json", "_kairos/link-key"] {
        let mode = std::fs::metadata(dir.path().join(secret))
            .expect(secret)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let c = reqwest::Client::new();
    let call = track("u1", "m-1", "Order Completed");

    // Loopback without the key: refused, and nothing is staged.
    let r = c
        .post(server.url("/v1/track"))
        .json(&call)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = c
        .post(server.url("/v1/track"))
        .header("authorization", bearer(&key))
        .json(&call)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);

    for (path, scheme) in [
        ("/api/experiments", "Bearer"),
        ("/metrics", "Bearer"),
        ("/api/privacy/erase/unknown", "Bearer"),
        ("/experiments", "Basic"),
    ] {
        let r = c.get(server.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 401, "{path} without the token");
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or(""));
        assert!(
            challenge.is_some_and(|v| v.starts_with(scheme)),
            "{path} names {scheme}: {challenge:?}"
        );
        let r = c
            .get(server.url(path))
            .header("authorization", bearer(&token))
            .send()
            .await
            .expect("get");
        let expected = if path.starts_with("/api/privacy") {
            404
        } else {
            200
        };
        assert_eq!(r.status(), expected, "{path} with the token");
        let r = c
            .get(server.url(path))
            .header("authorization", bearer(&key))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{path}: a write key never reads");
    }
}

#[tokio::test]
async fn cross_origin_writes_and_forged_hosts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    // Even a server trusting loopback (the old default) refuses a page
    // from another origin: the browser sends text/plain without asking.
    let mut server = Server::start(
        data,
        &format!("{QUIET}[ingest]\nbrowser_origins = [\"http://shop.example\"]\n"),
    );
    let c = reqwest::Client::new();
    let identify = json!({"type": "identify", "userId": "victim",
        "traits": {"email": "attacker@evil.example", "consent": {"sms": true}}});
    let r = c
        .post(server.url("/v1/identify"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(identify.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // A configured shop's pages may send; CORS names it and the headers.
    let pre = c
        .request(reqwest::Method::OPTIONS, server.url("/v1/batch"))
        .header("origin", "http://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(pre.status().is_success(), "{}", pre.status());
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "http://shop.example");
    let allowed = h["access-control-allow-headers"].to_str().expect("headers");
    assert!(
        allowed.contains("authorization") && !allowed.contains('*'),
        "{allowed}"
    );
    let r = c
        .post(server.url("/v1/track"))
        .header("origin", "http://shop.example")
        .json(&track("u1", "m-ok", "Product Viewed"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://shop.example"
    );

    // DNS rebinding: a name that is not this server's is refused on every
    // route, reports and health alike.
    for path in ["/api/experiments", "/healthz", "/v1/track"] {
        let method = if path == "/v1/track" { "POST" } else { "GET" };
        let (code, _) = raw_request(
            server.addr(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: evil.example:8080\r\nContent-Length: 0\r\nConnection: close"
            ),
            b"",
        );
        assert_eq!(code, 403, "{path}");
    }
    let (code, _) = raw_request(
        server.addr(),
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close",
            server.addr().rsplit(':').next().expect("port")
        ),
        b"",
    );
    assert_eq!(code, 200, "localhost is a name of every server");

    server.stop();
    let events = read_table(dir.path(), "events");
    assert_eq!(rows(&events), 1, "only the configured shop's event");
    assert_eq!(
        rows(&read_table(dir.path(), "profiles")),
        0,
        "the forged identify left nothing"
    );
}

#[tokio::test]
async fn a_stranger_is_refused_before_the_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nwrite_keys = [\"wk\"]\n"),
    );
    // 4 MB announced, 1 KB sent: the 401 comes without the rest.
    let started = Instant::now();
    let (code, body) = raw_request(
        server.addr(),
        &format!(
            "POST /v1/import HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 4000000",
            server.addr()
        ),
        &[b'{'; 1024],
    );
    assert_eq!(code, 401, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered without waiting for the body"
    );
    // A batch whose key could only be in its body is read up to 512 KiB.
    let (code, body) = raw_request(
        server.addr(),
        &format!(
            "POST /v1/batch HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: 4000000",
            server.addr()
        ),
        &vec![b' '; 600 * 1024],
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization header"), "{body}");
}

#[tokio::test]
async fn two_million_bad_items_cost_a_small_answer_and_little_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nwrite_keys = [\"wk\"]\n"),
    );
    let c = reqwest::Client::new();
    // The attack: 4 MB holding 2M items, 8 at once.
    let mut body = String::with_capacity(4_100_000);
    body.push_str("{\"batch\":[");
    for i in 0..2_000_000 {
        body.push_str(if i == 0 { "1" } else { ",1" });
    }
    body.push_str("]}");
    let before = server.rss_bytes();
    let sends: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(
                c.post(server.url("/v1/batch"))
                    .header("authorization", "Bearer wk")
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send(),
            )
        })
        .collect();
    for send in sends {
        let r = send.await.expect("task").expect("post");
        assert_eq!(r.status(), 413);
        let text = r.text().await.expect("body");
        assert!(text.len() < 1024, "{} bytes of answer", text.len());
        assert!(text.contains("2000000 calls; at most 10000"), "{text}");
    }
    // At the limit every item is parsed: 10,000 bad ones, 100 listed.
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({"type": "track", "userId": format!("u{i}")}))
        .collect();
    let r = c
        .post(server.url("/v1/batch"))
        .header("authorization", "Bearer wk")
        .json(&json!({"batch": batch}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"].as_array().expect("errors").len(), 100);
    assert_eq!(v["errors_total"], 10_000);
    let grown = server.rss_bytes().saturating_sub(before);
    eprintln!("server grew by {} MB", grown >> 20);
    assert!(grown < 300 << 20, "the server grew by {} MB", grown >> 20);
}

#[tokio::test]
async fn slow_clients_time_out_and_connections_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!(
            "{QUIET}[server]\nmax_connections = 3\nheader_timeout = \"2s\"\nbody_timeout = \"1s\"\n"
        ),
    );
    // A body that never comes: 408 after server.body_timeout.
    let started = Instant::now();
    let (code, body) = raw_request(
        server.addr(),
        &format!(
            "POST /v1/track HTTP/1.1\r\nHost: {}\r\nContent-Length: 100",
            server.addr()
        ),
        b"{",
    );
    assert_eq!(code, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Three silent connections take every slot: a fourth client waits...
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .expect("client");
    assert!(
        quick.get(server.url("/healthz")).send().await.is_err(),
        "answered beyond server.max_connections"
    );
    // ...until the header timeout closes the silent ones.
    std::thread::sleep(Duration::from_secs(2));
    let r = reqwest::get(server.url("/healthz"))
        .await
        .expect("served again");
    assert_eq!(r.status(), 200);
    drop(idle);
}

#[tokio::test]
async fn absurd_report_windows_are_a_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let r = reqwest::get(server.url("/api/experiments?window=9999999999w"))
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["param"], "window", "{v}");
}

#[tokio::test]
async fn generic_callbacks_are_bound_to_their_reference_and_never_replayed() {
    use kairos_messaging::callbacks::{Purpose, reference, sign_fields};
    use kairos_policy::Channel;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!(
            "{QUIET}[rules]\nenabled = false\n[messaging]\nlink_key = \"lk\"\n[messaging.channels.email]\nprovider = \"smtp\"\ncallback_secret = \"cbs\"\n"
        ),
    );
    let c = reqwest::Client::new();
    let post = |path: &str, body: Value, ts: i64| {
        let body = body.to_string();
        let sig = kairos_messaging::http::webhook_signature(b"cbs", ts, body.as_bytes());
        c.post(server.url(path))
            .header("x-kairos-timestamp", ts.to_string())
            .header("x-kairos-signature", sig)
            .body(body)
            .send()
    };
    let now = chrono::Utc::now().timestamp();
    let email_ref = reference(b"lk", "c1", Channel::Email, "s1");
    let bounce = json!({"reference": email_ref, "status": "bounced", "permanent": true});
    let r = post("/callbacks/email", bounce.clone(), now)
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // The very same signed request again: a replay.
    let r = post("/callbacks/email", bounce.clone(), now)
        .await
        .expect("post");
    assert_eq!(r.status(), 409);
    // The path's reference must be the signed one.
    let other = reference(b"lk", "c2", Channel::Email, "s2");
    let r = post(
        &format!("/callbacks/email/{other}"),
        bounce.clone(),
        now + 1,
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
    // A signed body without a reference does not take the path's.
    let r = post(
        &format!("/callbacks/email/{other}"),
        json!({"status": "bounced"}),
        now + 2,
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
    // A push message's reference is not an email callback.
    let push_ref = reference(b"lk", "c1", Channel::Push, "s3");
    let r = post(
        "/callbacks/email",
        json!({"reference": push_ref, "status": "delivered"}),
        now + 3,
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
    // An unsubscribe link's token is never a message reference.
    let unsub = sign_fields(b"lk", Purpose::Unsubscribe, &["c1", "email", "s4"]);
    let r = post(
        "/callbacks/email",
        json!({"reference": unsub, "status": "complained"}),
        now + 4,
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
}

/// A small seeded generator (xorshift64*), so a failing case can be
/// replayed from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `body`: byte flips, cuts, splices, repeated
/// spans, or JSON-aware swaps that keep it parsing with odd values.
fn mutate(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(b'{');
        }
        let at = rng.below(b.len());
        match rng.below(9) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => {
                let end = (at + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(256)).min(b.len());
                let span = b[at..end].to_vec();
                for _ in 0..rng.below(50) {
                    b.splice(at..at, span.iter().copied());
                }
            }
            4 => {
                const ODD: [&str; 12] = [
                    "null",
                    "1e999",
                    "-0",
                    "\"\\u0000\"",
                    "[]",
                    "{}",
                    "\"\\ud800\"",
                    "18446744073709551616",
                    "\"2026-13-45T99:99:99Z\"",
                    "true",
                    "\"\u{202e}x\"",
                    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                ];
                let odd = ODD[rng.below(ODD.len())].as_bytes();
                b.splice(at..at, odd.iter().copied());
            }
            5 => b.insert(at, rng.next() as u8),
            6 => {
                let text = String::from_utf8_lossy(&b).into_owned();
                const KEYS: [&str; 6] = [
                    "\"userId\"",
                    "\"timestamp\"",
                    "\"properties\"",
                    "\"type\"",
                    "\"batch\"",
                    "\"traits\"",
                ];
                let swapped =
                    text.replacen(KEYS[rng.below(KEYS.len())], KEYS[rng.below(KEYS.len())], 1);
                b = swapped.into_bytes();
            }
            7 => b.extend_from_slice(&body[..rng.below(body.len())]),
            _ => b.reverse(),
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_calls_never_get_a_5xx_nor_crash_the_server() {
    let seed: u64 = std::env::var("KAIROS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1616);
    let runs: usize = std::env::var("KAIROS_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("fuzzing ingest: seed {seed}, {runs} calls (KAIROS_FUZZ_SEED / KAIROS_FUZZ_RUNS)");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nwrite_keys = [\"wk\"]\nclient_keys = [\"pub\"]\n"),
    );
    let valid = json!({"batch": [
        track("u1", "m-1", "Order Completed"),
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m-2",
         "traits": {"email": "u1@example.com", "consent": {"email": true}}},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m-3",
         "properties": {"price": "12.50", "quantity": 2}, "context": {"timezone": "Europe/Berlin"}},
        {"type": "alias", "userId": "u1", "previousId": "a0", "messageId": "m-4"},
        {"type": "group", "userId": "u1", "groupId": "g1", "messageId": "m-5", "traits": {"n": 1}},
    ], "sentAt": "2026-09-01T10:00:00Z"})
    .to_string();
    let single = json!({"type": "track", "userId": "u2", "event": "Viewed", "writeKey": "pub",
        "timestamp": "2026-09-01T10:00:00Z", "properties": {"a": [1, {"b": null}]}})
    .to_string();
    let import: String = (0..5)
        .map(|i| format!("{}\n", track(&format!("u{i}"), &format!("i-{i}"), "Viewed")))
        .collect();
    let mut rng = Rng(seed | 1);
    let c = reqwest::Client::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..runs {
        let (path, base) = match rng.below(4) {
            0 => ("/v1/batch", valid.as_bytes()),
            1 => ("/v1/t", single.as_bytes()),
            2 => ("/v1/import", import.as_bytes()),
            _ => (
                ["/v1/track", "/v1/identify", "/v1/b", "/v1/i"][rng.below(4)],
                single.as_bytes(),
            ),
        };
        let body = mutate(&mut rng, base);
        let mut req = c.post(server.url(path));
        if rng.below(3) > 0 {
            req = req.header(
                "authorization",
                if rng.below(2) == 0 {
                    "Bearer wk"
                } else {
                    "Basic cHViOg=="
                },
            );
        }
        if rng.below(5) == 0 {
            use std::io::Write as _;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).expect("gzip");
            let mut gz = enc.finish().expect("gzip");
            if rng.below(3) == 0 {
                let cut = rng.below(gz.len());
                gz.truncate(cut);
            }
            req = req.header("content-encoding", "gzip").body(gz);
        } else {
            req = req.body(body.clone());
        }
        let r = req.send().await.unwrap_or_else(|e| {
            panic!(
                "call {i} (seed {seed}) got no answer: {e}; body {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        let status = r.status().as_u16();
        assert!(
            status < 500,
            "call {i} (seed {seed}) to {path} answered {status}: {}; body {:?}",
            r.text().await.unwrap_or_default(),
            String::from_utf8_lossy(&body)
        );
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    eprintln!("answers: {statuses:?}");
    let r = reqwest::get(server.url("/healthz"))
        .await
        .expect("still up");
    assert_eq!(r.status(), 200);
    assert!(
        statuses.contains_key(&200),
        "some mutations stay valid: {statuses:?}"
    );
}

/// Chromium, kept on loopback: every host name fails inside the browser
/// and its own background requests (time, accounts) go nowhere.
const CHROMIUM_OFFLINE: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-features=NetworkTimeServiceQuerying,AimEnabled,AimServerEligibilityEnabled",
    "--gaia-url=http://127.0.0.1:9/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_js_sends_from_a_configured_origin() {
    use crate::support::{external, strings};
    let (Some(chromium), Some(sdk)) = (
        external("KAIROS_TEST_CHROMIUM"),
        external("KAIROS_TEST_ANALYTICS_JS"),
    ) else {
        return;
    };
    let sdk = std::fs::read(&sdk).unwrap_or_else(|e| panic!("{sdk}: {e}; run .ci/setup-test-env"));
    // The shop's page, on another loopback port: another origin.
    let page = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let page_origin = format!("http://{}", page.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_secure(
        dir.path().to_str().expect("utf8"),
        &format!(
            "{QUIET}[ingest]\nclient_keys = [\"pub-e2e\"]\nbrowser_origins = [\"{page_origin}\"]\n[report]\ntoken = \"t\"\n"
        ),
    );
    let html = include_str!("pages/analytics_js.html")
        .replace("__KAIROS__", server.addr())
        .replace("__WRITE_KEY__", "pub-e2e");
    let app = axum::Router::new()
        .route(
            "/page.html",
            axum::routing::get(move || async move { axum::response::Html(html) }),
        )
        .route(
            "/vendor/analytics-next.js",
            axum::routing::get(move || async move {
                ([("content-type", "application/javascript")], sdk)
            }),
        );
    tokio::spawn(async move { axum::serve(page, app).await });

    let url = format!("{page_origin}/page.html");
    let dom = tokio::task::spawn_blocking(move || {
        // Debian's Chromium now and then dies at start-up: try again then.
        for attempt in 1..=3 {
            let profile = tempfile::tempdir().expect("profile dir");
            let out = std::process::Command::new(&chromium)
                .args(CHROMIUM_OFFLINE)
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(["--virtual-time-budget=10000", "--dump-dom", &url])
                .output()
                .unwrap_or_else(|e| panic!("starting {chromium}: {e}; run .ci/setup-test-env"));
            let dom = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() || attempt == 3 {
                return (dom, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            eprintln!(
                "chromium attempt {attempt} failed ({}); retrying",
                out.status
            );
        }
        unreachable!()
    })
    .await
    .expect("chromium task");
    assert!(
        dom.0.contains("DONE online=true"),
        "page: {}\nchromium: {}",
        dom.0,
        dom.1
    );
    server.stop();

    let events = read_table(dir.path(), "events");
    let names = strings(&events, "event");
    let at = names
        .iter()
        .position(|n| n.as_deref() == Some("Test Event"))
        .unwrap_or_else(|| panic!("no track from the browser: {names:?}"));
    let props: Value = serde_json::from_str(
        strings(&events, "properties")[at]
            .as_deref()
            .expect("props"),
    )
    .expect("json");
    assert_eq!(props["a"], 1);
    let source = strings(&events, "source")[at].clone().expect("source");
    assert!(
        source.starts_with("client-"),
        "sent with the client key: {source}"
    );
    let profiles = read_table(dir.path(), "profiles");
    let traits: Vec<Value> = strings(&profiles, "traits")
        .into_iter()
        .zip(strings(&profiles, "customer_id"))
        .filter(|(_, c)| c.as_deref() == Some("browser-user-1"))
        .map(|(t, _)| serde_json::from_str(&t.expect("traits")).expect("json"))
        .collect();
    let last = traits.last().expect("the identify arrived");
    assert_eq!(
        last["email"], "browser-user-1@example.com",
        "a new customer's email is taken"
    );
    assert!(
        last.get("consent").is_none(),
        "a browser cannot opt anyone in: {last}"
    );
}
