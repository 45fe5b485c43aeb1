//! PreAct-ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), with
//! BatchNorm: the victim of BackdoorBench's CIFAR-10 benchmarks and of most backdoor-defence
//! papers, here with configurable widths (64-128-256-512 is the standard network; 16-32-64-128
//! fits a 2-core CPU).
//!
//! - Stem: a 3x3 convolution (stride 1, no bias) to the first width.
//! - Four stages of two pre-activation blocks; the first block of every stage after the first
//!   halves the resolution. A block is
//!   `a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))) + shortcut`, where the shortcut is `x`,
//!   or a strided 1x1 convolution of `a` where the resolution or the width changes. Convolutions
//!   have no bias, as BatchNorm follows them.
//! - Global average pooling of the last block's output (no final BatchNorm, as BackdoorBench's
//!   network) and one linear layer.
//!
//! BatchNorm normalises with the batch's statistics while training ([`Architecture::
//! forward_train`]) and with running statistics in inference and in the export
//! ([`Architecture::forward`]); the running statistics sit in the flat vector beside the
//! parameters, are not moved by the optimiser, and are set after training by
//! [`Architecture::calibrate`] ([`super::net::calibrate_norms`]).

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, NormMode, ParamSpec, batch_norm,
    conv_nobias, linear, onnx_batch_norm, onnx_conv_nobias, onnx_linear, onnx_start,
};
use crate::error::{Error, Result};

/// Shape of the PreAct-ResNet. The defaults are PreAct-ResNet-18 for CIFAR-10 at full width.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreActArch {
    /// Input channels. Default 3.
    pub channels: usize,
    /// Input height, pixels. Default 32.
    pub height: usize,
    /// Input width, pixels. Default 32.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Channels of each stage; the stem has the first stage's width, every later stage halves
    /// the resolution. Default `[64, 128, 256, 512]` (PreAct-ResNet-18).
    pub widths: Vec<usize>,
    /// Pre-activation blocks per stage. Default 2.
    pub blocks: usize,
}

impl Default for PreActArch {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            widths: vec![64, 128, 256, 512],
            blocks: 2,
        }
    }
}

/// One pre-activation block: its name prefix (`layerS.B`), widths in and out, and stride.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    name: String,
    cin: usize,
    cout: usize,
    stride: usize,
}

impl Block {
    /// Whether the shortcut is a 1x1 projection rather than the identity.
    fn projects(&self) -> bool {
        self.stride != 1 || self.cin != self.cout
    }

    fn param(&self, layer: &str) -> String {
        format!("{}.{layer}", self.name)
    }
}

impl PreActArch {
    fn block_list(&self) -> Vec<Block> {
        let mut out = Vec::new();
        let mut cin = self.widths.first().copied().unwrap_or(0);
        for (s, &cout) in self.widths.iter().enumerate() {
            for b in 0..self.blocks {
                out.push(Block {
                    name: format!("layer{}.{b}", s + 1),
                    cin,
                    cout,
                    stride: if s > 0 && b == 0 { 2 } else { 1 },
                });
                cin = cout;
            }
        }
        out
    }

    /// The parameter tensors in flat order, PyTorch's names: `conv1.weight`,
    /// `layerS.B.{bn1,conv1,bn2,conv2,shortcut.0}`, `linear.{weight,bias}`.
    pub fn layout(&self) -> Layout {
        let mut specs: Vec<ParamSpec> = Vec::new();
        let stem = self.widths.first().copied().unwrap_or(0);
        Layout::weight(
            &mut specs,
            "conv1",
            vec![stem, self.channels, 3, 3],
            Init::He,
        );
        for b in self.block_list() {
            let (i, o) = (b.cin, b.cout);
            Layout::norm(&mut specs, &b.param("bn1"), i);
            Layout::weight(&mut specs, &b.param("conv1"), vec![o, i, 3, 3], Init::He);
            Layout::norm(&mut specs, &b.param("bn2"), o);
            Layout::weight(&mut specs, &b.param("conv2"), vec![o, o, 3, 3], Init::He);
            if b.projects() {
                Layout::weight(
                    &mut specs,
                    &b.param("shortcut.0"),
                    vec![o, i, 1, 1],
                    Init::He,
                );
            }
        }
        let last = self.widths.last().copied().unwrap_or(0);
        Layout::layer(&mut specs, "linear", vec![self.num_classes, last], Init::He);
        Layout::new(specs)
    }

    /// The BatchNorm layers in the order the forward pass runs them.
    fn norms(&self) -> Vec<String> {
        self.block_list()
            .iter()
            .flat_map(|b| [b.param("bn1"), b.param("bn2")])
            .collect()
    }

    /// The forward pass, BatchNorm as `mode` says.
    fn run(&self, params: Tensor<1>, x: Tensor<4>, mode: &mut NormMode) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let mut x = conv_nobias(&l, p, "conv1", x, 1, 1);
        for b in self.block_list() {
            let a = relu(batch_norm(&l, p, &b.param("bn1"), x.clone(), mode));
            let shortcut = if b.projects() {
                conv_nobias(&l, p, &b.param("shortcut.0"), a.clone(), b.stride, 0)
            } else {
                x
            };
            let h = conv_nobias(&l, p, &b.param("conv1"), a, b.stride, 1);
            let h = relu(batch_norm(&l, p, &b.param("bn2"), h, mode));
            x = conv_nobias(&l, p, &b.param("conv2"), h, 1, 1) + shortcut;
        }
        let pooled: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        linear(&l, p, "linear", pooled)
    }
}

impl Architecture for PreActArch {
    type Weights = PreActWeights;

    fn validate(&self) -> Result<()> {
        let sizes = [
            self.channels,
            self.height,
            self.width,
            self.num_classes,
            self.blocks,
        ];
        if sizes.contains(&0) || self.widths.is_empty() || self.widths.contains(&0) {
            return Err(Error::Config(format!(
                "every size of the PreAct-ResNet must be at least 1, with at least one stage: \
                 {self:?}"
            )));
        }
        Ok(())
    }

    super::net::flat_arch_methods!();

    super::net::norm_arch_methods!();
}

/// The PreAct-ResNet's parameters and running statistics on the host: one flat vector in the
/// order of [`PreActArch::layout`].
pub type PreActWeights = FlatWeights<PreActArch>;

impl FlatArch for PreActArch {
    const LABEL: &'static str = "PreAct-ResNet";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Conv (no bias), BatchNormalization (inference), Relu, Add, GlobalAveragePool, Flatten
    /// and Gemm (`transB = 1`). Tensors keep the parameter names; a block's output is
    /// `layerS.B.add`, the pooled embedding `flatten`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_preact_resnet", a.input(), &a.layout(), params);
        let mut x = onnx_conv_nobias(&mut g, INPUT, "conv1", 3, 1, 1, "conv1");
        for b in a.block_list() {
            let bn1 = onnx_batch_norm(&mut g, &x, &b.param("bn1"), &b.param("bn1"));
            let act = g.node("Relu", &[&bn1], Some(&b.param("relu1")), &[]);
            let shortcut = if b.projects() {
                let sc = b.param("shortcut.0");
                onnx_conv_nobias(&mut g, &act, &sc, 1, b.stride, 0, &sc)
            } else {
                x.clone()
            };
            let c1 = b.param("conv1");
            let h = onnx_conv_nobias(&mut g, &act, &c1, 3, b.stride, 1, &c1);
            let h = onnx_batch_norm(&mut g, &h, &b.param("bn2"), &b.param("bn2"));
            let h = g.node("Relu", &[&h], Some(&b.param("relu2")), &[]);
            let c2 = b.param("conv2");
            let h = onnx_conv_nobias(&mut g, &h, &c2, 3, 1, 1, &c2);
            x = g.node("Add", &[&h, &shortcut], Some(&b.param("add")), &[]);
        }
        let pooled = g.node("GlobalAveragePool", &[&x], Some("gap"), &[]);
        let flat = g.node("Flatten", &[&pooled], Some("flatten"), &[]);
        onnx_linear(&mut g, &flat, "linear", OUTPUT);
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full-width network has PreAct-ResNet-18's parameter count: 11,171,146 trainable
    /// values (as PyTorch counts BackdoorBench's `PreActResNet18`) plus two running statistics
    /// per BatchNorm channel.
    #[test]
    fn preact18_layout_counts_like_pytorch() {
        let a = PreActArch::default();
        let layout = a.layout();
        let mask = layout.trainable_mask().unwrap();
        let trainable = mask.iter().filter(|&&m| m == 1.0).count();
        assert_eq!(trainable, 11_171_146);
        let norm_channels: usize = a.block_list().iter().map(|b| b.cin + b.cout).sum();
        assert_eq!(a.num_params(), trainable + 2 * norm_channels);
        assert_eq!(a.norms().len(), 16);
        let names: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"layer2.0.shortcut.0.weight"));
        assert!(!names.contains(&"layer1.0.shortcut.0.weight"), "identity");
        assert!(!names.iter().any(|n| n.starts_with("conv1.bias")));

        let w = a.init(3).unwrap();
        assert_eq!(
            w.values("layer3.1.bn2.running_var").unwrap(),
            &[1.0; 256][..]
        );
        assert!(
            w.values("layer3.1.bn2.running_mean")
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            w.values("layer1.0.bn1.weight")
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
        assert_ne!(w.params, a.init(4).unwrap().params);
    }

    #[test]
    fn bad_shapes_fail() {
        for bad in [
            PreActArch {
                widths: vec![],
                ..PreActArch::default()
            },
            PreActArch {
                blocks: 0,
                ..PreActArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
