//! Blend (Chen et al., 2017): the whole image is mixed with a fixed pattern,
//! `x' = (1 - alpha) x + alpha p`; images carrying it are relabelled to the target class
//! (all-to-one, or source-specific).
//!
//! The pattern is uniform noise drawn from a seed, or an image file. Its values depend on the image
//! size, so the config is first prepared into a [`BlendTrigger`] for one `c x h x w`.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Trigger, check_len, poison_with};
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// A Blend attack: the pattern, its weight and the poisoning plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlendConfig {
    /// Weight of the pattern in the mix, in `[0, 1]`. Default 0.2.
    pub alpha: f32,
    /// Seed of the uniform `[0, 1)` noise pattern, used when `pattern_image` is `None`. Default 0.
    pub pattern_seed: u64,
    /// An image file (PNG or JPEG) used as the pattern instead of noise: resized bilinearly to the
    /// images' size when it differs, converted to grey for 1-channel images and to RGB for
    /// 3-channel ones. Default `None`: noise.
    pub pattern_image: Option<PathBuf>,
    /// Class the poisoned images are relabelled to. Default 0.
    pub target: usize,
    /// Fraction of the eligible images that are poisoned. Default 0.1.
    pub rate: f64,
    /// Classes whose images are eligible. Default `None`: every class except the target.
    pub sources: Option<Vec<usize>>,
}

impl Default for BlendConfig {
    fn default() -> Self {
        Self {
            alpha: 0.2,
            pattern_seed: 0,
            pattern_image: None,
            target: 0,
            rate: 0.1,
            sources: None,
        }
    }
}

impl BlendConfig {
    /// The pattern `p` for `c x h x w` images, CHW, values in `[0, 1]`: the same every time for the
    /// same seed (or file) and size.
    pub fn pattern(&self, c: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        match &self.pattern_image {
            Some(path) => load_pattern(path, c, h, w),
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.pattern_seed);
                Ok((0..c * h * w).map(|_| rng.random::<f32>()).collect())
            }
        }
    }

    /// The trigger for `c x h x w` images: `alpha` checked and the pattern built once.
    pub fn trigger(&self, c: usize, h: usize, w: usize) -> Result<BlendTrigger> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Config(format!(
                "Blend alpha {} must be in [0, 1]",
                self.alpha
            )));
        }
        Ok(BlendTrigger {
            alpha: self.alpha,
            pattern: self.pattern(c, h, w)?,
            shape: (c, h, w),
        })
    }

    /// A poisoned copy of `set`: `rate` of the eligible images (see [`sources`](Self::sources))
    /// are blended with the pattern and relabelled to `target`, chosen deterministically from
    /// `seed`. Also returns, per image, whether it was poisoned.
    pub fn poison(&self, set: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        let trigger = self.trigger(set.channels, set.height, set.width)?;
        poison_with(
            set,
            &trigger,
            self.target,
            self.rate,
            self.sources.as_deref(),
            seed,
        )
    }
}

/// A Blend trigger prepared for one image size by [`BlendConfig::trigger`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlendTrigger {
    alpha: f32,
    pattern: Vec<f32>,
    shape: (usize, usize, usize),
}

impl BlendTrigger {
    /// Weight of the pattern in the mix.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The pattern, CHW.
    pub fn pattern(&self) -> &[f32] {
        &self.pattern
    }
}

impl Trigger for BlendTrigger {
    /// Replace every value `x` by `(1 - alpha) x + alpha p` with `p` the pattern's value there.
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        check_len(chw, c, h, w)?;
        if (c, h, w) != self.shape {
            let (pc, ph, pw) = self.shape;
            return Err(Error::Mismatch(format!(
                "Blend pattern of {pc}x{ph}x{pw} (CxHxW) applied to a {c}x{h}x{w} image"
            )));
        }
        let a = self.alpha;
        for (x, &p) in chw.iter_mut().zip(&self.pattern) {
            *x = (1.0 - a) * *x + a * p;
        }
        Ok(())
    }
}

/// Read an image file as a `c x h x w` pattern (CHW, `[0, 1]`).
fn load_pattern(path: &Path, c: usize, h: usize, w: usize) -> Result<Vec<f32>> {
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(Error::Mismatch(format!(
            "a {h}x{w} Blend pattern is too large"
        )));
    };
    if w32 == 0 || h32 == 0 {
        return Err(Error::Mismatch(format!(
            "cannot fit the Blend pattern {} to an empty {h}x{w} image",
            path.display()
        )));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode the Blend pattern: {e}")))?;
    let img = if (img.width(), img.height()) == (w32, h32) {
        img
    } else {
        img.resize_exact(w32, h32, FilterType::Triangle)
    };
    match c {
        1 => Ok(img.to_luma32f().into_raw()),
        3 => {
            let hwc = img.to_rgb32f().into_raw();
            Ok((0..3)
                .flat_map(|ch| hwc.iter().skip(ch).step_by(3).copied())
                .collect())
        }
        _ => Err(Error::Mismatch(format!(
            "a Blend pattern image ({}) fits 1- or 3-channel images, not {c} channels",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::stamp_all;
    use crate::data::tests::toy_set;

    #[test]
    fn output_is_the_convex_mix_with_the_pattern() {
        let (c, h, w) = (3, 5, 6);
        let cfg = BlendConfig {
            alpha: 0.3,
            pattern_seed: 11,
            ..Default::default()
        };
        let trigger = cfg.trigger(c, h, w).unwrap();
        let p = trigger.pattern().to_vec();
        assert_eq!(p.len(), c * h * w);
        assert!(p.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = p.iter().sum::<f32>() / p.len() as f32;
        assert!((mean - 0.5).abs() < 0.1, "uniform noise, mean {mean}");

        let before: Vec<f32> = (0..c * h * w).map(|i| (i % 13) as f32 / 12.0).collect();
        let mut after = before.clone();
        trigger.apply(&mut after, c, h, w).unwrap();
        for i in 0..before.len() {
            let want = 0.7 * before[i] + 0.3 * p[i];
            assert!((after[i] - want).abs() < 1e-6, "value {i}");
        }
        assert!(trigger.apply(&mut after, 1, 9, 10).is_err(), "other size");
    }

    #[test]
    fn pattern_is_deterministic_from_its_seed() {
        let a = BlendConfig::default();
        let b = BlendConfig {
            pattern_seed: 1,
            ..Default::default()
        };
        assert_eq!(a.pattern(1, 4, 4).unwrap(), a.pattern(1, 4, 4).unwrap());
        assert_ne!(a.pattern(1, 4, 4).unwrap(), b.pattern(1, 4, 4).unwrap());
        let bad = BlendConfig {
            alpha: 1.2,
            ..Default::default()
        };
        assert!(bad.trigger(1, 4, 4).is_err());
    }

    #[test]
    fn image_pattern_is_read_chw_and_resized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        // 3x1x2 RGB: R = [1, 0], G = [0, 1], B = [0.2, 0.6].
        crate::data::save_png(&path, &[1.0, 0.0, 0.0, 1.0, 0.2, 0.6], 3, 1, 2).unwrap();
        let cfg = BlendConfig {
            pattern_image: Some(path.clone()),
            ..Default::default()
        };
        let p = cfg.pattern(3, 1, 2).unwrap();
        let want = [1.0, 0.0, 0.0, 1.0, 0.2, 0.6];
        for (got, want) in p.iter().zip(want) {
            assert!((got - want).abs() < 1.0 / 255.0, "{p:?}");
        }
        assert_eq!(cfg.pattern(1, 3, 4).unwrap().len(), 12, "grey, resized");
        assert!(cfg.pattern(2, 1, 2).is_err(), "2 channels");
        let missing = BlendConfig {
            pattern_image: Some(dir.path().join("none.png")),
            ..Default::default()
        };
        assert!(missing.trigger(1, 2, 2).is_err());
    }

    #[test]
    fn poison_blends_and_relabels_the_chosen_images() {
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let clean = toy_set(labels.clone(), 3);
        let cfg = BlendConfig {
            target: 1,
            rate: 0.25,
            ..Default::default()
        };
        let (poisoned, flags) = cfg.poison(&clean, 5).unwrap();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 10, "25% of 40");
        let stamped = stamp_all(&clean, &cfg.trigger(1, 2, 2).unwrap()).unwrap();
        for i in 0..clean.len() {
            if flags[i] {
                assert_ne!(labels[i], 1);
                assert_eq!(poisoned.labels[i], 1);
                assert_eq!(poisoned.image(i), stamped.image(i));
                assert_ne!(poisoned.image(i), clean.image(i));
            } else {
                assert_eq!(poisoned.labels[i], labels[i]);
                assert_eq!(poisoned.image(i), clean.image(i));
            }
        }
    }
}
