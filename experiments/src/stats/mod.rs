//! The experiment statistics engine: from per-arm sufficient statistics to
//! lifts, intervals, p-values, chance to win, CUPED and sample-ratio checks.
//!
//! Pure functions on numbers, no I/O: the reports feed it sums computed over
//! Kairos' tables, and analysts can feed it sums from their own warehouse.
//!
//! Every number follows GrowthBook's gbstats 0.8.0 (and scipy for what
//! gbstats lacks), with the two formulas GrowthBook changed since (the
//! relative lift over a negative baseline, the relative CUPED variance; see
//! [`effect`]); `experiments/fixtures/gen_gbstats.py` calls gbstats' own
//! classes on seeded random inputs and `tests/gbstats.rs` checks that this
//! engine agrees to 1e-6. Where gbstats loses precision (its t-test p-value is
//! 2·(1 − cdf), which is 0 below ~1e-16) this engine uses survival functions
//! instead; the fixtures record the precise value.
//!
//! Per comparison of a treatment arm with a control arm it reports, for
//! conversion and for revenue per recipient, the absolute lift (B − A) and
//! the relative lift ((B − A)/A, delta method), each with:
//! - Welch's t-test: standard error, Welch–Satterthwaite dof, (1 − alpha)
//!   confidence interval, two-sided p-value;
//! - the always-valid (sequential) interval and p-value, for teams that
//!   look every day;
//! - chance to win, credible interval and risk under a flat prior;
//!
//! plus the pooled two-proportion z-test for conversion and, when both arms
//! carry the pre-period covariate, the CUPED-adjusted revenue effects with
//! θ and the variance reduction achieved. Over all arms it runs the
//! sample-ratio-mismatch test. [`holm_bonferroni`] and
//! [`benjamini_hochberg`] adjust p-values across many experiments, and
//! [`pool`] combines one effect measured by many experiments.
//!
//! The input schema is documented on [`ExperimentInput`]; the output is
//! [`Analysis`], serialised as the JSON the reports serve.

mod dist;
mod effect;
mod input;
mod moments;
mod multiple;
mod pool;
mod srm;
mod ztest;

use serde::Serialize;

pub use dist::normal_upper_quantile;
pub use effect::{Effect, Estimate, NotEstimable};
pub use input::{
    ArmStats, ComparisonPair, DEFAULT_ALPHA, DEFAULT_SEQUENTIAL_TUNING, DEFAULT_SRM_THRESHOLD,
    ExperimentInput, MAX_ARMS, MAX_COMPARISONS, StatsError,
};
pub use multiple::{benjamini_hochberg, holm_bonferroni};
pub use pool::{Heterogeneity, Pooled, PooledEstimate, Study, pool};
pub use srm::Srm;
pub use ztest::ZTest;

use effect::{Scale, TestSettings, effect};
use moments::{
    ArmMetric, RevenueWithCovariate, cuped_theta, proportion, regression_adjusted, sample_mean,
};

/// The analysis of one experiment: what the reports show and serve as JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    /// Significance level used: intervals cover 1 − alpha.
    pub alpha: f64,
    /// Tuning parameter of the sequential intervals.
    pub sequential_tuning_parameter: f64,
    /// Every arm with its sufficient statistics and per-arm metrics.
    pub arms: Vec<ArmSummary>,
    /// Sample-ratio mismatch over all arms.
    pub srm: Srm,
    /// One entry per compared pair.
    pub comparisons: Vec<Comparison>,
}

/// One arm: its input sums (so anyone can recompute) and derived metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmSummary {
    /// The sufficient statistics as given.
    #[serde(flatten)]
    pub stats: ArmStats,
    /// Configured share of traffic, from the weights (equal without them).
    pub expected_share: f64,
    /// conversions / n.
    pub conversion_rate: f64,
    /// p(1 − p), gbstats' variance of a proportion.
    pub conversion_variance: f64,
    /// revenue_sum / n.
    pub revenue_per_recipient: f64,
    /// Sample variance of revenue per recipient, (SS − S²/n)/(n − 1).
    pub revenue_variance: f64,
    /// revenue_sum / conversions; null without conversions.
    pub revenue_per_converter: Option<f64>,
    /// covariate_sum / n; null without a covariate.
    pub covariate_mean: Option<f64>,
    /// Sample variance of the covariate; null without a covariate.
    pub covariate_variance: Option<f64>,
}

/// A treatment arm against a control arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Control arm name.
    pub control: String,
    /// Treatment arm name.
    pub treatment: String,
    /// Conversion rate (Welch's t on proportions, as gbstats).
    pub conversion: Effects,
    /// The pooled two-proportion z-test; null when nobody or everybody
    /// converted in both arms together.
    pub conversion_z_test: Option<ZTest>,
    /// Revenue per recipient, unadjusted.
    pub revenue: Effects,
    /// Revenue per recipient with CUPED; null unless both arms carry the
    /// covariate.
    pub revenue_cuped: Option<Cuped>,
}

/// The absolute and relative effect on one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effects {
    /// Treatment − control, in the metric's unit.
    pub absolute: Effect,
    /// (Treatment − control) / control, as a fraction.
    pub relative: Effect,
}

/// CUPED-adjusted revenue per recipient.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cuped {
    /// θ = Cov(revenue, covariate) / Var(covariate), pooled over both arms;
    /// 0 when either pooled variance is 0 (then nothing is adjusted).
    pub theta: f64,
    /// 1 − Var(adjusted lift) / Var(unadjusted lift): the share of the
    /// absolute lift's variance CUPED removed. Null if the unadjusted
    /// variance is 0.
    pub variance_reduction: Option<f64>,
    /// The control's adjusted mean and variance.
    pub control: AdjustedArm,
    /// The treatment's adjusted mean and variance.
    pub treatment: AdjustedArm,
    /// The adjusted effects. The relative lift divides by the control's
    /// unadjusted mean, as gbstats does.
    #[serde(flatten)]
    pub effects: Effects,
}

/// One arm's CUPED-adjusted revenue: mean ȳ − θx̄, variance of y − θx.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdjustedArm {
    /// Adjusted mean.
    pub mean: f64,
    /// Adjusted per-recipient variance.
    pub variance: f64,
}

/// Analyses an experiment. Fails only on invalid input; comparisons the
/// data cannot support (no variance, zero baseline) are reported as
/// [`Effect::NotEstimable`] inside the analysis.
pub fn analyze(input: &ExperimentInput) -> Result<Analysis, StatsError> {
    let pairs = input.validate()?;
    let settings = TestSettings {
        alpha: input.alpha,
        sequential_tuning_parameter: input.sequential_tuning_parameter,
    };

    let weights: Vec<f64> = input.arms.iter().map(|a| a.weight.unwrap_or(1.0)).collect();
    let total_weight: f64 = weights.iter().sum();
    let counts: Vec<f64> = input.arms.iter().map(|a| a.n as f64).collect();

    let arms = input
        .arms
        .iter()
        .zip(&weights)
        .map(|(arm, weight)| {
            let n = arm.n as f64;
            let conversion = proportion(n, arm.conversions as f64);
            let revenue = sample_mean(n, arm.revenue_sum, arm.revenue_sum_squares);
            let covariate = arm
                .covariate()
                .map(|c| sample_mean(n, c.sum, c.sum_squares));
            ArmSummary {
                stats: arm.clone(),
                expected_share: weight / total_weight,
                conversion_rate: conversion.mean,
                conversion_variance: conversion.variance,
                revenue_per_recipient: revenue.mean,
                revenue_variance: revenue.variance,
                revenue_per_converter: (arm.conversions > 0)
                    .then(|| arm.revenue_sum / arm.conversions as f64),
                covariate_mean: covariate.map(|c| c.mean),
                covariate_variance: covariate.map(|c| c.variance),
            }
        })
        .collect();

    let comparisons = pairs
        .into_iter()
        .map(|(c, t)| compare(&input.arms[c], &input.arms[t], settings))
        .collect();

    Ok(Analysis {
        alpha: input.alpha,
        sequential_tuning_parameter: input.sequential_tuning_parameter,
        arms,
        srm: srm::sample_ratio_mismatch(&counts, &weights, input.srm_threshold),
        comparisons,
    })
}

fn compare(control: &ArmStats, treatment: &ArmStats, settings: TestSettings) -> Comparison {
    let effects = |a: &ArmMetric, b: &ArmMetric| Effects {
        absolute: effect(a, b, Scale::Absolute, settings),
        relative: effect(a, b, Scale::Relative, settings),
    };
    let conversion = |arm: &ArmStats| proportion(arm.n as f64, arm.conversions as f64);
    let revenue =
        |arm: &ArmStats| sample_mean(arm.n as f64, arm.revenue_sum, arm.revenue_sum_squares);

    Comparison {
        control: control.name.clone(),
        treatment: treatment.name.clone(),
        conversion: effects(&conversion(control), &conversion(treatment)),
        conversion_z_test: ztest::pooled_z_test(
            control.n as f64,
            control.conversions as f64,
            treatment.n as f64,
            treatment.conversions as f64,
        ),
        revenue: effects(&revenue(control), &revenue(treatment)),
        revenue_cuped: cuped(control, treatment).map(|(theta, a, b)| {
            let (plain_a, plain_b) = (revenue(control), revenue(treatment));
            let unadjusted = plain_a.variance / plain_a.n + plain_b.variance / plain_b.n;
            let adjusted = a.variance / a.n + b.variance / b.n;
            Cuped {
                theta,
                variance_reduction: (unadjusted > 0.0).then(|| 1.0 - adjusted / unadjusted),
                control: AdjustedArm {
                    mean: a.mean,
                    variance: a.variance,
                },
                treatment: AdjustedArm {
                    mean: b.mean,
                    variance: b.variance,
                },
                effects: effects(&a, &b),
            }
        }),
    }
}

/// θ and both arms' adjusted revenue, if both arms carry the covariate.
fn cuped(control: &ArmStats, treatment: &ArmStats) -> Option<(f64, ArmMetric, ArmMetric)> {
    let with_covariate = |arm: &ArmStats| {
        Some(RevenueWithCovariate {
            n: arm.n as f64,
            sum: arm.revenue_sum,
            sum_squares: arm.revenue_sum_squares,
            covariate: arm.covariate()?,
        })
    };
    let (a, b) = (with_covariate(control)?, with_covariate(treatment)?);
    let theta = cuped_theta(&a, &b);
    Some((
        theta,
        regression_adjusted(&a, theta),
        regression_adjusted(&b, theta),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyses_a_three_arm_experiment() {
        let mut holdout = ArmStats::new("holdout", 1000, 50, 2500.0, 190_000.0);
        holdout.covariate_sum = Some(2100.0);
        holdout.covariate_sum_squares = Some(150_000.0);
        holdout.revenue_covariate_sum_products = Some(90_000.0);
        let mut triggered = ArmStats::new("triggered", 4500, 300, 14_000.0, 1_050_000.0);
        triggered.covariate_sum = Some(9500.0);
        triggered.covariate_sum_squares = Some(680_000.0);
        triggered.revenue_covariate_sum_products = Some(420_000.0);
        let scheduled = ArmStats::new("scheduled", 4500, 260, 12_500.0, 940_000.0);
        let analysis = analyze(&ExperimentInput::new(vec![holdout, triggered, scheduled]))
            .expect("valid input");

        assert_eq!(analysis.arms.len(), 3);
        assert_eq!(analysis.arms[0].revenue_per_recipient, 2.5);
        assert_eq!(analysis.comparisons.len(), 2);
        let triggered = &analysis.comparisons[0];
        assert_eq!(
            (triggered.control.as_str(), triggered.treatment.as_str()),
            ("holdout", "triggered")
        );
        let Effect::Estimated(lift) = &triggered.conversion.absolute else {
            panic!("estimable")
        };
        assert!((lift.estimate - (300.0 / 4500.0 - 0.05)).abs() < 1e-12);
        assert!(lift.ci[0] < lift.estimate && lift.estimate < lift.ci[1]);
        let cuped = triggered
            .revenue_cuped
            .as_ref()
            .expect("both arms have the covariate");
        assert!(cuped.theta > 0.0);
        assert!(cuped.variance_reduction.expect("defined") > 0.0);
        // Scheduled has no covariate: no CUPED.
        assert!(analysis.comparisons[1].revenue_cuped.is_none());
        // Equal weights, 1000/4500/4500 observed: a glaring mismatch.
        assert!(analysis.srm.flagged);
    }

    #[test]
    fn input_and_output_json() {
        let input: ExperimentInput = serde_json::from_str(
            r#"{"arms": [
                {"name": "holdout", "n": 2000, "conversions": 100, "revenue_sum": 5000, "revenue_sum_squares": 400000, "weight": 1},
                {"name": "triggered", "n": 2000, "conversions": 0, "revenue_sum": 0, "revenue_sum_squares": 0, "weight": 1}
            ], "alpha": 0.1}"#,
        )
        .expect("parses");
        assert_eq!(input.sequential_tuning_parameter, DEFAULT_SEQUENTIAL_TUNING);
        let json = serde_json::to_value(analyze(&input).expect("valid")).expect("serialises");
        assert_eq!(json["alpha"], 0.1);
        assert_eq!(
            json["arms"][1]["revenue_per_converter"],
            serde_json::Value::Null
        );
        assert_eq!(json["arms"][0]["weight"], 1.0);
        assert!(json["arms"][0].get("covariate_sum").is_none());
        let conversion = &json["comparisons"][0]["conversion"]["absolute"];
        assert_eq!(conversion["status"], "not_estimable");
        assert_eq!(conversion["reason"], "zero_variance");
        assert_eq!(
            json["comparisons"][0]["revenue_cuped"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn misspelt_fields_are_rejected() {
        let err = serde_json::from_str::<ExperimentInput>(
            r#"{"arms": [{"name": "a", "n": 1, "conversions": 0, "revenue_sum": 0, "revenue_sumsq": 0}]}"#,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("revenue_sumsq"), "{err}");
    }
}
