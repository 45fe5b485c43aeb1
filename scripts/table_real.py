"""Render the JSON lines of scripts/eval_real.sh as a markdown table (stdin -> stdout)."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
print("| model | truth | seed | verdict | target | score | p-value | seconds | right? |")
print("|---|---|---|---|---|---|---|---|---|")
right = 0
for r in rows:
    if r["truth"] == "backdoored":
        ok = r["verdict"] == "backdoored" and str(r["target"]) == r["true_target"]
        truth = f"backdoored ({r['true_target']})"
    else:
        ok = r["verdict"] == "clean"
        truth = "clean"
    right += ok
    target = "-" if r["target"] is None else r["target"]
    print(f"| {r['model']} | {truth} | {r['seed']} | {r['verdict']} | {target} | {r['score']:.2f} "
          f"| {r['p_value']:.3f} | {r['seconds']:.1f} | {'yes' if ok else '**no**'} |")
print(f"\n{right} of {len(rows)} outcomes right.")
