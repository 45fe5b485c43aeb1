//! Conv, MaxPool, AveragePool and the global pools (2-D, NCHW).

use burn::tensor::Tensor;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::Inputs;
use crate::error::Result;
use crate::onnx::attrs::Attrs;
use crate::onnx::value::FTensor;

/// How padding is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

fn parse_auto_pad(a: &Attrs) -> Result<AutoPad> {
    match a.string("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" | "" => Ok(AutoPad::NotSet),
        "SAME_UPPER" => Ok(AutoPad::SameUpper),
        "SAME_LOWER" => Ok(AutoPad::SameLower),
        "VALID" => Ok(AutoPad::Valid),
        other => Err(a.unsupported(format!("auto_pad '{other}'"))),
    }
}

/// Read a two-element spatial attribute (strides, dilations, kernel_shape).
fn pair(a: &Attrs, name: &str, default: usize) -> Result<Option<[usize; 2]>> {
    match a.ints(name)? {
        None => Ok(if default == 0 {
            None
        } else {
            Some([default; 2])
        }),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => {
            Ok(Some([v[0] as usize, v[1] as usize]))
        }
        Some(v) => Err(a.unsupported(format!(
            "{name} {v:?} (only 2-D ops with positive values are supported)"
        ))),
    }
}

/// `pads` as `[(h_begin, h_end), (w_begin, w_end)]`.
fn parse_pads(a: &Attrs) -> Result<[(usize, usize); 2]> {
    match a.ints("pads")? {
        None => Ok([(0, 0); 2]),
        Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => Ok([
            (p[0] as usize, p[2] as usize),
            (p[1] as usize, p[3] as usize),
        ]),
        Some(p) => Err(a.unsupported(format!("pads {p:?} (only 2-D non-negative pads)"))),
    }
}

/// Conv attributes.
#[derive(Clone, Debug)]
pub(crate) struct ConvSpec {
    pub kernel: Option<[usize; 2]>,
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [(usize, usize); 2],
    pub auto_pad: AutoPad,
    pub group: usize,
}

pub(super) fn parse_conv(a: &Attrs) -> Result<ConvSpec> {
    let group = a.int("group", 1)?;
    if group < 1 {
        return Err(a.err(format!("group {group} must be >= 1")));
    }
    Ok(ConvSpec {
        kernel: pair(a, "kernel_shape", 0)?,
        strides: pair(a, "strides", 1)?.unwrap_or([1, 1]),
        dilations: pair(a, "dilations", 1)?.unwrap_or([1, 1]),
        pads: parse_pads(a)?,
        auto_pad: parse_auto_pad(a)?,
        group: group as usize,
    })
}

/// Pool attributes (MaxPool and AveragePool).
#[derive(Clone, Debug)]
pub(crate) struct PoolSpec {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [(usize, usize); 2],
    pub auto_pad: AutoPad,
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

pub(super) fn parse_pool(a: &Attrs, max: bool) -> Result<PoolSpec> {
    let kernel = pair(a, "kernel_shape", 0)?.ok_or_else(|| a.err("kernel_shape is required"))?;
    let dilations = pair(a, "dilations", 1)?.unwrap_or([1, 1]);
    if !max && dilations != [1, 1] {
        return Err(a.unsupported(format!("dilations {dilations:?} on AveragePool")));
    }
    if max {
        a.ignore(&["storage_order"]);
    }
    let count_include_pad = if max {
        false
    } else {
        a.int("count_include_pad", 0)? != 0
    };
    Ok(PoolSpec {
        kernel,
        strides: pair(a, "strides", 1)?.unwrap_or([1, 1]),
        dilations,
        pads: parse_pads(a)?,
        auto_pad: parse_auto_pad(a)?,
        ceil_mode: a.int("ceil_mode", 0)? != 0,
        count_include_pad,
    })
}

/// Resolve automatic padding for one spatial dimension.
fn resolve_pad(
    auto: AutoPad,
    explicit: (usize, usize),
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    match auto {
        AutoPad::NotSet => explicit,
        AutoPad::Valid => (0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = size.div_ceil(stride);
            let span = (kernel - 1) * dilation + 1;
            let total = ((out - 1) * stride + span).saturating_sub(size);
            let small = total / 2;
            if auto == AutoPad::SameUpper {
                (small, total - small)
            } else {
                (total - small, small)
            }
        }
    }
}

fn rank4(t: FTensor, what: &str, inputs: &Inputs) -> Result<burn::prelude::Tensor<4>> {
    let dims = t.dims();
    t.into_r4().ok_or_else(|| {
        inputs.ctx.unsupported(format!(
            "{what} of shape {dims:?} (only 2-D, NCHW rank-4 inputs)"
        ))
    })
}

pub(super) fn conv(spec: &ConvSpec, inputs: &Inputs) -> Result<FTensor> {
    let x = rank4(inputs.float(0)?, "input", inputs)?;
    let w = rank4(inputs.float(1)?, "weight", inputs)?;
    let [_, c, h, wd] = x.dims();
    let [m, cg, kh, kw] = w.dims();
    if let Some(k) = spec.kernel
        && k != [kh, kw]
    {
        return Err(inputs.ctx.err(format!(
            "kernel_shape {k:?} disagrees with weight {:?}",
            w.dims()
        )));
    }
    if cg * spec.group != c || m % spec.group != 0 {
        return Err(inputs.ctx.err(format!(
            "input has {c} channels but weight {:?} with group {} expects {}",
            w.dims(),
            spec.group,
            cg * spec.group
        )));
    }
    let bias = match inputs.opt_float(2)? {
        None => None,
        Some(b) if b.dims() == [m] => match b {
            FTensor::R1(b) => Some(b),
            _ => unreachable!(),
        },
        Some(b) => {
            return Err(inputs
                .ctx
                .err(format!("bias of shape {:?}, expected [{m}]", b.dims())));
        }
    };
    let pads = [
        resolve_pad(
            spec.auto_pad,
            spec.pads[0],
            h,
            kh,
            spec.strides[0],
            spec.dilations[0],
        ),
        resolve_pad(
            spec.auto_pad,
            spec.pads[1],
            wd,
            kw,
            spec.strides[1],
            spec.dilations[1],
        ),
    ];
    for (d, (size, k)) in [(h, kh), (wd, kw)].into_iter().enumerate() {
        let span = (k - 1) * spec.dilations[d] + 1;
        if size + pads[d].0 + pads[d].1 < span {
            return Err(inputs.ctx.err(format!(
                "input {h}x{wd} is smaller than the kernel {kh}x{kw} (image too small for this model?)"
            )));
        }
    }
    let opts = ConvOptions::new_with_padding(spec.strides, pads, spec.dilations, spec.group);
    Ok(FTensor::R4(crate::kernels::conv2d(x, w, bias, opts)))
}

pub(super) fn pool(spec: &PoolSpec, max: bool, inputs: &Inputs) -> Result<FTensor> {
    let x = rank4(inputs.float(0)?, "input", inputs)?;
    let [_, _, h, w] = x.dims();
    let pads = [
        resolve_pad(
            spec.auto_pad,
            spec.pads[0],
            h,
            spec.kernel[0],
            spec.strides[0],
            spec.dilations[0],
        ),
        resolve_pad(
            spec.auto_pad,
            spec.pads[1],
            w,
            spec.kernel[1],
            spec.strides[1],
            spec.dilations[1],
        ),
    ];
    for d in 0..2 {
        let size = [h, w][d];
        let span = (spec.kernel[d] - 1) * spec.dilations[d] + 1;
        if size + pads[d].0 + pads[d].1 < span {
            return Err(inputs.ctx.err(format!(
                "input {h}x{w} is smaller than the pooling window {:?} (image too small for this model?)",
                spec.kernel
            )));
        }
        if pads[d].0 >= spec.kernel[d] || pads[d].1 >= spec.kernel[d] {
            return Err(inputs.ctx.unsupported(format!(
                "pads {pads:?} not smaller than the kernel {:?}",
                spec.kernel
            )));
        }
    }
    if tiles(spec, pads) {
        let ours = if max {
            crate::kernels::max_pool_tiled(&x, spec.kernel)
        } else {
            tiled_avg_pool(&x, spec)
        };
        if let Some(out) = ours {
            return Ok(FTensor::R4(out));
        }
    }
    let out = if max {
        let opts = MaxPoolOptions::new(spec.kernel)
            .with_stride(spec.strides)
            .with_padding_pairs(pads)
            .with_dilation(spec.dilations)
            .with_ceil_mode(spec.ceil_mode);
        max_pool2d(x, opts)
    } else {
        let opts = AvgPoolOptions::new(spec.kernel)
            .with_stride(spec.strides)
            .with_padding_pairs(pads)
            .with_count_include_pad(spec.count_include_pad)
            .with_ceil_mode(spec.ceil_mode);
        avg_pool2d(x, opts)
    };
    Ok(FTensor::R4(out))
}

/// Whether a pool's windows tile the image: stride = kernel, no padding, no dilation, floor mode.
fn tiles(spec: &PoolSpec, pads: [(usize, usize); 2]) -> bool {
    let [kh, kw] = spec.kernel;
    spec.strides == spec.kernel
        && spec.dilations == [1, 1]
        && pads == [(0, 0), (0, 0)]
        && !spec.ceil_mode
        && kh * kw > 1
}

/// A tiled average pool ([`tiles`]) as a reshape and a mean. Same values as burn's pooling; its
/// gradient is a broadcast instead of burn's per-window loop, which took 14 % of a MNIST scan
/// (BENCHMARKS.md: 2.4x faster forward + backward). A tiled max pool has a kernel of its own
/// ([`crate::kernels::max_pool_tiled`]; a max over the reshaped windows was 3.6x slower than
/// burn's). `None` when the image is smaller than a window.
fn tiled_avg_pool(x: &Tensor<4>, spec: &PoolSpec) -> Option<Tensor<4>> {
    let [kh, kw] = spec.kernel;
    let [n, c, h, w] = x.dims();
    let (oh, ow) = (h / kh, w / kw);
    if oh == 0 || ow == 0 {
        return None;
    }
    let mut t = x.clone();
    if oh * kh != h {
        t = t.narrow(2, 0, oh * kh);
    }
    if ow * kw != w {
        t = t.narrow(3, 0, ow * kw);
    }
    let windows: Tensor<6> = t.reshape([n, c, oh, kh, ow, kw]);
    Some(windows.mean_dims(&[3, 5]).reshape([n, c, oh, ow]))
}

pub(super) fn global_pool(max: bool, inputs: &Inputs) -> Result<FTensor> {
    let x = inputs.float(0)?;
    let rank = x.rank();
    if rank < 3 {
        return Err(inputs
            .ctx
            .err(format!("input of rank {rank}, expected N x C x spatial")));
    }
    let axes: Vec<usize> = (2..rank).collect();
    Ok(crate::map_rank!(x, t => if max { t.max_dims(&axes) } else { t.mean_dims(&axes) }))
}
