//! IDX files in the MNIST layout (MNIST, Fashion-MNIST, EMNIST, ...).
//!
//! A directory holds `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` for the train split and
//! `t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte` for the test split, each optionally gzipped.
//! An IDX file is a big-endian header (magic `0x000008NN`: unsigned bytes, `NN` dimensions, then
//! one `u32` per dimension) followed by the data.

use std::path::Path;

use super::{ImageSet, Split, classes_from_labels, find_file, missing, read_bytes};
use crate::{Error, Result};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images, rows, columns).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The image and label file names of a split.
fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => (FILES[0], FILES[1]),
        Split::Test => (FILES[2], FILES[3]),
    }
}

/// True when `dir` holds at least one of the MNIST-layout IDX files.
pub fn is_idx_dir(dir: &Path) -> bool {
    FILES.iter().any(|name| find_file(dir, name).is_some())
}

/// Read one split of an MNIST-layout directory: 1-channel images, pixels divided by 255.
pub fn load_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    let (images_name, labels_name) = file_names(split);
    let images_path = find_file(dir, images_name).ok_or_else(|| {
        missing(
            dir,
            images_name,
            &format!("IDX images of the {split} split"),
        )
    })?;
    let labels_path = find_file(dir, labels_name).ok_or_else(|| {
        missing(
            dir,
            labels_name,
            &format!("IDX labels of the {split} split"),
        )
    })?;

    let (dims, bytes) = read_idx(&images_path, IMAGES_MAGIC)?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    let (label_dims, label_bytes) = read_idx(&labels_path, LABELS_MAGIC)?;
    if label_dims[0] != n {
        return Err(Error::format(
            &labels_path,
            format!(
                "holds {} labels but {} holds {n} images",
                label_dims[0],
                images_path.display()
            ),
        ));
    }
    let labels: Vec<usize> = label_bytes.iter().map(|&b| usize::from(b)).collect();
    Ok(ImageSet {
        pixels: bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
        num_classes: classes_from_labels(&labels),
        labels,
        channels: 1,
        height,
        width,
        class_names: None,
        source: images_path,
        format: "IDX (MNIST layout)".into(),
    })
}

/// Read an IDX file of unsigned bytes whose magic number must be `magic`; returns its dimensions
/// and its data, checked against the header's sizes.
pub fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut bytes = read_bytes(path)?;
    let ndim = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndim;
    let word = |i: usize| {
        let b = bytes.get(i..i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let truncated = || {
        Error::format(
            path,
            format!(
                "truncated IDX header: expected {header_len} bytes, got {}",
                bytes.len()
            ),
        )
    };
    let found = word(0).ok_or_else(truncated)?;
    if found != magic {
        return Err(Error::format(
            path,
            format!(
                "wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} (unsigned bytes, \
                 {ndim} dimension{})",
                if ndim == 1 { "" } else { "s" }
            ),
        ));
    }
    let dims = (0..ndim)
        .map(|d| word(4 + 4 * d).map(|w| w as usize).ok_or_else(truncated))
        .collect::<Result<Vec<usize>>>()?;
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|body| body.checked_add(header_len))
        .ok_or_else(|| Error::format(path, format!("IDX header sizes {dims:?} overflow")))?;
    let got = bytes.len();
    if got < expected {
        return Err(Error::format(
            path,
            format!("truncated: the header {dims:?} says {expected} bytes, got {got}"),
        ));
    }
    if got > expected {
        return Err(Error::format(
            path,
            format!(
                "{} bytes after the data: the header {dims:?} says {expected} bytes, got {got}",
                got - expected
            ),
        ));
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::{shared_data, write_gz};
    use crate::data::{Split, load};

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    /// Three 2x3 images whose pixel bytes are 0, 1, ..., 17, labels 4, 0, 2.
    fn toy_images() -> Vec<u8> {
        idx_bytes(IMAGES_MAGIC, &[3, 2, 3], &(0..18).collect::<Vec<u8>>())
    }

    fn toy_labels() -> Vec<u8> {
        idx_bytes(LABELS_MAGIC, &[3], &[4, 0, 2])
    }

    #[test]
    fn reads_plain_and_gzipped_splits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), toy_images()).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), toy_labels()).unwrap();
        write_gz(&dir.path().join("t10k-images-idx3-ubyte.gz"), &toy_images());
        write_gz(&dir.path().join("t10k-labels-idx1-ubyte.gz"), &toy_labels());
        for split in [Split::Train, Split::Test] {
            let set = load(dir.path(), split).unwrap();
            assert_eq!(
                (set.len(), set.channels, set.height, set.width),
                (3, 1, 2, 3)
            );
            assert_eq!(set.labels, vec![4, 0, 2]);
            assert_eq!(set.num_classes, 5);
            assert_eq!(set.format, "IDX (MNIST layout)");
            assert!((set.image(1)[0] - 6.0 / 255.0).abs() < 1e-6);
            assert!((set.pixels[17] - 17.0 / 255.0).abs() < 1e-6);
        }
    }

    #[test]
    fn truncated_file_names_path_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = toy_images();
        images.truncate(images.len() - 5);
        let path = dir.path().join("t10k-images-idx3-ubyte.gz");
        write_gz(&path, &images);
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), toy_labels()).unwrap();
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("truncated") && err.contains("34") && err.contains("got 29"),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_and_count_mismatch_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // labels and images swapped
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), toy_labels()).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), toy_images()).unwrap();
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains("magic") && err.contains("0x00000801"), "{err}");

        std::fs::write(dir.path().join("train-images-idx3-ubyte"), toy_images()).unwrap();
        let labels = idx_bytes(LABELS_MAGIC, &[2], &[1, 1]);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels).unwrap();
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("2 labels") && err.contains("3 images"),
            "{err}"
        );
    }

    #[test]
    fn missing_split_and_trailing_bytes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = toy_images();
        images.push(0);
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), images).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), toy_labels()).unwrap();
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("t10k-images-idx3-ubyte") && err.contains("test split"),
            "{err}"
        );
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains("1 bytes after the data"), "{err}");
    }

    #[test]
    fn shared_mnist_test_split() {
        let set = load(&shared_data("mnist"), Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (10000, 1, 28, 28)
        );
        assert_eq!(&set.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        assert_eq!(set.num_classes, 10);
        assert!(set.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(set.class_counts().iter().sum::<usize>(), 10000);
    }
}
