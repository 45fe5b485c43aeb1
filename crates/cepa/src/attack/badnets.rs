//! BadNets (Gu et al., 2017): a small solid patch stamped at a fixed place; images carrying it
//! are relabelled to the target class (all-to-one, or source-specific).

use serde::{Deserialize, Serialize};

use super::{Trigger, check_len, poison_with};
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// Distance in pixels between the default (bottom-right) patch and the image border.
pub const MARGIN: usize = 1;

/// A BadNets attack: the patch and the poisoning plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BadNetsConfig {
    /// Side of the square patch, pixels. Default 3.
    pub patch: usize,
    /// Top row of the patch. Default `None`: bottom-right, `height - patch - 1`.
    pub row: Option<usize>,
    /// Left column of the patch. Default `None`: bottom-right, `width - patch - 1`.
    pub col: Option<usize>,
    /// Value of every patch pixel in every channel, `[0, 1]` pixel units. Default 1.0 (white).
    pub value: f32,
    /// Class the poisoned images are relabelled to. Default 0.
    pub target: usize,
    /// Fraction of the eligible images that are poisoned. Default 0.1.
    pub rate: f64,
    /// Classes whose images are eligible. Default `None`: every class except the target.
    pub sources: Option<Vec<usize>>,
}

impl Default for BadNetsConfig {
    fn default() -> Self {
        Self {
            patch: 3,
            row: None,
            col: None,
            value: 1.0,
            target: 0,
            rate: 0.1,
            sources: None,
        }
    }
}

impl BadNetsConfig {
    /// Top-left corner `(row, col)` of the patch on an `h x w` image; errors when the patch does
    /// not fit or its value is outside `[0, 1]`.
    pub fn position(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.patch == 0 {
            return Err(Error::Config(
                "BadNets patch size must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.value) {
            return Err(Error::Config(format!(
                "BadNets patch value {} must be in [0, 1]",
                self.value
            )));
        }
        let default = |size: usize| size.checked_sub(self.patch + MARGIN);
        let (row, col) = match (
            self.row.or_else(|| default(h)),
            self.col.or_else(|| default(w)),
        ) {
            (Some(r), Some(c)) if r + self.patch <= h && c + self.patch <= w => (r, c),
            (r, c) => {
                return Err(Error::Config(format!(
                    "a {p}x{p} BadNets patch at row {r:?}, col {c:?} does not fit a {h}x{w} image",
                    p = self.patch
                )));
            }
        };
        Ok((row, col))
    }

    /// Stamp the patch on one CHW image: exactly the `patch x patch` pixels at
    /// [`position`](Self::position), in every channel, are set to `value`.
    pub fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        check_len(chw, c, h, w)?;
        let (row, col) = self.position(h, w)?;
        for ch in 0..c {
            for r in row..row + self.patch {
                let start = (ch * h + r) * w + col;
                chw[start..start + self.patch].fill(self.value);
            }
        }
        Ok(())
    }

    /// A poisoned copy of `set`: `rate` of the eligible images (see [`sources`](Self::sources))
    /// carry the patch and are relabelled to `target`, chosen deterministically from `seed`.
    /// Also returns, per image, whether it was poisoned.
    pub fn poison(&self, set: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        self.position(set.height, set.width)?;
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

impl Trigger for BadNetsConfig {
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        BadNetsConfig::apply(self, chw, c, h, w)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::attack::stamp_all;

    fn set(labels: Vec<usize>, c: usize, h: usize, w: usize) -> ImageSet {
        let per = c * h * w;
        ImageSet {
            pixels: (0..labels.len() * per)
                .map(|i| (i % 97) as f32 / 200.0)
                .collect(),
            labels,
            channels: c,
            height: h,
            width: w,
            num_classes: 10,
            class_names: None,
            source: PathBuf::from("toy"),
            format: "toy".into(),
        }
    }

    #[test]
    fn apply_changes_exactly_the_patch_pixels() {
        let (c, h, w) = (3, 10, 8);
        let cfg = BadNetsConfig {
            value: 0.75,
            ..Default::default()
        };
        assert_eq!(
            cfg.position(h, w).unwrap(),
            (6, 4),
            "bottom-right, 1 px margin"
        );
        let before = set(vec![0], c, h, w).pixels;
        let mut after = before.clone();
        cfg.apply(&mut after, c, h, w).unwrap();
        for ch in 0..c {
            for r in 0..h {
                for x in 0..w {
                    let i = (ch * h + r) * w + x;
                    let in_patch = (6..9).contains(&r) && (4..7).contains(&x);
                    if in_patch {
                        assert_eq!(after[i], 0.75, "patch pixel c{ch} r{r} x{x}");
                    } else {
                        assert_eq!(after[i], before[i], "pixel c{ch} r{r} x{x} must not change");
                    }
                }
            }
        }

        let placed = BadNetsConfig {
            patch: 2,
            row: Some(0),
            col: Some(1),
            ..Default::default()
        };
        let mut img = vec![0.0; 12];
        placed.apply(&mut img, 1, 3, 4).unwrap();
        assert_eq!(img, [0., 1., 1., 0., 0., 1., 1., 0., 0., 0., 0., 0.]);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let cfg = BadNetsConfig::default();
        assert!(
            cfg.apply(&mut [0.0; 9], 1, 3, 3).is_err(),
            "3x3 patch + margin on 3x3"
        );
        assert!(
            cfg.apply(&mut [0.0; 10], 1, 28, 28).is_err(),
            "wrong buffer length"
        );
        let off = BadNetsConfig {
            row: Some(26),
            ..Default::default()
        };
        assert!(off.position(28, 28).is_err());
        let bright = BadNetsConfig {
            value: 2.0,
            ..Default::default()
        };
        assert!(bright.position(28, 28).is_err());
    }

    #[test]
    fn poison_relabels_the_right_images_deterministically() {
        let labels: Vec<usize> = (0..200).map(|i| i % 10).collect();
        let clean = set(labels.clone(), 1, 8, 8);
        let cfg = BadNetsConfig {
            target: 7,
            rate: 0.1,
            ..Default::default()
        };
        let (poisoned, flags) = cfg.poison(&clean, 3).unwrap();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 18, "10% of 180");
        let stamped = stamp_all(&clean, &cfg).unwrap();
        for i in 0..clean.len() {
            if flags[i] {
                assert_ne!(labels[i], 7);
                assert_eq!(poisoned.labels[i], 7);
                assert_eq!(poisoned.image(i), stamped.image(i));
            } else {
                assert_eq!(poisoned.labels[i], labels[i]);
                assert_eq!(poisoned.image(i), clean.image(i));
            }
        }
        let (again, flags_again) = cfg.poison(&clean, 3).unwrap();
        assert_eq!(flags, flags_again);
        assert_eq!(poisoned.labels, again.labels);
        assert_ne!(
            flags,
            cfg.poison(&clean, 4).unwrap().1,
            "another seed, other images"
        );

        let sourced = BadNetsConfig {
            sources: Some(vec![1, 2]),
            rate: 0.5,
            ..cfg
        };
        let (_, flags) = sourced.poison(&clean, 0).unwrap();
        let picked: Vec<usize> = (0..200).filter(|&i| flags[i]).collect();
        assert_eq!(picked.len(), 20, "half of the 40 images of classes 1 and 2");
        assert!(picked.iter().all(|&i| labels[i] == 1 || labels[i] == 2));

        let outside = BadNetsConfig {
            target: 10,
            ..Default::default()
        };
        assert!(outside.poison(&clean, 0).is_err());
    }
}
