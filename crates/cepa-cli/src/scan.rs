//! `cepa scan`: is the model backdoored, which class is the target.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use cepa::data::to_png_bytes;
use cepa::detect::invert::Truth;
use cepa::detect::nc::NcReport;
use cepa::detect::reference::{self, ReferenceComparison};
use cepa::detect::{ScanReport, ScreenRole};
use cepa::eval::Combination;
use cepa::model::{Classifier, DeviceChoice};
use cepa::pipeline::{Combined, ScanOptions, ScanRequest, ScanRun, Verdict, scan_model};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::{Baseline, Format, OnOff, ScanArgs, VerdictArg};
use crate::report::{Page, Perturbations};
use crate::{ExitStatus, invert, out};

pub fn run(a: ScanArgs, quiet: bool, device: DeviceChoice) -> anyhow::Result<ExitStatus> {
    let verdict = match a.verdict {
        VerdictArg::Cepa => Verdict::Cepa,
        VerdictArg::Either => Verdict::Combined(Combination::Either),
        VerdictArg::Agree => Verdict::Combined(Combination::Agree),
    };
    let spec = a.model.spec()?;
    let path = &a.model.model;
    let data = cepa::data::load(&a.data, a.split).context("cannot read images")?;
    let model = Classifier::load_for_images(path, &spec, &device.device(true)?, Some(data.size()))
        .context("cannot load model")?;
    let truth = a.truth.as_deref().map(Truth::from_file).transpose()?;
    let references = reference::read_references(&a.references, model.num_classes())?;
    let settings = ScanOptions {
        sample: a.sample.options(),
        layers: ScanOptions::parse_layers(&a.layer),
        steps: a.steps,
        lr: a.lr,
        threshold: a.threshold,
        screen: a.screen.map(|s| s == OnOff::On),
    }
    .settings()?;
    tracing::info!("model {}: {}", path.display(), model.spec().summary());
    for n in &model.spec().notes {
        tracing::info!("note: {n}");
    }
    let k = model.num_classes();
    let screen = &settings.scan.screen;
    let total = if screen.applies(k) {
        k * screen.steps
            + (screen.candidates + screen.null)
                * settings.scan.cepa.steps
                * settings.scan.cepa.restarts
    } else {
        k * settings.scan.cepa.steps * settings.scan.cepa.restarts
    } as u64;
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "stage 1 {bar:40} {pos}/{len} class-steps, {elapsed} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let request = ScanRequest {
        settings: &settings,
        verdict,
        baseline: a.baseline == Some(Baseline::Nc),
        // Stage 2 for a flagged model when there is somewhere to put the trigger.
        invert: a.out.is_some(),
        truth: truth.as_ref(),
    };
    let run = scan_model(&model, &data, &request, &|n| {
        // Classes that are hard to reach may run past the nominal budget; the bar is cleared
        // when stage 1 is done (Neural Cleanse and stage 2 follow).
        if bar.position() + n as u64 > bar.length().unwrap_or(0) {
            bar.set_length(bar.position() + n as u64);
        }
        bar.inc(n as u64);
        if bar.position() >= total {
            bar.finish_and_clear();
        }
    })
    .context("scan failed")?;
    bar.finish_and_clear();
    let combined = run.combined.as_ref();
    let against = against_references(&run, &references, &a.references)?;
    let json = report_json(&run, against.as_ref())?;
    if let Some(dir) = &a.out {
        write_out(dir, &run, &json, against.as_ref(), &model, path)
            .with_context(|| format!("cannot write {}", dir.display()))?;
    }
    match a.format {
        Format::Json => out(&(serde_json::to_string_pretty(&json)? + "\n")),
        Format::Text => {
            let report = &run.report;
            let mut t = text(report, path, &run.device, combined.is_some())?;
            if let Some(c) = &against {
                t += &reference_text(c)?;
            }
            if let Some((inv, _)) = &run.inversion {
                t += &invert::text(inv, a.out.as_deref())?;
            }
            if let Some(nc) = &run.baseline {
                t += &nc_text(nc, report.target, combined.is_some())?;
            }
            if let Some(c) = combined {
                t += &combined_text(c);
            }
            out(&t)
        }
    }
    Ok(if run.backdoored() {
        ExitStatus::Backdoor
    } else {
        ExitStatus::Success
    })
}

/// The scan's text report; with a combined verdict CEPA's own line is labelled as CEPA's, and
/// the combined line that follows is the verdict.
fn text(r: &ScanReport, path: &Path, device: &str, combined: bool) -> anyhow::Result<String> {
    let mut t = String::new();
    writeln!(t, "model   {}", path.display())?;
    writeln!(t, "spec    {}", r.spec.summary())?;
    writeln!(t, "device  {device}")?;
    writeln!(t, "layers  {} ({})", r.layer, r.layer_rule)?;
    writeln!(
        t,
        "images  {} clean per class (+{} held out) from {}",
        r.images.per_class, r.images.holdout_per_class, r.images.source
    )?;
    let chosen: Vec<&str> = r
        .config
        .decision
        .statistics
        .iter()
        .map(|s| s.name())
        .collect();
    writeln!(
        t,
        "\nper class: anomaly index of each statistic (one-sided MAD; combined = mean of {})",
        chosen.join(", ")
    )?;
    let first = &r.decision.classes[0];
    let heads: Vec<String> = first
        .statistics
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.layer {
            None => s.statistic.name().to_string(),
            Some(_) => format!(
                "{}@L{}",
                s.statistic.name(),
                1 + r
                    .layers
                    .iter()
                    .position(|l| Some(l) == s.layer.as_ref())
                    .unwrap_or(i)
            ),
        })
        .collect();
    write!(t, "{:>5} {:>8} {:>5}", "class", "feasible", "steps")?;
    for h in &heads {
        write!(t, " {h:>14}")?;
    }
    writeln!(t, " {:>9}", "combined")?;
    for c in &r.decision.classes {
        write!(
            t,
            "{:>5} {:>8} {:>5}",
            c.class,
            if c.feasible { "yes" } else { "no" },
            c.steps
        )?;
        for s in &c.statistics {
            write!(t, " {:>14.2}", s.anomaly_index)?;
        }
        let mark = if Some(c.class) == r.target {
            "  <- target"
        } else {
            ""
        };
        writeln!(t, " {:>9.2}{mark}", c.anomaly_index)?;
    }
    for (i, l) in r.layers.iter().enumerate() {
        writeln!(t, "L{} = {l}", i + 1)?;
    }
    for n in &r.decision.notes {
        writeln!(t, "note: {n}")?;
    }
    if let Some(sr) = &r.screen {
        writeln!(t, "{}", screen_line(sr, "CEPA"))?;
    }
    if let Some(s) = &r.stimulation {
        writeln!(t, "{}", stimulation_line(s))?;
    }
    writeln!(t)?;
    let label = if combined { "CEPA verdict" } else { "verdict" };
    match r.target {
        Some(target) => writeln!(
            t,
            "{label}: BACKDOORED, target class {target} (score {:.2} > {:.2}, p = {:.2e}), suspected sources {:?}, {:.1} s",
            r.score, r.decision.threshold, r.p_value, r.sources, r.seconds
        )?,
        None => writeln!(
            t,
            "{label}: clean (largest score {:.2} at class {}, threshold {:.2}, p = {:.2e}), {:.1} s",
            r.score, r.decision.most_anomalous, r.decision.threshold, r.p_value, r.seconds
        )?,
    }
    // The combined verdict's lines carry their own caution.
    if let (false, Some(c)) = (
        combined,
        cepa::detect::verdict::sink_caution(&r.decision, r.target),
    ) {
        writeln!(t, "  caution: {c}")?;
    }
    Ok(t)
}

/// One line on channel stimulation: the class that stands out and how (a voice of the combined
/// `agree` verdict, not of CEPA's own).
pub fn stimulation_line(s: &cepa::detect::stimulate::StimulationReport) -> String {
    let which = if s.group > 1 {
        format!(
            "channels {} and {} more it moves most",
            s.channel,
            s.group - 1
        )
    } else {
        format!("channel {}", s.channel)
    };
    let values = match (&s.positions, s.position_yx()) {
        (Some(p), Some((y, x))) => format!(
            "; single values (up to {:.0}x their clean maximum): class {} stands out, index {:.2}; \
             the value of channel {} at ({y}, {x}) at {:.0}% sends {:.0}% of them to it ({} values)",
            p.reach,
            p.class,
            p.index,
            p.channel,
            100.0 * p.level,
            100.0 * p.carried,
            p.values
        ),
        _ => s
            .positions_skipped
            .as_ref()
            .map(|why| format!("; {why}"))
            .unwrap_or_default(),
    };
    format!(
        "stimulation (a voice of --verdict agree): class {} stands out, index {:.2}; {which} of {} \
         at {:.0}% of {} clean maximum sends {:.0}% of the other classes' {} images to it ({} channels x {} levels, {:.1} s){values}",
        s.class,
        s.index,
        s.layer,
        100.0 * s.level,
        if s.group > 1 { "their" } else { "its" },
        100.0 * s.carried,
        s.images,
        s.channels,
        s.levels,
        s.seconds
    )
}

/// `run`'s CEPA indices against the reference scans read from `files` (`--reference`), with
/// notes on the class the verdict singled out (else CEPA's most anomalous); `None` without
/// references.
pub fn against_references(
    run: &ScanRun,
    references: &[Vec<f64>],
    files: &[std::path::PathBuf],
) -> anyhow::Result<Option<ReferenceComparison>> {
    if references.is_empty() {
        return Ok(None);
    }
    let r = &run.report;
    let index: Vec<f64> = r.decision.classes.iter().map(|c| c.anomaly_index).collect();
    let class = run
        .combined
        .as_ref()
        .and_then(|c| c.outcome.target)
        .or(r.target)
        .unwrap_or(r.decision.most_anomalous);
    let files = files.iter().map(|p| p.display().to_string()).collect();
    Ok(Some(reference::compare(&index, references, files, class)?))
}

/// The scan's JSON report, with the comparison with reference scans under `reference`.
pub fn report_json(
    run: &ScanRun,
    against: Option<&ReferenceComparison>,
) -> anyhow::Result<serde_json::Value> {
    let mut json = run.to_json()?;
    if let Some(c) = against {
        json["reference"] = serde_json::to_value(c)?;
    }
    Ok(json)
}

/// This scan's CEPA indices against the reference clean scans (`--reference`).
fn reference_text(c: &ReferenceComparison) -> anyhow::Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "\nreference: CEPA's combined index against {} clean scan(s) of the task ({}); a decision \
         aid, the verdict does not use it",
        c.files.len(),
        c.files.join(", ")
    )?;
    writeln!(
        t,
        "{:>5} {:>9} {:>10} {:>9}",
        "class", "here", "reference", "above"
    )?;
    for k in &c.classes {
        let mark = if k.class == c.most_anomalous {
            "  <- stands out most"
        } else {
            ""
        };
        writeln!(
            t,
            "{:>5} {:>9.2} {:>10.2} {:>9.2}{mark}",
            k.class, k.index, k.reference_mean, k.adjusted
        )?;
    }
    for n in &c.notes {
        writeln!(t, "note: {n}")?;
    }
    Ok(t)
}

fn combined_text(combined: &Combined) -> String {
    let c = &combined.outcome;
    let name = Verdict::Combined(combined.how).name();
    let verdict = match c.target {
        Some(t) => format!(
            "BACKDOORED, target class {t} (score {:.3} > {})",
            c.score, c.threshold
        ),
        None => format!("clean (score {:.3} <= {})", c.score, c.threshold),
    };
    let caution = combined
        .caution
        .as_ref()
        .map(|c| format!("  caution: {c}\n"))
        .unwrap_or_default();
    format!(
        "verdict ({name}, CEPA and Neural Cleanse combined): {verdict}; it sets the exit status.\n  from: {}\n{caution}  rule: {}\n",
        combined.from, combined.rule
    )
}

/// The baseline's verdict and per-class masks, and whether it agrees with CEPA's `target`.
/// One line on a screening pass: how many classes ran fully, and the screened-out ones.
fn screen_line(sr: &cepa::detect::ScreenReport, who: &str) -> String {
    let out: Vec<String> = sr
        .classes
        .iter()
        .filter(|c| c.role == ScreenRole::ScreenedOut)
        .map(|c| c.class.to_string())
        .collect();
    format!(
        "screened ({who}, {:.1} s, {} steps on {} images a class): {} of {} classes optimised fully; screened out: {}",
        sr.seconds,
        sr.config.steps,
        sr.config.max_samples,
        sr.classes.len() - out.len(),
        sr.classes.len(),
        out.join(" ")
    )
}

fn nc_text(nc: &NcReport, cepa_target: Option<usize>, combined: bool) -> anyhow::Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "\nbaseline: Neural Cleanse on {} of the images CEPA optimised (mask L1 per class, \
         one-sided MAD)",
        nc.images
    )?;
    writeln!(
        t,
        "{:>5} {:>8} {:>6} {:>9} {:>9}",
        "class", "mask L1", "ASR", "feasible", "index"
    )?;
    for c in &nc.classes {
        let mark = if Some(c.target) == nc.target {
            "  <- target"
        } else {
            ""
        };
        writeln!(
            t,
            "{:>5} {:>8.1} {:>6.2} {:>9} {:>9.2}{mark}",
            c.target,
            c.l1,
            c.asr,
            if c.feasible { "yes" } else { "no" },
            c.anomaly_index
        )?;
    }
    if let Some(sr) = &nc.screen {
        writeln!(t, "{}", screen_line(sr, "Neural Cleanse"))?;
    }
    let threshold = nc.threshold;
    if threshold != nc.config.threshold {
        writeln!(
            t,
            "baseline threshold {:.2} raised to {threshold:.2} for {} classes (x{:.3}; [nc] \
             reference_classes = {})",
            nc.config.threshold,
            nc.screen
                .as_ref()
                .map_or(nc.classes.len(), |s| s.classes.len()),
            threshold / nc.config.threshold,
            nc.config.reference_classes
        )?;
    }
    match nc.target {
        Some(target) => writeln!(
            t,
            "baseline verdict: BACKDOORED, target class {target} (index {:.2} > {threshold:.2}), {:.1} s",
            nc.score, nc.seconds
        )?,
        None => writeln!(
            t,
            "baseline verdict: clean (largest index {:.2} at class {}, threshold {threshold:.2}), {:.1} s",
            nc.score, nc.most_anomalous, nc.seconds
        )?,
    }
    if nc.target != cepa_target {
        let status = if combined {
            "the combined verdict below sets the exit status"
        } else {
            "CEPA's verdict sets the exit status"
        };
        writeln!(
            t,
            "note: the detectors disagree (CEPA {}, Neural Cleanse {}); {status}",
            cepa_target.map_or("clean".to_string(), |c| format!("class {c}")),
            nc.target
                .map_or("clean".to_string(), |c| format!("class {c}"))
        )?;
    }
    Ok(t)
}

/// `report.json`, `report.html`, the most anomalous class's per-sample perturbations as PNG and,
/// after stage 2, `trigger.png` (and `mask.png`).
pub fn write_out(
    dir: &Path,
    run: &ScanRun,
    json: &serde_json::Value,
    reference: Option<&ReferenceComparison>,
    model: &Classifier,
    path: &Path,
) -> anyhow::Result<()> {
    let r = &run.report;
    let (baseline, combined) = (run.baseline.as_ref(), run.combined.as_ref());
    let stage2 = run.inversion.as_ref().map(|(inv, held)| (inv, held));
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(json)? + "\n",
    )?;
    let perturbations = perturbation_pictures(r)?;
    if let Some(p) = &perturbations {
        let sub = dir.join(format!("perturbations-class{}", p.class));
        std::fs::create_dir_all(&sub)?;
        for (stem, perturbed, delta) in &p.items {
            std::fs::write(sub.join(format!("{stem}-perturbed.png")), perturbed)?;
            std::fs::write(sub.join(format!("{stem}-delta.png")), delta)?;
        }
    }
    let trigger = match stage2 {
        Some((inv, held)) => {
            let section = invert::section(model, inv, held)?;
            invert::write_pictures(dir, &section)?;
            Some(section)
        }
        None => None,
    };
    let mut config = serde_json::json!({ "scan": &r.config });
    if let Some(nc) = baseline {
        config["baseline_nc"] = serde_json::to_value(&nc.config)?;
    }
    if let Some((inv, _)) = stage2 {
        config["inversion"] = serde_json::to_value(&inv.config)?;
    }
    let page = Page {
        title: format!("cepa scan: {}", path.display()),
        model: path,
        spec: &r.spec,
        scan: Some(r),
        trigger,
        perturbations,
        baseline,
        combined: combined.map(|c| (c.outcome.flagged, combined_text(c).trim_end().to_string())),
        reference,
        config,
    };
    std::fs::write(dir.join("report.html"), crate::report::render(&page))?;
    Ok(())
}

/// The most anomalous class's per-sample perturbations: for each sample, the perturbed image
/// and the perturbation itself (mid-grey = 0, scaled to its largest magnitude), as PNG.
fn perturbation_pictures(r: &ScanReport) -> anyhow::Result<Option<Perturbations>> {
    let class = r.decision.most_anomalous;
    let (Some(res), Some(fit)) = (
        r.results.iter().find(|res| res.target == class),
        r.fit_images.as_ref(),
    ) else {
        return Ok(None);
    };
    let (c, h, w) = (fit.channels, fit.height, fit.width);
    let per = c * h * w;
    // The samples stage 1 optimised for this class, in its order (capped at max_samples).
    let idx = cepa::detect::cepa::sources_of(&fit.labels, class, r.config.cepa.max_samples);
    let mut items = Vec::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        let Some(delta) = res.deltas.get(k * per..(k + 1) * per) else {
            break;
        };
        let x = fit.image(i);
        let perturbed: Vec<f32> = x.iter().zip(delta).map(|(a, d)| a + d).collect();
        let m = delta.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
        let shown: Vec<f32> = delta.iter().map(|d| 0.5 + 0.5 * d / m).collect();
        items.push((
            format!("{k:03}-from{}", fit.labels[i]),
            to_png_bytes(&perturbed, c, h, w)?,
            to_png_bytes(&shown, c, h, w)?,
        ));
    }
    Ok(Some(Perturbations { class, items }))
}

#[cfg(test)]
mod tests {
    use cepa::detect::nc::{NcClassResult, NcConfig, NcReport};

    /// A Neural Cleanse report over `k` classes whose largest index, 2.3 at class 1, is judged
    /// against the threshold the config gives for `k` classes.
    fn report(k: usize) -> NcReport {
        let config = NcConfig::default();
        let threshold = config.threshold_for(k);
        let classes = (0..k)
            .map(|target| NcClassResult {
                target,
                l1: 10.0,
                feasible: true,
                asr: 1.0,
                steps: 1,
                cost: 0.0,
                anomaly_index: if target == 1 { 2.3 } else { 0.0 },
                mask: Vec::new(),
                pattern: Vec::new(),
            })
            .collect();
        NcReport {
            verdict_backdoored: 2.3 > threshold,
            target: (2.3 > threshold).then_some(1),
            score: 2.3,
            threshold,
            most_anomalous: 1,
            classes,
            screen: None,
            images: 10 * k,
            dims: [1, 8, 8],
            config,
            version: String::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn the_text_says_when_neural_cleanses_threshold_was_raised_for_the_class_count() {
        let ten = super::nc_text(&report(10), None, false).unwrap();
        assert!(!ten.contains("raised"), "{ten}");
        assert!(
            ten.contains("BACKDOORED, target class 1 (index 2.30 > 2.00)"),
            "{ten}"
        );
        let many = super::nc_text(&report(43), None, false).unwrap();
        assert!(
            many.contains("baseline threshold 2.00 raised to 2.56 for 43 classes (x1.278"),
            "{many}"
        );
        assert!(
            many.contains("clean (largest index 2.30 at class 1, threshold 2.56)"),
            "{many}"
        );
    }

    #[test]
    fn the_combined_verdict_shows_its_caution_between_where_it_comes_from_and_the_rule() {
        use cepa::eval::{Combination, Outcome};
        let outcome = Outcome {
            model: String::new(),
            detector: "cepa-nc-agree".into(),
            dataset: String::new(),
            attack: String::new(),
            truth_target: None,
            flagged: true,
            target: Some(8),
            most_anomalous: Some(8),
            score: 1.13,
            threshold: 0.978,
            seconds: 0.0,
        };
        let mut c = cepa::pipeline::Combined {
            how: Combination::Agree,
            outcome,
            rule: "the rule".into(),
            from: "where".into(),
            caution: Some("look again".into()),
        };
        let text = super::combined_text(&c);
        assert!(
            text.contains("  from: where\n  caution: look again\n  rule: the rule"),
            "{text}"
        );
        c.caution = None;
        assert!(!super::combined_text(&c).contains("caution"));
    }
}
