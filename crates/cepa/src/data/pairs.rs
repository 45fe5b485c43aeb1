//! Two-digit MNIST: a 100-class task made from a 10-class one, for scans of many classes where no
//! 100-class dataset is at hand. An image is two digit images side by side (28 x 56 from MNIST),
//! its class `10 * left + right`. Training pairs are drawn from the train split and test pairs
//! from the test split, so no test digit was seen in training. Classes are balanced: the `i`-th
//! pair has class `i % 100`, its two digits drawn at random (seeded) among that digit's images.

use std::path::Path;

use rand::{Rng, SeedableRng};

use super::{ImageSet, npy};
use crate::error::{Error, Result};

/// `n` two-digit images from the single digits of `digits` (10 classes), seeded.
pub fn two_digit(digits: &ImageSet, n: usize, seed: u64) -> Result<ImageSet> {
    if digits.num_classes != 10 {
        return Err(Error::Mismatch(format!(
            "{}: two-digit images need a 10-class dataset, this one has {} classes",
            digits.source.display(),
            digits.num_classes
        )));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 10];
    for (i, &l) in digits.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    if let Some(d) = by_class.iter().position(Vec::is_empty) {
        return Err(Error::Mismatch(format!(
            "{}: no image of digit {d}",
            digits.source.display()
        )));
    }
    let (c, h, w) = (digits.channels, digits.height, digits.width);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * c * h * 2 * w);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % 100;
        let (a, b) = (class / 10, class % 10);
        let left = digits.image(by_class[a][rng.random_range(0..by_class[a].len())]);
        let right = digits.image(by_class[b][rng.random_range(0..by_class[b].len())]);
        for ch in 0..c {
            for row in 0..h {
                let at = ch * h * w + row * w;
                pixels.extend_from_slice(&left[at..at + w]);
                pixels.extend_from_slice(&right[at..at + w]);
            }
        }
        labels.push(class);
    }
    Ok(ImageSet {
        pixels,
        labels,
        channels: c,
        height: h,
        width: 2 * w,
        num_classes: 100,
        class_names: None,
        source: digits.source.clone(),
        format: "two-digit".into(),
    })
}

/// Write `set` as `<split>_images.npy` (uint8, N x H x W, or N x C x H x W) and
/// `<split>_labels.npy` in `dir`, the layout [`super::load`] reads back.
pub fn write_npy_split(dir: &Path, split: &str, set: &ImageSet) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let bytes: Vec<u8> = set
        .pixels
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let shape: Vec<usize> = if set.channels == 1 {
        vec![set.len(), set.height, set.width]
    } else {
        vec![set.len(), set.channels, set.height, set.width]
    };
    npy::write_npy_u8(&dir.join(format!("{split}_images.npy")), &shape, &bytes)?;
    let labels: Vec<u8> = set
        .labels
        .iter()
        .map(|&l| u8::try_from(l).unwrap_or(u8::MAX))
        .collect();
    npy::write_npy_u8(
        &dir.join(format!("{split}_labels.npy")),
        &[set.len()],
        &labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Split, load};

    fn digits() -> ImageSet {
        // 10 classes, 2 images each, 1 x 2 x 3 pixels: image i holds the value i / 20 everywhere.
        let n = 20;
        let pixels = (0..n)
            .flat_map(|i| std::iter::repeat_n(i as f32 / 20.0, 6))
            .collect();
        let labels = (0..n).map(|i| i % 10).collect();
        ImageSet::synthetic(pixels, labels, [1, 2, 3], 10, "digits")
    }

    #[test]
    fn pairs_put_the_tens_digit_left_and_the_units_digit_right() {
        let d = digits();
        let set = two_digit(&d, 300, 7).unwrap();
        assert_eq!(
            (set.channels, set.height, set.width, set.num_classes),
            (1, 2, 6, 100)
        );
        assert_eq!(set.len(), 300);
        for (i, &class) in set.labels.iter().enumerate() {
            assert_eq!(class, i % 100);
            let img = set.image(i);
            for row in 0..2 {
                let left = img[row * 6];
                let right = img[row * 6 + 3];
                // The value identifies the source image, whose label is its index mod 10.
                let label_of = |v: f32| ((v * 20.0).round() as usize) % 10;
                assert_eq!(label_of(left), class / 10);
                assert_eq!(label_of(right), class % 10);
                assert!(img[row * 6..row * 6 + 3].iter().all(|&v| v == left));
            }
        }
        // Seeded: the same pairs again, other pairs with another seed.
        assert_eq!(two_digit(&d, 300, 7).unwrap().pixels, set.pixels);
        assert_ne!(two_digit(&d, 300, 8).unwrap().pixels, set.pixels);
    }

    #[test]
    fn a_written_split_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let set = two_digit(&digits(), 200, 1).unwrap();
        write_npy_split(dir.path(), "test", &set).unwrap();
        write_npy_split(dir.path(), "train", &set).unwrap();
        let back = load(dir.path(), Split::Test).unwrap();
        assert_eq!(back.labels, set.labels);
        assert_eq!((back.height, back.width, back.num_classes), (2, 6, 100));
        for (a, b) in back.pixels.iter().zip(&set.pixels) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
    }

    #[test]
    fn a_dataset_that_is_not_ten_digits_is_refused() {
        let mut d = digits();
        d.num_classes = 12;
        let e = two_digit(&d, 10, 0).unwrap_err().to_string();
        assert!(e.contains("10-class"), "{e}");
    }
}
