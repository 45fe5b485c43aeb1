//! What `cepa scan` runs, as one library call ([`scan_model`]): CEPA stage 1 and its verdict,
//! Neural Cleanse on the same clean images when a combined verdict needs it (or when asked for
//! beside CEPA's), the two combined, and stage 2 (the trigger estimate) for a flagged model.
//! [`ScanRun::to_json`] is the report every front end writes: the verdict that sets the exit
//! status on top, each detector's own under its key. [`inspect_model`] and [`invert_model`] are
//! `cepa inspect` and `cepa invert`; [`ScanOptions`] and [`InvertOptions`] are what a front end
//! may override in the settings file.

mod inspect;
mod invert;
mod options;

pub use inspect::{
    Accuracy, DEVICE_TOLERANCE, DeviceCheck, Inspection, compare_devices, inspect_model,
};
pub use invert::{InvertRun, invert_model};
pub use options::{InvertOptions, InvertPlan, SampleOptions, ScanOptions};

use serde_json::{Value, json};

use crate::data::ImageSet;
use crate::detect::cepa::Progress;
use crate::detect::invert::{Inversion, InvertConfig, Truth, invert_towards, split_sample};
use crate::detect::nc::{NcReport, neural_cleanse};
use crate::detect::scan::verdict_word;
use crate::detect::{ScanReport, scan_with_progress};
use crate::error::{Error, Result};
use crate::eval::{Combination, Outcome, VerdictConfig, combine, explain, stimulation_outcome};
use crate::model::Classifier;
use crate::settings::Settings;

/// Which verdict a scan reports as its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// CEPA's alone.
    Cepa,
    /// CEPA and Neural Cleanse combined ([`Combination`]).
    Combined(Combination),
}

impl Verdict {
    /// Its name, as `--verdict` spells it and `verdict_rule` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Cepa => "cepa",
            Verdict::Combined(Combination::Either) => "either",
            Verdict::Combined(Combination::Agree) => "agree",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ScanRequest<'a> {
    /// Every detector's settings (`[scan]`, `[nc]`, `[invert]`, `[verdict]`).
    pub settings: &'a Settings,
    pub verdict: Verdict,
    /// Run Neural Cleanse beside CEPA even when the verdict is CEPA's alone.
    pub baseline: bool,
    /// Estimate the trigger (stage 2) of a flagged model's target.
    pub invert: bool,
    /// A known trigger to compare the estimate with.
    pub truth: Option<&'a Truth>,
}

/// The combined verdict of CEPA and Neural Cleanse, with the sentence of its rule.
#[derive(Clone, Debug)]
pub struct Combined {
    pub how: Combination,
    pub outcome: Outcome,
    pub rule: String,
    /// Where the score comes from ([`crate::eval::explain`]).
    pub from: String,
    /// Why a flag deserves a second look ([`crate::detect::verdict::sink_caution`]); `None`
    /// for most verdicts.
    pub caution: Option<String>,
}

/// Everything a scan found.
#[derive(Clone, Debug)]
pub struct ScanRun {
    pub report: ScanReport,
    pub verdict: Verdict,
    pub baseline: Option<NcReport>,
    pub combined: Option<Combined>,
    /// Stage 2 for a flagged model, and the held-out images its attack success was measured on.
    pub inversion: Option<(Inversion, ImageSet)>,
    /// What computed it ([`crate::model::device_label`]).
    pub device: String,
}

impl ScanRun {
    /// The verdict that counts (the combined one when there is one).
    pub fn backdoored(&self) -> bool {
        match &self.combined {
            Some(c) => c.outcome.flagged,
            None => self.report.decision.backdoored,
        }
    }

    /// The class the verdict that counts names, when backdoored.
    pub fn target(&self) -> Option<usize> {
        match &self.combined {
            Some(c) => c.outcome.target,
            None => self.report.target,
        }
    }

    /// The report as JSON. The top-level `verdict`, `target`, `score`, `threshold`, `p_value`
    /// and `sources` are those of the verdict that sets the exit status, named by
    /// `verdict_rule`: a combined verdict's threshold is `[verdict] threshold`, it has no
    /// p-value, and keeps CEPA's suspected sources only when it names CEPA's class. CEPA's own
    /// verdict is always under `cepa`; Neural Cleanse's report under `baseline_nc`; the
    /// combined rule under `combined`; stage 2 under `inversion`.
    pub fn to_json(&self) -> Result<Value> {
        let r = &self.report;
        let d = &r.decision;
        let mut json = to_value(r)?;
        let Some(obj) = json.as_object_mut() else {
            return Err(Error::Config("a scan report is a JSON object".into()));
        };
        obj.insert(
            "cepa".into(),
            json!({
                "verdict": r.verdict,
                "target": r.target,
                "most_anomalous": d.most_anomalous,
                "score": r.score,
                "threshold": d.threshold,
                "p_value": r.p_value,
                "sources": r.sources,
            }),
        );
        obj.insert("threshold".into(), d.threshold.into());
        obj.insert("verdict_rule".into(), self.verdict.name().into());
        obj.insert("device".into(), self.device.clone().into());
        if let Some((inv, _)) = &self.inversion {
            obj.insert("inversion".into(), to_value(inv)?);
        }
        if let Some(nc) = &self.baseline {
            obj.insert("baseline_nc".into(), to_value(nc)?);
        }
        if let Some(c) = &self.combined {
            let o = &c.outcome;
            let sources = if o.target.is_some() && o.target == r.target {
                r.sources.clone()
            } else {
                Vec::new()
            };
            for (key, v) in [
                ("verdict", json!(verdict_word(o.flagged))),
                ("target", json!(o.target)),
                ("score", json!(o.score)),
                ("threshold", json!(o.threshold)),
                ("p_value", Value::Null),
                ("sources", json!(sources)),
                (
                    "combined",
                    json!({
                        "verdict": self.verdict.name(),
                        "rule": c.rule,
                        "from": c.from,
                        "caution": c.caution,
                        "backdoored": o.flagged,
                        "target": o.target,
                        "most_anomalous": o.most_anomalous,
                        "score": o.score,
                    }),
                ),
            ] {
                obj.insert(key.into(), v);
            }
        }
        Ok(json)
    }
}

fn to_value(v: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(format!("cannot write the report: {e}")))
}

/// Label `data` with `model`'s own predictions, for clean images that come without labels (the
/// detectors sample per class). A note says so in the images' format.
pub fn label_by_model(model: &Classifier, data: &mut ImageSet) -> Result<()> {
    data.labels = vec![0; data.len()];
    data.num_classes = model.num_classes();
    data.labels = model.predict(data, 256)?;
    data.format = format!("{} (labelled by the model's predictions)", data.format);
    Ok(())
}

/// Run what `req` asks for on `model` with clean images from `data` (`progress`: CEPA's stage-1
/// steps, as [`scan_with_progress`]).
pub fn scan_model(
    model: &Classifier,
    data: &ImageSet,
    req: &ScanRequest,
    progress: Progress,
) -> Result<ScanRun> {
    let s = req.settings;
    let report = scan_with_progress(model, data, &s.scan, progress)?;
    let run_nc = req.baseline || matches!(req.verdict, Verdict::Combined(_));
    let baseline = if run_nc {
        let fit = report.fit_images.as_ref().ok_or_else(|| {
            Error::Config("the scan kept no images for Neural Cleanse to run on".into())
        })?;
        tracing::info!(
            "Neural Cleanse on {} of the {} images CEPA optimised",
            fit.len().min(s.nc.max_images),
            fit.len()
        );
        Some(neural_cleanse(model, fit, &s.nc, &|_| {})?)
    } else {
        None
    };
    let combined = match (req.verdict, &baseline) {
        (Verdict::Combined(how), Some(nc)) => {
            let (outcome, from) = combined_outcome(&report, nc, how, &s.verdict);
            Some(Combined {
                how,
                caution: crate::detect::verdict::sink_caution(&report.decision, outcome.target),
                outcome,
                rule: how.rule(&s.verdict),
                from,
            })
        }
        _ => None,
    };
    let mut run = ScanRun {
        report,
        verdict: req.verdict,
        baseline,
        combined,
        inversion: None,
        device: crate::model::device_label(model.device()),
    };
    if let (true, Some(target)) = (req.invert, run.target()) {
        run.inversion = Some(invert_for_scan(
            model,
            data,
            &run.report,
            target,
            &s.invert,
            req.truth,
        )?);
    }
    Ok(run)
}

/// CEPA and Neural Cleanse (and, under `agree`, channel stimulation from CEPA's scan) as one
/// verdict ([`combine`], as the evaluation tables' `cepa-or-nc` and `cepa-nc-agree` rows), and
/// where its score comes from ([`explain`]).
pub fn combined_outcome(
    report: &ScanReport,
    nc: &NcReport,
    how: Combination,
    cfg: &VerdictConfig,
) -> (Outcome, String) {
    let outcome = |detector: &str, flagged, target, most, score, threshold, seconds| Outcome {
        model: String::new(),
        detector: detector.into(),
        dataset: String::new(),
        attack: String::new(),
        truth_target: None,
        flagged,
        target,
        most_anomalous: Some(most),
        score,
        threshold,
        seconds,
    };
    let d = &report.decision;
    let both = [
        outcome(
            "cepa",
            d.backdoored,
            report.target,
            d.most_anomalous,
            d.score,
            d.threshold,
            report.seconds,
        ),
        outcome(
            "nc",
            nc.verdict_backdoored,
            nc.target,
            nc.most_anomalous,
            nc.score,
            nc.threshold,
            nc.seconds,
        ),
    ];
    let mut all = both.to_vec();
    let stim = report
        .stimulation
        .as_ref()
        .and_then(|s| stimulation_outcome(&all[0], s, cfg));
    all.extend(stim.clone());
    let from = explain(&all[0], &all[1], stim.as_ref(), how, cfg);
    (combine(&all, how, cfg).remove(0), from)
}

/// Stage 2 for a scanned model: the trigger of `target` fitted on the images the scan optimised,
/// its attack success measured on the ones it held out (returned with it), seeded by the scan.
pub fn invert_for_scan(
    model: &Classifier,
    data: &ImageSet,
    report: &ScanReport,
    target: usize,
    settings: &InvertConfig,
    truth: Option<&Truth>,
) -> Result<(Inversion, ImageSet)> {
    let mut data = data.clone();
    data.num_classes = model.num_classes();
    let (fit, holdout) = split_sample(
        &data,
        report.config.per_class,
        report.images.holdout_per_class,
        report.config.seed,
    )?;
    // The consensus term (when turned on) pulls towards stage 1's mu at the scan's first layer,
    // or towards the perturbations' own mean at another layer named in the settings.
    let cfg = InvertConfig {
        seed: report.config.seed,
        layer: settings
            .layer
            .clone()
            .or_else(|| report.layers.first().cloned()),
        ..settings.clone()
    };
    let mu = report
        .results
        .iter()
        .find(|r| r.target == target)
        .and_then(|r| r.layers.first())
        .filter(|_| cfg.layer.as_ref() == report.layers.first())
        .map(|l| l.mu.as_slice());
    let mut inv = invert_towards(model, &fit, holdout.as_ref(), target, mu, &cfg)?;
    if let Some(t) = truth {
        inv.compare(t);
    }
    Ok((inv, holdout.unwrap_or(fit)))
}
