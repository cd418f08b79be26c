//! Arm assignment: a hash of the experiment's salt and the canonical
//! customer id into 10,000 buckets, so it needs no coordination, is the
//! same in live serving, replay and backtest, and changes only when the
//! salt does (a new experiment). The first arm a customer gets sticks, even
//! if the split is changed later or an anonymous visitor is identified.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Buckets per experiment: splits are exact to 0.01%.
pub const BUCKETS: u32 = 10_000;

/// The bucket of `customer_id` in the experiment salted `salt`.
pub fn bucket(salt: &str, customer_id: &str) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(salt.as_bytes());
    h.update(&[0]);
    h.update(customer_id.as_bytes());
    (h.digest() % u64::from(BUCKETS)) as u32
}

/// An experiment arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// No message (ghost sends only).
    Holdout,
    /// The same message at the next scheduled batch send.
    Scheduled,
    /// Sent at once.
    Triggered,
}

impl Arm {
    /// `holdout`, `scheduled` or `triggered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Holdout => "holdout",
            Arm::Scheduled => "scheduled",
            Arm::Triggered => "triggered",
        }
    }
}

/// How an experiment splits its customers.
#[derive(Debug, Clone, PartialEq)]
pub struct Design {
    /// Hash salt; a new salt is a new experiment.
    pub salt: String,
    /// Holdout share, in buckets.
    pub holdout: u32,
    /// Scheduled share, in buckets; the triggered arm has the rest.
    pub scheduled: u32,
    /// Variants of the triggered arm with their weights (empty: none).
    pub variants: Vec<(String, u32)>,
}

impl Design {
    /// A design from percentages (`holdout + scheduled <= 100`).
    pub fn from_percent(salt: &str, holdout: u8, scheduled: u8) -> Design {
        Design {
            salt: salt.to_string(),
            holdout: u32::from(holdout.min(100)) * (BUCKETS / 100),
            scheduled: u32::from(scheduled.min(100 - holdout.min(100))) * (BUCKETS / 100),
            variants: Vec::new(),
        }
    }

    /// Splits the triggered arm into weighted variants.
    pub fn with_variants(mut self, variants: Vec<(String, u32)>) -> Design {
        self.variants = variants.into_iter().filter(|(_, w)| *w > 0).collect();
        self
    }

    /// The arm (and variant) the hash gives `customer_id`.
    pub fn assign(&self, customer_id: &str) -> Assignment {
        let b = bucket(&self.salt, customer_id);
        let arm = if b < self.holdout {
            Arm::Holdout
        } else if b < self.holdout + self.scheduled {
            Arm::Scheduled
        } else {
            Arm::Triggered
        };
        // Variants use their own hash, so the arm split and the variant
        // split are independent of each other.
        let variant = (arm == Arm::Triggered && !self.variants.is_empty()).then(|| {
            let total: u32 = self.variants.iter().map(|(_, w)| w).sum();
            let mut v = bucket(&format!("{}/variant", self.salt), customer_id) % total;
            let mut chosen = &self.variants[0].0;
            for (name, w) in &self.variants {
                if v < *w {
                    chosen = name;
                    break;
                }
                v -= w;
            }
            chosen.clone()
        });
        Assignment {
            arm,
            variant,
            bucket: b,
        }
    }
}

/// The global control group: a share of customers held out of every
/// marketing message, to measure the whole program. Transactional messages
/// still go. Its own salt keeps it independent of every rule's split.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalControl {
    /// Hash salt; a new salt draws a new group.
    pub salt: String,
    /// Share in buckets (100 = 1%).
    pub buckets: u32,
}

impl GlobalControl {
    /// A group of `percent` (0 to 100, two decimals honoured) of customers.
    pub fn new(salt: &str, percent: f64) -> GlobalControl {
        GlobalControl {
            salt: salt.to_string(),
            buckets: (percent.clamp(0.0, 100.0) * f64::from(BUCKETS) / 100.0).round() as u32,
        }
    }

    /// Whether `customer_id` is in the group.
    pub fn contains(&self, customer_id: &str) -> bool {
        bucket(&self.salt, customer_id) < self.buckets
    }
}

/// One customer's place in one experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The arm.
    pub arm: Arm,
    /// The triggered arm's variant, if the design has variants.
    pub variant: Option<String>,
    /// The hash bucket (0..10,000).
    pub bucket: u32,
}

/// Remembers first assignments so they stick. Keys are 128-bit hashes of
/// (experiment, customer): millions of assignments without millions of
/// string pairs.
#[derive(Debug, Default)]
pub struct Assigner {
    first: HashMap<u128, Assignment, foldhash::fast::RandomState>,
    experiments: std::collections::BTreeSet<String>,
}

fn key(experiment: &str, customer_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(experiment.as_bytes());
    h.update(&[0]);
    h.update(customer_id.as_bytes());
    h.digest128()
}

impl Assigner {
    /// Restores an assignment read back from `assignments/`.
    pub fn remember(&mut self, experiment: &str, customer_id: &str, a: Assignment) {
        if !self.experiments.contains(experiment) {
            self.experiments.insert(experiment.to_string());
        }
        self.first.entry(key(experiment, customer_id)).or_insert(a);
    }

    /// The customer's arm: the first one given, else the design's (and
    /// `true` when it is new and must be recorded).
    pub fn assign(
        &mut self,
        experiment: &str,
        design: &Design,
        customer_id: &str,
    ) -> (Assignment, bool) {
        let k = key(experiment, customer_id);
        if let Some(a) = self.first.get(&k) {
            return (a.clone(), false);
        }
        if !self.experiments.contains(experiment) {
            self.experiments.insert(experiment.to_string());
        }
        let a = design.assign(customer_id);
        self.first.insert(k, a.clone());
        (a, true)
    }

    /// An anonymous visitor became `user_id`: the visitor's first arms
    /// carry over to experiments the user was not in yet.
    pub fn link(&mut self, anonymous_id: &str, user_id: &str) {
        let carried: Vec<(String, Assignment)> = self
            .experiments
            .iter()
            .filter_map(|e| {
                self.first
                    .get(&key(e, anonymous_id))
                    .map(|a| (e.clone(), a.clone()))
            })
            .collect();
        for (experiment, a) in carried {
            self.remember(&experiment, user_id, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(design: &Design, n: usize) -> [usize; 3] {
        let mut counts = [0; 3];
        for i in 0..n {
            let a = design.assign(&format!("cust-{i}"));
            counts[a.arm as usize] += 1;
        }
        counts
    }

    #[test]
    fn shares_are_within_sampling_error_of_the_split() {
        let n = 100_000;
        let d = Design::from_percent("cart_abandonment", 10, 20);
        let got = shares(&d, n);
        for (count, p) in got.iter().zip([0.1, 0.2, 0.7]) {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            let off = (*count as f64 - n as f64 * p).abs();
            assert!(off < 4.0 * sd, "{got:?}: {off} off for p={p} (sd {sd:.0})");
        }
    }

    #[test]
    fn the_global_control_group_has_its_share_independent_of_rule_arms() {
        let g = GlobalControl::new("kairos-global", 5.0);
        let d = Design::from_percent("cart", 50, 0);
        let (mut in_group, mut in_group_and_holdout) = (0, 0);
        for i in 0..100_000 {
            let id = format!("c{i}");
            if g.contains(&id) {
                in_group += 1;
                in_group_and_holdout += usize::from(d.assign(&id).arm == Arm::Holdout);
            }
        }
        assert!((4_700..5_300).contains(&in_group), "{in_group}");
        let share = in_group_and_holdout as f64 / in_group as f64;
        assert!(
            (share - 0.5).abs() < 0.03,
            "independent of the rule's split: {share}"
        );
        assert!(!GlobalControl::new("g", 0.0).contains("anyone"));
        assert!(GlobalControl::new("g", 100.0).contains("anyone"));
    }

    #[test]
    fn assignment_is_stable_and_a_new_salt_reshuffles() {
        let a = Design::from_percent("welcome", 50, 0);
        let b = Design::from_percent("welcome-v2", 50, 0);
        let mut same = 0;
        for i in 0..10_000 {
            let id = format!("c{i}");
            assert_eq!(a.assign(&id), a.assign(&id));
            same += usize::from(a.assign(&id).arm == b.assign(&id).arm);
        }
        // Independent halves agree about half the time.
        assert!((4_700..5_300).contains(&same), "{same}");
    }

    #[test]
    fn the_first_arm_sticks_through_a_split_change_and_identification() {
        let mut s = Assigner::default();
        let before = Design::from_percent("r", 100, 0);
        let after = Design::from_percent("r", 0, 0);
        let (a, new) = s.assign("r", &before, "anon-1");
        assert!(new);
        assert_eq!(a.arm, Arm::Holdout);
        let (again, new) = s.assign("r", &after, "anon-1");
        assert!(!new);
        assert_eq!(
            again.arm,
            Arm::Holdout,
            "changing the split does not move anyone"
        );
        s.link("anon-1", "user-1");
        assert_eq!(s.assign("r", &after, "user-1").0.arm, Arm::Holdout);
        assert_eq!(s.assign("r", &after, "user-2").0.arm, Arm::Triggered);
    }

    #[test]
    fn variants_split_only_the_triggered_arm_by_weight() {
        let d = Design::from_percent("cart", 20, 0).with_variants(vec![
            ("1h".into(), 1),
            ("6h".into(), 1),
            ("48h".into(), 2),
        ]);
        let mut counts: HashMap<Option<String>, usize> = HashMap::new();
        for i in 0..40_000 {
            let a = d.assign(&format!("c{i}"));
            assert_eq!(a.variant.is_some(), a.arm == Arm::Triggered);
            *counts.entry(a.variant).or_default() += 1;
        }
        let v = |k: &str| counts.get(&Some(k.to_string())).copied().unwrap_or(0) as f64;
        let triggered = v("1h") + v("6h") + v("48h");
        assert!((v("48h") / triggered - 0.5).abs() < 0.02, "{counts:?}");
        assert!((v("1h") / triggered - 0.25).abs() < 0.02, "{counts:?}");
    }
}
