//! Seeded workloads: customers, their events and the clock's course.
//!
//! A workload is a list of steps. Each step sets the simulated clock and
//! hands a group of items to ingest (as one durable staging append, then
//! one rules batch), like a group commit of a live server. Events arrive
//! late and out of order, some twice (client retries), anonymous visitors
//! are linked to their user ids, customers opt out, purchases cancel what
//! was scheduled. The clock mostly moves seconds to minutes, sometimes
//! jumps hours or days ahead, and sometimes steps back (an NTP correction).
//! The last steps only move the clock, so everything scheduled comes due.

use std::collections::BTreeMap;

use kairos_core::event::{Commerce, EventRecord, IdentityLink, ProfileUpdate, StagedItem};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// Monday 2 March 2026, 06:00 UTC: the simulated clock starts near it.
const START_US: i64 = 1_772_431_200_000_000;
const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;

/// The zones customers live in (quiet hours are local).
pub const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];

/// One step of the workload.
#[derive(Debug, Clone)]
pub struct Step {
    /// The simulated clock during the step, µs.
    pub at_us: i64,
    /// What ingest receives (empty: the clock only moves).
    pub items: Vec<StagedItem>,
    /// Whether the publisher runs after the step.
    pub publish: bool,
}

/// A customer as the workload made them.
#[derive(Debug, Clone)]
pub struct Customer {
    /// User id.
    pub id: String,
    /// IANA zone.
    pub zone: &'static str,
}

/// A seeded workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Every customer.
    pub customers: Vec<Customer>,
    /// Per customer: the step at which an opt-out (by channel name, or
    /// `all`) became durable.
    pub opt_outs: BTreeMap<(String, String), usize>,
}

/// How big a workload to make.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Customers at most.
    pub customers: usize,
    /// Steps with input at most.
    pub steps: usize,
}

impl Default for Size {
    fn default() -> Self {
        Size {
            customers: 12,
            steps: 14,
        }
    }
}

struct Gen {
    rng: StdRng,
    next_id: u64,
    sent: Vec<StagedItem>,
}

impl Gen {
    fn id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}-{}", self.next_id)
    }

    fn event(&mut self, customer: &str, event_type: &str, at: i64, now: i64) -> StagedItem {
        let mut commerce = Commerce::default();
        match event_type {
            "purchase" => {
                commerce.order_id = Some(self.id("order"));
                commerce.revenue = Some(f64::from(self.rng.random_range(5..400u32)));
                commerce.currency = Some("EUR".into());
            }
            "cart_add" | "product_view" => {
                let product = self.rng.random_range(1..6u32);
                commerce.product_id = Some(format!("p{product}"));
                commerce.category = Some(["shoes", "bags", "hats"][product as usize % 3].into());
                commerce.price = Some(f64::from(10 * product));
                commerce.quantity = Some(1);
            }
            _ => {}
        }
        let mut e = EventRecord::track(
            self.id("ev"),
            "sim",
            customer.to_string(),
            event_type,
            at,
            commerce,
        );
        e.received_at_us = now;
        StagedItem::Event(e)
    }
}

impl Workload {
    /// The workload of `seed`.
    pub fn generate(seed: u64, size: Size) -> Workload {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
            sent: Vec::new(),
        };
        let n = g.rng.random_range(2..=size.customers.max(2));
        let customers: Vec<Customer> = (0..n)
            .map(|i| Customer {
                id: format!("c{i}"),
                zone: ZONES.choose(&mut g.rng).unwrap_or(&"UTC"),
            })
            .collect();
        let mut signed_up = vec![false; n];
        let mut opt_outs = BTreeMap::new();
        let mut steps = Vec::new();
        let mut now = START_US + g.rng.random_range(0..DAY_US);
        let inputs = g.rng.random_range(3..=size.steps.max(3));
        for _ in 0..inputs {
            now += match g.rng.random_range(0..100) {
                0..70 => g.rng.random_range(2_000_000..10 * MINUTE_US),
                70..85 => g.rng.random_range(HOUR_US..6 * HOUR_US),
                85..93 => g.rng.random_range(DAY_US..3 * DAY_US),
                // The clock steps back.
                _ => -g.rng.random_range(MINUTE_US..30 * MINUTE_US),
            };
            let mut items = Vec::new();
            for _ in 0..g.rng.random_range(0..=8) {
                let c = g.rng.random_range(0..n);
                let id = customers[c].id.clone();
                // Late (up to 3 h) and so out of order within the step.
                let at = now
                    - g.rng
                        .random_range(0..=3 * HOUR_US)
                        .min(g.rng.random_range(0..=3 * HOUR_US));
                if !signed_up[c] {
                    signed_up[c] = true;
                    items.push(profile(&mut g, &customers[c], at, now));
                    if g.rng.random_bool(0.5) {
                        // Browsed anonymously first, then signed up.
                        let anon = format!("anon-{id}");
                        let mut view = g.event(&anon, "product_view", at - MINUTE_US, now);
                        if let StagedItem::Event(e) = &mut view {
                            e.user_id = None;
                            e.anonymous_id = Some(anon.clone());
                        }
                        items.push(view);
                        items.push(StagedItem::Identity(IdentityLink {
                            event_id: g.id("alias"),
                            source: "sim".into(),
                            anonymous_id: anon,
                            user_id: id.clone(),
                            call: "identify".into(),
                            timestamp_us: at,
                            received_at_us: now,
                        }));
                    }
                    items.push(g.event(&id, "signup", at, now));
                    continue;
                }
                let kind = g.rng.random_range(0..100);
                let item = match kind {
                    0..30 => g.event(&id, "product_view", at, now),
                    30..52 => g.event(&id, "cart_add", at, now),
                    52..68 => g.event(&id, "purchase", at, now),
                    68..74 => g.event(&id, "order_shipped", at, now),
                    74..78 => g.event(&id, "ticket_close", at, now),
                    78..84 => tier(&mut g, &id, at, now),
                    84..89 => {
                        let what = *[
                            "email_unsubscribe",
                            "sms_opt_out",
                            "push_opt_out",
                            "unsubscribe",
                        ]
                        .choose(&mut g.rng)
                        .unwrap_or(&"unsubscribe");
                        let channel = match what {
                            "email_unsubscribe" => "email",
                            "sms_opt_out" => "sms",
                            "push_opt_out" => "push",
                            _ => "all",
                        };
                        opt_outs
                            .entry((id.clone(), channel.to_string()))
                            .or_insert(steps.len());
                        g.event(&id, what, at, now)
                    }
                    // A client retry: an earlier item again, same message id.
                    _ => match g.sent.choose(&mut g.rng).cloned() {
                        Some(again) => again,
                        None => g.event(&id, "product_view", at, now),
                    },
                };
                items.push(item);
            }
            g.sent.extend(items.iter().cloned());
            let publish = g.rng.random_bool(0.4);
            steps.push(Step {
                at_us: now,
                items,
                publish,
            });
        }
        // Let everything scheduled come due: quiet hours end, 10:00 local
        // arrives, sequences' later steps, sweeps' deadlines.
        for _ in 0..g.rng.random_range(4..=10) {
            now += g.rng.random_range(2 * HOUR_US..14 * HOUR_US);
            steps.push(Step {
                at_us: now,
                items: Vec::new(),
                publish: g.rng.random_bool(0.3),
            });
        }
        Workload {
            steps,
            customers,
            opt_outs,
        }
    }
}

fn profile(g: &mut Gen, c: &Customer, at: i64, now: i64) -> StagedItem {
    let mut traits = BTreeMap::new();
    traits.insert("first_name".into(), json!(format!("Ann {}", c.id)));
    traits.insert("timezone".into(), json!(c.zone));
    if g.rng.random_bool(0.9) {
        traits.insert("email".into(), json!(format!("{}@example.com", c.id)));
    }
    if g.rng.random_bool(0.5) {
        traits.insert(
            "phone".into(),
            json!(format!("+1555{:07}", g.rng.random_range(0..10_000_000u32))),
        );
        traits.insert(
            "consent".into(),
            json!({"sms": g.rng.random_bool(0.6), "whatsapp": g.rng.random_bool(0.3)}),
        );
    }
    if g.rng.random_bool(0.4) {
        traits.insert("push_token".into(), json!(format!("tok-{}", c.id)));
    }
    if g.rng.random_bool(0.3) {
        traits.insert(
            "preferred_channel".into(),
            json!(
                *["email", "sms", "push"]
                    .choose(&mut g.rng)
                    .unwrap_or(&"email")
            ),
        );
    }
    StagedItem::Profile(ProfileUpdate {
        event_id: g.id("identify"),
        source: "sim".into(),
        customer_id: c.id.clone(),
        timestamp_us: at,
        received_at_us: now,
        traits,
        first_only: BTreeMap::new(),
    })
}

fn tier(g: &mut Gen, id: &str, at: i64, now: i64) -> StagedItem {
    let mut traits = BTreeMap::new();
    traits.insert(
        "tier".into(),
        json!(
            *["silver", "gold", "platinum"]
                .choose(&mut g.rng)
                .unwrap_or(&"gold")
        ),
    );
    StagedItem::Profile(ProfileUpdate {
        event_id: g.id("identify"),
        source: "sim".into(),
        customer_id: id.to_string(),
        timestamp_us: at,
        received_at_us: now,
        traits,
        first_only: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_makes_the_same_workload_and_seeds_differ() {
        let a = Workload::generate(3, Size::default());
        let b = Workload::generate(3, Size::default());
        let c = Workload::generate(4, Size::default());
        let items = |w: &Workload| {
            serde_json::to_string(
                &w.steps
                    .iter()
                    .map(|s| (s.at_us, &s.items))
                    .collect::<Vec<_>>(),
            )
            .expect("json")
        };
        assert_eq!(items(&a), items(&b));
        assert_ne!(items(&a), items(&c));
    }
}
