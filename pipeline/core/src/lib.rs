//! Kairos core: the types every stage shares.
//!
//! - [`config`]: the TOML configuration with env overrides.
//! - [`event`]: the validated event model that ingest stages and storage publishes.
//! - [`secret`]: secrets that never print, compared in constant time.
//! - [`time`]: timestamp helpers (µs since the epoch, RFC 3339).

pub mod channel;
pub mod config;
pub mod event;
pub mod secret;
pub mod time;

pub use channel::Channel;
pub use config::Config;
