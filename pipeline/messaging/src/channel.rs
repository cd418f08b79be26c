//! What a channel adapter is given and what it answers.

use std::time::Duration;

use kairos_policy::Channel;
use serde::Serialize;

use crate::template::Rendered;

/// A message ready to go: rendered, addressed.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    /// `rule:step:customer:key`, stable: the idempotency key.
    pub send_id: String,
    /// Rule.
    pub rule: String,
    /// Sequence step.
    pub step: u32,
    /// Canonical customer id.
    pub customer_id: String,
    /// Channel.
    pub channel: Channel,
    /// Address: email, phone number, push token (empty for webhooks).
    pub to: String,
    /// Rendered headers and body.
    #[serde(skip)]
    pub rendered: Rendered,
    /// The link that unsubscribes the customer from this channel.
    pub unsubscribe_url: Option<String>,
    /// Signed (customer, channel, send id), handed to the provider so its
    /// callbacks name the message (see [`crate::callbacks`]).
    pub reference: String,
    /// Where the provider posts this message's status (`/callbacks/...`).
    pub status_url: String,
    /// When the policy said it may go, µs.
    pub send_at: i64,
}

/// A provider's acceptance.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Provider name, e.g. `outbox`, `smtp`.
    pub provider: String,
    /// The provider's id for the message (or where it was written).
    pub provider_message_id: String,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// Worth retrying (timeout, 5xx, 429), after `retry_after` if given.
    #[error("retryable: {reason}")]
    Retryable {
        /// What the provider said.
        reason: String,
        /// The provider's Retry-After.
        retry_after: Option<Duration>,
    },
    /// Never retried (invalid address, other 4xx, a message over a limit).
    #[error("permanent: {reason}")]
    Permanent {
        /// What the provider said.
        reason: String,
    },
    /// The request may have reached the provider and its answer was lost
    /// (a timeout or a connection dropped after sending): retried or
    /// dropped per `messaging.in_doubt`, as after a crash.
    #[error("in doubt: {reason}")]
    InDoubt {
        /// What happened.
        reason: String,
    },
    /// Never retried, and the customer cannot be reached on this channel
    /// any more (dead push token, hard bounce, recipient blocked us): their
    /// consent for it is withdrawn.
    #[error("unreachable: {reason}")]
    Unreachable {
        /// What the provider said.
        reason: String,
    },
}

/// A delivery channel: one provider's API.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    /// Provider name for `deliveries/`.
    fn provider(&self) -> &str;
    /// Sends one message.
    async fn send(&self, message: &Outgoing) -> Result<Receipt, Failure>;
}
