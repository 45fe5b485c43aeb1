//! WaNet (Nguyen & Tran, ICLR 2021): an imperceptible smooth warp of the whole image; images
//! carrying it are relabelled to the target class. "Noise mode" also warps a further set of images
//! with the backdoor warp plus per-image random noise and keeps their labels, so the model learns
//! the exact warp rather than any warp.
//!
//! The warp follows the authors' code: a `2 x k x k` control grid uniform in `[-1, 1]`, divided by
//! its mean absolute value, upsampled *bicubically* (PyTorch `interpolate`, `align_corners=True`,
//! cubic coefficient -0.75) to `h x w`, scaled by `s / h` (vertical) and `s / w` (horizontal: the
//! paper's `s / h` on its square images), added to the identity sampling grid and clamped to
//! `[-1, 1]`. Images are resampled bilinearly with `grid_sample(align_corners=True)` semantics.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Trigger, check_len, check_target, poison_indices, sample_sorted, stamp_at};
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// Cubic convolution coefficient of PyTorch's bicubic interpolation.
const CUBIC_A: f64 = -0.75;

/// A WaNet attack: the warp and the poisoning plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WanetConfig {
    /// Side of the random control grid, points. Default 4.
    pub k: usize,
    /// Strength of the warp (displacement of about `s / 2` pixels at an average control point).
    /// Default 0.5.
    pub s: f32,
    /// Noise-mode images per backdoor image; 0 turns noise mode off. Default 2.
    pub cross_ratio: f64,
    /// Seed of the control grid, which fixes the backdoor warp. Default 0.
    pub grid_seed: u64,
    /// Class the backdoor images are relabelled to. Default 0.
    pub target: usize,
    /// Fraction of the eligible images that carry the backdoor warp. Default 0.1.
    pub rate: f64,
    /// Classes whose images are eligible. Default `None`: every class except the target.
    pub sources: Option<Vec<usize>>,
}

impl Default for WanetConfig {
    fn default() -> Self {
        Self {
            k: 4,
            s: 0.5,
            cross_ratio: 2.0,
            grid_seed: 0,
            target: 0,
            rate: 0.1,
            sources: None,
        }
    }
}

/// A poisoned training set with both kinds of altered images marked.
#[derive(Clone, Debug)]
pub struct WanetPoison {
    /// The poisoned copy.
    pub set: ImageSet,
    /// Per image: carries the backdoor warp and was relabelled to the target.
    pub poisoned: Vec<bool>,
    /// Per image: carries the warp plus its own noise (noise mode), label kept.
    pub cross: Vec<bool>,
}

impl WanetConfig {
    /// Errors unless `k >= 1`, `s >= 0` and `cross_ratio >= 0` (all finite).
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::Config(
                "WaNet control grid size k must be at least 1".into(),
            ));
        }
        if !(self.s.is_finite() && self.s >= 0.0) {
            return Err(Error::Config(format!(
                "WaNet strength s = {} must be finite and non-negative",
                self.s
            )));
        }
        if !(self.cross_ratio.is_finite() && self.cross_ratio >= 0.0) {
            return Err(Error::Config(format!(
                "WaNet cross_ratio {} must be finite and non-negative",
                self.cross_ratio
            )));
        }
        Ok(())
    }

    /// The control grid, `2 x k x k` (plane 0 moves columns, plane 1 rows), drawn uniform in
    /// `[-1, 1)` from `grid_seed` and divided by its mean absolute value.
    pub fn control_grid(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.grid_seed);
        let mut ins: Vec<f32> = (0..2 * self.k * self.k)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let mean_abs = ins.iter().map(|v| v.abs()).sum::<f32>() / ins.len() as f32;
        if mean_abs > 0.0 {
            ins.iter_mut().for_each(|v| *v /= mean_abs);
        }
        Ok(ins)
    }

    /// The flow field for `h x w` images, in normalised `[-1, 1]` grid units, one `[dx, dy]` per
    /// pixel (row-major): the control grid upsampled bicubically, times `s / w` (dx) and `s / h`
    /// (dy).
    pub fn flow(&self, h: usize, w: usize) -> Result<Vec<[f32; 2]>> {
        if h == 0 || w == 0 {
            return Err(Error::Mismatch(format!(
                "cannot warp an empty {h}x{w} image"
            )));
        }
        let ins = self.control_grid()?;
        let k = self.k;
        let dx = upsample_bicubic(&ins[..k * k], k, k, h, w);
        let dy = upsample_bicubic(&ins[k * k..], k, k, h, w);
        let (sx, sy) = (self.s / w as f32, self.s / h as f32);
        Ok(dx
            .iter()
            .zip(&dy)
            .map(|(&x, &y)| [x * sx, y * sy])
            .collect())
    }

    /// The backdoor warp for `h x w` images: identity grid plus [`flow`](Self::flow), clamped.
    pub fn trigger(&self, h: usize, w: usize) -> Result<WanetTrigger> {
        let flow = self.flow(h, w)?;
        let (ys, xs) = (linspace(h), linspace(w));
        let grid = flow
            .iter()
            .enumerate()
            .map(|(p, [dx, dy])| {
                [
                    (xs[p % w] + dx).clamp(-1.0, 1.0),
                    (ys[p / w] + dy).clamp(-1.0, 1.0),
                ]
            })
            .collect();
        Ok(WanetTrigger {
            height: h,
            width: w,
            grid,
        })
    }

    /// A poisoned copy of `set` (see [`poison_detailed`](Self::poison_detailed)) and, per image,
    /// whether it carries the backdoor and was relabelled. Noise-mode images are not flagged.
    pub fn poison(&self, set: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        let p = self.poison_detailed(set, seed)?;
        Ok((p.set, p.poisoned))
    }

    /// A poisoned copy of `set`, chosen deterministically from `seed`: `rate` of the eligible
    /// images (see [`sources`](Self::sources)) carry the warp and are relabelled to `target`;
    /// then `round(cross_ratio * backdoor images)` of the other images, of any class, carry the
    /// warp plus their own noise, `(u * 2 - 1) / h` per grid coordinate (`/ w` for x), and keep
    /// their labels. Errors when there are not enough other images.
    pub fn poison_detailed(&self, set: &ImageSet, seed: u64) -> Result<WanetPoison> {
        self.validate()?;
        check_target(set, self.target)?;
        let trigger = self.trigger(set.height, set.width)?;
        let backdoor = poison_indices(
            &set.labels,
            self.target,
            self.rate,
            self.sources.as_deref(),
            seed,
        )?;
        let (mut out, poisoned) = stamp_at(set, &trigger, &backdoor, Some(self.target))?;

        let rest: Vec<usize> = (0..set.len()).filter(|&i| !poisoned[i]).collect();
        let count = (self.cross_ratio * backdoor.len() as f64).round() as usize;
        if count > rest.len() {
            return Err(Error::Config(format!(
                "WaNet noise mode needs {count} images (cross_ratio {} x {} backdoor images) \
                 but only {} images of {} are left",
                self.cross_ratio,
                backdoor.len(),
                rest.len(),
                set.source.display()
            )));
        }
        // Another stream of the same seed: independent of the backdoor choice.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let chosen = sample_sorted(&rest, count, &mut rng);
        let mut cross = vec![false; set.len()];
        let (c, h, w) = (set.channels, set.height, set.width);
        let per = set.image_len();
        for i in chosen {
            let grid = trigger.noisy_grid(&mut rng);
            let chw = &mut out.pixels[i * per..(i + 1) * per];
            let src = chw.to_vec();
            warp(&src, chw, c, h, w, &grid);
            cross[i] = true;
        }
        Ok(WanetPoison {
            set: out,
            poisoned,
            cross,
        })
    }
}

/// The backdoor warp prepared for one image size by [`WanetConfig::trigger`].
#[derive(Clone, Debug, PartialEq)]
pub struct WanetTrigger {
    height: usize,
    width: usize,
    grid: Vec<[f32; 2]>,
}

impl WanetTrigger {
    /// The sampling grid, one `[x, y]` in `[-1, 1]` per output pixel (row-major): output pixel
    /// `(row, col)` takes the input at column `(x + 1) / 2 * (w - 1)`, row `(y + 1) / 2 * (h - 1)`.
    pub fn grid(&self) -> &[[f32; 2]] {
        &self.grid
    }

    /// The grid of a noise-mode image: every coordinate moved by uniform noise in
    /// `[-1/h, 1/h)` (`[-1/w, 1/w)` for x), clamped to `[-1, 1]`.
    fn noisy_grid(&self, rng: &mut ChaCha8Rng) -> Vec<[f32; 2]> {
        let (nx, ny) = (1.0 / self.width as f32, 1.0 / self.height as f32);
        self.grid
            .iter()
            .map(|&[x, y]| {
                let ux = rng.random::<f32>() * 2.0 - 1.0;
                let uy = rng.random::<f32>() * 2.0 - 1.0;
                [
                    (x + ux * nx).clamp(-1.0, 1.0),
                    (y + uy * ny).clamp(-1.0, 1.0),
                ]
            })
            .collect()
    }
}

impl Trigger for WanetTrigger {
    /// Resample the image along the backdoor grid (bilinear, every channel alike).
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
        check_len(chw, c, h, w)?;
        if (h, w) != (self.height, self.width) {
            return Err(Error::Mismatch(format!(
                "WaNet warp of {}x{} (HxW) applied to a {h}x{w} image",
                self.height, self.width
            )));
        }
        let src = chw.to_vec();
        warp(&src, chw, c, h, w, &self.grid);
        Ok(())
    }
}

/// `n` evenly spaced values from -1 to 1 (just -1 when `n == 1`), like `torch.linspace`.
fn linspace(n: usize) -> Vec<f32> {
    if n <= 1 {
        return vec![-1.0; n];
    }
    (0..n)
        .map(|i| (-1.0 + 2.0 * i as f64 / (n - 1) as f64) as f32)
        .collect()
}

/// `grid_sample(src, grid, mode="bilinear", align_corners=True)` of one CHW image into `dst`.
/// Grid coordinates are in `[-1, 1]`, so every sample lies inside the image.
fn warp(src: &[f32], dst: &mut [f32], c: usize, h: usize, w: usize, grid: &[[f32; 2]]) {
    let plane = h * w;
    for (p, &[gx, gy]) in grid.iter().enumerate() {
        let ix = ((gx + 1.0) / 2.0 * (w - 1) as f32).clamp(0.0, (w - 1) as f32);
        let iy = ((gy + 1.0) / 2.0 * (h - 1) as f32).clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (ix.floor() as usize, iy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (tx, ty) = (ix - x0 as f32, iy - y0 as f32);
        for ch in 0..c {
            let s = &src[ch * plane..(ch + 1) * plane];
            let top = s[y0 * w + x0] * (1.0 - tx) + s[y0 * w + x1] * tx;
            let bottom = s[y1 * w + x0] * (1.0 - tx) + s[y1 * w + x1] * tx;
            dst[ch * plane + p] = top * (1.0 - ty) + bottom * ty;
        }
    }
}

/// For each of `output` positions, the 4 input indices and cubic weights of PyTorch's bicubic
/// interpolation with `align_corners=True` (indices clamped to the border).
fn cubic_taps(input: usize, output: usize) -> Vec<[(usize, f64); 4]> {
    let scale = if output > 1 {
        (input - 1) as f64 / (output - 1) as f64
    } else {
        0.0
    };
    let near = |t: f64| ((CUBIC_A + 2.0) * t - (CUBIC_A + 3.0)) * t * t + 1.0;
    let far = |t: f64| ((CUBIC_A * t - 5.0 * CUBIC_A) * t + 8.0 * CUBIC_A) * t - 4.0 * CUBIC_A;
    (0..output)
        .map(|o| {
            let real = scale * o as f64;
            let i0 = real.floor();
            let t = real - i0;
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            let mut taps = [(0, 0.0); 4];
            for (m, (tap, wt)) in taps.iter_mut().zip(weights).enumerate() {
                let idx = (i0 as i64 - 1 + m as i64).clamp(0, input as i64 - 1) as usize;
                *tap = (idx, wt);
            }
            taps
        })
        .collect()
}

/// Bicubic upsampling (PyTorch `interpolate(mode="bicubic", align_corners=True)`) of one
/// `ih x iw` plane to `oh x ow`, separably: along rows, then along columns.
fn upsample_bicubic(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (tx, ty) = (cubic_taps(iw, ow), cubic_taps(ih, oh));
    let mut rows = vec![0.0f64; ih * ow];
    for r in 0..ih {
        for (j, taps) in tx.iter().enumerate() {
            rows[r * ow + j] = taps
                .iter()
                .map(|&(i, wt)| f64::from(src[r * iw + i]) * wt)
                .sum();
        }
    }
    let mut out = vec![0.0f32; oh * ow];
    for (i, taps) in ty.iter().enumerate() {
        for j in 0..ow {
            out[i * ow + j] = taps
                .iter()
                .map(|&(r, wt)| rows[r * ow + j] * wt)
                .sum::<f64>() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::stamp_all;

    fn toy(labels: Vec<usize>, h: usize, w: usize) -> ImageSet {
        let mut set = crate::data::tests::toy_set(labels, 10);
        let n = set.len();
        set.height = h;
        set.width = w;
        // A smooth but non-constant image, different per image.
        set.pixels = (0..n * h * w)
            .map(|v| {
                let (i, p) = (v / (h * w), v % (h * w));
                0.5 + 0.4 * ((p / w) as f32 * 0.3 + (p % w) as f32 * 0.2 + i as f32).sin()
            })
            .collect();
        set
    }

    #[test]
    fn control_grid_has_unit_mean_abs_and_depends_on_its_seed() {
        let cfg = WanetConfig::default();
        let g = cfg.control_grid().unwrap();
        assert_eq!(g.len(), 2 * 4 * 4);
        let mean_abs = g.iter().map(|v| v.abs()).sum::<f32>() / g.len() as f32;
        assert!((mean_abs - 1.0).abs() < 1e-5);
        assert_eq!(g, cfg.control_grid().unwrap());
        let other = WanetConfig {
            grid_seed: 1,
            ..Default::default()
        };
        assert_ne!(g, other.control_grid().unwrap());
    }

    #[test]
    fn flow_is_the_scaled_smooth_upsampled_control_grid() {
        // 28 = 3 * 9 + 1: control point (a, b) of a 4x4 grid lands exactly on pixel (9a, 9b).
        let (h, w) = (28, 28);
        let cfg = WanetConfig::default();
        let ctrl = cfg.control_grid().unwrap();
        let flow = cfg.flow(h, w).unwrap();
        let unit = cfg.s / h as f32;
        for a in 0..4 {
            for b in 0..4 {
                let [dx, dy] = flow[9 * a * w + 9 * b];
                assert!(
                    (dx - unit * ctrl[a * 4 + b]).abs() < 1e-6,
                    "dx at ({a}, {b})"
                );
                assert!(
                    (dy - unit * ctrl[16 + a * 4 + b]).abs() < 1e-6,
                    "dy at ({a}, {b})"
                );
            }
        }
        // Bounded by s: bicubic weights sum to at most 1.375 in absolute value per axis.
        let max_ctrl = ctrl.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let max_flow = flow.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max_flow <= unit * max_ctrl * 1.375 * 1.375);
        assert!(
            max_flow >= unit * max_ctrl * 0.999,
            "reaches the largest control point"
        );
        // Smooth: neighbouring pixels move by a small fraction of the largest displacement.
        let mut max_step = 0.0f32;
        for r in 0..h {
            for x in 0..w {
                for (r2, x2) in [(r + 1, x), (r, x + 1)] {
                    if r2 < h && x2 < w {
                        for (u, v) in flow[r * w + x].iter().zip(&flow[r2 * w + x2]) {
                            max_step = max_step.max((u - v).abs());
                        }
                    }
                }
            }
        }
        assert!(
            max_step < 0.35 * max_flow,
            "neighbour step {max_step} vs largest displacement {max_flow}"
        );
        // Linear in s.
        let doubled = WanetConfig { s: 1.0, ..cfg }.flow(h, w).unwrap();
        for (f, d) in flow.iter().zip(&doubled) {
            assert!((2.0 * f[0] - d[0]).abs() < 1e-6 && (2.0 * f[1] - d[1]).abs() < 1e-6);
        }
    }

    #[test]
    fn zero_strength_is_the_identity_and_a_warp_moves_pixels() {
        let set = toy(vec![0; 2], 9, 7);
        let still = WanetConfig {
            s: 0.0,
            ..Default::default()
        };
        let mut img = set.image(1).to_vec();
        still
            .trigger(9, 7)
            .unwrap()
            .apply(&mut img, 1, 9, 7)
            .unwrap();
        for (a, b) in img.iter().zip(set.image(1)) {
            assert!((a - b).abs() < 1e-5);
        }

        let warped = stamp_all(&set, &WanetConfig::default().trigger(9, 7).unwrap()).unwrap();
        let moved = warped
            .pixels
            .iter()
            .zip(&set.pixels)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-3, "largest change {moved}");
        // Bilinear resampling stays within the image's range.
        assert!(warped.pixels.iter().all(|v| (0.1..=0.9).contains(v)));
    }

    #[test]
    fn grid_sample_is_bilinear_with_aligned_corners() {
        // One row of 4 pixels: x = -1, 0, 1, 0.5 sample columns 0, 1.5, 3, 2.25.
        let src = [0.0, 0.4, 1.0, 0.6];
        let grid = [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.0]];
        let mut dst = [0.0; 4];
        warp(&src, &mut dst, 1, 1, 4, &grid);
        let want = [0.0, 0.7, 0.6, 0.9];
        for (got, want) in dst.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{dst:?}");
        }
        // 2x2, y moves rows: the centre averages all four.
        let mut one = [0.0];
        warp(&[0.0, 0.2, 0.4, 1.0], &mut one, 1, 2, 2, &[[0.0, 0.0]]);
        assert!((one[0] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn noise_mode_images_keep_their_labels() {
        let labels: Vec<usize> = (0..100).map(|i| i % 5).collect();
        let set = toy(labels.clone(), 8, 8);
        let cfg = WanetConfig {
            target: 4,
            ..Default::default()
        };
        let p = cfg.poison_detailed(&set, 2).unwrap();
        let n_bd = p.poisoned.iter().filter(|&&f| f).count();
        let n_cross = p.cross.iter().filter(|&&f| f).count();
        assert_eq!(n_bd, 8, "10% of 80 non-target images");
        assert_eq!(n_cross, 16, "cross_ratio 2");
        let stamped = stamp_all(&set, &cfg.trigger(8, 8).unwrap()).unwrap();
        for (i, &label) in labels.iter().enumerate() {
            assert!(!(p.poisoned[i] && p.cross[i]), "image {i} in both sets");
            if p.poisoned[i] {
                assert_eq!(p.set.labels[i], 4);
                assert_eq!(p.set.image(i), stamped.image(i));
            } else {
                assert_eq!(p.set.labels[i], label, "image {i} keeps its label");
            }
            if p.cross[i] {
                assert_ne!(p.set.image(i), set.image(i));
                assert_ne!(p.set.image(i), stamped.image(i), "noise on top of the warp");
            }
            if !p.poisoned[i] && !p.cross[i] {
                assert_eq!(p.set.image(i), set.image(i));
            }
        }
        let (again, flags) = cfg.poison(&set, 2).unwrap();
        assert_eq!(flags, p.poisoned);
        assert_eq!(again.pixels, p.set.pixels);

        let greedy = WanetConfig {
            cross_ratio: 20.0,
            ..cfg
        };
        assert!(greedy.poison(&set, 2).is_err(), "160 noise images of 92");
        let off = WanetConfig {
            cross_ratio: 0.0,
            ..Default::default()
        };
        assert!(!off.poison_detailed(&set, 2).unwrap().cross.contains(&true));
    }

    #[test]
    fn bicubic_upsampling_matches_pytorch() {
        // Reference, PyTorch 2.x:
        //   x = torch.tensor([[1., -2., .5], [0., 3., -1.], [2., -.5, 1.]]).reshape(1, 1, 3, 3)
        //   F.interpolate(x, size=(4, 5), mode="bicubic", align_corners=True).flatten()
        let src = [1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 2.0, -0.5, 1.0];
        let want = [
            1.0, -0.734375, -2.0, -1.03125, 0.5, 0.092593, 1.194155, 1.814814, 0.693865, -0.75,
            0.518518, 1.766493, 2.453704, 1.139757, -0.537037, 2.0, 0.609375, -0.5, 0.015625, 1.0,
        ];
        let got = upsample_bicubic(&src, 3, 3, 4, 5);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
    }
}
