//! The policy stage: from a batch's firings to recorded decisions.
//!
//! For each firing, in this order: the experiment arm (the global control
//! group first, then the rule's split, sticky), then the chain
//! ([`crate::chain::decide`]) with the customer's consent, zone and
//! message history. Holdout firings become ghosts; the scheduled arm waits
//! for the rule's local send time. Messages that wait are kept as pending
//! and cancelled when one of the rule's `cancel_on` events arrives first.
//!
//! A rule with follow-up steps starts a sequence when it fires: each step
//! is decided through the chain on its own when its time comes (also on a
//! batch without events), in the arm the firing was assigned. A `cancel_on`
//! event (the conversion) ends the sequence; a step's own `stop_on` events
//! skip that step. Every decision becomes one [`SendRow`].

/// Maps keyed by customer: a seeded fast hash, not SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono_tz::Tz;
use serde_json::{Map, Value};

use kairos_experiments::{Arm, Assigner, Design, GlobalControl};

use crate::caps::SentMessage;
use crate::chain::{self, Customer, Message, Outcome, PastMessage, Policy};
use crate::consent::{Channel, Consent};
use crate::priority::{self, Contender};

/// A follow-up step as the stage needs it.
#[derive(Debug, Clone)]
pub struct StepMeta {
    /// 1, 2, …
    pub number: u32,
    /// After the sequence started, µs.
    pub after_us: i64,
    /// Channel; `None` for `preferred`.
    pub channel: Option<Channel>,
    /// Events that skip this step.
    pub stop_on: Vec<String>,
}

/// What the stage needs of a rule.
#[derive(Debug, Clone)]
pub struct RuleMeta {
    /// Rule name (also the experiment name); shared by every message in
    /// the history.
    pub name: Arc<str>,
    /// Channel; `None` for `preferred`.
    pub channel: Option<Channel>,
    /// Priority.
    pub priority: i64,
    /// Cooldown, µs.
    pub cooldown_us: i64,
    /// Events that cancel a pending message and end a sequence.
    pub cancel_on: Vec<String>,
    /// Transactional: no caps, quiet hours, marketing consent or control group.
    pub transactional: bool,
    /// Tags.
    pub tags: Arc<[String]>,
    /// Lost to a higher priority: defer (true) or suppress.
    pub defer_on_conflict: bool,
    /// Capped: defer (true) or skip.
    pub defer_when_capped: bool,
    /// Arm split.
    pub design: Design,
    /// Scheduled arm's local send time, minutes after midnight.
    pub scheduled_at_minutes: u32,
    /// Follow-up steps (empty: one message).
    pub steps: Vec<StepMeta>,
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

/// What the stage reads of a customer: profile traits and the opt-out
/// events they sent. The rules' [`kairos_rules::state::State`] is one.
pub trait Customers {
    /// Profile traits (addresses, consent, zone, preferred channel).
    fn traits(&self, customer_id: &str) -> Option<&Map<String, Value>>;
    /// Opt-out event types the customer sent, ever.
    fn opt_outs(&self, customer_id: &str) -> impl Iterator<Item = &str>;
}

impl Customers for kairos_rules::state::State {
    fn traits(&self, customer_id: &str) -> Option<&Map<String, Value>> {
        kairos_rules::state::State::traits(self, customer_id)
    }
    fn opt_outs(&self, customer_id: &str) -> impl Iterator<Item = &str> {
        // Iterators are not covariant in their item: shorten it here.
        kairos_rules::state::State::opt_outs(self, customer_id).map(|e| -> &str { e })
    }
}

/// Customers held in memory (tests and benchmarks).
#[derive(Debug, Default, Clone)]
pub struct Profiles {
    /// Traits by customer.
    pub traits: HashMap<String, Map<String, Value>>,
    /// Traits of any customer not in `traits`.
    pub default: Option<Map<String, Value>>,
    /// Opt-out events by customer.
    pub opt_outs: HashMap<String, Vec<String>>,
}

impl Customers for Profiles {
    fn traits(&self, customer_id: &str) -> Option<&Map<String, Value>> {
        self.traits.get(customer_id).or(self.default.as_ref())
    }
    fn opt_outs(&self, customer_id: &str) -> impl Iterator<Item = &str> {
        self.opt_outs
            .get(customer_id)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
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
    /// A pending message or a sequence step cancelled before its time.
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

/// `rule:step:customer:key`.
fn send_id(rule: &str, step: u32, customer_id: &str, key: &str) -> String {
    // Built by hand: `format!` costs several times more, once per decision.
    let step = step.to_string();
    let mut id = String::with_capacity(rule.len() + step.len() + customer_id.len() + key.len() + 3);
    for (i, part) in [rule, &step, customer_id, key].into_iter().enumerate() {
        if i > 0 {
            id.push(':');
        }
        id.push_str(part);
    }
    id
}

#[derive(Debug, Clone)]
struct Pending {
    row: SendRow,
    cancel_on: Vec<String>,
    transactional: bool,
}

/// A sequence under way: the steps not yet decided.
#[derive(Debug, Clone)]
struct Running {
    rule: Arc<RuleMeta>,
    dedupe_key: String,
    arm: Arm,
    variant: Option<String>,
    started: i64,
    /// Step numbers still to decide, in order.
    left: Vec<u32>,
}

impl Running {
    fn due(&self, number: u32) -> i64 {
        self.started + self.step(number).map_or(0, |s| s.after_us)
    }

    fn step(&self, number: u32) -> Option<&StepMeta> {
        self.rule.steps.get(number as usize - 1)
    }

    fn next_due(&self) -> Option<i64> {
        self.left.first().map(|n| self.due(*n))
    }
}

/// One message to decide: a firing's (step 0) or a sequence step's.
struct Ask<'a> {
    rule: &'a Arc<RuleMeta>,
    customer_id: &'a str,
    dedupe_key: &'a str,
    step: u32,
    channel: Option<Channel>,
    arm: Arm,
    variant: Option<String>,
    new_assignment: bool,
    not_before: i64,
    lost_to: Option<&'a str>,
}

/// The stage's memory: assignments, message history, pending messages,
/// sequences under way.
pub struct Stage {
    rules: HashMap<String, Arc<RuleMeta>>,
    zones: HashMap<String, Tz>,
    policy: Policy,
    global: Option<GlobalControl>,
    default_zone: Tz,
    assigner: Assigner,
    history: HashMap<String, Vec<PastMessage>>,
    /// Waiting messages by customer: an event looks only at its customer's.
    pending: HashMap<String, Vec<Pending>>,
    /// No waiting message is due before this (it may be earlier than the
    /// earliest left, after a cancellation): [`Stage::release`] walks the
    /// waiting messages only once a batch's clock reaches it.
    earliest_waiting: i64,
    /// Sequences under way by customer.
    sequences: HashMap<String, Vec<Running>>,
    /// (next step due, customer): which sequences to look at, in time
    /// order. Entries may be stale (the step was cancelled); they are
    /// checked when they come up.
    steps_due: BTreeSet<(i64, String)>,
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
        let retention_us = caps
            .chain(cooldowns)
            .chain(std::iter::once(policy.priority_window_us))
            .fold(WEEK, i64::max);
        Stage {
            retention_us,
            rules: rules
                .into_iter()
                .map(|r| (r.name.to_string(), Arc::new(r)))
                .collect(),
            zones: HashMap::default(),
            policy,
            global,
            default_zone,
            assigner: Assigner::default(),
            history: HashMap::default(),
            pending: HashMap::default(),
            earliest_waiting: i64::MAX,
            sequences: HashMap::default(),
            steps_due: BTreeSet::new(),
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

    /// Rebuilds history, pending messages and sequences from past `sends/`
    /// rows, in decision order.
    /// `released_by`: the clock of the last finished batch (messages due
    /// by it went to delivery and no longer wait); without it, the latest
    /// decision's time.
    pub fn restore(&mut self, mut rows: Vec<SendRow>, released_by: Option<i64>) {
        let last = released_by
            .unwrap_or_else(|| rows.iter().map(|r| r.decided_at).max().unwrap_or(i64::MIN));
        // A cancellation is final, and it carries the time of the event
        // that caused it: a late purchase can date it before the decision
        // it cancels. Applied in time order it would come first and find
        // nothing to cancel, and the message would go after a restart. So
        // sequences start first (step 0), their steps follow, and
        // cancellations come last.
        rows.sort_by_key(|r| (r.decision == Decision::Cancelled, r.step > 0));
        for row in rows {
            let rule = self.rules.get(&row.rule).cloned();
            if let Some(rule) = &rule
                && !rule.steps.is_empty()
            {
                self.restore_sequence(rule, &row);
            }
            match (row.decision, row.channel, row.send_at) {
                (Decision::Send | Decision::Ghost, Some(ch), Some(at)) => {
                    self.history
                        .entry(row.customer_id.clone())
                        .or_default()
                        .push(past_message(
                            rule.as_deref(),
                            &row.rule,
                            row.step,
                            &row.dedupe_key,
                            ch,
                            at,
                        ));
                    if at > last {
                        let cancel_on = rule
                            .as_ref()
                            .map(|r| r.cancel_on.clone())
                            .unwrap_or_default();
                        let transactional = rule.is_some_and(|r| r.transactional);
                        self.wait(Pending {
                            row,
                            cancel_on,
                            transactional,
                        });
                    }
                }
                (Decision::Cancelled, ..) => {
                    if let Some(waiting) = self.pending.get_mut(&row.customer_id) {
                        waiting.retain(|p| p.row.send_id != row.send_id);
                    }
                    self.forget(&row);
                }
                _ => {}
            }
        }
        for (customer, runs) in &self.sequences {
            for due in runs.iter().filter_map(Running::next_due) {
                self.steps_due.insert((due, customer.clone()));
            }
        }
    }

    /// A step-0 row starts a sequence; a later step's row (whatever was
    /// decided) marks that step done.
    fn restore_sequence(&mut self, rule: &Arc<RuleMeta>, row: &SendRow) {
        if row.step == 0 {
            if starts_sequence(row) {
                self.sequences
                    .entry(row.customer_id.clone())
                    .or_default()
                    .push(Running {
                        rule: rule.clone(),
                        dedupe_key: row.dedupe_key.clone(),
                        arm: row.arm,
                        variant: row.variant.clone(),
                        started: row.decided_at,
                        left: rule.steps.iter().map(|s| s.number).collect(),
                    });
            }
            return;
        }
        if let Some(runs) = self.sequences.get_mut(&row.customer_id) {
            for r in runs
                .iter_mut()
                .filter(|r| *r.rule.name == *row.rule && r.dedupe_key == row.dedupe_key)
            {
                r.left.retain(|n| *n != row.step);
            }
            runs.retain(|r| !r.left.is_empty());
        }
    }

    /// A cancelled message no longer counts against caps.
    fn forget(&mut self, row: &SendRow) {
        if let Some(h) = self.history.get_mut(&row.customer_id) {
            h.retain(|m| {
                !(*m.rule == *row.rule && m.step == row.step && m.dedupe_key == row.dedupe_key)
            });
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

    /// Sequence steps not yet decided.
    pub fn steps_waiting(&self) -> usize {
        self.sequences
            .values()
            .flatten()
            .map(|r| r.left.len())
            .sum()
    }

    /// When the next sequence step comes due: a batch without events
    /// then still has work.
    pub fn next_step_due(&self) -> Option<i64> {
        self.steps_due.first().map(|(due, _)| *due)
    }

    /// An event of the batch: a `cancel_on` event cancels the customer's
    /// pending messages due after `at` and ends their sequences; a step's
    /// `stop_on` event skips that step; an opt-out cancels the marketing
    /// messages waiting for the channel it closes.
    pub fn observe(
        &mut self,
        customer_id: &str,
        event_type: &str,
        at: i64,
        now: i64,
    ) -> Vec<SendRow> {
        let mut cancelled = Vec::new();
        if let Some(waiting) = self.pending.get_mut(customer_id) {
            waiting.retain(|p| {
                let later = p.row.send_at.is_some_and(|s| s > at);
                let converted = p.cancel_on.iter().any(|c| c == event_type);
                let opted_out = !p.transactional
                    && p.row.decision == Decision::Send
                    && p.row
                        .channel
                        .is_some_and(|ch| Consent::opts_out_of(event_type, ch));
                let hit = later && (converted || opted_out);
                if hit {
                    let mut row = p.row.clone();
                    row.decision = Decision::Cancelled;
                    row.reason = Some(if converted {
                        format!("cancel_on:{event_type}")
                    } else {
                        format!("opt_out:{event_type}")
                    });
                    row.decided_at = now;
                    row.new_assignment = false;
                    cancelled.push(row);
                }
                !hit
            });
        }
        for row in &cancelled {
            self.forget(row);
        }
        if let Some(runs) = self.sequences.get_mut(customer_id) {
            // Steps due before the event still go; later ones stop.
            for run in runs.iter_mut().filter(|r| r.started < at) {
                let exit = run.rule.cancel_on.iter().any(|c| c == event_type);
                let (rule, started) = (run.rule.clone(), run.started);
                run.left.retain(|n| {
                    let Some(step) = rule.steps.get(*n as usize - 1) else {
                        return false;
                    };
                    let own = step.stop_on.iter().any(|c| c == event_type);
                    if started + step.after_us <= at || !(exit || own) {
                        return true;
                    }
                    cancelled.push(SendRow {
                        send_id: send_id(&rule.name, *n, customer_id, &run.dedupe_key),
                        rule: rule.name.to_string(),
                        step: *n,
                        customer_id: customer_id.to_string(),
                        dedupe_key: run.dedupe_key.clone(),
                        arm: run.arm,
                        variant: run.variant.clone(),
                        channel: step.channel,
                        decision: Decision::Cancelled,
                        reason: Some(if exit {
                            format!("exit:{event_type}")
                        } else {
                            format!("stop_on:{event_type}")
                        }),
                        send_at: None,
                        decided_at: now,
                        new_assignment: false,
                    });
                    false
                });
            }
            runs.retain(|r| !r.left.is_empty());
        }
        cancelled
    }

    /// Forgets the waiting messages due by `now`: the batch at `now` handed
    /// them to delivery, and a late event can no longer cancel them (found
    /// by kairos-sim seed 100603: a purchase dated before a welcome's time,
    /// arriving after the welcome went, recorded it cancelled; a restart,
    /// which no longer held it, did not).
    pub fn release(&mut self, now: i64) {
        // Every batch calls this: walk the waiting messages only when one
        // may be due.
        if now < self.earliest_waiting {
            return;
        }
        let mut earliest = i64::MAX;
        self.pending.retain(|_, waiting| {
            waiting.retain(|p| match p.row.send_at {
                Some(s) if s <= now => false,
                s => {
                    earliest = earliest.min(s.unwrap_or(i64::MAX));
                    true
                }
            });
            !waiting.is_empty()
        });
        self.earliest_waiting = earliest;
    }

    /// A message waits for its time (cancellable until then).
    fn wait(&mut self, p: Pending) {
        if let Some(s) = p.row.send_at {
            self.earliest_waiting = self.earliest_waiting.min(s);
        }
        self.pending
            .entry(p.row.customer_id.clone())
            .or_default()
            .push(p);
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

    /// Decides, at `now`: first the sequence steps that have come due, then
    /// the batch's firings.
    pub fn decide(
        &mut self,
        fired: &[Fired],
        now: i64,
        customers: &impl Customers,
    ) -> Vec<SendRow> {
        let mut rows = self.decide_due_steps(now, customers);
        rows.reserve(fired.len());
        let mut contenders: Vec<Contender> = Vec::with_capacity(fired.len());
        contenders.extend(fired.iter().filter_map(|f| {
            let r = self.rules.get(&f.rule)?;
            Some(Contender {
                customer_id: &f.customer_id,
                rule: &r.name,
                priority: r.priority,
                transactional: r.transactional,
            })
        }));
        let lost: Vec<Option<String>> = priority::resolve(&contenders)
            .into_iter()
            .map(|w| w.map(str::to_string))
            .collect();
        let known: Vec<&Fired> = fired
            .iter()
            .filter(|f| self.rules.contains_key(&f.rule))
            .collect();
        for (f, lost_to) in known.into_iter().zip(lost) {
            let Some(rule) = self.rules.get(&f.rule).cloned() else {
                continue;
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
            let row = self.decide_one(
                Ask {
                    rule: &rule,
                    customer_id: &f.customer_id,
                    dedupe_key: &f.dedupe_key,
                    step: 0,
                    channel: rule.channel,
                    arm,
                    variant,
                    new_assignment,
                    not_before: now,
                    lost_to: lost_to.as_deref(),
                },
                now,
                customers,
            );
            if !rule.steps.is_empty() && starts_sequence(&row) {
                let run = Running {
                    rule: rule.clone(),
                    dedupe_key: f.dedupe_key.clone(),
                    arm: row.arm,
                    variant: row.variant.clone(),
                    started: now,
                    left: rule.steps.iter().map(|s| s.number).collect(),
                };
                if let Some(due) = run.next_due() {
                    self.steps_due.insert((due, f.customer_id.clone()));
                }
                self.sequences
                    .entry(f.customer_id.clone())
                    .or_default()
                    .push(run);
            }
            rows.push(row);
        }
        rows
    }

    /// Decides every sequence step due by `now`, in due order, each at
    /// its due time.
    pub fn decide_due_steps(&mut self, now: i64, customers: &impl Customers) -> Vec<SendRow> {
        let mut rows = Vec::new();
        while let Some((due, customer)) = self.steps_due.first().cloned()
            && due <= now
        {
            self.steps_due.pop_first();
            let Some(mut runs) = self.sequences.remove(&customer) else {
                continue;
            };
            for run in &mut runs {
                while let Some(&n) = run.left.first() {
                    let due = run.due(n);
                    if due > now {
                        break;
                    }
                    run.left.remove(0);
                    let Some(step) = run.step(n).cloned() else {
                        continue;
                    };
                    let not_before = match run.arm {
                        Arm::Scheduled => chain::next_local_time(
                            due,
                            run.rule.scheduled_at_minutes,
                            self.zone(customers.traits(&customer)),
                        ),
                        _ => due,
                    };
                    rows.push(self.decide_one(
                        Ask {
                            rule: &run.rule,
                            customer_id: &customer,
                            dedupe_key: &run.dedupe_key,
                            step: n,
                            channel: step.channel,
                            arm: run.arm,
                            variant: run.variant.clone(),
                            new_assignment: false,
                            not_before,
                            lost_to: None,
                        },
                        // At its due time, as a live tick right after it
                        // would: a later batch end never shows.
                        due,
                        customers,
                    ));
                }
                if let Some(next) = run.next_due() {
                    self.steps_due.insert((next, customer.clone()));
                }
            }
            runs.retain(|r| !r.left.is_empty());
            if !runs.is_empty() {
                self.sequences.insert(customer, runs);
            }
        }
        rows
    }

    fn zone(&mut self, traits: Option<&Map<String, Value>>) -> Tz {
        let Some(z) = traits
            .and_then(|t| t.get("timezone"))
            .and_then(Value::as_str)
        else {
            return self.default_zone;
        };
        if let Some(tz) = self.zones.get(z) {
            return *tz;
        }
        // Once per name (it is cached): the customer's local times fall
        // back to the default zone.
        let tz = z.parse().unwrap_or_else(|_| {
            tracing::warn!(timezone = z, default = %self.default_zone, "a profile's time zone is not an IANA name; using the default zone for its quiet hours and schedules");
            self.default_zone
        });
        self.zones.insert(z.to_string(), tz);
        tz
    }

    /// One message through the chain; records it in history (and pending,
    /// when it waits).
    fn decide_one(&mut self, ask: Ask<'_>, now: i64, customers: &impl Customers) -> SendRow {
        let rule = ask.rule;
        let traits = customers.traits(ask.customer_id);
        let mut consent = traits.map(Consent::from_traits).unwrap_or_default();
        for e in customers.opt_outs(ask.customer_id) {
            consent.apply_event(e);
        }
        let preferred = traits
            .and_then(|t| t.get("preferred_channel"))
            .and_then(Value::as_str)
            .and_then(Channel::parse);
        let zone = self.zone(traits);
        let not_before = match (ask.step, ask.arm) {
            (0, Arm::Scheduled) => chain::next_local_time(now, rule.scheduled_at_minutes, zone),
            _ => ask.not_before,
        };
        let keep_from = now - self.retention_us;
        // Look up before inserting: `entry` would allocate the key each time.
        if !self.history.contains_key(ask.customer_id) {
            self.history.insert(ask.customer_id.to_string(), Vec::new());
        }
        let history = self
            .history
            .get_mut(ask.customer_id)
            .expect("inserted above");
        // Only caps, cooldowns and the priority window look back; "once
        // ever" is the rule engine's (it never fires a (rule, customer,
        // key) twice).
        history.retain(|m| m.sent.at >= keep_from);
        let msg = Message {
            rule: &rule.name,
            priority: rule.priority,
            step: ask.step,
            dedupe_key: ask.dedupe_key,
            channel: ask.channel,
            tags: &rule.tags,
            transactional: rule.transactional,
            cooldown_us: rule.cooldown_us,
            defer_when_capped: rule.defer_when_capped,
            not_before,
            ghost: ask.arm == Arm::Holdout,
            lost_to: ask.lost_to.map(|w| (w, rule.defer_on_conflict)),
            defer_on_conflict: rule.defer_on_conflict,
            priority_wait_us: self.priority_wait_us,
        };
        let customer = Customer {
            consent: &consent,
            preferred,
            zone,
            history,
        };
        let (decision, channel, send_at, reason) =
            match chain::decide(&msg, &customer, &self.policy, now) {
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
            send_id: send_id(&rule.name, ask.step, ask.customer_id, ask.dedupe_key),
            rule: rule.name.to_string(),
            step: ask.step,
            customer_id: ask.customer_id.to_string(),
            dedupe_key: ask.dedupe_key.to_string(),
            arm: ask.arm,
            variant: ask.variant,
            channel,
            decision,
            reason,
            send_at,
            decided_at: now,
            new_assignment: ask.new_assignment,
        };
        if let (Some(ch), Some(at)) = (channel, send_at) {
            history.push(past_message(
                Some(rule),
                &rule.name,
                ask.step,
                ask.dedupe_key,
                ch,
                at,
            ));
            if at > now {
                self.wait(Pending {
                    row: row.clone(),
                    cancel_on: rule.cancel_on.clone(),
                    transactional: rule.transactional,
                });
            }
        }
        row
    }
}

/// Whether a step-0 decision starts the rule's sequence: unless the
/// trigger itself was not eligible (a duplicate, or within the cooldown).
/// A step 0 suppressed for consent or priority still starts it; later
/// steps may go on other channels.
fn starts_sequence(row: &SendRow) -> bool {
    // A step 0 cancelled later was started by its own decision row; the
    // cancellation row starts nothing (restored, it made a second run).
    row.decision != Decision::Cancelled
        && !(row.decision == Decision::Suppressed
            && matches!(row.reason.as_deref(), Some("duplicate" | "cooldown")))
}

fn past_message(
    rule: Option<&RuleMeta>,
    name: &str,
    step: u32,
    dedupe_key: &str,
    channel: Channel,
    at: i64,
) -> PastMessage {
    PastMessage {
        rule: rule.map_or_else(|| Arc::from(name), |r| r.name.clone()),
        priority: rule.map_or(0, |r| r.priority),
        step,
        dedupe_key: dedupe_key.to_string(),
        transactional: rule.is_some_and(|r| r.transactional),
        sent: SentMessage {
            at,
            channel,
            tags: rule.map_or_else(|| Arc::from(Vec::new()), |r| r.tags.clone()),
        },
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
            tags: Arc::from(Vec::new()),
            defer_on_conflict: false,
            defer_when_capped: true,
            design: Design::from_percent(name, holdout, scheduled),
            scheduled_at_minutes: 600,
            steps: vec![],
        }
    }

    fn fired(rule: &str, customer: &str) -> Fired {
        Fired {
            rule: rule.into(),
            customer_id: customer.into(),
            dedupe_key: "k".into(),
        }
    }

    fn profiles() -> Profiles {
        Profiles {
            default: json!({"email": "a@x.example", "phone": "+15550100", "consent": {"email": true, "sms": true}, "timezone": "UTC"})
                .as_object()
                .cloned(),
            ..Profiles::default()
        }
    }

    #[test]
    fn two_rules_at_once_send_one_message_the_higher_priority() {
        let mut s = Stage::new(
            vec![rule("cart", 60, 0, 0), rule("browse", 40, 0, 0)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = profiles();
        let rows = s.decide(
            &[fired("browse", "c1"), fired("cart", "c1")],
            DAY0 + 12 * H,
            &t,
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
        let t = profiles();
        let rows = s.decide(&[fired("cart", "c1")], DAY0, &t);
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
        let rows = s.decide(&[fired("cart", "c1"), fired("order", "c1")], DAY0, &t);
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
        let t = profiles();
        let now = DAY0 + 12 * H; // noon UTC: the next 10:00 is tomorrow
        let rows = s.decide(&[fired("cart", "c1"), fired("cart", "c2")], now, &t);
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
        let mut t = profiles();
        t.opt_outs
            .insert("c1".into(), vec!["email_unsubscribe".into()]);
        let rows = s.decide(&[fired("cart", "c1")], DAY0 + H, &t);
        assert_eq!(
            (rows[0].decision, rows[0].reason.as_deref()),
            (Decision::Suppressed, Some("no_consent:email"))
        );
    }

    fn welcome_sequence() -> RuleMeta {
        let mut r = rule("welcome", 10, 0, 0);
        r.cancel_on = vec!["purchase".into()];
        r.steps = vec![
            StepMeta {
                number: 1,
                after_us: 72 * H,
                channel: Some(Channel::Sms),
                stop_on: vec![],
            },
            StepMeta {
                number: 2,
                after_us: 7 * 24 * H,
                channel: Some(Channel::Email),
                stop_on: vec!["review".into()],
            },
        ];
        r
    }

    fn steps(rows: &[SendRow]) -> Vec<(u32, Decision, Option<&str>)> {
        rows.iter()
            .map(|r| (r.step, r.decision, r.reason.as_deref()))
            .collect()
    }

    #[test]
    fn a_sequence_sends_each_step_when_due_and_exits_on_purchase() {
        let mut s = Stage::new(
            vec![welcome_sequence()],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = profiles();
        let start = DAY0 + 12 * H;
        let rows = s.decide(&[fired("welcome", "c1"), fired("welcome", "c2")], start, &t);
        assert_eq!(rows.len(), 2);
        assert_eq!(s.steps_waiting(), 4);
        assert_eq!(s.next_step_due(), Some(start + 72 * H));
        // Step 1 (SMS, three days later) for both, on an idle batch.
        let rows = s.decide(&[], start + 72 * H + 5, &t);
        assert_eq!(
            steps(&rows),
            vec![(1, Decision::Send, None), (1, Decision::Send, None)]
        );
        assert_eq!(rows[0].channel, Some(Channel::Sms));
        assert_eq!(rows[0].send_id, "welcome:1:c1:k");
        // c1 buys on day 5: step 2 of c1 ends, recorded; c2's goes on.
        let cancelled = s.observe("c1", "purchase", start + 120 * H, start + 120 * H);
        assert_eq!(
            steps(&cancelled),
            vec![(2, Decision::Cancelled, Some("exit:purchase"))]
        );
        let rows = s.decide(&[], start + 7 * 24 * H, &t);
        assert_eq!(
            rows.iter()
                .map(|r| (r.customer_id.as_str(), r.step))
                .collect::<Vec<_>>(),
            vec![("c2", 2)]
        );
        assert_eq!(s.steps_waiting(), 0);
        assert_eq!(s.next_step_due(), None);
    }

    /// Found by the simulator (kairos-sim seed 115): a purchase arriving
    /// late cancels a scheduled welcome and its sequence with rows dated
    /// at the purchase, before the welcome's own decision. Restored in
    /// time order, the cancellations came first and were lost: the welcome
    /// was pending again and its steps due.
    #[test]
    fn a_late_purchase_s_cancellations_survive_a_restart() {
        let mut sequence = welcome_sequence();
        sequence.design = Design::from_percent("welcome", 0, 100);
        let new_stage = || {
            Stage::new(
                vec![sequence.clone()],
                Policy::default(),
                None,
                chrono_tz::UTC,
            )
        };
        let mut s = new_stage();
        let t = profiles();
        let decided = DAY0 + 12 * H;
        let mut rows = s.decide(&[fired("welcome", "c1")], decided, &t);
        assert_eq!(s.pending(), 1, "scheduled for 10:00 tomorrow");
        // The purchase happened an hour before the decision, and arrives now.
        let cancelled = s.observe("c1", "purchase", decided - H, decided - H);
        assert_eq!(
            steps(&cancelled),
            vec![(0, Decision::Cancelled, Some("cancel_on:purchase"))]
        );
        rows.extend(cancelled);
        rows.sort_by_key(|r| r.decided_at); // as read back from sends/
        let mut restarted = new_stage();
        restarted.restore(rows.clone(), None);
        assert_eq!(restarted.pending(), 0, "the welcome stays cancelled");
        assert!(restarted.due(DAY0 + 40 * 24 * H).is_empty());
        // A later purchase ends the sequence once, as without the restart.
        let exit = DAY0 + 20 * H;
        let once = s.observe("c1", "purchase", exit, exit);
        let again = restarted.observe("c1", "purchase", exit, exit);
        assert_eq!(steps(&again), steps(&once));
        assert_eq!(restarted.steps_waiting(), s.steps_waiting());
    }

    /// Found by kairos-sim seed 100603: a purchase dated before a
    /// scheduled message's time but arriving after the message went
    /// recorded it cancelled (the stage still held it); a restart did not.
    #[test]
    fn a_message_that_went_is_not_cancelled_by_a_late_purchase() {
        let mut s = Stage::new(
            vec![rule("cart", 0, 0, 100)],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = profiles();
        let now = DAY0 + 12 * H;
        let rows = s.decide(&[fired("cart", "c1")], now, &t);
        let due = rows[0].send_at.expect("scheduled");
        // The batch at the message's time hands it to delivery.
        s.release(due);
        assert_eq!(s.pending(), 0);
        // A purchase dated before that time arrives afterwards.
        assert!(s.observe("c1", "purchase", due - H, due + H).is_empty());
    }

    #[test]
    fn a_step_s_stop_on_skips_only_that_step_and_late_events_do_not_undo_sent_steps() {
        let mut s = Stage::new(
            vec![welcome_sequence()],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let t = profiles();
        s.decide(&[fired("welcome", "c1")], DAY0, &t);
        // A review before step 2 skips step 2 only.
        let rows = s.observe("c1", "review", DAY0 + H, DAY0 + H);
        assert_eq!(
            steps(&rows),
            vec![(2, Decision::Cancelled, Some("stop_on:review"))]
        );
        // A purchase (arriving late) dated after step 1 was due leaves step 1
        // to be decided: it was due before the purchase.
        let rows = s.observe("c1", "purchase", DAY0 + 80 * H, DAY0 + 90 * H);
        assert!(rows.is_empty(), "{rows:?}");
        let rows = s.decide(&[], DAY0 + 90 * H, &t);
        assert_eq!(steps(&rows), vec![(1, Decision::Send, None)]);
    }

    #[test]
    fn holdout_sequences_are_ghosts_and_a_restart_resumes_where_it_stopped() {
        let mut r = welcome_sequence();
        r.design = Design::from_percent("welcome", 100, 0);
        let mut s = Stage::new(vec![r.clone()], Policy::default(), None, chrono_tz::UTC);
        let t = profiles();
        let mut all = s.decide(&[fired("welcome", "c1")], DAY0, &t);
        all.extend(s.decide(&[], DAY0 + 72 * H, &t));
        assert_eq!(
            steps(&all),
            vec![(0, Decision::Ghost, None), (1, Decision::Ghost, None)]
        );

        // A new stage from the recorded rows knows step 2 is still to come.
        let mut again = Stage::new(vec![r], Policy::default(), None, chrono_tz::UTC);
        again.restore(all, None);
        assert_eq!(again.steps_waiting(), 1);
        assert!(again.decide(&[], DAY0 + 100 * H, &t).is_empty());
        let rows = again.decide(&[], DAY0 + 7 * 24 * H, &t);
        assert_eq!(steps(&rows), vec![(2, Decision::Ghost, None)]);
        assert_eq!(rows[0].arm, Arm::Holdout);
    }

    #[test]
    fn steps_pass_the_chain_on_their_own() {
        let mut s = Stage::new(
            vec![welcome_sequence()],
            Policy::default(),
            None,
            chrono_tz::UTC,
        );
        let mut t = profiles();
        // No SMS consent: step 0 (email) and step 2 go, step 1 is suppressed.
        t.opt_outs.insert("c1".into(), vec!["sms_opt_out".into()]);
        let mut rows = s.decide(&[fired("welcome", "c1")], DAY0, &t);
        rows.extend(s.decide(&[], DAY0 + 7 * 24 * H, &t));
        assert_eq!(
            steps(&rows),
            vec![
                (0, Decision::Send, None),
                (1, Decision::Suppressed, Some("no_consent:sms")),
                (2, Decision::Send, None)
            ]
        );
    }
}
