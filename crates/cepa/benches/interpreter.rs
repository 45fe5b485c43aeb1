//! Throughput of the ONNX interpreter against the same network written directly in burn:
//! a CIFAR-size CNN (conv 32-64-128-128, two max-pools, global mean, linear), batch 128.
//!
//! `cargo bench -p cepa --bench interpreter`

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Distribution, TensorData, activation::relu};
use cepa::onnx::write::{AttrValue, GraphBuilder, save_model};
use cepa::onnx::{FTensor, Graph, Interpreter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};

const BATCH: usize = 128;
const CHANNELS: [(usize, usize); 4] = [(3, 32), (32, 64), (64, 128), (128, 128)];

struct Weights {
    convs: Vec<(Vec<f32>, Vec<f32>)>,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

fn weights() -> Weights {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut v = |n: usize, s: f32| {
        (0..n)
            .map(|_| rng.random_range(-s..s))
            .collect::<Vec<f32>>()
    };
    let convs = CHANNELS
        .iter()
        .map(|&(i, o)| (v(o * i * 9, (1.0 / (i * 9) as f32).sqrt()), v(o, 0.1)))
        .collect();
    Weights {
        convs,
        fc_w: v(10 * 128, 0.1),
        fc_b: v(10, 0.1),
    }
}

/// The network as an ONNX file, written with the project's own builder.
fn onnx_model(w: &Weights) -> Graph {
    let mut g = GraphBuilder::new("cifar_cnn");
    g.input("x", &[None, Some(3), Some(32), Some(32)]);
    let mut x = "x".to_string();
    for (k, ((wt, b), &(i, o))) in w.convs.iter().zip(&CHANNELS).enumerate() {
        let wn = g.init_f32(&format!("w{k}"), &[o, i, 3, 3], wt);
        let bn = g.init_f32(&format!("b{k}"), &[o], b);
        let c = g.node(
            "Conv",
            &[&x, &wn, &bn],
            None,
            &[("pads", AttrValue::Ints(vec![1, 1, 1, 1]))],
        );
        x = g.node("Relu", &[&c], None, &[]);
        if k == 1 || k == 2 {
            let attrs = [
                ("kernel_shape", AttrValue::Ints(vec![2, 2])),
                ("strides", AttrValue::Ints(vec![2, 2])),
            ];
            x = g.node("MaxPool", &[&x], None, &attrs);
        }
    }
    let gap = g.node("GlobalAveragePool", &[&x], None, &[]);
    let flat = g.node("Flatten", &[&gap], None, &[]);
    let fw = g.init_f32("fc_w", &[10, 128], &w.fc_w);
    let fb = g.init_f32("fc_b", &[10], &w.fc_b);
    g.node(
        "Gemm",
        &[&flat, &fw, &fb],
        Some("logits"),
        &[("transB", AttrValue::Int(1))],
    );
    g.output("logits", &[None, Some(10)]);
    let path = std::env::temp_dir().join(format!("cepa-bench-{}.onnx", std::process::id()));
    save_model(&g.build(13), &path).expect("write onnx");
    let graph = Graph::load(&path).expect("read onnx");
    std::fs::remove_file(&path).ok();
    graph
}

/// The same network written directly with burn ops.
struct Direct {
    convs: Vec<(Tensor<4>, Tensor<1>)>,
    fc_w: Tensor<2>,
    fc_b: Tensor<1>,
}

impl Direct {
    fn new(w: &Weights, device: &Device) -> Self {
        let convs = w
            .convs
            .iter()
            .zip(&CHANNELS)
            .map(|((wt, b), &(i, o))| {
                (
                    Tensor::from_data(TensorData::new(wt.clone(), [o, i, 3, 3]), device),
                    Tensor::from_data(TensorData::new(b.clone(), [o]), device),
                )
            })
            .collect();
        Self {
            convs,
            fc_w: Tensor::<2>::from_data(TensorData::new(w.fc_w.clone(), [10, 128]), device)
                .transpose(),
            fc_b: Tensor::from_data(TensorData::new(w.fc_b.clone(), [10]), device),
        }
    }

    fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        for (k, (w, b)) in self.convs.iter().enumerate() {
            x = relu(conv2d(
                x,
                w.clone(),
                Some(b.clone()),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ));
            if k == 1 || k == 2 {
                x = max_pool2d(x, MaxPoolOptions::new([2, 2]));
            }
        }
        let f: Tensor<2> = x.mean_dims(&[2, 3]).flatten(1, 3);
        f.matmul(self.fc_w.clone()) + self.fc_b.clone().unsqueeze()
    }
}

fn ce(logits: Tensor<2>, device: &Device) -> Tensor<1> {
    let [n, k] = logits.dims();
    let onehot: Vec<f32> = (0..n * k)
        .map(|i| f32::from(i % k == (i / k) % 10))
        .collect();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), device);
    (burn::tensor::activation::log_softmax(logits, 1) * onehot)
        .sum()
        .neg()
        / n as f32
}

fn bench(c: &mut Criterion) {
    let w = weights();
    let graph = Arc::new(onnx_model(&w));
    let mut group = c.benchmark_group("cifar_cnn_batch128");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(BATCH as u64));
    for (label, autodiff) in [("inference", false), ("autodiff", true)] {
        let device = if autodiff {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        let interp = Interpreter::new(graph.clone(), &device);
        let direct = Direct::new(&w, &device);
        let x = Tensor::<4>::random([BATCH, 3, 32, 32], Distribution::Default, &device);
        group.bench_function(format!("forward/interpreter/{label}"), |b| {
            b.iter(|| interp.forward(FTensor::R4(x.clone())).unwrap().to_vec())
        });
        group.bench_function(format!("forward/burn/{label}"), |b| {
            b.iter(|| direct.forward(x.clone()).into_data())
        });
        if autodiff {
            group.bench_function("input_grad/interpreter", |b| {
                b.iter(|| {
                    let xv = FTensor::R4(x.clone().detach().require_grad());
                    let out = interp.forward(xv.clone()).unwrap().flatten2();
                    let g = ce(out, &device).backward();
                    xv.grad(&g).unwrap().to_vec()
                })
            });
            group.bench_function("input_grad/burn", |b| {
                b.iter(|| {
                    let xv = x.clone().detach().require_grad();
                    let g = ce(direct.forward(xv.clone()), &device).backward();
                    xv.grad(&g).unwrap().into_data()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
