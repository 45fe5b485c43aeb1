//! MatMul and Gemm.

use burn::prelude::Tensor;

use super::Inputs;
use crate::error::Result;
use crate::onnx::value::FTensor;

/// `A @ B` for the shapes classifiers export: `[.., K] @ [K, N]`, `[K] @ [K, N]` and same-rank
/// batched products with equal batch dimensions.
pub(super) fn matmul(inputs: &Inputs) -> Result<FTensor> {
    let a = inputs.float(0)?;
    let b = inputs.float(1)?;
    let (da, db) = (a.dims(), b.dims());
    let mismatch = || inputs.ctx.err(format!("cannot multiply {da:?} by {db:?}"));
    if db.len() == 2 {
        let (k, n) = (db[0], db[1]);
        if da.last() != Some(&k) {
            return Err(mismatch());
        }
        let rows: usize = da[..da.len() - 1].iter().product();
        let a2 = a.reshape(&[rows, k]).into_r2().ok_or_else(mismatch)?;
        let b2 = b.into_r2().ok_or_else(mismatch)?;
        let out = FTensor::R2(a2.matmul(b2));
        let mut shape = da[..da.len() - 1].to_vec();
        shape.push(n);
        return Ok(out.reshape(&shape));
    }
    if da.len() == db.len() && da.len() >= 3 && da[..da.len() - 2] == db[..db.len() - 2] {
        let r = da.len();
        if da[r - 1] != db[r - 2] {
            return Err(mismatch());
        }
        let batch: usize = da[..r - 2].iter().product();
        let to3 = |t: FTensor, d: &[usize]| -> Option<Tensor<3>> {
            match t.reshape(&[batch, d[r - 2], d[r - 1]]) {
                FTensor::R3(x) => Some(x),
                _ => None,
            }
        };
        let a3 = to3(a, &da).ok_or_else(mismatch)?;
        let b3 = to3(b, &db).ok_or_else(mismatch)?;
        let mut shape = da[..r - 1].to_vec();
        shape.push(db[r - 1]);
        return Ok(FTensor::R3(a3.matmul(b3)).reshape(&shape));
    }
    Err(inputs
        .ctx
        .unsupported(format!("MatMul of shapes {da:?} and {db:?}")))
}

/// `alpha * A' @ B' + beta * C` with optional transposes.
pub(super) fn gemm(
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    inputs: &Inputs,
) -> Result<FTensor> {
    let a = inputs.float(0)?;
    let b = inputs.float(1)?;
    let (da, db) = (a.dims(), b.dims());
    let bad = || {
        inputs
            .ctx
            .err(format!("Gemm needs rank-2 inputs, got {da:?} and {db:?}"))
    };
    let mut a = a.into_r2().ok_or_else(bad)?;
    let mut b = b.into_r2().ok_or_else(bad)?;
    if trans_a {
        a = a.transpose();
    }
    if trans_b {
        b = b.transpose();
    }
    let (ka, kb) = (a.dims()[1], b.dims()[0]);
    if ka != kb {
        return Err(inputs.ctx.err(format!(
            "inner dimensions differ: A {da:?} (transA={trans_a}) has {ka}, B {db:?} (transB={trans_b}) has {kb} \
             (flattened features do not fit this layer: wrong image size?)"
        )));
    }
    let mut y = a.matmul(b);
    if alpha != 1.0 {
        y = y * alpha;
    }
    let mut y = FTensor::R2(y);
    if let Some(c) = inputs.opt_float(2)? {
        let dc = c.dims();
        let c = if beta != 1.0 {
            crate::map_rank!(c, t => t * beta)
        } else {
            c
        };
        y = y.add_bc(c).ok_or_else(|| {
            inputs
                .ctx
                .err(format!("C of shape {dc:?} does not broadcast"))
        })?;
    }
    Ok(y)
}
