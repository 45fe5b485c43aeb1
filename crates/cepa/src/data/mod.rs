//! Clean image sets: one reader per on-disk format, one in-memory [`ImageSet`].
//!
//! [`load`] looks at what is at a path and picks the reader:
//! - a directory of IDX files in the MNIST layout ([`idx`]),
//! - a directory of CIFAR-style binary records ([`cifar`]),
//! - a `.npy` file, or a directory of `.npy` files ([`npy`]),
//! - an ImageFolder directory of PNG/JPEG images, one sub-directory per class ([`folder`]).
//!
//! Every file may be gzip-compressed; compression is detected from the gzip magic bytes, not
//! from the extension. Pixels are always returned in `[0, 1]`, one image after another, each
//! image channel-major (CHW). A model's own preprocessing (mean/std) is not applied here.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod npy;
pub mod pairs;
pub mod png;
pub mod sample;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use npy::{NpyArray, NpyData, read_npy, write_npy_f32, write_npy_u8};
pub use png::{save_png, to_png_bytes};

use crate::{Error, Result};

/// Which split of a dataset directory to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The split's name as it appears in file and directory names: `train` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::Config(format!(
                "unknown split '{s}' (expected 'train' or 'test')"
            ))),
        }
    }
}

/// A set of labelled images, pixels in `[0, 1]`, each image stored CHW, images one after another.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// classes the source declares (folder count, or max label + 1 for files)
    pub num_classes: usize,
    pub class_names: Option<Vec<String>>,
    /// where it was read from (for messages)
    pub source: PathBuf,
    /// human-readable format name, e.g. "IDX (MNIST layout)", "CIFAR-10 binary", "ImageFolder", "npy"
    pub format: String,
}

impl ImageSet {
    /// `[channels, height, width]` of every image.
    pub fn size(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// A set made in memory (tests, synthetic data): CHW `pixels` of `labels.len()` images of
    /// `[c, h, w]`, `num_classes` classes, no class names, `source` naming it in messages.
    pub fn synthetic(
        pixels: Vec<f32>,
        labels: Vec<usize>,
        [c, h, w]: [usize; 3],
        num_classes: usize,
        source: &str,
    ) -> ImageSet {
        ImageSet {
            pixels,
            labels,
            channels: c,
            height: h,
            width: w,
            num_classes,
            class_names: None,
            source: PathBuf::from(source),
            format: "synthetic".into(),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of values in one image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW pixels of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order (repeats allowed), with everything else kept.
    ///
    /// # Panics
    /// When an index is `>= self.len()`, like slice indexing.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            source: self.source.clone(),
            format: self.format.clone(),
        }
    }

    /// How many images each class `0..num_classes` holds (labels beyond are not counted).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.labels {
            if let Some(c) = counts.get_mut(label) {
                *c += 1;
            }
        }
        counts
    }

    /// A printable name for class `label`: `3 ('cat')` when names are known, else `3`.
    pub fn class_label(&self, label: usize) -> String {
        match self.class_names.as_ref().and_then(|names| names.get(label)) {
            Some(name) => format!("{label} ('{name}')"),
            None => label.to_string(),
        }
    }

    /// Error::Mismatch with a clear sentence (naming self.source, found vs expected) when the images are not
    /// channels x height x width, or when labels reach num_classes or beyond.
    pub fn check_fits(
        &self,
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<()> {
        if (self.channels, self.height, self.width) != (channels, height, width) {
            return Err(Error::Mismatch(format!(
                "{} holds {}x{}x{} images (CxHxW) but {}x{}x{} are expected",
                self.source.display(),
                self.channels,
                self.height,
                self.width,
                channels,
                height,
                width
            )));
        }
        if let Some((i, &label)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l >= num_classes)
        {
            let max = self.labels.iter().copied().max().unwrap_or(label);
            return Err(Error::Mismatch(format!(
                "{} has label {label} (image {i}, largest label {max}) but only {num_classes} \
                 classes (labels 0..{}) are expected",
                self.source.display(),
                num_classes.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

/// Read a dataset, detecting the format from what is at `path`.
///
/// `split` picks the train or test part of a directory that holds both; it is ignored for a
/// single `.npy` file and for an ImageFolder without `train/` and `test/` sub-directories.
pub fn load(path: &Path, split: Split) -> Result<ImageSet> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let set = if meta.is_dir() {
        if idx::is_idx_dir(path) {
            idx::load_dir(path, split)?
        } else if cifar::is_cifar_dir(path) {
            cifar::load_dir(path, split)?
        } else if npy::is_npy_dir(path) {
            npy::load_dir(path, split)?
        } else if folder::is_image_folder(path)? {
            folder::load_dir(path, split)?
        } else {
            return Err(Error::format(
                path,
                "no dataset found: expected IDX files (train-images-idx3-ubyte[.gz], \
                 t10k-images-idx3-ubyte[.gz], ...), CIFAR binary records (data_batch_*.bin, \
                 test_batch.bin, train.bin, test.bin, optionally .gz), .npy files \
                 (<split>_images.npy + <split>_labels.npy, or images.npy + labels.npy), or \
                 class sub-directories of PNG/JPEG images",
            ));
        }
    } else if npy::is_npy_file(path)? {
        npy::load_file(path)?
    } else {
        return Err(Error::format(
            path,
            "not a dataset file: a file must be a .npy array of images; other formats are read \
             from their directory (IDX, CIFAR binary, ImageFolder)",
        ));
    };
    check_not_empty(&set)?;
    tracing::debug!(
        path = %path.display(),
        %split,
        format = %set.format,
        images = set.len(),
        "loaded {}x{}x{} images, {} classes",
        set.channels,
        set.height,
        set.width,
        set.num_classes
    );
    Ok(set)
}

fn check_not_empty(set: &ImageSet) -> Result<()> {
    if set.is_empty() {
        return Err(Error::format(
            &set.source,
            format!("{} holds no images", set.format),
        ));
    }
    if set.image_len() == 0 {
        return Err(Error::format(
            &set.source,
            format!(
                "images are {}x{}x{}: no pixels",
                set.channels, set.height, set.width
            ),
        ));
    }
    Ok(())
}

/// `max(label) + 1`, or 0 without labels.
pub(crate) fn classes_from_labels(labels: &[usize]) -> usize {
    labels.iter().copied().max().map_or(0, |m| m + 1)
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The whole content of `path`, decompressed when it starts with the gzip magic bytes.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(2));
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("corrupt or truncated gzip data: {e}")))?;
    Ok(out)
}

/// The first `<name>` or `<name>.gz` that is a file in `dir`.
pub(crate) fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// An `Error::Io` (not found) for a file a layout needs.
pub(crate) fn missing(dir: &Path, name: &str, what: &str) -> Error {
    Error::io(
        dir.join(name),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{what} not found (looked for {name} and {name}.gz)"),
        ),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The shared offline datasets, beside the workspace.
    pub(crate) fn shared_data(name: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")).join(name)
    }

    pub(crate) fn write_gz(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let file = std::fs::File::create(path).unwrap();
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
    }

    pub(crate) fn toy_set(labels: Vec<usize>, num_classes: usize) -> ImageSet {
        let n = labels.len();
        ImageSet {
            pixels: (0..n * 4).map(|v| v as f32 / (n * 4) as f32).collect(),
            labels,
            channels: 1,
            height: 2,
            width: 2,
            num_classes,
            class_names: None,
            source: PathBuf::from("toy"),
            format: "toy".into(),
        }
    }

    #[test]
    fn split_parses_and_prints() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert_eq!("Test".parse::<Split>().unwrap(), Split::Test);
        assert_eq!(Split::Test.to_string(), "test");
        let err = "val".parse::<Split>().unwrap_err().to_string();
        assert!(err.contains("'val'"), "{err}");
    }

    #[test]
    fn split_serde_is_lowercase() {
        assert_eq!(serde_json::to_string(&Split::Train).unwrap(), "\"train\"");
        assert_eq!(
            serde_json::from_str::<Split>("\"test\"").unwrap(),
            Split::Test
        );
    }

    #[test]
    fn image_and_subset_pick_the_right_pixels() {
        let set = toy_set(vec![0, 1, 2], 3);
        assert_eq!(set.image_len(), 4);
        assert_eq!(set.image(1), &set.pixels[4..8]);
        let sub = set.subset(&[2, 0]);
        assert_eq!(sub.labels, vec![2, 0]);
        assert_eq!(sub.image(0), set.image(2));
        assert_eq!(sub.image(1), set.image(0));
        assert_eq!(sub.num_classes, 3);
    }

    #[test]
    fn check_fits_names_shape_and_label() {
        let set = toy_set(vec![0, 4, 1], 5);
        assert!(set.check_fits(1, 2, 2, 5).is_ok());
        let err = set.check_fits(3, 2, 2, 5).unwrap_err().to_string();
        assert!(
            err.contains("toy") && err.contains("1x2x2") && err.contains("3x2x2"),
            "{err}"
        );
        let err = set.check_fits(1, 2, 2, 4).unwrap_err().to_string();
        assert!(
            err.contains("label 4") && err.contains("image 1") && err.contains("4 classes"),
            "{err}"
        );
    }

    #[test]
    fn gzip_is_detected_by_magic_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("plain-name.bin");
        write_gz(&gz, b"hello");
        assert_eq!(read_bytes(&gz).unwrap(), b"hello");
        let plain = dir.path().join("x.gz");
        std::fs::write(&plain, b"not gzip").unwrap();
        assert_eq!(read_bytes(&plain).unwrap(), b"not gzip");
    }

    #[test]
    fn load_explains_an_unknown_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readme.txt"), b"x").unwrap();
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains("no dataset found"), "{err}");
        let err = load(&dir.path().join("readme.txt"), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("readme.txt") && err.contains("not a dataset file"),
            "{err}"
        );
        let err = load(&dir.path().join("nope"), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
