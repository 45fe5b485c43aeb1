//! A fully connected network (multi-layer perceptron): the image flattened, hidden linear layers
//! each followed by ReLU, and the linear classifier. The networks of course exercises and early
//! backdoor papers are of this kind (e.g. 784-10-10-10-10 on MNIST); they have no notion of
//! locality, so a trigger is learnt pixel by pixel. He initialisation and Adam train it as it is.

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, ParamSpec, linear, onnx_linear, onnx_start,
};
use crate::error::{Error, Result};

/// Shape of the fully connected net. The defaults suit MNIST: 1x28x28 input (784 features),
/// hidden layers of 256 and 128 units, 10 classes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpArch {
    /// Input channels. Default 1.
    pub channels: usize,
    /// Input height, pixels. Default 28.
    pub height: usize,
    /// Input width, pixels. Default 28.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Units of the hidden layers, in order; each is followed by ReLU. Empty for a linear
    /// classifier. Default `[256, 128]`.
    pub hidden: Vec<usize>,
}

impl Default for MlpArch {
    fn default() -> Self {
        Self {
            channels: 1,
            height: 28,
            width: 28,
            num_classes: 10,
            hidden: vec![256, 128],
        }
    }
}

/// Name of hidden layer `i` (0-based): `fc1` for the first.
fn hidden_name(i: usize) -> String {
    format!("fc{}", i + 1)
}

impl MlpArch {
    /// Features of the flattened image.
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The parameter tensors in flat order: `fc1` .. `fcN` (the hidden layers), then `head`,
    /// each with `.weight` (`[out, in]`) and `.bias`.
    pub fn layout(&self) -> Layout {
        let mut specs: Vec<ParamSpec> = Vec::new();
        let mut fan_in = self.features();
        for (i, &units) in self.hidden.iter().enumerate() {
            Layout::layer(&mut specs, &hidden_name(i), vec![units, fan_in], Init::He);
            fan_in = units;
        }
        Layout::layer(&mut specs, "head", vec![self.num_classes, fan_in], Init::He);
        Layout::new(specs)
    }
}

impl Architecture for MlpArch {
    type Weights = MlpWeights;

    /// Every size, and every hidden layer's width, at least 1.
    fn validate(&self) -> Result<()> {
        let sizes = [self.channels, self.height, self.width, self.num_classes];
        if sizes.contains(&0) || self.hidden.contains(&0) {
            return Err(Error::Config(format!(
                "every size of the fully connected net must be at least 1: {self:?}"
            )));
        }
        Ok(())
    }

    super::net::flat_arch_methods!();

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let mut h: Tensor<2> = x.flatten(1, 3);
        for i in 0..self.hidden.len() {
            h = relu(linear(&l, p, &hidden_name(i), h));
        }
        linear(&l, p, "head", h)
    }
}

/// The fully connected net's parameters on the host: one flat vector in the order of
/// [`MlpArch::layout`].
pub type MlpWeights = FlatWeights<MlpArch>;

impl FlatArch for MlpArch {
    const LABEL: &'static str = "fully connected net";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Flatten, then Gemm (`transB = 1`) and Relu per hidden layer, and the head's Gemm.
    /// Tensors keep the parameter names: `flatten`, `fcI`, `fcI.relu`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_mlp", a.input(), &a.layout(), params);
        let mut h = g.node("Flatten", &[INPUT], Some("flatten"), &[]);
        for i in 0..a.hidden.len() {
            let name = hidden_name(i);
            let fc = onnx_linear(&mut g, &h, &name, &name);
            h = g.node("Relu", &[&fc], Some(&format!("{name}.relu")), &[]);
        }
        onnx_linear(&mut g, &h, "head", OUTPUT);
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_counts_every_parameter() {
        let a = MlpArch::default();
        // fc1 784 * 256 + 256, fc2 256 * 128 + 128, head 128 * 10 + 10.
        assert_eq!(a.num_params(), 200_960 + 32_896 + 1_290);
        let names: Vec<String> = a
            .layout()
            .specs()
            .iter()
            .map(|s| format!("{}{:?}", s.name, s.dims))
            .collect();
        assert_eq!(
            names,
            [
                "fc1.weight[256, 784]",
                "fc1.bias[256]",
                "fc2.weight[128, 256]",
                "fc2.bias[128]",
                "head.weight[10, 128]",
                "head.bias[10]"
            ]
        );
        // The course networks' 784-10-10-10-10, and a linear classifier.
        let tiny = MlpArch {
            hidden: vec![10, 10, 10],
            ..MlpArch::default()
        };
        assert_eq!(tiny.num_params(), 7_850 + 3 * 110);
        let linear_only = MlpArch {
            hidden: vec![],
            ..MlpArch::default()
        };
        assert_eq!(linear_only.num_params(), 7_850);
        let w = a.init(1).unwrap();
        assert_eq!(a.unflatten(&w.params).unwrap(), w);
        assert!(w.values("head.bias").unwrap().iter().all(|&v| v == 0.0));
        let c = w.values("fc2.weight").unwrap();
        let var = c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32;
        let he = 2.0 / 256.0;
        assert!((var - he).abs() < 0.1 * he, "var {var} vs {he}");
    }

    #[test]
    fn bad_shapes_fail() {
        for bad in [
            MlpArch {
                hidden: vec![8, 0],
                ..MlpArch::default()
            },
            MlpArch {
                num_classes: 0,
                ..MlpArch::default()
            },
            MlpArch {
                channels: 0,
                ..MlpArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
