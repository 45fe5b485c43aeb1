use std::path::PathBuf;

use rand::{Rng, SeedableRng};

use super::*;
use crate::model::{Classifier, cpu_device};
use crate::onnx::write::save_model;

fn random_images(n: usize, arch: CnnArch, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * arch.channels * arch.height * arch.width)
        .map(|_| rng.random_range(0.0..1.0))
        .collect()
}

/// The export read back by the project's own interpreter computes the training-side forward.
#[test]
fn onnx_export_matches_the_training_forward() {
    for arch in [
        CnnArch::default(),
        CnnArch {
            channels: 3,
            height: 32,
            width: 30,
            num_classes: 4,
            ..CnnArch::default()
        },
    ] {
        let mut w = CnnWeights::init(arch, 1).unwrap();
        // Non-zero biases, so that their wiring is checked too.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for b in [&mut w.conv1_b, &mut w.conv2_b, &mut w.fc1_b, &mut w.fc2_b] {
            b.iter_mut().for_each(|v| *v = rng.random_range(-0.5..0.5));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cnn.onnx");
        save_model(&w.to_onnx().unwrap(), &path).unwrap();
        let spec = arch.spec();
        let device = cpu_device(false);
        let model = Classifier::load(&path, &spec, &device).unwrap();
        assert!(model.layer("flatten").unwrap().candidate);

        let n = 5;
        let pixels = random_images(n, arch, 3);
        let onnx = model.logits(model.images_tensor(&pixels, n)).unwrap();
        let x = Tensor::from_data(
            TensorData::new(pixels, [n, arch.channels, arch.height, arch.width]),
            &device,
        );
        let direct = Cnn::new(&w, &device).unwrap().forward(x);
        assert_eq!(onnx.dims(), [n, arch.num_classes]);
        let onnx = read_f32(onnx).unwrap();
        let direct = read_f32(direct).unwrap();
        let spread = direct.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            spread > 0.1,
            "logits should not be trivially small: {spread}"
        );
        for (i, (a, b)) in onnx.iter().zip(&direct).enumerate() {
            assert!((a - b).abs() < 1e-4, "logit {i}: onnx {a} vs burn {b}");
        }
        let bytes = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(bytes >= 4 * arch.num_params(), "every weight is stored");
    }
}

/// Two classes on 16x16 images: a bright blob top-left or bottom-right, plus noise.
fn blobs(n: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, w) = (16, 16);
    let mut pixels = Vec::with_capacity(n * h * w);
    let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
    for &label in &labels {
        let (r0, c0) = if label == 0 { (2, 2) } else { (9, 9) };
        for r in 0..h {
            for c in 0..w {
                let blob = (r0..r0 + 5).contains(&r) && (c0..c0 + 5).contains(&c);
                let noise: f32 = rng.random_range(0.0..0.3);
                pixels.push(if blob { 0.7 + noise } else { noise });
            }
        }
    }
    ImageSet {
        pixels,
        labels,
        channels: 1,
        height: h,
        width: w,
        num_classes: 2,
        class_names: None,
        source: PathBuf::from("blobs"),
        format: "synthetic".into(),
    }
}

#[test]
fn training_learns_a_toy_task_deterministically() {
    let arch = CnnArch {
        height: 16,
        width: 16,
        num_classes: 2,
        ..CnnArch::default()
    };
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 16,
        lr: 3e-3,
        shift: 1,
        seed: 5,
        ..Default::default()
    };
    let device = cpu_device(true);
    let set = blobs(128, 0);
    let trained = train(&set, arch, &cfg, &device).unwrap();
    let first = trained.history.first().unwrap().loss;
    let last = trained.history.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let held_out = blobs(64, 1);
    let acc = accuracy(&trained.weights, &held_out, &device).unwrap();
    assert!(acc >= 0.95, "held-out accuracy {acc}");

    let again = train(&set, arch, &cfg, &device).unwrap();
    assert_eq!(again.weights, trained.weights, "same seed, same weights");
    let other = TrainConfig { seed: 6, ..cfg };
    assert_ne!(
        train(&set, arch, &other, &device).unwrap().weights,
        trained.weights
    );
}

#[test]
fn bad_settings_fail_before_training() {
    let device = cpu_device(true);
    let arch = CnnArch::default();
    let set = blobs(4, 0);
    for cfg in [
        TrainConfig {
            batch_size: 0,
            ..Default::default()
        },
        TrainConfig {
            lr: -1.0,
            ..Default::default()
        },
        TrainConfig {
            lr_decay: 0.0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            train(&set, arch, &cfg, &device),
            Err(Error::Config(_))
        ));
    }
    // 16x16 images do not fit a 28x28 network.
    assert!(matches!(
        train(&set, arch, &TrainConfig::default(), &device),
        Err(Error::Mismatch(_))
    ));
}

#[test]
fn translate_moves_pixels_and_fills_zero() {
    // 2 channels of 2x3.
    let img: Vec<f32> = (1..=12).map(|v| v as f32).collect();
    assert_eq!(translate(&img, 2, 2, 3, 0, 0), img);
    assert_eq!(
        translate(&img, 2, 2, 3, 1, -1),
        [0., 0., 0., 2., 3., 0., 0., 0., 0., 8., 9., 0.]
    );
    assert_eq!(
        translate(&img, 2, 2, 3, -1, 2),
        [0., 0., 4., 0., 0., 0., 0., 0., 10., 0., 0., 0.]
    );
    assert_eq!(translate(&img, 2, 2, 3, 2, 0), vec![0.0; 12]);
}

#[test]
fn learning_rate_decays_per_epoch() {
    let cfg = TrainConfig {
        lr: 2e-3,
        lr_decay: 0.5,
        ..Default::default()
    };
    assert!((cfg.lr_at(0) - 2e-3).abs() < 1e-15);
    assert!((cfg.lr_at(3) - 2.5e-4).abs() < 1e-15);
    let bad = TrainConfig {
        lr_decay: 1.5,
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}
