//! The pooled two-proportion z-test for conversion, the classic test beside
//! gbstats' Welch t-test on proportions (statsmodels' `proportions_ztest`
//! with its default pooled variance).

use serde::Serialize;

use super::dist::normal_sf;

/// Result of the pooled two-proportion z-test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZTest {
    /// Conversion rate of both arms together, the rate under the null.
    pub pooled_rate: f64,
    /// (p_treatment − p_control) / √(p̂(1 − p̂)(1/n_c + 1/n_t)).
    pub z: f64,
    /// Two-sided p-value, 2·sf(|z|).
    pub p_value: f64,
}

/// Tests whether two arms convert at the same rate. `None` when the pooled
/// rate is 0 or 1: with nobody (or everybody) converting there is no
/// variance to test against.
pub(crate) fn pooled_z_test(
    n_control: f64,
    conv_control: f64,
    n_treatment: f64,
    conv_treatment: f64,
) -> Option<ZTest> {
    let pooled_rate = (conv_control + conv_treatment) / (n_control + n_treatment);
    if pooled_rate <= 0.0 || pooled_rate >= 1.0 {
        return None;
    }
    let se = (pooled_rate * (1.0 - pooled_rate) * (1.0 / n_control + 1.0 / n_treatment)).sqrt();
    let z = (conv_treatment / n_treatment - conv_control / n_control) / se;
    let p_value = (2.0 * normal_sf(z.abs())).min(1.0);
    Some(ZTest {
        pooled_rate,
        z,
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_example() {
        // 50/1000 vs 80/1000: p̂ = 0.065, se = √(0.065·0.935·0.002).
        let z = pooled_z_test(1000.0, 50.0, 1000.0, 80.0).expect("defined");
        let se = (0.065f64 * 0.935 * 0.002).sqrt();
        assert!((z.z - 0.03 / se).abs() < 1e-12);
        // z ≈ 2.72: p ≈ 0.0065.
        assert!((z.p_value - 0.006_5).abs() < 2e-4, "{}", z.p_value);
    }

    #[test]
    fn undefined_without_conversions() {
        assert_eq!(pooled_z_test(10.0, 0.0, 12.0, 0.0), None);
        assert_eq!(pooled_z_test(10.0, 10.0, 12.0, 12.0), None);
    }
}
