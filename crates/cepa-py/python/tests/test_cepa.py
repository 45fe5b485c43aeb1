"""The installed wheel: the `cepa` command on PATH and the Python API, on the shipped example.

Run by crates/cepa-py/tests/wheel.rs (`cargo test`) in a fresh virtual environment that has the
wheel, numpy and pytest; CEPA_REPO names the checkout.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cepa

REPO = Path(os.environ.get("CEPA_REPO", Path(__file__).resolve().parents[4]))
EXAMPLE = REPO / "examples" / "mnist-badnets"
MODEL = EXAMPLE / "model.onnx"
IMAGES = EXAMPLE / "images"


@pytest.fixture(scope="module")
def example():
    images, labels = cepa.load_images(IMAGES)
    return images, labels


@pytest.fixture(scope="module")
def cli_report():
    """`cepa scan` of the shipped example, from the shell, as JSON."""
    exe = shutil.which("cepa")
    assert exe is not None, "the wheel did not put `cepa` on PATH"
    assert Path(exe).parent == Path(sys.executable).parent, (exe, sys.executable)
    p = subprocess.run([exe, "-q", "scan", str(MODEL), "--data", str(IMAGES), "--format", "json"],
                       capture_output=True, text=True)
    # Exit status 1: backdoor suspected.
    assert p.returncode == 1, p.stderr
    return json.loads(p.stdout)


def test_load_images_reads_the_example_folder(example):
    images, labels = example
    assert images.dtype == np.float32 and images.shape == (200, 1, 28, 28)
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_cli_on_path_flags_the_example(cli_report):
    assert cli_report["verdict"] == "backdoored"
    assert cli_report["target"] == 7
    assert cli_report["verdict_rule"] == "agree"


def test_api_on_numpy_arrays_matches_the_cli(example, cli_report, tmp_path):
    images, labels = example
    # The same pixels as uint8 (N, H, W, C), the layout a notebook most often holds.
    as_uint8 = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    report = cepa.scan(str(MODEL), as_uint8, labels, out=tmp_path / "out")
    assert report.verdict == cli_report["verdict"]
    assert report.target == cli_report["target"]
    assert report.score == pytest.approx(cli_report["score"], rel=1e-9)
    assert report.threshold == pytest.approx(cli_report["threshold"], rel=1e-12)
    assert report.to_dict()["cepa"]["score"] == pytest.approx(cli_report["cepa"]["score"], rel=1e-9)
    assert len(report.classes) == 10
    # Stage 2 ran for the flagged model: the trigger is an image-shaped array.
    assert isinstance(report.trigger, np.ndarray) and report.trigger.shape == (1, 28, 28)
    assert report.to_dict()["inversion"]["target"] == 7
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["verdict"] == report.verdict and written["score"] == report.score
    assert (tmp_path / "out" / "report.html").exists()
    assert (tmp_path / "out" / "trigger.png").exists()


def test_model_as_bytes_and_float_nchw_give_the_same_cepa_verdict(example):
    images, labels = example
    by_path = cepa.scan(str(MODEL), images, labels, verdict="cepa", invert=False, steps=40)
    by_bytes = cepa.scan(MODEL.read_bytes(), images, labels, verdict="cepa", invert=False,
                         steps=40)
    assert by_bytes.score == pytest.approx(by_path.score, rel=1e-9)
    assert by_bytes.verdict == by_path.verdict and by_bytes.verdict_rule == "cepa"
    # CEPA alone runs no Neural Cleanse.
    assert "baseline_nc" not in by_path.to_dict()


def test_scan_against_a_reference_report(example, cli_report, tmp_path):
    images, labels = example
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(cli_report))  # the example's own report, as a reference
    report = cepa.scan(str(MODEL), images, labels, verdict="cepa", invert=False, steps=40,
                       reference=ref)
    c = report.to_dict()["reference"]
    assert c["files"] == [str(ref)]
    assert len(c["classes"]) == 10
    for k, row in enumerate(c["classes"]):
        ref_index = cli_report["decision"]["classes"][k]["anomaly_index"]
        assert row["class"] == k
        assert row["reference_mean"] == pytest.approx(ref_index, rel=1e-12, abs=1e-12)
        assert row["adjusted"] == pytest.approx(row["index"] - ref_index, abs=1e-12)
    assert c["notes"][0].startswith("class ") and "reference clean scan" in c["notes"][0]
    # A reference of another class count is refused before the scan, naming the file.
    nine = tmp_path / "nine.json"
    d = dict(cli_report)
    d["decision"] = dict(d["decision"], classes=d["decision"]["classes"][:9])
    nine.write_text(json.dumps(d))
    with pytest.raises(cepa.CepaError) as e:
        cepa.scan(str(MODEL), images, labels, verdict="cepa", reference=[nine])
    assert "nine.json" in str(e.value) and "9 classes" in str(e.value)


def test_inspect_and_invert(example):
    images, labels = example
    info = cepa.inspect(str(MODEL), images, labels)
    assert info.num_classes == 10
    assert info.accuracy is not None and info.accuracy > 0.9
    assert any(layer["candidate"] for layer in info.layers)
    # Without labels there is nothing to measure accuracy against.
    assert cepa.inspect(str(MODEL), images).accuracy is None
    inv = cepa.invert(str(MODEL), images, labels, target=7, kind="mask-pattern", steps=60)
    assert inv.target == 7
    assert inv.trigger.shape == (1, 28, 28)
    assert inv.mask is not None and inv.mask.shape == (28, 28)
    assert 0.0 <= float(inv.mask.min()) and float(inv.mask.max()) <= 1.0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((5, 28), dtype=np.float32), "shape (5, 28)"),
    (np.zeros((5, 2, 28, 28), dtype=np.float32), "neither 1 or 3 channels"),
    (np.full((5, 28, 28), 3.0, dtype=np.float32), "must lie in [0, 1]"),
    (np.zeros((5, 28, 28), dtype=np.int32), "dtype int32"),
    (np.full((5, 28, 28), np.nan, dtype=np.float32), "NaN"),
])
def test_bad_images_raise_before_compute(bad, message):
    with pytest.raises(cepa.CepaError) as e:
        cepa.scan(str(MODEL), bad)
    assert message in str(e.value)


def test_wrong_image_size_names_the_sizes():
    with pytest.raises(cepa.CepaError) as e:
        cepa.scan(str(MODEL), np.zeros((4, 32, 32), dtype=np.uint8), np.zeros(4, dtype=int))
    assert "1x32x32" in str(e.value) and "1x28x28" in str(e.value)


def test_label_beyond_the_classes_raises(example):
    images, labels = example
    bad = labels.copy()
    bad[3] = 10
    with pytest.raises(cepa.CepaError) as e:
        cepa.scan(str(MODEL), images, bad)
    assert "label 10" in str(e.value) and "10 classes" in str(e.value)


def test_label_count_and_sign_are_checked(example):
    images, labels = example
    with pytest.raises(cepa.CepaError, match="does not match 200 images"):
        cepa.scan(str(MODEL), images, labels[:5])
    with pytest.raises(cepa.CepaError, match="negative"):
        cepa.scan(str(MODEL), images, -labels - 1)


def test_corrupt_model_raises_with_the_file(example, tmp_path):
    images, labels = example
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(MODEL.read_bytes()[:1000])
    with pytest.raises(cepa.CepaError) as e:
        cepa.scan(str(broken), images, labels)
    assert "cannot load model" in str(e.value) and "broken.onnx" in str(e.value)
    with pytest.raises(cepa.CepaError, match="cannot load model"):
        cepa.inspect(b"this is not an ONNX model")
    with pytest.raises(cepa.CepaError, match="not int"):
        cepa.scan(12345, images, labels)


def test_device_is_reported_and_cuda_without_the_feature_is_one_clear_error():
    info = cepa.inspect(str(MODEL), device="cpu")
    assert info["device"].startswith("cpu (flex, ")
    with pytest.raises(cepa.CepaError) as e:
        cepa.inspect(str(MODEL), device="cuda")
    assert "device cuda:0" in str(e.value) and "--features cuda" in str(e.value)
    with pytest.raises(cepa.CepaError, match="expected cpu, cuda or cuda:N"):
        cepa.inspect(str(MODEL), device="tpu")


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run(["cepa", "scan", str(tmp_path / "missing.onnx"), "--data", str(IMAGES)],
                       capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.onnx" in lines[0]


def test_ctrl_c_interrupts_a_scan():
    """SIGINT during a long scan raises KeyboardInterrupt in the caller; the scan does not finish."""
    # Python turns SIGINT into KeyboardInterrupt only when SIGINT is not ignored at start-up, and
    # a shell starting this run in the background ignores it: restore Python's own handler.
    script = (
        "import cepa, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"images, labels = cepa.load_images({str(IMAGES)!r})\n"
        "print('started', flush=True)\n"
        "try:\n"
        f"    cepa.scan({str(MODEL)!r}, images, labels, steps=100000, verdict='cepa')\n"
        "    print('finished', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    time.sleep(3)  # inside the optimisation
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, (out, err)
    assert "interrupted" in out and "finished" not in out


def test_torch_module_matches_its_exported_onnx(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (CI does not install it)")
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 10))
    rng = np.random.default_rng(0)
    images = rng.random((60, 28, 28), dtype=np.float32)
    labels = np.arange(60) % 10
    small = dict(per_class=4, holdout_per_class=2, verdict="cepa", invert=False, steps=30)
    from_module = cepa.scan(net, images, labels, **small)
    path = tmp_path / "net.onnx"
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=17,
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    try:
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          **kwargs)
    except TypeError:  # torch < 2.5
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(path), **kwargs)
    from_file = cepa.scan(str(path), images, labels, **small)
    assert from_module.verdict == from_file.verdict
    assert from_module.target == from_file.target
    assert from_module.score == pytest.approx(from_file.score, rel=1e-6)


def test_the_readme_notebook_example_runs(monkeypatch):
    """The Python example of README.md, as written, from the checkout's root."""
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n", text.index("In a notebook:")) + len("```python\n")
    code = text[start:text.index("```", start)]
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    report = scope["report"]
    assert repr(report).startswith("Report(verdict='backdoored', target=7")
    assert scope["trigger"].shape == (1, 28, 28)
