//! Comparing a trigger estimate with a known trigger: mask IoU with a true patch, cosine with a
//! true pattern.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// A known trigger (from a zoo manifest or an example's `truth.json`); unknown fields ignored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Truth {
    #[serde(default)]
    pub target: Option<usize>,
    /// A rectangular patch.
    #[serde(default)]
    pub patch: Option<TruthPatch>,
    /// An image-shaped (CHW) pattern, compared by cosine with the estimate's effect.
    #[serde(default)]
    pub pattern: Option<Vec<f32>>,
}

/// A patch at `row`, `col` (top-left), `size` x `size` or `height` x `width` pixels.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TruthPatch {
    pub row: usize,
    pub col: usize,
    #[serde(default)]
    pub size: Option<usize>,
    #[serde(default)]
    pub height: Option<usize>,
    #[serde(default)]
    pub width: Option<usize>,
}

impl TruthPatch {
    pub fn rows(&self) -> Range<usize> {
        self.row
            ..self
                .row
                .saturating_add(self.height.or(self.size).unwrap_or(1))
    }

    pub fn cols(&self) -> Range<usize> {
        self.col
            ..self
                .col
                .saturating_add(self.width.or(self.size).unwrap_or(1))
    }
}

/// How the estimate compares with the known trigger.
#[derive(Clone, Debug, Serialize)]
pub struct TruthComparison {
    pub target_correct: Option<bool>,
    /// IoU of the footprint thresholded at half its maximum with the true patch.
    pub mask_iou: Option<f64>,
    /// IoU of the footprint's top-k pixels (k = the true patch's area) with the true patch.
    pub mask_iou_top_area: Option<f64>,
    /// Share of the footprint's mass inside the true patch.
    pub mass_in_patch: Option<f64>,
    /// Cosine of the estimate's effect with the true pattern.
    pub pattern_cosine: Option<f64>,
}

/// How a soft mask becomes a set of pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binarize {
    /// Pixels at or above this fraction of the mask's maximum (a zero mask selects nothing).
    FractionOfMax(f32),
    /// The `k` largest pixels (ties broken by position).
    TopK(usize),
}

/// IoU of a binarised `h x w` mask with the rectangle `rows x cols` (clipped to the image).
pub fn mask_iou(
    mask: &[f32],
    h: usize,
    w: usize,
    rule: Binarize,
    rows: Range<usize>,
    cols: Range<usize>,
) -> f64 {
    let n = (h * w).min(mask.len());
    let selected: Vec<bool> = match rule {
        Binarize::FractionOfMax(f) => {
            let max = mask[..n].iter().fold(0.0f32, |a, &v| a.max(v));
            mask[..n]
                .iter()
                .map(|&v| max > 0.0 && v >= f * max)
                .collect()
        }
        Binarize::TopK(k) => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| mask[b].total_cmp(&mask[a]).then(a.cmp(&b)));
            let mut s = vec![false; n];
            for &i in order.iter().take(k) {
                s[i] = true;
            }
            s
        }
    };
    let (mut inter, mut union) = (0usize, 0usize);
    for (i, &sel) in selected.iter().enumerate() {
        let truth = rows.contains(&(i / w)) && cols.contains(&(i % w));
        inter += usize::from(sel && truth);
        union += usize::from(sel || truth);
    }
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// Cosine similarity of two vectors (0 when either is zero or their lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

impl Truth {
    /// Read a known trigger from a JSON file (an example's `truth.json`).
    pub fn from_file(path: &std::path::Path) -> crate::Result<Truth> {
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::Error::io(path.to_path_buf(), e))?;
        serde_json::from_str(&text).map_err(|e| {
            crate::Error::format(
                path.to_path_buf(),
                format!("not a truth file (JSON with target, patch): {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn mask_iou_by_hand() {
        // 4x4 mask, true patch rows 2..4, cols 2..4 (4 pixels).
        let mut m = vec![0.0f32; 16];
        m[2 * 4 + 2] = 1.0; // inside
        m[2 * 4 + 3] = 0.8; // inside
        m[0] = 0.6; // outside
        m[5] = 0.4; // outside, below half the max
        let iou = mask_iou(&m, 4, 4, Binarize::FractionOfMax(0.5), 2..4, 2..4);
        // selected {10, 11, 0}; truth {10, 11, 14, 15}: 2 / 5.
        assert!(close(iou, 0.4), "{iou}");
        let iou = mask_iou(&m, 4, 4, Binarize::TopK(4), 2..4, 2..4);
        // top 4: {10, 11, 0, 5}: 2 / 6.
        assert!(close(iou, 2.0 / 6.0), "{iou}");
        let exact: Vec<f32> = (0..16)
            .map(|i| f32::from(i / 4 >= 2 && i % 4 >= 2))
            .collect();
        assert!(close(
            mask_iou(&exact, 4, 4, Binarize::TopK(4), 2..4, 2..4),
            1.0
        ));
        assert!(close(
            mask_iou(&[0.0; 16], 4, 4, Binarize::FractionOfMax(0.5), 2..4, 2..4),
            0.0
        ));
    }

    #[test]
    fn cosine_by_hand() {
        assert!(close(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0));
        assert!(close(cosine(&[1.0, 2.0], &[2.0, 4.0]), 1.0));
        assert!(close(cosine(&[1.0, 1.0], &[-1.0, -1.0]), -1.0));
        assert!(close(cosine(&[3.0, 4.0], &[4.0, 3.0]), 24.0 / 25.0));
        assert!(close(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0));
        assert!(close(cosine(&[1.0], &[1.0, 1.0]), 0.0));
    }

    #[test]
    fn truth_json_of_the_example_reads() {
        let t: Truth = serde_json::from_str(
            r#"{"attack":"badnets","patch":{"col":24,"row":24,"size":3,"value":1.0},"target":7}"#,
        )
        .unwrap();
        let p = t.patch.unwrap();
        assert_eq!((p.rows(), p.cols(), t.target), (24..27, 24..27, Some(7)));
    }
}
