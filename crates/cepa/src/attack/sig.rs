//! SIG (Barni et al., 2019): an additive horizontal sinusoid, `x' = clamp(x + v)` with
//! `v(row, col) = amplitude * sin(2 pi col frequency / width)`, the same for every row and channel.
//!
//! Clean-label by default: only images of the target class carry the signal and no label changes,
//! so the model learns to associate the sinusoid with the target. With `clean_label = false` it is
//! a dirty-label attack like BadNets (images of other classes carry it and are relabelled).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Trigger, check_len, check_rate, check_target, poison_with, sample_sorted, stamp_at};
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// A SIG attack: the sinusoid and the poisoning plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigConfig {
    /// Peak of the sinusoid, `[0, 1]` pixel units. Default 20/255.
    pub amplitude: f32,
    /// Periods of the sinusoid across the image width. Default 6.
    pub frequency: f32,
    /// Poison only images of the target class and keep every label. Default true.
    pub clean_label: bool,
    /// The target class. Default 0.
    pub target: usize,
    /// Fraction of the eligible images that are poisoned: of the target class when `clean_label`,
    /// else of the non-target (or source) images. Default 0.8, meant for the clean-label mode;
    /// a dirty-label attack usually takes 0.1.
    pub rate: f64,
    /// Dirty-label only: classes whose images are eligible. Default `None`: every class except
    /// the target. Must be `None` when `clean_label`.
    pub sources: Option<Vec<usize>>,
}

impl Default for SigConfig {
    fn default() -> Self {
        Self {
            amplitude: 20.0 / 255.0,
            frequency: 6.0,
            clean_label: true,
            target: 0,
            rate: 0.8,
            sources: None,
        }
    }
}

impl SigConfig {
    /// Errors unless the amplitude is in `[0, 1]` and the frequency finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.amplitude) {
            return Err(Error::Config(format!(
                "SIG amplitude {} must be in [0, 1]",
                self.amplitude
            )));
        }
        if !(self.frequency.is_finite() && self.frequency >= 0.0) {
            return Err(Error::Config(format!(
                "SIG frequency {} must be finite and non-negative",
                self.frequency
            )));
        }
        if self.clean_label && self.sources.is_some() {
            return Err(Error::Config(
                "SIG source classes apply only to the dirty-label mode (clean_label = false)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The signal added to each column `0..w`: `amplitude * sin(2 pi col frequency / w)`.
    pub fn signal(&self, w: usize) -> Vec<f32> {
        let (a, f) = (f64::from(self.amplitude), f64::from(self.frequency));
        (0..w)
            .map(|col| {
                let phase = 2.0 * std::f64::consts::PI * col as f64 * f / w as f64;
                (a * phase.sin()) as f32
            })
            .collect()
    }

    /// Stamp the sinusoid on one CHW image: [`signal`](Self::signal) is added to every row of
    /// every channel, then pixels are clamped to `[0, 1]`.
    pub fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        check_len(chw, c, h, w)?;
        self.validate()?;
        if w == 0 {
            return Ok(());
        }
        let v = self.signal(w);
        for row in chw.chunks_exact_mut(w) {
            for (x, dv) in row.iter_mut().zip(&v) {
                *x = (*x + dv).clamp(0.0, 1.0);
            }
        }
        Ok(())
    }

    /// A poisoned copy of `set`, chosen deterministically from `seed`. Clean-label: `rate` of the
    /// target-class images carry the sinusoid, labels unchanged. Dirty-label: `rate` of the
    /// eligible images (see [`sources`](Self::sources)) carry it and are relabelled to `target`.
    /// Also returns, per image, whether it carries the sinusoid.
    pub fn poison(&self, set: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        self.validate()?;
        if !self.clean_label {
            return poison_with(
                set,
                self,
                self.target,
                self.rate,
                self.sources.as_deref(),
                seed,
            );
        }
        check_target(set, self.target)?;
        check_rate(self.rate)?;
        let eligible: Vec<usize> = (0..set.len())
            .filter(|&i| set.labels[i] == self.target)
            .collect();
        let count = (self.rate * eligible.len() as f64).round() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let chosen = sample_sorted(&eligible, count, &mut rng);
        stamp_at(set, self, &chosen, None)
    }
}

impl Trigger for SigConfig {
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        SigConfig::apply(self, chw, c, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::stamp_all;
    use crate::data::tests::toy_set;

    #[test]
    fn adds_the_stated_sinusoid_where_not_clamped() {
        let (c, h, w) = (3, 4, 20);
        let cfg = SigConfig::default();
        let a = 20.0 / 255.0;
        // Values spread over [0, 1] so some pixels clamp and most do not.
        let before: Vec<f32> = (0..c * h * w).map(|i| (i % 11) as f32 / 10.0).collect();
        let mut after = before.clone();
        cfg.apply(&mut after, c, h, w).unwrap();
        let mut unclamped = 0;
        for ch in 0..c {
            for r in 0..h {
                for x in 0..w {
                    let i = (ch * h + r) * w + x;
                    // frequency 6 over 20 columns: 0.3 of a period per column.
                    let v = a * (2.0 * std::f32::consts::PI * x as f32 * 6.0 / 20.0).sin();
                    let raw = before[i] + v;
                    if (0.0..=1.0).contains(&raw) {
                        unclamped += 1;
                        assert!(
                            (after[i] - before[i] - v).abs() < 1e-6,
                            "c{ch} r{r} x{x}: added {} instead of {v}",
                            after[i] - before[i]
                        );
                    } else {
                        assert!((after[i] - raw.clamp(0.0, 1.0)).abs() < 1e-6);
                    }
                }
            }
        }
        assert!(unclamped > c * h * w / 2);
        let moved = after
            .iter()
            .zip(&before)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 0.9 * a, "the signal reaches near its peak: {moved}");

        // The signal itself: zero at column 0, the peak a quarter period in.
        let s = SigConfig {
            frequency: 1.0,
            ..Default::default()
        }
        .signal(8);
        assert!(s[0].abs() < 1e-7);
        assert!((s[2] - a).abs() < 1e-6, "sin(pi/2) at column 2 of 8");
        assert!((s[6] + a).abs() < 1e-6, "sin(3pi/2) at column 6 of 8");
    }

    #[test]
    fn clean_label_touches_only_target_images_and_keeps_labels() {
        let labels: Vec<usize> = (0..100).map(|i| i % 5).collect();
        let mut clean = toy_set(labels.clone(), 5);
        clean.width = 4;
        clean.height = 1;
        clean.pixels.iter_mut().for_each(|v| *v = 0.5);
        let cfg = SigConfig {
            target: 3,
            frequency: 1.0,
            ..Default::default()
        };
        let (poisoned, flags) = cfg.poison(&clean, 9).unwrap();
        assert_eq!(poisoned.labels, labels, "clean-label: no label changes");
        assert_eq!(flags.iter().filter(|&&f| f).count(), 16, "80% of 20");
        let stamped = stamp_all(&clean, &cfg).unwrap();
        assert_ne!(stamped.image(0), clean.image(0));
        for i in 0..clean.len() {
            if flags[i] {
                assert_eq!(labels[i], 3);
                assert_eq!(poisoned.image(i), stamped.image(i));
            } else {
                assert_eq!(poisoned.image(i), clean.image(i));
            }
        }
        assert_eq!(flags, cfg.poison(&clean, 9).unwrap().1);
        assert_ne!(flags, cfg.poison(&clean, 10).unwrap().1);

        let dirty = SigConfig {
            clean_label: false,
            rate: 0.1,
            ..cfg.clone()
        };
        let (poisoned, flags) = dirty.poison(&clean, 9).unwrap();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 8, "10% of 80");
        for i in 0..clean.len() {
            assert_eq!(poisoned.labels[i], if flags[i] { 3 } else { labels[i] });
            assert!(!flags[i] || labels[i] != 3);
        }

        let sourced_clean = SigConfig {
            sources: Some(vec![1]),
            ..cfg
        };
        assert!(sourced_clean.poison(&clean, 0).is_err());
    }
}
