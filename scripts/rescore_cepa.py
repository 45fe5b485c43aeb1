#!/usr/bin/env python3
"""Re-decide the CEPA lines of an eval's results.jsonl from the saved full reports, with the
verdict rule of the current defaults (score = largest mean anomaly index, threshold 1.5), so that
scans run before the rule changed need not be rerun (the optimisation is unchanged; only the
decision is recomputed from the per-class indices every report keeps). The old file is kept as
results.jsonl.bak. Then rerun the same `cepa eval` command: everything is done, so it only
rewrites the tables.

    python3 scripts/rescore_cepa.py EVAL_DIR [THRESHOLD]
"""
import json
import shutil
import sys


def main(out, threshold=1.5):
    path = f"{out}/results.jsonl"
    shutil.copy(path, path + ".bak")
    lines = [json.loads(l) for l in open(path) if l.strip()]
    for o in lines:
        if o["detector"] != "cepa":
            continue
        d = json.load(open(f"{out}/reports/cepa/{o['model']}.json"))["decision"]
        best = max(d["classes"], key=lambda c: c["mean_index"])
        o["score"] = best["mean_index"]
        o["most_anomalous"] = best["class"]
        o["flagged"] = best["mean_index"] > threshold
        o["target"] = best["class"] if o["flagged"] else None
        o["threshold"] = threshold
    with open(path, "w") as f:
        for o in lines:
            f.write(json.dumps(o) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.5)
