//! Messaging: templates rendered from the profile, computed traits and the
//! firing's columns; channel adapters (the outbox first); delivery with
//! retries, rate limits and an intent log; `deliveries/`.

pub mod callbacks;
pub mod channel;
pub mod delivery;
pub mod http;
pub mod limits;
pub mod oauth;
pub mod outbox;
pub mod smtp;
pub mod template;

use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use serde_json::{Map, Value};

pub use channel::{Adapter, Failure, Outgoing, Receipt};
pub use delivery::{Dispatcher, Messaging, Settings};
pub use template::Templates;

/// A customer's computed traits (the rules' `customers` table row) as
/// JSON, for templates: timestamps as RFC 3339 (empty for a customer the
/// state does not know).
pub fn computed_traits(
    state: &kairos_rules::state::State,
    customer_id: &str,
) -> Result<Map<String, Value>, String> {
    let ids = std::iter::once(customer_id.to_string()).collect();
    let batch = state
        .customers_table(Some(&ids))
        .map_err(|e| format!("building the computed traits of {customer_id}: {e}"))?;
    let mut out = Map::new();
    if batch.num_rows() == 0 {
        return Ok(out);
    }
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let any = col.as_any();
        let v = if col.is_null(0) {
            Value::Null
        } else if let Some(a) = any.downcast_ref::<StringArray>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<Int64Array>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<Float64Array>() {
            Value::from(a.value(0))
        } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
            chrono::DateTime::<chrono::Utc>::from_timestamp_micros(a.value(0))
                .map_or(Value::Null, |t| Value::from(t.to_rfc3339()))
        } else {
            Value::Null
        };
        if field.name() != "customer_id" {
            out.insert(field.name().clone(), v);
        }
    }
    Ok(out)
}

/// A channel's provider request timeout: `timeout_ms`, 10 s when unset.
pub fn request_timeout(c: &kairos_core::config::ChannelConfig) -> std::time::Duration {
    std::time::Duration::from_millis(if c.timeout_ms == 0 {
        10_000
    } else {
        c.timeout_ms
    })
}

/// A `[messaging.channels.NAME]` setting no adapter can be made from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ChannelSettingError {
    /// The setting, e.g. `messaging.channels.email.tls`.
    pub setting: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// The adapter for `channel` from its `[messaging.channels.NAME]` settings
/// (none: the outbox). Errors name the missing or wrong setting.
pub fn adapter(
    channel: kairos_policy::Channel,
    c: Option<&kairos_core::config::ChannelConfig>,
    outbox: &std::sync::Arc<dyn Adapter>,
    from: &str,
) -> Result<std::sync::Arc<dyn Adapter>, ChannelSettingError> {
    use kairos_policy::Channel;
    use std::sync::Arc;
    let Some(c) = c.filter(|c| !c.provider.is_empty() && c.provider != "outbox") else {
        return Ok(outbox.clone());
    };
    let name = channel.as_str();
    let bad = |key: &str, reason: String| ChannelSettingError {
        setting: format!("messaging.channels.{name}.{key}"),
        reason,
    };
    let need = |v: &str, key: &str| -> Result<String, ChannelSettingError> {
        if v.is_empty() {
            Err(bad(key, format!("required for provider {:?}", c.provider)))
        } else {
            Ok(v.to_string())
        }
    };
    let base = |default: &str| {
        if c.base_url.is_empty() {
            default.to_string()
        } else {
            c.base_url.clone()
        }
    };
    let timeout = request_timeout(c);
    let client = http::client(timeout).map_err(|e| {
        bad(
            "provider",
            format!("cannot build the HTTP client (check the system's TLS roots): {e}"),
        )
    })?;
    let a: Arc<dyn Adapter> = match (channel, c.provider.as_str()) {
        (Channel::Email, "smtp") => {
            let tls = match c.tls.as_str() {
                "" | "starttls" => smtp::Tls::StartTls,
                "tls" => smtp::Tls::Implicit,
                "none" => smtp::Tls::None,
                other => {
                    return Err(bad(
                        "tls",
                        format!("{other:?}: use \"starttls\", \"tls\" or \"none\""),
                    ));
                }
            };
            let port = match (c.port, tls) {
                (0, smtp::Tls::StartTls) => 587,
                (0, smtp::Tls::Implicit) => 465,
                (0, smtp::Tls::None) => 25,
                (p, _) => p,
            };
            let credentials =
                (!c.username.is_empty()).then(|| (c.username.clone(), c.password.0.clone()));
            Arc::new(
                smtp::Smtp::new(
                    &need(&c.host, "host")?,
                    port,
                    tls,
                    credentials,
                    from,
                    timeout,
                )
                .map_err(|reason| bad("host", reason))?,
            )
        }
        (Channel::Webhook, "webhook") => Arc::new(http::Webhook {
            url: need(&c.url, "url")?,
            secret: need(&c.secret.0, "secret")?.into_bytes(),
            client,
        }),
        (Channel::Sms, "twilio") => Arc::new(http::TwilioSms {
            base_url: base("https://api.twilio.com"),
            account_sid: need(&c.account_sid, "account_sid")?,
            auth_token: need(&c.auth_token.0, "auth_token")?,
            from: need(&c.from, "from")?,
            client,
        }),
        (Channel::Whatsapp, "whatsapp_cloud") => Arc::new(http::WhatsappCloud {
            base_url: base("https://graph.facebook.com"),
            api_version: if c.api_version.is_empty() {
                "v21.0".into()
            } else {
                c.api_version.clone()
            },
            phone_number_id: need(&c.phone_number_id, "phone_number_id")?,
            access_token: need(&c.access_token.0, "access_token")?,
            client,
        }),
        (Channel::Push, "fcm") => Arc::new(http::FcmPush {
            base_url: base("https://fcm.googleapis.com"),
            project_id: need(&c.project_id, "project_id")?,
            auth: if c.service_account.is_empty() {
                http::Bearer::Static(need(
                    &c.access_token.0,
                    "access_token (or service_account)",
                )?)
            } else {
                let text = std::fs::read_to_string(&c.service_account).map_err(|e| {
                    bad(
                        "service_account",
                        format!("reading {}: {e}", c.service_account),
                    )
                })?;
                let account = oauth::ServiceAccount::from_json(&text)
                    .map_err(|e| bad("service_account", format!("{}: {e}", c.service_account)))?;
                http::Bearer::ServiceAccount(oauth::TokenSource::new(account, oauth::FCM_SCOPE))
            },
            client,
        }),
        (_, other) => {
            return Err(bad(
                "provider",
                format!(
                    "{other:?}: for {name} use \"outbox\"{}",
                    match channel {
                        Channel::Webhook => " or \"webhook\"",
                        Channel::Sms => " or \"twilio\"",
                        Channel::Whatsapp => " or \"whatsapp_cloud\"",
                        Channel::Push => " or \"fcm\"",
                        Channel::Email => " or \"smtp\"",
                    }
                ),
            ));
        }
    };
    Ok(a)
}

/// Names of the computed traits templates may use as `customer.*`.
pub fn computed_trait_names() -> std::collections::BTreeSet<String> {
    kairos_rules::state::CUSTOMERS_SCHEMA
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != "customer_id")
        .collect()
}

/// Checks the templates every rule sends: each exists for its channel and
/// uses only the rule's output columns, `profile.*`, `customer.*` (computed
/// traits) and `message.*`. A `preferred`-channel message needs a template
/// for every channel it may take (email, SMS, WhatsApp, push).
pub async fn check_rules(
    rules: &[kairos_rules::Rule],
    templates: &Templates,
) -> Vec<template::TemplateError> {
    use kairos_rules::rule::ChannelChoice;
    let computed = computed_trait_names();
    let ctx = match kairos_rules::check::planning_session() {
        Ok(ctx) => ctx,
        Err(e) => {
            // Without a planner no template can be checked: say so, never
            // "no errors".
            return vec![template::TemplateError {
                file: templates.dir().to_path_buf(),
                message: format!("cannot start the SQL planner to check the templates: {e}"),
            }];
        }
    };
    let mut errors = Vec::new();
    for rule in rules {
        let Ok(columns) = kairos_rules::check::plan(&ctx, rule).await else {
            continue; // reported by the rules check
        };
        let columns: std::collections::BTreeSet<String> = columns.into_iter().collect();
        let mut names: Vec<(String, ChannelChoice)> = vec![(rule.template.clone(), rule.channel)];
        names.extend(
            rule.variants
                .iter()
                .filter_map(|v| Some((v.template.clone()?, rule.channel))),
        );
        names.extend(rule.steps.iter().map(|s| (s.template.clone(), s.channel)));
        for (name, channel) in names {
            for ch in channel.candidates() {
                errors.extend(templates.check(&name, ch.as_str(), &columns, &computed));
            }
        }
    }
    errors
}
