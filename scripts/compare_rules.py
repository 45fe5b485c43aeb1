#!/usr/bin/env python3
"""Compare verdict rules offline on saved CEPA reports: for each rule, the ROC AUC of its score
(backdoored against clean), how often the most anomalous class is the true target, the extremes,
and how many scans exceed 2. Ground truth: a zoo's ID.json files, and for the real models' report
names (`badnets-*` backdoored to class 1, else clean).

    python3 scripts/compare_rules.py ZOO_DIR EVAL_DIR eval/reports-default
"""
import glob
import json
import statistics as st
import sys


def scans(zoo, eval_dir, real_dir):
    out = []
    for f in sorted(glob.glob(f"{eval_dir}/reports/cepa/*.json")):
        name = f.split("/")[-1][:-5]
        e = json.load(open(f"{zoo}/{name}.json"))
        out.append((name, e["target"] if e["attack"] != "clean" else None, json.load(open(f))["decision"]))
    for f in sorted(glob.glob(f"{real_dir}/*.json")):
        name = f.split("/")[-1][:-5]
        out.append((name, 1 if name.startswith("badnets") else None, json.load(open(f))["decision"]))
    return out


def idx(c, names):
    return [s["anomaly_index"] for s in c["statistics"] if s["statistic"] in names]


def best(d, f):
    return max((f(c), c["class"]) for c in d["classes"])


RULES = {
    "restandardised mean (session 1)": lambda d: (d["score"], d["most_anomalous"]),
    "mean of delta, dispersion, transfer": lambda d: best(d, lambda c: c["mean_index"]),
    "median of delta, dispersion, transfer": lambda d: best(d, lambda c: st.median(idx(c, ["delta_norm", "dispersion", "transfer"]))),
    "mean of delta, dispersion": lambda d: best(d, lambda c: st.mean(idx(c, ["delta_norm", "dispersion"]))),
    "dispersion alone": lambda d: best(d, lambda c: st.mean(idx(c, ["dispersion"]))),
    "transfer alone": lambda d: best(d, lambda c: st.mean(idx(c, ["transfer"]))),
    "delta size alone": lambda d: best(d, lambda c: st.mean(idx(c, ["delta_norm"]))),
    "mu norm alone (the paper's)": lambda d: best(d, lambda c: st.mean(idx(c, ["mu_norm"]))),
}


def main(zoo, eval_dir, real_dir):
    data = scans(zoo, eval_dir, real_dir)
    npos = sum(t is not None for _, t, _ in data)
    print(f"{len(data)} scans: {npos} backdoored, {len(data) - npos} clean\n")
    print("| rule | AUC | top class = target | lowest backdoored | highest clean | clean > 2 | backdoored > 2 |")
    print("|---|---|---|---|---|---|---|")
    for name, f in RULES.items():
        pos, neg, right = [], [], 0
        for _, t, d in data:
            s, c = f(d)
            if t is None:
                neg.append(s)
            else:
                pos.append(s)
                right += c == t
        auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / len(pos) / len(neg)
        print(f"| {name} | {auc:.3f} | {right}/{len(pos)} | {min(pos):.2f} | {max(neg):.2f} | "
              f"{sum(n > 2 for n in neg)}/{len(neg)} | {sum(p > 2 for p in pos)}/{len(pos)} |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
