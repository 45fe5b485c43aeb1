//! The ONNX ops the interpreter implements, one family per file. Each op is parsed once, at load
//! time, into a typed form (unknown attributes and unsupported settings fail there), then
//! evaluated on burn tensors.

mod conv;
mod elementwise;
mod linear;
mod norm;
mod reduce;
mod resize;
mod shape;
#[cfg(test)]
mod tests;

use burn::prelude::Device;

use crate::error::{Error, Result};
use crate::onnx::attrs::Attrs;
use crate::onnx::host::HostTensor;
use crate::onnx::value::{FTensor, Value};

pub(crate) use conv::{ConvSpec, PoolSpec};
pub(crate) use elementwise::{Binary, Compare, Unary};

/// A parsed op with its checked attributes.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Conv(ConvSpec),
    MaxPool(PoolSpec),
    AveragePool(PoolSpec),
    GlobalAveragePool,
    GlobalMaxPool,
    BatchNorm {
        epsilon: f32,
    },
    Unary(Unary),
    Binary(Binary),
    /// Elementwise max/min over any number of inputs.
    Variadic {
        max: bool,
    },
    /// Elementwise sum (or mean) over any number of inputs, broadcast.
    Sum {
        mean: bool,
    },
    /// Normalisation over the axes from `axis` on, then scale and bias.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// Per-sample, per-channel normalisation over the spatial axes, then scale and bias.
    InstanceNorm {
        epsilon: f32,
    },
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    PRelu,
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Flatten {
        axis: i64,
    },
    Reshape {
        allow_zero: bool,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Concat {
        axis: i64,
    },
    /// Cut along `axis` into parts given by `split` (attribute, before opset 13), by the second
    /// input, or into `num_outputs` (opset 18) or as many equal parts as the node has outputs.
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
        num_outputs: Option<usize>,
    },
    /// Broadcast to a shape given as the second input (numpy rules, both ways).
    Expand,
    /// Resize / Upsample, nearest or linear.
    Resize(resize::ResizeSpec),
    /// A comparison of shape arithmetic (host values only).
    Compare(Compare),
    /// `Where` of shape arithmetic (host values only).
    Where,
    /// `Mod` of shape arithmetic (host values only).
    Mod {
        fmod: bool,
    },
    /// Not, And, Or, Xor of shape arithmetic (host values only).
    Logic(elementwise::Logic),
    /// `Range` of shape arithmetic (host values only).
    Range,
    /// Repeat along every axis.
    Tile,
    /// `CumSum` of shape arithmetic (host values only).
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    Softmax {
        axis: i64,
        log: bool,
        legacy: bool,
    },
    Reduce {
        kind: reduce::ReduceKind,
        axes: Option<Vec<i64>>,
        keep_dims: bool,
        noop_empty: bool,
    },
    Identity,
    Dropout,
    Constant(HostTensor),
    ConstantOfShape(HostTensor),
    Pad {
        mode: shape::PadMode,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    GatherNd {
        batch_dims: i64,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Slice {
        attrs: Option<shape::SliceAttrs>,
    },
    Cast {
        to: i32,
    },
}

/// Parse a node's op type and attributes. Unknown ops and attributes are errors.
pub(crate) fn parse(op_type: &str, a: &Attrs) -> Result<Op> {
    let opset = a.opset;
    let op = match op_type {
        "Conv" => Op::Conv(conv::parse_conv(a)?),
        "MaxPool" => Op::MaxPool(conv::parse_pool(a, true)?),
        "AveragePool" => Op::AveragePool(conv::parse_pool(a, false)?),
        "GlobalAveragePool" => Op::GlobalAveragePool,
        "GlobalMaxPool" => Op::GlobalMaxPool,
        "BatchNormalization" => {
            if a.int("training_mode", 0)? != 0 {
                return Err(a.unsupported("training_mode=1"));
            }
            if a.int("spatial", 1)? != 1 {
                return Err(a.unsupported("spatial=0"));
            }
            if a.has("is_test") && a.int("is_test", 1)? == 0 {
                return Err(a.unsupported("is_test=0"));
            }
            a.ignore(&["momentum", "consumed_inputs"]);
            Op::BatchNorm {
                epsilon: a.float("epsilon", 1e-5)?,
            }
        }
        "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Neg" | "Abs" | "Erf"
        | "Softplus" | "HardSwish" | "Reciprocal" | "Floor" | "Ceil" | "Sin" | "Cos" => {
            Op::Unary(elementwise::parse_unary(op_type, a)?)
        }
        "LeakyRelu" => Op::Unary(Unary::LeakyRelu(a.float("alpha", 0.01)?)),
        "Elu" => Op::Unary(Unary::Elu(a.float("alpha", 1.0)?)),
        "HardSigmoid" => Op::Unary(Unary::HardSigmoid(
            a.float("alpha", 0.2)?,
            a.float("beta", 0.5)?,
        )),
        "Gelu" => {
            let approximate = a.string("approximate", "none")?;
            Op::Unary(Unary::Gelu(approximate == "tanh"))
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            if a.has("broadcast") || a.has("axis") {
                return Err(a.unsupported("legacy 'broadcast'/'axis' attribute (opset < 7)"));
            }
            Op::Binary(elementwise::parse_binary(op_type))
        }
        "Sum" | "Mean" => Op::Sum {
            mean: op_type == "Mean",
        },
        "LayerNormalization" => {
            if a.int("stash_type", 1)? != 1 {
                return Err(a.unsupported("stash_type other than 1 (float32)"));
            }
            Op::LayerNorm {
                axis: a.int("axis", -1)?,
                epsilon: a.float("epsilon", 1e-5)?,
            }
        }
        "InstanceNormalization" => Op::InstanceNorm {
            epsilon: a.float("epsilon", 1e-5)?,
        },
        "Split" => {
            let num_outputs = if a.has("num_outputs") {
                let n = a.int("num_outputs", 0)?;
                if n < 1 {
                    return Err(a.unsupported(format!("num_outputs={n}")));
                }
                Some(n as usize)
            } else {
                None
            };
            Op::Split {
                axis: a.int("axis", 0)?,
                split: a.ints("split")?,
                num_outputs,
            }
        }
        "Expand" => Op::Expand,
        "Resize" | "Upsample" => resize::parse(op_type, a)?,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => Op::Compare(
            elementwise::parse_compare(op_type)
                .ok_or_else(|| Error::Mismatch(format!("{op_type} is not a comparison")))?,
        ),
        "Where" => Op::Where,
        "Not" => Op::Logic(elementwise::Logic::Not),
        "And" => Op::Logic(elementwise::Logic::And),
        "Or" => Op::Logic(elementwise::Logic::Or),
        "Xor" => Op::Logic(elementwise::Logic::Xor),
        "Range" => Op::Range,
        "Tile" => Op::Tile,
        "CumSum" => Op::CumSum {
            exclusive: a.int("exclusive", 0)? != 0,
            reverse: a.int("reverse", 0)? != 0,
        },
        "Mod" => Op::Mod {
            fmod: a.int("fmod", 0)? != 0,
        },
        "Max" | "Min" => Op::Variadic {
            max: op_type == "Max",
        },
        "Clip" => {
            if opset < 11 {
                Op::Clip {
                    min: Some(a.float("min", f32::NEG_INFINITY)?),
                    max: Some(a.float("max", f32::INFINITY)?),
                }
            } else {
                Op::Clip {
                    min: None,
                    max: None,
                }
            }
        }
        "PRelu" => Op::PRelu,
        "MatMul" => Op::MatMul,
        "Gemm" => Op::Gemm {
            alpha: a.float("alpha", 1.0)?,
            beta: a.float("beta", 1.0)?,
            trans_a: a.int("transA", 0)? != 0,
            trans_b: a.int("transB", 0)? != 0,
        },
        "Flatten" => Op::Flatten {
            axis: a.int("axis", 1)?,
        },
        "Reshape" => Op::Reshape {
            allow_zero: a.int("allowzero", 0)? != 0,
        },
        "Transpose" => Op::Transpose {
            perm: a.ints("perm")?,
        },
        "Concat" => Op::Concat {
            axis: a.int("axis", 0)?,
        },
        "Softmax" | "LogSoftmax" => Op::Softmax {
            axis: a.int("axis", if opset >= 13 { -1 } else { 1 })?,
            log: op_type == "LogSoftmax",
            legacy: opset < 13,
        },
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" | "ReduceSumSquare" => {
            reduce::parse(op_type, a)?
        }
        "Identity" => Op::Identity,
        "Dropout" => {
            a.ignore(&["ratio", "seed", "is_test"]);
            Op::Dropout
        }
        "Constant" => Op::Constant(shape::parse_constant(a)?),
        "ConstantOfShape" => Op::ConstantOfShape(
            a.tensor("value")?
                .unwrap_or_else(|| HostTensor::f32(vec![1], vec![0.0])),
        ),
        "Pad" => shape::parse_pad(a)?,
        "Shape" => Op::Shape {
            start: a.int("start", 0)?,
            end: a.has("end").then(|| a.int("end", 0)).transpose()?,
        },
        "Gather" => Op::Gather {
            axis: a.int("axis", 0)?,
        },
        "GatherND" => Op::GatherNd {
            batch_dims: a.int("batch_dims", 0)?,
        },
        "Unsqueeze" => Op::Unsqueeze {
            axes: a.ints("axes")?,
        },
        "Squeeze" => Op::Squeeze {
            axes: a.ints("axes")?,
        },
        "Slice" => Op::Slice {
            attrs: shape::parse_slice(a)?,
        },
        "Cast" => {
            a.ignore(&["saturate", "round_mode"]);
            Op::Cast {
                to: a.int("to", 1)? as i32,
            }
        }
        _ => {
            return Err(Error::UnsupportedOp {
                op: op_type.to_string(),
                node: a.node.to_string(),
                opset,
                detail: String::new(),
            });
        }
    };
    a.finish()?;
    Ok(op)
}

/// Where an op is being evaluated, for error messages and uploads.
pub(crate) struct Ctx<'a> {
    pub node: &'a str,
    pub op: &'a str,
    pub opset: i64,
    pub device: &'a Device,
}

impl Ctx<'_> {
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Graph {
            node: self.node.to_string(),
            op: self.op.to_string(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(&self, detail: impl std::fmt::Display) -> Error {
        Error::UnsupportedOp {
            op: self.op.to_string(),
            node: self.node.to_string(),
            opset: self.opset,
            detail: format!(": {detail}"),
        }
    }
}

/// A node's input values, with accessors that convert and check.
pub(crate) struct Inputs<'a> {
    pub vals: Vec<Option<&'a Value>>,
    pub ctx: &'a Ctx<'a>,
}

impl Inputs<'_> {
    pub fn len(&self) -> usize {
        self.vals.len()
    }

    pub fn present(&self, i: usize) -> bool {
        self.vals.get(i).copied().flatten().is_some()
    }

    fn get(&self, i: usize) -> Result<&Value> {
        self.vals
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| self.ctx.err(format!("missing input {i}")))
    }

    /// Input `i` as a device float tensor (host constants are uploaded).
    pub fn float(&self, i: usize) -> Result<FTensor> {
        match self.get(i)? {
            Value::Float(t) => Ok(t.clone()),
            Value::Host(h) => Ok(FTensor::from_host(h.as_f32(), &h.shape, self.ctx.device)),
        }
    }

    pub fn opt_float(&self, i: usize) -> Result<Option<FTensor>> {
        if self.present(i) {
            self.float(i).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Input `i` as a host tensor: it must be a constant or computed from shapes.
    pub fn host(&self, i: usize) -> Result<HostTensor> {
        match self.get(i)? {
            Value::Host(h) => Ok(h.clone()),
            Value::Float(_) => Err(self.ctx.unsupported(format!(
                "input {i} must be a constant (or computed from shapes), but it depends on the image"
            ))),
        }
    }

    pub fn opt_host(&self, i: usize) -> Result<Option<HostTensor>> {
        if self.present(i) {
            self.host(i).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn value(&self, i: usize) -> Result<Value> {
        self.get(i).cloned()
    }

    /// True when every present input lives on the host (the op can be folded there).
    pub fn all_host(&self) -> bool {
        self.vals
            .iter()
            .flatten()
            .all(|v| matches!(v, Value::Host(_)))
    }
}

/// Normalise a possibly negative axis against `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize, ctx: &Ctx) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(ctx.err(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Evaluate a parsed op.
pub(crate) fn eval(op: &Op, inputs: &Inputs, n_outputs: usize) -> Result<Vec<Value>> {
    let ctx = inputs.ctx;
    let multi = matches!(op, Op::Dropout | Op::Split { .. } | Op::LayerNorm { .. });
    if n_outputs > 1 && !multi {
        return Err(ctx.unsupported(format!(
            "{n_outputs} outputs (only the first is implemented)"
        )));
    }
    let out = match op {
        Op::Conv(spec) => Value::Float(conv::conv(spec, inputs)?),
        Op::MaxPool(spec) => Value::Float(conv::pool(spec, true, inputs)?),
        Op::AveragePool(spec) => Value::Float(conv::pool(spec, false, inputs)?),
        Op::GlobalAveragePool => Value::Float(conv::global_pool(false, inputs)?),
        Op::GlobalMaxPool => Value::Float(conv::global_pool(true, inputs)?),
        Op::BatchNorm { epsilon } => Value::Float(elementwise::batch_norm(*epsilon, inputs)?),
        Op::Unary(u) => Value::Float(elementwise::unary(u, inputs.float(0)?)),
        Op::Binary(b) => elementwise::binary(*b, inputs)?,
        Op::Variadic { max } => Value::Float(elementwise::variadic(*max, inputs)?),
        Op::Sum { mean } => Value::Float(elementwise::sum(*mean, inputs)?),
        Op::InstanceNorm { epsilon } => Value::Float(norm::instance_norm(*epsilon, inputs)?),
        Op::Split {
            axis,
            split,
            num_outputs,
        } => return shape::split(*axis, split.as_deref(), *num_outputs, n_outputs, inputs),
        Op::LayerNorm { axis, epsilon } => {
            return norm::layer_norm(*axis, *epsilon, n_outputs, inputs);
        }
        Op::Expand => shape::expand(inputs)?,
        Op::Resize(spec) => resize::resize(spec, inputs)?,
        Op::Compare(c) => elementwise::compare(*c, inputs)?,
        Op::Where => elementwise::select(inputs)?,
        Op::Mod { fmod } => elementwise::modulo(*fmod, inputs)?,
        Op::Logic(l) => elementwise::logic(*l, inputs)?,
        Op::Range => elementwise::range(inputs)?,
        Op::Tile => shape::tile(inputs)?,
        Op::CumSum { exclusive, reverse } => shape::cumsum(*exclusive, *reverse, inputs)?,
        Op::Clip { min, max } => Value::Float(elementwise::clip(*min, *max, inputs)?),
        Op::PRelu => Value::Float(elementwise::prelu(inputs)?),
        Op::MatMul => Value::Float(linear::matmul(inputs)?),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => Value::Float(linear::gemm(*alpha, *beta, *trans_a, *trans_b, inputs)?),
        Op::Flatten { axis } => shape::flatten(*axis, inputs)?,
        Op::Reshape { allow_zero } => shape::reshape(*allow_zero, inputs)?,
        Op::Transpose { perm } => shape::transpose(perm.as_deref(), inputs)?,
        Op::Concat { axis } => shape::concat(*axis, inputs)?,
        Op::Softmax { axis, log, legacy } => {
            Value::Float(reduce::softmax(*axis, *log, *legacy, inputs)?)
        }
        Op::Reduce {
            kind,
            axes,
            keep_dims,
            noop_empty,
        } => reduce::reduce(*kind, axes.as_deref(), *keep_dims, *noop_empty, inputs)?,
        Op::Identity => inputs.value(0)?,
        Op::Dropout => {
            if let Some(train) = inputs.opt_host(2)?
                && train.as_i64().first().copied().unwrap_or(0) != 0
            {
                return Err(ctx.unsupported("training_mode=true"));
            }
            if n_outputs > 1 {
                return Err(ctx.unsupported("the mask output"));
            }
            inputs.value(0)?
        }
        Op::Constant(t) => Value::Host(t.clone()),
        Op::ConstantOfShape(v) => shape::constant_of_shape(v, inputs)?,
        Op::Pad { mode, pads, value } => shape::pad(*mode, pads.as_deref(), *value, inputs)?,
        Op::Shape { start, end } => shape::shape(*start, *end, inputs)?,
        Op::Gather { axis } => shape::gather(*axis, inputs)?,
        Op::GatherNd { batch_dims } => shape::gather_nd(*batch_dims, inputs)?,
        Op::Unsqueeze { axes } => shape::unsqueeze(axes.as_deref(), inputs)?,
        Op::Squeeze { axes } => shape::squeeze(axes.as_deref(), inputs)?,
        Op::Slice { attrs } => shape::slice(attrs.as_ref(), inputs)?,
        Op::Cast { to } => shape::cast(*to, inputs)?,
    };
    Ok(vec![out])
}
