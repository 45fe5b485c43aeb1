//! Backdoor detection with CEPA.
//!
//! - `cepa.rs`: stage 1, the K per-class problems (perturbations and consensus `mu`).
//! - `stats.rs`: MAD anomaly indices and the Gamma p-value.
//! - `verdict.rs`: statistics -> combined index -> verdict, target, sources.
//! - `invert.rs`: stage 2, one shared trigger for the detected target (additive or mask + pattern).
//! - `scan.rs`: a whole scan (sampling, layer choice, stage 1, decision, report).
//! - `stimulate.rs`: channel stimulation (after ABS), reported beside the verdict.

pub mod cepa;
pub mod invert;
pub mod nc;
pub mod reference;
pub mod scan;
pub mod stats;
pub mod stimulate;
pub mod universal;
pub mod verdict;

/// The random stream of class `class`'s problem under `seed`: the seed's ChaCha8 generator on
/// the class's own stream. A class's initial perturbation (or mask and pattern) is then the same
/// whichever other classes run beside it and in whatever order, so a screened scan optimises each
/// class of its pool exactly as the full scan does and the two differ by their null sample only.
pub(crate) fn class_rng(seed: u64, class: usize) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(class as u64);
    rng
}

/// Read `parts` back from the device in one transfer (on a GPU every read waits for the queue
/// to drain), split again as they were given.
pub(crate) fn host_parts(parts: Vec<burn::prelude::Tensor<1>>) -> crate::Result<Vec<Vec<f32>>> {
    let sizes: Vec<usize> = parts.iter().map(|p| p.dims()[0]).collect();
    let flat = burn::prelude::Tensor::cat(parts, 0)
        .try_into_vec_as::<f32>()
        .map_err(|e| crate::error::Error::Mismatch(format!("cannot read a tensor back: {e:?}")))?;
    let total: usize = sizes.iter().sum();
    if flat.len() != total {
        return Err(crate::error::Error::Mismatch(format!(
            "read {} values back from the device, expected {total}",
            flat.len()
        )));
    }
    let mut rest = flat.as_slice();
    Ok(sizes
        .iter()
        .map(|&k| {
            let (head, tail) = rest.split_at(k);
            rest = tail;
            head.to_vec()
        })
        .collect())
}

/// One step of a batch of per-class problems: stop if the user interrupted, then the problems
/// still running (by index) and a fresh gradient leaf of each one's variable; `None` when every
/// problem is done.
pub(crate) fn active_leaves<T>(
    problems: &[T],
    done: impl Fn(&T) -> bool,
    var: impl Fn(&T) -> &burn::prelude::Tensor<4>,
) -> crate::Result<Option<(Vec<usize>, Vec<burn::prelude::Tensor<4>>)>> {
    crate::runtime::check_interrupt()?;
    let active: Vec<usize> = (0..problems.len())
        .filter(|&i| !done(&problems[i]))
        .collect();
    if active.is_empty() {
        return Ok(None);
    }
    let leaves = active
        .iter()
        .map(|&i| var(&problems[i]).clone().detach().require_grad())
        .collect();
    Ok(Some((active, leaves)))
}

/// Adam's moment estimates for one tensor variable (beta1 0.9, beta2 0.999, eps 1e-8, bias
/// corrected): the optimiser of CEPA's perturbations and of the per-class searches beside it.
pub(crate) struct Adam<const D: usize> {
    m: burn::prelude::Tensor<D>,
    v: burn::prelude::Tensor<D>,
}

impl<const D: usize> Adam<D> {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// Zero moments shaped like `like`.
    pub(crate) fn new(like: &burn::prelude::Tensor<D>) -> Self {
        Self {
            m: like.zeros_like(),
            v: like.zeros_like(),
        }
    }

    /// Take gradient `g` at step `step` (0-based) and return the update to subtract, scaled by
    /// `lr`.
    pub(crate) fn update(
        &mut self,
        g: burn::prelude::Tensor<D>,
        step: usize,
        lr: f64,
    ) -> burn::prelude::Tensor<D> {
        let (b1, b2) = (Self::B1, Self::B2);
        let bc1 = 1.0 - b1.powi(step as i32 + 1);
        let bc2 = 1.0 - b2.powi(step as i32 + 1);
        self.m = self.m.clone() * b1 + g.clone() * (1.0 - b1);
        self.v = self.v.clone() * b2 + g.powi_scalar(2) * (1.0 - b2);
        (self.m.clone() / bc1) / ((self.v.clone() / bc2).sqrt() + Self::EPS) * lr
    }
}

/// Run `work` on `items` split into one share per thread of rayon's pool (the pool burn's CPU
/// kernels run on), the shares in parallel, each on one worker (which batches it as `work`
/// does: CEPA whole, Neural Cleanse in groups). The workers are the pool's own threads, so
/// while a share waits on a kernel's parallel halves its thread takes part in them. (Plain
/// threads beside the pool oversubscribed the cores: 2 scan threads blocked while the pool's 2
/// threads computed, and a 43-class Neural Cleanse run took 14 % more CPU time and 18 % more
/// wall time; BENCHMARKS.md, "The allocator and the scan's threads".)
/// On an accelerator (`device`, the model's) everything is one share: a GPU runs one queue, so
/// shares from several threads would only split its batch into smaller launches that wait on
/// each other.
/// A panicking share is an error naming `what`, not a crash.
pub(crate) fn run_shares<T: Send>(
    items: &mut [T],
    what: &str,
    device: &burn::prelude::Device,
    work: impl Fn(&mut [T]) -> crate::Result<()> + Sync,
) -> crate::Result<()> {
    use rayon::prelude::*;
    let threads = if crate::model::is_accelerator(device) {
        1
    } else {
        rayon::current_num_threads().clamp(1, items.len().max(1))
    };
    let chunk = items.len().div_ceil(threads).max(1);
    let outcome: Vec<crate::Result<()>> = items
        .par_chunks_mut(chunk)
        .map(|part| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(part))).unwrap_or_else(
                |_| {
                    Err(crate::error::Error::Mismatch(format!(
                        "a {what} worker panicked"
                    )))
                },
            )
        })
        .collect();
    outcome.into_iter().collect()
}

pub use scan::{
    LayerChoice, ScanConfig, ScanReport, ScreenConfig, ScreenReport, ScreenRole, ScreenValue,
    ScreenedClass, scan, scan_with_progress,
};
