"""Session 41 (analysis only): every saved CEPA scan under eval/ in which a class the sink check
marked ("... (a sink), not a trigger's target") was raised again by a statistic that counts on
its own ("... has anomaly index I, which counts on its own ... raised from 0.00 to R"), with that
index and whether the class is the model's backdoor target (from the folder's results.jsonl).
Reads notes cepa wrote; decides nothing.
usage: python3 eval/stats-dev-s41/raised_sinks.py"""
import glob
import json
import os
import re

truth = {}
for res in glob.glob("eval/**/results.jsonl", recursive=True):
    for line in open(res):
        r = json.loads(line)
        truth[(os.path.dirname(res), r["model"])] = r["truth_target"]
seen = {}
for path in sorted(glob.glob("eval/**/reports/cepa/*.json", recursive=True)):
    folder = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    model = os.path.basename(path)[:-5]
    if (folder, model) not in truth:
        continue
    notes = json.load(open(path))["decision"]["notes"]
    for n in notes:
        m = re.match(r"class (\d+): (\w+) \S+ has anomaly index ([\d.]+), which counts on its own"
                     r".*raised from 0\.00", n)
        if not m:
            continue
        c = int(m.group(1))
        if not any(re.match(rf"class {c}: .*\(a sink\)", x) for x in notes):
            continue
        kind = "target" if truth[(folder, model)] == c else (
            "clean" if truth[(folder, model)] is None else "other class")
        # One line per model and class (rebuilt zoos and rescored copies repeat scans).
        seen[(model, c)] = (kind, float(m.group(3)), m.group(2), folder)
for (model, c), (kind, ix, stat, folder) in sorted(seen.items(), key=lambda x: (x[1][0], x[1][1])):
    print(f"{kind:12s} {ix:6.2f} {stat} class {c} {model} ({folder})")
