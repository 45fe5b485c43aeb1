//! Command-line definitions.

use std::path::PathBuf;

use cepa::data::Split;
use cepa::model::{DeviceChoice, Layout, ModelSpec, OutputKind, parse_floats};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "cepa",
    version,
    about = "Detect backdoors (trojans) in image classifiers exported to ONNX"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Compute device: `cpu` (burn's flex backend on all cores), or `cuda` / `cuda:N` in a build
    /// with the `cuda` feature (`cargo build --release --features cuda`).
    #[arg(long, global = true, default_value = "cpu", value_parser = |s: &str| s.parse::<DeviceChoice>())]
    pub device: DeviceChoice,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a model's inputs, outputs, resolved spec and layers (and accuracy with --data).
    Inspect(InspectArgs),
    /// Decide whether a model is backdoored and which class the backdoor targets.
    Scan(ScanArgs),
    /// Estimate the trigger of a target class (stage 2): one perturbation shared by all images.
    Invert(InvertArgs),
    /// Build populations of clean and backdoored models with known ground truth.
    #[command(subcommand)]
    Zoo(crate::zoo::ZooCommand),
    /// Run the detectors on every model of a zoo and judge them (TPR, FPR, AUC, ...).
    Eval(crate::eval::EvalArgs),
}

/// Output format of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How the model expects its input and what its output is. Flags override the sidecar
/// `MODEL.cepa.toml` beside the model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Input layout: nchw or nhwc (default nchw, or detected from the input shape).
    #[arg(long, value_parser = |s: &str| s.parse::<Layout>())]
    pub layout: Option<Layout>,
    /// Per-channel mean M or M,M,M: the model takes (pixel/255 - mean) / std. Default 0.
    #[arg(long, allow_hyphen_values = true)]
    pub mean: Option<String>,
    /// Per-channel std S or S,S,S. Default 1.
    #[arg(long)]
    pub std: Option<String>,
    /// What the model outputs: logits, probs or auto (a trailing Softmax means probs).
    #[arg(long, value_parser = |s: &str| s.parse::<OutputKind>())]
    pub output: Option<OutputKind>,
    /// Number of classes (checked against the model's output).
    #[arg(long)]
    pub num_classes: Option<usize>,
}

impl ModelArgs {
    /// The spec the flags declare.
    pub fn spec(&self) -> anyhow::Result<ModelSpec> {
        Ok(ModelSpec {
            layout: self.layout,
            mean: self.mean.as_deref().map(parse_floats).transpose()?,
            std: self.std.as_deref().map(parse_floats).transpose()?,
            output: self.output,
            num_classes: self.num_classes,
        })
    }
}

/// Where clean images come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Images: a folder of IDX files, CIFAR-style binary batches, an ImageFolder, or a .npy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which split of the data folder to read.
    #[arg(long, default_value = "test", value_parser = |s: &str| s.parse::<Split>())]
    pub split: Split,
}

/// The settings file and the clean images a detector command samples (scan and invert).
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Settings file (TOML with [scan], [scan.cepa], [scan.decision], [invert], [nc] sections;
    /// see `cepa::settings`). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Clean images per class that are optimised (default 10; for invert the target's own are
    /// left out).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Held-out clean images per class: scan's transfer statistic, the trigger's attack success
    /// (default 10).
    #[arg(long)]
    pub holdout_per_class: Option<usize>,
    /// Seed of the image sampling and the initial perturbations (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SampleArgs {
    /// The library's form of these flags.
    pub fn options(&self) -> cepa::pipeline::SampleOptions {
        cepa::pipeline::SampleOptions {
            config: self.config.clone(),
            per_class: self.per_class,
            holdout_per_class: self.holdout_per_class,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Evaluate accuracy on at most this many images of --data (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Check the --device against the CPU: the logits and the input gradients of the first 16
    /// images of --data, computed on both. Passes when the largest difference is at most 1e-4 of
    /// the largest CPU value; otherwise the report is printed and the exit status is 2.
    #[arg(long)]
    pub compare_cpu: bool,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Clean images: a folder of IDX files, CIFAR-style binary batches, an ImageFolder, or a .npy.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of the data folder to read.
    #[arg(long, default_value = "test", value_parser = |s: &str| s.parse::<Split>())]
    pub split: Split,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Layer(s) to work at, by ONNX tensor name (comma-separated), or `auto`.
    #[arg(long, default_value = "auto")]
    pub layer: String,
    /// Optimisation steps per class (default from the detector's config).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Adam learning rate in pixel units.
    #[arg(long)]
    pub lr: Option<f64>,
    /// CEPA's threshold on its combined anomaly index, applied as given (the default, 1.5, is
    /// raised for models of more than 10 classes; a threshold set here, e.g. from a clean model
    /// of the same task, is not). Under a combined `--verdict` it is the scale CEPA's score is
    /// divided by.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Screening of a model with many classes (`[scan.screen]`, on by default from 20
    /// classes): a short pass over every class, then the full optimisation of the most
    /// anomalous and of a weighted null sample of the others, for both detectors. `off` runs
    /// the full scan of every class.
    #[arg(long, value_enum)]
    pub screen: Option<OnOff>,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Write report.json, report.html and the flagged class's per-sample perturbations (PNG)
    /// here; for a backdoored verdict also the estimated trigger (trigger.png, mask.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A known trigger (JSON: `target`, `patch: {row, col, size}`) to compare the estimate with.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// The JSON report (`--format json`, or report.json of `--out`) of a scan of a clean model of
    /// the same task and classes; repeat for several. Each class's CEPA index is shown beside
    /// its mean over these references and the difference, with a note on the class the scan
    /// singled out: a decision aid, the verdict does not use it. Read before anything runs.
    #[arg(long = "reference", value_name = "REPORT")]
    pub references: Vec<PathBuf>,
    /// Run a baseline detector on the same clean images beside CEPA. `nc`: Neural Cleanse,
    /// settings from the `[nc]` section of the settings file. A combined `--verdict` (the
    /// default) runs it anyway; with `--verdict cepa` it is reported beside CEPA's verdict
    /// without changing it.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Whose verdict sets the exit status, the report's top-level verdict and the class stage 2
    /// inverts. `agree` (the default, and the frozen rule of EVALUATION.md): CEPA and Neural
    /// Cleanse combined, each score over its own threshold: the mean of the two when they
    /// single out the same class, or the larger divided by 1.5 (one detector alone) where that
    /// is more; backdoored when it exceeds 0.978 (`[verdict]` of the settings file). `either`:
    /// the larger of the two, undivided. `cepa`:
    /// CEPA alone, about half the time, but its threshold does not carry across datasets as
    /// well (EVALUATION.md, "A decision not re-fit on its own test data").
    #[arg(long, value_enum, default_value = "agree")]
    pub verdict: VerdictArg,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Whose verdict `scan` reports as its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    /// CEPA's.
    Cepa,
    /// Backdoored when CEPA or the baseline flags the model.
    Either,
    /// Backdoored when they agree on the class, or one alone is 1.5 times as sure (the default).
    Agree,
}

/// A baseline detector `scan` can run beside CEPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// Neural Cleanse (Wang et al., 2019).
    Nc,
}

/// Which trigger forms `invert` optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Auto,
    Additive,
    MaskPattern,
}

#[derive(Args, Debug)]
pub struct InvertArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Clean images: a folder of IDX files, CIFAR-style binary batches, an ImageFolder, or a .npy.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of the data folder to read.
    #[arg(long, default_value = "test", value_parser = |s: &str| s.parse::<Split>())]
    pub split: Split,
    /// The target class whose trigger is estimated.
    #[arg(long)]
    pub target: usize,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Fraction of the optimisation images the smallest trigger must send to the target
    /// (default 0.95).
    #[arg(long)]
    pub pi: Option<f64>,
    /// The trigger is then scaled until that fraction goes to the target with at least this
    /// probability (default 0.99; 0 turns the strengthening off).
    #[arg(long)]
    pub confidence: Option<f64>,
    /// Optimisation steps per form (default from the inversion config).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Trigger form: additive, mask-pattern, or auto (both, keep the cheaper; the default).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// A known trigger (JSON: `target`, `patch: {row, col, size}`) to compare the estimate with.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Write report.json, report.html, trigger.png (and mask.png) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
