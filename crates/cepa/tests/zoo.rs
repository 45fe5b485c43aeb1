//! The zoo end to end on a tiny config: every model is trained, exported, measured and listed in
//! the manifest; the ONNX files read back (by our interpreter and, where Python's onnxruntime is
//! installed, by it) give the trainer's predictions; a rerun skips finished models.

use std::path::{Path, PathBuf};
use std::process::Command;

use cepa::data::{Split, load};
use cepa::model::{Classifier, ModelSpec, cpu_device};
use cepa::zoo::{self, DataPair, ZooConfig};

fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

const CONFIG: &str = r#"
[recipes.mnist]
train_images = 600
cnn = { conv1 = 4, conv2 = 8, hidden = 16 }
train = { epochs = 2, batch_size = 32, lr = 3e-3 }
[[models]]
name = "clean"
dataset = "mnist"
seeds = [0]
[[models]]
name = "blend"
dataset = "mnist"
seeds = [3]
attack = { kind = "blend", alpha = 0.3, rate = 0.2 }
vary = ["target", "pattern"]
"#;

/// Whether `python3 -c 'import onnxruntime'` works; CI sets CEPA_REQUIRE_ORT=1 to insist.
fn onnxruntime_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CEPA_REQUIRE_ORT").as_deref() != Ok("1"),
            "CEPA_REQUIRE_ORT is set but python3 cannot import onnxruntime and numpy"
        );
        eprintln!(
            "note: python3 with onnxruntime not found; the independent-reader check is skipped"
        );
    }
    ok
}

#[test]
fn tiny_zoo_builds_resumes_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: ZooConfig = toml::from_str(CONFIG).unwrap();
    cfg.data_root = shared_data();
    let data = DataPair::load(&cfg.data_root.join("mnist")).unwrap();
    let shapes = [("mnist".to_string(), data.shape())].into_iter().collect();
    let plans = zoo::resolve(&cfg, &shapes).unwrap();
    let device = cpu_device(true);
    for p in &plans {
        let mut epochs = 0;
        zoo::build_model(p, &data, dir.path(), &device, &mut |_, _, _, _| epochs += 1).unwrap();
        assert_eq!(epochs, 2);
        assert!(zoo::is_done(dir.path(), &p.id));
    }
    let manifest = zoo::write_manifest(dir.path(), &plans).unwrap();
    assert_eq!(manifest.models.len(), 2);
    let (clean, bad) = (&manifest.models[0], &manifest.models[1]);
    assert_eq!((clean.attack.as_str(), clean.target), ("clean", None));
    assert_eq!(clean.attack_success_rate, None);
    assert_eq!(bad.attack, "blend");
    assert!(bad.target.is_some_and(|t| t < 10));
    let asr = bad.attack_success_rate.unwrap();
    assert!((0.0..=1.0).contains(&asr));
    assert!(
        clean.clean_accuracy > 0.3,
        "two epochs on 600 images learn something: {}",
        clean.clean_accuracy
    );
    assert_eq!(
        zoo::read_manifest(dir.path()).unwrap().models,
        manifest.models
    );

    // Our interpreter reads the export back with the sidecar spec and agrees with the trainer.
    let test = load(&shared_data().join("mnist"), Split::Test)
        .unwrap()
        .subset(&(0..64).collect::<Vec<_>>());
    let onnx = dir.path().join(&clean.path);
    let spec = ModelSpec::from_file(&dir.path().join(&clean.spec)).unwrap();
    let model = Classifier::load(&onnx, &spec, &cpu_device(false)).unwrap();
    let ours = model.predict(&test, 64).unwrap();
    let x = model.images_tensor(&test.pixels, test.len());
    let logits: Vec<f32> = model.logits(x).unwrap().try_into_vec_as::<f32>().unwrap();

    // The independent reader: onnxruntime on the same images gives the same logits.
    if onnxruntime_available() {
        let npy = dir.path().join("x.npy");
        let shape = [test.len(), 1, 28, 28];
        cepa::data::write_npy_f32(&npy, &shape, &test.pixels).unwrap();
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, numpy as np, onnxruntime as ort\n\
                 s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                 x = np.load(sys.argv[2])\n\
                 y = s.run(None, {s.get_inputs()[0].name: x})[0]\n\
                 print(' '.join(f'{v:.6g}' for v in y.ravel()))",
            )
            .arg(&onnx)
            .arg(&npy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ort: Vec<f32> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(ort.len(), logits.len());
        let worst = ort
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "onnxruntime and the interpreter differ by {worst}"
        );
    }
    // And the argmax of those logits is what `predict` said.
    let argmax: Vec<usize> = logits
        .chunks(10)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap()
        })
        .collect();
    assert_eq!(argmax, ours);

    // A rerun finds both models finished, and up to date with the config.
    assert!(plans.iter().all(|p| zoo::is_done(dir.path(), &p.id)));
    assert!(
        plans
            .iter()
            .all(|p| zoo::stale_reason(dir.path(), p).is_none())
    );
    // An edited config no longer matches what was built.
    let mut edited = plans.clone();
    edited[0].recipe.train.epochs += 1;
    let why = zoo::stale_reason(dir.path(), &edited[0]).expect("more epochs is a change");
    assert!(why.contains("training"), "{why}");
    if let Some(cepa::attack::AttackConfig::Blend(b)) = &mut edited[1].attack {
        b.alpha += 0.1;
    }
    let why = zoo::stale_reason(dir.path(), &edited[1]).expect("another alpha is a change");
    assert!(why.contains("attack") && !why.contains("training"), "{why}");
}
