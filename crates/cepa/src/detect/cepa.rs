//! Stage 1 of CEPA: for every putative target class `t`, find per-sample input perturbations
//! `delta_n` that send the clean samples of the other classes to `t` while their embedded
//! perturbations `Delta_n = g(x_n + delta_n) - g(x_n)` agree on a consensus `mu_t`.
//!
//! `J_t = mean_n CE(f(x~_n), t) + lambda_t mean_n ||Delta_n - mu_t||^2 / d + beta mean_n ||delta_n||^2`
//!
//! All K problems run as one batch (each sample's gradient depends only on its own problem), each
//! stops on its own, and the clean embeddings are computed once. `mu_t` is re-set to its exact
//! minimiser `mean_n Delta_n` before every step on `delta` (the paper's alternation).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::detect::invert::Norm;
use crate::error::{Error, Result};
use crate::model::Classifier;

/// Stage-1 settings. [paper] marks what the paper states, [ours] what we chose.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CepaConfig {
    /// Step budget per target [ours]. Default 120 (EVALUATION.md: 40 steps at lr 0.08 ranked the
    /// CIFAR backdoor first but below the threshold; 120 at 0.03 detected it).
    pub steps: usize,
    /// Adam learning rate, pixel units [ours]. Default 0.03.
    pub lr: f64,
    /// Initial consensus weight lambda [ours]. Default 0.01.
    pub lambda_init: f64,
    /// Factor by which lambda rises (feasible) or falls (infeasible) [ours]. Default 1.5.
    pub lambda_factor: f64,
    /// Steps between feasibility checks and lambda updates [ours]. Default 5.
    pub check_every: usize,
    /// Feasible: at least this fraction of the samples is classified as the target [ours]. Default 0.9.
    pub pi: f64,
    /// Weight of the minimal-perturbation term, mean `||delta||^2` (or `||delta||_1`, see
    /// `norm`) [ours]. Default 0.001.
    pub beta: f64,
    /// The size of `delta_n` that the minimal-perturbation term penalises and the `delta_norm`
    /// statistic measures [ours]: `l2` (penalty `||delta||_2^2`, statistic `||delta||_2`) or
    /// `l1` (both `||delta||_1`). Default `l2`.
    pub norm: Norm,
    /// Initial delta uniform in [0, init_max) then projected into the image range [ours]. Default 0.1.
    pub init_max: f64,
    /// Converged when the relative change of J stays below this for `patience` checks. Default 1e-5.
    pub tol: f64,
    /// Checks with a relative change of J below `tol` before a target stops. Default 10.
    pub patience: usize,
    /// A target that has not reached `pi` within `steps` keeps going, up to this many times
    /// `steps` in all, so a hard-to-flip class is not called infeasible too early [ours]. Default 3.
    pub infeasible_factor: usize,
    /// At most this many samples per target problem, taken evenly from the source classes (the
    /// cost of a step grows with K x samples; 43 GTSRB classes x 10 images would be 18k images a
    /// step) [ours]. Default 100 (10 classes x 10 images: all 90 are used).
    pub max_samples: usize,
    /// Early stop of a feasible target: it stops once its best mean dispersion has not improved
    /// by `plateau_tol` (relative) for this many checks in a row, and it has run `min_steps`.
    /// 0 turns it off [ours]. Default 0 (off; EVALUATION.md measures it).
    pub plateau_checks: usize,
    /// Relative improvement of the best mean dispersion that resets the plateau count. Default 0.02.
    pub plateau_tol: f64,
    /// Steps before a target may stop on a plateau. Default 40.
    pub min_steps: usize,
    /// Seed of the initial perturbations. Default 0. In a scan it is added to the scan's seed
    /// (which also draws the clean images), so `[scan.cepa] seed = 1, 2, ...` restarts the
    /// optimisation from other initial perturbations on the same images.
    pub seed: u64,
    /// Step budget of the one additive pattern per target ([`crate::detect::universal`],
    /// statistic `universal_norm`); 0 skips it [ours]. Default 0 (off: on the development scans
    /// of session 21 it ranked the target first on MNIST, but on CIFAR-10 a natural class's
    /// single pattern is no larger than a trigger; EVALUATION.md). 200 is the setting measured.
    pub universal_steps: usize,
    /// Adam learning rate of that pattern, pixel units [ours]. Default 0.002.
    pub universal_lr: f64,
    /// Images per target the pattern must carry, taken evenly from the other classes [ours].
    /// Default 30.
    pub universal_samples: usize,
    /// Adam steps of the data-free largest-margin search per target (statistic `max_margin`);
    /// 0 skips it [ours, after MM-BD]. Default 300 (EVALUATION.md, session 21).
    pub margin_steps: usize,
    /// Random starts of that search per target. Default 8.
    pub margin_restarts: usize,
    /// Its Adam learning rate, pixel units. Default 0.01.
    pub margin_lr: f64,
    /// Steps of the local-margin search per target (statistic `local_margin`,
    /// [`crate::detect::universal::local_margin`]); 0 skips it [ours]. Default 0 (off).
    pub local_steps: usize,
    /// Its radius as a root-mean-square change per pixel value: the L2 ball has radius
    /// `local_radius * sqrt(C H W)`. Default 0.05.
    pub local_radius: f64,
    /// Clean images per target it starts from, taken evenly from the other classes. Default 30.
    pub local_samples: usize,
    /// Clean images per target (held-out ones when the scan has them) that the largest-margin
    /// input is blended into (statistic `margin_blend`,
    /// [`crate::detect::universal::margin_blend`]); 0 skips it [ours]. Default 30.
    pub margin_blend_samples: usize,
    /// Clean images per target (held-out ones when the scan has them) that the most salient
    /// locations of the largest-margin input are pasted into (statistic `margin_patch`,
    /// [`crate::detect::universal::margin_patch`]); 0 skips it [ours]. Default 30 (session 28:
    /// measured, not chosen).
    pub margin_patch_samples: usize,
    /// What the embedded perturbations must agree on [ours]: `target`, one consensus `mu_t` over
    /// all the samples of a target's problem (the default), or `pair`, one consensus per
    /// (source class, target) pair, each source class's samples agreeing among themselves
    /// (METHOD.md, "Key idea": which of the two the paper keeps is not readable here). The
    /// statistic `pair_agreement` reads how far the pairs' consensuses agree in either case.
    /// `mu_norm`, `transfer` and `reach` read the mean over all the samples in either case, and
    /// `dispersion` each sample's distance to the consensus it was pulled toward. Default
    /// `target` (EVALUATION.md, "Session 24": `pair` helped CEPA alone on every dataset left
    /// out, but not the default verdict).
    pub consensus: Consensus,
    /// Weight of the class-subspace penalty [ours, after CSO, arXiv 2512.08129, by CEPA's
    /// authors]: the mean over samples and layers of the share of `||Delta_n||^2` that lies in
    /// the span of the target class's own clean embeddings (each less the mean clean embedding
    /// of all classes), so a target is reached by what is not its intrinsic class features, a
    /// trigger, rather than by them. 0 turns it off. Default 0 (EVALUATION.md, "Session 37").
    pub orthogonal: f64,
    /// Runs of every target's problem, each from other initial perturbations (seeds `seed`,
    /// `seed + 1`, ...) on the same images, optimised together; each statistic is the mean over
    /// the runs that reached `pi`, and the perturbations kept are those of the run with the
    /// smallest mean dispersion ([`merge_restarts`]) [ours]. Default 1 (EVALUATION.md, "Session
    /// 37").
    pub restarts: usize,
}

/// What the embedded perturbations of a target's problem must agree on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consensus {
    /// One consensus over all the samples.
    #[default]
    Target,
    /// One consensus per source class.
    Pair,
}

impl Default for CepaConfig {
    fn default() -> Self {
        Self {
            steps: 120,
            lr: 0.03,
            lambda_init: 0.01,
            lambda_factor: 1.5,
            check_every: 5,
            pi: 0.9,
            beta: 0.001,
            norm: Norm::L2,
            init_max: 0.1,
            tol: 1e-5,
            patience: 10,
            infeasible_factor: 3,
            max_samples: 100,
            plateau_checks: 0,
            plateau_tol: 0.02,
            min_steps: 40,
            seed: 0,
            universal_steps: 0,
            universal_lr: 0.002,
            universal_samples: 30,
            margin_steps: 300,
            margin_restarts: 8,
            margin_lr: 0.01,
            local_steps: 0,
            local_radius: 0.05,
            local_samples: 30,
            margin_blend_samples: 30,
            margin_patch_samples: 30,
            consensus: Consensus::Target,
            orthogonal: 0.0,
            restarts: 1,
        }
    }
}

impl CepaConfig {
    /// Reject values that would make the optimisation meaningless, before any compute.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.steps == 0
            || self.check_every == 0
            || self.infeasible_factor == 0
            || self.max_samples == 0
            || self.restarts == 0
        {
            return bad(
                "steps, check_every, infeasible_factor, max_samples and restarts must be at least 1"
                    .into(),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr {} must be positive", self.lr));
        }
        if !(self.pi > 0.0 && self.pi <= 1.0) {
            return bad(format!("pi {} must be in (0, 1]", self.pi));
        }
        if !(self.lambda_init > 0.0 && self.lambda_factor > 1.0) {
            return bad("lambda_init must be > 0 and lambda_factor > 1".into());
        }
        if self.universal_steps > 0
            && (self.universal_samples == 0
                || !(self.universal_lr > 0.0 && self.universal_lr.is_finite()))
        {
            return bad(format!(
                "universal_lr {} must be positive and universal_samples at least 1",
                self.universal_lr
            ));
        }
        if self.local_steps > 0
            && (self.local_samples == 0
                || !(self.local_radius > 0.0 && self.local_radius.is_finite()))
        {
            return bad(format!(
                "local_radius {} must be positive and local_samples at least 1",
                self.local_radius
            ));
        }
        if !(self.orthogonal >= 0.0 && self.orthogonal.is_finite()) {
            return bad(format!("orthogonal {} must be >= 0", self.orthogonal));
        }
        if self.beta < 0.0 || !(0.0..=1.0).contains(&self.init_max) {
            return bad("beta must be >= 0 and init_max in [0, 1]".into());
        }
        Ok(())
    }
}

/// The lambda controller: up after consecutive feasible checks, down when infeasible.
#[derive(Clone, Debug)]
pub struct LambdaSchedule {
    pub lambda: f64,
    factor: f64,
    feasible_run: usize,
}

impl LambdaSchedule {
    pub fn new(init: f64, factor: f64) -> Self {
        Self {
            lambda: init,
            factor,
            feasible_run: 0,
        }
    }

    /// Update after a check where `rho` of the samples reached the target, against `pi`.
    pub fn update(&mut self, rho: f64, pi: f64) {
        if rho >= pi {
            self.feasible_run += 1;
            if self.feasible_run >= 2 {
                self.lambda *= self.factor;
            }
        } else {
            self.feasible_run = 0;
            self.lambda /= self.factor;
        }
    }
}

/// Statistics of one target at one layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerStats {
    /// `||mu_t||_2`.
    pub mu_norm: f64,
    /// Mean `||Delta_n - mu||^2 / ||mu||^2`.
    pub dispersion: f64,
    /// `sqrt(mean_n ||Delta_n||^2) = sqrt(||mu||^2 + mean_n ||Delta_n - mu||^2)`: how much the
    /// embedding moves.
    pub embed_norm: f64,
    /// Fraction of held-out clean non-target images sent to the target by `h(g(x) + mu_t)`
    /// (`None` without held-out images).
    pub transfer: Option<f64>,
    /// The embedded shift along `mu_t` that sends a held-out clean non-target image to the
    /// target, `s ||mu_t||` at the smallest scale `s` that does, the median over the images
    /// [ours]: where `transfer` asks whether the whole `mu_t` carries the images over (nearly
    /// always, on a weak model), this asks how little of it does. `None` without held-out images.
    pub reach: Option<f64>,
    /// How far the consensuses of the (source class, target) pairs agree:
    /// `||mean_s mu_st||^2 / mean_s ||mu_st||^2`, where `mu_st` is the mean embedded
    /// perturbation of source class `s`'s samples [ours]. 1 when every source class moves the
    /// same way, near `1/S` over `S` sources when each takes its own route; a trigger is one
    /// route from every class. `None` with fewer than two source classes.
    pub pair_agreement: Option<f64>,
    /// The cosine between `mu_t` and the direction from the other classes' held-out clean
    /// embeddings to class `t`'s, `mean_{y=t} g(x) - mean_{y!=t} g(x)` [ours, after the
    /// orthogonalisation of CSO (Yang, Miller and Kesidis)]: a class that is merely easy to
    /// reach is reached by becoming more like it, along that direction; a trigger adds a feature
    /// the class's clean images lack, so small is suspicious. `None` without held-out images of
    /// `t` and of another class.
    pub class_alignment: Option<f64>,
    /// `mu_t` (length d).
    #[serde(skip)]
    pub mu: Vec<f32>,
}

/// The outcome of one target's problem, at its best feasible iterate (or its last one).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetResult {
    pub target: usize,
    /// Whether `rho >= pi` was ever reached.
    pub feasible: bool,
    pub steps: usize,
    /// Fraction of samples classified as the target at the reported iterate.
    pub rho: f64,
    pub lambda: f64,
    /// Mean `||delta_n||_2`.
    pub delta_norm: f64,
    /// Per layer, in the order the layers were given.
    pub layers: Vec<LayerStats>,
    /// `||mean_n delta_n||_2 / mean_n ||delta_n||_2` at the reported iterate: 1 when every
    /// sample's perturbation is the same, near `1/sqrt(N)` when they are unrelated. A trigger
    /// that the perturbations share in input space makes it large [ours].
    pub coherence: f64,
    /// Share of the held-out clean images of other classes that the mean perturbation
    /// `mean_n delta_n`, added in input space (and clipped to `[0, 1]`), sends to the target
    /// [ours]; `None` without held-out images.
    pub input_transfer: Option<f64>,
    /// The input-space counterpart of [`LayerStats::reach`]: `s ||mean_n delta_n||` at the
    /// smallest scale `s` that sends a held-out clean non-target image to the target, the median
    /// over the images [ours]; `None` without held-out images.
    pub input_reach: Option<f64>,
    /// [`TargetResult::input_reach`] per source class of the held-out images (indexed by class;
    /// NaN for a class without held-out images, and for the target itself) [ours]: a trigger
    /// carries every class's images to its target about equally cheaply, a naturally cheap
    /// ("sink") class mostly those of the classes that resemble it. Empty without held-out
    /// images.
    pub input_reach_sources: Vec<f64>,
    /// `||v_t||_2` of the one additive pattern that sends a share `pi` of the clean images of
    /// the other classes to the target ([`crate::detect::universal`]); `None` when not run.
    pub universal_norm: Option<f64>,
    /// The largest logit margin of the target that an input reaches
    /// ([`crate::detect::universal::max_margin`]); `None` when not run.
    pub max_margin: Option<f64>,
    /// `max_margin` less the largest margin of the target among the scan's clean images (those
    /// optimised over and the held-out ones); `None` when the margin search did not run.
    pub margin_excess: Option<f64>,
    /// The median margin of the target that clean images of the other classes reach within a
    /// small input change ([`crate::detect::universal::local_margin`]); `None` when not run.
    pub local_margin: Option<f64>,
    /// The median smallest blend weight of the target's largest-margin input that carries a
    /// clean image of another class to the target
    /// ([`crate::detect::universal::margin_blend`]); `None` when not run.
    pub margin_blend: Option<f64>,
    /// The median smallest share of the largest-margin input's locations that, pasted into a
    /// clean image of another class, carries it to the target
    /// ([`crate::detect::universal::margin_patch`]); `None` when not run.
    pub margin_patch: Option<f64>,
    /// Per sample: its true class and `||delta_n||_2`.
    pub sources: Vec<usize>,
    pub sample_delta_norms: Vec<f64>,
    /// The per-sample perturbations, CHW each.
    #[serde(skip)]
    pub deltas: Vec<f32>,
}

impl TargetResult {
    /// Mean dispersion over the layers: the quantity the best iterate minimises.
    pub fn mean_dispersion(&self) -> f64 {
        self.layers.iter().map(|l| l.dispersion).sum::<f64>() / self.layers.len().max(1) as f64
    }
}

/// Per-target optimisation state.
struct Problem {
    target: usize,
    x: Tensor<4>,
    /// Clean embeddings at each layer.
    clean: Vec<Tensor<2>>,
    sources: Vec<usize>,
    /// With `consensus = "pair"`: the `[n, n]` matrix that replaces each sample's row by the
    /// mean of its source class's rows ([`pair_means`]).
    pairs: Option<Tensor<2>>,
    /// With `orthogonal > 0`: per layer, an orthonormal basis `[r, d]` of the target class's
    /// centred clean embeddings ([`class_bases`]); `None` where it has none.
    basis: Vec<Option<Tensor<2>>>,
    delta: Tensor<4>,
    adam: crate::detect::Adam<4>,
    schedule: LambdaSchedule,
    steps: usize,
    last_j: f64,
    stall: usize,
    /// Best mean dispersion when the plateau count last restarted, and the count.
    plateau_ref: f64,
    plateau: usize,
    done: bool,
    best: Option<TargetResult>,
    /// The perturbations of `best`, kept on the device: read back once, when the problem ends,
    /// rather than at every step that improves on it (on a GPU each read waits for the queue).
    best_delta: Option<Tensor<4>>,
    last: Option<TargetResult>,
}

/// The images a target's problem uses: those not of `target`, at most `max` of them, taken
/// round-robin over the source classes (each class's images in their order) so that every source
/// class keeps its share. Returned in increasing order.
pub fn sources_of(labels: &[usize], target: usize, max: usize) -> Vec<usize> {
    let all: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != target).collect();
    if all.len() <= max {
        return all;
    }
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in &all {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let mut out = Vec::with_capacity(max);
    'rounds: for round in 0.. {
        let mut any = false;
        for members in by_class.values() {
            if let Some(&i) = members.get(round) {
                any = true;
                out.push(i);
                if out.len() == max {
                    break 'rounds;
                }
            }
        }
        if !any {
            break;
        }
    }
    out.sort_unstable();
    out
}

/// Copy a 1-D tensor to the host.
fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap_or_default()
}

fn first(t: Tensor<1>) -> f64 {
    host(t).first().copied().map_or(f64::NAN, f64::from)
}

fn select_rows<const D: usize>(t: Tensor<D>, idx: &[usize], device: &Device) -> Tensor<D> {
    let ids = idx.iter().map(|&i| i as i64).collect::<Vec<_>>();
    t.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(ids, [idx.len()]), device),
    )
}

/// The consensus embedded perturbation: `mean_n Delta_n`, the exact minimiser of
/// `sum_n ||Delta_n - mu||^2` for fixed `Delta` (`[n, d]` -> `[1, d]`).
pub fn consensus(delta_emb: Tensor<2>) -> Tensor<2> {
    delta_emb.mean_dim(0)
}

/// The `[n, n]` matrix `A` with `A[i][j] = 1 / |s|` when samples `i` and `j` are both of source
/// class `s` (0 otherwise): `A Delta` puts in each row the mean of its source class's rows, the
/// consensus of its (source, target) pair.
pub fn pair_means(sources: &[usize], device: &Device) -> Tensor<2> {
    let n = sources.len();
    let mut a = vec![0.0f32; n * n];
    for i in 0..n {
        let size = sources.iter().filter(|&&s| s == sources[i]).count() as f32;
        for j in 0..n {
            if sources[j] == sources[i] {
                a[i * n + j] = 1.0 / size;
            }
        }
    }
    Tensor::from_data(TensorData::new(a, [n, n]), device)
}

/// [`LayerStats::pair_agreement`] of the embedded perturbations `delta_emb` (`n` rows of `d`,
/// row-major) whose source classes are `sources`: `||mean_s mu_s||^2 / mean_s ||mu_s||^2`
/// over the source classes' mean rows `mu_s`. `None` with fewer than two source classes.
pub fn pair_agreement(delta_emb: &[f32], sources: &[usize]) -> Option<f64> {
    let n = sources.len();
    if n == 0 || !delta_emb.len().is_multiple_of(n) {
        return None;
    }
    let d = delta_emb.len() / n;
    let mut classes: Vec<usize> = sources.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return None;
    }
    let mut overall = vec![0.0f64; d];
    let mut sq = 0.0f64;
    for &c in &classes {
        let rows: Vec<usize> = (0..n).filter(|&i| sources[i] == c).collect();
        let mut mu = vec![0.0f64; d];
        for &i in &rows {
            for (m, &v) in mu.iter_mut().zip(&delta_emb[i * d..(i + 1) * d]) {
                *m += f64::from(v);
            }
        }
        for (o, m) in overall.iter_mut().zip(mu.iter_mut()) {
            *m /= rows.len() as f64;
            *o += *m / classes.len() as f64;
        }
        sq += mu.iter().map(|m| m * m).sum::<f64>() / classes.len() as f64;
    }
    let num: f64 = overall.iter().map(|o| o * o).sum();
    (sq > 0.0).then(|| num / sq)
}

/// Per-class sums of clean embeddings (held-out images), summed once per layer for every
/// target's [`LayerStats::class_alignment`].
pub struct ClassSums {
    sums: Vec<Vec<f64>>,
    counts: Vec<usize>,
    total: Vec<f64>,
}

impl ClassSums {
    /// From `labels.len()` rows of `d` (row-major); `None` unless they fit.
    pub fn new(clean: &[f32], labels: &[usize], d: usize) -> Option<Self> {
        if d == 0 || clean.len() != labels.len() * d {
            return None;
        }
        let k = labels.iter().max().map_or(0, |&m| m + 1);
        let (mut sums, mut counts, mut total) =
            (vec![vec![0.0f64; d]; k], vec![0; k], vec![0.0; d]);
        for (row, &y) in clean.chunks_exact(d).zip(labels) {
            counts[y] += 1;
            for ((a, t), &v) in sums[y].iter_mut().zip(total.iter_mut()).zip(row) {
                *a += f64::from(v);
                *t += f64::from(v);
            }
        }
        Some(Self {
            sums,
            counts,
            total,
        })
    }

    /// [`LayerStats::class_alignment`]: the cosine between `mu` and the way from the other
    /// classes' mean row to `target`'s, `mean_{y=target} - mean_{y!=target}`. `None` when
    /// either side has no row, either vector is zero, or `mu` does not fit.
    pub fn alignment(&self, mu: &[f32], target: usize) -> Option<f64> {
        let n_in = self.counts.get(target).copied().unwrap_or(0);
        let n_out = self.counts.iter().sum::<usize>() - n_in;
        if n_in == 0 || n_out == 0 || mu.len() != self.total.len() {
            return None;
        }
        let (mut dot, mut mm, mut cc) = (0.0f64, 0.0f64, 0.0f64);
        for ((&m, a), t) in mu.iter().zip(&self.sums[target]).zip(&self.total) {
            let c = a / n_in as f64 - (t - a) / n_out as f64;
            let m = f64::from(m);
            dot += m * c;
            mm += m * m;
            cc += c * c;
        }
        (mm > 0.0 && cc > 0.0).then(|| dot / (mm * cc).sqrt())
    }
}

/// Per class `0..k`, an orthonormal basis of its rows of `clean` (`labels.len()` rows of `d`),
/// each less the mean of all the rows, by Gram-Schmidt (twice, for stability): `(basis
/// row-major, rank)`. Rows whose remainder is below 1e-6 of their length add nothing; a class
/// with no row, or none that stands out, gets `None`. Empty when the rows do not fit `d`.
pub fn class_bases(
    clean: &[f32],
    labels: &[usize],
    d: usize,
    k: usize,
) -> Vec<Option<(Vec<f32>, usize)>> {
    if d == 0 || clean.len() != labels.len() * d {
        return Vec::new();
    }
    let mut mean = vec![0.0f64; d];
    for row in clean.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= labels.len() as f64);
    let mut bases: Vec<Vec<Vec<f64>>> = vec![Vec::new(); k];
    for (row, &y) in clean.chunks_exact(d).zip(labels) {
        let Some(basis) = bases.get_mut(y) else {
            continue;
        };
        let mut v: Vec<f64> = row
            .iter()
            .zip(&mean)
            .map(|(&x, m)| f64::from(x) - m)
            .collect();
        let len = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        for _ in 0..2 {
            for b in basis.iter() {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let rest = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if len > 0.0 && rest > 1e-6 * len {
            v.iter_mut().for_each(|x| *x /= rest);
            basis.push(v);
        }
    }
    bases
        .into_iter()
        .map(|basis| {
            let r = basis.len();
            (r > 0).then(|| (basis.into_iter().flatten().map(|x| x as f32).collect(), r))
        })
        .collect()
}

/// Per-sample consensus penalty `||Delta_n - mu||^2` (`[n, 1]`).
pub fn penalty(delta_emb: Tensor<2>, mu: Tensor<2>) -> Tensor<2> {
    (delta_emb - mu).powi_scalar(2).sum_dim(1)
}

/// Run stage 1 for every target class at `layers` (penalties summed, each divided by its
/// dimension). `images` are the clean samples (all classes); `holdout`, if given, other clean
/// images for the transfer statistic.
pub fn stage1(
    model: &Classifier,
    images: &ImageSet,
    holdout: Option<&ImageSet>,
    layers: &[String],
    cfg: &CepaConfig,
) -> Result<Vec<TargetResult>> {
    stage1_with_progress(model, images, holdout, layers, cfg, &|_| {})
}

/// A progress callback: called with the number of per-target steps just taken.
pub type Progress<'a> = &'a (dyn Fn(usize) + Sync);

/// [`stage1`], reporting progress (`cfg.steps` per target is the nominal total).
pub fn stage1_with_progress(
    model: &Classifier,
    images: &ImageSet,
    holdout: Option<&ImageSet>,
    layers: &[String],
    cfg: &CepaConfig,
    progress: Progress,
) -> Result<Vec<TargetResult>> {
    let all: Vec<usize> = (0..model.num_classes()).collect();
    stage1_targets(model, images, holdout, layers, cfg, &all, progress)
}

/// [`stage1_with_progress`] for the putative targets `targets` only (a screened scan's pool), in
/// that order.
pub fn stage1_targets(
    model: &Classifier,
    images: &ImageSet,
    holdout: Option<&ImageSet>,
    layers: &[String],
    cfg: &CepaConfig,
    targets: &[usize],
    progress: Progress,
) -> Result<Vec<TargetResult>> {
    cfg.validate()?;
    model.check_images(images)?;
    if layers.is_empty() {
        return Err(Error::Config("no layer to work at".into()));
    }
    let start = std::time::Instant::now();
    let k = model.num_classes();
    let device = model.device().clone();
    let per = images.image_len();
    let dims = [images.channels, images.height, images.width];
    let x_all = model.images_tensor(&images.pixels, images.len());
    let (_, clean_all) = model.logits_and_layers(x_all.clone(), layers)?;
    let clean_all: Vec<Tensor<2>> = clean_all.into_iter().map(Tensor::detach).collect();
    let d: Vec<f64> = clean_all.iter().map(|c| c.dims()[1] as f64).collect();
    // The class subspaces of the CSO penalty, per layer and class, from the clean rows read
    // back once.
    let bases: Vec<Vec<Option<Tensor<2>>>> = if cfg.orthogonal > 0.0 {
        clean_all
            .iter()
            .map(|c| {
                let dim = c.dims()[1];
                let rows = c.clone().reshape([c.dims()[0] * dim]);
                let rows = host(rows);
                class_bases(&rows, &images.labels, dim, k)
                    .into_iter()
                    .map(|b| {
                        b.map(|(b, r)| Tensor::from_data(TensorData::new(b, [r, dim]), &device))
                    })
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut problems: Vec<Problem> = Vec::with_capacity(targets.len() * cfg.restarts);
    for (run, &target) in (0..cfg.restarts).flat_map(|r| targets.iter().map(move |t| (r, t))) {
        if target >= k {
            return Err(Error::Mismatch(format!(
                "class {target} is not a class of the model (0..{})",
                k.saturating_sub(1)
            )));
        }
        let idx = sources_of(&images.labels, target, cfg.max_samples);
        if idx.is_empty() {
            return Err(Error::Mismatch(format!(
                "no clean images outside class {target}"
            )));
        }
        let x = select_rows(x_all.clone(), &idx, &device);
        let clean = clean_all
            .iter()
            .map(|c| select_rows(c.clone(), &idx, &device))
            .collect();
        let n = idx.len();
        let hi = cfg.init_max.max(1e-12);
        let mut rng = crate::detect::class_rng(cfg.seed.wrapping_add(run as u64), target);
        let init: Vec<f32> = (0..n * per)
            .map(|_| rng.random_range(0.0..hi) as f32)
            .collect();
        let delta0 = Tensor::<4>::from_data(
            TensorData::new(init, [n, dims[0], dims[1], dims[2]]),
            &device,
        );
        let delta = (x.clone() + delta0).clamp(0.0, 1.0) - x.clone();
        let sources: Vec<usize> = idx.iter().map(|&i| images.labels[i]).collect();
        problems.push(Problem {
            target,
            x,
            clean,
            pairs: (cfg.consensus == Consensus::Pair).then(|| pair_means(&sources, &device)),
            basis: bases
                .iter()
                .map(|b| b.get(target).cloned().flatten())
                .collect(),
            sources,
            adam: crate::detect::Adam::new(&delta),
            delta,
            schedule: LambdaSchedule::new(cfg.lambda_init, cfg.lambda_factor),
            steps: 0,
            last_j: f64::INFINITY,
            stall: 0,
            plateau_ref: f64::INFINITY,
            plateau: 0,
            done: false,
            best: None,
            best_delta: None,
            last: None,
        });
    }

    // Where the time goes, with -v (on a GPU the first use of each kernel is compiled and tuned).
    let phase = |what: &str, t: std::time::Instant| {
        tracing::info!("{what}: {:.1} s", t.elapsed().as_secs_f64());
        std::time::Instant::now()
    };
    let t = phase("stage 1: clean embeddings and set-up", start);
    // The problems are independent: split them over the cores, each share one batch (one share
    // on an accelerator).
    crate::detect::run_shares(&mut problems, "stage-1", model.device(), |part| {
        optimise(model, part, layers, &d, cfg, progress)
    })?;
    let t = phase(
        &format!("stage 1: optimisation of {} targets", targets.len()),
        t,
    );
    let mut out = merge_restarts(
        finish(model, problems, holdout, layers, dims)?,
        cfg.restarts,
    );
    let mut t = phase("stage 1: transfer and reach", t);
    if cfg.universal_steps > 0 {
        let found = crate::detect::universal::universal(model, images, targets, cfg)?;
        for (r, u) in out.iter_mut().zip(found) {
            r.universal_norm = Some(u.norm);
        }
        t = phase("stage 1: universal patterns", t);
    }
    if cfg.margin_steps > 0 {
        let found = crate::detect::universal::max_margin_inputs(model, dims, targets, cfg)?;
        let natural = crate::detect::universal::clean_margins(model, images, holdout)?;
        for (r, (m, _)) in out.iter_mut().zip(&found) {
            r.max_margin = Some(*m);
            r.margin_excess = Some(m - natural[r.target]);
        }
        let inputs: Vec<(usize, Tensor<4>)> = targets
            .iter()
            .zip(found)
            .map(|(&t, (_, x))| (t, x))
            .collect();
        let set = holdout.unwrap_or(images);
        // How much of each largest-margin input carries clean images there: blended, pasted.
        type Measure = fn(&Classifier, &ImageSet, &[(usize, Tensor<4>)], usize) -> Result<Vec<f64>>;
        type Keep = fn(&mut TargetResult, f64);
        let measures: [(usize, Measure, Keep); 2] = [
            (
                cfg.margin_blend_samples,
                crate::detect::universal::margin_blend,
                |r, v| r.margin_blend = Some(v),
            ),
            (
                cfg.margin_patch_samples,
                crate::detect::universal::margin_patch,
                |r, v| r.margin_patch = Some(v),
            ),
        ];
        for (samples, measure, keep) in measures {
            if samples > 0 {
                for (r, v) in out.iter_mut().zip(measure(model, set, &inputs, samples)?) {
                    keep(r, v);
                }
            }
        }
        t = phase("stage 1: largest-margin inputs", t);
    }
    if cfg.local_steps > 0 {
        let found = crate::detect::universal::local_margin(model, images, targets, cfg)?;
        for (r, m) in out.iter_mut().zip(found) {
            r.local_margin = Some(m);
        }
        phase("stage 1: local margins", t);
    }
    Ok(out)
}

/// Run the optimisation of `problems` (batched together) to their ends.
fn optimise(
    model: &Classifier,
    problems: &mut [Problem],
    layers: &[String],
    d: &[f64],
    cfg: &CepaConfig,
    progress: Progress,
) -> Result<()> {
    let budget = cfg.steps * cfg.infeasible_factor;
    for step in 0..budget {
        let Some((active, leaves)) =
            crate::detect::active_leaves(problems, |p| p.done, |p| &p.delta)?
        else {
            break;
        };
        let xs: Vec<Tensor<4>> = active
            .iter()
            .zip(&leaves)
            .map(|(&i, dl)| problems[i].x.clone() + dl.clone())
            .collect();
        let (logits, embs) = model.logits_and_layers(Tensor::cat(xs, 0), layers)?;
        let mut total: Option<Tensor<1>> = None;
        let mut row = 0;
        // Every active problem's measures at the current iterate, to be read back in one
        // transfer: on a GPU each read is a round trip that waits for the queue to drain. Per
        // problem: (mu_sq, dev2) per layer, then j, hits and the n sample norms.
        let mut parts = Vec::with_capacity(active.len() * (3 + 2 * layers.len()));
        for (&i, leaf) in active.iter().zip(&leaves) {
            let p = &problems[i];
            let t = p.target;
            let n = p.sources.len();
            let lt = logits.clone().narrow(0, row, n);
            let lambda = p.schedule.lambda;
            let ce = log_softmax(lt.clone(), 1).narrow(1, t, 1).neg();
            let (size, norms) = match cfg.norm {
                Norm::L2 => {
                    let sq = leaf
                        .clone()
                        .powi_scalar(2)
                        .sum_dims(&[1, 2, 3])
                        .reshape([n, 1]);
                    (sq.clone(), sq.detach().sqrt())
                }
                Norm::L1 => {
                    let a = leaf.clone().abs().sum_dims(&[1, 2, 3]).reshape([n, 1]);
                    (a.clone(), a.detach())
                }
            };
            let mut j = ce.mean() + size.mean() * cfg.beta;
            for (l, emb) in embs.iter().enumerate() {
                let delta_emb = emb.clone().narrow(0, row, n) - p.clean[l].clone();
                if let Some(Some(b)) = p.basis.get(l) {
                    // The share of each sample's embedded change inside the class subspace.
                    let inside = delta_emb
                        .clone()
                        .matmul(b.clone().transpose())
                        .powi_scalar(2)
                        .sum_dim(1);
                    let all = delta_emb.clone().powi_scalar(2).sum_dim(1) + 1e-12;
                    j = j + (inside / all).mean() * (cfg.orthogonal / layers.len() as f64);
                }
                // mu at its exact minimiser for the current delta, held fixed for this step: one
                // row for the target, or each sample's pair's consensus.
                let mu = consensus(delta_emb.clone()).detach();
                let dev2 = match &p.pairs {
                    None => penalty(delta_emb, mu.clone()),
                    Some(a) => {
                        let rows = a.clone().matmul(delta_emb.clone()).detach();
                        penalty(delta_emb, rows)
                    }
                };
                j = j + dev2.clone().mean() * (lambda / d[l]);
                parts.push(mu.powi_scalar(2).sum());
                parts.push(dev2.detach().mean());
            }
            row += n;
            parts.push(j.clone().detach());
            parts.push(lt.argmax(1).equal_elem(t as i64).int().sum().float());
            parts.push(norms.reshape([n]));
            total = Some(match total {
                None => j,
                Some(acc) => acc + j,
            });
        }
        let grads = total.expect("at least one active problem").backward();
        progress(active.len());
        let mut read = crate::detect::host_parts(parts)?.into_iter();
        let scalar = |read: &mut std::vec::IntoIter<Vec<f32>>| {
            read.next()
                .and_then(|v| v.first().copied())
                .map_or(f64::NAN, f64::from)
        };
        for (&i, leaf) in active.iter().zip(&leaves) {
            let p = &mut problems[i];
            let t = p.target;
            let n = p.sources.len();
            let g = leaf
                .grad(&grads)
                .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
            let update = p.adam.update(g, step, cfg.lr);
            // The measures below belong to the iterate before this update.
            let before = p.delta.clone();
            let moved = p.delta.clone() - update;
            p.delta = (p.x.clone() + moved).clamp(0.0, 1.0) - p.x.clone();
            p.steps += 1;

            let layer_stats: Vec<LayerStats> = (0..layers.len())
                .map(|_| {
                    let mu_norm = scalar(&mut read).sqrt();
                    let dev2 = scalar(&mut read);
                    LayerStats {
                        mu_norm,
                        dispersion: dev2 / (mu_norm * mu_norm).max(1e-30),
                        embed_norm: (mu_norm * mu_norm + dev2).sqrt(),
                        transfer: None,
                        reach: None,
                        pair_agreement: None,
                        class_alignment: None,
                        mu: Vec::new(),
                    }
                })
                .collect();
            let j = scalar(&mut read);
            let rho = scalar(&mut read) / n as f64;
            let sample_norms: Vec<f64> = read
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect();
            let current = TargetResult {
                target: t,
                feasible: rho >= cfg.pi,
                steps: p.steps,
                rho,
                lambda: p.schedule.lambda,
                delta_norm: sample_norms.iter().sum::<f64>() / n as f64,
                layers: layer_stats,
                coherence: f64::NAN,
                input_transfer: None,
                input_reach: None,
                input_reach_sources: Vec::new(),
                universal_norm: None,
                max_margin: None,
                margin_excess: None,
                local_margin: None,
                margin_blend: None,
                margin_patch: None,
                sources: p.sources.clone(),
                sample_delta_norms: sample_norms,
                deltas: Vec::new(),
            };
            let better = p
                .best
                .as_ref()
                .is_none_or(|b| current.mean_dispersion() < b.mean_dispersion());
            if current.feasible && better {
                p.best = Some(current.clone());
                p.best_delta = Some(before);
            }
            p.last = Some(current);
            if p.steps.is_multiple_of(cfg.check_every) {
                p.schedule.update(rho, cfg.pi);
                let rel = (j - p.last_j).abs() / j.abs().max(1e-12);
                p.stall = if rel < cfg.tol { p.stall + 1 } else { 0 };
                p.last_j = j;
                if p.stall >= cfg.patience {
                    p.done = true;
                }
                if let Some(b) = &p.best {
                    let disp = b.mean_dispersion();
                    if disp < p.plateau_ref * (1.0 - cfg.plateau_tol) {
                        p.plateau_ref = disp;
                        p.plateau = 0;
                    } else {
                        p.plateau += 1;
                    }
                    if cfg.plateau_checks > 0
                        && p.plateau >= cfg.plateau_checks
                        && p.steps >= cfg.min_steps
                    {
                        p.done = true;
                    }
                }
            }
            if (p.steps >= cfg.steps && p.best.is_some()) || p.steps >= budget {
                p.done = true;
            }
        }
    }
    Ok(())
}

/// The mean of `n` perturbations stored one after another in `deltas` (`None` when `deltas` is
/// not `n` whole perturbations, or empty).
fn mean_delta(deltas: &[f32], n: usize) -> Option<Vec<f64>> {
    if n == 0 || deltas.is_empty() || !deltas.len().is_multiple_of(n) {
        return None;
    }
    let per = deltas.len() / n;
    let mut mean = vec![0.0f64; per];
    for d in deltas.chunks_exact(per) {
        for (m, &v) in mean.iter_mut().zip(d) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    Some(mean)
}

/// `||mean_n delta_n|| / mean_n ||delta_n||` of `n` perturbations stored one after another in
/// `deltas` (NaN when they are all zero or there are none).
pub fn coherence(deltas: &[f32], n: usize) -> f64 {
    let Some(mean) = mean_delta(deltas, n) else {
        return f64::NAN;
    };
    let norms = deltas
        .chunks_exact(mean.len())
        .map(|d| d.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n as f64;
    let mean_norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    if norms > 0.0 {
        mean_norm / norms
    } else {
        f64::NAN
    }
}

/// The largest scale of a shift that [`reach`] tries; an image not sent to the target at this
/// scale counts as needing twice it. At 2, the bisection's first probe is the whole shift.
const REACH_MAX: f64 = 2.0;
/// Bisection steps of [`reach`]: a resolution of `REACH_MAX / 2^8`.
const REACH_STEPS: usize = 8;

/// What [`reach`] measures of a shift over `n` images.
struct Reach {
    /// The share of the images that the whole shift (scale 1) sends to the target.
    share: f64,
    /// The median over the images of the smallest scale that sends each there.
    median: f64,
    /// Per image, that scale (`2 REACH_MAX` for an image never sent there).
    scales: Vec<f64>,
}

/// Per image, the smallest scale `s` in `(0, REACH_MAX]` at which `hits(scales)` (the images
/// sent to the target with image `i` shifted by `scales[i]` times the shift) holds, by
/// bisection; the median over the `n` images, `2 REACH_MAX` for an image never sent there. The
/// first probe, at scale 1 for every image, gives the share the whole shift sends.
fn reach(n: usize, hits: impl Fn(&[f32]) -> Result<Vec<bool>>) -> Result<Reach> {
    let reached = hits(&vec![REACH_MAX as f32; n])?;
    let (mut lo, mut hi) = (vec![0.0f64; n], vec![REACH_MAX; n]);
    let mut share = f64::NAN;
    for step in 0..REACH_STEPS {
        let mid: Vec<f32> = lo
            .iter()
            .zip(&hi)
            .map(|(l, h)| ((l + h) / 2.0) as f32)
            .collect();
        let at = hits(&mid)?;
        if step == 0 {
            share = at.iter().filter(|&&v| v).count() as f64 / n as f64;
        }
        for i in 0..n {
            if at[i] {
                hi[i] = f64::from(mid[i]);
            } else {
                lo[i] = f64::from(mid[i]);
            }
        }
    }
    let s: Vec<f64> = (0..n)
        .map(|i| if reached[i] { hi[i] } else { 2.0 * REACH_MAX })
        .collect();
    Ok(Reach {
        share,
        median: crate::detect::stats::median(&s),
        scales: s,
    })
}

/// Which rows of `logits` predict `target`.
fn hits_of(logits: Tensor<2>, target: usize) -> Vec<bool> {
    let n = logits.dims()[0];
    host(
        logits
            .argmax(1)
            .equal_elem(target as i64)
            .int()
            .reshape([n])
            .float(),
    )
    .into_iter()
    .map(|v| v > 0.5)
    .collect()
}

/// A column of per-row scales, `[n, 1]`.
fn scale_column(scales: &[f32], device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(scales.to_vec(), [scales.len(), 1]), device)
}

/// What [`input_transfer`] measures of the mean input perturbation.
struct InputShift {
    share: f64,
    reach: f64,
    /// `reach` per source class (NaN where there is none).
    by_source: Vec<f64>,
}

/// For the held-out images `h` (as tensor `x`) outside `target` and the mean perturbation
/// `mean_n delta_n`: the share that `clip(x + mean)` sends to `target`, and the median input
/// size of the shift that sends an image there ([`reach`] times `||mean||`), over all of them
/// and per source class. `None` when every held-out image is of the target.
fn input_transfer(
    model: &Classifier,
    h: &ImageSet,
    x: &Tensor<4>,
    deltas: &[f32],
    n: usize,
    target: usize,
) -> Result<Option<InputShift>> {
    let idx: Vec<usize> = (0..h.len()).filter(|&i| h.labels[i] != target).collect();
    let Some(mean) = mean_delta(deltas, n).filter(|_| !idx.is_empty()) else {
        return Ok(None);
    };
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    let mean: Vec<f32> = mean.into_iter().map(|m| m as f32).collect();
    let device = model.device().clone();
    let xs = select_rows(x.clone(), &idx, &device);
    let [b, c, hh, w] = xs.dims();
    let shift =
        Tensor::<4>::from_data(TensorData::new(mean, [1, c, hh, w]), &device).expand([b, c, hh, w]);
    let sent = |scales: &[f32]| -> Result<Vec<bool>> {
        let s = scale_column(scales, &device)
            .reshape([b, 1, 1, 1])
            .expand([b, c, hh, w]);
        let moved = (xs.clone() + shift.clone() * s).clamp(0.0, 1.0).detach();
        Ok(hits_of(model.logits(moved)?, target))
    };
    let r = reach(b, sent)?;
    let classes = h.num_classes.max(target + 1);
    let by_source = (0..classes)
        .map(|c| {
            let s: Vec<f64> = idx
                .iter()
                .zip(&r.scales)
                .filter(|&(&i, _)| h.labels[i] == c)
                .map(|(_, &s)| s)
                .collect();
            if s.is_empty() {
                f64::NAN
            } else {
                crate::detect::stats::median(&s) * norm
            }
        })
        .collect();
    Ok(Some(InputShift {
        share: r.share,
        reach: r.median * norm,
        by_source,
    }))
}

/// One result per target from `restarts` runs of each (`results` run-major: every target of
/// the first run, then of the second, ...). The runs that reached `pi` are averaged (all of them
/// when none did): every statistic is their mean (an optional one only where every run has it),
/// `steps` their sum, and the perturbations, consensuses and per-sample sizes are those of the
/// run with the smallest mean dispersion, whose `lambda` is kept too.
pub fn merge_restarts(results: Vec<TargetResult>, restarts: usize) -> Vec<TargetResult> {
    if restarts <= 1 || results.is_empty() || !results.len().is_multiple_of(restarts) {
        return results;
    }
    let t = results.len() / restarts;
    let mut runs: Vec<Vec<TargetResult>> = (0..t).map(|_| Vec::new()).collect();
    for (i, r) in results.into_iter().enumerate() {
        runs[i % t].push(r);
    }
    runs.into_iter()
        .map(|all| {
            let steps = all.iter().map(|r| r.steps).sum();
            let feasible = all.iter().any(|r| r.feasible);
            let used: Vec<TargetResult> = all
                .into_iter()
                .filter(|r| r.feasible || !feasible)
                .collect();
            let n = used.len() as f64;
            let mean = |f: &dyn Fn(&TargetResult) -> f64| used.iter().map(f).sum::<f64>() / n;
            let mean_opt = |f: &dyn Fn(&TargetResult) -> Option<f64>| {
                used.iter()
                    .map(f)
                    .collect::<Option<Vec<f64>>>()
                    .map(|v| v.iter().sum::<f64>() / n)
            };
            let best = used
                .iter()
                .min_by(|a, b| a.mean_dispersion().total_cmp(&b.mean_dispersion()))
                .expect("at least one run");
            let mut out = best.clone();
            out.steps = steps;
            out.feasible = feasible;
            out.rho = mean(&|r| r.rho);
            out.delta_norm = mean(&|r| r.delta_norm);
            out.coherence = mean(&|r| r.coherence);
            out.input_transfer = mean_opt(&|r| r.input_transfer);
            out.input_reach = mean_opt(&|r| r.input_reach);
            out.input_reach_sources = (0..out.input_reach_sources.len())
                .map(|c| mean(&|r| r.input_reach_sources.get(c).copied().unwrap_or(f64::NAN)))
                .collect();
            for (l, layer) in out.layers.iter_mut().enumerate() {
                layer.mu_norm = mean(&|r| layer_at(r, l).map_or(f64::NAN, |x| x.mu_norm));
                layer.dispersion = mean(&|r| layer_at(r, l).map_or(f64::NAN, |x| x.dispersion));
                layer.embed_norm = mean(&|r| layer_at(r, l).map_or(f64::NAN, |x| x.embed_norm));
                layer.transfer = mean_opt(&|r| layer_at(r, l).and_then(|x| x.transfer));
                layer.reach = mean_opt(&|r| layer_at(r, l).and_then(|x| x.reach));
                layer.pair_agreement = mean_opt(&|r| layer_at(r, l).and_then(|x| x.pair_agreement));
                layer.class_alignment =
                    mean_opt(&|r| layer_at(r, l).and_then(|x| x.class_alignment));
            }
            out
        })
        .collect()
}

fn layer_at(r: &TargetResult, l: usize) -> Option<&LayerStats> {
    r.layers.get(l)
}

/// At each target's reported iterate: `mu_t` per layer and, with held-out images, the transfer.
fn finish(
    model: &Classifier,
    problems: Vec<Problem>,
    holdout: Option<&ImageSet>,
    layers: &[String],
    dims: [usize; 3],
) -> Result<Vec<TargetResult>> {
    let device = model.device().clone();
    let held = match holdout {
        Some(h) => {
            model.check_images(h)?;
            let x = model.images_tensor(&h.pixels, h.len());
            let (_, embs) = model.logits_and_layers(x.clone(), layers)?;
            let embs: Vec<Tensor<2>> = embs.into_iter().map(Tensor::detach).collect();
            let sums: Vec<Option<ClassSums>> = embs
                .iter()
                .map(|e| {
                    let d = e.dims()[1];
                    let rows = e.clone().try_into_vec_as::<f32>().unwrap_or_default();
                    ClassSums::new(&rows, &h.labels, d)
                })
                .collect();
            Some((h, x, embs, sums))
        }
        None => None,
    };
    let mut out = Vec::with_capacity(problems.len());
    for p in problems {
        // The best feasible iterate's perturbations, or else the last ones.
        let (mut r, delta) = match (p.best, p.best_delta) {
            (Some(best), Some(d)) => (best, d),
            _ => (p.last.expect("at least one step ran"), p.delta.clone()),
        };
        r.steps = p.steps;
        let n = p.sources.len();
        r.deltas = delta.try_into_vec_as::<f32>().unwrap_or_default();
        r.coherence = coherence(&r.deltas, n);
        if let Some((h, x, _, _)) = &held
            && let Some(shift) = input_transfer(model, h, x, &r.deltas, n, r.target)?
        {
            r.input_transfer = Some(shift.share);
            r.input_reach = Some(shift.reach);
            r.input_reach_sources = shift.by_source;
        }
        let delta = Tensor::<4>::from_data(
            TensorData::new(r.deltas.clone(), [n, dims[0], dims[1], dims[2]]),
            &device,
        );
        let (_, embs) = model.logits_and_layers(p.x.clone() + delta, layers)?;
        for (l, emb) in embs.into_iter().enumerate() {
            let moved = emb.detach() - p.clean[l].clone();
            r.layers[l].pair_agreement = pair_agreement(
                &moved.clone().try_into_vec_as::<f32>().unwrap_or_default(),
                &p.sources,
            );
            let mu = consensus(moved);
            r.layers[l].mu = host(mu.clone().flatten(0, 1));
            if let Some((h, x, clean, sums)) = &held {
                r.layers[l].class_alignment = sums[l]
                    .as_ref()
                    .and_then(|s| s.alignment(&r.layers[l].mu, r.target));
                let idx: Vec<usize> = (0..h.len()).filter(|&i| h.labels[i] != r.target).collect();
                if !idx.is_empty() {
                    let m = idx.len();
                    let d = mu.dims()[1];
                    let info = model.layer(&layers[l])?;
                    let clean_rows = select_rows(clean[l].clone(), &idx, &device);
                    let xs = select_rows(x.clone(), &idx, &device);
                    let shifted = |scales: &[f32]| -> Result<Vec<bool>> {
                        let add = mu.clone().expand([m, d])
                            * scale_column(scales, &device).expand([m, d]);
                        let logits = if info.cut {
                            model.logits_from_layer(&layers[l], clean_rows.clone() + add, None)?
                        } else {
                            model.logits_with_added(xs.clone(), &layers[l], add)?
                        };
                        Ok(hits_of(logits, r.target))
                    };
                    let norm = first(mu.clone().powi_scalar(2).sum()).sqrt();
                    let found = reach(m, shifted)?;
                    r.layers[l].transfer = Some(found.share);
                    r.layers[l].reach = Some(found.median * norm);
                }
            }
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn coherence_is_one_for_a_shared_pattern_and_small_for_unrelated_ones() {
        let same = [0.3f32, -0.1, 0.2, 0.3, -0.1, 0.2, 0.3, -0.1, 0.2];
        assert!((coherence(&same, 3) - 1.0).abs() < 1e-12);
        assert!(coherence(&[1.0, 0.0, -1.0, 0.0], 2).abs() < 1e-12);
        // Four orthogonal unit perturbations: |mean| = 1/2, mean size 1.
        let mut eye = vec![0.0f32; 16];
        for i in 0..4 {
            eye[i * 4 + i] = 1.0;
        }
        assert!((coherence(&eye, 4) - 0.5).abs() < 1e-12);
        assert!(coherence(&[0.0; 6], 2).is_nan());
        assert!(coherence(&[], 0).is_nan());
        assert!(
            coherence(&[1.0; 5], 2).is_nan(),
            "not n whole perturbations"
        );
    }
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn reach_finds_each_images_smallest_sending_scale() {
        // Image i is sent once its scale reaches need[i]; the last one never is.
        let need = [0.5f32, 1.0, 1.5, 3.0];
        let hits = |s: &[f32]| Ok(s.iter().zip(&need).map(|(s, n)| s >= n).collect());
        let r = reach(4, hits).unwrap();
        let step = REACH_MAX / (1 << REACH_STEPS) as f64;
        assert!(
            (r.median - 1.25).abs() <= step,
            "median of 0.5, 1, 1.5, never: {}",
            r.median
        );
        // The whole shift sends the two images that need at most scale 1.
        assert_eq!(r.share, 0.5);
        // Per image, its own scale (the per-source values are medians of these): the never
        // sent one at twice the largest tried.
        assert_eq!(r.scales.len(), 4);
        for (got, want) in r.scales.iter().zip([0.5, 1.0, 1.5]) {
            assert!((got - want).abs() <= step, "{:?}", r.scales);
        }
        assert_eq!(r.scales[3], 2.0 * REACH_MAX);
        // Three of four never sent: the median is the stand-in for "never".
        let need = [0.25f32, 9.0, 9.0, 9.0];
        let hits = |s: &[f32]| Ok(s.iter().zip(&need).map(|(s, n)| s >= n).collect());
        let r = reach(4, hits).unwrap();
        assert_eq!(r.median, 2.0 * REACH_MAX);
        assert_eq!(r.share, 0.25);
        assert!(reach(0, |_: &[f32]| Ok(vec![])).unwrap().median.is_nan());
    }

    #[test]
    fn closed_form_mu_minimises_the_penalty() {
        let device = crate::model::cpu_device(false);
        let delta_emb = Tensor::<2>::random([12, 5], Distribution::Normal(0.3, 2.0), &device);
        let mu = consensus(delta_emb.clone());
        let at = |m: Tensor<2>| penalty(delta_emb.clone(), m).sum().into_scalar::<f32>();
        let best = at(mu.clone());
        for seed in 0..20 {
            let step = Tensor::<2>::random(
                [1, 5],
                Distribution::Normal(0.0, 0.1 * (1 + seed % 5) as f64),
                &device,
            );
            assert!(at(mu.clone() + step) > best, "a moved mu scored lower");
        }
        // And the gradient of the penalty with respect to mu vanishes there: sum_n (mu - Delta_n) = 0.
        let grad = (mu.clone().expand([12, 5]) - delta_emb)
            .sum_dim(0)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(grad < 1e-4, "{grad}");
    }

    #[test]
    fn pair_means_put_each_source_class_s_mean_in_its_rows() {
        let device = crate::model::cpu_device(false);
        // Sources in no order, of unequal sizes: class 3 has rows 0, 2, 3; class 1 rows 1, 4.
        let sources = [3, 1, 3, 3, 1];
        let rows = [
            [1.0f32, 0.0],
            [10.0, 2.0],
            [2.0, 3.0],
            [6.0, -3.0],
            [20.0, 4.0],
        ];
        let delta = Tensor::<2>::from_data(TensorData::new(rows.concat(), [5, 2]), &device);
        let means = pair_means(&sources, &device)
            .matmul(delta)
            .try_into_vec_as::<f32>()
            .unwrap();
        let want = [3.0, 0.0, 15.0, 3.0, 3.0, 0.0, 3.0, 0.0, 15.0, 3.0];
        for (got, want) in means.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{means:?}");
        }
    }

    fn run(
        target: usize,
        delta: f64,
        disp: f64,
        transfer: Option<f64>,
        feasible: bool,
    ) -> TargetResult {
        TargetResult {
            target,
            feasible,
            steps: 10,
            rho: if feasible { 0.9 } else { 0.5 },
            lambda: disp,
            delta_norm: delta,
            layers: vec![LayerStats {
                mu_norm: delta,
                dispersion: disp,
                embed_norm: delta,
                transfer,
                reach: Some(delta),
                mu: vec![disp as f32],
                ..Default::default()
            }],
            coherence: 0.5,
            input_reach: Some(delta),
            input_reach_sources: vec![f64::NAN, delta],
            sources: vec![1],
            sample_delta_norms: vec![delta],
            deltas: vec![disp as f32],
            ..Default::default()
        }
    }

    #[test]
    fn restarts_average_the_feasible_runs_and_keep_the_tightest_one_s_perturbations() {
        // Run-major: targets 0 and 1 of the first run, then of the second, then of the third.
        let results = vec![
            run(0, 2.0, 0.5, Some(0.2), true),
            run(1, 9.0, 0.1, Some(1.0), false),
            run(0, 4.0, 0.3, Some(0.4), true),
            run(1, 7.0, 0.2, Some(1.0), false),
            run(0, 100.0, 0.01, Some(1.0), false),
            run(1, 5.0, 0.4, None, false),
        ];
        let merged = merge_restarts(results, 3);
        assert_eq!(merged.len(), 2);
        let (a, b) = (&merged[0], &merged[1]);
        // Target 0: the infeasible third run is left out, the other two averaged.
        assert_eq!(a.target, 0);
        assert!(a.feasible);
        assert_eq!(a.steps, 30);
        assert!((a.delta_norm - 3.0).abs() < 1e-12);
        assert!((a.layers[0].mu_norm - 3.0).abs() < 1e-12);
        assert!((a.layers[0].dispersion - 0.4).abs() < 1e-12);
        assert!((a.layers[0].transfer.unwrap() - 0.3).abs() < 1e-12);
        assert!(
            (a.input_reach_sources[1] - 3.0).abs() < 1e-12 && a.input_reach_sources[0].is_nan()
        );
        // Its perturbations and lambda are the second run's, the tighter of the two averaged.
        assert_eq!(a.deltas, vec![0.3f32]);
        assert_eq!(a.layers[0].mu, vec![0.3f32]);
        assert!((a.lambda - 0.3).abs() < 1e-12);
        // Target 1 never reached pi: every run counts, and a statistic one run lacks is absent.
        assert_eq!(b.target, 1);
        assert!(!b.feasible);
        assert!((b.delta_norm - 7.0).abs() < 1e-12);
        assert!(b.layers[0].transfer.is_none());
        assert_eq!(b.deltas, vec![0.1f32]);
        // One run, or results that are not whole runs, pass through.
        let one = vec![run(0, 2.0, 0.5, None, true)];
        assert_eq!(merge_restarts(one.clone(), 1)[0].delta_norm, 2.0);
        assert_eq!(merge_restarts(one, 2).len(), 1);
    }

    #[test]
    fn class_basis_spans_the_class_s_centred_rows_and_nothing_else() {
        use super::class_bases;
        // Four rows in 4-d, mean (1, 1, 0, 0): class 0's two rows less the mean are (1, -1, 1,
        // 0) and (1, -1, -1, 0); class 1's (-1, 1, 0, 0) twice, one direction.
        let clean = [
            2.0f32, 0.0, 1.0, 0.0, //
            2.0, 0.0, -1.0, 0.0, //
            0.0, 2.0, 0.0, 0.0, //
            0.0, 2.0, 0.0, 0.0,
        ];
        let labels = [0, 0, 1, 1];
        let bases = class_bases(&clean, &labels, 4, 3);
        assert_eq!(bases.len(), 3);
        let (b, r) = bases[0].clone().unwrap();
        assert_eq!(r, 2);
        let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        let (b0, b1) = (&b[..4], &b[4..]);
        assert!((dot(b0, b0) - 1.0).abs() < 1e-6 && (dot(b1, b1) - 1.0).abs() < 1e-6);
        assert!(dot(b0, b1).abs() < 1e-6);
        // The share of a vector inside the span: all of (1, -1, 0, 0), none of (0, 0, 0, 1).
        let inside = |v: &[f32]| (dot(b0, v).powi(2) + dot(b1, v).powi(2)) / dot(v, v);
        assert!((inside(&[1.0, -1.0, 0.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(inside(&[0.0, 0.0, 0.0, 1.0]).abs() < 1e-12);
        assert!((inside(&[1.0, 1.0, 0.0, 0.0])).abs() < 1e-6);
        // A repeated row adds no dimension; no row, or rows that do not fit d, no basis.
        assert_eq!(bases[1].as_ref().unwrap().1, 1);
        assert!(bases[2].is_none());
        assert!(class_bases(&clean[..15], &labels, 4, 3).is_empty());
    }

    #[test]
    fn class_alignment_is_the_cosine_with_the_way_to_the_class_s_clean_images() {
        use super::ClassSums;
        // Class 1's clean rows sit at (2, 0, 0), the others' at (0, 0, 0) and (0, 2, 0): the way
        // to class 1 is (2, -1, 0).
        let clean = [2.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0];
        let labels = [1, 0, 2];
        let sums = ClassSums::new(&clean, &labels, 3).unwrap();
        let class_alignment = |mu: &[f32], target| sums.alignment(mu, target);
        let way = [2.0f32, -1.0, 0.0];
        assert!((class_alignment(&way, 1).unwrap() - 1.0).abs() < 1e-9);
        let scaled = [0.2f32, -0.1, 0.0];
        assert!((class_alignment(&scaled, 1).unwrap() - 1.0).abs() < 1e-9);
        // A feature no clean image has: orthogonal to the way.
        assert!(class_alignment(&[0.0, 0.0, 3.0], 1).unwrap().abs() < 1e-12);
        // Away from the class.
        let away = class_alignment(&[-2.0, 1.0, 0.0], 1).unwrap();
        assert!((away + 1.0).abs() < 1e-9);
        // No clean row of the class, a zero mu, a mu or rows that do not fit d.
        assert!(class_alignment(&way, 3).is_none());
        assert!(class_alignment(&[0.0; 3], 1).is_none());
        assert!(class_alignment(&[1.0, 0.0], 1).is_none());
        assert!(ClassSums::new(&clean[..8], &labels, 3).is_none());
    }

    #[test]
    fn pair_agreement_is_one_for_one_route_and_falls_as_the_routes_part() {
        let sources = [0, 0, 1, 1, 2, 2];
        // Every source class moves the same way (the rows within a class differ, their means
        // do not).
        let same = [
            1.0f32, 1.0, 3.0, -1.0, 2.0, 0.0, 2.0, 0.0, 0.0, 2.0, 4.0, -2.0,
        ];
        let a = pair_agreement(&same, &sources).unwrap();
        assert!((a - 1.0).abs() < 1e-9, "{a}");
        // Each class along its own axis: 1/3 of the mean square, the 1/S of unrelated routes.
        let own = [
            1.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0,
            1.0,
        ];
        let b = pair_agreement(&own, &sources).unwrap();
        assert!((b - 1.0 / 3.0).abs() < 1e-9, "{b}");
        // Opposite routes cancel.
        let opposite = [1.0f32, 1.0, -1.0, -1.0];
        assert!(pair_agreement(&opposite, &[0, 0, 1, 1]).unwrap() < 1e-12);
        // One source class has nothing to agree with.
        assert!(pair_agreement(&[1.0, 2.0], &[4, 4]).is_none());
    }

    #[test]
    fn lambda_rises_when_feasible_and_falls_when_not() {
        let mut s = LambdaSchedule::new(1.0, 2.0);
        s.update(0.95, 0.9);
        assert!(
            (s.lambda - 1.0).abs() < 1e-12,
            "one feasible check is not yet a run"
        );
        s.update(0.95, 0.9);
        assert!(
            (s.lambda - 2.0).abs() < 1e-12,
            "rises after consecutive feasible checks"
        );
        s.update(0.95, 0.9);
        assert!((s.lambda - 4.0).abs() < 1e-12);
        s.update(0.5, 0.9);
        assert!((s.lambda - 2.0).abs() < 1e-12, "falls when infeasible");
        s.update(0.95, 0.9);
        assert!((s.lambda - 2.0).abs() < 1e-12, "the feasible run restarts");
    }

    #[test]
    fn many_classes_share_a_capped_sample_evenly() {
        // 5 classes x 4 images, interleaved labels.
        let labels: Vec<usize> = (0..20).map(|i| i % 5).collect();
        assert_eq!(
            sources_of(&labels, 2, 100).len(),
            16,
            "under the cap: every non-target image"
        );
        let capped = sources_of(&labels, 2, 10);
        assert_eq!(capped.len(), 10);
        assert!(capped.iter().all(|&i| labels[i] != 2));
        assert!(capped.windows(2).all(|w| w[0] < w[1]));
        let mut per = [0usize; 5];
        for &i in &capped {
            per[labels[i]] += 1;
        }
        // 10 over 4 source classes: 3, 3, 2, 2 in class order, none from the target.
        assert_eq!(per, [3, 3, 0, 2, 2]);
    }

    #[test]
    fn config_is_validated_before_compute() {
        assert!(CepaConfig::default().validate().is_ok());
        let bad = [
            CepaConfig {
                lr: 0.0,
                ..Default::default()
            },
            CepaConfig {
                pi: 1.5,
                ..Default::default()
            },
            CepaConfig {
                lambda_factor: 1.0,
                ..Default::default()
            },
            CepaConfig {
                restarts: 0,
                ..Default::default()
            },
            CepaConfig {
                orthogonal: -1.0,
                ..Default::default()
            },
            CepaConfig {
                orthogonal: f64::NAN,
                ..Default::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
