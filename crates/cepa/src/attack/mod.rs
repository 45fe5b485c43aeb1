//! Poisoning transforms (backdoor attacks), one per file, used to implant backdoors in the
//! project's own models and to measure attack success.
//!
//! An attack is a [`Trigger`] (what is stamped on an image) plus a poisoning plan (which training
//! images carry it and are relabelled to the target): [`poison_with`] does the second part for any
//! trigger, so every attack file only describes its trigger.

pub mod badnets;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use badnets::BadNetsConfig;

use crate::data::ImageSet;
use crate::error::{Error, Result};

/// A trigger: an in-place transform of one CHW image with pixels in `[0, 1]`.
pub trait Trigger {
    /// Stamp the trigger on one image of `c x h x w` values. Errors when the image does not have
    /// that many values or the trigger does not fit it.
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()>;
}

/// Which images of `labels` to poison: `round(rate * eligible)` of the eligible ones, chosen with a
/// ChaCha8 rng seeded by `seed`, returned in increasing order. Eligible: label in `sources` when
/// given, otherwise any label other than `target`.
pub fn poison_indices(
    labels: &[usize],
    target: usize,
    rate: f64,
    sources: Option<&[usize]>,
    seed: u64,
) -> Result<Vec<usize>> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Error::Config(format!(
            "poisoning rate {rate} must be in [0, 1]"
        )));
    }
    if let Some(s) = sources
        && s.contains(&target)
    {
        return Err(Error::Config(format!(
            "source classes {s:?} include the target class {target}"
        )));
    }
    let eligible: Vec<usize> = labels
        .iter()
        .enumerate()
        .filter(|&(_, &l)| match sources {
            Some(s) => s.contains(&l),
            None => l != target,
        })
        .map(|(i, _)| i)
        .collect();
    let count = (rate * eligible.len() as f64).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picks = rand::seq::index::sample(&mut rng, eligible.len(), count).into_vec();
    picks.sort_unstable();
    Ok(picks.into_iter().map(|k| eligible[k]).collect())
}

/// A poisoned copy of `set`: the images chosen by [`poison_indices`] carry `trigger` and are
/// relabelled to `target`. Also returns, per image, whether it was poisoned.
pub fn poison_with(
    set: &ImageSet,
    trigger: &impl Trigger,
    target: usize,
    rate: f64,
    sources: Option<&[usize]>,
    seed: u64,
) -> Result<(ImageSet, Vec<bool>)> {
    if target >= set.num_classes {
        return Err(Error::Config(format!(
            "target class {target} is outside the {} classes of {}",
            set.num_classes,
            set.source.display()
        )));
    }
    let chosen = poison_indices(&set.labels, target, rate, sources, seed)?;
    let mut out = set.clone();
    let mut poisoned = vec![false; set.len()];
    let (c, h, w) = (set.channels, set.height, set.width);
    let per = set.image_len();
    for i in chosen {
        trigger.apply(&mut out.pixels[i * per..(i + 1) * per], c, h, w)?;
        out.labels[i] = target;
        poisoned[i] = true;
    }
    Ok((out, poisoned))
}

/// A copy of `set` with `trigger` stamped on every image, labels unchanged (for measuring the
/// attack success rate on held-out images).
pub fn stamp_all(set: &ImageSet, trigger: &impl Trigger) -> Result<ImageSet> {
    let mut out = set.clone();
    let per = set.image_len();
    if per > 0 {
        for chw in out.pixels.chunks_exact_mut(per) {
            trigger.apply(chw, set.channels, set.height, set.width)?;
        }
    }
    Ok(out)
}

/// Check that an image buffer holds `c x h x w` values.
pub(crate) fn check_len(chw: &[f32], c: usize, h: usize, w: usize) -> Result<()> {
    if chw.len() != c * h * w {
        return Err(Error::Mismatch(format!(
            "image buffer holds {} values but {c}x{h}x{w} (CxHxW) = {} are expected",
            chw.len(),
            c * h * w
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_count_eligibility_and_determinism() {
        // 10 images of each of 4 classes.
        let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let a = poison_indices(&labels, 2, 0.2, None, 7).unwrap();
        assert_eq!(a.len(), 6, "round(0.2 * 30 non-target images)");
        assert!(a.iter().all(|&i| labels[i] != 2));
        assert!(a.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(a, poison_indices(&labels, 2, 0.2, None, 7).unwrap());
        assert_ne!(a, poison_indices(&labels, 2, 0.2, None, 8).unwrap());

        let s = poison_indices(&labels, 2, 0.5, Some(&[0, 3]), 7).unwrap();
        assert_eq!(s.len(), 10);
        assert!(s.iter().all(|&i| labels[i] == 0 || labels[i] == 3));

        assert!(poison_indices(&labels, 2, 1.5, None, 0).is_err());
        assert!(poison_indices(&labels, 2, 0.1, Some(&[2]), 0).is_err());
    }
}
