#!/usr/bin/env bash
# Private 4-node Slurm cluster on this machine (root): thin wrapper around hybridrec.testbed.cluster.
#   slurm/local_cluster.sh up [--in-racks --rate 100mbit] [--base DIR]
#   eval "$(slurm/local_cluster.sh env)"; sinfo; squeue
#   slurm/local_cluster.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hybridrec.testbed.cluster "$@"
