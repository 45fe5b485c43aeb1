//! A whole scan: pick clean images and layers, run stage 1, decide, and report.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::detect::cepa::{CepaConfig, Progress, TargetResult, stage1_with_progress};
use crate::detect::verdict::{Decision, DecisionConfig, decide};
use crate::error::{Error, Result};
use crate::model::{Classifier, ResolvedSpec};

/// Which layers stage 1 works at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerChoice {
    /// The inputs of the last `auto_layers` parametric layers that cut the graph (see
    /// [`crate::model::LayerInfo::candidate`]), deepest first.
    Auto,
    /// Tensors named by their ONNX names.
    Named(Vec<String>),
}

/// Everything a scan needs besides the model and the images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Clean images per class used in the optimisation. Default 10.
    pub per_class: usize,
    /// Held-out clean images per class for the transfer statistic (0: none). Default 10; fewer
    /// are used when the data has fewer.
    pub holdout_per_class: usize,
    pub layer: LayerChoice,
    /// How many candidate layers `auto` takes [ours]. Default 2.
    pub auto_layers: usize,
    /// Seed of the image sampling and of the initial perturbations. Default 0.
    pub seed: u64,
    pub cepa: CepaConfig,
    pub decision: DecisionConfig,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            per_class: 10,
            holdout_per_class: 10,
            layer: LayerChoice::Auto,
            auto_layers: 2,
            seed: 0,
            cepa: CepaConfig::default(),
            decision: DecisionConfig::default(),
        }
    }
}

/// What a scan found, with what it ran on.
#[derive(Clone, Debug, Serialize)]
pub struct ScanReport {
    /// "backdoored" or "clean".
    pub verdict: String,
    pub target: Option<usize>,
    pub score: f64,
    pub p_value: f64,
    pub sources: Vec<usize>,
    /// The layers worked at, joined by ", " (see `layers`).
    pub layer: String,
    pub layers: Vec<String>,
    /// How the layers were chosen.
    pub layer_rule: String,
    pub decision: Decision,
    pub spec: ResolvedSpec,
    pub images: ImagesUsed,
    pub config: ScanConfig,
    pub version: String,
    pub seconds: f64,
    /// Stage-1 results (per-sample perturbations are not serialised).
    #[serde(skip)]
    pub results: Vec<TargetResult>,
    /// The clean images the optimisation used.
    #[serde(skip)]
    pub fit_images: Option<ImageSet>,
}

/// How many clean images were used.
#[derive(Clone, Debug, Serialize)]
pub struct ImagesUsed {
    pub source: String,
    pub per_class: usize,
    pub holdout_per_class: usize,
    pub total: usize,
}

/// Split a balanced sample into the optimisation set and the held-out set
/// ([`split_sample`](crate::detect::invert::split_sample)), noting when the data is short.
fn sample(
    data: &ImageSet,
    cfg: &ScanConfig,
    notes: &mut Vec<String>,
) -> Result<(ImageSet, Option<ImageSet>)> {
    let smallest = data.class_counts().into_iter().min().unwrap_or(0);
    let holdout = cfg
        .holdout_per_class
        .min(smallest.saturating_sub(cfg.per_class));
    if holdout < cfg.holdout_per_class {
        notes.push(if holdout == 0 {
            format!(
                "no images left beyond --per-class {} in some class: no transfer statistic",
                cfg.per_class
            )
        } else {
            format!("{holdout} held-out images per class (the smallest class has {smallest})")
        });
    }
    crate::detect::invert::split_sample(data, cfg.per_class, cfg.holdout_per_class, cfg.seed)
}

/// Resolve the layer choice against the model.
pub fn choose_layers(model: &Classifier, cfg: &ScanConfig) -> Result<(Vec<String>, String)> {
    match &cfg.layer {
        LayerChoice::Named(names) => {
            for n in names {
                model.layer(n)?;
            }
            Ok((names.clone(), "named by the user".to_string()))
        }
        LayerChoice::Auto => {
            let layers: Vec<String> = model
                .layers()
                .iter()
                .rev()
                .filter(|l| l.candidate)
                .take(cfg.auto_layers.max(1))
                .map(|l| l.name.clone())
                .collect();
            if layers.is_empty() {
                return Err(Error::Mismatch(
                    "no candidate embedding layer (an input of one of the last Conv/Gemm/MatMul layers that \
                     cuts the graph); name one with --layer"
                        .into(),
                ));
            }
            let rule = format!(
                "auto: the inputs of the last {} parametric (Conv/Gemm/MatMul) layers that cut the graph",
                layers.len()
            );
            Ok((layers, rule))
        }
    }
}

/// `"backdoored"` or `"clean"`, as reports spell a verdict.
pub fn verdict_word(backdoored: bool) -> &'static str {
    if backdoored { "backdoored" } else { "clean" }
}

/// Scan `model` with clean images from `data`.
pub fn scan(model: &Classifier, data: &ImageSet, cfg: &ScanConfig) -> Result<ScanReport> {
    scan_with_progress(model, data, cfg, &|_| {})
}

/// [`scan`], reporting stage-1 progress in per-target steps (nominal total: classes x steps).
pub fn scan_with_progress(
    model: &Classifier,
    data: &ImageSet,
    cfg: &ScanConfig,
    progress: Progress,
) -> Result<ScanReport> {
    let start = Instant::now();
    model.check_images(data)?;
    let mut data = data.clone();
    data.num_classes = model.num_classes();
    let mut notes = Vec::new();
    let (fit, holdout) = sample(&data, cfg, &mut notes)?;
    let (layers, layer_rule) = choose_layers(model, cfg)?;
    tracing::info!("layers: {}", layers.join(", "));
    let cepa = CepaConfig {
        seed: cfg.seed,
        ..cfg.cepa.clone()
    };
    let results = stage1_with_progress(model, &fit, holdout.as_ref(), &layers, &cepa, progress)?;
    let mut decision = decide(&results, &layers, &cfg.decision)?;
    decision.notes.extend(notes);
    Ok(ScanReport {
        verdict: verdict_word(decision.backdoored).to_string(),
        target: decision.target,
        score: decision.score,
        p_value: decision.p_value,
        sources: decision.sources.clone(),
        layer: layers.join(", "),
        layers,
        layer_rule,
        decision,
        spec: model.spec().clone(),
        images: ImagesUsed {
            source: data.source.display().to_string(),
            per_class: cfg.per_class,
            holdout_per_class: holdout
                .as_ref()
                .map_or(0, |h| h.len() / model.num_classes()),
            total: fit.len() + holdout.as_ref().map_or(0, ImageSet::len),
        },
        config: ScanConfig {
            cepa,
            ..cfg.clone()
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        seconds: start.elapsed().as_secs_f64(),
        results,
        fit_images: Some(fit),
    })
}
