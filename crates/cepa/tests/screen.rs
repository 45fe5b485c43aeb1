//! Screening (issue 16) on a 12-class synthetic model: the screened scan (a short pass over every
//! class, then the full optimisation of the top candidates and a weighted null sample) finds the
//! planted target as the full scan does, keeps the clean twin clean, reports which classes it
//! screened out, and a saved screened report decides again to the same verdict. The same for
//! Neural Cleanse.

use cepa::data::ImageSet;
use cepa::detect::nc::{NcConfig, neural_cleanse};
use cepa::detect::verdict::{SavedScan, Statistic, redecide};
use cepa::detect::{LayerChoice, ScanConfig, ScreenConfig, ScreenRole, ScreenedClass, scan};
use cepa::model::Classifier;
use rand::{Rng, SeedableRng};

mod common;

const CLASSES: usize = 12;
const ROWS: usize = CLASSES + 1;
const COLS: usize = 7;
const TARGET: usize = 5;

/// 13 x 7 grey images; class c is a bright row c. Three embedding units per class sum its row;
/// with `planted`, one more unit fires on the corner pixel (12, 6), black in clean images, and
/// votes strongly for the target.
fn model(planted: bool, dir: &std::path::Path) -> Classifier {
    let d = ROWS * COLS;
    let hidden = 3 * CLASSES + 1;
    let mut w1 = vec![0.0f32; hidden * d];
    let mut b1 = vec![0.0f32; hidden];
    for c in 0..CLASSES {
        for u in 0..3 {
            for q in 0..COLS {
                w1[(3 * c + u) * d + c * COLS + q] = 1.0 / COLS as f32;
            }
            b1[3 * c + u] = -0.05;
        }
    }
    let trigger_unit = 3 * CLASSES;
    if planted {
        w1[trigger_unit * d + d - 1] = 20.0;
        b1[trigger_unit] = 0.1;
    }
    let mut w2 = vec![0.0f32; CLASSES * hidden];
    for c in 0..CLASSES {
        for u in 0..3 {
            w2[c * hidden + 3 * c + u] = 4.0;
        }
    }
    w2[TARGET * hidden + trigger_unit] = 6.0;
    let name = if planted { "planted" } else { "clean" };
    common::two_layer_classifier(name, [ROWS, COLS], CLASSES, (&w1, &b1), &w2, dir)
}

fn images(per_class: usize, seed: u64) -> ImageSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for c in 0..CLASSES {
        for _ in 0..per_class {
            for r in 0..ROWS {
                for q in 0..COLS {
                    let base = if r == c { 0.8 } else { 0.1 };
                    let v = if r == ROWS - 1 && q == COLS - 1 {
                        0.0
                    } else {
                        base + rng.random_range(-0.1..0.1f32)
                    };
                    pixels.push(v.clamp(0.0, 1.0));
                }
            }
            labels.push(c);
        }
    }
    ImageSet::synthetic(pixels, labels, [1, ROWS, COLS], CLASSES, "synthetic")
}

fn screen() -> ScreenConfig {
    ScreenConfig {
        min_classes: 10,
        steps: 30,
        max_samples: 22,
        candidates: 2,
        null: 4,
    }
}

fn config(screened: bool) -> ScanConfig {
    let mut cfg = ScanConfig {
        per_class: 6,
        holdout_per_class: 4,
        layer: LayerChoice::Named(vec!["embedding".into()]),
        ..Default::default()
    };
    cfg.cepa.steps = 150;
    cfg.cepa.lr = 0.02;
    cfg.screen = if screened {
        screen()
    } else {
        ScreenConfig {
            min_classes: 0,
            ..screen()
        }
    };
    cfg
}

#[test]
fn screened_scan_finds_the_planted_target_as_the_full_scan_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(10, 0);
    let planted = model(true, dir.path());
    let full = scan(&planted, &data, &config(false)).unwrap();
    let screened = scan(&planted, &data, &config(true)).unwrap();
    assert!(full.screen.is_none() && full.results.len() == CLASSES);
    assert_eq!(full.target, Some(TARGET), "{:#?}", full.decision.classes);
    assert_eq!(
        screened.target,
        Some(TARGET),
        "{:#?}",
        screened.decision.classes
    );

    // Which classes ran fully, and for how many each stands.
    let s = screened.screen.as_ref().expect("a screen report");
    assert_eq!(s.classes.len(), CLASSES);
    let role = |r: ScreenRole| s.classes.iter().filter(|c| c.role == r).count();
    assert_eq!(
        (
            role(ScreenRole::Candidate),
            role(ScreenRole::Null),
            role(ScreenRole::ScreenedOut)
        ),
        (2, 4, 6)
    );
    let target = &s.classes[TARGET];
    assert_eq!((target.role, target.rank), (ScreenRole::Candidate, 1));
    let total: f64 = s.classes.iter().map(|c| c.weight).sum();
    assert!(
        (total - CLASSES as f64).abs() < 1e-9,
        "weights sum to {total}"
    );
    // The screening pass's own statistics are kept for every class, screened out or not.
    let names = |c: &ScreenedClass| -> Vec<String> {
        c.statistics.iter().map(|v| v.statistic.clone()).collect()
    };
    let first = names(&s.classes[0]);
    assert!(first.iter().any(|n| n == "delta_norm"), "{first:?}");
    for c in &s.classes {
        assert_eq!(names(c), first, "class {}", c.class);
        assert!(c.statistics.iter().all(|v| v.value.is_finite()));
    }
    // They are the screening pass's (30 steps on fewer images), not the full optimisation's.
    let full_target = screened
        .decision
        .classes
        .iter()
        .find(|c| c.class == TARGET)
        .expect("the target optimised fully");
    let pick = |name: &str| -> (f64, f64) {
        let quick = s.classes[TARGET]
            .statistics
            .iter()
            .find(|v| v.statistic == name);
        let full = full_target
            .statistics
            .iter()
            .find(|v| v.statistic.name() == name);
        (quick.unwrap().value, full.unwrap().value)
    };
    let (quick, full_value) = pick("delta_norm");
    assert!(
        (quick - full_value).abs() > 1e-9,
        "{quick} against {full_value}"
    );
    assert_eq!(screened.results.len(), 6);
    assert_eq!(screened.decision.classes.len(), 6);
    let pool = screened
        .decision
        .pool
        .as_ref()
        .expect("the pool in the decision");
    assert_eq!(pool.classes, CLASSES);
    // The threshold is the model's (12 classes), not the pool's (6).
    assert_eq!(screened.decision.threshold, full.decision.threshold);
    assert!(
        screened
            .decision
            .notes
            .iter()
            .any(|n| n.contains("screened"))
    );

    // A saved screened report decides again to the same verdict.
    let json = serde_json::to_value(&screened).unwrap();
    assert!(json["screen"]["classes"].is_array());
    let saved: SavedScan = serde_json::from_value(json).unwrap();
    let again = redecide(&saved, &config(true).decision).unwrap();
    assert_eq!(again.target, screened.target);
    assert!((again.score - screened.score).abs() < 1e-9);

    // Each class of the pool was optimised as the full scan optimised it (its start is drawn
    // from its own stream of the seed, whatever runs beside it), so the screened scan differs
    // from the full one by its null sample alone.
    for c in &screened.decision.classes {
        let f = &full.decision.classes[c.class];
        assert_eq!(f.class, c.class);
        for (a, b) in c.statistics.iter().zip(&f.statistics) {
            assert_eq!((a.statistic, &a.layer), (b.statistic, &b.layer));
            // pair_delta compares a class with the other classes optimised: the pool's in a
            // screened scan, all of them in a full one.
            if a.statistic == Statistic::PairDelta {
                continue;
            }
            assert!(
                (a.value - b.value).abs() <= 1e-4 * b.value.abs().max(1.0),
                "class {}: {} {} screened against {} full",
                c.class,
                a.statistic.name(),
                a.value,
                b.value
            );
        }
    }

    let clean = model(false, dir.path());
    let c = scan(&clean, &data, &config(true)).unwrap();
    assert!(!c.decision.backdoored, "clean twin flagged: {}", c.score);
}

#[test]
fn screened_neural_cleanse_finds_the_planted_target() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(6, 1);
    let planted = model(true, dir.path());
    let cfg = NcConfig {
        steps: 150,
        screen: screen(),
        ..Default::default()
    };
    let nc = neural_cleanse(&planted, &data, &cfg, &|_| {}).unwrap();
    assert_eq!(nc.most_anomalous, TARGET, "{:#?}", nc.classes);
    assert!(nc.verdict_backdoored, "score {}", nc.score);
    let s = nc.screen.as_ref().expect("a screen report");
    assert_eq!(
        s.classes
            .iter()
            .filter(|c| c.role != ScreenRole::ScreenedOut)
            .count(),
        6
    );
    assert_eq!(nc.classes.len(), 6);
    // The screening pass's mask norm of every class, the planted target's the smallest.
    let l1: Vec<f64> = s.classes.iter().map(|c| c.statistics[0].value).collect();
    assert!(
        s.classes
            .iter()
            .all(|c| c.statistics.len() == 1 && c.statistics[0].statistic == "l1")
    );
    let smallest = (0..l1.len())
        .min_by(|&a, &b| l1[a].total_cmp(&l1[b]))
        .unwrap();
    assert_eq!(smallest, TARGET, "{l1:?}");
    assert_eq!(nc.classes[0].target, TARGET, "the top candidate runs first");
    let full = neural_cleanse(
        &planted,
        &data,
        &NcConfig {
            screen: ScreenConfig {
                min_classes: 0,
                ..screen()
            },
            ..cfg
        },
        &|_| {},
    )
    .unwrap();
    assert!(full.screen.is_none() && full.classes.len() == CLASSES);
    assert_eq!(full.most_anomalous, TARGET);
    // The pool's classes were optimised as in the full run: the same mask norms.
    for c in &nc.classes {
        let f = &full.classes[c.target];
        assert!(
            (c.l1 - f.l1).abs() <= 1e-4 * f.l1.abs().max(1.0),
            "class {}: l1 {} screened against {} full",
            c.target,
            c.l1,
            f.l1
        );
    }
}
