//! The distribution functions the tests need, written so that every call
//! returns after a bounded amount of work for any input.
//!
//! statrs' `StudentsT::inverse_cdf` inverts the incomplete beta function with
//! an unbounded loop that never ends once the degrees of freedom pass ~1.45e7
//! (two arms of ~7.25M recipients), and its incomplete gamma functions loop
//! until convergence. So nothing here calls an iterative special function
//! without a bound:
//! - up to [`LARGE_DOF`] degrees of freedom the t tail is statrs'
//!   `beta_reg` (a continued fraction cut at 140 terms, which loses
//!   precision beyond: 1e-9 relative at 7.2e6 dof), and the quantile is
//!   found by at most [`MAX_STEPS`] safeguarded Newton steps on that tail,
//!   each kept inside a bracket that bisection shrinks whenever Newton
//!   misses;
//! - above, both come from the Cornish–Fisher expansion of the quantile
//!   in 1/ν (Abramowitz & Stegun 26.7.5), whose first neglected term is
//!   below 1e-20 there: the quantile is the expansion at the normal
//!   quantile, and the tail is the normal tail at the expansion's inverse
//!   (Newton steps from Hill's transform, ACM Algorithm 395);
//! - the chi-square tail for integer degrees of freedom is a finite sum;
//! - the normal tail is `libm`'s `erfc` (musl's, correct to an ulp; statrs'
//!   is off by ~1e-10 relative), the normal quantile statrs' `erfc_inv`
//!   polished by two Newton steps.
//!
//! `tests/reference.rs` checks all of them against mpmath at 50 digits.

use std::f64::consts::{PI, SQRT_2};

use libm::erfc;
use statrs::function::beta::beta_reg;
use statrs::function::erf::erfc_inv;
use statrs::function::gamma::ln_gamma;

/// Above this many degrees of freedom the t distribution comes from the
/// Cornish–Fisher expansion, exact to rounding there; below, from statrs'
/// incomplete beta, still exact to ~1e-11 here.
pub(crate) const LARGE_DOF: f64 = 1e5;

/// Most refinement steps any quantile takes.
pub(crate) const MAX_STEPS: usize = 200;

/// P(Z > z) for a standard normal Z, with full relative precision in the
/// upper tail.
pub(crate) fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / SQRT_2)
}

/// The standard normal density.
pub(crate) fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * PI).sqrt()
}

/// The z with P(Z > z) = `tail`, for 0 < tail < 1.
pub fn normal_upper_quantile(tail: f64) -> f64 {
    let mut z = SQRT_2 * erfc_inv(2.0 * tail);
    // erfc_inv is a rational approximation; two Newton steps on the
    // logarithm of the tail bring it to rounding in every tail.
    for _ in 0..2 {
        let sf = normal_sf(z);
        let step = (sf.ln() - tail.ln()) * sf / normal_pdf(z);
        if !step.is_finite() {
            break;
        }
        z += step;
    }
    z
}

/// P(T > x) for Student's t with `dof` degrees of freedom (`dof` > 0; NaN
/// otherwise). Infinite `dof` is the normal.
pub(crate) fn t_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || !(dof > 0.0) {
        return f64::NAN;
    }
    if x < 0.0 {
        return 1.0 - t_sf(-x, dof);
    }
    if dof.is_infinite() {
        return normal_sf(x);
    }
    if x.is_infinite() {
        return 0.0;
    }
    if dof > LARGE_DOF {
        return normal_sf(cornish_fisher_inverse(x, dof));
    }
    // I_{ν/(ν+x²)}(ν/2, 1/2) / 2; written with x²/ν so the argument keeps
    // its precision when x² is far below ν.
    let h = 1.0 / (1.0 + x * x / dof);
    0.5 * beta_reg(dof / 2.0, 0.5, h)
}

/// The normal deviate z with the same upper tail as `x` under t(`dof`):
/// the z that [`cornish_fisher`] maps to `x`, by Newton steps (at most 20;
/// two suffice) from Hill's approximation.
fn cornish_fisher_inverse(x: f64, dof: f64) -> f64 {
    let mut z = hill_z(x, dof);
    for _ in 0..20 {
        let step = (cornish_fisher(z, dof) - x) / cornish_fisher_slope(z, dof);
        if !step.is_finite() {
            break;
        }
        z -= step;
        if step.abs() <= f64::EPSILON * z.abs() {
            break;
        }
    }
    z
}

/// d/dz of [`cornish_fisher`].
fn cornish_fisher_slope(z: f64, dof: f64) -> f64 {
    let z2 = z * z;
    let d1 = (3.0 * z2 + 1.0) / 4.0;
    let d2 = ((25.0 * z2 + 48.0) * z2 + 3.0) / 96.0;
    let d3 = (((21.0 * z2 + 95.0) * z2 + 51.0) * z2 - 15.0) / 384.0;
    let d4 = ((((711.0 * z2 + 5432.0) * z2 + 7410.0) * z2 - 5760.0) * z2 - 945.0) / 92160.0;
    1.0 + (d1 + (d2 + (d3 + d4 / dof) / dof) / dof) / dof
}

/// Hill (1970), ACM Algorithm 395: the normal deviate with the same upper
/// tail as `x` under t(`dof`), good to O(ν⁻²): the starting point of
/// [`cornish_fisher_inverse`].
fn hill_z(x: f64, dof: f64) -> f64 {
    let a = dof - 0.5;
    let b = 48.0 * a * a;
    let y = a * (x * x / dof).ln_1p();
    let correction =
        ((((-0.4 * y - 3.3) * y - 24.0) * y - 85.5) / (0.8 * y * y + 100.0 + b) + y + 3.0) / b
            + 1.0;
    correction * y.sqrt()
}

/// The density of t(`dof`) at `x` (`dof` ≤ [`LARGE_DOF`]), for the Newton
/// steps (its accuracy sets how fast they converge, not where they end).
fn t_pdf(x: f64, dof: f64) -> f64 {
    let log_norm = ln_gamma((dof + 1.0) / 2.0) - ln_gamma(dof / 2.0) - 0.5 * (dof * PI).ln();
    (log_norm - (dof + 1.0) / 2.0 * (x * x / dof).ln_1p()).exp()
}

/// The x with P(T > x) = `tail` under t(`dof`), for 0 < tail ≤ 1/2 and
/// `dof` > 0. Always returns, after at most [`MAX_STEPS`] refinements.
pub(crate) fn t_upper_quantile(tail: f64, dof: f64) -> f64 {
    if !(tail > 0.0 && tail <= 0.5) || !(dof > 0.0) {
        return f64::NAN;
    }
    if dof.is_infinite() {
        return normal_upper_quantile(tail);
    }
    // Closed forms where the expansion below is poorest.
    if dof == 1.0 {
        return 1.0 / (PI * tail).tan();
    }
    if dof == 2.0 {
        return (1.0 - 2.0 * tail) / (2.0 * tail * (1.0 - tail)).sqrt();
    }
    let guess = cornish_fisher(normal_upper_quantile(tail), dof);
    if dof > LARGE_DOF {
        return guess;
    }
    solve_upper_tail(tail, dof, guess)
}

/// Abramowitz & Stegun 26.7.5: the t quantile as the normal one plus
/// corrections in 1/ν, to the fourth. Exact to rounding above
/// [`LARGE_DOF`]; only a starting point for small ν.
fn cornish_fisher(z: f64, dof: f64) -> f64 {
    let z2 = z * z;
    let g1 = (z2 + 1.0) * z / 4.0;
    let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
    let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
    let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
    z + (g1 + (g2 + (g3 + g4 / dof) / dof) / dof) / dof
}

/// Solves t_sf(x) = tail for x ≥ 0 by Newton steps on log t_sf, kept in a
/// shrinking bracket [lo, hi] and replaced by bisection when they leave it.
fn solve_upper_tail(tail: f64, dof: f64, guess: f64) -> f64 {
    // t_sf(0) = 1/2 ≥ tail, so 0 is a lower end; the upper end is found by
    // doubling, at most ~2100 times before it reaches infinity.
    let (mut lo, mut hi) = (0.0_f64, guess.max(1.0));
    while t_sf(hi, dof) > tail && hi.is_finite() {
        lo = hi;
        hi *= 2.0;
    }
    if !hi.is_finite() {
        return f64::INFINITY;
    }
    let target = tail.ln();
    let mut x = guess.clamp(lo, hi);
    for _ in 0..MAX_STEPS {
        let sf = t_sf(x, dof);
        if sf > tail {
            lo = x;
        } else {
            hi = x;
        }
        let newton = x + (sf.ln() - target) * sf / t_pdf(x, dof);
        let next = if newton.is_finite() && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if (next - x).abs() <= 4.0 * f64::EPSILON * x.abs() || hi - lo <= f64::EPSILON * hi {
            return next;
        }
        x = next;
    }
    x
}

/// P(χ²(k) > x) for integer `k` ≥ 1: a finite sum of k/2 terms, each
/// taken in logarithms so none overflows.
pub(crate) fn chi_square_sf(x: f64, k: u32) -> f64 {
    if x.is_nan() || k == 0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let half = x / 2.0;
    let term = |power: f64| (power * half.ln() - half - ln_gamma(power + 1.0)).exp();
    let sum: f64 = if k % 2 == 0 {
        // e^{−x/2} Σ_{i<k/2} (x/2)^i / i!
        (0..k / 2).map(|i| term(f64::from(i))).sum()
    } else {
        // erfc(√(x/2)) + e^{−x/2} Σ_{1≤i≤(k−1)/2} (x/2)^{i−½} / Γ(i + ½)
        erfc(half.sqrt()) + (1..=k / 2).map(|i| term(f64::from(i) - 0.5)).sum::<f64>()
    };
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms_and_symmetry() {
        // t(1) is Cauchy: P(T > 1) = 1/4.
        assert!((t_sf(1.0, 1.0) - 0.25).abs() < 1e-15);
        assert!((t_upper_quantile(0.25, 1.0) - 1.0).abs() < 1e-15);
        assert!((t_sf(-1.0, 1.0) - 0.75).abs() < 1e-15);
        // χ²(2) tail is e^{−x/2}; χ²(1) tail is erfc(√(x/2)).
        assert!((chi_square_sf(3.0, 2) - (-1.5f64).exp()).abs() < 1e-15);
        assert!((chi_square_sf(3.84, 1) - erfc((1.92f64).sqrt())).abs() < 1e-15);
        let z = normal_upper_quantile(0.025);
        assert!((z - 1.959_963_984_540_054).abs() < 1e-14, "{z}");
        assert_eq!(t_sf(f64::INFINITY, 7.0), 0.0);
        assert_eq!(t_sf(f64::INFINITY, 1e9), 0.0);
        assert_eq!(t_sf(f64::NEG_INFINITY, 1e9), 1.0);
        assert_eq!(chi_square_sf(0.0, 3), 1.0);
    }

    #[test]
    fn quantile_inverts_the_tail() {
        for dof in [3.0, 4.5, 17.0, 1e4, 1e5, 2e5, 1.45e7, 1e12, 1e300] {
            for tail in [0.4, 0.025, 1e-6, 1e-100] {
                let x = t_upper_quantile(tail, dof);
                let back = t_sf(x, dof);
                assert!(
                    (back - tail).abs() <= 1e-10 * tail,
                    "dof {dof} tail {tail}: x {x} gives {back}"
                );
            }
        }
    }

    /// Every tail and quantile in `fixtures/reference.json` (mpmath, 50
    /// digits) to 1e-9 relative: t from 1 to 1e15 degrees of freedom, and
    /// the chi-square tails of up to 99 degrees of freedom.
    #[test]
    fn agrees_with_mpmath() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../../fixtures/reference.json")).expect("parses");
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().expect("number");
        let mut failures = Vec::new();
        let mut check = |what: String, got: f64, want: f64| {
            if !((got - want).abs() <= 1e-9 * want.abs() || (want < 1e-300 && got < 1e-300)) {
                failures.push(format!("{what}: {got:e} vs {want:e}"));
            }
        };
        for r in reference["t_sf"].as_array().expect("t_sf") {
            let (dof, x) = (num(r, "dof"), num(r, "x"));
            check(format!("t_sf({x}, {dof})"), t_sf(x, dof), num(r, "sf"));
        }
        for r in reference["t_isf"].as_array().expect("t_isf") {
            let (dof, tail) = (num(r, "dof"), num(r, "tail"));
            check(
                format!("t_isf({tail}, {dof})"),
                t_upper_quantile(tail, dof),
                num(r, "x"),
            );
        }
        for r in reference["chi2_sf"].as_array().expect("chi2_sf") {
            let (k, x) = (num(r, "dof") as u32, num(r, "x"));
            check(
                format!("chi2_sf({x}, {k})"),
                chi_square_sf(x, k),
                num(r, "sf"),
            );
        }
        assert!(
            failures.is_empty(),
            "{} disagree:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn nonsense_in_gives_nan_not_a_hang() {
        assert!(t_sf(1.0, 0.0).is_nan() && t_sf(f64::NAN, 3.0).is_nan());
        assert!(t_upper_quantile(0.0, 3.0).is_nan() && t_upper_quantile(0.7, 3.0).is_nan());
        assert!(t_upper_quantile(0.025, f64::NAN).is_nan());
        assert!(chi_square_sf(f64::NAN, 2).is_nan());
    }
}
