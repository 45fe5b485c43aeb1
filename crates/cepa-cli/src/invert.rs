//! `cepa invert`: estimate the trigger of a target class (stage 2), and what `scan --out` shares
//! with it: running the inversion for a flagged model, its pictures, examples and text.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use cepa::data::{ImageSet, to_png_bytes};
use cepa::detect::invert::{Inversion, KindChoice, TriggerKind, Truth};
use cepa::model::{Classifier, DeviceChoice};
use cepa::pipeline::{InvertOptions, InvertRun, invert_model};

use crate::args::{Format, InvertArgs, KindArg};
use crate::report::{Example, Page, TriggerSection};
use crate::{ExitStatus, out};

/// How many clean vs triggered examples the HTML report shows.
const EXAMPLES: usize = 9;

pub fn run(a: InvertArgs, device: DeviceChoice) -> anyhow::Result<ExitStatus> {
    let spec = a.model.spec()?;
    let path = &a.model.model;
    let data = cepa::data::load(&a.data, a.split).context("cannot read images")?;
    let model = Classifier::load_for_images(path, &spec, &device.device(true)?, Some(data.size()))
        .context("cannot load model")?;
    let truth = a.truth.as_deref().map(Truth::from_file).transpose()?;
    let opts = InvertOptions {
        sample: a.sample.options(),
        kind: a.kind.map(|k| match k {
            KindArg::Auto => KindChoice::Auto,
            KindArg::Additive => KindChoice::Additive,
            KindArg::MaskPattern => KindChoice::MaskPattern,
        }),
        steps: a.steps,
        pi: a.pi,
        confidence: a.confidence,
    };
    let run = invert_model(&model, &data, a.target, &opts, truth.as_ref())
        .with_context(|| format!("inversion of class {} failed", a.target))?;
    let report = run.to_json(&model, path);
    if let Some(dir) = &a.out {
        write_out(dir, &run, &report, &model, path)
            .with_context(|| format!("cannot write {}", dir.display()))?;
    }
    match a.format {
        Format::Json => out(&(serde_json::to_string_pretty(&report)? + "\n")),
        Format::Text => out(&text(&run.inversion, a.out.as_deref())?),
    }
    Ok(ExitStatus::Success)
}

/// `report.json`, `report.html`, `trigger.png` (and `mask.png`) of an inversion in `dir`.
pub fn write_out(
    dir: &Path,
    run: &InvertRun,
    report: &serde_json::Value,
    model: &Classifier,
    path: &Path,
) -> anyhow::Result<()> {
    let inv = &run.inversion;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    let section = section(model, inv, run.shown())?;
    write_pictures(dir, &section)?;
    let page = Page {
        title: format!("cepa invert: class {} of {}", inv.target, path.display()),
        model: path,
        spec: model.spec(),
        scan: None,
        trigger: Some(section),
        perturbations: None,
        baseline: None,
        combined: None,
        reference: None,
        config: serde_json::json!({ "inversion": &inv.config }),
    };
    std::fs::write(dir.join("report.html"), crate::report::render(&page))?;
    Ok(())
}

/// The trigger as a picture: an additive `delta` with mid-grey = 0 scaled to its largest
/// magnitude; a mask + pattern as `m * p`. And the mask itself (grey, 0 black, 1 white).
pub fn section<'a>(
    model: &Classifier,
    inv: &'a Inversion,
    images: &ImageSet,
) -> anyhow::Result<TriggerSection<'a>> {
    let [c, h, w] = inv.shape;
    let shown: Vec<f32> = match inv.kind() {
        TriggerKind::Additive => {
            let t = &inv.best.trigger;
            let m = t.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
            t.iter().map(|d| 0.5 + 0.5 * d / m).collect()
        }
        TriggerKind::MaskPattern => inv.effect(),
    };
    let trigger_png = to_png_bytes(&shown, c, h, w)?;
    let mask_png = match &inv.best.mask {
        Some(m) => Some(to_png_bytes(m, 1, h, w)?),
        None => None,
    };
    Ok(TriggerSection {
        inversion: inv,
        trigger_png,
        mask_png,
        examples: examples(model, inv, images)?,
    })
}

/// `trigger.png` and, for a mask + pattern, `mask.png`.
pub fn write_pictures(dir: &Path, s: &TriggerSection) -> anyhow::Result<()> {
    std::fs::write(dir.join("trigger.png"), &s.trigger_png)?;
    if let Some(m) = &s.mask_png {
        std::fs::write(dir.join("mask.png"), m)?;
    }
    Ok(())
}

/// The first image of each class other than the target (up to [`EXAMPLES`]), clean and with the
/// trigger, with the model's predictions.
fn examples(
    model: &Classifier,
    inv: &Inversion,
    images: &ImageSet,
) -> anyhow::Result<Vec<Example>> {
    let mut picked: Vec<usize> = Vec::new();
    for class in 0..model.num_classes() {
        if class == inv.target {
            continue;
        }
        if let Some(i) = images.labels.iter().position(|&l| l == class) {
            picked.push(i);
        }
    }
    picked.truncate(EXAMPLES);
    let clean = images.subset(&picked);
    let mut triggered = clean.clone();
    triggered.pixels = inv.apply(&clean.pixels);
    let clean_pred = model.predict(&clean, 64)?;
    let triggered_pred = model.predict(&triggered, 64)?;
    let (c, h, w) = (clean.channels, clean.height, clean.width);
    (0..clean.len())
        .map(|k| {
            Ok(Example {
                label: clean.labels[k],
                clean_pred: clean_pred[k],
                triggered_pred: triggered_pred[k],
                clean_png: to_png_bytes(clean.image(k), c, h, w)?,
                triggered_png: to_png_bytes(triggered.image(k), c, h, w)?,
            })
        })
        .collect()
}

/// A few lines on the estimate.
pub fn text(inv: &Inversion, dir: Option<&Path>) -> anyhow::Result<String> {
    let mut t = String::new();
    let b = &inv.best;
    writeln!(
        t,
        "inversion of class {}: {} trigger{}",
        inv.target,
        b.kind.name(),
        if b.feasible {
            ""
        } else {
            " (did not reach the success threshold)"
        }
    )?;
    writeln!(t, "  chosen  {}", inv.rule)?;
    match inv.asr {
        Some(asr) => writeln!(
            t,
            "  ASR     {asr:.3} on {} held-out clean images of other classes (optimisation set of {}: {:.3})",
            inv.holdout_images, inv.optimised_images, b.fit_success
        )?,
        None => writeln!(
            t,
            "  ASR     no held-out images (optimisation set of {}: {:.3})",
            inv.optimised_images, b.fit_success
        )?,
    }
    write!(
        t,
        "  size    mean |x~ - x| {:.4}, per image l1 {:.2} l2 {:.3}",
        b.cost, b.l1, b.l2
    )?;
    if let Some(m) = b.mask_l1 {
        write!(t, ", mask l1 {m:.1} px")?;
    }
    writeln!(t)?;
    if let Some(c) = b.confident_success {
        writeln!(
            t,
            "  strength x{:.2} of the smallest trigger (cost {:.4}): {:.3} of the optimisation images at probability >= {}",
            b.strength, b.base_cost, c, inv.config.confidence
        )?;
    }
    writeln!(
        t,
        "  lambda  lambda1 {:.3e}, lambda2 {:.3e} ({}), {} steps, {:.1} s",
        b.lambda1,
        b.lambda2,
        inv.layer.as_deref().unwrap_or("no consensus layer"),
        b.steps,
        inv.seconds
    )?;
    if let Some(c) = &inv.truth {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        writeln!(
            t,
            "  truth   mask IoU {} (half max) / {} (top area), mass in patch {}, pattern cosine {}{}",
            f(c.mask_iou),
            f(c.mask_iou_top_area),
            f(c.mass_in_patch),
            f(c.pattern_cosine),
            match c.target_correct {
                Some(false) => ", WRONG target",
                _ => "",
            }
        )?;
    }
    if let Some(d) = dir {
        let mask = if inv.best.mask.is_some() {
            ", mask.png"
        } else {
            ""
        };
        writeln!(
            t,
            "  wrote   {}/{{trigger.png{mask}, report.html}}",
            d.display()
        )?;
    }
    Ok(t)
}
