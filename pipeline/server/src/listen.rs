//! The HTTP listener, and the checks every request passes before a route.
//!
//! `axum::serve` sets no header-read timeout and accepts every connection,
//! so a few thousand idle or trickling clients could hold the server. This
//! loop serves HTTP/1.1 with hyper directly:
//!
//! - at most `server.max_connections` open at once (more wait in the
//!   kernel's listen queue);
//! - a request's headers within `server.header_timeout`, its body within
//!   `server.body_timeout` (the read fails; ingest answers 408);
//! - every request carries its peer address (`ConnectInfo`), so "is this
//!   loopback" is never guessed.
//!
//! Before any route, [`RequestChecks`] refuses a `Host` that is neither an
//! IP address, `localhost` nor a configured name (DNS rebinding: a page on
//! `evil.example` whose name now resolves to 127.0.0.1), and an `Origin`
//! that is neither this server's nor a configured browser origin (a page
//! the operator visits posting `text/plain` calls, which browsers send
//! without asking).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use kairos_ingest::body::Deadline;

/// Connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Headers must arrive within this.
    pub header_timeout: Duration,
    /// A body must arrive within this.
    pub body_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open
/// requests finish and returns once every connection has closed (and
/// with them every clone of `app`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let body_timeout = limits.body_timeout;
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(|b| Body::new(Deadline::new(b, body_timeout)));
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every open connection holds a slot: all slots back means all closed.
    let _ = slots.acquire_many(max as u32).await;
}

/// The `Host` and `Origin` rules (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RequestChecks {
    /// Names besides IP addresses and `localhost` (`server.hostnames`).
    pub hostnames: Vec<String>,
    /// Origins allowed to send from a browser (`ingest.browser_origins`).
    pub browser_origins: Vec<String>,
}

impl RequestChecks {
    /// Why `headers` may not reach any route, if so.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return Err("missing Host header".into());
        };
        if !self.host_allowed(host) {
            return Err(format!(
                "Host {host:?} is not a name of this server; add it to server.hostnames if it is"
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin, host) {
                return Err(format!(
                    "requests from pages of {origin:?} are refused; add it to ingest.browser_origins to let that site's pages send events"
                ));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6]:port
            Some(rest) => {
                return rest
                    .split(']')
                    .next()
                    .is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        let same = origin.split_once("://").is_some_and(|(scheme, h)| {
            matches!(scheme, "http" | "https") && h.eq_ignore_ascii_case(host)
        });
        same || self
            .browser_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// Middleware applying [`RequestChecks`] to every request.
pub async fn check_requests(
    State(checks): State<Arc<RequestChecks>>,
    req: Request,
    next: Next,
) -> Response {
    match checks.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(message) => {
            tracing::debug!(%message, "request refused before routing");
            (StatusCode::FORBIDDEN, axum::Json(json!({"error": message}))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, v.parse().expect("host"));
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, v.parse().expect("origin"));
        }
        h
    }

    #[test]
    fn hosts_are_addresses_localhost_or_configured_names() {
        let c = RequestChecks {
            hostnames: vec!["kairos.shop.example".into()],
            ..Default::default()
        };
        for ok in [
            "127.0.0.1:8080",
            "10.0.0.5",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "kairos.shop.example:443",
        ] {
            assert!(c.check(&headers(Some(ok), None)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example:8080",
            "[evil]:80",
        ] {
            assert!(c.check(&headers(Some(bad), None)).is_err(), "{bad}");
        }
        assert!(c.check(&headers(None, None)).is_err(), "no Host");
    }

    #[test]
    fn origins_are_this_server_or_configured() {
        let c = RequestChecks {
            browser_origins: vec!["https://shop.example/".into()],
            ..Default::default()
        };
        let host = Some("127.0.0.1:8080");
        assert!(
            c.check(&headers(host, Some("http://127.0.0.1:8080")))
                .is_ok(),
            "same origin"
        );
        assert!(
            c.check(&headers(host, Some("https://shop.example")))
                .is_ok()
        );
        let e = c
            .check(&headers(host, Some("http://evil.example")))
            .expect_err("cross-origin");
        assert!(e.contains("ingest.browser_origins"), "{e}");
        assert!(
            c.check(&headers(host, Some("null"))).is_err(),
            "sandboxed pages and files"
        );
        assert!(
            c.check(&headers(host, Some("http://127.0.0.1:9999")))
                .is_err(),
            "another port is another origin"
        );
    }
}
