#!/usr/bin/env python3
"""What the true trigger of a zoo BadNets model does inside the network, to set beside what CEPA's
stage 1 found for each class (EVALUATION.md, CIFAR-10 BadNets).

Stamps the model's true patch on 10 test images of each non-target class (the last 10 of each
class, not the images a scan optimises on) and prints, at every layer, the consensus
`||mu|| = ||mean_n Delta_n||` and the dispersion `mean_n ||Delta_n - mu||^2 / ||mu||^2` of the
embedded perturbations `Delta_n = g(x_n + trigger) - g(x_n)`, the statistics CEPA computes for its
own perturbations; with an eval folder, also the values the scan reported per class at its layers.
Uses onnxruntime (forward passes only) and the CIFAR-10 binary test batch.

    python3 scripts/true_trigger_stats.py ZOO_DIR MODEL_ID [EVAL_DIR]
"""
import gzip
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def cifar_test(data_dir):
    path = f"{data_dir}/test_batch.bin"
    raw = gzip.open(path + ".gz").read() if not __import__("os").path.exists(path) else open(path, "rb").read()
    raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255, raw[:, 0].astype(int)


def main(zoo, mid, eval_dir=None):
    entry = next(m for m in json.load(open(f"{zoo}/manifest.json"))["models"] if m["id"] == mid)
    a = entry["params"]["attack"]
    if a["kind"] != "badnets" or a.get("placement", "fixed") != "fixed":
        sys.exit(f"{mid}: only fixed-place BadNets models")
    images, labels = cifar_test(entry["data_dir"])
    t = entry["target"]
    idx = [i for c in range(10) if c != t for i in np.where(labels == c)[0][-10:]]
    x = images[idx]
    xt = x.copy()
    r, c, p = a["row"], a["col"], a["patch"]
    xt[:, :, r:r + p, c:c + p] = a["value"]
    m = onnx.load(f"{zoo}/{entry['path']}")
    names = [n.output[0] for n in m.graph.node]
    outputs = {o.name for o in m.graph.output}
    for n in names:
        if n not in outputs:
            m.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    clean = dict(zip(outs, s.run(None, {inp: x})))
    trig = dict(zip(outs, s.run(None, {inp: xt})))
    logits = trig[entry_output(m)]
    print(f"{mid}: target {t}, patch {p}x{p} at ({r}, {c}); on these {len(x)} images the patch sends "
          f"{(logits.argmax(1) == t).mean():.2f} to the target, mean ||delta||_2 "
          f"{np.linalg.norm((xt - x).reshape(len(x), -1), axis=1).mean():.2f}")
    scan = None
    if eval_dir:
        scan = json.load(open(f"{eval_dir}/reports/cepa/{mid}.json"))
    print("| layer | true trigger mu | true trigger dispersion | scan: target's mu, dispersion | scan: other classes' mu, dispersion (median) |")
    print("|---|---|---|---|---|")
    for n in names:
        d = (trig[n] - clean[n]).reshape(len(x), -1)
        mu = d.mean(0)
        disp = ((d - mu) ** 2).sum(1).mean() / (mu ** 2).sum()
        cells = ["", ""]
        if scan and n in scan["layers"]:
            def stat(cls, name):
                return next(v["value"] for v in cls["statistics"] if v["statistic"] == name and v["layer"] == n)
            classes = scan["decision"]["classes"]
            tc = classes[t]
            others = [c for c in classes if c["class"] != t]
            med = lambda vals: float(np.median(vals))
            cells = [
                f"{stat(tc, 'mu_norm'):.3g}, {stat(tc, 'dispersion'):.3g}",
                f"{med([stat(c, 'mu_norm') for c in others]):.3g}, {med([stat(c, 'dispersion') for c in others]):.3g}",
            ]
        print(f"| {n} | {np.linalg.norm(mu):.3g} | {disp:.3g} | {cells[0]} | {cells[1]} |")


def entry_output(m):
    return m.graph.output[0].name


if __name__ == "__main__":
    main(*sys.argv[1:4])
