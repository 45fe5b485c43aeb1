//! The project's small CNN: conv 5x5 -> ReLU -> max-pool 2 -> conv 5x5 -> ReLU -> max-pool 2 ->
//! flatten -> linear -> ReLU -> linear, with its weights as plain host vectors, a forward pass on
//! burn tensors for training, and an ONNX export the interpreter reads back.

use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use onnx_ir::ModelProto;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::net::{Architecture, Network, logits_spec, normal};
use crate::error::{Error, Result};
use crate::onnx::write::{AttrValue, GraphBuilder};

/// ONNX opset of the exported model.
pub const OPSET: i64 = 13;
/// Name of the exported model's input.
pub const INPUT: &str = "input";
/// Name of the exported model's output.
pub const OUTPUT: &str = "logits";

/// Shape of the network. The defaults are the MNIST model: 1x28x28 input, conv 8 and 16, a
/// 64-unit hidden layer, 10 classes (256 flattened features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnnArch {
    /// Input channels. Default 1.
    pub channels: usize,
    /// Input height, pixels. Default 28.
    pub height: usize,
    /// Input width, pixels. Default 28.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Side of both convolution kernels. Default 5.
    pub kernel: usize,
    /// Output channels of the first convolution. Default 8.
    pub conv1: usize,
    /// Output channels of the second convolution. Default 16.
    pub conv2: usize,
    /// Units of the hidden linear layer. Default 64.
    pub hidden: usize,
}

impl Default for CnnArch {
    fn default() -> Self {
        Self {
            channels: 1,
            height: 28,
            width: 28,
            num_classes: 10,
            kernel: 5,
            conv1: 8,
            conv2: 16,
            hidden: 64,
        }
    }
}

impl CnnArch {
    /// The spec of the exported model: pixels in `[0,1]` as they are, logits out.
    pub fn spec(&self) -> crate::model::ModelSpec {
        logits_spec(self.num_classes)
    }

    /// Spatial size after the two conv + pool blocks, or `None` when the input is too small.
    fn feature_hw(&self) -> Option<(usize, usize)> {
        let k1 = self.kernel.checked_sub(1)?;
        let block = |s: usize| (s.checked_sub(k1)? / 2).checked_sub(k1);
        let (h, w) = (block(self.height)? / 2, block(self.width)? / 2);
        (h > 0 && w > 0).then_some((h, w))
    }

    /// Reject a shape the network cannot be built for.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            self.channels,
            self.num_classes,
            self.kernel,
            self.conv1,
            self.conv2,
            self.hidden,
        ];
        if sizes.contains(&0) {
            return Err(Error::Config(format!(
                "every size of the CNN must be at least 1: {self:?}"
            )));
        }
        if self.feature_hw().is_none() {
            return Err(Error::Config(format!(
                "a {}x{} input is too small for two {k}x{k} conv + 2x2 pool blocks",
                self.height,
                self.width,
                k = self.kernel
            )));
        }
        Ok(())
    }

    /// Features after flattening the second block.
    pub fn flat(&self) -> usize {
        let (h, w) = self.feature_hw().unwrap_or((0, 0));
        self.conv2 * h * w
    }

    /// Dims of the eight parameter tensors, in the order of [`CnnWeights::parts`].
    pub fn dims(&self) -> [Vec<usize>; 8] {
        let k = self.kernel;
        [
            vec![self.conv1, self.channels, k, k],
            vec![self.conv1],
            vec![self.conv2, self.conv1, k, k],
            vec![self.conv2],
            vec![self.hidden, self.flat()],
            vec![self.hidden],
            vec![self.num_classes, self.hidden],
            vec![self.num_classes],
        ]
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.dims()
            .iter()
            .map(|d| d.iter().product::<usize>())
            .sum()
    }
}

/// The network's parameters on the host, in ONNX layouts: conv weights `[out, in, k, k]`, linear
/// weights `[out, in]` (PyTorch's convention; the export uses Gemm with `transB = 1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CnnWeights {
    pub arch: CnnArch,
    pub conv1_w: Vec<f32>,
    pub conv1_b: Vec<f32>,
    pub conv2_w: Vec<f32>,
    pub conv2_b: Vec<f32>,
    pub fc1_w: Vec<f32>,
    pub fc1_b: Vec<f32>,
    pub fc2_w: Vec<f32>,
    pub fc2_b: Vec<f32>,
}

/// Names of the parameter tensors (also their ONNX initializer names).
pub const PARAM_NAMES: [&str; 8] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
];

impl CnnWeights {
    /// He (Kaiming normal) initialisation from `seed`: weights `N(0, 2 / fan_in)`, biases 0.
    pub fn init(arch: CnnArch, seed: u64) -> Result<CnnWeights> {
        arch.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let [d0, _, d2, _, d4, _, d6, _] = arch.dims();
        let mut he = |dims: &[usize]| {
            let n: usize = dims.iter().product();
            let fan_in = n / dims[0];
            let std = (2.0 / fan_in as f32).sqrt();
            (0..n).map(|_| normal(&mut rng) * std).collect::<Vec<f32>>()
        };
        Ok(CnnWeights {
            arch,
            conv1_w: he(&d0),
            conv1_b: vec![0.0; arch.conv1],
            conv2_w: he(&d2),
            conv2_b: vec![0.0; arch.conv2],
            fc1_w: he(&d4),
            fc1_b: vec![0.0; arch.hidden],
            fc2_w: he(&d6),
            fc2_b: vec![0.0; arch.num_classes],
        })
    }

    /// The eight parameter tensors, in the order of [`PARAM_NAMES`].
    pub fn parts(&self) -> [&[f32]; 8] {
        [
            &self.conv1_w,
            &self.conv1_b,
            &self.conv2_w,
            &self.conv2_b,
            &self.fc1_w,
            &self.fc1_b,
            &self.fc2_w,
            &self.fc2_b,
        ]
    }

    /// Every parameter in one vector, in the order of [`parts`](Self::parts).
    pub fn to_flat(&self) -> Vec<f32> {
        self.parts().concat()
    }

    /// The inverse of [`to_flat`](Self::to_flat).
    pub fn from_flat(arch: CnnArch, flat: &[f32]) -> Result<CnnWeights> {
        arch.validate()?;
        if flat.len() != arch.num_params() {
            return Err(Error::Mismatch(format!(
                "{} parameter values given but the CNN {arch:?} has {}",
                flat.len(),
                arch.num_params()
            )));
        }
        let mut rest = flat;
        let mut take = |dims: &Vec<usize>| {
            let (head, tail) = rest.split_at(dims.iter().product());
            rest = tail;
            head.to_vec()
        };
        let [d0, d1, d2, d3, d4, d5, d6, d7] = arch.dims();
        Ok(CnnWeights {
            arch,
            conv1_w: take(&d0),
            conv1_b: take(&d1),
            conv2_w: take(&d2),
            conv2_b: take(&d3),
            fc1_w: take(&d4),
            fc1_b: take(&d5),
            fc2_w: take(&d6),
            fc2_b: take(&d7),
        })
    }

    /// Check that every vector has the length its arch implies.
    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        for ((name, dims), part) in PARAM_NAMES.iter().zip(self.arch.dims()).zip(self.parts()) {
            let n: usize = dims.iter().product();
            if part.len() != n {
                return Err(Error::Mismatch(format!(
                    "CNN parameter '{name}' has {} values but its shape {dims:?} needs {n}",
                    part.len()
                )));
            }
        }
        Ok(())
    }

    /// The network as an ONNX model (opset 13): input `input` `[N, C, H, W]`, output `logits`
    /// `[N, classes]`, built from Conv, Relu, MaxPool, Flatten and Gemm (`transB = 1`).
    pub fn to_onnx(&self) -> Result<ModelProto> {
        self.validate()?;
        let a = self.arch;
        let mut g = GraphBuilder::new("cepa_cnn");
        g.input(
            INPUT,
            &[None, Some(a.channels), Some(a.height), Some(a.width)],
        );
        let dims = a.dims();
        let inits: Vec<String> = PARAM_NAMES
            .iter()
            .zip(&dims)
            .zip(self.parts())
            .map(|((name, d), v)| g.init_f32(name, d, v))
            .collect();
        let k = a.kernel as i64;
        let mut x = INPUT.to_string();
        for (block, w) in [(1, 0), (2, 2)] {
            let conv = g.node(
                "Conv",
                &[&x, &inits[w], &inits[w + 1]],
                Some(&format!("conv{block}")),
                &[("kernel_shape", AttrValue::Ints(vec![k, k]))],
            );
            let act = g.node("Relu", &[&conv], Some(&format!("relu{block}")), &[]);
            x = g.node(
                "MaxPool",
                &[&act],
                Some(&format!("pool{block}")),
                &[
                    ("kernel_shape", AttrValue::Ints(vec![2, 2])),
                    ("strides", AttrValue::Ints(vec![2, 2])),
                ],
            );
        }
        let flat = g.node("Flatten", &[&x], Some("flatten"), &[]);
        let trans_b = [("transB", AttrValue::Int(1))];
        let fc1 = g.node(
            "Gemm",
            &[&flat, &inits[4], &inits[5]],
            Some("fc1"),
            &trans_b,
        );
        let hidden = g.node("Relu", &[&fc1], Some("relu3"), &[]);
        g.node(
            "Gemm",
            &[&hidden, &inits[6], &inits[7]],
            Some(OUTPUT),
            &trans_b,
        );
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

/// The network on a device, all parameters in one flat tensor (one leaf for autodiff and Adam).
#[derive(Clone, Debug)]
pub struct Cnn {
    pub arch: CnnArch,
    /// Every parameter, in the order of [`CnnWeights::to_flat`].
    pub params: Tensor<1>,
}

impl Cnn {
    /// Upload host weights to `device`.
    pub fn new(weights: &CnnWeights, device: &Device) -> Result<Cnn> {
        weights.validate()?;
        let flat = weights.to_flat();
        let n = flat.len();
        Ok(Cnn {
            arch: weights.arch,
            params: Tensor::from_data(TensorData::new(flat, [n]), device),
        })
    }

    /// Download the weights to the host.
    pub fn weights(&self) -> Result<CnnWeights> {
        let flat = self
            .params
            .clone()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Mismatch(format!("cannot read the CNN parameters: {e:?}")))?;
        CnnWeights::from_flat(self.arch, &flat)
    }

    /// Logits `[N, classes]` for images `[N, C, H, W]` (the model's input units).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.arch.forward(self.params.clone(), x)
    }
}

impl Architecture for CnnArch {
    type Weights = CnnWeights;

    fn input(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn validate(&self) -> Result<()> {
        CnnArch::validate(self)
    }

    fn num_params(&self) -> usize {
        CnnArch::num_params(self)
    }

    fn init(&self, seed: u64) -> Result<CnnWeights> {
        CnnWeights::init(*self, seed)
    }

    fn unflatten(&self, flat: &[f32]) -> Result<CnnWeights> {
        CnnWeights::from_flat(*self, flat)
    }

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let a = self;
        let mut offset = 0;
        let mut take = |dims: &[usize]| {
            let n: usize = dims.iter().product();
            let t = params.clone().narrow(0, offset, n);
            offset += n;
            t
        };
        let [d0, d1, d2, d3, d4, d5, d6, d7] = a.dims();
        let shape4 = |d: &[usize]| [d[0], d[1], d[2], d[3]];
        let conv1_w = take(&d0).reshape(shape4(&d0));
        let conv1_b = take(&d1);
        let conv2_w = take(&d2).reshape(shape4(&d2));
        let conv2_b = take(&d3);
        let fc1_w = take(&d4).reshape([d4[0], d4[1]]);
        let fc1_b = take(&d5);
        let fc2_w = take(&d6).reshape([d6[0], d6[1]]);
        let fc2_b = take(&d7);

        let opts = || ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let x = pool2(relu(crate::kernels::conv2d_train(
            x,
            conv1_w,
            Some(conv1_b),
            opts(),
        )));
        let x = pool2(relu(crate::kernels::conv2d_train(
            x,
            conv2_w,
            Some(conv2_b),
            opts(),
        )));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = relu(x.matmul(fc1_w.transpose()) + fc1_b.unsqueeze());
        x.matmul(fc2_w.transpose()) + fc2_b.unsqueeze()
    }
}

impl Network for CnnWeights {
    type Arch = CnnArch;

    fn arch(&self) -> CnnArch {
        self.arch
    }

    fn validate(&self) -> Result<()> {
        CnnWeights::validate(self)
    }

    fn to_flat(&self) -> Vec<f32> {
        CnnWeights::to_flat(self)
    }

    fn to_onnx(&self) -> Result<ModelProto> {
        CnnWeights::to_onnx(self)
    }
}

/// A 2x2 max pool, stride 2: our CPU kernel ([`crate::kernels::max_pool_tiled`]) where it
/// applies, burn's elsewhere.
pub(crate) fn pool2(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::max_pool_tiled(&x, [2, 2])
        .unwrap_or_else(|| max_pool2d(x, MaxPoolOptions::new([2, 2])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_sizes() {
        let a = CnnArch::default();
        assert_eq!(a.flat(), 256);
        assert_eq!(a.num_params(), 208 + 3216 + 16448 + 650);
        let cifar = CnnArch {
            channels: 3,
            height: 32,
            width: 32,
            ..a
        };
        assert_eq!(cifar.flat(), 16 * 5 * 5);
        let tiny = CnnArch { height: 15, ..a };
        assert!(tiny.validate().is_err());
    }

    #[test]
    fn init_is_seeded_he_and_flat_round_trips() {
        let a = CnnArch::default();
        let w = CnnWeights::init(a, 3).unwrap();
        assert_eq!(w, CnnWeights::init(a, 3).unwrap());
        assert_ne!(w.fc1_w, CnnWeights::init(a, 4).unwrap().fc1_w);
        let var = w.fc1_w.iter().map(|v| v * v).sum::<f32>() / w.fc1_w.len() as f32;
        assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0, "var {var}");
        assert_eq!(CnnWeights::from_flat(a, &w.to_flat()).unwrap(), w);
        assert!(CnnWeights::from_flat(a, &w.to_flat()[1..]).is_err());
    }
}
