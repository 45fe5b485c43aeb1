#!/usr/bin/env bash
# Submit a sharded population job and its merge as a dependent job (afterok).
#   deploy/slurm/submit.sh eval TASKS ZOO OUT [cepa eval flags...]
#   deploy/slurm/submit.sh zoo TASKS CONFIG OUT [cepa zoo build flags...]
# Prints the two job ids. Extra sbatch options go in SBATCH_OPTS (e.g. "--partition=gpu").
# The tasks get CEPA_SHARDS=TASKS, so that one resubmitted alone keeps its shard:
#   CEPA_SHARDS=TASKS sbatch --array=3 deploy/slurm/eval-array.sbatch ZOO OUT [flags...]
# If a task fails, the merge (afterok) stays pending: resubmit the task, then scancel the
# pending merge and submit merge.sbatch again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=$1 tasks=$2 a=$3 out=$4
shift 4
# shellcheck disable=SC2086
case "$what" in
eval)
  array=$(CEPA_SHARDS=$tasks sbatch --parsable ${SBATCH_OPTS:-} --array=0-$((tasks - 1)) "$here/eval-array.sbatch" "$a" "$out" "$@")
  merge=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency=afterok:"$array" "$here/merge.sbatch" "$a" "$out" "$@")
  ;;
zoo)
  array=$(CEPA_SHARDS=$tasks sbatch --parsable ${SBATCH_OPTS:-} --array=0-$((tasks - 1)) "$here/zoo-array.sbatch" "$a" "$out" "$@")
  merge=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency=afterok:"$array" --job-name=cepa-zoo-manifest \
    --wrap "$(printf '%q ' "${CEPA:-cepa}" zoo build --config "$a" --out "$out" "$@")")
  ;;
*)
  echo "usage: $0 eval|zoo TASKS ZOO|CONFIG OUT [flags...]" >&2
  exit 2
  ;;
esac
echo "array $array, merge $merge"
