//! A MobileNet (Howard et al. 2017, "MobileNets"), CIFAR-style as in the field's model
//! collections (kuangliu's pytorch-cifar `MobileNet`): the depthwise-separable network that
//! deployed, mobile and embedded classifiers are built from, and a network family whose
//! convolutions are grouped.
//!
//! - Stem: a 3x3 convolution (stride 1, no bias), BatchNorm, ReLU.
//! - Blocks: a depthwise 3x3 convolution (one group per channel, the block's stride), BatchNorm,
//!   ReLU; then a pointwise 1x1 convolution to the block's width, BatchNorm, ReLU. Convolutions
//!   have no bias, as BatchNorm follows them.
//! - Global average pooling and one linear layer.
//!
//! BatchNorm is handled as in [`super::preact`]: batch statistics while training, running
//! statistics (set after training by [`Architecture::calibrate`]) in inference and the export.

use burn::prelude::*;
use burn::tensor::activation::relu;
use onnx_ir::ModelProto;
use serde::{Deserialize, Serialize};

use super::cnn::{INPUT, OPSET, OUTPUT};
use super::net::{
    Architecture, FlatArch, FlatWeights, Init, Layout, NormMode, ParamSpec, batch_norm,
    conv_nobias, depthwise_nobias, linear, onnx_batch_norm, onnx_conv_nobias,
    onnx_depthwise_nobias, onnx_linear, onnx_start,
};
use crate::error::{Error, Result};

/// Shape of the MobileNet. The defaults are MobileNet-v1's first eight blocks at half width
/// for 3x32x32 images, 10 classes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MobileNetArch {
    /// Input channels. Default 3.
    pub channels: usize,
    /// Input height, pixels. Default 32.
    pub height: usize,
    /// Input width, pixels. Default 32.
    pub width: usize,
    /// Output classes. Default 10.
    pub num_classes: usize,
    /// Width of the stem convolution. Default 16.
    pub stem: usize,
    /// The depthwise-separable blocks, each `[width, stride]`: the pointwise convolution's
    /// output channels and the depthwise convolution's stride (1 or 2). Default
    /// `[[32, 1], [64, 2], [64, 1], [128, 2], [128, 1], [256, 2], [256, 1], [256, 1]]`.
    pub blocks: Vec<[usize; 2]>,
}

impl Default for MobileNetArch {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            stem: 16,
            blocks: vec![
                [32, 1],
                [64, 2],
                [64, 1],
                [128, 2],
                [128, 1],
                [256, 2],
                [256, 1],
                [256, 1],
            ],
        }
    }
}

/// One depthwise-separable block: its name prefix (`layers.I`), widths in and out, stride.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    name: String,
    cin: usize,
    cout: usize,
    stride: usize,
}

impl Block {
    fn param(&self, layer: &str) -> String {
        format!("{}.{layer}", self.name)
    }
}

impl MobileNetArch {
    fn block_list(&self) -> Vec<Block> {
        let mut cin = self.stem;
        self.blocks
            .iter()
            .enumerate()
            .map(|(i, &[cout, stride])| {
                let b = Block {
                    name: format!("layers.{i}"),
                    cin,
                    cout,
                    stride,
                };
                cin = cout;
                b
            })
            .collect()
    }

    /// The width of the pooled embedding (the last block's, or the stem's without blocks).
    fn last_width(&self) -> usize {
        self.blocks.last().map_or(self.stem, |b| b[0])
    }

    /// The parameter tensors in flat order, PyTorch's names: `conv1`, `bn1`,
    /// `layers.I.{conv1,bn1,conv2,bn2}` (conv1 depthwise, conv2 pointwise), `linear`.
    pub fn layout(&self) -> Layout {
        let mut specs: Vec<ParamSpec> = Vec::new();
        Layout::weight(
            &mut specs,
            "conv1",
            vec![self.stem, self.channels, 3, 3],
            Init::He,
        );
        Layout::norm(&mut specs, "bn1", self.stem);
        for b in self.block_list() {
            let (i, o) = (b.cin, b.cout);
            Layout::weight(&mut specs, &b.param("conv1"), vec![i, 1, 3, 3], Init::He);
            Layout::norm(&mut specs, &b.param("bn1"), i);
            Layout::weight(&mut specs, &b.param("conv2"), vec![o, i, 1, 1], Init::He);
            Layout::norm(&mut specs, &b.param("bn2"), o);
        }
        Layout::layer(
            &mut specs,
            "linear",
            vec![self.num_classes, self.last_width()],
            Init::He,
        );
        Layout::new(specs)
    }

    /// The BatchNorm layers in the order the forward pass runs them.
    fn norms(&self) -> Vec<String> {
        let mut out = vec!["bn1".to_string()];
        for b in self.block_list() {
            out.push(b.param("bn1"));
            out.push(b.param("bn2"));
        }
        out
    }

    /// The forward pass, BatchNorm as `mode` says.
    fn run(&self, params: Tensor<1>, x: Tensor<4>, mode: &mut NormMode) -> Tensor<2> {
        let l = self.layout();
        let p = &params;
        let x = conv_nobias(&l, p, "conv1", x, 1, 1);
        let mut x = relu(batch_norm(&l, p, "bn1", x, mode));
        for b in self.block_list() {
            let h = depthwise_nobias(&l, p, &b.param("conv1"), x, b.stride);
            let h = relu(batch_norm(&l, p, &b.param("bn1"), h, mode));
            let h = conv_nobias(&l, p, &b.param("conv2"), h, 1, 0);
            x = relu(batch_norm(&l, p, &b.param("bn2"), h, mode));
        }
        let pooled: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        linear(&l, p, "linear", pooled)
    }
}

impl Architecture for MobileNetArch {
    type Weights = MobileNetWeights;

    fn validate(&self) -> Result<()> {
        let sizes = [
            self.channels,
            self.height,
            self.width,
            self.num_classes,
            self.stem,
        ];
        if sizes.contains(&0) || self.blocks.iter().any(|b| b[0] == 0) {
            return Err(Error::Config(format!(
                "every size of the MobileNet must be at least 1: {self:?}"
            )));
        }
        if let Some(b) = self.blocks.iter().find(|b| b[1] != 1 && b[1] != 2) {
            return Err(Error::Config(format!(
                "a MobileNet block's stride must be 1 or 2, not {} (block {b:?})",
                b[1]
            )));
        }
        Ok(())
    }

    super::net::flat_arch_methods!();

    super::net::norm_arch_methods!();
}

/// The MobileNet's parameters and running statistics on the host: one flat vector in the order
/// of [`MobileNetArch::layout`].
pub type MobileNetWeights = FlatWeights<MobileNetArch>;

impl FlatArch for MobileNetArch {
    const LABEL: &'static str = "MobileNet";

    fn param_layout(&self) -> Layout {
        self.layout()
    }

    /// Conv (no bias; the depthwise ones with `group` = channels), BatchNormalization
    /// (inference), Relu, GlobalAveragePool, Flatten and Gemm (`transB = 1`). Tensors keep the
    /// parameter names; a block's output is `layers.I.relu2`, the pooled embedding `flatten`.
    fn graph(&self, params: &[f32]) -> Result<ModelProto> {
        let a = self;
        let mut g = onnx_start("cepa_mobilenet", a.input(), &a.layout(), params);
        let x = onnx_conv_nobias(&mut g, INPUT, "conv1", 3, 1, 1, "conv1");
        let x = onnx_batch_norm(&mut g, &x, "bn1", "bn1");
        let mut x = g.node("Relu", &[&x], Some("relu1"), &[]);
        for b in a.block_list() {
            let c1 = b.param("conv1");
            let h = onnx_depthwise_nobias(&mut g, &x, &c1, b.cin, b.stride, &c1);
            let h = onnx_batch_norm(&mut g, &h, &b.param("bn1"), &b.param("bn1"));
            let h = g.node("Relu", &[&h], Some(&b.param("relu1")), &[]);
            let c2 = b.param("conv2");
            let h = onnx_conv_nobias(&mut g, &h, &c2, 1, 1, 0, &c2);
            let h = onnx_batch_norm(&mut g, &h, &b.param("bn2"), &b.param("bn2"));
            x = g.node("Relu", &[&h], Some(&b.param("relu2")), &[]);
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

    /// The default network's parameter count, by hand: stem 432 + BatchNorm; each block a
    /// depthwise `cin x 9` and a pointwise `cout x cin`, each with its BatchNorm (4 values a
    /// channel: weight, bias, running mean and variance); the linear layer `10 x 256 + 10`.
    #[test]
    fn layout_counts_by_hand() {
        let a = MobileNetArch::default();
        let mut expect = 16 * 3 * 9 + 4 * 16;
        let mut cin = 16;
        for [cout, _] in &a.blocks {
            expect += cin * 9 + 4 * cin + cout * cin + 4 * cout;
            cin = *cout;
        }
        expect += 10 * 256 + 10;
        assert_eq!(a.num_params(), expect);
        assert_eq!(a.norms().len(), 1 + 2 * a.blocks.len());
        let layout = a.layout();
        let dw = layout
            .specs()
            .iter()
            .find(|s| s.name == "layers.3.conv1.weight")
            .unwrap();
        assert_eq!(dw.dims, vec![64, 1, 3, 3]);
        let w = a.init(3).unwrap();
        assert_ne!(w.params, a.init(4).unwrap().params);
        assert_eq!(a.unflatten(&w.params).unwrap(), w);
    }

    #[test]
    fn bad_shapes_fail() {
        for bad in [
            MobileNetArch {
                stem: 0,
                ..MobileNetArch::default()
            },
            MobileNetArch {
                blocks: vec![[32, 1], [0, 2]],
                ..MobileNetArch::default()
            },
            MobileNetArch {
                blocks: vec![[32, 3]],
                ..MobileNetArch::default()
            },
        ] {
            assert!(matches!(bad.init(0), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
