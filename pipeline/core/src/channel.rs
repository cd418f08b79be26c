//! The delivery channels: the one list every stage names them from.

use serde::{Deserialize, Serialize};

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Email.
    Email,
    /// SMS.
    Sms,
    /// WhatsApp.
    Whatsapp,
    /// Mobile push.
    Push,
    /// Signed HTTP POST to an integration (no personal address needed).
    Webhook,
}

impl Channel {
    /// `email`, `sms`, `whatsapp`, `push`, `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
        }
    }

    /// Every channel.
    pub const ALL: [Channel; 5] = [
        Channel::Email,
        Channel::Sms,
        Channel::Whatsapp,
        Channel::Push,
        Channel::Webhook,
    ];

    /// What `channel = preferred` may take, in the order it tries them
    /// after the customer's own preference.
    pub const PREFERRED: [Channel; 4] = [
        Channel::Email,
        Channel::Push,
        Channel::Sms,
        Channel::Whatsapp,
    ];

    /// Parses a channel name.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}
