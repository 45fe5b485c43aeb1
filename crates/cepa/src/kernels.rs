//! CPU kernels of our own where burn's are slow on the scan's hot path, plugged in as a burn
//! backend extension (on the `flex` backend, with and without autodiff; other devices keep
//! burn's operations).
//!
//! - [`max_pool_tiled`]: a max pool whose windows tile the image (stride = kernel, no padding).
//!   burn-flex computes every max pool with its general 3-D kernel, which re-derives each
//!   window's bounds per output element and writes 64-bit indices: 18 % of a 43-class CEPA scan
//!   (`perf`, BENCHMARKS.md "Kernels of our own"). This one walks the window rows directly, keeps
//!   one byte per output for the backward pass, and gives the same values and the same gradients
//!   (the first maximum of a window in row-major order wins, a NaN always wins, as burn and
//!   PyTorch do).
//! - [`conv2d_stride1`]: a convolution (stride 1, no dilation, one group) whose input gradient
//!   is burn-flex's transposed convolution (the same gemm call, then the columns added into the
//!   image) with the scatter written as contiguous row additions. burn's scatter indexes every
//!   element through five nested loops: 15 % of a 43-class scan. The same sums in the same
//!   order, so the same gradient bit for bit; the forward pass and the bias gradient are burn's.
//!   Its weight gradient is ours too ([`conv_weight_grad`]): im2col and one gemm per image,
//!   where burn-flex convolves the input with an image-sized kernel (most of a PreAct-ResNet
//!   training step); equal to burn's up to float rounding, the same on any number of threads.
//! - [`conv2d_train`]: the same convolution for training, whose forward pass is ours as well
//!   ([`conv_forward_gemm`]: im2col and one gemm per image; burn-flex first copies the batch to
//!   NHWC on one thread), equal to burn's up to float rounding. The scan keeps burn's forward
//!   pass, so its numbers do not move.
//! - [`conv2d`] and [`conv2d_train`] on a depthwise convolution (one group per channel, as in
//!   MobileNets): burn's forward pass, and a backward pass of ours ([`depthwise`]). burn
//!   computes a grouped convolution's weight gradient with one convolution and one slice
//!   assignment per group, and its input gradient with a grouped transposed convolution; ours
//!   walks each channel's plane directly.

mod depthwise;

use std::sync::Arc;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::prelude::Tensor;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

/// The extension: operations with a kernel of ours on `flex`.
#[backend_extension(Autodiff, Flex)]
pub trait CepaKernels: burn::backend::Backend {
    /// Max pool of `x` (N x C x H x W, f32) over windows of `kh` x `kw` with stride = kernel, no
    /// padding, floor mode.
    fn max_pool_tiled(x: FloatTensor<Self>, kh: usize, kw: usize) -> FloatTensor<Self>;

    /// A convolution of stride 1, dilation 1 and one group, with a bias; `pads` are top,
    /// bottom, left, right. Its forward pass is burn's, or, where `ours` (training), ours
    /// ([`conv_forward_gemm`]).
    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self>;

    /// [`CepaKernels::conv2d_stride1`] without a bias.
    fn conv2d_stride1_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self>;

    /// A depthwise convolution (weight `C x 1 x KH x KW`, one group per channel of `x`) with a
    /// bias; `geom` is stride (rows, columns), pads (top, bottom, left, right), dilation (rows,
    /// columns). burn's forward pass, our backward pass.
    fn depthwise2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self>;

    /// [`CepaKernels::depthwise2d`] without a bias.
    fn depthwise2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self>;
}

impl CepaKernels for Flex {
    fn max_pool_tiled(x: FloatTensor<Self>, kh: usize, kw: usize) -> FloatTensor<Self> {
        pool_forward(&x, kh, kw, false).0
    }

    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self> {
        conv_forward(x, weight, Some(bias), pads, ours).1
    }

    fn conv2d_stride1_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self> {
        conv_forward(x, weight, None, pads, ours).1
    }

    fn depthwise2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self> {
        depthwise::forward(x, weight, Some(bias), geom)
    }

    fn depthwise2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self> {
        depthwise::forward(x, weight, None, geom)
    }
}

fn conv_options(pads: [usize; 4]) -> ConvOptions<2> {
    let [top, bottom, left, right] = pads;
    ConvOptions::new_with_padding([1, 1], [(top, bottom), (left, right)], [1, 1], 1)
}

impl<C: CheckpointStrategy> CepaKernels for Autodiff<Flex, C> {
    fn max_pool_tiled(x: FloatTensor<Self>, kh: usize, kw: usize) -> FloatTensor<Self> {
        match MaxPoolTiledBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let dims = four(x.primitive().layout().shape());
                let (out, at) = pool_forward(x.primitive(), kh, kw, true);
                let state = PoolState {
                    dims,
                    kernel: [kh, kw],
                    at: Arc::new(at.unwrap_or_default()),
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool_forward(x.primitive(), kh, kw, false).0),
        }
    }

    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self> {
        tracked_conv::<C>(x, weight, Some(bias), pads, ours)
    }

    fn conv2d_stride1_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        pads: [usize; 4],
        ours: bool,
    ) -> FloatTensor<Self> {
        tracked_conv::<C>(x, weight, None, pads, ours)
    }

    fn depthwise2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self> {
        depthwise::tracked::<C>(x, weight, Some(bias), geom)
    }

    fn depthwise2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geom: [usize; 8],
    ) -> FloatTensor<Self> {
        depthwise::tracked::<C>(x, weight, None, geom)
    }
}

type AdTensor<C> = FloatTensor<Autodiff<Flex, C>>;

/// An op of an input, a weight and an optional bias on the autodiff backend: `run` computes
/// its output and what its backward pass `op` keeps; untracked, only the output is kept.
fn tracked_input_weight_bias<C, Op, S>(
    op: Op,
    x: AdTensor<C>,
    weight: AdTensor<C>,
    bias: Option<AdTensor<C>>,
    run: impl FnOnce(FlexTensor, FlexTensor, Option<FlexTensor>) -> (S, FlexTensor),
) -> AdTensor<C>
where
    C: CheckpointStrategy,
    Op: Backward<Flex, 3, State = S> + Backward<Flex, 2, State = S>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
    match bias {
        Some(bias) => {
            let bp = bias.primitive().clone();
            match op
                .prepare::<C>([x.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (state, out) = run(xp, wp, Some(bp));
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(run(xp, wp, Some(bp)).1),
            }
        }
        None => match op
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (state, out) = run(xp, wp, None);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(xp, wp, None).1),
        },
    }
}

/// The stride-1 convolution on the autodiff backend: its forward pass burn's, or ours where
/// `ours` (training), and its backward pass [`ConvBackward`].
fn tracked_conv<C: CheckpointStrategy>(
    x: AdTensor<C>,
    weight: AdTensor<C>,
    bias: Option<AdTensor<C>>,
    pads: [usize; 4],
    ours: bool,
) -> AdTensor<C> {
    tracked_input_weight_bias::<C, _, _>(ConvBackward, x, weight, bias, |x, w, b| {
        conv_forward(x, w, b, pads, ours)
    })
}

/// The convolution of `x` (ours where `ours` and [`conv_forward_gemm`] applies, else burn's),
/// and what its backward pass keeps.
fn conv_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    pads: [usize; 4],
    ours: bool,
) -> (ConvState, FlexTensor) {
    let out = ours
        .then(|| conv_forward_gemm(&x, &weight, bias.as_ref(), pads))
        .flatten()
        .unwrap_or_else(|| {
            Flex::conv2d(x.clone(), weight.clone(), bias.clone(), conv_options(pads))
        });
    let state = ConvState {
        x,
        weight,
        bias,
        pads,
    };
    (state, out)
}

/// What the convolution's backward pass keeps: its inputs (burn's own convolution keeps the same).
#[derive(Clone, Debug)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    pads: [usize; 4],
}

#[derive(Debug)]
struct ConvBackward;

/// The backward passes of a convolution-like op `$op` with state `$state` whose gradients
/// `$grads(grad, state, want)` gives as `[input, weight, bias]`: with a bias (three parents)
/// and without (two).
macro_rules! input_weight_bias_backward {
    ($op:ty, $state:ty, $grads:path) => {
        impl Backward<Flex, 3> for $op {
            type State = $state;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx, nw, nb] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                let want = [nx.is_some(), nw.is_some(), nb.is_some()];
                let [gx, gw, gb] = $grads(grad, &ops.state, want);
                let pairs = [(nx, gx), (nw, gw), (nb, gb)];
                $crate::kernels::register(grads, pairs.map(|(n, g)| (n.map(|n| n.id), g)));
            }
        }

        impl Backward<Flex, 2> for $op {
            type State = $state;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx, nw] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                let [gx, gw, _] = $grads(grad, &ops.state, [nx.is_some(), nw.is_some(), false]);
                let pairs = [(nx, gx), (nw, gw)];
                $crate::kernels::register(grads, pairs.map(|(n, g)| (n.map(|n| n.id), g)));
            }
        }
    };
}
use input_weight_bias_backward;

input_weight_bias_backward!(ConvBackward, ConvState, conv_grads);

/// Give each parent its gradient, where the parent is tracked and the gradient computed.
fn register<const N: usize>(
    grads: &mut Gradients,
    pairs: [(Option<NodeId>, Option<FlexTensor>); N],
) {
    for (id, g) in pairs {
        if let (Some(id), Some(g)) = (id, g) {
            grads.register::<Flex>(id, g);
        }
    }
}

/// The gradients of a convolution's input, weight and bias, each where `want` says: the input's
/// from [`conv_input_grad`], the weight's from [`conv_weight_grad`], the bias's from burn.
fn conv_grads(grad: FlexTensor, s: &ConvState, want: [bool; 3]) -> [Option<FlexTensor>; 3] {
    let opts = conv_options(s.pads);
    let gb = match (&s.bias, want[2]) {
        (Some(bias), true) => Some(Flex::conv2d_bias_backward(
            s.x.clone(),
            bias.clone(),
            grad.clone(),
        )),
        _ => None,
    };
    let gw = want[1].then(|| {
        conv_weight_grad(&grad, &s.x, four(s.weight.layout().shape()), s.pads).unwrap_or_else(
            || {
                Flex::conv2d_weight_backward(
                    s.x.clone(),
                    s.weight.clone(),
                    grad.clone(),
                    opts.clone(),
                )
            },
        )
    });
    let gx = want[0].then(|| {
        let dims = four(s.x.layout().shape());
        conv_input_grad(&grad, &s.weight, dims, s.pads)
            .unwrap_or_else(|| Flex::conv2d_x_backward(s.x.clone(), s.weight.clone(), grad, opts))
    });
    [gx, gw, gb]
}

fn on_flex(x: &Tensor<4>) -> bool {
    matches!(
        x.device().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    ) && x.dtype() == DType::F32
}

/// `conv2d(x, w, b)` with stride 1, dilation 1 and one group (`pads`: (top, bottom), (left,
/// right)) through [`CepaKernels::conv2d_stride1`]: `None` (use burn's convolution) unless `x`
/// is on the `flex` backend with autodiff and f32 values. Without autodiff there is no
/// gradient to compute, and the forward pass is burn's either way.
pub(crate) fn conv2d_stride1(
    x: &Tensor<4>,
    w: &Tensor<4>,
    b: Option<&Tensor<1>>,
    pads: [(usize, usize); 2],
) -> Option<Tensor<4>> {
    (on_flex(x) && x.device().is_autodiff())
        .then(|| extension_conv(x.clone(), w.clone(), b.cloned(), pads, false))
}

/// [`CepaKernels::conv2d_stride1`] on dispatch tensors, its forward pass ours where `ours`.
fn extension_conv(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    pads: [(usize, usize); 2],
    ours: bool,
) -> Tensor<4> {
    let pads = [pads[0].0, pads[0].1, pads[1].0, pads[1].1];
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    let out = match b {
        Some(b) => <Dispatch as CepaKernels>::conv2d_stride1(x, w, b.into_dispatch(), pads, ours),
        None => <Dispatch as CepaKernels>::conv2d_stride1_nobias(x, w, pads, ours),
    };
    Tensor::from_dispatch(out)
}

/// Whether `opts` are those of [`CepaKernels::conv2d_stride1`]: stride 1, dilation 1, one group.
fn stride1(opts: &ConvOptions<2>) -> bool {
    opts.stride == [1, 1] && opts.dilation == [1, 1] && opts.groups == 1
}

/// `conv2d(x, w, b, opts)` for training: through [`CepaKernels::conv2d_stride1`] with our
/// forward pass where stride 1 applies and `x` is on `flex` with autodiff and f32 values,
/// burn's otherwise. Its forward pass differs from burn's in the last bits; the scan's
/// interpreter keeps [`conv2d`].
pub(crate) fn conv2d_train(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    opts: ConvOptions<2>,
) -> Tensor<4> {
    if stride1(&opts) && on_flex(&x) && x.device().is_autodiff() {
        return extension_conv(x, w, b, opts.padding, true);
    }
    if let Some(geom) = depthwise::applies(&x, &w, &opts) {
        return depthwise::extension(x, w, b, geom);
    }
    burn::tensor::module::conv2d(x, w, b, opts)
}

/// `conv2d(x, w, b, opts)`: through [`conv2d_stride1`] where it applies, burn's otherwise.
pub(crate) fn conv2d(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    opts: ConvOptions<2>,
) -> Tensor<4> {
    if stride1(&opts)
        && let Some(out) = conv2d_stride1(&x, &w, b.as_ref(), opts.padding)
    {
        return out;
    }
    if let Some(geom) = depthwise::applies(&x, &w, &opts) {
        return depthwise::extension(x, w, b, geom);
    }
    burn::tensor::module::conv2d(x, w, b, opts)
}

/// The tiled max pool of `x` on the CPU, differentiable: `None` (use burn's pool) unless `x` is
/// on the `flex` backend with f32 values and the window has at most 256 cells.
pub(crate) fn max_pool_tiled(x: &Tensor<4>, kernel: [usize; 2]) -> Option<Tensor<4>> {
    let [kh, kw] = kernel;
    let [_, _, h, w] = x.dims();
    if !on_flex(x) || kh * kw > 256 || kh * kw == 0 || h < kh || w < kw {
        return None;
    }
    let out = <Dispatch as CepaKernels>::max_pool_tiled(x.clone().into_dispatch(), kh, kw);
    Some(Tensor::from_dispatch(out))
}

/// What the backward pass keeps: the input's dims and, per output, the offset of its maximum in
/// its window (`ky * kw + kx`).
#[derive(Clone, Debug)]
struct PoolState {
    dims: [usize; 4],
    kernel: [usize; 2],
    at: Arc<Vec<u8>>,
}

#[derive(Debug)]
struct MaxPoolTiledBackward;

impl Backward<Flex, 1> for MaxPoolTiledBackward {
    type State = PoolState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            grads.register::<Flex>(node.id, pool_backward(&grad, &ops.state));
        }
    }
}

fn four(shape: &[usize]) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Planes (one image's channel) per parallel task.
const GROUP: usize = 32;

/// Forward: the pooled values and, when `keep` is set, each output's offset in its window.
///
/// A window's cells are taken in row-major order: the first sets the maximum, a later one
/// replaces it when larger or NaN. That choice is associative, so it is made along each row's
/// `kw` cells first and then down the window's `kh` row maxima, in branch-free selects over long
/// contiguous runs (when the image's width is a multiple of `kw`, a plane's rows are one run).
fn pool_forward(x: &FlexTensor, kh: usize, kw: usize, keep: bool) -> (FlexTensor, Option<Vec<u8>>) {
    use rayon::prelude::*;
    let x = x.to_contiguous();
    let [n, c, h, w] = four(x.layout().shape());
    let (oh, ow) = (h / kh, w / kw);
    let data: &[f32] = x.storage();
    let (plane_in, plane_out) = (h * w, oh * ow);
    let mut out = vec![0f32; n * c * plane_out];
    let mut at = vec![0u8; if keep { n * c * plane_out } else { 0 }];
    let group = |g: usize, out: &mut [f32], mut at: Option<&mut [u8]>| {
        // Per used row, its `ow` row maxima and their columns in the window.
        let mut hv = vec![0f32; oh * kh * ow];
        let mut hk = vec![0u8; oh * kh * ow];
        // The window cells of one output row when `at` is not kept.
        let mut cell = vec![0u8; ow];
        for (q, o) in out.chunks_exact_mut(plane_out).enumerate() {
            let src = &data[(g * GROUP + q) * plane_in..][..plane_in];
            if w == ow * kw {
                row_max(&src[..oh * kh * w], kw, &mut hv, &mut hk);
            } else {
                for r in 0..oh * kh {
                    let (v, k) = (&mut hv[r * ow..][..ow], &mut hk[r * ow..][..ow]);
                    row_max(&src[r * w..][..ow * kw], kw, v, k);
                }
            }
            for oy in 0..oh {
                let best = &mut o[oy * ow..][..ow];
                let first = oy * kh * ow;
                best.copy_from_slice(&hv[first..][..ow]);
                let cells: &mut [u8] = match at.as_deref_mut() {
                    Some(a) => &mut a[q * plane_out + oy * ow..][..ow],
                    None => &mut cell,
                };
                cells.copy_from_slice(&hk[first..][..ow]);
                for ky in 1..kh {
                    let r = first + ky * ow;
                    let base = (ky * kw) as u8;
                    for (((b, k), &v), &hx) in best
                        .iter_mut()
                        .zip(cells.iter_mut())
                        .zip(&hv[r..r + ow])
                        .zip(&hk[r..r + ow])
                    {
                        let take = v > *b || v.is_nan();
                        *b = if take { v } else { *b };
                        *k = if take { base + hx } else { *k };
                    }
                }
            }
        }
    };
    if plane_out > 0 {
        let chunk = GROUP * plane_out;
        if keep {
            out.par_chunks_mut(chunk)
                .zip(at.par_chunks_mut(chunk))
                .enumerate()
                .for_each(|(g, (o, a))| group(g, o, Some(a)));
        } else {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(g, o)| group(g, o, None));
        }
    }
    let t = FlexTensor::from_data(TensorData::new(out, [n, c, oh, ow]));
    (t, keep.then_some(at))
}

/// The maxima of consecutive groups of `kw` values of `row` (first wins, NaN replaces), and
/// their positions in the group.
fn row_max(row: &[f32], kw: usize, best: &mut [f32], at: &mut [u8]) {
    if kw == 2 {
        for ((b, k), p) in best.iter_mut().zip(at.iter_mut()).zip(row.chunks_exact(2)) {
            let take = p[1] > p[0] || p[1].is_nan();
            *b = if take { p[1] } else { p[0] };
            *k = u8::from(take);
        }
        return;
    }
    for ((b, k), p) in best.iter_mut().zip(at.iter_mut()).zip(row.chunks_exact(kw)) {
        let (mut m, mut j) = (p[0], 0u8);
        for (i, &v) in p.iter().enumerate().skip(1) {
            if v > m || v.is_nan() {
                (m, j) = (v, i as u8);
            }
        }
        (*b, *k) = (m, j);
    }
}

/// Backward: each output's gradient to its window's maximum, zero elsewhere (the windows do not
/// overlap). Written as `0 + g`, as burn's scatter adds it, so a gradient of -0 comes back +0.
fn pool_backward(grad: &FlexTensor, state: &PoolState) -> FlexTensor {
    use rayon::prelude::*;
    let [n, c, h, w] = state.dims;
    let [kh, kw] = state.kernel;
    let (oh, ow) = (h / kh, w / kw);
    let grad = grad.to_contiguous();
    let g: &[f32] = grad.storage();
    let (plane_in, plane_out) = (h * w, oh * ow);
    // A window cell's offset from its window's corner.
    let offset: Vec<usize> = (0..kh * kw).map(|k| (k / kw) * w + k % kw).collect();
    let mut dx = vec![0f32; n * c * plane_in];
    if plane_out > 0 {
        dx.par_chunks_mut(GROUP * plane_in)
            .enumerate()
            .for_each(|(gi, dst)| {
                for (q, dst) in dst.chunks_exact_mut(plane_in).enumerate() {
                    let p = gi * GROUP + q;
                    let g = &g[p * plane_out..][..plane_out];
                    let at = &state.at[p * plane_out..][..plane_out];
                    for oy in 0..oh {
                        let corner = oy * kh * w;
                        for ox in 0..ow {
                            let i = oy * ow + ox;
                            dst[corner + ox * kw + offset[at[i] as usize]] = 0.0 + g[i];
                        }
                    }
                }
            });
    }
    FlexTensor::from_data(TensorData::new(dx, [n, c, h, w]))
}

/// The input gradient of a convolution of stride 1, dilation 1 and one group, as burn-flex's
/// `conv_transpose2d` computes it (`None` where it would tile its columns, above 8 MiB an image,
/// or for other dtypes): per image one gemm `columns = W^T grad` of the same call, then each
/// column added into the image, kernel cell after kernel cell in the same order, so every sum
/// is the same. The additions run along contiguous rows instead of element by element.
fn conv_input_grad(
    grad: &FlexTensor,
    weight: &FlexTensor,
    x_dims: [usize; 4],
    pads: [usize; 4],
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    // burn-flex's limits (conv_transpose.rs): the untiled columns, and gemm's own threads only
    // for large products.
    const COLUMNS_BYTES: usize = 8 * 1024 * 1024;
    const GEMM_PARALLEL_WORK: usize = 192 * 192 * 192;
    let [grad, weight] = contiguous_f32([grad, weight])?;
    let [n, co, gh, gw] = four(grad.layout().shape());
    let [wco, ci, kh, kw] = four(weight.layout().shape());
    let [xn, xc, h, wd] = x_dims;
    let (ks, spatial) = (kh * kw, gh * gw);
    let col_ch = ci * ks;
    if wco != co || xc != ci || xn != n || col_ch * spatial * 4 > COLUMNS_BYTES {
        return None;
    }
    let [top, _, left, _] = pads;
    let g: &[f32] = grad.storage();
    let wt: &[f32] = weight.storage();
    let plane = h * wd;
    let parallelism = if col_ch * spatial * co >= GEMM_PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let image = |b: usize, out: &mut [f32], columns: &mut Vec<f32>| {
        columns.resize(col_ch * spatial, 0.0);
        let src = &g[b * co * spatial..][..co * spatial];
        // columns (col_ch x spatial) = W^T (W: co x col_ch, read transposed) * grad_b.
        matmul(
            Mat::new(columns, 1, spatial),
            Mat::new(wt, col_ch, 1),
            Mat::new(src, 1, spatial),
            [col_ch, spatial, co],
            false,
            parallelism,
        );
        for c in 0..ci {
            let dst = &mut out[c * plane..][..plane];
            for ky in 0..kh {
                let (ih0, ih1) = (top.saturating_sub(ky), gh.min((h + top).saturating_sub(ky)));
                for kx in 0..kw {
                    let (iw0, iw1) = (
                        left.saturating_sub(kx),
                        gw.min((wd + left).saturating_sub(kx)),
                    );
                    if ih0 >= ih1 || iw0 >= iw1 {
                        continue;
                    }
                    let col = &columns[(c * ks + ky * kw + kx) * spatial..][..spatial];
                    let len = iw1 - iw0;
                    for ih in ih0..ih1 {
                        let at = (ih + ky - top) * wd + iw0 + kx - left;
                        for (d, v) in dst[at..at + len]
                            .iter_mut()
                            .zip(&col[ih * gw + iw0..][..len])
                        {
                            *d += *v;
                        }
                    }
                }
            }
        }
    };
    let mut dx = vec![0f32; n * ci * plane];
    if plane > 0 && ci > 0 {
        dx.par_chunks_mut(ci * plane)
            .enumerate()
            .for_each_init(Vec::new, |columns, (b, out)| image(b, out, columns));
    }
    Some(FlexTensor::from_data(TensorData::new(dx, [n, ci, h, wd])))
}

/// The tensors, contiguous, where all hold f32 values (our kernels' only dtype); `None` else.
fn contiguous_f32<const N: usize>(tensors: [&FlexTensor; N]) -> Option<[FlexTensor; N]> {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32)
        .then(|| tensors.map(FlexTensor::to_contiguous))
}

/// A matrix in a slice: element (row `i`, column `j`) at `i * rs + j * cs`.
struct Mat<T> {
    data: T,
    cs: usize,
    rs: usize,
}

impl<T> Mat<T> {
    fn new(data: T, cs: usize, rs: usize) -> Self {
        Mat { data, cs, rs }
    }

    /// Whether a `rows` x `cols` matrix fits in `len` values.
    fn fits(&self, rows: usize, cols: usize, len: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < len
    }
}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)`, or `dst += ...` where `accumulate`, by the gemm
/// crate (burn-flex's); `mnk` = [m, n, k]. Panics, before gemm reads or writes anything, when a
/// slice is too short for its matrix.
fn matmul(
    dst: Mat<&mut [f32]>,
    lhs: Mat<&[f32]>,
    rhs: Mat<&[f32]>,
    mnk: [usize; 3],
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let [m, n, k] = mnk;
    assert!(
        dst.fits(m, n, dst.data.len())
            && lhs.fits(m, k, lhs.data.len())
            && rhs.fits(k, n, rhs.data.len()),
        "matmul: a slice is too short for {m} x {n} x {k}"
    );
    // SAFETY: every index gemm forms, row * rs + column * cs within the matrices' sizes, lies
    // in its slice (checked above); `dst` is a unique borrow, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The sizes an image's columns (im2col) are taken at: a stride-1 convolution of a `ci` x `h` x
/// `wd` image by a `kh` x `kw` kernel, padded `top` and `left` first, giving `gh` x `gw` outputs.
#[derive(Clone, Copy)]
struct ColumnShape {
    ci: usize,
    h: usize,
    wd: usize,
    kh: usize,
    kw: usize,
    top: usize,
    left: usize,
    gh: usize,
    gw: usize,
}

impl ColumnShape {
    /// The shape for an image `[ci, h, wd]` and a kernel `kh` x `kw` padded by `pads` (top,
    /// bottom, left, right): `None` where the kernel is empty or larger than the padded image,
    /// or where an image's columns would pass 8 MiB (burn-flex's limit for its own columns).
    fn new(image: [usize; 3], kh: usize, kw: usize, pads: [usize; 4]) -> Option<ColumnShape> {
        const COLUMNS_BYTES: usize = 8 * 1024 * 1024;
        let [ci, h, wd] = image;
        let [top, bottom, left, right] = pads;
        if kh == 0 || kw == 0 || h + top + bottom < kh || wd + left + right < kw {
            return None;
        }
        let shape = ColumnShape {
            ci,
            h,
            wd,
            kh,
            kw,
            top,
            left,
            gh: h + top + bottom + 1 - kh,
            gw: wd + left + right + 1 - kw,
        };
        (shape.rows() * shape.gh * shape.gw * 4 <= COLUMNS_BYTES).then_some(shape)
    }

    /// Rows of the columns: one per input channel and kernel cell.
    fn rows(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// Write the columns of `img` (`ci * h * wd` values) into `columns`: one row of `gh * gw`
    /// per input channel and kernel cell (channel-major, then kernel row, then kernel column,
    /// the order of a weight's `ci x kh x kw` values), zero where the kernel reaches over the
    /// border.
    fn columns(&self, img: &[f32], columns: &mut [f32]) {
        let ColumnShape {
            ci,
            h,
            wd,
            kh,
            kw,
            top,
            left,
            gh,
            gw,
        } = *self;
        let (plane, spatial, ks) = (h * wd, gh * gw, kh * kw);
        for c in 0..ci {
            let src = &img[c * plane..][..plane];
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut columns[(c * ks + ky * kw + kx) * spatial..][..spatial];
                    // Output column ox reads input column ox + kx - left, inside the image for
                    // ox in ox0..ox1.
                    let ox0 = left.saturating_sub(kx).min(gw);
                    let ox1 = gw.min((wd + left).saturating_sub(kx)).max(ox0);
                    for oy in 0..gh {
                        let dst = &mut row[oy * gw..][..gw];
                        let iy = oy + ky;
                        if iy < top || iy - top >= h || ox0 == ox1 {
                            dst.fill(0.0);
                            continue;
                        }
                        dst[..ox0].fill(0.0);
                        dst[ox1..].fill(0.0);
                        let at = (iy - top) * wd + ox0 + kx - left;
                        dst[ox0..ox1].copy_from_slice(&src[at..][..ox1 - ox0]);
                    }
                }
            }
        }
    }
}

/// The forward pass of a convolution of stride 1, dilation 1 and one group, for training
/// (`None` for other dtypes, or where an image's columns would pass 8 MiB): per image its
/// columns ([`ColumnShape::columns`]) and one gemm `out_b = W columns_b`, then the bias; the
/// images in parallel. burn-flex's own convolution first copies the whole batch to NHWC on one
/// thread and was the largest part of a PreAct-ResNet training step once the weight gradient
/// was ours (BENCHMARKS.md, "Training: the convolution's weight gradient and forward pass").
/// Its sums run in another order than burn's: equal up to float rounding.
fn conv_forward_gemm(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    pads: [usize; 4],
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    if bias.is_some_and(|b| b.dtype() != DType::F32) {
        return None;
    }
    let [x, weight] = contiguous_f32([x, weight])?;
    let [n, ci, h, wd] = four(x.layout().shape());
    let [co, wci, kh, kw] = four(weight.layout().shape());
    let shape = ColumnShape::new([ci, h, wd], kh, kw, pads).filter(|_| wci == ci)?;
    let (gh, gw) = (shape.gh, shape.gw);
    let (spatial, col_ch) = (gh * gw, shape.rows());
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_contiguous().storage::<f32>().to_vec());
    if bias.as_ref().is_some_and(|b| b.len() != co) {
        return None;
    }
    let xs: &[f32] = x.storage();
    let wt: &[f32] = weight.storage();
    let plane = h * wd;
    let mut out = vec![0f32; n * co * spatial];
    if spatial > 0 && co > 0 {
        out.par_chunks_mut(co * spatial).enumerate().for_each_init(
            Vec::new,
            |columns: &mut Vec<f32>, (b, dst)| {
                columns.resize(col_ch * spatial, 0.0);
                shape.columns(&xs[b * ci * plane..][..ci * plane], columns);
                // out_b (co x spatial) = W (co x col_ch) * columns (col_ch x spatial).
                matmul(
                    Mat::new(dst, 1, spatial),
                    Mat::new(wt, 1, col_ch),
                    Mat::new(columns, 1, spatial),
                    [co, spatial, col_ch],
                    false,
                    gemm::Parallelism::None,
                );
                if let Some(bias) = &bias {
                    for (row, &v) in dst.chunks_mut(spatial).zip(bias) {
                        for o in row {
                            *o += v;
                        }
                    }
                }
            },
        );
    }
    Some(FlexTensor::from_data(TensorData::new(out, [n, co, gh, gw])))
}

/// The weight gradient of a convolution of stride 1, dilation 1 and one group (`None` for other
/// dtypes, or where an image's columns would pass 8 MiB): per image its columns (im2col: one
/// row per input channel and kernel cell, zero where the kernel reaches over the border) and
/// one gemm `dW += grad_b columns_b^T`. burn-flex computes it as a convolution of the input,
/// batch and channels swapped, with the output gradient as a kernel as large as the image:
/// the largest part of a training step of the PreAct-ResNet (BENCHMARKS.md, "Training: the
/// convolution's weight gradient and forward pass"). The images are cut into a fixed number of consecutive
/// groups, each summed in order on some thread, and the groups' sums added in group order, so
/// the result does not depend on the number of threads or on how they were scheduled. The sums
/// run in another order than burn's, so the values differ from burn's in the last bits.
fn conv_weight_grad(
    grad: &FlexTensor,
    x: &FlexTensor,
    w_dims: [usize; 4],
    pads: [usize; 4],
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    const GROUPS: usize = 16;
    let [grad, x] = contiguous_f32([grad, x])?;
    let [n, co, gh, gw] = four(grad.layout().shape());
    let [xn, ci, h, wd] = four(x.layout().shape());
    let [wco, wci, kh, kw] = w_dims;
    let shape = ColumnShape::new([ci, h, wd], kh, kw, pads)
        .filter(|s| wco == co && wci == ci && xn == n && (s.gh, s.gw) == (gh, gw))?;
    let (spatial, col_ch) = (gh * gw, shape.rows());
    let g: &[f32] = grad.storage();
    let xs: &[f32] = x.storage();
    let plane = h * wd;
    let groups = n.clamp(1, GROUPS);
    let per = n.div_ceil(groups);
    let sums: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        // One columns buffer per rayon job, not per group: `ColumnShape::columns` overwrites
        // every value, so a reused buffer needs no zeroing. Each group keeps its own sum.
        .map_init(Vec::new, |columns: &mut Vec<f32>, k| {
            let mut acc = vec![0f32; co * col_ch];
            columns.resize(col_ch * spatial, 0.0);
            for b in k * per..((k + 1) * per).min(n) {
                shape.columns(&xs[b * ci * plane..][..ci * plane], columns);
                let src = &g[b * co * spatial..][..co * spatial];
                // acc (co x col_ch) += grad_b (co x spatial) * columns^T (columns: col_ch x
                // spatial, read transposed).
                matmul(
                    Mat::new(&mut acc, 1, col_ch),
                    Mat::new(src, 1, spatial),
                    Mat::new(&columns[..], spatial, 1),
                    [co, col_ch, spatial],
                    true,
                    gemm::Parallelism::None,
                );
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; co * col_ch];
    for sum in &sums {
        for (d, v) in dw.iter_mut().zip(sum) {
            *d += *v;
        }
    }
    Some(FlexTensor::from_data(TensorData::new(dw, [co, ci, kh, kw])))
}

#[cfg(test)]
mod tests {
    use burn::prelude::Device;
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;

    use super::*;

    fn input(dims: [usize; 4], seed: u32, device: &Device) -> Tensor<4> {
        // Values with ties (a ReLU's zeros, repeated levels) and one NaN.
        let len: usize = dims.iter().product();
        let mut v: Vec<f32> = (0..len as u32)
            .map(|i| {
                let r = i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 20;
                ((r % 7) as f32 - 3.0).max(0.0) * 0.5
            })
            .collect();
        v[len / 3] = f32::NAN;
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    fn bits(t: Tensor<4>) -> Vec<u32> {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn tiled_max_pool_equals_burns_values_and_gradients_bit_for_bit() {
        let device = Device::flex().autodiff();
        // 2x2 on an even image, 3x2 and 2x3 on images that leave a remainder row or column.
        for (dims, kernel) in [
            ([2, 3, 8, 6], [2, 2]),
            ([1, 2, 7, 5], [3, 2]),
            ([2, 2, 6, 7], [2, 3]),
        ] {
            let x = input(dims, 7, &device);
            let ours_in = x.clone().require_grad();
            let ours = max_pool_tiled(&ours_in, kernel).expect("flex f32 takes our kernel");
            let theirs_in = x.require_grad();
            let theirs = max_pool2d(
                theirs_in.clone(),
                MaxPoolOptions::new(kernel).with_stride(kernel),
            );
            assert_eq!(bits(ours.clone()), bits(theirs.clone()));
            // A weighted sum, so every output's gradient differs (and some are negative zero).
            let [_, _, oh, ow] = ours.dims();
            let weights: Vec<f32> = (0..dims[0] * dims[1] * oh * ow)
                .map(|i| if i % 5 == 0 { -0.0 } else { i as f32 - 4.5 })
                .collect();
            let wt = Tensor::<4>::from_data(
                TensorData::new(weights, [dims[0], dims[1], oh, ow]),
                &device,
            );
            let g_ours = (ours * wt.clone()).sum().backward();
            let g_theirs = (theirs * wt).sum().backward();
            let a = bits(ours_in.grad(&g_ours).unwrap());
            let b = bits(theirs_in.grad(&g_theirs).unwrap());
            assert_eq!(a, b, "gradients for {dims:?} / {kernel:?}");
        }
    }

    fn values(dims: [usize; 4], seed: u32) -> Vec<f32> {
        let len: usize = dims.iter().product();
        (0..len as u32)
            .map(|i| {
                let r = i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16;
                (r % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// (input, weight, pads): the scan's 5x5 first layer, a 3x3 "same" layer, asymmetric pads.
    type Case = ([usize; 4], [usize; 4], [(usize, usize); 2]);
    const CASES: [Case; 3] = [
        ([3, 3, 12, 11], [4, 3, 5, 5], [(0, 0), (0, 0)]),
        ([2, 4, 7, 9], [5, 4, 3, 3], [(1, 1), (1, 1)]),
        ([2, 2, 6, 5], [3, 2, 3, 2], [(2, 0), (0, 1)]),
    ];

    /// What a convolution gives on a case, on flex with autodiff, input, weight and bias all
    /// tracked (as training has them): its output values, and the bits of the gradients of
    /// `sum(y * wt)` for the input, the weight and (where `with_bias`) the bias.
    type Run = (Vec<f32>, Vec<u32>, Vec<u32>, Option<Vec<u32>>);
    fn run_conv(
        (xd, wd, _): Case,
        with_bias: bool,
        conv: impl Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>,
    ) -> Run {
        let device = Device::flex().autodiff();
        let tensor = |d: [usize; 4], seed| {
            Tensor::<4>::from_data(TensorData::new(values(d, seed), d), &device).require_grad()
        };
        let (x, w) = (tensor(xd, 1), tensor(wd, 2));
        let b = Tensor::<1>::from_data(
            TensorData::new(values([wd[0], 1, 1, 1], 3), [wd[0]]),
            &device,
        )
        .require_grad();
        let y = conv(x.clone(), w.clone(), with_bias.then(|| b.clone()));
        let g = (y.clone() * tensor(y.dims(), 4)).sum().backward();
        let floats = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        (
            floats(y.flatten(0, 3)),
            bits(x.grad(&g).unwrap()),
            bits(w.grad(&g).unwrap()),
            with_bias.then(|| {
                floats(b.grad(&g).unwrap())
                    .into_iter()
                    .map(f32::to_bits)
                    .collect()
            }),
        )
    }

    /// The largest difference between `ours` and `theirs`, against `theirs`' largest value:
    /// within float rounding of sums in another order.
    fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            ours.len() == theirs.len() && scale > 0.0 && worst <= 1e-5 * scale,
            "{what}: {worst} of {scale}"
        );
    }

    fn opts((_, _, pads): Case) -> ConvOptions<2> {
        ConvOptions::new_with_padding([1, 1], pads, [1, 1], 1)
    }

    #[test]
    fn stride1_convolution_equals_burns_values_and_gradients() {
        for case in CASES {
            for with_bias in [true, false] {
                let ours = run_conv(case, with_bias, |x, w, b| {
                    conv2d_stride1(&x, &w, b.as_ref(), case.2).expect("flex autodiff")
                });
                let theirs = run_conv(case, with_bias, |x, w, b| {
                    burn::tensor::module::conv2d(x, w, b, opts(case))
                });
                let what = format!("{case:?}, bias {with_bias}");
                let output = |r: &Run| r.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(output(&ours), output(&theirs), "output, {what}");
                assert_eq!(ours.1, theirs.1, "input gradient, {what}");
                // The weight gradient's sums run in another order than burn's
                // (`conv_weight_grad`): equal to float rounding.
                let floats = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
                assert_close(&floats(&ours.2), &floats(&theirs.2), &what);
                assert_eq!(ours.3, theirs.3, "bias gradient, {what}");
            }
        }
    }

    /// The training convolution: its forward pass equal to burn's up to float rounding, its
    /// gradients those of [`conv2d_stride1`] bit for bit (the gradient of `sum(y * wt)` does
    /// not depend on `y`), and off autodiff burn's convolution itself.
    #[test]
    fn training_convolution_equals_burns_forward_to_rounding_and_shares_the_gradients() {
        for case in CASES {
            for with_bias in [true, false] {
                let ours = run_conv(case, with_bias, |x, w, b| conv2d_train(x, w, b, opts(case)));
                let theirs = run_conv(case, with_bias, |x, w, b| {
                    conv2d_stride1(&x, &w, b.as_ref(), case.2).expect("flex autodiff")
                });
                let what = format!("{case:?}, bias {with_bias}");
                assert_close(&ours.0, &theirs.0, &format!("output, {what}"));
                assert_eq!(ours.1, theirs.1, "input gradient, {what}");
                assert_eq!(ours.2, theirs.2, "weight gradient, {what}");
                assert_eq!(ours.3, theirs.3, "bias gradient, {what}");
                let plain = Device::flex();
                let (xd, wd, _) = case;
                let (x, w) = (
                    Tensor::<4>::from_data(TensorData::new(values(xd, 1), xd), &plain),
                    Tensor::<4>::from_data(TensorData::new(values(wd, 2), wd), &plain),
                );
                assert_eq!(
                    bits(conv2d_train(x.clone(), w.clone(), None, opts(case))),
                    bits(burn::tensor::module::conv2d(x, w, None, opts(case))),
                    "off autodiff, {what}"
                );
            }
        }
    }

    #[test]
    fn weight_gradient_is_the_same_on_any_number_of_threads_and_equals_burns() {
        // 20 images: more than the 16 groups, so groups hold 2 images and the last ones none.
        let (xd, wd, pads) = ([20, 3, 9, 8], [4, 3, 3, 3], [1, 0, 2, 1]);
        let x = FlexTensor::from_data(TensorData::new(values(xd, 5), xd));
        let go = [20, 4, 9 + 1 - 3 + 1, 8 + 3 - 3 + 1];
        let g = FlexTensor::from_data(TensorData::new(values(go, 6), go));
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let dw = pool.install(|| conv_weight_grad(&g, &x, wd, pads).expect("stride 1, f32"));
            dw.into_data().try_to_vec::<f32>().unwrap()
        };
        let one = on(1);
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            on(3).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let w = FlexTensor::from_data(TensorData::new(values(wd, 7), wd));
        let theirs = Flex::conv2d_weight_backward(x.clone(), w, g.clone(), conv_options(pads))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_close(&one, &theirs, "weight gradient");
        // A shape it does not handle (the gradient's size is not stride 1's) falls back.
        assert!(conv_weight_grad(&g, &x, [4, 3, 2, 2], pads).is_none());
    }

    #[test]
    fn stride1_convolution_is_burns_off_autodiff() {
        let x = Tensor::<4>::zeros([1, 1, 4, 4], &Device::flex());
        let w = Tensor::<4>::zeros([1, 1, 3, 3], &Device::flex());
        assert!(conv2d_stride1(&x, &w, None, [(0, 0), (0, 0)]).is_none());
    }

    #[test]
    fn tiled_max_pool_without_autodiff_equals_burns() {
        let device = Device::flex();
        let x = input([2, 2, 6, 6], 3, &device);
        let ours = max_pool_tiled(&x, [2, 2]).unwrap();
        let theirs = max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        assert_eq!(bits(ours), bits(theirs));
    }
}
