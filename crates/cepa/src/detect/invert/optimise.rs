//! The optimisation of stage 2: every form's Adam loop, run together in one batch per step.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::Rng;

use super::{FormResult, InvertConfig, Norm, TriggerKind};
use crate::detect::cepa::LambdaSchedule;
use crate::error::{Error, Result};
use crate::model::Classifier;

/// What every form's optimisation shares.
pub(super) struct Setup<'a> {
    pub(super) model: &'a Classifier,
    /// Optimisation images, none of the target class.
    pub(super) x: Tensor<4>,
    pub(super) clean: Option<Tensor<2>>,
    /// A fixed consensus to pull towards (`None`: the embedded perturbations' own mean).
    pub(super) mu: Option<Tensor<2>>,
    pub(super) layer: Option<String>,
    pub(super) target: usize,
    pub(super) shape: [usize; 3],
    pub(super) cfg: &'a InvertConfig,
}

/// Initial raw parameters of a form (additive: `[delta]`; mask: `[a, b]`, tanh space).
pub(super) fn initial(
    kind: TriggerKind,
    [c, h, w]: [usize; 3],
    cfg: &InvertConfig,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<f32>> {
    let mut draw = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                if hi > lo {
                    rng.random_range(lo..hi) as f32
                } else {
                    lo as f32
                }
            })
            .collect()
    };
    match kind {
        TriggerKind::Additive => vec![draw(c * h * w, 0.0, cfg.init_max)],
        // m in about [0.02, 0.5], p in about [0.12, 0.88].
        // A nearly empty mask (m in about [0.012, 0.018]; a wider random start, m up to 0.5,
        // ended costlier on badnets-pytorch-mnist) and p in about [0.05, 0.95].
        TriggerKind::MaskPattern => vec![draw(h * w, -2.2, -2.0), draw(c * h * w, -1.5, 1.5)],
    }
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap_or_default()
}

fn first(t: Tensor<1>) -> f64 {
    host(t).first().copied().map_or(f64::NAN, f64::from)
}

/// Adam state of one parameter.
struct Param {
    value: Tensor<4>,
    m: Tensor<4>,
    v: Tensor<4>,
}

/// One form's optimisation state.
struct Form {
    kind: TriggerKind,
    params: Vec<Param>,
    schedule: LambdaSchedule,
    best: Option<FormResult>,
    last: Option<FormResult>,
    /// The best regulariser at the last check that improved it by 1 %, and checks since.
    best_at_check: f64,
    stall: usize,
    steps: usize,
    done: bool,
}

/// The images with a form's trigger (differentiable in the leaves), its regulariser, and its
/// trigger (`delta` or `p`) and mask.
fn triggered(
    s: &Setup,
    kind: TriggerKind,
    leaves: &[Tensor<4>],
) -> (Tensor<4>, Tensor<1>, Tensor<4>, Option<Tensor<4>>) {
    let [c, h, w] = s.shape;
    let full = [s.x.dims()[0], c, h, w];
    match kind {
        TriggerKind::Additive => {
            let d = leaves[0].clone();
            let reg = match s.cfg.norm {
                Norm::L1 => d.clone().abs().mean(),
                Norm::L2 => d.clone().powi_scalar(2).mean(),
            };
            let xt = (s.x.clone() + d.clone().expand(full)).clamp(0.0, 1.0);
            (xt, reg, d, None)
        }
        TriggerKind::MaskPattern => {
            let m = leaves[0].clone().tanh() * 0.5 + 0.5;
            let p = leaves[1].clone().tanh() * 0.5 + 0.5;
            let me = m.clone().expand(full);
            let xt = s.x.clone() * (me.clone().neg() + 1.0) + me * p.clone().expand(full);
            (xt, m.clone().mean(), p, Some(m))
        }
    }
}

impl Param {
    /// One Adam step (`step` counts from 0) then a clamp to `[-bound, bound]`.
    fn adam(&mut self, g: Tensor<4>, lr: f64, step: usize, bound: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let bc1 = 1.0 - b1.powi(step as i32 + 1);
        let bc2 = 1.0 - b2.powi(step as i32 + 1);
        self.m = self.m.clone() * b1 + g.clone() * (1.0 - b1);
        self.v = self.v.clone() * b2 + g.powi_scalar(2) * (1.0 - b2);
        let update = (self.m.clone() / bc1) / ((self.v.clone() / bc2).sqrt() + eps) * lr;
        self.value = (self.value.clone() - update).clamp(-bound, bound);
    }
}

impl Form {
    fn new(kind: TriggerKind, init: Vec<Vec<f32>>, s: &Setup, device: &Device) -> Form {
        let [c, h, w] = s.shape;
        let dims: &[[usize; 4]] = match kind {
            TriggerKind::Additive => &[[1, c, h, w]],
            TriggerKind::MaskPattern => &[[1, 1, h, w], [1, c, h, w]],
        };
        let params = init
            .into_iter()
            .zip(dims)
            .map(|(v, &d)| {
                let value = Tensor::<4>::from_data(TensorData::new(v, d), device);
                Param {
                    m: value.zeros_like(),
                    v: value.zeros_like(),
                    value,
                }
            })
            .collect();
        Form {
            kind,
            params,
            schedule: LambdaSchedule::new(s.cfg.lambda_init, s.cfg.lambda_factor),
            best: None,
            last: None,
            best_at_check: f64::INFINITY,
            stall: 0,
            steps: 0,
            done: false,
        }
    }

    /// Keep `current` (with its trigger and mask copied to the host) when it is the best
    /// feasible iterate so far, or the latest one while none is feasible.
    fn record(&mut self, current: FormResult, trigger: Tensor<4>, mask: Option<Tensor<4>>) {
        let improves = self
            .best
            .as_ref()
            .is_none_or(|b| current.regulariser < b.regulariser);
        if (current.feasible && improves) || self.best.is_none() {
            let mut r = current;
            r.trigger = host(trigger.detach().flatten(0, 3));
            r.mask = mask.map(|m| host(m.detach().flatten(0, 3)));
            if r.feasible {
                self.best = Some(r);
            } else {
                self.last = Some(r);
            }
        }
    }

    /// At a check: update lambda from the success rate `rho`; stop after `patience` checks
    /// without a 1 % smaller feasible regulariser.
    fn check(&mut self, rho: f64, cfg: &InvertConfig) {
        self.schedule.update(rho, cfg.pi);
        let now = self.best.as_ref().map_or(f64::INFINITY, |b| b.regulariser);
        if self.best.is_some() && now >= 0.99 * self.best_at_check {
            self.stall += 1;
        } else {
            self.stall = 0;
            self.best_at_check = now;
        }
        self.done = self.stall >= cfg.patience;
    }
}

/// A form's objective on its rows of the batch (`logits`, and `emb` at the consensus layer),
/// and the measures of the iterate: success rate, regulariser, dispersion.
fn objective(
    s: &Setup,
    logits: Tensor<2>,
    emb: Option<Tensor<2>>,
    reg: Tensor<1>,
    lambda1: f64,
) -> (Tensor<1>, f64, f64, Option<f64>) {
    let n = logits.dims()[0];
    let ce = log_softmax(logits.clone(), 1)
        .narrow(1, s.target, 1)
        .neg()
        .mean();
    let reg_v = first(reg.clone().detach());
    let mut j = ce + reg * lambda1;
    let mut disp_v = None;
    if let (Some(e), Some(clean)) = (emb, &s.clean) {
        let delta_emb = e - clean.clone();
        let mu = match &s.mu {
            Some(m) => m.clone(),
            None => delta_emb.clone().mean_dim(0).detach(),
        };
        let mu_sq = first(mu.clone().powi_scalar(2).sum()).max(1e-12);
        let disp = (delta_emb - mu).powi_scalar(2).sum_dim(1).mean() / mu_sq;
        disp_v = Some(first(disp.clone().detach()));
        j = j + disp * (s.cfg.consensus_ratio * lambda1);
    }
    let hits = first(
        logits
            .argmax(1)
            .equal_elem(s.target as i64)
            .int()
            .sum()
            .float(),
    );
    (j, hits / n as f64, reg_v, disp_v)
}

/// Optimise the forms together, one batch per step, each to its own end; return each one's best
/// feasible (or last) iterate.
pub(super) fn optimise(
    s: &Setup,
    kinds: &[TriggerKind],
    inits: Vec<Vec<Vec<f32>>>,
) -> Result<Vec<FormResult>> {
    let cfg = s.cfg;
    let n = s.x.dims()[0];
    let device = s.model.device().clone();
    let mut forms: Vec<Form> = kinds
        .iter()
        .zip(inits)
        .map(|(&kind, init)| Form::new(kind, init, s, &device))
        .collect();
    for step in 0..cfg.steps {
        crate::runtime::check_interrupt()?;
        let active: Vec<usize> = (0..forms.len()).filter(|&i| !forms[i].done).collect();
        if active.is_empty() {
            break;
        }
        let leaves: Vec<Vec<Tensor<4>>> = active
            .iter()
            .map(|&i| {
                let params = &forms[i].params;
                params
                    .iter()
                    .map(|p| p.value.clone().detach().require_grad())
                    .collect()
            })
            .collect();
        let parts: Vec<_> = active
            .iter()
            .zip(&leaves)
            .map(|(&i, l)| triggered(s, forms[i].kind, l))
            .collect();
        let xs = Tensor::cat(parts.iter().map(|p| p.0.clone()).collect(), 0);
        let (logits, emb) = match (&s.layer, &s.clean) {
            (Some(l), Some(_)) => {
                let (logits, mut embs) = s.model.logits_and_layers(xs, std::slice::from_ref(l))?;
                (logits, Some(embs.remove(0)))
            }
            _ => (s.model.logits(xs)?, None),
        };
        let mut total: Option<Tensor<1>> = None;
        let mut measured = Vec::with_capacity(active.len());
        for (k, (&i, part)) in active.iter().zip(&parts).enumerate() {
            let lambda1 = forms[i].schedule.lambda;
            let rows = |t: &Tensor<2>| t.clone().narrow(0, k * n, n);
            let (j, rho, reg, disp) = objective(
                s,
                rows(&logits),
                emb.as_ref().map(rows),
                part.1.clone(),
                lambda1,
            );
            measured.push((rho, reg, disp, lambda1));
            total = Some(match total {
                None => j,
                Some(acc) => acc + j,
            });
        }
        let grads = total.expect("at least one active form").backward();
        for (((&i, leaf), (_, _, trigger, mask)), (rho, reg, disp, lambda1)) in
            active.iter().zip(&leaves).zip(parts).zip(measured)
        {
            let f = &mut forms[i];
            f.steps = step + 1;
            // The iterate measured above, before this step's update.
            let current = FormResult {
                kind: f.kind,
                feasible: rho >= cfg.pi,
                fit_success: rho,
                cost: f64::NAN,
                base_cost: f64::NAN,
                l1: f64::NAN,
                l2: f64::NAN,
                mask_l1: None,
                regulariser: reg,
                dispersion: disp,
                steps: step + 1,
                lambda1,
                lambda2: cfg.consensus_ratio * lambda1,
                strength: 1.0,
                confident_success: None,
                trigger: Vec::new(),
                mask: None,
            };
            f.record(current, trigger, mask);
            // Additive: a pixel moves at most the whole range; mask + pattern: keep tanh out of
            // saturation so a pixel can still move back.
            let (lr, bound) = match f.kind {
                TriggerKind::Additive => (cfg.lr_additive, 1.0),
                TriggerKind::MaskPattern => (cfg.lr_mask, 4.0),
            };
            for (p, l) in f.params.iter_mut().zip(leaf) {
                let g = l
                    .grad(&grads)
                    .ok_or_else(|| Error::Mismatch("no gradient reached the trigger".into()))?;
                p.adam(g, lr, step, bound);
            }
            if (step + 1).is_multiple_of(cfg.check_every) {
                f.check(rho, cfg);
            }
        }
    }
    Ok(forms
        .into_iter()
        .map(|f| {
            let mut r = f.best.or(f.last).expect("at least one step ran");
            r.steps = f.steps;
            r
        })
        .collect())
}
