//! A narrow CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem convolution, stages of
//! basic blocks, global average pooling and one linear layer. The defaults (widths 16-32-64,
//! one block per stage) make ResNet-8; three blocks per stage make ResNet-20.
//!
//! A basic block is `relu(conv3x3(relu(conv3x3(x))) + shortcut(x))`; the first block of every
//! stage after the first halves the resolution with stride 2 in its first convolution, and its
//! shortcut is then a strided 1x1 projection (also where the width changes), otherwise identity.
//!
//! No batch normalisation. BatchNorm needs running statistics beside the trainable parameters
//! and a training/inference switch, which the trainer's single flat parameter vector does not
//! have; instead every convolution has a bias and, following Fixup / SkipInit (Zhang et al. 2019;
//! De & Smith 2020), the last convolution of every residual branch starts at zero, so that the
//! network starts as its shortcut path and stays trainable without normalisation. The export is
//! then exactly the training graph: Conv, Relu, Add, GlobalAveragePool, Flatten, Gemm.

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, ParamSpec, conv, linear, onnx_conv,
    onnx_linear, onnx_start,
};
use crate::error::{Error, Result};

/// Shape of the ResNet. The defaults are ResNet-8 for CIFAR-10: 3x32x32 input, widths 16, 32
/// and 64, one basic block per stage, 10 classes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetArch {
    /// Input channels. Default 3.
    pub channels: usize,
    /// Input height, pixels. Default 32.
    pub height: usize,
    /// Input width, pixels. Default 32.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Channels of each stage; the stem has the first stage's width, every later stage halves
    /// the resolution. Default `[16, 32, 64]`.
    pub widths: Vec<usize>,
    /// Basic blocks per stage. Default 1 (ResNet-8; 3 gives ResNet-20).
    pub blocks: usize,
}

impl Default for ResNetArch {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            widths: vec![16, 32, 64],
            blocks: 1,
        }
    }
}

/// One basic block: its name prefix (`layerS.B`), widths in and out, and stride.
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

impl ResNetArch {
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

    /// The parameter tensors in flat order (PyTorch-like names: `stem`, `layer2.0.conv1`,
    /// `layer2.0.shortcut`, `fc`, each with `.weight` and `.bias`).
    pub fn layout(&self) -> Layout {
        let mut specs: Vec<ParamSpec> = Vec::new();
        let stem = self.widths.first().copied().unwrap_or(0);
        Layout::layer(
            &mut specs,
            "stem",
            vec![stem, self.channels, 3, 3],
            Init::He,
        );
        for b in self.block_list() {
            let (i, o) = (b.cin, b.cout);
            Layout::layer(&mut specs, &b.param("conv1"), vec![o, i, 3, 3], Init::He);
            Layout::layer(&mut specs, &b.param("conv2"), vec![o, o, 3, 3], Init::Zero);
            if b.projects() {
                Layout::layer(&mut specs, &b.param("shortcut"), vec![o, i, 1, 1], Init::He);
            }
        }
        let last = self.widths.last().copied().unwrap_or(0);
        Layout::layer(&mut specs, "fc", vec![self.num_classes, last], Init::He);
        Layout::new(specs)
    }
}

impl Architecture for ResNetArch {
    type Weights = ResNetWeights;

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
                "every size of the ResNet must be at least 1, with at least one stage: {self:?}"
            )));
        }
        Ok(())
    }

    super::net::flat_arch_methods!();

    fn forward(&self, params: Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let mut x = relu(conv(&l, p, "stem", x, 1, 1));
        for b in self.block_list() {
            let h = relu(conv(&l, p, &b.param("conv1"), x.clone(), b.stride, 1));
            let h = conv(&l, p, &b.param("conv2"), h, 1, 1);
            let shortcut = if b.projects() {
                conv(&l, p, &b.param("shortcut"), x, b.stride, 0)
            } else {
                x
            };
            x = relu(h + shortcut);
        }
        let pooled: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        linear(&l, p, "fc", pooled)
    }
}

/// The ResNet's parameters on the host: one flat vector in the order of [`ResNetArch::layout`].
pub type ResNetWeights = FlatWeights<ResNetArch>;

impl FlatArch for ResNetArch {
    const LABEL: &'static str = "ResNet";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Conv (3x3 pad 1, the first of a downsampling block stride 2; 1x1 projections), Relu,
    /// Add, GlobalAveragePool, Flatten and Gemm (`transB = 1`). Tensors keep the parameter
    /// names; a block's output is `layerS.B.relu`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_resnet", a.input(), &a.layout(), params);
        let stem = onnx_conv(&mut g, INPUT, "stem", 3, 1, 1, "stem");
        let mut x = g.node("Relu", &[&stem], Some("stem.relu"), &[]);
        for b in a.block_list() {
            let c1 = b.param("conv1");
            let h = onnx_conv(&mut g, &x, &c1, 3, b.stride, 1, &c1);
            let h = g.node("Relu", &[&h], Some(&b.param("relu1")), &[]);
            let c2 = b.param("conv2");
            let h = onnx_conv(&mut g, &h, &c2, 3, 1, 1, &c2);
            let shortcut = if b.projects() {
                let sc = b.param("shortcut");
                onnx_conv(&mut g, &x, &sc, 1, b.stride, 0, &sc)
            } else {
                x.clone()
            };
            let sum = g.node("Add", &[&h, &shortcut], Some(&b.param("add")), &[]);
            x = g.node("Relu", &[&sum], Some(&b.param("relu")), &[]);
        }
        let pooled = g.node("GlobalAveragePool", &[&x], Some("gap"), &[]);
        let flat = g.node("Flatten", &[&pooled], Some("flatten"), &[]);
        onnx_linear(&mut g, &flat, "fc", OUTPUT);
        g.output(OUTPUT, &[None, Some(a.num_classes)]);
        Ok(g.build(OPSET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet8_layout_and_init() {
        let a = ResNetArch::default();
        // stem 448, layer1 2 x 2320, layer2 4640 + 9248 + 544, layer3 18496 + 36928 + 2112, fc 650.
        assert_eq!(a.num_params(), 77_706);
        let layout = a.layout();
        let names: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"layer2.0.shortcut.weight"));
        assert!(!names.contains(&"layer1.0.shortcut.weight"), "identity");

        let w = a.init(3).unwrap();
        assert_eq!(w, a.init(3).unwrap());
        assert_ne!(w.params, a.init(4).unwrap().params);
        assert!(
            w.values("layer3.0.conv2.weight")
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
        let c1 = w.values("layer3.0.conv1.weight").unwrap();
        let var = c1.iter().map(|v| v * v).sum::<f32>() / c1.len() as f32;
        let he = 2.0 / (32.0 * 9.0);
        assert!((var - he).abs() < 0.1 * he, "var {var} vs {he}");
        assert_eq!(a.unflatten(&w.params).unwrap(), w);
        assert!(a.unflatten(&w.params[1..]).is_err());
    }

    #[test]
    fn resnet20_has_identity_blocks_and_bad_shapes_fail() {
        let a = ResNetArch {
            blocks: 3,
            ..ResNetArch::default()
        };
        let blocks = a.block_list();
        assert_eq!(blocks.len(), 9);
        let projecting: Vec<&str> = blocks
            .iter()
            .filter(|b| b.projects())
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(projecting, ["layer2.0", "layer3.0"]);
        assert_eq!(blocks[4].stride, 1);
        for bad in [
            ResNetArch {
                widths: vec![],
                ..ResNetArch::default()
            },
            ResNetArch {
                widths: vec![16, 0],
                ..ResNetArch::default()
            },
            ResNetArch {
                blocks: 0,
                ..ResNetArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
