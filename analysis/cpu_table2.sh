#!/usr/bin/env bash
# The paper_table2 layouts on this machine without Slurm: 4 local gloo ranks per layout, 10 steps of
# sasrec_tiny on synthetic_tiny, then analysis.collect. Results land in $OUT (default sweep/table2).
#   bash analysis/cpu_table2.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${1:-sweep/table2}
mkdir -p "$OUT"
i=0
for layout in dp4 tp4 pp4 tp2_pp2 tp2_dp2 pp2_dp2; do
  echo "table2: layout $layout -> $OUT/$i"
  $PY -m torch.distributed.run --standalone --nproc-per-node 4 -m jobs.train_job "+experiment/layout=$layout" \
    model=sasrec_tiny train=quick train.steps=10 train.global_batch_size=64 parallel.micro_batch_size=8 \
    'eval.protocols=[uni100]' "hydra.run.dir=$OUT/$i" > "$OUT/$i.log" 2>&1 \
    || echo "table2: layout $layout failed (log: $OUT/$i.log); collect lists it"
  i=$((i+1))
done
$PY -m analysis.collect "$OUT"
