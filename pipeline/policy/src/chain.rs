//! The chain for one message: dedupe and re-eligibility, consent,
//! priority, frequency caps, quiet hours, in that order. The first step
//! that stops a message decides its outcome and its recorded reason.
//!
//! Holdout messages run the whole chain too and end as ghosts: decided,
//! recorded and counted against caps, never delivered, so suppression and
//! timing weigh the same on every arm.

use std::sync::Arc;

use chrono::{DateTime, Days, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::caps::{self, Cap, SentMessage};
use crate::consent::{Channel, Consent};
use crate::quiet::QuietHours;

/// A message the customer has had (or was deferred to have), for dedupe,
/// cooldown and caps.
#[derive(Debug, Clone, PartialEq)]
pub struct PastMessage {
    /// Rule.
    pub rule: Arc<str>,
    /// The rule's priority, for priority across a time window.
    pub priority: i64,
    /// Sequence step (0: the rule's first message).
    pub step: u32,
    /// Trigger instance.
    pub dedupe_key: String,
    /// Transactional messages do not count against caps.
    pub transactional: bool,
    /// What the caps see.
    pub sent: SentMessage,
}

impl caps::Counted for PastMessage {
    fn counted(&self) -> Option<&SentMessage> {
        (!self.transactional).then_some(&self.sent)
    }
}

/// One message to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// Rule.
    pub rule: &'a str,
    /// The rule's priority.
    pub priority: i64,
    /// Sequence step.
    pub step: u32,
    /// Trigger instance.
    pub dedupe_key: &'a str,
    /// The rule's channel; `None` for `preferred`.
    pub channel: Option<Channel>,
    /// The rule's tags.
    pub tags: &'a [String],
    /// Exempt from caps, quiet hours and marketing consent.
    pub transactional: bool,
    /// No second message of this rule to the customer within it, µs.
    pub cooldown_us: i64,
    /// Defer (true) or skip when capped.
    pub defer_when_capped: bool,
    /// The earliest moment it may go (now, or the scheduled arm's next
    /// send time), µs.
    pub not_before: i64,
    /// A holdout message: decided and counted, never delivered.
    pub ghost: bool,
    /// Lost to a higher-priority rule of the same batch: `(winner, defer)`.
    pub lost_to: Option<(&'a str, bool)>,
    /// Defer (true) or suppress when a higher-priority message is within
    /// the policy's priority window.
    pub defer_on_conflict: bool,
    /// How long a message deferred by priority waits, µs.
    pub priority_wait_us: i64,
}

/// The customer as the chain needs them.
#[derive(Debug, Clone)]
pub struct Customer<'a> {
    /// Consent and addresses.
    pub consent: &'a Consent,
    /// Preferred channel, for `preferred` rules.
    pub preferred: Option<Channel>,
    /// Time zone for quiet hours and calendar caps.
    pub zone: Tz,
    /// Past (and deferred) messages.
    pub history: &'a [PastMessage],
}

/// Global policy settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Frequency caps, all applied.
    pub caps: Vec<Cap>,
    /// Quiet hours, if any.
    pub quiet: Option<QuietHours>,
    /// A marketing message loses to a higher-priority rule's message sent
    /// or due within this long of it, µs (0: only firings of the same
    /// batch compete).
    pub priority_window_us: i64,
}

/// What happens to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Deliver on `channel` at `at` (now, or later when deferred), µs;
    /// `reason` says why it waits, if it does.
    Send {
        /// Channel.
        channel: Channel,
        /// When, µs.
        at: i64,
        /// Why later than `not_before`: `quiet_hours`, `cap:CAP` (the cap as
        /// written, e.g. `cap:1 sms per day`), `priority:RULE`, `scheduled`.
        reason: Option<String>,
    },
    /// A holdout message: like `Send`, never delivered.
    Ghost {
        /// Channel it would use.
        channel: Channel,
        /// When it would go, µs.
        at: i64,
        /// Why later than `not_before`, if it is.
        reason: Option<String>,
    },
    /// Never sent, with the reason.
    Suppressed {
        /// `duplicate`, `cooldown`, `unsubscribed`, `no_consent:CH`, `no_address:CH`, `priority:RULE`, `capped:CAP`.
        reason: String,
    },
}

/// Decides one message at `now` (µs).
pub fn decide(msg: &Message<'_>, customer: &Customer<'_>, policy: &Policy, now: i64) -> Outcome {
    let suppressed = |reason: String| Outcome::Suppressed { reason };
    // 1. Dedupe: one message per (rule, step, customer, key) in the
    //    history kept (delivery never sends one send id twice); then
    //    re-eligibility: the rule's cooldown runs from its last first
    //    message (a sequence's own follow-ups are not re-triggers).
    let mut last = None;
    for p in customer.history.iter().filter(|p| *p.rule == *msg.rule) {
        if p.step == msg.step && p.dedupe_key == msg.dedupe_key {
            return suppressed("duplicate".into());
        }
        if p.step == 0 {
            last = last.max(Some(p.sent.at));
        }
    }
    if let Some(at) = last
        && msg.step == 0
        && msg.cooldown_us > 0
        && now - at < msg.cooldown_us
    {
        return suppressed("cooldown".into());
    }
    // 2. Consent.
    let channel = match customer
        .consent
        .choose(msg.channel, customer.preferred, msg.transactional)
    {
        Ok(c) => c,
        Err(e) => return suppressed(e.reason()),
    };
    let mut at = msg.not_before.max(now);
    let mut reason = (at > now).then(|| "scheduled".to_string());
    // 3. Priority, first within the batch: a higher-priority rule fired in
    //    the same batch (`lost_to`). Deferred, the message waits
    //    `priority_wait_us` after the batch.
    if let Some((winner, defer)) = msg.lost_to {
        if !defer {
            return suppressed(format!("priority:{winner}"));
        }
        at = at.max(now + msg.priority_wait_us);
        reason = Some(format!("priority:{winner}"));
    }
    if !msg.transactional {
        // 3 (across batches), 4 and 5 interact: a quiet-hours or cap
        // deferral can move the message next to a higher-priority one (two
        // messages queued for the end of the night), and a priority
        // deferral into quiet hours or a capped window. So the time is
        // checked against all three until none moves it.
        for _ in 0..16 {
            let start = at;
            if let Some((winner, earliest)) = priority_winner(msg, customer, policy, at) {
                if !msg.defer_on_conflict {
                    return suppressed(format!("priority:{winner}"));
                }
                at = earliest;
                reason = Some(format!("priority:{winner}"));
            }
            let offset = offset_us(customer.zone, at);
            if let Some(c) = caps::check(
                &policy.caps,
                customer.history,
                at,
                channel,
                msg.tags,
                offset,
            ) {
                if !msg.defer_when_capped {
                    return suppressed(format!("capped:{}", policy.caps[c.cap]));
                }
                at = c.allowed_at;
                reason = Some(format!("cap:{}", policy.caps[c.cap]));
            }
            if let Some(q) = &policy.quiet
                && let Some(end) = DateTime::<Utc>::from_timestamp_micros(at)
                    .and_then(|t| q.defer(t, customer.zone))
            {
                at = end.timestamp_micros();
                reason = Some("quiet_hours".into());
            }
            if at == start {
                break;
            }
        }
    }
    if msg.ghost {
        Outcome::Ghost {
            channel,
            at,
            reason,
        }
    } else {
        Outcome::Send {
            channel,
            at,
            reason,
        }
    }
}

/// A higher-priority message of the customer's history within the priority
/// window of `at`: (its rule, the first moment past its window).
fn priority_winner<'h>(
    msg: &Message<'_>,
    customer: &Customer<'h>,
    policy: &Policy,
    at: i64,
) -> Option<(&'h str, i64)> {
    if policy.priority_window_us <= 0 {
        return None;
    }
    customer
        .history
        .iter()
        .filter(|p| !p.transactional && p.priority > msg.priority)
        .filter(|p| (p.sent.at - at).abs() < policy.priority_window_us)
        .max_by_key(|p| (p.priority, p.sent.at))
        .map(|p| (&*p.rule, p.sent.at + policy.priority_window_us))
}

/// The zone's UTC offset at `at`, µs.
pub fn offset_us(zone: Tz, at: i64) -> i64 {
    use chrono::Offset;
    DateTime::<Utc>::from_timestamp_micros(at)
        .map(|t| i64::from(t.with_timezone(&zone).offset().fix().local_minus_utc()) * 1_000_000)
        .unwrap_or(0)
}

/// The next local `minutes` after midnight at or after `at` in `zone`: the
/// scheduled arm's send time.
pub fn next_local_time(at: i64, minutes: u32, zone: Tz) -> i64 {
    let Some(now) = DateTime::<Utc>::from_timestamp_micros(at) else {
        return at;
    };
    let local = now.with_timezone(&zone);
    let time = NaiveTime::from_hms_opt(minutes / 60 % 24, minutes % 60, 0).unwrap_or_default();
    for days in 0..3 {
        let Some(date) = local.date_naive().checked_add_days(Days::new(days)) else {
            break;
        };
        let t = match zone.from_local_datetime(&date.and_time(time)) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
            LocalResult::None => continue,
        };
        let us = t.with_timezone(&Utc).timestamp_micros();
        if us >= at {
            return us;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{CapScope, CapWindow};
    use serde_json::json;

    const H: i64 = 3_600_000_000;
    // 2026-07-01T00:00:00Z
    const DAY0: i64 = 1_782_864_000_000_000;

    fn consent() -> Consent {
        Consent::from_traits(
            json!({"email": "a@x.example", "consent": {"email": true}})
                .as_object()
                .expect("obj"),
        )
    }

    fn msg(rule: &'static str, key: &'static str) -> Message<'static> {
        Message {
            rule,
            priority: 0,
            step: 0,
            dedupe_key: key,
            channel: Some(Channel::Email),
            tags: &[],
            transactional: false,
            cooldown_us: 0,
            defer_when_capped: true,
            not_before: 0,
            ghost: false,
            lost_to: None,
            defer_on_conflict: false,
            priority_wait_us: H,
        }
    }

    fn past(rule: &str, key: &str, at: i64) -> PastMessage {
        PastMessage {
            rule: rule.into(),
            priority: 0,
            step: 0,
            dedupe_key: key.into(),
            transactional: false,
            sent: SentMessage {
                at,
                channel: Channel::Email,
                tags: Arc::from(Vec::new()),
            },
        }
    }

    fn utc_customer<'a>(c: &'a Consent, history: &'a [PastMessage]) -> Customer<'a> {
        Customer {
            consent: c,
            preferred: None,
            zone: chrono_tz::UTC,
            history,
        }
    }

    #[test]
    fn duplicates_and_cooldown_come_first() {
        let c = consent();
        let history = [past("cart", "k1", DAY0)];
        let cust = utc_customer(&c, &history);
        let p = Policy::default();
        let now = DAY0 + 12 * H;
        assert_eq!(
            decide(&msg("cart", "k1"), &cust, &p, now),
            Outcome::Suppressed {
                reason: "duplicate".into()
            }
        );
        let mut m = msg("cart", "k2");
        m.cooldown_us = 24 * H;
        assert_eq!(
            decide(&m, &cust, &p, now),
            Outcome::Suppressed {
                reason: "cooldown".into()
            }
        );
        m.cooldown_us = 6 * H;
        assert!(
            matches!(decide(&m, &cust, &p, now), Outcome::Send { at, reason: None, .. } if at == now)
        );
    }

    #[test]
    fn quiet_hours_defer_marketing_but_not_transactional() {
        let c = consent();
        let cust = Customer {
            zone: "Europe/Berlin".parse().expect("zone"),
            ..utc_customer(&c, &[])
        };
        let p = Policy {
            quiet: Some(QuietHours::parse("21:00", "08:00").expect("valid")),
            ..Policy::default()
        };
        let now = DAY0 + 20 * H; // 22:00 in Berlin
        assert_eq!(
            decide(&msg("cart", "k"), &cust, &p, now),
            Outcome::Send {
                channel: Channel::Email,
                at: DAY0 + 30 * H,
                reason: Some("quiet_hours".into())
            }
        );
        let mut t = msg("order_confirmation", "o1");
        t.transactional = true;
        assert!(matches!(decide(&t, &cust, &p, now), Outcome::Send { at, .. } if at == now));
    }

    #[test]
    fn caps_then_quiet_hours_agree_and_holdout_is_a_ghost() {
        let c = consent();
        // One message per local day; the last went out today.
        let history = [past("welcome", "w", DAY0 + 9 * H)];
        let cust = utc_customer(&c, &history);
        let p = Policy {
            caps: vec![Cap {
                max: 1,
                scope: CapScope::All,
                window: CapWindow::Day,
            }],
            quiet: Some(QuietHours::parse("00:00", "07:00").expect("valid")),
            ..Policy::default()
        };
        let mut m = msg("cart", "k");
        m.ghost = true;
        // Capped until midnight, then quiet until 07:00.
        assert_eq!(
            decide(&m, &cust, &p, DAY0 + 15 * H),
            Outcome::Ghost {
                channel: Channel::Email,
                at: DAY0 + 31 * H,
                reason: Some("quiet_hours".into())
            }
        );
        m.defer_when_capped = false;
        assert_eq!(
            decide(&m, &cust, &p, DAY0 + 15 * H),
            Outcome::Suppressed {
                reason: "capped:1 per day".into()
            }
        );
    }

    #[test]
    fn consent_and_priority_suppress_with_their_reason() {
        let c = Consent::from_traits(
            json!({"email": "a@x.example", "consent": {"email": false}})
                .as_object()
                .expect("obj"),
        );
        let cust = utc_customer(&c, &[]);
        let p = Policy::default();
        assert_eq!(
            decide(&msg("cart", "k"), &cust, &p, DAY0),
            Outcome::Suppressed {
                reason: "no_consent:email".into()
            }
        );
        let c = consent();
        let cust = utc_customer(&c, &[]);
        let mut m = msg("browse", "k");
        m.lost_to = Some(("cart", false));
        assert_eq!(
            decide(&m, &cust, &p, DAY0),
            Outcome::Suppressed {
                reason: "priority:cart".into()
            }
        );
        m.lost_to = Some(("cart", true));
        assert_eq!(
            decide(&m, &cust, &p, DAY0),
            Outcome::Send {
                channel: Channel::Email,
                at: DAY0 + H,
                reason: Some("priority:cart".into())
            }
        );
    }

    #[test]
    fn priority_holds_across_the_window_and_cooldown_ignores_follow_ups() {
        let c = consent();
        let mut cart = past("cart", "c", DAY0);
        cart.priority = 60;
        let history = [cart];
        let cust = utc_customer(&c, &history);
        let p = Policy {
            priority_window_us: 2 * H,
            ..Policy::default()
        };
        let mut browse = msg("browse", "b");
        browse.priority = 40;
        assert_eq!(
            decide(&browse, &cust, &p, DAY0 + H),
            Outcome::Suppressed {
                reason: "priority:cart".into()
            },
            "an hour after a higher-priority message"
        );
        browse.defer_on_conflict = true;
        assert_eq!(
            decide(&browse, &cust, &p, DAY0 + H),
            Outcome::Send {
                channel: Channel::Email,
                at: DAY0 + 2 * H,
                reason: Some("priority:cart".into())
            },
            "deferred until the window has passed"
        );
        assert!(
            matches!(
                decide(&browse, &cust, &p, DAY0 + 3 * H),
                Outcome::Send { reason: None, .. }
            ),
            "outside the window"
        );
        let mut higher = msg("vip", "v");
        higher.priority = 90;
        assert!(matches!(
            decide(&higher, &cust, &p, DAY0 + H),
            Outcome::Send { reason: None, .. }
        ));

        // A sequence's step 1 is not held back by its own step 0's cooldown.
        let history = [past("welcome", "w", DAY0)];
        let cust = utc_customer(&c, &history);
        let mut step1 = msg("welcome", "w");
        step1.step = 1;
        step1.cooldown_us = 30 * 24 * H;
        assert!(matches!(
            decide(&step1, &cust, &Policy::default(), DAY0 + 24 * H),
            Outcome::Send { .. }
        ));
        let mut again = msg("welcome", "w2");
        again.cooldown_us = 30 * 24 * H;
        assert_eq!(
            decide(&again, &cust, &Policy::default(), DAY0 + 24 * H),
            Outcome::Suppressed {
                reason: "cooldown".into()
            }
        );
    }

    #[test]
    fn priority_is_checked_where_quiet_hours_move_a_message() {
        // A cart email, decided at night, waits for 08:00. A browse push
        // decided at 23:30 is far from it (8.5 h) until quiet hours move it
        // to 08:00 too: there the cart wins.
        let c = consent();
        let mut cart = past("cart", "c", DAY0 + 32 * H);
        cart.priority = 60;
        let history = [cart];
        let cust = utc_customer(&c, &history);
        let p = Policy {
            quiet: Some(QuietHours::parse("21:00", "08:00").expect("valid")),
            priority_window_us: 4 * H,
            ..Policy::default()
        };
        let mut browse = msg("browse", "b");
        browse.priority = 40;
        let night = DAY0 + 23 * H + H / 2;
        assert_eq!(
            decide(&browse, &cust, &p, night),
            Outcome::Suppressed {
                reason: "priority:cart".into()
            }
        );
        // Deferred instead, it goes once the cart's window has passed, a
        // time outside quiet hours.
        browse.defer_on_conflict = true;
        assert_eq!(
            decide(&browse, &cust, &p, night),
            Outcome::Send {
                channel: Channel::Email,
                at: DAY0 + 36 * H,
                reason: Some("priority:cart".into())
            }
        );
    }

    #[test]
    fn the_scheduled_arm_waits_for_the_next_local_send_time() {
        let ny: Tz = "America/New_York".parse().expect("zone");
        // 2026-07-01 12:00 UTC is 08:00 EDT: 10:00 EDT is 14:00 UTC the same day.
        assert_eq!(next_local_time(DAY0 + 12 * H, 600, ny), DAY0 + 14 * H);
        // 15:00 UTC is 11:00 EDT: tomorrow 10:00 EDT.
        assert_eq!(next_local_time(DAY0 + 15 * H, 600, ny), DAY0 + 38 * H);
        let c = consent();
        let cust = Customer {
            zone: ny,
            ..utc_customer(&c, &[])
        };
        let mut m = msg("cart", "k");
        m.not_before = next_local_time(DAY0 + 15 * H, 600, ny);
        assert_eq!(
            decide(&m, &cust, &Policy::default(), DAY0 + 15 * H),
            Outcome::Send {
                channel: Channel::Email,
                at: DAY0 + 38 * H,
                reason: Some("scheduled".into())
            }
        );
    }
}
