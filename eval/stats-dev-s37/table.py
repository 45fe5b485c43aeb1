"""Print each model's CEPA score and most anomalous class side by side for several `cepa eval`
output folders (read from their results.jsonl; nothing is decided here).

    python3 eval/stats-dev-s37/table.py NAME=DIR [NAME=DIR ...]
"""

import json
import sys


def load(folder):
    rows = {}
    with open(f"{folder}/results.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["detector"] == "cepa":
                rows[r["model"]] = r
    return rows


runs = [arg.split("=", 1) for arg in sys.argv[1:]]
loaded = [(name, load(folder)) for name, folder in runs]
print("| model (target) | " + " | ".join(name for name, _ in loaded) + " |")
print("|---" * (len(loaded) + 1) + "|")
for model, first in loaded[0][1].items():
    target = first["truth_target"]
    cells = []
    for _, rows in loaded:
        r = rows.get(model)
        if r is None:
            cells.append("-")
            continue
        mark = "**" if r["flagged"] else ""
        cells.append(f"{mark}{r['score']:.2f} @{r['most_anomalous']}{mark}")
    label = f"{model} ({'clean' if target is None else target})"
    print(f"| {label} | " + " | ".join(cells) + " |")
