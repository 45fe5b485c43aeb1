#!/usr/bin/env python3
"""How the largest of K clean class indices grows with K (EVALUATION.md, "GTSRB-32"): pool the
combined index of every class of the clean scans (default rule, `rescore_cepa.class_indices`),
draw K of them at random many times, and print quantiles of the largest, for K = 10, 43, 100.
The ratio of the medians is what `DecisionConfig::reference_classes` scales the threshold by.

    python3 scripts/class_count_null.py eval/zoo-standard-manifest.json eval/standard-mnist \\
        eval/standard-cifar [eval/standard-fashion] --real eval/reports-default
"""
import glob
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from rescore_cepa import class_indices  # noqa: E402


def main(argv):
    real = None
    if "--real" in argv:
        i = argv.index("--real")
        real, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    man = {m["id"]: m for m in json.load(open(argv[0]))["models"]}
    reports = [
        f
        for d in argv[1:]
        for f in sorted(glob.glob(f"{d}/reports/cepa/*.json"))
        if man[os.path.basename(f)[:-5]]["attack"] == "clean"
    ]
    if real:
        reports += [f for f in sorted(glob.glob(f"{real}/*.json")) if "clean" in os.path.basename(f)]
    pool, maxima = [], []
    for f in reports:
        c = class_indices(json.load(open(f)))
        pool += c
        maxima.append(max(c))
    maxima.sort()
    print(f"{len(reports)} clean scans, {len(pool)} class indices; their largest: "
          f"{maxima[0]:.2f}-{maxima[-1]:.2f}, median {maxima[len(maxima) // 2]:.2f}")
    rng = random.Random(0)
    medians = {}
    for k in (10, 43, 100):
        ms = sorted(max(rng.choice(pool) for _ in range(k)) for _ in range(20000))
        q = lambda p: ms[int(p * len(ms))]
        medians[k] = q(0.5)
        print(f"K = {k:3d}: largest of K drawn, median {q(0.5):.2f}, q90 {q(0.9):.2f}, q95 {q(0.95):.2f}")
    print(f"median ratio 43/10: {medians[43] / medians[10]:.2f}, 100/10: {medians[100] / medians[10]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
