//! The Segment-compatible intake over real HTTP.

use std::io::Write;

use arrow::array::{Array, Float64Array, Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use serde_json::{Value, json};

use crate::support::{QUIET, Server, post, read_table, rows, strings, track};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body).expect("gzip");
    enc.finish().expect("gzip")
}

#[tokio::test]
async fn batch_keeps_good_items_and_names_each_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let body = json!({"batch": [
        track("u1", "m-0", "Order Completed"),
        {"type": "track", "event": "Product Viewed"},
        {"type": "track", "userId": "u2", "event": "x", "timestamp": "26/11/2026"},
        {"type": "track", "userId": "u3", "event": "x", "properties": {"price": {"amount": 3}}},
        {"type": "page", "anonymousId": "a9", "name": "Home", "messageId": "m-4"},
    ]});
    let r = post(&server, "/v1/batch", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["accepted"], 2);
    let errs: Vec<(u64, &str)> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().expect("index"),
                e["field"].as_str().expect("field"),
            )
        })
        .collect();
    assert_eq!(
        errs,
        vec![(1, "userId"), (2, "timestamp"), (3, "properties.price")]
    );

    // Nothing good at all: 400 with the same list.
    let r = post(
        &server,
        "/v1/batch",
        &json!({"batch": [{"type": "track"}, {"type": "nope", "userId": "u"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"].as_array().expect("errors").len(), 2);
    assert_eq!(v["errors"][1]["field"], "type");

    server.stop();
    let events = read_table(dir.path(), "events");
    assert_eq!(rows(&events), 2);
    let mut ids: Vec<_> = strings(&events, "event_id").into_iter().flatten().collect();
    ids.sort();
    assert_eq!(ids, vec!["m-0", "m-4"]);
}

#[tokio::test]
async fn malformed_json_wrong_shape_and_bad_encoding_are_clear_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            "/v1/track",
            b"{\"userId\": \"u1\", ".to_vec(),
            None,
            400,
            "malformed JSON",
        ),
        (
            "/v1/batch",
            b"{\"batch\": {\"a\": 1}}".to_vec(),
            None,
            400,
            "wrong shape",
        ),
        ("/v1/track", b"[1,2]".to_vec(), None, 400, "JSON object"),
        (
            "/v1/track",
            b"not gzip at all".to_vec(),
            Some("gzip"),
            400,
            "gzip",
        ),
        (
            "/v1/track",
            b"{}".to_vec(),
            Some("br"),
            415,
            "Content-Encoding",
        ),
        ("/v1/teleport", b"{}".to_vec(), None, 404, "unknown call"),
    ];
    for (path, body, enc, status, needle) in cases {
        let mut req = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(e) = enc {
            req = req.header("content-encoding", e);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status().as_u16(), status, "{path} {needle}");
        let text = r.text().await.expect("text");
        assert!(text.contains(needle), "{path}: {text}");
    }
}

#[tokio::test]
async fn short_paths_gzip_cors_and_write_key_in_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nwrite_keys = [\"wk_live\"]\n"),
    );
    // analytics.js: short path, text/plain body, write key inside, gzip.
    let body = json!({"userId": "u1", "event": "Product Viewed", "messageId": "js-1", "writeKey": "wk_live",
        "properties": {"product_id": "p-9", "price": "12.25", "category": "shoes"}});
    let r = client()
        .post(server.url("/v1/t"))
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    for (path, body) in [
        (
            "/v1/p",
            json!({"anonymousId": "a1", "name": "Home", "messageId": "js-2", "writeKey": "wk_live"}),
        ),
        (
            "/v1/i",
            json!({"userId": "u1", "traits": {"email": "u1@example.com"}, "messageId": "js-3", "writeKey": "wk_live"}),
        ),
        (
            "/v1/a",
            json!({"userId": "u1", "previousId": "a1", "messageId": "js-4", "writeKey": "wk_live"}),
        ),
        (
            "/v1/s",
            json!({"userId": "u1", "name": "Cart", "messageId": "js-5", "writeKey": "wk_live"}),
        ),
        (
            "/v1/g",
            json!({"userId": "u1", "groupId": "acme", "messageId": "js-6", "writeKey": "wk_live"}),
        ),
    ] {
        let r = client()
            .post(server.url(path))
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{path}");
    }
    let pre = client()
        .request(reqwest::Method::OPTIONS, server.url("/v1/t"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    // Issue 16: no CORS for an origin that is not in ingest.browser_origins
    // (tests/e2e/security.rs tries a configured one).
    assert_eq!(pre.status(), 403);
    assert!(pre.headers().get("access-control-allow-origin").is_none());

    server.stop();
    let events = read_table(dir.path(), "events");
    let mut kinds: Vec<_> = strings(&events, "event_type")
        .into_iter()
        .flatten()
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["group", "page_view", "product_view", "screen_view"]
    );
    let b = events
        .iter()
        .find(|b| strings(&[(*b).clone()], "event_id").contains(&Some("js-1".into())))
        .expect("js-1 batch");
    let row = strings(&[b.clone()], "event_id")
        .iter()
        .position(|e| e.as_deref() == Some("js-1"))
        .expect("row");
    let price = b
        .column_by_name("price")
        .expect("price")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    assert_eq!(
        price.value(row),
        12.25,
        "numeric strings are promoted as numbers"
    );
    assert_eq!(
        strings(&[b.clone()], "category")[row].as_deref(),
        Some("shoes")
    );
    assert!(strings(&events, "source").iter().all(|s| {
        s.as_deref()
            .is_some_and(|s| s.starts_with("key-") && !s.contains("wk_live"))
    }));
    assert_eq!(rows(&read_table(dir.path(), "identities")), 1);
    assert_eq!(rows(&read_table(dir.path(), "profiles")), 1);
}

#[tokio::test]
async fn write_keys_basic_bearer_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nwrite_keys = [\"k1\", \"k2\"]\n"),
    );
    let body = track("u1", "auth-1", "Signed Up");
    let track_url = server.url("/v1/track");
    let cases = [
        (client().post(&track_url), 401, "no key"),
        (
            client().post(&track_url).basic_auth("wrong", Some("")),
            401,
            "unknown key",
        ),
        (
            client().post(&track_url).basic_auth("k1", Some("")),
            200,
            "Segment's Basic auth",
        ),
        (client().post(&track_url).bearer_auth("k2"), 200, "Bearer"),
    ];
    for (req, status, label) in cases {
        let got = req
            .json(&body)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16();
        assert_eq!(got, status, "{label}");
    }
    let r = post(&server, "/v1/track", &body).await;
    assert!(
        r.text().await.expect("text").contains("write key"),
        "the refusal says what is missing"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_plain_and_gzipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nmax_body_bytes = 20000\n"),
    );
    let items: Vec<Value> = (0..200)
        .map(|i| track("u1", &format!("big-{i}"), "Product Viewed"))
        .collect();
    let body = json!({"batch": items}).to_string();
    assert!(body.len() > 20_000);
    let r = client()
        .post(server.url("/v1/batch"))
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    assert!(r.text().await.expect("text").contains("max_body_bytes"));
    // Small on the wire, too big once inflated: the limit applies after decompression.
    let zipped = gzip(body.as_bytes());
    assert!(zipped.len() < 20_000);
    let r = client()
        .post(server.url("/v1/batch"))
        .header("content-encoding", "gzip")
        .body(zipped)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn published_events_have_typed_columns_and_hive_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let mut late = track("u2", "typed-2", "Order Completed");
    late["timestamp"] = json!("2026-11-20T23:59:59.999+00:00");
    let r = client()
        .post(server.url("/v1/batch"))
        .json(&json!({"batch": [track("u1", "typed-1", "Order Completed"), late]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    server.stop();
    assert!(dir.path().join("events/date=2026-11-20/hour=10").is_dir());
    assert!(dir.path().join("events/date=2026-11-20/hour=23").is_dir());
    assert!(
        !dir.path()
            .join("_staging")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "staging is empty after a clean stop"
    );
    let events = read_table(dir.path(), "events");
    let schema = events[0].schema();
    assert_eq!(
        schema
            .field_with_name("timestamp")
            .expect("timestamp")
            .data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        schema
            .field_with_name("revenue")
            .expect("revenue")
            .data_type(),
        &DataType::Float64
    );
    assert_eq!(
        schema
            .field_with_name("quantity")
            .expect("quantity")
            .data_type(),
        &DataType::Int64
    );
    let b = events
        .iter()
        .find(|b| strings(&[(*b).clone()], "event_id")[0].as_deref() == Some("typed-1"))
        .expect("typed-1");
    assert_eq!(
        b.column_by_name("revenue")
            .expect("revenue")
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64")
            .value(0),
        39.0
    );
    assert_eq!(
        b.column_by_name("quantity")
            .expect("q")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .value(0),
        2
    );
    let ts = b
        .column_by_name("timestamp")
        .expect("ts")
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("ts");
    assert_eq!(ts.value(0), 1_795_169_700_000_000);
    assert_eq!(
        strings(&[b.clone()], "event_type")[0].as_deref(),
        Some("purchase")
    );
    assert_eq!(
        strings(&[b.clone()], "timezone")[0].as_deref(),
        Some("Europe/Berlin")
    );
    assert!(ts.is_valid(0));
}

#[tokio::test]
async fn identify_goes_to_profiles_and_changes_not_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let calls = json!({"batch": [
        {"type": "identify", "userId": "c1", "anonymousId": "anon-1", "messageId": "id-1", "timestamp": "2026-11-01T09:00:00Z",
         "traits": {"email": "c1@example.com", "loyalty_tier": "silver", "consent": {"email": true, "sms": true}}, "context": {"timezone": "Asia/Tokyo"}},
        {"type": "identify", "userId": "c1", "messageId": "id-2", "timestamp": "2026-11-05T09:00:00Z",
         "traits": {"loyalty_tier": "gold", "consent": {"sms": false}}},
    ]});
    assert_eq!(post(&server, "/v1/batch", &calls).await.status(), 200);
    server.stop();
    assert_eq!(rows(&read_table(dir.path(), "events")), 0);
    let profiles = read_table(dir.path(), "profiles");
    assert_eq!(
        rows(&profiles),
        2,
        "one snapshot per identify that changed something"
    );
    let tiers = strings(&profiles, "loyalty_tier");
    assert!(tiers.contains(&Some("gold".into())) && tiers.contains(&Some("silver".into())));
    assert!(
        strings(&profiles, "timezone")
            .iter()
            .all(|t| t.as_deref() == Some("Asia/Tokyo")),
        "context.timezone feeds the profile"
    );
    let changes = read_table(dir.path(), "profile_changes");
    let pairs: Vec<(String, Option<String>, Option<String>)> = strings(&changes, "trait")
        .into_iter()
        .zip(strings(&changes, "old_value"))
        .zip(strings(&changes, "new_value"))
        .map(|((t, o), n)| (t.expect("trait"), o, n))
        .filter(|(t, o, _)| o.is_some() || t == "loyalty_tier")
        .collect();
    assert!(
        pairs.contains(&(
            "loyalty_tier".into(),
            Some("\"silver\"".into()),
            Some("\"gold\"".into())
        )),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&(
            "consent.sms".into(),
            Some("true".into()),
            Some("false".into())
        )),
        "{pairs:?}"
    );
    let ids = read_table(dir.path(), "identities");
    assert_eq!(
        (
            strings(&ids, "anonymous_id")[0].as_deref(),
            strings(&ids, "user_id")[0].as_deref()
        ),
        (Some("anon-1"), Some("c1"))
    );
}

#[tokio::test]
async fn import_ndjson_over_http_reports_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let body = format!(
        "{}\n{{broken\n\n{}\n",
        track("u1", "nd-1", "Product Added"),
        json!({"type": "identify", "userId": "u1", "traits": {"first_name": "Ada"}})
    );
    let r = client()
        .post(server.url("/v1/import"))
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["errors"][0]["index"], 1, "0-based line of the broken one");
    server.stop();
    assert_eq!(rows(&read_table(dir.path(), "events")), 1);
    assert_eq!(
        strings(&read_table(dir.path(), "profiles"), "first_name"),
        vec![Some("Ada".to_string())]
    );
}

#[tokio::test]
async fn metrics_count_accepted_and_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    client()
        .post(server.url("/v1/batch"))
        .json(&json!({"batch": [track("u", "mx-1", "x"), {"type": "track", "userId": "u"}]}))
        .send()
        .await
        .expect("send");
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("kairos_ingest_events_accepted_total 1"),
        "{text}"
    );
    assert!(
        text.contains("kairos_ingest_events_rejected_total{reason=\"event\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kairos_group_commit_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn backpressure_answers_429_with_retry_after_when_publishing_lags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path().to_str().expect("utf8"),
        &format!("{QUIET}[ingest]\nmax_staged_bytes = 1\n"),
    );
    let first = post(&server, "/v1/track", &track("u1", "bp-1", "x")).await;
    assert_eq!(
        first.status(),
        200,
        "below the limit before anything is staged"
    );
    // The start-up publish may still take the first request's segment; from
    // then on nothing publishes (hourly interval), so the backlog must refuse.
    let mut second = None;
    for i in 2..6 {
        let r = client()
            .post(server.url("/v1/track"))
            .json(&track("u1", &format!("bp-{i}"), "x"))
            .send()
            .await
            .expect("send");
        if r.status() != 200 {
            second = Some(r);
            break;
        }
    }
    let second = second.expect("a request was refused once the backlog passed the limit");
    assert_eq!(second.status(), 429);
    assert_eq!(
        second
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        second
            .text()
            .await
            .expect("text")
            .contains("max_staged_bytes")
    );
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("kairos_staged_bytes "), "{text}");
    assert!(
        !text.contains("kairos_staged_bytes 0\n"),
        "the backlog is visible: {text}"
    );
}
