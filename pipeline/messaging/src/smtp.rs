//! Email over SMTP (lettre): STARTTLS, implicit TLS or plain, optional
//! authentication. The message is the same RFC 5322 text the outbox writes
//! (stable `Message-ID`, `List-Unsubscribe`, `List-Unsubscribe-Post`).
//! SMTP 5xx replies are permanent; 4xx, timeouts and connection errors are
//! retried.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::channel::{Adapter, Failure, Outgoing, Receipt};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// STARTTLS upgrade (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// None: for a relay on loopback.
    None,
}

/// An SMTP server to send through.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Smtp {
    /// A connection pool to `host:port`.
    pub fn new(
        host: &str,
        port: u16,
        tls: Tls,
        credentials: Option<(String, String)>,
        from: &str,
        timeout: Duration,
    ) -> Result<Smtp, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("messaging.from = {from:?} is not a mailbox: {e}"))?;
        let mut b = match tls {
            Tls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            Tls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            Tls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host,
            )),
        }
        .map_err(|e| format!("SMTP host {host:?}: {e}"))?
        .port(port)
        .timeout(Some(timeout));
        if let Some((user, pass)) = credentials {
            b = b.credentials(Credentials::new(user, pass));
        }
        Ok(Smtp {
            transport: b.build(),
            from,
        })
    }
}

#[async_trait::async_trait]
impl Adapter for Smtp {
    fn provider(&self) -> &str {
        "smtp"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let bytes = crate::outbox::email(&self.from, m)?;
        let to: Mailbox = m.to.parse().map_err(|e| Failure::Permanent {
            reason: format!("invalid email address {:?}: {e}", m.to),
        })?;
        let envelope =
            Envelope::new(Some(self.from.email.clone()), vec![to.email]).map_err(|e| {
                Failure::Permanent {
                    reason: format!("envelope: {e}"),
                }
            })?;
        match self.transport.send_raw(&envelope, &bytes).await {
            Ok(resp) => Ok(Receipt {
                provider: "smtp".into(),
                provider_message_id: format!(
                    "<{}@kairos> {}",
                    crate::outbox::file_stem(&m.send_id).to_ascii_lowercase(),
                    resp.message().collect::<Vec<_>>().join(" ")
                ),
            }),
            // 5.1.1 (no such mailbox) and 5.1.10 (null MX) are hard
            // bounces at RCPT: the address is dead.
            Err(e) if e.is_permanent() && hard_bounce(&e.to_string()) => {
                Err(Failure::Unreachable {
                    reason: format!("SMTP: {e}"),
                })
            }
            Err(e) if e.is_permanent() => Err(Failure::Permanent {
                reason: format!("SMTP: {e}"),
            }),
            Err(e) => Err(Failure::Retryable {
                reason: format!("SMTP: {e}"),
                retry_after: None,
            }),
        }
    }
}

/// Whether an SMTP error's text carries a hard-bounce enhanced status code
/// (RFC 3463: 5.1.1 bad mailbox, 5.1.10 null MX).
fn hard_bounce(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|w| w == "5.1.1" || w == "5.1.10")
}

#[cfg(test)]
mod tests {
    #[test]
    fn hard_bounces_are_told_by_their_enhanced_code() {
        assert!(super::hard_bounce(
            "permanent error (550): 5.1.1 <x@y.example>: Recipient address rejected"
        ));
        assert!(!super::hard_bounce(
            "permanent error (552): 5.2.2 mailbox full"
        ));
        assert!(!super::hard_bounce("permanent error (550): 5.1.15"));
    }
}
