//! Neural Cleanse (Wang et al., IEEE S&P 2019), the baseline detector: for every putative target
//! class `t`, reverse-engineer the smallest trigger that sends the clean images to `t`, a mask `m`
//! (H x W, one value per pixel) and a pattern `p` (C x H x W) stamped as
//!
//! `x' = (1 - m) x + m p`, minimising `J_t = mean_n CE(f(x'_n), t) + cost_t ||m||_1`.
//!
//! Mask and pattern live in tanh space (`m = tanh(m_raw) / (2 - eps) + 0.5`, likewise `p`) and
//! are optimised with Adam, and `cost_t` follows the controller of the reference code
//! (bolunwang/backdoor, `visualizer.py`): it is 0 until the attack success rate (ASR) has reached
//! `attack_succ_threshold` for `patience` steps, then `init_cost`; after that it rises by
//! `cost_multiplier` after `patience` successful steps in a row and falls by `cost_multiplier^1.5`
//! after `patience` failed ones. The reported trigger is the smallest-`||m||_1` one among the
//! successful iterates. A class whose trigger is much smaller than the others' (one-sided MAD
//! anomaly index above 2, [`Tail::Small`]) is the target of a backdoor.
//!
//! The reference makes one "epoch" a pass over about 1000 images in mini-batches; with the ~10
//! clean images per class we work with, one step here is one Adam step on all the images, and the
//! controller and the early stop count steps. Every target uses the same images, its own class
//! included, as the reference does: all of them up to `max_images`, beyond that `max_images` of
//! them dealt round-robin over the classes. The K problems run batched like CEPA's stage 1
//! ([`crate::detect::cepa`]): split over the cores, each core's share stamped into forward passes
//! of at most `max_batch` images; masks, patterns and Adam's moments stay on the host.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::detect::scan::{
    ScreenConfig, ScreenReport, ScreenValue, pool_from_screen, screen_report,
};
use crate::detect::stats::{Tail, anomaly_indices, anomaly_indices_weighted};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// The `eps` of the tanh parameterisation: Keras' `K.epsilon()`, as in the reference code.
const TANH_EPS: f64 = 1e-7;
/// Adam's `eps`: Keras' default, the reference's optimiser.
const ADAM_EPS: f64 = 1e-7;

/// Neural Cleanse settings. [reference] marks values from the authors' code
/// (bolunwang/backdoor: `visualizer.py` class defaults and `gtsrb_visualize_example.py`),
/// [paper] the paper, [ours] what we chose for ~10 images per class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NcConfig {
    /// Step budget per target; one step is one Adam step on all the images (the reference's
    /// "epoch") [ours]. Default 300.
    pub steps: usize,
    /// Adam learning rate, in tanh space [reference]. Default 0.1.
    pub lr: f64,
    /// Adam first-moment decay [reference]. Default 0.5.
    pub beta1: f64,
    /// Adam second-moment decay [reference]. Default 0.9.
    pub beta2: f64,
    /// Weight of `||m||_1` once the cost is set [reference example]. Default 1e-3.
    pub init_cost: f64,
    /// Start with cost 0 and set it to `init_cost` after `patience` successful steps; otherwise
    /// start at `init_cost` [reference]. Default true.
    pub reset_cost_to_zero: bool,
    /// ASR (fraction of the stamped images classified as the target) at which a trigger counts
    /// as found [reference]. Default 0.99.
    pub attack_succ_threshold: f64,
    /// Steps in a row on one side of the threshold before the cost changes [reference example].
    /// Default 5.
    pub patience: usize,
    /// The cost rises by this factor and falls by its 1.5th power [reference class default].
    /// Default 1.5.
    pub cost_multiplier: f64,
    /// Stop a target once its cost has gone both up and down and its best `||m||_1` has not fallen
    /// below `early_stop_threshold` times its earlier best for `early_stop_patience` steps
    /// [reference]. Default true.
    pub early_stop: bool,
    /// See `early_stop`: an improvement smaller than 0.1 % does not count [ours; the reference's
    /// class default is 0.99, its examples use 1.0]. Default 0.999.
    pub early_stop_threshold: f64,
    /// See `early_stop` [reference example: 5 x patience]. Default 25.
    pub early_stop_patience: usize,
    /// A model is flagged when the largest anomaly index exceeds this [paper], raised for a
    /// model with more than `reference_classes` classes (see there). Default 2.
    pub threshold: f64,
    /// The number of classes `threshold` holds at: a model with K > `reference_classes` has its
    /// threshold raised by `sqrt(ln K / ln reference_classes)`, as CEPA's
    /// ([`crate::detect::verdict::class_factor`]): the largest of K anomaly indices grows with
    /// K whether a class is backdoored or not [ours]. 0 turns the scaling off. Default 10
    /// (2.56 for 43 classes): on the 254 development scans, with each dataset left out in turn,
    /// the combined `agree` verdict found 6 more backdoors at their targets and flagged one
    /// clean model fewer than with 2.0 at every class count (EVALUATION.md, "Session 35";
    /// frozen 2026-12-07).
    pub reference_classes: usize,
    /// At most this many stamped images in one forward pass; the targets of a core are run in
    /// groups that fit [ours]. Default 2048.
    pub max_batch: usize,
    /// At most this many of the clean images are stamped in every target's problem, dealt
    /// round-robin over the classes (as CEPA's `max_samples`; when the classes do not divide it,
    /// the first ones get one more): a step costs classes x images, so
    /// 43 GTSRB classes x 430 images would be 18,000 stamped images a step, and 100 classes
    /// quadratically more; the reference optimises on mini-batches of 32 [ours]. Default 100
    /// (10 classes x 10 images: all of them).
    pub max_images: usize,
    /// Seed of the initial masks and patterns (uniform in [0, 1), as in the reference). Default 0.
    pub seed: u64,
    /// Screening of a model with many classes, as CEPA's ([`ScreenConfig`]; `max_samples` is
    /// the number of images the screening pass stamps) [ours]. Default: from 20 classes, 50
    /// steps on 20 images, then the full optimisation of 5 candidates and a null sample of 10
    /// (CEPA's null is 20; Neural Cleanse's screened and full scans agreed on every model
    /// measured with 10, its indices further from the threshold: EVALUATION.md). Fields a
    /// config's `[nc.screen]` leaves out keep these defaults, not CEPA's.
    #[serde(deserialize_with = "nc_screen")]
    pub screen: ScreenConfig,
}

/// `[nc.screen]`: the fields given over Neural Cleanse's own screening defaults. (With plain
/// `#[serde(default)]` a section naming one field took the others from CEPA's defaults: 30
/// steps and a null of 20 instead of 50 and 10.)
fn nc_screen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<ScreenConfig, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Given {
        min_classes: Option<usize>,
        steps: Option<usize>,
        max_samples: Option<usize>,
        candidates: Option<usize>,
        null: Option<usize>,
    }
    let g = Given::deserialize(d)?;
    let base = NcConfig::default().screen;
    Ok(ScreenConfig {
        min_classes: g.min_classes.unwrap_or(base.min_classes),
        steps: g.steps.unwrap_or(base.steps),
        max_samples: g.max_samples.unwrap_or(base.max_samples),
        candidates: g.candidates.unwrap_or(base.candidates),
        null: g.null.unwrap_or(base.null),
    })
}

impl Default for NcConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.1,
            beta1: 0.5,
            beta2: 0.9,
            init_cost: 1e-3,
            reset_cost_to_zero: true,
            attack_succ_threshold: 0.99,
            patience: 5,
            cost_multiplier: 1.5,
            early_stop: true,
            early_stop_threshold: 0.999,
            early_stop_patience: 25,
            threshold: 2.0,
            reference_classes: 10,
            max_batch: 2048,
            max_images: 100,
            seed: 0,
            screen: ScreenConfig {
                steps: 50,
                null: 10,
                ..ScreenConfig::default()
            },
        }
    }
}

impl NcConfig {
    /// The threshold that applies to a model with `classes` classes (see `reference_classes`).
    pub fn threshold_for(&self, classes: usize) -> f64 {
        self.threshold * crate::detect::verdict::class_factor(classes, self.reference_classes)
    }

    /// Reject values that would make the optimisation meaningless, before any compute.
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| v > 0.0 && v <= 1.0;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        let counts = [
            self.steps,
            self.patience,
            self.early_stop_patience,
            self.max_batch,
            self.max_images,
        ];
        let checks = [
            (
                counts.iter().all(|&c| c >= 1),
                "steps, patience, early_stop_patience, max_batch and max_images must be at least 1"
                    .into(),
            ),
            (
                positive(self.lr),
                format!("lr {} must be positive", self.lr),
            ),
            (
                (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
                format!(
                    "beta1 {} and beta2 {} must be in [0, 1)",
                    self.beta1, self.beta2
                ),
            ),
            (
                positive(self.init_cost),
                format!("init_cost {} must be positive", self.init_cost),
            ),
            (
                unit(self.attack_succ_threshold),
                format!(
                    "attack_succ_threshold {} must be in (0, 1]",
                    self.attack_succ_threshold
                ),
            ),
            (
                positive(self.cost_multiplier - 1.0),
                format!("cost_multiplier {} must be above 1", self.cost_multiplier),
            ),
            (
                unit(self.early_stop_threshold),
                format!(
                    "early_stop_threshold {} must be in (0, 1]",
                    self.early_stop_threshold
                ),
            ),
            (
                self.threshold.is_finite(),
                format!("threshold {} must be finite", self.threshold),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(Error::Config(msg)),
            None => Ok(()),
        }
    }
}

/// The reference's cost controller (`visualizer.py`, "check cost modification").
#[derive(Clone, Debug)]
pub struct CostSchedule {
    /// The current weight of `||m||_1`.
    pub cost: f64,
    /// Whether the cost has been set (always, without `reset_cost_to_zero`).
    pub set: bool,
    /// Whether the cost has risen / fallen since it was set.
    pub went_up: bool,
    pub went_down: bool,
    init_cost: f64,
    up: f64,
    down: f64,
    patience: usize,
    set_run: usize,
    up_run: usize,
    down_run: usize,
}

impl CostSchedule {
    pub fn new(cfg: &NcConfig) -> Self {
        Self {
            cost: if cfg.reset_cost_to_zero {
                0.0
            } else {
                cfg.init_cost
            },
            set: !cfg.reset_cost_to_zero,
            went_up: false,
            went_down: false,
            init_cost: cfg.init_cost,
            up: cfg.cost_multiplier,
            down: cfg.cost_multiplier.powf(1.5),
            patience: cfg.patience,
            set_run: 0,
            up_run: 0,
            down_run: 0,
        }
    }

    /// Update after a step whose ASR was `asr`, against the success threshold.
    pub fn update(&mut self, asr: f64, threshold: f64) {
        let success = asr >= threshold;
        if !self.set && success {
            self.set_run += 1;
            if self.set_run >= self.patience {
                self.cost = self.init_cost;
                self.set = true;
                self.up_run = 0;
                self.down_run = 0;
                self.went_up = false;
                self.went_down = false;
            }
        } else {
            self.set_run = 0;
        }
        if success {
            self.up_run += 1;
            self.down_run = 0;
        } else {
            self.up_run = 0;
            self.down_run += 1;
        }
        if self.up_run >= self.patience {
            self.up_run = 0;
            self.cost *= self.up;
            self.went_up = true;
        } else if self.down_run >= self.patience {
            self.down_run = 0;
            self.cost /= self.down;
            self.went_down = true;
        }
    }
}

/// The reference's early stop: counts steps on which the best `||m||_1` has not improved.
#[derive(Clone, Debug)]
struct EarlyStop {
    threshold: f64,
    patience: usize,
    stall: usize,
    best_seen: f64,
}

impl EarlyStop {
    fn new(cfg: &NcConfig) -> Self {
        Self {
            threshold: cfg.early_stop_threshold,
            patience: cfg.early_stop_patience,
            stall: 0,
            best_seen: f64::INFINITY,
        }
    }

    /// Update with the best `||m||_1` so far (`inf` before any success); true means stop.
    fn update(&mut self, best_l1: f64, schedule: &CostSchedule) -> bool {
        if best_l1.is_finite() {
            self.stall = if best_l1 >= self.threshold * self.best_seen {
                self.stall + 1
            } else {
                0
            };
        }
        self.best_seen = self.best_seen.min(best_l1);
        schedule.went_up && schedule.went_down && self.stall >= self.patience
    }
}

/// Adam as Keras 2 writes it (the reference's optimiser): `lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)`,
/// `theta -= lr_t m / (sqrt(v) + eps)`.
#[derive(Clone, Debug)]
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    fn step(&mut self, theta: &mut [f32], grad: &[f32], cfg: &NcConfig) {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let lr_t = cfg.lr * (1.0 - b2.powi(self.t)).sqrt() / (1.0 - b1.powi(self.t));
        for (((p, &g), m), v) in theta.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            let g = f64::from(g);
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p = (f64::from(*p) - lr_t * *m / (v.sqrt() + ADAM_EPS)) as f32;
        }
    }
}

/// One target's reverse-engineered trigger.
#[derive(Clone, Debug, Serialize)]
pub struct NcClassResult {
    pub target: usize,
    /// `||m||_1` of the reported mask (sum over the H x W mask values in [0, 1]).
    pub l1: f64,
    /// Whether the ASR reached `attack_succ_threshold`; when not, the reported trigger is the
    /// last iterate and `l1` is its norm (the reference keeps the last mask too).
    pub feasible: bool,
    /// ASR of the reported trigger on the images used.
    pub asr: f64,
    /// Steps taken.
    pub steps: usize,
    /// The cost at the end.
    pub cost: f64,
    /// One-sided MAD anomaly index of `l1` (small is suspicious).
    pub anomaly_index: f64,
    /// The mask, H x W, in [0, 1].
    #[serde(skip)]
    pub mask: Vec<f32>,
    /// The pattern, C x H x W, in [0, 1] pixel units.
    #[serde(skip)]
    pub pattern: Vec<f32>,
}

/// What Neural Cleanse found, with what it ran on.
#[derive(Clone, Debug, Serialize)]
pub struct NcReport {
    /// Whether the largest anomaly index exceeds the threshold.
    pub verdict_backdoored: bool,
    /// The most anomalous class, when flagged.
    pub target: Option<usize>,
    /// The largest anomaly index.
    pub score: f64,
    /// The threshold `score` was judged against: `config.threshold` raised for the model's
    /// class count ([`NcConfig::threshold_for`]).
    pub threshold: f64,
    /// The class with the largest anomaly index, flagged or not.
    pub most_anomalous: usize,
    /// Per target class, in class order (a screened run: the classes optimised fully, most
    /// anomalous in the screening pass first).
    pub classes: Vec<NcClassResult>,
    /// The screening pass, when the model was screened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen: Option<ScreenReport>,
    /// Images stamped for every target.
    pub images: usize,
    /// Mask and pattern shape: `[C, H, W]`.
    pub dims: [usize; 3],
    pub config: NcConfig,
    pub version: String,
    pub seconds: f64,
}

/// `(1 - m) x + m p` for every trigger: `x` `[N, C, H, W]`, `mask` `[T, 1, H, W]`, `pattern`
/// `[T, C, H, W]` -> `[T * N, C, H, W]`, trigger `t`'s images in rows `t * N .. (t + 1) * N`.
pub fn stamp(x: Tensor<4>, mask: Tensor<4>, pattern: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let t = mask.dims()[0];
    let x: Tensor<5> = x.unsqueeze_dim(0);
    let mask: Tensor<5> = mask.unsqueeze_dim(1);
    let pattern: Tensor<5> = pattern.unsqueeze_dim(1);
    let keep = mask.clone().neg().add_scalar(1.0);
    (keep * x + mask * pattern).reshape([t * n, c, h, w])
}

/// From tanh space to [0, 1]: `tanh(raw) / (2 - eps) + 0.5`.
pub fn from_tanh<const D: usize>(raw: Tensor<D>) -> Tensor<D> {
    raw.tanh().div_scalar(2.0 - TANH_EPS).add_scalar(0.5)
}

/// From [0, 1] to tanh space, the inverse of [`from_tanh`].
fn to_tanh(v: f64) -> f32 {
    ((v - 0.5) * (2.0 - TANH_EPS)).atanh() as f32
}

/// A trigger as measured at one iterate.
#[derive(Clone, Debug)]
struct Snapshot {
    l1: f64,
    asr: f64,
    mask: Vec<f32>,
    pattern: Vec<f32>,
}

/// One target's optimisation state, on the host: `raw` is the mask (H x W) then the pattern
/// (C x H x W), both in tanh space.
struct Problem {
    target: usize,
    raw: Vec<f32>,
    adam: Adam,
    schedule: CostSchedule,
    early: EarlyStop,
    steps: usize,
    done: bool,
    best: Option<Snapshot>,
    last: Option<Snapshot>,
}

impl Problem {
    /// A fresh problem: mask and pattern uniform in [0, 1) from `rng` (reference init).
    fn new(target: usize, len: usize, rng: &mut impl Rng, cfg: &NcConfig) -> Self {
        let raw: Vec<f32> = (0..len)
            .map(|_| to_tanh(rng.random_range(0.0..1.0)))
            .collect();
        Problem {
            target,
            adam: Adam::new(raw.len()),
            raw,
            schedule: CostSchedule::new(cfg),
            early: EarlyStop::new(cfg),
            steps: 0,
            done: false,
            best: None,
            last: None,
        }
    }

    /// Take the Adam step and run the reference's bookkeeping for one step measured at `current`:
    /// best trigger, early stop, then the cost.
    fn advance(&mut self, current: Snapshot, grad: &[f32], cfg: &NcConfig) {
        self.adam.step(&mut self.raw, grad, cfg);
        self.steps += 1;
        let success = current.asr >= cfg.attack_succ_threshold;
        if success && self.best.as_ref().is_none_or(|b| current.l1 < b.l1) {
            self.best = Some(current.clone());
        }
        let best_l1 = self.best.as_ref().map_or(f64::INFINITY, |b| b.l1);
        if cfg.early_stop && self.early.update(best_l1, &self.schedule) {
            self.done = true;
        }
        self.schedule.update(current.asr, cfg.attack_succ_threshold);
        self.last = Some(current);
        if self.steps >= cfg.steps {
            self.done = true;
        }
    }

    /// The reported trigger: the best successful one, else the last iterate.
    fn finish(self) -> NcClassResult {
        let feasible = self.best.is_some();
        let s = self.best.or(self.last).unwrap_or_else(|| Snapshot {
            l1: f64::NAN,
            asr: 0.0,
            mask: Vec::new(),
            pattern: Vec::new(),
        });
        NcClassResult {
            target: self.target,
            l1: s.l1,
            feasible,
            asr: s.asr,
            steps: self.steps,
            cost: self.schedule.cost,
            anomaly_index: 0.0,
            mask: s.mask,
            pattern: s.pattern,
        }
    }
}

/// Run Neural Cleanse on `model` with the clean `images` (every target stamps the same ones: all
/// of them, or `cfg.max_images` dealt round-robin over the classes).
/// `progress` is called with the number of per-target steps just taken (nominal total:
/// classes x `cfg.steps`).
pub fn neural_cleanse(
    model: &Classifier,
    images: &ImageSet,
    cfg: &NcConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<NcReport> {
    let start = Instant::now();
    cfg.validate()?;
    model.check_images(images)?;
    if images.is_empty() {
        return Err(Error::Mismatch("Neural Cleanse needs clean images".into()));
    }
    cfg.screen.validate()?;
    let k = model.num_classes();
    let dims = [images.channels, images.height, images.width];
    let len = (1 + dims[0]) * dims[1] * dims[2];
    let (stamped, mut classes, weights, screen) = if cfg.screen.applies(k) {
        let t = Instant::now();
        let quick = NcConfig {
            steps: cfg.screen.steps,
            max_images: cfg.screen.max_samples,
            ..cfg.clone()
        };
        let all: Vec<usize> = (0..k).collect();
        let few = capped_images(model, images, quick.max_images);
        let first = run_targets(model, &few, &all, len, &quick, progress)?;
        let l1: Vec<f64> = first.iter().map(|c| c.l1).collect();
        let indices = anomaly_indices(&l1, Tail::Small);
        let (pool, weights) = pool_from_screen(&indices, &cfg.screen);
        let values = l1
            .iter()
            .map(|&value| {
                vec![ScreenValue {
                    statistic: "l1".into(),
                    layer: None,
                    value,
                }]
            })
            .collect();
        let screen = screen_report(
            &indices,
            values,
            &pool,
            &weights,
            &cfg.screen,
            t.elapsed().as_secs_f64(),
        );
        let full = capped_images(model, images, cfg.max_images);
        let classes = run_targets(model, &full, &pool, len, cfg, progress)?;
        (full.len(), classes, Some(weights), Some(screen))
    } else {
        let all: Vec<usize> = (0..k).collect();
        let full = capped_images(model, images, cfg.max_images);
        let classes = run_targets(model, &full, &all, len, cfg, progress)?;
        (full.len(), classes, None, None)
    };
    let l1: Vec<f64> = classes.iter().map(|c| c.l1).collect();
    let indices = anomaly_indices_weighted(&l1, weights.as_deref(), Tail::Small, 0.0);
    let (mut most_anomalous, mut score) = (0, f64::NEG_INFINITY);
    let mut most_l1 = f64::NAN;
    for (c, &a) in classes.iter_mut().zip(&indices) {
        c.anomaly_index = a;
        if a > score {
            (most_anomalous, score, most_l1) = (c.target, a, c.l1);
        }
    }
    let threshold = cfg.threshold_for(k);
    let verdict_backdoored = score > threshold;
    tracing::info!(
        "neural cleanse: max anomaly index {score:.3} at class {most_anomalous} (l1 {most_l1:.3})"
    );
    Ok(NcReport {
        verdict_backdoored,
        target: verdict_backdoored.then_some(most_anomalous),
        score,
        threshold,
        most_anomalous,
        classes,
        screen,
        images: stamped,
        dims,
        config: cfg.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The images every target stamps: at most `max` of `images`, round-robin over the classes (no
/// class is left out: `num_classes` is no image's label).
fn capped_images(model: &Classifier, images: &ImageSet, max: usize) -> ImageSet {
    if images.len() > max {
        let keep = crate::detect::cepa::sources_of(
            &images.labels,
            images.num_classes.max(model.num_classes()),
            max,
        );
        images.subset(&keep)
    } else {
        images.clone()
    }
}

/// Optimise the triggers of `targets` on `images` (each class's start drawn from its own stream
/// of `cfg.seed`, [`crate::detect::class_rng`]).
fn run_targets(
    model: &Classifier,
    images: &ImageSet,
    targets: &[usize],
    len: usize,
    cfg: &NcConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<NcClassResult>> {
    let dims = [images.channels, images.height, images.width];
    let x = model.images_tensor(&images.pixels, images.len());
    let mut problems: Vec<Problem> = targets
        .iter()
        .map(|&target| {
            Problem::new(
                target,
                len,
                &mut crate::detect::class_rng(cfg.seed, target),
                cfg,
            )
        })
        .collect();
    run_all(model, &x, &mut problems, dims, cfg, progress)?;
    Ok(problems.into_iter().map(Problem::finish).collect())
}

/// Optimise every problem: they are independent, so they are split over the cores, and each
/// core's share into groups of at most `max_batch` stamped images, each group one batch.
fn run_all(
    model: &Classifier,
    x: &Tensor<4>,
    problems: &mut [Problem],
    dims: [usize; 3],
    cfg: &NcConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    let group = (cfg.max_batch / x.dims()[0].max(1)).max(1);
    crate::detect::run_shares(problems, "Neural Cleanse", model.device(), |part| {
        part.chunks_mut(group)
            .try_for_each(|g| optimise(model, x, g, dims, cfg, progress))
    })
}

/// What one batched step measured, on the host, `ka` active problems in order.
struct StepMeasures {
    /// Gradients of the loss with respect to the raw mask (`ka x H x W`) and pattern.
    g_mask: Vec<f32>,
    g_pattern: Vec<f32>,
    /// Stamped images classified as the target, per problem.
    hits: Vec<f32>,
    l1: Vec<f32>,
    masks: Vec<f32>,
    patterns: Vec<f32>,
}

/// One forward and backward pass for the problems at `active`, all stamping the images `x`.
fn measure(
    model: &Classifier,
    x: &Tensor<4>,
    problems: &[Problem],
    active: &[usize],
    dims: [usize; 3],
) -> Result<StepMeasures> {
    let device = model.device();
    let [c, h, w] = dims;
    let (ka, n, hw) = (active.len(), x.dims()[0], h * w);
    let (mut mask_raw, mut pattern_raw) = (Vec::new(), Vec::new());
    for &i in active {
        mask_raw.extend_from_slice(&problems[i].raw[..hw]);
        pattern_raw.extend_from_slice(&problems[i].raw[hw..]);
    }
    let leaf = |v: Vec<f32>, ch: usize| {
        Tensor::<4>::from_data(TensorData::new(v, [ka, ch, h, w]), device).require_grad()
    };
    let (mask_leaf, pattern_leaf) = (leaf(mask_raw, 1), leaf(pattern_raw, c));
    let mask = from_tanh(mask_leaf.clone());
    let pattern = from_tanh(pattern_leaf.clone());
    let logits = model.logits(stamp(x.clone(), mask.clone(), pattern.clone()))?;

    let targets: Vec<i64> = active
        .iter()
        .flat_map(|&i| std::iter::repeat_n(problems[i].target as i64, n))
        .collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [ka * n, 1]), device);
    let costs: Vec<f32> = active
        .iter()
        .map(|&i| problems[i].schedule.cost as f32)
        .collect();
    let costs = Tensor::<1>::from_data(TensorData::new(costs, [ka]), device);
    let l1 = mask.clone().abs().sum_dims(&[1, 2, 3]).reshape([ka]);
    // The sum over the problems of mean_n CE + cost ||m||_1: each problem's gradient is its own.
    let ce = log_softmax(logits.clone(), 1)
        .gather(1, targets.clone())
        .neg()
        .sum()
        .div_scalar(n as f64);
    let loss = ce + (l1.clone() * costs).sum();
    let hits = logits
        .argmax(1)
        .equal(targets)
        .float()
        .reshape([ka, n])
        .sum_dim(1)
        .reshape([ka]);
    let grads = loss.backward();
    let no_grad = || Error::Mismatch("no gradient reached the trigger".into());
    let g_mask = mask_leaf.grad(&grads).ok_or_else(no_grad)?;
    let g_pattern = pattern_leaf.grad(&grads).ok_or_else(no_grad)?;
    // Everything the step needs comes back in one read (one device sync on a GPU).
    let mut parts = crate::detect::host_parts(vec![
        g_mask.reshape([ka * hw]),
        g_pattern.reshape([ka * c * hw]),
        hits,
        l1.detach(),
        mask.detach().reshape([ka * hw]),
        pattern.detach().reshape([ka * c * hw]),
    ])?
    .into_iter();
    let mut next = || parts.next().unwrap_or_default();
    Ok(StepMeasures {
        g_mask: next(),
        g_pattern: next(),
        hits: next(),
        l1: next(),
        masks: next(),
        patterns: next(),
    })
}

/// Run `problems` (batched together, all stamping the same images `x`) to their ends.
fn optimise(
    model: &Classifier,
    x: &Tensor<4>,
    problems: &mut [Problem],
    dims: [usize; 3],
    cfg: &NcConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    let hw = dims[1] * dims[2];
    let chw = dims[0] * hw;
    let n = x.dims()[0];
    for _ in 0..cfg.steps {
        crate::runtime::check_interrupt()?;
        let active: Vec<usize> = (0..problems.len()).filter(|&i| !problems[i].done).collect();
        if active.is_empty() {
            break;
        }
        let m = measure(model, x, problems, &active, dims)?;
        progress(active.len());
        for (j, &i) in active.iter().enumerate() {
            // The measures belong to the iterate before this update, as in the reference.
            let current = Snapshot {
                l1: f64::from(m.l1[j]),
                asr: f64::from(m.hits[j]) / n as f64,
                mask: m.masks[j * hw..(j + 1) * hw].to_vec(),
                pattern: m.patterns[j * chw..(j + 1) * chw].to_vec(),
            };
            let mut grad = m.g_mask[j * hw..(j + 1) * hw].to_vec();
            grad.extend_from_slice(&m.g_pattern[j * chw..(j + 1) * chw]);
            problems[i].advance(current, &grad, cfg);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_nc_screen_section_keeps_neural_cleanses_other_defaults() {
        let cfg: super::NcConfig = toml::from_str("[screen]\nmin_classes = 0\n").unwrap();
        let base = super::NcConfig::default().screen;
        assert_eq!(cfg.screen.min_classes, 0);
        assert_eq!((cfg.screen.steps, cfg.screen.null), (base.steps, base.null));
        assert_eq!((base.steps, base.null), (50, 10));
        assert!(toml::from_str::<super::NcConfig>("[screen]\nnul = 3\n").is_err());
    }

    #[test]
    fn the_threshold_rises_with_the_class_count_past_ten_and_not_below() {
        let cfg = super::NcConfig::default();
        assert_eq!(cfg.threshold, 2.0);
        assert_eq!(cfg.threshold_for(4), 2.0);
        assert_eq!(cfg.threshold_for(10), 2.0);
        let at43 = 2.0 * (43f64.ln() / 10f64.ln()).sqrt();
        assert!((cfg.threshold_for(43) - at43).abs() < 1e-12);
        assert!((at43 - 2.556).abs() < 1e-3, "{at43}");
        let off = super::NcConfig {
            reference_classes: 0,
            ..cfg
        };
        assert_eq!(off.threshold_for(43), 2.0);
    }

    use std::path::Path;

    use super::*;
    use crate::model::{ModelSpec, cpu_device};
    use crate::onnx::Graph;
    use crate::onnx::write::{AttrValue, GraphBuilder};
    use rand::SeedableRng;

    const SIDE: usize = 8;
    const CLASSES: usize = 4;
    const TARGET: usize = 2;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    /// Class `c`'s region: a 3x3 block of the top-left 6x6 (row, column of its corner).
    fn region(c: usize) -> (usize, usize) {
        ((c / 2) * 3, (c % 2) * 3)
    }

    /// A linear classifier on 8x8 grey images: class `c`'s logit is 4 x the mean of its region.
    /// With `planted`, the corner pixel (7,7), black in clean images, adds 20 x its value to the
    /// target's logit: a one-pixel trigger.
    fn linear_model(planted: bool) -> Classifier {
        let d = SIDE * SIDE;
        let mut w = vec![0.0f32; CLASSES * d];
        for c in 0..CLASSES {
            let (r0, c0) = region(c);
            for r in r0..r0 + 3 {
                for q in c0..c0 + 3 {
                    w[c * d + r * SIDE + q] = 4.0 / 9.0;
                }
            }
        }
        if planted {
            w[TARGET * d + d - 1] = 20.0;
        }
        let mut g = GraphBuilder::new("linear");
        g.input("x", &[None, Some(1), Some(SIDE), Some(SIDE)]);
        let f = g.node("Flatten", &["x"], None, &[]);
        g.init_f32("w", &[CLASSES, d], &w);
        g.node(
            "Gemm",
            &[&f, "w"],
            Some("logits"),
            &[("transB", AttrValue::Int(1))],
        );
        g.output("logits", &[None, Some(CLASSES)]);
        let graph = Graph::from_proto(&g.build(13), Path::new("linear.onnx")).unwrap();
        Classifier::new(graph, &ModelSpec::default(), None, &cpu_device(true)).unwrap()
    }

    /// `per_class` images per class: its region bright (0.8), the rest dark (0.1), noise +-0.05,
    /// the trigger pixel black.
    fn images(per_class: usize, seed: u64) -> ImageSet {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for c in 0..CLASSES {
            let (r0, c0) = region(c);
            for _ in 0..per_class {
                for r in 0..SIDE {
                    for q in 0..SIDE {
                        let inside = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&q);
                        let v = if r == SIDE - 1 && q == SIDE - 1 {
                            0.0
                        } else {
                            let base = if inside { 0.8 } else { 0.1 };
                            base + rng.random_range(-0.05..0.05f32)
                        };
                        pixels.push(v);
                    }
                }
                labels.push(c);
            }
        }
        ImageSet::synthetic(pixels, labels, [1, SIDE, SIDE], CLASSES, "synthetic")
    }

    #[test]
    fn stamp_blends_every_image_with_every_trigger() {
        let device = cpu_device(false);
        let (n, t, c, h, w) = (3, 2, 2, 3, 4);
        let values = |len: usize, k: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as f32 * k).sin() * 0.5 + 0.5).clamp(0.0, 1.0))
                .collect()
        };
        let (xv, mv, pv) = (
            values(n * c * h * w, 0.37),
            values(t * h * w, 1.3),
            values(t * c * h * w, 2.1),
        );
        let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), [n, c, h, w]), &device);
        let m = Tensor::<4>::from_data(TensorData::new(mv.clone(), [t, 1, h, w]), &device);
        let p = Tensor::<4>::from_data(TensorData::new(pv.clone(), [t, c, h, w]), &device);
        let out = stamp(x, m, p);
        assert_eq!(out.dims(), [t * n, c, h, w]);
        let out = out.try_into_vec_as::<f32>().unwrap();
        for ti in 0..t {
            for ni in 0..n {
                for ci in 0..c {
                    for pix in 0..h * w {
                        let mm = mv[ti * h * w + pix];
                        let want = (1.0 - mm) * xv[(ni * c + ci) * h * w + pix]
                            + mm * pv[(ti * c + ci) * h * w + pix];
                        let got = out[((ti * n + ni) * c + ci) * h * w + pix];
                        assert!(
                            close(got, want, 1e-6),
                            "t{ti} n{ni} c{ci} p{pix}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // The tanh parameterisation maps 0 to the middle and stays inside [0, 1].
        let v = from_tanh(Tensor::<1>::from_data(
            TensorData::new(vec![0.0f32, -30.0, 30.0, to_tanh(0.25)], [4]),
            &device,
        ))
        .try_into_vec_as::<f32>()
        .unwrap();
        // Saturated values reach the ends up to float rounding (the reference's 2 - eps).
        assert!(close(v[0], 0.5, 1e-6), "{v:?}");
        assert!(v[1].abs() < 1e-7 && (v[2] - 1.0).abs() < 1e-7, "{v:?}");
        assert!(close(v[3], 0.25, 1e-5), "{v:?}");
    }

    #[test]
    fn cost_is_set_after_success_then_rises_and_falls() {
        let cfg = NcConfig {
            patience: 2,
            init_cost: 1.0,
            cost_multiplier: 4.0,
            ..Default::default()
        };
        let mut s = CostSchedule::new(&cfg);
        assert!(s.cost.abs() < 1e-12 && !s.set);
        s.update(0.5, 0.99);
        s.update(1.0, 0.99);
        assert!(s.cost.abs() < 1e-12, "one success is not yet a run");
        // The second success in a row sets the cost and restarts the run that raises it, the
        // setting step counting as its first (reference order).
        s.update(1.0, 0.99);
        assert!(s.set && (s.cost - 1.0).abs() < 1e-12, "{s:?}");
        assert!(!s.went_up);
        s.update(1.0, 0.99);
        assert!((s.cost - 4.0).abs() < 1e-12, "rises after a run: {s:?}");
        s.update(0.0, 0.99);
        assert!((s.cost - 4.0).abs() < 1e-12);
        s.update(0.0, 0.99);
        // Falls by 4^1.5 = 8.
        assert!((s.cost - 0.5).abs() < 1e-12, "{s:?}");
        assert!(s.went_up && s.went_down);

        let mut fixed = CostSchedule::new(&NcConfig {
            reset_cost_to_zero: false,
            ..cfg
        });
        assert!(fixed.set && (fixed.cost - 1.0).abs() < 1e-12);
        fixed.update(0.0, 0.99);
        fixed.update(0.0, 0.99);
        assert!((fixed.cost - 1.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn early_stop_needs_both_directions_and_a_stall() {
        let cfg = NcConfig {
            early_stop_patience: 2,
            ..Default::default()
        };
        let mut e = EarlyStop::new(&cfg);
        let mut s = CostSchedule::new(&cfg);
        s.went_up = true;
        s.went_down = true;
        assert!(!e.update(f64::INFINITY, &s));
        assert!(!e.update(5.0, &s));
        assert!(!e.update(4.0, &s), "an improvement resets the stall");
        assert!(!e.update(4.0, &s));
        assert!(e.update(3.999, &s), "under 0.1 % is no improvement");
        s.went_down = false;
        assert!(!e.update(3.999, &s), "the cost has not yet fallen");
    }

    #[test]
    fn config_is_validated_before_compute() {
        assert!(NcConfig::default().validate().is_ok());
        let bad = [
            NcConfig {
                lr: 0.0,
                ..Default::default()
            },
            NcConfig {
                attack_succ_threshold: 1.5,
                ..Default::default()
            },
            NcConfig {
                cost_multiplier: 1.0,
                ..Default::default()
            },
            NcConfig {
                beta2: 1.0,
                ..Default::default()
            },
            NcConfig {
                steps: 0,
                ..Default::default()
            },
            NcConfig {
                max_images: 0,
                ..Default::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn one_pixel_trigger_is_found_and_clean_twin_is_not_flagged() {
        let data = images(10, 0);
        let cfg = NcConfig::default();
        let planted = linear_model(true);
        assert!(
            planted.accuracy(&data, 64).unwrap() > 0.99,
            "the planted model classifies"
        );
        let r = neural_cleanse(&planted, &data, &cfg, &|_| {}).unwrap();
        let l1: Vec<f64> = r.classes.iter().map(|c| c.l1).collect();
        assert!(r.classes.iter().all(|c| c.feasible), "{:#?}", r.classes);
        assert!(r.verdict_backdoored, "score {} l1 {l1:?}", r.score);
        assert_eq!(r.target, Some(TARGET), "l1 {l1:?}");
        // The target's mask sits on the trigger pixel.
        let mask = &r.classes[TARGET].mask;
        let top = (0..mask.len()).fold(0, |a, i| if mask[i] > mask[a] { i } else { a });
        assert_eq!(top, SIDE * SIDE - 1, "{mask:?}");
        assert!(r.classes[TARGET].asr >= cfg.attack_succ_threshold);

        let clean = linear_model(false);
        let r = neural_cleanse(&clean, &data, &cfg, &|_| {}).unwrap();
        let l1: Vec<f64> = r.classes.iter().map(|c| c.l1).collect();
        assert!(
            !r.verdict_backdoored,
            "clean twin flagged: score {} l1 {l1:?}",
            r.score
        );
        assert_eq!(r.target, None);
    }

    #[test]
    fn max_images_stamps_an_even_share_of_every_class_and_nothing_else() {
        // 4 classes x 10 images capped at 12: 3 of each class, the first 3 of each, and the run
        // is the one on exactly those 12 images.
        let data = images(10, 2);
        let model = linear_model(true);
        let cfg = NcConfig {
            steps: 40,
            max_images: 12,
            ..Default::default()
        };
        let capped = neural_cleanse(&model, &data, &cfg, &|_| {}).unwrap();
        assert_eq!(capped.images, 12);
        let keep: Vec<usize> = (0..CLASSES).flat_map(|c| c * 10..c * 10 + 3).collect();
        let by_hand = neural_cleanse(&model, &data.subset(&keep), &cfg, &|_| {}).unwrap();
        let bits =
            |r: &NcReport| -> Vec<u64> { r.classes.iter().map(|c| c.l1.to_bits()).collect() };
        assert_eq!(bits(&capped), bits(&by_hand));
        // Under the cap every image is used.
        let all = NcConfig {
            max_images: 40,
            ..cfg.clone()
        };
        assert_eq!(
            neural_cleanse(&model, &data, &all, &|_| {}).unwrap().images,
            40
        );
    }

    #[test]
    fn same_seed_same_norms() {
        let data = images(5, 1);
        let model = linear_model(true);
        let cfg = NcConfig {
            steps: 60,
            ..Default::default()
        };
        let steps = std::sync::atomic::AtomicUsize::new(0);
        let count = |s: usize| {
            steps.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        };
        let run = |seed: u64| -> Vec<u64> {
            let cfg = NcConfig {
                seed,
                ..cfg.clone()
            };
            neural_cleanse(&model, &data, &cfg, &count)
                .unwrap()
                .classes
                .iter()
                .map(|c| c.l1.to_bits())
                .collect()
        };
        let a = run(7);
        let taken = steps.load(std::sync::atomic::Ordering::Relaxed);
        assert!(taken > 0 && taken <= CLASSES * cfg.steps, "{taken}");
        // Reproducibility is bitwise: the same seed must give the same floats.
        assert_eq!(a, run(7));
        assert_ne!(a, run(8), "the seed must matter");
    }
}
