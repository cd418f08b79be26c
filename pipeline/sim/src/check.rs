//! The invariants a run must keep, and its agreement with the oracle.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use kairos_policy::stage::Decision;
use kairos_policy::{CapScope, CapWindow, QuietHours};

use crate::run::Run;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub kind: &'static str,
    /// What broke it.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

fn v(kind: &'static str, detail: String) -> Violation {
    Violation { kind, detail }
}

/// Statuses that end a send's delivery.
const FINAL: [&str; 5] = [
    "sent",
    "failed",
    "unreachable",
    "in_doubt_dropped",
    "opted_out",
];

/// The invariants of one run on its own (`label` names it in details).
pub fn invariants(run: &Run, label: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    let transactional: BTreeSet<&str> = run
        .rules
        .iter()
        .filter(|r| r.transactional)
        .map(|r| r.name.as_str())
        .collect();

    // Firings: none twice.
    let mut seen = BTreeSet::new();
    for f in &run.firings {
        if !seen.insert(f) {
            out.push(v("firing_twice", format!("{label}: {f:?}")));
        }
    }
    // Decisions: none twice.
    let mut seen = BTreeSet::new();
    for s in &run.sends {
        if !seen.insert((&s.send_id, s.decision.as_str())) {
            out.push(v(
                "decision_twice",
                format!("{label}: {} {}", s.send_id, s.decision.as_str()),
            ));
        }
    }
    let decided: HashMap<&str, &kairos_policy::stage::SendRow> = run
        .sends
        .iter()
        .filter(|s| s.decision == Decision::Send)
        .map(|s| (s.send_id.as_str(), s))
        .collect();
    let cancelled: BTreeSet<&str> = run
        .sends
        .iter()
        .filter(|s| s.decision == Decision::Cancelled)
        .map(|s| s.send_id.as_str())
        .collect();

    // Deliveries: recorded sent at most once; every due send resolved.
    let mut sent = BTreeMap::<&str, usize>::new();
    let mut resolved = BTreeSet::new();
    for (id, status) in &run.deliveries {
        if status == "sent" {
            *sent.entry(id).or_default() += 1;
        }
        if FINAL.contains(&status.as_str()) {
            resolved.insert(id.as_str());
        }
    }
    for (id, n) in sent.iter().filter(|(_, n)| **n > 1) {
        out.push(v(
            "recorded_sent_twice",
            format!("{label}: {id} ({n} times)"),
        ));
    }
    let end = run.workload.steps.last().map_or(0, |s| s.at_us);
    for (id, s) in &decided {
        let due = s.send_at.is_some_and(|t| t <= end);
        if due && !cancelled.contains(id) && !resolved.contains(id) {
            out.push(v(
                "send_unresolved",
                format!(
                    "{label}: {id} was due at {:?} and has no final delivery row",
                    s.send_at
                ),
            ));
        }
    }

    // What the providers took: decided, on its channel, at most once where
    // the channel says so, never after an opt-out was durable.
    let mut taken = BTreeMap::<&str, usize>::new();
    for a in &run.accepted {
        *taken.entry(&a.send_id).or_default() += 1;
        match decided.get(a.send_id.as_str()) {
            None => out.push(v(
                "sent_without_decision",
                format!(
                    "{label}: {} reached the provider with no send decision",
                    a.send_id
                ),
            )),
            Some(s) if s.channel != Some(a.channel) => out.push(v(
                "sent_on_other_channel",
                format!(
                    "{label}: {} decided for {:?}, sent on {}",
                    a.send_id,
                    s.channel,
                    a.channel.as_str()
                ),
            )),
            Some(_) => {}
        }
        if !transactional.contains(a.rule.as_str()) {
            for scope in [a.channel.as_str(), "all"] {
                // Delivered once the step carrying the opt-out was
                // durable: the batch that took it, or a later one, handed
                // the message over.
                if let Some(k) = run
                    .workload
                    .opt_outs
                    .get(&(a.customer_id.clone(), scope.to_string()))
                    && a.step > *k
                {
                    out.push(v(
                            "sent_after_opt_out",
                            format!(
                                "{label}: {} to {} with {} steps durable, after opting out of {scope} in step {k}",
                                a.send_id, a.customer_id, a.step
                            ),
                        ));
                }
            }
        }
    }
    for (id, n) in taken.iter().filter(|(_, n)| **n > 1) {
        let channel = run
            .accepted
            .iter()
            .find(|a| a.send_id == *id)
            .map(|a| a.channel.as_str());
        if channel.is_some_and(|c| run.setup.at_most_once.iter().any(|m| m == c)) {
            out.push(v(
                "delivered_twice",
                format!("{label}: {id} reached an at-most-once provider {n} times"),
            ));
        }
    }

    // Assignments: a customer's arm never changes.
    let mut arms = BTreeMap::<(&str, &str), &str>::new();
    for (e, c, a) in &run.assignments {
        if let Some(before) = arms.insert((e, c), a)
            && before != a
        {
            out.push(v(
                "arm_changed",
                format!("{label}: {c} in {e}: {before} then {a}"),
            ));
        }
    }

    out.extend(timeline(run, label, &transactional, &cancelled));
    out
}

/// Caps and quiet hours over each customer's marketing sends.
fn timeline(
    run: &Run,
    label: &str,
    transactional: &BTreeSet<&str>,
    cancelled: &BTreeSet<&str>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    // A setting the checker cannot read fails the run: skipping it would
    // pass what was never checked.
    let unreadable = |what: String| v("checker_setup", format!("{label}: {what}"));
    let mut zone_of: HashMap<&str, chrono_tz::Tz> = HashMap::new();
    for c in &run.workload.customers {
        match c.zone.parse() {
            Ok(z) => {
                zone_of.insert(c.id.as_str(), z);
            }
            Err(e) => out.push(unreadable(format!("zone {:?}: {e}", c.zone))),
        }
    }
    let quiet = match run.setup.quiet_hours.as_str() {
        "" => None,
        q => match QuietHours::parse_range(q) {
            Ok(q) => Some(q),
            Err(e) => {
                out.push(unreadable(format!("quiet hours: {e}")));
                None
            }
        },
    };
    let mut caps = Vec::new();
    for c in &run.setup.caps {
        match kairos_policy::caps::parse_cap(c) {
            Ok(cap) => caps.push(cap),
            Err(e) => out.push(unreadable(format!("cap {c:?}: {e}"))),
        }
    }
    let tags: HashMap<&str, &[String]> = run
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.tags.as_slice()))
        .collect();
    // Marketing messages that go (sends and holdout ghosts), per customer.
    let mut by_customer: BTreeMap<&str, Vec<(i64, &kairos_policy::stage::SendRow)>> =
        BTreeMap::new();
    for s in &run.sends {
        if !matches!(s.decision, Decision::Send | Decision::Ghost)
            || transactional.contains(s.rule.as_str())
            || cancelled.contains(s.send_id.as_str())
        {
            continue;
        }
        let Some(at) = s.send_at else { continue };
        let zone = zone_of
            .get(s.customer_id.as_str())
            .copied()
            .unwrap_or(chrono_tz::UTC);
        if s.decision == Decision::Send
            && let (Some(q), Some(t)) = (&quiet, DateTime::<Utc>::from_timestamp_micros(at))
            && q.defer(t, zone).is_some()
        {
            out.push(v(
                "sent_in_quiet_hours",
                format!("{label}: {} at {} local", s.send_id, t.with_timezone(&zone)),
            ));
        }
        by_customer.entry(&s.customer_id).or_default().push((at, s));
    }
    for cap in caps {
        for (customer, sends) in &by_customer {
            let zone = zone_of.get(customer).copied().unwrap_or(chrono_tz::UTC);
            let mut times: Vec<i64> = sends
                .iter()
                .filter(|(_, s)| match &cap.scope {
                    CapScope::All => true,
                    CapScope::Channel(c) => s.channel == Some(*c),
                    CapScope::Tag(t) => tags.get(s.rule.as_str()).is_some_and(|ts| ts.contains(t)),
                })
                .map(|(at, _)| *at)
                .collect();
            times.sort_unstable();
            let over = |n: usize, what: String| {
                v(
                    "cap_exceeded",
                    format!("{label}: {customer}: {n} messages {what}, cap {}", cap.max),
                )
            };
            match cap.window {
                CapWindow::Rolling(w) => {
                    let mut start = 0;
                    for end in 0..times.len() {
                        while times[end] - times[start] >= w {
                            start += 1;
                        }
                        let n = end - start + 1;
                        if n > cap.max as usize {
                            out.push(over(
                                n,
                                format!("within {} s up to {}", w / 1_000_000, times[end]),
                            ));
                        }
                    }
                }
                CapWindow::Day | CapWindow::Week => {
                    let mut per = BTreeMap::<String, usize>::new();
                    for t in &times {
                        let Some(d) = DateTime::<Utc>::from_timestamp_micros(*t) else {
                            continue;
                        };
                        let local = d.with_timezone(&zone).date_naive();
                        let key = match cap.window {
                            CapWindow::Week => format!("{}", local.format("%G-W%V")),
                            _ => local.to_string(),
                        };
                        *per.entry(key).or_default() += 1;
                    }
                    for (k, n) in per.into_iter().filter(|(_, n)| *n > cap.max as usize) {
                        out.push(over(n, format!("on {k}")));
                    }
                }
            }
        }
    }
    out
}

/// Where the run with faults disagrees with the oracle.
pub fn check(oracle: &Run, faulty: &Run) -> Vec<Violation> {
    let mut out = Vec::new();
    let set = |r: &Run| r.firings.iter().cloned().collect::<BTreeSet<_>>();
    let (a, b) = (set(oracle), set(faulty));
    for f in a.difference(&b) {
        out.push(v("firing_missing", format!("{f:?}")));
    }
    for f in b.difference(&a) {
        out.push(v("firing_extra", format!("{f:?}")));
    }
    let decisions = |r: &Run| {
        r.sends
            .iter()
            .map(|s| {
                (
                    s.send_id.clone(),
                    s.decision.as_str(),
                    s.arm.as_str().to_string(),
                    s.channel.map(|c| c.as_str()),
                    s.reason.clone(),
                    s.send_at,
                )
            })
            .collect::<BTreeSet<_>>()
    };
    let (a, b) = (decisions(oracle), decisions(faulty));
    for d in a.difference(&b) {
        out.push(v("decision_missing", format!("{d:?}")));
    }
    for d in b.difference(&a) {
        out.push(v("decision_extra", format!("{d:?}")));
    }
    let arms = |r: &Run| {
        r.assignments
            .iter()
            .map(|(e, c, a)| ((e.clone(), c.clone()), a.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (arms(oracle), arms(faulty));
    if a != b {
        for (k, arm) in &a {
            if b.get(k) != Some(arm) {
                out.push(v(
                    "arm_differs",
                    format!("{k:?}: oracle {arm}, faulty {:?}", b.get(k)),
                ));
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            out.push(v("arm_extra", format!("{k:?}")));
        }
    }
    // The report's per-arm sums: sends and ghosts by rule and arm.
    let sums = |r: &Run| {
        let mut m = BTreeMap::<(String, String, &'static str), u64>::new();
        for s in &r.sends {
            *m.entry((
                s.rule.clone(),
                s.arm.as_str().to_string(),
                s.decision.as_str(),
            ))
            .or_default() += 1;
        }
        m
    };
    if sums(oracle) != sums(faulty) {
        out.push(v(
            "report_sums_differ",
            format!("oracle {:?}\nfaulty {:?}", sums(oracle), sums(faulty)),
        ));
    }
    out
}
