//! ImageFolder: one sub-directory of PNG/JPEG images per class.
//!
//! Either `root/<class>/<image>` (the split is ignored) or `root/train/<class>/<image>` and
//! `root/test/<class>/<image>` (the split chooses). Class indices follow the sorted sub-directory
//! names (with split directories, the names found under any split, so both splits agree); images
//! within a class are read in file-name order. Hidden entries (names starting with
//! `.`) and files that are not `.png`, `.jpg` or `.jpeg` are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use image::{ColorType, DynamicImage};

use super::{ImageSet, Split};
use crate::{Error, Result};

/// Directory names that mark a split layout (`root/train/...`, `root/test/...`).
const SPLIT_DIRS: [&str; 5] = ["train", "test", "val", "valid", "validation"];

/// True when `dir` has at least one (non-hidden) sub-directory.
pub fn is_image_folder(dir: &Path) -> Result<bool> {
    Ok(!sub_dirs(dir)?.is_empty())
}

/// The non-hidden sub-directories of `dir`, sorted by name, with their names.
fn sub_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with('.') && path.is_dir() {
            dirs.push((name.to_owned(), path));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The image files of a class directory, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let is_image = matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"));
        if !hidden && is_image && path.is_file() {
            files.push(path);
        } else {
            tracing::trace!(path = %path.display(), "skipped: not a PNG/JPEG file");
        }
    }
    files.sort();
    Ok(files)
}

/// The directory holding `split`'s class sub-directories, and the class names, sorted.
///
/// With `train/` and `test/` sub-directories the classes are the union over the splits, so a class
/// missing from one split keeps the same index in both.
fn classes(root: &Path, split: Split) -> Result<(PathBuf, Vec<String>)> {
    let dirs = sub_dirs(root)?;
    let split_layout = !dirs.is_empty()
        && dirs
            .iter()
            .all(|(name, _)| SPLIT_DIRS.contains(&name.as_str()))
        && dirs
            .iter()
            .any(|(name, _)| name == "train" || name == "test");
    if !split_layout {
        return Ok((
            root.to_path_buf(),
            dirs.into_iter().map(|(name, _)| name).collect(),
        ));
    }
    let Some((_, dir)) = dirs.iter().find(|(name, _)| name == split.as_str()) else {
        return Err(Error::io(
            root.join(split.as_str()),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("ImageFolder has split sub-directories but no '{split}' one"),
            ),
        ));
    };
    let mut names = BTreeSet::new();
    for (_, split_dir) in &dirs {
        names.extend(sub_dirs(split_dir)?.into_iter().map(|(name, _)| name));
    }
    Ok((dir.clone(), names.into_iter().collect()))
}

/// Read an ImageFolder: 1 channel when every image is greyscale, else RGB.
pub fn load_dir(root: &Path, split: Split) -> Result<ImageSet> {
    let (dir, class_names) = classes(root, split)?;
    if class_names.is_empty() {
        return Err(Error::format(
            &dir,
            "ImageFolder has no class sub-directories",
        ));
    }
    let mut images: Vec<(PathBuf, DynamicImage)> = Vec::new();
    let mut labels = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let class_dir = dir.join(name);
        let files = if class_dir.is_dir() {
            image_files(&class_dir)?
        } else {
            Vec::new()
        };
        if files.is_empty() {
            tracing::warn!(class = %name, dir = %class_dir.display(), "class has no PNG/JPEG images");
        }
        for file in files {
            let image = decode(&file)?;
            if let Some((first_path, first)) = images.first()
                && (image.width(), image.height()) != (first.width(), first.height())
            {
                return Err(Error::format(
                    &file,
                    format!(
                        "image is {}x{} (WxH) but {} is {}x{}: all images must have one size",
                        image.width(),
                        image.height(),
                        first_path.display(),
                        first.width(),
                        first.height()
                    ),
                ));
            }
            images.push((file, image));
            labels.push(label);
        }
    }
    let Some((_, first)) = images.first() else {
        return Err(Error::format(&dir, "ImageFolder holds no PNG/JPEG images"));
    };
    let (width, height) = (first.width() as usize, first.height() as usize);
    let grey = images.iter().all(|(_, img)| is_grey(img.color()));
    let channels = if grey { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(images.len() * channels * height * width);
    for (_, image) in &images {
        if grey {
            pixels.extend_from_slice(image.to_luma32f().as_raw());
        } else {
            push_chw(&mut pixels, image.to_rgb32f().as_raw(), height * width);
        }
    }
    Ok(ImageSet {
        pixels,
        labels,
        channels,
        height,
        width,
        num_classes: class_names.len(),
        class_names: Some(class_names),
        source: dir,
        format: "ImageFolder".into(),
    })
}

fn decode(path: &Path) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))
}

fn is_grey(color: ColorType) -> bool {
    matches!(
        color,
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    )
}

/// Append interleaved RGB (HWC) values as three planes (CHW).
fn push_chw(out: &mut Vec<f32>, hwc: &[f32], plane: usize) {
    for c in 0..3 {
        out.extend((0..plane).map(|p| hwc[p * 3 + c]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn grey(path: &Path, w: u32, h: u32, value: u8) {
        GrayImage::from_pixel(w, h, Luma([value]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn greyscale_folder_is_one_channel_with_sorted_classes() {
        let dir = tempfile::tempdir().unwrap();
        for (class, values) in [("b_dog", [10u8, 20]), ("a_cat", [30, 40])] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            // written in reverse name order: reading must sort
            grey(&dir.path().join(class).join("2.png"), 3, 2, values[1]);
            grey(&dir.path().join(class).join("1.png"), 3, 2, values[0]);
        }
        std::fs::write(dir.path().join("a_cat").join("notes.txt"), "x").unwrap();
        let set = load(dir.path(), Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (4, 1, 2, 3)
        );
        assert_eq!(set.labels, vec![0, 0, 1, 1]);
        assert_eq!(set.class_names.as_deref().unwrap(), ["a_cat", "b_dog"]);
        assert_eq!(set.num_classes, 2);
        let firsts: Vec<f32> = (0..4).map(|i| set.image(i)[0] * 255.0).collect();
        for (got, want) in firsts.iter().zip([30.0, 40.0, 10.0, 20.0]) {
            assert!((got - want).abs() < 1e-3, "{firsts:?}");
        }
    }

    #[test]
    fn mixed_folder_is_rgb_chw_under_split_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["0", "1"] {
            std::fs::create_dir_all(dir.path().join("train").join(class)).unwrap();
        }
        // class 2 only in test/: it is still class 2 in both splits
        std::fs::create_dir_all(dir.path().join("test").join("2")).unwrap();
        let train = dir.path().join("train");
        grey(&train.join("0").join("a.png"), 2, 2, 255);
        let mut rgb = RgbImage::from_pixel(2, 2, Rgb([255, 0, 51]));
        rgb.put_pixel(1, 0, Rgb([0, 102, 0]));
        rgb.save(train.join("1").join("b.png")).unwrap();
        grey(&dir.path().join("test").join("2").join("c.png"), 5, 5, 0);

        let set = load(dir.path(), Split::Train).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (2, 3, 2, 2)
        );
        assert_eq!(
            set.num_classes, 3,
            "a class without train images still counts"
        );
        assert_eq!(set.labels, vec![0, 1]);
        assert_eq!(set.image(0), &[1.0; 12]);
        let img = set.image(1);
        // R plane, then G plane, then B plane; pixel (x=1, y=0) is the second of each plane
        assert_eq!(&img[0..4], &[1.0, 0.0, 1.0, 1.0]);
        assert!((img[5] - 0.4).abs() < 1e-6 && img[4] == 0.0);
        assert!((img[8] - 0.2).abs() < 1e-6 && img[9] == 0.0);

        let test = load(dir.path(), Split::Test).unwrap();
        assert_eq!(
            (test.labels.as_slice(), test.channels, test.height),
            (&[2][..], 1, 5)
        );
        assert_eq!(test.class_names, set.class_names);
    }

    #[test]
    fn odd_size_image_is_named_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["x", "y"] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
        }
        grey(&dir.path().join("x").join("a.png"), 4, 4, 1);
        let odd = dir.path().join("y").join("b.png");
        grey(&odd, 4, 5, 1);
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains(&odd.display().to_string()), "{err}");
        assert!(
            err.contains("4x5") && err.contains("4x4") && err.contains("a.png"),
            "{err}"
        );
    }

    #[test]
    fn undecodable_image_and_missing_split_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train").join("k")).unwrap();
        let bad = dir.path().join("train").join("k").join("broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("broken.png") && err.contains("cannot decode"),
            "{err}"
        );
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains("no 'test'"), "{err}");
    }
}
