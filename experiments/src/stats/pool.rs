//! Pooling one effect across experiments: the inverse-variance (fixed
//! effect) estimate, Cochran's Q and I² for how much the experiments
//! disagree, and the DerSimonian–Laird random-effects estimate that widens
//! its interval by that disagreement (Borenstein et al., *Introduction to
//! Meta-Analysis*, 2009, ch. 11–16).
//!
//! The program view uses it to answer "do triggered messages beat
//! scheduled ones across every rule?" from each rule's own comparison.

use serde::Serialize;

use super::dist::{chi_square_sf, normal_sf, normal_upper_quantile};
use super::input::StatsError;

/// One experiment's estimate of the effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Study {
    /// The estimate.
    pub estimate: f64,
    /// Its standard error (positive and finite).
    pub std_error: f64,
}

/// A pooled estimate with its (1 − alpha) normal interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PooledEstimate {
    /// The weighted mean of the studies' estimates.
    pub estimate: f64,
    /// Its standard error, 1/√Σw.
    pub std_error: f64,
    /// estimate ± z·std_error.
    pub ci: [f64; 2],
    /// Two-sided p-value of estimate = 0.
    pub p_value: f64,
}

/// How much the studies disagree beyond their sampling error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heterogeneity {
    /// Cochran's Q = Σ wᵢ(θᵢ − θ̂)².
    pub q: f64,
    /// Its degrees of freedom, studies − 1.
    pub dof: u32,
    /// P(χ²(dof) > Q): small means the effect differs between studies.
    pub p_value: f64,
    /// I² = max(0, (Q − dof)/Q): the share of the spread that is real
    /// difference rather than noise (0 to 1).
    pub i_squared: f64,
    /// τ², the DerSimonian–Laird between-study variance.
    pub tau_squared: f64,
}

/// The pooled effect of several studies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pooled {
    /// Studies pooled.
    pub studies: usize,
    /// Each study's share of the fixed-effect weight (sums to 1), in the
    /// order given.
    pub weights: Vec<f64>,
    /// Inverse-variance weighted, assuming one common effect.
    pub fixed: PooledEstimate,
    /// Assuming each study has its own effect drawn around a mean: weights
    /// 1/(seᵢ² + τ²), a wider interval when the studies disagree. Equals
    /// `fixed` when τ² = 0.
    pub random: PooledEstimate,
    /// Null with a single study.
    pub heterogeneity: Option<Heterogeneity>,
}

/// Pools `studies` (at least one, each with a positive finite standard
/// error and a finite estimate) at level 1 − `alpha`.
pub fn pool(studies: &[Study], alpha: f64) -> Result<Pooled, StatsError> {
    let invalid = |problem: String| StatsError::Invalid {
        field: "studies",
        problem,
    };
    if studies.is_empty() {
        return Err(invalid("needs at least one study".into()));
    }
    if let Some((i, s)) = studies
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.estimate.is_finite() && s.std_error.is_finite() && s.std_error > 0.0))
    {
        return Err(invalid(format!(
            "study {i} has estimate {} and standard error {}: both must be finite, the error positive",
            s.estimate, s.std_error
        )));
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(invalid(format!("alpha must lie in (0, 1), got {alpha}")));
    }
    let z = normal_upper_quantile(alpha / 2.0);
    let weighted = |w: &[f64]| {
        let total: f64 = w.iter().sum();
        let estimate = w
            .iter()
            .zip(studies)
            .map(|(w, s)| w * s.estimate)
            .sum::<f64>()
            / total;
        let std_error = total.recip().sqrt();
        PooledEstimate {
            estimate,
            std_error,
            ci: [estimate - z * std_error, estimate + z * std_error],
            p_value: (2.0 * normal_sf((estimate / std_error).abs())).min(1.0),
        }
    };
    let w: Vec<f64> = studies.iter().map(|s| s.std_error.powi(-2)).collect();
    let fixed = weighted(&w);
    let total: f64 = w.iter().sum();
    let heterogeneity = (studies.len() > 1).then(|| {
        let q: f64 = w
            .iter()
            .zip(studies)
            .map(|(w, s)| w * (s.estimate - fixed.estimate).powi(2))
            .sum();
        let dof = (studies.len() - 1) as u32;
        let c = total - w.iter().map(|w| w * w).sum::<f64>() / total;
        Heterogeneity {
            q,
            dof,
            p_value: chi_square_sf(q, dof),
            i_squared: if q > 0.0 {
                ((q - f64::from(dof)) / q).max(0.0)
            } else {
                0.0
            },
            tau_squared: if c > 0.0 {
                ((q - f64::from(dof)) / c).max(0.0)
            } else {
                0.0
            },
        }
    });
    let tau2 = heterogeneity.as_ref().map_or(0.0, |h| h.tau_squared);
    let random = if tau2 > 0.0 {
        let w_star: Vec<f64> = studies
            .iter()
            .map(|s| (s.std_error.powi(2) + tau2).recip())
            .collect();
        weighted(&w_star)
    } else {
        fixed.clone()
    };
    Ok(Pooled {
        studies: studies.len(),
        weights: w.iter().map(|w| w / total).collect(),
        fixed,
        random,
        heterogeneity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(estimate: f64, std_error: f64) -> Study {
        Study {
            estimate,
            std_error,
        }
    }

    #[test]
    fn equal_studies_pool_to_their_mean_with_a_smaller_error() {
        let p = pool(&[study(0.2, 0.1), study(0.2, 0.1)], 0.05).expect("valid");
        assert!((p.fixed.estimate - 0.2).abs() < 1e-15);
        assert!((p.fixed.std_error - 0.1 / 2f64.sqrt()).abs() < 1e-15);
        let h = p.heterogeneity.expect("two studies");
        assert!(h.q < 1e-20, "{h:?}");
        assert_eq!((h.i_squared, h.tau_squared), (0.0, 0.0));
        assert_eq!(p.random, p.fixed);
        assert_eq!(p.weights, [0.5, 0.5]);
    }

    #[test]
    fn a_worked_example_by_hand() {
        // w = 100, 25, 4: θ̂ = (10 + 5 + 2)/129 ... see each line.
        let s = [study(0.1, 0.1), study(0.2, 0.2), study(0.5, 0.5)];
        let p = pool(&s, 0.05).expect("valid");
        let (w1, w2, w3) = (100.0, 25.0, 4.0);
        let total = w1 + w2 + w3;
        let est = (w1 * 0.1 + w2 * 0.2 + w3 * 0.5) / total;
        assert!((p.fixed.estimate - est).abs() < 1e-15);
        assert!((p.fixed.std_error - (1.0 / total).sqrt()).abs() < 1e-15);
        let q = w1 * (0.1 - est).powi(2) + w2 * (0.2 - est).powi(2) + w3 * (0.5 - est).powi(2);
        let h = p.heterogeneity.expect("three");
        assert!((h.q - q).abs() < 1e-14);
        assert_eq!(h.dof, 2);
        // Q < dof: no excess spread, τ² and I² are 0 and random = fixed.
        assert!(q < 2.0);
        assert_eq!((h.i_squared, h.tau_squared), (0.0, 0.0));
        // χ²(2) tail is e^{−Q/2}.
        assert!((h.p_value - (-q / 2.0).exp()).abs() < 1e-15);
    }

    #[test]
    fn disagreeing_studies_widen_the_random_effects_interval() {
        let s = [study(0.0, 0.01), study(0.5, 0.01), study(1.0, 0.02)];
        let p = pool(&s, 0.05).expect("valid");
        let h = p.heterogeneity.as_ref().expect("three");
        assert!(h.i_squared > 0.99 && h.p_value < 1e-100, "{h:?}");
        let w: Vec<f64> = s.iter().map(|s| s.std_error.powi(-2)).collect();
        let total: f64 = w.iter().sum();
        let c = total - w.iter().map(|w| w * w).sum::<f64>() / total;
        assert!((h.tau_squared - (h.q - 2.0) / c).abs() < 1e-12);
        assert!(p.random.std_error > 10.0 * p.fixed.std_error);
        // Random-effects weights are nearly equal: the mean is near 0.5.
        assert!((p.random.estimate - 0.5).abs() < 0.05, "{:?}", p.random);
    }

    #[test]
    fn one_study_is_itself_and_bad_studies_are_refused() {
        let p = pool(&[study(0.3, 0.1)], 0.05).expect("valid");
        assert_eq!(p.fixed.estimate, 0.3);
        assert!(p.heterogeneity.is_none());
        assert!((p.fixed.ci[1] - (0.3 + 1.959_963_984_540_054 * 0.1)).abs() < 1e-12);
        assert!(pool(&[], 0.05).is_err());
        assert!(pool(&[study(0.1, 0.0)], 0.05).is_err());
        assert!(pool(&[study(f64::NAN, 0.1)], 0.05).is_err());
    }
}
