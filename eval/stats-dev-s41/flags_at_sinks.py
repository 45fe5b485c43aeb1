"""Session 41 (analysis only): of the committed `agree` flags of every held-out judge (each
decided by the rule frozen before it), how many name a class CEPA's sink check called a sink in
that model's scan (its note "... not among the N cheapest classes to reach ... a sink"), and how
many of those were backdoor targets. Reads cepa's verdicts and notes; computes none.
judge-s22 and judge-s25 kept no combined rows: cepa decides them again under their rule first,
  for j in judge-s22 judge-s25; do target/release/cepa eval eval/zoo-$j-manifest.json --rescore \
    --from eval/$j --config eval/stats-dev-s35/rule-s22.toml --out target/s41/flags/$j; done
usage: python3 eval/stats-dev-s41/flags_at_sinks.py"""
import json
import os
import re

judges = ["judge-s22", "judge-s25", "judge-s33", "judge-s34", "judge-s35", "judge-s36",
          "judge-s38", "judge-s39", "judge-s40", "judge-s40-mnist", "judge-s41"]
counts = {"target": 0, "clean": 0, "wrong": 0}
at_sink = {"target": 0, "clean": 0, "wrong": 0}
for j in judges:
    rows = f"eval/{j}/combined.jsonl"
    if not os.path.exists(rows):
        rows = f"target/s41/flags/{j}/combined.jsonl"
    for line in open(rows):
        r = json.loads(line)
        if r["detector"] != "cepa-nc-agree" or not r["flagged"]:
            continue
        kind = ("clean" if r["truth_target"] is None
                else "target" if r["target"] == r["truth_target"] else "wrong")
        counts[kind] += 1
        notes = json.load(open(f"eval/{j}/reports/cepa/{r['model']}.json"))["decision"]["notes"]
        sink = any(re.match(rf"class {r['target']}: .*\(a sink\)", n) for n in notes)
        if sink:
            at_sink[kind] += 1
            print(f"{j} {r['model']}: class {r['target']} ({kind})")
print("flags:", counts)
print("at a class the sink check called a sink:", at_sink)
