//! Consent: which channels may carry a message to a customer.
//!
//! A channel is usable when the customer has an address for it (email,
//! phone, push token) and has not opted out of it. Consent comes from the
//! profile (`consent.email: false`, as merged identify traits) and from
//! events (`email_unsubscribe`, `sms_opt_out`, `unsubscribe`); where the
//! customer never said, the per-channel default applies (SMS and WhatsApp
//! need an explicit opt-in by default). Transactional messages need an
//! address but no marketing consent, and a global unsubscribe does not stop
//! them. With `channel = preferred` the customer's preferred channel is
//! tried first, then the others in order; when none is usable the message
//! is suppressed with the reason.

use serde_json::{Map, Value};

pub use kairos_core::Channel;

/// Consent where the customer never said: email and push yes, SMS and WhatsApp no.
pub const DEFAULT_CONSENT: [bool; 5] = [true, false, false, true, true];

/// One customer's consent and addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consent {
    /// Explicit per-channel consent (`None`: never said).
    said: [Option<bool>; 5],
    /// Whether an address exists per channel.
    address: [bool; 5],
    /// Unsubscribed from all marketing.
    all_off: bool,
}

/// Why no channel could be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoChannel {
    /// Unsubscribed from all marketing.
    Unsubscribed,
    /// The channel (or every fallback) is opted out or lacks consent.
    NoConsent(Channel),
    /// No address for the channel.
    NoAddress(Channel),
}

impl NoChannel {
    /// The reason recorded in `sends/`.
    pub fn reason(&self) -> String {
        match self {
            NoChannel::Unsubscribed => "unsubscribed".into(),
            NoChannel::NoConsent(c) => format!("no_consent:{}", c.as_str()),
            NoChannel::NoAddress(c) => format!("no_address:{}", c.as_str()),
        }
    }
}

/// A yes or a no as sources write it: `true`/`false`, 1/0, or the
/// strings "true"/"false", "yes"/"no", "1"/"0" (any case), as CSV imports
/// and form posts send them; anything else is neither.
fn yes_no(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(true),
            "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

impl Consent {
    /// From merged profile traits.
    pub fn from_traits(traits: &Map<String, Value>) -> Consent {
        let mut c = Consent::default();
        let has = |k: &str| {
            traits
                .get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        c.address[Channel::Email as usize] = has("email");
        c.address[Channel::Sms as usize] = has("phone");
        c.address[Channel::Whatsapp as usize] = has("phone");
        c.address[Channel::Push as usize] = has("push_token");
        c.address[Channel::Webhook as usize] = true;
        if let Some(Value::Object(consent)) = traits.get("consent") {
            for ch in [
                Channel::Email,
                Channel::Sms,
                Channel::Whatsapp,
                Channel::Push,
            ] {
                // A value that is neither yes nor no is no: an opt-out
                // written as "false" or 0 must never read as "never said".
                c.said[ch as usize] = consent
                    .get(ch.as_str())
                    .filter(|v| !v.is_null())
                    .map(|v| yes_no(v).unwrap_or(false));
            }
        }
        // And an `unsubscribed` that is neither yes nor no unsubscribes.
        c.all_off = traits
            .get("unsubscribed")
            .filter(|v| !v.is_null())
            .is_some_and(|v| yes_no(v) != Some(false));
        c
    }

    /// Whether `event_type` is an opt-out [`Consent::apply_event`] acts on.
    pub fn is_opt_out(event_type: &str) -> bool {
        Consent::default().apply_event(event_type)
    }

    /// Whether opt-out event `event_type` withdraws marketing consent for
    /// `channel` (`unsubscribe` withdraws every channel's).
    pub fn opts_out_of(event_type: &str, channel: Channel) -> bool {
        let mut c = Consent::default();
        c.address = [true; 5];
        c.said = [Some(true); 5];
        c.apply_event(event_type) && c.usable(channel, false).is_err()
    }

    /// Applies an opt-out event by canonical type; false when it is not one.
    pub fn apply_event(&mut self, event_type: &str) -> bool {
        match event_type {
            "email_unsubscribe" => self.said[Channel::Email as usize] = Some(false),
            "sms_opt_out" => self.said[Channel::Sms as usize] = Some(false),
            "whatsapp_opt_out" => self.said[Channel::Whatsapp as usize] = Some(false),
            "push_opt_out" => self.said[Channel::Push as usize] = Some(false),
            "unsubscribe" => self.all_off = true,
            _ => return false,
        }
        true
    }

    fn usable(&self, ch: Channel, transactional: bool) -> Result<(), NoChannel> {
        if !self.address[ch as usize] {
            return Err(NoChannel::NoAddress(ch));
        }
        if transactional {
            return Ok(());
        }
        if self.all_off {
            return Err(NoChannel::Unsubscribed);
        }
        let ok = self.said[ch as usize].unwrap_or(DEFAULT_CONSENT[ch as usize]);
        if ok {
            Ok(())
        } else {
            Err(NoChannel::NoConsent(ch))
        }
    }

    /// The channel a message goes on: `wanted`, or for `None` (the rule
    /// says `preferred`) the customer's `preferred` channel, then
    /// [`Channel::PREFERRED`].
    pub fn choose(
        &self,
        wanted: Option<Channel>,
        preferred: Option<Channel>,
        transactional: bool,
    ) -> Result<Channel, NoChannel> {
        if let Some(ch) = wanted {
            return self.usable(ch, transactional).map(|()| ch);
        }
        let mut first_error = None;
        for ch in preferred.into_iter().chain(Channel::PREFERRED) {
            match self.usable(ch, transactional) {
                Ok(()) => return Ok(ch),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(NoChannel::Unsubscribed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent(traits: Value) -> Consent {
        Consent::from_traits(traits.as_object().expect("object"))
    }

    #[test]
    fn an_opted_out_channel_is_never_used() {
        let c = consent(
            json!({"email": "a@x.example", "phone": "+15550100", "consent": {"email": false, "sms": true}}),
        );
        assert_eq!(
            c.choose(Some(Channel::Email), None, false),
            Err(NoChannel::NoConsent(Channel::Email))
        );
        assert_eq!(c.choose(Some(Channel::Sms), None, false), Ok(Channel::Sms));
        // Preferred email falls back past push (no token) to SMS.
        assert_eq!(
            c.choose(None, Some(Channel::Email), false),
            Ok(Channel::Sms)
        );
    }

    #[test]
    fn consent_written_as_text_or_numbers_counts_and_anything_else_is_no() {
        let email = |v: Value| {
            consent(json!({"email": "a@x.example", "consent": {"email": v}})).choose(
                Some(Channel::Email),
                None,
                false,
            )
        };
        let no = Err(NoChannel::NoConsent(Channel::Email));
        for v in [
            json!("false"),
            json!(0),
            json!("No"),
            json!("maybe"),
            json!([]),
        ] {
            assert_eq!(email(v.clone()), no, "{v}");
        }
        for v in [
            json!(true),
            json!("yes"),
            json!(1),
            json!("TRUE"),
            json!(null),
        ] {
            assert_eq!(email(v.clone()), Ok(Channel::Email), "{v}");
        }
        let unsubscribed = |v: Value| {
            consent(json!({"email": "a@x.example", "unsubscribed": v}))
                .choose(Some(Channel::Email), None, false)
                .is_err()
        };
        assert!(unsubscribed(json!("true")) && unsubscribed(json!("unknown")));
        assert!(!unsubscribed(json!("false")) && !unsubscribed(json!(0)));
        assert!(!unsubscribed(json!(null)));
    }

    #[test]
    fn defaults_need_sms_opt_in_and_an_address() {
        let c = consent(json!({"phone": "+15550100"}));
        assert_eq!(
            c.choose(Some(Channel::Sms), None, false),
            Err(NoChannel::NoConsent(Channel::Sms))
        );
        assert_eq!(
            c.choose(Some(Channel::Email), None, false),
            Err(NoChannel::NoAddress(Channel::Email))
        );
        assert_eq!(
            c.choose(None, None, false).map_err(|e| e.reason()),
            Err("no_address:email".to_string()),
            "nothing usable: the first reason is kept"
        );
    }

    #[test]
    fn events_opt_out_and_transactional_still_goes() {
        let mut c = consent(json!({"email": "a@x.example", "consent": {"email": true}}));
        assert!(c.apply_event("email_unsubscribe"));
        assert!(!c.apply_event("purchase"));
        assert_eq!(
            c.choose(Some(Channel::Email), None, false),
            Err(NoChannel::NoConsent(Channel::Email))
        );
        assert_eq!(
            c.choose(Some(Channel::Email), None, true),
            Ok(Channel::Email),
            "order confirmations still go"
        );
        c.apply_event("unsubscribe");
        assert_eq!(
            c.choose(Some(Channel::Push), None, false),
            Err(NoChannel::NoAddress(Channel::Push))
        );
        assert_eq!(
            c.choose(Some(Channel::Webhook), None, false),
            Err(NoChannel::Unsubscribed)
        );
        assert_eq!(
            c.choose(Some(Channel::Email), None, true),
            Ok(Channel::Email)
        );
    }
}
