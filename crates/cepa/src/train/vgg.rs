//! A VGG-style network (Simonyan & Zisserman 2015), narrowed for 32x32 images: stages of 3x3
//! convolutions (padding 1) each followed by ReLU, every stage closed by a 2x2 max-pool, then
//! flatten, an optional hidden linear layer with ReLU, and the linear classifier. No batch
//! normalisation (the trainer keeps one flat parameter vector; see [`super::resnet`]); He
//! initialisation and Adam train it as it is.

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, ParamSpec, check_stages, conv_stage, linear,
    onnx_conv_stage, onnx_linear, onnx_start, stage_conv_name,
};
use crate::error::{Error, Result};
use crate::onnx::write::AttrValue;

/// Shape of the VGG-style net. The defaults suit CIFAR-10: 3x32x32 input, convolutions
/// 32, 32, pool, 64, 64, pool, 128, pool, flatten (2048), linear 128, linear 10.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VggArch {
    /// Input channels. Default 3.
    pub channels: usize,
    /// Input height, pixels. Default 32.
    pub height: usize,
    /// Input width, pixels. Default 32.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Output channels of the 3x3 convolutions, stage by stage; every stage ends in a 2x2
    /// max-pool. Default `[[32, 32], [64, 64], [128]]`.
    pub stages: Vec<Vec<usize>>,
    /// Units of the hidden linear layer after flattening; 0 for none (the flattened features
    /// go straight to the classifier). Default 128.
    pub hidden: usize,
}

impl Default for VggArch {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            stages: vec![vec![32, 32], vec![64, 64], vec![128]],
            hidden: 128,
        }
    }
}

impl VggArch {
    /// Spatial size after every stage's pool (0 when the input is too small).
    fn feature_hw(&self) -> (usize, usize) {
        let n = self.stages.len().min(usize::BITS as usize - 1);
        (self.height >> n, self.width >> n)
    }

    /// Features after flattening the last stage.
    pub fn flat(&self) -> usize {
        let (h, w) = self.feature_hw();
        let last = self.stages.last().and_then(|s| s.last()).copied();
        last.unwrap_or(0) * h * w
    }

    /// Names of the linear layers: `fc1` (hidden) and `fc2`, or `fc` alone.
    fn head(&self) -> &'static [&'static str] {
        if self.hidden > 0 {
            &["fc1", "fc2"]
        } else {
            &["fc"]
        }
    }

    /// The parameter tensors in flat order: `stageS.convI` then the head, each with `.weight`
    /// and `.bias`.
    pub fn layout(&self) -> Layout {
        let mut specs: Vec<ParamSpec> = Vec::new();
        let mut cin = self.channels;
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, &cout) in stage.iter().enumerate() {
                Layout::layer(
                    &mut specs,
                    &stage_conv_name(s, i),
                    vec![cout, cin, 3, 3],
                    Init::He,
                );
                cin = cout;
            }
        }
        let mut fan_in = self.flat();
        if self.hidden > 0 {
            Layout::layer(&mut specs, "fc1", vec![self.hidden, fan_in], Init::He);
            fan_in = self.hidden;
        }
        let last = self.head()[self.head().len() - 1];
        Layout::layer(&mut specs, last, vec![self.num_classes, fan_in], Init::He);
        Layout::new(specs)
    }
}

impl Architecture for VggArch {
    type Weights = VggWeights;

    fn validate(&self) -> Result<()> {
        check_stages(
            "VGG net",
            [self.channels, self.height, self.width, self.num_classes],
            &self.stages,
            self,
        )?;
        let (h, w) = self.feature_hw();
        if h == 0 || w == 0 {
            return Err(Error::Config(format!(
                "a {}x{} input is too small for {} 2x2 max-pools",
                self.height,
                self.width,
                self.stages.len()
            )));
        }
        Ok(())
    }

    super::net::flat_arch_methods!();

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let mut x = x;
        for (s, stage) in self.stages.iter().enumerate() {
            x = conv_stage(&l, p, s, stage.len(), x);
            x = super::cnn::pool2(x);
        }
        let mut h: Tensor<2> = x.flatten(1, 3);
        if self.hidden > 0 {
            h = relu(linear(&l, p, "fc1", h));
        }
        linear(&l, p, self.head()[self.head().len() - 1], h)
    }
}

/// The VGG net's parameters on the host: one flat vector in the order of [`VggArch::layout`].
pub type VggWeights = FlatWeights<VggArch>;

impl FlatArch for VggArch {
    const LABEL: &'static str = "VGG net";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Conv (3x3, pad 1), Relu, MaxPool (2x2, stride 2), Flatten and Gemm (`transB = 1`).
    /// Tensors keep the parameter names: `stageS.reluI`, `stageS.pool`, `flatten`, `fc1.relu`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_vgg", a.input(), &a.layout(), params);
        let mut x = INPUT.to_string();
        for (s, stage) in a.stages.iter().enumerate() {
            x = onnx_conv_stage(&mut g, &x, s, stage.len());
            x = g.node(
                "MaxPool",
                &[&x],
                Some(&format!("stage{}.pool", s + 1)),
                &[
                    ("kernel_shape", AttrValue::Ints(vec![2, 2])),
                    ("strides", AttrValue::Ints(vec![2, 2])),
                ],
            );
        }
        let mut h = g.node("Flatten", &[&x], Some("flatten"), &[]);
        if a.hidden > 0 {
            let fc1 = onnx_linear(&mut g, &h, "fc1", "fc1");
            h = g.node("Relu", &[&fc1], Some("fc1.relu"), &[]);
        }
        onnx_linear(&mut g, &h, a.head()[a.head().len() - 1], OUTPUT);
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_counts_every_parameter() {
        let a = VggArch::default();
        assert_eq!(a.flat(), 128 * 4 * 4);
        // Convolutions 896 + 9248 + 18496 + 36928 + 73856, fc1 262272, fc2 1290.
        assert_eq!(a.num_params(), 402_986);
        let no_hidden = VggArch {
            hidden: 0,
            ..VggArch::default()
        };
        assert_eq!(no_hidden.num_params(), 139_424 + 10 * 2048 + 10);
        let w = a.init(1).unwrap();
        assert_eq!(a.unflatten(&w.params).unwrap(), w);
        assert!(w.values("fc1.bias").unwrap().iter().all(|&v| v == 0.0));
        let c = w.values("stage3.conv1.weight").unwrap();
        let var = c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32;
        let he = 2.0 / (64.0 * 9.0);
        assert!((var - he).abs() < 0.1 * he, "var {var} vs {he}");
    }

    #[test]
    fn bad_shapes_fail() {
        for bad in [
            VggArch {
                height: 7,
                ..VggArch::default()
            },
            VggArch {
                stages: vec![vec![8], vec![]],
                ..VggArch::default()
            },
            VggArch {
                stages: vec![],
                ..VggArch::default()
            },
            VggArch {
                num_classes: 0,
                ..VggArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
        let eight = VggArch {
            height: 8,
            width: 8,
            ..VggArch::default()
        };
        assert_eq!(eight.flat(), 128);
    }
}
