//! Robust statistics that turn per-class numbers into a verdict.
//!
//! Stage 1 of the detector produces, for each of the K putative target classes, a few scalar
//! statistics (`||mu_t||`, mean `||delta_n||`, dispersion, transfer). This file holds the pure-`f64`
//! machinery that reads them:
//! - [`median`] and [`mad`]: the robust centre and spread of the K values of one statistic.
//! - [`anomaly_indices`]: one-sided MAD anomaly index per class, `(s(t) - median) / (1.4826 * MAD)`
//!   (sign flipped for [`Tail::Small`]), the Neural Cleanse / MM-BD convention. The detector computes
//!   it per statistic, combines the indices, and calls the model backdoored when the most anomalous
//!   class exceeds a threshold (2 by convention). Degenerate spreads (MAD = 0, e.g. several
//!   infeasible targets sharing one value) and non-finite inputs are guarded, so an index is always
//!   finite.
//! - [`fit_gamma`], [`gamma_cdf`], [`gamma_sf`]: a maximum-likelihood Gamma fit and its
//!   distribution function, the null model behind [`max_p_value`].
//! - [`max_p_value`]: MM-BD's p-value of the largest value under a Gamma null fitted to the other
//!   K-1 values, so a report carries a calibrated score next to the yes/no verdict.

/// Consistency constant: `1.4826 * MAD` estimates the standard deviation of a normal sample.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Consistency constant: `sqrt(pi / 2) * mean |x - centre|` estimates a normal standard deviation.
const MEAN_ABS_DEV_TO_SIGMA: f64 = 1.2533;
/// Relative floor on an anomaly-index scale: `1e-12 * max(1, |median|)`.
const SCALE_FLOOR: f64 = 1e-12;
/// Default shift of [`max_p_value`]: after subtracting the minimum, add this fraction of the range
/// of the K-1 non-maximal values, so every value handed to the Gamma fit is strictly positive.
///
/// The Gamma fit is sensitive to it because the smallest value lands at exactly this point, and
/// the test is only as calibrated as a Gamma fits the shifted null. Simulated nulls (K = 10 iid
/// values, 4000 draws each) gave p < 0.05 in 1 % (normal), 0.6 % (uniform), 14 % (Gamma(3)),
/// 30 % (exponential) and 47 % (lognormal) of the draws; a maximum put 3 robust standard deviations
/// above the others got p < 0.05 in 50-76 % of the draws. A shift of 0.01 gave 0.5 / 0.1 / 6 / 19 /
/// 35 % and 13-37 %. Calibrate on clean models; [`max_p_value_with_shift`] takes another value.
pub const DEFAULT_P_VALUE_SHIFT: f64 = 0.05;
/// Relative accuracy of the incomplete-gamma series and continued fraction.
const GAMMA_EPS: f64 = 1e-15;
/// Iteration cap for the incomplete gamma; convergence takes about `sqrt(shape)` terms.
const GAMMA_MAX_ITER: usize = 100_000;
/// Smallest magnitude kept in the modified Lentz continued fraction.
const LENTZ_TINY: f64 = 1e-300;

/// Median of a slice (mean of the two middle values for even length). NaN-free input assumed;
/// empty -> NaN.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        0.5 * (sorted[mid - 1] + sorted[mid])
    }
}

/// Weighted median: the value where the cumulative weight of the sorted values reaches half the
/// total (the mean of the two values around it when it lands exactly on the half, so unit weights
/// give [`median`]). Weights must be positive; empty -> NaN.
pub fn weighted_median(values: &[f64], weights: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let total: f64 = weights.iter().sum();
    let half = 0.5 * total;
    let mut cum = 0.0;
    for (pos, &i) in order.iter().enumerate() {
        cum += weights[i];
        if (cum - half).abs() <= 1e-9 * total {
            return match order.get(pos + 1) {
                Some(&j) => 0.5 * (values[i] + values[j]),
                None => values[i],
            };
        }
        if cum > half {
            return values[i];
        }
    }
    values[order[order.len() - 1]]
}

/// Weighted median absolute deviation from the weighted median (raw, not scaled).
pub fn weighted_mad(values: &[f64], weights: &[f64]) -> f64 {
    let centre = weighted_median(values, weights);
    let deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
    weighted_median(&deviations, weights)
}

/// Median absolute deviation from the median (raw, not scaled); empty -> NaN.
pub fn mad(values: &[f64]) -> f64 {
    let centre = median(values);
    let deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
    median(&deviations)
}

/// Which direction of a statistic is suspicious.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tail {
    /// Large values are suspicious (`||mu||`, transfer rate).
    Large,
    /// Small values are suspicious (perturbation size, dispersion).
    Small,
    /// Either way is suspicious (the size of the embedded perturbations: a backdoor can make
    /// its target unusually cheap or unusually loud in the embedding): `|s - median| / scale`.
    Both,
}

/// One-sided MAD anomaly indices over classes: `a(t) = (s(t) - median) / (1.4826 * MAD)` for
/// [`Tail::Large`], `(median - s(t)) / (1.4826 * MAD)` for [`Tail::Small`] (Neural Cleanse / MM-BD
/// convention). Positive means "in the suspicious direction".
///
/// Guards, so every index is finite:
/// - Non-finite inputs (`+-inf`, NaN, e.g. an infeasible target) are replaced by the least
///   suspicious finite value present (the minimum for `Large`, the maximum for `Small`) before
///   anything is computed: they count in the median and spread, and get the lowest index. With no
///   finite value at all, every index is 0.
/// - If MAD is 0 (more than half of the classes share one value), the scale is
///   `1.2533 * mean |s - median|` instead; if that is 0 too (all values equal), every index is 0.
/// - The scale is floored at `1e-12 * max(1, |median|)`.
///
/// Empty input gives an empty vector.
pub fn anomaly_indices(values: &[f64], tail: Tail) -> Vec<f64> {
    anomaly_indices_floored(values, tail, 0.0)
}

/// [`anomaly_indices`] with the scale floored at `relative * |median|` as well: for a size
/// whose differences below that fraction mean nothing (with few classes, or classes the model
/// treats alike, the MAD of nearly equal values is tiny and any wobble looks anomalous).
pub fn anomaly_indices_floored(values: &[f64], tail: Tail, relative: f64) -> Vec<f64> {
    anomaly_indices_weighted(values, None, tail, relative)
}

/// [`anomaly_indices_floored`] where each value stands for `weights[i]` classes (a screened scan
/// optimises a sample of the classes fully, and each sampled class stands for those it was drawn
/// from): the median, MAD and mean absolute deviation are weighted. `None` weighs every value 1.
pub fn anomaly_indices_weighted(
    values: &[f64],
    weights: Option<&[f64]>,
    tail: Tail,
    relative: f64,
) -> Vec<f64> {
    let ones;
    let weights = match weights {
        Some(w) => w,
        None => {
            ones = vec![1.0; values.len()];
            &ones
        }
    };
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let least_suspicious = match tail {
        Tail::Large => finite.min_by(f64::total_cmp),
        Tail::Small => finite.max_by(f64::total_cmp),
        Tail::Both => {
            let f: Vec<f64> = finite.collect();
            (!f.is_empty()).then(|| median(&f))
        }
    };
    let Some(fill) = least_suspicious else {
        return vec![0.0; values.len()];
    };
    let clean: Vec<f64> = values
        .iter()
        .map(|&v| if v.is_finite() { v } else { fill })
        .collect();

    let centre = weighted_median(&clean, weights);
    let raw_mad = weighted_mad(&clean, weights);
    let scale = if raw_mad > 0.0 {
        MAD_TO_SIGMA * raw_mad
    } else {
        let mean_abs_dev = clean
            .iter()
            .zip(weights)
            .map(|(v, w)| w * (v - centre).abs())
            .sum::<f64>()
            / weights.iter().sum::<f64>();
        if mean_abs_dev <= 0.0 {
            return vec![0.0; values.len()];
        }
        MEAN_ABS_DEV_TO_SIGMA * mean_abs_dev
    };
    let scale = scale
        .max(SCALE_FLOOR * centre.abs().max(1.0))
        .max(relative * centre.abs());

    clean
        .iter()
        .map(|&v| match tail {
            Tail::Large => (v - centre) / scale,
            Tail::Small => (centre - v) / scale,
            Tail::Both => (v - centre).abs() / scale,
        })
        .collect()
}

/// Fit a Gamma(shape `k`, scale `theta`) by maximum likelihood: the Choi-Wette approximation for
/// `k`, refined by Minka's generalised Newton iteration on `ln k - digamma(k) = ln mean - mean ln`,
/// then `theta = mean / k`.
///
/// Every value must be finite and positive and there must be at least 2 of them; returns `None`
/// otherwise, or when all values are equal (the likelihood has no maximum).
pub fn fit_gamma(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 || values.iter().any(|&v| !(v.is_finite() && v > 0.0)) {
        return None;
    }
    // Work relative to the largest value so the sums cannot overflow; the shape is scale-free.
    let top = values.iter().copied().fold(0.0, f64::max);
    let n = values.len() as f64;
    let mean = values.iter().map(|v| v / top).sum::<f64>() / n;
    // s = ln(mean) - mean(ln x), written as -mean(ln(x / mean)) to avoid cancellation when the
    // values are close together; s > 0 unless all values are equal.
    let s = -values
        .iter()
        .map(|v| (v / top / mean - 1.0).ln_1p())
        .sum::<f64>()
        / n;
    if !(s.is_finite() && s > 0.0) {
        return None;
    }

    // Choi-Wette: within 1.5 % of the root everywhere.
    let mut shape = (3.0 - s + ((s - 3.0).powi(2) + 24.0 * s).sqrt()) / (12.0 * s);
    for _ in 0..100 {
        let step =
            (log_minus_digamma(shape) - s) / (shape * shape * (1.0 / shape - trigamma(shape)));
        let next = 1.0 / (1.0 / shape + step);
        if !(next.is_finite() && next > 0.0) {
            break;
        }
        let done = (next - shape).abs() <= 1e-12 * shape;
        shape = next;
        if done {
            break;
        }
    }
    let scale = mean * top / shape;
    (shape.is_finite() && scale.is_finite() && scale > 0.0).then_some((shape, scale))
}

/// Gamma CDF `F(x; k, theta) = P(k, x / theta)`, with `P` the regularised lower incomplete gamma
/// (series for `x < k + 1`, continued fraction otherwise, Numerical Recipes style).
///
/// `x <= 0` gives 0 and `x = +inf` gives 1; a NaN `x` or a shape or scale that is not finite and
/// positive gives NaN.
pub fn gamma_cdf(x: f64, shape: f64, scale: f64) -> f64 {
    gamma_tails(x, shape, scale).0
}

/// Gamma survival function `1 - F(x; k, theta)`, computed directly (no cancellation far in the
/// upper tail). Same conventions as [`gamma_cdf`].
pub fn gamma_sf(x: f64, shape: f64, scale: f64) -> f64 {
    gamma_tails(x, shape, scale).1
}

/// MM-BD-style p-value of the largest value: how likely the largest of K-1 draws from a Gamma null
/// fitted to the other values is to exceed it.
///
/// The values are shifted so they are positive (subtract `min(values)`, add
/// [`DEFAULT_P_VALUE_SHIFT`] times the range of the K-1 non-maximal values; the maximum gets the same
/// shift), a Gamma is fitted to the K-1 non-maximal values, and `p = 1 - F(max)^(K-1)`, computed as
/// `-expm1((K-1) * ln(1 - SF(max)))` so tiny p-values keep their precision. The p-value does not
/// change under `x -> a x + b` with `a > 0`, so the anomaly indices of a statistic give the same
/// p-value as the statistic itself.
///
/// Large must be the suspicious direction: pass anomaly indices, or negate a small-is-suspicious
/// statistic. Non-finite values are replaced by the smallest finite value (least suspicious), as in
/// [`anomaly_indices`]. Returns 1.0 when the fit is impossible: fewer than 3 values, no finite
/// value, all values equal, or all K-1 non-maximal values equal (then the null has no measurable
/// spread; the anomaly index still flags such a maximum). The result is clamped to `[0, 1]`.
pub fn max_p_value(values: &[f64]) -> f64 {
    max_p_value_with_shift(values, DEFAULT_P_VALUE_SHIFT)
}

/// [`max_p_value`] with another shift: the smallest value maps to `shift` times the range of the
/// non-maximal values before the Gamma fit. A `shift` that is not finite and positive gives 1.0.
pub fn max_p_value_with_shift(values: &[f64], shift: f64) -> f64 {
    if values.len() < 3 || !(shift.is_finite() && shift > 0.0) {
        return 1.0;
    }
    let Some(fill) = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .min_by(f64::total_cmp)
    else {
        return 1.0;
    };
    let mut clean: Vec<f64> = values
        .iter()
        .map(|&v| if v.is_finite() { v } else { fill })
        .collect();
    clean.sort_by(f64::total_cmp);
    let Some(max) = clean.pop() else {
        return 1.0;
    };
    let null = clean;
    let range = null[null.len() - 1] - fill;
    if range <= 0.0 {
        return 1.0;
    }

    let eps = shift * range;
    let shifted: Vec<f64> = null.iter().map(|v| v - fill + eps).collect();
    let Some((shape, scale)) = fit_gamma(&shifted) else {
        return 1.0;
    };
    let survival = gamma_sf(max - fill + eps, shape, scale);
    let p = -((null.len() as f64) * (-survival).ln_1p()).exp_m1();
    if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) }
}

/// `(F, 1 - F)` of a Gamma(shape, scale) at `x`, each computed from the side where it is accurate.
fn gamma_tails(x: f64, shape: f64, scale: f64) -> (f64, f64) {
    let valid = |v: f64| v.is_finite() && v > 0.0;
    if x.is_nan() || !valid(shape) || !valid(scale) {
        return (f64::NAN, f64::NAN);
    }
    if x <= 0.0 {
        return (0.0, 1.0);
    }
    if x == f64::INFINITY {
        return (1.0, 0.0);
    }
    let z = x / scale;
    if z < shape + 1.0 {
        let lower = lower_gamma_series(shape, z).clamp(0.0, 1.0);
        (lower, 1.0 - lower)
    } else {
        let upper = upper_gamma_fraction(shape, z).clamp(0.0, 1.0);
        (1.0 - upper, upper)
    }
}

/// `exp(-x + a ln x - ln Gamma(a))`, the common prefactor of both incomplete-gamma expansions.
fn gamma_prefactor(a: f64, x: f64) -> f64 {
    (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// Regularised lower incomplete gamma `P(a, x)` by its power series (converges fast for `x < a+1`).
fn lower_gamma_series(a: f64, x: f64) -> f64 {
    let mut denom = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..GAMMA_MAX_ITER {
        denom += 1.0;
        term *= x / denom;
        sum += term;
        if term.abs() < sum.abs() * GAMMA_EPS {
            break;
        }
    }
    sum * gamma_prefactor(a, x)
}

/// Regularised upper incomplete gamma `Q(a, x)` by its continued fraction, evaluated with the
/// modified Lentz method (converges fast for `x >= a+1`).
fn upper_gamma_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / LENTZ_TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..=GAMMA_MAX_ITER {
        let i = i as f64;
        let an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < LENTZ_TINY {
            d = LENTZ_TINY;
        }
        c = b + an / c;
        if c.abs() < LENTZ_TINY {
            c = LENTZ_TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < GAMMA_EPS {
            break;
        }
    }
    gamma_prefactor(a, x) * h
}

/// `ln Gamma(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Gamma(x) = Gamma(x + 1) / x keeps the Lanczos sum in its accurate range.
        return ln_gamma(x + 1.0) - x.ln();
    }
    let x = x - 1.0;
    let sum = COEFFS[1..]
        .iter()
        .enumerate()
        .fold(COEFFS[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// `ln x - digamma(x)` for `x > 0`, by its asymptotic series for `x >= 10` (no cancellation for
/// large `x`, where both terms are large and nearly equal) and by recurrence below.
fn log_minus_digamma(x: f64) -> f64 {
    if x >= 10.0 {
        let f = 1.0 / (x * x);
        0.5 / x
            + f * (1.0 / 12.0
                - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f / 132.0))))
    } else {
        x.ln() - digamma(x)
    }
}

/// Digamma `psi(x)` for `x > 0`: recurrence up to `x >= 10`, then the asymptotic series.
fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    acc + x.ln() - log_minus_digamma(x)
}

/// Trigamma `psi'(x)` for `x > 0`: recurrence up to `x >= 10`, then the asymptotic series.
fn trigamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + 1.0 / x + 0.5 * f + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f * (1.0 / 42.0 - f / 30.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts `|actual - expected| <= tol * max(1, |expected|)`: absolute near 0, relative above 1.
    #[track_caller]
    fn assert_close(actual: f64, expected: f64, tol: f64) {
        let bound = tol * expected.abs().max(1.0);
        assert!(
            (actual - expected).abs() <= bound,
            "expected {expected}, got {actual} (tolerance {bound:e})"
        );
    }

    /// Asserts a relative error of at most `tol` (for tiny tail probabilities).
    #[track_caller]
    fn assert_rel(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol * expected.abs(),
            "expected {expected:e}, got {actual:e} (relative tolerance {tol:e})"
        );
    }

    #[track_caller]
    fn assert_all_close(actual: &[f64], expected: &[f64], tol: f64) {
        assert_eq!(actual.len(), expected.len(), "lengths differ");
        for (&a, &e) in actual.iter().zip(expected) {
            assert_close(a, e, tol);
        }
    }

    /// Deterministic uniforms in (0, 1): a 64-bit LCG (Knuth's MMIX constants), top 53 bits.
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Standard normal by Box-Muller.
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_close(median(&[3.0, 1.0, 2.0]), 2.0, 1e-15);
        assert_close(median(&[4.0, 1.0, 3.0, 2.0]), 2.5, 1e-15);
        assert_close(median(&[-7.5]), -7.5, 1e-15);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn weighted_median_with_unit_weights_is_the_median() {
        for v in [
            vec![3.0, 1.0, 2.0],
            vec![4.0, 1.0, 3.0, 2.0],
            vec![5.0],
            vec![2.0, 2.0, 7.0, -1.0, 0.5, 9.0],
        ] {
            let ones = vec![1.0; v.len()];
            assert_eq!(weighted_median(&v, &ones), median(&v), "{v:?}");
            assert_eq!(weighted_mad(&v, &ones), mad(&v), "{v:?}");
        }
    }

    #[test]
    fn weighted_median_counts_a_value_as_many_times_as_its_weight() {
        // 1 stands for three classes: as the median of [1, 1, 1, 5, 9].
        assert_eq!(weighted_median(&[5.0, 1.0, 9.0], &[1.0, 3.0, 1.0]), 1.0);
        // [1, 1, 5, 5, 5, 9] -> between the third and fourth value.
        assert_eq!(weighted_median(&[1.0, 5.0, 9.0], &[2.0, 3.0, 1.0]), 5.0);
        assert_eq!(weighted_median(&[1.0, 5.0, 9.0], &[3.0, 2.0, 1.0]), 3.0);
        let expanded = [1.0, 1.0, 1.0, 5.0, 9.0, 9.0];
        let w =
            anomaly_indices_weighted(&[1.0, 5.0, 9.0], Some(&[3.0, 1.0, 2.0]), Tail::Large, 0.0);
        let full = anomaly_indices(&expanded, Tail::Large);
        assert_all_close(&w, &[full[0], full[3], full[4]], 1e-12);
    }

    #[test]
    fn mad_of_odd_and_even_lengths() {
        // Median 3, deviations [2, 1, 0, 1, 97] -> 1.
        assert_close(mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), 1.0, 1e-15);
        // Median 3, deviations [2, 1, 1, 5] -> (1 + 2) / 2 = 1.5.
        assert_close(mad(&[1.0, 2.0, 4.0, 8.0]), 1.5, 1e-15);
        assert!(mad(&[]).is_nan());
    }

    #[test]
    fn anomaly_indices_match_hand_computation() {
        // Median 3, MAD 1, scale 1.4826.
        let values = [1.0, 2.0, 3.0, 4.0, 100.0];
        let expected = [
            -2.0 / 1.4826,
            -1.0 / 1.4826,
            0.0,
            1.0 / 1.4826,
            97.0 / 1.4826,
        ];
        let large = anomaly_indices(&values, Tail::Large);
        assert_all_close(&large, &expected, 1e-12);
        assert_close(large[4], 65.425_603_669_229, 1e-9);

        let small = anomaly_indices(&values, Tail::Small);
        let flipped: Vec<f64> = expected.iter().map(|v| -v).collect();
        assert_all_close(&small, &flipped, 1e-12);
    }

    #[test]
    fn anomaly_indices_fall_back_to_mean_absolute_deviation_when_mad_is_zero() {
        // Median 1, MAD 0; mean |x - 1| = 4 / 5 = 0.8, scale 1.2533 * 0.8 = 1.00264,
        // index of 5 = 4 / 1.00264 = 3.98946780...
        let values = [1.0, 1.0, 1.0, 1.0, 5.0];
        let large = anomaly_indices(&values, Tail::Large);
        assert_all_close(&large, &[0.0, 0.0, 0.0, 0.0, 3.989_467_805], 1e-7);
        assert_close(large[4], 4.0 / (1.2533 * 0.8), 1e-12);
        let small = anomaly_indices(&values, Tail::Small);
        assert_close(small[4], -4.0 / (1.2533 * 0.8), 1e-12);
    }

    #[test]
    fn anomaly_indices_of_equal_values_are_zero() {
        assert_all_close(
            &anomaly_indices(&[2.0, 2.0, 2.0], Tail::Large),
            &[0.0; 3],
            0.0,
        );
        assert_all_close(
            &anomaly_indices(&[2.0, 2.0, 2.0], Tail::Small),
            &[0.0; 3],
            0.0,
        );
        assert!(anomaly_indices(&[], Tail::Large).is_empty());
    }

    #[test]
    fn anomaly_index_scale_is_floored_relative_to_the_median() {
        // Spread ~1e-9 around 1e6: the fallback scale (~2.5e-10) is below the floor
        // 1e-12 * 1e6 = 1e-6, so the index of the odd value is its offset / 1e-6 (about 1e-3).
        let top = 1e6 + 1e-9;
        let values = [1e6, 1e6, 1e6, 1e6, top];
        let large = anomaly_indices(&values, Tail::Large);
        assert_close(large[4], (top - 1e6) / 1e-6, 1e-12);
        assert!(large[4] < 2e-3, "floor not applied: {}", large[4]);
    }

    #[test]
    fn anomaly_indices_treat_non_finite_values_as_least_suspicious() {
        // Large: NaN and +inf become the minimum 1 -> [1, 2, 3, 4, 100, 1, 1], median 2,
        // deviations [1, 0, 1, 2, 98, 1, 1] -> MAD 1.
        let values = [1.0, 2.0, 3.0, 4.0, 100.0, f64::NAN, f64::INFINITY];
        let large = anomaly_indices(&values, Tail::Large);
        let low = -1.0 / 1.4826;
        assert_all_close(
            &large,
            &[
                low,
                0.0,
                1.0 / 1.4826,
                2.0 / 1.4826,
                98.0 / 1.4826,
                low,
                low,
            ],
            1e-12,
        );
        // Small: -inf becomes the maximum 100 -> [1, 2, 3, 4, 100, 100], median 3.5,
        // deviations [2.5, 1.5, 0.5, 0.5, 96.5, 96.5] -> MAD 2.
        let values = [1.0, 2.0, 3.0, 4.0, 100.0, f64::NEG_INFINITY];
        let small = anomaly_indices(&values, Tail::Small);
        let scale = 1.4826 * 2.0;
        assert_close(small[0], 2.5 / scale, 1e-12);
        assert_close(small[5], -96.5 / scale, 1e-12);
        assert_close(small[5], small[4], 1e-15);
        // Nothing finite: no information, every index 0.
        let none = anomaly_indices(&[f64::NAN, f64::INFINITY], Tail::Large);
        assert_all_close(&none, &[0.0, 0.0], 0.0);
    }

    #[test]
    fn tail_serialises_in_lowercase() {
        assert_eq!(serde_json::to_string(&Tail::Large).unwrap(), "\"large\"");
        assert_eq!(
            serde_json::from_str::<Tail>("\"small\"").unwrap(),
            Tail::Small
        );
    }

    #[test]
    fn special_functions_match_closed_forms() {
        let euler = 0.577_215_664_901_532_9;
        assert_close(ln_gamma(0.5), 0.5 * std::f64::consts::PI.ln(), 1e-14);
        assert_close(ln_gamma(1.0), 0.0, 1e-14);
        assert_close(ln_gamma(10.0), 362_880.0_f64.ln(), 1e-14);
        assert_close(ln_gamma(0.01), 4.599_479_878_042_022, 1e-13);
        assert_close(digamma(1.0), -euler, 1e-13);
        assert_close(digamma(0.5), -euler - 2.0 * 2.0_f64.ln(), 1e-13);
        assert_close(digamma(20.0), 2.970_523_992_242_149, 1e-13);
        assert_close(trigamma(1.0), std::f64::consts::PI.powi(2) / 6.0, 1e-12);
        assert_close(trigamma(0.5), std::f64::consts::PI.powi(2) / 2.0, 1e-12);
        // ln x - digamma(x) ~ 1 / (2x) for large x, without cancellation.
        assert_rel(log_minus_digamma(1e8), 0.5e-8 + 1.0 / 12.0 * 1e-16, 1e-12);
    }

    #[test]
    fn gamma_cdf_of_shape_one_is_the_exponential_cdf() {
        let theta = 2.5;
        for x in [0.01, 0.5, 1.0, 3.5, 5.0, 20.0] {
            assert_close(gamma_cdf(x, 1.0, theta), 1.0 - (-x / theta).exp(), 1e-13);
            assert_rel(gamma_sf(x, 1.0, theta), (-x / theta).exp(), 1e-12);
        }
    }

    #[test]
    fn gamma_cdf_matches_reference_values() {
        // Shape 2, scale 1: F(x) = 1 - (1 + x) e^-x, on both sides of the series/fraction switch.
        assert_close(
            gamma_cdf(2.0, 2.0, 1.0),
            1.0 - 3.0 * (-2.0_f64).exp(),
            1e-13,
        );
        assert_close(
            gamma_cdf(0.5, 2.0, 1.0),
            1.0 - 1.5 * (-0.5_f64).exp(),
            1e-13,
        );
        assert_close(
            gamma_cdf(10.0, 2.0, 1.0),
            1.0 - 11.0 * (-10.0_f64).exp(),
            1e-13,
        );
        // chi-square(4) = Gamma(2, 2): 95th percentile 9.4877; chi-square(1) = Gamma(0.5, 2):
        // 95th percentile 3.841459.
        assert_close(gamma_cdf(9.4877, 2.0, 2.0), 0.95, 1e-5);
        assert_close(gamma_cdf(3.841_459, 0.5, 2.0), 0.95, 1e-7);
        // mpmath 1.3: gammainc(a, 0, x, regularized=True).
        assert_close(gamma_cdf(1.7, 2.5, 1.0), 0.361_430_076_896_204_93, 1e-12);
        assert_close(gamma_cdf(7.3, 2.5, 1.0), 0.987_784_547_041_692_4, 1e-12);
        assert_close(gamma_cdf(90.0, 100.0, 1.0), 0.158_220_989_186_430_16, 1e-10);
        assert_close(gamma_cdf(115.0, 100.0, 1.0), 0.928_388_141_475_446_1, 1e-10);
        assert_close(
            gamma_cdf(10_050.0, 10_000.0, 1.0),
            0.692_342_440_702_565_6,
            1e-8,
        );
        // Far upper tail: the survival function keeps precision where 1 - F would be 0.
        assert_rel(gamma_sf(50.0, 1.0, 1.0), 1.928_749_847_963_918_e-22, 1e-10);
    }

    #[test]
    fn both_tails_and_the_relative_floor() {
        let values = [10.0, 10.1, 9.9, 10.05, 9.95, 14.0, 6.0];
        let both = anomaly_indices(&values, Tail::Both);
        let large = anomaly_indices(&values, Tail::Large);
        // Either way: the index is the absolute value of the one-sided one.
        for (b, l) in both.iter().zip(&large) {
            assert!((b - l.abs()).abs() < 1e-12);
        }
        assert!(both[5] > 10.0 && both[6] > 10.0, "{both:?}");
        // With the scale floored at 5 % of the median (0.5), 4 away is an index of 8.
        let floored = anomaly_indices_floored(&values, Tail::Both, 0.05);
        assert!((floored[5] - 8.0).abs() < 1e-12, "{floored:?}");
        // Nearly equal values: the floor keeps a 1 % wobble small.
        let tight = anomaly_indices_floored(&[1.0, 1.001, 0.999, 1.01], Tail::Both, 0.05);
        assert!(tight.iter().all(|&a| a < 0.25), "{tight:?}");
    }

    #[test]
    fn gamma_cdf_handles_edges() {
        assert_close(gamma_cdf(0.0, 2.0, 1.0), 0.0, 0.0);
        assert_close(gamma_cdf(-3.0, 2.0, 1.0), 0.0, 0.0);
        assert_close(gamma_cdf(f64::INFINITY, 2.0, 1.0), 1.0, 0.0);
        assert_close(gamma_sf(f64::INFINITY, 2.0, 1.0), 0.0, 0.0);
        assert!(gamma_cdf(f64::NAN, 2.0, 1.0).is_nan());
        assert!(gamma_cdf(1.0, 0.0, 1.0).is_nan());
        assert!(gamma_cdf(1.0, 2.0, -1.0).is_nan());
        assert!(gamma_cdf(1.0, f64::INFINITY, 1.0).is_nan());
    }

    #[test]
    fn fit_gamma_recovers_an_integer_shape() {
        // Gamma(3, 2) as sums of three exponentials with mean 2.
        let mut rng = Lcg(7);
        let sample: Vec<f64> = (0..20_000)
            .map(|_| -2.0 * (0..3).map(|_| rng.uniform().ln()).sum::<f64>())
            .collect();
        let (shape, scale) = fit_gamma(&sample).expect("positive, spread-out sample");
        assert_close(shape / 3.0, 1.0, 0.05);
        assert_close(scale / 2.0, 1.0, 0.05);
        // The maximum-likelihood equations hold at the fit: theta = mean / k and
        // ln k - digamma(k) = ln(mean) - mean(ln x). Choi-Wette alone is off by up to 1.5 %.
        let n = sample.len() as f64;
        let mean = sample.iter().sum::<f64>() / n;
        let mean_ln = sample.iter().map(|v| v.ln()).sum::<f64>() / n;
        assert_close(shape * scale, mean, 1e-12);
        assert_close(shape.ln() - digamma(shape), mean.ln() - mean_ln, 1e-10);
    }

    #[test]
    fn fit_gamma_recovers_a_fractional_shape() {
        // theta * Z^2 / 2 ~ Gamma(0.5, theta) for a standard normal Z.
        let mut rng = Lcg(11);
        let sample: Vec<f64> = (0..20_000)
            .map(|_| 3.0 * rng.normal().powi(2) / 2.0)
            .collect();
        let (shape, scale) = fit_gamma(&sample).expect("positive, spread-out sample");
        assert_close(shape / 0.5, 1.0, 0.05);
        assert_close(scale / 3.0, 1.0, 0.06);
    }

    #[test]
    fn fit_gamma_is_scale_equivariant_and_handles_near_equal_values() {
        let base = [0.5, 1.0, 1.5, 2.0, 4.0];
        let (k, theta) = fit_gamma(&base).expect("valid sample");
        let scaled: Vec<f64> = base.iter().map(|v| v * 1e300).collect();
        let (k_big, theta_big) = fit_gamma(&scaled).expect("no overflow at 1e300");
        assert_close(k_big / k, 1.0, 1e-10);
        assert_close(theta_big / (theta * 1e300), 1.0, 1e-10);
        // Values 1 +- 1e-6: variance ~ mean^2 / k, so k is in the hundreds of billions.
        let tight = [1.0 - 1e-6, 1.0, 1.0 + 1e-6];
        let (k_tight, theta_tight) = fit_gamma(&tight).expect("distinct values");
        let variance = 2e-12 / 3.0;
        assert_close(k_tight / (1.0 / variance), 1.0, 1e-3);
        assert_close(k_tight * theta_tight, 1.0, 1e-12);
    }

    #[test]
    fn fit_gamma_rejects_unusable_samples() {
        assert_eq!(fit_gamma(&[]), None);
        assert_eq!(fit_gamma(&[1.0]), None);
        assert_eq!(fit_gamma(&[2.0, 2.0, 2.0]), None);
        assert_eq!(fit_gamma(&[1.0, 2.0, 0.0]), None);
        assert_eq!(fit_gamma(&[-1.0, 2.0, 3.0]), None);
        assert_eq!(fit_gamma(&[1.0, f64::NAN]), None);
        assert_eq!(fit_gamma(&[1.0, f64::INFINITY]), None);
    }

    /// Gamma(3, 1) quantiles at (i - 0.5) / 10, i = 1..10 (mpmath 1.3: findroot on gammainc).
    const GAMMA3_DECILES: [f64; 10] = [
        0.817_691_447_163_953_4,
        1.330_636_588_073_452_5,
        1.727_299_417_860_519_4,
        2.098_634_763_837_664,
        2.475_938_303_169_48,
        2.882_599_670_383_912_3,
        3.347_380_438_027_199_6,
        3.920_402_060_292_56,
        4.723_051_563_394_667,
        6.295_793_621_871_988,
    ];

    #[test]
    fn max_p_value_flags_a_far_outlier() {
        let values = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 0.85, 1.0, 5.0];
        let p = max_p_value(&values);
        assert!(p < 0.01, "p = {p}");
        // Order does not matter.
        let mut shuffled = values;
        shuffled.swap(0, 9);
        shuffled.swap(3, 6);
        assert_close(max_p_value(&shuffled), p, 1e-12);
    }

    #[test]
    fn max_p_value_does_not_flag_a_gamma_sample() {
        let p = max_p_value(&GAMMA3_DECILES);
        assert!(p > 0.05, "p = {p}");
        assert!(p < 1.0, "p = {p}");
    }

    #[test]
    fn max_p_value_matches_its_definition() {
        // min 0, null [0, 1, 2, 3] with range 3, eps 0.05 * 3 = 0.15: the fit sees
        // [0.15, 1.15, 2.15, 3.15] and the maximum becomes 10.15; p = 1 - F(10.15)^4.
        let values = [2.0, 0.0, 10.0, 3.0, 1.0];
        let (k, theta) = fit_gamma(&[0.15, 1.15, 2.15, 3.15]).expect("valid sample");
        let expected = 1.0 - gamma_cdf(10.15, k, theta).powi(4);
        assert_close(max_p_value(&values), expected, 1e-12);
        assert!(
            expected > 1e-4 && expected < 0.5,
            "uninformative example: {expected}"
        );
    }

    #[test]
    fn max_p_value_is_invariant_under_positive_affine_maps() {
        let p = max_p_value(&GAMMA3_DECILES);
        let mapped: Vec<f64> = GAMMA3_DECILES.iter().map(|v| 0.37 * v - 12.0).collect();
        assert_close(max_p_value(&mapped), p, 1e-9);
        // So a Small-tail statistic and its anomaly indices give one p-value.
        let small: Vec<f64> = GAMMA3_DECILES.iter().map(|v| 10.0 - v).collect();
        let indices = anomaly_indices(&small, Tail::Small);
        assert_close(max_p_value(&indices), p, 1e-9);
    }

    #[test]
    fn max_p_value_keeps_precision_for_tiny_p() {
        // 1 - F^(K-1) would round to 0 here; the expm1 / ln_1p form keeps the value.
        let values = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 0.85, 1.0, 50.0];
        let p = max_p_value(&values);
        assert!(p > 0.0 && p < 1e-20, "p = {p:e}");
    }

    #[test]
    fn max_p_value_guards() {
        assert_close(max_p_value(&[]), 1.0, 0.0);
        assert_close(max_p_value(&[1.0, 9.0]), 1.0, 0.0);
        assert_close(max_p_value(&[2.0, 2.0, 2.0]), 1.0, 0.0);
        // The null has no spread: fit impossible.
        assert_close(max_p_value(&[1.0, 1.0, 1.0, 1.0, 5.0]), 1.0, 0.0);
        assert_close(max_p_value(&[f64::NAN, f64::NAN, f64::NAN]), 1.0, 0.0);
        assert_close(max_p_value_with_shift(&GAMMA3_DECILES, 0.0), 1.0, 0.0);
        // Non-finite values count as the minimum.
        let mut with_nan = GAMMA3_DECILES.to_vec();
        with_nan.push(f64::NAN);
        let mut with_min = GAMMA3_DECILES.to_vec();
        with_min.push(GAMMA3_DECILES[0]);
        assert_close(max_p_value(&with_nan), max_p_value(&with_min), 1e-12);
    }

    #[test]
    fn a_larger_shift_gives_a_smaller_p_value_for_an_outlier() {
        let values = [3.1, 2.9, 3.3, 2.7, 3.0, 3.2, 2.8, 3.05, 2.95, 6.0];
        let narrow = max_p_value_with_shift(&values, 0.01);
        let default = max_p_value(&values);
        assert!(
            narrow > default,
            "0.01 -> {narrow:e}, default -> {default:e}"
        );
        assert_close(
            max_p_value_with_shift(&values, DEFAULT_P_VALUE_SHIFT),
            default,
            0.0,
        );
    }
}
