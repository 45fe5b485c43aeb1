#!/usr/bin/env python3
"""Compare verdict rules offline on saved CEPA scan reports (EVALUATION.md, "The verdict rule,
session 4"): each rule is a list of (statistic, tail) pairs, the per-layer MAD indices computed
exactly as `cepa::detect::verdict::decide` does (scripts/rescore_cepa.py), optionally capped,
then averaged; the score is the largest class mean.

    python3 scripts/rule_variants.py MANIFEST.json EVAL_DIR [EVAL_DIR ...] [--real REPORTS_DIR]

EVAL_DIR: a `cepa eval --out` folder (reports/cepa/ID.json; truth from the manifest; backdoored
models under attack success 0.9 are left out). REPORTS_DIR: the real-model scans
(eval/reports-default, `NAME-seedS.json`; badnets-* are backdoored with target 1).
"""
import glob
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from rescore_cepa import RELATIVE_FLOOR, anomaly_indices, value  # noqa: E402

RULES = {
    "delta, dispersion, transfer (session 2)": [("delta_norm", "small"), ("dispersion", "small"), ("transfer", "large")],
    "delta, embed (either way), transfer": [("delta_norm", "small"), ("embed_norm", "both"), ("transfer", "large")],
    "the same, indices capped at 3 (default)": ([("delta_norm", "small"), ("embed_norm", "both"), ("transfer", "large")], 3.0),
    "delta, embed (small), transfer": [("delta_norm", "small"), ("embed_norm", "small"), ("transfer", "large")],
    "delta, gain = embed/delta (large), transfer": [("delta_norm", "small"), ("gain", "large"), ("transfer", "large")],
}


def stat_value(c, stat, layer):
    if stat == "gain":
        return value(c, "embed_norm", layer) / value(c, "delta_norm", None)
    return value(c, stat, None if stat == "delta_norm" else layer)


def decide(report, spec, cap=None):
    classes, layers = report["decision"]["classes"], report["layers"]
    k = len(classes)
    comb, terms = [0.0] * k, 0
    for stat, tail in spec:
        for layer in [None] if stat == "delta_norm" else layers:
            raw = [stat_value(c, stat, layer) for c in classes]
            ok = [c["feasible"] and math.isfinite(v) for c, v in zip(classes, raw)]
            vals = [v for v, o in zip(raw, ok) if o]
            if len(vals) >= 3:
                sub = anomaly_indices(vals, tail, RELATIVE_FLOOR.get(stat, 0.0))
                least, it = min(sub), iter(sub)
                idx = [next(it) if o else least for o in ok]
            else:
                idx = [0.0] * k
            if cap:
                idx = [min(x, cap) for x in idx]
            comb = [a + b for a, b in zip(comb, idx)]
            terms += 1
    comb = [c / terms for c in comb]
    best = max(range(k), key=lambda i: (comb[i], -i))
    return comb[best], classes[best]["class"]


def main(argv):
    real = None
    if "--real" in argv:
        i = argv.index("--real")
        real = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    manifest, dirs = argv[0], argv[1:]
    man = {m["id"]: m for m in json.load(open(manifest))["models"]}
    scans = []  # (truth target or None, report)
    for d in dirs:
        for f in sorted(glob.glob(f"{d}/reports/cepa/*.json")):
            m = man[os.path.basename(f)[:-5]]
            if m["attack"] != "clean" and m["attack_success_rate"] < 0.9:
                continue
            scans.append((m["target"], json.load(open(f))))
    if real:
        for f in sorted(glob.glob(f"{real}/*.json")):
            scans.append((1 if "badnets" in os.path.basename(f) else None, json.load(open(f))))
    print(f"{sum(t is None for t, _ in scans)} clean and {sum(t is not None for t, _ in scans)} backdoored scans\n")
    print("| rule | clean > 1.5 | highest clean | AUC | flagged with the right target |")
    print("|---|---|---|---|---|")
    for name, rule in RULES.items():
        spec, cap = rule if isinstance(rule, tuple) else (rule, None)
        out = [(t, *decide(r, spec, cap)) for t, r in scans]
        clean = [s for t, s, _ in out if t is None]
        bd = [s for t, s, _ in out if t is not None]
        auc = sum((p > n) + 0.5 * (p == n) for p in bd for n in clean) / (len(bd) * len(clean))
        right = sum(1 for t, s, c in out if t is not None and s > 1.5 and c == t)
        print(f"| {name} | {sum(s > 1.5 for s in clean)}/{len(clean)} | {max(clean):.2f} | {auc:.3f} | {right}/{len(bd)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
