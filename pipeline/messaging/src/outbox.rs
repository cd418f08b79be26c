//! The outbox: the zero-set-up channel. Every message becomes one readable
//! file under `outbox/<date>/` in the data root: an RFC 5322 `.eml` for
//! email (open it in any mail client), `.json` for the others. Writing the
//! same send again rewrites the same file, so a retry never duplicates.

use bytes::Bytes;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use serde_json::json;

use kairos_policy::Channel;
use kairos_storage::DataRoot;

use crate::channel::{Adapter, Failure, Outgoing, Receipt};

/// Where the outbox writes its messages, under the data root.
pub const OUTBOX_DIR: &str = "outbox";

/// Writes messages as files.
pub struct Outbox {
    root: DataRoot,
    from: Mailbox,
}

impl Outbox {
    /// An outbox in `root`, email sent as `from`.
    pub fn new(root: DataRoot, from: &str) -> Result<Outbox, InvalidFrom> {
        let mailbox = from.parse().map_err(|reason| InvalidFrom {
            from: from.to_string(),
            reason,
        })?;
        Ok(Outbox {
            root,
            from: mailbox,
        })
    }
}

/// `messaging.from` is not a mailbox.
#[derive(Debug, thiserror::Error)]
#[error(
    "messaging.from = {from:?} is not a mailbox (write `Shop <shop@example.com>` or `shop@example.com`): {reason}"
)]
pub struct InvalidFrom {
    /// What was configured.
    pub from: String,
    /// Why lettre refused it.
    pub reason: lettre::address::AddressError,
}

/// A file name for a send id: readable, unique, safe in any store.
pub fn file_stem(send_id: &str) -> String {
    let readable: String = send_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    // Distinct ids can read alike once sanitised: a hash keeps them apart.
    let h = fnv1a(send_id);
    format!("{readable}-{h:016x}")
}

fn fnv1a(s: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, enough to separate names.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The RFC 5322 message of an email send.
pub fn email(from: &Mailbox, m: &Outgoing) -> Result<Vec<u8>, Failure> {
    let permanent = |reason: String| Failure::Permanent { reason };
    let to: Mailbox =
        m.to.parse()
            .map_err(|e| permanent(format!("invalid email address {:?}: {e}", m.to)))?;
    let subject = m.rendered.header("Subject").unwrap_or_default().to_string();
    let mut b = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!(
            "<{}@kairos>",
            file_stem(&m.send_id).to_ascii_lowercase()
        )))
        .header(ContentType::TEXT_PLAIN)
        // ESPs echo custom headers in their bounce and complaint webhooks:
        // this one lets `/callbacks/email` name the message.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Kairos-Reference"),
            m.reference.clone(),
        ));
    if let Some(url) = &m.unsubscribe_url {
        b = b
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_string(),
            ));
    }
    let mut body = m.rendered.body.clone();
    if let Some(url) = &m.unsubscribe_url {
        body.push_str(&format!("\n--\nUnsubscribe: {url}\n"));
    }
    b.body(body)
        .map(|msg| msg.formatted())
        .map_err(|e| permanent(format!("cannot build the email: {e}")))
}

#[async_trait::async_trait]
impl Adapter for Outbox {
    fn provider(&self) -> &str {
        "outbox"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let day = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(m.send_at)
            .unwrap_or_default()
            .format("%Y-%m-%d");
        let (ext, bytes) = match m.channel {
            Channel::Email => ("eml", email(&self.from, m)?),
            _ => {
                let doc = json!({
                    "send_id": m.send_id,
                    "channel": m.channel.as_str(),
                    "to": m.to,
                    "rule": m.rule,
                    "step": m.step,
                    "customer_id": m.customer_id,
                    "headers": m.rendered.headers,
                    "body": m.rendered.body,
                    "unsubscribe_url": m.unsubscribe_url,
                });
                let mut v = serde_json::to_vec_pretty(&doc).map_err(|e| Failure::Permanent {
                    reason: format!("the message does not serialise: {e}"),
                })?;
                v.push(b'\n');
                ("json", v)
            }
        };
        let path = format!("{OUTBOX_DIR}/{day}/{}.{ext}", file_stem(&m.send_id));
        self.root
            .store
            .put(&ObjectPath::from(path.as_str()), Bytes::from(bytes).into())
            .await
            .map_err(|e| Failure::Retryable {
                reason: format!("writing {path}: {e}"),
                retry_after: None,
            })?;
        Ok(Receipt {
            provider: "outbox".into(),
            provider_message_id: path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Rendered;

    fn outgoing(channel: Channel, to: &str) -> Outgoing {
        let mut rendered = Rendered {
            body: "Your cart misses you.\n".into(),
            ..Rendered::default()
        };
        rendered
            .headers
            .insert("Subject".into(), "Ana, your cart — 2 items".into());
        Outgoing {
            send_id: "cart_abandonment:0:c1:cart-2026-09-01T10:00:00Z".into(),
            rule: "cart_abandonment".into(),
            step: 0,
            customer_id: "c1".into(),
            channel,
            to: to.into(),
            rendered,
            unsubscribe_url: Some("http://127.0.0.1:8080/u/tok".into()),
            reference: "ref".into(),
            status_url: "http://127.0.0.1:8080/callbacks/email/ref".into(),
            send_at: 1_782_864_000_000_000,
        }
    }

    #[tokio::test]
    async fn email_is_an_rfc5322_file_with_unsubscribe_headers_and_rewrites_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let o = Outbox::new(root, "Shop <shop@example.com>").expect("outbox");
        let m = outgoing(Channel::Email, "ana@example.com");
        let r = o.send(&m).await.expect("sent");
        let again = o.send(&m).await.expect("sent");
        assert_eq!(r, again, "a retry writes the same file");
        let text = std::fs::read_to_string(dir.path().join(&r.provider_message_id)).expect("eml");
        for needle in [
            "From: Shop <shop@example.com>",
            "To: ana@example.com",
            "List-Unsubscribe: <http://127.0.0.1:8080/u/tok>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Message-ID: <cart_abandonment_0_c1_cart-2026-09-01t10_00_00z-",
            "Subject: Ana, your cart =?utf-8?",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("outbox/2026-07-01"))
                .expect("dir")
                .count(),
            1
        );
        let bad = o.send(&outgoing(Channel::Email, "not an address")).await;
        assert!(matches!(bad, Err(Failure::Permanent { .. })), "{bad:?}");
    }

    #[tokio::test]
    async fn other_channels_are_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let o = Outbox::new(root, "shop@example.com").expect("outbox");
        let r = o
            .send(&outgoing(Channel::Sms, "+15550100"))
            .await
            .expect("sent");
        assert!(r.provider_message_id.ends_with(".json"));
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(&r.provider_message_id)).expect("read"),
        )
        .expect("json");
        assert_eq!(v["to"], "+15550100");
        assert_eq!(v["body"], "Your cart misses you.\n");
    }
}
