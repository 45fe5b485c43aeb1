//! `cepa zoo build`: train a population of clean and backdoored models from a config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cepa::model::DeviceChoice;
use cepa::shard::Shard;
use cepa::zoo::{self, DataPair, ZooConfig};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ExitStatus;

#[derive(Subcommand, Debug)]
pub enum ZooCommand {
    /// Train every model of a config into a folder with manifest.json (resumable).
    Build(BuildArgs),
    /// Make a derived dataset a zoo config can name: `two-digit-mnist`, 100 classes (two MNIST
    /// digits side by side, 28 x 56, class 10a + b; train pairs from the train split, test
    /// pairs from the test split), written as .npy files.
    Dataset(DatasetArgs),
}

#[derive(Args, Debug)]
pub struct DatasetArgs {
    /// Which dataset: `two-digit-mnist`.
    pub kind: String,
    /// The source dataset folder (MNIST for two-digit-mnist).
    #[arg(long)]
    pub from: PathBuf,
    /// Output folder (train_images.npy, train_labels.npy, test_images.npy, test_labels.npy).
    #[arg(long)]
    pub out: PathBuf,
    /// Training images (balanced over the 100 classes).
    #[arg(long, default_value_t = 30000)]
    pub train: usize,
    /// Test images.
    #[arg(long, default_value_t = 5000)]
    pub test: usize,
    /// Seed of the pairing.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The zoo config (TOML), e.g. zoo/smoke.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder: one ONNX file, spec and entry per model, and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Only the models whose id contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Build only this task's share of the models: `I/N` (0 <= I < N), as `cepa eval --shard`
    /// (the same models go to the same shard). Without the flag, Slurm's SLURM_ARRAY_TASK_ID
    /// and SLURM_ARRAY_TASK_COUNT, or Kubernetes' JOB_COMPLETION_INDEX with CEPA_SHARDS, give
    /// the shard. Every task rewrites manifest.json with all the models finished so far; a
    /// plain rerun after the array trains nothing and writes the complete manifest.
    #[arg(long)]
    pub shard: Option<String>,
}

pub fn run(cmd: ZooCommand, quiet: bool, device: DeviceChoice) -> Result<ExitStatus> {
    match cmd {
        ZooCommand::Build(a) => build(a, quiet, device),
        ZooCommand::Dataset(a) => dataset(a),
    }
}

fn dataset(a: DatasetArgs) -> Result<ExitStatus> {
    use cepa::data::{Split, pairs};
    if a.kind != "two-digit-mnist" {
        anyhow::bail!("unknown dataset kind '{}' (known: two-digit-mnist)", a.kind);
    }
    for (split, n, seed) in [
        (Split::Train, a.train, a.seed),
        (Split::Test, a.test, a.seed.wrapping_add(1)),
    ] {
        let digits = cepa::data::load(&a.from, split)
            .with_context(|| format!("cannot read the digits of {}", a.from.display()))?;
        let set = pairs::two_digit(&digits, n, seed)?;
        pairs::write_npy_split(&a.out, &split.to_string(), &set)
            .with_context(|| format!("cannot write {}", a.out.display()))?;
        tracing::info!("{split}: {n} two-digit images from {} digits", digits.len());
    }
    crate::out(&format!(
        "wrote {} ({} train, {} test two-digit images, 100 classes)\n",
        a.out.display(),
        a.train,
        a.test
    ));
    Ok(ExitStatus::Success)
}

fn build(a: BuildArgs, quiet: bool, device: DeviceChoice) -> Result<ExitStatus> {
    let cfg = ZooConfig::from_file(&a.config)?;
    let mut plans = zoo::plan(&cfg)?;
    if let Some(only) = &a.only {
        plans.retain(|p| p.id.contains(only.as_str()));
    }
    // Read each dataset the selected models use once; their attacks are resolved against its
    // image shape.
    let mut data: BTreeMap<String, DataPair> = BTreeMap::new();
    for p in &plans {
        if !data.contains_key(&p.dataset) {
            let pair = DataPair::load(&p.data_dir)
                .with_context(|| format!("dataset '{}' of {}", p.dataset, a.config.display()))?;
            data.insert(p.dataset.clone(), pair);
        }
    }
    let shapes = data.iter().map(|(k, v)| (k.clone(), v.shape())).collect();
    let all = zoo::resolve(&cfg, &shapes)?;
    let shard = Shard::resolve(a.shard.as_deref())?;
    plans = all
        .iter()
        .filter(|p| a.only.as_deref().is_none_or(|o| p.id.contains(o)))
        .filter(|p| shard.is_none_or(|s| s.owns(&p.id)))
        .cloned()
        .collect();
    // A model built from an older version of the config is not silently kept.
    let stale: Vec<String> = plans
        .iter()
        .filter_map(|p| zoo::stale_reason(&a.out, p).map(|why| format!("{} ({why})", p.id)))
        .collect();
    if !stale.is_empty() {
        anyhow::bail!(
            "{} holds {} model(s) built with other settings than {} now gives: {}. Delete \
             their files (ID.json, ID.onnx, ID.cepa.toml) to rebuild them, or build into another \
             --out",
            a.out.display(),
            stale.len(),
            a.config.display(),
            stale.join(", ")
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let device = device.device(true)?;
    let todo = plans
        .iter()
        .filter(|p| !zoo::is_done(&a.out, &p.id))
        .count();
    eprintln!(
        "{} models in {}, {} already built, {todo} to train",
        plans.len(),
        a.config.display(),
        plans.len() - todo
    );
    // Where no progress bar can be drawn (a log file, a Slurm job, a pipe), one line per epoch
    // says how far a model of hours is.
    let plain = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut done = 0;
    for p in &plans {
        if zoo::is_done(&a.out, &p.id) {
            continue;
        }
        done += 1;
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(p.recipe.train.epochs as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("[{done}/{todo}] {}", p.id));
            b
        };
        if let Some(e) = zoo::checkpoint_epochs(&a.out, &p.id) {
            bar.set_position(e as u64);
            bar.suspend(|| {
                eprintln!(
                    "{}: resuming after epoch {e} of {} from {}",
                    p.id,
                    p.recipe.train.epochs,
                    zoo::checkpoint_path(&a.out, &p.id).display()
                )
            });
        }
        let pair = &data[&p.dataset];
        let started = std::time::Instant::now();
        let entry = zoo::build_model(p, pair, &a.out, &device, &mut |e, epochs, loss, acc| {
            bar.set_position(e as u64);
            bar.set_message(format!("loss {loss:.3} train acc {acc:.3}"));
            if plain {
                eprintln!(
                    "{}: epoch {e}/{epochs}, loss {loss:.3}, train accuracy {acc:.3} ({:.0} s)",
                    p.id,
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .with_context(|| format!("model {}", p.id))?;
        bar.finish_and_clear();
        let asr = entry
            .attack_success_rate
            .map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        eprintln!(
            "{}: clean accuracy {:.4}, attack success {asr}, {:.0} s",
            entry.id, entry.clean_accuracy, entry.train_seconds
        );
        zoo::write_manifest(&a.out, &all)?;
    }
    let manifest = zoo::write_manifest(&a.out, &all)?;
    eprintln!(
        "manifest: {} models in {}",
        manifest.models.len(),
        a.out.join("manifest.json").display()
    );
    Ok(ExitStatus::Success)
}
