//! Softmax, LogSoftmax and the Reduce* ops (Mean, Sum, Max, Min, L2, SumSquare).

use burn::tensor::activation;

use super::{Inputs, Op, norm_axis};
use crate::error::Result;
use crate::map_rank;
use crate::onnx::attrs::Attrs;
use crate::onnx::value::{FTensor, Value};

/// Which reduction.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReduceKind {
    Mean,
    Sum,
    Max,
    Min,
    /// `sqrt(sum(x^2))`.
    L2,
    /// `sum(x^2)`.
    SumSquare,
}

pub(super) fn parse(op: &str, a: &Attrs) -> Result<Op> {
    let kind = match op {
        "ReduceMean" => ReduceKind::Mean,
        "ReduceSum" => ReduceKind::Sum,
        "ReduceMax" => ReduceKind::Max,
        "ReduceL2" => ReduceKind::L2,
        "ReduceSumSquare" => ReduceKind::SumSquare,
        _ => ReduceKind::Min,
    };
    // ReduceSum takes axes as an input from opset 13, the others from opset 18.
    let axes_as_input = match kind {
        ReduceKind::Sum => a.opset >= 13,
        _ => a.opset >= 18,
    };
    let axes = if axes_as_input { None } else { a.ints("axes")? };
    Ok(Op::Reduce {
        kind,
        axes,
        keep_dims: a.int("keepdims", 1)? != 0,
        noop_empty: a.int("noop_with_empty_axes", 0)? != 0,
    })
}

pub(super) fn reduce(
    kind: ReduceKind,
    axes: Option<&[i64]>,
    keep_dims: bool,
    noop_empty: bool,
    inputs: &Inputs,
) -> Result<Value> {
    let x = inputs.float(0)?;
    let dims = x.dims();
    let rank = dims.len();
    let axes: Vec<i64> = match axes {
        Some(a) => a.to_vec(),
        None => inputs.opt_host(1)?.map(|h| h.as_i64()).unwrap_or_default(),
    };
    if axes.is_empty() && noop_empty {
        return Ok(Value::Float(x));
    }
    let mut axes: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| norm_axis(a, rank, inputs.ctx))
            .collect::<Result<_>>()?
    };
    axes.sort_unstable();
    axes.dedup();
    let y = match kind {
        ReduceKind::Mean => map_rank!(x, t => t.mean_dims(&axes)),
        ReduceKind::Sum => map_rank!(x, t => t.sum_dims(&axes)),
        ReduceKind::Max => map_rank!(x, t => t.max_dims(&axes)),
        ReduceKind::Min => map_rank!(x, t => t.min_dims(&axes)),
        ReduceKind::L2 => map_rank!(x, t => t.powi_scalar(2).sum_dims(&axes).sqrt()),
        ReduceKind::SumSquare => map_rank!(x, t => t.powi_scalar(2).sum_dims(&axes)),
    };
    if keep_dims {
        return Ok(Value::Float(y));
    }
    let kept: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    let kept = if kept.is_empty() { vec![1] } else { kept };
    Ok(Value::Float(y.reshape(&kept)))
}

pub(super) fn softmax(axis: i64, log: bool, legacy: bool, inputs: &Inputs) -> Result<FTensor> {
    let x = inputs.float(0)?;
    let dims = x.dims();
    let axis = norm_axis(axis, dims.len(), inputs.ctx)?;
    let apply = |t: FTensor, axis: usize| {
        if log {
            map_rank!(t, v => activation::log_softmax(v, axis))
        } else {
            map_rank!(t, v => activation::softmax(v, axis))
        }
    };
    if legacy && axis + 1 != dims.len() {
        // Before opset 13 the input is coerced to 2-D at `axis` and normalised over the rest.
        let rows: usize = dims[..axis].iter().product();
        let cols: usize = dims[axis..].iter().product();
        let y = apply(x.reshape(&[rows, cols]), 1);
        return Ok(y.reshape(&dims));
    }
    Ok(apply(x, axis))
}
