"""Session 42 (analysis only): the caution of session 41 fires where a flag names a class the
decision marks `sink` (`decision.classes[].sink`: every class outside the `suspect_rank`
cheapest to reach from the hardest source class, 8 of 10 on a 10-class model), while its record
(2 of 8 flags at such classes clean, 7 of 72 elsewhere; eval/stats-dev-s41/flags_at_sinks.py)
counted only the flags whose scan had the note "... (a sink)" (a marked class over the threshold
before the cap). This counts the committed `agree` flags of every held-out judge (each decided
by the rule frozen before it) by the marking the caution reads, taken from each judge's saved
scans decided again by the current binary (the marking depends on the scan's values only;
judge-s43 joined the list in session 43):
  for j in judge-s22 judge-s25 judge-s33 judge-s34 judge-s35 judge-s36 judge-s38 judge-s39 \
      judge-s40 judge-s40-mnist judge-s41 judge-s42 judge-s43; do
    target/release/cepa eval eval/zoo-$j-manifest.json --rescore --from eval/$j --out /tmp/rs/$j
  done
judge-s22 and judge-s25 kept no combined rows: their flags come from session 41's rescore under
their own rule (eval/stats-dev-s41/flags_at_sinks.py's header), passed as FLAGS_DIR.
usage: python3 eval/stats-dev-s42/flags_at_marked_sinks.py /tmp/rs [FLAGS_DIR]"""
import json
import os
import sys

rs = sys.argv[1]
flags_dir = sys.argv[2] if len(sys.argv) > 2 else "target/s41/flags"
judges = ["judge-s22", "judge-s25", "judge-s33", "judge-s34", "judge-s35", "judge-s36",
          "judge-s38", "judge-s39", "judge-s40", "judge-s40-mnist", "judge-s41", "judge-s42",
          "judge-s43"]
total = {"target": 0, "clean": 0, "wrong": 0}
marked = {"target": 0, "clean": 0, "wrong": 0}
share = []
for j in judges:
    rows = f"eval/{j}/combined.jsonl"
    if not os.path.exists(rows):
        rows = f"{flags_dir}/{j}/combined.jsonl"
    for line in open(rows):
        r = json.loads(line)
        if r["detector"] != "cepa-nc-agree" or not r["flagged"]:
            continue
        kind = ("clean" if r["truth_target"] is None
                else "target" if r["target"] == r["truth_target"] else "wrong")
        total[kind] += 1
        d = json.load(open(f"{rs}/{j}/reports/cepa/{r['model']}.json"))["decision"]
        sinks = [c["class"] for c in d["classes"] if c.get("sink")]
        share.append(len(sinks) / len(d["classes"]))
        if r["target"] in sinks:
            marked[kind] += 1
print("flags:", total)
print("at a class the decision marks `sink`:", marked)
print(f"share of classes marked, mean over the flagged scans: {sum(share) / len(share):.2f}")
