//! Activations, arithmetic, Clip, PRelu and BatchNormalization.

use burn::tensor::activation;

use super::Inputs;
use crate::error::Result;
use crate::map_rank;
use crate::onnx::attrs::Attrs;
use crate::onnx::host::{HostData, HostTensor, broadcast_map};
use crate::onnx::value::{FTensor, Value};

/// One-input elementwise ops.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Erf,
    Softplus,
    HardSwish,
    Reciprocal,
    Floor,
    Ceil,
    Sin,
    Cos,
    LeakyRelu(f32),
    Elu(f32),
    HardSigmoid(f32, f32),
    /// `true`: the tanh approximation.
    Gelu(bool),
}

pub(super) fn parse_unary(op: &str, a: &Attrs) -> Result<Unary> {
    Ok(match op {
        "Relu" => Unary::Relu,
        "Sigmoid" => Unary::Sigmoid,
        "Tanh" => Unary::Tanh,
        "Exp" => Unary::Exp,
        "Log" => Unary::Log,
        "Sqrt" => Unary::Sqrt,
        "Neg" => Unary::Neg,
        "Abs" => Unary::Abs,
        "Erf" => Unary::Erf,
        "Softplus" => Unary::Softplus,
        "HardSwish" => Unary::HardSwish,
        "Reciprocal" => Unary::Reciprocal,
        "Floor" => Unary::Floor,
        "Ceil" => Unary::Ceil,
        "Sin" => Unary::Sin,
        "Cos" => Unary::Cos,
        other => return Err(a.unsupported(format!("unary op '{other}'"))),
    })
}

pub(super) fn unary(u: &Unary, x: FTensor) -> FTensor {
    match *u {
        Unary::Relu => map_rank!(x, t => activation::relu(t)),
        Unary::Sigmoid => map_rank!(x, t => activation::sigmoid(t)),
        Unary::Tanh => map_rank!(x, t => t.tanh()),
        Unary::Exp => map_rank!(x, t => t.exp()),
        Unary::Log => map_rank!(x, t => t.log()),
        Unary::Sqrt => map_rank!(x, t => t.sqrt()),
        Unary::Neg => map_rank!(x, t => t.neg()),
        Unary::Abs => map_rank!(x, t => t.abs()),
        Unary::Erf => map_rank!(x, t => t.erf()),
        Unary::Softplus => map_rank!(x, t => activation::softplus(t, 1.0)),
        Unary::HardSwish => {
            // x * clip(x/6 + 1/2, 0, 1), written out so the gradient is the textbook one.
            map_rank!(x, t => t.clone() * (t / 6.0 + 0.5).clamp(0.0, 1.0))
        }
        Unary::Reciprocal => map_rank!(x, t => t.recip()),
        Unary::Floor => map_rank!(x, t => t.floor()),
        Unary::Ceil => map_rank!(x, t => t.ceil()),
        Unary::Sin => map_rank!(x, t => t.sin()),
        Unary::Cos => map_rank!(x, t => t.cos()),
        Unary::LeakyRelu(alpha) => map_rank!(x, t => activation::leaky_relu(t, f64::from(alpha))),
        Unary::Elu(alpha) => map_rank!(x, t => activation::elu(t, f64::from(alpha))),
        Unary::HardSigmoid(alpha, beta) => {
            map_rank!(x, t => (t * alpha + beta).clamp(0.0, 1.0))
        }
        Unary::Gelu(false) => map_rank!(x, t => activation::gelu(t)),
        Unary::Gelu(true) => map_rank!(x, t => activation::gelu_approximate(t)),
    }
}

/// Two-input arithmetic with numpy broadcasting.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

pub(super) fn parse_binary(op: &str) -> Binary {
    match op {
        "Add" => Binary::Add,
        "Sub" => Binary::Sub,
        "Mul" => Binary::Mul,
        "Div" => Binary::Div,
        _ => Binary::Pow,
    }
}

/// Host arithmetic for shape computations: same shapes, or one side a single value.
fn host_binary(b: Binary, x: &HostTensor, y: &HostTensor) -> Option<HostTensor> {
    let (nx, ny) = (x.data.len(), y.data.len());
    let shape = if x.shape == y.shape {
        x.shape.clone()
    } else if nx == 1 && x.shape.len() <= y.shape.len() {
        y.shape.clone()
    } else if ny == 1 && y.shape.len() <= x.shape.len() {
        x.shape.clone()
    } else {
        return None;
    };
    let n = nx.max(ny);
    let at = |len: usize, i: usize| if len == 1 { 0 } else { i };
    match (&x.data, &y.data) {
        (HostData::I64(a), HostData::I64(c)) => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let (p, q) = (a[at(nx, i)], c[at(ny, i)]);
                out.push(match b {
                    Binary::Add => p.checked_add(q)?,
                    Binary::Sub => p.checked_sub(q)?,
                    Binary::Mul => p.checked_mul(q)?,
                    Binary::Div => p.checked_div(q)?,
                    Binary::Pow => p.checked_pow(u32::try_from(q).ok()?)?,
                });
            }
            Some(HostTensor::i64(shape, out))
        }
        _ => {
            let (a, c) = (x.as_f32(), y.as_f32());
            let out = (0..n)
                .map(|i| {
                    let (p, q) = (a[at(nx, i)], c[at(ny, i)]);
                    match b {
                        Binary::Add => p + q,
                        Binary::Sub => p - q,
                        Binary::Mul => p * q,
                        Binary::Div => p / q,
                        Binary::Pow => p.powf(q),
                    }
                })
                .collect();
            Some(HostTensor::f32(shape, out))
        }
    }
}

pub(super) fn binary(b: Binary, inputs: &Inputs) -> Result<Value> {
    if inputs.all_host() {
        let (x, y) = (inputs.host(0)?, inputs.host(1)?);
        if let Some(out) = host_binary(b, &x, &y) {
            return Ok(Value::Host(out));
        }
    }
    let (x, y) = (inputs.float(0)?, inputs.float(1)?);
    let (dx, dy) = (x.dims(), y.dims());
    let out = match b {
        Binary::Add => x.add_bc(y),
        Binary::Sub => x.sub_bc(y),
        Binary::Mul => x.mul_bc(y),
        Binary::Div => x.div_bc(y),
        Binary::Pow => x.pow_bc(y),
    };
    out.map(Value::Float).ok_or_else(|| {
        inputs
            .ctx
            .err(format!("shapes {dx:?} and {dy:?} do not broadcast"))
    })
}

pub(super) fn variadic(max: bool, inputs: &Inputs) -> Result<FTensor> {
    let mut acc = inputs.float(0)?;
    for i in 1..inputs.len() {
        let next = inputs.float(i)?;
        let (da, db) = (acc.dims(), next.dims());
        acc = if max {
            acc.max_pair(next)
        } else {
            acc.min_pair(next)
        }
        .ok_or_else(|| {
            inputs
                .ctx
                .err(format!("shapes {da:?} and {db:?} do not broadcast"))
        })?;
    }
    Ok(acc)
}

/// Sum (or mean) of any number of broadcastable inputs.
pub(super) fn sum(mean: bool, inputs: &Inputs) -> Result<FTensor> {
    let mut acc = inputs.float(0)?;
    for i in 1..inputs.len() {
        let next = inputs.float(i)?;
        let (da, db) = (acc.dims(), next.dims());
        acc = acc.add_bc(next).ok_or_else(|| {
            inputs
                .ctx
                .err(format!("shapes {da:?} and {db:?} do not broadcast"))
        })?;
    }
    if mean && inputs.len() > 1 {
        let n = inputs.len() as f32;
        acc = map_rank!(acc, t => t / n);
    }
    Ok(acc)
}

pub(super) fn clip(min: Option<f32>, max: Option<f32>, inputs: &Inputs) -> Result<FTensor> {
    let scalar = |i: usize, default: f32| -> Result<f32> {
        match inputs.opt_host(i)? {
            None => Ok(default),
            Some(h) => h
                .as_f32()
                .first()
                .copied()
                .ok_or_else(|| inputs.ctx.err(format!("input {i} is empty"))),
        }
    };
    let lo = match min {
        Some(v) => v,
        None => scalar(1, f32::NEG_INFINITY)?,
    };
    let hi = match max {
        Some(v) => v,
        None => scalar(2, f32::INFINITY)?,
    };
    let x = inputs.float(0)?;
    Ok(match (lo.is_finite(), hi.is_finite()) {
        (true, true) => map_rank!(x, t => t.clamp(lo, hi)),
        (true, false) => map_rank!(x, t => t.clamp_min(lo)),
        (false, true) => map_rank!(x, t => t.clamp_max(hi)),
        (false, false) => x,
    })
}

pub(super) fn prelu(inputs: &Inputs) -> Result<FTensor> {
    let x = inputs.float(0)?;
    let slope = inputs.float(1)?;
    let dims = x.dims();
    // PyTorch exports the per-channel slope as [C, 1, 1]: it broadcasts against N x C x H x W.
    let pos = map_rank!(x.clone(), t => activation::relu(t));
    let neg = map_rank!(x, t => t.clamp_max(0.0));
    let scaled = neg.mul_bc(slope).ok_or_else(|| {
        inputs
            .ctx
            .err(format!("slope does not broadcast against {dims:?}"))
    })?;
    pos.add_bc(scaled)
        .ok_or_else(|| inputs.ctx.err("PRelu broadcast"))
}

/// Input `i`, one value per channel of an input of shape `dims` (N x C x ...), shaped to
/// broadcast against it.
pub(super) fn channel_param(inputs: &Inputs, i: usize, dims: &[usize]) -> Result<FTensor> {
    let c = dims[1];
    let p = inputs.float(i)?;
    if p.num_elements() != c {
        return Err(inputs.ctx.err(format!(
            "parameter {i} has {} values, the input has {c} channels",
            p.num_elements()
        )));
    }
    let mut shape = vec![1; dims.len()];
    shape[1] = c;
    Ok(p.reshape(&shape))
}

pub(super) fn batch_norm(epsilon: f32, inputs: &Inputs) -> Result<FTensor> {
    let x = inputs.float(0)?;
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(inputs
            .ctx
            .err(format!("input of shape {dims:?}, expected N x C x ...")));
    }
    let param = |i: usize| channel_param(inputs, i, &dims);
    let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let inv_std = map_rank!(var, t => (t + epsilon).sqrt().recip());
    let err = || inputs.ctx.err("BatchNormalization broadcast");
    let a = scale.mul_bc(inv_std).ok_or_else(err)?;
    let b = bias
        .sub_bc(mean.mul_bc(a.clone()).ok_or_else(err)?)
        .ok_or_else(err)?;
    x.mul_bc(a).ok_or_else(err)?.add_bc(b).ok_or_else(err)
}

/// A comparison of the shape arithmetic (Equal, Less, Greater, LessOrEqual, GreaterOrEqual).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compare {
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
}

pub(super) fn parse_compare(op: &str) -> Option<Compare> {
    Some(match op {
        "Equal" => Compare::Equal,
        "Less" => Compare::Less,
        "Greater" => Compare::Greater,
        "LessOrEqual" => Compare::LessOrEqual,
        "GreaterOrEqual" => Compare::GreaterOrEqual,
        _ => return None,
    })
}

/// Numpy broadcasting of host shapes: the output shape and, per input, the flat index that
/// each output element reads.
fn host_broadcast(shapes: &[&[usize]]) -> Option<(Vec<usize>, Vec<Vec<usize>>)> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let padded: Vec<Vec<usize>> = shapes
        .iter()
        .map(|s| {
            let mut p = vec![1; rank - s.len()];
            p.extend_from_slice(s);
            p
        })
        .collect();
    let mut out = vec![1; rank];
    for d in 0..rank {
        for p in &padded {
            if p[d] != 1 {
                if out[d] != 1 && out[d] != p[d] {
                    return None;
                }
                out[d] = p[d];
            }
        }
    }
    let maps = padded.iter().map(|p| broadcast_map(p, &out)).collect();
    Some((out, maps))
}

/// The inputs as host tensors: these ops run on shape arithmetic only (what exporters emit for
/// `expand(n, -1, -1)` and the like), never on values computed from the image.
fn host_inputs(inputs: &Inputs) -> Result<Vec<HostTensor>> {
    if !inputs.all_host() {
        return Err(inputs
            .ctx
            .unsupported("on values computed from the image (only on shapes and constants)"));
    }
    (0..inputs.len()).map(|i| inputs.host(i)).collect()
}

/// The two inputs of a binary op of shape arithmetic, their broadcast shape and index maps.
type HostPair = (Vec<HostTensor>, Vec<usize>, Vec<Vec<usize>>);

fn host_pair(inputs: &Inputs) -> Result<HostPair> {
    let t = host_inputs(inputs)?;
    let (shape, maps) = host_broadcast(&[&t[0].shape, &t[1].shape]).ok_or_else(|| {
        inputs.ctx.err(format!(
            "shapes {:?} and {:?} do not broadcast",
            t[0].shape, t[1].shape
        ))
    })?;
    Ok((t, shape, maps))
}

/// A comparison, broadcast; the result is 0 or 1 (ONNX's bool), held as an integer.
pub(super) fn compare(c: Compare, inputs: &Inputs) -> Result<Value> {
    let (t, shape, maps) = host_pair(inputs)?;
    let (x, y) = (&t[0], &t[1]);
    let test = |o: std::cmp::Ordering| match c {
        Compare::Equal => o.is_eq(),
        Compare::Less => o.is_lt(),
        Compare::Greater => o.is_gt(),
        Compare::LessOrEqual => o.is_le(),
        Compare::GreaterOrEqual => o.is_ge(),
    };
    let out: Vec<i64> = match (&x.data, &y.data) {
        (HostData::I64(a), HostData::I64(b)) => maps[0]
            .iter()
            .zip(&maps[1])
            .map(|(&i, &j)| i64::from(test(a[i].cmp(&b[j]))))
            .collect(),
        _ => {
            let (a, b) = (x.as_f32(), y.as_f32());
            maps[0]
                .iter()
                .zip(&maps[1])
                .map(|(&i, &j)| i64::from(a[i].partial_cmp(&b[j]).is_some_and(test)))
                .collect()
        }
    };
    Ok(Value::Host(HostTensor::i64(shape, out)))
}

/// Where(cond, x, y), broadcast: `x` where `cond` is non-zero, else `y`. The condition must be
/// known without the image (a constant mask, as the dynamo exporter writes for an adaptive
/// pooling); `x` and `y` may come from it.
pub(super) fn select(inputs: &Inputs) -> Result<Value> {
    if !inputs.all_host() {
        return select_float(inputs);
    }
    let t = host_inputs(inputs)?;
    let (cond, x, y) = (&t[0], &t[1], &t[2]);
    let (shape, maps) = host_broadcast(&[&cond.shape, &x.shape, &y.shape]).ok_or_else(|| {
        inputs.ctx.err(format!(
            "shapes {:?}, {:?} and {:?} do not broadcast",
            cond.shape, x.shape, y.shape
        ))
    })?;
    let take = cond.as_f32();
    fn choose<T: Copy>(take: &[f32], maps: &[Vec<usize>], a: &[T], b: &[T]) -> Vec<T> {
        (0..maps[0].len())
            .map(|k| {
                if take[maps[0][k]] != 0.0 {
                    a[maps[1][k]]
                } else {
                    b[maps[2][k]]
                }
            })
            .collect()
    }
    Ok(Value::Host(match (&x.data, &y.data) {
        (HostData::I64(a), HostData::I64(b)) => HostTensor::i64(shape, choose(&take, &maps, a, b)),
        _ => HostTensor::f32(shape, choose(&take, &maps, &x.as_f32(), &y.as_f32())),
    }))
}

/// Mod of shape arithmetic, broadcast: the sign of the divisor (`fmod = 0`, integers), or of
/// the dividend (`fmod = 1`, C's fmod).
pub(super) fn modulo(fmod: bool, inputs: &Inputs) -> Result<Value> {
    let (t, shape, maps) = host_pair(inputs)?;
    let (x, y) = (&t[0], &t[1]);
    let pairs = maps[0].iter().zip(&maps[1]);
    Ok(Value::Host(match (&x.data, &y.data) {
        (HostData::I64(a), HostData::I64(b)) => {
            let mut out = Vec::with_capacity(maps[0].len());
            for (&i, &j) in pairs {
                if b[j] == 0 {
                    return Err(inputs.ctx.err("integer Mod by zero"));
                }
                let r = a[i] % b[j];
                out.push(if !fmod && r != 0 && (r < 0) != (b[j] < 0) {
                    r + b[j]
                } else {
                    r
                });
            }
            HostTensor::i64(shape, out)
        }
        _ => {
            let (a, b) = (x.as_f32(), y.as_f32());
            HostTensor::f32(
                shape,
                pairs
                    .map(|(&i, &j)| {
                        let r = a[i] % b[j];
                        if !fmod && r != 0.0 && (r < 0.0) != (b[j] < 0.0) {
                            r + b[j]
                        } else {
                            r
                        }
                    })
                    .collect(),
            )
        }
    }))
}

/// [`select`] with `x` or `y` computed from the image: a constant condition picks between them,
/// so the gradient flows to whichever is picked.
fn select_float(inputs: &Inputs) -> Result<Value> {
    let cond = inputs.host(0).map_err(|_| {
        inputs
            .ctx
            .unsupported("a condition computed from the image (only a constant one)")
    })?;
    let (x, y) = (inputs.float(1)?, inputs.float(2)?);
    let (dx, dy) = (x.dims(), y.dims());
    let (shape, maps) = host_broadcast(&[&cond.shape, &dx, &dy]).ok_or_else(|| {
        inputs.ctx.err(format!(
            "shapes {:?}, {dx:?} and {dy:?} do not broadcast",
            cond.shape
        ))
    })?;
    if shape.len() > crate::onnx::value::MAX_RANK {
        return Err(inputs.ctx.unsupported(format!("rank {}", shape.len())));
    }
    let c = cond.as_f32();
    let bits: Vec<bool> = maps[0].iter().map(|&i| c[i] != 0.0).collect();
    let rank = shape.len().max(1);
    let dims = if shape.is_empty() { vec![1] } else { shape };
    let x = crate::onnx::value::expand_to(x.unsqueeze_front(rank), &dims);
    let y = crate::onnx::value::expand_to(y.unsqueeze_front(rank), &dims);
    let n = bits.len();
    let mask = burn::tensor::Tensor::<1, burn::tensor::Bool>::from_data(
        burn::tensor::TensorData::new(bits, [n]),
        inputs.ctx.device,
    );
    macro_rules! pick {
        ($v:ident, $r:literal) => {{
            let (FTensor::$v(a), FTensor::$v(b)) = (x, y) else {
                unreachable!("both expanded to rank {}", $r)
            };
            let m = mask.reshape::<$r, _>(a.dims());
            FTensor::$v(b.mask_where(m, a))
        }};
    }
    Ok(Value::Float(match rank {
        1 => pick!(R1, 1),
        2 => pick!(R2, 2),
        3 => pick!(R3, 3),
        4 => pick!(R4, 4),
        5 => pick!(R5, 5),
        _ => pick!(R6, 6),
    }))
}

/// Not, And, Or, Xor of shape arithmetic (ONNX's bools held as 0 and 1).
pub(super) fn logic(op: Logic, inputs: &Inputs) -> Result<Value> {
    let truth = |h: &HostTensor| -> Vec<bool> { h.as_f32().iter().map(|&v| v != 0.0).collect() };
    if op == Logic::Not {
        let t = host_inputs(inputs)?;
        let out = truth(&t[0]).iter().map(|&b| i64::from(!b)).collect();
        return Ok(Value::Host(HostTensor::i64(t[0].shape.clone(), out)));
    }
    let (t, shape, maps) = host_pair(inputs)?;
    let (a, b) = (truth(&t[0]), truth(&t[1]));
    let out = maps[0]
        .iter()
        .zip(&maps[1])
        .map(|(&i, &j)| {
            i64::from(match op {
                Logic::And => a[i] && b[j],
                Logic::Or => a[i] || b[j],
                _ => a[i] != b[j],
            })
        })
        .collect();
    Ok(Value::Host(HostTensor::i64(shape, out)))
}

/// Which logical op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logic {
    Not,
    And,
    Or,
    Xor,
}

/// Range(start, limit, delta) of shape arithmetic: integers when all three are, else floats.
pub(super) fn range(inputs: &Inputs) -> Result<Value> {
    let t = host_inputs(inputs)?;
    let scalar = |h: &HostTensor| h.as_f32().first().copied().unwrap_or(0.0) as f64;
    let (start, limit, delta) = (scalar(&t[0]), scalar(&t[1]), scalar(&t[2]));
    if delta == 0.0 || !delta.is_finite() {
        return Err(inputs.ctx.err(format!("delta {delta}")));
    }
    let n = ((limit - start) / delta).ceil().max(0.0) as usize;
    if n > 1 << 24 {
        return Err(inputs.ctx.err(format!("{n} elements")));
    }
    let ints = t.iter().all(|h| matches!(h.data, HostData::I64(_)));
    Ok(Value::Host(if ints {
        let (s, d) = (t[0].as_i64()[0], t[2].as_i64()[0]);
        HostTensor::i64(vec![n], (0..n as i64).map(|k| s + k * d).collect())
    } else {
        HostTensor::f32(
            vec![n],
            (0..n).map(|k| (start + k as f64 * delta) as f32).collect(),
        )
    }))
}
