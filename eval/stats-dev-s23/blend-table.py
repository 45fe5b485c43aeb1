"""Session 23, description only (no verdict): the MAD anomaly index of `margin_blend` (small
tail) at each backdoored model's true target (attack success >= 0.9) and the largest over each
clean model's classes, per dataset, from eval/stats-dev-s23/blend.jsonl and the pool's manifest.
    python3 eval/stats-dev-s23/blend-table.py
"""
import json

import numpy as np

man = {x["id"]: x for x in json.load(open("target/pool-s23/manifest.json"))["models"]}
vals = {}
for line in open("eval/stats-dev-s23/blend.jsonl"):
    r = json.loads(line)
    vals.setdefault(r["model"], {})[r["class"]] = r["margin_blend"]


def index(v):
    v = np.asarray(v, float)
    med = np.median(v)
    mad = 1.4826 * np.median(abs(v - med))
    if mad <= 0:
        mad = 1.2533 * np.mean(abs(v - med))
    return (med - v) / max(mad, 1e-12)


for ds in ["cifar10", "mnist", "fashion-mnist"]:
    clean, bd = [], []
    for n, c in sorted(vals.items()):
        x = man[n]
        if x["dataset"] != ds:
            continue
        i = index([c[k] for k in range(len(c))])
        if x["attack"] == "clean":
            clean.append((round(float(i.max()), 2), int(i.argmax()), n))
        elif (x.get("attack_success_rate") or 0) >= 0.9:
            t = x["target"]
            bd.append((round(float(i[t]), 2), int(i.argmax()) == t, n))
    cmax = max(c[0] for c in clean)
    print(f"## {ds}: clean largest {sorted(clean, reverse=True)[:3]}")
    print(f"   backdoored above it: {sum(b[0] > cmax for b in bd)} of {len(bd)}, target first {sum(b[1] for b in bd)}")
    for b in sorted(bd, reverse=True):
        print("  ", b)
