//! The fixed seeds the test command runs: each plays its workload with
//! crashes, store and provider faults and clock jumps through the real
//! loop, and must keep every invariant and agree with its oracle. A
//! failure prints the seed and the command that replays it.
//!
//! `KAIROS_SIM_SEEDS` sets seeds per test (four tests, so nextest spreads
//! them over the cores); the soak is `cargo run -p kairos-sim --release --
//! --seeds 10000`.

use std::path::PathBuf;

use kairos_sim::{Options, check_seed};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seeds_per_test() -> u64 {
    std::env::var("KAIROS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75)
}

fn run_block(block: u64) {
    let opts = Options::for_repo(&repo());
    let n = seeds_per_test();
    let mut failed = Vec::new();
    for seed in block * 1000..block * 1000 + n {
        match check_seed(seed, &opts) {
            Ok(o) if o.violations.is_empty() => {}
            Ok(o) => {
                for v in &o.violations {
                    eprintln!("seed {seed}: {v}");
                }
                failed.push(seed);
            }
            Err(e) => {
                eprintln!("seed {seed}: the run could not finish: {e:#}");
                failed.push(seed);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "seeds {failed:?} failed; replay one with `cargo run -p kairos-sim --release -- --seed SEED`"
    );
}

#[test]
fn seeds_block_0() {
    run_block(0);
}

#[test]
fn seeds_block_1() {
    run_block(1);
}

#[test]
fn seeds_block_2() {
    run_block(2);
}

#[test]
fn seeds_block_3() {
    run_block(3);
}

/// A seed replays exactly: the same faults at the same writes, the same
/// outputs. Without this a failing seed could not be debugged.
#[test]
fn a_seed_replays_exactly() {
    let opts = Options::for_repo(&repo());
    for seed in [11, 12] {
        let writes = kairos_sim::simulate(seed, &opts, None)
            .expect("oracle")
            .writes;
        let a = kairos_sim::simulate(seed, &opts, Some(writes)).expect("run");
        let b = kairos_sim::simulate(seed, &opts, Some(writes)).expect("run");
        assert_eq!(a.faults, b.faults, "seed {seed}: fault trace");
        assert_eq!(a.firings, b.firings, "seed {seed}: firings");
        assert_eq!(a.sends, b.sends, "seed {seed}: sends");
        assert_eq!(a.accepted, b.accepted, "seed {seed}: what providers took");
        assert_eq!(a.writes, b.writes, "seed {seed}: writes");
    }
}
