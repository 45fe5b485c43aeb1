//! The classifier wrapper: preprocessing, logits behind a Softmax, and layer taps agree with each
//! other on a real third-party model.

use std::path::Path;

use burn::prelude::*;
use cepa::data::{Split, load};
use cepa::model::{Classifier, ModelSpec, OutputKind, cpu_device};

fn shared(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

fn close(a: &Tensor<2>, b: &Tensor<2>) -> f32 {
    (a.clone() - b.clone()).abs().max().into_scalar::<f32>()
}

#[test]
fn layer_taps_reproduce_the_logits() {
    let spec = ModelSpec {
        mean: Some(vec![0.5]),
        std: Some(vec![0.5]),
        ..Default::default()
    };
    let model = Classifier::load(
        &shared("models/real/badnets-pytorch-mnist.onnx"),
        &spec,
        &cpu_device(true),
    )
    .unwrap();
    assert_eq!(model.spec().output, OutputKind::Probs);
    let set = load(&shared("data/mnist"), Split::Test)
        .unwrap()
        .subset(&[0, 1, 2, 3, 4, 5]);
    let x = model.images_tensor(&set.pixels, set.len());
    let logits = model.logits(x.clone()).unwrap();
    // Logits, not probabilities: rows do not sum to 1, and their argmax is the right digit.
    let row_sum = burn::tensor::activation::softmax(logits.clone(), 1).sum_dim(1);
    assert!((row_sum.mean().into_scalar::<f32>() - 1.0).abs() < 1e-5);
    assert!(logits.clone().sum_dim(1).abs().max().into_scalar::<f32>() > 1.5);
    let preds: Vec<i64> = logits.clone().argmax(1).try_into_vec_as::<i64>().unwrap();
    assert_eq!(preds, vec![7, 2, 1, 0, 4, 1]);
    for layer in model.layers().iter().filter(|l| l.candidate) {
        let emb = model.embed(x.clone(), &layer.name).unwrap();
        assert_eq!(emb.dims()[1], layer.shape.iter().product::<usize>());
        // Replacing a cut layer by its own value gives the same logits ...
        let again = model
            .logits_from_layer(&layer.name, emb.clone(), None)
            .unwrap();
        assert!(close(&again, &logits) < 1e-4, "{}", layer.name);
        // ... adding zero changes nothing, and adding something changes the logits.
        let zero = model
            .logits_with_added(x.clone(), &layer.name, emb.zeros_like())
            .unwrap();
        assert!(close(&zero, &logits) < 1e-4, "{}", layer.name);
        let moved = model
            .logits_with_added(x.clone(), &layer.name, emb.ones_like())
            .unwrap();
        assert!(close(&moved, &logits) > 1e-3, "{}", layer.name);
    }
}

/// The device check: a model against itself on the CPU agrees (to rounding, not exactly zero
/// only if a reduction reorders), and it catches a difference: the same file read without its
/// normalisation computes other logits and other gradients.
#[test]
fn device_check_agrees_with_itself_and_catches_a_difference() {
    use cepa::pipeline::{DEVICE_TOLERANCE, compare_devices};
    let path = shared("models/real/badnets-pytorch-mnist.onnx");
    let spec = ModelSpec {
        mean: Some(vec![0.5]),
        std: Some(vec![0.5]),
        ..Default::default()
    };
    let set = load(&shared("data/mnist"), Split::Test).unwrap();
    let a = Classifier::load(&path, &spec, &cpu_device(true)).unwrap();
    let b = Classifier::load(&path, &spec, &cpu_device(true)).unwrap();
    let same = compare_devices(&a, &b, &set, 16).unwrap();
    assert_eq!(same.images, 16);
    assert!(same.pass, "{same:?}");
    assert!(same.logits_rel < 1e-6 && same.grad_rel < 1e-6, "{same:?}");
    assert!(same.device.starts_with("cpu") && same.reference.starts_with("cpu"));

    let raw = Classifier::load(&path, &ModelSpec::default(), &cpu_device(true)).unwrap();
    let other = compare_devices(&raw, &b, &set, 4).unwrap();
    assert_eq!(other.images, 4);
    assert!(!other.pass, "{other:?}");
    assert!(other.logits_rel > DEVICE_TOLERANCE && other.grad_rel > DEVICE_TOLERANCE);

    // Without autodiff there is no gradient to compare: an error, not a pass.
    let plain = Classifier::load(&path, &spec, &cpu_device(false)).unwrap();
    assert!(compare_devices(&plain, &b, &set, 4).is_err());
}

/// The fixture `name` (an `.npy` under `tests/fixtures`) as f32 values.
fn fixture(name: &str) -> Vec<f32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    cepa::data::read_npy(&dir.join(name)).unwrap().to_f32()
}

/// `got` equals the fixture `name` within 1e-4 of the fixture's largest magnitude.
fn assert_matches_fixture(got: &[f32], name: &str) {
    let want = fixture(name);
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * scale, "{name}: {a} against {b}");
    }
}

/// A Keras CNN exported by tf2onnx (NHWC input, `Rescaling(1/255)` inside; made by
/// `fixtures/make_keras_fixture.py`), read with no preprocessing declared: `cepa` finds the
/// rescaling, feeds it pixels 0-255, and its logits are TensorFlow's.
#[test]
fn a_keras_export_that_rescales_its_input_gives_tensorflow_s_logits_undeclared() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = Classifier::load(
        &dir.join("keras-rescale.onnx"),
        &ModelSpec::default(),
        &cpu_device(false),
    )
    .unwrap();
    let spec = model.spec();
    assert_eq!((spec.channels, spec.height, spec.width), (3, 12, 12));
    assert!(
        spec.notes
            .iter()
            .any(|n| n.contains("pixels 0-255") && n.contains("rescaling")),
        "{:?}",
        spec.notes
    );
    // The fixture's images are NHWC pixels 0-255; the classifier takes NCHW images in [0, 1].
    let x = cepa::data::read_npy(&dir.join("keras-rescale.x.npy")).unwrap();
    assert_eq!(x.shape, [4, 12, 12, 3]);
    let nhwc = x.to_f32();
    let mut nchw = vec![0f32; nhwc.len()];
    for n in 0..4 {
        for h in 0..12 {
            for w in 0..12 {
                for c in 0..3 {
                    nchw[((n * 3 + c) * 12 + h) * 12 + w] =
                        nhwc[((n * 12 + h) * 12 + w) * 3 + c] / 255.0;
                }
            }
        }
    }
    let got: Vec<f32> = model
        .logits(model.images_tensor(&nchw, 4))
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_matches_fixture(&got, "keras-rescale.y.npy");
}

/// A PyTorch CNN exported with a dynamic height and width (`fixtures/make_dynamic_fixture.py`;
/// `x.view(x.size(0), -1)` makes a Shape/Gather/Concat/Reshape chain): refused without images,
/// with a message that says what to give; read for images of 3 x 20 x 24, its logits are
/// onnxruntime's and its input gradients PyTorch's, and the spec says where the size came from.
#[test]
fn a_model_with_a_dynamic_height_and_width_takes_its_size_from_the_images() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = dir.join("dynamic-hw.onnx");
    let err = match Classifier::load(&path, &ModelSpec::default(), &cpu_device(true)) {
        Ok(_) => panic!("read with no size to read the images at"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("dynamic-hw.onnx") && err.contains("dynamic") && err.contains("--data"),
        "{err}"
    );
    let model = Classifier::load_for_images(
        &path,
        &ModelSpec::default(),
        &cpu_device(true),
        Some([3, 20, 24]),
    )
    .unwrap();
    let spec = model.spec();
    assert_eq!((spec.channels, spec.height, spec.width), (3, 20, 24));
    assert!(
        spec.notes
            .iter()
            .any(|n| n.contains("dynamic size") && n.contains("3 x 20 x 24 from the images")),
        "{:?}",
        spec.notes
    );
    let images = model
        .images_tensor(&fixture("dynamic-hw.x.npy"), 3)
        .require_grad();
    let logits = model.logits(images.clone()).unwrap();
    let got: Vec<f32> = logits.clone().try_into_vec_as::<f32>().unwrap();
    assert_matches_fixture(&got, "dynamic-hw.y.npy");
    // d/dx of the sum of each image's logit of class n mod 5.
    let mut pick = vec![0f32; 15];
    for n in 0..3 {
        pick[n * 5 + n % 5] = 1.0;
    }
    let pick = Tensor::<2>::from_data(TensorData::new(pick, [3, 5]), model.device());
    let grads = (logits * pick).sum().backward();
    let gx: Vec<f32> = images
        .grad(&grads)
        .expect("input gradient")
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_matches_fixture(&gx, "dynamic-hw.gx.npy");
}
