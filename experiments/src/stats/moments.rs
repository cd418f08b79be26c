//! Per-arm means and variances, defined exactly as gbstats 0.8.0's
//! `ProportionStatistic`, `SampleMeanStatistic` and
//! `RegressionAdjustedStatistic` define them (gbstats/models/statistics.py).

use super::input::Covariate;

/// One metric in one arm: what the tests need to compare two arms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ArmMetric {
    /// Recipients.
    pub n: f64,
    /// The mean the effect is measured on (CUPED-adjusted where applicable).
    pub mean: f64,
    /// The plain mean. gbstats divides by the control's unadjusted mean for
    /// relative lift and uses unadjusted means in the delta method, even
    /// under CUPED.
    pub unadjusted_mean: f64,
    /// Per-recipient variance (of the adjusted metric under CUPED).
    pub variance: f64,
    /// Under CUPED, the parts the adjusted variance is made of: the
    /// relative lift's delta method weighs them separately.
    pub adjustment: Option<Adjustment>,
}

/// What a CUPED-adjusted metric was built from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Adjustment {
    /// θ, pooled over both arms.
    pub theta: f64,
    /// Var(y), the unadjusted metric's variance.
    pub post_variance: f64,
    /// Var(x), the covariate's variance.
    pub pre_variance: f64,
    /// Cov(y, x) within the arm.
    pub covariance: f64,
}

/// Conversion as a proportion: mean p = c/n, variance p(1 − p).
///
/// gbstats uses the population variance p(1 − p), not the unbiased
/// n/(n − 1) version; so do we, for the t-test and its degrees of freedom.
pub(crate) fn proportion(n: f64, conversions: f64) -> ArmMetric {
    let p = conversions / n;
    ArmMetric {
        n,
        mean: p,
        unadjusted_mean: p,
        variance: p * (1.0 - p),
        adjustment: None,
    }
}

/// A per-recipient sum such as revenue: mean S/n, sample variance
/// (SS − S²/n)/(n − 1), and 0 for a single recipient (gbstats' convention,
/// which makes the comparison "not estimable" rather than dividing by zero).
pub(crate) fn sample_mean(n: f64, sum: f64, sum_squares: f64) -> ArmMetric {
    let mean = sum / n;
    ArmMetric {
        n,
        mean,
        unadjusted_mean: mean,
        variance: sample_variance(n, sum, sum_squares),
        adjustment: None,
    }
}

fn sample_variance(n: f64, sum: f64, sum_squares: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        (sum_squares - sum * sum / n) / (n - 1.0)
    }
}

/// Sample covariance of revenue (y) and covariate (x) within one group.
fn covariance(n: f64, sum_y: f64, sum_x: f64, sum_products: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        (sum_products - sum_y * sum_x / n) / (n - 1.0)
    }
}

/// Revenue sums of one arm with its pre-period covariate: the input to CUPED.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RevenueWithCovariate {
    pub n: f64,
    pub sum: f64,
    pub sum_squares: f64,
    pub covariate: Covariate,
}

/// CUPED's θ = Cov(Y, X) / Var(X), pooled over both arms as gbstats'
/// `compute_theta` does: the sums of the two arms are added and the moments
/// taken over all recipients together (so, like gbstats, a difference in the
/// arms' means enters the pooled covariance).
///
/// Returns 0 when the pooled revenue or covariate variance is exactly 0;
/// gbstats then falls back to the unadjusted analysis, which is what θ = 0
/// gives.
pub(crate) fn cuped_theta(a: &RevenueWithCovariate, b: &RevenueWithCovariate) -> f64 {
    let n = a.n + b.n;
    let sum_y = a.sum + b.sum;
    let sum_x = a.covariate.sum + b.covariate.sum;
    let var_y = sample_variance(n, sum_y, a.sum_squares + b.sum_squares);
    let var_x = sample_variance(n, sum_x, a.covariate.sum_squares + b.covariate.sum_squares);
    // gbstats compares with == 0, not <= 0; kept so that rounding noise
    // lands in the same branch.
    if var_x == 0.0 || var_y == 0.0 {
        return 0.0;
    }
    covariance(
        n,
        sum_y,
        sum_x,
        a.covariate.sum_products + b.covariate.sum_products,
    ) / var_x
}

/// Revenue adjusted by θ·(covariate): mean ȳ − θx̄ and variance
/// Var(Y) + θ²Var(X) − 2θCov(Y, X); the unadjusted mean stays ȳ.
pub(crate) fn regression_adjusted(arm: &RevenueWithCovariate, theta: f64) -> ArmMetric {
    let post = sample_mean(arm.n, arm.sum, arm.sum_squares);
    let c = &arm.covariate;
    let pre = sample_mean(arm.n, c.sum, c.sum_squares);
    let cov = covariance(arm.n, arm.sum, c.sum, c.sum_products);
    let variance = if arm.n <= 1.0 {
        0.0
    } else {
        post.variance + theta * theta * pre.variance - 2.0 * theta * cov
    };
    ArmMetric {
        n: arm.n,
        mean: post.mean - theta * pre.mean,
        unadjusted_mean: post.mean,
        variance,
        adjustment: Some(Adjustment {
            theta,
            post_variance: post.variance,
            pre_variance: pre.variance,
            covariance: cov,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    /// Sums of a small explicit sample, so the formulas can be checked
    /// against the textbook definitions.
    fn arm(ys: &[f64], xs: &[f64]) -> RevenueWithCovariate {
        RevenueWithCovariate {
            n: ys.len() as f64,
            sum: ys.iter().sum(),
            sum_squares: ys.iter().map(|y| y * y).sum(),
            covariate: Covariate {
                sum: xs.iter().sum(),
                sum_squares: xs.iter().map(|x| x * x).sum(),
                sum_products: ys.iter().zip(xs).map(|(y, x)| y * x).sum(),
            },
        }
    }

    #[test]
    fn sample_variance_is_the_unbiased_one() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, Σ(x − 5)² = 32, so 32/7.
        let m = sample_mean(8.0, 40.0, 232.0);
        assert_eq!(m.mean, 5.0);
        assert!(close(m.variance, 32.0 / 7.0));
        assert_eq!(sample_mean(1.0, 3.0, 9.0).variance, 0.0);
    }

    #[test]
    fn proportion_variance_is_p_one_minus_p() {
        let m = proportion(200.0, 50.0);
        assert_eq!(m.mean, 0.25);
        assert_eq!(m.variance, 0.1875);
    }

    #[test]
    fn theta_is_the_pooled_regression_slope() {
        // y = 2x + 1 exactly: the pooled slope is 2 and the adjusted
        // variance vanishes.
        let a = arm(&[3.0, 5.0, 9.0], &[1.0, 2.0, 4.0]);
        let b = arm(&[1.0, 7.0, 11.0, 13.0], &[0.0, 3.0, 5.0, 6.0]);
        let theta = cuped_theta(&a, &b);
        assert!(close(theta, 2.0));
        let adj = regression_adjusted(&a, theta);
        assert!(adj.variance.abs() < 1e-12);
        assert!(close(adj.mean, 17.0 / 3.0 - 2.0 * 7.0 / 3.0));
        assert!(close(adj.unadjusted_mean, 17.0 / 3.0));
    }

    #[test]
    fn theta_is_zero_without_covariate_variance() {
        let a = arm(&[3.0, 5.0], &[0.0, 0.0]);
        let b = arm(&[1.0, 7.0], &[0.0, 0.0]);
        assert_eq!(cuped_theta(&a, &b), 0.0);
        let adjusted = regression_adjusted(&a, 0.0);
        let plain = sample_mean(2.0, 8.0, 34.0);
        assert_eq!(
            (adjusted.mean, adjusted.variance),
            (plain.mean, plain.variance)
        );
    }
}
