//! Adjusted p-values for many simultaneous tests, such as one headline
//! p-value per rule in the experiments overview. Both match statsmodels'
//! `multipletests` (methods `holm` and `fdr_bh`) and scipy's
//! `false_discovery_control`.

use super::input::StatsError;

/// Holm–Bonferroni adjusted p-values, in the order given: controls the
/// family-wise error rate (the chance of any false positive).
///
/// With p₍₁₎ ≤ … ≤ p₍ₘ₎ sorted, the adjusted p₍ᵢ₎ is
/// min(1, maxⱼ≤ᵢ (m − j + 1)·p₍ⱼ₎).
pub fn holm_bonferroni(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = sorted_order(p_values)?;
    let m = p_values.len() as f64;
    let mut adjusted = vec![0.0; p_values.len()];
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running_max = running_max.max((m - rank as f64) * p_values[i]);
        adjusted[i] = running_max.min(1.0);
    }
    Ok(adjusted)
}

/// Benjamini–Hochberg adjusted p-values (q-values), in the order given:
/// controls the false discovery rate (the expected share of false positives
/// among the rejections).
///
/// With p₍₁₎ ≤ … ≤ p₍ₘ₎ sorted, the adjusted p₍ᵢ₎ is
/// min(1, minⱼ≥ᵢ m·p₍ⱼ₎ / j).
pub fn benjamini_hochberg(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = sorted_order(p_values)?;
    let m = p_values.len() as f64;
    let mut adjusted = vec![0.0; p_values.len()];
    let mut running_min = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        running_min = running_min.min(m * p_values[i] / (rank + 1) as f64);
        adjusted[i] = running_min.min(1.0);
    }
    Ok(adjusted)
}

/// Indices of `p_values` from smallest to largest, after checking each lies
/// in [0, 1]. Ties may come in any order: both adjustments give tied
/// p-values the same adjusted value.
fn sorted_order(p_values: &[f64]) -> Result<Vec<usize>, StatsError> {
    if let Some((index, &value)) = p_values
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(StatsError::InvalidPValue { index, value });
    }
    let mut order: Vec<usize> = (0..p_values.len()).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn holm_worked_example() {
        // m = 4, sorted 0.01, 0.02, 0.03, 0.5 → 0.04, 0.06, 0.06, 0.5.
        let adjusted = holm_bonferroni(&[0.03, 0.01, 0.5, 0.02]).expect("valid");
        assert_close(&adjusted, &[0.06, 0.04, 0.5, 0.06]);
    }

    #[test]
    fn bh_worked_example() {
        // m = 4, sorted 0.01, 0.02, 0.03, 0.5 → 4p/i = 0.04, 0.04, 0.04, 0.5.
        let adjusted = benjamini_hochberg(&[0.03, 0.01, 0.5, 0.02]).expect("valid");
        assert_close(&adjusted, &[0.04, 0.04, 0.5, 0.04]);
    }

    #[test]
    fn capped_at_one_and_empty_is_fine() {
        assert_close(&holm_bonferroni(&[0.6, 0.7]).expect("valid"), &[1.0, 1.0]);
        assert!(benjamini_hochberg(&[]).expect("valid").is_empty());
    }

    #[test]
    fn rejects_values_outside_the_unit_interval() {
        assert_eq!(
            holm_bonferroni(&[0.1, 1.5]),
            Err(StatsError::InvalidPValue {
                index: 1,
                value: 1.5
            })
        );
        assert!(benjamini_hochberg(&[f64::NAN]).is_err());
    }
}
