//! Small tensors kept on the host: initializers before upload, and the integer shape arithmetic
//! (`Shape` -> `Gather` -> `Unsqueeze` -> `Concat` -> `Reshape`) that exporters emit.

/// The element values of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor on the host, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        Self {
            shape,
            data: HostData::I64(values),
        }
    }

    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self {
            shape,
            data: HostData::F32(values),
        }
    }

    /// The values as integers (floats truncated), for shape arithmetic.
    pub fn as_i64(&self) -> Vec<i64> {
        match &self.data {
            HostData::I64(v) => v.clone(),
            HostData::F32(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// The values as floats.
    pub fn as_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self.data, HostData::F32(_))
    }

    /// Row-major strides of the shape.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    /// Gather along `axis` with (already normalised, in range) indices of shape `idx_shape`.
    pub fn gather(&self, axis: usize, indices: &[usize], idx_shape: &[usize]) -> HostTensor {
        let outer: usize = self.shape[..axis].iter().product();
        let inner: usize = self.shape[axis + 1..].iter().product();
        let dim = self.shape[axis];
        let pick = |src_block: usize, i: usize, k: usize| src_block * dim * inner + i * inner + k;
        let mut order = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in indices {
                for k in 0..inner {
                    order.push(pick(o, i, k));
                }
            }
        }
        let mut shape = self.shape[..axis].to_vec();
        shape.extend_from_slice(idx_shape);
        shape.extend_from_slice(&self.shape[axis + 1..]);
        self.take(shape, &order)
    }

    /// A new tensor whose flat values are `self[order[i]]`.
    pub fn take(&self, shape: Vec<usize>, order: &[usize]) -> HostTensor {
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(order.iter().map(|&i| v[i]).collect()),
            HostData::I64(v) => HostData::I64(order.iter().map(|&i| v[i]).collect()),
        };
        HostTensor { shape, data }
    }

    /// Concatenate along `axis`; all parts must have the same kind and matching other dims.
    pub fn concat(parts: &[HostTensor], axis: usize) -> Option<HostTensor> {
        let first = parts.first()?;
        let rank = first.shape.len();
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for p in parts {
            if p.shape.len() != rank || (0..rank).any(|d| d != axis && p.shape[d] != first.shape[d])
            {
                return None;
            }
            shape[axis] += p.shape[axis];
        }
        let outer: usize = first.shape[..axis].iter().product();
        let float = parts.iter().any(HostTensor::is_float);
        let mut f = Vec::new();
        let mut i = Vec::new();
        for o in 0..outer {
            for p in parts {
                let block: usize = p.shape[axis..].iter().product();
                let range = o * block..(o + 1) * block;
                if float {
                    f.extend_from_slice(&p.as_f32()[range]);
                } else {
                    i.extend_from_slice(&p.as_i64()[range]);
                }
            }
        }
        Some(if float {
            HostTensor::f32(shape, f)
        } else {
            HostTensor::i64(shape, i)
        })
    }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// For each element of a row-major tensor of shape `out`, the sum over its axes of
/// `offset(axis, index along the axis)`: the flat source position of a strided view (a slice, a
/// broadcast, a narrowing), for [`HostTensor::take`].
pub fn index_map(out: &[usize], offset: impl Fn(usize, usize) -> usize) -> Vec<usize> {
    let dst = strides(out);
    let n: usize = out.iter().product();
    (0..n)
        .map(|flat| {
            let mut rem = flat;
            let mut at = 0;
            for (d, &s) in dst.iter().enumerate() {
                at += offset(d, rem / s);
                rem %= s;
            }
            at
        })
        .collect()
}

/// [`index_map`] of broadcasting `from` (same rank, unit axes repeat) to `out`.
pub fn broadcast_map(from: &[usize], out: &[usize]) -> Vec<usize> {
    let src = strides(from);
    index_map(out, |d, k| if from[d] == 1 { 0 } else { k * src[d] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_picks_rows_and_scalars() {
        let t = HostTensor::i64(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let rows = t.gather(0, &[1], &[]);
        assert_eq!(rows, HostTensor::i64(vec![3], vec![4, 5, 6]));
        let cols = t.gather(1, &[2, 0], &[2]);
        assert_eq!(cols, HostTensor::i64(vec![2, 2], vec![3, 1, 6, 4]));
    }

    #[test]
    fn concat_joins_along_axis() {
        let a = HostTensor::i64(vec![1], vec![7]);
        let b = HostTensor::i64(vec![2], vec![-1, 3]);
        assert_eq!(
            HostTensor::concat(&[a, b], 0),
            Some(HostTensor::i64(vec![3], vec![7, -1, 3]))
        );
        let a = HostTensor::i64(vec![2, 1], vec![1, 2]);
        let b = HostTensor::i64(vec![2, 2], vec![3, 4, 5, 6]);
        assert_eq!(
            HostTensor::concat(&[a, b], 1),
            Some(HostTensor::i64(vec![2, 3], vec![1, 3, 4, 2, 5, 6]))
        );
    }
}
