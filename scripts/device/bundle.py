#!/usr/bin/env python3
"""Make target/gpu: what the `device` tool carries to the lent 16-core machine to run evaluation
jobs there (the stripped cepa binary, the CIFAR-10 test batch, a zoo subset with its manifest
and the job list). Then, from the repository root:

    python3 scripts/device/bundle.py ZOO ID...            # Neural Cleanse jobs (run_nc.sh)
    cp scripts/device/run_nc.sh target/gpu/run.sh
    # device tool: run  command="BUDGET=545 target/gpu/run.sh"  carry=["target/gpu"]
    tar xzf OUT/all.tgz   # one eval folder per model under r/, merged by hand

Add " all" to a line of target/gpu/ids.txt to run both detectors and an inversion on it.

With --variants V1,V2 the job list is "V ID" for each variant V and model (variants.sh runs
`cepa eval --config V.toml`; write target/gpu/V.toml yourself). Only a few files come back
from a device call, so the scripts tar everything into one.
"""
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
variants = None
if args and args[0] == "--variants":
    variants = args[1].split(",")
    args = args[2:]
zoo, ids = args[0], args[1:]
root = os.path.join("target", "gpu")
os.makedirs(os.path.join(root, "data", "cifar10"), exist_ok=True)
shutil.rmtree(os.path.join(root, "zoo"), ignore_errors=True)
os.makedirs(os.path.join(root, "zoo"))
for name in ("test_batch.bin.gz", "batches.meta.txt"):
    shutil.copy(os.path.join("..", "shared", "data", "cifar10", name), os.path.join(root, "data", "cifar10"))
manifest = json.load(open(os.path.join(zoo, "manifest.json")))
keep = [m for m in manifest["models"] if m["id"] in ids]
for m in keep:
    for ext in ("onnx", "cepa.toml", "json"):
        src = os.path.join(zoo, f"{m['id']}.{ext}")
        if os.path.exists(src):
            shutil.copy(src, os.path.join(root, "zoo"))
manifest["models"] = keep
json.dump(manifest, open(os.path.join(root, "zoo", "manifest.json"), "w"), indent=1)
if variants:
    jobs = [f"{v} {i}" for v in variants for i in ids]
    open(os.path.join(root, "jobs.txt"), "w").write("\n".join(jobs) + "\n")
else:
    open(os.path.join(root, "ids.txt"), "w").write("\n".join(ids) + "\n")
subprocess.run(["cargo", "build", "-p", "cepa-cli"], check=True)
shutil.copy(os.path.join("target", "debug", "cepa"), os.path.join(root, "cepa"))
subprocess.run(["strip", os.path.join(root, "cepa")], check=True)
print(f"{len(keep)} models in {root}")
