//! Kairos policy chain: firing a rule is not sending a message.
//!
//! Each firing, after its experiment arm is assigned, passes dedupe and
//! re-eligibility, consent, priority, frequency caps and quiet hours, in
//! that order; every decision is recorded with its reason. This crate holds
//! the decisions as pure functions of the firing, the customer and their
//! send history, so they are the same live, in replay and in tests.

pub mod caps;
pub mod chain;
pub mod consent;
pub mod priority;
pub mod quiet;
pub mod stage;
pub mod tables;

pub use caps::{Cap, CapScope, CapWindow, Capped, SentMessage};
pub use chain::{Customer, Message, Outcome, PastMessage, Policy, decide};
pub use consent::{Channel, Consent, NoChannel};
pub use quiet::QuietHours;

/// A policy setting (`policy.caps`, `policy.quiet_hours`) that does not
/// parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not the shape of a cap.
    #[error(
        "cap {0:?}: write `MAX [CHANNEL | tag:TAG] per WINDOW`, e.g. `2 per 24h`, `1 sms per day`"
    )]
    CapShape(String),
    /// A scope that is neither a channel nor a tag.
    #[error(
        "cap {cap:?}: {word:?} is not a channel (email, sms, whatsapp, push, webhook) or tag:NAME"
    )]
    CapScope {
        /// The cap as written.
        cap: String,
        /// The word in the scope's place.
        word: String,
    },
    /// A cap of 0.
    #[error("cap {0:?}: a cap of 0 blocks every message; remove the rule's channel instead")]
    CapZero(String),
    /// Quiet hours not written as a range.
    #[error("quiet hours {0:?}: write HH:MM-HH:MM, e.g. 21:00-08:00")]
    QuietShape(String),
    /// One end of the quiet hours is not a time of day.
    #[error("quiet hours: {0:?} is not a time of day (HH:MM)")]
    QuietTime(String),
}
