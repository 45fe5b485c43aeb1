//! The `cepa` binary end to end: exit codes, messages and reports on real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onnx_ir::{Message, ModelProto};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn real(name: &str) -> PathBuf {
    shared().join("models/real").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cepa/tests/fixtures")
        .join(name)
}

fn cepa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cepa"))
        .args(args)
        .output()
        .expect("run cepa")
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cepa-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exit code 2 and a single line on stderr that contains every needle.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

fn inspect_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["inspect", "--format", "json", "-q"];
    all.extend_from_slice(args);
    let out = cepa(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json report")
}

#[test]
fn inspect_reports_accuracy_of_the_real_models() {
    let mnist = shared().join("data/mnist");
    let cifar = shared().join("data/cifar10");
    let cases: [(&str, &Path, &[&str], f64, f64); 4] = [
        (
            "badnets-pytorch-mnist.onnx",
            &mnist,
            &["--mean", "0.5", "--std", "0.5"],
            0.975,
            1.0,
        ),
        ("cs612-clean-mnist-mlp.onnx", &mnist, &[], 0.93, 1.0),
        (
            "badnets-pytorch-cifar10.onnx",
            &cifar,
            &["--mean", "0.5", "--std", "0.5"],
            0.48,
            0.54,
        ),
        ("cs612-clean-cifar10-cnn.onnx", &cifar, &[], 0.60, 1.0),
    ];
    for (name, data, spec, lo, hi) in cases {
        let model = real(name);
        let mut args = vec![model.to_str().unwrap(), "--data", data.to_str().unwrap()];
        args.extend_from_slice(spec);
        let r = inspect_json(&args);
        let acc = r["accuracy"].as_f64().expect("accuracy");
        assert!(
            (lo..=hi).contains(&acc),
            "{name}: accuracy {acc} not in [{lo}, {hi}]"
        );
        assert_eq!(r["num_classes"], 10, "{name}");
        assert_eq!(r["data"]["images"], 10000, "{name}: the whole test split");
    }
}

#[test]
fn inspect_lists_layers_by_onnx_name_and_detects_softmax() {
    let model = real("badnets-pytorch-mnist.onnx");
    let r = inspect_json(&[model.to_str().unwrap()]);
    assert!(r["accuracy"].is_null());
    assert_eq!(
        r["spec"]["output"], "probs",
        "a trailing Softmax means probabilities"
    );
    let layers = r["layers"].as_array().expect("layers");
    // Every layer has its ONNX name and a shape; the candidates are inputs of the last linear layers.
    assert!(layers.len() > 5);
    let logits = r["spec"]["logits_tensor"].as_str().unwrap();
    assert!(
        layers.iter().any(|l| l["name"] == logits),
        "the Softmax input is a listed layer"
    );
    let candidates: Vec<&serde_json::Value> =
        layers.iter().filter(|l| l["candidate"] == true).collect();
    assert!(!candidates.is_empty());
    for c in &candidates {
        assert_eq!(c["cut"], true);
        assert!(
            c["shape"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d.as_u64().unwrap() > 0)
        );
    }
    // The input of the last Gemm (512 features) is a candidate.
    assert!(
        candidates
            .iter()
            .any(|c| c["shape"] == serde_json::json!([512])),
        "{candidates:?}"
    );
}

/// `--compare-cpu` on the CPU itself: the same numbers, reported in JSON and text; without
/// images it is a one-line error.
#[test]
fn inspect_compare_cpu_reports_the_device_check() {
    let model = real("cs612-clean-mnist-mlp.onnx");
    let m = model.to_str().unwrap();
    let mnist = shared().join("data/mnist");
    let d = mnist.to_str().unwrap();
    let r = inspect_json(&[m, "--data", d, "--limit", "50", "--compare-cpu"]);
    let c = &r["device_check"];
    assert_eq!(c["images"], 16);
    assert_eq!(c["pass"], true, "{c}");
    assert!(c["logits_rel"].as_f64().unwrap() < 1e-6, "{c}");
    assert!(c["device"].as_str().unwrap().starts_with("cpu"), "{c}");
    let out = cepa(&[
        "inspect",
        m,
        "--data",
        d,
        "--limit",
        "50",
        "--compare-cpu",
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("same numbers"), "{text}");
    assert!(inspect_json(&[m])["device_check"].is_null());
    let out = cepa(&["inspect", m, "--compare-cpu"]);
    assert_error(&out, &["--compare-cpu needs --data"]);
}

#[test]
fn text_report_names_the_spec_and_notes() {
    let model = real("cs612-clean-mnist-mlp.onnx");
    let out = cepa(&["inspect", model.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nchw 1x28x28"), "{text}");
    assert!(text.contains("output treated as logits"), "{text}");
}

/// The default build has no CUDA backend: every computing command says so in one line (exit 2),
/// before reading anything; the CPU is the default and reports say so.
#[test]
fn cuda_on_the_default_build_is_a_one_line_error_and_reports_name_the_device() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mnist-badnets");
    let (model, data) = (example.join("model.onnx"), example.join("images"));
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    if !cfg!(feature = "cuda") {
        for args in [
            vec!["scan", m, "--data", d, "--device", "cuda"],
            vec![
                "invert", m, "--data", d, "--target", "7", "--device", "cuda:1",
            ],
            vec!["inspect", m, "--device", "cuda"],
            vec![
                "eval",
                "/nonexistent-zoo",
                "--out",
                "/tmp/x",
                "--device",
                "cuda",
            ],
        ] {
            let device = args
                .last()
                .unwrap()
                .replace("cuda", "cuda:0")
                .replace(":0:1", ":1");
            assert_error(
                &cepa(&args),
                &[
                    &format!("device {device}"),
                    "no CUDA backend",
                    "--features cuda",
                ],
            );
        }
    }
    let out = cepa(&["scan", m, "--device", "tpu", "--data", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda or cuda:N"));
    let json = inspect_json(&[m, "--device", "cpu"]);
    assert!(
        json["device"].as_str().unwrap().starts_with("cpu (flex, "),
        "{json}"
    );
}

#[test]
fn missing_model_is_a_one_line_error() {
    let out = cepa(&["inspect", "/nonexistent/model.onnx"]);
    assert_error(&out, &["/nonexistent/model.onnx"]);
}

#[test]
fn truncated_model_is_a_one_line_error() {
    let bytes = std::fs::read(real("cs612-clean-mnist-mlp.onnx")).unwrap();
    let path = tmp_dir("trunc").join("truncated.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = cepa(&["inspect", path.to_str().unwrap()]);
    assert_error(&out, &["truncated.onnx", "truncated"]);
}

#[test]
fn non_onnx_file_is_a_one_line_error() {
    let path = tmp_dir("text").join("notes.onnx");
    std::fs::write(&path, "this is not a model\n").unwrap();
    let out = cepa(&["inspect", path.to_str().unwrap()]);
    assert_error(&out, &["notes.onnx", "ONNX"]);
}

#[test]
fn unsupported_op_names_op_node_and_opset() {
    let bytes = std::fs::read(real("cs612-clean-mnist-mlp.onnx")).unwrap();
    let mut model = ModelProto::parse_from_bytes(&bytes).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Relu")
        .expect("a Relu");
    node.op_type = "Einsum".to_string();
    let node_name = node.name.clone();
    let path = tmp_dir("unsup").join("einsum.onnx");
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    let out = cepa(&["inspect", path.to_str().unwrap()]);
    assert_error(
        &out,
        &[
            "unsupported ONNX op 'Einsum'",
            &format!("'{node_name}'"),
            "opset 13",
        ],
    );
}

#[test]
fn nan_weights_are_refused() {
    let bytes = std::fs::read(real("cs612-clean-mnist-mlp.onnx")).unwrap();
    let mut model = ModelProto::parse_from_bytes(&bytes).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.dims.len() == 2)
        .expect("a weight");
    let name = init.name.clone();
    if init.raw_data.is_empty() {
        init.float_data[0] = f32::NAN;
    } else {
        let mut raw = init.raw_data.to_vec();
        raw[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        init.raw_data = raw.into();
    }
    let path = tmp_dir("nan").join("nan.onnx");
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    let out = cepa(&["inspect", path.to_str().unwrap()]);
    assert_error(&out, &["nan.onnx", &name, "not finite"]);
}

#[test]
fn wrong_image_size_is_a_one_line_error() {
    let model = real("badnets-pytorch-mnist.onnx");
    let cifar = shared().join("data/cifar10");
    let out = cepa(&[
        "inspect",
        model.to_str().unwrap(),
        "--data",
        cifar.to_str().unwrap(),
        "--limit",
        "10",
    ]);
    assert_error(&out, &["cifar10", "32"]);
}

#[test]
fn class_count_mismatch_is_a_one_line_error() {
    let model = real("badnets-pytorch-mnist.onnx");
    let out = cepa(&["inspect", model.to_str().unwrap(), "--num-classes", "43"]);
    assert_error(&out, &["43", "10"]);
}

#[test]
fn dynamo_export_with_external_data_loads() {
    let r = inspect_json(&[fixture("mobilenet-dynamo.onnx").to_str().unwrap()]);
    assert_eq!(r["num_classes"], 10);
    assert_eq!(r["opset"], 20);
}

/// A short CEPA scan (few steps, few images) of the real MNIST BadNets model, with `extra`
/// arguments: the tests check the plumbing, not the verdict quality (EVALUATION.md measures
/// that).
fn quick_scan_output(extra: &[&str]) -> Output {
    let model = real("badnets-pytorch-mnist.onnx");
    let data = shared().join("data/mnist");
    let mut args = vec![
        "scan",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "--per-class",
        "4",
        "--steps",
        "8",
        "--verdict",
        "cepa",
        "--format",
        "json",
        "-q",
    ];
    args.extend_from_slice(extra);
    cepa(&args)
}

/// [`quick_scan_output`] and its JSON report.
fn quick_scan(extra: &[&str]) -> (Output, serde_json::Value) {
    let out = quick_scan_output(extra);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, json)
}

#[test]
fn scan_is_reproducible_and_its_exit_code_follows_the_verdict() {
    let (out1, mut a) = quick_scan(&["--seed", "3"]);
    let (_, mut b) = quick_scan(&["--seed", "3"]);
    for key in [
        "verdict", "target", "score", "p_value", "sources", "layer", "config", "seconds",
    ] {
        assert!(a.get(key).is_some(), "report lacks '{key}'");
    }
    let classes = a["decision"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 10);
    // Every class carries the blend and the pasted share of its largest-margin input: each in
    // [0, 1].
    for c in classes {
        for stat in ["margin_blend", "margin_patch"] {
            let s = c["statistics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["statistic"] == stat)
                .unwrap_or_else(|| panic!("no {stat} in {c}"));
            let v = s["value"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{s}");
        }
    }
    assert_eq!(a["config"]["seed"], 3);
    let code = if a["verdict"] == "backdoored" { 1 } else { 0 };
    assert_eq!(out1.status.code(), Some(code));
    // Channel stimulation is in the report, at the network's last pooled map.
    let stim = &a["stimulation"];
    assert!(
        stim["layer"].as_str().is_some_and(|l| !l.is_empty()),
        "{stim}"
    );
    assert_eq!(stim["margins"].as_array().map(Vec::len), Some(10), "{stim}");
    for r in [&mut a, &mut b] {
        r.as_object_mut().unwrap().remove("seconds");
        r["stimulation"].as_object_mut().unwrap().remove("seconds");
    }
    assert_eq!(a, b, "same command, same seed, same report");
    let (_, c) = quick_scan(&["--seed", "4"]);
    assert_ne!(
        a["decision"]["classes"], c["decision"]["classes"],
        "another seed samples other images"
    );
}

#[test]
fn scan_out_writes_report_and_perturbation_pictures() {
    let dir = tmp_dir("scanout");
    let (_, r) = quick_scan(&["--out", dir.to_str().unwrap()]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(written["verdict"], r["verdict"]);
    let class = r["decision"]["most_anomalous"].as_u64().unwrap();
    let pics = std::fs::read_dir(dir.join(format!("perturbations-class{class}")))
        .unwrap()
        .count();
    // 4 images from each of the 9 other classes, each as perturbed image and as perturbation.
    assert_eq!(pics, 2 * 9 * 4);
}

/// `--reference`: each class's index beside the reference scans' mean and the difference, in
/// the JSON and in report.json, with the verdict untouched; a reference of another class count
/// is refused, naming it, before anything runs.
#[test]
fn a_reference_scan_is_set_beside_each_class_and_a_wrong_one_refused_first() {
    let dir = tmp_dir("reference");
    let classes = |v: &[f64]| -> serde_json::Value {
        let c: Vec<serde_json::Value> = v
            .iter()
            .enumerate()
            .map(|(k, x)| serde_json::json!({ "class": k, "anomaly_index": x }))
            .collect();
        serde_json::json!({ "decision": { "classes": c } })
    };
    // Two references: class 0 stands out in both (5 and 3), the rest sit at 0 and 1.
    let (ra, rb) = (dir.join("ref-a.json"), dir.join("ref-b.json"));
    let mut a = vec![0.0; 10];
    let mut b = vec![1.0; 10];
    (a[0], b[0]) = (5.0, 3.0);
    std::fs::write(&ra, classes(&a).to_string()).unwrap();
    std::fs::write(&rb, classes(&b).to_string()).unwrap();
    let (ra, rb) = (ra.to_str().unwrap(), rb.to_str().unwrap());
    let out_dir = dir.join("out");
    let (_, plain) = quick_scan(&[]);
    let (out, r) = quick_scan(&[
        "--reference",
        ra,
        "--reference",
        rb,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(
        r["verdict"], plain["verdict"],
        "the verdict does not use it"
    );
    assert_eq!(r["score"], plain["score"]);
    let c = &r["reference"];
    assert_eq!(c["files"], serde_json::json!([ra, rb]));
    let rows = c["classes"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for (k, row) in rows.iter().enumerate() {
        let here = r["decision"]["classes"][k]["anomaly_index"]
            .as_f64()
            .unwrap();
        let mean = if k == 0 { 4.0 } else { 0.5 };
        assert_eq!(row["class"], k);
        assert_eq!(row["index"].as_f64().unwrap(), here);
        assert_eq!(row["reference_mean"].as_f64().unwrap(), mean);
        assert!((row["adjusted"].as_f64().unwrap() - (here - mean)).abs() < 1e-12);
    }
    let singled = r["target"]
        .as_u64()
        .unwrap_or_else(|| r["decision"]["most_anomalous"].as_u64().unwrap());
    let note = c["notes"][0].as_str().unwrap();
    assert!(
        note.starts_with(&format!("class {singled}: index")),
        "{note}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(written["reference"], *c);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(
        html.contains("Against 2 reference clean scan(s)"),
        "no reference section"
    );
    assert!(
        html.contains("<td>4.00</td>"),
        "class 0's reference mean is not shown"
    );
    let code = if plain["verdict"] == "backdoored" {
        1
    } else {
        0
    };
    assert_eq!(
        out.status.code(),
        Some(code),
        "the exit status follows the verdict"
    );

    // Nine classes against a model of ten: refused before the scan, naming the file.
    let nine = dir.join("nine.json");
    std::fs::write(&nine, classes(&[0.0; 9]).to_string()).unwrap();
    let out = quick_scan_output(&["--reference", nine.to_str().unwrap()]);
    assert_error(&out, &["nine.json", "9 classes", "10"]);
}

#[test]
fn a_settings_file_with_an_unknown_key_is_refused_naming_file_and_key() {
    let dir = tmp_dir("settings");
    let file = dir.join("cepa.toml");
    std::fs::write(&file, "[scan]\nper_class = 5\n[invert]\npie = 0.9\n").unwrap();
    let model = example("model.onnx");
    let images = example("images");
    for cmd in [
        vec!["scan", model.to_str().unwrap()],
        vec!["invert", model.to_str().unwrap(), "--target", "7"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--data", images.to_str().unwrap()]);
        args.extend(["--config", file.to_str().unwrap()]);
        assert_error(&cepa(&args), &["cepa.toml", "pie"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_pair_consensus_from_the_settings_file_reaches_the_scan_and_a_misspelt_one_is_refused() {
    let dir = tmp_dir("consensus");
    let file = dir.join("pair.toml");
    std::fs::write(&file, "[scan.cepa]\nconsensus = \"pair\"\n").unwrap();
    let (_, pair) = quick_scan(&["--config", file.to_str().unwrap()]);
    assert_eq!(pair["config"]["cepa"]["consensus"], "pair");
    let (_, target) = quick_scan(&[]);
    assert_eq!(target["config"]["cepa"]["consensus"], "target");
    // Every class reports its pairs' agreement at every layer, a share in (0, 1]; the pair
    // consensus changes the optimisation, so the values differ from the default's.
    let agreements = |r: &serde_json::Value| -> Vec<f64> {
        r["decision"]["classes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["statistics"].as_array().unwrap().clone())
            .filter(|s| s["statistic"] == "pair_agreement")
            .map(|s| s["value"].as_f64().unwrap())
            .collect()
    };
    let (p, t) = (agreements(&pair), agreements(&target));
    let layers = pair["layers"].as_array().map_or(1, Vec::len);
    assert_eq!(p.len(), 10 * layers, "{p:?}");
    assert!(p.iter().all(|v| *v > 0.0 && *v <= 1.0 + 1e-9), "{p:?}");
    assert_ne!(p, t);
    std::fs::write(&file, "[scan.cepa]\nconsensus = \"pairs\"\n").unwrap();
    let out = quick_scan_output(&["--config", file.to_str().unwrap()]);
    assert_error(&out, &["pair.toml", "pairs"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn scan_rejects_a_bad_flag_with_one_line_naming_it() {
    // An unknown layer, and zero images per class (which once read "no clean images outside
    // class 0").
    let model = real("badnets-pytorch-mnist.onnx");
    let data = shared().join("data/mnist");
    for (flag, value, needles) in [
        ("--layer", "fc9", &["fc9"][..]),
        ("--per-class", "0", &["--per-class", "at least 1"][..]),
    ] {
        let out = cepa(&[
            "scan",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            flag,
            value,
        ]);
        assert_error(&out, needles);
    }
}

#[test]
fn the_readme_example_is_found_backdoored_with_target_7_by_a_clear_margin() {
    // The README's command, with the default verdict (agree: CEPA and Neural Cleanse, which
    // runs without being asked for).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("examples/mnist-badnets/model.onnx");
    let images = root.join("examples/mnist-badnets/images");
    let out = cepa(&[
        "scan",
        model.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("verdict (agree, CEPA and Neural Cleanse combined): "))
        .unwrap_or_else(|| panic!("no combined verdict line: {text}"));
    assert!(
        line.contains("BACKDOORED, target class 7 (score "),
        "{line}"
    );
    assert!(
        text.contains("baseline verdict: BACKDOORED, target class 7"),
        "{text}"
    );
    // Where the score comes from: both detectors at class 7 (stimulation too, weaker), so the
    // two detectors' mean.
    assert!(
        text.lines().any(|l| l.starts_with("  from: CEPA ")
            && l.contains(" x its threshold at class 7, Neural Cleanse ")
            && l.contains(" x at class 7, stimulation ")
            && l.contains(" x at class 7: CEPA and Neural Cleanse at the same class, their mean ")),
        "{text}"
    );
    // Channel stimulation, the third voice, points at the same class.
    assert!(
        text.contains("stimulation (a voice of --verdict agree): class 7 stands out"),
        "{text}"
    );
    // The showcase is not one seed from a wrong answer: at least 1.5 times the threshold.
    let score: f64 = line
        .split("(score ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line}"));
    assert!(score >= 1.5 * COMBINED_THRESHOLD, "{line}");
}

/// Standard base64 (with padding) back to bytes; `None` on a character outside the alphabet.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Every attribute value `name="..."` in `html`.
fn attributes<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!(" {name}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            &rest[..rest.find('"').expect("closed attribute")]
        })
        .collect()
}

/// Check that `dir/report.html` stands alone: every `<img>` is an embedded PNG that decodes, no
/// other file or network reference. Returns the page and its number of images.
fn check_self_contained_html(dir: &Path) -> (String, usize) {
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "network reference"
    );
    let imgs = html.matches("<img ").count();
    let srcs = attributes(&html, "src");
    assert_eq!(
        srcs.len(),
        imgs,
        "every <img> has one src and nothing else has one"
    );
    for src in &srcs {
        let b64 = src
            .strip_prefix("data:image/png;base64,")
            .unwrap_or_else(|| panic!("not an embedded PNG: {}", &src[..src.len().min(60)]));
        let png = base64_decode(b64).expect("valid base64");
        image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("a valid PNG");
    }
    assert!(attributes(&html, "href").is_empty(), "no links out");
    (html, imgs)
}

/// Load `dir/report.html` in headless Chromium and return what the page holds once rendered:
/// (images, images that failed to decode, SVG charts, tables). `None` when no Chromium is
/// installed, unless `CEPA_REQUIRE_CHROMIUM=1` (set by `.ci/run` after installing it).
fn rendered_in_chromium(dir: &Path) -> Option<(usize, usize, usize, usize)> {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(browser) = browser else {
        assert!(
            std::env::var("CEPA_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "CEPA_REQUIRE_CHROMIUM=1 but no chromium is installed"
        );
        eprintln!("no chromium: the report is checked by parsing only");
        return None;
    };
    // A page beside the report loads it in a frame and counts what rendered.
    let check = dir.join("check.html");
    std::fs::write(
        &check,
        r#"<!DOCTYPE html><html><body><iframe id="f" src="report.html"></iframe><script>
document.getElementById('f').addEventListener('load', () => {
  const d = document.getElementById('f').contentDocument;
  const imgs = Array.from(d.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-result', [imgs.length, broken,
    d.querySelectorAll('svg').length, d.querySelectorAll('table').length].join(' '));
});
</script></body></html>"#,
    )
    .unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!(
            "file://{}",
            check.canonicalize().unwrap().display()
        ))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let result = dom
        .split("data-result=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("chromium did not render the report: {dom}"));
    let n: Vec<usize> = result.split(' ').map(|v| v.parse().unwrap()).collect();
    Some((n[0], n[1], n[2], n[3]))
}

/// Share of a PNG's "ink" (distance from `zero`) in the bottom-right quadrant.
fn bottom_right_share(png: &Path, zero: f32) -> f64 {
    let img = image::open(png).expect("png").to_luma8();
    let (w, h) = img.dimensions();
    let (mut inside, mut total) = (0.0f64, 0.0f64);
    for (x, y, p) in img.enumerate_pixels() {
        let ink = f64::from((f32::from(p.0[0]) - zero).abs());
        total += ink;
        if x >= w / 2 && y >= h / 2 {
            inside += ink;
        }
    }
    inside / total.max(1e-12)
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/mnist-badnets")
        .join(name)
}

/// `cepa scan` of the shipped example model on its images, with `args` after them.
fn scan_example(args: &[&str]) -> Output {
    let (model, images) = (example("model.onnx"), example("images"));
    let mut all = vec![
        "scan",
        model.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    cepa(&all)
}

#[test]
fn scan_out_of_the_example_estimates_the_trigger_and_writes_a_self_contained_report() {
    let dir = tmp_dir("example-html");
    // The README's configuration (10 images per class optimised, 10 held out), CEPA alone.
    let out = scan_example(&[
        "--verdict",
        "cepa",
        "--truth",
        example("truth.json").to_str().unwrap(),
        "--format",
        "json",
        "-q",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        printed["inversion"], r["inversion"],
        "stdout and file agree"
    );
    let inv = &r["inversion"];
    assert_eq!(inv["target"], 7);
    let asr = inv["asr"].as_f64().unwrap();
    assert!(asr >= 0.9, "ASR {asr}");
    assert_eq!(
        inv["holdout_images"], 90,
        "10 held-out images of each other class"
    );
    // Measured: the additive form is the cheaper here, its footprint thresholded at half its
    // maximum has IoU 0.44 with the true 3x3 patch at 24..27 (0.79 of its mass inside it), and
    // most of its mass lies in the bottom-right quadrant.
    assert_eq!(inv["kind"], "additive", "{inv}");
    let iou = inv["truth"]["mask_iou"].as_f64().unwrap();
    assert!(iou > 0.3, "mask IoU {iou}");
    assert_eq!(inv["truth"]["target_correct"], true);
    assert!(dir.join("trigger.png").is_file() && !dir.join("mask.png").exists());
    let share = bottom_right_share(&dir.join("trigger.png"), 128.0);
    assert!(share > 0.5, "bottom-right share {share}");

    let (html, imgs) = check_self_contained_html(&dir);
    // Trigger, 9 clean/triggered pairs, 90 perturbed/perturbation pairs, and the clean image
    // under stimulation's deciding single value.
    assert_eq!(imgs, 1 + 2 * 9 + 2 * 90 + 1);
    // A browser shows every picture, the chart and the table.
    if let Some(shown) = rendered_in_chromium(&dir) {
        assert_eq!(shown, (imgs, 0, 1, 1), "images, broken, charts, tables");
    }
    for needle in [
        "BACKDOORED: target class 7",
        "<svg",
        "stroke-dasharray",
        "Estimated trigger for class 7",
        "Clean vs triggered",
        // The value at the map's bottom-right cell, over the trigger's patch (rows 24-26).
        "at (3, 3) of the 4x4 map, over about rows 21-27 and columns 21-27 of the input",
        "Resolved configuration</h2>\n<pre>",
        "&quot;inversion&quot;",
    ] {
        assert!(html.contains(needle), "report.html lacks {needle}");
    }
    // One row per class in the table, the target's marked.
    assert_eq!(html.matches("<tr><td>").count() + 1, 10);
    assert_eq!(html.matches("<tr class=\"target\"><td>7</td>").count(), 1);
}

#[test]
fn a_clean_verdict_gets_a_report_without_inversion() {
    let dir = tmp_dir("clean-html");
    let out = scan_example(&[
        "--verdict",
        "cepa",
        "--per-class",
        "3",
        "--steps",
        "10",
        "--threshold",
        "1000",
        "-q",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "a threshold nothing reaches");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "clean");
    assert!(r.get("inversion").is_none());
    assert!(!dir.join("trigger.png").exists());
    let (html, imgs) = check_self_contained_html(&dir);
    assert!(html.contains("<p class=\"verdict ok\">clean"));
    assert!(!html.contains("Estimated trigger"));
    assert_eq!(
        imgs,
        2 * 9 * 3 + 1,
        "only the per-sample perturbations and stimulation's single value"
    );
}

#[test]
fn baseline_nc_is_reported_beside_cepa_without_changing_its_verdict() {
    let dir = tmp_dir("baseline-nc");
    let settings = dir.join("settings.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&settings, "[nc]\nsteps = 120\n").unwrap();
    // CEPA forced clean (threshold 1000), Neural Cleanse beside it.
    let with_nc = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "--per-class",
            "5",
            "--steps",
            "10",
            "--threshold",
            "1000",
            "--baseline",
            "nc",
            "--config",
            settings.to_str().unwrap(),
            "-q",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        scan_example(&args)
    };
    let out = with_nc(&["--verdict", "cepa"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "CEPA's clean verdict sets the exit status: {text}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let nc = &r["baseline_nc"];
    assert_eq!(nc["classes"].as_array().unwrap().len(), 10);
    assert_eq!(nc["images"], 50, "the 5 x 10 images CEPA optimised");
    assert_eq!(nc["config"]["steps"], 120, "[nc] of the settings file");
    // The example's backdoor is a patch, which Neural Cleanse finds: class 7 has the smallest mask.
    assert_eq!(nc["most_anomalous"], 7, "{nc}");
    assert_eq!(nc["target"], 7);
    assert!(
        text.contains("baseline verdict: BACKDOORED, target class 7"),
        "{text}"
    );
    assert!(text.contains("the detectors disagree"), "{text}");
    let (html, imgs) = check_self_contained_html(&dir);
    assert!(html.contains("Baseline: Neural Cleanse"));
    assert!(html.contains("The detectors disagree"));
    assert_eq!(
        imgs,
        2 * 9 * 5 + 1 + 2,
        "perturbations, stimulation's single value, then NC's mask and mask x pattern"
    );
    // --verdict either: Neural Cleanse's flag makes the model backdoored, and stage 2 estimates
    // the trigger of its target.
    let either = dir.join("either");
    let out = with_nc(&["--verdict", "either"], &either);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the combined verdict: {text}");
    assert!(
        text.contains(
            "verdict (either, CEPA and Neural Cleanse combined): BACKDOORED, target class 7"
        ),
        "{text}"
    );
    assert!(text.contains("CEPA verdict: clean"), "{text}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(either.join("report.json")).unwrap())
            .unwrap();
    // The top-level verdict is the one that set the exit status; CEPA's own sits under `cepa`.
    assert_eq!(r["verdict"], "backdoored", "{r}");
    assert_eq!(r["verdict_rule"], "either");
    assert_eq!(
        (r["target"].as_u64(), r["threshold"].as_f64()),
        (Some(7), Some(COMBINED_THRESHOLD))
    );
    assert!(r["p_value"].is_null());
    assert_eq!(
        r["cepa"]["verdict"], "clean",
        "CEPA's own verdict is kept: {r}"
    );
    assert_eq!(r["cepa"]["threshold"], 1000.0);
    assert!(r["cepa"]["target"].is_null());
    assert_eq!(r["combined"]["backdoored"], true);
    assert_eq!(r["combined"]["target"], 7);
    assert_eq!(r["combined"]["verdict"], "either");
    let ratio = r["baseline_nc"]["score"].as_f64().unwrap() / 2.0;
    assert!((r["combined"]["score"].as_f64().unwrap() - ratio).abs() < 1e-9);
    assert_eq!(r["score"], r["combined"]["score"]);
    assert_eq!(
        r["inversion"]["target"], 7,
        "stage 2 at the combined target"
    );
    assert!(either.join("trigger.png").is_file());
    let (html, _) = check_self_contained_html(&either);
    assert!(
        html.contains(
            "verdict (either, CEPA and Neural Cleanse combined): BACKDOORED, target class 7"
        ) && html.contains("the combined verdict at the top sets the exit status")
            && html.contains("CEPA alone: clean"),
        "the page shows the verdict that counts"
    );
    let first = |needle: &str| html.find(needle).unwrap_or(usize::MAX);
    assert!(
        first("CEPA and Neural Cleanse combined") < first("CEPA alone: clean"),
        "the combined verdict comes first"
    );
    // --verdict agree: the larger score over 1.5 (one detector alone), or, when CEPA's most
    // anomalous class is NC's 7 too, the mean of the two where that is more; the report says
    // which rule decided and with what score.
    let agree = dir.join("agree");
    let out = with_nc(&["--verdict", "agree"], &agree);
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agree.join("report.json")).unwrap()).unwrap();
    let cepa_class = r["decision"]["most_anomalous"].as_u64().unwrap();
    let nc_ratio = r["baseline_nc"]["score"].as_f64().unwrap() / 2.0;
    let cepa_ratio =
        r["cepa"]["score"].as_f64().unwrap() / r["decision"]["threshold"].as_f64().unwrap();
    let alone = nc_ratio.max(cepa_ratio) / 1.5;
    let score = if cepa_class == 7 {
        alone.max((nc_ratio + cepa_ratio) / 2.0)
    } else {
        alone
    };
    assert_eq!(r["combined"]["verdict"], "agree");
    let from = r["combined"]["from"].as_str().unwrap();
    assert!(
        from.starts_with("CEPA ") && from.contains("Neural Cleanse"),
        "{from}"
    );
    assert!(
        (r["combined"]["score"].as_f64().unwrap() - score).abs() < 1e-9,
        "{r}"
    );
    let flagged = score > COMBINED_THRESHOLD;
    assert_eq!(r["combined"]["backdoored"], flagged);
    assert_eq!(
        out.status.code(),
        Some(if flagged { 1 } else { 0 }),
        "{text}"
    );
    assert!(
        text.contains("verdict (agree, CEPA and Neural Cleanse combined): "),
        "{text}"
    );
    // What a script reads is what the exit status says, in the file and on stdout alike, while
    // CEPA alone (threshold 1000) says clean. Measured: both detectors single out class 7 and
    // Neural Cleanse's index 3.93 makes the combined score 1.31 (3.93 / 2 / 1.5, over the mean
    // with CEPA's near-zero ratio), so the two verdicts differ.
    assert!(
        flagged,
        "the case where CEPA and the combined verdict differ: {r}"
    );
    assert_eq!(r["verdict"], if flagged { "backdoored" } else { "clean" });
    assert_eq!(r["verdict_rule"], "agree");
    assert_eq!(r["cepa"]["verdict"], "clean");
    let json_out = with_nc(
        &["--verdict", "agree", "--format", "json"],
        &dir.join("agree-json"),
    );
    let j: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(j["verdict"], r["verdict"]);
    assert_eq!(json_out.status.code(), out.status.code());
    assert!(
        text.contains("divided by 1.5 (one detector alone)"),
        "{text}"
    );
}

#[test]
fn invert_alone_writes_mask_trigger_and_report_reproducibly() {
    let run = |tag: &str| {
        let dir = tmp_dir(tag);
        let out = cepa(&[
            "invert",
            example("model.onnx").to_str().unwrap(),
            "--data",
            example("images").to_str().unwrap(),
            "--target",
            "7",
            "--per-class",
            "5",
            "--kind",
            "mask-pattern",
            "--format",
            "json",
            "-q",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (dir, r)
    };
    let (dir, r) = run("invert-a");
    let inv = &r["inversion"];
    assert_eq!(
        (inv["target"].as_u64(), inv["kind"].as_str()),
        (Some(7), Some("mask_pattern"))
    );
    assert_eq!(inv["forms"].as_array().unwrap().len(), 1);
    assert!(inv["asr"].as_f64().unwrap() >= 0.85, "{inv}");
    assert!(
        inv["mask_l1"].as_f64().unwrap() < 30.0,
        "a small mask: {inv}"
    );
    // Measured: the mask sits low in the bottom-right quadrant (rows 24..28, left of the patch).
    let share = bottom_right_share(&dir.join("mask.png"), 0.0);
    assert!(share > 0.5, "bottom-right share {share}");
    let (html, imgs) = check_self_contained_html(&dir);
    assert_eq!(imgs, 2 + 2 * 9, "trigger, mask and 9 example pairs");
    assert!(html.contains(">mask<") && !html.contains("<p class=\"verdict"));
    let (again, r2) = run("invert-b");
    assert_eq!(
        std::fs::read(dir.join("mask.png")).unwrap(),
        std::fs::read(again.join("mask.png")).unwrap(),
        "same seed, same trigger"
    );
    assert_eq!(inv["cost"], r2["inversion"]["cost"]);
}

/// A two-model zoo (one clean, one BadNets), tiny and quick: the pipeline, not accuracy.
const TINY_ZOO: &str = r#"
[recipes.mnist]
train_images = 400
cnn = { conv1 = 4, conv2 = 8, hidden = 16 }
train = { epochs = 2, batch_size = 32, lr = 3e-3 }
[[models]]
name = "clean"
dataset = "mnist"
seeds = [0]
[[models]]
name = "badnets"
dataset = "mnist"
seeds = [1]
attack = { kind = "badnets", patch = 4, rate = 0.3, target = 3 }
"#;

/// Write a zoo config `body` to `dir/name`, reading the datasets of ../shared/data.
fn zoo_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let config = dir.join(name);
    let data_root = shared().join("data").display().to_string();
    std::fs::write(&config, format!("data_root = {data_root:?}\n{body}")).unwrap();
    config
}

/// `cepa zoo build --config CONFIG --out OUT` with `extra` arguments.
fn zoo_build(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "zoo",
        "build",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cepa(&args)
}

/// A fully connected BadNets victim, trained by `cepa zoo build` (`arch = "mlp"`) and exported,
/// is read by `cepa scan` and flagged at its target by the default verdict (exit code 1).
#[test]
fn a_fully_connected_badnets_victim_is_flagged_at_its_target() {
    let dir = tmp_dir("mlp");
    let config = zoo_config(
        &dir,
        "mlp.toml",
        r#"
[recipes.mnist]
arch = "mlp"
mlp = { hidden = [32] }
train_images = 3000
train = { epochs = 6, lr = 2e-3, batch_size = 32, shift = 0 }
[[models]]
name = "mlp-badnets"
dataset = "mnist"
seeds = [2]
attack = { kind = "badnets", patch = 3, rate = 0.1, target = 4 }
"#,
    );
    let zoo = dir.join("zoo");
    let out = zoo_build(&config, &zoo, &["-q"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("manifest.json")).unwrap()).unwrap();
    let m = &manifest["models"][0];
    assert_eq!(m["arch"], "mlp", "{m}");
    assert_eq!(m["params"]["mlp"]["hidden"], serde_json::json!([32]), "{m}");
    assert!(m["attack_success_rate"].as_f64().unwrap() >= 0.9, "{m}");
    let model = zoo.join("mlp-badnets-s2.onnx");
    let data = shared().join("data/mnist");
    let out = cepa(&[
        "scan",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        "json",
        "-q",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["verdict"], "backdoored", "{}", r["combined"]);
    assert_eq!(r["target"], 4, "{}", r["combined"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        r["layer"], "fc1.relu, flatten",
        "the inputs of the two Gemm layers"
    );
}

#[test]
fn zoo_build_then_eval_both_detectors_resumably() {
    let dir = tmp_dir("zoo");
    let config = zoo_config(&dir, "tiny.toml", TINY_ZOO);
    let zoo = dir.join("zoo");
    let build = |_: ()| zoo_build(&config, &zoo, &[]);
    let out = build(());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Its stderr is a pipe, where no progress bar is drawn: one line per epoch instead.
    for id in ["clean-s0", "badnets-s1"] {
        for e in 1..=2 {
            let line = format!("{id}: epoch {e}/2, loss ");
            assert_eq!(stderr.matches(&line).count(), 1, "{line} in\n{stderr}");
        }
    }
    // `-q` keeps them out: only errors on stderr.
    let quiet_zoo = dir.join("zoo-quiet");
    let quiet = zoo_build(&config, &quiet_zoo, &["-q"]);
    let quiet_err = String::from_utf8_lossy(&quiet.stderr);
    assert_eq!(quiet.status.code(), Some(0), "{quiet_err}");
    assert!(!quiet_err.contains(": epoch "), "{quiet_err}");
    assert!(quiet_zoo.join("badnets-s1.onnx").is_file());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("manifest.json")).unwrap()).unwrap();
    let models = manifest["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for key in [
        "id",
        "path",
        "dataset",
        "arch",
        "attack",
        "params",
        "target",
        "sources",
        "seed",
        "clean_accuracy",
        "attack_success_rate",
        "train_seconds",
    ] {
        assert!(
            models.iter().all(|m| m.get(key).is_some()),
            "manifest lacks {key}"
        );
    }
    assert_eq!(models[1]["attack"], "badnets");
    assert_eq!(models[1]["target"], 3);
    assert!(zoo.join("clean-s0.onnx").is_file() && zoo.join("clean-s0.cepa.toml").is_file());
    // Resumable: a second build trains nothing.
    let again = build(());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("2 already built, 0 to train"), "{stderr}");

    let out_dir = dir.join("eval");
    let eval_with = |extra: &[&str]| tiny_eval(&zoo, &out_dir, extra, &[]);
    let eval = || eval_with(&[]);
    let out = eval();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4, "2 models x 2 detectors");
    eval_judges_what_scan_runs(&zoo, &out_dir, &dir);
    sharded_eval_equals_the_single_run(&zoo, &dir.join("eval-sharded"), &lines);
    subset_manifest_equals_the_single_run(&zoo, &dir.join("eval-subset"), &lines);
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("evaluation.json")).unwrap())
            .unwrap();
    for det in ["cepa", "nc"] {
        let all = &ev[det]["mnist"]["families"]["all"];
        assert_eq!(all["n"], 2, "{det}: {all}");
        for key in [
            "detection_accuracy",
            "tpr",
            "fpr",
            "auc",
            "target_accuracy",
            "median_seconds",
        ] {
            assert!(all.get(key).is_some(), "{det} lacks {key}");
        }
        assert!(ev[det]["mnist"]["families"].get("badnets").is_some());
        // The numbers agree with the per-model lines: one backdoored and one clean model.
        let rows: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r["detector"] == det)
            .collect();
        let flagged = |attack: &str| {
            rows.iter()
                .filter(|r| (r["attack"] == "clean") == (attack == "clean"))
                .all(|r| r["flagged"] == true)
        };
        let (tp, fp) = (flagged("badnets"), flagged("clean"));
        let num = |k: &str| all[k].as_f64().unwrap();
        assert_eq!(num("tpr"), if tp { 1.0 } else { 0.0 }, "{det}: {all}");
        assert_eq!(num("fpr"), if fp { 1.0 } else { 0.0 }, "{det}: {all}");
        let right = usize::from(tp) + usize::from(!fp);
        assert_eq!(
            num("detection_accuracy"),
            right as f64 / 2.0,
            "{det}: {all}"
        );
        let seconds: Vec<f64> = rows
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap())
            .collect();
        let median = (seconds[0] + seconds[1]) / 2.0;
        assert!(
            (num("median_seconds") - median).abs() < 1e-6,
            "{det}: {all}"
        );
    }
    // Both detectors judged both models: the combined detector flags what either flags.
    let either = &ev["cepa-or-nc"]["mnist"]["families"]["all"];
    assert_eq!(either["n"], 2, "{either}");
    let flagged = |det: &str, attack: &str| {
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|r| r["detector"] == det && r["attack"] == attack && r["flagged"] == true)
    };
    let tp = flagged("cepa", "badnets") || flagged("nc", "badnets");
    assert_eq!(either["tpr"].as_f64(), Some(if tp { 1.0 } else { 0.0 }));
    let md = std::fs::read_to_string(out_dir.join("evaluation.md")).unwrap();
    assert!(
        md.contains("| badnets | cepa |")
            && md.contains("| badnets | nc |")
            && md.contains("| badnets | cepa-or-nc |"),
        "{md}"
    );
    // Every model's row, the combined verdicts beside each detector's, and those verdicts in
    // combined.jsonl: as `agree` decides them from the two detectors' lines.
    let per_model = md.split("### Per model").nth(1).expect("a per-model table");
    for id in ["clean-s0", "badnets-s1"] {
        assert_eq!(
            per_model.matches(&format!("| mnist | {id} |")).count(),
            1,
            "{md}"
        );
    }
    let combined = jsonl(&out_dir.join("combined.jsonl"));
    assert_eq!(combined.len(), 4, "2 models x (agree, either)");
    let mut singles: Vec<cepa::eval::Outcome> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Channel stimulation's rows come from CEPA's saved scans, not results.jsonl: a row of its
    // own in the tables, and the third voice of `agree`.
    let verdict = cepa::settings::Settings::default().verdict;
    for c in singles.clone().iter().filter(|o| o.detector == "cepa") {
        let path = out_dir
            .join("reports/cepa")
            .join(format!("{}.json", c.model));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let s: cepa::detect::stimulate::StimulationReport =
            serde_json::from_value(r["stimulation"].clone()).unwrap();
        singles.extend(cepa::eval::stimulation_outcome(c, &s, &verdict));
    }
    assert_eq!(singles.iter().filter(|o| o.detector == "stim").count(), 2);
    assert_eq!(ev["stim"]["mnist"]["families"]["all"]["n"], 2, "{ev}");
    let want = cepa::eval::agree(&singles, &verdict);
    for w in &want {
        let got = combined
            .iter()
            .find(|c| c["model"] == w.model.as_str() && c["detector"] == "cepa-nc-agree")
            .unwrap();
        assert_eq!(got["flagged"], w.flagged, "{got}");
        assert!(
            (got["score"].as_f64().unwrap() - w.score).abs() < 1e-12,
            "{got}"
        );
    }
    let svg = std::fs::read_to_string(out_dir.join("roc-mnist.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    // A rerun reuses every result.
    let again = eval();
    assert_eq!(again.status.code(), Some(0));
    let lines = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4, "nothing rerun");
    // --tables-only runs nothing: with one result removed, the tables count what is left.
    let kept: Vec<&str> = lines
        .lines()
        .filter(|l| !(l.contains("\"nc\"") && l.contains("clean-s0")))
        .collect();
    assert_eq!(kept.len(), 3);
    std::fs::write(out_dir.join("results.jsonl"), kept.join("\n") + "\n").unwrap();
    let tables = eval_with(&["--tables-only"]);
    assert_eq!(tables.status.code(), Some(0));
    let lines = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3, "nothing run");
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("evaluation.json")).unwrap())
            .unwrap();
    assert_eq!(ev["nc"]["mnist"]["families"]["all"]["n"], 1);
    assert_eq!(ev["cepa"]["mnist"]["families"]["all"]["n"], 2);
    assert_eq!(
        ev["cepa-or-nc"]["mnist"]["families"]["all"]["n"], 1,
        "only where both judged"
    );
    // --invert inverts the backdoored model only, at its true target, and measures the attack
    // success on --invert-holdout images of each other class (the removed line is rerun).
    let inv = eval_with(&["--invert", "--invert-holdout", "5"]);
    assert_eq!(
        inv.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&inv.stderr)
    );
    let lines = std::fs::read_to_string(out_dir.join("inversions.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{lines}");
    assert_eq!(rows[0]["model"], "badnets-s1");
    assert_eq!(rows[0]["target"], 3);
    assert_eq!(
        rows[0]["holdout_images"], 45,
        "5 images of each of 9 classes"
    );
    let asr = rows[0]["asr"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&asr) && (asr * 45.0 - (asr * 45.0).round()).abs() < 1e-9);
    let md = std::fs::read_to_string(out_dir.join("evaluation.md")).unwrap();
    assert!(
        md.contains("### Trigger inversion") && md.contains("| mnist | badnets | 1 |"),
        "{md}"
    );
    assert!(md.contains(" | 45 | "), "{md}");
    // Results made with other settings are not mixed into the folder.
    let other = cepa(&[
        "eval",
        zoo.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--steps",
        "11",
        "--per-class",
        "3",
        "-q",
    ]);
    assert_error(&other, &["other settings", "scan.cepa.steps: 10 -> 11"]);
    // An edited zoo config is noticed: the built model no longer matches it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("patch = 4", "patch = 5")).unwrap();
    assert_error(&build(()), &["badnets-s1", "attack settings changed"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// The combined verdict's default threshold (`[verdict] threshold`).
const COMBINED_THRESHOLD: f64 = 0.978;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Every number of `a` within `tol` of `b`'s, everything else equal.
fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            let kx: Vec<&String> = x.keys().collect();
            let ky: Vec<&String> = y.keys().collect();
            assert_eq!(kx, ky, "{at}: keys");
            for (k, v) in x {
                assert_json_close(v, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: length");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_json_close(v, w, tol, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cepa eval MANIFEST --rescore --out OUT EXTRA -q`, which must succeed.
fn rescore(manifest: &str, out: &Path, extra: &[&str]) {
    let manifest = repo(manifest);
    let mut args = vec![
        "eval",
        manifest.to_str().unwrap(),
        "--rescore",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    let run = cepa(&args);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}: {}",
        out.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn rescore_in_place_merges_the_shards_results_into_one_file() {
    // A folder whose results a 2-task array wrote: rescored in place, the two shard files
    // become one results.jsonl with every line once, equal to the committed ones.
    let from = repo("eval/holdout-fashion");
    let dir = tmp_dir("rescore-shards");
    for sub in ["cepa", "nc"] {
        std::fs::create_dir_all(dir.join("reports").join(sub)).unwrap();
        for f in std::fs::read_dir(from.join("reports").join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(
                &f,
                dir.join("reports").join(sub).join(f.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    std::fs::copy(from.join("settings.json"), dir.join("settings.json")).unwrap();
    let text = std::fs::read_to_string(from.join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = lines.split_at(lines.len() / 2);
    std::fs::write(dir.join("results-shard-0-of-2.jsonl"), a.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("results-shard-1-of-2.jsonl"), b.join("\n") + "\n").unwrap();
    rescore("eval/zoo-holdout-manifest.json", &dir, &[]);
    assert!(!dir.join("results-shard-0-of-2.jsonl").exists());
    assert!(!dir.join("results-shard-1-of-2.jsonl").exists());
    let mine = jsonl(&dir.join("results.jsonl"));
    assert_eq!(mine.len(), lines.len(), "every line once");
    assert_json_close(
        &serde_json::Value::Array(mine),
        &serde_json::Value::Array(jsonl(&from.join("results.jsonl"))),
        1e-9,
        "merged",
    );
    let md = std::fs::read_to_string(dir.join("evaluation.md")).unwrap();
    assert!(!md.contains("Not finished"), "{md}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rescore_reproduces_the_committed_tables_from_the_saved_scans() {
    // Every committed evaluation that keeps its saved scans (the held-out ResNet population
    // included), decided again by the rule in the code under the settings it was decided with
    // (those before session 20 under `agree_score = "larger"` at 0.973, those of sessions 20 to
    // 34 at 0.912 with Neural Cleanse's threshold 2.0 at every class count): the same verdicts,
    // scores and tables (written by this very command).
    let larger = "eval/stats-dev-s20/larger.toml";
    let s22 = "eval/stats-dev-s35/rule-s22.toml";
    for (manifest, folder, rule, scans) in [
        (
            "eval/zoo-standard-manifest.json",
            "eval/standard",
            Some(larger),
            None,
        ),
        (
            "eval/zoo-holdout-manifest.json",
            "eval/holdout-fashion",
            Some(larger),
            None,
        ),
        ("zoo/real/manifest.json", "eval/real", Some(larger), None),
        (
            "eval/zoo-holdout-resnet-manifest.json",
            "eval/holdout-resnet",
            Some(larger),
            None,
        ),
        // Scanned with the per-source reach: the hardest-source checks decide it again.
        (
            "eval/zoo-judge-allconv-manifest.json",
            "eval/judge-allconv",
            Some(larger),
            None,
        ),
        // The judge of the rule frozen in session 20.
        (
            "eval/zoo-judge-s20-manifest.json",
            "eval/judge-s20",
            Some(s22),
            None,
        ),
        // The judge of the rule frozen in session 21 (the largest margin on its own).
        (
            "eval/zoo-judge-s21-manifest.json",
            "eval/judge-s21",
            Some(s22),
            None,
        ),
        // The judge of the rule frozen in session 22 (margin_excess in CEPA's mean).
        (
            "eval/zoo-judge-s22-manifest.json",
            "eval/judge-s22",
            Some(s22),
            None,
        ),
        // The judges of sessions 25, 33 and 34 (the rule frozen in session 22).
        (
            "eval/zoo-judge-s25-manifest.json",
            "eval/judge-s25",
            Some(s22),
            None,
        ),
        (
            "eval/zoo-judge-s33-manifest.json",
            "eval/judge-s33",
            Some(s22),
            None,
        ),
        // 43 classes: Neural Cleanse's threshold is where the session-35 rule differs.
        (
            "eval/zoo-judge-s34-manifest.json",
            "eval/judge-s34",
            Some(s22),
            None,
        ),
        // The judges of the rule frozen in session 35 (sessions 35 and 36), under the default
        // rule.
        (
            "eval/zoo-judge-s35-manifest.json",
            "eval/judge-s35",
            None,
            None,
        ),
        (
            "eval/zoo-judge-s36-manifest.json",
            "eval/judge-s36",
            None,
            None,
        ),
        // The judge of the rule frozen in session 38: its saved scans carry channel
        // stimulation, whose rows rescore derives again from them.
        (
            "eval/zoo-judge-s38-manifest.json",
            "eval/judge-s38",
            None,
            None,
        ),
        // Its second judge (session 39).
        (
            "eval/zoo-judge-s39-manifest.json",
            "eval/judge-s39",
            None,
            None,
        ),
        // The whole CIFAR-10 small-CNN zoo under that rule (session 29's scans with their
        // stimulation, and session 39's Blend and WaNet models), decided from the scans of
        // session 40, which carry the reading of single values that rule leaves out.
        (
            "eval/zoo-standard-cifar10-s39-manifest.json",
            "eval/standard-cifar10-s39",
            Some("eval/stats-dev-s40/rule-b55636e.toml"),
            Some("eval/standard-cifar10-s40"),
        ),
        // The judges of the rule frozen in session 40 (the default).
        (
            "eval/zoo-judge-s40-manifest.json",
            "eval/judge-s40",
            None,
            None,
        ),
        (
            "eval/zoo-judge-s40-mnist-manifest.json",
            "eval/judge-s40-mnist",
            None,
            None,
        ),
        // Its third judge (session 41, MNIST x ResNet-8).
        (
            "eval/zoo-judge-s41-manifest.json",
            "eval/judge-s41",
            None,
            None,
        ),
        // Its fourth judge (session 42, Fashion-MNIST x MobileNet).
        (
            "eval/zoo-judge-s42-manifest.json",
            "eval/judge-s42",
            None,
            None,
        ),
        // Its fifth judge (session 43, MNIST x MobileNet).
        (
            "eval/zoo-judge-s43-manifest.json",
            "eval/judge-s43",
            None,
            None,
        ),
        // The same zoo under the rule frozen in session 40 (the default): single values too.
        (
            "eval/zoo-standard-cifar10-s39-manifest.json",
            "eval/standard-cifar10-s40",
            None,
            None,
        ),
        // The same scans under the session-21 rule (a table without saved scans of its own).
        (
            "eval/zoo-judge-s22-manifest.json",
            "eval/judge-s22-s21-rule",
            Some("eval/stats-dev-s22/s21-rule.toml"),
            Some("eval/judge-s22"),
        ),
    ] {
        // `saved`: the committed table; `from`: the saved scans it was decided from.
        let saved = repo(folder);
        let from = repo(scans.unwrap_or(folder));
        let out = tmp_dir(&format!("rescore-{}", folder.replace('/', "-")));
        let rule = rule.map(|r| repo(r).to_str().unwrap().to_string());
        let mut args = vec!["--from", from.to_str().unwrap()];
        if let Some(r) = &rule {
            args.extend(["--config", r.as_str()]);
        }
        rescore(manifest, &out, &args);
        let (mine, kept) = (
            jsonl(&out.join("results.jsonl")),
            jsonl(&saved.join("results.jsonl")),
        );
        assert_eq!(mine.len(), kept.len(), "{folder}");
        assert!(mine.iter().any(|o| o["detector"] == "cepa"));
        assert_json_close(
            &serde_json::Value::Array(mine),
            &serde_json::Value::Array(kept),
            1e-9,
            folder,
        );
        let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let (ev, ev_kept): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&read(&out, "evaluation.json")).unwrap(),
            serde_json::from_str(&read(&saved, "evaluation.json")).unwrap(),
        );
        assert_json_close(&ev, &ev_kept, 1e-9, folder);
        // The Markdown names the files it read; past those two lines the tables are the same.
        let body = |t: String| t.lines().skip(3).collect::<Vec<_>>().join("\n");
        assert_eq!(
            body(read(&out, "evaluation.md")),
            body(read(&saved, "evaluation.md")),
            "{folder}: evaluation.md"
        );
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn rescore_raises_neural_cleanses_threshold_for_a_43_class_model_under_the_default_rule() {
    // judge-s34 (GTSRB-32, 43 classes), decided again under the default rule: Neural Cleanse is
    // judged against 2.0 x sqrt(ln 43 / ln 10) = 2.56, so its index 2.24 on the random-colour
    // BadNets model no longer flags it, and the clean model at 3.45 (alone, at a class CEPA does
    // not single out) no longer makes `agree` call it backdoored; under the session-22 rule
    // (2.0 at every class count, `agree` at 0.912) both were flagged.
    let out = tmp_dir("rescore-nc-classes");
    rescore(
        "eval/zoo-judge-s34-manifest.json",
        &out,
        &["--from", repo("eval/judge-s34").to_str().unwrap()],
    );
    let mut rows = jsonl(&out.join("results.jsonl"));
    rows.extend(jsonl(&out.join("combined.jsonl")));
    let row = |model: &str, detector: &str| {
        rows.iter()
            .find(|o| o["model"] == model && o["detector"] == detector)
            .unwrap_or_else(|| panic!("{model} {detector}"))
            .clone()
    };
    let at43 = 2.0 * (43f64.ln() / 10f64.ln()).sqrt();
    for o in rows.iter().filter(|o| o["detector"] == "nc") {
        let t = o["threshold"].as_f64().unwrap();
        assert!((t - at43).abs() < 1e-9, "{o}");
        assert_eq!(o["flagged"], o["score"].as_f64().unwrap() > t, "{o}");
    }
    let colour = row("gtsrb32-vgg-badnets-colour-s3400", "nc");
    assert!(colour["score"].as_f64().unwrap() > 2.0 && colour["flagged"] == false);
    let clean = row("gtsrb32-vgg-clean-s3404", "cepa-nc-agree");
    assert_eq!(clean["flagged"], false, "{clean}");
    assert!((clean["threshold"].as_f64().unwrap() - COMBINED_THRESHOLD).abs() < 1e-12);
    // The committed table, decided under the session-22 rule, flagged both.
    let kept = jsonl(&repo("eval/judge-s34/results.jsonl"));
    let kept_row = |model: &str, detector: &str| {
        kept.iter()
            .find(|o| o["model"] == model && o["detector"] == detector)
            .unwrap()
            .clone()
    };
    assert_eq!(
        kept_row("gtsrb32-vgg-badnets-colour-s3400", "nc")["flagged"],
        true
    );
    let combined = jsonl(&repo("eval/judge-s34/combined.jsonl"));
    assert!(
        combined
            .iter()
            .any(|o| o["model"] == "gtsrb32-vgg-clean-s3404"
                && o["detector"] == "cepa-nc-agree"
                && o["flagged"] == true),
        "the session-22 rule flagged clean-s3404"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn rescore_under_another_rule_changes_the_verdicts_and_leaves_the_source_alone() {
    let from = repo("eval/holdout-fashion");
    let before = std::fs::read_to_string(from.join("results.jsonl")).unwrap();
    let out = tmp_dir("rescore-rule");
    let rule = out.join("rule.toml");
    // Transfer alone, and a Neural Cleanse threshold nothing reaches.
    std::fs::write(
        &rule,
        "[scan.decision]\nstatistics = [\"transfer\"]\nthreshold = 0.5\n[nc]\nthreshold = 1000.0\n",
    )
    .unwrap();
    rescore(
        "eval/zoo-holdout-manifest.json",
        &out,
        &[
            "--from",
            from.to_str().unwrap(),
            "--config",
            rule.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(from.join("results.jsonl")).unwrap(),
        before,
        "--from is only read"
    );
    let kept = jsonl(&from.join("results.jsonl"));
    let mine = jsonl(&out.join("results.jsonl"));
    let nc: Vec<&serde_json::Value> = mine.iter().filter(|o| o["detector"] == "nc").collect();
    assert!(
        !nc.is_empty()
            && nc
                .iter()
                .all(|o| o["flagged"] == false && o["threshold"] == 1000.0)
    );
    let cepa_lines = |v: &[serde_json::Value]| -> Vec<(f64, bool)> {
        v.iter()
            .filter(|o| o["detector"] == "cepa")
            .map(|o| {
                (
                    o["score"].as_f64().unwrap(),
                    o["flagged"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let (new, old) = (cepa_lines(&mine), cepa_lines(&kept));
    assert!(
        new.iter().all(|(s, f)| *f == (*s > 0.5)),
        "flagged = score > 0.5"
    );
    assert!(
        new.iter().zip(&old).any(|(a, b)| (a.0 - b.0).abs() > 1e-3),
        "transfer alone scores otherwise"
    );
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("settings.json")).unwrap()).unwrap();
    assert_eq!(
        settings["scan"]["decision"]["statistics"],
        serde_json::json!(["transfer"]),
        "the folder records the rule its lines were decided by"
    );
    // Every CEPA line has its report decided again: the line's verdict, score and class, the
    // rule it was decided by, and per class the indices that made it (the transfer indices
    // alone: the class's mean index is the mean of its transfer indices, each capped at the
    // rule's index_cap).
    let report_text = |dir: &Path, model: &str| {
        std::fs::read_to_string(dir.join("reports/cepa").join(format!("{model}.json"))).unwrap()
    };
    let lines: Vec<&serde_json::Value> = mine.iter().filter(|o| o["detector"] == "cepa").collect();
    for o in &lines {
        let model = o["model"].as_str().unwrap();
        let r: serde_json::Value = serde_json::from_str(&report_text(&out, model)).unwrap();
        assert_eq!(r["score"], o["score"], "{model}");
        assert_eq!(
            r["decision"]["most_anomalous"], o["most_anomalous"],
            "{model}"
        );
        assert_eq!(
            r["verdict"] == "backdoored",
            o["flagged"] == true,
            "{model}"
        );
        assert_eq!(r["target"], o["target"], "{model}");
        assert_eq!(
            r["config"]["decision"]["statistics"],
            serde_json::json!(["transfer"])
        );
        assert!(
            r["rescored"]["from"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{model}.json"))
        );
        let cap = r["config"]["decision"]["index_cap"].as_f64().unwrap();
        assert!(r["config"]["decision"]["index_floor"].is_null());
        for c in r["decision"]["classes"].as_array().unwrap() {
            let transfer: Vec<f64> = c["statistics"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["statistic"] == "transfer")
                .map(|s| s["anomaly_index"].as_f64().unwrap())
                .map(|i| if cap > 0.0 { i.min(cap) } else { i })
                .collect();
            assert!(!transfer.is_empty(), "{model}: transfer indices kept");
            let mean = transfer.iter().sum::<f64>() / transfer.len() as f64;
            assert!(
                (c["mean_index"].as_f64().unwrap() - mean).abs() < 1e-9,
                "{model} class {}: mean index {} is not the transfer indices' mean {mean}",
                c["class"],
                c["mean_index"]
            );
        }
        // The source's report is untouched (it was decided by the default rule).
        let kept: serde_json::Value = serde_json::from_str(&report_text(&from, model)).unwrap();
        assert!(kept.get("rescored").is_none());
    }
    // A rewritten report keeps what the scan measured: decided again in place under the same
    // rule, every report and line comes out the same.
    let first: Vec<String> = lines
        .iter()
        .map(|o| report_text(&out, o["model"].as_str().unwrap()))
        .collect();
    let results_first = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    rescore(
        "eval/zoo-holdout-manifest.json",
        &out,
        &["--config", rule.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        results_first
    );
    for (o, before) in lines.iter().zip(&first) {
        let model = o["model"].as_str().unwrap();
        let mut again: serde_json::Value = serde_json::from_str(&report_text(&out, model)).unwrap();
        let mut before: serde_json::Value = serde_json::from_str(before).unwrap();
        // Only the file it was read from differs.
        again.as_object_mut().unwrap().remove("rescored");
        before.as_object_mut().unwrap().remove("rescored");
        assert_json_close(&again, &before, 0.0, model);
    }
    // A folder without saved scans is a clear error naming what is missing.
    let empty = out.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(from.join("settings.json"), empty.join("settings.json")).unwrap();
    std::fs::copy(from.join("results.jsonl"), empty.join("results.jsonl")).unwrap();
    let run = cepa(&[
        "eval",
        repo("eval/zoo-holdout-manifest.json").to_str().unwrap(),
        "--rescore",
        "--out",
        empty.to_str().unwrap(),
        "-q",
    ]);
    assert_error(&run, &["saved scan of", "reports"]);
    std::fs::remove_dir_all(&out).ok();
}

/// The same evaluation as two shards, one named by `--shard`, one by Slurm's variables, then
/// merged by `--tables-only`: every model in the shard that owns it, the merged results equal
/// the single run's `lines`, and a merge that lacks a shard names what is missing.
fn sharded_eval_equals_the_single_run(zoo: &Path, out: &Path, lines: &str) {
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = tiny_eval(zoo, out, extra, env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--shard", "0/2"], &[]);
    run(
        &[],
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ],
    );
    assert!(
        !out.join("evaluation.json").exists(),
        "a shard writes no tables"
    );
    let mut seen = Vec::new();
    for i in 0..2 {
        let shard = cepa::shard::Shard { index: i, count: 2 };
        let file = out.join(format!("results-shard-{i}-of-2.jsonl"));
        let rows: Vec<serde_json::Value> = if file.exists() {
            jsonl(&file)
        } else {
            Vec::new()
        };
        for r in &rows {
            let id = r["model"].as_str().unwrap();
            assert!(shard.owns(id), "{id} in shard {i}");
            seen.push((id.to_string(), r["detector"].as_str().unwrap().to_string()));
        }
    }
    seen.sort();
    assert_eq!(
        seen.len(),
        4,
        "each model and detector in exactly one shard"
    );
    seen.dedup();
    assert_eq!(seen.len(), 4);
    run(&["--tables-only"], &[]);
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("evaluation.json")).unwrap())
            .unwrap();
    let single: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for det in ["cepa", "nc"] {
        assert_eq!(merged[det]["mnist"]["families"]["all"]["n"], 2, "{det}");
    }
    let sharded: Vec<serde_json::Value> = (0..2)
        .map(|i| out.join(format!("results-shard-{i}-of-2.jsonl")))
        .filter(|f| f.exists())
        .flat_map(|f| jsonl(&f))
        .collect();
    for s in &single {
        let twin = sharded
            .iter()
            .find(|r| r["model"] == s["model"] && r["detector"] == s["detector"])
            .unwrap();
        assert_same_judgement(twin, s);
    }
    // A merge without one shard names the models it lacks.
    let lost = (0..2)
        .map(|i| out.join(format!("results-shard-{i}-of-2.jsonl")))
        .find(|f| f.exists())
        .unwrap();
    let lost_models: Vec<String> = jsonl(&lost)
        .iter()
        .map(|r| r["model"].as_str().unwrap().to_string())
        .collect();
    std::fs::remove_file(&lost).unwrap();
    run(&["--tables-only"], &[]);
    let md = std::fs::read_to_string(out.join("evaluation.md")).unwrap();
    assert!(md.contains("Not finished"), "{md}");
    for m in &lost_models {
        assert!(md.contains(m.as_str()), "{m} named: {md}");
    }
}

/// Two results lines of the same model and detector judge it alike: the same verdict, classes
/// and threshold, and the same score.
fn assert_same_judgement(a: &serde_json::Value, b: &serde_json::Value) {
    let at = format!("{} ({})", b["model"], b["detector"]);
    for key in ["flagged", "target", "most_anomalous", "threshold"] {
        assert_eq!(a[key], b[key], "{key} of {at}");
    }
    let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
    assert!((x - y).abs() < 1e-9, "score of {at}: {x} vs {y}");
}

/// A manifest file naming part of a zoo, written beside the zoo's own: its models are read
/// from its folder, and the one it keeps is judged as in the run over the whole zoo.
fn subset_manifest_equals_the_single_run(zoo: &Path, out: &Path, lines: &str) {
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("manifest.json")).unwrap()).unwrap();
    manifest["models"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["id"] == "badnets-s1");
    let subset = zoo.join("manifest-badnets.json");
    std::fs::write(&subset, manifest.to_string()).unwrap();
    let run = tiny_eval(&subset, out, &[], &[]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rows = jsonl(&out.join("results.jsonl"));
    assert_eq!(rows.len(), 2, "one model x 2 detectors");
    for r in &rows {
        assert_eq!(r["model"], "badnets-s1");
        let whole: serde_json::Value = lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|w| w["model"] == r["model"] && w["detector"] == r["detector"])
            .unwrap();
        assert_same_judgement(r, &whole);
    }
    std::fs::remove_file(&subset).unwrap();
}

/// `cepa scan` with tiny_eval's settings gives the backdoored model's CEPA score and Neural
/// Cleanse's per-class masks the evaluation saved: the evaluation judges what a user runs (Neural
/// Cleanse on the images CEPA optimises, as the scan does).
fn eval_judges_what_scan_runs(zoo: &Path, eval: &Path, dir: &Path) {
    let settings = dir.join("tiny-eval.toml");
    std::fs::write(
        &settings,
        "[scan]\nper_class = 3\n[scan.cepa]\nsteps = 10\n[nc]\nsteps = 20\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cepa"))
        .args([
            "scan",
            zoo.join("badnets-s1.onnx").to_str().unwrap(),
            "--data",
        ])
        .arg(shared().join("data/mnist"))
        .args([
            "--config",
            settings.to_str().unwrap(),
            "--format",
            "json",
            "-q",
        ])
        .output()
        .expect("run cepa");
    let scan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let read = |det: &str| -> serde_json::Value {
        let path = eval.join(format!("reports/{det}/badnets-s1.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (cepa, nc) = (read("cepa"), read("nc"));
    assert_eq!(
        scan["cepa"]["score"], cepa["score"],
        "CEPA: the same images"
    );
    let l1 = |r: &serde_json::Value| -> Vec<f64> {
        r["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["l1"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(
        l1(&scan["baseline_nc"]),
        l1(&nc),
        "Neural Cleanse: the same images"
    );
    assert_eq!(scan["baseline_nc"]["images"], nc["images"]);
}

/// `cepa eval` of a tiny zoo with few steps (both detectors, every model kept), `extra` flags
/// after the others, `env` set (and no shard variable of the calling shell).
fn tiny_eval(zoo: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "eval",
        zoo.to_str().unwrap(),
        "--detector",
        "all",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "10",
        "--nc-steps",
        "20",
        "--per-class",
        "3",
        "--min-asr",
        "0",
        "-q",
    ];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cepa"));
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
        "JOB_COMPLETION_INDEX",
        "CEPA_SHARDS",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(&args)
        .envs(env.iter().copied())
        .output()
        .expect("run cepa")
}

#[test]
fn a_screened_scan_reports_its_pool_and_screen_off_turns_it_off() {
    // Screening normally starts at 20 classes; a settings file makes this 10-class model screened.
    let dir = tmp_dir("screen");
    let cfg = dir.join("screen.toml");
    std::fs::write(
        &cfg,
        "[scan.screen]\nmin_classes = 5\nsteps = 4\nmax_samples = 9\ncandidates = 2\nnull = 4\n",
    )
    .unwrap();
    let (_, screened) = quick_scan(&["--config", cfg.to_str().unwrap()]);
    let classes = screened["screen"]["classes"]
        .as_array()
        .expect("screen.classes");
    assert_eq!(classes.len(), 10);
    let roles: Vec<&str> = classes
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "candidate").count(), 2);
    assert_eq!(roles.iter().filter(|r| **r == "null").count(), 4);
    assert_eq!(roles.iter().filter(|r| **r == "screened_out").count(), 4);
    // The decision is over the 6 classes optimised fully, weighted to stand for all 10.
    assert_eq!(screened["decision"]["classes"].as_array().unwrap().len(), 6);
    assert_eq!(screened["decision"]["pool"]["classes"], 10);
    let weights: f64 = screened["decision"]["pool"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .sum();
    assert!((weights - 10.0).abs() < 1e-9, "weights sum to {weights}");
    // The most anomalous class of the decision was a candidate of the screening pass.
    let most = screened["decision"]["most_anomalous"].as_u64().unwrap() as usize;
    assert_ne!(roles[most], "screened_out");

    let (_, full) = quick_scan(&["--config", cfg.to_str().unwrap(), "--screen", "off"]);
    assert!(full.get("screen").is_none());
    assert_eq!(full["decision"]["classes"].as_array().unwrap().len(), 10);
}

#[test]
fn zoo_dataset_makes_two_digit_mnist_that_reads_back_with_100_classes() {
    let dir = tmp_dir("two-digit");
    let out = cepa(&[
        "zoo",
        "dataset",
        "two-digit-mnist",
        "--from",
        shared().join("data/mnist").to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--train",
        "300",
        "--test",
        "200",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for split in ["train", "test"] {
        let set = cepa::data::load(&dir, split.parse().unwrap()).unwrap();
        assert_eq!((set.channels, set.height, set.width), (1, 28, 56));
        assert_eq!(set.num_classes, 100);
        assert_eq!(set.len(), if split == "train" { 300 } else { 200 });
        assert_eq!(set.class_counts().iter().filter(|&&n| n > 0).count(), 100);
    }
    let bad = cepa(&[
        "zoo",
        "dataset",
        "three-digit-mnist",
        "--from",
        "x",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_error(&bad, &["unknown dataset kind", "two-digit-mnist"]);
}
