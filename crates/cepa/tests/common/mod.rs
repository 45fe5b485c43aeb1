//! Shared by the integration tests: tiny classifiers written with the project's ONNX builder.

use cepa::model::{Classifier, ModelSpec, cpu_device};
use cepa::onnx::Graph;
use cepa::onnx::write::{AttrValue, GraphBuilder, save_model};

/// `logits = w2 relu(w1 flatten(x) + b1)` on 1 x `rows` x `cols` images, `w1` of shape
/// `[hidden, rows x cols]` and `w2` of shape `[classes, hidden]` (row-major). The hidden ReLU's
/// output is the tensor `embedding`. Written to `dir/name.onnx` and loaded on the autodiff
/// device.
pub fn two_layer_classifier(
    name: &str,
    [rows, cols]: [usize; 2],
    classes: usize,
    (w1, b1): (&[f32], &[f32]),
    w2: &[f32],
    dir: &std::path::Path,
) -> Classifier {
    let d = rows * cols;
    let hidden = b1.len();
    assert_eq!((w1.len(), w2.len()), (hidden * d, classes * hidden));
    let trans = [("transB", AttrValue::Int(1))];
    let mut g = GraphBuilder::new(name);
    g.input("x", &[None, Some(1), Some(rows), Some(cols)]);
    let f = g.node("Flatten", &["x"], None, &[]);
    g.init_f32("w1", &[hidden, d], w1);
    g.init_f32("b1", &[hidden], b1);
    let h = g.node("Gemm", &[&f, "w1", "b1"], Some("hidden"), &trans);
    let e = g.node("Relu", &[&h], Some("embedding"), &[]);
    g.init_f32("w2", &[classes, hidden], w2);
    g.node("Gemm", &[&e, "w2"], Some("logits"), &trans);
    g.output("logits", &[None, Some(classes)]);
    save_and_load(g, name, dir)
}

/// Write the graph `g` (opset 13) to `dir/name.onnx` and load it with the default spec on the
/// autodiff CPU device.
pub fn save_and_load(g: GraphBuilder, name: &str, dir: &std::path::Path) -> Classifier {
    let path = dir.join(format!("{name}.onnx"));
    save_model(&g.build(13), &path).unwrap();
    Classifier::new(
        Graph::load(&path).unwrap(),
        &ModelSpec::default(),
        None,
        &cpu_device(true),
    )
    .unwrap()
}
