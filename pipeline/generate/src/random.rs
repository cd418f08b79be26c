//! Seeded random streams and the draws the generator makes from them.

use super::*;

/// Independent random streams per (seed, purpose, index). SplitMix64 spreads
/// nearby inputs so neighbouring customers get unrelated streams.
pub(crate) fn stream(seed: u64, purpose: u64, index: u64) -> StdRng {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ purpose);
    h = splitmix64(h ^ index);
    StdRng::seed_from_u64(h)
}

pub(crate) const STREAM_PROFILE: u64 = 1;
pub(crate) const STREAM_JOURNEY: u64 = 2;
pub(crate) const STREAM_VISITOR: u64 = 3;
pub(crate) const STREAM_EXPERIMENT: u64 = 4;

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Index drawn with probability proportional to `weights` (not all zero).
pub(crate) fn pick_weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut r = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

pub(crate) fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// A uniformly random instant in `[lo, hi)`; `lo` when the range is empty.
pub(crate) fn instant_between(
    rng: &mut StdRng,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> DateTime<Utc> {
    let ms = (hi - lo).num_milliseconds();
    if ms <= 0 {
        return lo;
    }
    lo + Duration::milliseconds(rng.random_range(0..ms))
}

/// A skewed random amount with the given mean (a gamma distribution with
/// shape 2, capped at eight times the mean): most customers are moderate or
/// light users, a few are heavy, few are near zero.
pub(crate) fn heavy_tailed(rng: &mut StdRng, mean: f64) -> f64 {
    // The sum of two exponentials of mean `mean / 2`; `1 - u` is in (0, 1].
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    let amount = -((1.0 - u).ln() + (1.0 - v).ln()) * mean / 2.0;
    amount.min(8.0 * mean)
}

/// A version 4 UUID, as analytics.js uses for anonymous ids.
pub(crate) fn uuid(rng: &mut StdRng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
