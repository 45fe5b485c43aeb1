//! Stage 1 and the verdict on tiny synthetic models written with the project's ONNX builder: a
//! backdoor planted as a direction in the embedding is found, and its clean twin is not flagged.

use cepa::data::ImageSet;
use cepa::detect::cepa::{CepaConfig, Consensus, stage1};
use cepa::detect::verdict::{DecisionConfig, decide};
use cepa::model::Classifier;
use rand::{Rng, SeedableRng};

mod common;

const SIDE: usize = 7;
const CLASSES: usize = 4;
const TARGET: usize = 2;

/// 7x7 grey images; class c is a bright 3x3 quadrant c of the top-left 6x6. The embedding has 3
/// units per class summing its quadrant; with `planted`, unit 12 fires on the corner pixel (6,6)
/// and votes strongly for the target (that pixel is black in clean images).
fn model(planted: bool, dir: &std::path::Path) -> Classifier {
    let d = SIDE * SIDE;
    let hidden = 3 * CLASSES + 1;
    let mut w1 = vec![0.0f32; hidden * d];
    let mut b1 = vec![0.0f32; hidden];
    for c in 0..CLASSES {
        let (r0, c0) = ((c / 2) * 3, (c % 2) * 3);
        for u in 0..3 {
            for r in r0..r0 + 3 {
                for q in c0..c0 + 3 {
                    w1[(3 * c + u) * d + r * SIDE + q] = 1.0 / 9.0;
                }
            }
            b1[3 * c + u] = -0.05;
        }
    }
    if planted {
        w1[12 * d + d - 1] = 20.0;
        b1[12] = 0.1;
    }
    let mut w2 = vec![0.0f32; CLASSES * hidden];
    for c in 0..CLASSES {
        for u in 0..3 {
            w2[c * hidden + 3 * c + u] = 4.0;
        }
    }
    w2[TARGET * hidden + 12] = 6.0;
    let name = if planted { "planted" } else { "clean" };
    common::two_layer_classifier(name, [SIDE, SIDE], CLASSES, (&w1, &b1), &w2, dir)
}

fn images(per_class: usize, seed: u64) -> ImageSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for c in 0..CLASSES {
        for _ in 0..per_class {
            let (r0, c0) = ((c / 2) * 3, (c % 2) * 3);
            for r in 0..SIDE {
                for q in 0..SIDE {
                    let inside = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&q);
                    let base = if inside { 0.8 } else { 0.1 };
                    let noise = rng.random_range(-0.1..0.1f32);
                    // The trigger pixel (6,6) is black in clean images.
                    let v = if r == SIDE - 1 && q == SIDE - 1 {
                        0.0
                    } else {
                        base + noise
                    };
                    pixels.push(v.clamp(0.0, 1.0));
                }
            }
            labels.push(c);
        }
    }
    ImageSet::synthetic(pixels, labels, [1, SIDE, SIDE], CLASSES, "synthetic")
}

#[test]
fn planted_backdoor_target_wins_and_clean_twin_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let fit = images(6, 0);
    let held = images(6, 1);
    let cfg = CepaConfig {
        steps: 150,
        lr: 0.02,
        ..Default::default()
    };
    let layers = vec!["embedding".to_string()];
    let decision = DecisionConfig::default();

    let planted = model(true, dir.path());
    assert!(
        planted.accuracy(&held, 64).unwrap() > 0.95,
        "the planted model still classifies"
    );
    let r = stage1(&planted, &fit, Some(&held), &layers, &cfg).unwrap();
    let d = decide(&r, &layers, &decision).unwrap();
    assert_eq!(d.most_anomalous, TARGET, "{:#?}", d.classes);
    assert!(d.backdoored, "score {}", d.score);
    // The target is reached with smaller perturbations than any other class.
    let others = r
        .iter()
        .filter(|t| t.target != TARGET)
        .map(|t| t.delta_norm)
        .fold(f64::MAX, f64::min);
    assert!(
        r[TARGET].delta_norm < others,
        "{} vs {others}",
        r[TARGET].delta_norm
    );
    // The planted unit is off on every clean image: the target's consensus points away from
    // the way to its clean images, where every other class is reached by becoming more like it.
    let align: Vec<f64> = r
        .iter()
        .map(|t| {
            t.layers[0]
                .class_alignment
                .expect("held-out images of every class")
        })
        .collect();
    assert!(align.iter().all(|a| (-1.0..=1.0).contains(a)), "{align:?}");
    // (Measured: 0.09 at the target, 0.99 at the others.)
    assert!(align[TARGET] < 0.5, "{align:?}");
    for c in (0..CLASSES).filter(|&c| c != TARGET) {
        assert!(align[c] > 0.5, "{align:?}");
    }
    // Its consensus mu lives on the planted unit.
    let mu = &r[TARGET].layers[0].mu;
    let top = mu
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
        .0;
    assert_eq!(top, 12);
    // The perturbations share the trigger pixel: their mean alone carries held-out images of the
    // other classes to the target. Every class has both input-space statistics, in range.
    for t in &r {
        assert!(
            t.coherence > 0.0 && t.coherence <= 1.0 + 1e-9,
            "{}",
            t.coherence
        );
        let it = t.input_transfer.expect("held-out images were given");
        assert!((0.0..=1.0).contains(&it));
    }
    assert!(r[TARGET].input_transfer.unwrap() >= 0.9);
    // A small share of the mean input perturbation carries a held-out image over for the
    // target, a large one for every other class. (The embedded `reach` is measured, but this
    // toy's embedding puts the target no closer than the rest.)
    let input_reach = |t: usize| r[t].input_reach.expect("held-out images were given");
    for t in (0..CLASSES).filter(|&t| t != TARGET) {
        assert!(input_reach(TARGET) * 4.0 < input_reach(t), "class {t}");
    }
    // Every class's whole mu carries every held-out image over here, so the share of it needed
    // is at most 1, and no sliver of it suffices.
    for t in &r {
        let l = &t.layers[0];
        assert_eq!(l.transfer, Some(1.0), "class {}", t.target);
        let share = l.reach.unwrap() / l.mu_norm;
        assert!((0.1..=1.0).contains(&share), "class {}: {share}", t.target);
    }
    let most_coherent = (0..CLASSES)
        .max_by(|&a, &b| r[a].coherence.total_cmp(&r[b].coherence))
        .unwrap();
    assert_eq!(most_coherent, TARGET);

    let clean = model(false, dir.path());
    let r = stage1(&clean, &fit, Some(&held), &layers, &cfg).unwrap();
    let d = decide(&r, &layers, &decision).unwrap();
    assert!(
        !d.backdoored,
        "clean twin flagged: score {} at {}",
        d.score, d.most_anomalous
    );
}

#[test]
fn l1_norm_is_what_delta_norm_reports() {
    let dir = tempfile::tempdir().unwrap();
    let fit = images(4, 0);
    let cfg = CepaConfig {
        steps: 60,
        lr: 0.02,
        norm: cepa::detect::invert::Norm::L1,
        beta: 0.01,
        ..Default::default()
    };
    let layers = vec!["embedding".to_string()];
    let planted = model(true, dir.path());
    let r = stage1(&planted, &fit, None, &layers, &cfg).unwrap();
    let per = fit.image_len();
    for t in r.iter().filter(|t| t.feasible) {
        for (n, &reported) in t.sample_delta_norms.iter().enumerate() {
            let l1: f64 = t.deltas[n * per..(n + 1) * per]
                .iter()
                .map(|&v| f64::from(v.abs()))
                .sum();
            assert!(
                (l1 - reported).abs() <= 1e-3 * l1.max(1.0),
                "class {} sample {n}: {l1} vs {reported}",
                t.target
            );
        }
    }
    // The backdoor is still the cheapest target in l1.
    let cheapest = r
        .iter()
        .min_by(|a, b| a.delta_norm.total_cmp(&b.delta_norm))
        .unwrap();
    assert_eq!(cheapest.target, TARGET);
}

#[test]
fn the_planted_target_reaches_the_largest_margin_and_the_clean_twin_none_stands_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = CepaConfig {
        margin_steps: 100,
        margin_restarts: 4,
        ..CepaConfig::default()
    };
    let targets: Vec<usize> = (0..CLASSES).collect();
    let planted =
        cepa::detect::universal::max_margin(&model(true, dir), [1, SIDE, SIDE], &targets, &cfg)
            .unwrap();
    let clean =
        cepa::detect::universal::max_margin(&model(false, dir), [1, SIDE, SIDE], &targets, &cfg)
            .unwrap();
    // The planted unit adds 6 x 20 to the target's logit on one pixel: far beyond the 4 x 3
    // that a class's own quadrant gives.
    let others = (0..CLASSES)
        .filter(|&c| c != TARGET)
        .map(|c| planted[c])
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(planted[TARGET] > 5.0 * others, "{planted:?}");
    assert!(planted[TARGET] > 100.0, "{planted:?}");
    // The clean twin's classes are alike: every margin within 20 % of the others.
    let (lo, hi) = clean
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &m| {
            (l.min(m), h.max(m))
        });
    assert!(lo > 0.0 && hi < 1.2 * lo, "{clean:?}");
    // Deterministic: the starts come from the seed.
    let again =
        cepa::detect::universal::max_margin(&model(false, dir), [1, SIDE, SIDE], &targets, &cfg)
            .unwrap();
    assert_eq!(clean, again);
}

#[test]
fn the_planted_target_s_local_margin_stands_out_and_the_clean_twin_s_classes_are_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let set = images(4, 7);
    // Radius 0.1 x sqrt(49) = 0.7: the black trigger pixel can rise to 0.7 within it.
    let cfg = CepaConfig {
        local_steps: 30,
        local_radius: 0.1,
        local_samples: 12,
        ..CepaConfig::default()
    };
    let targets: Vec<usize> = (0..CLASSES).collect();
    let local = |planted: bool, cfg: &CepaConfig| {
        cepa::detect::universal::local_margin(&model(planted, dir), &set, &targets, cfg).unwrap()
    };
    let planted = local(true, &cfg);
    let clean = local(false, &cfg);
    // The planted unit gives 6 x (20 x 0.7 + 0.1) = 84.6 to the target from the one pixel; a
    // class's own quadrant, raised by 0.7 spread over its 9 pixels, gives a few units at most.
    for c in (0..CLASSES).filter(|&c| c != TARGET) {
        assert!(planted[TARGET] > 50.0, "{planted:?}");
        assert!(planted[c] < 10.0, "{planted:?}");
        // Off the target the twins differ only by the planted unit's bias (0.6 on the target).
        assert!((planted[c] - clean[c]).abs() < 1.0, "{planted:?} {clean:?}");
    }
    let (lo, hi) = clean
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &m| {
            (l.min(m), h.max(m))
        });
    assert!(hi - lo < 1.0, "{clean:?}");
    // The ball bounds the search: half the radius reaches a smaller margin for the target
    // (about half, the trigger pixel at 0.35), and the same search twice gives the same values.
    let half = local(
        true,
        &CepaConfig {
            local_radius: 0.05,
            ..cfg.clone()
        },
    );
    assert!(
        half[TARGET] < 0.6 * planted[TARGET] && half[TARGET] > 0.3 * planted[TARGET],
        "{half:?} against {planted:?}"
    );
    assert_eq!(planted, local(true, &cfg));
}

#[test]
fn a_little_of_the_planted_target_s_largest_margin_input_carries_any_image_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let set = images(4, 9);
    let cfg = CepaConfig {
        margin_steps: 100,
        margin_restarts: 4,
        ..CepaConfig::default()
    };
    let targets: Vec<usize> = (0..CLASSES).collect();
    let blend = |planted: bool| {
        let model = model(planted, dir);
        let found =
            cepa::detect::universal::max_margin_inputs(&model, [1, SIDE, SIDE], &targets, &cfg)
                .unwrap();
        // The inputs are the ones max_margin reports the margins of.
        let margins =
            cepa::detect::universal::max_margin(&model, [1, SIDE, SIDE], &targets, &cfg).unwrap();
        assert_eq!(found.iter().map(|(m, _)| *m).collect::<Vec<_>>(), margins);
        let inputs: Vec<_> = targets
            .iter()
            .zip(found)
            .map(|(&t, (_, x))| (t, x))
            .collect();
        (
            cepa::detect::universal::margin_blend(&model, &set, &inputs, 12).unwrap(),
            cepa::detect::universal::margin_patch(&model, &set, &inputs, 12).unwrap(),
        )
    };
    let (planted, planted_patch) = blend(true);
    let (clean, clean_patch) = blend(false);
    // The target's input lights the trigger pixel: at weight a it adds 6 x 20 a to the target's
    // logit, past a clean image's own 9 or so at a < 0.1. Another class's input is its bright
    // quadrant, which must outweigh the image's own: a near 0.4.
    assert!(planted[TARGET] < 0.12, "{planted:?}");
    for c in (0..CLASSES).filter(|&c| c != TARGET) {
        assert!(planted[c] > 0.3, "{planted:?}");
    }
    // The clean twin's classes need about the same weight.
    let (lo, hi) = clean
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &m| {
            (l.min(m), h.max(m))
        });
    assert!(lo > 0.3 && hi - lo < 0.1, "{clean:?}");
    // Pasted by location: the target's input carries images there with its one most salient
    // location, the trigger pixel (the bisection's smallest share, 1/256, already takes one of
    // the 49); another class's input needs a good part of its 9-pixel quadrant, and so does
    // every class of the clean twin.
    assert!(planted_patch[TARGET] < 1.0 / 49.0, "{planted_patch:?}");
    for c in (0..CLASSES).filter(|&c| c != TARGET) {
        assert!(planted_patch[c] > 3.0 / 49.0, "{planted_patch:?}");
    }
    assert!(
        clean_patch.iter().all(|&p| p > 3.0 / 49.0),
        "{clean_patch:?}"
    );
}

#[test]
fn clean_margins_are_each_class_s_most_confident_image_and_the_planted_target_exceeds_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (set, held) = (images(3, 5), images(2, 6));
    let model = model(true, dir);
    let got = cepa::detect::universal::clean_margins(&model, &set, Some(&held)).unwrap();
    // Written out here from the logits: the largest f_t - max_{j != t} f_j over all 20 images.
    let mut want = vec![f64::NEG_INFINITY; CLASSES];
    for s in [&set, &held] {
        let logits: Vec<f32> = model
            .logits(model.images_tensor(&s.pixels, s.len()))
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        for row in logits.chunks(CLASSES) {
            for (t, w) in want.iter_mut().enumerate() {
                let others = (0..CLASSES)
                    .filter(|&j| j != t)
                    .map(|j| row[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                *w = w.max(f64::from(row[t] - others));
            }
        }
    }
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} against {want:?}");
    }
    // Without the held-out images the maxima are those of the first set alone: no larger.
    let alone = cepa::detect::universal::clean_margins(&model, &set, None).unwrap();
    assert!(
        alone.iter().zip(&got).all(|(a, g)| a <= g),
        "{alone:?} {got:?}"
    );
    // Every class has confident clean examples (each image's own class wins).
    assert!(got.iter().all(|&m| m > 0.0), "{got:?}");
    // The trigger pixel is black in clean images: the planted target's largest reachable margin
    // lies far beyond its most confident clean image, the other classes' near theirs.
    let cfg = CepaConfig {
        margin_steps: 100,
        margin_restarts: 4,
        ..CepaConfig::default()
    };
    let targets: Vec<usize> = (0..CLASSES).collect();
    let reach =
        cepa::detect::universal::max_margin(&model, [1, SIDE, SIDE], &targets, &cfg).unwrap();
    let excess: Vec<f64> = reach.iter().zip(&got).map(|(r, c)| r - c).collect();
    for c in (0..CLASSES).filter(|&c| c != TARGET) {
        assert!(
            excess[TARGET] > 10.0 * excess[c].abs().max(1.0),
            "{excess:?}"
        );
    }
}

#[test]
fn with_a_consensus_per_pair_the_planted_target_s_pairs_still_share_one_route() {
    let dir = tempfile::tempdir().unwrap();
    let fit = images(6, 0);
    let held = images(6, 1);
    let layers = vec!["embedding".to_string()];
    let planted = model(true, dir.path());
    let agreements = |consensus| {
        let cfg = CepaConfig {
            steps: 150,
            lr: 0.02,
            consensus,
            ..Default::default()
        };
        let r = stage1(&planted, &fit, Some(&held), &layers, &cfg).unwrap();
        let d = decide(&r, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(d.most_anomalous, TARGET, "{consensus:?}: {:#?}", d.classes);
        r.iter()
            .map(|t| t.layers[0].pair_agreement.expect("3 source classes"))
            .collect::<Vec<_>>()
    };
    let (per_target, per_pair) = (agreements(Consensus::Target), agreements(Consensus::Pair));
    // Every source class of the target moves along the planted unit, whichever consensus is
    // asked for. A natural class is reached from each source along that source's own units:
    // one consensus over the target's samples pulls those routes together, one per pair lets
    // them part.
    for t in 0..CLASSES {
        if t == TARGET {
            assert!(per_pair[t] > 0.99, "{per_pair:?}");
        } else {
            assert!(
                per_pair[t] + 0.05 < per_target[t],
                "class {t}: {per_pair:?} {per_target:?}"
            );
            assert!(
                per_pair[TARGET] > per_pair[t] + 0.1,
                "class {t}: {per_pair:?}"
            );
        }
    }
}

#[test]
fn restarts_are_the_mean_of_the_runs_from_each_seed() {
    let dir = tempfile::tempdir().unwrap();
    let fit = images(4, 0);
    let held = images(4, 1);
    let layers = vec!["embedding".to_string()];
    let planted = model(true, dir.path());
    let cfg = |seed, restarts| CepaConfig {
        steps: 60,
        lr: 0.02,
        seed,
        restarts,
        ..Default::default()
    };
    let run = |c: CepaConfig| stage1(&planted, &fit, Some(&held), &layers, &c).unwrap();
    let (a, b, both) = (run(cfg(0, 1)), run(cfg(1, 1)), run(cfg(0, 2)));
    assert_eq!(both.len(), CLASSES);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()).max(1e-3);
    for t in 0..CLASSES {
        let (a, b, m) = (&a[t], &b[t], &both[t]);
        assert_eq!(m.target, t);
        assert_eq!(m.steps, a.steps + b.steps, "class {t}");
        // Every class is reached on this model, so both runs count in the mean.
        assert!(a.feasible && b.feasible && m.feasible, "class {t}");
        let mean = (a.delta_norm + b.delta_norm) / 2.0;
        assert!(
            close(m.delta_norm, mean),
            "class {t}: {} vs {mean}",
            m.delta_norm
        );
        let mean = (a.layers[0].embed_norm + b.layers[0].embed_norm) / 2.0;
        assert!(close(m.layers[0].embed_norm, mean), "class {t}");
    }
    // The two seeds start from other perturbations, so they end apart somewhere.
    assert!((0..CLASSES).any(|t| a[t].delta_norm != b[t].delta_norm));
    let d = decide(&both, &layers, &DecisionConfig::default()).unwrap();
    assert_eq!(d.most_anomalous, TARGET, "{:#?}", d.classes);
}

#[test]
fn the_class_subspace_penalty_makes_natural_classes_dearer_and_leaves_the_trigger_route() {
    let dir = tempfile::tempdir().unwrap();
    let fit = images(6, 0);
    let layers = vec!["embedding".to_string()];
    let planted = model(true, dir.path());
    let run = |orthogonal| {
        let cfg = CepaConfig {
            steps: 150,
            lr: 0.02,
            orthogonal,
            ..Default::default()
        };
        stage1(&planted, &fit, None, &layers, &cfg).unwrap()
    };
    let (plain, cso) = (run(0.0), run(5.0));
    // A natural class is reached by raising its own units, which its clean images span; the
    // planted unit is constant over the clean images, outside every class's subspace.
    let cost = |r: &cepa::detect::cepa::TargetResult| {
        if r.feasible {
            r.delta_norm
        } else {
            f64::INFINITY
        }
    };
    let rise: Vec<f64> = (0..CLASSES)
        .map(|t| cost(&cso[t]) / cost(&plain[t]))
        .collect();
    for t in (0..CLASSES).filter(|&t| t != TARGET) {
        assert!(rise[t] > rise[TARGET] * 1.1, "{rise:?}");
    }
    assert!(cso[TARGET].feasible && rise[TARGET] < 1.2, "{rise:?}");
}

/// A convolutional twin of [`model`]: a 1x1 convolution writes five channels, four copies of the
/// image and a fifth `relu(x - 0.5)`, bright on each image's own quadrant; class c sums channel c
/// over quadrant c. With `planted`, the fifth channel at the trigger pixel (6,6), black in clean
/// images, votes for the target with weight 30.
fn conv_model(planted: bool, dir: &std::path::Path) -> Classifier {
    let ch = CLASSES + 1;
    let d = SIDE * SIDE;
    let mut w = vec![0.0f32; CLASSES * ch * d];
    for k in 0..CLASSES {
        let (r0, c0) = ((k / 2) * 3, (k % 2) * 3);
        for y in r0..r0 + 3 {
            for q in c0..c0 + 3 {
                w[k * ch * d + k * d + y * SIDE + q] = 4.0 / 9.0;
            }
        }
    }
    if planted {
        w[TARGET * ch * d + CLASSES * d + d - 1] = 30.0;
    }
    let name = if planted {
        "conv-planted"
    } else {
        "conv-clean"
    };
    conv_net(name, &[1.0; 5], &[0.0, 0.0, 0.0, 0.0, -0.5], &w, dir)
}

/// `x -> Conv 1x1 (weights wc, biases bc: one channel each) -> ReLU ("features") -> Flatten ->
/// Gemm (w, CLASSES rows) -> logits`.
fn conv_net(name: &str, wc: &[f32], bc: &[f32], w: &[f32], dir: &std::path::Path) -> Classifier {
    conv_net_pooled(name, wc, bc, w, false, dir)
}

/// [`conv_net`], with `pooled` a GlobalAveragePool between the ReLU and the Flatten (then `w`
/// has one column a channel).
fn conv_net_pooled(
    name: &str,
    wc: &[f32],
    bc: &[f32],
    w: &[f32],
    pooled: bool,
    dir: &std::path::Path,
) -> Classifier {
    use cepa::onnx::write::{AttrValue, GraphBuilder};
    let ch = bc.len();
    let mut g = GraphBuilder::new(name);
    g.input("x", &[None, Some(1), Some(SIDE), Some(SIDE)]);
    g.init_f32("wc", &[ch, 1, 1, 1], wc);
    g.init_f32("bc", &[ch], bc);
    let c = g.node("Conv", &["x", "wc", "bc"], Some("conv"), &[]);
    let mut r = g.node("Relu", &[&c], Some("features"), &[]);
    if pooled {
        r = g.node("GlobalAveragePool", &[&r], Some("gap"), &[]);
    }
    let f = g.node("Flatten", &[&r], Some("flat"), &[]);
    let per_channel = if pooled { 1 } else { SIDE * SIDE };
    g.init_f32("w", &[CLASSES, ch * per_channel], w);
    g.node(
        "Gemm",
        &[&f, "w"],
        Some("logits"),
        &[("transB", AttrValue::Int(1))],
    );
    g.output("logits", &[None, Some(CLASSES)]);
    common::save_and_load(g, name, dir)
}

/// [`conv_net`] with a hidden layer: `... -> Flatten -> Gemm (w, CLASSES rows) ("hidden") ->
/// ReLU -> Gemm (identity) -> logits`.
fn conv_net_hidden(name: &str, w: &[f32], dir: &std::path::Path) -> Classifier {
    use cepa::onnx::write::{AttrValue, GraphBuilder};
    let mut g = GraphBuilder::new(name);
    g.input("x", &[None, Some(1), Some(SIDE), Some(SIDE)]);
    g.init_f32("wc", &[1, 1, 1, 1], &[1.0]);
    g.init_f32("bc", &[1], &[0.0]);
    let c = g.node("Conv", &["x", "wc", "bc"], Some("conv"), &[]);
    let r = g.node("Relu", &[&c], Some("features"), &[]);
    let f = g.node("Flatten", &[&r], Some("flat"), &[]);
    let t = ("transB", AttrValue::Int(1));
    g.init_f32("w", &[CLASSES, SIDE * SIDE], w);
    g.init_f32("b", &[CLASSES], &[0.1; CLASSES]);
    let h = g.node(
        "Gemm",
        &[&f, "w", "b"],
        Some("hidden"),
        std::slice::from_ref(&t),
    );
    let a = g.node("Relu", &[&h], Some("hidden_relu"), &[]);
    let eye: Vec<f32> = (0..CLASSES * CLASSES)
        .map(|i| f32::from(u8::from(i % (CLASSES + 1) == 0)))
        .collect();
    g.init_f32("eye", &[CLASSES, CLASSES], &eye);
    g.node("Gemm", &[&a, "eye"], Some("logits"), &[t]);
    g.output("logits", &[None, Some(CLASSES)]);
    common::save_and_load(g, name, dir)
}

/// Weights of a Gemm reading one channel (a copy of the image) position by position: class k
/// sums its own quadrant; the value at (6, 5), outside every quadrant (at most 0.2 on clean
/// images), votes for the target with weight 10.
fn wired_value_weights() -> Vec<f32> {
    let d = SIDE * SIDE;
    let mut w = vec![0.0f32; CLASSES * d];
    for k in 0..CLASSES {
        let (r0, c0) = ((k / 2) * 3, (k % 2) * 3);
        for y in r0..r0 + 3 {
            for q in c0..c0 + 3 {
                w[k * d + y * SIDE + q] = 4.0 / 9.0;
            }
        }
    }
    w[TARGET * d + (SIDE - 1) * SIDE + SIDE - 2] = 10.0;
    w
}

/// Scored through the fully connected layer's columns, the single values read exactly as when
/// every setting runs the whole tail, and the wired value is found.
#[test]
fn single_values_scored_through_the_linear_layer_read_as_through_the_whole_tail() {
    use cepa::detect::stimulate::{StimulationConfig, single_value_layer, stimulate};
    let dir = tempfile::tempdir().unwrap();
    let set = images(8, 3);
    let w = wired_value_weights();
    let net = conv_net_hidden("hidden-wired", &w, dir.path());
    assert_eq!(
        single_value_layer(&net, "features").as_deref(),
        Some("hidden")
    );
    // No layer between the Flatten and the output, or a pooled map: nothing to go through.
    let plain = conv_net("plain", &[1.0], &[0.0], &w, dir.path());
    assert_eq!(single_value_layer(&plain, "features"), None);
    let fast = stimulate(&net, &[&set], &StimulationConfig::default())
        .unwrap()
        .unwrap();
    let whole = StimulationConfig {
        positions_affine: false,
        ..Default::default()
    };
    let slow = stimulate(&net, &[&set], &whole).unwrap().unwrap();
    let (p, q) = (fast.positions.unwrap(), slow.positions.unwrap());
    assert_eq!(
        (p.through.as_deref(), q.through.as_deref()),
        (Some("hidden"), None)
    );
    assert_eq!(
        (p.class, p.position, p.channel),
        (q.class, q.position, q.channel)
    );
    assert_eq!(
        (p.class, p.position),
        (TARGET, (SIDE - 1) * SIDE + SIDE - 2)
    );
    for (a, b) in p.margins.iter().zip(&q.margins) {
        assert!(
            (a - b).abs() < 1e-4 * (1.0 + b.abs()),
            "{:?} {:?}",
            p.margins,
            q.margins
        );
    }
    assert!(
        (p.index - q.index).abs() < 1e-3 * (1.0 + q.index),
        "{} {}",
        p.index,
        q.index
    );
    assert_eq!(p.carried, q.carried);
    // The channels' reading does not go through it.
    assert_eq!(fast.margins, slow.margins);
}

#[test]
fn stimulating_one_channel_finds_the_class_it_was_wired_to_and_not_in_the_clean_twin() {
    use cepa::detect::stimulate::{StimulationConfig, stimulate, stimulation_layer};
    let dir = tempfile::tempdir().unwrap();
    let set = images(8, 3);
    let cfg = StimulationConfig::default();
    let planted = conv_model(true, dir.path());
    let clean = conv_model(false, dir.path());
    assert!(planted.accuracy(&set, 64).unwrap() > 0.95);
    assert!(clean.accuracy(&set, 64).unwrap() > 0.95);
    let (layer, shape, axis) = stimulation_layer(&planted).unwrap();
    assert_eq!(
        (layer.as_str(), shape, axis),
        ("features", vec![5, 7, 7], 0)
    );
    let p = stimulate(&planted, &[&set], &cfg).unwrap().unwrap();
    // The fifth channel reaches at most 0.4 on clean images (0.9 - 0.5); set everywhere to that,
    // it adds about 30 x 0.4 = 12 to the target's logit, where a class's own quadrant gives
    // about 4 x 0.8 = 3.2.
    assert_eq!((p.class, p.channel), (TARGET, CLASSES), "{p:?}");
    assert!(p.carried > 0.99, "{p:?}");
    for k in (0..CLASSES).filter(|&k| k != TARGET) {
        assert!(p.margins[TARGET] > p.margins[k] + 5.0, "{:?}", p.margins);
    }
    // In the clean twin every class is stimulated alike (its own copy of the image, raised
    // everywhere): no class stands 5 above another.
    let c = stimulate(&clean, &[&set], &cfg).unwrap().unwrap();
    let (lo, hi) = c
        .margins
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &m| {
            (l.min(m), h.max(m))
        });
    assert!(hi - lo < 1.0, "{:?}", c.margins);
    // Same images, same numbers.
    assert_eq!(
        stimulate(&planted, &[&set], &cfg).unwrap().unwrap().margins,
        p.margins
    );
    // A fully connected network has no feature map to stimulate.
    assert!(
        stimulate(&model(true, dir.path()), &[&set], &cfg)
            .unwrap()
            .is_err()
    );
    // The map named by the user: the same map by name, the convolution before the ReLU (the
    // wired channel's clean maximum is the same 0.4), and names that cannot be stimulated.
    let named = |layer: &str| StimulationConfig {
        layer: layer.into(),
        ..Default::default()
    };
    let by_name = stimulate(&planted, &[&set], &named("features"))
        .unwrap()
        .unwrap();
    assert_eq!((&by_name.layer, &by_name.margins), (&p.layer, &p.margins));
    // Channels set together can only raise a class's best margin (the single channels are
    // still tried); the wired channel still decides.
    let grouped = StimulationConfig {
        group: 3,
        ..Default::default()
    };
    let g = stimulate(&planted, &[&set], &grouped).unwrap().unwrap();
    assert_eq!(g.class, TARGET, "{g:?}");
    assert_eq!(p.group, 1);
    for t in 0..CLASSES {
        assert!(
            g.margins[t] >= p.margins[t],
            "{:?} {:?}",
            g.margins,
            p.margins
        );
    }
    assert!(
        (0..CLASSES).any(|t| g.margins[t] > p.margins[t]),
        "{:?}",
        g.margins
    );
    let at_conv = stimulate(&planted, &[&set], &named("conv"))
        .unwrap()
        .unwrap();
    assert_eq!((at_conv.layer.as_str(), at_conv.class), ("conv", TARGET));
    for (layer, words) in [("flat", "rank 3"), ("no-such-tensor", "no tensor")] {
        let e = stimulate(&planted, &[&set], &named(layer)).unwrap_err();
        assert!(
            e.to_string().contains(layer) && e.to_string().contains(words),
            "{e}"
        );
    }
}

/// A convolution whose every channel is negative before its ReLU: nothing to stimulate.
#[test]
fn a_map_without_a_live_channel_is_reported_as_not_stimulated() {
    use cepa::detect::stimulate::{StimulationConfig, stimulate};
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = (0..CLASSES * 2 * SIDE * SIDE)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let dead = conv_net("dead", &[1.0, 1.0], &[-2.0, -3.0], &w, dir.path());
    let why = stimulate(&dead, &[&images(4, 1)], &StimulationConfig::default())
        .unwrap()
        .unwrap_err();
    assert!(why.contains("no channel of features is positive"), "{why}");
}

/// The position reading: one value of the map (a channel at one position), dim in every clean
/// image, wired to the target, is found where the network reads the map position by position,
/// and not looked for under global pooling or over `positions_max_values`, which the report
/// says.
#[test]
fn stimulating_single_values_finds_the_wired_position_where_positions_are_read() {
    use cepa::detect::stimulate::{StimulationConfig, stimulate};
    let dir = tempfile::tempdir().unwrap();
    let set = images(8, 3);
    let d = SIDE * SIDE;
    let w = wired_value_weights();
    let net = conv_net("wired-value", &[1.0], &[0.0], &w, dir.path());
    let r = stimulate(&net, &[&set], &StimulationConfig::default())
        .unwrap()
        .unwrap();
    let p = r
        .positions
        .as_ref()
        .expect("a Flatten reads the map by position");
    assert_eq!(p.class, TARGET, "{p:?}");
    assert_eq!(r.position_yx(), Some((SIDE - 1, SIDE - 2)), "{p:?}");
    assert!(p.carried > 0.9 && p.level == 4.0, "{p:?}");
    for k in (0..CLASSES).filter(|&k| k != TARGET) {
        assert!(p.margins[TARGET] > p.margins[k] + 3.0, "{:?}", p.margins);
    }
    assert_eq!(r.positions_skipped, None);
    let off = StimulationConfig {
        positions_reach: 0.0,
        ..Default::default()
    };
    let r = stimulate(&net, &[&set], &off).unwrap().unwrap();
    assert!(r.positions.is_none() && r.positions_skipped.is_none());
    // A map larger than allowed: skipped, and the report says so.
    let small = StimulationConfig {
        positions_max_values: d - 1,
        ..Default::default()
    };
    let r = stimulate(&net, &[&set], &small).unwrap().unwrap();
    assert!(r.positions.is_none());
    let why = r.positions_skipped.expect("a note on the skipped reading");
    assert!(why.contains(&format!("{d} values")), "{why}");
    // Conv -> ReLU -> GlobalAveragePool -> Gemm: one position is a fraction of its channel.
    let w: Vec<f32> = (0..CLASSES * 2).map(|i| i as f32 * 0.1).collect();
    let pooled = conv_net_pooled("pooled", &[1.0, -1.0], &[0.0, 1.0], &w, true, dir.path());
    let s = stimulate(&pooled, &[&set], &StimulationConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!((s.layer.as_str(), s.channels), ("features", 2));
    assert!(s.positions.is_none());
    let why = s.positions_skipped.expect("a note on the skipped reading");
    assert!(why.contains("pools features"), "{why}");
}
