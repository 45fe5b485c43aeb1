//! The ops that the fixture exports do not reach (or reach in one form only), on small graphs
//! with hand-computed answers. The fixtures (`tests/interpreter.rs`) check the rest against
//! onnxruntime and PyTorch.

use std::sync::Arc;

use crate::error::Error;
use crate::model::cpu_device;
use crate::onnx::write::{AttrValue, GraphBuilder, save_model};
use crate::onnx::{FTensor, Graph, Interpreter};

/// `g` (input `x`, output `y`) at `opset`, written and read back as a file, on the CPU.
fn load(
    g: GraphBuilder,
    opset: i64,
    autodiff: bool,
) -> crate::error::Result<(Interpreter, burn::prelude::Device)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.onnx");
    save_model(&g.build(opset), &path).unwrap();
    let device = cpu_device(autodiff);
    Ok((
        Interpreter::new(Arc::new(Graph::load(&path)?), &device),
        device,
    ))
}

/// Run `g` at `opset` on `x`; the output's shape and values.
fn run(
    g: GraphBuilder,
    opset: i64,
    dims: &[usize],
    x: &[f32],
) -> crate::error::Result<(Vec<usize>, Vec<f32>)> {
    let (interp, device) = load(g, opset, false)?;
    let out = interp.forward(FTensor::from_host(x.to_vec(), dims, &device))?;
    Ok((out.dims(), out.to_vec()))
}

fn graph(in_dims: &[Option<usize>]) -> GraphBuilder {
    let mut g = GraphBuilder::new("ops");
    g.input("x", in_dims);
    g
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} against {want:?}");
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{got:?} against {want:?}");
    }
}

const X6: [f32; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];

#[test]
fn sum_and_mean_broadcast_over_any_number_of_inputs() {
    let mut g = graph(&[None, Some(3)]);
    g.init_f32("c", &[1, 3], &[10.0, 20.0, 30.0]);
    let s = g.node("Sum", &["x", "c", "x"], None, &[]);
    let m = g.node("Mean", &["x", "c"], None, &[]);
    g.node(
        "Concat",
        &[&s, &m],
        Some("y"),
        &[("axis", AttrValue::Int(1))],
    );
    g.output("y", &[None, Some(6)]);
    let (dims, y) = run(g, 13, &[2, 3], &X6).unwrap();
    assert_eq!(dims, [2, 6]);
    close(
        &y,
        &[
            10.0, 22.0, 34.0, 5.0, 10.5, 16.0, //
            16.0, 28.0, 40.0, 6.5, 12.0, 17.5,
        ],
    );
}

/// Split `x` ([1, n]) into `outs`, concatenated back in reverse order.
fn split_reversed(
    opset: i64,
    n: usize,
    outs: usize,
    attrs: &[(&str, AttrValue)],
    sizes_input: Option<&[i64]>,
) -> crate::error::Result<(Vec<usize>, Vec<f32>)> {
    let mut g = graph(&[None, Some(n)]);
    let names: Vec<String> = (0..outs).map(|i| format!("part{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut inputs = vec!["x"];
    if let Some(s) = sizes_input {
        g.init_i64("sizes", &[s.len()], s);
        inputs.push("sizes");
    }
    let mut all = attrs.to_vec();
    all.push(("axis", AttrValue::Int(1)));
    g.node_outputs("Split", &inputs, &refs, &all);
    let rev: Vec<&str> = refs.iter().rev().copied().collect();
    g.node("Concat", &rev, Some("y"), &[("axis", AttrValue::Int(1))]);
    g.output("y", &[None, Some(n)]);
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    run(g, opset, &[1, n], &x)
}

#[test]
fn split_takes_its_sizes_from_the_attribute_the_input_or_the_outputs() {
    // Before opset 13 the sizes are an attribute.
    let split = [("split", AttrValue::Ints(vec![2, 4]))];
    let (_, y) = split_reversed(11, 6, 2, &split, None).unwrap();
    close(&y, &[2.0, 3.0, 4.0, 5.0, 0.0, 1.0]);
    // From opset 13 an input.
    let (_, y) = split_reversed(13, 6, 2, &[], Some(&[5, 1])).unwrap();
    close(&y, &[5.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
    // Neither: equal parts, one per output.
    let (_, y) = split_reversed(13, 6, 3, &[], None).unwrap();
    close(&y, &[4.0, 5.0, 2.0, 3.0, 0.0, 1.0]);
    // Opset 18's num_outputs: the last part smaller (3, 3, 1).
    let n3 = [("num_outputs", AttrValue::Int(3))];
    let (dims, y) = split_reversed(18, 7, 3, &n3, None).unwrap();
    assert_eq!(dims, [1, 7]);
    close(&y, &[6.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
    // Unequal parts without sizes, and sizes that do not add up, are errors naming the node.
    let e = split_reversed(13, 7, 3, &[], None).unwrap_err().to_string();
    assert!(e.contains("equal parts") && e.contains("split_1"), "{e}");
    let e = split_reversed(13, 6, 2, &[], Some(&[2, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not add up"), "{e}");
}

#[test]
fn reduce_l2_and_sum_square() {
    let mut g = graph(&[None, Some(3)]);
    let keep = [
        ("axes", AttrValue::Ints(vec![1])),
        ("keepdims", AttrValue::Int(1)),
    ];
    let l2 = g.node("ReduceL2", &["x"], None, &keep);
    let sq = g.node("ReduceSumSquare", &["x"], None, &keep);
    g.node(
        "Concat",
        &[&l2, &sq],
        Some("y"),
        &[("axis", AttrValue::Int(1))],
    );
    g.output("y", &[None, Some(2)]);
    let (dims, y) = run(g, 13, &[2, 3], &X6).unwrap();
    assert_eq!(dims, [2, 2]);
    close(&y, &[5f32.sqrt(), 5.0, 50f32.sqrt(), 50.0]);
}

#[test]
fn layer_norm_gives_its_statistics_when_asked() {
    let mut g = graph(&[None, Some(3)]);
    g.init_f32("scale", &[3], &[1.0, 2.0, 3.0]);
    g.init_f32("bias", &[3], &[0.5, 0.0, -0.5]);
    g.node_outputs(
        "LayerNormalization",
        &["x", "scale", "bias"],
        &["ln", "mean", "inv_std"],
        &[("epsilon", AttrValue::Float(0.0))],
    );
    g.node(
        "Concat",
        &["ln", "mean", "inv_std"],
        Some("y"),
        &[("axis", AttrValue::Int(1))],
    );
    g.output("y", &[None, Some(5)]);
    let (_, y) = run(g, 17, &[2, 3], &X6).unwrap();
    // Each row is m - 1, m, m + 1: variance 2/3, so 1 / std = sqrt(3/2) and the normalised
    // row is -r, 0, r.
    let r = 1.5f32.sqrt();
    let row = [0.5 - r, 0.0, 3.0 * r - 0.5];
    let mut want = row.to_vec();
    want.extend([1.0, r]);
    want.extend(row);
    want.extend([4.0, r]);
    close(&y, &want);
}

#[test]
fn instance_norm_normalises_each_channel_of_each_image() {
    let mut g = graph(&[None, Some(2), Some(1), Some(2)]);
    g.init_f32("scale", &[2], &[1.0, 2.0]);
    g.init_f32("bias", &[2], &[0.0, 1.0]);
    g.node(
        "InstanceNormalization",
        &["x", "scale", "bias"],
        Some("y"),
        &[("epsilon", AttrValue::Float(0.0))],
    );
    g.output("y", &[None, Some(2), Some(1), Some(2)]);
    let (_, y) = run(g, 13, &[1, 2, 1, 2], &[1.0, 3.0, 10.0, 20.0]).unwrap();
    close(&y, &[-1.0, 1.0, -1.0, 3.0]);
}

#[test]
fn expand_where_and_equal_build_a_class_token_from_the_batch_size() {
    // What exporters emit for `cls.expand(x.shape[0], -1, -1)`: the target shape is computed on
    // the host from the input's shape, with -1 replaced through Equal and Where.
    let mut g = graph(&[None, Some(3)]);
    g.init_f32("cls", &[1, 1, 3], &[1.0, 2.0, 3.0]);
    g.init_i64("spec", &[2], &[-1, 3]);
    g.init_i64("minus1", &[1], &[-1]);
    g.init_i64("ones", &[2], &[1, 1]);
    g.init_i64("s0", &[1], &[0]);
    g.init_i64("s1", &[1], &[1]);
    let eq = g.node("Equal", &["spec", "minus1"], None, &[]);
    let fixed = g.node("Where", &[&eq, "ones", "spec"], None, &[]);
    let shape = g.node("Shape", &["x"], None, &[]);
    let n = g.node("Slice", &[&shape, "s0", "s1"], None, &[]);
    let full = g.node(
        "Concat",
        &[&n, &fixed],
        None,
        &[("axis", AttrValue::Int(0))],
    );
    let tok = g.node("Expand", &["cls", &full], None, &[]);
    let flat = g.node("Flatten", &[&tok], None, &[("axis", AttrValue::Int(1))]);
    g.node("Add", &["x", &flat], Some("y"), &[]);
    g.output("y", &[None, Some(3)]);
    let (dims, y) = run(g, 13, &[2, 3], &X6).unwrap();
    assert_eq!(dims, [2, 3]);
    close(&y, &[1.0, 3.0, 5.0, 4.0, 6.0, 8.0]);
}

#[test]
fn integer_mod_takes_the_sign_of_the_divisor_unless_fmod() {
    // (-7 mod 3, 7 mod -3, 7 mod 3) in both conventions, added to the input.
    let run_mod = |fmod: i64| {
        let mut g = graph(&[None, Some(3)]);
        g.init_i64("a", &[3], &[-7, 7, 7]);
        g.init_i64("b", &[3], &[3, -3, 3]);
        let m = g.node("Mod", &["a", "b"], None, &[("fmod", AttrValue::Int(fmod))]);
        let f = g.node("Cast", &[&m], None, &[("to", AttrValue::Int(1))]);
        g.node("Add", &["x", &f], Some("y"), &[]);
        g.output("y", &[None, Some(3)]);
        run(g, 13, &[1, 3], &[0.0; 3]).unwrap().1
    };
    close(&run_mod(0), &[2.0, -2.0, 1.0]);
    close(&run_mod(1), &[-1.0, 1.0, 1.0]);
}

#[test]
fn where_picks_image_values_by_a_constant_mask_but_not_by_an_image_one() {
    // A constant mask over image values (an exported masked_fill): x where the mask is set,
    // else 10, broadcast.
    let mut g = graph(&[None, Some(3)]);
    g.init_i64("mask", &[3], &[1, 0, 1]);
    g.init_f32("ten", &[1], &[10.0]);
    g.node("Where", &["mask", "x", "ten"], Some("y"), &[]);
    g.output("y", &[None, Some(3)]);
    let (dims, y) = run(g, 13, &[2, 3], &X6).unwrap();
    assert_eq!(dims, [2, 3]);
    close(&y, &[0.0, 10.0, 2.0, 3.0, 10.0, 5.0]);
    // A condition computed from the image: an error naming the node.
    let mut g = graph(&[None, Some(3)]);
    g.init_f32("zero", &[1], &[0.0]);
    let c = g.node("Greater", &["x", "zero"], None, &[]);
    g.node("Where", &[&c, "x", "zero"], Some("y"), &[]);
    g.output("y", &[None, Some(3)]);
    let e = run(g, 13, &[2, 3], &X6).unwrap_err();
    assert!(matches!(e, Error::UnsupportedOp { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("Greater") && msg.contains("greater_1"),
        "{msg}"
    );
}

#[test]
fn strided_and_reversed_slices_and_gathers_of_image_values() {
    // x[:, 0::2] ++ x[:, ::-2] ++ Gather(x, [[5, 0], [1, 1]], axis 1) flattened.
    let mut g = graph(&[None, Some(6)]);
    for (name, v) in [
        ("st", 0i64),
        ("en", i64::MAX),
        ("ax", 1),
        ("s2", 2),
        ("rs", -1),
        ("re", i64::MIN),
        ("m2", -2),
    ] {
        g.init_i64(name, &[1], &[v]);
    }
    g.init_i64("idx", &[2, 2], &[5, 0, 1, 1]);
    let even = g.node("Slice", &["x", "st", "en", "ax", "s2"], None, &[]);
    let back = g.node("Slice", &["x", "rs", "re", "ax", "m2"], None, &[]);
    let picked = g.node(
        "Gather",
        &["x", "idx"],
        None,
        &[("axis", AttrValue::Int(1))],
    );
    let flat = g.node("Flatten", &[&picked], None, &[("axis", AttrValue::Int(1))]);
    g.node(
        "Concat",
        &[&even, &back, &flat],
        Some("y"),
        &[("axis", AttrValue::Int(1))],
    );
    g.output("y", &[None, Some(10)]);
    let (dims, y) = run(g, 13, &[1, 6], &X6).unwrap();
    assert_eq!(dims, [1, 10]);
    close(&y, &[0.0, 2.0, 4.0, 5.0, 3.0, 1.0, 5.0, 0.0, 1.0, 1.0]);
}

#[test]
fn gather_nd_picks_elements_and_rows_by_index_tuples() {
    // Elements (1, 2) and (0, 0) of x viewed as [2, 3], then row -1 (= 1).
    let mut g = graph(&[None, Some(3)]);
    g.init_i64("pairs", &[2, 2], &[1, 2, 0, 0]);
    g.init_i64("row", &[1, 1], &[-1]);
    let e = g.node("GatherND", &["x", "pairs"], None, &[]);
    let r = g.node("GatherND", &["x", "row"], None, &[]);
    let r = g.node("Flatten", &[&r], None, &[("axis", AttrValue::Int(0))]);
    let e = g.node("Unsqueeze", &[&e, "zero"], None, &[]);
    g.init_i64("zero", &[1], &[0]);
    g.node(
        "Concat",
        &[&e, &r],
        Some("y"),
        &[("axis", AttrValue::Int(1))],
    );
    g.output("y", &[Some(1), Some(5)]);
    let (dims, y) = run(g, 13, &[2, 3], &X6).unwrap();
    assert_eq!(dims, [1, 5]);
    close(&y, &[5.0, 0.0, 3.0, 4.0, 5.0]);
}

/// The input gradient of the sum of `g`'s output.
fn grad_of_sum(g: GraphBuilder, opset: i64, dims: &[usize], x: &[f32]) -> Vec<f32> {
    let (interp, device) = load(g, opset, true).unwrap();
    let input = FTensor::from_host(x.to_vec(), dims, &device).require_grad();
    let out = interp.forward(input.clone()).unwrap();
    let grads = out.flatten2().sum().backward();
    input.grad(&grads).unwrap().to_vec()
}

#[test]
fn gradients_add_up_over_repeated_indices_and_follow_the_mask() {
    // GatherND and Gather picking x0 three times and x1 once; Where keeping x2 only.
    let mut g = graph(&[Some(1), Some(3)]);
    g.init_i64("nd", &[3, 2], &[0, 0, 0, 0, 0, 1]);
    g.init_i64("ids", &[2], &[0, 2]);
    g.init_i64("mask", &[3], &[0, 0, 1]);
    g.init_f32("zero", &[1], &[0.0]);
    let a = g.node("GatherND", &["x", "nd"], None, &[]);
    let b = g.node(
        "Gather",
        &["x", "ids"],
        None,
        &[("axis", AttrValue::Int(1))],
    );
    let b = g.node("Flatten", &[&b], None, &[("axis", AttrValue::Int(0))]);
    let b = g.node("Squeeze", &[&b, "s0"], None, &[]);
    g.init_i64("s0", &[1], &[0]);
    let c = g.node("Where", &["mask", "x", "zero"], None, &[]);
    let c = g.node("Flatten", &[&c], None, &[("axis", AttrValue::Int(0))]);
    let c = g.node("Squeeze", &[&c, "s0"], None, &[]);
    g.node(
        "Concat",
        &[&a, &b, &c],
        Some("y"),
        &[("axis", AttrValue::Int(0))],
    );
    g.output("y", &[Some(8)]);
    let gx = grad_of_sum(g, 13, &[1, 3], &[1.0, 2.0, 3.0]);
    // x0: 2 (GatherND) + 1 (Gather); x1: 1 (GatherND); x2: 1 (Gather) + 1 (Where).
    close(&gx, &[3.0, 1.0, 2.0]);
}

#[test]
fn resize_rounds_as_the_attributes_say_and_refuses_cubic() {
    // [1, 1, 1, 4] -> width 6 by sizes, nearest, half_pixel: sources -0.17, 0.5, 1.17, 1.83,
    // 2.5, 3.17 round (ties down) to 0, 0, 1, 2, 2, 3.
    let resize = |attrs: &[(&str, AttrValue)], opset: i64| {
        let mut g = graph(&[None, Some(1), Some(1), Some(4)]);
        g.init_i64("sizes", &[4], &[1, 1, 1, 6]);
        g.node("Resize", &["x", "", "", "sizes"], Some("y"), attrs);
        g.output("y", &[None, Some(1), Some(1), Some(6)]);
        run(g, opset, &[1, 1, 1, 4], &[0.0, 1.0, 2.0, 3.0])
    };
    let (_, y) = resize(&[], 13).unwrap();
    close(&y, &[0.0, 0.0, 1.0, 2.0, 2.0, 3.0]);
    let ceil = [("nearest_mode", AttrValue::Str("round_prefer_ceil".into()))];
    let (_, y) = resize(&ceil, 13).unwrap();
    close(&y, &[0.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
    let e = resize(&[("mode", AttrValue::Str("cubic".into()))], 13).unwrap_err();
    assert!(e.to_string().contains("mode=cubic"), "{e}");
    // Upsample (opset 9): scales as the second input, x / scale rounded down.
    let mut g = graph(&[None, Some(1), Some(1), Some(2)]);
    g.init_f32("scales", &[4], &[1.0, 1.0, 1.0, 2.0]);
    g.node("Upsample", &["x", "scales"], Some("y"), &[]);
    g.output("y", &[None, Some(1), Some(1), Some(4)]);
    let (_, y) = run(g, 9, &[1, 1, 1, 2], &[5.0, 7.0]).unwrap();
    close(&y, &[5.0, 5.0, 7.0, 7.0]);
}

#[test]
fn positional_encodings_from_shapes_range_cumsum_tile_logic_and_sines() {
    // What XCiT and EdgeNeXt export for their positional encodings, on a [1, 3] input:
    // Range(0, 3, 1) = [0, 1, 2]; CumSum of Not([1, 0, 0]) = [0, 1, 2]; Tile([1, 2], 2)[:3] and
    // And/Or/Xor of [1, 0, 1], [1, 1, 0]; then sin and cos of the range, all added to the input.
    let mut g = graph(&[Some(1), Some(3)]);
    for (name, v) in [("zero", 0i64), ("three", 3), ("one", 1), ("two", 2)] {
        g.init_i64(name, &[], &[v]);
    }
    g.init_i64("mask", &[3], &[1, 0, 0]);
    g.init_i64("p", &[3], &[1, 0, 1]);
    g.init_i64("q", &[3], &[1, 1, 0]);
    g.init_i64("pair", &[2], &[1, 2]);
    g.init_i64("reps", &[1], &[2]);
    g.init_i64("s0", &[1], &[0]);
    g.init_i64("s3", &[1], &[3]);
    let r = g.node("Range", &["zero", "three", "one"], None, &[]);
    let not = g.node("Not", &["mask"], None, &[]);
    let cs = g.node("CumSum", &[&not, "zero"], None, &[]);
    let tiled = g.node("Tile", &["pair", "reps"], None, &[]);
    let t3 = g.node("Slice", &[&tiled, "s0", "s3"], None, &[]);
    let and = g.node("And", &["p", "q"], None, &[]);
    let or = g.node("Or", &["p", "q"], None, &[]);
    let xor = g.node("Xor", &["p", "q"], None, &[]);
    let mut acc = "x".to_string();
    for v in [&r, &cs, &t3, &and, &or, &xor] {
        let f = g.node("Cast", &[v], None, &[("to", AttrValue::Int(1))]);
        acc = g.node("Add", &[&acc, &f], None, &[]);
    }
    let rf = g.node("Cast", &[&r], None, &[("to", AttrValue::Int(1))]);
    let sin = g.node("Sin", &[&rf], None, &[]);
    let cos = g.node("Cos", &[&rf], None, &[]);
    let acc = g.node("Add", &[&acc, &sin], None, &[]);
    g.node("Add", &[&acc, &cos], Some("y"), &[]);
    g.output("y", &[Some(1), Some(3)]);
    let (_, y) = run(g, 13, &[1, 3], &[0.0; 3]).unwrap();
    // range + cumsum + tile + and + or + xor, then sin and cos of 0, 1, 2.
    let ints = [
        0.0 + 0.0 + 1.0 + 1.0 + 1.0 + 0.0,
        1.0 + 1.0 + 2.0 + 0.0 + 1.0 + 1.0,
        2.0 + 2.0 + 1.0 + 0.0 + 1.0 + 1.0,
    ];
    let want: Vec<f32> = ints
        .iter()
        .enumerate()
        .map(|(k, v)| v + (k as f32).sin() + (k as f32).cos())
        .collect();
    close(&y, &want);
}
