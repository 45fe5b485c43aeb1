//! What `cepa inspect` reports, as one library call ([`inspect_model`]).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

use crate::data::{ImageSet, Split};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// The accuracy of a model on clean images, and on which.
#[derive(Clone, Debug)]
pub struct Accuracy {
    pub accuracy: f64,
    /// How many images it was measured on.
    pub images: usize,
    /// Where they came from, in which format, and which split (for a dataset folder).
    pub source: String,
    pub format: String,
    pub split: Option<Split>,
    pub seconds: f64,
}

/// What a model is, how it is read, and (with images) how accurate it is.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub accuracy: Option<Accuracy>,
}

/// Inspect `model`; with `data`, measure its accuracy on at most `limit` of its images (`split`:
/// which split of a dataset folder they are, for the report).
pub fn inspect_model(
    model: &Classifier,
    data: Option<&ImageSet>,
    split: Option<Split>,
    limit: Option<usize>,
) -> Result<Inspection> {
    let Some(set) = data else {
        return Ok(Inspection { accuracy: None });
    };
    let limited;
    let set = match limit {
        Some(limit) if limit < set.len() => {
            limited = set.subset(&(0..limit).collect::<Vec<_>>());
            &limited
        }
        _ => set,
    };
    model.check_images(set)?;
    let t = Instant::now();
    let accuracy = model.accuracy(set, 256)?;
    let seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        "accuracy {accuracy:.4} on {} images in {seconds:.2} s ({:.0} images/s)",
        set.len(),
        set.len() as f64 / seconds
    );
    Ok(Inspection {
        accuracy: Some(Accuracy {
            accuracy,
            images: set.len(),
            source: set.source.display().to_string(),
            format: set.format.clone(),
            split,
            seconds,
        }),
    })
}

impl Inspection {
    /// The report of `cepa inspect --format json` for `model` read from `path`.
    pub fn to_json(&self, model: &Classifier, path: &Path) -> Value {
        let g = model.graph();
        let s = model.spec();
        let data = match &self.accuracy {
            Some(a) => json!({
                "path": a.source, "format": a.format,
                "split": a.split.map(|s| s.to_string()), "images": a.images,
                "seconds": a.seconds,
            }),
            None => Value::Null,
        };
        json!({
            "model": path,
            "producer": g.producer_name,
            "opset": g.opset,
            "ops": g.op_types(),
            "input": g.input,
            "output": g.output,
            "spec": s,
            "num_classes": s.num_classes,
            "accuracy": self.accuracy.as_ref().map(|a| a.accuracy),
            "data": data,
            "layers": model.layers(),
            "device": crate::model::device_label(model.device()),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// The agreement [`compare_devices`] asks for: the largest difference at most this fraction of
/// the largest reference value, for the logits and for the input gradient.
pub const DEVICE_TOLERANCE: f64 = 1e-4;

/// How far one model's numbers on one device are from the same model's on another (the CPU).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceCheck {
    /// The device checked, and the reference device ([`crate::model::device_label`]).
    pub device: String,
    pub reference: String,
    /// Images compared.
    pub images: usize,
    /// Largest absolute difference of the logits over the largest absolute reference logit.
    pub logits_rel: f64,
    /// The same for the gradient, with respect to the input pixels, of the summed log-softmax
    /// of the class the reference predicts for each image.
    pub grad_rel: f64,
    pub tolerance: f64,
    /// Both within `tolerance`.
    pub pass: bool,
}

/// Compare `model` with `reference` (the same model on another device, both loaded with
/// autodiff) on the first `n` images of `set`: logits, and input gradients of
/// `sum_i log softmax(f(x_i))[c_i]` with `c_i` the reference's predicted class.
pub fn compare_devices(
    model: &Classifier,
    reference: &Classifier,
    set: &ImageSet,
    n: usize,
) -> Result<DeviceCheck> {
    model.check_images(set)?;
    let n = n.min(set.len());
    if n == 0 {
        return Err(Error::Mismatch(format!(
            "no images in {} to compare devices on",
            set.source.display()
        )));
    }
    let pixels = &set.pixels[..n * set.image_len()];
    let (ref_logits, ref_grad, classes) = logits_and_grad(reference, pixels, n, None)?;
    let (logits, grad, _) = logits_and_grad(model, pixels, n, Some(&classes))?;
    let logits_rel = relative_gap(&logits, &ref_logits);
    let grad_rel = relative_gap(&grad, &ref_grad);
    Ok(DeviceCheck {
        device: crate::model::device_label(model.device()),
        reference: crate::model::device_label(reference.device()),
        images: n,
        logits_rel,
        grad_rel,
        tolerance: DEVICE_TOLERANCE,
        pass: logits_rel <= DEVICE_TOLERANCE && grad_rel <= DEVICE_TOLERANCE,
    })
}

/// Largest `|a - b|` over largest `|b|` (0 when both are all zero; infinite on a NaN).
fn relative_gap(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let mut gap = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = f64::from(x - y).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        gap = gap.max(d);
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    if scale == 0.0 { gap } else { gap / scale }
}

/// Logits `[n, K]` and the input gradient of the summed log-softmax of `classes` (the model's own
/// predictions when `None`), with those classes.
fn logits_and_grad(
    model: &Classifier,
    pixels: &[f32],
    n: usize,
    classes: Option<&[usize]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use burn::tensor::activation::log_softmax;

    let read = |t: Tensor<1>| {
        t.try_into_vec_as::<f32>()
            .map_err(|e| Error::Mismatch(format!("cannot read a tensor back: {e:?}")))
    };
    if !model.device().is_autodiff() {
        return Err(Error::Mismatch(
            "the device check needs a model loaded with autodiff (for its gradients)".into(),
        ));
    }
    let x = model.images_tensor(pixels, n).require_grad();
    let logits = model.logits(x.clone())?;
    let k = logits.dims()[1];
    let values = read(logits.clone().detach().reshape([n * k]))?;
    let classes: Vec<usize> = match classes {
        Some(c) => c.to_vec(),
        None => values
            .chunks(k)
            .map(|row| {
                (0..k)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0)
            })
            .collect(),
    };
    let idx: Vec<i64> = classes.iter().map(|&c| c as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [n, 1]), model.device());
    let loss = log_softmax(logits, 1).gather(1, idx).sum();
    let grads = loss.backward();
    let g = x
        .grad(&grads)
        .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
    let len: usize = g.dims().iter().product();
    Ok((values, read(g.reshape([len]))?, classes))
}
