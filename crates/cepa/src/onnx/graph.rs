//! The parsed graph: nodes in topological order over numbered tensor slots, with the original ONNX
//! names kept so users can name layers as their exporter did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::Device;
use onnx_ir::ModelProto;

use crate::error::{Error, Result};
use crate::onnx::attrs::Attrs;
use crate::onnx::host::HostTensor;
use crate::onnx::ops::{self, Ctx, Inputs, Op};
use crate::onnx::proto::{self, ExternalData};
use crate::onnx::value::Value;

/// One node: its op, original name and the slots it reads and writes.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub name: String,
    pub op_type: String,
    pub op: Op,
    /// `None` for an omitted optional input.
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
}

/// A graph input or output as declared in the file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorDecl {
    pub name: String,
    /// Declared dimensions; `None` for a symbolic (dynamic) one such as the batch.
    pub dims: Vec<Option<usize>>,
    /// ONNX element type, e.g. "FLOAT".
    pub elem_type: String,
}

/// A parsed ONNX model, independent of any device.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) path: PathBuf,
    pub(crate) nodes: Vec<Node>,
    pub(crate) slot_names: Vec<String>,
    pub(crate) slot_of: HashMap<String, usize>,
    /// Initializers and folded constants, by slot.
    pub(crate) consts: Vec<Option<HostTensor>>,
    /// Which node writes each slot (None for the input and constants).
    pub(crate) producer: Vec<Option<usize>>,
    pub(crate) input_slot: usize,
    pub(crate) output_slot: usize,
    pub input: TensorDecl,
    pub output: TensorDecl,
    pub opset: i64,
    pub producer_name: String,
}

fn decl(vi: &onnx_ir::ValueInfoProto) -> TensorDecl {
    let mut dims = Vec::new();
    let mut elem_type = "UNDEFINED".to_string();
    if let Some(tp) = vi.type_.as_ref()
        && tp.has_tensor_type()
    {
        let tt = tp.tensor_type();
        elem_type = proto::dtype::name(tt.elem_type).to_string();
        if let Some(shape) = tt.shape.as_ref() {
            for d in &shape.dim {
                dims.push(if d.has_dim_value() && d.dim_value() > 0 {
                    Some(d.dim_value() as usize)
                } else {
                    None
                });
            }
        }
    }
    TensorDecl {
        name: vi.name.clone(),
        dims,
        elem_type,
    }
}

impl Graph {
    /// Read and check an ONNX file. Fails on the first op, attribute or data type the interpreter
    /// does not support, naming it and its node.
    pub fn load(path: &Path) -> Result<Graph> {
        let model = proto::read_model(path)?;
        Self::from_proto(&model, path)
    }

    pub(crate) fn from_proto(model: &ModelProto, path: &Path) -> Result<Graph> {
        let fmt = |msg: String| Error::format(path, msg);
        let graph = model.graph.as_ref().ok_or_else(|| fmt("no graph".into()))?;
        let mut opset = None;
        for imp in &model.opset_import {
            if imp.domain.is_empty() || imp.domain == "ai.onnx" {
                opset = Some(imp.version);
            }
        }
        let opset = opset.ok_or_else(|| fmt("no default-domain opset import".into()))?;
        let mut external = ExternalData::new(path);

        let mut g = Graph {
            path: path.to_path_buf(),
            nodes: Vec::new(),
            slot_names: Vec::new(),
            slot_of: HashMap::new(),
            consts: Vec::new(),
            producer: Vec::new(),
            input_slot: 0,
            output_slot: 0,
            input: TensorDecl {
                name: String::new(),
                dims: vec![],
                elem_type: String::new(),
            },
            output: TensorDecl {
                name: String::new(),
                dims: vec![],
                elem_type: String::new(),
            },
            opset,
            producer_name: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_string(),
        };
        for init in &graph.initializer {
            let t = proto::tensor_from_proto(
                init,
                &mut external,
                &format!("initializer '{}'", init.name),
            )?;
            let s = g.slot(&init.name);
            g.consts[s] = Some(t);
        }
        let inputs: Vec<&onnx_ir::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !g.slot_of.contains_key(&i.name))
            .collect();
        if inputs.len() != 1 {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(fmt(format!(
                "expected one image input, the graph has {} non-constant inputs {names:?}",
                inputs.len()
            )));
        }
        g.input = decl(inputs[0]);
        if g.input.elem_type != "FLOAT" {
            return Err(fmt(format!(
                "input '{}' has element type {}, only FLOAT inputs are supported",
                g.input.name, g.input.elem_type
            )));
        }
        g.input_slot = g.slot(&inputs[0].name.clone());
        let out = graph
            .output
            .first()
            .ok_or_else(|| fmt("the graph has no output".into()))?;
        g.output = decl(out);

        for (i, n) in graph.node.iter().enumerate() {
            let name = if n.name.is_empty() {
                format!("{}_{i}", n.op_type)
            } else {
                n.name.clone()
            };
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return Err(Error::UnsupportedOp {
                    op: format!("{}::{}", n.domain, n.op_type),
                    node: name,
                    opset,
                    detail: String::new(),
                });
            }
            let attrs = proto::attributes(&n.attribute, &mut external, &name, &n.op_type, opset)?;
            let op = ops::parse(&n.op_type, &Attrs::new(&attrs, &name, &n.op_type, opset))?;
            let ins = n
                .input
                .iter()
                .map(|s| (!s.is_empty()).then(|| g.slot(s)))
                .collect();
            let outs = n.output.iter().map(|s| g.slot(s)).collect();
            g.nodes.push(Node {
                name,
                op_type: n.op_type.clone(),
                op,
                inputs: ins,
                outputs: outs,
            });
        }
        g.output_slot = *g
            .slot_of
            .get(&g.output.name)
            .ok_or_else(|| fmt(format!("output '{}' is produced by no node", g.output.name)))?;
        g.sort()?;
        g.fold_constants();
        Ok(g)
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&s) = self.slot_of.get(name) {
            return s;
        }
        let s = self.slot_names.len();
        self.slot_names.push(name.to_string());
        self.slot_of.insert(name.to_string(), s);
        self.consts.push(None);
        self.producer.push(None);
        s
    }

    /// Order nodes so each runs after its inputs exist; reject cycles and dangling inputs.
    fn sort(&mut self) -> Result<()> {
        let n_slots = self.slot_names.len();
        let mut ready = vec![false; n_slots];
        ready[self.input_slot] = true;
        for (s, c) in self.consts.iter().enumerate() {
            if c.is_some() {
                ready[s] = true;
            }
        }
        let mut done = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        loop {
            let before = order.len();
            for (i, node) in self.nodes.iter().enumerate() {
                if !done[i] && node.inputs.iter().flatten().all(|&s| ready[s]) {
                    done[i] = true;
                    order.push(i);
                    for &o in &node.outputs {
                        ready[o] = true;
                    }
                }
            }
            if order.len() == self.nodes.len() {
                break;
            }
            if order.len() == before {
                let i = done.iter().position(|d| !d).unwrap_or(0);
                let node = &self.nodes[i];
                let missing: Vec<&str> = node
                    .inputs
                    .iter()
                    .flatten()
                    .filter(|&&s| !ready[s])
                    .map(|&s| self.slot_names[s].as_str())
                    .collect();
                return Err(Error::Graph {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    msg: format!("input(s) {missing:?} are produced by no node (or form a cycle)"),
                });
            }
        }
        let mut nodes = Vec::with_capacity(order.len());
        for i in order {
            nodes.push(self.nodes[i].clone());
        }
        self.nodes = nodes;
        for (i, node) in self.nodes.iter().enumerate() {
            for &o in &node.outputs {
                self.producer[o] = Some(i);
            }
        }
        Ok(())
    }

    /// Evaluate, once, every node whose inputs are all constants and whose result stays on the
    /// host (Constant nodes, shape arithmetic on constants, transposed weights ...).
    fn fold_constants(&mut self) {
        let device = Device::default();
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.outputs.len() != 1 || matches!(node.op, Op::Dropout) {
                continue;
            }
            if !node
                .inputs
                .iter()
                .flatten()
                .all(|&s| self.consts[s].is_some())
            {
                continue;
            }
            let vals: Vec<Option<Value>> = node
                .inputs
                .iter()
                .map(|s| s.and_then(|s| self.consts[s].clone().map(Value::Host)))
                .collect();
            let ctx = Ctx {
                node: &node.name,
                op: &node.op_type,
                opset: self.opset,
                device: &device,
            };
            let inputs = Inputs {
                vals: vals.iter().map(Option::as_ref).collect(),
                ctx: &ctx,
            };
            let host_only = matches!(
                node.op,
                Op::Constant(_)
                    | Op::ConstantOfShape(_)
                    | Op::Binary(_)
                    | Op::Reshape { .. }
                    | Op::Flatten { .. }
                    | Op::Transpose { .. }
                    | Op::Concat { .. }
                    | Op::Shape { .. }
                    | Op::Gather { .. }
                    | Op::Unsqueeze { .. }
                    | Op::Squeeze { .. }
                    | Op::Slice { .. }
                    | Op::Cast { .. }
                    | Op::Expand
                    | Op::Compare(_)
                    | Op::Where
                    | Op::Mod { .. }
                    | Op::Logic(_)
                    | Op::Range
                    | Op::Tile
                    | Op::CumSum { .. }
                    | Op::Identity
            );
            if !host_only {
                continue;
            }
            if let Ok(mut out) = ops::eval(&node.op, &inputs, 1)
                && let Some(Value::Host(h)) = out.pop()
            {
                let o = node.outputs[0];
                self.consts[o] = Some(h);
            }
        }
    }

    /// The original ONNX name of the model's input.
    pub fn input_name(&self) -> &str {
        &self.slot_names[self.input_slot]
    }

    /// The file the graph came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Op types in graph order (for reports).
    pub fn op_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.op_type.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `slot` separates the input from the output: every path from the input to the
    /// output passes through it, so the rest of the network can run from its value alone.
    pub(crate) fn is_cut(&self, slot: usize) -> bool {
        let mut seen = vec![false; self.slot_names.len()];
        let mut stack = vec![self.output_slot];
        while let Some(s) = stack.pop() {
            if s == slot || seen[s] {
                continue;
            }
            seen[s] = true;
            if s == self.input_slot {
                return false;
            }
            if let Some(p) = self.producer[s] {
                stack.extend(self.nodes[p].inputs.iter().flatten().copied());
            }
        }
        true
    }

    /// The node that writes a slot, if any.
    pub(crate) fn producer_of(&self, slot: usize) -> Option<&Node> {
        self.producer[slot].map(|p| &self.nodes[p])
    }

    /// The node that divides the model's input by 255 (or 127.5) itself, if the graph opens with
    /// one: from the input through ops that keep its values (Transpose, Cast, Identity), the one
    /// node reading it is a Mul by a constant 1/255 or 1/127.5, or a Div by a constant 255 or
    /// 127.5 (Keras' `Rescaling(1/255)` and `Rescaling(1/127.5, offset=-1)`, a PyTorch `x / 255`
    /// in `forward`). Such a model takes pixels 0-255.
    pub(crate) fn divides_input_by_255(&self) -> Option<&str> {
        let constant = |slot: usize| -> Option<f32> {
            let t = self.consts[slot].as_ref()?;
            let v = t.as_f32();
            let first = *v.first()?;
            v.iter().all(|&x| x == first).then_some(first)
        };
        let near = |v: f32, want: f32| (v - want).abs() <= 1e-3 * want;
        let divisor = |v: f32| near(v, 255.0) || near(v, 127.5);
        let mut slot = self.input_slot;
        loop {
            let mut readers = self.nodes.iter().filter(|n| n.inputs.contains(&Some(slot)));
            let node = readers.next()?;
            if readers.next().is_some() {
                return None;
            }
            let other = node
                .inputs
                .iter()
                .copied()
                .find(|&i| i != Some(slot))
                .flatten();
            match node.op_type.as_str() {
                "Transpose" | "Cast" | "Identity" => slot = *node.outputs.first()?,
                "Mul" if constant(other?).is_some_and(|v| v > 0.0 && divisor(1.0 / v)) => {
                    return Some(&node.name);
                }
                "Div"
                    if node.inputs.first() == Some(&Some(slot))
                        && constant(other?).is_some_and(divisor) =>
                {
                    return Some(&node.name);
                }
                _ => return None,
            }
        }
    }
}
