//! Resize (and the older Upsample): nearest and linear interpolation, separable over the axes
//! whose size changes, as `F.interpolate` and `nn.Upsample` export (HRNet's fusion layers, a
//! model that resizes its own input). Cubic interpolation, antialiasing and crop-and-resize
//! are refused by name.

use burn::prelude::{Int, Tensor};
use burn::tensor::TensorData;

use super::{Inputs, Op};
use crate::error::Result;
use crate::onnx::attrs::Attrs;
use crate::onnx::value::{FTensor, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// A parsed Resize/Upsample.
#[derive(Clone, Debug)]
pub(crate) struct ResizeSpec {
    /// Linear (else nearest).
    linear: bool,
    coord: Coord,
    rounding: Rounding,
    /// Upsample's scales attribute (opset 7-8), or Resize's axes (opset 18).
    scales_attr: Option<Vec<f32>>,
    axes: Option<Vec<i64>>,
    /// Upsample keeps the scales as its second input (from opset 9), Resize as its third.
    scales_input: usize,
    sizes_input: Option<usize>,
}

pub(super) fn parse(op: &str, a: &Attrs) -> Result<Op> {
    let mode = a.string("mode", "nearest")?;
    let linear = match mode.as_str() {
        "nearest" => false,
        "linear" | "bilinear" => true,
        other => return Err(a.unsupported(format!("mode={other}"))),
    };
    if op == "Upsample" {
        return Ok(Op::Resize(ResizeSpec {
            linear,
            // Upsample's only convention: x_original = x_resized / scale, nearest rounds down.
            coord: Coord::Asymmetric,
            rounding: Rounding::Floor,
            scales_attr: a.floats("scales")?,
            axes: None,
            scales_input: 1,
            sizes_input: None,
        }));
    }
    let coord = match a
        .string("coordinate_transformation_mode", "half_pixel")?
        .as_str()
    {
        "half_pixel" => Coord::HalfPixel,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        other => {
            return Err(a.unsupported(format!("coordinate_transformation_mode={other}")));
        }
    };
    let rounding = match a.string("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => Rounding::RoundPreferFloor,
        "round_prefer_ceil" => Rounding::RoundPreferCeil,
        "floor" => Rounding::Floor,
        "ceil" => Rounding::Ceil,
        other => return Err(a.unsupported(format!("nearest_mode={other}"))),
    };
    if a.int("antialias", 0)? != 0 {
        return Err(a.unsupported("antialias=1"));
    }
    if a.string("keep_aspect_ratio_policy", "stretch")? != "stretch" {
        return Err(a.unsupported("keep_aspect_ratio_policy other than stretch"));
    }
    // Only for cubic (refused above) and tf_crop_and_resize (refused above).
    a.ignore(&["cubic_coeff_a", "exclude_outside", "extrapolation_value"]);
    // Opset 10 has (X, scales); from 11, (X, roi, scales, sizes).
    let (scales_input, sizes_input) = if a.opset < 11 {
        (1, None)
    } else {
        (2, Some(3))
    };
    Ok(Op::Resize(ResizeSpec {
        linear,
        coord,
        rounding,
        scales_attr: None,
        axes: a.ints("axes")?,
        scales_input,
        sizes_input,
    }))
}

/// The source coordinate of output position `x` along an axis of `len_in` -> `len_out` with
/// scale `scale`.
fn source(coord: Coord, x: usize, len_in: usize, len_out: usize, scale: f64) -> f64 {
    let x = x as f64;
    match coord {
        Coord::HalfPixel => (x + 0.5) / scale - 0.5,
        Coord::PytorchHalfPixel if len_out > 1 => (x + 0.5) / scale - 0.5,
        Coord::PytorchHalfPixel => 0.0,
        Coord::AlignCorners if len_out > 1 => x * (len_in as f64 - 1.0) / (len_out as f64 - 1.0),
        Coord::AlignCorners => 0.0,
        Coord::Asymmetric => x / scale,
        Coord::TfHalfPixelForNn => (x + 0.5) / scale,
    }
}

fn ids(v: Vec<i64>, inputs: &Inputs) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::<1, Int>::from_data(TensorData::new(v, [n]), inputs.ctx.device)
}

pub(super) fn resize(spec: &ResizeSpec, inputs: &Inputs) -> Result<Value> {
    let mut x = inputs.float(0)?;
    let dims = x.dims();
    let rank = dims.len();
    let sizes = match spec.sizes_input {
        Some(i) => inputs
            .opt_host(i)?
            .map(|h| h.as_i64())
            .filter(|s| !s.is_empty()),
        None => None,
    };
    // The interpreter keeps a Resize's constant scales on the host; scales computed on the
    // device (from constants the graph did not fold) are read back.
    let scales = match &spec.scales_attr {
        Some(s) => Some(s.clone()),
        None if inputs.present(spec.scales_input) => match inputs.value(spec.scales_input)? {
            Value::Host(h) => Some(h.as_f32()),
            Value::Float(t) => Some(t.to_vec()),
        }
        .filter(|s| !s.is_empty()),
        None => None,
    };
    let axes: Vec<usize> = match &spec.axes {
        Some(a) => a
            .iter()
            .map(|&v| super::norm_axis(v, rank, inputs.ctx))
            .collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    // Per axis: (output length, scale).
    let mut plan: Vec<(usize, f64)> = dims.iter().map(|&d| (d, 1.0)).collect();
    match (sizes, scales) {
        (Some(s), _) => {
            if s.len() != axes.len() {
                return Err(inputs
                    .ctx
                    .err(format!("{} sizes for {} axes", s.len(), axes.len())));
            }
            for (&ax, &n) in axes.iter().zip(&s) {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| inputs.ctx.err(format!("output size {n}")))?;
                plan[ax] = (n, n as f64 / dims[ax] as f64);
            }
        }
        (None, Some(s)) => {
            if s.len() != axes.len() {
                return Err(inputs
                    .ctx
                    .err(format!("{} scales for {} axes", s.len(), axes.len())));
            }
            for (&ax, &f) in axes.iter().zip(&s) {
                if !(f.is_finite() && f > 0.0) {
                    return Err(inputs.ctx.err(format!("scale {f}")));
                }
                let n = (dims[ax] as f64 * f as f64).floor() as usize;
                if n == 0 {
                    return Err(inputs.ctx.err(format!("scale {f} empties axis {ax}")));
                }
                plan[ax] = (n, f as f64);
            }
        }
        (None, None) => return Err(inputs.ctx.err("neither scales nor sizes")),
    }
    for (ax, &(n_out, scale)) in plan.iter().enumerate() {
        let n_in = dims[ax];
        if n_out == n_in && (scale - 1.0).abs() < 1e-12 {
            continue;
        }
        let src: Vec<f64> = (0..n_out)
            .map(|o| source(spec.coord, o, n_in, n_out, scale))
            .collect();
        let last = n_in as i64 - 1;
        if spec.linear {
            let (mut lo, mut hi, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for &s in &src {
                let s = s.clamp(0.0, last as f64);
                let i0 = s.floor() as i64;
                lo.push(i0);
                hi.push((i0 + 1).min(last));
                w.push((s - i0 as f64) as f32);
            }
            let a = crate::map_rank!(x.clone(), t => t.select(ax, ids(lo.clone(), inputs)));
            let b = crate::map_rank!(x, t => t.select(ax, ids(hi.clone(), inputs)));
            let mut wshape = vec![1; rank];
            wshape[ax] = n_out;
            let wt = FTensor::from_host(w, &wshape, inputs.ctx.device);
            let err = || inputs.ctx.err("Resize broadcast");
            let diff = b.sub_bc(a.clone()).ok_or_else(err)?;
            x = a.add_bc(diff.mul_bc(wt).ok_or_else(err)?).ok_or_else(err)?;
        } else {
            let idx: Vec<i64> = src
                .iter()
                .map(|&s| {
                    let frac = s - s.floor();
                    let r = match spec.rounding {
                        Rounding::Floor => s.floor(),
                        Rounding::Ceil => s.ceil(),
                        Rounding::RoundPreferFloor if frac == 0.5 => s.floor(),
                        Rounding::RoundPreferCeil if frac == 0.5 => s.ceil(),
                        _ => s.round(),
                    };
                    (r as i64).clamp(0, last)
                })
                .collect();
            x = crate::map_rank!(x, t => t.select(ax, ids(idx.clone(), inputs)));
        }
    }
    Ok(Value::Float(x))
}
