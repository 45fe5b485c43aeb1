//! BadNets (Gu et al., 2017): a small solid patch stamped on the image; images carrying it are
//! relabelled to the target class (all-to-one, or source-specific). The patch sits at a fixed
//! place or at a random place per image, in a fixed colour or a random colour per image.

use serde::{Deserialize, Serialize};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    /// Where the patch goes. Default `fixed` (at `row`, `col`).
    pub placement: Placement,
    /// The patch's colour. Default `fixed` (`value` in every channel).
    pub colour: Colour,
    /// Seed of the per-image random placement and colour. Default 0.
    pub random_seed: u64,
}

/// Where a BadNets patch goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// At `row`, `col` (default: bottom-right) on every image.
    #[default]
    Fixed,
    /// Anywhere the patch fits, drawn uniformly per image.
    Random,
}

/// The colour of a BadNets patch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// `value` in every channel.
    #[default]
    Fixed,
    /// One colour per image, each channel uniform in `[0, 1]`, uniform over the patch.
    Random,
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
            placement: Placement::Fixed,
            colour: Colour::Fixed,
            random_seed: 0,
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
    /// [`position`](Self::position), in every channel, are set to `value` (the image is taken as
    /// image 0 of its set for a random placement or colour; see [`Self::apply_nth`]).
    pub fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        self.apply_nth(chw, c, h, w, 0)
    }

    /// Stamp the patch on image `index` of a set: a random placement or colour is drawn from
    /// `random_seed` and `index`, so the same image always gets the same patch.
    pub fn apply_nth(
        &self,
        chw: &mut [f32],
        c: usize,
        h: usize,
        w: usize,
        index: usize,
    ) -> Result<()> {
        check_len(chw, c, h, w)?;
        let (fixed_row, fixed_col) = self.position(h, w)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.random_seed);
        rng.set_stream(index as u64);
        let (row, col) = match self.placement {
            Placement::Fixed => (fixed_row, fixed_col),
            Placement::Random => (
                rng.random_range(0..=h - self.patch),
                rng.random_range(0..=w - self.patch),
            ),
        };
        let colour: Vec<f32> = match self.colour {
            Colour::Fixed => vec![self.value; c],
            Colour::Random => (0..c).map(|_| rng.random::<f32>()).collect(),
        };
        for (ch, &v) in colour.iter().enumerate() {
            for r in row..row + self.patch {
                let start = (ch * h + r) * w + col;
                chw[start..start + self.patch].fill(v);
            }
        }
        Ok(())
    }

    /// The patch's place when it is the same on every image (`None` for a random placement).
    pub fn fixed_position(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        match self.placement {
            Placement::Fixed => self.position(h, w).ok(),
            Placement::Random => None,
        }
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

    fn apply_nth(&self, chw: &mut [f32], c: usize, h: usize, w: usize, n: usize) -> Result<()> {
        BadNetsConfig::apply_nth(self, chw, c, h, w, n)
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

    /// The changed pixels of one image: the set of (row, col) and, per channel, their values.
    fn changed(
        before: &[f32],
        after: &[f32],
        c: usize,
        h: usize,
        w: usize,
    ) -> Vec<(usize, usize, Vec<f32>)> {
        let mut out = Vec::new();
        for r in 0..h {
            for x in 0..w {
                let vals: Vec<f32> = (0..c).map(|ch| after[(ch * h + r) * w + x]).collect();
                if (0..c).any(|ch| after[(ch * h + r) * w + x] != before[(ch * h + r) * w + x]) {
                    out.push((r, x, vals));
                }
            }
        }
        out
    }

    #[test]
    fn random_placement_and_colour_vary_per_image_and_repeat_per_index() {
        let (c, h, w, n) = (3, 12, 10, 40);
        let mut clean = set(vec![0; n], c, h, w);
        clean.pixels.fill(-1.0); // outside [0, 1], so every patch pixel shows as changed
        let cfg = BadNetsConfig {
            patch: 3,
            placement: Placement::Random,
            colour: Colour::Random,
            random_seed: 5,
            ..Default::default()
        };
        let stamped = stamp_all(&clean, &cfg).unwrap();
        let mut corners = std::collections::BTreeSet::new();
        let mut colours = std::collections::BTreeSet::new();
        for i in 0..n {
            let ch = changed(clean.image(i), stamped.image(i), c, h, w);
            // Exactly one 3x3 square, one colour in [0, 1] per channel over it.
            assert_eq!(ch.len(), 9, "image {i}");
            let (r0, c0) = (ch[0].0, ch[0].1);
            assert!(r0 + 3 <= h && c0 + 3 <= w);
            for (r, x, v) in &ch {
                assert!(
                    (r0..r0 + 3).contains(r) && (c0..c0 + 3).contains(x),
                    "image {i}"
                );
                assert_eq!(v, &ch[0].2, "one colour over the patch");
                assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
            }
            corners.insert((r0, c0));
            colours.insert(ch[0].2.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            // The same index always gets the same patch; another seed another one.
            let mut again = clean.image(i).to_vec();
            cfg.apply_nth(&mut again, c, h, w, i).unwrap();
            assert_eq!(again, stamped.image(i));
        }
        assert!(corners.len() > 10, "places vary: {corners:?}");
        assert_eq!(colours.len(), n, "colours vary");
        let other = BadNetsConfig {
            random_seed: 6,
            ..cfg.clone()
        };
        assert_ne!(stamp_all(&clean, &other).unwrap().pixels, stamped.pixels);
        assert_eq!(cfg.fixed_position(h, w), None);

        // A random colour at the fixed place: only the bottom-right patch changes.
        let coloured = BadNetsConfig {
            colour: Colour::Random,
            ..Default::default()
        };
        let s = stamp_all(&clean, &coloured).unwrap();
        for i in 0..n {
            let ch = changed(clean.image(i), s.image(i), c, h, w);
            assert_eq!(ch.len(), 9);
            assert!(
                ch.iter()
                    .all(|(r, x, _)| (8..11).contains(r) && (6..9).contains(x))
            );
        }
        assert_eq!(coloured.fixed_position(h, w), Some((8, 6)));
    }
}
