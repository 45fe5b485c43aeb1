"""Compare decision rules on saved scan reports (scripts/eval_real.sh with SAVE_DIR=DIR).

python3 scripts/rules_real.py DIR   -> markdown table: per scan, the most anomalous class and its
index for each single statistic, and the verdicts of the combined rules.
"""
import glob
import json
import statistics as st
import sys

TRUTH = {"badnets-pytorch-mnist": 1, "badnets-pytorch-cifar10": 1,
         "cs612-clean-mnist-mlp": None, "cs612-clean-cifar10-cnn": None}


def top(values):
    i = max(range(len(values)), key=lambda k: values[k])
    return i, values[i]


rows = []
for path in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
    r = json.load(open(path))
    name = path.split("/")[-1].rsplit("-seed", 1)[0]
    seed = path.rsplit("seed", 1)[1].split(".")[0]
    classes = r["decision"]["classes"]
    layers = r["layers"]
    cols = {}
    for j, s in enumerate(classes[0]["statistics"]):
        label = s["statistic"] + (f"@L{layers.index(s['layer']) + 1}" if s["layer"] else "")
        cols[label] = [c["statistics"][j]["anomaly_index"] for c in classes]
    mean = [c["mean_index"] for c in classes]
    final = [c["anomaly_index"] for c in classes]
    rows.append((name, seed, cols, top(mean), top(final)))

labels = list(rows[0][2].keys())
print("| model | seed | " + " | ".join(labels) + " | mean of chosen | combined (final) |")
print("|---|---|" + "---|" * (len(labels) + 2))
for name, seed, cols, (mi, mv), (fi, fv) in rows:
    cells = []
    for label in labels:
        i, v = top(cols[label])
        cells.append(f"{i} ({v:.1f})" + ("" if TRUTH[name] in (None, i) else " *wrong*"))
    truth = TRUTH[name]
    print(f"| {name} ({'target ' + str(truth) if truth is not None else 'clean'}) | {seed} | " + " | ".join(cells)
          + f" | {mi} ({mv:.2f}) | {fi} ({fv:.2f}) |")
print("\nCells: most anomalous class (its index). *wrong*: a backdoored model's most anomalous class is not "
      "the target. Verdict = combined index > 2.")
