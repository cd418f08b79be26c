//! HTTP channel adapters, each in its provider's documented request shape:
//! a signed webhook, SMS through Twilio's Messages API, WhatsApp through
//! the WhatsApp Cloud API (template messages) and push through FCM HTTP v1.
//! Base URLs are settings, so tests (and regional endpoints) point them
//! elsewhere. Status codes map to [`Failure`]: 429 and 5xx (and network
//! errors) are retryable, honouring `Retry-After`; other 4xx are permanent,
//! with the provider's reason.

use std::time::Duration;

use serde_json::{Value, json};

use crate::channel::{Adapter, Failure, Outgoing, Receipt};

/// How a failed HTTP answer is classified.
async fn failure(resp: reqwest::Response, unreachable: Unreachable) -> Failure {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let reason = format!(
        "HTTP {}: {}",
        status.as_u16(),
        body.chars().take(300).collect::<String>()
    );
    let json: Value = serde_json::from_str(&body).unwrap_or_default();
    if unreachable(status.as_u16(), &json) {
        Failure::Unreachable { reason }
    } else if status.as_u16() == 429 || status.is_server_error() {
        Failure::Retryable {
            reason,
            retry_after,
        }
    } else {
        Failure::Permanent { reason }
    }
}

fn network(e: &reqwest::Error) -> Failure {
    // reqwest's message hides the cause (refused, timed out, reset): add it.
    let mut reason = format!("network: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(&format!(": {s}"));
        source = s.source();
    }
    // A connection that never opened carried nothing: safe to retry. Any
    // other failure (a timeout, a reset after the request went out) may
    // have delivered it.
    if e.is_connect() {
        Failure::Retryable {
            reason,
            retry_after: None,
        }
    } else {
        Failure::InDoubt { reason }
    }
}

/// Whether a provider's error answer (status, JSON body) says the customer
/// cannot be reached on this channel any more.
type Unreachable = fn(u16, &Value) -> bool;

/// Sends a request; a non-2xx answer or a network error becomes a
/// [`Failure`], a success its JSON body (null when it has none).
async fn call(req: reqwest::RequestBuilder, unreachable: Unreachable) -> Result<Value, Failure> {
    let resp = req.send().await.map_err(|e| network(&e))?;
    if !resp.status().is_success() {
        return Err(failure(resp, unreachable).await);
    }
    Ok(resp.json().await.unwrap_or_default())
}

/// The provider's id of an accepted message. The message was accepted
/// either way, so a missing id is logged (its delivery reports cannot be
/// matched to it) rather than failing the send.
fn message_id(provider: &str, v: &Value) -> String {
    match v.as_str() {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            tracing::warn!(
                provider,
                "an accepted message came back without its id; its status callbacks will not match it"
            );
            String::new()
        }
    }
}

/// A client with a request timeout (a slow provider becomes a retryable
/// failure, never a stuck worker).
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(timeout).build()
}

/// POSTs the rendered message and its context as JSON to a URL, signed:
/// `X-Kairos-Timestamp` (Unix seconds) and `X-Kairos-Signature: v1=<hex
/// HMAC-SHA256 of "<timestamp>.<body>">`, so the receiver can check origin
/// and freshness. `Idempotency-Key` is the send id.
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// Signing key.
    pub secret: Vec<u8>,
    /// HTTP client.
    pub client: reqwest::Client,
}

/// The `X-Kairos-Signature` value for `body` sent at `timestamp`.
pub fn webhook_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

#[async_trait::async_trait]
impl Adapter for Webhook {
    fn provider(&self) -> &str {
        "webhook"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let body = serde_json::to_vec(&json!({
            "send_id": m.send_id,
            "rule": m.rule,
            "step": m.step,
            "customer_id": m.customer_id,
            "channel": m.channel.as_str(),
            "headers": m.rendered.headers,
            "body": m.rendered.body,
            "send_at": chrono::DateTime::<chrono::Utc>::from_timestamp_micros(m.send_at)
                .map(|t| t.to_rfc3339()),
            // For the receiver's status callbacks (POST to status_url).
            "reference": m.reference,
            "status_url": m.status_url,
        }))
        .map_err(|e| Failure::Permanent {
            reason: format!("the webhook body does not serialise: {e}"),
        })?;
        let ts = chrono::Utc::now().timestamp();
        call(
            self.client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-kairos-timestamp", ts.to_string())
                .header(
                    "x-kairos-signature",
                    webhook_signature(&self.secret, ts, &body),
                )
                .header("idempotency-key", &m.send_id)
                .body(body),
            |_, _| false,
        )
        .await?;
        Ok(Receipt {
            provider: "webhook".into(),
            provider_message_id: m.send_id.clone(),
        })
    }
}

/// SMS through Twilio's Messages API: `POST
/// {base}/2010-04-01/Accounts/{sid}/Messages.json`, form fields `To`,
/// `From` and `Body`, HTTP Basic auth with the account SID and auth token,
/// `I-Twilio-Idempotency-Token` set to the send id.
pub struct TwilioSms {
    /// `https://api.twilio.com`.
    pub base_url: String,
    /// Account SID.
    pub account_sid: String,
    /// Auth token.
    pub auth_token: String,
    /// Sender number or messaging service.
    pub from: String,
    /// HTTP client.
    pub client: reqwest::Client,
}

#[async_trait::async_trait]
impl Adapter for TwilioSms {
    fn provider(&self) -> &str {
        "twilio"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base_url.trim_end_matches('/'),
            self.account_sid
        );
        let form = [
            ("To", m.to.as_str()),
            ("From", self.from.as_str()),
            ("Body", m.rendered.body.trim_end()),
            ("StatusCallback", m.status_url.as_str()),
        ];
        let v = call(
            self.client
                .post(url)
                .basic_auth(&self.account_sid, Some(&self.auth_token))
                .header("i-twilio-idempotency-token", &m.send_id)
                .form(&form),
            |_, v| v["code"].as_i64() == Some(crate::callbacks::TWILIO_UNSUBSCRIBED),
        )
        .await?;
        Ok(Receipt {
            provider: "twilio".into(),
            provider_message_id: message_id("twilio", &v["sid"]),
        })
    }
}

/// WhatsApp template messages through the Cloud API: `POST
/// {base}/{version}/{phone_number_id}/messages`, Bearer token, body
/// `{messaging_product: "whatsapp", to, type: "template", template: {name,
/// language: {code}, components: [{type: "body", parameters: [{type:
/// "text", text}]}]}}`.
pub struct WhatsappCloud {
    /// `https://graph.facebook.com`.
    pub base_url: String,
    /// API version, e.g. `v21.0`.
    pub api_version: String,
    /// The sending phone number's id.
    pub phone_number_id: String,
    /// Access token.
    pub access_token: String,
    /// HTTP client.
    pub client: reqwest::Client,
}

#[async_trait::async_trait]
impl Adapter for WhatsappCloud {
    fn provider(&self) -> &str {
        "whatsapp_cloud"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let url = format!(
            "{}/{}/{}/messages",
            self.base_url.trim_end_matches('/'),
            self.api_version,
            self.phone_number_id
        );
        let parameters: Vec<Value> = m
            .rendered
            .parameters()
            .into_iter()
            .map(|p| json!({"type": "text", "text": p}))
            .collect();
        let body = json!({
            "messaging_product": "whatsapp",
            "to": m.to.trim_start_matches('+'),
            "type": "template",
            "template": {
                "name": m.rendered.header("Template").unwrap_or_default(),
                "language": {"code": m.rendered.header("Language").unwrap_or("en")},
                "components": [{"type": "body", "parameters": parameters}],
            },
            // Echoed in status webhooks: names the message without a lookup.
            "biz_opaque_callback_data": m.reference,
        });
        let v = call(
            self.client
                .post(url)
                .bearer_auth(&self.access_token)
                .json(&body),
            |_, v| {
                v["error"]["code"].as_i64() == Some(crate::callbacks::WHATSAPP_STOPPED_MARKETING)
            },
        )
        .await?;
        Ok(Receipt {
            provider: "whatsapp_cloud".into(),
            provider_message_id: message_id("whatsapp_cloud", &v["messages"][0]["id"]),
        })
    }
}

/// Push through FCM HTTP v1: `POST {base}/v1/projects/{project}/messages:send`,
/// Bearer token, body `{message: {token, notification: {title, body},
/// data: {send_id}}}`. A 404 `UNREGISTERED` is a dead token: the customer is
/// unreachable on push.
pub struct FcmPush {
    /// `https://fcm.googleapis.com`.
    pub base_url: String,
    /// Firebase project id.
    pub project_id: String,
    /// Where the Bearer token comes from.
    pub auth: Bearer,
    /// HTTP client.
    pub client: reqwest::Client,
}

/// A Bearer token: given as is, or fetched for a service account.
pub enum Bearer {
    /// A token someone else keeps fresh.
    Static(String),
    /// Exchanged from a service account's key, renewed before it expires.
    ServiceAccount(crate::oauth::TokenSource),
}

#[async_trait::async_trait]
impl Adapter for FcmPush {
    fn provider(&self) -> &str {
        "fcm"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.base_url.trim_end_matches('/'),
            self.project_id
        );
        let body = json!({
            "message": {
                "token": m.to,
                "notification": {
                    "title": m.rendered.header("Title").unwrap_or_default(),
                    "body": m.rendered.body.trim_end(),
                },
                "data": {"send_id": m.send_id},
            }
        });
        let token = match &self.auth {
            Bearer::Static(t) => t.clone(),
            Bearer::ServiceAccount(source) => source.token(&self.client).await?,
        };
        let v = call(
            self.client.post(url).bearer_auth(token).json(&body),
            // A token the app was uninstalled from (or that expired).
            |status, v| {
                status == 404
                    && v["error"]["details"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|d| d["errorCode"] == "UNREGISTERED")
            },
        )
        .await?;
        Ok(Receipt {
            provider: "fcm".into(),
            provider_message_id: message_id("fcm", &v["name"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;
    use crate::template::Rendered;
    use kairos_policy::Channel;

    /// What the fake provider saw, and what it answers next.
    #[derive(Default)]
    struct Seen {
        requests: Vec<(String, HeaderMap, String)>,
        answers: Vec<(u16, String)>,
    }

    type Shared = Arc<Mutex<Seen>>;

    async fn record(
        State(seen): State<Shared>,
        Path(path): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        let mut s = seen.lock().expect("lock");
        s.requests.push((path, headers, body));
        let (code, body) = if s.answers.is_empty() {
            (200, "{}".to_string())
        } else {
            s.answers.remove(0)
        };
        (
            StatusCode::from_u16(code).expect("status"),
            [("retry-after", "0")],
            body,
        )
    }

    async fn fake(answers: Vec<(u16, &str)>) -> (String, Shared) {
        let seen: Shared = Arc::default();
        seen.lock().expect("lock").answers = answers
            .into_iter()
            .map(|(c, b)| (c, b.to_string()))
            .collect();
        let app = axum::Router::new()
            .route("/{*path}", post(record))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn message(channel: Channel, to: &str, headers: &[(&str, &str)], body: &str) -> Outgoing {
        Outgoing {
            send_id: "cart:0:c1:k1".into(),
            rule: "cart".into(),
            step: 0,
            customer_id: "c1".into(),
            channel,
            to: to.into(),
            rendered: Rendered {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.into(),
            },
            unsubscribe_url: None,
            reference: "ref".into(),
            status_url: "http://127.0.0.1:8080/callbacks/ref".into(),
            send_at: 1_782_864_000_000_000,
        }
    }

    #[tokio::test]
    async fn twilio_gets_a_form_with_basic_auth_and_an_idempotency_token() {
        let (base, seen) = fake(vec![(201, r#"{"sid": "SM123"}"#)]).await;
        let sms = TwilioSms {
            base_url: base,
            account_sid: "AC1".into(),
            auth_token: "tok".into(),
            from: "+15550199".into(),
            client: client(Duration::from_secs(5)).expect("client"),
        };
        let r = sms
            .send(&message(
                Channel::Sms,
                "+15550100",
                &[],
                "Your cart misses you\n",
            ))
            .await
            .expect("sent");
        assert_eq!(r.provider_message_id, "SM123");
        let s = seen.lock().expect("lock");
        let (path, headers, body) = &s.requests[0];
        assert_eq!(path, "2010-04-01/Accounts/AC1/Messages.json");
        assert_eq!(headers["authorization"], "Basic QUMxOnRvaw==");
        assert_eq!(headers["i-twilio-idempotency-token"], "cart:0:c1:k1");
        assert_eq!(
            body,
            "To=%2B15550100&From=%2B15550199&Body=Your+cart+misses+you&StatusCallback=http%3A%2F%2F127.0.0.1%3A8080%2Fcallbacks%2Fref"
        );
    }

    #[tokio::test]
    async fn whatsapp_and_fcm_bodies_follow_their_apis() {
        let (base, seen) = fake(vec![
            (200, r#"{"messages": [{"id": "wamid.1"}]}"#),
            (200, r#"{"name": "projects/p/messages/9"}"#),
        ])
        .await;
        let wa = WhatsappCloud {
            base_url: base.clone(),
            api_version: "v21.0".into(),
            phone_number_id: "555".into(),
            access_token: "wa-token".into(),
            client: client(Duration::from_secs(5)).expect("client"),
        };
        let r = wa
            .send(&message(
                Channel::Whatsapp,
                "+15550100",
                &[("Template", "cart_reminder"), ("Language", "en_US")],
                "Ana\n2 items\n",
            ))
            .await
            .expect("sent");
        assert_eq!(r.provider_message_id, "wamid.1");
        let fcm = FcmPush {
            base_url: base,
            project_id: "shop".into(),
            auth: Bearer::Static("fcm-token".into()),
            client: client(Duration::from_secs(5)).expect("client"),
        };
        let r = fcm
            .send(&message(
                Channel::Push,
                "tok-1",
                &[("Title", "Still there?")],
                "Come back\n",
            ))
            .await
            .expect("sent");
        assert_eq!(r.provider_message_id, "projects/p/messages/9");
        let s = seen.lock().expect("lock");
        let (path, headers, body) = &s.requests[0];
        assert_eq!(path, "v21.0/555/messages");
        assert_eq!(headers["authorization"], "Bearer wa-token");
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(
            v,
            json!({"messaging_product": "whatsapp", "to": "15550100", "type": "template",
                   "template": {"name": "cart_reminder", "language": {"code": "en_US"},
                                "components": [{"type": "body", "parameters": [
                                    {"type": "text", "text": "Ana"}, {"type": "text", "text": "2 items"}]}]},
                   "biz_opaque_callback_data": "ref"})
        );
        let (path, headers, body) = &s.requests[1];
        assert_eq!(path, "v1/projects/shop/messages:send");
        assert_eq!(headers["authorization"], "Bearer fcm-token");
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(
            v,
            json!({"message": {"token": "tok-1", "notification": {"title": "Still there?", "body": "Come back"},
                               "data": {"send_id": "cart:0:c1:k1"}}})
        );
    }

    #[tokio::test]
    async fn webhook_is_signed_and_errors_are_classified() {
        let (base, seen) = fake(vec![(500, "busy"), (429, "slow down"), (404, "gone")]).await;
        let hook = Webhook {
            url: format!("{base}/hooks/kairos"),
            secret: b"s3cret".to_vec(),
            client: client(Duration::from_secs(5)).expect("client"),
        };
        let m = message(Channel::Webhook, "", &[], "hello\n");
        let e = hook.send(&m).await.expect_err("500");
        assert!(matches!(e, Failure::Retryable { .. }), "{e:?}");
        let e = hook.send(&m).await.expect_err("429");
        assert!(
            matches!(&e, Failure::Retryable { retry_after: Some(d), .. } if d.is_zero()),
            "{e:?}"
        );
        let e = hook.send(&m).await.expect_err("404");
        assert!(
            matches!(&e, Failure::Permanent { reason } if reason.contains("404") && reason.contains("gone")),
            "{e:?}"
        );
        assert!(hook.send(&m).await.is_ok());
        let s = seen.lock().expect("lock");
        let (path, headers, body) = &s.requests[3];
        assert_eq!(path, "hooks/kairos");
        let ts: i64 = headers["x-kairos-timestamp"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("int");
        assert_eq!(
            headers["x-kairos-signature"].to_str().expect("ascii"),
            webhook_signature(b"s3cret", ts, body.as_bytes()),
            "the receiver recomputes the signature from the raw body"
        );
        assert_eq!(headers["idempotency-key"], "cart:0:c1:k1");
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["body"], "hello\n");
    }

    #[tokio::test]
    async fn a_provider_that_accepts_then_hangs_leaves_the_send_in_doubt_and_a_refused_one_is_retryable()
     {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let hook = Webhook {
            url: format!("http://{addr}/x"),
            secret: Vec::new(),
            client: client(Duration::from_millis(200)).expect("client"),
        };
        let e = hook
            .send(&message(Channel::Webhook, "", &[], "x"))
            .await
            .expect_err("timeout");
        assert!(matches!(e, Failure::InDoubt { .. }), "{e:?}");
        // Nothing listens: the request never left, so a retry is safe.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let refused = Webhook {
            url: format!("http://{closed}/x"),
            ..hook
        };
        let e = refused
            .send(&message(Channel::Webhook, "", &[], "x"))
            .await
            .expect_err("refused");
        assert!(matches!(e, Failure::Retryable { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn fcm_exchanges_a_service_account_key_for_a_token_once() {
        let (base, seen) = fake(vec![
            (
                200,
                r#"{"access_token": "ya29.fresh", "expires_in": 3599, "token_type": "Bearer"}"#,
            ),
            (200, r#"{"name": "projects/shop/messages/1"}"#),
            (200, r#"{"name": "projects/shop/messages/2"}"#),
        ])
        .await;
        let mut file: Value =
            serde_json::from_str(include_str!("testdata/fcm-service-account.json")).expect("json");
        file["token_uri"] = Value::from(format!("{base}/token"));
        let account = crate::oauth::ServiceAccount::from_json(&file.to_string()).expect("account");
        let fcm = FcmPush {
            base_url: base.clone(),
            project_id: "shop".into(),
            auth: Bearer::ServiceAccount(crate::oauth::TokenSource::new(
                account,
                crate::oauth::FCM_SCOPE,
            )),
            client: client(Duration::from_secs(5)).expect("client"),
        };
        for _ in 0..2 {
            fcm.send(&message(
                Channel::Push,
                "tok-1",
                &[("Title", "Hi")],
                "Body\n",
            ))
            .await
            .expect("sent");
        }
        let s = seen.lock().expect("lock");
        let paths: Vec<&str> = s.requests.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "token",
                "v1/projects/shop/messages:send",
                "v1/projects/shop/messages:send"
            ],
            "one exchange, then the cached token"
        );
        // The grant is RFC 7523's, its JWT signed by the account's key.
        let form: Vec<(String, String)> =
            reqwest::Url::parse(&format!("http://x/?{}", s.requests[0].2))
                .expect("form")
                .query_pairs()
                .into_owned()
                .collect();
        assert_eq!(
            form[0],
            (
                "grant_type".into(),
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into()
            )
        );
        let jwt = &form[1].1;
        let public = jsonwebtoken::DecodingKey::from_rsa_pem(include_bytes!(
            "testdata/fcm-service-account.pub.pem"
        ))
        .expect("public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[format!("{base}/token")]);
        let claims = jsonwebtoken::decode::<Value>(jwt, &public, &validation)
            .expect("RS256 signature verifies")
            .claims;
        assert_eq!(
            claims["iss"],
            "kairos-test@kairos-test.iam.gserviceaccount.com"
        );
        assert_eq!(claims["scope"], crate::oauth::FCM_SCOPE);
        assert_eq!(
            claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
            3600
        );
        for r in &s.requests[1..] {
            assert_eq!(r.1["authorization"], "Bearer ya29.fresh");
        }
    }

    #[tokio::test]
    async fn a_bad_service_account_file_names_the_field() {
        let err = |v: Value| {
            crate::oauth::ServiceAccount::from_json(&v.to_string())
                .err()
                .expect("error")
        };
        let missing = err(json!({"client_email": "a@b"}));
        assert!(
            matches!(missing, crate::oauth::AccountError::File(_))
                && missing.to_string().contains("private_key"),
            "{missing}"
        );
        let bad_key = err(
            json!({"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}),
        );
        assert!(
            matches!(bad_key, crate::oauth::AccountError::Key(_)),
            "{bad_key}"
        );
    }
}
