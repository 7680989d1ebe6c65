#!/usr/bin/env bash
# Demo: a small sweep as multi-node Slurm jobs on a private local cluster (up -> submit -> wait -> collect -> down).
# As root: 4 nodes in 2 racks, each rack's slurmd inside its own network namespace behind a shaped uplink
# (RATE, default 10mbit), racks read from Slurm's topology; conf/experiment/demo.yaml sweeps flat vs
# hierarchical all-reduce, top-k 1 % / 10 % on the cross-rack hop and a pp2 x dp2 layout, one job at a time.
# Without root or Slurm it says why and runs the codec points through hydra/launcher=local (one rank each).
#   slurm/demo.sh
#   RATE=100mbit STEPS=80 slurm/demo.sh
#   SWEEP="+experiment/demo_point=flat,hierarchical" slurm/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-60}   # 60 steps of 4 ranks: 5-25 s of training per point here, and above most-popular
RATE=${RATE:-10mbit}
# shellcheck disable=SC2206
ARGS=(+experiment=demo "train.steps=$STEPS" "train.log_every=$((STEPS / 4))" ${SWEEP:-})
reason=""
[ "$(id -u)" = 0 ] || reason="not root (the local cluster needs namespaces)"
command -v slurmctld >/dev/null || reason="Slurm is not installed (scripts/install.sh installs it as root)"
if [ -n "$reason" ]; then
  echo "demo: no local Slurm cluster: $reason; running the sweep with hydra/launcher=local"
  $PY -m jobs.train_job -m hydra/launcher=local hydra.launcher.nodes=1 hydra.launcher.tasks_per_node=1 \
    "hydra.sweep.dir=$OUT" "${ARGS[@]}" allreduce.topology=single \
    "+experiment/demo_point=${LOCAL_POINTS:-hierarchical,hier_topk1pct,hier_topk10pct}"
  $PY -m analysis.collect "$OUT"   # prints the table, writes it and the plots to $OUT/analysis
  exit 0
fi
BASE=$(mktemp -d /tmp/hybridrec-demo-XXXX)
trap '$PY -m hybridrec.testbed.cluster down --base "$BASE" && rm -rf "$BASE"' EXIT
# one CPU per node: a point takes all 4 nodes, so the points run one after another and are timed alone
$PY -m hybridrec.testbed.cluster up --base "$BASE" --racks 2 --nodes-per-rack 2 --cpus 1 --in-racks --rate "$RATE" \
  > "$BASE/up.log"; head -1 "$BASE/up.log"; echo "demo: 2 racks x 2 nodes, uplinks shaped to $RATE"
export SLURM_CONF=$BASE/etc/slurm.conf
$PY -m jobs.submit --sweep-dir "$OUT" "${ARGS[@]}"
$PY -m jobs.sweep wait "$OUT" --timeout 3600 || true   # progress lines, then each point's state
$PY -m jobs.sweep collect "$OUT" > "$OUT/collected.json"
$PY -m analysis.collect "$OUT"   # prints the table, writes it and the plots to $OUT/analysis
echo "demo: summaries in $OUT/*/summary.json, all of them in $OUT/collected.json, table and plots in $OUT/analysis/"
