//! Writing CHW images as PNG, to a file or into memory (for embedding in HTML reports).

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};

use crate::{Error, Result};

/// Save a CHW image (values clamped to [0, 1]) as a PNG: 1 channel gives a grey PNG, 3 an RGB one.
pub fn save_png(
    path: &Path,
    chw: &[f32],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<()> {
    let bytes = to_png_bytes(chw, channels, height, width)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Encode a CHW image (values clamped to [0, 1]) as PNG bytes: 1 channel grey, 3 channels RGB.
pub fn to_png_bytes(chw: &[f32], channels: usize, height: usize, width: usize) -> Result<Vec<u8>> {
    let color = match channels {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => {
            return Err(Error::Mismatch(format!(
                "cannot write a {channels}-channel image as PNG: 1 (grey) or 3 (RGB) channels needed"
            )));
        }
    };
    let plane = height * width;
    if chw.len() != channels * plane {
        return Err(Error::Mismatch(format!(
            "PNG of {channels}x{height}x{width} needs {} values, got {}",
            channels * plane,
            chw.len()
        )));
    }
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Error::Mismatch(format!(
            "image of {width}x{height} is too large for PNG"
        )));
    };
    if plane == 0 {
        return Err(Error::Mismatch(format!(
            "cannot write an empty {width}x{height} image as PNG"
        )));
    }
    let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut hwc = vec![0u8; chw.len()];
    for (c, values) in chw.chunks_exact(plane).enumerate() {
        for (p, &v) in values.iter().enumerate() {
            hwc[p * channels + c] = to_byte(v);
        }
    }
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(&hwc, w, h, color)
        .map_err(|e| {
            Error::io(
                PathBuf::from("<in-memory PNG>"),
                std::io::Error::other(e.to_string()),
            )
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ColorType;

    #[test]
    fn rgb_round_trip_is_chw_and_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        // 3x1x2: R = [2.0, 0.2], G = [0.0, -1.0], B = [0.6, 1.0]
        save_png(&path, &[2.0, 0.2, 0.0, -1.0, 0.6, 1.0], 3, 1, 2).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!(img.color(), ColorType::Rgb8);
        assert_eq!((img.width(), img.height()), (2, 1));
        assert_eq!(img.to_rgb8().as_raw(), &vec![255, 0, 153, 51, 0, 255]);
    }

    #[test]
    fn grey_in_memory_and_bad_shapes() {
        let bytes = to_png_bytes(&[0.0, 0.5, 1.0, 0.25], 1, 2, 2).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(img.color(), ColorType::L8);
        assert_eq!(img.to_luma8().as_raw(), &vec![0, 128, 255, 64]);
        let err = to_png_bytes(&[0.0; 3], 1, 2, 2).unwrap_err().to_string();
        assert!(err.contains("4 values") && err.contains("got 3"), "{err}");
        let err = to_png_bytes(&[0.0; 8], 2, 2, 2).unwrap_err().to_string();
        assert!(err.contains("2-channel"), "{err}");
    }
}
