//! An all-convolutional net in the style of All-CNN-C (Springenberg et al. 2015, "Striving for
//! Simplicity"): no max-pool and no linear layer. Stages of 3x3 convolutions (padding 1) each
//! followed by ReLU; every stage but the last closes with a 3x3 convolution of stride 2
//! (padding 1, ReLU) that downsamples in place of a pool; then a 1x1 convolution to one channel
//! per class and a global average pool, whose output is the logits. Unlike All-CNN-C there is no
//! ReLU after the 1x1 convolution (the logits may be negative), no dropout and no batch
//! normalisation (the trainer keeps one flat parameter vector; see [`super::resnet`]); He
//! initialisation and Adam train it as it is.

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, ParamSpec, check_stages, conv, conv_stage,
    onnx_conv, onnx_conv_stage, onnx_start, stage_conv_name,
};
use crate::error::Result;

/// Shape of the all-convolutional net. The defaults suit CIFAR-10: 3x32x32 input, convolutions
/// 32, 32, down (16x16), 64, 64, down (8x8), 64, then the 1x1 head to 10 channels and the global
/// average pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllConvArch {
    /// Input channels. Default 3.
    pub channels: usize,
    /// Input height, pixels. Default 32.
    pub height: usize,
    /// Input width, pixels. Default 32.
    pub width: usize,
    /// Output classes: the channels of the 1x1 head. Default 10.
    pub num_classes: usize,
    /// Output channels of the 3x3 stride-1 convolutions, stage by stage; every stage but the
    /// last ends in a 3x3 stride-2 convolution that keeps the stage's last channel count and
    /// halves the image (rounding up). Default `[[32, 32], [64, 64], [64]]`.
    pub stages: Vec<Vec<usize>>,
}

impl Default for AllConvArch {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            stages: vec![vec![32, 32], vec![64, 64], vec![64]],
        }
    }
}

/// Name of the downsampling convolution closing stage `s` (0-based): `stage1.down`.
fn down_name(s: usize) -> String {
    format!("stage{}.down", s + 1)
}

/// The side a 3x3 convolution of stride 2 and padding 1 leaves of a side `n`: `ceil(n / 2)`,
/// never 0 for `n >= 1`.
fn halve(n: usize) -> usize {
    n.saturating_sub(1) / 2 + 1
}

impl AllConvArch {
    /// Whether stage `s` (0-based) ends in a downsampling convolution: all but the last do.
    fn downsamples(&self, s: usize) -> bool {
        s + 1 < self.stages.len()
    }

    /// Spatial size the head sees, after every downsampling convolution.
    pub fn feature_hw(&self) -> (usize, usize) {
        let downs = self.stages.len().saturating_sub(1);
        (0..downs).fold((self.height, self.width), |(h, w), _| (halve(h), halve(w)))
    }

    /// The parameter tensors in flat order: stage by stage `stageS.convI` then `stageS.down`,
    /// then `head`, each with `.weight` and `.bias`.
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
            if self.downsamples(s) {
                Layout::layer(&mut specs, &down_name(s), vec![cin, cin, 3, 3], Init::He);
            }
        }
        Layout::layer(
            &mut specs,
            "head",
            vec![self.num_classes, cin, 1, 1],
            Init::He,
        );
        Layout::new(specs)
    }
}

impl Architecture for AllConvArch {
    type Weights = AllConvWeights;

    /// Every size at least 1, with at least one convolution per stage. No input is too small:
    /// a padded stride-2 convolution leaves at least one pixel of any image.
    fn validate(&self) -> Result<()> {
        check_stages(
            "all-convolutional net",
            [self.channels, self.height, self.width, self.num_classes],
            &self.stages,
            self,
        )
    }

    super::net::flat_arch_methods!();

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let mut x = x;
        for (s, stage) in self.stages.iter().enumerate() {
            x = conv_stage(&l, p, s, stage.len(), x);
            if self.downsamples(s) {
                x = relu(conv(&l, p, &down_name(s), x, 2, 1));
            }
        }
        let head = conv(&l, p, "head", x, 1, 0);
        head.mean_dim(3).mean_dim(2).flatten(1, 3)
    }
}

/// The all-convolutional net's parameters on the host: one flat vector in the order of
/// [`AllConvArch::layout`].
pub type AllConvWeights = FlatWeights<AllConvArch>;

impl FlatArch for AllConvArch {
    const LABEL: &'static str = "all-convolutional net";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Conv (3x3 pad 1; the downsampling ones stride 2; the head 1x1), Relu,
    /// GlobalAveragePool and Flatten. Tensors keep the parameter names: `stageS.reluI`,
    /// `stageS.down.relu`, `head` (the class maps) and `pool`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_allconv", a.input(), &a.layout(), params);
        let mut x = INPUT.to_string();
        for (s, stage) in a.stages.iter().enumerate() {
            x = onnx_conv_stage(&mut g, &x, s, stage.len());
            if a.downsamples(s) {
                let name = down_name(s);
                let h = onnx_conv(&mut g, &x, &name, 3, 2, 1, &name);
                x = g.node("Relu", &[&h], Some(&format!("{name}.relu")), &[]);
            }
        }
        let head = onnx_conv(&mut g, &x, "head", 1, 1, 0, "head");
        let pooled = g.node("GlobalAveragePool", &[&head], Some("pool"), &[]);
        g.node("Flatten", &[&pooled], Some(OUTPUT), &[]);
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn default_layout_counts_every_parameter() {
        let a = AllConvArch::default();
        assert_eq!(a.feature_hw(), (8, 8));
        // Stage 1: 896 + 9248, down 9248; stage 2: 18496 + 36928, down 36928; stage 3: 36928;
        // head 64 * 10 + 10.
        assert_eq!(a.num_params(), 149_322);
        let layout = a.layout();
        let names: Vec<&str> = layout
            .specs()
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| n.ends_with(".weight"))
            .collect();
        assert_eq!(
            names,
            [
                "stage1.conv1.weight",
                "stage1.conv2.weight",
                "stage1.down.weight",
                "stage2.conv1.weight",
                "stage2.conv2.weight",
                "stage2.down.weight",
                "stage3.conv1.weight",
                "head.weight"
            ]
        );
        let one_stage = AllConvArch {
            stages: vec![vec![8]],
            ..AllConvArch::default()
        };
        assert_eq!(one_stage.feature_hw(), (32, 32));
        assert_eq!(one_stage.num_params(), 8 * 27 + 8 + 10 * 8 + 10);
        let w = a.init(1).unwrap();
        assert_eq!(a.unflatten(&w.params).unwrap(), w);
        assert!(w.values("head.bias").unwrap().iter().all(|&v| v == 0.0));
        let c = w.values("stage2.down.weight").unwrap();
        let var = c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32;
        let he = 2.0 / (64.0 * 9.0);
        assert!((var - he).abs() < 0.1 * he, "var {var} vs {he}");
    }

    #[test]
    fn bad_shapes_fail() {
        for bad in [
            AllConvArch {
                stages: vec![vec![8], vec![]],
                ..AllConvArch::default()
            },
            AllConvArch {
                stages: vec![],
                ..AllConvArch::default()
            },
            AllConvArch {
                stages: vec![vec![8, 0]],
                ..AllConvArch::default()
            },
            AllConvArch {
                num_classes: 0,
                ..AllConvArch::default()
            },
            AllConvArch {
                width: 0,
                ..AllConvArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
        // Odd sides round up, and a tiny input still leaves one pixel per side.
        let odd = AllConvArch {
            height: 7,
            width: 1,
            ..AllConvArch::default()
        };
        assert_eq!(odd.feature_hw(), (2, 1));
        assert!(odd.init(0).is_ok());
    }
}
