#!/usr/bin/env bash
# Submit a sharded population job and its merge as a dependent job (afterok).
#   deploy/slurm/submit.sh eval TASKS ZOO OUT [cepa eval flags...]
#   deploy/slurm/submit.sh zoo TASKS CONFIG OUT [cepa zoo build flags...]
# Prints the two job ids. Extra sbatch options go in SBATCH_OPTS (e.g. "--partition=gpu").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=$1 tasks=$2 a=$3 out=$4
shift 4
# shellcheck disable=SC2086
case "$what" in
eval)
  array=$(sbatch --parsable ${SBATCH_OPTS:-} --array=0-$((tasks - 1)) "$here/eval-array.sbatch" "$a" "$out" "$@")
  merge=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency=afterok:"$array" "$here/merge.sbatch" "$a" "$out" "$@")
  ;;
zoo)
  array=$(sbatch --parsable ${SBATCH_OPTS:-} --array=0-$((tasks - 1)) "$here/zoo-array.sbatch" "$a" "$out" "$@")
  merge=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency=afterok:"$array" --job-name=cepa-zoo-manifest \
    --wrap "\"${CEPA:-cepa}\" zoo build --config \"$a\" --out \"$out\" $*")
  ;;
*)
  echo "usage: $0 eval|zoo TASKS ZOO|CONFIG OUT [flags...]" >&2
  exit 2
  ;;
esac
echo "array $array, merge $merge"
