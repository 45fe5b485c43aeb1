"""Session 41: reads the `cepa-nc-agree` rows cepa wrote under the default and under a variant
(variant.sh) and counts them; computes no verdict.
usage: python3 variant_compare.py WORKDIR"""
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])


def rows(folder):
    out = {}
    for line in open(folder / "combined.jsonl"):
        r = json.loads(line)
        if r["detector"] == "cepa-nc-agree":
            out[r["model"]] = r
    return out


print("| scans | backdoors at target: default, variant | clean flagged: default, variant | models whose verdict differs |")
print("|---|---|---|---|")
tot = [0, 0, 0, 0, 0, 0]
for d in sorted(work.glob("*-default")):
    name = d.name[: -len("-default")]
    a, b = rows(d), rows(work / f"{name}-variant")
    bad = [m for m in a if a[m]["truth_target"] is not None]
    clean = [m for m in a if a[m]["truth_target"] is None]
    hit = lambda r: r["flagged"] and r["target"] == r["truth_target"]
    ra, rb = sum(hit(a[m]) for m in bad), sum(hit(b[m]) for m in bad)
    ca, cb = sum(a[m]["flagged"] for m in clean), sum(b[m]["flagged"] for m in clean)
    diff = [f"{m} ({a[m]['score']:.2f} -> {b[m]['score']:.2f})" for m in a if a[m]["flagged"] != b[m]["flagged"]]
    print(f"| {name} | {ra}/{len(bad)}, {rb}/{len(bad)} | {ca}/{len(clean)}, {cb}/{len(clean)} | {'; '.join(diff) or '-'} |")
    for i, v in enumerate([ra, rb, len(bad), ca, cb, len(clean)]):
        tot[i] += v
print(f"| all | {tot[0]}/{tot[2]}, {tot[1]}/{tot[2]} | {tot[3]}/{tot[5]}, {tot[4]}/{tot[5]} | |")
