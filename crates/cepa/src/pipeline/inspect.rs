//! What `cepa inspect` reports, as one library call ([`inspect_model`]).

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::data::{ImageSet, Split};
use crate::error::Result;
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
