//! Kairos rules: one SQL trigger per file in `sql/`.
//!
//! A rule file is a comment header followed by one `SELECT`:
//!
//! ```sql
//! -- name: cart_abandonment
//! -- description: Cart added, no purchase within the delay; once per cart.
//! -- channel: email
//! -- template: cart_abandonment
//! -- priority: 50
//! -- cooldown: 24h
//! -- lookback: 7d
//! -- cadence: 15m
//! -- cancel_on: purchase
//! -- split: holdout=10 scheduled=20 triggered=70
//! -- scheduled_at: 10:00
//! -- param delay: 1h
//! SELECT customer_id, cart_id AS dedupe_key FROM open_carts
//! WHERE added_at < ${now} - ${delay}
//! ```
//!
//! [`rule::parse`] reads and checks the header and the `${param}` uses;
//! every problem is reported with its `file:line`.

pub mod check;
pub mod engine;
pub mod firings;
pub mod metrics;
pub mod plans;
pub mod rule;
pub mod runner;
pub mod state;

pub use check::check_dir;
pub use engine::{BatchEvent, Engine, EngineOptions, Firing, TickReport};
pub use rule::{Rule, RuleError, load_dir, parse};
