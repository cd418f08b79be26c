//! What providers tell us after a send: delivery receipts, bounces, STOP
//! replies, dead push tokens. Each becomes a [`StatusUpdate`]; its
//! [`StatusUpdate::calls`] are ingest calls, so a callback is an event like
//! any other (`message_status`), durable once the provider gets its 200,
//! and a consent change is the channel's ordinary opt-out event, folded by
//! the rules state and honoured by the policy stage at once.
//!
//! A message carries a signed **reference** (customer, channel, send id)
//! to its provider: in Twilio's `StatusCallback` URL, WhatsApp's
//! `biz_opaque_callback_data`, an email's `X-Kairos-Reference` header, the
//! webhook body. A callback naming it needs no lookup and cannot be forged
//! for another customer. STOP replies name only a phone number; the caller
//! resolves it (see `kairos_cli::callbacks`).
//!
//! This module checks signatures and parses bodies; it does no I/O.

use kairos_policy::Channel;
use serde_json::{Value, json};

/// HMAC-SHA256 tag of `payload`, first 16 bytes, base64url.
fn tag(key: &[u8], payload: &str) -> String {
    use base64::Engine as _;
    let t = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        payload.as_bytes(),
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&t.as_ref()[..16])
}

/// What a signed token is for. The purpose's tag is signed with the
/// fields, so a token made for one purpose never passes for another (an
/// unsubscribe link is never a callback reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An unsubscribe link: (customer, channel).
    Unsubscribe,
    /// A message reference: (customer, channel, send id).
    Reference,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Unsubscribe => "kairos-unsubscribe-v1",
            Purpose::Reference => "kairos-reference-v1",
        }
    }
}

/// A signed token for `purpose` carrying `fields` (none may contain a
/// newline).
pub fn sign_fields(key: &[u8], purpose: Purpose, fields: &[&str]) -> String {
    use base64::Engine as _;
    let payload = std::iter::once(purpose.tag())
        .chain(fields.iter().copied())
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "{}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload),
        tag(key, &payload)
    )
}

/// The `n` fields of a `purpose` token whose signature holds. Tokens
/// signed before purposes were tagged (links still in inboxes) carry the
/// fields alone; their counts differ by purpose (2 and 3), which keeps
/// those apart too.
pub fn verify_fields(key: &[u8], purpose: Purpose, token: &str, n: usize) -> Option<Vec<String>> {
    use base64::Engine as _;
    let (payload, t) = token.split_once('.')?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let payload = String::from_utf8(payload).ok()?;
    // Both tags come from our own HMAC; comparing them in constant time
    // keeps a forger from learning a prefix.
    if !same(&tag(key, &payload), t) {
        return None;
    }
    let mut fields: Vec<String> = payload.split('\n').map(str::to_string).collect();
    if fields.first().map(String::as_str) == Some(purpose.tag()) {
        fields.remove(0);
    } else if fields.first().is_some_and(|f| {
        [Purpose::Unsubscribe, Purpose::Reference]
            .iter()
            .any(|p| p.tag() == f)
    }) {
        return None;
    }
    (fields.len() == n).then_some(fields)
}

pub use kairos_core::secret::same;

/// Which message a callback is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Canonical customer id.
    pub customer_id: String,
    /// Channel the message went on.
    pub channel: Channel,
    /// The send.
    pub send_id: String,
}

/// The reference token a message carries to its provider.
pub fn reference(key: &[u8], customer_id: &str, channel: Channel, send_id: &str) -> String {
    sign_fields(
        key,
        Purpose::Reference,
        &[customer_id, channel.as_str(), send_id],
    )
}

/// The message a reference names, if its signature holds.
pub fn verify_reference(key: &[u8], token: &str) -> Option<Reference> {
    let f = verify_fields(key, Purpose::Reference, token, 3)?;
    Some(Reference {
        channel: Channel::parse(&f[1])?,
        customer_id: f[0].clone(),
        send_id: f[2].clone(),
    })
}

/// One thing a provider told us about a customer on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// Canonical customer id.
    pub customer_id: String,
    /// Channel.
    pub channel: Channel,
    /// The send, when the provider named one.
    pub send_id: Option<String>,
    /// Provider name (`twilio`, `whatsapp_cloud`, `fcm`, ...).
    pub provider: String,
    /// The provider's message id.
    pub provider_message_id: Option<String>,
    /// `delivered`, `read`, `failed`, `bounced`, `complained`, `stop`, ...
    /// as the provider words it, lower case.
    pub status: String,
    /// The provider's error code or reason.
    pub error: Option<String>,
    /// Why the customer can no longer be messaged on this channel (hard
    /// bounce, STOP reply, dead push token); `None`: consent unchanged.
    pub withdraws: Option<String>,
    /// When it happened, µs (none: when recorded). Set for updates that may
    /// be recorded twice, so the repeat lands in the same event-time hour
    /// and ingest's exact de-duplication drops it.
    pub at: Option<i64>,
}

impl StatusUpdate {
    /// A send the provider refused for good because the customer cannot be
    /// reached on `channel` (a `deliveries/` row with status `unreachable`).
    pub fn unreachable(
        customer_id: &str,
        channel: Channel,
        send_id: &str,
        provider: &str,
        error: Option<String>,
        at: Option<i64>,
    ) -> StatusUpdate {
        StatusUpdate {
            customer_id: customer_id.to_string(),
            channel,
            send_id: Some(send_id.to_string()),
            provider: provider.to_string(),
            provider_message_id: None,
            status: "unreachable".into(),
            error,
            withdraws: Some(format!("{provider}_unreachable")),
            at,
        }
    }

    /// The ingest calls recording this update: a `Message Status` event,
    /// and the channel's opt-out event when consent is withdrawn. Message
    /// ids are derived from the update, so a provider retrying its callback
    /// records nothing twice.
    pub fn calls(&self) -> Vec<Value> {
        let about = self
            .provider_message_id
            .as_deref()
            .or(self.send_id.as_deref())
            .unwrap_or("-");
        let timestamp = self
            .at
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let mut calls = vec![json!({
            "type": "track",
            "userId": self.customer_id,
            "event": "Message Status",
            "messageId": format!("status-{}-{about}-{}", self.provider, self.status),
            "properties": {
                "channel": self.channel.as_str(),
                "provider": self.provider,
                "send_id": self.send_id,
                "provider_message_id": self.provider_message_id,
                "status": self.status,
                "error": self.error,
            },
        })];
        if let Some(why) = &self.withdraws {
            calls.push(json!({
                "type": "track",
                "userId": self.customer_id,
                "event": opt_out_event(self.channel),
                "messageId": format!("optout-{}-{}-{about}", self.channel.as_str(), self.customer_id),
                "properties": {"via": why, "send_id": self.send_id, "provider": self.provider},
            }));
        }
        if let Some(t) = timestamp {
            for c in &mut calls {
                c["timestamp"] = Value::from(t.clone());
            }
        }
        calls
    }
}

/// The event that withdraws marketing consent for `channel` (the names
/// the rules state folds as opt-outs).
pub fn opt_out_event(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "Email Unsubscribed",
        Channel::Sms => "SMS Opted Out",
        Channel::Whatsapp => "WhatsApp Opted Out",
        Channel::Push => "Push Opted Out",
        Channel::Webhook => "Unsubscribed",
    }
}

/// Twilio's `X-Twilio-Signature`: base64 HMAC-SHA1, keyed by the auth
/// token, of the full URL Twilio called followed by every POST parameter
/// as name then value, sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine as _;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        auth_token.as_bytes(),
    );
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(url.as_bytes());
    for (k, v) in sorted {
        ctx.update(k.as_bytes());
        ctx.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// Whether `given` is the Twilio signature of this request.
pub fn twilio_signature_ok(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: &str,
) -> bool {
    same(&twilio_signature(auth_token, url, params), given)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Twilio error 21610: the recipient replied STOP, Twilio blocks the number.
pub const TWILIO_UNSUBSCRIBED: i64 = 21610;

/// A Twilio status callback (`MessageStatus`, `ErrorCode`) for `r`.
pub fn twilio_status(r: &Reference, params: &[(String, String)]) -> StatusUpdate {
    let error = param(params, "ErrorCode")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let withdraws = (error.as_deref() == Some(&TWILIO_UNSUBSCRIBED.to_string()))
        .then(|| "sms_stop".to_string());
    StatusUpdate {
        customer_id: r.customer_id.clone(),
        channel: r.channel,
        send_id: Some(r.send_id.clone()),
        provider: "twilio".into(),
        provider_message_id: param(params, "MessageSid").map(str::to_string),
        status: param(params, "MessageStatus")
            .unwrap_or("unknown")
            .to_ascii_lowercase(),
        error,
        withdraws,
        at: None,
    }
}

/// The carrier-standard opt-out keywords (CTIA; Twilio's default set).
const STOP_WORDS: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];

/// Whether an inbound message's text is an opt-out keyword.
pub fn is_stop(text: &str) -> bool {
    let word = text
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_uppercase();
    STOP_WORDS.contains(&word.as_str())
}

/// The sender's number when a Twilio inbound message is a STOP reply
/// (its keyword, or Twilio's own `OptOutType=STOP`).
pub fn twilio_stop(params: &[(String, String)]) -> Option<String> {
    let stop = param(params, "OptOutType").is_some_and(|t| t.eq_ignore_ascii_case("STOP"))
        || param(params, "Body").is_some_and(is_stop);
    stop.then(|| param(params, "From").map(str::to_string))
        .flatten()
}

/// Whether `header` (`X-Hub-Signature-256: sha256=<hex>`) is the HMAC-SHA256
/// of `body` keyed by the Meta app secret.
pub fn whatsapp_signature_ok(app_secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app_secret),
        body,
        &given,
    )
    .is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// WhatsApp error 131050: the user stopped marketing messages from us.
pub const WHATSAPP_STOPPED_MARKETING: i64 = 131050;

/// What a WhatsApp Cloud API webhook carried.
#[derive(Debug, Default, PartialEq)]
pub struct WhatsappNotice {
    /// Status updates of messages we sent (with a valid reference).
    pub statuses: Vec<StatusUpdate>,
    /// Senders (`wa_id`, digits) whose inbound message was a STOP.
    pub stops: Vec<String>,
    /// Statuses dropped: no reference, or one whose signature fails.
    pub unmatched: usize,
}

/// Parses a WhatsApp Cloud API webhook body (`entry[].changes[].value`
/// with `statuses[]` and `messages[]`).
pub fn whatsapp_notice(key: &[u8], body: &Value) -> WhatsappNotice {
    let mut out = WhatsappNotice::default();
    let values = body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["changes"].as_array().into_iter().flatten())
        .map(|c| &c["value"]);
    for v in values {
        for s in v["statuses"].as_array().into_iter().flatten() {
            let Some(r) = s["biz_opaque_callback_data"]
                .as_str()
                .and_then(|t| verify_reference(key, t))
            else {
                out.unmatched += 1;
                continue;
            };
            let code = s["errors"][0]["code"].as_i64();
            out.statuses.push(StatusUpdate {
                customer_id: r.customer_id,
                channel: r.channel,
                send_id: Some(r.send_id),
                provider: "whatsapp_cloud".into(),
                provider_message_id: s["id"].as_str().map(str::to_string),
                status: s["status"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_ascii_lowercase(),
                error: code.map(|c| {
                    format!("{c} {}", s["errors"][0]["title"].as_str().unwrap_or(""))
                        .trim_end()
                        .to_string()
                }),
                withdraws: (code == Some(WHATSAPP_STOPPED_MARKETING))
                    .then(|| "whatsapp_stop".to_string()),
                at: None,
            });
        }
        for m in v["messages"].as_array().into_iter().flatten() {
            let text = m["text"]["body"]
                .as_str()
                .or(m["button"]["text"].as_str())
                .unwrap_or_default();
            if is_stop(text) || text.eq_ignore_ascii_case("stop promotions") {
                if let Some(from) = m["from"].as_str() {
                    out.stops.push(from.to_string());
                }
            }
        }
    }
    out
}

/// Why a callback in Kairos' own shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// No `reference`.
    #[error("field `reference`: missing; send the reference the message carried")]
    NoReference,
    /// A `reference` this server did not sign.
    #[error(
        "field `reference`: not a reference this server signed (send back the one the message carried; servers sharing a data root need the same messaging.link_key)"
    )]
    UnsignedReference,
    /// No `status`.
    #[error(
        "field `status`: missing (delivered, bounced, complained, opted_out, unregistered, failed, ...)"
    )]
    NoStatus,
}

/// A callback in Kairos' own shape, for any provider that can be pointed
/// at a URL (an ESP's bounce webhook through a relay, the webhook channel's
/// receiver): `{"reference", "status", "permanent"?, "reason"?,
/// "provider"?, "provider_message_id"?}`. A permanent `bounced`, a
/// `complained` or an `opted_out` withdraws consent; `unregistered` does
/// too (a dead push token).
pub fn generic_status(key: &[u8], body: &Value) -> Result<StatusUpdate, CallbackError> {
    let token = body["reference"]
        .as_str()
        .ok_or(CallbackError::NoReference)?;
    let r = verify_reference(key, token).ok_or(CallbackError::UnsignedReference)?;
    let status = body["status"]
        .as_str()
        .ok_or(CallbackError::NoStatus)?
        .to_ascii_lowercase();
    let permanent = body["permanent"].as_bool().unwrap_or(false);
    let withdraws = match status.as_str() {
        "bounced" if permanent => Some("hard_bounce"),
        "complained" => Some("complaint"),
        "opted_out" => Some("opted_out"),
        "unregistered" => Some("unregistered"),
        _ => None,
    };
    Ok(StatusUpdate {
        customer_id: r.customer_id,
        channel: r.channel,
        send_id: Some(r.send_id),
        provider: body["provider"].as_str().unwrap_or("webhook").to_string(),
        provider_message_id: body["provider_message_id"].as_str().map(str::to_string),
        status,
        error: body["reason"].as_str().map(str::to_string),
        withdraws: withdraws.map(str::to_string),
        at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn references_round_trip_and_reject_tampering() {
        let t = reference(b"k", "c 1", Channel::Sms, "promo:0:c 1:k");
        let r = verify_reference(b"k", &t).expect("valid");
        assert_eq!(
            (r.customer_id.as_str(), r.channel, r.send_id.as_str()),
            ("c 1", Channel::Sms, "promo:0:c 1:k")
        );
        assert_eq!(verify_reference(b"other key", &t), None);
        // Another customer's payload with this tag.
        let forged = format!(
            "{}.{}",
            sign_fields(b"k", Purpose::Reference, &["c2", "sms", "promo:0:c 1:k"])
                .split_once('.')
                .expect("dot")
                .0,
            t.split_once('.').expect("dot").1
        );
        assert_eq!(verify_reference(b"k", &forged), None);
        // An unsubscribe token is not a reference, even with three fields.
        assert_eq!(
            verify_reference(
                b"k",
                &sign_fields(b"k", Purpose::Unsubscribe, &["c1", "sms", "x"])
            ),
            None
        );
        assert_eq!(
            verify_fields(b"k", Purpose::Unsubscribe, &t, 3),
            None,
            "a reference is not an unsubscribe token"
        );
        // A reference signed before purposes were tagged still verifies.
        let legacy = {
            use base64::Engine as _;
            let payload = "c1\nsms\ns1";
            format!(
                "{}.{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload),
                tag(b"k", payload)
            )
        };
        assert_eq!(
            verify_reference(b"k", &legacy).expect("legacy").send_id,
            "s1"
        );
    }

    #[test]
    fn twilio_signature_matches_the_documented_example() {
        // Twilio's security guide: auth token 12345, this URL and form.
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &p),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        assert!(twilio_signature_ok(
            "12345",
            url,
            &p,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!twilio_signature_ok(
            "12346",
            url,
            &p,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        // The same guide's other vector (the twilio SDKs' fixture).
        let p: Vec<(String, String)> = p
            .into_iter()
            .map(|(k, v)| (k, v.replace("8675310", "8675309")))
            .collect();
        assert_eq!(
            twilio_signature("12345", url, &p),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn twilio_stop_replies_and_status_codes() {
        assert_eq!(
            twilio_stop(&params(&[("From", "+15550101"), ("Body", " stop ")])),
            Some("+15550101".into())
        );
        assert_eq!(
            twilio_stop(&params(&[
                ("From", "+15550101"),
                ("Body", "Please stop sending")
            ])),
            None,
            "only the keyword alone opts out"
        );
        assert_eq!(
            twilio_stop(&params(&[
                ("From", "+1"),
                ("Body", "Arrêt"),
                ("OptOutType", "STOP")
            ])),
            Some("+1".into()),
            "Twilio's own opt-out detection counts"
        );
        let r = Reference {
            customer_id: "c1".into(),
            channel: Channel::Sms,
            send_id: "s".into(),
        };
        let delivered = twilio_status(
            &r,
            &params(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        );
        assert_eq!(
            (delivered.status.as_str(), delivered.withdraws),
            ("delivered", None)
        );
        let blocked = twilio_status(
            &r,
            &params(&[
                ("MessageSid", "SM2"),
                ("MessageStatus", "failed"),
                ("ErrorCode", "21610"),
            ]),
        );
        assert_eq!(blocked.withdraws.as_deref(), Some("sms_stop"));
        assert_eq!(blocked.calls().len(), 2);
        assert_eq!(blocked.calls()[1]["event"], "SMS Opted Out");
    }

    #[test]
    fn whatsapp_webhooks_are_verified_and_parsed() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"app"), body);
        let hex: String = sig.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(whatsapp_signature_ok(
            b"app",
            body,
            &format!("sha256={hex}")
        ));
        assert!(!whatsapp_signature_ok(
            b"app2",
            body,
            &format!("sha256={hex}")
        ));
        assert!(!whatsapp_signature_ok(b"app", body, &hex));

        let good = reference(b"k", "c1", Channel::Whatsapp, "s1");
        let n = whatsapp_notice(
            b"k",
            &json!({"entry": [{"changes": [{"value": {
                "statuses": [
                    {"id": "wamid.1", "status": "delivered", "biz_opaque_callback_data": good},
                    {"id": "wamid.2", "status": "failed", "biz_opaque_callback_data": good,
                     "errors": [{"code": 131050, "title": "User stopped marketing messages"}]},
                    {"id": "wamid.3", "status": "read"},
                ],
                "messages": [
                    {"from": "15550101", "type": "text", "text": {"body": "STOP"}},
                    {"from": "15550102", "type": "text", "text": {"body": "hello"}},
                    {"from": "15550103", "type": "button", "button": {"text": "Stop promotions"}},
                ]
            }}]}]}),
        );
        assert_eq!(n.unmatched, 1);
        assert_eq!(n.statuses.len(), 2);
        assert_eq!(n.statuses[0].withdraws, None);
        assert_eq!(n.statuses[1].withdraws.as_deref(), Some("whatsapp_stop"));
        assert_eq!(
            n.stops,
            vec!["15550101".to_string(), "15550103".to_string()]
        );
    }

    #[test]
    fn generic_callbacks_withdraw_consent_only_when_they_should() {
        let r = reference(b"k", "c1", Channel::Email, "s1");
        let upd = |v: Value| generic_status(b"k", &v);
        let soft = upd(json!({"reference": r, "status": "bounced"})).expect("ok");
        assert_eq!(soft.withdraws, None, "a soft bounce keeps consent");
        let hard = upd(json!({"reference": r, "status": "Bounced", "permanent": true, "reason": "5.1.1 no such user"}))
            .expect("ok");
        assert_eq!(hard.withdraws.as_deref(), Some("hard_bounce"));
        assert_eq!(hard.calls()[1]["event"], "Email Unsubscribed");
        assert_eq!(hard.calls()[1]["userId"], "c1");
        assert_eq!(
            upd(json!({"status": "delivered"})).unwrap_err(),
            CallbackError::NoReference
        );
        assert_eq!(
            upd(json!({"reference": reference(b"x", "c1", Channel::Email, "s1"), "status": "delivered"}))
                .unwrap_err(),
            CallbackError::UnsignedReference
        );
        assert_eq!(
            upd(json!({"reference": r})).unwrap_err(),
            CallbackError::NoStatus
        );
    }
}
