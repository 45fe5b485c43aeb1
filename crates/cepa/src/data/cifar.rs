//! CIFAR-style binary records: 1 label byte then a 32x32 RGB image as three planes (R, G, B).
//!
//! Two directory layouts:
//! - CIFAR-10: train = every `data_batch_*.bin` in order (`data_batch_1` .. `data_batch_5`),
//!   test = `test_batch.bin`; class names in `batches.meta.txt`, one per line.
//! - generic: `train.bin` / `test.bin` (used for GTSRB resized to 32x32, 43 classes).
//!
//! Every file may be gzipped (with or without a `.gz` suffix).

use std::path::{Path, PathBuf};

use super::{ImageSet, Split, find_file, missing, read_bytes};
use crate::{Error, Result};

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Bytes of one image: three 32x32 planes.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes of one record: the label byte then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

const META: &str = "batches.meta.txt";

/// Which naming a CIFAR-style directory uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `data_batch_*.bin` + `test_batch.bin`.
    Cifar10,
    /// `train.bin` + `test.bin`.
    Generic,
}

/// True when `dir` holds CIFAR-10 batches or `train.bin` / `test.bin`.
pub fn is_cifar_dir(dir: &Path) -> bool {
    layout(dir).is_some()
}

fn layout(dir: &Path) -> Option<Layout> {
    if find_file(dir, "test_batch.bin").is_some() || batch_files(dir).is_ok_and(|b| !b.is_empty()) {
        Some(Layout::Cifar10)
    } else if find_file(dir, "train.bin").is_some() || find_file(dir, "test.bin").is_some() {
        Some(Layout::Generic)
    } else {
        None
    }
}

/// The `data_batch_*.bin[.gz]` files of `dir`, by batch number (then name).
fn batch_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut batches = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let stem = name.strip_suffix(".gz").unwrap_or(name);
        let Some(id) = stem
            .strip_prefix("data_batch_")
            .and_then(|s| s.strip_suffix(".bin"))
        else {
            continue;
        };
        if path.is_file() {
            batches.push((id.parse::<u64>().unwrap_or(u64::MAX), name.to_owned(), path));
        }
    }
    batches.sort();
    Ok(batches.into_iter().map(|(_, _, path)| path).collect())
}

/// Read one split of a CIFAR-style directory: 3-channel 32x32 images, pixels divided by 255.
pub fn load_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    let layout = layout(dir).ok_or_else(|| {
        Error::format(
            dir,
            "no CIFAR binary records (data_batch_*.bin, test_batch.bin, train.bin, test.bin)",
        )
    })?;
    let files = match (layout, split) {
        (Layout::Cifar10, Split::Train) => {
            let files = batch_files(dir)?;
            if files.is_empty() {
                return Err(missing(dir, "data_batch_1.bin", "CIFAR-10 train batches"));
            }
            files
        }
        (Layout::Cifar10, Split::Test) => vec![
            find_file(dir, "test_batch.bin")
                .ok_or_else(|| missing(dir, "test_batch.bin", "the CIFAR-10 test batch"))?,
        ],
        (Layout::Generic, _) => {
            let name = format!("{split}.bin");
            vec![
                find_file(dir, &name)
                    .ok_or_else(|| missing(dir, &name, &format!("the {split} split")))?,
            ]
        }
    };

    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        read_records(file, &mut pixels, &mut labels)?;
    }
    let max_label = labels.iter().copied().max();
    let class_names = read_class_names(dir)?;
    if let (Some(names), Some(max)) = (&class_names, max_label)
        && max >= names.len()
    {
        return Err(Error::format(
            dir.join(META),
            format!(
                "names {} classes but the {split} records hold label {max}",
                names.len()
            ),
        ));
    }
    let num_classes = max_label
        .map_or(0, |m| m + 1)
        .max(class_names.as_ref().map_or(0, Vec::len));
    Ok(ImageSet {
        pixels,
        labels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes,
        class_names,
        source: files
            .into_iter()
            .next()
            .unwrap_or_else(|| dir.to_path_buf()),
        format: match layout {
            Layout::Cifar10 => "CIFAR-10 binary".into(),
            Layout::Generic => "CIFAR-style binary".into(),
        },
    })
}

/// Append the records of one file; its length must be a whole number of records.
fn read_records(path: &Path, pixels: &mut Vec<f32>, labels: &mut Vec<usize>) -> Result<()> {
    let bytes = read_bytes(path)?;
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD_BYTES}-byte records (1 label byte + \
                 3x32x32 pixels): {} records and {} bytes left over (truncated or not CIFAR-10 \
                 binary?)",
                bytes.len(),
                bytes.len() / RECORD_BYTES,
                bytes.len() % RECORD_BYTES
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    pixels.reserve(n * IMAGE_BYTES);
    labels.reserve(n);
    for record in bytes.chunks_exact(RECORD_BYTES) {
        labels.push(usize::from(record[0]));
        pixels.extend(record[1..].iter().map(|&b| f32::from(b) / 255.0));
    }
    Ok(())
}

/// The non-empty lines of `batches.meta.txt`, when the file is there.
fn read_class_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let Some(path) = find_file(dir, META) else {
        return Ok(None);
    };
    let bytes = read_bytes(&path)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::format(&path, format!("class names are not UTF-8: {e}")))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    Ok(if names.is_empty() { None } else { Some(names) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load;
    use crate::data::tests::{shared_data, write_gz};

    /// `n` records, record `i` with label `labels[i]` and every pixel byte `i`, except the first
    /// G-plane byte which is 255.
    fn records(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            out.push(label);
            let mut image = vec![i as u8; IMAGE_BYTES];
            image[SIDE * SIDE] = 255;
            out.extend_from_slice(&image);
        }
        out
    }

    #[test]
    fn cifar10_layout_reads_batches_in_order_with_names() {
        let dir = tempfile::tempdir().unwrap();
        write_gz(&dir.path().join("data_batch_2.bin.gz"), &records(&[1, 1]));
        std::fs::write(dir.path().join("data_batch_1.bin"), records(&[0])).unwrap();
        std::fs::write(dir.path().join("data_batch_10.bin"), records(&[2])).unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), records(&[3])).unwrap();
        std::fs::write(dir.path().join(META), "a\nb\n\nc\nd\ne\n").unwrap();
        let set = load(dir.path(), Split::Train).unwrap();
        assert_eq!(set.labels, vec![0, 1, 1, 2]);
        assert_eq!(set.num_classes, 5, "names outnumber labels");
        assert_eq!(set.class_names.as_deref().unwrap()[2], "c");
        assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
        // second record of data_batch_2: value 1 everywhere but the first G pixel
        let img = set.image(2);
        assert!((img[0] - 1.0 / 255.0).abs() < 1e-6);
        assert_eq!(img[SIDE * SIDE], 1.0);
        assert_eq!(set.format, "CIFAR-10 binary");
        let test = load(dir.path(), Split::Test).unwrap();
        assert_eq!(test.labels, vec![3]);
    }

    #[test]
    fn generic_layout_and_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        write_gz(&dir.path().join("train.bin.gz"), &records(&[7, 42]));
        let set = load(dir.path(), Split::Train).unwrap();
        assert_eq!(set.labels, vec![7, 42]);
        assert_eq!(set.num_classes, 43);
        assert!(set.class_names.is_none());

        let mut bad = records(&[0, 1]);
        bad.pop();
        let path = dir.path().join("test.bin");
        std::fs::write(&path, bad).unwrap();
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("6145 bytes") && err.contains("3073"), "{err}");
    }

    #[test]
    fn label_beyond_class_names_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), records(&[0, 5])).unwrap();
        std::fs::write(dir.path().join(META), "a\nb\n").unwrap();
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("2 classes") && err.contains("label 5"),
            "{err}"
        );
    }

    #[test]
    fn shared_cifar10_test_split() {
        let set = load(&shared_data("cifar10"), Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (10000, 3, 32, 32)
        );
        let names = set.class_names.as_deref().unwrap();
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], "airplane");
        assert_eq!(set.num_classes, 10);
        assert_eq!(set.class_counts(), vec![1000; 10]);
    }

    #[test]
    fn shared_gtsrb32_test_split() {
        let set = load(&shared_data("gtsrb32"), Split::Test).unwrap();
        assert_eq!(set.len(), 7949);
        assert_eq!(set.num_classes, 43);
        assert_eq!(set.format, "CIFAR-style binary");
    }
}
