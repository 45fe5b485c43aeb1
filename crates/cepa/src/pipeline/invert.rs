//! What `cepa invert` runs, as one library call ([`invert_model`]): stage 2 for a class the
//! user names, on images drawn as a scan draws them.

use std::path::Path;

use serde_json::{Value, json};

use super::options::InvertOptions;
use crate::data::ImageSet;
use crate::detect::invert::{Inversion, Truth, invert, split_sample};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// A finished inversion and the images it used.
#[derive(Clone, Debug)]
pub struct InvertRun {
    pub inversion: Inversion,
    /// The images the trigger was optimised on.
    pub fit: ImageSet,
    /// The held-out images its attack success was measured on (none when the classes have no
    /// images beyond `per_class`).
    pub holdout: Option<ImageSet>,
    pub per_class: usize,
    /// Where the images came from (for the report).
    pub source: String,
}

impl InvertRun {
    /// The images a report shows the trigger on: the held-out ones, or the optimised ones.
    pub fn shown(&self) -> &ImageSet {
        self.holdout.as_ref().unwrap_or(&self.fit)
    }

    /// The report of `cepa invert --format json` for `model` read from `path`.
    pub fn to_json(&self, model: &Classifier, path: &Path) -> Value {
        json!({
            "model": path.display().to_string(),
            "spec": model.spec(),
            "images": {
                "source": self.source,
                "per_class": self.per_class,
                "holdout_per_class": self
                    .holdout
                    .as_ref()
                    .map_or(0, |h| h.len() / model.num_classes()),
            },
            "inversion": &self.inversion,
            "device": crate::model::device_label(model.device()),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Estimate the trigger that sends clean images of `data` to `target` (stage 2), compared with
/// `truth` when one is known.
pub fn invert_model(
    model: &Classifier,
    data: &ImageSet,
    target: usize,
    opts: &InvertOptions,
    truth: Option<&Truth>,
) -> Result<InvertRun> {
    if target >= model.num_classes() {
        return Err(Error::Mismatch(format!(
            "target class {target} is not a class of the model (0..{})",
            model.num_classes().saturating_sub(1)
        )));
    }
    model.check_images(data)?;
    let mut data = data.clone();
    data.num_classes = model.num_classes();
    let plan = opts.plan()?;
    let (fit, holdout) = split_sample(
        &data,
        plan.per_class,
        plan.holdout_per_class,
        plan.config.seed,
    )?;
    let mut inversion = invert(model, &fit, holdout.as_ref(), target, &plan.config)?;
    if let Some(t) = truth {
        inversion.compare(t);
    }
    Ok(InvertRun {
        inversion,
        fit,
        holdout,
        per_class: plan.per_class,
        source: data.source.display().to_string(),
    })
}
