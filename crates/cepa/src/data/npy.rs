//! NumPy `.npy` arrays: a general reader and writer, and image sets stored as `.npy`.
//!
//! The reader takes format versions 1.0, 2.0 and 3.0, little-endian (or byte-order-free) dtypes
//! `f4`, `f8`, `i8`, `i4`, `u8`, `u1`, `i1`, in C order; the file may be gzipped.
//!
//! An image set is either a `.npy` file of images with its labels beside it (`labels.npy` for
//! `images.npy`, `<stem>_labels.npy`, `<prefix>_labels.npy` for `<prefix>_images.npy`,
//! `y_<s>.npy` for `x_<s>.npy`), or a directory with `<split>_images.npy` + `<split>_labels.npy`
//! or `images.npy` + `labels.npy`. Images are `(N, H, W)`, `(N, C, H, W)` or `(N, H, W, C)`.

use std::path::{Path, PathBuf};

use super::{ImageSet, Split, classes_from_labels, find_file, missing, read_bytes};
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The values of an array, in the dtype they were stored in.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    U64(Vec<u64>),
}

/// An n-dimensional array read from a `.npy` file, values in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// Every value as `f32` (rounded for `f64`, large integers lose precision).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            NpyData::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            NpyData::U64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Every value as `i64` (floats truncated toward zero and saturated, `u64` saturated).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            NpyData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::F64(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::I64(v) => v.clone(),
            NpyData::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            NpyData::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            NpyData::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            NpyData::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).unwrap_or(i64::MAX))
                .collect(),
        }
    }

    /// Number of values (the product of the shape).
    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::I8(v) => v.len(),
            NpyData::U64(v) => v.len(),
        }
    }

    /// True when the array holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype as NumPy writes it, e.g. `<f4`.
    pub fn dtype(&self) -> &'static str {
        match &self.data {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I64(_) => "<i8",
            NpyData::I32(_) => "<i4",
            NpyData::U8(_) => "|u1",
            NpyData::I8(_) => "|i1",
            NpyData::U64(_) => "<u8",
        }
    }
}

/// Read a `.npy` file (format 1.0, 2.0 or 3.0; gzipped or not).
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = read_bytes(path)?;
    parse_npy(&bytes).map_err(|msg| Error::format(path, msg))
}

/// Write `data` with `shape` as a format 1.0 `.npy` file of little-endian `f32`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, shape, "<f4", data.len(), &bytes)
}

/// Write `data` with `shape` as a format 1.0 `.npy` file of `u1` (bytes: pixels 0..255, labels).
pub fn write_npy_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    write_npy(path, shape, "|u1", data.len(), data)
}

/// A format 1.0 `.npy` file of `count` values of `descr`, given as their little-endian `bytes`.
fn write_npy(path: &Path, shape: &[usize], descr: &str, count: usize, bytes: &[u8]) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(count) {
        return Err(Error::Mismatch(format!(
            "cannot write {}: shape {shape:?} does not hold {count} values",
            path.display(),
        )));
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| {
        Error::Mismatch(format!(
            "cannot write {}: shape {shape:?} is too long",
            path.display()
        ))
    })?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// Parse the bytes of a `.npy` file; the error is a message without the path.
fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let truncated = || format!("truncated .npy header ({} bytes)", bytes.len());
    let major = *bytes.get(6).ok_or_else(truncated)?;
    let minor = *bytes.get(7).ok_or_else(truncated)?;
    let (header_len, start) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or_else(truncated)?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(truncated)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(truncated)?;
    let header =
        std::str::from_utf8(header).map_err(|_| "the .npy header is not text".to_string())?;
    let (descr, fortran_order, shape) = parse_header(header)?;
    if fortran_order {
        return Err(
            "Fortran-order (column-major) arrays are not supported; save with C order".into(),
        );
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let body = &bytes[start + header_len..];
    let item = item_size(&descr)?;
    let expected = count
        .checked_mul(item)
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if body.len() < expected {
        return Err(format!(
            "truncated: shape {shape:?} of '{descr}' needs {expected} data bytes, got {}",
            body.len()
        ));
    }
    if body.len() > expected {
        return Err(format!(
            "{} bytes after the data: shape {shape:?} of '{descr}' needs {expected} data bytes, got {}",
            body.len() - expected,
            body.len()
        ));
    }
    Ok(NpyArray {
        shape,
        data: decode_data(&descr, body)?,
    })
}

/// Bytes per value of a supported dtype, or an error naming it.
fn item_size(descr: &str) -> Result<usize, String> {
    let (order, kind) = match descr.char_indices().nth(1) {
        Some((i, _)) => descr.split_at(i),
        None => (descr, ""),
    };
    let single_byte = matches!(kind, "u1" | "i1");
    let order_ok = match order {
        "<" | "=" => true,
        "|" => single_byte,
        ">" => single_byte,
        _ => false,
    };
    let size = match kind {
        "f4" | "i4" => 4,
        "f8" | "i8" | "u8" => 8,
        "u1" | "i1" => 1,
        _ => 0,
    };
    if order == ">" && !single_byte && size > 0 {
        return Err(format!(
            "big-endian dtype '{descr}' is not supported; save little-endian"
        ));
    }
    if !order_ok || size == 0 {
        return Err(format!(
            "unsupported dtype '{descr}' (supported: f4, f8, i8, i4, u8, u1, i1, little-endian)"
        ));
    }
    Ok(size)
}

fn decode_data(descr: &str, body: &[u8]) -> Result<NpyData, String> {
    fn le<const N: usize, T>(body: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        body.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect()
    }
    Ok(match descr.get(1..).unwrap_or_default() {
        "f4" => NpyData::F32(le(body, f32::from_le_bytes)),
        "f8" => NpyData::F64(le(body, f64::from_le_bytes)),
        "i8" => NpyData::I64(le(body, i64::from_le_bytes)),
        "i4" => NpyData::I32(le(body, i32::from_le_bytes)),
        "u8" => NpyData::U64(le(body, u64::from_le_bytes)),
        "u1" => NpyData::U8(body.to_vec()),
        "i1" => NpyData::I8(body.iter().map(|&b| b as i8).collect()),
        _ => return Err(format!("unsupported dtype '{descr}'")),
    })
}

/// `descr`, `fortran_order` and `shape` from a header such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(text: &str) -> Result<(String, bool, Vec<usize>), String> {
    let bad = |what: &str| format!("bad .npy header ({what}): {}", text.trim_end());
    let descr = match value_after(text, "descr") {
        Some(v) if v.starts_with('[') => return Err("structured dtypes are not supported".into()),
        Some(v) => {
            let quote = v.chars().next().filter(|q| matches!(q, '\'' | '"'));
            quote
                .and_then(|q| v[1..].split_once(q))
                .map(|(d, _)| d.to_string())
                .ok_or_else(|| bad("'descr' is not a string"))?
        }
        None => return Err(bad("no 'descr'")),
    };
    let fortran_order = match value_after(text, "fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err(bad("no boolean 'fortran_order'")),
    };
    let dims = value_after(text, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split_once(')'))
        .map(|(dims, _)| dims)
        .ok_or_else(|| bad("no tuple 'shape'"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches(['L', 'l']).parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("shape entries must be non-negative integers"))?;
    Ok((descr, fortran_order, shape))
}

/// The text after `'key':` (or `"key":`) in a header, leading spaces removed.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    [format!("'{key}'"), format!("\"{key}\"")]
        .iter()
        .find_map(|quoted| {
            let (_, rest) = text.split_once(quoted.as_str())?;
            Some(rest.trim_start().strip_prefix(':')?.trim_start())
        })
}

// ---- image sets stored as .npy ----------------------------------------------------------------

/// True when `path` ends in `.npy` / `.npy.gz` or starts with the `.npy` magic.
pub fn is_npy_file(path: &Path) -> Result<bool> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.ends_with(".npy") || name.ends_with(".npy.gz") {
        return Ok(true);
    }
    let mut head = [0u8; 6];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = std::io::Read::read(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    Ok(head[..n] == *MAGIC)
}

/// True when `dir` holds `images.npy` or `<split>_images.npy` for a split.
pub fn is_npy_dir(dir: &Path) -> bool {
    ["images.npy", "train_images.npy", "test_images.npy"]
        .iter()
        .any(|name| find_file(dir, name).is_some())
}

/// Read `<split>_images.npy` + `<split>_labels.npy`, else `images.npy` + `labels.npy`, from `dir`.
pub fn load_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    let split_images = format!("{split}_images.npy");
    let split_labels = format!("{split}_labels.npy");
    if let Some(images) = find_file(dir, &split_images) {
        let labels = find_file(dir, &split_labels)
            .ok_or_else(|| missing(dir, &split_labels, &format!("labels of the {split} split")))?;
        return load_pair(&images, &labels);
    }
    if let Some(images) = find_file(dir, "images.npy") {
        let labels = find_file(dir, "labels.npy")
            .ok_or_else(|| missing(dir, "labels.npy", "labels for images.npy"))?;
        return load_pair(&images, &labels);
    }
    Err(missing(
        dir,
        &split_images,
        &format!("images of the {split} split"),
    ))
}

/// Read a `.npy` file of images and the labels file that goes with it.
pub fn load_file(path: &Path) -> Result<ImageSet> {
    let candidates = label_candidates(path);
    match candidates.iter().find(|p| p.is_file()) {
        Some(labels) => load_pair(path, labels),
        None => {
            let names: Vec<String> = candidates
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(String::from))
                .collect();
            Err(Error::format(
                path,
                format!(
                    "no labels file found beside it (looked for {})",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// Where the labels of the images file `path` may be, in order of preference.
fn label_candidates(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(rest) => (rest, ".gz"),
        None => (name, ""),
    };
    let stem = stem.strip_suffix(".npy").unwrap_or(stem);
    let mut names = Vec::new();
    if stem == "images" {
        names.push("labels".to_string());
    }
    names.push(format!("{stem}_labels"));
    if let Some(prefix) = stem.strip_suffix("_images") {
        names.push(format!("{prefix}_labels"));
    }
    if let Some(rest) = stem.strip_prefix("x_").or_else(|| stem.strip_prefix("X_")) {
        names.push(format!("y_{rest}"));
    }
    let mut paths = Vec::new();
    for n in names {
        paths.push(dir.join(format!("{n}.npy{gz}")));
        if !gz.is_empty() {
            paths.push(dir.join(format!("{n}.npy")));
        } else {
            paths.push(dir.join(format!("{n}.npy.gz")));
        }
    }
    paths
}

fn load_pair(images_path: &Path, labels_path: &Path) -> Result<ImageSet> {
    let images = read_npy(images_path)?;
    let (n, channels, height, width, nhwc) = image_layout(images_path, &images.shape)?;
    let mut pixels = image_values(images_path, &images)?;
    if nhwc {
        pixels = nhwc_to_nchw(&pixels, n, height * width, channels);
    }
    let labels = read_labels(labels_path, n, images_path)?;
    Ok(ImageSet {
        pixels,
        num_classes: classes_from_labels(&labels),
        labels,
        channels,
        height,
        width,
        class_names: None,
        source: images_path.to_path_buf(),
        format: "npy".into(),
    })
}

/// `(n, channels, height, width, is_nhwc)` of an image array's shape.
fn image_layout(path: &Path, shape: &[usize]) -> Result<(usize, usize, usize, usize, bool)> {
    match *shape {
        [n, h, w] => Ok((n, 1, h, w, false)),
        [n, h, w, c] if matches!(c, 1 | 3) && !matches!(h, 1 | 3) => Ok((n, c, h, w, true)),
        [n, c, h, w] => Ok((n, c, h, w, false)),
        _ => Err(Error::format(
            path,
            format!("images shaped {shape:?}: expected (N, H, W), (N, C, H, W) or (N, H, W, C)"),
        )),
    }
}

/// Pixel values in [0, 1]: `u1` divided by 255, floats divided by 255 when their max exceeds 1.
fn image_values(path: &Path, images: &NpyArray) -> Result<Vec<f32>> {
    let mut values = match &images.data {
        NpyData::U8(v) => return Ok(v.iter().map(|&b| f32::from(b) / 255.0).collect()),
        NpyData::F32(_) | NpyData::F64(_) => images.to_f32(),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "images of dtype '{}': expected u1, f4 or f8",
                    images.dtype()
                ),
            ));
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::format(
            path,
            format!("value {} at flat index {i} is not finite", values[i]),
        ));
    }
    let (min, max) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if min < 0.0 || max > 255.0 {
        return Err(Error::format(
            path,
            format!(
                "pixel values span [{min}, {max}]: expected raw pixels in [0, 1] or [0, 255], \
                 not normalised ones"
            ),
        ));
    }
    if max > 1.0 {
        values.iter_mut().for_each(|v| *v /= 255.0);
    }
    Ok(values)
}

fn nhwc_to_nchw(hwc: &[f32], n: usize, plane: usize, channels: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(hwc.len());
    for img in hwc.chunks_exact(plane * channels).take(n) {
        for c in 0..channels {
            out.extend((0..plane).map(|p| img[p * channels + c]));
        }
    }
    out
}

/// Integer, non-negative, one-dimensional labels, one per image.
fn read_labels(path: &Path, n: usize, images_path: &Path) -> Result<Vec<usize>> {
    let labels = read_npy(path)?;
    if !matches!(
        labels.data,
        NpyData::I8(_) | NpyData::U8(_) | NpyData::I32(_) | NpyData::I64(_) | NpyData::U64(_)
    ) {
        return Err(Error::format(
            path,
            format!(
                "labels of dtype '{}': expected integers (i1, u1, i4, i8, u8)",
                labels.dtype()
            ),
        ));
    }
    if labels.shape.len() != 1 {
        return Err(Error::format(
            path,
            format!("labels shaped {:?}: expected one dimension", labels.shape),
        ));
    }
    if labels.len() != n {
        return Err(Error::format(
            path,
            format!(
                "holds {} labels but {} holds {n} images",
                labels.len(),
                images_path.display()
            ),
        ));
    }
    let values = match &labels.data {
        NpyData::U64(v) => v
            .iter()
            .map(|&x| usize::try_from(x).ok())
            .collect::<Vec<_>>(),
        _ => labels
            .to_i64()
            .into_iter()
            .map(|x| usize::try_from(x).ok())
            .collect(),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "label {} (index {i}) is negative or too large",
                        labels.to_i64()[i]
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load;

    /// A `.npy` file with any header and raw data.
    fn write_raw(path: &Path, descr: &str, shape: &str, data: &[u8]) {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn f32_round_trip_and_header_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_npy_f32(&path, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len() - 24 * 4) % 64, 0, "header padded to 64 bytes");
        let array = read_npy(&path).unwrap();
        assert_eq!(array.shape, vec![2, 3, 4]);
        assert_eq!(array.data, NpyData::F32(data.clone()));
        assert_eq!(array.len(), 24);
        assert_eq!(array.to_i64()[1], -2);

        write_npy_f32(&path, &[3], &data[..3]).unwrap();
        assert_eq!(read_npy(&path).unwrap().shape, vec![3]);
        let err = write_npy_f32(&path, &[5], &data).unwrap_err().to_string();
        assert!(err.contains("[5]") && err.contains("24"), "{err}");
    }

    #[test]
    fn reads_version_2_and_integer_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.npy");
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2L,), }\n";
        let mut out = b"\x93NUMPY\x02\x00".to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&(-5i64).to_le_bytes());
        out.extend_from_slice(&7i64.to_le_bytes());
        std::fs::write(&path, out).unwrap();
        let array = read_npy(&path).unwrap();
        assert_eq!(array.data, NpyData::I64(vec![-5, 7]));
        assert_eq!(array.to_f32(), vec![-5.0, 7.0]);

        write_raw(&path, "|i1", "()", &[0xff]);
        let array = read_npy(&path).unwrap();
        assert_eq!((array.shape.len(), array.to_i64()), (0, vec![-1]));
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        let cases: [(&str, &str, &[u8], &str); 4] = [
            ("<f2", "(1,)", &[0, 0], "unsupported dtype '<f2'"),
            (">f4", "(1,)", &[0; 4], "big-endian"),
            ("<f4", "(2,)", &[0; 7], "truncated"),
            ("<u8", "(1,)", &[0; 9], "1 bytes after the data"),
        ];
        for (descr, shape, data, want) in cases {
            write_raw(&path, descr, shape, data);
            let err = read_npy(&path).unwrap_err().to_string();
            assert!(
                err.contains("bad.npy") && err.contains(want),
                "{descr}: {err}"
            );
        }
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }\n";
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&[0; 4]);
        std::fs::write(&path, out).unwrap();
        assert!(read_npy(&path).unwrap_err().to_string().contains("Fortran"));
        std::fs::write(&path, b"\x93NUMPY\x01").unwrap();
        assert!(
            read_npy(&path)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(&path, b"PK\x03\x04").unwrap();
        assert!(read_npy(&path).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn nhwc_u8_images_with_x_y_names() {
        let dir = tempfile::tempdir().unwrap();
        // two 2x2 RGB images, NHWC; pixel p of image i has channels (i*100 + p, 1, 255)
        let mut data = Vec::new();
        for i in 0..2u8 {
            for p in 0..4u8 {
                data.extend_from_slice(&[i * 100 + p, 1, 255]);
            }
        }
        let images = dir.path().join("x_train.npy");
        write_raw(&images, "|u1", "(2, 2, 2, 3)", &data);
        write_raw(
            &dir.path().join("y_train.npy"),
            "<i8",
            "(2,)",
            &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        );
        let set = load(&images, Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (2, 3, 2, 2)
        );
        assert_eq!(set.labels, vec![3, 1]);
        assert_eq!(set.num_classes, 4);
        let want: Vec<f32> = [100u8, 101, 102, 103, 1, 1, 1, 1, 255, 255, 255, 255]
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        assert_eq!(set.image(1), want.as_slice());
    }

    #[test]
    fn nchw_floats_in_a_split_directory() {
        let dir = tempfile::tempdir().unwrap();
        // (N=2, C=3, H=2, W=1): dim 1 is 3 so NCHW even though the last dim is 1
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 20.0).collect();
        write_npy_f32(&dir.path().join("test_images.npy"), &[2, 3, 2, 1], &data).unwrap();
        write_raw(&dir.path().join("test_labels.npy"), "|u1", "(2,)", &[0, 2]);
        let set = load(dir.path(), Split::Test).unwrap();
        assert_eq!((set.channels, set.height, set.width), (3, 2, 1));
        assert!(
            (set.pixels[11] - 220.0 / 255.0).abs() < 1e-6,
            "max > 1 means 0..255"
        );
        let err = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains("train_images.npy"), "{err}");

        // already in [0, 1]: kept as is; greyscale NHW
        let unit: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
        let images = dir.path().join("images.npy");
        write_npy_f32(&images, &[2, 2, 2], &unit).unwrap();
        write_raw(
            &dir.path().join("labels.npy"),
            "<i4",
            "(2,)",
            &[1, 0, 0, 0, 0, 0, 0, 0],
        );
        let set = load(&images, Split::Train).unwrap();
        assert_eq!((set.channels, set.pixels.clone()), (1, unit));
        assert_eq!(set.labels, vec![1, 0]);
    }

    #[test]
    fn bad_labels_and_pixels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("digits.npy");
        write_npy_f32(&images, &[2, 2, 2], &[0.5; 8]).unwrap();
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("digits_labels.npy") && err.contains("no labels"),
            "{err}"
        );

        let labels = dir.path().join("digits_labels.npy");
        write_raw(&labels, "|i1", "(2,)", &[1, 0xfe]);
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(err.contains("label -2") && err.contains("index 1"), "{err}");
        write_raw(&labels, "|u1", "(3,)", &[1, 2, 3]);
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("3 labels") && err.contains("2 images"),
            "{err}"
        );
        write_npy_f32(&labels, &[2], &[0.0, 1.0]).unwrap();
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(err.contains("'<f4'") && err.contains("integers"), "{err}");

        write_raw(&labels, "|u1", "(2,)", &[1, 2]);
        write_npy_f32(&images, &[2, 2, 2], &[-0.5; 8]).unwrap();
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(err.contains("-0.5") && err.contains("normalised"), "{err}");
        write_npy_f32(&images, &[2, 8], &[0.5; 16]).unwrap();
        let err = load(&images, Split::Train).unwrap_err().to_string();
        assert!(err.contains("[2, 8]"), "{err}");
    }
}
