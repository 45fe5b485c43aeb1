//! What the trainer needs of a network, and the project's five networks behind one enum.
//!
//! An [`Architecture`] is a family of functions `logits = f(params, x)` of one flat parameter
//! vector (one autodiff leaf, one optimiser state; BatchNorm's running statistics ride in it,
//! untrained); a [`Network`] is a point of that family, the parameter values on the host, which
//! exports to ONNX. [`NetArch`] and [`Net`] dispatch over the small CNN, the ResNet, the
//! VGG-style net, the PreAct-ResNet and the all-convolutional net, for callers (the zoo) that
//! pick one at run time.
//!
//! [`Layout`] names the parameter tensors of a network in flat order; the ResNet, the
//! PreAct-ResNet, the VGG net and the all-convolutional net describe themselves with one, so that initialisation, the
//! device forward pass and the ONNX initializers all read the same table.

use std::fmt;

use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use onnx_ir::ModelProto;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::allconv::{AllConvArch, AllConvWeights};
use super::cnn::{CnnArch, CnnWeights};
use super::mlp::{MlpArch, MlpWeights};
use super::mobilenet::{MobileNetArch, MobileNetWeights};
use super::preact::{PreActArch, PreActWeights};
use super::resnet::{ResNetArch, ResNetWeights};
use super::vgg::{VggArch, VggWeights};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::model::{ModelSpec, OutputKind};
use crate::onnx::write::{AttrValue, GraphBuilder};

/// The shape of a network: everything but its parameter values.
pub trait Architecture: Clone + fmt::Debug {
    /// The host weights of this architecture.
    type Weights: Network<Arch = Self>;

    /// Input `[channels, height, width]`.
    fn input(&self) -> [usize; 3];

    /// Number of output classes.
    fn num_classes(&self) -> usize;

    /// Reject a shape the network cannot be built for.
    fn validate(&self) -> Result<()>;

    /// Length of the flat parameter vector.
    fn num_params(&self) -> usize;

    /// Seeded He (Kaiming normal) initialisation.
    fn init(&self, seed: u64) -> Result<Self::Weights>;

    /// Weights from every parameter in one vector, in the order of [`Network::to_flat`].
    fn unflatten(&self, flat: &[f32]) -> Result<Self::Weights>;

    /// Logits `[N, classes]` for images `[N, C, H, W]` (the model's input units), every
    /// parameter read from `params` (in the order of [`Network::to_flat`]): the inference
    /// forward pass, the one the ONNX export computes.
    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2>;

    /// The forward pass the optimiser differentiates. It differs from [`forward`](Self::forward)
    /// only for a network with BatchNorm, which normalises with the batch's own statistics
    /// while training. Default: `forward`.
    fn forward_train(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        self.forward(params, x)
    }

    /// One value per flat parameter, 1 where the optimiser may move it and 0 for a running
    /// statistic; `None` (the default) when all are trainable.
    fn trainable_mask(&self) -> Option<Vec<f32>> {
        None
    }

    /// The flat parameters after training, with every BatchNorm running statistic set from
    /// `set` (see [`calibrate_norms`]). Default: `flat` as it is (no BatchNorm).
    fn calibrate(&self, flat: Vec<f32>, _set: &ImageSet, _device: &Device) -> Result<Vec<f32>> {
        Ok(flat)
    }

    /// The spec of the exported model: pixels in `[0, 1]` as they are, logits out.
    fn spec(&self) -> ModelSpec {
        logits_spec(self.num_classes())
    }
}

/// A network's parameter values on the host, tied to its architecture.
pub trait Network: Clone + fmt::Debug {
    type Arch: Architecture<Weights = Self>;

    /// The architecture (a copy).
    fn arch(&self) -> Self::Arch;

    /// Check that the values fit the architecture.
    fn validate(&self) -> Result<()>;

    /// Every parameter in one vector.
    fn to_flat(&self) -> Vec<f32>;

    /// The network as an ONNX model (opset [`OPSET`](super::cnn::OPSET)): input `input`
    /// `[N, C, H, W]`, output `logits` `[N, classes]`.
    fn to_onnx(&self) -> Result<ModelProto>;
}

/// An architecture whose parameters are one flat vector laid out by a [`Layout`] (all but the
/// small CNN): [`FlatWeights`] does the rest.
pub trait FlatArch: Architecture<Weights = FlatWeights<Self>> + PartialEq {
    /// The network's name in messages.
    const LABEL: &'static str;

    /// Its parameter tensors in flat order.
    fn param_layout(&self) -> Layout;

    /// The ONNX model with these parameter values (already checked against the layout).
    fn graph(&self, params: &[f32]) -> Result<ModelProto>;
}

/// The [`Architecture`] methods every [`FlatArch`] shares (the input shape and class count from
/// its `channels`, `height`, `width` and `num_classes` fields, the parameter count from its
/// layout, initialisation and unflattening through [`FlatWeights`]), written once: invoke inside
/// its `impl Architecture` block.
macro_rules! flat_arch_methods {
    () => {
        fn input(&self) -> [usize; 3] {
            [self.channels, self.height, self.width]
        }

        fn num_classes(&self) -> usize {
            self.num_classes
        }

        fn num_params(&self) -> usize {
            $crate::train::net::FlatArch::param_layout(self).num_params()
        }

        fn init(&self, seed: u64) -> $crate::error::Result<Self::Weights> {
            $crate::train::net::FlatWeights::fresh(self, seed)
        }

        fn unflatten(&self, flat: &[f32]) -> $crate::error::Result<Self::Weights> {
            $crate::train::net::FlatWeights::from_flat(self, flat)
        }
    };
}
pub(crate) use flat_arch_methods;

/// The [`Architecture`] methods of a network with BatchNorm (the PreAct-ResNet, the MobileNet):
/// inference on running statistics, training on batch statistics, the running statistics left
/// out of the optimiser and calibrated after training. The network has `layout()`, `norms()`
/// (its BatchNorm layers in the order the forward pass runs them) and `run(params, x, mode)`.
macro_rules! norm_arch_methods {
    () => {
        fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
            self.run(params, x, &mut $crate::train::net::NormMode::Running)
        }

        fn forward_train(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
            self.run(params, x, &mut $crate::train::net::NormMode::Batch)
        }

        fn trainable_mask(&self) -> Option<Vec<f32>> {
            self.layout().trainable_mask()
        }

        fn calibrate(
            &self,
            flat: Vec<f32>,
            set: &$crate::data::ImageSet,
            device: &Device,
        ) -> $crate::error::Result<Vec<f32>> {
            $crate::train::net::calibrate_norms(
                &self.layout(),
                &self.norms(),
                flat,
                set,
                device,
                |p, x, mode| {
                    self.run(p, x, mode);
                },
            )
        }
    };
}
pub(crate) use norm_arch_methods;

/// The parameter values of a [`FlatArch`] network on the host, in the order of its layout; conv
/// weights `[out, in, k, k]`, linear weights `[out, in]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlatWeights<A> {
    pub arch: A,
    pub params: Vec<f32>,
}

impl<A: FlatArch> FlatWeights<A> {
    /// Seeded He initialisation of a checked architecture.
    pub fn fresh(arch: &A, seed: u64) -> Result<Self> {
        arch.validate()?;
        Ok(Self {
            arch: arch.clone(),
            params: arch.param_layout().init(seed),
        })
    }

    /// Weights from every parameter in one vector, checked against the layout.
    pub fn from_flat(arch: &A, flat: &[f32]) -> Result<Self> {
        let w = Self {
            arch: arch.clone(),
            params: flat.to_vec(),
        };
        w.validate()?;
        Ok(w)
    }

    /// The values of parameter `name` (e.g. `layer1.0.conv2.weight`, `stage2.conv1.weight`).
    pub fn values(&self, name: &str) -> Option<&[f32]> {
        self.arch.param_layout().values(&self.params, name)
    }

    /// The values of parameter `name`, to change in place.
    pub fn values_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        self.arch.param_layout().values_mut(&mut self.params, name)
    }
}

impl<A: FlatArch> Network for FlatWeights<A> {
    type Arch = A;

    fn arch(&self) -> A {
        self.arch.clone()
    }

    fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        self.arch.param_layout().check(&self.params, A::LABEL)
    }

    fn to_flat(&self) -> Vec<f32> {
        self.params.clone()
    }

    fn to_onnx(&self) -> Result<ModelProto> {
        self.validate()?;
        self.arch.graph(&self.params)
    }
}

/// The spec of a model that takes `[0, 1]` pixels as they are and outputs logits.
pub fn logits_spec(num_classes: usize) -> ModelSpec {
    ModelSpec {
        mean: Some(vec![0.0]),
        std: Some(vec![1.0]),
        output: Some(OutputKind::Logits),
        num_classes: Some(num_classes),
        ..Default::default()
    }
}

/// A standard normal sample (Box-Muller), so that no distribution crate is needed.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// How a parameter tensor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// `N(0, 2 / fan_in)`, fan-in being the product of all dims but the first.
    He,
    /// All zero (biases; the last convolution of a residual branch; BatchNorm shifts and
    /// running means).
    Zero,
    /// All one (BatchNorm scales and running variances).
    One,
}

/// One named parameter tensor: its ONNX initializer name, dims and initialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub init: Init,
    /// Whether the optimiser moves it; false for a BatchNorm running statistic, which training
    /// leaves alone and [`Architecture::calibrate`] sets afterwards.
    pub trainable: bool,
}

impl ParamSpec {
    fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The parameter tensors of a network, in the order of its flat vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    specs: Vec<ParamSpec>,
    offsets: Vec<usize>,
    total: usize,
}

impl Layout {
    pub fn new(specs: Vec<ParamSpec>) -> Layout {
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for s in &specs {
            offsets.push(total);
            total += s.numel();
        }
        Layout {
            specs,
            offsets,
            total,
        }
    }

    /// A weight `[dims]` (He) and its bias `[dims[0]]` (zero), named `NAME.weight`, `NAME.bias`.
    pub(crate) fn layer(specs: &mut Vec<ParamSpec>, name: &str, dims: Vec<usize>, init: Init) {
        let out = dims[0];
        Layout::weight(specs, name, dims, init);
        specs.push(ParamSpec {
            name: format!("{name}.bias"),
            dims: vec![out],
            init: Init::Zero,
            trainable: true,
        });
    }

    /// A weight `[dims]` without a bias, named `NAME.weight`.
    pub(crate) fn weight(specs: &mut Vec<ParamSpec>, name: &str, dims: Vec<usize>, init: Init) {
        specs.push(ParamSpec {
            name: format!("{name}.weight"),
            dims,
            init,
            trainable: true,
        });
    }

    /// A BatchNorm over `channels`, PyTorch's names: trainable `NAME.weight` (one) and
    /// `NAME.bias` (zero), then the running statistics `NAME.running_mean` (zero) and
    /// `NAME.running_var` (one), which the optimiser does not move.
    pub(crate) fn norm(specs: &mut Vec<ParamSpec>, name: &str, channels: usize) {
        for (what, init, trainable) in [
            ("weight", Init::One, true),
            ("bias", Init::Zero, true),
            ("running_mean", Init::Zero, false),
            ("running_var", Init::One, false),
        ] {
            specs.push(ParamSpec {
                name: format!("{name}.{what}"),
                dims: vec![channels],
                init,
                trainable,
            });
        }
    }

    /// One value per flat parameter: 1 where the optimiser may move it, 0 for a running
    /// statistic. `None` when every parameter is trainable.
    pub fn trainable_mask(&self) -> Option<Vec<f32>> {
        if self.specs.iter().all(|s| s.trainable) {
            return None;
        }
        let mut mask = Vec::with_capacity(self.total);
        for s in &self.specs {
            mask.resize(mask.len() + s.numel(), if s.trainable { 1.0 } else { 0.0 });
        }
        Some(mask)
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Length of the flat vector.
    pub fn num_params(&self) -> usize {
        self.total
    }

    fn find(&self, name: &str) -> Option<(usize, &ParamSpec)> {
        let i = self.specs.iter().position(|s| s.name == name)?;
        Some((self.offsets[i], &self.specs[i]))
    }

    /// A flat vector initialised from `seed`, tensor after tensor.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut flat = Vec::with_capacity(self.total);
        for s in &self.specs {
            let n = s.numel();
            match s.init {
                Init::Zero => flat.resize(flat.len() + n, 0.0),
                Init::One => flat.resize(flat.len() + n, 1.0),
                Init::He => {
                    let fan_in = n / s.dims[0].max(1);
                    let std = (2.0 / fan_in.max(1) as f32).sqrt();
                    flat.extend((0..n).map(|_| normal(&mut rng) * std));
                }
            }
        }
        flat
    }

    /// The values of parameter `name` within `flat`.
    pub fn values<'a>(&self, flat: &'a [f32], name: &str) -> Option<&'a [f32]> {
        let (at, s) = self.find(name)?;
        flat.get(at..at + s.numel())
    }

    /// The values of parameter `name` within `flat`, to change in place.
    pub fn values_mut<'a>(&self, flat: &'a mut [f32], name: &str) -> Option<&'a mut [f32]> {
        let (at, s) = self.find(name)?;
        flat.get_mut(at..at + s.numel())
    }

    /// Parameter `name` cut out of the device vector `params`, in its dims.
    ///
    /// # Panics
    /// When the layout has no such parameter or its rank is not `D`: the forward pass and the
    /// layout are written together, so this is a bug, not bad input.
    pub(crate) fn tensor<const D: usize>(&self, params: &Tensor<1>, name: &str) -> Tensor<D> {
        let (at, s) = self
            .find(name)
            .unwrap_or_else(|| panic!("no parameter '{name}' in the layout"));
        assert_eq!(s.dims.len(), D, "rank of parameter '{name}'");
        let dims: [usize; D] = std::array::from_fn(|i| s.dims[i]);
        params.clone().narrow(0, at, s.numel()).reshape(dims)
    }

    /// Check that `flat` has the layout's length.
    pub fn check(&self, flat: &[f32], what: &str) -> Result<()> {
        if flat.len() != self.total {
            return Err(Error::Mismatch(format!(
                "{} parameter values given but the {what} has {}",
                flat.len(),
                self.total
            )));
        }
        Ok(())
    }

    /// Add every parameter of `flat` to `g` as an initializer under its own name.
    pub(crate) fn add_initializers(&self, g: &mut GraphBuilder, flat: &[f32]) {
        for (s, &at) in self.specs.iter().zip(&self.offsets) {
            g.init_f32(&s.name, &s.dims, &flat[at..at + s.numel()]);
        }
    }
}

/// A 2D convolution with a square kernel and equal strides and padding on every side, on the
/// device, its weight and bias read from `params` as `NAME.weight`, `NAME.bias`.
pub(crate) fn conv(
    layout: &Layout,
    params: &Tensor<1>,
    name: &str,
    x: Tensor<4>,
    stride: usize,
    pad: usize,
) -> Tensor<4> {
    let w = layout.tensor::<4>(params, &format!("{name}.weight"));
    let b = layout.tensor::<1>(params, &format!("{name}.bias"));
    let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    crate::kernels::conv2d_train(x, w, Some(b), opts)
}

/// A linear layer `x W^T + b` on the device, from `NAME.weight` `[out, in]` and `NAME.bias`.
pub(crate) fn linear(layout: &Layout, params: &Tensor<1>, name: &str, x: Tensor<2>) -> Tensor<2> {
    let w = layout.tensor::<2>(params, &format!("{name}.weight"));
    let b = layout.tensor::<1>(params, &format!("{name}.bias"));
    x.matmul(w.transpose()) + b.unsqueeze()
}

/// A 2D convolution without bias (as before a BatchNorm), its weight read from `params` as
/// `NAME.weight`.
pub(crate) fn conv_nobias(
    layout: &Layout,
    params: &Tensor<1>,
    name: &str,
    x: Tensor<4>,
    stride: usize,
    pad: usize,
) -> Tensor<4> {
    let w = layout.tensor::<4>(params, &format!("{name}.weight"));
    let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    crate::kernels::conv2d_train(x, w, None, opts)
}

/// A depthwise 3x3 convolution without bias (one group per channel, padding 1), its weight
/// `[C, 1, 3, 3]` read from `params` as `NAME.weight`.
pub(crate) fn depthwise_nobias(
    layout: &Layout,
    params: &Tensor<1>,
    name: &str,
    x: Tensor<4>,
    stride: usize,
) -> Tensor<4> {
    let w = layout.tensor::<4>(params, &format!("{name}.weight"));
    let groups = x.dims()[1];
    let opts = ConvOptions::new([stride, stride], [1, 1], [1, 1], groups);
    crate::kernels::conv2d_train(x, w, None, opts)
}

/// BatchNorm's `epsilon`: PyTorch's default, written into the export.
pub const NORM_EPS: f64 = 1e-5;

/// How a BatchNorm normalises.
pub(crate) enum NormMode<'a> {
    /// With its running statistics (inference, the export).
    Running,
    /// With the batch's own mean and biased variance over N, H and W (training).
    Batch,
    /// As `Batch`, and also push the batch's statistics (mean, biased variance; `[C]` each)
    /// onto the vector, in the order the layers run (calibration).
    Collect(&'a mut Vec<(Tensor<1>, Tensor<1>)>),
}

/// BatchNorm of `x` `[N, C, H, W]`: `(x - mean) / sqrt(var + eps) * NAME.weight + NAME.bias`,
/// the statistics as `mode` says.
pub(crate) fn batch_norm(
    layout: &Layout,
    params: &Tensor<1>,
    name: &str,
    x: Tensor<4>,
    mode: &mut NormMode,
) -> Tensor<4> {
    let c = x.dims()[1];
    let per_channel = |what: &str| {
        layout
            .tensor::<1>(params, &format!("{name}.{what}"))
            .reshape([1, c, 1, 1])
    };
    let (mean, var) = match mode {
        NormMode::Running => (per_channel("running_mean"), per_channel("running_var")),
        NormMode::Batch | NormMode::Collect(_) => {
            let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
            let var = (x.clone() - mean.clone())
                .powi_scalar(2)
                .mean_dim(0)
                .mean_dim(2)
                .mean_dim(3);
            if let NormMode::Collect(out) = mode {
                out.push((
                    mean.clone().detach().reshape([c]),
                    var.clone().detach().reshape([c]),
                ));
            }
            (mean, var)
        }
    };
    (x - mean) / (var + NORM_EPS).sqrt() * per_channel("weight") + per_channel("bias")
}

/// Images per forward pass of [`calibrate_norms`].
const CALIBRATION_BATCH: usize = 200;
/// At most this many training images calibrate the running statistics.
const CALIBRATION_IMAGES: usize = 5000;

/// The running statistics of a network's BatchNorm layers `norms` (in the order its
/// training-mode forward `collect` runs them), set in `flat` from the training images `set`:
/// at most 5,000 of them (a seeded sample, the same for every call) in batches of 200, each
/// batch normalised with its own statistics as in training. A layer's running mean is the mean
/// of its batch means and its running variance the variance of its input over all those images
/// (mean of batch variances plus variance of batch means) [ours: "precise BatchNorm", Wu &
/// Johnson 2021, rather than PyTorch's moving average over the last batches, which lags behind
/// the weights; it is also what a second pass in PyTorch with `momentum = None` computes].
pub(crate) fn calibrate_norms(
    layout: &Layout,
    norms: &[String],
    mut flat: Vec<f32>,
    set: &ImageSet,
    device: &Device,
    collect: impl Fn(Tensor<1>, Tensor<4>, &mut NormMode),
) -> Result<Vec<f32>> {
    if norms.is_empty() {
        return Ok(flat);
    }
    if set.is_empty() {
        return Err(Error::Mismatch(format!(
            "no images in {} to calibrate BatchNorm on",
            set.source.display()
        )));
    }
    let mut order: Vec<usize> = (0..set.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0xba7c);
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    order.truncate(CALIBRATION_IMAGES);
    order.sort_unstable();
    let n = flat.len();
    let params = Tensor::<1>::from_data(TensorData::new(flat.clone(), [n]), device);
    let mut sums: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut batches = 0usize;
    for batch in order.chunks(CALIBRATION_BATCH) {
        let pixels: Vec<f32> = batch
            .iter()
            .flat_map(|&i| set.image(i).iter().copied())
            .collect();
        let x = Tensor::from_data(
            TensorData::new(pixels, [batch.len(), set.channels, set.height, set.width]),
            device,
        );
        let mut stats = Vec::new();
        collect(params.clone(), x, &mut NormMode::Collect(&mut stats));
        if stats.len() != norms.len() {
            return Err(Error::Mismatch(format!(
                "the forward pass ran {} BatchNorm layers, the network has {}",
                stats.len(),
                norms.len()
            )));
        }
        if sums.is_empty() {
            sums = stats
                .iter()
                .map(|(m, _)| (vec![0.0; m.dims()[0]], vec![0.0; m.dims()[0]]))
                .collect();
        }
        for ((mean, var), (sm, sq)) in stats.into_iter().zip(sums.iter_mut()) {
            let (mean, var) = (host(mean)?, host(var)?);
            for (j, (&m, &v)) in mean.iter().zip(&var).enumerate() {
                sm[j] += f64::from(m);
                sq[j] += f64::from(v) + f64::from(m) * f64::from(m);
            }
        }
        batches += 1;
    }
    let b = batches as f64;
    for (name, (sm, sq)) in norms.iter().zip(&sums) {
        let mean: Vec<f32> = sm.iter().map(|s| (s / b) as f32).collect();
        let var: Vec<f32> = sm
            .iter()
            .zip(sq)
            .map(|(s, q)| ((q / b) - (s / b) * (s / b)).max(0.0) as f32)
            .collect();
        for (what, values) in [("running_mean", mean), ("running_var", var)] {
            let slot = layout
                .values_mut(&mut flat, &format!("{name}.{what}"))
                .ok_or_else(|| Error::Mismatch(format!("no parameter {name}.{what}")))?;
            slot.copy_from_slice(&values);
        }
    }
    Ok(flat)
}

fn host(t: Tensor<1>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| Error::Mismatch(format!("cannot read a tensor back: {e:?}")))
}

/// A graph named `name` whose input `INPUT` is `[N, C, H, W]` (`N` free, `input = [C, H, W]`)
/// and whose initialisers are `params` in `layout`'s order: how every exported network starts.
pub(crate) fn onnx_start(
    name: &str,
    input: [usize; 3],
    layout: &Layout,
    params: &[f32],
) -> GraphBuilder {
    let mut g = GraphBuilder::new(name);
    let [c, h, w] = input;
    g.input(super::cnn::INPUT, &[None, Some(c), Some(h), Some(w)]);
    layout.add_initializers(&mut g, params);
    g
}

/// The shape check of a network of convolution stages (VGG, all-convolutional): every size
/// (`[channels, height, width, classes]`) and channel count at least 1, and at least one
/// convolution per stage; the error names the network (`label`) and shows `shape`.
pub(crate) fn check_stages(
    label: &str,
    sizes: [usize; 4],
    stages: &[Vec<usize>],
    shape: &dyn fmt::Debug,
) -> Result<()> {
    let empty = stages.is_empty() || stages.iter().any(Vec::is_empty);
    if sizes.contains(&0) || empty || stages.iter().flatten().any(|&c| c == 0) {
        return Err(Error::Config(format!(
            "every size of the {label} must be at least 1, with at least one convolution per \
             stage: {shape:?}"
        )));
    }
    Ok(())
}

/// Name of 3x3 convolution `i` (0-based) of stage `s` (0-based) of a VGG or all-convolutional
/// net: `stage1.conv1` for the first.
pub(crate) fn stage_conv_name(s: usize, i: usize) -> String {
    format!("stage{}.conv{}", s + 1, i + 1)
}

/// Stage `s` of `n` 3x3 convolutions (padding 1), each followed by ReLU: the training forward
/// of [`onnx_conv_stage`].
pub(crate) fn conv_stage(
    l: &Layout,
    p: &Tensor<1>,
    s: usize,
    n: usize,
    mut x: Tensor<4>,
) -> Tensor<4> {
    for i in 0..n {
        x = burn::tensor::activation::relu(conv(l, p, &stage_conv_name(s, i), x, 1, 1));
    }
    x
}

/// The ONNX twin of [`conv_stage`]: Conv `stageS.convI`, Relu `stageS.reluI`; the last Relu's
/// name.
pub(crate) fn onnx_conv_stage(g: &mut GraphBuilder, x: &str, s: usize, n: usize) -> String {
    let mut x = x.to_string();
    for i in 0..n {
        let name = stage_conv_name(s, i);
        let h = onnx_conv(g, &x, &name, 3, 1, 1, &name);
        let relu = format!("stage{}.relu{}", s + 1, i + 1);
        x = g.node("Relu", &[&h], Some(&relu), &[]);
    }
    x
}

/// The ONNX twin of [`conv_nobias`]: a Conv node reading initializer `NAME.weight`.
pub(crate) fn onnx_conv_nobias(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    kernel: usize,
    stride: usize,
    pad: usize,
    out: &str,
) -> String {
    let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
    g.node(
        "Conv",
        &[x, &format!("{name}.weight")],
        Some(out),
        &[
            ("kernel_shape", AttrValue::Ints(vec![k, k])),
            ("strides", AttrValue::Ints(vec![s, s])),
            ("pads", AttrValue::Ints(vec![p, p, p, p])),
        ],
    )
}

/// The ONNX twin of [`depthwise_nobias`]: a 3x3 Conv node with `group` = `channels`, padding 1,
/// reading initializer `NAME.weight`.
pub(crate) fn onnx_depthwise_nobias(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    channels: usize,
    stride: usize,
    out: &str,
) -> String {
    let s = stride as i64;
    g.node(
        "Conv",
        &[x, &format!("{name}.weight")],
        Some(out),
        &[
            ("kernel_shape", AttrValue::Ints(vec![3, 3])),
            ("strides", AttrValue::Ints(vec![s, s])),
            ("pads", AttrValue::Ints(vec![1, 1, 1, 1])),
            ("group", AttrValue::Int(channels as i64)),
        ],
    )
}

/// The ONNX twin of [`batch_norm`] in [`NormMode::Running`]: BatchNormalization (inference
/// mode) reading `NAME.weight`, `NAME.bias`, `NAME.running_mean`, `NAME.running_var`.
pub(crate) fn onnx_batch_norm(g: &mut GraphBuilder, x: &str, name: &str, out: &str) -> String {
    let p = |what: &str| format!("{name}.{what}");
    g.node(
        "BatchNormalization",
        &[
            x,
            &p("weight"),
            &p("bias"),
            &p("running_mean"),
            &p("running_var"),
        ],
        Some(out),
        &[("epsilon", AttrValue::Float(NORM_EPS as f32))],
    )
}

/// The ONNX twin of [`conv`]: a Conv node reading initializers `NAME.weight`, `NAME.bias`,
/// writing `out`.
pub(crate) fn onnx_conv(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    kernel: usize,
    stride: usize,
    pad: usize,
    out: &str,
) -> String {
    let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
    g.node(
        "Conv",
        &[x, &format!("{name}.weight"), &format!("{name}.bias")],
        Some(out),
        &[
            ("kernel_shape", AttrValue::Ints(vec![k, k])),
            ("strides", AttrValue::Ints(vec![s, s])),
            ("pads", AttrValue::Ints(vec![p, p, p, p])),
        ],
    )
}

/// The ONNX twin of [`linear`]: Gemm with `transB = 1`.
pub(crate) fn onnx_linear(g: &mut GraphBuilder, x: &str, name: &str, out: &str) -> String {
    g.node(
        "Gemm",
        &[x, &format!("{name}.weight"), &format!("{name}.bias")],
        Some(out),
        &[("transB", AttrValue::Int(1))],
    )
}

/// Names [`NetArch::select`] accepts.
pub const ARCH_NAMES: [&str; 7] = [
    "cnn",
    "resnet",
    "vgg",
    "preact-resnet",
    "allconv",
    "mlp",
    "mobilenet",
];

/// The shapes a run-time choice of network picks from (a zoo recipe's `cnn`, `resnet`, `vgg`,
/// `preact`, `allconv`, `mlp` and `mobilenet` tables).
#[derive(Clone, Copy, Debug)]
pub struct Shapes<'a> {
    pub cnn: &'a CnnArch,
    pub resnet: &'a ResNetArch,
    pub vgg: &'a VggArch,
    pub preact: &'a PreActArch,
    pub allconv: &'a AllConvArch,
    pub mlp: &'a MlpArch,
    pub mobilenet: &'a MobileNetArch,
}

/// One of the project's networks, chosen at run time. Serialises as the chosen network's own
/// config (the name is [`NetArch::name`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NetArch {
    Cnn(CnnArch),
    ResNet(ResNetArch),
    Vgg(VggArch),
    PreAct(PreActArch),
    AllConv(AllConvArch),
    Mlp(MlpArch),
    MobileNet(MobileNetArch),
}

impl NetArch {
    /// The configured network called `name` (one of [`ARCH_NAMES`]).
    pub fn select(name: &str, shapes: Shapes) -> Result<Self> {
        match name {
            "cnn" => Ok(NetArch::Cnn(*shapes.cnn)),
            "resnet" => Ok(NetArch::ResNet(shapes.resnet.clone())),
            "vgg" => Ok(NetArch::Vgg(shapes.vgg.clone())),
            "preact-resnet" => Ok(NetArch::PreAct(shapes.preact.clone())),
            "allconv" => Ok(NetArch::AllConv(shapes.allconv.clone())),
            "mlp" => Ok(NetArch::Mlp(shapes.mlp.clone())),
            "mobilenet" => Ok(NetArch::MobileNet(shapes.mobilenet.clone())),
            _ => Err(Error::Config(format!(
                "unknown arch '{name}' (one of {})",
                ARCH_NAMES.map(|n| format!("\"{n}\"")).join(", ")
            ))),
        }
    }

    /// `"cnn"`, `"resnet"`, `"vgg"`, `"preact-resnet"`, `"allconv"`, `"mlp"` or `"mobilenet"`.
    pub fn name(&self) -> &'static str {
        match self {
            NetArch::Cnn(_) => "cnn",
            NetArch::ResNet(_) => "resnet",
            NetArch::Vgg(_) => "vgg",
            NetArch::PreAct(_) => "preact-resnet",
            NetArch::AllConv(_) => "allconv",
            NetArch::Mlp(_) => "mlp",
            NetArch::MobileNet(_) => "mobilenet",
        }
    }

    /// The same network for images `channels x height x width` of `num_classes` classes.
    pub fn with_io(self, channels: usize, height: usize, width: usize, num_classes: usize) -> Self {
        match self {
            NetArch::Cnn(a) => NetArch::Cnn(CnnArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::ResNet(a) => NetArch::ResNet(ResNetArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::Vgg(a) => NetArch::Vgg(VggArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::PreAct(a) => NetArch::PreAct(PreActArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::AllConv(a) => NetArch::AllConv(AllConvArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::Mlp(a) => NetArch::Mlp(MlpArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
            NetArch::MobileNet(a) => NetArch::MobileNet(MobileNetArch {
                channels,
                height,
                width,
                num_classes,
                ..a
            }),
        }
    }
}

/// The weights of a [`NetArch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Net {
    Cnn(CnnWeights),
    ResNet(ResNetWeights),
    Vgg(VggWeights),
    #[serde(rename = "preact-resnet")]
    PreAct(PreActWeights),
    AllConv(AllConvWeights),
    Mlp(MlpWeights),
    #[serde(rename = "mobilenet")]
    MobileNet(MobileNetWeights),
}

/// `$body` with `$a` bound to the architecture inside any variant of `$arch`.
macro_rules! each_arch {
    ($arch:expr, $a:ident => $body:expr) => {
        match $arch {
            NetArch::Cnn($a) => $body,
            NetArch::ResNet($a) => $body,
            NetArch::Vgg($a) => $body,
            NetArch::PreAct($a) => $body,
            NetArch::AllConv($a) => $body,
            NetArch::Mlp($a) => $body,
            NetArch::MobileNet($a) => $body,
        }
    };
}

impl Architecture for NetArch {
    type Weights = Net;

    fn input(&self) -> [usize; 3] {
        each_arch!(self, a => a.input())
    }

    fn num_classes(&self) -> usize {
        each_arch!(self, a => Architecture::num_classes(a))
    }

    fn validate(&self) -> Result<()> {
        each_arch!(self, a => Architecture::validate(a))
    }

    fn num_params(&self) -> usize {
        each_arch!(self, a => Architecture::num_params(a))
    }

    fn init(&self, seed: u64) -> Result<Net> {
        Ok(match self {
            NetArch::Cnn(a) => Net::Cnn(Architecture::init(a, seed)?),
            NetArch::ResNet(a) => Net::ResNet(a.init(seed)?),
            NetArch::Vgg(a) => Net::Vgg(a.init(seed)?),
            NetArch::PreAct(a) => Net::PreAct(a.init(seed)?),
            NetArch::AllConv(a) => Net::AllConv(a.init(seed)?),
            NetArch::Mlp(a) => Net::Mlp(a.init(seed)?),
            NetArch::MobileNet(a) => Net::MobileNet(a.init(seed)?),
        })
    }

    fn unflatten(&self, flat: &[f32]) -> Result<Net> {
        Ok(match self {
            NetArch::Cnn(a) => Net::Cnn(Architecture::unflatten(a, flat)?),
            NetArch::ResNet(a) => Net::ResNet(a.unflatten(flat)?),
            NetArch::Vgg(a) => Net::Vgg(a.unflatten(flat)?),
            NetArch::PreAct(a) => Net::PreAct(a.unflatten(flat)?),
            NetArch::AllConv(a) => Net::AllConv(a.unflatten(flat)?),
            NetArch::Mlp(a) => Net::Mlp(a.unflatten(flat)?),
            NetArch::MobileNet(a) => Net::MobileNet(a.unflatten(flat)?),
        })
    }

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        each_arch!(self, a => a.forward(params, x))
    }

    fn forward_train(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        each_arch!(self, a => a.forward_train(params, x))
    }

    fn trainable_mask(&self) -> Option<Vec<f32>> {
        each_arch!(self, a => a.trainable_mask())
    }

    fn calibrate(&self, flat: Vec<f32>, set: &ImageSet, device: &Device) -> Result<Vec<f32>> {
        each_arch!(self, a => a.calibrate(flat, set, device))
    }

    fn spec(&self) -> ModelSpec {
        each_arch!(self, a => Architecture::spec(a))
    }
}

impl Network for Net {
    type Arch = NetArch;

    fn arch(&self) -> NetArch {
        match self {
            Net::Cnn(w) => NetArch::Cnn(w.arch),
            Net::ResNet(w) => NetArch::ResNet(w.arch.clone()),
            Net::Vgg(w) => NetArch::Vgg(w.arch.clone()),
            Net::PreAct(w) => NetArch::PreAct(w.arch.clone()),
            Net::AllConv(w) => NetArch::AllConv(w.arch.clone()),
            Net::Mlp(w) => NetArch::Mlp(w.arch.clone()),
            Net::MobileNet(w) => NetArch::MobileNet(w.arch.clone()),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Net::Cnn(w) => Network::validate(w),
            Net::ResNet(w) => w.validate(),
            Net::Vgg(w) => w.validate(),
            Net::PreAct(w) => w.validate(),
            Net::AllConv(w) => w.validate(),
            Net::Mlp(w) => w.validate(),
            Net::MobileNet(w) => w.validate(),
        }
    }

    fn to_flat(&self) -> Vec<f32> {
        match self {
            Net::Cnn(w) => Network::to_flat(w),
            Net::ResNet(w) => w.to_flat(),
            Net::Vgg(w) => w.to_flat(),
            Net::PreAct(w) => w.to_flat(),
            Net::AllConv(w) => w.to_flat(),
            Net::Mlp(w) => w.to_flat(),
            Net::MobileNet(w) => w.to_flat(),
        }
    }

    fn to_onnx(&self) -> Result<ModelProto> {
        match self {
            Net::Cnn(w) => Network::to_onnx(w),
            Net::ResNet(w) => w.to_onnx(),
            Net::Vgg(w) => w.to_onnx(),
            Net::PreAct(w) => w.to_onnx(),
            Net::AllConv(w) => w.to_onnx(),
            Net::Mlp(w) => w.to_onnx(),
            Net::MobileNet(w) => w.to_onnx(),
        }
    }
}
