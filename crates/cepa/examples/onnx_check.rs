//! Survey probe: does the interpreter read an exported model, and does it compute what
//! onnxruntime and PyTorch compute? `cargo run --release -p cepa --example onnx_check --
//! MODEL.onnx X.npy OUT.npy GX.npy` prints one JSON line: the forward error against `OUT.npy`
//! (onnxruntime's output for `X.npy`) and the input-gradient error against `GX.npy` (PyTorch's
//! gradient of the batch-mean cross-entropy toward class 0), each relative to the reference's
//! largest magnitude. An error (an unsupported op, say) is printed as `{"error": ...}` with exit
//! status 0, so a survey script can go on.
//! (`scripts/probes/torchvision_survey.py` runs it over torchvision's classifiers.)

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use cepa::data::read_npy;
use cepa::onnx::{FTensor, Graph, Interpreter};

fn loss(out: FTensor) -> Tensor<1> {
    let z = out.into_r2().expect("2-D output");
    -log_softmax(z, 1).narrow(1, 0, 1).mean()
}

/// The largest difference over the reference's largest magnitude.
fn rel_err(got: &[f32], want: &[f32], what: &str) -> Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what} has {} values, the reference {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok(diff / scale)
}

fn check(model: &Path, x: &Path, reference: &Path, gx: &Path) -> Result<serde_json::Value, String> {
    let e = |e: cepa::error::Error| e.to_string();
    let graph = Graph::load(model).map_err(e)?;
    let ops = graph.op_types();
    let device = Device::flex().autodiff();
    let interp = Interpreter::new(Arc::new(graph), &device);
    let xs = read_npy(x).map_err(e)?;
    let want = read_npy(reference).map_err(e)?.to_f32();
    let input = FTensor::from_host(xs.to_f32(), &xs.shape, &device).require_grad();
    let out = interp.forward(input.clone()).map_err(e)?;
    let fwd = rel_err(&out.to_vec(), &want, "output")?;
    let grads = loss(out).backward();
    let g = input.grad(&grads).ok_or("no input gradient")?.to_vec();
    let gerr = rel_err(&g, &read_npy(gx).map_err(e)?.to_f32(), "gradient")?;
    Ok(serde_json::json!({
        "forward_rel_err": fwd,
        "grad_rel_err": gerr,
        "ops": ops,
    }))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: onnx_check MODEL.onnx X.npy OUT.npy GX.npy");
        std::process::exit(2);
    }
    let line = match check(
        Path::new(&a[1]),
        Path::new(&a[2]),
        Path::new(&a[3]),
        Path::new(&a[4]),
    ) {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": e }),
    };
    println!("{line}");
}
