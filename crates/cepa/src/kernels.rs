//! CPU kernels of our own where burn's are slow on the scan's hot path, plugged in as a burn
//! backend extension (on the `flex` backend, with and without autodiff; other devices keep
//! burn's operations).
//!
//! - [`max_pool_tiled`]: a max pool whose windows tile the image (stride = kernel, no padding).
//!   burn-flex computes every max pool with its general 3-D kernel, which re-derives each
//!   window's bounds per output element and writes 64-bit indices: 18 % of a 43-class CEPA scan
//!   (`perf`, BENCHMARKS.md "The tiled max pool"). This one walks the window rows directly, keeps
//!   one byte per output for the backward pass, and gives the same values and the same gradients
//!   (the first maximum of a window in row-major order wins, a NaN always wins, as burn and
//!   PyTorch do).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::prelude::Tensor;
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

/// The extension: operations with a kernel of ours on `flex`.
#[backend_extension(Autodiff, Flex)]
pub trait CepaKernels: burn::backend::Backend {
    /// Max pool of `x` (N x C x H x W, f32) over windows of `kh` x `kw` with stride = kernel, no
    /// padding, floor mode.
    fn max_pool_tiled(x: FloatTensor<Self>, kh: usize, kw: usize) -> FloatTensor<Self>;
}

impl CepaKernels for Flex {
    fn max_pool_tiled(x: FloatTensor<Self>, kh: usize, kw: usize) -> FloatTensor<Self> {
        pool_forward(&x, kh, kw, false).0
    }
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
}

/// The tiled max pool of `x` on the CPU, differentiable: `None` (use burn's pool) unless `x` is
/// on the `flex` backend with f32 values and the window has at most 256 cells.
pub(crate) fn max_pool_tiled(x: &Tensor<4>, kernel: [usize; 2]) -> Option<Tensor<4>> {
    let [kh, kw] = kernel;
    let [_, _, h, w] = x.dims();
    let on_flex = matches!(
        x.device().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    );
    if !on_flex || x.dtype() != DType::F32 || kh * kw > 256 || kh * kw == 0 || h < kh || w < kw {
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

    #[test]
    fn tiled_max_pool_without_autodiff_equals_burns() {
        let device = Device::flex();
        let x = input([2, 2, 6, 6], 3, &device);
        let ours = max_pool_tiled(&x, [2, 2]).unwrap();
        let theirs = max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        assert_eq!(bits(ours), bits(theirs));
    }
}
