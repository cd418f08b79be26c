//! Sample-ratio mismatch: does the observed split of recipients match the
//! configured one? A mismatch means assignment or logging is broken, and no
//! lift from the experiment can be trusted until it is explained.

use serde::Serialize;

use super::dist::chi_square_sf;

/// Pearson's chi-square test of observed arm sizes against configured weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Srm {
    /// Σ (observed − expected)² / expected over the arms.
    pub chi_square: f64,
    /// Degrees of freedom, arms − 1.
    pub dof: usize,
    /// Upper tail of χ²(dof) at `chi_square`.
    pub p_value: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// `p_value < threshold`: the split is off.
    pub flagged: bool,
}

/// Runs the test as gbstats' `check_srm` does (expected count of an arm =
/// its share of the weights × all recipients), with scipy's survival
/// function for the p-value. `weights` are positive and as many as `counts`
/// (at least two), which input validation guarantees.
pub(crate) fn sample_ratio_mismatch(counts: &[f64], weights: &[f64], threshold: f64) -> Srm {
    let total: f64 = counts.iter().sum();
    let total_weight: f64 = weights.iter().sum();
    let chi_square: f64 = counts
        .iter()
        .zip(weights)
        .map(|(observed, w)| {
            let expected = w / total_weight * total;
            (observed - expected).powi(2) / expected
        })
        .sum();
    let dof = counts.len() - 1;
    let p_value = match u32::try_from(dof) {
        Ok(k) if k > 0 => chi_square_sf(chi_square, k),
        _ => 1.0, // fewer than two arms: nothing to compare
    };
    Srm {
        chi_square,
        dof,
        p_value,
        threshold,
        flagged: p_value < threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_split_is_not_flagged() {
        let srm = sample_ratio_mismatch(&[5000.0, 5000.0], &[1.0, 1.0], 0.001);
        assert_eq!(srm.chi_square, 0.0);
        assert_eq!(srm.p_value, 1.0);
        assert!(!srm.flagged);
    }

    #[test]
    fn skewed_split_is_flagged() {
        // 10,300 vs 9,700 against 50/50: χ² = 2·300²/10,000 = 18, p ≈ 2.2e-5.
        let srm = sample_ratio_mismatch(&[10_300.0, 9_700.0], &[50.0, 50.0], 0.001);
        assert!((srm.chi_square - 18.0).abs() < 1e-12);
        assert!((srm.p_value - 2.209_5e-5).abs() < 1e-8, "{}", srm.p_value);
        assert!(srm.flagged);
        assert_eq!(srm.dof, 1);
    }

    #[test]
    fn weights_need_not_sum_to_one() {
        let a = sample_ratio_mismatch(&[1000.0, 4600.0, 4400.0], &[10.0, 45.0, 45.0], 0.001);
        let b = sample_ratio_mismatch(&[1000.0, 4600.0, 4400.0], &[0.1, 0.45, 0.45], 0.001);
        assert!((a.chi_square - b.chi_square).abs() < 1e-9);
        assert_eq!(a.dof, 2);
    }
}
