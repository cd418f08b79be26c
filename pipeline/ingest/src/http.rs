//! The HTTP intake: Segment's tracking API paths, auth, gzip, and answers.
//!
//! | path | body |
//! | --- | --- |
//! | `/v1/track` `/v1/identify` `/v1/alias` `/v1/page` `/v1/screen` `/v1/group` | one call |
//! | `/v1/t` `/v1/i` `/v1/a` `/v1/p` `/v1/s` `/v1/g` (analytics.js; `writeKey` in the body) | one call |
//! | `/v1/batch`, `/v1/b` | `{"batch":[calls...], "sentAt":...}` |
//! | `/v1/import` | NDJSON, one call per line |
//!
//! Answers: 200 `{"success":true,"accepted":N}` (plus `errors` when some items
//! were refused); 400 with the errors when none was good; 401 without a valid
//! write key; 413 over `ingest.max_body_bytes`; 503 when staging failed (retry).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tower_http::cors::{Any, CorsLayer};

use kairos_core::event::StagedItem;
use kairos_core::time::{now_us, parse_rfc3339_us};

use crate::calls::{CallType, Envelope, ItemError, Normalizer};
use crate::commit::Committer;
use crate::metrics::Metrics;

/// Shared state of the intake handlers.
pub struct IngestState {
    /// Validation.
    pub normalizer: Normalizer,
    /// Durable staging.
    pub committer: Committer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Accepted write keys; empty means open to loopback clients only.
    pub write_keys: Vec<String>,
    /// Largest body after decompression, bytes.
    pub max_body_bytes: usize,
    /// Staged-but-unpublished bytes (from the staging log).
    pub backlog: Arc<AtomicU64>,
    /// Above this backlog, answer 429.
    pub max_staged_bytes: u64,
}

impl IngestState {
    /// Takes one call made by Kairos itself (e.g. an unsubscribe link
    /// followed), through the same validation and durable staging as an
    /// API call, from source `source`.
    pub async fn record(&self, call: &serde_json::Value, source: &str) -> Result<(), String> {
        let raw = serde_json::value::to_raw_value(call).map_err(|e| e.to_string())?;
        let env = Envelope {
            source,
            received_at_us: now_us(),
            batch_sent_at_us: None,
        };
        let mut staged = Vec::new();
        self.normalizer
            .item(&raw, None, 0, &env, &mut staged)
            .map_err(|e| format!("{}: {}", e.field, e.reason))?;
        let mut payload = Vec::new();
        for item in &staged {
            serde_json::to_writer(&mut payload, item).map_err(|e| e.to_string())?;
            payload.push(b'\n');
        }
        self.committer
            .commit(payload, staged.len())
            .await
            .map_err(|e| e.to_string())
    }
}

/// The `/v1/*` routes, with CORS answered for browsers.
pub fn router(state: Arc<IngestState>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any)
        .max_age(std::time::Duration::from_secs(3600));
    Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/b", post(batch))
        .route("/v1/import", post(import))
        .route("/v1/{call}", post(single))
        .layer(cors)
        .with_state(state)
}

/// A request-level refusal.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"success": false, "error": self.message})),
        )
            .into_response()
    }
}

enum Shape {
    One(CallType),
    Batch,
    Ndjson,
}

async fn single(
    State(s): State<Arc<IngestState>>,
    Path(call): Path<String>,
    req: Request,
) -> Response {
    match CallType::parse(&call) {
        Some(kind) => handle(s, Shape::One(kind), req).await,
        None => ApiError::new(StatusCode::NOT_FOUND, "unknown_path", format!("unknown call /v1/{call}; use track, identify, alias, page, screen, group, batch or import")).into_response(),
    }
}

async fn batch(State(s): State<Arc<IngestState>>, req: Request) -> Response {
    handle(s, Shape::Batch, req).await
}

async fn import(State(s): State<Arc<IngestState>>, req: Request) -> Response {
    handle(s, Shape::Ndjson, req).await
}

async fn handle(s: Arc<IngestState>, shape: Shape, req: Request) -> Response {
    match accept(&s, shape, req).await {
        Ok(r) => r,
        Err(e) => {
            s.metrics.reject(e.reason, 1);
            e.into_response()
        }
    }
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<String>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
}

#[derive(Deserialize)]
struct KeyOnly {
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
}

async fn accept(s: &IngestState, shape: Shape, req: Request) -> Result<Response, ApiError> {
    let received_at_us = now_us();
    // Split rather than clone the headers: this runs for every request.
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let headers = parts.headers;
    let body = read_body(body, &headers, s.max_body_bytes).await?;

    let mut raws: Vec<&RawValue> = Vec::new();
    let mut line_of: Vec<usize> = Vec::new();
    let mut errors: Vec<ItemError> = Vec::new();
    let mut batch_sent_at_us = None;
    let body_key;
    let forced = match shape {
        Shape::One(kind) => {
            let raw: &RawValue = parse_json(&body)?;
            body_key = serde_json::from_str::<KeyOnly>(raw.get())
                .ok()
                .and_then(|k| k.write_key);
            raws.push(raw);
            Some(kind)
        }
        Shape::Batch => {
            let b: BatchBody = parse_json(&body)?;
            body_key = b.write_key;
            batch_sent_at_us = b.sent_at.as_deref().and_then(parse_rfc3339_us);
            raws = b.batch;
            None
        }
        Shape::Ndjson => {
            body_key = None;
            let text = std::str::from_utf8(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("body is not UTF-8: {e}"),
                )
            })?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<&RawValue>(line) {
                    Ok(r) => {
                        raws.push(r);
                        line_of.push(i);
                    }
                    Err(e) => errors.push(ItemError {
                        index: i,
                        field: String::new(),
                        reason: format!("malformed JSON: {e}"),
                    }),
                }
            }
            None
        }
    };
    let source = authorize(&s.write_keys, &headers, body_key.as_deref(), peer)?;
    if raws.is_empty() && errors.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty",
            "no calls in the request",
        ));
    }

    let env = Envelope {
        source: &source,
        received_at_us,
        batch_sent_at_us,
    };
    let mut staged: Vec<StagedItem> = Vec::with_capacity(raws.len());
    let mut good = 0usize;
    for (i, raw) in raws.iter().enumerate() {
        let index = line_of.get(i).copied().unwrap_or(i);
        match s.normalizer.item(raw, forced, index, &env, &mut staged) {
            Ok(()) => good += 1,
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by_key(|e| e.index);
    for e in &errors {
        s.metrics.reject(
            if e.field.is_empty() {
                "invalid"
            } else {
                e.field.split('.').next().unwrap_or("invalid")
            },
            1,
        );
    }
    if good == 0 {
        return Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"success": false, "accepted": 0, "errors": errors})),
        )
            .into_response());
    }

    let backlog = s.backlog.load(Ordering::Relaxed);
    if backlog > s.max_staged_bytes {
        s.metrics.reject("backpressure", good as u64);
        let body = json!({"success": false, "error": format!("publishing is behind ({backlog} bytes staged, limit ingest.max_staged_bytes = {}); retry after a second", s.max_staged_bytes)});
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(body),
        )
            .into_response());
    }
    let mut payload = Vec::with_capacity(body.len() + staged.len() * 64);
    for item in &staged {
        serde_json::to_writer(&mut payload, item).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        payload.push(b'\n');
    }
    s.committer
        .commit(payload, staged.len())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "staging_failed",
                e.to_string(),
            )
        })?;
    let body = if errors.is_empty() {
        json!({"success": true, "accepted": good})
    } else {
        json!({"success": true, "accepted": good, "errors": errors})
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() {
            "wrong shape"
        } else {
            "malformed JSON"
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("{what}: {e}"),
        )
    })
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body exceeds {limit} bytes (ingest.max_body_bytes); split it into smaller batches"
            ),
        )
    };
    let raw = to_bytes(body, limit).await.map_err(|_| too_big())?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            // Read one byte past the limit to tell "exactly at" from "over".
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_gzip",
                        format!("body is not valid gzip: {e}"),
                    )
                })?;
            if out.len() > limit {
                return Err(too_big());
            }
            Ok(out)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_encoding",
            format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
        )),
    }
}

/// Checks the write key; returns the source name recorded with each event.
fn authorize(
    write_keys: &[String],
    headers: &HeaderMap,
    body_key: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<String, ApiError> {
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            if let Some(b) = v.strip_prefix("Basic ") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                Some(
                    text.split_once(':')
                        .map_or(text.clone(), |(user, _)| user.to_string()),
                )
            } else {
                v.strip_prefix("Bearer ").map(|k| k.trim().to_string())
            }
        });
    let key = header_key.as_deref().or(body_key);
    if write_keys.is_empty() {
        return match peer {
            Some(p) if !p.ip().is_loopback() => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no write keys are configured, so only loopback clients may send; set ingest.write_keys",
            )),
            _ => Ok("open".to_string()),
        };
    }
    match key {
        Some(k) if write_keys.iter().any(|w| w == k) => Ok(source_of(k)),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown write key",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing write key: send it as the HTTP Basic username, as a Bearer token, or as writeKey in the body",
        )),
    }
}

/// A stable, non-secret name for a write key.
pub fn source_of(key: &str) -> String {
    format!(
        "key-{:012x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 5000))
    }

    #[test]
    fn without_keys_only_loopback_may_send() {
        let h = HeaderMap::new();
        assert_eq!(
            authorize(&[], &h, None, peer("127.0.0.1"))
                .expect("loopback")
                .as_str(),
            "open"
        );
        assert_eq!(
            authorize(&[], &h, None, peer("::1"))
                .expect("loopback v6")
                .as_str(),
            "open"
        );
        let err = authorize(&[], &h, None, peer("192.0.2.7")).expect_err("remote refused");
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert!(err.message.contains("ingest.write_keys"));
    }

    #[test]
    fn basic_bearer_and_body_keys() {
        let keys = vec!["k1".to_string()];
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic azE6".parse().expect("header")); // "k1:"
        let src = authorize(&keys, &h, None, peer("192.0.2.7")).expect("basic");
        assert_eq!(src, source_of("k1"));
        assert!(!src.contains("k1"), "the source never reveals the key");
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().expect("header"));
        assert!(authorize(&keys, &h, None, peer("192.0.2.7")).is_ok());
        assert!(authorize(&keys, &HeaderMap::new(), Some("k1"), peer("192.0.2.7")).is_ok());
        assert!(
            authorize(&keys, &HeaderMap::new(), Some("k2"), peer("127.0.0.1")).is_err(),
            "keys apply on loopback too"
        );
        assert!(authorize(&keys, &HeaderMap::new(), None, peer("127.0.0.1")).is_err());
    }
}
