//! Shape and layout ops: Flatten, Reshape, Transpose, Concat, Shape, Gather, (Un)Squeeze, Slice,
//! Cast, Constant, ConstantOfShape, Pad, Split, Expand, GatherND, Tile and CumSum. Each works on host values (shape arithmetic and
//! constants) and on device tensors.

use burn::prelude::{Int, Tensor};
use burn::tensor::TensorData;
use burn::tensor::ops::PadMode as BurnPad;

use super::{Inputs, Op, norm_axis};
use crate::error::Result;
use crate::onnx::attrs::Attrs;
use crate::onnx::host::{HostData, HostTensor, broadcast_map, index_map, strides};
use crate::onnx::proto::dtype;
use crate::onnx::value::{FTensor, MAX_RANK, Value};

/// Reshape a value (host or device) to `dims`.
fn reshape_value(v: Value, dims: Vec<usize>, inputs: &Inputs) -> Result<Value> {
    if dims.len() > MAX_RANK {
        return Err(inputs
            .ctx
            .unsupported(format!("rank {} (at most {MAX_RANK})", dims.len())));
    }
    Ok(match v {
        Value::Host(h) => Value::Host(HostTensor {
            shape: dims,
            data: h.data,
        }),
        Value::Float(t) => Value::Float(t.reshape(&dims)),
    })
}

pub(super) fn flatten(axis: i64, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let r = dims.len() as i64;
    let axis = if axis < 0 { axis + r } else { axis };
    if axis < 0 || axis > r {
        return Err(inputs
            .ctx
            .err(format!("axis {axis} out of range for shape {dims:?}")));
    }
    let a = axis as usize;
    let outer = dims[..a].iter().product();
    let inner = dims[a..].iter().product();
    reshape_value(v, vec![outer, inner], inputs)
}

pub(super) fn reshape(allow_zero: bool, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let spec = inputs.host(1)?.as_i64();
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            0 if !allow_zero => out.push(*dims.get(i).ok_or_else(|| {
                inputs
                    .ctx
                    .err(format!("shape {spec:?} copies dimension {i} of {dims:?}"))
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            s if s >= 0 => out.push(s as usize),
            _ => return Err(inputs.ctx.err(format!("invalid target shape {spec:?}"))),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(inputs
                .ctx
                .err(format!("cannot reshape {dims:?} to {spec:?}")));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(inputs.ctx.err(format!(
            "cannot reshape {dims:?} ({total} values) to {spec:?} (wrong image size for this model?)"
        )));
    }
    reshape_value(v, out, inputs)
}

fn permute_float(t: FTensor, p: &[usize]) -> FTensor {
    match t {
        FTensor::R1(x) => FTensor::R1(x),
        FTensor::R2(x) => FTensor::R2(x.permute([p[0], p[1]])),
        FTensor::R3(x) => FTensor::R3(x.permute([p[0], p[1], p[2]])),
        FTensor::R4(x) => FTensor::R4(x.permute([p[0], p[1], p[2], p[3]])),
        FTensor::R5(x) => FTensor::R5(x.permute([p[0], p[1], p[2], p[3], p[4]])),
        FTensor::R6(x) => FTensor::R6(x.permute([p[0], p[1], p[2], p[3], p[4], p[5]])),
    }
}

fn permute_host(h: &HostTensor, p: &[usize]) -> HostTensor {
    let src_strides = h.strides();
    let shape: Vec<usize> = p.iter().map(|&i| h.shape[i]).collect();
    let n: usize = shape.iter().product();
    let dst_strides = strides(&shape);
    let order: Vec<usize> = (0..n)
        .map(|flat| {
            let mut rem = flat;
            let mut src = 0;
            for (d, &s) in dst_strides.iter().enumerate() {
                let idx = rem / s;
                rem %= s;
                src += idx * src_strides[p[d]];
            }
            src
        })
        .collect();
    h.take(shape, &order)
}

pub(super) fn transpose(perm: Option<&[i64]>, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let rank = v.dims().len();
    let perm: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => p
            .iter()
            .map(|&a| norm_axis(a, rank, inputs.ctx))
            .collect::<Result<_>>()?,
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(inputs
            .ctx
            .err(format!("perm {perm:?} is not a permutation of rank {rank}")));
    }
    Ok(match v {
        Value::Host(h) => Value::Host(permute_host(&h, &perm)),
        Value::Float(t) => Value::Float(permute_float(t, &perm)),
    })
}

pub(super) fn concat(axis: i64, inputs: &Inputs) -> Result<Value> {
    let first = inputs.value(0)?;
    let rank = first.dims().len();
    let axis = norm_axis(axis, rank, inputs.ctx)?;
    if inputs.all_host() {
        let parts = (0..inputs.len())
            .map(|i| inputs.host(i))
            .collect::<Result<Vec<_>>>()?;
        return HostTensor::concat(&parts, axis)
            .map(Value::Host)
            .ok_or_else(|| inputs.ctx.err("inputs have mismatched shapes"));
    }
    let parts = (0..inputs.len())
        .map(|i| inputs.float(i))
        .collect::<Result<Vec<_>>>()?;
    let shapes: Vec<Vec<usize>> = parts.iter().map(FTensor::dims).collect();
    let ok = shapes
        .iter()
        .all(|s| s.len() == rank && (0..rank).all(|d| d == axis || s[d] == shapes[0][d]));
    if !ok {
        return Err(inputs.ctx.err(format!(
            "cannot concatenate shapes {shapes:?} on axis {axis}"
        )));
    }
    macro_rules! cat {
        ($variant:ident) => {{
            let v: Vec<_> = parts
                .into_iter()
                .map(|p| match p {
                    FTensor::$variant(x) => x,
                    _ => unreachable!("ranks checked"),
                })
                .collect();
            FTensor::$variant(Tensor::cat(v, axis))
        }};
    }
    Ok(Value::Float(match rank {
        1 => cat!(R1),
        2 => cat!(R2),
        3 => cat!(R3),
        4 => cat!(R4),
        5 => cat!(R5),
        _ => cat!(R6),
    }))
}

pub(super) fn shape(start: i64, end: Option<i64>, inputs: &Inputs) -> Result<Value> {
    let dims = inputs.value(0)?.dims();
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    let vals: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Ok(Value::Host(HostTensor::i64(vec![vals.len()], vals)))
}

pub(super) fn gather(axis: i64, inputs: &Inputs) -> Result<Value> {
    let data = inputs.value(0)?;
    let idx = inputs.host(1)?;
    let dims = data.dims();
    let axis = norm_axis(axis, dims.len(), inputs.ctx)?;
    let n = dims[axis] as i64;
    let indices: Vec<usize> = idx
        .as_i64()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                Err(inputs
                    .ctx
                    .err(format!("index {i} out of range for axis of size {n}")))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_>>()?;
    match data {
        Value::Host(h) => Ok(Value::Host(h.gather(axis, &indices, &idx.shape))),
        Value::Float(t) => {
            // Any shape of indices: select the flattened list, then put the index shape in
            // place of the axis.
            let rank = dims.len() - 1 + idx.shape.len();
            if rank > MAX_RANK {
                return Err(inputs
                    .ctx
                    .unsupported(format!("an output of rank {rank} (at most {MAX_RANK})")));
            }
            let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<1, Int>::from_data(
                TensorData::new(ids, [indices.len()]),
                inputs.ctx.device,
            );
            let picked = crate::map_rank!(t, x => x.select(axis, ids.clone()));
            let mut shape = dims[..axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&dims[axis + 1..]);
            if shape.is_empty() {
                shape.push(1);
            }
            Ok(Value::Float(picked.reshape(&shape)))
        }
    }
}

/// Axes from the attribute (old opsets) or the second input (opset 13+).
fn axes_of(attr: Option<&[i64]>, inputs: &Inputs) -> Result<Option<Vec<i64>>> {
    Ok(match attr {
        Some(a) => Some(a.to_vec()),
        None => inputs.opt_host(1)?.map(|h| h.as_i64()),
    })
}

pub(super) fn unsqueeze(attr: Option<&[i64]>, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let axes = axes_of(attr, inputs)?.ok_or_else(|| inputs.ctx.err("no axes given"))?;
    let out_rank = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, out_rank, inputs.ctx))
        .collect::<Result<_>>()?;
    axes.sort_unstable();
    let mut out = dims.clone();
    for a in axes {
        out.insert(a.min(out.len()), 1);
    }
    reshape_value(v, out, inputs)
}

pub(super) fn squeeze(attr: Option<&[i64]>, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let axes: Vec<usize> = match axes_of(attr, inputs)? {
        None => (0..dims.len()).filter(|&d| dims[d] == 1).collect(),
        Some(a) => a
            .iter()
            .map(|&x| norm_axis(x, dims.len(), inputs.ctx))
            .collect::<Result<_>>()?,
    };
    if let Some(&bad) = axes.iter().find(|&&a| dims[a] != 1) {
        return Err(inputs
            .ctx
            .err(format!("cannot squeeze axis {bad} of shape {dims:?}")));
    }
    let out: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    match (&v, out.is_empty()) {
        (Value::Host(h), true) => Ok(Value::Host(HostTensor {
            shape: vec![],
            data: h.data.clone(),
        })),
        (_, true) => reshape_value(v, vec![1], inputs),
        _ => reshape_value(v, out, inputs),
    }
}

/// Slice parameters given as attributes (opset < 10).
#[derive(Clone, Debug)]
pub(crate) struct SliceAttrs {
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
}

pub(super) fn parse_slice(a: &Attrs) -> Result<Option<SliceAttrs>> {
    if a.opset >= 10 {
        return Ok(None);
    }
    Ok(Some(SliceAttrs {
        starts: a
            .ints("starts")?
            .ok_or_else(|| a.err("starts is required"))?,
        ends: a.ints("ends")?.ok_or_else(|| a.err("ends is required"))?,
        axes: a.ints("axes")?,
    }))
}

pub(super) fn slice(attrs: Option<&SliceAttrs>, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let (starts, ends, axes, steps) = match attrs {
        Some(s) => (s.starts.clone(), s.ends.clone(), s.axes.clone(), None),
        None => (
            inputs.host(1)?.as_i64(),
            inputs.host(2)?.as_i64(),
            inputs.opt_host(3)?.map(|h| h.as_i64()),
            inputs.opt_host(4)?.map(|h| h.as_i64()),
        ),
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(inputs
            .ctx
            .err("starts, ends, axes and steps differ in length"));
    }
    // Per axis: (start, step, count).
    let mut ranges: Vec<(usize, i64, usize)> = dims.iter().map(|&d| (0, 1, d)).collect();
    for i in 0..starts.len() {
        let axis = norm_axis(axes[i], dims.len(), inputs.ctx)?;
        let n = dims[axis] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(inputs.ctx.err("step 0"));
        }
        let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + n } else { v }).clamp(lo, hi);
        let (s, e) = if step > 0 {
            (fix(starts[i], 0, n), fix(ends[i], 0, n))
        } else {
            (fix(starts[i], 0, n - 1), fix(ends[i], -1, n - 1))
        };
        let count = if step > 0 {
            if e > s { (e - s + step - 1) / step } else { 0 }
        } else if s > e {
            (s - e + (-step) - 1) / (-step)
        } else {
            0
        };
        ranges[axis] = (s.max(0) as usize, step, count as usize);
    }
    let out_shape: Vec<usize> = ranges.iter().map(|r| r.2).collect();
    match v {
        Value::Host(h) => {
            let src = h.strides();
            let dst = strides(&out_shape);
            let n: usize = out_shape.iter().product();
            let order: Vec<usize> = (0..n)
                .map(|flat| {
                    let mut rem = flat;
                    let mut at = 0i64;
                    for d in 0..out_shape.len() {
                        let k = (rem / dst[d]) as i64;
                        rem %= dst[d];
                        at += (ranges[d].0 as i64 + k * ranges[d].1) * src[d] as i64;
                    }
                    at as usize
                })
                .collect();
            Ok(Value::Host(h.take(out_shape, &order)))
        }
        Value::Float(mut t) => {
            if out_shape.contains(&0) {
                return Err(inputs.ctx.unsupported("an empty slice of a float tensor"));
            }
            for (d, &(s, step, count)) in ranges.iter().enumerate() {
                if count == dims[d] && step == 1 {
                    continue;
                }
                if step == 1 {
                    t = crate::map_rank!(t, x => x.narrow(d, s, count));
                    continue;
                }
                // Strided (Swin's patch merging, `x[..., 0::2, :]`) or reversed: pick the
                // entries by index.
                let ids: Vec<i64> = (0..count as i64).map(|k| s as i64 + k * step).collect();
                let ids =
                    Tensor::<1, Int>::from_data(TensorData::new(ids, [count]), inputs.ctx.device);
                t = crate::map_rank!(t, x => x.select(d, ids.clone()));
            }
            Ok(Value::Float(t))
        }
    }
}

pub(super) fn cast(to: i32, inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    match (v, to) {
        (Value::Float(t), dtype::FLOAT) => Ok(Value::Float(t)),
        (Value::Float(_), other) => Err(inputs.ctx.unsupported(format!(
            "cast of an image-dependent tensor to {}",
            dtype::name(other)
        ))),
        (Value::Host(h), dtype::FLOAT | dtype::DOUBLE) => {
            Ok(Value::Host(HostTensor::f32(h.shape.clone(), h.as_f32())))
        }
        (Value::Host(h), dtype::INT64 | dtype::INT32 | dtype::INT8 | dtype::UINT8) => {
            Ok(Value::Host(HostTensor::i64(h.shape.clone(), h.as_i64())))
        }
        (Value::Host(h), dtype::BOOL) => Ok(Value::Host(HostTensor::i64(
            h.shape.clone(),
            h.as_f32().iter().map(|&x| i64::from(x != 0.0)).collect(),
        ))),
        (_, other) => Err(inputs
            .ctx
            .unsupported(format!("cast to {}", dtype::name(other)))),
    }
}

pub(super) fn parse_constant(a: &Attrs) -> Result<HostTensor> {
    if let Some(t) = a.tensor("value")? {
        return Ok(t);
    }
    if a.has("value_float") {
        return Ok(HostTensor::f32(vec![], vec![a.float("value_float", 0.0)?]));
    }
    if let Some(v) = a.floats("value_floats")? {
        return Ok(HostTensor::f32(vec![v.len()], v));
    }
    if a.has("value_int") {
        return Ok(HostTensor::i64(vec![], vec![a.int("value_int", 0)?]));
    }
    if let Some(v) = a.ints("value_ints")? {
        return Ok(HostTensor::i64(vec![v.len()], v));
    }
    Err(a.unsupported("a Constant without a tensor, float or int value"))
}

pub(super) fn constant_of_shape(value: &HostTensor, inputs: &Inputs) -> Result<Value> {
    let shape: Vec<usize> = inputs
        .host(0)?
        .as_i64()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let n: usize = shape.iter().product();
    let data = match &value.data {
        HostData::F32(v) => HostData::F32(vec![v.first().copied().unwrap_or(0.0); n]),
        HostData::I64(v) => HostData::I64(vec![v.first().copied().unwrap_or(0); n]),
    };
    Ok(Value::Host(HostTensor { shape, data }))
}

/// Pad modes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PadMode {
    Constant,
    Reflect,
    Edge,
}

pub(super) fn parse_pad(a: &Attrs) -> Result<Op> {
    let mode = match a.string("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(a.unsupported(format!("mode '{other}'"))),
    };
    let (pads, value) = if a.opset < 11 {
        (a.ints("pads")?, a.float("value", 0.0)?)
    } else {
        (None, 0.0)
    };
    Ok(Op::Pad { mode, pads, value })
}

pub(super) fn pad(
    mode: PadMode,
    attr_pads: Option<&[i64]>,
    value: f32,
    inputs: &Inputs,
) -> Result<Value> {
    let x = inputs.float(0)?;
    let dims = x.dims();
    let rank = dims.len();
    let pads = match attr_pads {
        Some(p) => p.to_vec(),
        None => inputs.host(1)?.as_i64(),
    };
    let value = match inputs.opt_host(2)? {
        Some(v) if attr_pads.is_none() => v.as_f32().first().copied().unwrap_or(0.0),
        _ => value,
    };
    let axes: Vec<usize> = match inputs.opt_host(3)? {
        Some(a) if attr_pads.is_none() => a
            .as_i64()
            .iter()
            .map(|&v| norm_axis(v, rank, inputs.ctx))
            .collect::<Result<_>>()?,
        _ => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(inputs
            .ctx
            .err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    if pads.iter().any(|&p| p < 0) {
        return Err(inputs.ctx.unsupported(format!("negative pads {pads:?}")));
    }
    let mut pairs = vec![(0usize, 0usize); rank];
    for (i, &axis) in axes.iter().enumerate() {
        pairs[axis] = (pads[i] as usize, pads[i + axes.len()] as usize);
    }
    if matches!(mode, PadMode::Reflect)
        && pairs.iter().zip(&dims).any(|(p, &d)| p.0 >= d || p.1 >= d)
    {
        return Err(inputs
            .ctx
            .err(format!("reflect pads {pads:?} too large for {dims:?}")));
    }
    let mode = match mode {
        PadMode::Constant => BurnPad::Constant(value),
        PadMode::Reflect => BurnPad::Reflect,
        PadMode::Edge => BurnPad::Edge,
    };
    Ok(Value::Float(
        crate::map_rank!(x, t => t.pad(pairs.clone(), mode)),
    ))
}

/// `len` entries from `start` along `axis`, of a host or device value.
fn narrow_value(v: &Value, axis: usize, start: usize, len: usize) -> Value {
    match v {
        Value::Float(t) => {
            Value::Float(crate::map_rank!(t.clone(), x => x.narrow(axis, start, len)))
        }
        Value::Host(h) => {
            let src = h.strides();
            let mut shape = h.shape.clone();
            shape[axis] = len;
            let order = index_map(&shape, |d, k| {
                (k + if d == axis { start } else { 0 }) * src[d]
            });
            Value::Host(h.take(shape, &order))
        }
    }
}

/// Split: the part sizes from the second input, the `split` attribute (before opset 13), or
/// equal parts, one per output (`num_outputs` at opset 18, where the last part may be smaller).
pub(super) fn split(
    axis: i64,
    split_attr: Option<&[i64]>,
    num_outputs: Option<usize>,
    n_outputs: usize,
    inputs: &Inputs,
) -> Result<Vec<Value>> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let axis = norm_axis(axis, dims.len(), inputs.ctx)?;
    let n = dims[axis];
    let given = match inputs.opt_host(1)? {
        Some(h) => Some(h.as_i64()),
        None => split_attr.map(<[i64]>::to_vec),
    };
    let sizes: Vec<usize> = match given {
        Some(s) => {
            if s.iter().any(|&x| x < 0) || s.iter().sum::<i64>() != n as i64 {
                return Err(inputs.ctx.err(format!(
                    "split sizes {s:?} do not add up to dimension {axis} of {dims:?}"
                )));
            }
            s.iter().map(|&x| x as usize).collect()
        }
        None => {
            let parts = num_outputs.unwrap_or(n_outputs);
            if parts == 0 {
                return Err(inputs.ctx.err("no outputs to split into"));
            }
            let each = if num_outputs.is_some() {
                n.div_ceil(parts)
            } else if n.is_multiple_of(parts) {
                n / parts
            } else {
                return Err(inputs.ctx.err(format!(
                    "dimension {axis} of {dims:?} does not split into {parts} equal parts"
                )));
            };
            (0..parts)
                .map(|i| each.min(n.saturating_sub(i * each)))
                .collect()
        }
    };
    if sizes.len() != n_outputs {
        return Err(inputs
            .ctx
            .err(format!("{} parts for {n_outputs} outputs", sizes.len())));
    }
    if sizes.contains(&0) && matches!(v, Value::Float(_)) {
        return Err(inputs.ctx.unsupported("an empty part of a float tensor"));
    }
    let mut start = 0;
    Ok(sizes
        .iter()
        .map(|&len| {
            let part = narrow_value(&v, axis, start, len);
            start += len;
            part
        })
        .collect())
}

/// Expand: broadcast the input to the shape of the second input, numpy style (a 1 in the shape
/// keeps the input's dimension; the ranks are aligned on the right).
pub(super) fn expand(inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let spec = inputs.host(1)?.as_i64();
    let rank = dims.len().max(spec.len());
    if rank > MAX_RANK {
        return Err(inputs
            .ctx
            .unsupported(format!("rank {rank} (at most {MAX_RANK})")));
    }
    let pad = |d: Vec<usize>| {
        let mut p = vec![1; rank - d.len()];
        p.extend(d);
        p
    };
    let from = pad(dims.clone());
    let to_spec = pad(spec
        .iter()
        .map(|&s| usize::try_from(s).unwrap_or(usize::MAX))
        .collect());
    let mut target = Vec::with_capacity(rank);
    for (&a, &b) in from.iter().zip(&to_spec) {
        target.push(match (a, b) {
            (a, b) if a == b || b == 1 => a,
            (1, b) if b != usize::MAX => b,
            _ => {
                return Err(inputs
                    .ctx
                    .err(format!("cannot expand shape {dims:?} to {spec:?}")));
            }
        });
    }
    Ok(match v {
        Value::Float(t) => Value::Float(crate::onnx::value::expand_to(
            t.unsqueeze_front(rank),
            &target,
        )),
        Value::Host(h) => {
            let order = broadcast_map(&from, &target);
            Value::Host(h.take(target, &order))
        }
    })
}

/// GatherND with `batch_dims = 0` (what the dynamo exporter writes for an adaptive pooling whose
/// output size does not divide its input, e.g. torchvision's VGG on 32x32 or 64x64 images): each
/// index tuple of the last axis picks a slice of the data.
pub(super) fn gather_nd(batch_dims: i64, inputs: &Inputs) -> Result<Value> {
    if batch_dims != 0 {
        return Err(inputs.ctx.unsupported(format!("batch_dims={batch_dims}")));
    }
    let data = inputs.value(0)?;
    let idx = inputs.host(1)?;
    let dims = data.dims();
    let k = idx.shape.last().copied().unwrap_or(0);
    if k == 0 || k > dims.len() {
        return Err(inputs.ctx.err(format!(
            "index tuples of length {k} for data of shape {dims:?}"
        )));
    }
    let (lead, rest) = dims.split_at(k);
    let lead_strides = strides(lead);
    let flat: Vec<usize> = idx
        .as_i64()
        .chunks(k)
        .map(|tuple| {
            tuple
                .iter()
                .zip(lead)
                .zip(&lead_strides)
                .try_fold(0, |acc, ((&i, &n), &s)| {
                    let j = if i < 0 { i + n as i64 } else { i };
                    if j < 0 || j >= n as i64 {
                        Err(inputs
                            .ctx
                            .err(format!("index {i} out of range for an axis of size {n}")))
                    } else {
                        Ok(acc + j as usize * s)
                    }
                })
        })
        .collect::<Result<_>>()?;
    let mut out_shape = idx.shape[..idx.shape.len() - 1].to_vec();
    out_shape.extend_from_slice(rest);
    if out_shape.len() > MAX_RANK {
        return Err(inputs.ctx.unsupported(format!(
            "an output of rank {} (at most {MAX_RANK})",
            out_shape.len()
        )));
    }
    let mut rows = vec![lead.iter().product::<usize>()];
    rows.extend_from_slice(rest);
    let picked = match data {
        Value::Host(h) => {
            let h = HostTensor {
                shape: rows,
                data: h.data,
            };
            Value::Host(h.gather(0, &flat, &[flat.len()]))
        }
        Value::Float(t) => {
            let ids: Vec<i64> = flat.iter().map(|&i| i as i64).collect();
            let ids =
                Tensor::<1, Int>::from_data(TensorData::new(ids, [flat.len()]), inputs.ctx.device);
            Value::Float(crate::map_rank!(t.reshape(&rows), x => x.select(0, ids.clone())))
        }
    };
    let out_shape = if out_shape.is_empty() {
        vec![1]
    } else {
        out_shape
    };
    reshape_value(picked, out_shape, inputs)
}

/// Tile: repeat the input `repeats[d]` times along each axis.
pub(super) fn tile(inputs: &Inputs) -> Result<Value> {
    let v = inputs.value(0)?;
    let dims = v.dims();
    let reps: Vec<usize> = inputs
        .host(1)?
        .as_i64()
        .iter()
        .map(|&r| usize::try_from(r).ok().filter(|&r| r > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| inputs.ctx.err("repeats must be positive"))?;
    if reps.len() != dims.len() {
        return Err(inputs.ctx.err(format!(
            "{} repeats for an input of rank {}",
            reps.len(),
            dims.len()
        )));
    }
    Ok(match v {
        Value::Float(t) => Value::Float(crate::map_rank!(t, x => x.repeat(&reps))),
        Value::Host(h) => {
            let out: Vec<usize> = dims.iter().zip(&reps).map(|(d, r)| d * r).collect();
            let src = h.strides();
            let order = index_map(&out, |d, k| (k % dims[d]) * src[d]);
            Value::Host(h.take(out, &order))
        }
    })
}

/// CumSum of shape arithmetic (a positional encoding's running count of a mask): along the
/// axis given as the second input, inclusive unless `exclusive`, backwards if `reverse`.
pub(super) fn cumsum(exclusive: bool, reverse: bool, inputs: &Inputs) -> Result<Value> {
    if !inputs.all_host() {
        return Err(inputs
            .ctx
            .unsupported("on values computed from the image (only on shapes and constants)"));
    }
    let h = inputs.host(0)?;
    let axis = inputs.host(1)?.as_i64().first().copied().unwrap_or(0);
    let axis = norm_axis(axis, h.shape.len(), inputs.ctx)?;
    let n = h.shape[axis];
    let stride = h.strides()[axis];
    let total = h.data.len();
    // Every line along the axis: its start and then n entries `stride` apart.
    let starts: Vec<usize> = (0..total).filter(|i| (i / stride) % n == 0).collect();
    let run = |vals: &mut [f64]| {
        for &s0 in &starts {
            let mut acc = 0.0;
            let order: Vec<usize> = if reverse {
                (0..n).rev().collect()
            } else {
                (0..n).collect()
            };
            for k in order {
                let i = s0 + k * stride;
                let v = vals[i];
                vals[i] = if exclusive { acc } else { acc + v };
                acc += v;
            }
        }
    };
    Ok(Value::Host(match &h.data {
        HostData::I64(v) => {
            let mut f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            run(&mut f);
            HostTensor::i64(h.shape.clone(), f.iter().map(|&x| x as i64).collect())
        }
        HostData::F32(v) => {
            let mut f: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            run(&mut f);
            HostTensor::f32(h.shape.clone(), f.iter().map(|&x| x as f32).collect())
        }
    }))
}
