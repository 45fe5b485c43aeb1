//! `cepa eval`: run the detectors over every model of a zoo manifest and judge them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cepa::attack::AttackConfig;
use cepa::data::{ImageSet, Split};
use cepa::detect::invert::{Truth, TruthPatch, invert, measure_split};
use cepa::detect::nc::neural_cleanse;
use cepa::detect::scan;
use cepa::detect::stimulate::StimulationReport;
use cepa::detect::verdict::{SavedScan, redecide};
use cepa::eval::{
    Combination, Outcome, VerdictConfig, agree, either, evaluate, leave_one_dataset_out,
    leave_one_out_markdown, markdown, per_model_markdown, roc_svg, stimulation_outcome,
};
use cepa::model::{Classifier, Device, DeviceChoice, ModelSpec};
use cepa::settings::Settings;
use cepa::shard::Shard;
use cepa::zoo::{ManifestEntry, read_manifest};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::ExitStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DetectorChoice {
    Cepa,
    Nc,
    All,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A zoo folder with manifest.json (from `cepa zoo build`, or written by hand), or a
    /// manifest file, whose model files are read from its own folder (a subset of a zoo: a
    /// second manifest beside the first; --tables-only and --rescore open no model).
    pub zoo: PathBuf,
    /// Which detector(s) to run.
    #[arg(long, value_enum, default_value = "all")]
    pub detector: DetectorChoice,
    /// Output folder: results.jsonl (one line per model and detector; a rerun skips those),
    /// reports/, evaluation.json, evaluation.md (the tables, then every model's row),
    /// combined.jsonl (the combined verdicts model by model) and roc-DATASET.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder holding the datasets by name (default: each model's data_dir in the manifest).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Settings file (TOML with [scan], [scan.cepa], [scan.decision], [invert], [nc] sections;
    /// see `cepa::settings`). Flags override it. The resolved settings are kept in
    /// OUT/settings.json, and a rerun into OUT with other settings is refused.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Clean test images per class given to each detector (default 10).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Seed of the image sampling and the detectors (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// CEPA optimisation steps per class (default from its config).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Neural Cleanse optimisation steps per class (default from its config).
    #[arg(long)]
    pub nc_steps: Option<usize>,
    /// CEPA early stop: checks without progress after which a feasible class stops (0: off).
    #[arg(long)]
    pub plateau: Option<usize>,
    /// False-positive rate for the threshold calibrated on the clean models.
    #[arg(long, default_value_t = 0.05)]
    pub fpr: f64,
    /// Only the models whose id contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// A backdoored model counts only when its attack success rate (manifest) reaches this
    /// (METHOD.md: 0.9); the others are left out of the run and the tables, and listed.
    #[arg(long, default_value_t = 0.9)]
    pub min_asr: f64,
    /// Also invert the trigger of every backdoored model's true target (stage 2): its attack
    /// success rate and, for BadNets, the mask IoU with the true patch (inversions.jsonl and a
    /// table in evaluation.md).
    #[arg(long)]
    pub invert: bool,
    /// Held-out clean images per class on which each inversion's attack success is measured,
    /// drawn from the images the scan does not optimise on (the inversion is fitted on the
    /// scan's own). With a scan's 10 a class, one image of the 90 moves the rate by 1.1 points;
    /// 50 (450 images) measure it to about 1 point.
    #[arg(long, default_value_t = 50)]
    pub invert_holdout: usize,
    /// Run nothing: write evaluation.json, evaluation.md and the ROC pictures from the results
    /// OUT already holds (while another run is still adding to it).
    #[arg(long)]
    pub tables_only: bool,
    /// Optimise nothing: decide every saved scan again (OUT/reports/cepa/ID.json) under the
    /// `[scan.decision]` of --config, or the default rule without it, Neural Cleanse's lines
    /// under its `[nc] threshold`, and the combined rows under its `[verdict]`; rewrite
    /// results.jsonl and those settings in settings.json, then the tables. The rest of --config
    /// is not used.
    #[arg(long, conflicts_with_all = ["per_class", "seed", "steps", "nc_steps", "plateau", "invert", "tables_only"])]
    pub rescore: bool,
    /// With --rescore: read the results and saved scans from this folder instead, and leave it
    /// as it is (to compare rules offline); OUT gets the re-decided results and tables.
    #[arg(long, requires = "rescore")]
    pub from: Option<PathBuf>,
    /// Run only this task's share of the models: `I/N` (0 <= I < N), a model belonging to the
    /// shard its id hashes to, whatever other shards have done. Without the flag, Slurm's
    /// SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, or Kubernetes' JOB_COMPLETION_INDEX with
    /// CEPA_SHARDS, give the shard. A shard appends to its own results-shard-I-of-N.jsonl (and
    /// inversions-shard-I-of-N.jsonl) and writes no tables; `--tables-only` afterwards merges
    /// every shard's results and names the models that no shard finished.
    #[arg(long, conflicts_with_all = ["tables_only", "rescore"])]
    pub shard: Option<String>,
}

/// One line of `inversions.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InversionOutcome {
    pub model: String,
    pub dataset: String,
    pub attack: String,
    pub target: usize,
    pub kind: String,
    pub feasible: bool,
    pub asr: Option<f64>,
    pub mask_iou: Option<f64>,
    pub mask_iou_top_area: Option<f64>,
    pub mass_in_patch: Option<f64>,
    /// Held-out images the attack success was measured on (absent in lines written before it
    /// was recorded: 10 a class, 90 on a 10-class dataset).
    #[serde(default)]
    pub holdout_images: Option<usize>,
    pub seconds: f64,
}

pub fn run(a: EvalArgs, quiet: bool, device: DeviceChoice) -> Result<ExitStatus> {
    let manifest = read_manifest(&a.zoo)?;
    if manifest.models.is_empty() {
        bail!("the manifest of {} lists no models", a.zoo.display());
    }
    let detectors: &[&str] = match a.detector {
        DetectorChoice::Cepa => &["cepa"],
        DetectorChoice::Nc => &["nc"],
        DetectorChoice::All => &["cepa", "nc"],
    };
    std::fs::create_dir_all(a.out.join("reports"))
        .with_context(|| format!("{}", a.out.display()))?;
    let shard = resolve_shard(&a)?;
    let results = a.out.join(own_file("results", shard));
    let (settings, mut outcomes) = if a.rescore {
        rescore(&a)?
    } else {
        let settings = resolve_settings(&a)?;
        keep_settings(&a.out, &settings)?;
        // Every shard's results: a model another task finished is not run again.
        let outcomes = read_all(&a.out, "results")?;
        (settings, outcomes)
    };
    let weak: Vec<&ManifestEntry> = manifest
        .models
        .iter()
        .filter(|m| m.attack_success_rate.is_some_and(|r| r < a.min_asr))
        .collect();
    // Listed as left out: the weak models among those this run covers.
    let weak_listed: Vec<&&ManifestEntry> = weak
        .iter()
        .filter(|m| a.only.as_deref().is_none_or(|s| m.id.contains(s)))
        .collect();
    let kept: BTreeSet<&str> = manifest
        .models
        .iter()
        .filter(|m| !weak.iter().any(|w| w.id == m.id))
        .map(|m| m.id.as_str())
        .collect();
    outcomes.retain(|o| kept.contains(o.model.as_str()));
    let done: BTreeSet<(String, String)> = outcomes
        .iter()
        .map(|o| (o.model.clone(), o.detector.clone()))
        .collect();
    let mut data: BTreeMap<PathBuf, ImageSet> = BTreeMap::new();
    let device = device.device(true)?;
    let todo: Vec<(&ManifestEntry, &str)> = manifest
        .models
        .iter()
        .filter(|m| kept.contains(m.id.as_str()))
        .filter(|m| a.only.as_deref().is_none_or(|s| m.id.contains(s)))
        .flat_map(|m| detectors.iter().map(move |d| (m, *d)))
        .filter(|(m, d)| !done.contains(&(m.id.clone(), d.to_string())))
        .filter(|(m, _)| shard.is_none_or(|s| s.owns(&m.id)))
        .filter(|_| !a.tables_only && !a.rescore)
        .collect();
    if !quiet {
        eprintln!(
            "{} models x {} detector(s): {} results already in {}, {} to run",
            manifest.models.len(),
            detectors.len(),
            done.len(),
            results.display(),
            todo.len()
        );
    }
    for (i, (m, det)) in todo.iter().enumerate() {
        let (model, images) = open(&a, m, &mut data, &device)?;
        let (o, report) = match *det {
            "cepa" => run_cepa(&settings, m, &model, images)?,
            _ => run_nc(&settings, m, &model, images)?,
        };
        let rdir = a.out.join("reports").join(det);
        std::fs::create_dir_all(&rdir)?;
        // The report is whole before the result line that points at it is written.
        write_whole(&rdir.join(format!("{}.json", m.id)), &report)?;
        append(&results, &o)?;
        if !quiet {
            eprintln!(
                "[{}/{}] {det} {}: {} (truth {}), score {:.2}, {:.1} s",
                i + 1,
                todo.len(),
                m.id,
                o.target
                    .map_or_else(|| "clean".into(), |t| format!("target {t}")),
                m.target
                    .map_or_else(|| "clean".into(), |t| format!("target {t}")),
                o.score,
                o.seconds
            );
        }
        outcomes.push(o);
    }
    if a.invert {
        run_inversions(
            &a,
            &settings,
            &manifest.models,
            &kept,
            shard,
            &mut data,
            Progress {
                quiet,
                device: &device,
            },
        )?;
    }
    if let Some(s) = shard {
        if !quiet {
            eprintln!(
                "shard {s}: done ({} in {}); when every shard is done, `cepa eval {} --out {} \
                 --tables-only` merges them into the tables",
                todo.len(),
                results.display(),
                a.zoo.display(),
                a.out.display()
            );
        }
        return Ok(ExitStatus::Success);
    }
    let mut inversions: Vec<InversionOutcome> = read_all(source(&a), "inversions")?;
    inversions.retain(|d| kept.contains(d.model.as_str()));
    // What no run has finished: named, so that a merge of a job array that lost a task says so.
    // A run that only reads (--tables-only, --rescore) expects the detectors its folder has.
    let present: BTreeSet<&str> = outcomes.iter().map(|o| o.detector.as_str()).collect();
    let expected: Vec<&str> = if a.tables_only || a.rescore {
        present.into_iter().collect()
    } else {
        detectors.to_vec()
    };
    let unfinished: Vec<String> = manifest
        .models
        .iter()
        .filter(|m| kept.contains(m.id.as_str()))
        .filter(|m| a.only.as_deref().is_none_or(|s| m.id.contains(s)))
        .flat_map(|m| expected.iter().map(move |d| (m, *d)))
        .filter(|(m, d)| !outcomes.iter().any(|o| o.model == m.id && o.detector == *d))
        .map(|(m, d)| format!("{} ({d})", m.id))
        .collect();
    if !unfinished.is_empty() {
        tracing::warn!(
            "{} result(s) missing, no run finished them: {}",
            unfinished.len(),
            unfinished.join(", ")
        );
    }
    // Channel stimulation, from CEPA's saved scans: a row of its own and a voice of `agree`.
    // Scans saved before it existed have none, and their tables state the two-detector rule
    // that judged them.
    // Scans saved before its reading of single values existed are judged, and described, by
    // the channels' reading alone.
    let (stim, positions) = stimulation_outcomes(&a.out, &outcomes, &settings.verdict)?;
    let verdict = VerdictConfig {
        stimulation_threshold: if stim.is_empty() {
            0.0
        } else {
            settings.verdict.stimulation_threshold
        },
        stimulation_positions_threshold: if positions {
            settings.verdict.stimulation_positions_threshold
        } else {
            0.0
        },
        ..settings.verdict.clone()
    };
    let result_lines = outcomes.len();
    outcomes.extend(stim);
    // Where both detectors judged a model, the tables also show them combined, both ways
    // ("cepa-or-nc", "cepa-nc-agree").
    let combined = [either(&outcomes, &verdict), agree(&outcomes, &verdict)].concat();
    let any_combined = !combined.is_empty();
    // The combined verdicts model by model (derived from results.jsonl, so written whole).
    let combined_lines: String = combined
        .iter()
        .map(|o| serde_json::to_string(o).map(|l| l + "\n"))
        .collect::<std::result::Result<_, _>>()?;
    write_whole(&a.out.join("combined.jsonl"), &combined_lines)?;
    let judged = [outcomes.clone(), combined].concat();
    let ev = evaluate(&judged, a.fpr);
    std::fs::write(
        a.out.join("evaluation.json"),
        serde_json::to_string_pretty(&ev)?,
    )?;
    let mut md = format!(
        "# Evaluation of {}\n\n{} results from `{}`; {} clean images per class, seed {}.\n\
         Per family: that family's backdoored models with the dataset's clean models.\n\n",
        a.zoo.display(),
        result_lines,
        results.display(),
        settings.scan.per_class,
        settings.scan.seed
    );
    if any_combined {
        md.push_str(&format!(
            "The two detectors combined:\n- `{}`: {}.\n- `{}`: {}.\n\n",
            Combination::Either.name(),
            Combination::Either.rule(&verdict),
            Combination::Agree.name(),
            Combination::Agree.rule(&verdict)
        ));
    }
    md.push_str(&markdown(&ev));
    let held_out = leave_one_dataset_out(&judged, a.fpr);
    let lodo_path = a.out.join("leave-one-dataset-out.json");
    if held_out.folds.is_empty() {
        // One dataset: no table, and none left from an earlier run.
        if lodo_path.exists() {
            std::fs::remove_file(&lodo_path).with_context(|| format!("{}", lodo_path.display()))?;
        }
    } else {
        write_whole(
            &lodo_path,
            &(serde_json::to_string_pretty(&held_out)? + "\n"),
        )?;
        md.push_str(&leave_one_out_markdown(&held_out));
    }
    md.push_str(&per_model_markdown(&judged));
    if !weak_listed.is_empty() {
        md.push_str(&format!(
            "Left out (attack success below {}, so not backdoored in fact):\n\n",
            a.min_asr
        ));
        for w in &weak_listed {
            md.push_str(&format!(
                "- {} ({}, attack success {:.3})\n",
                w.id,
                w.attack,
                w.attack_success_rate.unwrap_or(0.0)
            ));
        }
        md.push('\n');
    }
    if !unfinished.is_empty() {
        md.push_str(&format!(
            "Not finished (no run wrote a result for them): {}.\n\n",
            unfinished.join(", ")
        ));
    }
    if !inversions.is_empty() {
        md.push_str(&inversion_table(&inversions));
    }
    std::fs::write(a.out.join("evaluation.md"), &md)?;
    let datasets: BTreeSet<&str> = outcomes.iter().map(|o| o.dataset.as_str()).collect();
    for ds in datasets {
        std::fs::write(a.out.join(format!("roc-{ds}.svg")), roc_svg(&judged, ds))?;
    }
    crate::out(&md);
    Ok(ExitStatus::Success)
}

/// Channel stimulation's outcome ([`cepa::eval::stimulation_outcome`]) of every model whose
/// CEPA scan, saved in `out`/reports/cepa, has one (scans saved before stimulation existed, and
/// fully connected networks, have none); none when `[verdict] stimulation_threshold` is 0. And
/// whether any of them has the reading of single values.
fn stimulation_outcomes(
    out: &Path,
    outcomes: &[Outcome],
    cfg: &VerdictConfig,
) -> Result<(Vec<Outcome>, bool)> {
    if cfg.stimulation_threshold <= 0.0 {
        return Ok((Vec::new(), false));
    }
    let mut v = Vec::new();
    let mut positions = false;
    for o in outcomes.iter().filter(|o| o.detector == "cepa") {
        let path = out
            .join("reports")
            .join("cepa")
            .join(format!("{}.json", o.model));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let report: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a saved scan", path.display()))?;
        let Some(s) = report.get("stimulation") else {
            continue;
        };
        let s = StimulationReport::deserialize(s)
            .with_context(|| format!("{}: not a stimulation report", path.display()))?;
        positions |= s.positions.is_some();
        v.extend(stimulation_outcome(o, &s, cfg));
    }
    Ok((v, positions))
}

/// The folder results and saved scans are read from: `--from`, or OUT.
fn source(a: &EvalArgs) -> &Path {
    a.from.as_deref().unwrap_or(&a.out)
}

/// `--rescore`: the source folder's settings with the decision of `--config` (or the default),
/// and its results decided again under them, CEPA's from the saved scans and Neural Cleanse's
/// by its threshold. Written to OUT: settings.json, results.jsonl and every CEPA scan's report
/// with its decision redone (reports/cepa/ID.json; each file whole, through a temporary file).
fn rescore(a: &EvalArgs) -> Result<(Settings, Vec<Outcome>)> {
    let from = source(a);
    let kept_path = from.join("settings.json");
    let text = std::fs::read_to_string(&kept_path)
        .with_context(|| format!("{}: no settings of the saved scans", kept_path.display()))?;
    let mut settings: Settings = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a settings file", kept_path.display()))?;
    let rule = Settings::load(a.config.as_deref())?;
    settings.scan.decision = rule.scan.decision;
    settings.nc.threshold = rule.nc.threshold;
    settings.nc.reference_classes = rule.nc.reference_classes;
    settings.verdict = rule.verdict;
    let mut outcomes: Vec<Outcome> = read_all(from, "results")?;
    // CEPA's first: Neural Cleanse's threshold takes the model's class count from its scan.
    let mut order: Vec<usize> = (0..outcomes.len()).collect();
    order.sort_by_key(|&i| outcomes[i].detector != "cepa");
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    for i in order {
        let o = &mut outcomes[i];
        match o.detector.as_str() {
            "cepa" => {
                let path = from
                    .join("reports")
                    .join("cepa")
                    .join(format!("{}.json", o.model));
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("{}: the saved scan of {}", path.display(), o.model)
                })?;
                let report: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a saved scan", path.display()))?;
                let saved = SavedScan::deserialize(&report)
                    .with_context(|| format!("{}: not a saved scan", path.display()))?;
                classes.insert(o.model.clone(), saved.classes());
                let d = redecide(&saved, &settings.scan.decision)
                    .with_context(|| format!("{}", path.display()))?;
                o.flagged = d.backdoored;
                o.target = d.target;
                o.most_anomalous = Some(d.most_anomalous);
                o.score = d.score;
                o.threshold = d.threshold;
                let report = redecided_report(report, &d, &settings, &path)?;
                let rdir = a.out.join("reports").join("cepa");
                std::fs::create_dir_all(&rdir)
                    .with_context(|| format!("cannot create {}", rdir.display()))?;
                write_whole(&rdir.join(format!("{}.json", o.model)), &report)?;
            }
            "nc" => {
                let k = match classes.get(&o.model) {
                    Some(&k) => k,
                    None if settings.nc.reference_classes < 2 => 0,
                    None => bail!(
                        "{}: Neural Cleanse's result for {} has no CEPA scan beside it to say its \
                         class count, which [nc] reference_classes = {} needs",
                        from.display(),
                        o.model,
                        settings.nc.reference_classes
                    ),
                };
                o.threshold = settings.nc.threshold_for(k);
                o.flagged = o.score > o.threshold;
                o.target = if o.flagged { o.most_anomalous } else { None };
            }
            _ => {}
        }
    }
    write_whole(
        &a.out.join("settings.json"),
        &(serde_json::to_string_pretty(&settings)? + "\n"),
    )?;
    let lines: Vec<String> = outcomes
        .iter()
        .map(serde_json::to_string)
        .collect::<serde_json::Result<_>>()?;
    write_whole(&a.out.join("results.jsonl"), &(lines.join("\n") + "\n"))?;
    // Rescored in place, the shards' files are now merged into results.jsonl.
    if from == a.out.as_path() {
        for f in shard_files(&a.out, "results")? {
            std::fs::remove_file(&f).with_context(|| format!("{}", f.display()))?;
        }
    }
    Ok((settings, outcomes))
}

/// A saved CEPA scan (`v`, read from `path`) with its decision replaced by `d`, decided under
/// `settings`: the per-class statistics and indices, the top-level verdict, target, score,
/// p-value and sources, and `config.decision` are the new decision's; `rescored` says from which
/// file and by which version. Everything the scan measured is kept, so the result can be decided
/// again (a second rescore under the same rule writes the same file).
fn redecided_report(
    mut v: serde_json::Value,
    d: &cepa::detect::verdict::Decision,
    settings: &Settings,
    path: &Path,
) -> Result<String> {
    let obj = v
        .as_object_mut()
        .with_context(|| format!("{}: not a saved scan (no JSON object)", path.display()))?;
    obj.insert("decision".into(), serde_json::to_value(d)?);
    obj.insert(
        "verdict".into(),
        scan::verdict_word(d.backdoored).to_string().into(),
    );
    obj.insert("target".into(), serde_json::to_value(d.target)?);
    obj.insert("score".into(), serde_json::to_value(d.score)?);
    obj.insert("p_value".into(), serde_json::to_value(d.p_value)?);
    obj.insert("sources".into(), serde_json::to_value(&d.sources)?);
    if let Some(config) = obj.get_mut("config").and_then(|c| c.as_object_mut()) {
        config.insert(
            "decision".into(),
            serde_json::to_value(&settings.scan.decision)?,
        );
    }
    obj.insert(
        "rescored".into(),
        serde_json::json!({
            "from": path.display().to_string(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Write `text` to `path` through a temporary file beside it and a rename, so that a reader (or
/// a kill) never sees half of it.
fn write_whole(path: &Path, text: &str) -> Result<()> {
    // The temporary name is this process's own (shards write side by side), and the data is on
    // disk before the rename makes it visible.
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The settings file with the flags applied: `--seed` seeds every detector, `--steps` and
/// `--plateau` are CEPA's, `--nc-steps` Neural Cleanse's.
fn resolve_settings(a: &EvalArgs) -> Result<Settings> {
    let mut s = Settings::load(a.config.as_deref())?;
    if let Some(n) = a.per_class {
        s.scan.per_class = n;
    }
    if let Some(seed) = a.seed {
        s.scan.seed = seed;
        s.nc.seed = seed;
    }
    // Stage 2 draws its initial trigger from the scan's seed, as `cepa scan --out` does.
    s.invert.seed = s.scan.seed;
    if let Some(n) = a.steps {
        s.scan.cepa.steps = n;
    }
    if let Some(p) = a.plateau {
        s.scan.cepa.plateau_checks = p;
    }
    if let Some(n) = a.nc_steps {
        s.nc.steps = n;
    }
    Ok(s)
}

/// Results in one folder come from one set of settings: the first run writes
/// `settings.json`, a later one must resolve to the same.
fn keep_settings(out: &Path, s: &Settings) -> Result<()> {
    let path = out.join("settings.json");
    let now = serde_json::to_value(s)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut before: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a settings file", path.display()))?;
            // Keys added since whose absence meant other behaviour than their default: results
            // made before them ran without the class-count threshold, without Neural
            // Cleanse's image cap, and without screening.
            for (section, key, old) in [
                (
                    &["scan"][..],
                    "screen",
                    serde_json::json!({ "min_classes": 0 }),
                ),
                (
                    &["scan", "decision"][..],
                    "reference_classes",
                    serde_json::json!(0),
                ),
                (&["nc"][..], "max_images", serde_json::json!(usize::MAX)),
                (
                    &["nc"][..],
                    "screen",
                    serde_json::json!({ "min_classes": 0 }),
                ),
            ] {
                let at = section.iter().try_fold(&mut before, |v, k| v.get_mut(*k));
                if let Some(serde_json::Value::Object(m)) = at {
                    m.entry(key).or_insert(old);
                }
            }
            // Read through the typed settings: a key added since, at its default, is no change.
            let before = serde_json::from_value::<Settings>(before.clone())
                .ok()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(before);
            if before != now {
                bail!(
                    "{} holds results made with other settings ({}); rerun with the same \
                     settings, or write to another --out",
                    out.display(),
                    settings_diff(&before, &now, "").join(", ")
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_whole(&path, &(serde_json::to_string_pretty(&now)? + "\n"))
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The keys whose values differ, as `path: old -> new`.
fn settings_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    let null = Value::Null;
                    settings_diff(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &here)
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{at}: {a} -> {b}")],
    }
}

/// The model of `m` with its spec, and its dataset's test images (read once into `data`).
fn open<'d>(
    a: &EvalArgs,
    m: &ManifestEntry,
    data: &'d mut BTreeMap<PathBuf, ImageSet>,
    device: &cepa::model::Device,
) -> Result<(Classifier, &'d ImageSet)> {
    let dir = data_dir(a, m);
    if !data.contains_key(&dir) {
        let set = cepa::data::load(&dir, Split::Test)
            .with_context(|| format!("test images of {} ({})", m.id, dir.display()))?;
        data.insert(dir.clone(), set);
    }
    // A manifest given as a file names its models relative to its own folder.
    let zoo = if a.zoo.is_file() {
        a.zoo.parent().unwrap_or(Path::new("."))
    } else {
        a.zoo.as_path()
    };
    let spec = ModelSpec::from_file(&zoo.join(&m.spec))?;
    let model = Classifier::load(&zoo.join(&m.path), &spec, device)
        .with_context(|| format!("model {}", m.id))?;
    Ok((model, &data[&dir]))
}

fn data_dir(a: &EvalArgs, m: &ManifestEntry) -> PathBuf {
    match &a.data_root {
        Some(root) => root.join(&m.dataset),
        None => PathBuf::from(&m.data_dir),
    }
}

fn run_cepa(
    settings: &Settings,
    m: &ManifestEntry,
    model: &Classifier,
    images: &ImageSet,
) -> Result<(Outcome, String)> {
    let cfg = &settings.scan;
    let r = scan(model, images, cfg).with_context(|| format!("CEPA scan of {}", m.id))?;
    let o = Outcome {
        model: m.id.clone(),
        detector: "cepa".into(),
        dataset: m.dataset.clone(),
        attack: m.attack.clone(),
        truth_target: m.target,
        flagged: r.decision.backdoored,
        target: r.target,
        most_anomalous: Some(r.decision.most_anomalous),
        score: r.score,
        threshold: r.decision.threshold,
        seconds: r.seconds,
    };
    Ok((o, report_json(&r, model)?))
}

/// A detector's report for OUT/reports, with the device that computed it.
fn report_json(r: &impl serde::Serialize, model: &Classifier) -> Result<String> {
    let mut v = serde_json::to_value(r)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "device".into(),
            cepa::model::device_label(model.device()).into(),
        );
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

fn run_nc(
    settings: &Settings,
    m: &ManifestEntry,
    model: &Classifier,
    images: &ImageSet,
) -> Result<(Outcome, String)> {
    let cfg = &settings.nc;
    // The images `cepa scan` gives Neural Cleanse: those CEPA optimises on.
    let scan = &settings.scan;
    let (sample, _) = cepa::detect::invert::split_sample(
        images,
        scan.per_class,
        scan.holdout_per_class,
        scan.seed,
    )?;
    let r = neural_cleanse(model, &sample, cfg, &|_| {})
        .with_context(|| format!("Neural Cleanse on {}", m.id))?;
    let o = Outcome {
        model: m.id.clone(),
        detector: "nc".into(),
        dataset: m.dataset.clone(),
        attack: m.attack.clone(),
        truth_target: m.target,
        flagged: r.verdict_backdoored,
        target: r.target,
        most_anomalous: Some(r.most_anomalous),
        score: r.score,
        threshold: r.threshold,
        seconds: r.seconds,
    };
    Ok((o, report_json(&r, model)?))
}

/// The shard a run is: `--shard`, or the scheduler's environment; none for `--tables-only`
/// and `--rescore`, which read every shard's results.
fn resolve_shard(a: &EvalArgs) -> Result<Option<Shard>> {
    if a.tables_only || a.rescore {
        return Ok(None);
    }
    Ok(Shard::resolve(a.shard.as_deref())?)
}

/// `STEM.jsonl`, or a shard's own `STEM-shard-I-of-N.jsonl`.
fn own_file(stem: &str, shard: Option<Shard>) -> String {
    match shard {
        Some(s) => format!("{stem}-{}.jsonl", s.tag()),
        None => format!("{stem}.jsonl"),
    }
}

/// The shards' `STEM-shard-*.jsonl` files in `dir`, in name order.
fn shard_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let prefix = format!("{stem}-shard-");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// The lines of `STEM.jsonl` and of every shard's `STEM-shard-*.jsonl` in `dir`, each model and
/// detector once (the first line found is kept).
fn read_all<T: serde::de::DeserializeOwned + Keyed>(dir: &Path, stem: &str) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    let mut seen = BTreeSet::new();
    let files = std::iter::once(dir.join(format!("{stem}.jsonl"))).chain(shard_files(dir, stem)?);
    for path in files {
        for line in read_lines::<T>(&path)? {
            if seen.insert(line.key()) {
                out.push(line);
            } else {
                tracing::warn!(
                    "{}: {:?} again; the first one is kept",
                    path.display(),
                    line.key()
                );
            }
        }
    }
    Ok(out)
}

/// What identifies a line: the model, and the detector for results.
trait Keyed {
    fn key(&self) -> (String, String);
}

impl Keyed for Outcome {
    fn key(&self) -> (String, String) {
        (self.model.clone(), self.detector.clone())
    }
}

impl Keyed for InversionOutcome {
    fn key(&self) -> (String, String) {
        (self.model.clone(), String::new())
    }
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(i, l)) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => out.push(v),
            // A run killed while appending (or still appending: another shard's file) leaves a
            // cut last line: it is no result, and the file is left as it is. Only its own
            // writer repairs it, before appending ([`append`]); the result is redone.
            Err(_) if k + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(
                    "{} line {}: cut short; it will be redone",
                    path.display(),
                    i + 1
                );
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{} line {}: not a result", path.display(), i + 1));
            }
        }
    }
    Ok(out)
}

/// Append one line to a results file only this process writes, as one write, synced. A last
/// line that a kill cut is removed first (when it is not a whole record) or ended (when it is),
/// so that the new line never joins it.
fn append(path: &Path, o: &impl Serialize) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(path)
        && !text.is_empty()
        && !text.ends_with('\n')
    {
        let start = text.rfind('\n').map_or(0, |p| p + 1);
        let whole = serde_json::from_str::<serde_json::Value>(&text[start..]).is_ok();
        let fixed = if whole {
            format!("{text}\n")
        } else {
            text[..start].to_string()
        };
        std::fs::write(path, fixed).with_context(|| format!("{}", path.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(format!("{}\n", serde_json::to_string(o)?).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // On disk before the run goes on: a kill after this line leaves it whole, one before it
    // leaves at most a cut last line, which the next read drops and redoes.
    f.sync_data()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

/// How a run reports progress, and where it computes.
struct Progress<'a> {
    quiet: bool,
    device: &'a Device,
}

/// Stage 2 on every kept backdoored model (resumable through `inversions.jsonl`).
fn run_inversions(
    a: &EvalArgs,
    settings: &Settings,
    models: &[ManifestEntry],
    kept: &BTreeSet<&str>,
    shard: Option<Shard>,
    data: &mut BTreeMap<PathBuf, ImageSet>,
    Progress { quiet, device }: Progress,
) -> Result<()> {
    let path = a.out.join(own_file("inversions", shard));
    let done: Vec<InversionOutcome> = read_all(&a.out, "inversions")?;
    let todo: Vec<&ManifestEntry> = models
        .iter()
        .filter(|m| kept.contains(m.id.as_str()) && m.target.is_some())
        .filter(|m| a.only.as_deref().is_none_or(|s| m.id.contains(s)))
        .filter(|m| !done.iter().any(|d| d.model == m.id))
        .filter(|m| shard.is_none_or(|s| s.owns(&m.id)))
        .filter(|_| !a.tables_only)
        .collect();
    for (i, m) in todo.iter().enumerate() {
        let (model, images) = open(a, m, data, device)?;
        let target = m.target.unwrap_or(0);
        let sc = &settings.scan;
        let (fit, holdout) = measure_split(
            images,
            sc.per_class,
            sc.holdout_per_class,
            a.invert_holdout,
            sc.seed,
        )?;
        let mut inv = invert(&model, &fit, holdout.as_ref(), target, &settings.invert)
            .with_context(|| format!("inversion on {}", m.id))?;
        let truth = Truth {
            target: Some(target),
            patch: true_patch(m, images),
            pattern: None,
        };
        let cmp = inv.compare(&truth).clone();
        let o = InversionOutcome {
            model: m.id.clone(),
            dataset: m.dataset.clone(),
            attack: m.attack.clone(),
            target,
            kind: inv.kind().name().into(),
            feasible: inv.best.feasible,
            asr: inv.asr,
            mask_iou: cmp.mask_iou,
            mask_iou_top_area: cmp.mask_iou_top_area,
            mass_in_patch: cmp.mass_in_patch,
            holdout_images: Some(inv.holdout_images),
            seconds: inv.seconds,
        };
        append(&path, &o)?;
        if !quiet {
            eprintln!(
                "[{}/{}] invert {}: {} trigger, ASR {}, IoU {}, {:.1} s",
                i + 1,
                todo.len(),
                m.id,
                o.kind,
                o.asr.map_or_else(|| "-".into(), |v| format!("{v:.3}")),
                o.mask_iou.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                o.seconds
            );
        }
    }
    Ok(())
}

/// The true patch of a BadNets model, from its resolved attack in the manifest (or, for models
/// not built by the zoo, a `params.patch` object like the example's `truth.json`).
fn true_patch(m: &ManifestEntry, images: &ImageSet) -> Option<TruthPatch> {
    if let Some(p) = m.params.get("patch") {
        return serde_json::from_value(p.clone()).ok();
    }
    let attack: AttackConfig = serde_json::from_value(m.params.get("attack")?.clone()).ok()?;
    match attack {
        AttackConfig::BadNets(b) => {
            let (row, col) = b.fixed_position(images.height, images.width)?;
            Some(TruthPatch {
                row,
                col,
                size: Some(b.patch),
                height: None,
                width: None,
            })
        }
        _ => None,
    }
}

/// Inversion results per dataset and family, as Markdown.
fn inversion_table(inv: &[InversionOutcome]) -> String {
    let mut groups: BTreeMap<(String, String), Vec<&InversionOutcome>> = BTreeMap::new();
    for o in inv {
        groups
            .entry((o.dataset.clone(), o.attack.clone()))
            .or_default()
            .push(o);
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
    let mut s = String::from(
        "### Trigger inversion (stage 2) at the true target\n\n\
         | dataset | family | n | mean ASR | ASR >= 0.90 | held-out images | forms (additive/mask) | mean mask IoU | mean mass in patch | median s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((ds, fam), v) in &groups {
        let asr: Vec<f64> = v.iter().filter_map(|o| o.asr).collect();
        let hit = asr.iter().filter(|&&x| x >= 0.9).count();
        let add = v.iter().filter(|o| o.kind == "additive").count();
        let secs: Vec<f64> = v.iter().map(|o| o.seconds).collect();
        let held: BTreeSet<String> = v
            .iter()
            .map(|o| {
                o.holdout_images
                    .map_or_else(|| "?".into(), |n| n.to_string())
            })
            .collect();
        s.push_str(&format!(
            "| {ds} | {fam} | {} | {} | {hit}/{} | {} | {add}/{} | {} | {} | {:.1} |\n",
            v.len(),
            cell(mean(asr.clone())),
            asr.len(),
            held.into_iter().collect::<Vec<_>>().join(", "),
            v.len() - add,
            cell(mean(v.iter().filter_map(|o| o.mask_iou).collect())),
            cell(mean(v.iter().filter_map(|o| o.mass_in_patch).collect())),
            cepa::detect::stats::median(&secs),
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_settings_without_a_later_key_still_match_but_other_values_do_not() {
        let dir = std::env::temp_dir().join(format!("cepa-eval-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Settings::default();
        // As written before `scan.cepa.norm` existed.
        let mut old = serde_json::to_value(&s).unwrap();
        old["scan"]["cepa"]
            .as_object_mut()
            .unwrap()
            .remove("norm")
            .unwrap();
        std::fs::write(dir.join("settings.json"), old.to_string()).unwrap();
        keep_settings(&dir, &s).unwrap();
        let mut other = s.clone();
        other.scan.cepa.steps += 1;
        let err = keep_settings(&dir, &other).unwrap_err().to_string();
        assert!(err.contains("scan.cepa.steps: 120 -> 121"), "{err}");
        // Keys whose absence meant other behaviour: a folder made before them is refused.
        for (section, key, shown) in [
            (
                "decision",
                "reference_classes",
                "scan.decision.reference_classes: 0 -> 10",
            ),
            (
                "nc",
                "max_images",
                "nc.max_images: 18446744073709551615 -> 100",
            ),
        ] {
            let mut old = serde_json::to_value(&s).unwrap();
            let at = if section == "nc" {
                &mut old["nc"]
            } else {
                &mut old["scan"]["decision"]
            };
            at.as_object_mut().unwrap().remove(key).unwrap();
            std::fs::write(dir.join("settings.json"), old.to_string()).unwrap();
            let err = keep_settings(&dir, &s).unwrap_err().to_string();
            assert!(err.contains(shown), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_line_cut_by_a_kill_is_dropped_and_its_writer_repairs_the_file() {
        let dir = std::env::temp_dir().join(format!("cepa-eval-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": ").unwrap();
        let v: Vec<serde_json::Value> = read_lines(&path).unwrap();
        assert_eq!(v.len(), 2);
        // A reader leaves the file alone (it may be another shard's, still being written)...
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("{\"a\": ")
        );
        // ...its writer removes the cut piece before it appends.
        append(&path, &serde_json::json!({"a": 3})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\": 1}\n{\"a\": 2}\n{\"a\":3}\n"
        );
        // A whole record that lost only its newline is kept and ended.
        std::fs::write(&path, "{\"a\": 1}").unwrap();
        append(&path, &serde_json::json!({"a": 2})).unwrap();
        let v: Vec<serde_json::Value> = read_lines(&path).unwrap();
        assert_eq!(v.len(), 2);
        // A broken line that is not the last one is an error, not silently skipped.
        std::fs::write(&path, "{\"a\": 1}\nnot json\n{\"a\": 2}\n").unwrap();
        assert!(read_lines::<serde_json::Value>(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
