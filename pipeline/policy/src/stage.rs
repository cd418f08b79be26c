//! The policy stage: from a batch's firings to recorded decisions.
//!
//! For each firing, in this order: the experiment arm (the global control
//! group first, then the rule's split, sticky), then the chain
//! ([`crate::chain::decide`]) with the customer's consent, zone and
//! message history. Holdout firings become ghosts; the scheduled arm waits
//! for the rule's local send time. Messages that wait are kept as pending
//! and cancelled when one of the rule's `cancel_on` events arrives first.
//! Every decision becomes one [`SendRow`].

/// Maps keyed by customer: a seeded fast hash, not SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use chrono_tz::Tz;
use serde_json::{Map, Value};

use kairos_experiments::{Arm, Assigner, Design, GlobalControl};

use crate::caps::SentMessage;
use crate::chain::{self, Customer, Message, Outcome, PastMessage, Policy};
use crate::consent::{Channel, Consent};
use crate::priority::{self, Contender};

/// What the stage needs of a rule.
#[derive(Debug, Clone)]
pub struct RuleMeta {
    /// Rule name (also the experiment name).
    pub name: String,
    /// Channel; `None` for `preferred`.
    pub channel: Option<Channel>,
    /// Priority.
    pub priority: i64,
    /// Cooldown, µs.
    pub cooldown_us: i64,
    /// Events that cancel a pending message.
    pub cancel_on: Vec<String>,
    /// Transactional: no caps, quiet hours, marketing consent or control group.
    pub transactional: bool,
    /// Tags.
    pub tags: Vec<String>,
    /// Lost to a higher priority: defer (true) or suppress.
    pub defer_on_conflict: bool,
    /// Capped: defer (true) or skip.
    pub defer_when_capped: bool,
    /// Arm split.
    pub design: Design,
    /// Scheduled arm's local send time, minutes after midnight.
    pub scheduled_at_minutes: u32,
}

/// A firing handed to the stage.
#[derive(Debug, Clone)]
pub struct Fired {
    /// Rule.
    pub rule: String,
    /// Canonical customer.
    pub customer_id: String,
    /// Trigger instance.
    pub dedupe_key: String,
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// To deliver at `send_at`.
    Send,
    /// Holdout: decided, never delivered.
    Ghost,
    /// Not sent; see the reason.
    Suppressed,
    /// A pending message cancelled before its time.
    Cancelled,
}

impl Decision {
    /// As written in `sends/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Send => "send",
            Decision::Ghost => "ghost",
            Decision::Suppressed => "suppressed",
            Decision::Cancelled => "cancelled",
        }
    }
}

/// One decision, a row of `sends/`.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRow {
    /// Stable id: rule, step, customer and key.
    pub send_id: String,
    /// Rule.
    pub rule: String,
    /// Sequence step.
    pub step: u32,
    /// Customer.
    pub customer_id: String,
    /// Trigger instance.
    pub dedupe_key: String,
    /// Experiment arm.
    pub arm: Arm,
    /// Variant of the triggered arm, or `global_control`.
    pub variant: Option<String>,
    /// Channel chosen (none when suppressed before one was).
    pub channel: Option<Channel>,
    /// What was decided.
    pub decision: Decision,
    /// Why (suppression reason, or why it waits).
    pub reason: Option<String>,
    /// When it goes (send and ghost), µs.
    pub send_at: Option<i64>,
    /// When this was decided, µs.
    pub decided_at: i64,
    /// Whether the assignment was new (a row for `assignments/`).
    pub new_assignment: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    row: SendRow,
    cancel_on: Vec<String>,
}

/// The stage's memory: assignments, message history, pending messages.
pub struct Stage {
    rules: HashMap<String, std::sync::Arc<RuleMeta>>,
    zones: HashMap<String, Tz>,
    policy: Policy,
    global: Option<GlobalControl>,
    default_zone: Tz,
    assigner: Assigner,
    history: HashMap<String, Vec<PastMessage>>,
    opt_outs: HashMap<String, Vec<String>>,
    /// Waiting messages by customer: an event looks only at its customer's.
    pending: HashMap<String, Vec<Pending>>,
    /// How long a message that lost on priority waits when deferred, µs.
    pub priority_wait_us: i64,
    /// How far back history is kept: the longest cap window or cooldown.
    retention_us: i64,
}

impl Stage {
    /// A stage for `rules`.
    pub fn new(
        rules: Vec<RuleMeta>,
        policy: Policy,
        global: Option<GlobalControl>,
        default_zone: Tz,
    ) -> Stage {
        const WEEK: i64 = 7 * 86_400_000_000;
        let caps = policy.caps.iter().map(|c| match c.window {
            crate::caps::CapWindow::Rolling(w) => w,
            crate::caps::CapWindow::Day | crate::caps::CapWindow::Week => WEEK,
        });
        let cooldowns = rules.iter().map(|r| r.cooldown_us);
        let retention_us = caps.chain(cooldowns).fold(WEEK, i64::max);
        Stage {
            retention_us,
            rules: rules
                .into_iter()
                .map(|r| (r.name.clone(), std::sync::Arc::new(r)))
                .collect(),
            zones: HashMap::default(),
            policy,
            global,
            default_zone,
            assigner: Assigner::default(),
            history: HashMap::default(),
            opt_outs: HashMap::default(),
            pending: HashMap::default(),
            priority_wait_us: 3_600_000_000,
        }
    }

    /// Restores an assignment read from `assignments/`.
    pub fn remember_assignment(
        &mut self,
        experiment: &str,
        customer_id: &str,
        a: kairos_experiments::Assignment,
    ) {
        self.assigner.remember(experiment, customer_id, a);
    }

    /// Rebuilds history and pending messages from past `sends/` rows, in
    /// decision order.
    pub fn restore(&mut self, rows: Vec<SendRow>) {
        let last = rows.iter().map(|r| r.decided_at).max().unwrap_or(i64::MIN);
        for row in rows {
            match (row.decision, row.channel, row.send_at) {
                (Decision::Send | Decision::Ghost, Some(ch), Some(at)) => {
                    let rule = self.rules.get(&row.rule);
                    self.history
                        .entry(row.customer_id.clone())
                        .or_default()
                        .push(PastMessage {
                            rule: row.rule.clone(),
                            step: row.step,
                            dedupe_key: row.dedupe_key.clone(),
                            transactional: rule.is_some_and(|r| r.transactional),
                            sent: SentMessage {
                                at,
                                channel: ch.as_str().into(),
                                tags: rule.map(|r| r.tags.clone()).unwrap_or_default(),
                            },
                        });
                    if at > last {
                        let cancel_on = rule.map(|r| r.cancel_on.clone()).unwrap_or_default();
                        self.pending
                            .entry(row.customer_id.clone())
                            .or_default()
                            .push(Pending { row, cancel_on });
                    }
                }
                (Decision::Cancelled, ..) => {
                    if let Some(waiting) = self.pending.get_mut(&row.customer_id) {
                        waiting.retain(|p| p.row.send_id != row.send_id);
                    }
                    if let Some(h) = self.history.get_mut(&row.customer_id) {
                        h.retain(|m| {
                            !(m.rule == row.rule
                                && m.step == row.step
                                && m.dedupe_key == row.dedupe_key)
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// Adds a past message to a customer's history (benchmarks, imports).
    pub fn add_history(&mut self, customer_id: &str, message: PastMessage) {
        self.history
            .entry(customer_id.to_string())
            .or_default()
            .push(message);
    }

    /// Messages waiting (deferred, or the scheduled arm).
    pub fn pending(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// An event of the batch: opt-outs change consent; `cancel_on` events
    /// cancel the customer's pending messages due after `at`.
    pub fn observe(
        &mut self,
        customer_id: &str,
        event_type: &str,
        at: i64,
        now: i64,
    ) -> Vec<SendRow> {
        if Consent::is_opt_out(event_type) {
            self.opt_outs
                .entry(customer_id.to_string())
                .or_default()
                .push(event_type.to_string());
        }
        let mut cancelled = Vec::new();
        let Some(waiting) = self.pending.get_mut(customer_id) else {
            return cancelled;
        };
        waiting.retain(|p| {
            let hit = p.row.customer_id == customer_id
                && p.row.send_at.is_some_and(|s| s > at)
                && p.cancel_on.iter().any(|c| c == event_type);
            if hit {
                let mut row = p.row.clone();
                row.decision = Decision::Cancelled;
                row.reason = Some(format!("cancel_on:{event_type}"));
                row.decided_at = now;
                row.new_assignment = false;
                cancelled.push(row);
            }
            !hit
        });
        // A cancelled message no longer counts against caps.
        for row in &cancelled {
            if let Some(h) = self.history.get_mut(customer_id) {
                h.retain(|m| {
                    !(m.rule == row.rule && m.dedupe_key == row.dedupe_key && m.step == row.step)
                });
            }
        }
        cancelled
    }

    /// Pending messages whose time has come by `now` (for delivery).
    pub fn due(&mut self, now: i64) -> Vec<SendRow> {
        let mut due = Vec::new();
        self.pending.retain(|_, waiting| {
            waiting.retain(|p| {
                let ready = p.row.send_at.is_some_and(|s| s <= now);
                if ready {
                    due.push(p.row.clone());
                }
                !ready
            });
            !waiting.is_empty()
        });
        due.sort_by(|a, b| a.send_at.cmp(&b.send_at).then(a.send_id.cmp(&b.send_id)));
        due
    }

    /// Decides the batch's firings at `now`; `traits` gives a customer's profile.
    pub fn decide<'a>(
        &mut self,
        fired: &[Fired],
        now: i64,
        traits: impl Fn(&str) -> Option<&'a Map<String, Value>>,
    ) -> Vec<SendRow> {
        let contenders: Vec<Contender> = fired
            .iter()
            .filter_map(|f| {
                let r = self.rules.get(&f.rule)?;
                Some(Contender {
                    customer_id: &f.customer_id,
                    rule: &r.name,
                    priority: r.priority,
                    transactional: r.transactional,
                })
            })
            .collect();
        let lost: Vec<Option<String>> = priority::resolve(&contenders)
            .into_iter()
            .map(|w| w.map(str::to_string))
            .collect();
        let known: Vec<&Fired> = fired
            .iter()
            .filter(|f| self.rules.contains_key(&f.rule))
            .collect();
        let mut rows = Vec::new();
        for (f, lost_to) in known.into_iter().zip(lost) {
            let Some(rule) = self.rules.get(&f.rule).cloned() else {
                continue;
            };
            let empty = Map::new();
            let t = traits(&f.customer_id).unwrap_or(&empty);
            let mut consent = Consent::from_traits(t);
            for e in self.opt_outs.get(&f.customer_id).into_iter().flatten() {
                consent.apply_event(e);
            }
            let preferred = t
                .get("preferred_channel")
                .and_then(Value::as_str)
                .and_then(Channel::parse);
            let zone: Tz = match t.get("timezone").and_then(Value::as_str) {
                Some(z) => match self.zones.get(z) {
                    Some(tz) => *tz,
                    None => {
                        let tz = z.parse().unwrap_or(self.default_zone);
                        self.zones.insert(z.to_string(), tz);
                        tz
                    }
                },
                None => self.default_zone,
            };
            // Assignment first, before any policy.
            let in_control = !rule.transactional
                && self
                    .global
                    .as_ref()
                    .is_some_and(|g| g.contains(&f.customer_id));
            let (arm, variant, new_assignment) = if in_control {
                (Arm::Holdout, Some("global_control".to_string()), false)
            } else {
                let (a, new) = self
                    .assigner
                    .assign(&rule.name, &rule.design, &f.customer_id);
                (a.arm, a.variant, new)
            };
            let not_before = match arm {
                Arm::Scheduled => chain::next_local_time(now, rule.scheduled_at_minutes, zone),
                _ => now,
            };
            let keep_from = now - self.retention_us;
            let history = self.history.entry(f.customer_id.clone()).or_default();
            // Only caps and cooldowns look back; "once ever" is the rule
            // engine's (it never fires a (rule, customer, key) twice).
            history.retain(|m| m.sent.at >= keep_from);
            let msg = Message {
                rule: &rule.name,
                step: 0,
                dedupe_key: &f.dedupe_key,
                channel: rule.channel,
                tags: &rule.tags,
                transactional: rule.transactional,
                cooldown_us: rule.cooldown_us,
                defer_when_capped: rule.defer_when_capped,
                not_before,
                ghost: arm == Arm::Holdout,
                lost_to: lost_to.as_deref().map(|w| (w, rule.defer_on_conflict)),
                priority_wait_us: self.priority_wait_us,
            };
            let customer = Customer {
                consent: &consent,
                preferred,
                zone,
                history,
            };
            let outcome = chain::decide(&msg, &customer, &self.policy, now);
            let (decision, channel, send_at, reason) = match outcome {
                Outcome::Send {
                    channel,
                    at,
                    reason,
                } => (Decision::Send, Some(channel), Some(at), reason),
                Outcome::Ghost {
                    channel,
                    at,
                    reason,
                } => (Decision::Ghost, Some(channel), Some(at), reason),
                Outcome::Suppressed { reason } => (Decision::Suppressed, None, None, Some(reason)),
            };
            let row = SendRow {
                send_id: format!("{}:0:{}:{}", rule.name, f.customer_id, f.dedupe_key),
                rule: rule.name.clone(),
                step: 0,
                customer_id: f.customer_id.clone(),
                dedupe_key: f.dedupe_key.clone(),
                arm,
                variant,
                channel,
                decision,
                reason,
                send_at,
                decided_at: now,
                new_assignment,
            };
            if let (Some(ch), Some(at)) = (channel, send_at) {
                history.push(PastMessage {
                    rule: rule.name.clone(),
                    step: 0,
                    dedupe_key: f.dedupe_key.clone(),
                    transactional: rule.transactional,
                    sent: SentMessage {
                        at,
                        channel: ch.as_str().into(),
                        tags: rule.tags.clone(),
                    },
                });
                if at > now {
                    self.pending
                        .entry(row.customer_id.clone())
                        .or_default()
                        .push(Pending {
                            row: row.clone(),
                            cancel_on: rule.cancel_on.clone(),
                        });
                }
            }
            rows.push(row);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const H: i64 = 3_600_000_000;
    // 2026-07-01T00:00:00Z
    const DAY0: i64 = 1_782_864_000_000_000;

    fn rule(name: &str, priority: i64, holdout: u8, scheduled: u8) -> RuleMeta {
        RuleMeta {
            name: name.into(),
            channel: Some(Channel::Email),
            priority,
            cooldown_us: 0,
            cancel_on: vec!["purchase".into()],
            transactional: false,
            tags: vec![],
            defer_on_conflict: false,
            defer_when_capped: true,
            design: Design::from_percent(name, holdout, scheduled),
            scheduled_at_minutes: 600,
        }
    }

    fn fired(rule: &str, customer: &str) -> Fired {
        Fired {
            rule: rule.into(),
            customer_id: customer.into(),
            dedupe_key: "k".into(),
        }
    }

    fn traits() -> Map<String, Value> {
        json!({"email": "a@x.example", "consent": {"email": true}, "timezone": "UTC"})
            .as_object()
            .expect("object")
            .clone()
    }

    #[test]
    fn two_rules_at_once_send_one_message_the_higher_priority() {
        let mut s = Stage::new(
            vec![rule("cart", 60, 0, 0), rule("browse", 40, 0, 0)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = traits();
        let rows = s.decide(
            &[fired("browse", "c1"), fired("cart", "c1")],
            DAY0 + 12 * H,
            |_| Some(&t),
        );
        let got: Vec<(&str, Decision, Option<&str>)> = rows
            .iter()
            .map(|r| (r.rule.as_str(), r.decision, r.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("browse", Decision::Suppressed, Some("priority:cart")),
                ("cart", Decision::Send, None)
            ]
        );
    }

    #[test]
    fn holdout_is_a_ghost_and_global_control_holds_out_marketing_only() {
        let mut s = Stage::new(
            vec![rule("cart", 0, 100, 0)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = traits();
        let rows = s.decide(&[fired("cart", "c1")], DAY0, |_| Some(&t));
        assert_eq!(
            (rows[0].arm, rows[0].decision),
            (Arm::Holdout, Decision::Ghost)
        );
        assert!(rows[0].new_assignment);

        let mut order = rule("order", 100, 0, 0);
        order.transactional = true;
        let mut s = Stage::new(
            vec![rule("cart", 0, 0, 0), order],
            Policy::default(),
            Some(GlobalControl::new("g", 100.0)),
            chrono_tz::UTC,
        );
        let rows = s.decide(&[fired("cart", "c1"), fired("order", "c1")], DAY0, |_| {
            Some(&t)
        });
        assert_eq!(
            (rows[0].decision, rows[0].variant.as_deref()),
            (Decision::Ghost, Some("global_control"))
        );
        assert_eq!(
            (rows[1].decision, rows[1].arm),
            (Decision::Send, Arm::Triggered)
        );
    }

    #[test]
    fn the_scheduled_arm_waits_and_a_purchase_first_cancels_it() {
        let mut s = Stage::new(
            vec![rule("cart", 0, 0, 100)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = traits();
        let now = DAY0 + 12 * H; // noon UTC: the next 10:00 is tomorrow
        let rows = s.decide(&[fired("cart", "c1"), fired("cart", "c2")], now, |_| {
            Some(&t)
        });
        assert_eq!(rows[0].send_at, Some(DAY0 + 34 * H));
        assert_eq!(rows[0].reason.as_deref(), Some("scheduled"));
        assert_eq!(s.pending(), 2);
        // c1 buys before 10:00; a page view cancels nothing.
        assert!(s.observe("c1", "page", now + H, now + H).is_empty());
        let cancelled = s.observe("c1", "purchase", now + 2 * H, now + 2 * H);
        assert_eq!(cancelled.len(), 1);
        assert_eq!(
            (cancelled[0].decision, cancelled[0].reason.as_deref()),
            (Decision::Cancelled, Some("cancel_on:purchase"))
        );
        assert!(s.due(DAY0 + 33 * H).is_empty());
        let due = s.due(DAY0 + 34 * H);
        assert_eq!(
            due.iter()
                .map(|r| r.customer_id.as_str())
                .collect::<Vec<_>>(),
            vec!["c2"]
        );
    }

    #[test]
    fn an_opt_out_event_is_honoured_at_once() {
        let mut s = Stage::new(
            vec![rule("cart", 0, 0, 0)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = traits();
        s.observe("c1", "email_unsubscribe", DAY0, DAY0);
        let rows = s.decide(&[fired("cart", "c1")], DAY0 + H, |_| Some(&t));
        assert_eq!(
            (rows[0].decision, rows[0].reason.as_deref()),
            (Decision::Suppressed, Some("no_consent:email"))
        );
    }
}
