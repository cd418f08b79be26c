//! Kairos experiments: every rule is an experiment.
//!
//! A customer who qualifies for a rule is assigned to an arm — **holdout**
//! (no message), **scheduled** (the next scheduled batch send) or
//! **triggered** (sent at once, optionally split into variants) — before
//! any policy decides whether a message goes out, so suppression and
//! timing cannot bias the comparison. Reports compare the arms with the
//! [`stats`] engine.

pub mod assign;
pub mod stats;

pub use assign::{Arm, Assigner, Assignment, BUCKETS, Design, GlobalControl, bucket};
