//! `/callbacks/{channel}[/{reference}]`: what providers report after a
//! send (delivered, failed, bounced, STOP replies), authenticated the way
//! each provider signs, recorded through ingest as `Message Status` events
//! and, when the customer can no longer be messaged on the channel, as the
//! channel's opt-out event (see `kairos_messaging::callbacks`).
//!
//! Per the channel's configured provider:
//! - `twilio`: `POST /callbacks/sms/{reference}` is the `StatusCallback`
//!   each message names; `POST /callbacks/sms` is the number's inbound
//!   webhook (STOP replies). Both checked with `X-Twilio-Signature`.
//! - `whatsapp_cloud`: `GET /callbacks/whatsapp` answers the subscription
//!   handshake; `POST` takes statuses and inbound messages, checked with
//!   `X-Hub-Signature-256`.
//! - any other: Kairos' own JSON shape signed like our webhooks
//!   (`X-Kairos-Timestamp`, `X-Kairos-Signature`), e.g. from an ESP's
//!   bounce webhook through a small relay.
//!
//! The provider gets its 200 only once the events are committed, so a
//! callback is never acknowledged and lost; providers retry otherwise, and
//! the events' message ids make a retry change nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use kairos_core::config::ChannelConfig;
use kairos_ingest::IngestState;
use kairos_messaging::callbacks::{self, StatusUpdate};
use kairos_policy::Channel;
use kairos_storage::DataRoot;

/// How far a generic callback's timestamp may be from now (replay guard).
const MAX_SKEW: i64 = 300;
/// A phone number not found is looked up again after profiles are
/// reloaded, at most this often.
const PHONE_BOOK_TTL: Duration = Duration::from_secs(30);

/// What the callback routes need.
pub struct Callbacks {
    /// Key of the references messages carry.
    pub key: Vec<u8>,
    /// Where updates are recorded.
    pub ingest: Arc<IngestState>,
    /// Profiles, for phone numbers in STOP replies.
    pub root: DataRoot,
    /// `messaging.public_url`: the URLs providers sign.
    pub public_url: String,
    /// `[messaging.channels]`.
    pub channels: BTreeMap<String, ChannelConfig>,
    phones: Mutex<PhoneBook>,
    seen: std::sync::Mutex<SeenSignatures>,
}

/// Signatures of generic callbacks taken within the last `MAX_SKEW`: a
/// signed request replayed while its timestamp is still fresh is refused.
#[derive(Default)]
struct SeenSignatures {
    /// signature -> its timestamp, s.
    at: HashMap<String, i64>,
}

/// Generic callbacks remembered at most (about 30 MB); above it, callbacks
/// are answered 503 until older ones expire, never let through unchecked.
const MAX_SEEN: usize = 200_000;

impl SeenSignatures {
    /// `Ok` the first time `sig` is seen; `Err` with the answer otherwise.
    fn first_use(&mut self, sig: &str, ts: i64, now: i64) -> Result<(), Response> {
        if self.at.contains_key(sig) {
            return Err(answer(
                StatusCode::CONFLICT,
                "this signed callback was received already (a replay); sign each callback anew",
            ));
        }
        if self.at.len() >= MAX_SEEN {
            self.at.retain(|_, t| now - *t <= MAX_SKEW);
            if self.at.len() >= MAX_SEEN {
                return Err(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many signed callbacks in the last 5 minutes; retry later",
                ));
            }
        }
        self.at.insert(sig.to_string(), ts);
        Ok(())
    }
}

impl Callbacks {
    /// Callback routes over `channels`, recording through `ingest`.
    pub fn new(
        key: Vec<u8>,
        ingest: Arc<IngestState>,
        root: DataRoot,
        public_url: &str,
        channels: BTreeMap<String, ChannelConfig>,
    ) -> Callbacks {
        Callbacks {
            key,
            ingest,
            root,
            public_url: public_url.trim_end_matches('/').to_string(),
            channels,
            phones: Mutex::new(PhoneBook::default()),
            seen: std::sync::Mutex::default(),
        }
    }
}

/// The `/callbacks/...` routes.
pub fn router(c: Callbacks) -> Router {
    Router::new()
        .route("/callbacks/{channel}", get(handshake).post(notice))
        .route("/callbacks/{channel}/{reference}", post(status))
        .with_state(Arc::new(c))
}

/// Records every update `rx` yields (sends that found their customer
/// unreachable) until the delivery workers stop.
pub fn forward(
    ingest: std::sync::Weak<IngestState>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StatusUpdate>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            let Some(ingest) = ingest.upgrade() else {
                tracing::warn!(customer = %u.customer_id, channel = u.channel.as_str(), "stopping: this consent change is recorded at the next start");
                continue;
            };
            if let Err(e) = record(&ingest, &u).await {
                tracing::error!(customer = %u.customer_id, channel = u.channel.as_str(), error = %e, "recording a consent change failed");
            }
        }
    })
}

async fn record(
    ingest: &IngestState,
    u: &StatusUpdate,
) -> Result<(), kairos_ingest::http::RecordError> {
    for call in u.calls() {
        ingest.record(&call, "kairos-callbacks").await?;
    }
    Ok(())
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn ok() -> Response {
    (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
}

/// The channel and its provider settings, or the answer saying why not.
fn setup<'a>(c: &'a Callbacks, channel: &str) -> Result<(Channel, &'a ChannelConfig), Response> {
    let ch = Channel::parse(channel).ok_or_else(|| {
        answer(
            StatusCode::NOT_FOUND,
            format!("{channel:?} is not a channel (email, sms, whatsapp, push, webhook)"),
        )
    })?;
    let cfg = c.channels.get(channel).ok_or_else(|| {
        answer(
            StatusCode::NOT_FOUND,
            format!("no callbacks for {channel}: configure [messaging.channels.{channel}]"),
        )
    })?;
    Ok((ch, cfg))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn twilio_checked(
    c: &Callbacks,
    channel: &str,
    cfg: &ChannelConfig,
    path: &str,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<(), Response> {
    if cfg.auth_token.0.is_empty() {
        return Err(answer(
            StatusCode::FORBIDDEN,
            format!("set messaging.channels.{channel}.auth_token to accept Twilio callbacks"),
        ));
    }
    let given = header(headers, "x-twilio-signature")
        .ok_or_else(|| answer(StatusCode::UNAUTHORIZED, "X-Twilio-Signature missing"))?;
    // Twilio signs the URL it was given: ours as the public sees it.
    let url = format!("{}{path}", c.public_url);
    if !callbacks::twilio_signature_ok(&cfg.auth_token.0, &url, params, given) {
        return Err(answer(
            StatusCode::FORBIDDEN,
            format!(
                "X-Twilio-Signature does not match {url} signed with the auth token; check messaging.public_url and auth_token"
            ),
        ));
    }
    Ok(())
}

/// A generic callback's body once its signature, freshness and
/// uniqueness hold, and the reference it names is for `channel`.
fn generic_checked(
    c: &Callbacks,
    channel: &str,
    cfg: &ChannelConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, Response> {
    let secret = if cfg.callback_secret.0.is_empty() {
        &cfg.secret.0
    } else {
        &cfg.callback_secret.0
    };
    if secret.is_empty() {
        return Err(answer(
            StatusCode::FORBIDDEN,
            format!("set messaging.channels.{channel}.callback_secret to accept status callbacks"),
        ));
    }
    let (Some(ts), Some(given)) = (
        header(headers, "x-kairos-timestamp"),
        header(headers, "x-kairos-signature"),
    ) else {
        return Err(answer(
            StatusCode::UNAUTHORIZED,
            "X-Kairos-Timestamp and X-Kairos-Signature are required (v1=hex HMAC-SHA256 of \"<timestamp>.<body>\")",
        ));
    };
    let ts: i64 = ts.parse().map_err(|_| {
        answer(
            StatusCode::BAD_REQUEST,
            "X-Kairos-Timestamp: Unix seconds expected",
        )
    })?;
    let now = chrono::Utc::now().timestamp();
    if (now - ts).abs() > MAX_SKEW {
        return Err(answer(
            StatusCode::FORBIDDEN,
            format!(
                "X-Kairos-Timestamp {ts} is more than {MAX_SKEW} s from now; sign with the current time"
            ),
        ));
    }
    let want = kairos_messaging::http::webhook_signature(secret.as_bytes(), ts, body);
    if !callbacks::same(&want, given) {
        return Err(answer(
            StatusCode::FORBIDDEN,
            "X-Kairos-Signature does not match this body signed with the callback secret",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| answer(StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")))?;
    // The reference is inside the signed body (never taken from the path
    // alone), and names a message sent on this channel.
    let reference = v["reference"].as_str().ok_or_else(|| {
        answer(
            StatusCode::BAD_REQUEST,
            "field `reference`: missing; the signed body must carry the reference the message carried",
        )
    })?;
    if let Some(r) = callbacks::verify_reference(&c.key, reference)
        && r.channel.as_str() != channel
    {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!(
                "the reference names a {} message; post it to /callbacks/{}",
                r.channel.as_str(),
                r.channel.as_str()
            ),
        ));
    }
    c.seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .first_use(given, ts, now)?;
    Ok(v)
}

async fn recorded(c: &Callbacks, updates: &[StatusUpdate]) -> Response {
    for u in updates {
        if let Err(e) = record(&c.ingest, u).await {
            tracing::error!(error = %e, "recording a provider callback failed");
            // The provider retries on 5xx: nothing is lost.
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not record the update ({e}); retry"),
            );
        }
    }
    ok()
}

/// `POST /callbacks/{channel}/{reference}`: one message's status.
async fn status(
    State(c): State<Arc<Callbacks>>,
    Path((channel, reference)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, cfg) = match setup(&c, &channel) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let update = if cfg.provider == "twilio" {
        let params = form(&body);
        let path = format!("/callbacks/{channel}/{reference}");
        if let Err(r) = twilio_checked(&c, &channel, cfg, &path, &headers, &params) {
            return r;
        }
        let Some(r) = callbacks::verify_reference(&c.key, &reference) else {
            return answer(
                StatusCode::NOT_FOUND,
                "not a reference this server signed; every server sending for this data root must use the same messaging.link_key",
            );
        };
        callbacks::twilio_status(&r, &params)
    } else {
        let v = match generic_checked(&c, &channel, cfg, &headers, &body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if v["reference"].as_str() != Some(reference.as_str()) {
            return answer(
                StatusCode::BAD_REQUEST,
                "the path's reference differs from the signed body's; post to /callbacks/{channel} or the reference in the body",
            );
        }
        match callbacks::generic_status(&c.key, &v) {
            Ok(u) => u,
            Err(e) => return answer(StatusCode::BAD_REQUEST, e.to_string()),
        }
    };
    recorded(&c, &[update]).await
}

/// `POST /callbacks/{channel}`: a provider's account-level webhook.
async fn notice(
    State(c): State<Arc<Callbacks>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (ch, cfg) = match setup(&c, &channel) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match cfg.provider.as_str() {
        "twilio" => {
            let params = form(&body);
            let path = format!("/callbacks/{channel}");
            if let Err(r) = twilio_checked(&c, &channel, cfg, &path, &headers, &params) {
                return r;
            }
            let mut updates = Vec::new();
            if let Some(phone) = callbacks::twilio_stop(&params) {
                let sid = params
                    .iter()
                    .find(|(k, _)| k == "MessageSid")
                    .map(|(_, v)| v.clone());
                match c.stop(ch, "twilio", &phone, sid).await {
                    Ok(update) => updates.extend(update),
                    Err(unavailable) => return unavailable,
                }
            }
            let done = recorded(&c, &updates).await;
            if done.status() != StatusCode::OK {
                return done;
            }
            // An empty TwiML answer: no auto-reply from us (Twilio sends
            // its own opt-out confirmation).
            (
                StatusCode::OK,
                [("content-type", "text/xml")],
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
            )
                .into_response()
        }
        "whatsapp_cloud" => {
            if cfg.app_secret.0.is_empty() {
                return answer(
                    StatusCode::FORBIDDEN,
                    format!(
                        "set messaging.channels.{channel}.app_secret to accept WhatsApp webhooks"
                    ),
                );
            }
            let Some(sig) = header(&headers, "x-hub-signature-256") else {
                return answer(StatusCode::UNAUTHORIZED, "X-Hub-Signature-256 missing");
            };
            if !callbacks::whatsapp_signature_ok(cfg.app_secret.0.as_bytes(), &body, sig) {
                return answer(
                    StatusCode::FORBIDDEN,
                    "X-Hub-Signature-256 does not match this body signed with the app secret",
                );
            }
            let v: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return answer(StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")),
            };
            let n = callbacks::whatsapp_notice(&c.key, &v);
            if n.unmatched > 0 {
                tracing::warn!(
                    statuses = n.unmatched,
                    "WhatsApp statuses without a valid reference (sent by another system?) skipped"
                );
            }
            let mut updates = n.statuses;
            for phone in n.stops {
                match c.stop(ch, "whatsapp_cloud", &phone, None).await {
                    Ok(update) => updates.extend(update),
                    Err(unavailable) => return unavailable,
                }
            }
            recorded(&c, &updates).await
        }
        _ => {
            let v = match generic_checked(&c, &channel, cfg, &headers, &body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            match callbacks::generic_status(&c.key, &v) {
                Ok(u) => recorded(&c, &[u]).await,
                Err(e) => answer(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    }
}

/// `GET /callbacks/{channel}`: the WhatsApp (Meta) subscription handshake:
/// echo `hub.challenge` when `hub.verify_token` is ours.
async fn handshake(
    State(c): State<Arc<Callbacks>>,
    Path(channel): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (_, cfg) = match setup(&c, &channel) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or("");
    if cfg.verify_token.0.is_empty()
        || q.get("hub.mode").map(String::as_str) != Some("subscribe")
        || !callbacks::same(token, &cfg.verify_token.0)
    {
        return answer(
            StatusCode::FORBIDDEN,
            format!("hub.verify_token does not match messaging.channels.{channel}.verify_token"),
        );
    }
    q.get("hub.challenge")
        .cloned()
        .unwrap_or_default()
        .into_response()
}

impl Callbacks {
    /// The opt-out of the customer whose profile has `phone`; none (and a
    /// warning) when no profile has it; a 503 for the provider to retry
    /// when the profiles cannot be read now (a 200 would lose the opt-out).
    async fn stop(
        &self,
        channel: Channel,
        provider: &str,
        phone: &str,
        message_id: Option<String>,
    ) -> Result<Option<StatusUpdate>, Response> {
        let customer = self
            .phones
            .lock()
            .await
            .find(&self.root, phone)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "loading profiles to resolve a STOP reply failed");
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the profiles to find this number now ({e}); retry"),
                )
            })?;
        let Some(customer_id) = customer else {
            tracing::warn!(
                provider,
                "a STOP reply from a number no profile has; nothing to opt out"
            );
            return Ok(None);
        };
        Ok(Some(StatusUpdate {
            customer_id,
            channel,
            send_id: None,
            provider: provider.into(),
            provider_message_id: Some(
                message_id.unwrap_or_else(|| format!("stop-{}", digits(phone))),
            ),
            status: "stop".into(),
            error: None,
            withdraws: Some(format!("{}_stop", channel.as_str())),
            at: None,
        }))
    }
}

fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// Phone number (digits only) -> customer, from `profiles/`. STOP replies
/// are rare, so the index is built on the first one and rebuilt when a
/// number is missing and the index is older than [`PHONE_BOOK_TTL`].
#[derive(Default)]
struct PhoneBook {
    built: Option<Instant>,
    by_digits: HashMap<String, String>,
}

impl PhoneBook {
    async fn find(
        &mut self,
        root: &DataRoot,
        phone: &str,
    ) -> Result<Option<String>, kairos_storage::StorageError> {
        let key = digits(phone);
        if key.is_empty() {
            return Ok(None);
        }
        if let Some(c) = self.by_digits.get(&key) {
            return Ok(Some(c.clone()));
        }
        if self.built.is_some_and(|t| t.elapsed() < PHONE_BOOK_TTL) {
            return Ok(None);
        }
        let profiles = kairos_storage::profiles::ProfileState::load(root, &[]).await?;
        self.by_digits = profiles
            .customers()
            .filter_map(|c| {
                let p = profiles.get(c)?.get("phone")?.as_str()?;
                Some((digits(p), c.to_string()))
            })
            .filter(|(d, _)| !d.is_empty())
            .collect();
        self.built = Some(Instant::now());
        Ok(self.by_digits.get(&key).cloned())
    }
}
