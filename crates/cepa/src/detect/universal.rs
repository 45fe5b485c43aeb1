//! One additive pattern per putative target [ours, after the reverse engineering of additive
//! backdoor patterns by Xiang, Miller and Kesidis]: a single `v_t`, added to every clean image of
//! the other classes, grown from zero by Adam on the mean cross-entropy toward `t` until a share
//! `pi` of the images lands in `t`. Its size `||v_t||_2` at that point is the statistic
//! [`crate::detect::verdict::Statistic::UniversalNorm`].
//!
//! Why beside CEPA's per-sample perturbations: those are free per image (only their embedded
//! moves must agree), so on a weak CIFAR-10 network every class is reached by per-image
//! adversarial routes of about the same size, and a trigger spread over the whole image (SIG's
//! sinusoid, a chessboard, a blend) costs no less. One pattern for all images has no such
//! routes: a natural class needs a large one, a backdoor target the (small) trigger.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::ImageSet;
use crate::detect::cepa::{CepaConfig, sources_of};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// The clean images of `images` (already on the device as `x_all`) outside class `target`, at
/// most `max`, taken evenly from their classes ([`sources_of`]); an error when there are none.
fn others_of(images: &ImageSet, x_all: &Tensor<4>, target: usize, max: usize) -> Result<Tensor<4>> {
    let idx = sources_of(&images.labels, target, max);
    if idx.is_empty() {
        return Err(Error::Mismatch(format!(
            "no clean images outside class {target}"
        )));
    }
    let n = idx.len();
    let ids = idx.into_iter().map(|i| i as i64).collect::<Vec<_>>();
    Ok(x_all.clone().select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &x_all.device()),
    ))
}

/// Per row of `logits` (`[n, k]`), the margin `f_t - max_{j != t} f_j` of class `target`, as
/// `[n, 1]` (a large constant taken off the target's own logit leaves the others' maximum).
fn target_margin(logits: Tensor<2>, target: usize) -> Tensor<2> {
    let [n, k] = logits.dims();
    let mut mask = vec![0f32; k];
    mask[target] = 1e9;
    let mask =
        Tensor::<2>::from_data(TensorData::new(mask, [1, k]), &logits.device()).expand([n, k]);
    let others = (logits.clone() - mask).max_dim(1);
    logits.narrow(1, target, 1) - others
}

/// The L2 norm of each image of `x` (`[n, C, H, W]`), as `[n, 1, 1, 1]`, at least 1e-12.
fn image_norms(x: Tensor<4>) -> Tensor<4> {
    let n = x.dims()[0];
    x.powi_scalar(2)
        .sum_dims(&[1, 2, 3])
        .sqrt()
        .clamp_min(1e-12)
        .reshape([n, 1, 1, 1])
}

/// What the pattern of one target reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Universal {
    pub target: usize,
    /// `||v_t||_2` at the first step where a share `pi` of the images was sent to `t`, or at
    /// the last step when none was (a lower bound of the size needed).
    pub norm: f64,
    /// The share of the images `v_t` sent to `t` at that step.
    pub share: f64,
    /// Whether the share reached `pi` within the step budget.
    pub reached: bool,
    pub steps: usize,
}

struct Problem {
    target: usize,
    x: Tensor<4>,
    v: Tensor<4>,
    adam: crate::detect::Adam<4>,
    steps: usize,
    done: bool,
    last: Option<Universal>,
}

/// The pattern of every target in `targets`, from the clean `images` (at most
/// `cfg.universal_samples` of the other classes each, taken evenly from the source classes).
/// Deterministic: every pattern starts at zero.
pub fn universal(
    model: &Classifier,
    images: &ImageSet,
    targets: &[usize],
    cfg: &CepaConfig,
) -> Result<Vec<Universal>> {
    model.check_images(images)?;
    let device = model.device().clone();
    let dims = [1, images.channels, images.height, images.width];
    let x_all = model.images_tensor(&images.pixels, images.len());
    let mut problems = Vec::with_capacity(targets.len());
    for &target in targets {
        let x = others_of(images, &x_all, target, cfg.universal_samples)?;
        let v = Tensor::<4>::zeros(dims, &device);
        problems.push(Problem {
            target,
            x,
            adam: crate::detect::Adam::new(&v),
            v,
            steps: 0,
            done: false,
            last: None,
        });
    }
    crate::detect::run_shares(&mut problems, "universal-pattern", model.device(), |part| {
        grow(model, part, cfg)
    })?;
    Ok(problems
        .into_iter()
        .map(|p| p.last.expect("at least one step ran"))
        .collect())
}

/// Adam on every problem of `problems` (one batch) until each reaches `pi` or the budget ends.
fn grow(model: &Classifier, problems: &mut [Problem], cfg: &CepaConfig) -> Result<()> {
    let budget = cfg.universal_steps.max(1);
    for step in 0..budget {
        let Some((active, leaves)) = crate::detect::active_leaves(problems, |p| p.done, |p| &p.v)?
        else {
            break;
        };
        let xs: Vec<Tensor<4>> = active
            .iter()
            .zip(&leaves)
            .map(|(&i, v)| {
                let x = &problems[i].x;
                (x.clone() + v.clone().expand(x.dims())).clamp(0.0, 1.0)
            })
            .collect();
        let logits = model.logits(Tensor::cat(xs, 0))?;
        let mut total: Option<Tensor<1>> = None;
        let mut parts = Vec::with_capacity(2 * active.len());
        let mut row = 0;
        for (&i, leaf) in active.iter().zip(&leaves) {
            let p = &problems[i];
            let n = p.x.dims()[0];
            let lt = logits.clone().narrow(0, row, n);
            row += n;
            let ce = log_softmax(lt.clone(), 1)
                .narrow(1, p.target, 1)
                .neg()
                .mean();
            parts.push(lt.argmax(1).equal_elem(p.target as i64).int().sum().float());
            parts.push(leaf.clone().detach().powi_scalar(2).sum());
            total = Some(match total {
                None => ce,
                Some(acc) => acc + ce,
            });
        }
        let grads = total.expect("at least one active problem").backward();
        let mut read = crate::detect::host_parts(parts)?.into_iter();
        let mut scalar = || {
            read.next()
                .and_then(|v| v.first().copied())
                .map_or(f64::NAN, f64::from)
        };
        for (&i, leaf) in active.iter().zip(&leaves) {
            let p = &mut problems[i];
            let n = p.x.dims()[0];
            let share = scalar() / n as f64;
            let norm = scalar().sqrt();
            p.steps += 1;
            let reached = share >= cfg.pi;
            p.last = Some(Universal {
                target: p.target,
                norm,
                share,
                reached,
                steps: p.steps,
            });
            if reached || p.steps >= budget {
                p.done = true;
                continue;
            }
            let g = leaf
                .grad(&grads)
                .ok_or_else(|| Error::Mismatch("no gradient reached the pattern".into()))?;
            let update = p.adam.update(g, step, cfg.universal_lr);
            // Beyond +-1 a pattern only saturates the clip: keep it in range.
            p.v = (p.v.clone() - update).clamp(-1.0, 1.0);
        }
    }
    Ok(())
}

/// One target's starts in the largest-margin search.
struct Starts {
    target: usize,
    x: Tensor<4>,
    adam: crate::detect::Adam<4>,
    best: f64,
    /// The start that reached `best`, as it was when measured (`[1, C, H, W]`).
    best_x: Option<Tensor<4>>,
}

/// The largest logit margin `f_t(x) - max_{j != t} f_j(x)` that an input `x` in `[0, 1]` reaches
/// for each target, over `margin_restarts` random starts of `margin_steps` Adam steps each
/// [after MM-BD, Wang et al. 2024]: a backdoor's pathway drives its target's logit far beyond
/// what natural features do. Data-free: only the input shape `dims` (CHW) is used. The margin
/// reported is that of the best start at the last step measured (before the last update).
pub fn max_margin(
    model: &Classifier,
    dims: [usize; 3],
    targets: &[usize],
    cfg: &CepaConfig,
) -> Result<Vec<f64>> {
    Ok(max_margin_inputs(model, dims, targets, cfg)?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// [`max_margin`] with, for each target, the input (`[1, C, H, W]`, in `[0, 1]`) of the start
/// that reached the margin reported.
pub fn max_margin_inputs(
    model: &Classifier,
    dims: [usize; 3],
    targets: &[usize],
    cfg: &CepaConfig,
) -> Result<Vec<(f64, Tensor<4>)>> {
    use rand::Rng;
    let device = model.device().clone();
    let r = cfg.margin_restarts.max(1);
    let per = dims[0] * dims[1] * dims[2];
    let mut problems: Vec<Starts> = targets
        .iter()
        .map(|&target| {
            let mut rng = crate::detect::class_rng(cfg.seed ^ 0x6d6d_6264, target);
            let init: Vec<f32> = (0..r * per).map(|_| rng.random_range(0.0..1.0)).collect();
            let x = Tensor::<4>::from_data(
                TensorData::new(init, [r, dims[0], dims[1], dims[2]]),
                &device,
            );
            Starts {
                target,
                adam: crate::detect::Adam::new(&x),
                x,
                best: f64::NAN,
                best_x: None,
            }
        })
        .collect();
    crate::detect::run_shares(&mut problems, "max-margin", model.device(), |part| {
        for step in 0..cfg.margin_steps.max(1) {
            crate::runtime::check_interrupt()?;
            let leaves: Vec<Tensor<4>> = part
                .iter()
                .map(|p| p.x.clone().detach().require_grad())
                .collect();
            let logits = model.logits(Tensor::cat(leaves.clone(), 0))?;
            let mut total: Option<Tensor<1>> = None;
            let mut parts = Vec::with_capacity(part.len());
            for (i, p) in part.iter().enumerate() {
                let margin = target_margin(logits.clone().narrow(0, i * r, r), p.target);
                parts.push(margin.clone().detach().reshape([r]));
                let loss = margin.mean().neg();
                total = Some(match total {
                    None => loss,
                    Some(acc) => acc + loss,
                });
            }
            let grads = total.expect("a problem").backward();
            let read = crate::detect::host_parts(parts)?;
            for ((p, leaf), margins) in part.iter_mut().zip(&leaves).zip(read) {
                // The best start of this step (the first of equals, as `max` would give).
                let (at, best) =
                    margins
                        .iter()
                        .enumerate()
                        .fold((0, f32::NAN), |(i, b), (j, &m)| {
                            if b.is_nan() || m > b { (j, m) } else { (i, b) }
                        });
                p.best = f64::from(best);
                p.best_x = Some(p.x.clone().narrow(0, at, 1));
                let g = leaf
                    .grad(&grads)
                    .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
                let update = p.adam.update(g, step, cfg.margin_lr);
                p.x = (p.x.clone() - update).clamp(0.0, 1.0);
            }
        }
        Ok(())
    })?;
    Ok(problems
        .into_iter()
        .map(|p| {
            let x = p.best_x.expect("at least one step ran");
            (p.best, x)
        })
        .collect())
}

/// How little of each target's largest-margin input ([`max_margin_inputs`]) it takes to carry
/// clean images of the other classes to the target [ours]: for each image `x` (at most
/// `samples` of `images` outside `t`, taken evenly from their classes) the smallest blend weight
/// `a` at which `(1 - a) x + a x*_t` is classified `t`, found by bisection on `[0, 1]` to 1/256
/// (at `a = 1` the input itself, classified `t`; 0 for an image the model already puts in `t`),
/// then the median over the images. A backdoor's largest-margin input carries its trigger, which
/// does its work at a fraction of full strength on any image; a natural class's largest-margin
/// input is a texture that has to replace much of the image.
pub fn margin_blend(
    model: &Classifier,
    images: &ImageSet,
    found: &[(usize, Tensor<4>)],
    samples: usize,
) -> Result<Vec<f64>> {
    let device = model.device().clone();
    median_per_target(model, images, found, samples, |target, x, star| {
        let n = x.dims()[0];
        let star = star.clone().expand(x.dims());
        smallest_shares(model, target, n, |a| {
            let w: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let w = Tensor::<4>::from_data(TensorData::new(w, [n, 1, 1, 1]), &device);
            x.clone() * (w.clone().neg() + 1.0) + star.clone() * w
        })
    })
}

/// How few pixel locations of each target's largest-margin input ([`max_margin_inputs`]) carry
/// clean images of the other classes to the target [ours]: the locations of `x*_t` ranked by
/// how much they raise the target's margin over the clean images' mean, to first order
/// (`|sum_c g_c (x*_c - mean_c)|` with `g` the margin's gradient at `x*_t`, summed per location
/// over the channels); for each image `x` (the sample of [`margin_blend`]) the smallest share
/// `a` of the locations such that `x` with its top `ceil(a H W)` locations taken from `x*_t` is
/// classified `t`, by bisection on `[0, 1]` to 1/256; then the median over the images. A patch
/// trigger sits in a few locations of the largest-margin input and works wherever it is pasted;
/// a natural class's largest-margin input is a texture that has to replace most of the image.
pub fn margin_patch(
    model: &Classifier,
    images: &ImageSet,
    found: &[(usize, Tensor<4>)],
    samples: usize,
) -> Result<Vec<f64>> {
    let device = model.device().clone();
    median_per_target(model, images, found, samples, |target, x, star| {
        let [n, c, h, w] = x.dims();
        let order = saliency_order(model, target, star, x)?;
        // rank[l]: where location l stands in the order (0 = the most salient).
        let mut rank = vec![0usize; h * w];
        for (r, &l) in order.iter().enumerate() {
            rank[l] = r;
        }
        let star = star.clone().expand([n, c, h, w]);
        smallest_shares(model, target, n, |a| {
            let mut m = vec![0f32; n * h * w];
            for (i, &share) in a.iter().enumerate() {
                let k = (share * (h * w) as f64).ceil() as usize;
                for (l, &r) in rank.iter().enumerate() {
                    if r < k {
                        m[i * h * w + l] = 1.0;
                    }
                }
            }
            let m = Tensor::<4>::from_data(TensorData::new(m, [n, 1, h, w]), &device)
                .expand([n, c, h, w]);
            x.clone() * (m.clone().neg() + 1.0) + star.clone() * m
        })
    })
}

/// For each `(target, x*)` of `found`, `shares(target, x, x*)` on the clean images `x` outside
/// the target (at most `samples` of `images`, taken evenly from their classes), then their
/// median: the frame of [`margin_blend`] and [`margin_patch`].
fn median_per_target(
    model: &Classifier,
    images: &ImageSet,
    found: &[(usize, Tensor<4>)],
    samples: usize,
    mut shares: impl FnMut(usize, &Tensor<4>, &Tensor<4>) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    model.check_images(images)?;
    let x_all = model.images_tensor(&images.pixels, images.len());
    found
        .iter()
        .map(|(target, star)| {
            let x = others_of(images, &x_all, *target, samples.max(1))?;
            Ok(crate::detect::stats::median(&shares(*target, &x, star)?))
        })
        .collect()
}

/// The pixel locations (`h * W + w`) of `star` (`[1, C, H, W]`) from the one that raises
/// `target`'s margin most over the mean of `x` to the least, to first order (see
/// [`margin_patch`]); ties in location order.
fn saliency_order(
    model: &Classifier,
    target: usize,
    star: &Tensor<4>,
    x: &Tensor<4>,
) -> Result<Vec<usize>> {
    let [_, _, h, w] = x.dims();
    let leaf = star.clone().detach().require_grad();
    let grads = target_margin(model.logits(leaf.clone())?, target)
        .sum()
        .backward();
    let g = leaf
        .grad(&grads)
        .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
    let mean = x.clone().mean_dim(0);
    let score = (g * (star.clone().detach() - mean))
        .sum_dim(1)
        .abs()
        .reshape([h * w]);
    let v = crate::detect::host_parts(vec![score])?.remove(0);
    let mut order: Vec<usize> = (0..h * w).collect();
    // Descending, NaN last; the sort is stable, so equal scores keep location order.
    order.sort_by(|&a, &b| {
        let (x, y) = (v[a], v[b]);
        match (x.is_nan(), y.is_nan()) {
            (false, false) => y.total_cmp(&x),
            (a_nan, b_nan) => a_nan.cmp(&b_nan),
        }
    });
    Ok(order)
}

/// Per image, the smallest share `a` in `[0, 1]` (to 1/256, by bisection) at which `mix(a)`
/// (the `n` images mixed at their shares) is classified `target`: 0 for an image already in
/// it at `a = 0`, 1 for one that never is.
fn smallest_shares(
    model: &Classifier,
    target: usize,
    n: usize,
    mix: impl Fn(&[f64]) -> Tensor<4>,
) -> Result<Vec<f64>> {
    const HALVINGS: usize = 8;
    let hits = |a: &[f64]| -> Result<Vec<bool>> {
        let am = model
            .logits(mix(a))?
            .argmax(1)
            .try_into_vec_as::<i64>()
            .map_err(|e| Error::Mismatch(format!("cannot read a tensor back: {e:?}")))?;
        Ok(am.iter().map(|&c| c == target as i64).collect())
    };
    let mut lo = vec![0.0f64; n];
    let mut hi = vec![1.0f64; n];
    // Already in the target: no share needed.
    for (i, h) in hits(&lo)?.into_iter().enumerate() {
        if h {
            hi[i] = 0.0;
        }
    }
    for _ in 0..HALVINGS {
        let mid: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| 0.5 * (l + h)).collect();
        for (i, h) in hits(&mid)?.into_iter().enumerate() {
            if hi[i] == 0.0 {
                continue;
            }
            if h {
                hi[i] = mid[i];
            } else {
                lo[i] = mid[i];
            }
        }
    }
    Ok(hi)
}

/// The largest margin `f_t(x) - max_{j != t} f_j(x)` of every class `t` among the clean images
/// (`images`, then `holdout`): the most confident natural example of each class, which
/// [`crate::detect::verdict::Statistic::MarginExcess`] subtracts from the largest margin an
/// input reaches. A class none of the images reaches has a negative value.
pub fn clean_margins(
    model: &Classifier,
    images: &ImageSet,
    holdout: Option<&ImageSet>,
) -> Result<Vec<f64>> {
    let k = model.num_classes();
    let mut best = vec![f64::NEG_INFINITY; k];
    for set in std::iter::once(images).chain(holdout) {
        let logits = model.logits_of(set, 256)?;
        for row in logits.chunks(k) {
            // The largest other logit is the row's largest, or for that class the second.
            let (mut first, mut second) = (0, None::<usize>);
            for j in 1..row.len() {
                if row[j] > row[first] {
                    second = Some(first);
                    first = j;
                } else if second.is_none_or(|s| row[j] > row[s]) {
                    second = Some(j);
                }
            }
            for (t, b) in best.iter_mut().enumerate() {
                let other = if t == first { second } else { Some(first) };
                let others = other.map_or(f32::NEG_INFINITY, |j| row[j]);
                *b = b.max(f64::from(row[t] - others));
            }
        }
    }
    Ok(best)
}

/// One target's images in the local-margin search.
struct Local {
    target: usize,
    x: Tensor<4>,
    d: Tensor<4>,
    /// Per image, the largest margin of any step so far.
    best: Vec<f64>,
}

/// The margin `f_t(x) - max_{j != t} f_j(x)` that clean images of the other classes reach
/// within a small input perturbation, for each target [ours]: from each image (at most
/// `cfg.local_samples` of `images` outside `t`, taken evenly from their classes), `local_steps`
/// steps of projected gradient ascent on the margin inside the L2 ball of radius
/// `local_radius * sqrt(C H W)` (a root-mean-square change of `local_radius` per pixel value),
/// the image kept in `[0, 1]`; per image the best margin of any step, then the median over the
/// images. A trigger is a small change that drives its target's logit far past the others from
/// any image; a class that is merely easy to reach ("sink") is reached at that radius with an
/// ordinary margin. Unlike [`max_margin`] the search stays near natural images, so a class whose
/// data-free optimum lies far from them (a network ending in global average pooling) is not
/// singled out. Deterministic: every search starts at the clean image.
pub fn local_margin(
    model: &Classifier,
    images: &ImageSet,
    targets: &[usize],
    cfg: &CepaConfig,
) -> Result<Vec<f64>> {
    model.check_images(images)?;
    let per = images.channels * images.height * images.width;
    let radius = cfg.local_radius * (per as f64).sqrt();
    let steps = cfg.local_steps.max(1);
    // The usual step of projected gradient ascent: 2.5 radii over the budget.
    let alpha = 2.5 * radius / steps as f64;
    let x_all = model.images_tensor(&images.pixels, images.len());
    let mut problems = Vec::with_capacity(targets.len());
    for &target in targets {
        let x = others_of(images, &x_all, target, cfg.local_samples)?;
        problems.push(Local {
            target,
            d: x.zeros_like(),
            best: vec![f64::NEG_INFINITY; x.dims()[0]],
            x,
        });
    }
    crate::detect::run_shares(&mut problems, "local-margin", model.device(), |part| {
        // One step more than the updates: the margin after the last update is measured too.
        for step in 0..=steps {
            crate::runtime::check_interrupt()?;
            let leaves: Vec<Tensor<4>> = part
                .iter()
                .map(|p| p.d.clone().detach().require_grad())
                .collect();
            let xs: Vec<Tensor<4>> = part
                .iter()
                .zip(&leaves)
                .map(|(p, d)| (p.x.clone() + d.clone()).clamp(0.0, 1.0))
                .collect();
            let logits = model.logits(Tensor::cat(xs, 0))?;
            let mut total: Option<Tensor<1>> = None;
            let mut parts = Vec::with_capacity(part.len());
            let mut row = 0;
            for p in part.iter() {
                let n = p.x.dims()[0];
                let margin = target_margin(logits.clone().narrow(0, row, n), p.target).reshape([n]);
                row += n;
                parts.push(margin.clone().detach());
                // Each image's own margin: the sum leaves every image its own gradient.
                let loss = margin.sum().neg();
                total = Some(match total {
                    None => loss,
                    Some(acc) => acc + loss,
                });
            }
            let read = crate::detect::host_parts(parts)?;
            for (p, margins) in part.iter_mut().zip(read) {
                for (b, m) in p.best.iter_mut().zip(margins) {
                    *b = b.max(f64::from(m));
                }
            }
            if step == steps {
                break;
            }
            let grads = total.expect("a problem").backward();
            for (p, leaf) in part.iter_mut().zip(&leaves) {
                // Ascent along each image's normalised gradient, then back into the ball and
                // the pixel range (the clip only shortens the change).
                let g = leaf
                    .grad(&grads)
                    .ok_or_else(|| Error::Mismatch("no gradient reached the input".into()))?;
                let d = p.d.clone() - (g.clone() / image_norms(g)) * alpha;
                let scale = (image_norms(d.clone()).recip() * radius).clamp_max(1.0);
                let d = d * scale;
                p.d = (p.x.clone() + d).clamp(0.0, 1.0) - p.x.clone();
            }
        }
        Ok(())
    })?;
    Ok(problems
        .into_iter()
        .map(|p| crate::detect::stats::median(&p.best))
        .collect())
}
