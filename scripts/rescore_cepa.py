#!/usr/bin/env python3
"""Re-decide the CEPA lines of an eval's results.jsonl from the saved full reports with the
current default rule, so that scans run before the rule changed need not be rerun (the
optimisation is unchanged; only the decision is recomputed from the per-class values every report
keeps). The rule is `cepa::detect::verdict::decide` with the default `DecisionConfig`, written
again here:

- statistics delta_norm (small is suspicious), embed_norm at each layer (either way; derived
  from the saved mu_norm and dispersion as sqrt(mu^2 (1 + dispersion)) when a report predates it)
  and transfer at each layer (large);
- one MAD anomaly index per statistic and layer over the feasible classes (infeasible classes get
  the smallest index), each capped at 3, averaged into the class's combined index; score = the
  largest, threshold 1.5, raised by sqrt(ln K / ln 10) for K > 10 classes
  (`DecisionConfig::threshold_for`).

The old file is kept as results.jsonl.bak; `settings.json` gets the rule's statistics and cap
(the saved per-model reports keep the decision they were made with). Then rerun the same
`cepa eval` command: everything is done, so it only rewrites the tables.

    python3 scripts/rescore_cepa.py EVAL_DIR [THRESHOLD]
    python3 scripts/rescore_cepa.py --report REPORT.json   # print one report's re-decision
"""
import json
import math
import shutil
import sys

MAD_TO_SIGMA = 1.4826
MEAN_ABS_DEV_TO_SIGMA = 1.2533
SCALE_FLOOR = 1e-12
TAILS = {"delta_norm": "small", "embed_norm": "both", "transfer": "large"}
# Scale floor, as a fraction of the median (verdict.rs `Statistic::relative_floor`).
RELATIVE_FLOOR = {"embed_norm": 0.05}
INDEX_CAP = 3.0
REFERENCE_CLASSES = 10


def threshold_for(threshold, k, reference=REFERENCE_CLASSES):
    """The threshold for a model of k classes (verdict.rs `class_factor`; reference 0: off)."""
    if reference < 2 or k <= reference:
        return threshold
    return threshold * math.sqrt(math.log(k) / math.log(reference))


def median(v):
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def anomaly_indices(values, tail, relative=0.0):
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    fill = {"large": min(finite), "small": max(finite), "both": median(finite)}[tail]
    clean = [v if math.isfinite(v) else fill for v in values]
    centre = median(clean)
    raw_mad = median([abs(v - centre) for v in clean])
    if raw_mad > 0:
        scale = MAD_TO_SIGMA * raw_mad
    else:
        mean_abs = sum(abs(v - centre) for v in clean) / len(clean)
        if mean_abs <= 0:
            return [0.0] * len(values)
        scale = MEAN_ABS_DEV_TO_SIGMA * mean_abs
    scale = max(scale, SCALE_FLOOR * max(abs(centre), 1.0), relative * abs(centre))
    return [
        {"large": v - centre, "small": centre - v, "both": abs(v - centre)}[tail] / scale
        for v in clean
    ]


def value(c, stat, layer):
    """A class's saved value of `stat` at `layer` (None for the input-space delta_norm)."""
    get = lambda name: next(
        (s["value"] for s in c["statistics"] if s["statistic"] == name and s["layer"] == layer),
        None,
    )
    v = get(stat)
    if v is None and stat == "embed_norm":
        mu, disp = get("mu_norm"), get("dispersion")
        v = math.sqrt(mu * mu * (1.0 + disp))
    return float("nan") if v is None else v


def class_indices(report):
    """Every class's combined index of a saved scan report under the default rule."""
    classes = report["decision"]["classes"]
    layers = report["layers"]
    k = len(classes)
    combined = [0.0] * k
    terms = 0
    for stat, tail in TAILS.items():
        for layer in [None] if stat == "delta_norm" else layers:
            raw = [value(c, stat, layer) for c in classes]
            if all(math.isnan(v) for v in raw):
                continue
            ok = [c["feasible"] and math.isfinite(v) for c, v in zip(classes, raw)]
            vals = [v for v, o in zip(raw, ok) if o]
            if len(vals) >= 3:
                sub = anomaly_indices(vals, tail, RELATIVE_FLOOR.get(stat, 0.0))
                least = min(sub)
                it = iter(sub)
                idx = [next(it) if o else least for o in ok]
            else:
                idx = [0.0] * k
            combined = [a + min(b, INDEX_CAP) for a, b in zip(combined, idx)]
            terms += 1
    return [c / terms for c in combined]


def decide(report):
    """(score, most anomalous class) of a saved scan report under the default rule."""
    combined = class_indices(report)
    best = max(range(len(combined)), key=lambda i: (combined[i], -i))
    return combined[best], report["decision"]["classes"][best]["class"]


def main(out, threshold=1.5):
    path = f"{out}/results.jsonl"
    shutil.copy(path, path + ".bak")
    lines = [json.loads(l) for l in open(path) if l.strip()]
    settings = f"{out}/settings.json"
    try:
        reference = json.load(open(settings))["scan"]["decision"].get("reference_classes", REFERENCE_CLASSES)
    except FileNotFoundError:
        reference = REFERENCE_CLASSES
    for o in lines:
        if o["detector"] != "cepa":
            continue
        report = json.load(open(f"{out}/reports/cepa/{o['model']}.json"))
        score, best = decide(report)
        o["score"] = score
        o["most_anomalous"] = best
        o["threshold"] = threshold_for(threshold, len(report["decision"]["classes"]), reference)
        o["flagged"] = score > o["threshold"]
        o["target"] = best if o["flagged"] else None
    with open(path, "w") as f:
        for o in lines:
            f.write(json.dumps(o) + "\n")
    try:
        kept = json.load(open(settings))
    except FileNotFoundError:
        return
    decision = kept["scan"]["decision"]
    decision["statistics"] = list(TAILS)
    decision["index_cap"] = INDEX_CAP
    decision["threshold"] = threshold
    with open(settings, "w") as f:
        f.write(json.dumps(kept, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        print("score %.6f class %d" % decide(json.load(open(sys.argv[2]))))
    else:
        main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.5)
