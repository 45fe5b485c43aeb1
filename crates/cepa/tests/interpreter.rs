//! The interpreter against reference numbers from onnxruntime and PyTorch.
//!
//! Fixtures: `tests/fixtures/manifest.json`, made by `tests/fixtures/make_fixtures.py` (narrow
//! ResNet-18 / VGG / MobileNet-style models exported by both torch exporters, an onnx.helper
//! "op zoo" in NHWC, and the four real third-party models in `../shared/models/real`).
//!
//! Tolerances: forward outputs within 1e-4 and gradients within 1e-3, both relative to the largest
//! magnitude of the reference tensor (`max|ours - ref| <= tol * max|ref|`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorData;
use cepa::data::read_npy;
use cepa::onnx::{FTensor, Graph, Interpreter, Run};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Vec<Json> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    let m: Json = serde_json::from_str(&text).expect("manifest json");
    m["models"].as_array().expect("models").clone()
}

fn model_path(entry: &Json) -> PathBuf {
    match entry
        .get("onnx_from_cargo_manifest_dir")
        .and_then(Json::as_str)
    {
        Some(p) => Path::new(env!("CARGO_MANIFEST_DIR")).join(p),
        None => fixtures().join(entry["onnx"].as_str().expect("onnx")),
    }
}

fn npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(&fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    (a.shape.clone(), a.to_f32())
}

fn labels(name: &str) -> Vec<i64> {
    read_npy(&fixtures().join(name)).expect("labels").to_i64()
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn load(entry: &Json, device: &Device) -> Interpreter {
    let path = model_path(entry);
    let graph = Graph::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Interpreter::new(Arc::new(graph), device)
}

fn input(entry: &Json, device: &Device) -> FTensor {
    let (shape, x) = npy(entry["x"].as_str().expect("x"));
    FTensor::from_host(x, &shape, device)
}

/// `max|a - b| / max|b|` (or the plain max difference when the reference is all zeros).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    if scale > 0.0 { diff / scale } else { diff }
}

/// Mean cross-entropy as the fixture defines it, from the raw model output.
fn loss(entry: &Json, out: FTensor, y: &[i64], device: &Device) -> Tensor<1> {
    let out = out.flatten2();
    let [n, k] = out.dims();
    let onehot: Vec<f32> = (0..n * k)
        .map(|i| f32::from(y[i / k] == (i % k) as i64))
        .collect();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), device);
    let logp = match entry["loss"].as_str().expect("loss") {
        "ce_logits" => burn::tensor::activation::log_softmax(out, 1),
        "nll_probs" => out.log(),
        other => panic!("unknown loss {other}"),
    };
    (logp * onehot).sum().neg() / n as f32
}

#[test]
fn forward_outputs_match_reference() {
    let device = device();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for entry in manifest() {
        let name = entry["name"].as_str().expect("name").to_string();
        let interp = load(&entry, &device);
        let out = interp
            .forward(input(&entry, &device))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (shape, want) = npy(entry["out"].as_str().expect("out"));
        assert_eq!(out.dims(), shape, "{name}: output shape");
        let err = rel_err(&out.to_vec(), &want);
        report.push(format!("{name}: {err:.2e}"));
        if err > 1e-4 {
            failures.push(format!("{name}: relative error {err:.2e}"));
        }
    }
    eprintln!("forward: {}", report.join(", "));
    assert!(report.len() >= 23, "every fixture model was checked");
    // The exports reach the ops of ShuffleNet, ConvNeXt and ViT-style heads (the `modern`
    // fixtures, session 32) and Resize (`upsample`), in each form an exporter writes them.
    let ops: std::collections::BTreeSet<String> = manifest()
        .iter()
        .flat_map(|e| e["ops"].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o.as_str().map(str::to_string))
        .collect();
    for op in [
        "Split",
        "LayerNormalization",
        "InstanceNormalization",
        "Expand",
        "Equal",
        "Where",
        "ReduceL2",
        "Gelu",
        "Erf",
        "Resize",
    ] {
        assert!(ops.contains(op), "no fixture exercises {op}: {ops:?}");
    }
    assert!(failures.is_empty(), "forward mismatches: {failures:#?}");
}

#[test]
fn input_and_tap_gradients_match_pytorch() {
    let device = device();
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in manifest() {
        let name = entry["name"].as_str().expect("name").to_string();
        let interp = load(&entry, &device);
        let y = labels(entry["y"].as_str().expect("y"));

        // d loss / d input. (The true-label gradient of badnets-mnist is float32 rounding noise,
        // p_y == 1.0; its `-target1` twin checks the same model with a well-conditioned loss.)
        if entry.get("warning").is_none() {
            let x = input(&entry, &device).require_grad();
            let out = interp.forward(x.clone()).expect("forward");
            let grads = loss(&entry, out, &y, &device).backward();
            let gx = x.grad(&grads).expect("input gradient");
            let (_, want) = npy(entry["gx"].as_str().expect("gx"));
            let err = rel_err(&gx.to_vec(), &want);
            checked += 1;
            if err > 1e-3 {
                failures.push(format!("{name}: input gradient relative error {err:.2e}"));
            }
        }

        // d loss / d (perturbation at each tap), and the tap's value.
        for tap in entry["taps"].as_array().expect("taps") {
            let tname = tap["name"].as_str().expect("tap name");
            let (shape, want_grad) = npy(tap["grad"].as_str().expect("grad"));
            let (_, want_val) = npy(tap["value"].as_str().expect("value"));
            let delta =
                FTensor::from_host(vec![0.0; want_grad.len()], &shape, &device).require_grad();
            let r = interp
                .run(Run {
                    input: Some(input(&entry, &device)),
                    add: vec![(tname.to_string(), delta.clone())],
                    capture: vec![tname.to_string()],
                    output: true,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{name} tap {tname}: {e}"));
            let val_err = rel_err(&r.captured[0].to_vec(), &want_val);
            let grads = loss(&entry, r.output.expect("output"), &y, &device).backward();
            let g = delta.grad(&grads).expect("tap gradient");
            let err = rel_err(&g.to_vec(), &want_grad);
            checked += 1;
            if err > 1e-3 || val_err > 1e-4 {
                failures.push(format!(
                    "{name} tap {tname}: gradient {err:.2e}, value {val_err:.2e}"
                ));
            }
        }
    }
    assert!(checked >= 40, "only {checked} gradients checked");
    assert!(failures.is_empty(), "gradient mismatches: {failures:#?}");
}
