#!/usr/bin/env bash
# Session 34: the learned decision against the default rule, under the same leave-one-out
# thresholds (learn.py's header); output committed as learned.txt.
#   bash eval/stats-dev-s34/run.sh
set -euo pipefail
here=eval/stats-dev-s34
python3 "$here/extract.py"
{
  for fpr in 0.05 0.08 0.1; do
    echo "== default rule (agree score), FPR $fpr"
    python3 "$here/learn.py" default 1 "$fpr"
    echo "== logistic, nine features, FPR $fpr"
    python3 "$here/learn.py" cepa,nc,agree,max_margin,margin_excess,delta_norm,embed_norm,transfer,input_reach_max 1 "$fpr"
    echo "== logistic, three features, FPR $fpr"
    python3 "$here/learn.py" cepa,nc,agree 1 "$fpr"
  done
} >"$here/learned.txt"
