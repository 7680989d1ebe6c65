#!/usr/bin/env bash
# The GPU check (issue 14): one prepared script for a machine with one GPU, at most ~8 minutes.
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # everything that needs no GPU (passes on a CPU-only machine)
# Results go under $OUT (default runs/gpu_check): env.json, gpu_path.log (the fake-CUDA suite),
# codecs.json (encode/decode throughput at 64 MiB on the GPU), runs/<name>/ (tiny and ml100k training runs:
# summary.json + telemetry/rank0.h5 with NVML samples), analysis/table.md (analysis.collect: samples/s, HR@10,
# GPU util / memory), summary.md (the figures for the README). PY overrides the interpreter.
#
# Steps (each bounded by `timeout`; a failed step is reported and the script exits non-zero at the end):
#   1 environment: torch / CUDA / NVML versions and the visible GPU (a real run refuses to start without one)
#   2 the fake-CUDA suite: tests/test_gpu_path.py (FakeTensorMode + fake process group; CPU only)
#   3 codec throughput: benchmarks/codec_throughput.py on the device (dry run: CPU, 4 MiB)
#   4 training: tiny (synthetic_tiny, sasrec_tiny) and ml100k (sasrec_small, 120 steps) on one GPU with
#     the NVML sampler on (dry run: tiny only, 5 steps on CPU; the ml100k command is printed)
#   5 analysis.collect over the runs, then checks: every run done, samples/s and HR@10 present, GPU util
#     and memory recorded (dry run: the sampler's absent_reason instead)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT/runs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
step() { echo "gpu_check: $*"; }
fail() { echo "gpu_check: FAILED: $*"; FAILED+=("$1"); }
T0=$(date +%s)

# 1 environment -----------------------------------------------------------------------------------
step "1/5 environment -> $OUT/env.json"
if ! timeout 120 "$PY" - "$OUT/env.json" "$DRY" <<'EOF'
import json, sys, torch
from hybridrec.distributed import backend
from hybridrec.telemetry import nvml
env = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "gpu_visible": backend.gpu_available(),
       "gpu_count": backend.gpu_count(), "dry_run": sys.argv[2] == "1"}
if env["gpu_visible"]:
    env["gpu_name"] = torch.cuda.get_device_name(0)
sampler = nvml.UtilizationSampler(0.5, nvml.visible_gpu_ids(0))
env["nvml"] = sampler.describe()
json.dump(env, open(sys.argv[1], "w"), indent=1, default=str)
print(json.dumps(env, default=str))
sys.exit(0 if env["gpu_visible"] or env["dry_run"] else 3)
EOF
then
  fail "environment (no GPU visible: use --dry-run on a CPU-only machine)"
  [ $DRY = 1 ] || { echo "gpu_check: no GPU, stopping"; exit 3; }
fi

# 2 fake-CUDA suite ------------------------------------------------------------------------------------
step "2/5 fake-CUDA suite (tests/test_gpu_path.py) -> $OUT/gpu_path.log"
if timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py > "$OUT/gpu_path.log" 2>&1; then
  tail -1 "$OUT/gpu_path.log"
else
  tail -5 "$OUT/gpu_path.log"; fail "fake-CUDA suite"
fi

# 3 codec throughput ---------------------------------------------------------------------------------
if [ $DRY = 1 ]; then CODEC_ARGS=(--device cpu --mib 4 --repeats 2); else CODEC_ARGS=(--device cuda --mib 64 --repeats 5); fi
step "3/5 codec throughput ${CODEC_ARGS[*]} -> $OUT/codecs.json"
timeout 180 "$PY" benchmarks/codec_throughput.py "${CODEC_ARGS[@]}" --out "$OUT/codecs.json" || fail "codec throughput"

# 4 training runs -------------------------------------------------------------------------------------
DEVICE=cuda
[ $DRY = 1 ] && DEVICE=cpu
COMMON=(train.device=$DEVICE telemetry.sampler=true telemetry.nvml_interval_s=0.2 'eval.protocols=[full,uni100]' eval.baseline=false)
TINY=(data=synthetic_tiny model=sasrec_tiny train=quick)
ML100K=(data=ml100k model=sasrec_small train=ml100k)
[ $DRY = 1 ] && TINY+=(train.steps=5)
run() {  # name, timeout, overrides...
  local name=$1 limit=$2; shift 2
  step "4/5 run $name: jobs.train_job $* -> $OUT/runs/$name"
  timeout "$limit" "$PY" -m jobs.train_job "$@" "${COMMON[@]}" "hydra.run.dir=$OUT/runs/$name" \
    > "$OUT/runs/$name.log" 2>&1 || { tail -5 "$OUT/runs/$name.log"; fail "run $name"; }
}
run tiny 240 "${TINY[@]}"
if [ $DRY = 1 ]; then
  step "4/5 (dry run) ml100k on the GPU would be: jobs.train_job ${ML100K[*]} ${COMMON[*]/train.device=cpu/train.device=cuda}"
else
  run ml100k 240 "${ML100K[@]}"
fi

# 5 collect and check -------------------------------------------------------------------------------
step "5/5 analysis.collect $OUT/runs"
timeout 120 "$PY" -m analysis.collect "$OUT/runs" --out "$OUT/analysis" > "$OUT/collect.log" 2>&1 || fail "analysis.collect"
if ! timeout 120 "$PY" - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
from hybridrec.telemetry.recorder import read_run
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
lines, problems = ["| run | device | status | samples/s | HR@10 (full) | HR@10 (uni100) | GPU util % (mean) | GPU mem used MiB (max) | peak alloc MiB |",
                   "|---|---|---|---:|---:|---:|---:|---:|---:|"], []
for run in sorted(p for p in (out / "runs").iterdir() if (p / "summary.json").exists()):
    s = json.loads((run / "summary.json").read_text())
    if s.get("status") != "done":
        problems.append(f"{run.name}: status {s.get('status')} {s.get('error', '')}")
    metrics = s.get("metrics", {})
    rank0 = read_run(run)[0]
    samples, info = rank0["samples"], rank0["samples_info"]
    util = [v for k, v in samples.items() if k.endswith("_util_pct") and k.startswith("gpu") and "mem" not in k]
    mem = [v for k, v in samples.items() if k.endswith("_mem_used_bytes")]
    peak = rank0["steps"].get("peak_mem_bytes")
    row = [run.name, s.get("config", {}).get("train", {}).get("device", "?"), s.get("status"),
           f"{s.get('samples_per_s', float('nan')):.1f}",
           f"{metrics.get('full', {}).get('HR@10', float('nan')):.4f}",
           f"{metrics.get('uni100', {}).get('HR@10', float('nan')):.4f}",
           f"{float(util[0].mean()):.1f}" if util and len(util[0]) else "n/a",
           f"{float(mem[0].max()) / 2**20:.0f}" if mem and len(mem[0]) else "n/a",
           f"{float(max(peak)) / 2**20:.0f}" if peak is not None and len(peak) else "n/a"]
    lines.append("| " + " | ".join(row) + " |")
    if not s.get("samples_per_s") or "HR@10" not in metrics.get("uni100", {}):
        problems.append(f"{run.name}: samples/s or HR@10 missing")
    if dry and not info.get("nvml_absent_reason"):
        problems.append(f"{run.name}: the sampler should say why NVML is absent")
    if not dry and not (util and mem):
        problems.append(f"{run.name}: no NVML utilization / memory samples ({info.get('nvml_absent_reason')})")
codecs = json.loads((out / "codecs.json").read_text()) if (out / "codecs.json").exists() else None
if codecs:
    lines += ["", f"codecs on {codecs['device']}, {codecs['input_mib']:g} MiB fp32 ({codecs['clock']}):", "",
              "| codec | encode GB/s | decode GB/s | wire/input |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {r['encode_GBps']:.2f} | {r['decode_GBps']:.2f} | {r['wire_ratio']:.4f} |"
              for n, r in codecs["codecs"].items()]
text = "\n".join(lines) + "\n" + "".join(f"\nproblem: {p}" for p in problems) + "\n"
(out / "summary.md").write_text(text)
print(text)
sys.exit(1 if problems else 0)
EOF
then
  fail "checks (see $OUT/summary.md)"
fi
echo "gpu_check: $(( $(date +%s) - T0 )) s, results in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu_check: failed step: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "gpu_check: ok"
