"""Session 41 (analysis only, nothing chosen): margin_blend's anomaly index at the class the
committed `agree` rows flag, over every eval folder whose CEPA scans carry margin_blend.
Reads the verdicts cepa wrote (combined.jsonl); computes none.
usage: python3 eval/stats-dev-s41/margin_blend_at_flag.py"""
import glob
import json
import os

tp, fp = [], []
for res in sorted(glob.glob("eval/**/combined.jsonl", recursive=True)):
    d = os.path.dirname(res)
    for line in open(res):
        r = json.loads(line)
        if r["detector"] != "cepa-nc-agree" or not r["flagged"]:
            continue
        path = f"{d}/reports/cepa/{r['model']}.json"
        if not os.path.exists(path):
            continue
        mb = {c["class"]: s["anomaly_index"]
              for c in json.load(open(path))["decision"]["classes"]
              for s in c["statistics"] if s["statistic"] == "margin_blend"}
        if r["target"] not in mb:
            continue
        v = mb[r["target"]]
        rank = sorted(mb.values(), reverse=True).index(v) + 1
        row = (d, r["model"], r["target"], v, rank)
        if r["truth_target"] is None:
            fp.append(row)
        elif r["truth_target"] == r["target"]:
            tp.append(row)
print(f"flagged at the true target: {len(tp)}; ranked first by margin_blend: "
      f"{sum(x[4] == 1 for x in tp)}; index under 1.1: {sum(x[3] < 1.1 for x in tp)}")
print(f"clean models flagged: {len(fp)}")
for d, m, t, v, rank in fp:
    print(f"  {d} {m}: class {t}, margin_blend index {v:.2f}, rank {rank}")
