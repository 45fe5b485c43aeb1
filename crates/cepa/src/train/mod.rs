//! Training the project's own small classifiers with burn and exporting them to ONNX, so that
//! backdoored (and clean) models with known ground truth can be made without Python.
//!
//! - [`net`]: what the trainer needs of a network ([`Architecture`], [`Network`]) and the
//!   run-time choice between those below ([`NetArch`], [`Net`]).
//! - [`cnn`]: the small CNN ([`CnnArch`], host [`CnnWeights`], device [`Cnn`], ONNX export).
//! - [`resnet`]: a narrow CIFAR-style ResNet without batch normalisation ([`ResNetArch`]).
//! - [`vgg`]: a VGG-style stack of 3x3 convolutions and max-pools ([`VggArch`]).
//! - [`allconv`]: an all-convolutional net after All-CNN-C: stride-2 convolutions for pools,
//!   a 1x1 convolution and a global average pool for the classifier ([`AllConvArch`]).
//! - [`preact`]: PreAct-ResNet-18 with BatchNorm, the field's standard victim ([`PreActArch`]).
//! - [`mobilenet`]: a CIFAR-style MobileNet, depthwise-separable blocks with BatchNorm
//!   ([`MobileNetArch`]).
//! - [`Trainer`]: Adam or SGD with momentum on cross-entropy, mini-batches drawn in a seeded
//!   shuffled order; a network with BatchNorm gets its running statistics afterwards
//!   ([`Trainer::calibrated_weights`]).
//!
//! The network takes images as [`ImageSet`] holds them, `[0, 1]` pixels NCHW, without any
//! normalisation: the exported model's spec is mean 0, std 1, output logits.

pub mod allconv;
pub mod cnn;
pub mod mlp;
pub mod mobilenet;
pub mod net;
pub mod preact;
pub mod resnet;
pub mod vgg;

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::loss::cross_entropy_with_logits;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use allconv::{AllConvArch, AllConvWeights};
pub use cnn::{Cnn, CnnArch, CnnWeights};
pub use mlp::{MlpArch, MlpWeights};
pub use mobilenet::{MobileNetArch, MobileNetWeights};
pub use net::{ARCH_NAMES, Architecture, FlatArch, FlatWeights, Net, NetArch, Network, Shapes};
pub use preact::{PreActArch, PreActWeights};
pub use resnet::{ResNetArch, ResNetWeights};
pub use vgg::{VggArch, VggWeights};

use crate::attack::Trigger;
use crate::data::ImageSet;
use crate::error::{Error, Result};

/// The optimiser of [`TrainConfig::optimizer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam (betas 0.9, 0.999, eps 1e-8), `weight_decay` added to the gradient as PyTorch's
    /// `Adam(weight_decay=...)` does.
    #[default]
    Adam,
    /// SGD with `momentum` (PyTorch's form: `buf = momentum buf + g + weight_decay theta`,
    /// `theta -= lr buf`), the optimiser of BackdoorBench's recipes.
    Sgd,
}

/// How the learning rate moves from epoch to epoch ([`TrainConfig::schedule`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// `lr x lr_decay^epoch`.
    #[default]
    Exponential,
    /// Cosine annealing to zero over `epochs`, stepped per epoch: `lr (1 + cos(pi e / E)) / 2`
    /// (PyTorch's `CosineAnnealingLR(T_max = epochs)`, BackdoorBench's default).
    Cosine,
}

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set. Default 3.
    pub epochs: usize,
    /// Images per optimiser step. Default 64.
    pub batch_size: usize,
    /// `"adam"` or `"sgd"`. Default `"adam"`.
    pub optimizer: Optimizer,
    /// Learning rate of the first epoch. Default 1e-3.
    pub lr: f64,
    /// `"exponential"` (with `lr_decay`) or `"cosine"`. Default `"exponential"`.
    pub schedule: Schedule,
    /// Factor applied to the learning rate after every epoch (exponential schedule). Default
    /// 1.0 (constant).
    pub lr_decay: f64,
    /// SGD's momentum. Default 0.9.
    pub momentum: f64,
    /// L2 weight decay on every trainable parameter (not on BatchNorm's running statistics).
    /// Default 0.
    pub weight_decay: f64,
    /// Augmentation: every image of every batch is translated by a random whole number of pixels
    /// in `[-shift, shift]` along each axis (zero fill). Default 0 (none).
    pub shift: usize,
    /// Augmentation: every image is mirrored left-right with probability 1/2 (for natural images
    /// such as CIFAR-10; not for digits or traffic signs). Default false.
    pub flip: bool,
    /// With an attack (a zoo build): stamp the trigger on the poisoned images after the
    /// augmentation (shift, flip) instead of before, as WaNet's reference code does, so that the
    /// network learns the trigger the test images carry, unmoved and unmirrored. Default false
    /// (poison once, then augment like any other image, as BadNets-style toolkits do).
    pub trigger_after_augment: bool,
    /// Seed of the initial weights and of the shuffling. Default 0.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 64,
            optimizer: Optimizer::Adam,
            lr: 1e-3,
            schedule: Schedule::Exponential,
            lr_decay: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            shift: 0,
            flip: false,
            trigger_after_augment: false,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Reject values that would make training meaningless, before any compute.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Config(format!(
                "learning rate {} must be positive",
                self.lr
            )));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(Error::Config(format!(
                "learning-rate decay {} must be in (0, 1]",
                self.lr_decay
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Config(format!(
                "momentum {} must be in [0, 1)",
                self.momentum
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::Config(format!(
                "weight decay {} must be a number of at least 0",
                self.weight_decay
            )));
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Exponential => {
                self.lr * self.lr_decay.powi(epoch.min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

/// What one epoch did.
#[derive(Clone, Debug, Serialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean cross-entropy over the epoch's batches (weights moving as they go).
    pub loss: f64,
    /// Fraction of the epoch's images classified correctly when their batch was seen.
    pub accuracy: f64,
    pub seconds: f64,
}

/// A trigger stamped on some training images after their augmentation
/// ([`TrainConfig::trigger_after_augment`]).
pub struct LateTrigger {
    pub trigger: Box<dyn Trigger + Send + Sync>,
    /// Per training image: whether it gets the trigger (image `i` is stamped as the `i`-th).
    pub stamped: Vec<bool>,
}

impl std::fmt::Debug for LateTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.stamped.iter().filter(|&&s| s).count();
        write!(f, "LateTrigger({n} of {} images)", self.stamped.len())
    }
}

/// A [`Trainer`] between two epochs ([`Trainer::state`], [`Trainer::restore`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerState {
    /// Epochs done.
    pub epochs: usize,
    /// Optimiser steps done (Adam's bias correction counts them).
    pub steps: usize,
    /// Where the shuffling and augmentation generator stands (ChaCha8's word position).
    pub rng_word_pos: u128,
    /// Every parameter, in the order of [`Network::to_flat`].
    pub params: Vec<f32>,
    /// Adam's first moment, or SGD's momentum buffer.
    pub m: Vec<f32>,
    /// Adam's second moment (zeros under SGD).
    pub v: Vec<f32>,
}

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Adam or SGD on the flat parameter tensor of a [`Network`], one epoch at a time.
#[derive(Debug)]
pub struct Trainer<N: Network> {
    arch: N::Arch,
    /// Every parameter, in the order of [`Network::to_flat`]; the autodiff leaf.
    params: Tensor<1>,
    /// 1 for a trainable value, 0 for a running statistic; `None` when all are trainable.
    mask: Option<Tensor<1>>,
    /// Adam's first moment, or SGD's momentum buffer.
    m: Tensor<1>,
    v: Tensor<1>,
    steps: usize,
    epochs: usize,
    cfg: TrainConfig,
    rng: ChaCha8Rng,
    device: Device,
}

impl<N: Network> Trainer<N> {
    /// Start from `init` on `device` (autodiff is enabled on the parameters whatever the device).
    pub fn new(init: &N, cfg: &TrainConfig, device: &Device) -> Result<Trainer<N>> {
        cfg.validate()?;
        init.validate()?;
        let device = device.clone().inner();
        let params = upload(init, &device);
        let zeros = params.zeros_like();
        let arch = init.arch();
        let mask = arch.trainable_mask().map(|m| {
            let n = m.len();
            Tensor::<1>::from_data(TensorData::new(m, [n]), &device)
        });
        Ok(Trainer {
            arch,
            params: params.autodiff().require_grad(),
            mask,
            m: zeros.clone(),
            v: zeros,
            steps: 0,
            epochs: 0,
            cfg: cfg.clone(),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            device,
        })
    }

    /// One pass over `set` in a freshly shuffled order.
    pub fn epoch(&mut self, set: &ImageSet) -> Result<EpochStats> {
        self.epoch_with(set, None)
    }

    /// [`epoch`](Self::epoch), stamping `late`'s trigger on its images after augmentation.
    pub fn epoch_with(&mut self, set: &ImageSet, late: Option<&LateTrigger>) -> Result<EpochStats> {
        let [c, h, w] = self.arch.input();
        let k = self.arch.num_classes();
        set.check_fits(c, h, w, k)?;
        if let Some(l) = late
            && l.stamped.len() != set.len()
        {
            return Err(Error::Mismatch(format!(
                "the late trigger marks {} images but {} has {}",
                l.stamped.len(),
                set.source.display(),
                set.len()
            )));
        }
        if set.is_empty() {
            return Err(Error::Mismatch(format!(
                "no training images in {}",
                set.source.display()
            )));
        }
        let start = Instant::now();
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.shuffle(&mut self.rng);
        // Summed on the device and read once an epoch: a read per batch would make a GPU wait
        // for every step before it could queue the next.
        let (mut loss_acc, mut hits_acc): (Option<Tensor<1>>, Option<Tensor<1, Int>>) =
            (None, None);
        let lr = self.cfg.lr_at(self.epochs);
        let batches = order.chunks(self.cfg.batch_size);
        let num_batches = batches.len();
        for batch in batches {
            let pixels = batch_pixels(
                set,
                batch,
                self.cfg.shift,
                self.cfg.flip,
                late,
                &mut self.rng,
            )?;
            let (x, onehot, labels) = batch_tensors(set, batch, pixels, k, &self.device);
            let logits = self.arch.forward_train(self.params.clone(), x);
            let loss = cross_entropy_with_logits(logits.clone(), onehot);
            let grads = loss.backward();
            let g = self.params.grad(&grads).ok_or_else(|| {
                Error::Mismatch("no gradient reached the network's parameters".into())
            })?;
            self.step(g, lr);
            let l = loss.inner();
            loss_acc = Some(match loss_acc.take() {
                Some(a) => a + l,
                None => l,
            });
            let pred = logits.inner().argmax(1).equal(labels).int().sum();
            hits_acc = Some(match hits_acc.take() {
                Some(a) => a + pred,
                None => pred,
            });
        }
        let loss_sum = match loss_acc {
            Some(a) => f64::from(read_f32(a)?[0]),
            None => 0.0,
        };
        let hits = match hits_acc {
            Some(a) => read_i64(a)?[0] as usize,
            None => 0,
        };
        self.epochs += 1;
        let stats = EpochStats {
            epoch: self.epochs,
            lr,
            loss: loss_sum / num_batches as f64,
            accuracy: hits as f64 / set.len() as f64,
            seconds: start.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch = stats.epoch,
            loss = stats.loss,
            accuracy = stats.accuracy,
            seconds = stats.seconds,
            "trained one epoch"
        );
        Ok(stats)
    }

    /// One optimiser step on gradient `g` (the running statistics, masked out, never move).
    fn step(&mut self, g: Tensor<1>, lr: f64) {
        self.steps += 1;
        let theta = self.params.clone().inner();
        let mut g = g;
        if self.cfg.weight_decay > 0.0 {
            g = g + theta.clone() * self.cfg.weight_decay;
        }
        if let Some(mask) = &self.mask {
            g = g * mask.clone();
        }
        let update = match self.cfg.optimizer {
            Optimizer::Adam => {
                let (b1, b2) = (ADAM_BETA1, ADAM_BETA2);
                self.m = self.m.clone() * b1 + g.clone() * (1.0 - b1);
                self.v = self.v.clone() * b2 + g.powi_scalar(2) * (1.0 - b2);
                let bc1 = 1.0 - b1.powi(self.steps as i32);
                let bc2 = 1.0 - b2.powi(self.steps as i32);
                (self.m.clone() / bc1) / ((self.v.clone() / bc2).sqrt() + ADAM_EPS) * lr
            }
            Optimizer::Sgd => {
                self.m = self.m.clone() * self.cfg.momentum + g;
                self.m.clone() * lr
            }
        };
        self.params = (theta - update).autodiff().require_grad();
    }

    /// Epochs trained so far (those of a restored [`TrainerState`] included).
    pub fn epochs_done(&self) -> usize {
        self.epochs
    }

    /// Everything the trainer carries from one epoch to the next, on the host: restored by
    /// [`restore`](Self::restore), the next epochs are the very ones an uninterrupted run trains.
    pub fn state(&self) -> Result<TrainerState> {
        Ok(TrainerState {
            epochs: self.epochs,
            steps: self.steps,
            rng_word_pos: self.rng.get_word_pos(),
            params: read_f32(self.params.clone().inner())?,
            m: read_f32(self.m.clone())?,
            v: read_f32(self.v.clone())?,
        })
    }

    /// Continue from `state`, taken from a trainer of the same network and settings (the
    /// shuffling generator is the one `cfg.seed` starts, moved to where the state left it).
    pub fn restore(&mut self, state: &TrainerState) -> Result<()> {
        let n = self.arch.num_params();
        for (what, len) in [
            ("parameters", state.params.len()),
            ("first moments", state.m.len()),
            ("second moments", state.v.len()),
        ] {
            if len != n {
                return Err(Error::Mismatch(format!(
                    "the saved training state has {len} {what} where the network has {n}"
                )));
            }
        }
        if let Some(i) = state.params.iter().position(|v| !v.is_finite()) {
            return Err(Error::Mismatch(format!(
                "the saved training state's parameter {i} is {}",
                state.params[i]
            )));
        }
        let up = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &self.device);
        self.params = up(&state.params).autodiff().require_grad();
        self.m = up(&state.m);
        self.v = up(&state.v);
        self.steps = state.steps;
        self.epochs = state.epochs;
        self.rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        self.rng.set_word_pos(state.rng_word_pos);
        Ok(())
    }

    /// The current weights on the host, as trained: a network with BatchNorm still has the
    /// running statistics it started with (see [`calibrated_weights`](Self::calibrated_weights)).
    pub fn weights(&self) -> Result<N> {
        let flat = read_f32(self.params.clone().inner())?;
        self.arch.unflatten(&flat)
    }

    /// The current weights with every BatchNorm running statistic set from the training images
    /// `set` ([`Architecture::calibrate`]); the same as [`weights`](Self::weights) for a network
    /// without BatchNorm.
    pub fn calibrated_weights(&self, set: &ImageSet) -> Result<N> {
        let flat = read_f32(self.params.clone().inner())?;
        let flat = self.arch.calibrate(flat, set, &self.device)?;
        self.arch.unflatten(&flat)
    }
}

/// The flat parameters of `weights` as a tensor on `device`.
fn upload<N: Network>(weights: &N, device: &Device) -> Tensor<1> {
    let flat = weights.to_flat();
    let n = flat.len();
    Tensor::from_data(TensorData::new(flat, [n]), device)
}

/// The outcome of [`train`].
#[derive(Clone, Debug)]
pub struct Trained<N: Network> {
    pub weights: N,
    pub history: Vec<EpochStats>,
}

/// Train a fresh network (He init from `cfg.seed`) on `set` for `cfg.epochs` epochs.
pub fn train<A: Architecture>(
    set: &ImageSet,
    arch: A,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<Trained<A::Weights>> {
    let init = arch.init(cfg.seed)?;
    let mut trainer = Trainer::new(&init, cfg, device)?;
    let history = (0..cfg.epochs)
        .map(|_| trainer.epoch(set))
        .collect::<Result<Vec<_>>>()?;
    Ok(Trained {
        weights: trainer.calibrated_weights(set)?,
        history,
    })
}

/// The pixels of images `batch` of `set`, one after another, each translated by a random offset
/// in `[-shift, shift]` per axis (drawn from `rng` only when `shift > 0`), with `flip` mirrored
/// left-right with probability 1/2, and then, if `late` marks it, stamped with its trigger.
fn batch_pixels(
    set: &ImageSet,
    batch: &[usize],
    shift: usize,
    flip: bool,
    late: Option<&LateTrigger>,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let mut pixels = Vec::with_capacity(batch.len() * set.image_len());
    let per = set.image_len();
    for &i in batch {
        let from = pixels.len();
        if shift == 0 {
            pixels.extend_from_slice(set.image(i));
        } else {
            let s = shift as i64;
            let dy = rng.random_range(-s..=s) as isize;
            let dx = rng.random_range(-s..=s) as isize;
            pixels.extend(translate(
                set.image(i),
                set.channels,
                set.height,
                set.width,
                dy,
                dx,
            ));
        }
        if flip && rng.random_bool(0.5) {
            mirror(&mut pixels[from..from + per], set.width);
        }
        if let Some(l) = late
            && l.stamped[i]
        {
            let (c, h, w) = (set.channels, set.height, set.width);
            l.trigger
                .apply_nth(&mut pixels[from..from + per], c, h, w, i)?;
        }
    }
    Ok(pixels)
}

/// Mirror a CHW image left-right in place (`w` values per row).
pub fn mirror(chw: &mut [f32], w: usize) {
    if w > 0 {
        for row in chw.chunks_exact_mut(w) {
            row.reverse();
        }
    }
}

/// A CHW image moved down by `dy` and right by `dx` pixels (negative: up, left), zero fill.
pub fn translate(chw: &[f32], c: usize, h: usize, w: usize, dy: isize, dx: isize) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        for r in 0..h {
            let Some(src_r) = r.checked_add_signed(-dy).filter(|&v| v < h) else {
                continue;
            };
            for col in 0..w {
                if let Some(src_c) = col.checked_add_signed(-dx).filter(|&v| v < w) {
                    out[(ch * h + r) * w + col] = chw[(ch * h + src_r) * w + src_c];
                }
            }
        }
    }
    out
}

/// `pixels` of images `batch` of `set` as `[B, C, H, W]`, their one-hot labels `[B, K]` and
/// labels `[B, 1]`.
fn batch_tensors(
    set: &ImageSet,
    batch: &[usize],
    pixels: Vec<f32>,
    k: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<2>, Tensor<2, Int>) {
    let b = batch.len();
    let mut onehot = vec![0.0f32; b * k];
    for (row, &i) in batch.iter().enumerate() {
        onehot[row * k + set.labels[i]] = 1.0;
    }
    let labels: Vec<i64> = batch.iter().map(|&i| set.labels[i] as i64).collect();
    (
        Tensor::from_data(
            TensorData::new(pixels, [b, set.channels, set.height, set.width]),
            device,
        ),
        Tensor::from_data(TensorData::new(onehot, [b, k]), device),
        Tensor::from_data(TensorData::new(labels, [b, 1]), device),
    )
}

fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| Error::Mismatch(format!("cannot read a tensor back: {e:?}")))
}

fn read_i64<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.try_into_vec_as::<i64>()
        .map_err(|e| Error::Mismatch(format!("cannot read a tensor back: {e:?}")))
}

/// Images scored per forward pass in [`predict`].
const EVAL_BATCH: usize = 500;

/// The predicted class of every image of `set`.
pub fn predict<N: Network>(weights: &N, set: &ImageSet, device: &Device) -> Result<Vec<usize>> {
    weights.validate()?;
    let arch = weights.arch();
    let [c, h, w] = arch.input();
    set.check_fits(c, h, w, arch.num_classes())?;
    let device = device.clone().inner();
    let params = upload(weights, &device);
    let per = set.image_len();
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.pixels.chunks(EVAL_BATCH * per.max(1)) {
        let b = chunk.len() / per.max(1);
        let x = Tensor::from_data(TensorData::new(chunk.to_vec(), [b, c, h, w]), &device);
        out.extend(
            read_i64(arch.forward(params.clone(), x).argmax(1))?
                .into_iter()
                .map(|c| c as usize),
        );
    }
    Ok(out)
}

/// Fraction of `set` classified as labelled.
pub fn accuracy<N: Network>(weights: &N, set: &ImageSet, device: &Device) -> Result<f64> {
    if set.is_empty() {
        return Err(Error::Mismatch(format!(
            "no images in {} to measure accuracy on",
            set.source.display()
        )));
    }
    let pred = predict(weights, set, device)?;
    let hits = pred.iter().zip(&set.labels).filter(|(p, l)| p == l).count();
    Ok(hits as f64 / set.len() as f64)
}

#[cfg(test)]
mod tests;
