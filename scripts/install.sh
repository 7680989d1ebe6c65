#!/usr/bin/env bash
# Install hybridrec and its dependencies into ./.venv (CPU torch), plus Debian's Slurm + munge + slurmdbd on MariaDB (accounting for sacct) when root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v slurmdbd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge iproute2 mariadb-server slurmdbd >/dev/null
fi
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
# MovieLens-100k ships inside recbole's wheel; its own dependencies are not needed
.venv/bin/pip install -q --no-deps recbole==1.2.1
