//! Properties of the chain over arbitrary message streams.

use proptest::prelude::*;
use serde_json::json;

use kairos_policy::caps::{Cap, CapScope, CapWindow, SentMessage};
use kairos_policy::chain::{Customer, Message, Outcome, PastMessage, Policy, decide};
use kairos_policy::{Channel, Consent, QuietHours};

const H: i64 = 3_600_000_000;
// 2026-07-01T00:00:00Z
const DAY0: i64 = 1_782_864_000_000_000;

fn policy() -> Policy {
    Policy {
        caps: vec![
            Cap {
                max: 2,
                scope: CapScope::All,
                window: CapWindow::Rolling(24 * H),
            },
            Cap {
                max: 1,
                scope: CapScope::Channel(Channel::Sms),
                window: CapWindow::Day,
            },
            Cap {
                max: 4,
                scope: CapScope::All,
                window: CapWindow::Week,
            },
        ],
        quiet: Some(QuietHours::parse("21:00", "08:00").expect("valid")),
        priority_window_us: 0,
    }
}

/// Runs a stream of (arrival offset in minutes, rule index, channel index,
/// defer?) through the chain in arrival order; returns every delivered
/// (time, channel) and the consent used.
fn run(stream: &[(u32, usize, usize, bool)], zone: &str, sms_ok: bool) -> Vec<(i64, Channel)> {
    let consent = Consent::from_traits(
        json!({"email": "a@x.example", "phone": "+15550100", "consent": {"sms": sms_ok, "email": true}})
            .as_object()
            .expect("object"),
    );
    let zone: chrono_tz::Tz = zone.parse().expect("zone");
    let rules = ["cart", "browse", "win_back"];
    let channels = [Some(Channel::Email), Some(Channel::Sms), None];
    let mut arrivals: Vec<_> = stream.to_vec();
    arrivals.sort_by_key(|a| a.0);
    let mut history: Vec<PastMessage> = Vec::new();
    let mut delivered = Vec::new();
    let p = policy();
    for (i, (minute, rule, channel, defer)) in arrivals.iter().enumerate() {
        let now = DAY0 + i64::from(*minute) * 60_000_000;
        let key = format!("k{i}");
        let m = Message {
            rule: rules[*rule % 3],
            priority: 0,
            step: 0,
            dedupe_key: &key,
            channel: channels[*channel % 3],
            tags: &[],
            transactional: false,
            cooldown_us: 0,
            defer_when_capped: *defer,
            not_before: now,
            ghost: false,
            lost_to: None,
            defer_on_conflict: false,
            priority_wait_us: H,
        };
        let customer = Customer {
            consent: &consent,
            preferred: Some(Channel::Sms),
            zone,
            history: &history,
        };
        if let Outcome::Send { channel, at, .. } = decide(&m, &customer, &p, now) {
            history.push(PastMessage {
                rule: m.rule.into(),
                priority: 0,
                step: 0,
                dedupe_key: key.clone(),
                transactional: false,
                sent: SentMessage {
                    at,
                    channel,
                    tags: std::sync::Arc::from(Vec::new()),
                },
            });
            delivered.push((at, channel));
        }
    }
    delivered
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_cap_is_ever_exceeded_and_opted_out_channels_are_never_used(
        stream in prop::collection::vec((0u32..4_000, 0usize..3, 0usize..3, any::<bool>()), 1..40),
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
        sms_ok in any::<bool>(),
    ) {
        let sent = run(&stream, zone, sms_ok);
        let tz: chrono_tz::Tz = zone.parse().expect("zone");
        let mut times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        // Rolling: at most 2 in any 24 hours.
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|x| **x < t + 24 * H).count();
            prop_assert!(n <= 2, "{n} messages within 24h from {t}: {sent:?}");
        }
        for (t, ch) in &sent {
            prop_assert!(sms_ok || *ch != Channel::Sms, "SMS without consent at {t}");
            // Never inside quiet hours, local time.
            let local = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(*t).expect("time").with_timezone(&tz);
            let h = chrono::Timelike::hour(&local);
            prop_assert!((8..21).contains(&h), "sent at {local} local");
        }
        // Local calendar day: at most 1 SMS.
        let mut per_day = std::collections::HashMap::new();
        for (t, ch) in sent.iter().filter(|(_, c)| *c == Channel::Sms) {
            let local = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(*t).expect("time").with_timezone(&tz);
            *per_day.entry(local.date_naive()).or_insert(0) += 1;
            prop_assert!(per_day[&local.date_naive()] <= 1, "two SMS on {} ({ch:?})", local.date_naive());
        }
    }
}
