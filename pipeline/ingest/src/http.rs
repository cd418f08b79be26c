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
//! write key; 413 over `ingest.max_body_bytes`, `max_batch_items` or
//! `max_import_lines`; 503 when staging failed (retry). At most
//! [`MAX_REPORTED_ERRORS`] item errors are listed, with `errors_total`.
//!
//! Bad input costs bounded memory and time: the key is checked from the
//! headers before the body is read; a key carried only in the body (the
//! analytics.js short paths) is looked for in at most
//! [`BODY_KEY_MAX_BYTES`]; item counts are capped while parsing.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::json;
use serde_json::value::RawValue;
use tower_http::cors::{AllowOrigin, CorsLayer};

use kairos_core::event::{Scope, StagedItem};
use kairos_core::secret::{Credentials, Secret};
use kairos_core::time::{now_us, parse_rfc3339_us};

use crate::body::BodyTimeout;
use crate::calls::{CallType, Envelope, ItemError, Normalizer};
use crate::commit::Committer;
use crate::metrics::Metrics;

/// Item errors listed in an answer at most; `errors_total` counts them all.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// A write key carried only inside the body (analytics.js) is looked for in
/// bodies up to this size; larger ones must send it in `Authorization`, so
/// an unauthenticated client never makes the server read or parse more.
pub const BODY_KEY_MAX_BYTES: usize = 512 * 1024;

/// Who may send, and as what.
#[derive(Debug, Clone, Default)]
pub struct WriteAccess {
    /// Server keys: back ends and warehouses, full rights.
    pub server_keys: Vec<Secret>,
    /// Client keys: browsers and apps (public by nature), restricted rights.
    pub client_keys: Vec<Secret>,
    /// With no key configured, loopback peers send without one
    /// (`server.insecure_local`). A request with no peer address is never
    /// loopback.
    pub open_loopback: bool,
}

impl WriteAccess {
    fn has_keys(&self) -> bool {
        !self.server_keys.is_empty() || !self.client_keys.is_empty()
    }

    /// The source name recorded with each event, or why not. `key` is the
    /// presented key, if any.
    fn check(&self, key: Option<&str>, peer: Option<SocketAddr>) -> Result<String, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        if !self.has_keys() {
            return match peer {
                Some(p) if self.open_loopback && p.ip().is_loopback() => Ok("open".to_string()),
                _ if self.open_loopback => Err(unauthorized(
                    "no write keys are configured and server.insecure_local is on, so only loopback clients may send; set ingest.write_keys",
                )),
                _ => Err(unauthorized(
                    "no write keys are configured; set ingest.write_keys (or let the first start generate one)",
                )),
            };
        }
        let Some(k) = key else {
            return Err(unauthorized(
                "missing write key: send it as the HTTP Basic username or as a Bearer token (or as writeKey in a body under 512 KiB)",
            ));
        };
        // Every key is compared (constant time each), so the answer's
        // timing tells nothing about which key came close.
        let server = self
            .server_keys
            .iter()
            .fold(false, |hit, w| hit | w.matches(k));
        let client = self
            .client_keys
            .iter()
            .fold(false, |hit, w| hit | w.matches(k));
        match (server, client) {
            (true, _) => Ok(source_of(k, Scope::Server)),
            (false, true) => Ok(source_of(k, Scope::Client)),
            (false, false) => Err(unauthorized("unknown write key")),
        }
    }
}

/// Request-size limits of the intake.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Largest body after decompression, bytes.
    pub max_body_bytes: usize,
    /// Calls in one batch at most.
    pub max_batch_items: usize,
    /// Lines of one import at most.
    pub max_import_lines: usize,
}

/// Shared state of the intake handlers.
pub struct IngestState {
    /// Validation.
    pub normalizer: Normalizer,
    /// Durable staging.
    pub committer: Committer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Who may send.
    pub access: WriteAccess,
    /// Request-size limits.
    pub limits: IngestLimits,
    /// Staged-but-unpublished bytes (from the staging log).
    pub backlog: Arc<AtomicU64>,
    /// Above this backlog, answer 429.
    pub max_staged_bytes: u64,
}

impl IngestState {
    /// Takes one call made by Kairos itself (e.g. an unsubscribe link
    /// followed), through the same validation and durable staging as an
    /// API call, from source `source`.
    pub async fn record(&self, call: &serde_json::Value, source: &str) -> Result<(), RecordError> {
        let raw = serde_json::value::to_raw_value(call)?;
        let env = Envelope {
            source,
            received_at_us: now_us(),
            batch_sent_at_us: None,
        };
        let mut staged = Vec::new();
        self.normalizer
            .item(&raw, None, 0, &env, &mut staged)
            .map_err(|e| RecordError::Refused {
                field: e.field,
                reason: e.reason,
            })?;
        let mut payload = Vec::new();
        for item in &staged {
            serde_json::to_writer(&mut payload, item)?;
            payload.push(b'\n');
        }
        Ok(self.committer.commit(payload, staged).await?)
    }
}

/// Why a call Kairos made itself ([`IngestState::record`]) was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The call or its staged form did not serialise (a bug: the call is
    /// built in code).
    #[error("serialising the call: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Validation refused it, as it would an API call.
    #[error("refused: {field}: {reason}")]
    Refused {
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Staging failed; retrying is safe.
    #[error(transparent)]
    Commit(#[from] crate::commit::CommitError),
}

/// The `/v1/*` routes. CORS is answered for `browser_origins` only (none
/// by default), naming the allowed request headers: the Fetch standard's
/// `*` does not cover `Authorization`.
/// An `ingest.browser_origins` entry that is not a valid header value.
#[derive(Debug, thiserror::Error)]
#[error(
    "ingest.browser_origins: {origin:?} is not an origin like \"https://shop.example\": {source}"
)]
pub struct InvalidOrigin {
    /// The entry.
    pub origin: String,
    /// Why it is not a header value.
    #[source]
    pub source: axum::http::header::InvalidHeaderValue,
}

/// An origin that is not a valid header value is an error (dropping it
/// would leave that site's SDK failing CORS with nothing in the logs).
pub fn router(
    state: Arc<IngestState>,
    browser_origins: &[String],
) -> Result<Router, InvalidOrigin> {
    let routes = Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/b", post(batch))
        .route("/v1/import", post(import))
        .route("/v1/{call}", post(single))
        .with_state(state);
    let origins: Vec<HeaderValue> = browser_origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o.trim_end_matches('/')).map_err(|source| InvalidOrigin {
                origin: o.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    if origins.is_empty() {
        return Ok(routes);
    }
    Ok(routes.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                HeaderName::from_static("x-requested-with"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    ))
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
    batch: &'a RawValue,
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

/// A batch's calls, or how many there were when over the limit (counted
/// without keeping them, so an oversized batch costs no memory).
enum Items<'a> {
    Within(Vec<&'a RawValue>),
    Over(usize),
}

struct ItemsVisitor {
    limit: usize,
}

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = Items<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of calls")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.limit {
                let mut n = items.len() + 1;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                return Ok(Items::Over(n));
            }
            items.push(item);
        }
        Ok(Items::Within(items))
    }
}

fn batch_items(raw: &RawValue, limit: usize) -> Result<Vec<&RawValue>, ApiError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match de.deserialize_seq(ItemsVisitor { limit }) {
        Ok(Items::Within(items)) => Ok(items),
        Ok(Items::Over(n)) => Err(too_many(n, limit, "calls", "ingest.max_batch_items")),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("wrong shape: `batch` must be an array of calls ({e})"),
        )),
    }
}

fn too_many(n: usize, limit: usize, what: &str, setting: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_items",
        format!("{n} {what}; at most {limit} per request ({setting}): split it"),
    )
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
    // Authenticate before reading the body. Only the one-call and batch
    // paths may carry the key inside (analytics.js), and then the body is
    // read up to BODY_KEY_MAX_BYTES only.
    let header_key = header_key(&headers, s.access.has_keys())?;
    let known = match header_key {
        Some(k) => Some(s.access.check(Some(&k), peer)?),
        None if !s.access.has_keys() || matches!(shape, Shape::Ndjson) => {
            Some(s.access.check(None, peer)?)
        }
        None => None,
    };
    let body = match known {
        Some(_) => read_body(body, &headers, s.limits.max_body_bytes).await?,
        None => read_body(body, &headers, BODY_KEY_MAX_BYTES.min(s.limits.max_body_bytes))
            .await
            .map_err(|e| {
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "missing write key: a body over 512 KiB must carry it in the Authorization header (HTTP Basic username or Bearer)",
                    )
                } else {
                    e
                }
            })?,
    };

    let mut raws: Vec<&RawValue> = Vec::new();
    let mut line_of: Vec<usize> = Vec::new();
    let mut errors: Vec<ItemError> = Vec::new();
    let mut batch_sent_at_us = None;
    let (body_key, forced) = match shape {
        Shape::One(kind) => {
            let raw: &RawValue = parse_json(&body)?;
            let key = serde_json::from_str::<KeyOnly>(raw.get())
                .ok()
                .and_then(|k| k.write_key);
            raws.push(raw);
            (key, Some(kind))
        }
        Shape::Batch => {
            let b: BatchBody = parse_json(&body)?;
            // The key before the items: a stranger's batch is not parsed.
            if known.is_none() {
                s.access.check(b.write_key.as_deref(), peer)?;
            }
            batch_sent_at_us = b.sent_at.as_deref().and_then(parse_rfc3339_us);
            raws = batch_items(b.batch, s.limits.max_batch_items)?;
            (b.write_key, None)
        }
        Shape::Ndjson => {
            let text = std::str::from_utf8(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("body is not UTF-8: {e}"),
                )
            })?;
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            if lines > s.limits.max_import_lines {
                return Err(too_many(
                    lines,
                    s.limits.max_import_lines,
                    "lines",
                    "ingest.max_import_lines",
                ));
            }
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<&RawValue>(line) {
                    Ok(r) => {
                        raws.push(r);
                        line_of.push(i);
                    }
                    Err(e) => errors.push(ItemError::new(i, "", format!("malformed JSON: {e}"))),
                }
            }
            (None, None)
        }
    };
    let source = match known {
        Some(source) => source,
        None => s.access.check(body_key.as_deref(), peer)?,
    };
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
    let mut ignored: Vec<ItemError> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let index = line_of.get(i).copied().unwrap_or(i);
        match s.normalizer.item(raw, forced, index, &env, &mut staged) {
            Ok(left_out) => {
                good += 1;
                ignored.extend(left_out);
            }
            Err(e) => errors.push(e),
        }
    }
    for e in &ignored {
        let why = if e.reason == crate::calls::SUPPRESSED {
            "suppressed"
        } else {
            "client_scope"
        };
        s.metrics.reject(why, 1);
    }
    ignored.truncate(MAX_REPORTED_ERRORS);
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
    let errors_total = errors.len();
    errors.truncate(MAX_REPORTED_ERRORS);
    if good == 0 {
        return Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"success": false, "accepted": 0, "errors": errors, "errors_total": errors_total})),
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
    s.committer.commit(payload, staged).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "staging_failed",
            e.to_string(),
        )
    })?;
    let mut body = json!({"success": true, "accepted": good});
    if !errors.is_empty() {
        body["errors"] = json!(errors);
        body["errors_total"] = json!(errors_total);
    }
    if !ignored.is_empty() {
        // Accepted without these parts: a client key's consent opt-ins,
        // calls naming an erased customer.
        body["ignored"] = json!(ignored);
    }
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
    let raw = to_bytes(body, limit).await.map_err(|e| {
        if BodyTimeout::caused(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive within server.body_timeout; send it faster or in smaller batches",
            )
        } else {
            too_big()
        }
    })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
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

/// The write key of the `Authorization` header: the HTTP Basic user name
/// (Segment's SDKs) or a Bearer token. A header that is not credentials is
/// refused, saying why, when keys are required; a server open without keys
/// ignores it.
fn header_key(headers: &HeaderMap, keys_required: bool) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let parsed = v
        .to_str()
        .map_err(|_| "is not ASCII text".to_string())
        .and_then(|v| Credentials::parse(v).map_err(|e| e.to_string()));
    match parsed {
        Ok(Credentials::Basic { user, .. }) => Ok(Some(user)),
        Ok(Credentials::Bearer(token)) => Ok(Some(token)),
        Err(why) if keys_required => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "the Authorization header {why}; send `Basic base64(<write key>:)` as Segment's SDKs do, or `Bearer <write key>`"
            ),
        )),
        Err(_) => Ok(None),
    }
}

/// A stable, non-secret name for a write key: `key-…` for a server key,
/// `client-…` for a client key (policy reads the scope from it).
pub fn source_of(key: &str, scope: Scope) -> String {
    let prefix = match scope {
        Scope::Server => "key",
        Scope::Client => "client",
    };
    format!(
        "{prefix}-{:012x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 5000))
    }

    fn keys(server: &[&str], client: &[&str]) -> WriteAccess {
        let secrets = |k: &[&str]| k.iter().map(|k| Secret(k.to_string())).collect();
        WriteAccess {
            server_keys: secrets(server),
            client_keys: secrets(client),
            open_loopback: false,
        }
    }

    #[test]
    fn without_keys_nobody_sends_unless_insecure_local() {
        let closed = WriteAccess::default();
        let err = closed
            .check(None, peer("127.0.0.1"))
            .expect_err("closed by default");
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert!(err.message.contains("ingest.write_keys"), "{}", err.message);

        let open = WriteAccess {
            open_loopback: true,
            ..WriteAccess::default()
        };
        assert_eq!(
            open.check(None, peer("127.0.0.1")).expect("loopback"),
            "open"
        );
        assert_eq!(open.check(None, peer("::1")).expect("loopback v6"), "open");
        assert!(
            open.check(None, peer("192.0.2.7")).is_err(),
            "remote refused"
        );
        assert!(
            open.check(None, None).is_err(),
            "no peer address is not loopback"
        );
    }

    #[test]
    fn server_and_client_keys_name_their_scope() {
        let access = keys(&["k1"], &["pub1"]);
        let src = access
            .check(Some("k1"), peer("192.0.2.7"))
            .expect("server key");
        assert_eq!(src, source_of("k1", Scope::Server));
        assert!(!src.contains("k1"), "the source never reveals the key");
        assert_eq!(Scope::of_source(&src), Scope::Server);
        let src = access
            .check(Some("pub1"), peer("192.0.2.7"))
            .expect("client key");
        assert_eq!(Scope::of_source(&src), Scope::Client);
        assert!(
            access.check(Some("k2"), peer("127.0.0.1")).is_err(),
            "keys apply on loopback too"
        );
        assert!(access.check(None, peer("127.0.0.1")).is_err());
        assert_eq!(Scope::of_source("open"), Scope::Server);
    }

    #[test]
    fn basic_and_bearer_headers_carry_the_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic azE6".parse().expect("header")); // "k1:"
        let key = |h: &HeaderMap| header_key(h, true).expect("credentials");
        assert_eq!(key(&h).as_deref(), Some("k1"));
        h.insert(header::AUTHORIZATION, "Bearer k1 ".parse().expect("header"));
        assert_eq!(key(&h).as_deref(), Some("k1"));
        assert_eq!(key(&HeaderMap::new()), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().expect("header"));
        let err = header_key(&h, true).expect_err("not credentials");
        assert!(err.message.contains("not base64"), "{}", err.message);
        assert_eq!(header_key(&h, false).expect("open"), None);
    }

    #[test]
    fn an_oversized_batch_is_counted_not_kept() {
        let raw: &RawValue = serde_json::from_str("[1,2,3,4,5]").expect("json");
        assert_eq!(batch_items(raw, 5).expect("at the limit").len(), 5);
        let err = batch_items(raw, 3).err().expect("over the limit");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            err.message.starts_with("5 calls; at most 3"),
            "{}",
            err.message
        );
        let bad: &RawValue = serde_json::from_str("{\"a\":1}").expect("json");
        assert_eq!(
            batch_items(bad, 3).err().expect("not an array").status,
            StatusCode::BAD_REQUEST
        );
    }
}
