//! The report API, mounted into `kairos serve`:
//!
//! - `GET /api/experiments`: every experiment's headline numbers;
//! - `GET /api/experiments/{rule}`: a rule's full report;
//! - `POST /api/analyze`: the statistics engine on sufficient statistics;
//! - `GET /api/openapi.json`: the OpenAPI 3 document of these (public).
//!
//! Reads need `Authorization: Bearer TOKEN` (or HTTP Basic with the token
//! as password) when `report.token` is set; ingest write keys never grant
//! it. With no token configured only loopback clients are answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;

use kairos_experiments::stats::{ExperimentInput, StatsError, analyze};
use kairos_storage::DataRoot;

use crate::ReportError;
use crate::options::ReportOptions;
use crate::report::{experiment_report, load_designs, overview};

/// The hand-written OpenAPI 3 document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API serves from.
pub struct ReportState {
    /// The lake.
    pub root: DataRoot,
    /// The rules folder (for each rule's configured split).
    pub rules_dir: PathBuf,
    /// Options when the query gives none.
    pub defaults: ReportOptions,
    /// The read token; `None`: loopback clients only.
    pub token: Option<String>,
}

/// The `/api` routes.
pub fn router(state: Arc<ReportState>) -> Router {
    let guarded = Router::new()
        .route("/api/experiments", get(list))
        .route("/api/experiments/{rule}", get(one))
        .route("/api/analyze", post(analyze_json))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    Router::new()
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(guarded)
}

/// A JSON error body: `{"error": "...", ...extra}`.
fn error(status: StatusCode, message: impl Into<String>, extra: serde_json::Value) -> Response {
    let mut body = json!({"error": message.into()});
    if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ReportError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ReportError::UnknownRule { known, .. } => {
                error(StatusCode::NOT_FOUND, message, json!({"known": known}))
            }
            ReportError::BadOption { param, .. } => {
                error(StatusCode::BAD_REQUEST, message, json!({"param": param}))
            }
            ReportError::Query(_) | ReportError::Stats(_) => {
                tracing::error!(error = %message, "report failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, message, json!({}))
            }
        }
    }
}

fn presented_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?,
    )
    .ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(_, p)| p.to_string()),
    )
}

/// Equal strings, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a request may read: the token when one is configured, else a
/// loopback peer.
pub fn allowed(
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), (StatusCode, &'static str)> {
    match token {
        Some(want) => match presented_token(headers) {
            Some(got) if same(&got, want) => Ok(()),
            Some(_) => Err((
                StatusCode::UNAUTHORIZED,
                "wrong report token (report.token); ingest write keys do not grant read access",
            )),
            None => Err((
                StatusCode::UNAUTHORIZED,
                "missing report token: send `Authorization: Bearer <report.token>`",
            )),
        },
        None => match peer {
            Some(p) if p.ip().is_loopback() => Ok(()),
            _ => Err((
                StatusCode::FORBIDDEN,
                "no report.token is configured, so only loopback clients may read reports; set report.token",
            )),
        },
    }
}

async fn guard(State(s): State<Arc<ReportState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match allowed(s.token.as_deref(), req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            let mut r = error(status, message, json!({}));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"kairos reports\""),
                );
            }
            r
        }
    }
}

async fn list(
    State(s): State<Arc<ReportState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ReportError> {
    let options = s.defaults.with_params(&q)?;
    let designs = load_designs(&s.rules_dir);
    Ok(axum::Json(overview(&s.root, &designs, &options).await?).into_response())
}

async fn one(
    State(s): State<Arc<ReportState>>,
    Path(rule): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ReportError> {
    let options = s.defaults.with_params(&q)?;
    let designs = load_designs(&s.rules_dir);
    Ok(axum::Json(experiment_report(&s.root, &designs, &rule, &options).await?).into_response())
}

/// Parses and analyses sufficient statistics; the error names the JSON
/// path of the bad field (`arms[1].n`).
pub fn analyze_body(body: &[u8]) -> Result<serde_json::Value, (String, String)> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let input: ExperimentInput = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })?;
    let analysis = analyze(&input).map_err(|e| {
        let path = match &e {
            StatsError::InvalidArm { arm, field, .. } => input
                .arms
                .iter()
                .position(|a| &a.name == arm)
                .map_or_else(|| format!("arms.{field}"), |i| format!("arms[{i}].{field}")),
            StatsError::Invalid { field, .. } => (*field).to_string(),
            StatsError::InvalidPValue { index, .. } => format!("p_values[{index}]"),
        };
        (path, e.to_string())
    })?;
    serde_json::to_value(analysis).map_err(|e| (".".into(), e.to_string()))
}

async fn analyze_json(body: Bytes) -> Response {
    match analyze_body(&body) {
        Ok(v) => axum::Json(v).into_response(),
        Err((path, message)) => error(
            StatusCode::BAD_REQUEST,
            format!("{path}: {message}"),
            json!({"path": path}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().expect("header"));
        h
    }

    #[test]
    fn token_rule() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let remote: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        // No token: loopback only (and no peer at all is not loopback).
        assert!(allowed(None, &HeaderMap::new(), Some(local)).is_ok());
        assert!(allowed(None, &HeaderMap::new(), "[::1]:1".parse().ok()).is_ok());
        assert_eq!(
            allowed(None, &HeaderMap::new(), Some(remote)).map_err(|e| e.0),
            Err(StatusCode::FORBIDDEN)
        );
        assert!(allowed(None, &HeaderMap::new(), None).is_err());
        // A token: needed from everyone, loopback too.
        let t = Some("s3cret");
        assert!(allowed(t, &headers("Bearer s3cret"), Some(remote)).is_ok());
        // Basic with the token as password ("any:s3cret").
        assert!(allowed(t, &headers("Basic YW55OnMzY3JldA=="), Some(remote)).is_ok());
        for bad in ["Bearer s3cre", "Bearer s3cretx", "Basic czNjcmV0Og=="] {
            assert_eq!(
                allowed(t, &headers(bad), Some(local)).map_err(|e| e.0),
                Err(StatusCode::UNAUTHORIZED),
                "{bad}"
            );
        }
        assert!(allowed(t, &HeaderMap::new(), Some(local)).is_err());
    }

    #[test]
    fn analyze_errors_carry_the_path() {
        let (path, msg) = analyze_body(
            br#"{"arms": [{"name": "a", "n": 10, "conversions": 1, "revenue_sum": 1, "revenue_sum_squares": 1},
                          {"name": "b", "n": "ten", "conversions": 1, "revenue_sum": 1, "revenue_sum_squares": 1}]}"#,
        )
        .expect_err("bad type");
        assert_eq!(path, "arms[1].n");
        assert!(msg.contains("invalid type"), "{msg}");
        let (path, msg) = analyze_body(
            br#"{"arms": [{"name": "a", "n": 10, "conversions": 1, "revenue_sum": 1, "revenue_sum_squares": 1},
                          {"name": "b", "n": 10, "conversions": 11, "revenue_sum": 1, "revenue_sum_squares": 1}]}"#,
        )
        .expect_err("too many conversions");
        assert_eq!(path, "arms[1].conversions");
        assert!(msg.contains("more than n = 10"), "{msg}");
        let (path, _) = analyze_body(b"{\"arms\": [").expect_err("truncated");
        assert_eq!(path, "arms");
        let ok = analyze_body(
            br#"{"arms": [{"name": "a", "n": 100, "conversions": 10, "revenue_sum": 100, "revenue_sum_squares": 1000},
                          {"name": "b", "n": 100, "conversions": 20, "revenue_sum": 200, "revenue_sum_squares": 2000}]}"#,
        )
        .expect("valid");
        assert_eq!(ok["comparisons"][0]["treatment"], "b");
        assert_eq!(ok["arms"][1]["revenue_per_recipient"], 2.0);
    }

    #[test]
    fn openapi_document_parses_and_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
        for p in [
            "/api/experiments",
            "/api/experiments/{rule}",
            "/api/analyze",
            "/api/openapi.json",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} undocumented");
        }
        // Every report query parameter is documented.
        let params = doc["components"]["parameters"]
            .as_object()
            .expect("parameters");
        for p in crate::options::PARAMS {
            assert!(params.values().any(|v| v["name"] == p), "{p} undocumented");
        }
    }
}
