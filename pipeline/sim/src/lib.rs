//! Deterministic simulation of the Kairos loop.
//!
//! A run takes a seed and plays a seeded workload ([`workload`]) through
//! the real code of `kairos serve`'s loop: staging appends, the rule
//! engine's recovery and batches, the policy stage, delivery with its
//! workers and recovery, and the publisher, over a store that crashes the
//! process at chosen writes and fails others ([`store`]), to providers
//! that throttle, fail, hang and lose answers ([`provider`]), with a clock
//! that jumps and steps back. Each simulated process runs on its own
//! single-threaded Tokio runtime with a paused clock: timeouts and backoffs
//! take no real time and happen in the same order every run, and a crash
//! drops the runtime with every task on it, like kill -9. A fresh process
//! then recovers from the store alone.
//!
//! The same seed is first run without store faults (the oracle), then with
//! them; [`check`] compares the two and checks the invariants of each.

pub mod check;
pub mod provider;
pub mod run;
pub mod store;
pub mod workload;

pub use check::{Violation, check};
pub use run::{Options, Run, simulate};

use std::collections::BTreeMap;

/// What one seed gave.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Invariants broken (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Faults injected, by kind (store faults and provider answers).
    pub faults: BTreeMap<String, u64>,
    /// Processes started (1 + crashes and failed batches).
    pub processes: u32,
    /// The run with faults, for the trace.
    pub run: Run,
}

/// Runs `seed` without store faults, then with them, and checks both.
pub fn check_seed(seed: u64, opts: &Options) -> anyhow::Result<Outcome> {
    let oracle = simulate(seed, opts, None)?;
    let faulty = simulate(seed, opts, Some(oracle.writes))?;
    let mut violations = check::invariants(&oracle, "oracle");
    violations.extend(check::invariants(&faulty, "faulty"));
    violations.extend(check(&oracle, &faulty));
    let mut faults = BTreeMap::new();
    for f in &faulty.faults {
        *faults.entry(f.kind.as_str().to_string()).or_insert(0) += 1;
    }
    for (answer, n) in &faulty.answers {
        if *answer != provider::Answer::Accepted {
            *faults.entry(answer.as_str().to_string()).or_insert(0) += n;
        }
    }
    let jumps = faulty.clock_jumps;
    if jumps.0 > 0 {
        faults.insert("clock_jump_forward".into(), jumps.0);
    }
    if jumps.1 > 0 {
        faults.insert("clock_step_back".into(), jumps.1);
    }
    Ok(Outcome {
        seed,
        violations,
        faults,
        processes: faulty.processes,
        run: faulty,
    })
}
