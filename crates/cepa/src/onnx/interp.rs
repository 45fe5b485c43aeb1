//! Running a [`Graph`] on a device, with taps: read any intermediate tensor, add a perturbation to
//! it, or replace it and run only the rest of the network.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use burn::prelude::Device;

use crate::error::{Error, Result};
use crate::onnx::graph::Graph;
use crate::onnx::host::HostData;
use crate::onnx::ops::{self, Ctx, Inputs};
use crate::onnx::value::{FTensor, Value};

/// A graph bound to a device, its constants uploaded once.
#[derive(Clone, Debug)]
pub struct Interpreter {
    graph: Arc<Graph>,
    device: Device,
    consts: Vec<Option<Value>>,
}

/// What to feed a run and what to bring back.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The model input; may be omitted when `replace` cuts it off.
    pub input: Option<FTensor>,
    /// Tensors (by ONNX name) whose value is replaced: their producers do not run.
    pub replace: Vec<(String, FTensor)>,
    /// Perturbations added to tensors (by ONNX name) as soon as they are computed.
    pub add: Vec<(String, FTensor)>,
    /// Tensors (by ONNX name) to return, after any perturbation.
    pub capture: Vec<String>,
    /// Whether to compute the model output (otherwise only what the captures need).
    pub output: bool,
}

/// The results of a [`Run`].
#[derive(Clone, Debug)]
pub struct RunResult {
    pub output: Option<FTensor>,
    /// In the order of [`Run::capture`].
    pub captured: Vec<FTensor>,
}

impl Interpreter {
    /// Upload the graph's constants to `device` (all but scalars and the parameters a Resize
    /// reads on the host: its scales and sizes, which would otherwise be read back every pass).
    pub fn new(graph: Arc<Graph>, device: &Device) -> Self {
        let mut host_only = vec![false; graph.consts.len()];
        for node in &graph.nodes {
            if matches!(node.op, ops::Op::Resize(_)) {
                for &s in node.inputs.iter().skip(1).flatten() {
                    host_only[s] = true;
                }
            }
        }
        let consts = graph
            .consts
            .iter()
            .zip(&host_only)
            .map(|(c, &host)| {
                c.as_ref().map(|h| match &h.data {
                    HostData::F32(v) if !host && !h.shape.is_empty() && v.len() > 1 => {
                        Value::Float(FTensor::from_host(v.clone(), &h.shape, device))
                    }
                    _ => Value::Host(h.clone()),
                })
            })
            .collect();
        Self {
            graph,
            device: device.clone(),
            consts,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The slot of a tensor named by the user.
    pub(crate) fn slot(&self, name: &str) -> Result<usize> {
        self.graph.slot_of.get(name).copied().ok_or_else(|| {
            let lower = name.to_lowercase();
            let close: Vec<&str> = self
                .graph
                .slot_names
                .iter()
                .filter(|n| n.to_lowercase().contains(&lower) || lower.contains(&n.to_lowercase()))
                .take(5)
                .map(String::as_str)
                .collect();
            Error::UnknownTensor {
                name: name.to_string(),
                hint: if close.is_empty() {
                    " (`cepa inspect` lists the layers)".to_string()
                } else {
                    format!(" (did you mean one of {close:?}?)")
                },
            }
        })
    }

    /// Forward pass: the model output for a batch of model inputs.
    pub fn forward(&self, input: FTensor) -> Result<FTensor> {
        let r = self.run(Run {
            input: Some(input),
            output: true,
            ..Default::default()
        })?;
        Ok(r.output.expect("output requested"))
    }

    /// Evaluate the graph as `run` asks.
    pub fn run(&self, run: Run) -> Result<RunResult> {
        self.run_inner(run, false).map(|(r, _)| r)
    }

    /// Evaluate the whole graph on `input` and return every tensor's shape, by name, with whether
    /// it depends on the image (float, on the device) or only on shapes and constants (host).
    pub fn probe(&self, input: FTensor) -> Result<Vec<(String, Vec<usize>, bool)>> {
        let (_, values) = self.run_inner(
            Run {
                input: Some(input),
                output: true,
                ..Default::default()
            },
            true,
        )?;
        let g = &self.graph;
        let mut out = Vec::new();
        for node in &g.nodes {
            for &o in &node.outputs {
                if let Some(v) = &values[o] {
                    out.push((
                        g.slot_names[o].clone(),
                        v.dims(),
                        matches!(v, Value::Float(_)),
                    ));
                }
            }
        }
        Ok(out)
    }

    fn run_inner(&self, run: Run, keep_all: bool) -> Result<(RunResult, Vec<Option<Value>>)> {
        let g = &self.graph;
        let n_slots = g.slot_names.len();
        let mut replaced = vec![None; n_slots];
        for (name, t) in run.replace {
            replaced[self.slot(&name)?] = Some(t);
        }
        let mut added: Vec<Option<FTensor>> = vec![None; n_slots];
        for (name, t) in run.add {
            added[self.slot(&name)?] = Some(t);
        }
        let captures: Vec<usize> = run
            .capture
            .iter()
            .map(|n| self.slot(n))
            .collect::<Result<_>>()?;

        // Which nodes are needed, walking back from the targets and stopping at replaced slots.
        let mut needed_slot = vec![false; n_slots];
        let mut needed_node = vec![false; g.nodes.len()];
        let mut stack: Vec<usize> = captures.clone();
        if run.output {
            stack.push(g.output_slot);
        }
        while let Some(s) = stack.pop() {
            if needed_slot[s] {
                continue;
            }
            needed_slot[s] = true;
            if replaced[s].is_some() || self.consts[s].is_some() {
                continue;
            }
            if let Some(p) = g.producer[s] {
                needed_node[p] = true;
                stack.extend(g.nodes[p].inputs.iter().flatten().copied());
            }
        }
        // Uses of each slot by needed nodes, so values can be dropped after their last use.
        let mut uses = vec![0usize; n_slots];
        for (i, node) in g.nodes.iter().enumerate() {
            if needed_node[i] {
                for &s in node.inputs.iter().flatten() {
                    uses[s] += 1;
                }
            }
        }
        let keep =
            |s: usize| keep_all || captures.contains(&s) || (run.output && s == g.output_slot);

        let mut values: Vec<Option<Value>> = vec![None; n_slots];
        let mut set = |values: &mut Vec<Option<Value>>, s: usize, v: Value| -> Result<()> {
            let v = match (added[s].take(), v) {
                (None, v) => v,
                (Some(delta), Value::Float(t)) => {
                    let (dt, dd) = (t.dims(), delta.dims());
                    Value::Float(t.add_bc(delta).ok_or_else(|| {
                        Error::Mismatch(format!(
                            "perturbation of shape {dd:?} does not fit tensor '{}' of shape {dt:?}",
                            g.slot_names[s]
                        ))
                    })?)
                }
                (Some(_), Value::Host(_)) => {
                    return Err(Error::Mismatch(format!(
                        "tensor '{}' is computed from shapes only; it cannot be perturbed",
                        g.slot_names[s]
                    )));
                }
            };
            values[s] = Some(v);
            Ok(())
        };
        for (s, r) in replaced.iter_mut().enumerate() {
            if let Some(t) = r.take() {
                set(&mut values, s, Value::Float(t))?;
            }
        }
        if needed_slot[g.input_slot] && values[g.input_slot].is_none() {
            let input = run.input.ok_or_else(|| {
                Error::Mismatch(format!(
                    "the requested tensors depend on the model input '{}' beyond the replaced ones \
                     (a replaced tensor must cut the graph: skip connections bypass it)",
                    g.input_name()
                ))
            })?;
            set(&mut values, g.input_slot, Value::Float(input))?;
        }

        for (i, node) in g.nodes.iter().enumerate() {
            if !needed_node[i] || node.outputs.iter().all(|&o| values[o].is_some()) {
                continue;
            }
            let vals: Vec<Option<Value>> = node
                .inputs
                .iter()
                .map(|s| s.and_then(|s| values[s].clone().or_else(|| self.consts[s].clone())))
                .collect();
            let ctx = Ctx {
                node: &node.name,
                op: &node.op_type,
                opset: g.opset,
                device: &self.device,
            };
            let inputs = Inputs {
                vals: vals.iter().map(Option::as_ref).collect(),
                ctx: &ctx,
            };
            let outs = catch_unwind(AssertUnwindSafe(|| {
                ops::eval(&node.op, &inputs, node.outputs.len())
            }))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "unknown failure".to_string());
                Err(ctx.err(format!("tensor backend failed: {msg}")))
            })?;
            drop(vals);
            for (&o, v) in node.outputs.iter().zip(outs) {
                set(&mut values, o, v)?;
            }
            for &s in node.inputs.iter().flatten() {
                uses[s] -= 1;
                if uses[s] == 0 && !keep(s) {
                    values[s] = None;
                }
            }
        }

        let float_of = |s: usize, values: &[Option<Value>]| -> Result<FTensor> {
            match values[s].clone().or_else(|| self.consts[s].clone()) {
                Some(Value::Float(t)) => Ok(t),
                Some(Value::Host(h)) => Ok(FTensor::from_host(h.as_f32(), &h.shape, &self.device)),
                None => Err(Error::Mismatch(format!(
                    "tensor '{}' was not computed",
                    g.slot_names[s]
                ))),
            }
        };
        let output = if run.output {
            Some(float_of(g.output_slot, &values)?)
        } else {
            None
        };
        let captured = captures
            .iter()
            .map(|&s| float_of(s, &values))
            .collect::<Result<_>>()?;
        Ok((RunResult { output, captured }, values))
    }
}
