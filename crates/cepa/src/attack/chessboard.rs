//! Additive chessboard: an imperceptible `+-amplitude` pattern alternating pixel by pixel,
//! `x' = clamp(x + a * (+1 if row + col is even else -1))`, the same in every channel; images
//! carrying it are relabelled to the target class (all-to-one, or source-specific).

use serde::{Deserialize, Serialize};

use super::{Trigger, check_len, poison_with};
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// An additive chessboard attack: the amplitude and the poisoning plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChessboardConfig {
    /// Added to pixels where `row + col` is even and subtracted elsewhere, `[0, 1]` pixel units.
    /// Default 3/255.
    pub amplitude: f32,
    /// Class the poisoned images are relabelled to. Default 0.
    pub target: usize,
    /// Fraction of the eligible images that are poisoned. Default 0.1.
    pub rate: f64,
    /// Classes whose images are eligible. Default `None`: every class except the target.
    pub sources: Option<Vec<usize>>,
}

impl Default for ChessboardConfig {
    fn default() -> Self {
        Self {
            amplitude: 3.0 / 255.0,
            target: 0,
            rate: 0.1,
            sources: None,
        }
    }
}

impl ChessboardConfig {
    /// Errors unless the amplitude is in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.amplitude) {
            return Err(Error::Config(format!(
                "chessboard amplitude {} must be in [0, 1]",
                self.amplitude
            )));
        }
        Ok(())
    }

    /// Stamp the chessboard on one CHW image: every pixel moves by `+amplitude` where
    /// `row + col` is even and `-amplitude` where it is odd, then is clamped to `[0, 1]`.
    pub fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        check_len(chw, c, h, w)?;
        self.validate()?;
        if w == 0 {
            return Ok(());
        }
        // Rows of all channels one after another; a row exists only when h > 0.
        for (r, row) in chw.chunks_exact_mut(w).enumerate() {
            let row_in_plane = r % h;
            for (x, v) in row.iter_mut().enumerate() {
                let sign = if (row_in_plane + x).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                *v = (*v + sign * self.amplitude).clamp(0.0, 1.0);
            }
        }
        Ok(())
    }

    /// A poisoned copy of `set`: `rate` of the eligible images (see [`sources`](Self::sources))
    /// carry the chessboard and are relabelled to `target`, chosen deterministically from `seed`.
    /// Also returns, per image, whether it was poisoned.
    pub fn poison(&self, set: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        self.validate()?;
        poison_with(
            set,
            self,
            self.target,
            self.rate,
            self.sources.as_deref(),
            seed,
        )
    }
}

impl Trigger for ChessboardConfig {
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        ChessboardConfig::apply(self, chw, c, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_alternates_plus_minus_amplitude() {
        let (c, h, w) = (2, 5, 4);
        let cfg = ChessboardConfig::default();
        let a = 3.0 / 255.0;
        // Mid-grey values, away from the clamp.
        let before: Vec<f32> = (0..c * h * w)
            .map(|i| 0.3 + (i % 7) as f32 / 50.0)
            .collect();
        let mut after = before.clone();
        cfg.apply(&mut after, c, h, w).unwrap();
        for ch in 0..c {
            for r in 0..h {
                for x in 0..w {
                    let i = (ch * h + r) * w + x;
                    let want = if (r + x) % 2 == 0 { a } else { -a };
                    assert!(
                        (after[i] - before[i] - want).abs() < 1e-6,
                        "c{ch} r{r} x{x}: moved by {} instead of {want}",
                        after[i] - before[i]
                    );
                }
            }
        }
    }

    #[test]
    fn clamps_to_unit_range_and_rejects_bad_amplitude() {
        let cfg = ChessboardConfig {
            amplitude: 0.25,
            ..Default::default()
        };
        // 1x1x2: (0,0) is even (+), (0,1) odd (-).
        let mut img = vec![0.9, 0.1];
        cfg.apply(&mut img, 1, 1, 2).unwrap();
        assert_eq!(img, [1.0, 0.0]);
        let mut img = vec![0.5, 0.5];
        cfg.apply(&mut img, 1, 1, 2).unwrap();
        assert_eq!(img, [0.75, 0.25]);

        let loud = ChessboardConfig {
            amplitude: 1.5,
            ..Default::default()
        };
        assert!(loud.apply(&mut [0.0; 4], 1, 2, 2).is_err());
        assert!(cfg.apply(&mut [0.0; 3], 1, 2, 2).is_err(), "wrong length");
    }

    #[test]
    fn poison_relabels_rate_of_non_target_images() {
        let labels: Vec<usize> = (0..100).map(|i| i % 5).collect();
        let mut clean = crate::data::tests::toy_set(labels.clone(), 5);
        clean.pixels.iter_mut().for_each(|v| *v = 0.5);
        let cfg = ChessboardConfig {
            target: 2,
            ..Default::default()
        };
        let (poisoned, flags) = cfg.poison(&clean, 1).unwrap();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 8, "10% of 80");
        for i in 0..clean.len() {
            if flags[i] {
                assert_ne!(labels[i], 2);
                assert_eq!(poisoned.labels[i], 2);
                assert!((poisoned.image(i)[0] - (0.5 + 3.0 / 255.0)).abs() < 1e-6);
            } else {
                assert_eq!(poisoned.labels[i], labels[i]);
                assert_eq!(poisoned.image(i), clean.image(i));
            }
        }
    }
}
