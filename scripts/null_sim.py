#!/usr/bin/env python3
"""How much of a screened scan's difference from the full scan is its null sample (issue 16).

A screened scan runs the full optimisation on a pool of classes (candidates and a weighted null
sample) and decides on those; the full scan decides on every class. Given a screened eval folder
(for the screening ranks) and a full one (for every class's fully optimised values), this writes,
per null size N, an eval folder whose saved CEPA scans keep only the pool a screened scan with
`[scan.screen] null = N` would have optimised, with its weights, taken from the FULL scan's
values. `cepa eval --rescore --from` on that folder then gives the screened decision with the
optimisation noise of the pool classes removed: what remains is the null estimate alone.

    python3 scripts/null_sim.py SCREENED FULL OUT 10 20
    cepa eval ZOO --rescore --from OUT/null-10 --out OUT/null-10-decided

It computes no verdict itself; the pool rule is `pool_from_screen` of crates/cepa/src/detect/scan.rs.
"""

import json
import math
import shutil
import sys
from pathlib import Path


def pool_from_screen(indices, candidates, null):
    order = sorted(range(len(indices)), key=lambda c: (-indices[c], c))
    m = min(candidates, len(order))
    rest = order[m:]
    n = min(null, len(rest))
    classes, weights = order[:m], [1.0] * m
    for j in range(n):
        pos = math.floor((j + 0.5) * len(rest) / n)
        classes.append(rest[min(pos, len(rest) - 1)])
        weights.append(len(rest) / n)
    return classes, weights


def main():
    screened, full, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]] or [10]
    lines = [
        line
        for line in (full / "results.jsonl").read_text().splitlines()
        if line.strip() and json.loads(line)["detector"] == "cepa"
    ]
    for n in sizes:
        folder = out / f"null-{n}"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "reports" / "cepa").mkdir(parents=True)
        shutil.copy(full / "settings.json", folder / "settings.json")
        (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
        for line in lines:
            model = json.loads(line)["model"]
            s = json.loads((screened / "reports" / "cepa" / f"{model}.json").read_text())
            f = json.loads((full / "reports" / "cepa" / f"{model}.json").read_text())
            scr = s["screen"]
            cands = scr["config"]["candidates"]
            indices = [c["index"] for c in sorted(scr["classes"], key=lambda c: c["class"])]
            classes, weights = pool_from_screen(indices, cands, n)
            by_class = {c["class"]: c for c in f["decision"]["classes"]}
            f["decision"]["classes"] = [by_class[c] for c in classes]
            f["decision"]["pool"] = {"classes": len(indices), "weights": weights}
            (folder / "reports" / "cepa" / f"{model}.json").write_text(json.dumps(f))
        print(folder)


if __name__ == "__main__":
    main()
