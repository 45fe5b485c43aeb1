//! The backdoor zoo: populations of clean and backdoored models with known ground truth, trained
//! by the project's own code and exported to ONNX, so that the scanner reads them exactly as it
//! reads a user's model.
//!
//! A zoo config (TOML) names a data root, a training recipe per dataset and groups of models;
//! [`plan`] expands each group over its seeds into [`ModelPlan`]s, [`build_model`] trains one and
//! writes `ID.onnx`, `ID.cepa.toml` and `ID.json` (its [`ManifestEntry`]), and [`write_manifest`]
//! gathers the finished entries into `manifest.json`. A model whose `ID.json` exists is finished.
//! A model in training saves its state after every epoch (`ID.ckpt`, removed once the model is
//! finished), so a killed build loses at most the epoch in progress and the next build resumes
//! it where it stopped, with the very weights an uninterrupted build would have trained.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attack::AttackConfig;
use crate::data::{ImageSet, Split, load};
use crate::error::{Error, Result};
use crate::onnx::write::save_model;
use crate::train::{
    ARCH_NAMES, AllConvArch, Architecture, CnnArch, LateTrigger, MlpArch, MobileNetArch, NetArch,
    Network, PreActArch, ResNetArch, Shapes, TrainConfig, Trainer, TrainerState, VggArch, predict,
};
use burn::prelude::Device;

/// A zoo config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooConfig {
    /// Folder holding the datasets (`mnist/`, `cifar10/`, ...), relative to the config file.
    /// Default `../../shared/data` (the shared data beside a checkout, seen from `zoo/`).
    #[serde(default = "default_data_root")]
    pub data_root: PathBuf,
    /// Training recipe per dataset name.
    pub recipes: BTreeMap<String, Recipe>,
    /// Groups of models.
    pub models: Vec<Group>,
}

fn default_data_root() -> PathBuf {
    PathBuf::from("../../shared/data")
}

/// How the models of one dataset are trained.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Network architecture: `"cnn"` (the small CNN of [`crate::train::cnn`]), `"resnet"`
    /// ([`crate::train::resnet`]), `"vgg"` ([`crate::train::vgg`]), `"preact-resnet"`
    /// ([`crate::train::preact`], with BatchNorm), `"allconv"` ([`crate::train::allconv`]),
    /// `"mlp"` ([`crate::train::mlp`], fully connected) or `"mobilenet"`
    /// ([`crate::train::mobilenet`], depthwise-separable, with BatchNorm).
    /// Default `"cnn"`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// The CNN's shape; channels, height, width and classes are taken from the data.
    #[serde(default)]
    pub cnn: CnnArch,
    /// The ResNet's shape when `arch = "resnet"` (input and classes from the data).
    #[serde(default)]
    pub resnet: ResNetArch,
    /// The VGG net's shape when `arch = "vgg"` (input and classes from the data).
    #[serde(default)]
    pub vgg: VggArch,
    /// The PreAct-ResNet's shape when `arch = "preact-resnet"` (input and classes from the
    /// data).
    #[serde(default)]
    pub preact: PreActArch,
    /// The all-convolutional net's shape when `arch = "allconv"` (input and classes from the
    /// data).
    #[serde(default)]
    pub allconv: AllConvArch,
    /// The fully connected net's shape when `arch = "mlp"` (input and classes from the data).
    #[serde(default)]
    pub mlp: MlpArch,
    /// The MobileNet's shape when `arch = "mobilenet"` (input and classes from the data).
    #[serde(default)]
    pub mobilenet: MobileNetArch,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainConfig,
    /// Train on a seeded random subset of this many training images (all when absent).
    #[serde(default)]
    pub train_images: Option<usize>,
}

impl Recipe {
    /// The network shapes `arch` picks from.
    pub fn shapes(&self) -> Shapes<'_> {
        Shapes {
            cnn: &self.cnn,
            resnet: &self.resnet,
            vgg: &self.vgg,
            preact: &self.preact,
            allconv: &self.allconv,
            mlp: &self.mlp,
            mobilenet: &self.mobilenet,
        }
    }
}

fn default_arch() -> String {
    "cnn".into()
}

/// What [`Group::vary`] may vary with the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vary {
    /// The target class: drawn uniformly from the classes.
    Target,
    /// BadNets: the patch's top-left corner, anywhere the patch fits.
    Position,
    /// Blend's noise pattern and WaNet's warp grid: seeded by the model seed.
    Pattern,
}

/// Models of one dataset and attack, one per seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Prefix of the model ids: `NAME-sSEED`.
    pub name: String,
    /// Dataset folder under the data root, and key of its recipe unless `recipe` names another.
    pub dataset: String,
    /// Key of the recipe under `[recipes]` when it is not the dataset's name, so that one file
    /// can train one dataset two ways (e.g. a narrow network for a CPU and the full one for a
    /// GPU).
    #[serde(default)]
    pub recipe: Option<String>,
    /// One model per seed (training, poisoning and what `vary` lists).
    pub seeds: Vec<u64>,
    /// The attack; absent for clean models.
    #[serde(default)]
    pub attack: Option<AttackConfig>,
    /// What changes with the seed besides training and poisoning.
    #[serde(default)]
    pub vary: Vec<Vary>,
    /// Overrides of the recipe's training settings for this group (e.g. more epochs for WaNet).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Further overrides of the recipe's `train` table for this group, e.g. `{ shift = 0 }`.
    #[serde(default)]
    pub train: Option<toml::Table>,
}

/// One model to build.
#[derive(Clone, Debug, Serialize)]
pub struct ModelPlan {
    pub id: String,
    pub dataset: String,
    pub data_dir: PathBuf,
    pub recipe: Recipe,
    pub attack: Option<AttackConfig>,
    pub seed: u64,
}

/// One line of `manifest.json` (the fields issue 4 lists, plus the data folder and spec file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: String,
    /// ONNX file, relative to the zoo folder.
    pub path: String,
    /// Sidecar model spec, relative to the zoo folder.
    pub spec: String,
    pub dataset: String,
    /// The dataset's folder as the config resolved it (for scanning).
    pub data_dir: String,
    pub arch: String,
    /// `"clean"` or the attack family.
    pub attack: String,
    /// The attack's resolved settings, and the training recipe.
    pub params: serde_json::Value,
    pub target: Option<usize>,
    pub sources: Option<Vec<usize>>,
    pub seed: u64,
    pub clean_accuracy: f64,
    pub attack_success_rate: Option<f64>,
    pub train_seconds: f64,
    /// What trained it ([`crate::model::device_label`]; absent in manifests written before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The manifest file: every finished model, in config order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub models: Vec<ManifestEntry>,
}

impl ZooConfig {
    /// Read and check a config file; relative data roots are resolved against its folder.
    pub fn from_file(path: &Path) -> Result<ZooConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: ZooConfig = toml::from_str(&text)
            .map_err(|e| Error::format(path, format!("bad zoo config: {e}")))?;
        if cfg.data_root.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.data_root = base.join(&cfg.data_root);
        }
        Ok(cfg)
    }
}

/// Expand the groups of `cfg` over their seeds, checking names, recipes and attacks.
pub fn plan(cfg: &ZooConfig) -> Result<Vec<ModelPlan>> {
    let mut out = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for g in &cfg.models {
        let key = g.recipe.as_deref().unwrap_or(&g.dataset);
        let recipe = cfg.recipes.get(key).ok_or_else(|| {
            Error::Config(format!(
                "group '{}' uses recipe '{key}' but no [recipes.{key}] is given",
                g.name
            ))
        })?;
        if !ARCH_NAMES.contains(&recipe.arch.as_str()) {
            return Err(Error::Config(format!(
                "recipe '{key}': unknown arch '{}' (one of {})",
                recipe.arch,
                ARCH_NAMES.map(|n| format!("\"{n}\"")).join(", ")
            )));
        }
        if g.name.is_empty() || g.name.contains(['/', '\\']) {
            return Err(Error::Config(format!(
                "group name '{}' must be non-empty and without slashes",
                g.name
            )));
        }
        for &seed in &g.seeds {
            let id = format!("{}-s{seed}", g.name);
            if !ids.insert(id.clone()) {
                return Err(Error::Config(format!("model id '{id}' appears twice")));
            }
            let mut recipe = recipe.clone();
            if let Some(over) = &g.train {
                recipe.train = merge_train(&recipe.train, over)
                    .map_err(|e| Error::Config(format!("group '{}': train: {e}", g.name)))?;
            }
            recipe.train.seed = seed;
            if let Some(e) = g.epochs {
                recipe.train.epochs = e;
            }
            out.push(ModelPlan {
                id,
                dataset: g.dataset.clone(),
                data_dir: cfg.data_root.join(&g.dataset),
                recipe,
                attack: g.attack.clone(),
                seed,
            });
        }
    }
    Ok(out)
}

/// `base` with the keys of `over` replaced.
fn merge_train(base: &TrainConfig, over: &toml::Table) -> std::result::Result<TrainConfig, String> {
    let mut t = toml::Table::try_from(base).map_err(|e| e.to_string())?;
    for (k, v) in over {
        t.insert(k.clone(), v.clone());
    }
    t.try_into().map_err(|e: toml::de::Error| e.to_string())
}

/// The attack of `g` for `seed` with what `vary` asks changed, for images `c x h x w` of `k`
/// classes. Deterministic in (group name, seed).
fn resolve_attack(
    attack: &AttackConfig,
    vary: &[Vary],
    name: &str,
    seed: u64,
    dims: (usize, usize, usize, usize),
) -> Result<AttackConfig> {
    let (c, h, w, k) = dims;
    let salt = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| {
        (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(salt ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut a = attack.clone();
    if vary.contains(&Vary::Target) {
        let t = rng.random_range(0..k);
        match &mut a {
            AttackConfig::BadNets(x) => x.target = t,
            AttackConfig::Blend(x) => x.target = t,
            AttackConfig::WaNet(x) => x.target = t,
            AttackConfig::Sig(x) => x.target = t,
            AttackConfig::Chessboard(x) => x.target = t,
        }
    }
    if vary.contains(&Vary::Position)
        && let AttackConfig::BadNets(x) = &mut a
    {
        let (hp, wp) = (h.saturating_sub(x.patch), w.saturating_sub(x.patch));
        x.row = Some(rng.random_range(0..=hp));
        x.col = Some(rng.random_range(0..=wp));
    }
    if vary.contains(&Vary::Pattern) {
        match &mut a {
            AttackConfig::Blend(x) => x.pattern_seed = seed,
            AttackConfig::WaNet(x) => x.grid_seed = seed,
            _ => {}
        }
    }
    // Source-specific attacks: drop a source that became the target.
    let t = a.target();
    match &mut a {
        AttackConfig::BadNets(x) => drop_target(&mut x.sources, t),
        AttackConfig::Blend(x) => drop_target(&mut x.sources, t),
        AttackConfig::WaNet(x) => drop_target(&mut x.sources, t),
        AttackConfig::Sig(x) => drop_target(&mut x.sources, t),
        AttackConfig::Chessboard(x) => drop_target(&mut x.sources, t),
    }
    a.validate(c, h, w, k)?;
    Ok(a)
}

fn drop_target(sources: &mut Option<Vec<usize>>, t: usize) {
    if let Some(s) = sources {
        s.retain(|&x| x != t);
    }
}

/// Expand like [`plan`] and resolve every attack against its dataset's image shape (read from
/// `shapes`: dataset -> (channels, height, width, classes)); the attacks of datasets missing from
/// `shapes` stay as written.
pub fn resolve(
    cfg: &ZooConfig,
    shapes: &BTreeMap<String, (usize, usize, usize, usize)>,
) -> Result<Vec<ModelPlan>> {
    let mut plans = plan(cfg)?;
    let mut i = 0;
    for g in &cfg.models {
        for &seed in &g.seeds {
            // A dataset without a shape was not loaded (its models are not being built).
            if let (Some(a), Some(&dims)) = (&g.attack, shapes.get(&g.dataset)) {
                plans[i].attack = Some(resolve_attack(a, &g.vary, &g.name, seed, dims)?);
            }
            i += 1;
        }
    }
    Ok(plans)
}

/// The train and test splits of a dataset, read once and shared by its models.
#[derive(Clone, Debug)]
pub struct DataPair {
    pub train: ImageSet,
    pub test: ImageSet,
}

impl DataPair {
    pub fn load(dir: &Path) -> Result<DataPair> {
        Ok(DataPair {
            train: load(dir, Split::Train)?,
            test: load(dir, Split::Test)?,
        })
    }

    /// (channels, height, width, classes).
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        let t = &self.train;
        (t.channels, t.height, t.width, t.num_classes)
    }
}

/// Progress of one model's training: called after every epoch with (epoch, epochs, loss, accuracy).
pub type EpochCallback<'a> = &'a mut dyn FnMut(usize, usize, f64, f64);

/// Whether `out` already holds the finished model `id`.
pub fn is_done(out: &Path, id: &str) -> bool {
    out.join(format!("{id}.json")).is_file()
}

/// Why the finished model `p.id` in `out` no longer matches its plan (`None` when it does, or
/// when it is not built): its attack, architecture or training settings differ from those the
/// config now resolves to, e.g. after the config was edited. Fields added to a settings type
/// since the model was built take their defaults, so they do not count as a change.
pub fn stale_reason(out: &Path, p: &ModelPlan) -> Option<String> {
    let path = out.join(format!("{}.json", p.id));
    let text = std::fs::read_to_string(&path).ok()?;
    let Ok(built) = serde_json::from_str::<ManifestEntry>(&text) else {
        return Some(format!("{} is not a model entry", path.display()));
    };
    let mut diffs = Vec::new();
    let attack: Option<Option<AttackConfig>> = built
        .params
        .get("attack")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if attack.as_ref() != Some(&p.attack) {
        diffs.push("attack");
    }
    let train: Option<TrainConfig> = built
        .params
        .get("train")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if train.as_ref() != Some(&p.recipe.train) {
        diffs.push("training");
    }
    if built.arch != p.recipe.arch {
        diffs.push("architecture");
    }
    (!diffs.is_empty()).then(|| format!("its {} settings changed", diffs.join(", ")))
}

/// Train, export and measure one model; writes `ID.onnx`, `ID.cepa.toml` and, last, `ID.json`.
pub fn build_model(
    p: &ModelPlan,
    data: &DataPair,
    out: &Path,
    device: &Device,
    on_epoch: EpochCallback,
) -> Result<ManifestEntry> {
    let start = Instant::now();
    let (c, h, w, k) = data.shape();
    let r = &p.recipe;
    let arch = NetArch::select(&r.arch, r.shapes())?.with_io(c, h, w, k);
    let (train, late) = training_set(p, data)?;
    let cfg = &p.recipe.train;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut trainer = Trainer::new(&arch.init(cfg.seed)?, cfg, device)?;
    let ckpt = checkpoint_path(out, &p.id);
    let plan_key = checkpoint_key(p, &arch, train.len());
    let mut seconds_before = 0.0;
    if let Some((state, seconds)) = load_checkpoint(&ckpt, &p.id, &plan_key)? {
        trainer.restore(&state)?;
        seconds_before = seconds;
    }
    for e in trainer.epochs_done()..cfg.epochs {
        crate::runtime::check_interrupt()?;
        let s = trainer.epoch_with(&train, late.as_ref())?;
        if e + 1 < cfg.epochs {
            let seconds = seconds_before + start.elapsed().as_secs_f64();
            let state = trainer.state()?;
            write_atomic(&ckpt, |tmp| {
                save_checkpoint(tmp, &plan_key, &state, seconds)
            })?;
        }
        on_epoch(e + 1, cfg.epochs, s.loss, s.accuracy);
    }
    let weights = trainer.calibrated_weights(&train)?;
    let train_seconds = seconds_before + start.elapsed().as_secs_f64();

    let pred = predict(&weights, &data.test, device)?;
    let hits = pred
        .iter()
        .zip(&data.test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let clean_accuracy = hits as f64 / data.test.len().max(1) as f64;
    let asr = match &p.attack {
        None => None,
        Some(a) => Some(attack_success_rate(a, &weights, &data.test, device)?),
    };

    let onnx = format!("{}.onnx", p.id);
    let spec = format!("{}.cepa.toml", p.id);
    write_atomic(&out.join(&onnx), |tmp| save_model(&weights.to_onnx()?, tmp))?;
    write_atomic(&out.join(&spec), |tmp| arch.spec().to_file(tmp))?;
    let entry = ManifestEntry {
        id: p.id.clone(),
        path: onnx,
        spec,
        dataset: p.dataset.clone(),
        // Absolute when it can be, so `cepa eval` finds the data from any folder.
        data_dir: std::fs::canonicalize(&p.data_dir)
            .unwrap_or_else(|_| p.data_dir.clone())
            .display()
            .to_string(),
        arch: p.recipe.arch.clone(),
        attack: p.attack.as_ref().map_or("clean", AttackConfig::name).into(),
        params: serde_json::json!({
            "attack": p.attack.as_ref().map(AttackConfig::params),
            (arch.name()): arch,
            "train": cfg,
            "train_images": train.len(),
        }),
        target: p.attack.as_ref().map(AttackConfig::target),
        sources: p
            .attack
            .as_ref()
            .and_then(|a| a.sources().map(<[usize]>::to_vec)),
        seed: p.seed,
        clean_accuracy,
        attack_success_rate: asr,
        train_seconds,
        device: Some(crate::model::device_label(device)),
    };
    let json = serde_json::to_string_pretty(&entry).map_err(|e| Error::Config(e.to_string()))?;
    let entry_path = out.join(format!("{}.json", p.id));
    write_atomic(&entry_path, |tmp| {
        std::fs::write(tmp, &json).map_err(|e| Error::io(tmp, e))
    })?;
    match std::fs::remove_file(&ckpt) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&ckpt, e)),
        _ => {}
    }
    Ok(entry)
}

/// Where model `id`'s training state is saved between epochs while it is built into `out`.
pub fn checkpoint_path(out: &Path, id: &str) -> PathBuf {
    out.join(format!("{id}.ckpt"))
}

/// The epochs that model `id`'s checkpoint in `out` holds (`None` without a readable one).
pub fn checkpoint_epochs(out: &Path, id: &str) -> Option<usize> {
    let bytes = std::fs::read(checkpoint_path(out, id)).ok()?;
    let (header, _) = split_checkpoint(&bytes).ok()?;
    header.get("epochs")?.as_u64().map(|e| e as usize)
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"CEPACKP1";

/// What must match for a checkpoint to be resumed: the attack, the network, the training
/// settings, the training images and the seed.
fn checkpoint_key(p: &ModelPlan, arch: &NetArch, train_images: usize) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "seed": p.seed,
        "attack": p.attack.as_ref().map(AttackConfig::params),
        (arch.name()): arch,
        "train": p.recipe.train,
        "train_images": train_images,
    })
}

/// `CEPACKP1`, the header's length (u64 LE), the header (JSON: the plan key, the counters, the
/// seconds trained), the number of parameters n (u64 LE), then the parameters and the two
/// optimiser moments, n f32 LE each.
fn save_checkpoint(
    path: &Path,
    key: &serde_json::Value,
    state: &TrainerState,
    seconds: f64,
) -> Result<()> {
    let header = serde_json::json!({
        "plan": key,
        "epochs": state.epochs,
        "steps": state.steps,
        "rng_word_pos": state.rng_word_pos.to_string(),
        "seconds": seconds,
    });
    let header = serde_json::to_vec(&header).map_err(|e| Error::Config(e.to_string()))?;
    let n = state.params.len();
    let mut bytes = Vec::with_capacity(32 + header.len() + 12 * n);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(n as u64).to_le_bytes());
    for v in [&state.params, &state.m, &state.v] {
        bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// The header and the rest of a checkpoint's bytes, or what is wrong with them.
fn split_checkpoint(bytes: &[u8]) -> std::result::Result<(serde_json::Value, &[u8]), String> {
    let rest = bytes
        .strip_prefix(CHECKPOINT_MAGIC)
        .ok_or("it is not a cepa training checkpoint")?;
    let (len, rest) = take_u64(rest)?;
    let len = usize::try_from(len).map_err(|_| "its header length does not fit")?;
    if rest.len() < len {
        return Err("it is truncated in its header".into());
    }
    let header = serde_json::from_slice(&rest[..len]).map_err(|e| format!("its header: {e}"))?;
    Ok((header, &rest[len..]))
}

fn take_u64(b: &[u8]) -> std::result::Result<(u64, &[u8]), String> {
    let (head, rest) = b.split_first_chunk::<8>().ok_or("it is truncated")?;
    Ok((u64::from_le_bytes(*head), rest))
}

/// Model `id`'s saved training state and the seconds it had trained, when `path` holds one saved
/// with `key`; `None` when there is no file. A checkpoint that is damaged or was saved with other
/// settings is an error that names it, not a silent fresh start.
fn load_checkpoint(
    path: &Path,
    id: &str,
    key: &serde_json::Value,
) -> Result<Option<(TrainerState, f64)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg: format!("{msg}; delete it to train {id} from the start"),
    };
    let (header, rest) = split_checkpoint(&bytes).map_err(bad)?;
    if header.get("plan") != Some(key) {
        return Err(bad(
            "it was saved by a build with other settings than the config now gives".into(),
        ));
    }
    let count = |name: &str| {
        header
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("its header lacks '{name}'")))
    };
    let (epochs, steps) = (count("epochs")?, count("steps")?);
    let rng_word_pos = header
        .get("rng_word_pos")
        .and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse::<u128>().ok())
        .ok_or_else(|| bad("its header lacks 'rng_word_pos'".into()))?;
    let seconds = header
        .get("seconds")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let (n, rest) = take_u64(rest).map_err(bad)?;
    let n = usize::try_from(n).map_err(|_| bad("its parameter count does not fit".into()))?;
    if n.checked_mul(12) != Some(rest.len()) {
        return Err(bad(format!(
            "it holds {} bytes of values where {n} parameters need {}",
            rest.len(),
            n.saturating_mul(12)
        )));
    }
    let floats = |i: usize| -> Vec<f32> {
        rest[i * 4 * n..(i + 1) * 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let state = TrainerState {
        epochs,
        steps,
        rng_word_pos,
        params: floats(0),
        m: floats(1),
        v: floats(2),
    };
    Ok(Some((state, seconds)))
}

/// Model `p`'s training images (the recipe's subset, poisoned by its attack) and, when the
/// trigger is stamped after augmentation, that trigger.
fn training_set(p: &ModelPlan, data: &DataPair) -> Result<(ImageSet, Option<LateTrigger>)> {
    let (c, h, w, _) = data.shape();
    let mut train = data.train.clone();
    if let Some(n) = p.recipe.train_images
        && n < train.len()
    {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5eed);
        let mut idx = rand::seq::index::sample(&mut rng, train.len(), n).into_vec();
        idx.sort_unstable();
        train = train.subset(&idx);
    }
    let cfg = &p.recipe.train;
    let mut late = None;
    if let Some(a) = &p.attack {
        let (mut poisoned, stamped) = a.poison(&train, p.seed)?;
        if cfg.trigger_after_augment {
            // Poisoned labels on clean pixels: the trigger is stamped after augmentation.
            let per = train.image_len();
            for (i, _) in stamped.iter().enumerate().filter(|(_, s)| **s) {
                let span = i * per..(i + 1) * per;
                poisoned.pixels[span.clone()].copy_from_slice(&train.pixels[span]);
            }
            late = Some(LateTrigger {
                trigger: a.trigger(c, h, w)?,
                stamped,
            });
        }
        train = poisoned;
    }
    Ok((train, late))
}

/// Fraction of the test images that the attack applies to (not of the target class; of a
/// source class when source-specific) that the model sends to the target once triggered.
pub fn attack_success_rate(
    a: &AttackConfig,
    weights: &impl Network,
    test: &ImageSet,
    device: &Device,
) -> Result<f64> {
    let t = a.target();
    let idx: Vec<usize> = (0..test.len())
        .filter(|&i| {
            let l = test.labels[i];
            l != t && a.sources().is_none_or(|s| s.contains(&l))
        })
        .collect();
    if idx.is_empty() {
        return Err(Error::Mismatch(format!(
            "no test image in {} to measure the attack success on",
            test.source.display()
        )));
    }
    let stamped = a.stamp_test(&test.subset(&idx))?;
    let pred = predict(weights, &stamped, device)?;
    Ok(pred.iter().filter(|&&p| p == t).count() as f64 / idx.len() as f64)
}

/// Write through a temporary file renamed into place, so a killed build never leaves a partial
/// file under the final name.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // The temporary name is the process's own: builds running side by side into one folder (a
    // sharded build, `--only` groups) never write into each other's half-written file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".part{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Gather the finished entries of `plans` (in plan order) into `out/manifest.json`.
pub fn write_manifest(out: &Path, plans: &[ModelPlan]) -> Result<Manifest> {
    let mut models = Vec::new();
    for p in plans {
        let path = out.join(format!("{}.json", p.id));
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let entry: ManifestEntry = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("bad model entry: {e}")))?;
        models.push(entry);
    }
    let manifest = Manifest { models };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Config(e.to_string()))?;
    let path = out.join("manifest.json");
    write_atomic(&path, |tmp| {
        std::fs::write(tmp, &json).map_err(|e| Error::io(tmp, e))
    })?;
    Ok(manifest)
}

/// The manifest of a zoo folder (`DIR/manifest.json`), or a manifest file named directly.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join("manifest.json")
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("bad manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{Optimizer, Schedule};

    const CONFIG: &str = r#"
data_root = "data"
[recipes.mnist]
train = { epochs = 1 }
[[models]]
name = "m-clean"
dataset = "mnist"
seeds = [0, 1]
[[models]]
name = "m-bn"
dataset = "mnist"
seeds = [0, 1, 2]
attack = { kind = "badnets", patch = 3, target = 0 }
vary = ["target", "position"]
epochs = 2
train = { shift = 2, lr = 0.01 }
"#;

    fn config() -> ZooConfig {
        toml::from_str(CONFIG).unwrap()
    }

    #[test]
    fn groups_expand_over_seeds_with_overrides() {
        let plans = plan(&config()).unwrap();
        let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["m-clean-s0", "m-clean-s1", "m-bn-s0", "m-bn-s1", "m-bn-s2"]
        );
        assert_eq!(plans[1].recipe.train.seed, 1);
        assert_eq!(plans[0].recipe.train.epochs, 1);
        assert_eq!(plans[3].recipe.train.epochs, 2, "group override");
        assert_eq!(plans[3].recipe.train.shift, 2, "group train table");
        assert_eq!(plans[3].recipe.train.lr, 0.01);
        assert_eq!(
            plans[0].recipe.train.shift, 0,
            "other groups keep the recipe"
        );
        assert!(plans[0].attack.is_none());
        assert_eq!(plans[2].data_dir, Path::new("data/mnist"));
    }

    #[test]
    fn varied_attacks_are_deterministic_and_fit() {
        let cfg = config();
        let shapes = BTreeMap::from([("mnist".to_string(), (1, 28, 28, 10))]);
        let a = resolve(&cfg, &shapes).unwrap();
        let b = resolve(&cfg, &shapes).unwrap();
        let pick = |p: &ModelPlan| match p.attack.clone().unwrap() {
            AttackConfig::BadNets(x) => (x.target, x.row.unwrap(), x.col.unwrap()),
            _ => unreachable!(),
        };
        let got: Vec<_> = a[2..].iter().map(pick).collect();
        assert_eq!(got, b[2..].iter().map(pick).collect::<Vec<_>>());
        assert!(
            got.iter()
                .all(|&(t, r, c)| t < 10 && r + 3 <= 28 && c + 3 <= 28)
        );
        assert!(
            got.windows(2).any(|w| w[0] != w[1]),
            "seeds vary the attack: {got:?}"
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut cfg = config();
        cfg.models[1].dataset = "cifar10".into();
        assert!(
            plan(&cfg)
                .unwrap_err()
                .to_string()
                .contains("recipes.cifar10")
        );
        let mut cfg = config();
        cfg.models[1].name = "m-clean".into();
        cfg.models[1].seeds = vec![1];
        assert!(plan(&cfg).unwrap_err().to_string().contains("twice"));
        assert!(toml::from_str::<ZooConfig>("[recipes]\nmodels = []\nextra = 1").is_err());
        let mut cfg = config();
        cfg.models[1].train = Some(toml::from_str("epoch = 3").unwrap());
        assert!(
            plan(&cfg).unwrap_err().to_string().contains("epoch"),
            "misspelt key"
        );
        let mut cfg = config();
        cfg.models[1].recipe = Some("mnist-gpu".into());
        assert!(
            plan(&cfg)
                .unwrap_err()
                .to_string()
                .contains("[recipes.mnist-gpu]")
        );
    }

    /// A recipe picks the all-convolutional net by name and shapes it with its `allconv` table;
    /// the data then sets its input and classes.
    #[test]
    fn allconv_recipe_reads_its_table() {
        let cfg: ZooConfig = toml::from_str(
            r#"
[recipes.mnist]
arch = "allconv"
allconv = { stages = [[8], [16, 16]] }
[[models]]
name = "m-clean"
dataset = "mnist"
seeds = [0]
"#,
        )
        .unwrap();
        let p = &plan(&cfg).unwrap()[0];
        let arch = NetArch::select(&p.recipe.arch, p.recipe.shapes())
            .unwrap()
            .with_io(1, 28, 28, 10);
        let NetArch::AllConv(a) = &arch else {
            panic!("{}", arch.name())
        };
        assert_eq!(a.stages, [vec![8], vec![16, 16]]);
        assert_eq!((a.channels, a.feature_hw()), (1, (14, 14)));
        assert!(toml::from_str::<Recipe>("allconv = { stage = [[8]] }").is_err());
    }

    /// Every config shipped in `zoo/` reads and plans; the realistic one trains the
    /// PreAct-ResNet at width 16 for its CPU groups and at full width for the others, from the
    /// recipe each group names, with BackdoorBench's optimiser.
    #[test]
    fn shipped_configs_plan() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../zoo");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = ZooConfig::from_file(&path).unwrap();
                assert!(!plan(&cfg).unwrap().is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "{seen} configs in {}", dir.display());

        let cfg = ZooConfig::from_file(&dir.join("realistic.toml")).unwrap();
        let plans = plan(&cfg).unwrap();
        let cpu: Vec<&ModelPlan> = plans.iter().filter(|p| p.id.contains("-cpu-")).collect();
        for family in ["-clean-", "-badnets-", "-blend-"] {
            assert!(
                cpu.iter().any(|p| p.id.contains(family)),
                "no CPU {family} model"
            );
        }
        for p in &plans {
            let arch = NetArch::select(&p.recipe.arch, p.recipe.shapes()).unwrap();
            let NetArch::PreAct(a) = arch else {
                panic!("{}: {}", p.id, arch.name())
            };
            let width = if p.id.contains("-cpu-") { 16 } else { 64 };
            assert_eq!(a.widths[0], width, "{}", p.id);
            assert_eq!(p.dataset, "cifar10");
            let t = &p.recipe.train;
            assert_eq!(
                (t.optimizer, t.schedule, t.lr, t.weight_decay, t.batch_size),
                (Optimizer::Sgd, Schedule::Cosine, 0.01, 5e-4, 128)
            );
        }
    }

    /// Random 1x16x16 images in two classes: enough for a build to run, not to learn.
    fn toy_data() -> DataPair {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut set = |n: usize| {
            let pixels = (0..n * 256).map(|_| rng.random_range(0.0..1.0)).collect();
            let labels = (0..n).map(|i| i % 2).collect();
            ImageSet::synthetic(pixels, labels, [1, 16, 16], 2, "toy")
        };
        DataPair {
            train: set(48),
            test: set(16),
        }
    }

    /// A build killed after its first epoch resumes from the checkpoint that epoch left and
    /// finishes the very model an uninterrupted build makes; a damaged checkpoint, or one saved
    /// with other settings, is an error that names it.
    #[test]
    fn a_killed_build_resumes_from_its_checkpoint_to_the_same_model() {
        let cfg: ZooConfig = toml::from_str(
            r#"
[recipes.toy]
cnn = { conv1 = 2, conv2 = 4, hidden = 8 }
train = { epochs = 3, batch_size = 16, lr = 3e-3, shift = 1, flip = true }
[[models]]
name = "toy-blend"
dataset = "toy"
seeds = [4]
attack = { kind = "blend", alpha = 0.3, rate = 0.25, target = 1 }
"#,
        )
        .unwrap();
        let data = toy_data();
        let shapes = [("toy".to_string(), data.shape())].into_iter().collect();
        let p = &resolve(&cfg, &shapes).unwrap()[0];
        let device = crate::model::cpu_device(true);
        let (straight, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut epochs = Vec::new();
        build_model(p, &data, straight.path(), &device, &mut |e, _, _, _| {
            epochs.push(e);
        })
        .unwrap();
        assert_eq!(epochs, [1, 2, 3]);
        assert!(!checkpoint_path(straight.path(), &p.id).exists());

        // What a build killed during its second epoch leaves behind.
        let (c, h, w, k) = data.shape();
        let arch = NetArch::select(&p.recipe.arch, p.recipe.shapes())
            .unwrap()
            .with_io(c, h, w, k);
        let (train, late) = training_set(p, &data).unwrap();
        let cfg = &p.recipe.train;
        let mut trainer = Trainer::new(&arch.init(cfg.seed).unwrap(), cfg, &device).unwrap();
        trainer.epoch_with(&train, late.as_ref()).unwrap();
        let key = checkpoint_key(p, &arch, train.len());
        let ckpt = checkpoint_path(killed.path(), &p.id);
        save_checkpoint(&ckpt, &key, &trainer.state().unwrap(), 7.5).unwrap();
        assert_eq!(checkpoint_epochs(killed.path(), &p.id), Some(1));

        // Damaged or foreign checkpoints are refused by name.
        let refused = || {
            build_model(p, &data, killed.path(), &device, &mut |_, _, _, _| {})
                .unwrap_err()
                .to_string()
        };
        let good = std::fs::read(&ckpt).unwrap();
        std::fs::write(&ckpt, &good[..good.len() - 4]).unwrap();
        let err = refused();
        assert!(
            err.contains("toy-blend-s4.ckpt") && err.contains("bytes"),
            "{err}"
        );
        let mut other = p.clone();
        other.recipe.train.lr = 1e-3;
        save_checkpoint(
            &ckpt,
            &checkpoint_key(&other, &arch, train.len()),
            &trainer.state().unwrap(),
            1.0,
        )
        .unwrap();
        let err = refused();
        assert!(
            err.contains("other settings") && err.contains("delete it"),
            "{err}"
        );
        assert!(!is_done(killed.path(), &p.id));

        std::fs::write(&ckpt, &good).unwrap();
        let mut epochs = Vec::new();
        let entry = build_model(p, &data, killed.path(), &device, &mut |e, _, _, _| {
            epochs.push(e);
        })
        .unwrap();
        assert_eq!(epochs, [2, 3], "only the epochs the checkpoint lacked");
        assert!(!ckpt.exists(), "the finished model's checkpoint is removed");
        assert!(entry.train_seconds >= 7.5, "{}", entry.train_seconds);
        let onnx = |dir: &Path| std::fs::read(dir.join(format!("{}.onnx", p.id))).unwrap();
        assert!(
            onnx(killed.path()) == onnx(straight.path()),
            "the same weights"
        );
    }
}
