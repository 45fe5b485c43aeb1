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
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::model::Classifier;

/// Stage-1 settings. [paper] marks what the paper states, [ours] what we chose.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CepaConfig {
    /// Step budget per target [ours]. Default 300.
    pub steps: usize,
    /// Adam learning rate, pixel units [ours]. Default 0.01.
    pub lr: f64,
    /// Initial consensus weight lambda [ours]. Default 0.01.
    pub lambda_init: f64,
    /// Factor by which lambda rises (feasible) or falls (infeasible) [ours]. Default 1.5.
    pub lambda_factor: f64,
    /// Steps between feasibility checks and lambda updates [ours]. Default 5.
    pub check_every: usize,
    /// Feasible: at least this fraction of the samples is classified as the target [ours]. Default 0.9.
    pub pi: f64,
    /// Weight of mean ||delta||^2, the minimal-perturbation term [ours]. Default 0.001.
    pub beta: f64,
    /// Initial delta uniform in [0, init_max) then projected into the image range [ours]. Default 0.1.
    pub init_max: f64,
    /// Converged when the relative change of J stays below this for `patience` checks. Default 1e-5.
    pub tol: f64,
    /// Checks without improvement (of J, or of the best feasible dispersion) before stopping. Default 10.
    pub patience: usize,
    /// Seed of the initial perturbations. Default 0.
    pub seed: u64,
}

impl Default for CepaConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.01,
            lambda_init: 0.01,
            lambda_factor: 1.5,
            check_every: 5,
            pi: 0.9,
            beta: 0.001,
            init_max: 0.1,
            tol: 1e-5,
            patience: 10,
            seed: 0,
        }
    }
}

impl CepaConfig {
    /// Reject values that would make the optimisation meaningless, before any compute.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.steps == 0 || self.check_every == 0 {
            return bad("steps and check_every must be at least 1".into());
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

/// The outcome of one target's problem, at its best feasible iterate (or its last one).
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    pub target: usize,
    /// Whether `rho >= pi` was ever reached.
    pub feasible: bool,
    pub steps: usize,
    /// Fraction of samples classified as the target at the reported iterate.
    pub rho: f64,
    pub lambda: f64,
    /// `||mu_t||_2`.
    pub mu_norm: f64,
    /// Mean `||delta_n||_2`.
    pub delta_norm: f64,
    /// Mean `||Delta_n - mu||^2 / ||mu||^2`.
    pub dispersion: f64,
    /// Per sample: its true class and `||delta_n||_2`.
    pub sources: Vec<usize>,
    pub sample_delta_norms: Vec<f64>,
    /// `mu_t` (length d).
    #[serde(skip)]
    pub mu: Vec<f32>,
    /// The per-sample perturbations, CHW each.
    #[serde(skip)]
    pub deltas: Vec<f32>,
}

/// Per-target optimisation state.
struct Problem {
    x: Tensor<4>,
    clean: Tensor<2>,
    sources: Vec<usize>,
    delta: Tensor<4>,
    m: Tensor<4>,
    v: Tensor<4>,
    schedule: LambdaSchedule,
    steps: usize,
    last_j: f64,
    stall: usize,
    since_best: usize,
    done: bool,
    best: Option<TargetResult>,
    last: Option<TargetResult>,
}

/// Copy a 1-D tensor to the host.
fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap_or_default()
}

/// Run stage 1 for every target class at `layer`. `images` are the clean samples (all classes).
pub fn stage1(
    model: &Classifier,
    images: &ImageSet,
    layer: &str,
    cfg: &CepaConfig,
) -> Result<Vec<TargetResult>> {
    cfg.validate()?;
    model.check_images(images)?;
    let k = model.num_classes();
    let device = model.device().clone();
    let per = images.image_len();
    let dims = [images.channels, images.height, images.width];
    let x_all = model.images_tensor(&images.pixels, images.len());
    let clean_all = model.embed(x_all.clone(), layer)?.detach();
    let d = clean_all.dims()[1] as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);

    let mut problems: Vec<Problem> = Vec::with_capacity(k);
    for target in 0..k {
        let idx: Vec<usize> = (0..images.len())
            .filter(|&i| images.labels[i] != target)
            .collect();
        if idx.is_empty() {
            return Err(Error::Mismatch(format!(
                "no clean images outside class {target}"
            )));
        }
        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(
                idx.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [idx.len()],
            ),
            &device,
        );
        let x = x_all.clone().select(0, ids.clone());
        let clean = clean_all.clone().select(0, ids);
        let n = idx.len();
        let init: Vec<f32> = (0..n * per)
            .map(|_| rng.random_range(0.0..cfg.init_max.max(1e-12)) as f32)
            .collect();
        let delta0 = Tensor::<4>::from_data(
            TensorData::new(init, [n, dims[0], dims[1], dims[2]]),
            &device,
        );
        let delta = (x.clone() + delta0).clamp(0.0, 1.0) - x.clone();
        problems.push(Problem {
            x,
            clean,
            sources: idx.iter().map(|&i| images.labels[i]).collect(),
            m: delta.zeros_like(),
            v: delta.zeros_like(),
            delta,
            schedule: LambdaSchedule::new(cfg.lambda_init, cfg.lambda_factor),
            steps: 0,
            last_j: f64::INFINITY,
            stall: 0,
            since_best: 0,
            done: false,
            best: None,
            last: None,
        });
    }

    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    for step in 0..cfg.steps {
        let active: Vec<usize> = (0..k).filter(|&t| !problems[t].done).collect();
        if active.is_empty() {
            break;
        }
        let leaves: Vec<Tensor<4>> = active
            .iter()
            .map(|&t| problems[t].delta.clone().detach().require_grad())
            .collect();
        let xs: Vec<Tensor<4>> = active
            .iter()
            .zip(&leaves)
            .map(|(&t, dl)| problems[t].x.clone() + dl.clone())
            .collect();
        let (logits, mut embs) =
            model.logits_and_layers(Tensor::cat(xs, 0), &[layer.to_string()])?;
        let emb = embs.remove(0);
        let mut total: Option<Tensor<1>> = None;
        let mut row = 0;
        let mut measures = Vec::with_capacity(active.len());
        for (&t, leaf) in active.iter().zip(&leaves) {
            let p = &problems[t];
            let n = p.sources.len();
            let lt = logits.clone().narrow(0, row, n);
            let delta_emb = emb.clone().narrow(0, row, n) - p.clean.clone();
            row += n;
            let mu = delta_emb.clone().mean_dim(0).detach();
            let dev2 = (delta_emb - mu.clone()).powi_scalar(2).sum_dim(1);
            let ce = log_softmax(lt.clone(), 1).narrow(1, t, 1).neg();
            let l2 = leaf
                .clone()
                .powi_scalar(2)
                .sum_dims(&[1, 2, 3])
                .reshape([n, 1]);
            let lambda = p.schedule.lambda;
            let j = ce.clone().mean()
                + dev2.clone().mean() * (lambda / d)
                + l2.clone().mean() * cfg.beta;
            // Measures at this iterate (before the step): rho, J, ||mu||, dispersion, ||delta_n||.
            let hit = lt.argmax(1).equal_elem(t as i64).int().sum();
            let mu_sq = mu.powi_scalar(2).sum();
            measures.push((
                j.clone().detach(),
                hit,
                mu_sq,
                dev2.detach().mean(),
                l2.detach().sqrt().reshape([n]),
            ));
            total = Some(match total {
                None => j,
                Some(acc) => acc + j,
            });
        }
        let grads = total.expect("at least one active problem").backward();
        let bc1 = 1.0 - b1.powi(step as i32 + 1);
        let bc2 = 1.0 - b2.powi(step as i32 + 1);
        for ((&t, leaf), (j, hit, mu_sq, disp, norms)) in active.iter().zip(&leaves).zip(measures) {
            let p = &mut problems[t];
            let n = p.sources.len();
            let g = leaf
                .grad(&grads)
                .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
            p.m = p.m.clone() * b1 + g.clone() * (1.0 - b1);
            p.v = p.v.clone() * b2 + g.powi_scalar(2) * (1.0 - b2);
            let update = (p.m.clone() / bc1) / ((p.v.clone() / bc2).sqrt() + eps) * cfg.lr;
            let moved = p.delta.clone() - update;
            p.delta = (p.x.clone() + moved).clamp(0.0, 1.0) - p.x.clone();
            p.steps += 1;

            let j = f64::from(host(j)[0]);
            let rho = host(hit.float())[0] as f64 / n as f64;
            let mu_norm = f64::from(host(mu_sq)[0]).sqrt();
            let dispersion = f64::from(host(disp)[0]) / (mu_norm * mu_norm).max(1e-30);
            let sample_norms: Vec<f64> = host(norms).into_iter().map(f64::from).collect();
            let current = TargetResult {
                target: t,
                feasible: rho >= cfg.pi,
                steps: p.steps,
                rho,
                lambda: p.schedule.lambda,
                mu_norm,
                delta_norm: sample_norms.iter().sum::<f64>() / n as f64,
                dispersion,
                sources: p.sources.clone(),
                sample_delta_norms: sample_norms,
                mu: Vec::new(),
                deltas: Vec::new(),
            };
            if current.feasible && p.best.as_ref().is_none_or(|b| dispersion < b.dispersion) {
                let mut best = current.clone();
                best.deltas = p.delta.clone().try_into_vec_as::<f32>().unwrap_or_default();
                p.best = Some(best);
                p.since_best = 0;
            } else {
                p.since_best += 1;
            }
            p.last = Some(current);
            if p.steps.is_multiple_of(cfg.check_every) {
                p.schedule.update(rho, cfg.pi);
                let rel = (j - p.last_j).abs() / j.abs().max(1e-12);
                p.stall = if rel < cfg.tol { p.stall + 1 } else { 0 };
                p.last_j = j;
                let no_progress =
                    p.best.is_some() && p.since_best >= cfg.patience * cfg.check_every;
                if p.stall >= cfg.patience || no_progress {
                    p.done = true;
                }
            }
        }
    }
    // The consensus mu_t at the reported iterate, for the transfer statistic and reports.
    let mut out = Vec::with_capacity(k);
    for p in problems {
        let mut r = p.best.or(p.last).expect("at least one step ran");
        r.steps = p.steps;
        let delta = if r.deltas.is_empty() {
            p.delta.clone()
        } else {
            Tensor::<4>::from_data(
                TensorData::new(
                    r.deltas.clone(),
                    [p.sources.len(), dims[0], dims[1], dims[2]],
                ),
                &device,
            )
        };
        if r.deltas.is_empty() {
            r.deltas = delta.clone().try_into_vec_as::<f32>().unwrap_or_default();
        }
        let emb = model.embed(p.x.clone() + delta, layer)?.detach();
        r.mu = host((emb - p.clean).mean_dim(0).flatten(0, 1));
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
