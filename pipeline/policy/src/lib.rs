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
