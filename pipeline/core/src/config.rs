//! Configuration: one TOML file into typed structs.
//!
//! Layers, later wins: the embedded `default.toml`, the user's file
//! (`--config PATH`, else `kairos.toml` when present), then environment
//! variables `KAIROS__SECTION__KEY`. Unknown keys are errors that name the key,
//! so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use crate::secret::Secret;

/// The defaults, embedded so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Name of the config file picked up from the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "kairos.toml";

/// Everything Kairos reads from configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the tables live.
    pub storage: StorageConfig,
    /// HTTP server.
    pub server: ServerConfig,
    /// HTTP intake.
    pub ingest: IngestConfig,
    /// Staging to Parquet publishing.
    pub publish: PublishConfig,
    /// messageId de-duplication.
    pub dedupe: DedupeConfig,
    /// Event naming.
    pub events: EventsConfig,
    /// `[rules]`.
    pub rules: RulesConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[experiments]`.
    pub experiments: ExperimentsConfig,
    /// `[messaging]`.
    pub messaging: MessagingConfig,
    /// `[report]`: the experiment report API.
    pub report: ReportConfig,
    /// `[retention]`: how long each table keeps its rows.
    pub retention: RetentionConfig,
}

/// `[retention]`: the longest each kind of data is kept (`"400d"`); empty:
/// forever. Enforced by `kairos serve` every hour (docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events (opt-out events are kept: they are the consent record).
    pub events: String,
    /// Trait change history.
    pub profile_changes: String,
    /// Identity links (older links stop joining anonymous history).
    pub identities: String,
    /// Rendered messages in `outbox/`.
    pub outbox: String,
}

/// `[report]`: the experiment report API (`/api/...`) and `kairos report`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Bearer token for reading reports and `/metrics`; empty: the
    /// generated one in `_kairos/access.json` (or, with
    /// `server.insecure_local`, loopback clients only). Ingest write keys
    /// never grant read access.
    pub token: Secret,
    /// Default attribution window after assignment, e.g. "7d".
    pub window: String,
    /// Default conversion event type (canonical `event_type`).
    pub conversion_event: String,
    /// Reports (API and pages) computed at once; more wait in a queue.
    /// Default 2; 0 counts as 1.
    pub max_concurrent: usize,
    /// Longest a report waits in that queue before the answer is 503 with
    /// `Retry-After`, e.g. "10s" (default); "0s": never wait.
    pub queue_timeout: String,
    /// How often `serve` brings the maintained outcomes up to date, e.g.
    /// "30s" (default); "0s": only when a report asks.
    pub outcomes_refresh: String,
    /// A report refreshes the outcomes first unless they were refreshed
    /// less than this long ago; "0s" (default): always, so it is exact.
    pub outcomes_max_age: String,
}

/// `[messaging]`: templates and delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// Deliver at all (false: decide and record sends only).
    pub enabled: bool,
    /// Folder of message templates.
    pub templates: std::path::PathBuf,
    /// Sender of email.
    pub from: String,
    /// Base URL customers reach this server at (unsubscribe links).
    pub public_url: String,
    /// Key signing unsubscribe links; empty: one is made and kept in the
    /// data root (`_kairos/link-key`).
    pub link_key: Secret,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// Longest SMS, in segments.
    pub max_sms_segments: usize,
    /// Messages per second per channel (absent: unlimited).
    pub rate_per_second: std::collections::BTreeMap<String, f64>,
    /// Per channel, what a crash leaves in doubt becomes: `retry`
    /// (at-least-once) or `drop` (at-most-once).
    pub in_doubt: std::collections::BTreeMap<String, String>,
    /// Per channel (`email`, `sms`, `whatsapp`, `push`, `webhook`): the
    /// provider and its credentials; absent: the outbox.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, ChannelConfig>,
}

/// `[messaging.channels.NAME]`: one channel's provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// `outbox` (default), `smtp` (email), `webhook`, `twilio` (SMS), `whatsapp_cloud`, `fcm` (push).
    pub provider: String,
    /// Provider API base URL (defaults to the provider's public one).
    pub base_url: String,
    /// Webhook: where to POST.
    pub url: String,
    /// Webhook: signing key.
    pub secret: Secret,
    /// Twilio: account SID.
    pub account_sid: String,
    /// Twilio: auth token.
    pub auth_token: Secret,
    /// Twilio: sender number.
    pub from: String,
    /// WhatsApp Cloud API version, e.g. `v21.0`.
    pub api_version: String,
    /// WhatsApp: the sending phone number id.
    pub phone_number_id: String,
    /// WhatsApp / FCM: bearer access token.
    pub access_token: Secret,
    /// FCM: Firebase project id.
    pub project_id: String,
    /// FCM: path of the service-account JSON file (Firebase console →
    /// Service accounts); tokens are fetched and renewed from it. Instead
    /// of `access_token`.
    pub service_account: String,
    /// SMTP: server host.
    pub host: String,
    /// SMTP: port (default 587 with `starttls`, 465 with `tls`, 25 with `none`).
    pub port: u16,
    /// SMTP: `starttls` (default), `tls` (implicit) or `none` (loopback only).
    pub tls: String,
    /// SMTP: user name (none: no authentication).
    pub username: String,
    /// SMTP: password.
    pub password: Secret,
    /// Request timeout, ms (default 10,000).
    pub timeout_ms: u64,
    /// Key checking `X-Kairos-Signature` on this channel's generic status
    /// callbacks (`POST /callbacks/NAME`); empty: the webhook `secret`.
    pub callback_secret: Secret,
    /// WhatsApp: the Meta app secret checking `X-Hub-Signature-256`.
    pub app_secret: Secret,
    /// WhatsApp: the verify token of the webhook subscription handshake.
    pub verify_token: Secret,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Data root: a local directory or `s3://bucket/prefix`. Default `./kairos-data`.
    pub data: String,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Bind address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Host names the server answers to besides IP addresses and
    /// `localhost` (the `Host` header is checked: DNS rebinding). Default empty.
    pub hostnames: Vec<String>,
    /// Loopback clients need no key or token when none is configured.
    /// Default false: the first start generates them (`docs/security.md`).
    pub insecure_local: bool,
    /// Open connections at most; further ones wait to be accepted. Default 1024.
    pub max_connections: usize,
    /// A request's headers must arrive within this. Default `10s`.
    pub header_timeout: String,
    /// A request's body must arrive within this. Default `60s`.
    pub body_timeout: String,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Server write keys (back ends, warehouses): may change consent and
    /// contact addresses. Default empty (see `server.insecure_local`).
    pub write_keys: Vec<Secret>,
    /// Client write keys (browsers, apps: public by nature): may not opt
    /// in to consent nor change an existing customer's protected traits.
    pub client_keys: Vec<Secret>,
    /// Origins (`https://shop.example`) whose pages may send with a client
    /// key; CORS is answered for these only. Default empty.
    pub browser_origins: Vec<String>,
    /// Traits only server keys may change on an existing customer (client
    /// keys set them for new customers). Default `email`, `phone`.
    pub protected_traits: Vec<String>,
    /// Calls in one batch at most. Default 10000.
    pub max_batch_items: usize,
    /// Lines in one `/v1/import` body at most. Default 100000.
    pub max_import_lines: usize,
    /// Largest request body after decompression, bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Largest single event, bytes. Default 32 KiB.
    pub max_event_bytes: usize,
    /// Group commit flushes at this many queued bytes. Default 8 MiB.
    pub group_commit_max_bytes: usize,
    /// Group commit flushes when the oldest request waited this long, ms. Default 2.
    pub group_commit_max_delay_ms: u64,
    /// Above this many staged-but-unpublished bytes, answer 429. Default 2 GiB.
    pub max_staged_bytes: u64,
    /// Timestamps further in the future than this are rejected, hours. Default 24.
    pub max_future_hours: u32,
}

/// `[publish]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Publish staged events to Parquet every this many seconds. Default 60.
    pub interval_secs: u64,
    /// Target rows per Parquet row group. Default 131072.
    pub row_group_rows: usize,
    /// Merge the small files of closed hours this often, seconds; 0 = never.
    /// Default 3600. Local data roots only.
    pub compact_every_secs: u64,
}

/// `[dedupe]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Window in hours of event time inside which a repeated messageId is dropped. Default 24.
    pub window_hours: u32,
}

/// `[events]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Event name as sent -> canonical type; merged over the built-in Segment spec mapping.
    pub mapping: BTreeMap<String, String>,
}

/// `[rules]`: the micro-batch loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Folder of rule files.
    pub dir: std::path::PathBuf,
    /// Micro-batch interval, milliseconds.
    pub interval_ms: u64,
    /// How far back a sweep reaches after downtime, e.g. "1h".
    pub catch_up: String,
    /// How long a firing's (rule, customer, dedupe_key) blocks the same
    /// firing, e.g. "400d"; older firings are forgotten.
    pub dedupe_horizon: String,
    /// `wall` (the machine clock) or `events` (the latest event time seen:
    /// for tests and demos that post old events).
    pub clock: String,
    /// Off: serve only ingests and publishes.
    pub enabled: bool,
}

/// `[policy]`: what every marketing message must pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Frequency caps, all applied: `MAX [CHANNEL | tag:TAG] per WINDOW`.
    pub caps: Vec<String>,
    /// Local quiet hours `HH:MM-HH:MM`; empty for none.
    pub quiet_hours: String,
    /// IANA zone for customers whose profile has no `timezone`.
    pub default_timezone: String,
    /// Duration within which a higher-priority rule's message wins
    /// (`0s`: the same micro-batch only).
    pub priority_window: String,
}

/// `[experiments]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentsConfig {
    /// Percent of customers held out of all marketing messages.
    pub global_control_percent: f64,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} not found; pass an existing file to --config or omit it")]
    Missing(String),
    /// A key is unknown, of the wrong type, or the TOML does not parse.
    #[error("invalid configuration (fix or remove the key named here)")]
    Invalid(#[source] Box<figment::Error>),
}

impl Config {
    /// Loads defaults, then `path` (or `./kairos.toml` when `path` is `None`
    /// and the file exists), then `KAIROS__*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.display().to_string())),
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        Self::from_figment(figment.merge(Env::prefixed("KAIROS__").split("__")))
    }

    /// Defaults plus a TOML string, no file or environment: for tests.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as the binary prints it: the error and its source.
    fn chain(e: &ConfigError) -> String {
        let source = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        format!("{e}: {source}")
    }

    #[test]
    fn defaults_load_without_any_file() {
        let c = Config::from_toml("").expect("defaults parse");
        assert_eq!(c.storage.data, "./kairos-data");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.publish.interval_secs, 60);
        assert!(c.ingest.write_keys.is_empty());
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = Config::from_toml("[ingest]\nmax_body_byts = 10\n").unwrap_err();
        let msg = chain(&err);
        assert!(msg.contains("max_body_byts"), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = Config::from_toml("[ingset]\nx = 1\n").unwrap_err();
        assert!(chain(&err).contains("ingset"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::from_toml("[publish]\ninterval_secs = \"soon\"\n").unwrap_err();
        assert!(chain(&err).contains("interval_secs"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\n").expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("KAIROS__SERVER__LISTEN", "127.0.0.1:9100");
            jail.set_env("KAIROS__INGEST__WRITE_KEYS", "[\"k1\"]");
            let c = Config::load(Some(&file)).expect("load");
            assert_eq!(c.server.listen.port(), 9100);
            assert_eq!(c.ingest.write_keys, vec![Secret("k1".into())]);
            Ok(())
        });
    }

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
