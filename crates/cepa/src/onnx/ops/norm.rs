//! LayerNormalization and InstanceNormalization (BatchNormalization, a per-channel affine map at
//! inference, lives with the elementwise ops).

use super::{Inputs, norm_axis};
use crate::error::Result;
use crate::onnx::value::{FTensor, Value};

/// Normalise the rows of a 2-D view: `(x - mean) / sqrt(var + eps)` over axis 1, with the mean
/// and `1 / sqrt(var + eps)` (each `[rows, 1]`).
fn normalise_rows(
    x: FTensor,
    rows: usize,
    cols: usize,
    epsilon: f32,
) -> (FTensor, FTensor, FTensor) {
    let FTensor::R2(t) = x.reshape(&[rows, cols]) else {
        unreachable!("reshaped to rank 2")
    };
    let mean = t.clone().mean_dim(1);
    let centred = t - mean.clone();
    let var = centred.clone().powi_scalar(2).mean_dim(1);
    let inv_std = (var + epsilon).sqrt().recip();
    let y = centred * inv_std.clone();
    (FTensor::R2(y), FTensor::R2(mean), FTensor::R2(inv_std))
}

/// LayerNormalization (opset 17): over the axes from `axis` on; the optional outputs `Mean` and
/// `InvStdDev` have the input's shape with those axes set to 1.
pub(super) fn layer_norm(
    axis: i64,
    epsilon: f32,
    n_outputs: usize,
    inputs: &Inputs,
) -> Result<Vec<Value>> {
    if n_outputs > 3 {
        return Err(inputs.ctx.err(format!("{n_outputs} outputs (at most 3)")));
    }
    let x = inputs.float(0)?;
    let dims = x.dims();
    let a = norm_axis(axis, dims.len(), inputs.ctx)?;
    let rows: usize = dims[..a].iter().product();
    let cols: usize = dims[a..].iter().product();
    let (y, mean, inv_std) = normalise_rows(x, rows, cols, epsilon);
    let err = |what: &str, d: Vec<usize>| {
        inputs.ctx.err(format!(
            "{what} of shape {d:?} does not broadcast against the normalised axes {:?}",
            &dims[a..]
        ))
    };
    let mut y = y.reshape(&dims);
    let scale = inputs.float(1)?;
    let ds = scale.dims();
    y = y.mul_bc(scale).ok_or_else(|| err("Scale", ds))?;
    if let Some(b) = inputs.opt_float(2)? {
        let db = b.dims();
        y = y.add_bc(b).ok_or_else(|| err("B", db))?;
    }
    if y.dims() != dims {
        return Err(inputs.ctx.err(format!(
            "Scale or B widened the output from {dims:?} to {:?}",
            y.dims()
        )));
    }
    let mut stat_shape = dims.clone();
    for d in &mut stat_shape[a..] {
        *d = 1;
    }
    let mut out = vec![Value::Float(y)];
    for stat in [mean, inv_std]
        .into_iter()
        .take(n_outputs.saturating_sub(1))
    {
        out.push(Value::Float(stat.reshape(&stat_shape)));
    }
    Ok(out)
}

/// InstanceNormalization: each sample's channel over its spatial axes, then `scale[c]` and
/// `B[c]`.
pub(super) fn instance_norm(epsilon: f32, inputs: &Inputs) -> Result<FTensor> {
    let x = inputs.float(0)?;
    let dims = x.dims();
    if dims.len() < 3 {
        return Err(inputs.ctx.err(format!(
            "input of shape {dims:?}, expected N x C x D1 x ..."
        )));
    }
    let c = dims[1];
    let rows = dims[0] * c;
    let cols: usize = dims[2..].iter().product();
    let (y, _, _) = normalise_rows(x, rows, cols, epsilon);
    let param = |i: usize| super::elementwise::channel_param(inputs, i, &dims);
    let err = || inputs.ctx.err("InstanceNormalization broadcast");
    let y = y.reshape(&dims).mul_bc(param(1)?).ok_or_else(err)?;
    y.add_bc(param(2)?).ok_or_else(err)
}
