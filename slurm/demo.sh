#!/usr/bin/env bash
# Demo: a small sweep as 2-node Slurm jobs on a private local cluster (up -> submit -> wait -> collect -> down).
# Without root or Slurm it says why and runs the same sweep through hydra/launcher=local instead.
#   slurm/demo.sh                                          # conf/experiment/topk_sweep.yaml: dense vs top-k 1/10/50 %
#   SWEEP="+experiment/codec=dense,topk10pct" STEPS=20 slurm/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-40}   # 16 ranks share the cores: 100 steps took ~12 min here; 10 did not beat most-popular
# shellcheck disable=SC2206
ARGS=(+experiment=topk_sweep model=sasrec_tiny "train.steps=$STEPS" "train.log_every=$((STEPS / 4))" ${SWEEP:-})
reason=""
[ "$(id -u)" = 0 ] || reason="not root (the local cluster needs namespaces)"
command -v slurmctld >/dev/null || reason="Slurm is not installed (scripts/install.sh installs it as root)"
if [ -n "$reason" ]; then
  echo "demo: no local Slurm cluster: $reason; running the sweep with hydra/launcher=local"
  $PY -m jobs.train_job -m hydra/launcher=local "hydra.sweep.dir=$OUT" "${ARGS[@]}" allreduce.topology=single
  $PY -m analysis.collect "$OUT"   # prints the table, writes it and the plots to $OUT/analysis
  exit 0
fi
BASE=$(mktemp -d /tmp/hybridrec-demo-XXXX)
trap '$PY -m hybridrec.testbed.cluster down --base "$BASE" && rm -rf "$BASE"' EXIT
$PY -m hybridrec.testbed.cluster up --base "$BASE" --cpus 4 > "$BASE/up.log"; head -1 "$BASE/up.log"
export SLURM_CONF=$BASE/etc/slurm.conf
$PY -m jobs.submit --sweep-dir "$OUT" "${ARGS[@]}"
$PY -m jobs.sweep wait "$OUT" --timeout 3600 || true   # progress lines, then each point's state
$PY -m jobs.sweep collect "$OUT" > "$OUT/collected.json"
$PY -m analysis.collect "$OUT"   # prints the table, writes it and the plots to $OUT/analysis
echo "demo: summaries in $OUT/*/summary.json, all of them in $OUT/collected.json, table and plots in $OUT/analysis/"
