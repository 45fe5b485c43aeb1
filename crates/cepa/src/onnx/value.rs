//! Values flowing through the interpreter: float tensors of any rank on the device, and host
//! tensors for shape arithmetic and constants.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::onnx::host::{HostData, HostTensor};

/// Highest tensor rank the interpreter handles.
pub const MAX_RANK: usize = 6;

/// A float tensor on the device whose rank is known only at run time.
#[derive(Clone, Debug)]
pub enum FTensor {
    R1(Tensor<1>),
    R2(Tensor<2>),
    R3(Tensor<3>),
    R4(Tensor<4>),
    R5(Tensor<5>),
    R6(Tensor<6>),
}

/// Evaluate an expression for whichever rank the tensor has, keeping the rank.
#[macro_export]
#[doc(hidden)]
macro_rules! map_rank {
    ($t:expr, $x:ident => $e:expr) => {
        match $t {
            $crate::onnx::FTensor::R1($x) => $crate::onnx::FTensor::R1($e),
            $crate::onnx::FTensor::R2($x) => $crate::onnx::FTensor::R2($e),
            $crate::onnx::FTensor::R3($x) => $crate::onnx::FTensor::R3($e),
            $crate::onnx::FTensor::R4($x) => $crate::onnx::FTensor::R4($e),
            $crate::onnx::FTensor::R5($x) => $crate::onnx::FTensor::R5($e),
            $crate::onnx::FTensor::R6($x) => $crate::onnx::FTensor::R6($e),
        }
    };
}

/// Evaluate an expression for whichever rank the tensor has, returning its value as is.
#[macro_export]
#[doc(hidden)]
macro_rules! with_rank {
    ($t:expr, $x:ident => $e:expr) => {
        match $t {
            $crate::onnx::FTensor::R1($x) => $e,
            $crate::onnx::FTensor::R2($x) => $e,
            $crate::onnx::FTensor::R3($x) => $e,
            $crate::onnx::FTensor::R4($x) => $e,
            $crate::onnx::FTensor::R5($x) => $e,
            $crate::onnx::FTensor::R6($x) => $e,
        }
    };
}

/// Combine two tensors of the same rank.
macro_rules! zip_rank {
    ($a:expr, $b:expr, $x:ident, $y:ident => $e:expr) => {
        match ($a, $b) {
            (FTensor::R1($x), FTensor::R1($y)) => Some(FTensor::R1($e)),
            (FTensor::R2($x), FTensor::R2($y)) => Some(FTensor::R2($e)),
            (FTensor::R3($x), FTensor::R3($y)) => Some(FTensor::R3($e)),
            (FTensor::R4($x), FTensor::R4($y)) => Some(FTensor::R4($e)),
            (FTensor::R5($x), FTensor::R5($y)) => Some(FTensor::R5($e)),
            (FTensor::R6($x), FTensor::R6($y)) => Some(FTensor::R6($e)),
            _ => None,
        }
    };
}

/// Reshape a tensor of static rank to a run-time shape (element counts must agree).
pub fn reshape_dyn<const D: usize>(x: Tensor<D>, dims: &[usize]) -> FTensor {
    match *dims {
        [a] => FTensor::R1(x.reshape([a])),
        [a, b] => FTensor::R2(x.reshape([a, b])),
        [a, b, c] => FTensor::R3(x.reshape([a, b, c])),
        [a, b, c, d] => FTensor::R4(x.reshape([a, b, c, d])),
        [a, b, c, d, e] => FTensor::R5(x.reshape([a, b, c, d, e])),
        [a, b, c, d, e, f] => FTensor::R6(x.reshape([a, b, c, d, e, f])),
        // Rank 0 is stored as [1]; callers check ranks above MAX_RANK first.
        _ => FTensor::R1(x.reshape([dims.iter().product::<usize>()])),
    }
}

impl FTensor {
    /// Upload host values with the given shape (rank 0 becomes `[1]`).
    pub fn from_host(values: Vec<f32>, shape: &[usize], device: &Device) -> FTensor {
        let dims: Vec<usize> = if shape.is_empty() {
            vec![1]
        } else {
            shape.to_vec()
        };
        let flat = Tensor::<1>::from_data(
            TensorData::new(values, [dims.iter().product::<usize>()]),
            device,
        );
        reshape_dyn(flat, &dims)
    }

    pub fn dims(&self) -> Vec<usize> {
        with_rank!(self, x => x.dims().to_vec())
    }

    pub fn rank(&self) -> usize {
        with_rank!(self, x => x.dims().len())
    }

    pub fn num_elements(&self) -> usize {
        self.dims().iter().product()
    }

    pub fn reshape(self, dims: &[usize]) -> FTensor {
        with_rank!(self, x => reshape_dyn(x, dims))
    }

    /// Prepend unit dimensions up to `rank` (numpy broadcasting alignment).
    pub fn unsqueeze_front(self, rank: usize) -> FTensor {
        let dims = self.dims();
        if dims.len() >= rank {
            return self;
        }
        let mut new = vec![1; rank - dims.len()];
        new.extend(dims);
        self.reshape(&new)
    }

    /// (The `*_bc` methods below broadcast; `None` when the shapes do not.)
    ///
    /// Apply a same-rank binary function after numpy-style broadcasting alignment. `None` when
    /// the shapes do not broadcast.
    pub fn broadcast_with(
        self,
        other: FTensor,
        op: impl Fn(FTensor, FTensor) -> Option<FTensor>,
    ) -> Option<FTensor> {
        let (a, b) = (self.dims(), other.dims());
        let rank = a.len().max(b.len());
        let pad = |d: &[usize]| {
            let mut v = vec![1; rank - d.len()];
            v.extend_from_slice(d);
            v
        };
        let (pa, pb) = (pad(&a), pad(&b));
        if pa
            .iter()
            .zip(&pb)
            .any(|(x, y)| x != y && *x != 1 && *y != 1)
        {
            return None;
        }
        op(self.unsqueeze_front(rank), other.unsqueeze_front(rank))
    }

    pub fn add_bc(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| zip_rank!(a, b, x, y => x + y))
    }

    pub fn sub_bc(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| zip_rank!(a, b, x, y => x - y))
    }

    pub fn mul_bc(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| zip_rank!(a, b, x, y => x * y))
    }

    pub fn div_bc(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| zip_rank!(a, b, x, y => x / y))
    }

    pub fn pow_bc(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| zip_rank!(a, b, x, y => x.powf(y)))
    }

    /// Elementwise max/min of two broadcastable tensors.
    pub fn max_pair(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| {
            let (a, b) = expand_pair(a, b);
            zip_rank!(a, b, x, y => x.max_pair(y))
        })
    }

    pub fn min_pair(self, other: FTensor) -> Option<FTensor> {
        self.broadcast_with(other, |a, b| {
            let (a, b) = expand_pair(a, b);
            zip_rank!(a, b, x, y => x.min_pair(y))
        })
    }

    /// Copy the values to the host.
    pub fn to_vec(&self) -> Vec<f32> {
        with_rank!(self, x => x.try_to_vec_as::<f32>().unwrap_or_default())
    }

    pub fn to_host(&self) -> HostTensor {
        HostTensor {
            shape: self.dims(),
            data: HostData::F32(self.to_vec()),
        }
    }

    /// Remove the tensor from the autodiff graph.
    pub fn detach(self) -> FTensor {
        map_rank!(self, x => x.detach())
    }

    pub fn require_grad(self) -> FTensor {
        map_rank!(self, x => x.require_grad())
    }

    /// The gradient of this (tracked) tensor in `grads`, if any.
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<FTensor> {
        match self {
            FTensor::R1(x) => x.grad(grads).map(FTensor::R1),
            FTensor::R2(x) => x.grad(grads).map(FTensor::R2),
            FTensor::R3(x) => x.grad(grads).map(FTensor::R3),
            FTensor::R4(x) => x.grad(grads).map(FTensor::R4),
            FTensor::R5(x) => x.grad(grads).map(FTensor::R5),
            FTensor::R6(x) => x.grad(grads).map(FTensor::R6),
        }
    }

    /// Flatten to `[dims[0], rest]`.
    pub fn flatten2(self) -> Tensor<2> {
        let dims = self.dims();
        let b = dims.first().copied().unwrap_or(1);
        let rest = dims.iter().skip(1).product::<usize>();
        match self.reshape(&[b, rest]) {
            FTensor::R2(x) => x,
            _ => unreachable!("reshape to rank 2"),
        }
    }

    pub fn into_r2(self) -> Option<Tensor<2>> {
        match self {
            FTensor::R2(x) => Some(x),
            _ => None,
        }
    }

    pub fn into_r4(self) -> Option<Tensor<4>> {
        match self {
            FTensor::R4(x) => Some(x),
            _ => None,
        }
    }
}

/// Expand both same-rank tensors to their common broadcast shape (for ops without broadcasting).
fn expand_pair(a: FTensor, b: FTensor) -> (FTensor, FTensor) {
    let (da, db) = (a.dims(), b.dims());
    let target: Vec<usize> = da.iter().zip(&db).map(|(x, y)| *x.max(y)).collect();
    (expand_to(a, &target), expand_to(b, &target))
}

/// Broadcast a tensor to `target` (same rank, unit dims grow).
pub fn expand_to(t: FTensor, target: &[usize]) -> FTensor {
    if t.dims() == target {
        return t;
    }
    match t {
        FTensor::R1(x) => FTensor::R1(x.expand([target[0]])),
        FTensor::R2(x) => FTensor::R2(x.expand([target[0], target[1]])),
        FTensor::R3(x) => FTensor::R3(x.expand([target[0], target[1], target[2]])),
        FTensor::R4(x) => FTensor::R4(x.expand([target[0], target[1], target[2], target[3]])),
        FTensor::R5(x) => {
            FTensor::R5(x.expand([target[0], target[1], target[2], target[3], target[4]]))
        }
        FTensor::R6(x) => FTensor::R6(x.expand([
            target[0], target[1], target[2], target[3], target[4], target[5],
        ])),
    }
}

/// A value in the interpreter: a device tensor or a host tensor.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // moved rarely; boxing would cost an allocation per op
pub enum Value {
    Float(FTensor),
    Host(HostTensor),
}

impl Value {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::Float(t) => t.dims(),
            Value::Host(h) => h.shape.clone(),
        }
    }
}
