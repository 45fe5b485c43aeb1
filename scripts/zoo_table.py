#!/usr/bin/env python3
"""Markdown table of a zoo manifest: per dataset and attack family, the models, their clean
accuracy (also against the clean model of the same training seed, which shares its initial
weights and batch order), attack success, and training time.

    python3 scripts/zoo_table.py target/zoo-standard/manifest.json
"""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    models = json.load(open(path))["models"]
    groups = defaultdict(list)
    for m in models:
        groups[(m["dataset"], m["arch"], m["attack"])].append(m)
    clean_acc = {
        (ds, arch): statistics.mean(m["clean_accuracy"] for m in ms)
        for (ds, arch, attack), ms in groups.items()
        if attack == "clean"
    }
    # The clean model of each (dataset, arch, training seed).
    by_seed = {
        (m["dataset"], m["arch"], m["seed"]): m["clean_accuracy"]
        for m in models
        if m["attack"] == "clean"
    }
    print("| dataset | arch | attack | models | clean acc (mean, min) | vs clean | vs same seed (mean, worst) | attack success (mean, min) | ASR >= 0.90 | train s (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (ds, arch, attack), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2] != "clean", kv[0][2])):
        acc = [m["clean_accuracy"] for m in ms]
        asr = [m["attack_success_rate"] for m in ms if m["attack_success_rate"] is not None]
        ref = clean_acc.get((ds, arch))
        delta = "" if ref is None or attack == "clean" else f"{100 * (statistics.mean(acc) - ref):+.1f} pt"
        paired = [
            m["clean_accuracy"] - by_seed[(ds, arch, m["seed"])]
            for m in ms
            if (ds, arch, m["seed"]) in by_seed
        ]
        pair_cell = (
            f"{100 * statistics.mean(paired):+.1f}, {100 * min(paired):+.1f} pt"
            if paired and attack != "clean"
            else ""
        )
        asr_cell = f"{statistics.mean(asr):.3f}, {min(asr):.3f}" if asr else "-"
        ok = f"{sum(a >= 0.9 for a in asr)}/{len(asr)}" if asr else "-"
        secs = statistics.median(m["train_seconds"] for m in ms)
        print(f"| {ds} | {arch} | {attack} | {len(ms)} | {statistics.mean(acc):.4f}, {min(acc):.4f} | {delta} | {pair_cell} | {asr_cell} | {ok} | {secs:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/zoo-standard/manifest.json")
