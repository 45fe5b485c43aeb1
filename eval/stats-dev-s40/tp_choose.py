"""Session 40: choose [verdict] stimulation_positions_threshold (TP) by leave one dataset out.

Reads the `cepa-nc-agree` rows that `cepa eval --rescore` wrote for every TP of the grid
(tp-lodo.sh) and computes no verdict. The criterion, written before any fold was looked at:
on the datasets a fold chooses on, keep the TPs that flag no clean model the rule without the
reading (TP 0) does not flag; among them the one that finds the most backdoors at their targets;
among those, the largest TP (the farthest from the clean models' readings). Then that TP's
result on the dataset left out, beside TP 0's.
usage: python3 tp_choose.py WORKDIR
"""
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
grid = sorted({float(p.name[len("cifar-tp"):]) for p in work.glob("cifar-tp*") if p.is_dir()})


def rows(tp):
    out = {}
    for folder in sorted(work.glob(f"*-tp{tp:g}")):
        for line in open(folder / "combined.jsonl"):
            r = json.loads(line)
            if r["detector"] == "cepa-nc-agree":
                out[r["model"]] = r
    return out


by_tp = {tp: rows(tp) for tp in grid}
datasets = sorted({r["dataset"] for r in by_tp[0.0].values()})


def tally(tp, keep):
    rs = [r for r in by_tp[tp].values() if keep(r["dataset"])]
    bad = [r for r in rs if r["truth_target"] is not None]
    clean = [r for r in rs if r["truth_target"] is None]
    right = sum(r["flagged"] and r["target"] == r["truth_target"] for r in bad)
    flagged_clean = {r["model"] for r in clean if r["flagged"]}
    return right, len(bad), flagged_clean, len(clean)


def choose(keep, pick=max):
    _, _, base_clean, _ = tally(0.0, keep)
    ok = [tp for tp in grid if tp > 0 and tally(tp, keep)[2] <= base_clean]
    if not ok:
        return 0.0
    best = max(tally(tp, keep)[0] for tp in ok)
    return pick(tp for tp in ok if tally(tp, keep)[0] == best)


print("| TP | " + " | ".join(f"{d}: backdoors at target, clean flagged" for d in datasets) + " |")
print("|---|" + "---|" * len(datasets))
for tp in grid:
    cells = []
    for d in datasets:
        r, b, c, n = tally(tp, lambda x, d=d: x == d)
        cells.append(f"{r}/{b}, {len(c)}/{n}")
    print(f"| {tp:g} | " + " | ".join(cells) + " |")
# The second table (ties broken by the smallest TP) was added after the first was read: where a
# fold's datasets hold no backdoor the reading is needed for, every TP ties, and the written
# criterion then takes the largest, which turns the reading off in effect.
for title, pick in (("ties to the largest TP (the criterion written first)", max),
                    ("ties to the smallest TP (added after reading the first)", min)):
    print(f"\n{title}\n")
    print("| left out | chosen on | TP chosen | backdoors at target (TP 0) | clean flagged (TP 0) |")
    print("|---|---|---|---|---|")
    for d in datasets:
        tp = choose(lambda x, d=d: x != d, pick)
        r, b, c, n = tally(tp, lambda x, d=d: x == d)
        r0, _, c0, _ = tally(0.0, lambda x, d=d: x == d)
        others = ", ".join(x for x in datasets if x != d)
        print(f"| {d} | {others} | {tp:g} | {r}/{b} ({r0}/{b}) | {len(c)}/{n} ({len(c0)}/{n}) |")
    tp = choose(lambda x: True, pick)
    r, b, c, n = tally(tp, lambda x: True)
    print(f"\nChosen on all {len(datasets)} datasets: TP {tp:g} ({r}/{b} backdoors at target, "
          f"{len(c)}/{n} clean flagged)")
