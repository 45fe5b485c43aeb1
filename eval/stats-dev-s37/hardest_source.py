"""Session 37, analysis only (no verdict): does the hardest source class single out the target?

For every class of every saved CEPA scan, `source_delta` is the mean perturbation size per
source class. A trigger should carry every source cheaply; a class that is only easy to reach
(a "sink") should be cheap from its look-alike classes only. Prints, per model, the largest
MAD index (small is suspicious) of three readings across classes: the mean over sources, the
largest (hardest source) and the 7th smallest of 9, with the target's index.

    python3 eval/stats-dev-s37/hardest_source.py SCANS_DIR MANIFEST

(the models of MANIFEST, a zoo's manifest.json, that SCANS_DIR has a scan of).
"""

import json
import os
import statistics
import sys


def indices(values):
    med = statistics.median(values)
    mad = statistics.median([abs(v - med) for v in values]) * 1.4826
    return [(med - v) / mad for v in values]


scans, manifest = sys.argv[1], sys.argv[2]
with open(manifest) as f:
    models = json.load(f)["models"]
for meta in models:
    name = meta["id"] + ".json"
    if not os.path.exists(f"{scans}/reports/cepa/{name}"):
        continue
    target = meta["target"] if meta["attack"] not in (None, "clean") else None
    with open(f"{scans}/reports/cepa/{name}") as f:
        classes = json.load(f)["decision"]["classes"]
    per = [sorted(x for x in c["source_delta"] if x is not None) for c in classes]
    readings = {
        "mean": [statistics.mean(p) for p in per],
        "hardest": [p[-1] for p in per],
        "7th": [p[min(6, len(p) - 1)] for p in per],
    }
    cells = []
    for label, values in readings.items():
        ix = indices(values)
        top = max(range(len(ix)), key=lambda i: ix[i])
        cell = f"{label} {ix[top]:.2f} @{top}"
        if target is not None:
            cell += f" (target {ix[target]:.2f})"
        cells.append(cell)
    print(f"{name[:-5]:20s} target {target} | " + " | ".join(cells))
