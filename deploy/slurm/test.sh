#!/usr/bin/env bash
# The deployment test (run by cargo test through tests/slurm.rs, as root, with Debian's slurmctld, slurmd and munge
# installed): a real one-node Slurm runs a 3-task `cepa eval` array and the merge as a dependent
# job, and the merged tables must equal a single-process run. Then one task is killed with
# SIGKILL in the middle of its work and resubmitted: the merge must be complete and equal again,
# with no duplicate and no torn line. Also checks that `--shard I/3` run by hand owns the same
# models as Slurm's task I.
#   deploy/slurm/test.sh            # CEPA: the binary (default target/debug/cepa)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
CEPA=${CEPA:-$root/target/debug/cepa}
export CEPA
[ -x "$CEPA" ] || { echo "error: $CEPA is not built" >&2; exit 1; }
work=$(mktemp -d /tmp/cepa-slurm.XXXXXX)
slurm=$work/slurm
trap '"$root/deploy/slurm/slurm-one-node.sh" stop "$slurm"' EXIT
"$root/deploy/slurm/slurm-one-node.sh" start "$slurm"
export SLURM_CONF=$slurm/slurm.conf
mkdir -p "$work/logs"

echo "== the smoke zoo (zoo/smoke.toml, 7 models) and the single-process evaluation"
"$CEPA" zoo build --config zoo/smoke.toml --out "$work/zoo" -q
flags=(--detector all --steps 10 --nc-steps 20 --per-class 3 --min-asr 0 -q)
"$CEPA" eval "$work/zoo" --out "$work/single" "${flags[@]}" > /dev/null

# Waits until no job of this test is queued or running.
drain() {
  for _ in $(seq 600); do
    [ -z "$(squeue -h -o %i)" ] && return 0
    sleep 1
  done
  echo "error: jobs still queued after 600 s" >&2
  squeue >&2
  exit 1
}
sb() { sbatch --parsable --cpus-per-task=1 --output="$work/logs/%x-%A_%a.log" "$@"; }

echo "== the array (3 tasks, real sbatch) and the merge after it (afterok)"
array=$(sb --array=0-2 deploy/slurm/eval-array.sbatch "$work/zoo" "$work/array" "${flags[@]}")
sb --wait --dependency=afterok:"$array" deploy/slurm/merge.sbatch "$work/zoo" "$work/array" "${flags[@]}" > /dev/null
drain

echo "== the same shards by hand (--shard I/3)"
for i in 0 1 2; do
  "$CEPA" eval "$work/zoo" --out "$work/hand" --shard "$i/3" "${flags[@]}" 2> /dev/null
done

echo "== one task killed (SIGKILL) in the middle of its work, then resubmitted"
killed=$(sb --array=0-2 deploy/slurm/eval-array.sbatch "$work/zoo" "$work/killed" "${flags[@]}")
part=$work/killed/results-shard-1-of-3.jsonl
for _ in $(seq 600); do
  [ -s "$part" ] && break
  sleep 0.2
done
scancel --signal=KILL "${killed}_1"
drain
lines_at_kill=$(wc -l < "$part")
# Resubmitted alone, the task is an array of one: CEPA_SHARDS keeps it shard 1 of 3.
CEPA_SHARDS=3 sb --wait --array=1 deploy/slurm/eval-array.sbatch "$work/zoo" "$work/killed" "${flags[@]}" > /dev/null
sb --wait deploy/slurm/merge.sbatch "$work/zoo" "$work/killed" "${flags[@]}" > /dev/null
drain

python3 - "$work" "$lines_at_kill" <<'PY'
import glob, json, os, sys
work, at_kill = sys.argv[1], int(sys.argv[2])

def lines(pattern):
    out = []
    for f in sorted(glob.glob(pattern)):
        text = open(f).read()
        assert text.endswith("\n"), f"{f}: torn last line"
        out += [json.loads(l) for l in text.splitlines() if l.strip()]
    return out

def close(a, b, at):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{at}: keys"
        for k in a:
            if k != "seconds" and k != "median_seconds":
                close(a[k], b[k], f"{at}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{at}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{at}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-9, f"{at}: {a} vs {b}"
    else:
        assert a == b, f"{at}: {a} vs {b}"

single = {(o["model"], o["detector"]): o for o in lines(f"{work}/single/results.jsonl")}
assert len(single) == 14, len(single)
for run in ["array", "killed"]:
    got = lines(f"{work}/{run}/results-shard-*.jsonl")
    keys = [(o["model"], o["detector"]) for o in got]
    assert len(keys) == len(set(keys)), f"{run}: a duplicate line"
    assert set(keys) == set(single), f"{run}: incomplete: {set(single) - set(keys)}"
    for o in got:
        close(o, single[(o["model"], o["detector"])], f"{run} {o['model']} {o['detector']}")
    ev = json.load(open(f"{work}/{run}/evaluation.json"))
    close(ev, json.load(open(f"{work}/single/evaluation.json")), f"{run} evaluation.json")
    md = open(f"{work}/{run}/evaluation.md").read()
    assert "Not finished" not in md, f"{run}: {md}"
# The resubmitted task was shard 1 of 3 again, and the kill came before it had finished.
assert not glob.glob(f"{work}/killed/results-shard-0-of-1.jsonl"), "resubmitted as shard 0/1"
total = len(lines(f"{work}/killed/results-shard-1-of-3.jsonl"))
assert at_kill < total, f"killed after {at_kill} of {total} lines: not in the middle"
# Which models each shard owns: Slurm's tasks and the hand-run shards agree.
for i in range(3):
    owned = lambda run: sorted({o["model"] for o in lines(f"{work}/{run}/results-shard-{i}-of-3.jsonl")})
    assert owned("array") == owned("hand"), f"shard {i}: {owned('array')} vs {owned('hand')}"
print(f"slurm: 3-task array + merge equal the single run (14 results, the smoke zoo); shard ownership by hand "
      f"and by Slurm agree; task 1 killed after {at_kill} of its lines, resubmitted: complete, "
      f"equal, no duplicate, no torn line")
PY
