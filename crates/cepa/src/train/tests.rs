use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};

use super::net::{Init, Layout};
use super::*;
use crate::data::{read_npy, write_npy_f32};
use crate::model::{Classifier, cpu_device};
use crate::onnx::write::save_model;

fn random_images(n: usize, [c, h, w]: [usize; 3], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * c * h * w)
        .map(|_| rng.random_range(0.0..1.0))
        .collect()
}

/// Runs `model` (argv 1) on the `.npy` input (argv 2) with onnxruntime, all graph optimisations
/// off, and saves the first output as `float32` `.npy` (argv 3).
const ORT_SCRIPT: &str = r#"
import sys
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
(y,) = s.run(None, {s.get_inputs()[0].name: np.load(sys.argv[2])})
np.save(sys.argv[3], np.asarray(y, dtype=np.float32))
"#;

/// Outputs of onnxruntime (an independent ONNX reader, through Python) for `model` on `input`
/// (`.npy`), or `None` when python3 with numpy and onnxruntime is missing, unless the
/// environment sets `CEPA_REQUIRE_ORT=1`.
fn onnxruntime_outputs(model: &Path, input: &Path) -> Option<(Vec<usize>, Vec<f32>)> {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, onnxruntime"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let required = std::env::var("CEPA_REQUIRE_ORT").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "CEPA_REQUIRE_ORT=1 but python3 with numpy and onnxruntime is missing"
        );
        eprintln!("skipping the onnxruntime check: no python3 with numpy and onnxruntime");
        return None;
    }
    let out = input.with_extension("out.npy");
    let run = Command::new("python3")
        .arg("-c")
        .arg(ORT_SCRIPT)
        .args([model, input, &out])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "onnxruntime failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let y = read_npy(&out).unwrap();
    Some((y.shape.clone(), y.to_f32()))
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-4, "{what}, logit {i}: {a} vs burn {b}");
    }
}

/// Export `w`, read the file back with the project's interpreter and with onnxruntime, and
/// check that both compute the training-side forward pass on random images; `layer` must be an
/// embedding candidate of the loaded model.
fn check_export<N: Network>(w: &N, layer: &str) {
    let arch = w.arch();
    let [c, h, wd] = arch.input();
    let k = arch.num_classes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.onnx");
    save_model(&w.to_onnx().unwrap(), &path).unwrap();
    let device = cpu_device(false);
    let model = Classifier::load(&path, &arch.spec(), &device).unwrap();
    assert!(
        model.layer(layer).unwrap().candidate,
        "{layer} is a candidate"
    );

    let n = 5;
    let pixels = random_images(n, arch.input(), 3);
    let onnx = model.logits(model.images_tensor(&pixels, n)).unwrap();
    assert_eq!(onnx.dims(), [n, k]);
    let x = Tensor::from_data(TensorData::new(pixels.clone(), [n, c, h, wd]), &device);
    let direct = read_f32(arch.forward(upload(w, &device), x)).unwrap();
    let spread = direct.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        spread > 0.1,
        "logits should not be trivially small: {spread}"
    );
    assert_close(&read_f32(onnx).unwrap(), &direct, "interpreter");

    let input = dir.path().join("input.npy");
    write_npy_f32(&input, &[n, c, h, wd], &pixels).unwrap();
    if let Some((shape, ort)) = onnxruntime_outputs(&path, &input) {
        assert_eq!(shape, [n, k]);
        assert_close(&ort, &direct, "onnxruntime");
    }
    let bytes = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(bytes >= 4 * arch.num_params(), "every weight is stored");
}

/// Give every zero-initialised tensor of `layout` (biases, residual branch ends) random values,
/// so that the export's wiring of each is checked.
fn perturb_zeros(layout: &Layout, flat: &mut [f32], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for s in layout.specs().iter().filter(|s| s.init == Init::Zero) {
        let v = layout.values_mut(flat, &s.name).unwrap();
        v.iter_mut().for_each(|x| *x = rng.random_range(-0.2..0.2));
    }
}

/// The export read back by the project's own interpreter and by onnxruntime computes the
/// training-side forward.
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
        check_export(&w, "flatten");
    }
}

/// The ResNet's export (Conv, Relu, Add, GlobalAveragePool, Flatten, Gemm) agrees with its
/// training forward in both readers: ResNet-8 on CIFAR-sized input, and two stages of two
/// blocks (identity shortcuts after the first) on an odd-sized grey input.
#[test]
fn resnet_export_matches_the_training_forward() {
    for arch in [
        ResNetArch::default(),
        ResNetArch {
            channels: 1,
            height: 20,
            width: 17,
            num_classes: 4,
            widths: vec![8, 12],
            blocks: 2,
        },
    ] {
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        assert!(w.values("layer1.0.conv2.weight").unwrap()[0] != 0.0);
        check_export(&w, "flatten");
    }
}

/// The VGG net's export agrees with its training forward in both readers, with and without
/// the hidden linear layer.
#[test]
fn vgg_export_matches_the_training_forward() {
    for arch in [
        VggArch::default(),
        VggArch {
            channels: 1,
            height: 18,
            width: 13,
            num_classes: 3,
            stages: vec![vec![4], vec![6, 5]],
            hidden: 0,
        },
    ] {
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        check_export(&w, "flatten");
    }
}

/// The all-convolutional net's export (Conv with stride-2 downsampling and a 1x1 head, Relu,
/// GlobalAveragePool, Flatten) agrees with its training forward in both readers: the CIFAR-sized
/// default, and three stages on an odd-sized grey input, whose stride-2 convolutions round the
/// sides up (19x13, 10x7, 5x4). The last stage's output, read by the head, is a candidate.
#[test]
fn allconv_export_matches_the_training_forward() {
    for (arch, hw) in [
        (AllConvArch::default(), (8, 8)),
        (
            AllConvArch {
                channels: 1,
                height: 19,
                width: 13,
                num_classes: 3,
                stages: vec![vec![4], vec![6, 5], vec![7]],
            },
            (5, 4),
        ),
    ] {
        assert_eq!(arch.feature_hw(), hw);
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        assert!(w.values("head.bias").unwrap()[0] != 0.0);
        check_export(&w, "stage3.relu1");
    }
}

/// The fully connected net's export (its course-network shape with three hidden layers, a wide
/// one on colour images, and a plain linear classifier) computes the training forward.
#[test]
fn mlp_export_matches_the_training_forward() {
    for (arch, layer) in [
        (
            MlpArch {
                hidden: vec![10, 10, 10],
                ..MlpArch::default()
            },
            "fc3.relu",
        ),
        (
            MlpArch {
                channels: 3,
                height: 9,
                width: 7,
                num_classes: 4,
                hidden: vec![32],
            },
            "fc1.relu",
        ),
        (
            MlpArch {
                hidden: vec![],
                ..MlpArch::default()
            },
            "flatten",
        ),
    ] {
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        assert!(w.values("head.bias").unwrap()[0] != 0.0);
        check_export(&w, layer);
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
    ImageSet::synthetic(pixels, labels, [1, h, w], 2, "blobs")
}

/// Two classes on 16x16 images wherever the pattern lies: horizontal stripes or vertical
/// stripes (period 4, random phase), plus noise. Suits networks that pool globally.
fn stripes(n: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut set = blobs(n, seed);
    set.pixels.clear();
    for &label in &set.labels {
        let phase = rng.random_range(0..4usize);
        for r in 0..16usize {
            for c in 0..16usize {
                let along = if label == 0 { r } else { c };
                let on = (along + phase) % 4 < 2;
                let noise: f32 = rng.random_range(0.0..0.3);
                set.pixels.push(if on { 0.6 + noise } else { noise });
            }
        }
    }
    set.source = PathBuf::from("stripes");
    set
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

/// The ResNet, the VGG net, the all-convolutional net and the fully connected net learn the
/// stripes task; chosen at run time through [`NetArch`] they train exactly as when named
/// statically.
#[test]
fn every_flat_network_learns_a_toy_task() {
    let resnet = ResNetArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        widths: vec![8, 16],
        blocks: 1,
    };
    let vgg = VggArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        stages: vec![vec![8], vec![16]],
        hidden: 16,
    };
    let allconv = AllConvArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        stages: vec![vec![8], vec![16]],
    };
    let mlp = MlpArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        hidden: vec![16, 16],
    };
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 8,
        lr: 3e-3,
        seed: 5,
        ..Default::default()
    };
    let device = cpu_device(true);
    let (set, held_out) = (stripes(64, 0), stripes(64, 1));
    let mut dynamic = Vec::new();
    for arch in [
        NetArch::ResNet(resnet.clone()),
        NetArch::Vgg(vgg),
        NetArch::AllConv(allconv.clone()),
        NetArch::Mlp(mlp.clone()),
    ] {
        let trained = train(&set, arch.clone(), &cfg, &device).unwrap();
        let first = trained.history.first().unwrap().loss;
        let last = trained.history.last().unwrap().loss;
        assert!(
            last < 0.5 * first,
            "{}: loss {first} -> {last}",
            arch.name()
        );
        let acc = accuracy(&trained.weights, &held_out, &device).unwrap();
        assert!(acc >= 0.9, "{}: held-out accuracy {acc}", arch.name());
        dynamic.push(trained.weights);
    }
    let direct = train(&set, resnet, &cfg, &device).unwrap().weights;
    assert_eq!(dynamic[0], Net::ResNet(direct));
    let direct = train(&set, allconv, &cfg, &device).unwrap().weights;
    assert_eq!(dynamic[2], Net::AllConv(direct));
    let direct = train(&set, mlp, &cfg, &device).unwrap().weights;
    assert_eq!(dynamic[3], Net::Mlp(direct));
}

#[test]
fn arch_names_select_their_network() {
    let (cnn, resnet, vgg, preact, allconv, mlp) = (
        CnnArch::default(),
        ResNetArch::default(),
        VggArch::default(),
        PreActArch {
            widths: vec![4, 8],
            ..PreActArch::default()
        },
        AllConvArch::default(),
        MlpArch::default(),
    );
    let mobilenet = MobileNetArch::default();
    let shapes = Shapes {
        cnn: &cnn,
        resnet: &resnet,
        vgg: &vgg,
        preact: &preact,
        allconv: &allconv,
        mlp: &mlp,
        mobilenet: &mobilenet,
    };
    for name in ARCH_NAMES {
        let a = NetArch::select(name, shapes)
            .unwrap()
            .with_io(3, 32, 32, 43);
        assert_eq!(a.name(), name);
        assert_eq!((a.input(), a.num_classes()), ([3, 32, 32], 43));
        let w = a.init(0).unwrap();
        assert_eq!(w.arch(), a);
        assert_eq!(w.to_flat().len(), a.num_params());
        assert_eq!(a.unflatten(&w.to_flat()).unwrap(), w);
    }
    let err = NetArch::select("resnet50", shapes).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("\"preact-resnet\""), "{err}");
    assert!(err.to_string().contains("\"allconv\""), "{err}");
    assert!(err.to_string().contains("\"mlp\""), "{err}");
    assert!(err.to_string().contains("\"mobilenet\""), "{err}");
    // The manifest records the chosen network's own config.
    assert_eq!(
        serde_json::to_value(NetArch::ResNet(resnet.clone())).unwrap(),
        serde_json::to_value(&resnet).unwrap()
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
        TrainConfig {
            momentum: 1.0,
            ..Default::default()
        },
        TrainConfig {
            weight_decay: -1e-4,
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

#[test]
fn cosine_schedule_anneals_to_zero_over_the_epochs() {
    let cfg = TrainConfig {
        lr: 0.01,
        epochs: 10,
        schedule: Schedule::Cosine,
        ..Default::default()
    };
    assert!((cfg.lr_at(0) - 0.01).abs() < 1e-15);
    assert!((cfg.lr_at(5) - 0.005).abs() < 1e-12);
    assert!(cfg.lr_at(9) < 0.0003 && cfg.lr_at(9) > 0.0);
    assert!(cfg.lr_at(10).abs() < 1e-15);
    let parsed: TrainConfig =
        toml::from_str("optimizer = \"sgd\"\nschedule = \"cosine\"\nweight_decay = 5e-4").unwrap();
    assert_eq!(
        (parsed.optimizer, parsed.schedule, parsed.weight_decay),
        (Optimizer::Sgd, Schedule::Cosine, 5e-4)
    );
    assert!(toml::from_str::<TrainConfig>("optimizer = \"lbfgs\"").is_err());
}

/// Every tensor of `layout` initialised to one (BatchNorm scales and running variances) gets a
/// random value in [0.5, 1.5], so that the export's wiring of each is checked.
fn perturb_ones(layout: &Layout, flat: &mut [f32], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for s in layout.specs().iter().filter(|s| s.init == Init::One) {
        let v = layout.values_mut(flat, &s.name).unwrap();
        v.iter_mut().for_each(|x| *x = rng.random_range(0.5..1.5));
    }
}

/// The PreAct-ResNet's export (Conv without bias, BatchNormalization, Relu, Add,
/// GlobalAveragePool, Flatten, Gemm) computes its inference forward (running statistics) in
/// both readers: four stages of two blocks on CIFAR-sized input, and two stages of one block on
/// an odd-sized grey input.
#[test]
fn preact_export_matches_the_inference_forward() {
    for arch in [
        PreActArch {
            widths: vec![8, 16, 16, 32],
            ..PreActArch::default()
        },
        PreActArch {
            channels: 1,
            height: 15,
            width: 18,
            num_classes: 3,
            widths: vec![4, 6],
            blocks: 1,
        },
    ] {
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        perturb_ones(&arch.layout(), &mut w.params, 3);
        assert!(w.values("layer1.0.bn1.running_mean").unwrap()[0] != 0.0);
        assert!(w.values("layer1.0.bn2.running_var").unwrap()[0] != 1.0);
        check_export(&w, "flatten");
    }
}

/// A PreAct-ResNet of two stages of one block (8 and 16 channels) for 1x16x16 images, 2 classes.
fn toy_preact() -> PreActArch {
    PreActArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        widths: vec![8, 16],
        blocks: 1,
    }
}

/// A PreAct-ResNet trains with SGD, momentum, weight decay and the cosine schedule on batch
/// statistics, leaves its running statistics alone while training, and then gets them from
/// the training images: with all of them in one calibration batch, the inference forward on
/// that batch equals the training forward exactly.
#[test]
fn preact_trains_on_batch_statistics_and_calibrates_its_running_ones() {
    let arch = toy_preact();
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 8,
        optimizer: Optimizer::Sgd,
        lr: 0.05,
        schedule: Schedule::Cosine,
        weight_decay: 5e-4,
        seed: 5,
        ..Default::default()
    };
    let device = cpu_device(true);
    let (set, held_out) = (stripes(64, 0), stripes(64, 1));
    let mut trainer = Trainer::new(&arch.init(cfg.seed).unwrap(), &cfg, &device).unwrap();
    let history: Vec<EpochStats> = (0..cfg.epochs)
        .map(|_| trainer.epoch(&set).unwrap())
        .collect();
    let (first, last) = (history[0].loss, history[cfg.epochs - 1].loss);
    assert!(last < 0.5 * first, "loss {first} -> {last}");

    // Weight decay and momentum moved the parameters but not the running statistics.
    let raw = trainer.weights().unwrap();
    let fresh = arch.init(cfg.seed).unwrap();
    for s in arch.layout().specs() {
        let (now, then) = (raw.values(&s.name).unwrap(), fresh.values(&s.name).unwrap());
        assert_eq!(now == then, !s.trainable, "{}", s.name);
    }

    let calibrated = trainer.calibrated_weights(&set).unwrap();
    assert_ne!(
        calibrated.values("layer2.0.bn2.running_var").unwrap(),
        raw.values("layer2.0.bn2.running_var").unwrap()
    );
    let x = Tensor::from_data(
        TensorData::new(set.pixels.clone(), [64, 1, 16, 16]),
        &device.clone().inner(),
    );
    let params = upload(&calibrated, &device.clone().inner());
    let inference = read_f32(arch.forward(params.clone(), x.clone())).unwrap();
    let training = read_f32(arch.forward_train(params, x)).unwrap();
    assert_close(&inference, &training, "inference against training forward");

    let acc = accuracy(&calibrated, &held_out, &device).unwrap();
    assert!(acc >= 0.9, "held-out accuracy {acc}");
    // `train` calibrates too, and the same seed gives the same network.
    assert_eq!(
        train(&set, arch, &cfg, &device).unwrap().weights,
        calibrated
    );
}

/// The MobileNet's export (Conv without bias, depthwise Conv with `group` = channels,
/// BatchNormalization, Relu, GlobalAveragePool, Flatten, Gemm) computes its inference forward
/// in both readers: CIFAR-sized input with three strided blocks, and an odd-sized grey input.
#[test]
fn mobilenet_export_matches_the_inference_forward() {
    for arch in [
        MobileNetArch {
            stem: 8,
            blocks: vec![[16, 1], [16, 2], [32, 2], [32, 1], [48, 2]],
            ..MobileNetArch::default()
        },
        MobileNetArch {
            channels: 1,
            height: 15,
            width: 18,
            num_classes: 3,
            stem: 4,
            blocks: vec![[6, 2], [6, 1]],
        },
    ] {
        let mut w = arch.init(1).unwrap();
        perturb_zeros(&arch.layout(), &mut w.params, 2);
        perturb_ones(&arch.layout(), &mut w.params, 3);
        assert!(w.values("layers.0.bn1.running_mean").unwrap()[0] != 0.0);
        assert!(w.values("layers.1.bn2.running_var").unwrap()[0] != 1.0);
        check_export(&w, "flatten");
    }
}

/// A MobileNet learns the stripes task with SGD and BatchNorm, and its calibrated inference
/// forward on the training batch equals the training forward: the depthwise convolutions train
/// through burn's grouped convolution.
#[test]
fn mobilenet_trains_and_calibrates() {
    let arch = MobileNetArch {
        channels: 1,
        height: 16,
        width: 16,
        num_classes: 2,
        stem: 8,
        blocks: vec![[16, 2], [16, 1]],
    };
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 8,
        optimizer: Optimizer::Sgd,
        lr: 0.05,
        schedule: Schedule::Cosine,
        weight_decay: 5e-4,
        seed: 5,
        ..Default::default()
    };
    let device = cpu_device(true);
    let (set, held_out) = (stripes(64, 0), stripes(64, 1));
    let trained = train(&set, arch.clone(), &cfg, &device).unwrap();
    let first = trained.history.first().unwrap().loss;
    let last = trained.history.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let fresh = arch.init(cfg.seed).unwrap();
    assert_ne!(
        trained.weights.values("layers.0.conv1.weight").unwrap(),
        fresh.values("layers.0.conv1.weight").unwrap(),
        "the depthwise weights train"
    );
    assert_ne!(
        trained.weights.values("layers.1.bn2.running_var").unwrap(),
        fresh.values("layers.1.bn2.running_var").unwrap(),
        "calibrated"
    );
    let acc = accuracy(&trained.weights, &held_out, &device).unwrap();
    assert!(acc >= 0.9, "held-out accuracy {acc}");
}

#[test]
fn late_trigger_is_stamped_after_the_augmentation() {
    use crate::attack::BadNetsConfig;
    // Two 1x6x6 images of mid grey; image 1 carries a 2x2 white patch at rows/cols 0..2.
    let set = ImageSet::synthetic(
        vec![0.5; 2 * 36],
        vec![0, 1],
        [1, 6, 6],
        2,
        "late-trigger-test",
    );
    let patch = BadNetsConfig {
        patch: 2,
        row: Some(0),
        col: Some(0),
        value: 1.0,
        ..BadNetsConfig::default()
    };
    let late = LateTrigger {
        trigger: Box::new(patch),
        stamped: vec![false, true],
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut moved = 0;
    for _ in 0..20 {
        let px = batch_pixels(&set, &[0, 1], 2, true, Some(&late), &mut rng).unwrap();
        let (clean, stamped) = px.split_at(36);
        // Every pixel of the stamped image outside the patch is grey or shift fill; the patch
        // itself is where it was put, whatever the shift and flip drew.
        for r in 0..6 {
            for c in 0..6 {
                let v = stamped[r * 6 + c];
                if r < 2 && c < 2 {
                    assert_eq!(v, 1.0, "patch pixel ({r}, {c})");
                } else {
                    assert!(v == 0.5 || v == 0.0, "({r}, {c}) = {v}");
                }
            }
        }
        assert!(
            clean.iter().all(|&v| v == 0.5 || v == 0.0),
            "image 0 is not stamped"
        );
        moved += usize::from(clean.contains(&0.0));
    }
    assert!(moved > 0, "the shift moved the images (zero fill seen)");
    let short = LateTrigger {
        trigger: Box::new(BadNetsConfig::default()),
        stamped: vec![true],
    };
    let cfg = TrainConfig::default();
    let arch = CnnArch {
        channels: 1,
        height: 6,
        width: 6,
        num_classes: 2,
        kernel: 1,
        conv1: 2,
        conv2: 2,
        hidden: 4,
    };
    let mut trainer = Trainer::new(&arch.init(0).unwrap(), &cfg, &cpu_device(true)).unwrap();
    let err = trainer
        .epoch_with(&set, Some(&short))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("marks 1 images") && err.contains("has 2"),
        "{err}"
    );
}

/// A trainer stopped after some epochs and restored into a fresh one from its state trains on
/// to the very weights of an uninterrupted run: Adam with its step count, SGD's momentum with
/// BatchNorm's masked statistics, and the shuffling and augmentation generator all carry over.
#[test]
fn a_restored_trainer_continues_exactly() {
    fn check<N: Network + PartialEq + std::fmt::Debug>(
        init: &N,
        cfg: &TrainConfig,
        set: &ImageSet,
    ) {
        let device = cpu_device(true);
        let mut straight = Trainer::new(init, cfg, &device).unwrap();
        let mut after_two = None;
        for _ in 0..cfg.epochs {
            straight.epoch(set).unwrap();
            if straight.epochs_done() == 2 {
                after_two = Some(straight.state().unwrap());
            }
        }
        let mut first = Trainer::new(init, cfg, &device).unwrap();
        first.epoch(set).unwrap();
        let state = first.state().unwrap();
        assert_eq!((state.epochs, first.epochs_done()), (1, 1));
        drop(first);
        let mut resumed = Trainer::new(init, cfg, &device).unwrap();
        resumed.restore(&state).unwrap();
        assert_eq!(resumed.epochs_done(), 1);
        for _ in 1..cfg.epochs {
            resumed.epoch(set).unwrap();
        }
        assert_eq!(resumed.state().unwrap(), straight.state().unwrap());
        assert_eq!(
            resumed.calibrated_weights(set).unwrap(),
            straight.calibrated_weights(set).unwrap()
        );
        // Not trivially equal: restoring without the generator's position would shuffle anew.
        let mut moved = state.clone();
        moved.rng_word_pos = 0;
        let mut wrong = Trainer::new(init, cfg, &device).unwrap();
        wrong.restore(&moved).unwrap();
        wrong.epoch(set).unwrap();
        let right_two = after_two.unwrap();
        assert_eq!(wrong.epochs_done(), right_two.epochs);
        assert_ne!(wrong.state().unwrap().params, right_two.params);
        // A state of another network is refused.
        let mut short = state.clone();
        short.m.pop();
        let err = wrong.restore(&short).unwrap_err().to_string();
        assert!(err.contains("first moments"), "{err}");
    }
    let cnn = CnnArch {
        height: 16,
        width: 16,
        num_classes: 2,
        ..CnnArch::default()
    };
    let adam = TrainConfig {
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        shift: 1,
        flip: true,
        seed: 5,
        ..Default::default()
    };
    check(&cnn.init(adam.seed).unwrap(), &adam, &blobs(64, 0));
    let preact = toy_preact();
    let sgd = TrainConfig {
        epochs: 2,
        batch_size: 8,
        optimizer: Optimizer::Sgd,
        lr: 0.05,
        schedule: Schedule::Cosine,
        weight_decay: 5e-4,
        shift: 2,
        seed: 7,
        ..Default::default()
    };
    check(&preact.init(sgd.seed).unwrap(), &sgd, &stripes(32, 0));
}
