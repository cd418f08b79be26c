//! Invented customers: names, tiers, lifecycles, subscriptions, consent.

use super::*;

pub(crate) const FIRST_NAMES_EN: [&str; 12] = [
    "Olivia", "Jack", "Amelia", "Harry", "Emily", "Noah", "Grace", "Liam", "Chloe", "Ethan", "Mia",
    "James",
];
pub(crate) const LAST_NAMES_EN: [&str; 12] = [
    "Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "Walker", "Clarke", "Johnson",
    "Miller", "Davis", "Garcia",
];
pub(crate) const FIRST_NAMES_DE: [&str; 10] = [
    "Lena", "Jonas", "Marie", "Felix", "Hannah", "Lukas", "Emma", "Paul", "Sophie", "Leon",
];
pub(crate) const LAST_NAMES_DE: [&str; 10] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Koch",
];
pub(crate) const FIRST_NAMES_JP: [&str; 8] = [
    "Yui", "Haruto", "Aoi", "Sota", "Hina", "Ren", "Yuna", "Minato",
];
pub(crate) const LAST_NAMES_JP: [&str; 8] = [
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
];
pub(crate) const FIRST_NAMES_IN: [&str; 8] = [
    "Aarav", "Ananya", "Vivaan", "Diya", "Aditya", "Isha", "Arjun", "Saanvi",
];
pub(crate) const LAST_NAMES_IN: [&str; 8] = [
    "Sharma", "Patel", "Iyer", "Reddy", "Gupta", "Nair", "Singh", "Das",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Bronze,
    Silver,
    Gold,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        }
    }

    /// Better tiers are more engaged; the factors average out near 1.
    pub(crate) fn activity(self) -> f64 {
        match self {
            Tier::Bronze => 0.85,
            Tier::Silver => 1.15,
            Tier::Gold => 1.5,
        }
    }
}

/// How a customer behaves over the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// Ordinary activity spread over the whole span.
    Active,
    /// Active only early on: no events in the last 31 days of the span.
    Lapsed,
    /// No events at all in the span.
    Dormant,
    /// Browses anonymously, then signs up at this instant and carries on.
    SignsUp(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Monthly,
    Annual,
}

impl Plan {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Plan::Monthly => "monthly",
            Plan::Annual => "annual",
        }
    }

    pub(crate) fn eur_cents(self) -> u64 {
        match self {
            Plan::Monthly => 999,
            Plan::Annual => 8_900,
        }
    }

    pub(crate) fn next_expiry(self, from: NaiveDate) -> NaiveDate {
        let months = match self {
            Plan::Monthly => Months::new(1),
            Plan::Annual => Months::new(12),
        };
        from.checked_add_months(months)
            .unwrap_or(from + Duration::days(30))
    }
}

/// A paid membership, renewed (or not) on its expiry date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) plan: Plan,
    pub(crate) expires: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Consent {
    pub(crate) email: bool,
    pub(crate) sms: bool,
    pub(crate) whatsapp: bool,
    pub(crate) push: bool,
}

/// A known customer: everything in their profile plus how they behave.
#[derive(Debug, Clone)]
pub(crate) struct Customer {
    pub(crate) index: usize,
    pub(crate) user_id: String,
    pub(crate) zone: Zone,
    pub(crate) first_name: &'static str,
    pub(crate) last_name: &'static str,
    pub(crate) email: String,
    pub(crate) phone: String,
    pub(crate) tier: Tier,
    pub(crate) preferred_channel: &'static str,
    pub(crate) push_token: Option<String>,
    pub(crate) consent: Consent,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) signup_date: NaiveDate,
    pub(crate) subscription: Option<Subscription>,
    /// When the profile's identify call happens: the customer as known at the
    /// start of the span, or just after sign-up for those who sign up in it.
    pub(crate) profile_ts: DateTime<Utc>,
}

impl Customer {
    pub(crate) fn new(opts: &GenerateOptions, index: usize, span: &Span) -> Self {
        let mut rng = stream(opts.seed, STREAM_PROFILE, index as u64);
        let user_id = format!("{}{index:05}", opts.id_prefix);
        let zone = Zone::pick(&mut rng);
        let (firsts, lasts) = zone.names();
        let first_name = pick(&mut rng, firsts);
        let last_name = pick(&mut rng, lasts);
        let domain = if rng.random_bool(0.75) {
            "example.com"
        } else {
            "example.net"
        };
        let email = format!("{user_id}@{domain}");
        // Only numbers reserved for fiction: +1 555 01xx-xxxx in North
        // America, Ofcom's +44 7700 900xxx drama range for everyone else.
        let phone = match zone {
            Zone::NewYork | Zone::LosAngeles => {
                format!("+155501{:05}", rng.random_range(0..100_000))
            }
            _ => format!("+447700900{:03}", rng.random_range(0..1_000)),
        };
        let tier = match pick_weighted(&mut rng, &[60, 28, 12]) {
            0 => Tier::Bronze,
            1 => Tier::Silver,
            _ => Tier::Gold,
        };
        let push_token = rng.random_bool(0.45).then(|| {
            let bytes: [u8; 32] = rng.random();
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let consent = Consent {
            email: rng.random_bool(0.88),
            sms: rng.random_bool(0.45),
            whatsapp: rng.random_bool(0.3),
            push: push_token.is_some() && rng.random_bool(0.85),
        };
        // People mostly prefer a channel they have consented to; when they
        // have consented to none, the default is email.
        let channels = [
            ("email", consent.email, 5),
            ("sms", consent.sms, 2),
            ("whatsapp", consent.whatsapp, 2),
            ("push", consent.push, 3),
        ];
        let weights: Vec<u32> = channels
            .iter()
            .map(|(_, ok, w)| if *ok { *w } else { 0 })
            .collect();
        let preferred_channel = if weights.iter().any(|w| *w > 0) {
            channels[pick_weighted(&mut rng, &weights)].0
        } else {
            "email"
        };

        let r: f64 = rng.random();
        let lifecycle = if r < 0.04 {
            Lifecycle::Dormant
        } else if r < 0.16 && span.days >= 35 {
            Lifecycle::Lapsed
        } else if (0.16..0.24).contains(&r) && span.days >= 2 {
            let length = span.end - span.start;
            let lo = span.start + length / 10;
            let hi = span.start + length * 4 / 5;
            Lifecycle::SignsUp(instant_between(&mut rng, lo, hi))
        } else {
            Lifecycle::Active
        };
        let signup_date = match lifecycle {
            Lifecycle::SignsUp(t) => zone.to_local(t).date(),
            _ => span.start.date_naive() - Duration::days(rng.random_range(14..=1000)),
        };
        let subscription = (!matches!(lifecycle, Lifecycle::SignsUp(_)) && rng.random_bool(0.25))
            .then(|| {
                let plan = if rng.random_bool(0.7) {
                    Plan::Monthly
                } else {
                    Plan::Annual
                };
                let horizon = match plan {
                    Plan::Monthly => 31,
                    Plan::Annual => 365,
                };
                let expires =
                    span.start.date_naive() + Duration::days(rng.random_range(0..horizon));
                Subscription { plan, expires }
            });
        let profile_ts = match lifecycle {
            Lifecycle::SignsUp(t) => t + Duration::seconds(2),
            _ => span.start,
        };

        Self {
            index,
            user_id,
            zone,
            first_name,
            last_name,
            email,
            phone,
            tier,
            preferred_channel,
            push_token,
            consent,
            lifecycle,
            signup_date,
            subscription,
            profile_ts,
        }
    }

    pub(crate) fn write_profile(&self, out: &mut Vec<u8>, message_id: &str) -> Result<()> {
        let mut traits = Map::new();
        traits.insert("email".into(), json!(self.email));
        traits.insert("phone".into(), json!(self.phone));
        traits.insert("first_name".into(), json!(self.first_name));
        traits.insert("last_name".into(), json!(self.last_name));
        traits.insert("timezone".into(), json!(self.zone.iana()));
        traits.insert("country".into(), json!(self.zone.country()));
        traits.insert("loyalty_tier".into(), json!(self.tier.as_str()));
        traits.insert("preferred_channel".into(), json!(self.preferred_channel));
        if let Some(token) = &self.push_token {
            traits.insert("push_token".into(), json!(token));
        }
        traits.insert(
            "consent".into(),
            json!({
                "email": self.consent.email,
                "sms": self.consent.sms,
                "whatsapp": self.consent.whatsapp,
                "push": self.consent.push,
            }),
        );
        traits.insert(
            "signup_date".into(),
            json!(self.signup_date.format("%Y-%m-%d").to_string()),
        );
        if let Some(sub) = &self.subscription {
            traits.insert(
                "subscription_expires_at".into(),
                json!(sub.expires.format("%Y-%m-%d").to_string()),
            );
            traits.insert("subscription_plan".into(), json!(sub.plan.as_str()));
        }
        write_object(
            out,
            &[
                ("type", json!("identify")),
                ("userId", json!(self.user_id)),
                ("messageId", json!(message_id)),
                ("timestamp", json!(format_ts(self.profile_ts))),
                ("traits", Value::Object(traits)),
                ("context", server_context(self.zone)),
            ],
        )
    }
}
