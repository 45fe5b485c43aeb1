//! A classifier read from ONNX together with its input spec: what the detector talks to. It takes
//! images in `[0,1]`, NCHW, applies the model's own preprocessing differentiably, and exposes the
//! logits, internal layers and perturbations at them.

mod device;
mod spec;

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::Serialize;

pub use device::{DeviceChoice, cuda_built, device_label, is_accelerator};
pub use spec::{Layout, ModelSpec, OutputKind, ResolvedSpec, parse_floats};

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::onnx::{FTensor, Graph, Interpreter, Run};

/// The tensor device models run on.
pub use burn::prelude::Device;

/// The CPU device, with or without autodiff.
pub fn cpu_device(autodiff: bool) -> Device {
    let d = Device::flex();
    if autodiff { d.autodiff() } else { d }
}

/// An intermediate tensor of the model, by its original ONNX name.
#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    pub name: String,
    /// Shape for one image (batch dimension left out).
    pub shape: Vec<usize>,
    /// Op type and name of the node that writes it.
    pub op: String,
    pub node: String,
    /// Whether the rest of the network depends on the image only through this tensor.
    pub cut: bool,
    /// Number of parametric layers (Conv, Gemm, MatMul) between this tensor and the output.
    pub depth: usize,
    /// A candidate embedding layer for the detector: the input of one of the last parametric
    /// layers that cuts the graph.
    pub candidate: bool,
}

/// A classifier: an interpreter plus the resolved input/output spec.
#[derive(Clone, Debug)]
pub struct Classifier {
    interp: Interpreter,
    spec: ResolvedSpec,
    layers: Vec<LayerInfo>,
    /// True when the logits tensor holds probabilities and the logits are their logarithm.
    log_of_output: bool,
    /// `[1, C, 1, 1]` mean and std on the device.
    mean: Tensor<4>,
    std: Tensor<4>,
}

const PARAMETRIC: [&str; 3] = ["Conv", "Gemm", "MatMul"];
/// How many of the last parametric layers' inputs are embedding candidates.
const CANDIDATE_DEPTH: usize = 3;

impl Classifier {
    /// Read an ONNX file and resolve its spec: `flags` over the sidecar over defaults.
    pub fn load(path: &Path, flags: &ModelSpec, device: &Device) -> Result<Classifier> {
        Self::load_for_images(path, flags, device, None)
    }

    /// As [`Classifier::load`], for images of `image` = `[channels, height, width]`: a model
    /// whose input leaves its channel or spatial size dynamic (exported with `dynamic_axes` on
    /// H and W, as fully convolutional networks often are) takes it from the images, and its
    /// spec's notes say so. Without images such a model is refused.
    pub fn load_for_images(
        path: &Path,
        flags: &ModelSpec,
        device: &Device,
        image: Option<[usize; 3]>,
    ) -> Result<Classifier> {
        let graph = Graph::load(path)?;
        let (spec, sidecar) = ModelSpec::resolve_for(path, flags)?;
        Self::new_for_images(graph, &spec, sidecar, device, image)
    }

    /// Bind a parsed graph to a device with the given (unresolved) spec.
    pub fn new(
        graph: Graph,
        declared: &ModelSpec,
        sidecar: Option<std::path::PathBuf>,
        device: &Device,
    ) -> Result<Classifier> {
        Self::new_for_images(graph, declared, sidecar, device, None)
    }

    /// As [`Classifier::new`], with the size of the images it will read for an input whose
    /// size is dynamic ([`Classifier::load_for_images`]).
    pub fn new_for_images(
        graph: Graph,
        declared: &ModelSpec,
        sidecar: Option<std::path::PathBuf>,
        device: &Device,
        image: Option<[usize; 3]>,
    ) -> Result<Classifier> {
        let path = graph.path().to_path_buf();
        let mut notes = Vec::new();
        let dims = graph.input.dims.clone();
        if dims.len() != 4 {
            return Err(Error::format(
                &path,
                format!(
                    "input '{}' has rank {} ({:?}); an image classifier takes N x C x H x W or N x H x W x C",
                    graph.input.name,
                    dims.len(),
                    dims
                ),
            ));
        }
        let layout = match declared.layout {
            Some(l) => l,
            None => {
                let chan = |d: Option<usize>| matches!(d, Some(1 | 3));
                if !chan(dims[1]) && chan(dims[3]) {
                    notes.push(format!(
                        "layout nhwc detected from the input shape {dims:?}"
                    ));
                    Layout::Nhwc
                } else {
                    Layout::Nchw
                }
            }
        };
        let (c, h, w) = match layout {
            Layout::Nchw => (dims[1], dims[2], dims[3]),
            Layout::Nhwc => (dims[3], dims[1], dims[2]),
        };
        let (c, h, w) = match (c, h, w, image) {
            (Some(c), Some(h), Some(w), _) => (c, h, w),
            (c, h, w, Some([ic, ih, iw])) => {
                let (c, h, w) = (c.unwrap_or(ic), h.unwrap_or(ih), w.unwrap_or(iw));
                notes.push(format!(
                    "input '{}' has a dynamic size {dims:?}: taken as {c} x {h} x {w} from the images",
                    graph.input.name
                ));
                (c, h, w)
            }
            _ => {
                return Err(Error::format(
                    &path,
                    format!(
                        "input '{}' has dynamic channel or spatial size {dims:?}; give images \
                         (--data) to take the size from, or export the model with a fixed size",
                        graph.input.name
                    ),
                ));
            }
        };
        let per_channel = |v: &Option<Vec<f32>>, default: f32, what: &str| -> Result<Vec<f32>> {
            match v {
                None => Ok(vec![default; c]),
                Some(v) if v.len() == 1 => Ok(vec![v[0]; c]),
                Some(v) if v.len() == c => Ok(v.clone()),
                Some(v) => Err(Error::Config(format!(
                    "{what} has {} values but the model takes {c} channel(s)",
                    v.len()
                ))),
            }
        };
        let mut mean = per_channel(&declared.mean, 0.0, "--mean")?;
        let mut std = per_channel(&declared.std, 1.0, "--std")?;
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Config(format!("--std {s} must be positive")));
        }
        if declared.mean.is_none() && declared.std.is_none() {
            match graph.divides_input_by_255() {
                Some(node) => {
                    notes.push(format!(
                        "input taken as pixels 0-255: the model scales its input down itself \
                         (node '{node}', by 1/255 or 1/127.5), as --mean 0 --std {:.8} declares; \
                         give --mean/--std to override",
                        1.0 / 255.0
                    ));
                    mean = vec![0.0; c];
                    std = vec![1.0 / 255.0; c];
                }
                None => notes
                    .push("input scaling assumed x/255 (no --mean/--std, no sidecar)".to_string()),
            }
        }

        let graph = Arc::new(graph);
        let interp = Interpreter::new(graph.clone(), device);
        let to4 =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, c, 1, 1]), device);
        let mut model = Classifier {
            interp,
            spec: ResolvedSpec {
                layout,
                channels: c,
                height: h,
                width: w,
                mean: mean.clone(),
                std: std.clone(),
                output: OutputKind::Logits,
                num_classes: 0,
                logits_tensor: graph.output.name.clone(),
                sidecar,
                notes,
            },
            layers: Vec::new(),
            log_of_output: false,
            mean: to4(&mean),
            std: to4(&std),
        };
        model.resolve_output(declared)?;
        model.layers = model.find_layers()?;
        Ok(model)
    }

    /// Decide where the logits are: the input of a trailing Softmax, the output itself, or the
    /// logarithm of probabilities; check the class count.
    fn resolve_output(&mut self, declared: &ModelSpec) -> Result<()> {
        let g = self.interp.graph();
        let path = g.path().to_path_buf();
        // Walk back from the output through ops that do not change values.
        let mut slot = g.output_slot;
        let mut softmax_input = None;
        while let Some(node) = g.producer_of(slot) {
            match node.op_type.as_str() {
                "Identity" | "Flatten" | "Reshape" | "Squeeze" | "Dropout" => {
                    slot = node.inputs[0].unwrap_or(slot);
                }
                "Softmax" => {
                    softmax_input = node.inputs[0];
                    break;
                }
                _ => break,
            }
        }
        let probe = Tensor::<4>::full(
            [2, self.spec.channels, self.spec.height, self.spec.width],
            0.5,
            self.interp.device(),
        );
        let out = self.run_raw(probe, &[])?.0;
        let dims = out.dims();
        let k = match dims.as_slice() {
            [_, k] => *k,
            [_, k, rest @ ..] if rest.iter().all(|&d| d == 1) => *k,
            _ => {
                return Err(Error::format(
                    &path,
                    format!(
                        "output '{}' has shape {dims:?}; expected N x classes",
                        g.output.name
                    ),
                ));
            }
        };
        if let Some(n) = declared.num_classes
            && n != k
        {
            return Err(Error::Mismatch(format!(
                "class count mismatch: the spec says {n} classes but {} outputs {k}",
                path.display()
            )));
        }
        self.spec.num_classes = k;
        let declared_kind = declared.output.unwrap_or(OutputKind::Auto);
        let notes = &mut self.spec.notes;
        match (softmax_input, declared_kind) {
            (Some(s), kind) => {
                let name = g.slot_names[s].clone();
                if kind == OutputKind::Logits {
                    notes.push(format!(
                        "declared logits, but the graph ends in Softmax: its input '{name}' is used as the logits"
                    ));
                } else {
                    notes.push(format!(
                        "output is probabilities (trailing Softmax); its input '{name}' is used as the logits"
                    ));
                }
                self.spec.output = OutputKind::Probs;
                self.spec.logits_tensor = name;
            }
            (None, OutputKind::Probs) => {
                notes.push("declared probabilities without a trailing Softmax: log(output) is used as the logits".into());
                self.spec.output = OutputKind::Probs;
                self.log_of_output = true;
            }
            (None, OutputKind::Logits) => {}
            (None, OutputKind::Auto) => {
                let v = out.flatten2().try_into_vec_as::<f32>().unwrap_or_default();
                let rows: Vec<&[f32]> = v.chunks(k.max(1)).collect();
                let is_dist = rows.iter().all(|r| {
                    r.iter().all(|&p| p >= 0.0) && (r.iter().sum::<f32>() - 1.0).abs() < 1e-4
                });
                if is_dist {
                    notes.push("outputs are non-negative and sum to 1: treated as probabilities, log(output) used as the logits".into());
                    self.spec.output = OutputKind::Probs;
                    self.log_of_output = true;
                } else {
                    notes.push("output treated as logits (no trailing Softmax)".into());
                }
            }
        }
        Ok(())
    }

    /// List the model's intermediate float tensors with their shapes, and mark candidates.
    fn find_layers(&self) -> Result<Vec<LayerInfo>> {
        let g = self.interp.graph();
        let probe = self.to_model_input(Tensor::<4>::full(
            [1, self.spec.channels, self.spec.height, self.spec.width],
            0.5,
            self.interp.device(),
        ));
        let shapes = self.interp.probe(probe)?;
        // Parametric layers after each node, counted from the output.
        let mut depth_after = vec![0usize; g.nodes.len() + 1];
        for i in (0..g.nodes.len()).rev() {
            depth_after[i] =
                depth_after[i + 1] + usize::from(PARAMETRIC.contains(&g.nodes[i].op_type.as_str()));
        }
        let mut layers = Vec::new();
        for (name, dims, is_float) in shapes {
            let slot = g.slot_of[&name];
            if !is_float || slot == g.output_slot {
                continue;
            }
            let Some(p) = g.producer[slot] else { continue };
            let node = &g.nodes[p];
            layers.push(LayerInfo {
                name,
                shape: dims.get(1..).map(<[usize]>::to_vec).unwrap_or_default(),
                op: node.op_type.clone(),
                node: node.name.clone(),
                cut: g.is_cut(slot),
                depth: depth_after[p + 1],
                candidate: false,
            });
        }
        // Candidates: cut tensors read by a parametric layer among the last CANDIDATE_DEPTH.
        for l in &mut layers {
            let slot = g.slot_of[&l.name];
            let feeds_parametric = g.nodes.iter().any(|n| {
                PARAMETRIC.contains(&n.op_type.as_str()) && n.inputs.first() == Some(&Some(slot))
            });
            l.candidate = l.cut && feeds_parametric && l.depth >= 1 && l.depth <= CANDIDATE_DEPTH;
        }
        Ok(layers)
    }

    pub fn spec(&self) -> &ResolvedSpec {
        &self.spec
    }

    pub fn layers(&self) -> &[LayerInfo] {
        &self.layers
    }

    pub fn graph(&self) -> &Graph {
        self.interp.graph()
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interp
    }

    pub fn device(&self) -> &Device {
        self.interp.device()
    }

    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    /// Find a layer by its ONNX name.
    pub fn layer(&self, name: &str) -> Result<&LayerInfo> {
        match self.layers.iter().find(|l| l.name == name) {
            Some(l) => Ok(l),
            None => {
                self.interp.slot(name)?;
                Err(Error::Mismatch(format!(
                    "tensor '{name}' is not an image-dependent float tensor of the model (a shape or constant)"
                )))
            }
        }
    }

    /// Images in `[0,1]` NCHW -> the tensor the model takes (normalised, laid out).
    pub fn to_model_input(&self, x01: Tensor<4>) -> FTensor {
        let x = (x01 - self.mean.clone()) / self.std.clone();
        FTensor::R4(match self.spec.layout {
            Layout::Nchw => x,
            Layout::Nhwc => x.permute([0, 2, 3, 1]),
        })
    }

    /// Upload images (CHW each, `[0,1]`) to the device as `[N, C, H, W]`.
    pub fn images_tensor(&self, pixels: &[f32], n: usize) -> Tensor<4> {
        let s = &self.spec;
        Tensor::<4>::from_data(
            TensorData::new(pixels.to_vec(), [n, s.channels, s.height, s.width]),
            self.device(),
        )
    }

    /// Run on images in `[0,1]`, capturing the logits tensor and then `capture`.
    fn run_raw(&self, x01: Tensor<4>, capture: &[String]) -> Result<(FTensor, Vec<FTensor>)> {
        let input = self.to_model_input(x01);
        self.run_model(Run {
            input: Some(input),
            capture: capture.to_vec(),
            ..Default::default()
        })
    }

    /// Run with the logits tensor captured first, then `run.capture`.
    fn run_model(&self, mut run: Run) -> Result<(FTensor, Vec<FTensor>)> {
        run.capture.insert(0, self.spec.logits_tensor.clone());
        let mut captured = self.interp.run(run)?.captured;
        let logits = captured.remove(0);
        Ok((logits, captured))
    }

    fn finish_logits(&self, raw: FTensor) -> Tensor<2> {
        let l = raw.flatten2();
        if self.log_of_output {
            l.clamp_min(1e-30).log()
        } else {
            l
        }
    }

    /// Logits for images in `[0,1]`, NCHW.
    pub fn logits(&self, x01: Tensor<4>) -> Result<Tensor<2>> {
        let (l, _) = self.run_raw(x01, &[])?;
        Ok(self.finish_logits(l))
    }

    /// Logits and the values of `layers` (flattened per image) in one pass.
    pub fn logits_and_layers(
        &self,
        x01: Tensor<4>,
        layers: &[String],
    ) -> Result<(Tensor<2>, Vec<Tensor<2>>)> {
        let (l, caps) = self.run_raw(x01, layers)?;
        Ok((
            self.finish_logits(l),
            caps.into_iter().map(FTensor::flatten2).collect(),
        ))
    }

    /// The values of `layer`, flattened per image.
    pub fn embed(&self, x01: Tensor<4>, layer: &str) -> Result<Tensor<2>> {
        let input = self.to_model_input(x01);
        self.capture_one(Run {
            input: Some(input),
            capture: vec![layer.to_string()],
            ..Default::default()
        })
    }

    /// The one tensor `run` captures, flattened per image.
    fn capture_one(&self, run: Run) -> Result<Tensor<2>> {
        Ok(self
            .interp
            .run(run)?
            .captured
            .into_iter()
            .next()
            .map(FTensor::flatten2)
            .expect("one capture"))
    }

    /// `value` (flattened per image) in the shape of `layer`, batch first.
    fn shaped_as(&self, layer: &str, value: Tensor<2>) -> Result<FTensor> {
        let mut shape = vec![value.dims()[0]];
        shape.extend_from_slice(&self.layer(layer)?.shape);
        Ok(FTensor::R2(value).reshape(&shape))
    }

    /// Logits when `layer` (flattened per image) is replaced by `value`; `x01` is needed only
    /// when the layer does not cut the graph (skip connections around it).
    pub fn logits_from_layer(
        &self,
        layer: &str,
        value: Tensor<2>,
        x01: Option<Tensor<4>>,
    ) -> Result<Tensor<2>> {
        let run = Run {
            input: x01.map(|x| self.to_model_input(x)),
            replace: vec![(layer.to_string(), self.shaped_as(layer, value)?)],
            ..Default::default()
        };
        let (l, _) = self.run_model(run)?;
        Ok(self.finish_logits(l))
    }

    /// The values of layer `to` (flattened per image) when layer `from`, which cuts the graph,
    /// is replaced by `value` (flattened per image); only what `to` needs is computed.
    pub fn layer_from_layer(&self, from: &str, value: Tensor<2>, to: &str) -> Result<Tensor<2>> {
        self.capture_one(Run {
            replace: vec![(from.to_string(), self.shaped_as(from, value)?)],
            capture: vec![to.to_string()],
            output: false,
            ..Default::default()
        })
    }

    /// Logits with `delta` (flattened per image, or one row for all) added at `layer`.
    pub fn logits_with_added(
        &self,
        x01: Tensor<4>,
        layer: &str,
        delta: Tensor<2>,
    ) -> Result<Tensor<2>> {
        let run = Run {
            input: Some(self.to_model_input(x01)),
            add: vec![(layer.to_string(), self.shaped_as(layer, delta)?)],
            ..Default::default()
        };
        let (l, _) = self.run_model(run)?;
        Ok(self.finish_logits(l))
    }

    /// Check that an image set fits the model (size, channels, classes).
    pub fn check_images(&self, set: &ImageSet) -> Result<()> {
        let s = &self.spec;
        set.check_fits(s.channels, s.height, s.width, s.num_classes)
    }

    /// The logits of every image of `set`, in batches of `batch`, row after row (`set.len()`
    /// rows of [`Classifier::num_classes`] values).
    pub fn logits_of(&self, set: &ImageSet, batch: usize) -> Result<Vec<f32>> {
        self.check_images(set)?;
        let per = set.image_len();
        let mut out = Vec::with_capacity(set.len() * self.num_classes());
        for start in (0..set.len()).step_by(batch.max(1)) {
            let n = batch.max(1).min(set.len() - start);
            let x = self.images_tensor(&set.pixels[start * per..(start + n) * per], n);
            out.extend(
                self.logits(x)?
                    .try_into_vec_as::<f32>()
                    .map_err(|e| Error::Mismatch(format!("cannot read logits back: {e:?}")))?,
            );
        }
        Ok(out)
    }

    /// Predicted classes for every image of `set`, in batches.
    pub fn predict(&self, set: &ImageSet, batch: usize) -> Result<Vec<usize>> {
        self.check_images(set)?;
        let per = set.image_len();
        let mut preds = Vec::with_capacity(set.len());
        for start in (0..set.len()).step_by(batch.max(1)) {
            let n = batch.min(set.len() - start);
            let x = self.images_tensor(&set.pixels[start * per..(start + n) * per], n);
            let l = self.logits(x)?;
            let am = l.argmax(1).try_into_vec_as::<i64>().unwrap_or_default();
            preds.extend(am.into_iter().map(|v| v as usize));
        }
        Ok(preds)
    }

    /// Fraction of `set` classified correctly.
    pub fn accuracy(&self, set: &ImageSet, batch: usize) -> Result<f64> {
        let preds = self.predict(set, batch)?;
        let right = preds
            .iter()
            .zip(&set.labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(right as f64 / set.len().max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::write::{AttrValue, GraphBuilder, save_model};

    /// A two-class linear model on NHWC 4x4x3 images: Transpose to NCHW, then `scale` (an op
    /// and its constant, or none), Flatten and Gemm; read with the spec `declared`.
    fn linear_model(scale: Option<(&str, f32)>, declared: &ModelSpec) -> Classifier {
        let mut g = GraphBuilder::new("scaled");
        g.input("x", &[None, Some(4), Some(4), Some(3)]);
        let w: Vec<f32> = (0..96)
            .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5)
            .collect();
        g.init_f32("w", &[2, 48], &w);
        g.init_f32("b", &[2], &[0.1, -0.2]);
        let t = g.node(
            "Transpose",
            &["x"],
            Some("t"),
            &[("perm", AttrValue::Ints(vec![0, 3, 1, 2]))],
        );
        let scaled = match scale {
            Some((op, v)) => {
                g.init_f32("k", &[1], &[v]);
                g.node(op, &[&t, "k"], Some("scaled"), &[])
            }
            None => t,
        };
        let f = g.node("Flatten", &[&scaled], Some("f"), &[]);
        g.node(
            "Gemm",
            &[&f, "w", "b"],
            Some("y"),
            &[("transB", AttrValue::Int(1))],
        );
        g.output("y", &[None, Some(2)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        save_model(&g.build(13), &path).unwrap();
        let graph = Graph::load(&path).unwrap();
        Classifier::new(graph, declared, None, &cpu_device(false)).unwrap()
    }

    /// A model that divides its own input by 255 (or 127.5) takes pixels 0-255: the spec says so and feeds
    /// them, so its logits equal those of the same model without the division fed x/255; a
    /// declared scaling, or any other constant, is left alone.
    #[test]
    fn a_model_that_divides_its_input_by_255_is_fed_pixels_0_to_255() {
        let plain = linear_model(None, &ModelSpec::default());
        assert_eq!(plain.spec().std, [1.0; 3]);
        let pixels: Vec<f32> = (0..2 * 48).map(|i| ((i * 13) % 17) as f32 / 16.0).collect();
        let want = plain
            .logits(plain.images_tensor(&pixels, 2))
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        for (op, v) in [("Mul", 1.0 / 255.0), ("Div", 255.0)] {
            let m = linear_model(Some((op, v)), &ModelSpec::default());
            let s = m.spec();
            assert_eq!(
                (s.mean.clone(), s.std.clone()),
                (vec![0.0; 3], vec![1.0 / 255.0; 3])
            );
            assert!(
                s.notes
                    .iter()
                    .any(|n| n.contains("pixels 0-255") && n.contains(&op.to_lowercase())),
                "{:?}",
                s.notes
            );
            let got = m
                .logits(m.images_tensor(&pixels, 2))
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{op}: {got:?} against {want:?}");
            }
        }
        // Keras' Rescaling(1/127.5, offset=-1) takes pixels 0-255 too.
        let half_range = linear_model(Some(("Mul", 1.0 / 127.5)), &ModelSpec::default());
        assert_eq!(half_range.spec().std, [1.0 / 255.0; 3]);
        // Another constant is not a 0-255 input; a declared scaling wins.
        let half = linear_model(Some(("Mul", 0.5)), &ModelSpec::default());
        assert_eq!(half.spec().std, [1.0; 3]);
        let declared = ModelSpec {
            std: Some(vec![0.5]),
            ..Default::default()
        };
        let m = linear_model(Some(("Mul", 1.0 / 255.0)), &declared);
        assert_eq!(m.spec().std, [0.5; 3]);
        assert!(!m.spec().notes.iter().any(|n| n.contains("0-255")));
    }
}
