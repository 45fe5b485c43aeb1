//! Stage 2 on a tiny synthetic model with a planted patch trigger.

use std::ops::Range;

use rand::{Rng, SeedableRng};

use super::*;

use crate::model::{ModelSpec, cpu_device};
use crate::onnx::Graph;
use crate::onnx::write::{AttrValue, GraphBuilder, save_model};

const SIDE: usize = 8;
const CLASSES: usize = 4;
const TARGET: usize = 2;
/// The planted trigger: a white 2x2 patch at rows and columns 6..8.
const PATCH: Range<usize> = 6..8;

/// 8x8 grey images; class c is a bright 3x3 quadrant c of the top-left 6x6 (three embedding
/// units per class average it). Each pixel i of the 2x2 patch adds `6 min(10 x_i, 0.5)` to the
/// target's logit (units `12 + i` and `16 + i`), so at least three patch pixels must light up
/// to beat a clean image's own class; the patch is black in clean images.
fn planted_model(dir: &std::path::Path) -> Classifier {
    let d = SIDE * SIDE;
    let hidden = 3 * CLASSES + 8;
    let (mut w1, mut b1) = (vec![0.0f32; hidden * d], vec![0.0f32; hidden]);
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
    let mut w2 = vec![0.0f32; CLASSES * hidden];
    for c in 0..CLASSES {
        for u in 0..3 {
            w2[c * hidden + 3 * c + u] = 4.0;
        }
    }
    let pixels = PATCH.flat_map(|r| PATCH.map(move |q| r * SIDE + q));
    for (i, p) in pixels.enumerate() {
        // relu(10 x) - relu(10 x - 0.5) = min(10 x, 0.5) for x >= 0.
        w1[(12 + i) * d + p] = 10.0;
        w1[(16 + i) * d + p] = 10.0;
        b1[16 + i] = -0.5;
        w2[TARGET * hidden + 12 + i] = 6.0;
        w2[TARGET * hidden + 16 + i] = -6.0;
    }
    let mut g = GraphBuilder::new("planted-patch");
    g.input("x", &[None, Some(1), Some(SIDE), Some(SIDE)]);
    let f = g.node("Flatten", &["x"], None, &[]);
    g.init_f32("w1", &[hidden, d], &w1);
    g.init_f32("b1", &[hidden], &b1);
    let trans = [("transB", AttrValue::Int(1))];
    let h = g.node("Gemm", &[&f, "w1", "b1"], Some("hidden"), &trans);
    let e = g.node("Relu", &[&h], Some("embedding"), &[]);
    g.init_f32("w2", &[CLASSES, hidden], &w2);
    g.node("Gemm", &[&e, "w2"], Some("logits"), &trans);
    g.output("logits", &[None, Some(CLASSES)]);
    let path = dir.join("planted-patch.onnx");
    save_model(&g.build(13), &path).unwrap();
    let graph = Graph::load(&path).unwrap();
    Classifier::new(graph, &ModelSpec::default(), None, &cpu_device(true)).unwrap()
}

fn images(per_class: usize, seed: u64) -> ImageSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for c in 0..CLASSES {
        let (r0, c0) = ((c / 2) * 3, (c % 2) * 3);
        for _ in 0..per_class {
            for r in 0..SIDE {
                for q in 0..SIDE {
                    let inside = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&q);
                    let base = if inside { 0.8 } else { 0.1 };
                    let v = base + rng.random_range(-0.1..0.1f32);
                    let black = PATCH.contains(&r) && PATCH.contains(&q);
                    pixels.push(if black { 0.0 } else { v.clamp(0.0, 1.0) });
                }
            }
            labels.push(c);
        }
    }
    ImageSet::synthetic(pixels, labels, [1, SIDE, SIDE], CLASSES, "synthetic")
}

fn truth() -> Truth {
    Truth {
        target: Some(TARGET),
        patch: Some(TruthPatch {
            row: PATCH.start,
            col: PATCH.start,
            size: Some(PATCH.len()),
            ..Default::default()
        }),
        pattern: None,
    }
}

#[test]
fn planted_patch_is_recovered_by_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let (fit, held) = (images(8, 0), images(8, 1));
    assert!(
        model.accuracy(&held, 64).unwrap() > 0.95,
        "the model classifies"
    );
    for kind in [
        KindChoice::Additive,
        KindChoice::MaskPattern,
        KindChoice::Auto,
    ] {
        let cfg = InvertConfig {
            kind,
            ..Default::default()
        };
        let mut inv = invert(&model, &fit, Some(&held), TARGET, &cfg).unwrap();
        let cmp = inv.compare(&truth()).clone();
        let iou = cmp.mask_iou.unwrap();
        let asr = inv.asr.unwrap();
        assert!(inv.best.feasible, "{kind:?}: {:?}", inv.best);
        assert!(iou > 0.5, "{kind:?}: IoU {iou}, {cmp:?}");
        assert!(asr >= 0.9, "{kind:?}: ASR {asr}");
        assert_eq!(
            inv.holdout_images,
            3 * 8,
            "the target's own images are left out"
        );
        assert_eq!(
            inv.forms.len(),
            if kind == KindChoice::Auto { 2 } else { 1 }
        );
        assert!(cmp.mass_in_patch.unwrap() > 0.5, "{kind:?}: {cmp:?}");
    }
}

#[test]
fn same_seed_same_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let fit = images(6, 0);
    let cfg = InvertConfig {
        steps: 40,
        ..Default::default()
    };
    let a = invert(&model, &fit, None, TARGET, &cfg).unwrap();
    let b = invert(&model, &fit, None, TARGET, &cfg).unwrap();
    for (fa, fb) in a.forms.iter().zip(&b.forms) {
        assert_eq!(fa.trigger, fb.trigger);
        assert_eq!(fa.mask, fb.mask);
        assert_eq!(fa.steps, fb.steps);
    }
    let c = invert(&model, &fit, None, TARGET, &InvertConfig { seed: 1, ..cfg }).unwrap();
    assert_ne!(
        a.forms[0].trigger, c.forms[0].trigger,
        "another seed starts elsewhere"
    );
    assert!(a.asr.is_none() && a.holdout_images == 0);
}

#[test]
fn optimisation_images_are_capped_over_the_source_classes() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let fit = images(6, 0);
    let cfg = InvertConfig {
        steps: 10,
        kind: KindChoice::Additive,
        ..Default::default()
    };
    let all = invert(&model, &fit, None, TARGET, &cfg).unwrap();
    assert_eq!(
        all.optimised_images,
        6 * (CLASSES - 1),
        "below the cap: all"
    );
    let capped = InvertConfig {
        max_images: 7,
        ..cfg.clone()
    };
    let few = invert(&model, &fit, None, TARGET, &capped).unwrap();
    assert_eq!(few.optimised_images, 7);
    assert_ne!(all.forms[0].trigger, few.forms[0].trigger);
    let zero = InvertConfig {
        max_images: 0,
        ..cfg
    };
    let err = invert(&model, &fit, None, TARGET, &zero).unwrap_err();
    assert!(err.to_string().contains("max_images"), "{err}");
}

#[test]
fn consensus_term_runs_at_the_named_or_deepest_layer() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let fit = images(6, 0);
    let cfg = InvertConfig {
        consensus_ratio: 0.1,
        kind: KindChoice::MaskPattern,
        ..Default::default()
    };
    let inv = invert(&model, &fit, None, TARGET, &cfg).unwrap();
    assert_eq!(
        inv.layer.as_deref(),
        Some("embedding"),
        "the deepest candidate"
    );
    assert!(inv.best.dispersion.is_some_and(f64::is_finite));
    assert!((inv.best.lambda2 - 0.1 * inv.best.lambda1).abs() < 1e-9);
    assert!(inv.best.feasible);
    // A stage-1 mu must come with its layer and fit it.
    let named = InvertConfig {
        layer: Some("embedding".into()),
        steps: 20,
        ..cfg.clone()
    };
    let mu = vec![0.0f32; 3 * CLASSES + 8];
    assert!(invert_towards(&model, &fit, None, TARGET, Some(&mu), &named).is_ok());
    let err = invert_towards(&model, &fit, None, TARGET, Some(&mu[..5]), &named).unwrap_err();
    assert!(err.to_string().contains("length 5"), "{err}");
    let off = InvertConfig {
        consensus_ratio: 0.0,
        ..named
    };
    let inv = invert_towards(&model, &fit, None, TARGET, Some(&mu[..5]), &off).unwrap();
    assert!(
        inv.layer.is_none() && inv.best.dispersion.is_none(),
        "ratio 0: no term"
    );
}

#[test]
fn split_sample_draws_the_scans_optimisation_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let data = images(9, 3);
    let mut cfg = crate::detect::ScanConfig {
        per_class: 4,
        holdout_per_class: 3,
        seed: 5,
        layer: crate::detect::LayerChoice::Named(vec!["embedding".into()]),
        ..Default::default()
    };
    cfg.cepa.steps = 2;
    let report = crate::detect::scan(&model, &data, &cfg).unwrap();
    let (fit, hold) = split_sample(&data, 4, 3, 5).unwrap();
    let scanned = report.fit_images.unwrap();
    assert_eq!(
        (&fit.labels, &fit.pixels),
        (&scanned.labels, &scanned.pixels)
    );
    let hold = hold.unwrap();
    assert_eq!(hold.len(), 3 * CLASSES);
    assert_eq!(report.images.holdout_per_class, 3);
    // Held-out images are other images than the optimisation ones.
    for i in 0..hold.len() {
        assert!((0..scanned.len()).all(|k| scanned.image(k) != hold.image(i)));
    }
    let (_, none) = split_sample(&data, 9, 3, 5).unwrap();
    assert!(none.is_none(), "nothing left beyond per_class");
    // The wider measurement split keeps the scan's optimisation images and holds out more,
    // all of them other images, capped by what each class has left.
    let (fit, wide) = measure_split(&data, 4, 3, 5, 5).unwrap();
    assert_eq!(
        (&fit.labels, &fit.pixels),
        (&scanned.labels, &scanned.pixels)
    );
    let wide = wide.unwrap();
    assert_eq!(wide.len(), 5 * CLASSES);
    assert!(wide.class_counts().iter().all(|&n| n == 5));
    for i in 0..wide.len() {
        assert!((0..scanned.len()).all(|k| scanned.image(k) != wide.image(i)));
    }
    let (_, capped) = measure_split(&data, 4, 3, 50, 5).unwrap();
    assert_eq!(capped.unwrap().len(), 5 * CLASSES, "9 - 4 left per class");
    let (_, none) = measure_split(&data, 9, 3, 5, 5).unwrap();
    assert!(none.is_none());
}

#[test]
fn config_is_validated_before_compute() {
    assert!(InvertConfig::default().validate().is_ok());
    for cfg in [
        InvertConfig {
            steps: 0,
            ..Default::default()
        },
        InvertConfig {
            pi: 0.0,
            ..Default::default()
        },
        InvertConfig {
            lambda_factor: 1.0,
            ..Default::default()
        },
        InvertConfig {
            consensus_ratio: -1.0,
            ..Default::default()
        },
        InvertConfig {
            lr_mask: f64::NAN,
            ..Default::default()
        },
        InvertConfig {
            confidence: 1.0,
            ..Default::default()
        },
    ] {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
}

#[test]
fn apply_matches_the_formulas() {
    let form = |mask: Option<Vec<f32>>, trigger: Vec<f32>| FormResult {
        kind: TriggerKind::Additive,
        feasible: true,
        fit_success: 1.0,
        cost: 0.0,
        base_cost: 0.0,
        l1: 0.0,
        l2: 0.0,
        mask_l1: None,
        regulariser: 0.0,
        dispersion: None,
        steps: 1,
        lambda1: 0.0,
        lambda2: 0.0,
        strength: 1.0,
        confident_success: None,
        trigger,
        mask,
    };
    // Two 1x1x2 images.
    let x = [0.2, 0.9, 0.5, 0.0];
    let add = apply(&form(None, vec![0.3, 0.3]), [1, 1, 2], &x);
    let want = [0.5, 1.0, 0.8, 0.3];
    assert!(
        add.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{add:?}"
    );
    let mp = apply(&form(Some(vec![0.0, 0.5]), vec![1.0, 1.0]), [1, 1, 2], &x);
    let want = [0.2, 0.95, 0.5, 0.5];
    assert!(
        mp.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{mp:?}"
    );
}

#[test]
fn strengthening_scales_the_smallest_trigger_and_keeps_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let model = planted_model(dir.path());
    let fit = images(8, 0);
    for kind in [KindChoice::Additive, KindChoice::MaskPattern] {
        let plain = InvertConfig {
            kind,
            steps: 60,
            confidence: 0.0,
            ..Default::default()
        };
        let strong = InvertConfig {
            confidence: 0.99,
            ..plain.clone()
        };
        let a = invert(&model, &fit, None, TARGET, &plain).unwrap();
        let b = invert(&model, &fit, None, TARGET, &strong).unwrap();
        let (a, b) = (&a.best, &b.best);
        assert_eq!(a.strength, 1.0);
        assert_eq!(a.confident_success, None);
        // The factor is a power of 1.15 within [1, max_strength].
        let k = b.strength.ln() / 1.15f64.ln();
        assert!(
            (k - k.round()).abs() < 1e-6 && b.strength <= 4.0 + 1e-9,
            "{}",
            b.strength
        );
        let reached = b.confident_success.unwrap();
        assert!((0.0..=1.0).contains(&reached));
        // The same optimisation, scaled: the shape is kept.
        let s = b.strength as f32;
        match (&a.mask, &b.mask) {
            (Some(ma), Some(mb)) => {
                for (x, y) in ma.iter().zip(mb) {
                    assert!(((x * s).min(1.0) - y).abs() < 1e-6);
                }
                assert_eq!(a.trigger, b.trigger, "the pattern is kept");
            }
            (None, None) => {
                for (x, y) in a.trigger.iter().zip(&b.trigger) {
                    assert!((x * s - y).abs() < 1e-6);
                }
            }
            _ => panic!("{kind:?}: forms differ"),
        }
        // A stronger trigger costs at least as much.
        assert!(b.cost >= a.cost - 1e-9, "{kind:?}: {} < {}", b.cost, a.cost);
    }
}
