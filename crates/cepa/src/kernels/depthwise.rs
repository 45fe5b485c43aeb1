//! The depthwise convolution's backward pass (MobileNet's 3x3 convolutions with one group per
//! channel): every channel's input gradient and weight gradient computed from its own plane.
//!
//! burn's backward pass for a grouped convolution runs one convolution and one slice assignment
//! of the whole weight gradient per group for the weight, and a grouped transposed convolution
//! for the input; with one group per channel that is most of a MobileNet's training step and
//! of its scan. Here the input gradient is a scatter per (image, channel) plane and the weight
//! gradient a sum per channel over the images in order, each on one thread: the same values on
//! any number of threads, equal to burn's up to float rounding. The forward pass stays burn's
//! (which has a depthwise path of its own), so a scan's values do not move.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ops::ModuleOps;
use burn::backend::{Dispatch, Flex};
use burn::prelude::Tensor;
use burn::tensor::TensorData;
use burn::tensor::ops::ConvOptions;
use burn_flex::FlexTensor;

use super::{AdTensor, CepaKernels, contiguous_f32, four, on_flex, tracked_input_weight_bias};

/// Stride (rows, columns), pads (top, bottom, left, right), dilation (rows, columns).
pub(super) type Geom = [usize; 8];

/// The geometry of `opts` where the convolution of `x` by `w` is depthwise (one group per
/// channel, one output channel per group) and runs on `flex` with autodiff and f32 values.
pub(super) fn applies(x: &Tensor<4>, w: &Tensor<4>, opts: &ConvOptions<2>) -> Option<Geom> {
    let c = x.dims()[1];
    let [wc, per_group, _, _] = w.dims();
    let depthwise = opts.groups > 1 && opts.groups == c && wc == c && per_group == 1;
    (depthwise && on_flex(x) && x.device().is_autodiff()).then(|| {
        let [(top, bottom), (left, right)] = opts.padding;
        [
            opts.stride[0],
            opts.stride[1],
            top,
            bottom,
            left,
            right,
            opts.dilation[0],
            opts.dilation[1],
        ]
    })
}

/// [`CepaKernels::depthwise2d`] on dispatch tensors.
pub(super) fn extension(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, geom: Geom) -> Tensor<4> {
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    let out = match b {
        Some(b) => <Dispatch as CepaKernels>::depthwise2d(x, w, b.into_dispatch(), geom),
        None => <Dispatch as CepaKernels>::depthwise2d_nobias(x, w, geom),
    };
    Tensor::from_dispatch(out)
}

fn options(x: &FlexTensor, geom: Geom) -> ConvOptions<2> {
    let [sh, sw, top, bottom, left, right, dh, dw] = geom;
    let groups = x.layout().shape()[1];
    ConvOptions::new_with_padding([sh, sw], [(top, bottom), (left, right)], [dh, dw], groups)
}

/// burn's depthwise convolution.
pub(super) fn forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    geom: Geom,
) -> FlexTensor {
    let opts = options(&x, geom);
    Flex::conv2d(x, weight, bias, opts)
}

/// The depthwise convolution on the autodiff backend, its backward pass [`DepthwiseBackward`].
pub(super) fn tracked<C: CheckpointStrategy>(
    x: AdTensor<C>,
    weight: AdTensor<C>,
    bias: Option<AdTensor<C>>,
    geom: Geom,
) -> AdTensor<C> {
    tracked_input_weight_bias::<C, _, _>(DepthwiseBackward, x, weight, bias, |x, w, b| {
        let out = forward(x.clone(), w.clone(), b.clone(), geom);
        let state = State {
            x,
            weight: w,
            bias: b,
            geom,
        };
        (state, out)
    })
}

/// What the backward pass keeps: the convolution's inputs and geometry.
#[derive(Clone, Debug)]
pub(super) struct State {
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    geom: Geom,
}

#[derive(Debug)]
pub(super) struct DepthwiseBackward;

super::input_weight_bias_backward!(DepthwiseBackward, State, grads_of);

/// The gradients of the input, weight and bias, each where `want` says: ours where the values
/// are f32, burn's otherwise; the bias's burn's.
fn grads_of(grad: FlexTensor, s: &State, want: [bool; 3]) -> [Option<FlexTensor>; 3] {
    let opts = options(&s.x, s.geom);
    let gb = match (&s.bias, want[2]) {
        (Some(bias), true) => Some(Flex::conv2d_bias_backward(
            s.x.clone(),
            bias.clone(),
            grad.clone(),
        )),
        _ => None,
    };
    let gw = want[1].then(|| {
        weight_grad(&grad, &s.x, &s.weight, s.geom).unwrap_or_else(|| {
            Flex::conv2d_weight_backward(s.x.clone(), s.weight.clone(), grad.clone(), opts.clone())
        })
    });
    let gx = want[0].then(|| {
        input_grad(&grad, &s.weight, four(s.x.layout().shape()), s.geom)
            .unwrap_or_else(|| Flex::conv2d_x_backward(s.x.clone(), s.weight.clone(), grad, opts))
    });
    [gx, gw, gb]
}

/// The output columns `ox` whose input column `ox * stride + offset - pad` lies in
/// `0..size`, with `offset` the kernel cell's dilated offset.
fn span(out: usize, stride: usize, offset: usize, pad: usize, size: usize) -> (usize, usize) {
    // First: the smallest ox with ox * stride + offset >= pad.
    let first = pad.saturating_sub(offset).div_ceil(stride);
    // End: one past the largest ox with ox * stride + offset < size + pad.
    let end = if size + pad > offset {
        (size + pad - offset - 1) / stride + 1
    } else {
        0
    };
    (first.min(out), end.min(out))
}

/// Kernel sizes and the shapes of a depthwise case, checked; `None` where they do not fit.
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
}

fn dims(grad: &FlexTensor, weight: &FlexTensor, x_dims: [usize; 4]) -> Option<Dims> {
    let [n, c, oh, ow] = four(grad.layout().shape());
    let [wc, one, kh, kw] = four(weight.layout().shape());
    let [xn, xc, h, w] = x_dims;
    (wc == c && one == 1 && xn == n && xc == c).then_some(Dims {
        n,
        c,
        h,
        w,
        oh,
        ow,
        kh,
        kw,
    })
}

/// The input gradient: per (image, channel) plane, every output's gradient times each kernel
/// cell's weight added into the input cell it read, kernel cell after kernel cell.
fn input_grad(
    grad: &FlexTensor,
    weight: &FlexTensor,
    x_dims: [usize; 4],
    geom: Geom,
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    let [grad, weight] = contiguous_f32([grad, weight])?;
    let d = dims(&grad, &weight, x_dims)?;
    let [sh, sw, top, _, left, _, dh, dw] = geom;
    let g: &[f32] = grad.storage();
    let wt: &[f32] = weight.storage();
    let (plane, oplane, ks) = (d.h * d.w, d.oh * d.ow, d.kh * d.kw);
    let mut dx = vec![0f32; d.n * d.c * plane];
    if plane > 0 && oplane > 0 {
        dx.par_chunks_mut(plane)
            .enumerate()
            .with_min_len(super::GROUP)
            .for_each(|(p, out)| {
                let gp = &g[p * oplane..][..oplane];
                let wk = &wt[(p % d.c) * ks..][..ks];
                for ky in 0..d.kh {
                    let (oy0, oy1) = span(d.oh, sh, ky * dh, top, d.h);
                    for kx in 0..d.kw {
                        let (ox0, ox1) = span(d.ow, sw, kx * dw, left, d.w);
                        let wv = wk[ky * d.kw + kx];
                        for oy in oy0..oy1 {
                            let iy = oy * sh + ky * dh - top;
                            let row = &mut out[iy * d.w..][..d.w];
                            let grow = &gp[oy * d.ow..][..d.ow];
                            for ox in ox0..ox1 {
                                row[ox * sw + kx * dw - left] += grow[ox] * wv;
                            }
                        }
                    }
                }
            });
    }
    Some(FlexTensor::from_data(TensorData::new(
        dx,
        [d.n, d.c, d.h, d.w],
    )))
}

/// The weight gradient: per channel, for each kernel cell, the sum over the images (in order)
/// of the output gradient times the input cell it read.
fn weight_grad(
    grad: &FlexTensor,
    x: &FlexTensor,
    weight: &FlexTensor,
    geom: Geom,
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    let [grad, x] = contiguous_f32([grad, x])?;
    let d = dims(&grad, weight, four(x.layout().shape()))?;
    let [sh, sw, top, _, left, _, dh, dw] = geom;
    let g: &[f32] = grad.storage();
    let xs: &[f32] = x.storage();
    let (plane, oplane, ks) = (d.h * d.w, d.oh * d.ow, d.kh * d.kw);
    let mut gw = vec![0f32; d.c * ks];
    if ks > 0 {
        gw.par_chunks_mut(ks).enumerate().for_each(|(ch, out)| {
            for b in 0..d.n {
                let p = b * d.c + ch;
                let xp = &xs[p * plane..][..plane];
                let gp = &g[p * oplane..][..oplane];
                for ky in 0..d.kh {
                    let (oy0, oy1) = span(d.oh, sh, ky * dh, top, d.h);
                    for kx in 0..d.kw {
                        let (ox0, ox1) = span(d.ow, sw, kx * dw, left, d.w);
                        let mut sum = 0f32;
                        for oy in oy0..oy1 {
                            let iy = oy * sh + ky * dh - top;
                            let row = &xp[iy * d.w..][..d.w];
                            let grow = &gp[oy * d.ow..][..d.ow];
                            for ox in ox0..ox1 {
                                sum += grow[ox] * row[ox * sw + kx * dw - left];
                            }
                        }
                        out[ky * d.kw + kx] += sum;
                    }
                }
            }
        });
    }
    Some(FlexTensor::from_data(TensorData::new(
        gw,
        [d.c, 1, d.kh, d.kw],
    )))
}

#[cfg(test)]
mod tests {
    use burn::prelude::{Device, TensorData};

    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let r = i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16;
                (r % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Input dims, kernel (rows, columns), stride, pads (top, bottom, left, right), dilation.
    type Case = ([usize; 4], [usize; 2], [usize; 2], [usize; 4], [usize; 2]);
    const CASES: [Case; 5] = [
        // MobileNet's 3x3 "same" convolution, stride 1 and stride 2.
        ([2, 4, 9, 8], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1]),
        ([3, 5, 9, 10], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
        // No padding, a rectangular kernel, unequal strides.
        ([2, 3, 11, 7], [3, 2], [2, 1], [0, 0, 0, 0], [1, 1]),
        // Asymmetric padding (as "SAME_UPPER" with stride 2 gives) and dilation.
        ([1, 6, 8, 8], [3, 3], [2, 2], [0, 1, 0, 1], [1, 1]),
        ([2, 2, 10, 9], [3, 3], [1, 1], [2, 2, 1, 2], [2, 2]),
    ];

    fn opts((xd, _, stride, p, dilation): Case) -> ConvOptions<2> {
        ConvOptions::new_with_padding(stride, [(p[0], p[1]), (p[2], p[3])], dilation, xd[1])
    }

    /// The output values and the gradients of `sum(y * r)` (input, weight, bias where
    /// `with_bias`), on flex with autodiff.
    fn run(
        case: Case,
        with_bias: bool,
        conv: impl Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>,
    ) -> [Vec<f32>; 4] {
        let (xd, [kh, kw], ..) = case;
        let device = Device::flex().autodiff();
        let tensor = |d: [usize; 4], seed| {
            let len = d.iter().product();
            Tensor::<4>::from_data(TensorData::new(values(len, seed), d), &device).require_grad()
        };
        let x = tensor(xd, 1);
        let w = tensor([xd[1], 1, kh, kw], 2);
        let b = Tensor::<1>::from_data(TensorData::new(values(xd[1], 3), [xd[1]]), &device)
            .require_grad();
        let y = conv(x.clone(), w.clone(), with_bias.then(|| b.clone()));
        let g = (y.clone() * tensor(y.dims(), 4)).sum().backward();
        let floats = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        [
            floats(y.flatten(0, 3)),
            floats(x.grad(&g).unwrap().flatten(0, 3)),
            floats(w.grad(&g).unwrap().flatten(0, 3)),
            if with_bias {
                floats(b.grad(&g).unwrap())
            } else {
                vec![]
            },
        ]
    }

    fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            ours.len() == theirs.len() && worst <= 1e-5 * scale.max(1e-6),
            "{what}: {worst} of {scale}"
        );
    }

    /// Ours takes over (the training and the scan's convolution), gives burn's output bit for
    /// bit, and gradients equal to burn's up to float rounding, on every case, with and without
    /// a bias.
    #[test]
    fn depthwise_backward_equals_burns() {
        for case in CASES {
            for with_bias in [true, false] {
                let probe = Tensor::<4>::zeros(case.0, &Device::flex().autodiff());
                let w = Tensor::<4>::zeros([case.0[1], 1, case.1[0], case.1[1]], &probe.device());
                assert!(applies(&probe, &w, &opts(case)).is_some(), "{case:?}");
                for ours in [
                    run(case, with_bias, |x, w, b| {
                        super::super::conv2d(x, w, b, opts(case))
                    }),
                    run(case, with_bias, |x, w, b| {
                        super::super::conv2d_train(x, w, b, opts(case))
                    }),
                ] {
                    let theirs = run(case, with_bias, |x, w, b| {
                        burn::tensor::module::conv2d(x, w, b, opts(case))
                    });
                    let what = format!("{case:?}, bias {with_bias}");
                    assert_eq!(ours[0], theirs[0], "output, {what}");
                    assert_close(&ours[1], &theirs[1], &format!("input gradient, {what}"));
                    assert_close(&ours[2], &theirs[2], &format!("weight gradient, {what}"));
                    assert_eq!(ours[3], theirs[3], "bias gradient, {what}");
                }
            }
        }
    }

    /// Not ours: a grouped convolution with two channels a group, and any convolution off
    /// autodiff.
    #[test]
    fn only_depthwise_on_autodiff_is_ours() {
        let ad = Device::flex().autodiff();
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &ad);
        let grouped = ConvOptions::new([1, 1], [1, 1], [1, 1], 2);
        assert!(applies(&x, &Tensor::<4>::zeros([4, 2, 3, 3], &ad), &grouped).is_none());
        let dw = ConvOptions::new([1, 1], [1, 1], [1, 1], 4);
        let plain = Device::flex();
        let xp = Tensor::<4>::zeros([1, 4, 5, 5], &plain);
        assert!(applies(&xp, &Tensor::<4>::zeros([4, 1, 3, 3], &plain), &dw).is_none());
        assert!(applies(&x, &Tensor::<4>::zeros([4, 1, 3, 3], &ad), &dw).is_some());
    }

    /// The gradients do not depend on the number of threads.
    #[test]
    fn depthwise_gradients_are_the_same_on_any_number_of_threads() {
        let case = CASES[1];
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    run(case, true, |x, w, b| {
                        super::super::conv2d_train(x, w, b, opts(case))
                    })
                })
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (one, three) = (on(1), on(3));
        for i in 0..4 {
            assert_eq!(bits(&one[i]), bits(&three[i]), "part {i}");
        }
    }
}
