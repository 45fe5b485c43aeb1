#!/usr/bin/env python3
#   python3 eval/stats-dev-s36/align.py EVAL_DIR MANIFEST   (e.g. eval/stats-dev-s36/cepa-scans eval/stats-dev-s36/manifest.json)
"""Session 36: class_alignment per model from saved CEPA reports: the true target's rank (smallest first) and
index per layer, the largest index and its class; and the same for the mean index."""
import json, sys, glob, os
d, manifest = sys.argv[1], sys.argv[2]
man = {m["id"]: m for m in json.load(open(manifest))["models"]}
rows = []
for f in sorted(glob.glob(f"{d}/reports/cepa/*.json")):
    mid = os.path.basename(f)[:-5]
    if mid not in man:
        continue
    e = man[mid]
    if e["attack"] != "clean" and (e.get("attack_success_rate") or 0) < 0.9:
        continue
    r = json.load(open(f))
    classes = r["decision"]["classes"]
    t = e.get("target")
    layers = sorted({s["layer"] for c in classes for s in c["statistics"] if s["statistic"] == "class_alignment"})
    out = [mid.replace("fashion-preact-", "").replace("cifar10-", ""), str(t) if t is not None else "-"]
    for l in layers:
        v = {c["class"]: next(s for s in c["statistics"] if s["statistic"] == "class_alignment" and s["layer"] == l) for c in classes}
        order = sorted(v, key=lambda k: v[k]["value"])
        top = max(v, key=lambda k: v[k]["anomaly_index"])
        cell = f"{l}: max {v[top]['anomaly_index']:.2f}@{top}"
        if t is not None:
            cell += f", target {v[t]['value']:.3f} rank {order.index(t)+1} idx {v[t]['anomaly_index']:.2f}"
        out.append(cell)
    mt = max(classes, key=lambda c: c["mean_index"])
    out.append(f"mean {mt['mean_index']:.2f}@{mt['class']}")
    print(" | ".join(out))
