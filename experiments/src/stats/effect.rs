//! The effect of a treatment arm over a control arm on one metric: the
//! frequentist t-test (fixed horizon and sequential) and the flat-prior
//! Bayesian summary, as gbstats 0.8.0's `TwoSidedTTest`,
//! `SequentialTwoSidedTTest` and `EffectBayesianABTest` compute them
//! (gbstats/frequentist/tests.py, gbstats/bayesian/tests.py), with two
//! later GrowthBook changes that 0.8.0 on PyPI does not have yet:
//! - the relative lift divides by the control's mean in absolute value
//!   (growthbook commit 6199daa8b6, 2026-08), so a negative baseline (refunds
//!   exceeding sales) keeps the lift's sign: +3.25 on a −0.5 baseline is
//!   +650%, not −650%;
//! - the relative CUPED lift's variance takes the control's adjusted parts
//!   term by term (`frequentist_variance_relative_cuped`, commit f2f4d37ed9,
//!   2025-02) instead of scaling its whole adjusted variance.
//!
//! Distribution functions come from [`super::dist`], which always returns.

use serde::Serialize;

use super::dist::{normal_pdf, normal_sf, normal_upper_quantile, t_sf, t_upper_quantile};
use super::moments::ArmMetric;

/// Absolute (treatment − control) or relative ((treatment − control) / control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scale {
    Absolute,
    Relative,
}

/// Test settings shared by every effect of one analysis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TestSettings {
    pub alpha: f64,
    pub sequential_tuning_parameter: f64,
}

/// An effect, or why it cannot be estimated.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Effect {
    /// The numbers.
    Estimated(Estimate),
    /// gbstats returns an uninformative result here (p = 1, CI [0, 0]); we
    /// say so instead of printing numbers that look like a measurement.
    NotEstimable {
        /// Why.
        reason: NotEstimable,
    },
}

/// Why an effect has no estimate. The same conditions as gbstats'
/// `ZERO_NEGATIVE_BASELINE_VARIATION` and `ZERO_NEGATIVE_VARIANCE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotEstimable {
    /// The control's mean is 0: no relative lift, and gbstats skips the
    /// absolute one too.
    BaselineZero,
    /// An arm has no variance (e.g. nobody or everybody converted, or a
    /// single recipient): the t statistic is undefined.
    ZeroVariance,
    /// The sums are so large that a variance or its square overflowed.
    NumericalOverflow,
}

impl NotEstimable {
    /// The name the JSON uses (`baseline_zero`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NotEstimable::BaselineZero => "baseline_zero",
            NotEstimable::ZeroVariance => "zero_variance",
            NotEstimable::NumericalOverflow => "numerical_overflow",
        }
    }
}

/// Everything reported about one effect. Relative effects are fractions
/// (0.2 = +20%).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Point estimate of the lift.
    pub estimate: f64,
    /// Its standard error (delta method for relative lift).
    pub std_error: f64,
    /// estimate / std_error.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub dof: f64,
    /// Two-sided (1 − alpha) confidence interval from Student's t.
    pub ci: [f64; 2],
    /// Two-sided p-value from Student's t.
    pub p_value: f64,
    /// Always-valid (1 − alpha) confidence interval: valid however often the
    /// experiment is looked at.
    pub sequential_ci: [f64; 2],
    /// Always-valid p-value.
    pub sequential_p_value: f64,
    /// Posterior probability that the treatment beats the control
    /// (normal posterior, flat prior).
    pub chance_to_win: f64,
    /// Equal-tailed (1 − alpha) posterior interval of the lift.
    pub credible_interval: [f64; 2],
    /// Expected loss of keeping the control: E[max(lift, 0)].
    pub risk_control: f64,
    /// Expected loss of choosing the treatment: E[max(−lift, 0)].
    pub risk_treatment: f64,
}

/// Compares `b` (treatment) with `a` (control).
pub(crate) fn effect(a: &ArmMetric, b: &ArmMetric, scale: Scale, settings: TestSettings) -> Effect {
    // gbstats' order of checks; the baseline check applies to absolute
    // effects as well (TTest.compute_result does not look at the scale).
    if a.mean == 0.0 || a.unadjusted_mean == 0.0 {
        return Effect::NotEstimable {
            reason: NotEstimable::BaselineZero,
        };
    }
    if a.variance <= 0.0 || b.variance <= 0.0 {
        return Effect::NotEstimable {
            reason: NotEstimable::ZeroVariance,
        };
    }

    let (estimate, variance) = match scale {
        Scale::Absolute => (b.mean - a.mean, b.variance / b.n + a.variance / a.n),
        Scale::Relative => relative(a, b),
    };
    // gbstats (since 2025-06) also refuses a combined variance that is not
    // positive, which CUPED's subtraction can produce.
    if variance <= 0.0 {
        return Effect::NotEstimable {
            reason: NotEstimable::ZeroVariance,
        };
    }
    let dof = welch_dof(a, b);
    let std_error = variance.sqrt();
    if !(estimate.is_finite() && std_error.is_finite() && dof > 0.0) {
        return Effect::NotEstimable {
            reason: NotEstimable::NumericalOverflow,
        };
    }
    let alpha = settings.alpha;

    let t = estimate / std_error;
    if !t.is_finite() {
        return Effect::NotEstimable {
            reason: NotEstimable::NumericalOverflow,
        };
    }
    // Both tails by symmetry: 2·sf(|t|) keeps its relative precision down to
    // the smallest doubles, where gbstats' 2·(1 − cdf) rounds to 0 below ~1e-16.
    let p_value = (2.0 * t_sf(t.abs(), dof)).min(1.0);
    let half_width = t_upper_quantile(alpha / 2.0, dof) * std_error;

    let n_total = a.n + b.n;
    let (sequential_half_width, sequential_p_value) = confidence_sequence(
        estimate,
        variance,
        n_total,
        alpha,
        settings.sequential_tuning_parameter,
    );

    // The flat-prior posterior is N(estimate, std_error²).
    let credible_half_width = normal_upper_quantile(alpha / 2.0) * std_error;
    let (risk_control, risk_treatment) = risk(estimate, std_error);

    Effect::Estimated(Estimate {
        estimate,
        std_error,
        t,
        dof,
        ci: [estimate - half_width, estimate + half_width],
        p_value,
        sequential_ci: [
            estimate - sequential_half_width,
            estimate + sequential_half_width,
        ],
        sequential_p_value,
        chance_to_win: normal_sf(-t),
        credible_interval: [
            estimate - credible_half_width,
            estimate + credible_half_width,
        ],
        risk_control,
        risk_treatment,
    })
}

/// The relative lift (B − A)/|A| and its delta-method variance.
///
/// The baseline is the control's unadjusted mean, as in gbstats. Without
/// CUPED the variance is Var(B)/(n_B·Ā²) + Var(A)·B̄²/(n_A·Ā⁴). Under CUPED
/// the control's adjusted mean Ā − θx̄ sits in the numerator while Ā alone
/// divides, so the control's part is the delta method on (Ā, x̄_A) with
/// gradient (−B̄/Ā², θ/Ā): Var(y)·B̄²/Ā² − 2θ·Cov(y, x)·B̄/Ā + θ²·Var(x),
/// over n_A·Ā² (GrowthBook's `frequentist_variance_relative_cuped`).
fn relative(a: &ArmMetric, b: &ArmMetric) -> (f64, f64) {
    let (ma, mb) = (a.unadjusted_mean, b.unadjusted_mean);
    let estimate = (b.mean - a.mean) / ma.abs();
    let treatment = b.variance / (ma * ma * b.n);
    let control = match (a.adjustment, b.adjustment) {
        (Some(adj), Some(_)) => {
            let ratio = mb / ma;
            (adj.post_variance * ratio * ratio - 2.0 * adj.theta * adj.covariance * ratio
                + adj.theta * adj.theta * adj.pre_variance)
                / (a.n * ma * ma)
        }
        _ => a.variance * mb * mb / (ma.powi(4) * a.n),
    };
    (estimate, treatment + control)
}

/// Welch–Satterthwaite degrees of freedom of the per-arm variances. gbstats
/// uses the same dof for relative and absolute effects.
fn welch_dof(a: &ArmMetric, b: &ArmMetric) -> f64 {
    let (va, vb) = (a.variance / a.n, b.variance / b.n);
    (va + vb).powi(2) / (vb * vb / (b.n - 1.0) + va * va / (a.n - 1.0))
}

/// The asymptotic confidence sequence of Waudby-Smith et al. (2023,
/// arXiv:2103.06476v7), as gbstats implements it: returns the half-width of
/// the always-valid interval (their eq. 9) and the always-valid p-value
/// (eq. 155).
///
/// `tuning` is gbstats' `sequential_tuning_parameter` η: ρ is chosen so the
/// sequence is tightest when the total sample size is about η (eq. 161). A
/// larger η gives wider intervals early and narrower ones late.
fn confidence_sequence(
    estimate: f64,
    variance: f64,
    n: f64,
    alpha: f64,
    tuning: f64,
) -> (f64, f64) {
    let log_alpha = alpha.ln();
    let rho2 = (-2.0 * log_alpha + (-2.0 * log_alpha + 1.0).ln()) / tuning;
    let n_rho2_1 = n * rho2 + 1.0;
    // s² is the per-observation variance of the effect estimate.
    let s2 = variance * n;
    let half_width =
        s2.sqrt() * (2.0 * n_rho2_1 * (n_rho2_1.sqrt() / alpha).ln() / (n * n * rho2)).sqrt();
    // The p-value is 1 / e-value, e = exp(ρ²·S²/(2(Nρ² + 1))) / √(Nρ² + 1).
    // Written as √(Nρ² + 1)·exp(−…) it underflows gracefully where gbstats'
    // exp(…) overflows to infinity and its p-value becomes 0.
    let st2 = estimate * estimate * n / variance;
    let p_value = (n_rho2_1.sqrt() * (-rho2 * st2 / (2.0 * n_rho2_1)).exp()).min(1.0);
    (half_width, p_value)
}

/// gbstats' risk (expected loss) under the normal posterior N(μ, σ²):
/// keeping the control loses E[max(X, 0)] = μΦ(μ/σ) + σφ(μ/σ); shipping the
/// treatment loses E[max(−X, 0)] = σφ(μ/σ) − μΦ(−μ/σ). gbstats gets the same
/// through truncated-normal means.
fn risk(mu: f64, sigma: f64) -> (f64, f64) {
    let z = mu / sigma;
    let density = normal_pdf(z);
    let control = mu * normal_sf(-z) + sigma * density;
    let treatment = sigma * density - mu * normal_sf(z);
    // Each is non-negative; cancellation deep in a tail can leave a
    // rounding-sized negative.
    (control.max(0.0), treatment.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::moments::{proportion, sample_mean};

    const SETTINGS: TestSettings = TestSettings {
        alpha: 0.05,
        sequential_tuning_parameter: 5000.0,
    };

    fn estimated(e: Effect) -> Estimate {
        match e {
            Effect::Estimated(e) => e,
            Effect::NotEstimable { reason } => panic!("not estimable: {reason:?}"),
        }
    }

    #[test]
    fn equal_variances_and_sizes_give_the_pooled_dof() {
        // Equal n and variance: Welch's dof is 2(n − 1).
        let a = sample_mean(50.0, 100.0, 500.0); // SS − S²/n = 300
        let b = sample_mean(50.0, 150.0, 750.0); // SS − S²/n = 300
        assert_eq!(a.variance, b.variance);
        let e = estimated(effect(&a, &b, Scale::Absolute, SETTINGS));
        assert!((e.dof - 98.0).abs() < 1e-9);
        assert!((e.estimate - 1.0).abs() < 1e-12);
    }

    #[test]
    fn tiny_p_values_keep_their_precision() {
        // z ≈ 14: p ≈ 1e-44, which 1 − cdf would report as 0.
        let a = proportion(300_000.0, 15_000.0);
        let b = proportion(300_000.0, 17_500.0);
        let e = estimated(effect(&a, &b, Scale::Absolute, SETTINGS));
        assert!(e.p_value > 0.0 && e.p_value < 1e-40, "{}", e.p_value);
        assert!(e.chance_to_win == 1.0);
        assert!(e.risk_treatment >= 0.0 && e.risk_treatment < 1e-40);
    }

    #[test]
    fn not_estimable_cases() {
        let zero = proportion(100.0, 0.0);
        let some = proportion(100.0, 7.0);
        assert_eq!(
            effect(&zero, &some, Scale::Absolute, SETTINGS),
            Effect::NotEstimable {
                reason: NotEstimable::BaselineZero
            }
        );
        assert_eq!(
            effect(&some, &zero, Scale::Relative, SETTINGS),
            Effect::NotEstimable {
                reason: NotEstimable::ZeroVariance
            }
        );
    }

    #[test]
    fn overflowing_sums_are_reported_not_panicked_on() {
        let a = sample_mean(10.0, 1e150, 1e305);
        let b = sample_mean(10.0, 2e150, 1e305);
        assert_eq!(
            effect(&a, &b, Scale::Absolute, SETTINGS),
            Effect::NotEstimable {
                reason: NotEstimable::NumericalOverflow
            }
        );
    }

    #[test]
    fn relative_uses_the_delta_method() {
        let a = sample_mean(1000.0, 5000.0, 100_000.0);
        let b = sample_mean(1000.0, 5500.0, 120_000.0);
        let e = estimated(effect(&a, &b, Scale::Relative, SETTINGS));
        assert!((e.estimate - 0.1).abs() < 1e-12);
        let var = b.variance / (25.0 * 1000.0) + a.variance * 5.5 * 5.5 / (625.0 * 1000.0);
        assert!((e.std_error - var.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn sequential_interval_is_wider_than_the_fixed_one() {
        let a = sample_mean(2000.0, 10_000.0, 200_000.0);
        let b = sample_mean(2000.0, 10_600.0, 215_000.0);
        let e = estimated(effect(&a, &b, Scale::Absolute, SETTINGS));
        assert!(e.sequential_ci[0] < e.ci[0] && e.sequential_ci[1] > e.ci[1]);
        assert!(e.sequential_p_value >= e.p_value);
    }

    #[test]
    fn t_quantiles_are_accurate_at_any_dof() {
        // scipy.stats.t.isf(0.025, dof) for these dof.
        for (dof, q) in [
            (3.0, 3.182_446_305_283_708_6),
            (29.5, 2.043_724_966_772_122_5),
            (500_000.0, 1.959_968_729_093_804_8),
        ] {
            let x = t_upper_quantile(0.025, dof);
            assert!((x - q).abs() < 1e-12 * q, "dof {dof}: {x} vs {q}");
        }
    }

    #[test]
    fn risk_matches_its_definition() {
        // Symmetric posterior at 0: both losses are σ·φ(0).
        let (c, t) = risk(0.0, 2.0);
        let expected = 2.0 / (2.0 * std::f64::consts::PI).sqrt();
        assert!((c - expected).abs() < 1e-15 && (t - expected).abs() < 1e-15);
        // E[max(X,0)] − E[max(−X,0)] = E[X] = μ.
        let (c, t) = risk(0.7, 1.3);
        assert!((c - t - 0.7).abs() < 1e-15);
    }
}
