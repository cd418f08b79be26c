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

// ---------------------------------------------------------------------
// The whole stage over batches: any order of arrival within a batch and
// any cut of the stream into batches.

use kairos_experiments::Design;
use kairos_policy::stage::{Decision, Fired, Profiles, RuleMeta, SendRow, Stage, StepMeta};
use std::sync::Arc;

fn stage_rules() -> Vec<RuleMeta> {
    let rule = |name: &str, priority: i64, channel: Option<Channel>, split: (u8, u8)| RuleMeta {
        name: name.into(),
        channel,
        priority,
        cooldown_us: 0,
        cancel_on: vec!["purchase".into()],
        transactional: false,
        tags: Arc::from(Vec::new()),
        defer_on_conflict: priority % 2 == 0,
        defer_when_capped: true,
        design: Design::from_percent(name, split.0, split.1),
        scheduled_at_minutes: 600,
        steps: vec![],
    };
    let mut welcome = rule("welcome", 80, None, (10, 20));
    welcome.steps = vec![
        StepMeta {
            number: 1,
            after_us: 20 * H,
            channel: Some(Channel::Sms),
            stop_on: vec![],
        },
        StepMeta {
            number: 2,
            after_us: 50 * H,
            channel: Some(Channel::Email),
            stop_on: vec![],
        },
    ];
    vec![
        welcome,
        rule("cart", 60, Some(Channel::Email), (10, 20)),
        rule("browse", 40, Some(Channel::Sms), (0, 0)),
    ]
}

/// One input: minute of event time, customer, and what happened (a rule
/// firing, a purchase, or an SMS opt-out).
type Input = (u32, usize, u8);

/// Runs the stream through a stage, cut into batches after the given
/// input positions and shuffled within each batch; returns every row.
fn run_stage(inputs: &[Input], cuts: &[usize], shuffle_seed: u64) -> Vec<SendRow> {
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|i| i.0);
    let rules = ["welcome", "cart", "browse"];
    let mut stage = Stage::new(stage_rules(), policy(), None, chrono_tz::UTC);
    let mut profiles = Profiles::default();
    for c in 0..3 {
        profiles.traits.insert(
            format!("c{c}"),
            json!({"email": "a@x.example", "phone": "+15550100", "preferred_channel": "sms",
                   "consent": {"email": true, "sms": true}, "timezone": "America/New_York"})
            .as_object()
            .cloned()
            .expect("object"),
        );
    }
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (inputs.len() + 1)).collect();
    bounds.push(inputs.len());
    bounds.sort_unstable();
    bounds.dedup();
    let mut rows = Vec::new();
    let mut start = 0;
    for end in bounds {
        let mut batch: Vec<(usize, Input)> = inputs[start..end]
            .iter()
            .copied()
            .enumerate()
            .map(|(i, x)| (start + i, x))
            .collect();
        if batch.is_empty() {
            continue;
        }
        // Arrival order within a batch is arbitrary.
        let n = batch.len();
        for i in 0..n {
            let j = (shuffle_seed as usize).wrapping_mul(31).wrapping_add(i * 7) % n;
            batch.swap(i, j);
        }
        let clock = DAY0 + i64::from(inputs[end - 1].0) * 60_000_000;
        // The state absorbs the batch before the stage decides.
        for (_, (_, c, what)) in &batch {
            if *what == 4 {
                profiles
                    .opt_outs
                    .entry(format!("c{c}"))
                    .or_default()
                    .push("sms_opt_out".into());
            }
        }
        for (_, (minute, c, what)) in &batch {
            let at = DAY0 + i64::from(*minute) * 60_000_000;
            let kind = match what {
                3 => "purchase",
                4 => "sms_opt_out",
                _ => continue,
            };
            rows.extend(stage.observe(&format!("c{c}"), kind, at, clock));
        }
        let fired: Vec<Fired> = batch
            .iter()
            .filter(|(_, (_, _, what))| *what < 3)
            .map(|(i, (_, c, what))| Fired {
                rule: rules[*what as usize].into(),
                customer_id: format!("c{c}"),
                dedupe_key: format!("k{i}"),
            })
            .collect();
        rows.extend(stage.decide(&fired, clock, &profiles));
        start = end;
    }
    // Let every sequence run out.
    rows.extend(stage.decide(&[], DAY0 + 400 * H, &profiles));
    rows
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn over_any_batch_split_no_cap_is_exceeded_no_opted_out_sms_goes_and_arms_stick(
        inputs in prop::collection::vec((0u32..6_000, 0usize..3, 0u8..5), 1..40),
        cuts in prop::collection::vec(0usize..40, 0..10),
        seed in any::<u64>(),
    ) {
        let rows = run_stage(&inputs, &cuts, seed);
        let cancelled: std::collections::HashSet<&str> = rows
            .iter()
            .filter(|r| r.decision == Decision::Cancelled)
            .map(|r| r.send_id.as_str())
            .collect();
        let delivered: Vec<&SendRow> = rows
            .iter()
            .filter(|r| r.decision == Decision::Send && !cancelled.contains(r.send_id.as_str()))
            .collect();
        let tz: chrono_tz::Tz = "America/New_York".parse().expect("zone");
        for c in ["c0", "c1", "c2"] {
            let mut times: Vec<i64> = delivered.iter().filter(|r| r.customer_id == c).filter_map(|r| r.send_at).collect();
            times.sort_unstable();
            for (i, t) in times.iter().enumerate() {
                let n = times[i..].iter().take_while(|x| **x < t + 24 * H).count();
                prop_assert!(n <= 2, "{c}: {n} messages within 24h from {t}");
            }
            // No SMS goes out at or after the customer's opt-out.
            let opted = inputs.iter().filter(|i| format!("c{}", i.1) == c && i.2 == 4).map(|i| DAY0 + i64::from(i.0) * 60_000_000).min();
            if let Some(o) = opted {
                for r in delivered.iter().filter(|r| r.customer_id == c && r.channel == Some(Channel::Sms)) {
                    prop_assert!(r.send_at.is_some_and(|s| s <= o) , "SMS to {c} at {:?} after the opt-out at {o}", r.send_at);
                }
            }
            // The first arm sticks: one arm per (rule, customer).
            for rule in ["welcome", "cart", "browse"] {
                let arms: std::collections::BTreeSet<&str> = rows.iter().filter(|r| r.customer_id == c && r.rule == rule).map(|r| r.arm.as_str()).collect();
                prop_assert!(arms.len() <= 1, "{c} {rule}: arms {arms:?}");
            }
        }
        for r in &delivered {
            let local = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(r.send_at.expect("send_at")).expect("time").with_timezone(&tz);
            let h = chrono::Timelike::hour(&local);
            prop_assert!((8..21).contains(&h), "{} sent at {local} local", r.send_id);
        }
    }
}
