//! The report API, mounted into `kairos serve`:
//!
//! - `GET /api/experiments`: every experiment's headline numbers;
//! - `GET /api/experiments/{rule}`: a rule's full report;
//! - `POST /api/analyze`: the statistics engine on sufficient statistics;
//! - `GET /api/program`: every rule together (`crate::program`);
//! - `GET /api/openapi.json`: the OpenAPI 3 document of these (public);
//! - `GET /experiments`, `GET /experiments/{rule}` and `GET /program`: the
//!   same as HTML pages ([`crate::pages`]), with the same query parameters.
//!
//! Reads need the read token (`report.token`, generated at the first
//! start when none is configured): `Authorization: Bearer TOKEN`, HTTP
//! Basic with the token as password, or the `kairos_token` cookie that a
//! page link carrying `?token=` sets (`SameSite=Strict`, then redirected
//! to the address without it). Ingest write keys never grant it. Only
//! with `server.insecure_local` and no token are loopback clients read
//! without one; a request whose peer is unknown is never loopback.
//!
//! Reports are heavy queries: at most `report.max_concurrent` are computed
//! at once (analyses posted to `/api/analyze` included); the others queue
//! for up to `report.queue_timeout`, then get 503 with `Retry-After`
//! ([`ReportLimit`]). Their statistics run on the blocking pool with a
//! deadline ([`crate::off_runtime`]), never on the async workers that
//! answer `/healthz` and ingest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

use kairos_core::secret::{Credentials, same};
use kairos_experiments::stats::{ExperimentInput, analyze};
use kairos_storage::DataRoot;

use crate::ReportError;
use crate::options::ReportOptions;
use crate::outcomes::Outcomes;
use crate::pages;
use crate::program::{Program, program_from};
use crate::report::{Overview, Report, experiment_report_from, load_designs, overview_from};

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
    /// How many reports may be computed at once.
    pub limit: ReportLimit,
    /// The maintained outcomes reports read (refreshed in the background
    /// by `serve`).
    pub outcomes: Arc<Outcomes>,
    /// `experiments.global_control_percent`, for the program view's
    /// sample-ratio check.
    pub global_control_percent: f64,
}

/// Bounds the reports computed at once (API and pages together): each
/// takes a slot for its query; a request waits for a free slot in a
/// fair (FIFO) queue for at most `queue_timeout`, then gets
/// [`ReportError::Busy`] (503 with `Retry-After`). A client that gives up
/// leaves the queue, and one that disconnects mid-report frees its slot
/// (the query is dropped with the request).
pub struct ReportLimit {
    slots: Semaphore,
    queue_timeout: Duration,
}

impl ReportLimit {
    /// `max_concurrent` slots (at least 1); wait at most `queue_timeout`.
    pub fn new(max_concurrent: usize, queue_timeout: Duration) -> ReportLimit {
        ReportLimit {
            slots: Semaphore::new(max_concurrent.max(1)),
            queue_timeout,
        }
    }

    /// A slot, once one is free within the queue timeout.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, ReportError> {
        // `timeout` polls the acquire once before looking at the clock, so
        // a zero timeout still takes a slot that is free right now.
        match tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ReportError::Busy {
                retry_after_secs: self.queue_timeout.as_secs().max(1),
            }),
        }
    }
}

impl Default for ReportLimit {
    /// The configured defaults: 2 at once, 10 s in the queue.
    fn default() -> Self {
        ReportLimit::new(2, Duration::from_secs(10))
    }
}

/// The `/api` routes and the pages.
pub fn router(state: Arc<ReportState>) -> Router {
    let guarded = Router::new()
        .route("/api/experiments", get(list))
        .route("/api/experiments/{rule}", get(one))
        .route("/api/analyze", post(analyze_json))
        .route("/api/program", get(program_json))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state.clone());
    let pages = Router::new()
        .route("/experiments", get(overview_page))
        .route("/experiments/{rule}", get(report_page))
        .route("/program", get(program_page))
        .layer(middleware::from_fn_with_state(state.clone(), page_guard))
        .with_state(state);
    Router::new()
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(guarded)
        .merge(pages)
}

/// A JSON error body: `{"error": "...", ...extra}`.
fn error(status: StatusCode, message: impl Into<String>, extra: serde_json::Value) -> Response {
    let mut body = json!({"error": message.into()});
    if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (status, axum::Json(body)).into_response()
}

impl ReportError {
    /// The HTTP status of this error (API and pages alike).
    pub fn status(&self) -> StatusCode {
        match self {
            ReportError::UnknownRule { .. } => StatusCode::NOT_FOUND,
            ReportError::BadOption { .. } => StatusCode::BAD_REQUEST,
            ReportError::Busy { .. } | ReportError::Deadline { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ReportError::Query(_)
            | ReportError::Stats(_)
            | ReportError::Outcomes(_)
            | ReportError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs what someone must act on; adds `Retry-After` when busy.
    fn finish(&self, mut r: Response) -> Response {
        match self {
            ReportError::Query(_)
            | ReportError::Stats(_)
            | ReportError::Outcomes(_)
            | ReportError::Task(_)
            | ReportError::Deadline { .. } => {
                tracing::error!(error = %self, "report failed");
            }
            ReportError::Busy { retry_after_secs } => {
                tracing::warn!("report slots busy; answered 503 (raise report.max_concurrent?)");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        r
    }
}

impl IntoResponse for ReportError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let extra = match &self {
            ReportError::UnknownRule { known, .. } => json!({"known": known}),
            ReportError::BadOption { param, .. } => json!({"param": param}),
            _ => json!({}),
        };
        self.finish(error(self.status(), message, extra))
    }
}

/// A [`ReportError`] answered as an HTML page.
struct PageError(ReportError);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let known: &[String] = match &e {
            ReportError::UnknownRule { known, .. } => known,
            _ => &[],
        };
        let body = pages::error_page(e.status().as_u16(), &e.to_string(), known);
        e.finish(html(e.status(), body))
    }
}

/// Scripts, fonts, images and styles from anywhere are refused: the pages
/// carry everything inline.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The cookie a page visit with `?token=` leaves, so the links between
/// pages need no token. `SameSite=Strict`: another site's page can never
/// make a browser send it (no cross-site request forgery).
const TOKEN_COOKIE: &str = "kairos_token";

fn presented_token(headers: &HeaderMap) -> Option<String> {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return cookie(headers, TOKEN_COOKIE);
    };
    match Credentials::parse(v) {
        Ok(Credentials::Bearer(token)) => Some(token),
        Ok(Credentials::Basic { password, .. }) => Some(password),
        // Answered as a missing token, whose 401 says what to send.
        Err(_) => None,
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
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

/// [`allowed`] for a request: its token and the peer address axum saw.
fn request_allowed(token: Option<&str>, req: &Request) -> Result<(), (StatusCode, &'static str)> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    allowed(token, req.headers(), peer)
}

async fn guard(State(s): State<Arc<ReportState>>, req: Request, next: Next) -> Response {
    match request_allowed(s.token.as_deref(), &req) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => refused(status, message),
    }
}

/// Middleware for the other routes that need the read token (`/metrics`,
/// `/api/privacy/*`): the reports' check and the reports' 401.
pub async fn read_token_required(
    State(token): State<Arc<Option<String>>>,
    req: Request,
    next: Next,
) -> Response {
    match request_allowed(token.as_deref(), &req) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => refused(status, message),
    }
}

/// A refused API request, as JSON; a 401 names the scheme to answer with.
fn refused(status: StatusCode, message: &str) -> Response {
    let mut r = error(status, message, json!({}));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kairos reports\""),
        );
    }
    r
}

/// The pages' guard: the same rule as [`guard`], answered in HTML; a
/// missing or wrong token asks the browser for Basic credentials. A link
/// carrying the token (`?token=`, as `kairos demo` prints) is answered
/// with the token as a cookie and a redirect to the same page without
/// it, so the token leaves the address bar, history and `Referer`.
async fn page_guard(State(s): State<Arc<ReportState>>, req: Request, next: Next) -> Response {
    if let (Some(want), Some(query)) = (s.token.as_deref(), req.uri().query())
        && let Some(got) = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    {
        if !same(&got, want) {
            let status = StatusCode::UNAUTHORIZED;
            let message = "the link's token is not this server's report token (report.token)";
            return html(status, pages::error_page(status.as_u16(), message, &[]));
        }
        let rest: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "token"))
            .finish();
        let path = req.uri().path();
        let location = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{rest}")
        };
        let cookie = format!("{TOKEN_COOKIE}={want}; HttpOnly; SameSite=Strict; Path=/");
        let mut r = StatusCode::SEE_OTHER.into_response();
        let h = r.headers_mut();
        if let (Ok(l), Ok(c)) = (
            HeaderValue::from_str(&location),
            HeaderValue::from_str(&cookie),
        ) {
            h.insert(header::LOCATION, l);
            h.insert(header::SET_COOKIE, c);
            return r;
        }
    }
    match request_allowed(s.token.as_deref(), &req) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            let message = if status == StatusCode::UNAUTHORIZED {
                format!(
                    "{message}. In a browser: add ?token=READ_TOKEN to this address once (the read token `kairos serve` printed at first start, kept in _kairos/access.json), or give any user name and the read token as password."
                )
            } else {
                message.to_string()
            };
            let mut r = html(status, pages::error_page(status.as_u16(), &message, &[]));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"kairos reports\", charset=\"UTF-8\""),
                );
            }
            r
        }
    }
}

/// Every experiment's headline numbers, in a report slot.
async fn overview_for(
    s: &ReportState,
    q: &BTreeMap<String, String>,
) -> Result<Overview, ReportError> {
    let options = s.defaults.with_params(q)?;
    let _slot = s.limit.acquire().await?;
    let designs = load_designs(&s.rules_dir);
    overview_from(&s.root, &designs, &options, &s.outcomes).await
}

/// `rule`'s report, in a report slot.
async fn report_for(
    s: &ReportState,
    rule: &str,
    q: &BTreeMap<String, String>,
) -> Result<Report, ReportError> {
    let options = s.defaults.with_params(q)?;
    let _slot = s.limit.acquire().await?;
    let designs = load_designs(&s.rules_dir);
    experiment_report_from(&s.root, &designs, rule, &options, &s.outcomes).await
}

/// The program view, in a report slot.
async fn program_for(
    s: &ReportState,
    q: &BTreeMap<String, String>,
) -> Result<Program, ReportError> {
    let options = s.defaults.with_params(q)?;
    let _slot = s.limit.acquire().await?;
    let designs = load_designs(&s.rules_dir);
    program_from(
        &s.root,
        &designs,
        &options,
        &s.outcomes,
        s.global_control_percent,
    )
    .await
}

async fn program_json(
    State(s): State<Arc<ReportState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ReportError> {
    Ok(axum::Json(program_for(&s, &q).await?).into_response())
}

async fn program_page(
    State(s): State<Arc<ReportState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let p = program_for(&s, &q).await.map_err(PageError)?;
    Ok(html(StatusCode::OK, pages::program_page(&p, &q)))
}

async fn list(
    State(s): State<Arc<ReportState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ReportError> {
    Ok(axum::Json(overview_for(&s, &q).await?).into_response())
}

async fn one(
    State(s): State<Arc<ReportState>>,
    Path(rule): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ReportError> {
    Ok(axum::Json(report_for(&s, &rule, &q).await?).into_response())
}

async fn overview_page(
    State(s): State<Arc<ReportState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let o = overview_for(&s, &q).await.map_err(PageError)?;
    Ok(html(StatusCode::OK, pages::overview_page(&o, &q)))
}

async fn report_page(
    State(s): State<Arc<ReportState>>,
    Path(rule): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let r = report_for(&s, &rule, &q).await.map_err(PageError)?;
    Ok(html(StatusCode::OK, pages::report_page(&r, &q)))
}

/// Parses and analyses sufficient statistics; the error names the JSON
/// path of the bad field (`arms[1].n`).
pub fn analyze_body(body: &[u8]) -> Result<serde_json::Value, (String, String)> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let input: ExperimentInput = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })?;
    let analysis = analyze(&input).map_err(|e| (e.path(&input), e.problem()))?;
    serde_json::to_value(analysis).map_err(|e| (".".into(), e.to_string()))
}

/// `POST /api/analyze`: in a report slot, off the async workers.
async fn analyze_json(State(s): State<Arc<ReportState>>, body: Bytes) -> Response {
    let _slot = match s.limit.acquire().await {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    match crate::off_runtime(move || analyze_body(&body)).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err((path, message))) => error(
            StatusCode::BAD_REQUEST,
            format!("{path}: {message}"),
            json!({"path": path}),
        ),
        Err(e) => e.into_response(),
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

    fn state(dir: &std::path::Path, token: Option<&str>, limit: ReportLimit) -> Arc<ReportState> {
        crate::metrics::tests::tiny_lake(dir);
        Arc::new(ReportState {
            root: DataRoot::open(dir.to_str().expect("utf8")).expect("root"),
            rules_dir: dir.join("no-rules"),
            defaults: ReportOptions::default(),
            token: token.map(str::to_string),
            limit,
            outcomes: Arc::new(crate::outcomes::Outcomes::exact()),
            global_control_percent: 0.0,
        })
    }

    /// GET `uri` from loopback: status, headers, body.
    async fn get(
        s: &Arc<ReportState>,
        uri: &str,
        auth: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt;
        let mut req = Request::get(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(axum::body::Body::empty()).expect("request");
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(
            "127.0.0.1:4000".parse().expect("addr"),
        ));
        let r = router(s.clone()).oneshot(req).await.expect("infallible");
        let (parts, body) = r.into_parts();
        let body = axum::body::to_bytes(body, 1 << 22).await.expect("body");
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).expect("utf8"),
        )
    }

    #[tokio::test]
    async fn busy_report_slots_answer_503_with_retry_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One slot, no queue: a second report while one runs is refused.
        let s = state(dir.path(), None, ReportLimit::new(1, Duration::ZERO));
        let held = s.limit.acquire().await.expect("free");
        for uri in [
            "/api/experiments/cart",
            "/api/experiments",
            "/experiments/cart",
        ] {
            let (status, headers, body) = get(&s, uri, None).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
            assert_eq!(headers[header::RETRY_AFTER], "1", "{uri}");
            assert!(body.contains("report.max_concurrent"), "{body}");
        }
        // Free again: answered.
        drop(held);
        assert_eq!(
            get(&s, "/api/experiments/cart", None).await.0,
            StatusCode::OK
        );

        // With a queue: the request waits for the slot, then answers.
        let s = state(
            dir.path(),
            None,
            ReportLimit::new(1, Duration::from_secs(30)),
        );
        let held = s.limit.acquire().await.expect("free");
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { get(&s, "/api/experiments/cart", None).await.0 }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "queued behind the held slot");
        drop(held);
        assert_eq!(waiting.await.expect("task"), StatusCode::OK);
    }

    #[tokio::test]
    async fn pages_answer_html_with_the_api_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(dir.path(), None, ReportLimit::default());
        let (status, headers, body) = get(&s, "/experiments/cart?window=9d", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/html")
        );
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], PAGE_CSP);
        assert!(body.contains(r#"<tr data-arm="holdout">"#), "{body}");
        assert!(body.contains("window 9 d"), "the query applies: {body}");
        assert!(
            body.contains(r#"href="/experiments?window=9d""#),
            "links keep it"
        );
        let (status, _, body) = get(&s, "/experiments", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(r#"<tr data-rule="cart">"#) && body.contains(r#"<tr data-rule="other">"#)
        );
        // Errors are pages too, with the API's status.
        let (status, headers, body) = get(&s, "/experiments/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/html")
        );
        assert!(
            body.contains("no experiment named `nope`")
                && body.contains(r#"href="/experiments/cart""#),
            "{body}"
        );
        let (status, _, body) = get(&s, "/experiments/cart?window=soon", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("window: "), "{body}");
        // A token: a browser is asked for Basic credentials.
        let s = state(dir.path(), Some("s3cret"), ReportLimit::default());
        let (status, headers, body) = get(&s, "/experiments", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            headers[header::WWW_AUTHENTICATE]
                .to_str()
                .expect("ascii")
                .starts_with("Basic ")
        );
        assert!(body.contains("token as password"), "{body}");
        // "any:s3cret"
        let (status, _, _) = get(&s, "/experiments", Some("Basic YW55OnMzY3JldA==")).await;
        assert_eq!(status, StatusCode::OK);
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
            "/experiments",
            "/experiments/{rule}",
            "/api/program",
            "/program",
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
