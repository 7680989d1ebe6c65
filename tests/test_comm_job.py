"""Communication as the job wires it (`hybridrec.distributed.comm.build_comm`), driven through
`jobs.train_job` on 2 ranks started by torchrun: local-SGD replicas are averaged at every period
boundary (and differ in between, so the check can fail), the sync control is identical after every
step, each rank runs one thread; plus the rack map from a captured `scontrol show topology`, the
codec rule in one place, and choice fields refused when Hydra composes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridrec.distributed.spawn import run_torchrun
from hybridrec.train import checkpoint

ROOT = Path(__file__).parents[1]
JOB = ["model=sasrec_tiny", "train=quick", "train.steps=4", "train.checkpoint_every=1", "model.dropout=0",
       "parallel=dp2", "parallel.micro_batch_size=8", "allreduce=flat", "eval.protocols=[uni100]", "telemetry=off"]


def torchrun_job(out: Path, extra: list[str]) -> dict:
    proc = run_torchrun(2, "jobs.train_job", [*JOB, *extra, f"hydra.run.dir={out}", f"data.cache_dir={out / 'cache'}"],
                        timeout_s=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def replica_gap(ckpt: Path) -> float:
    """Largest |difference| between the two dp replicas' weights in a checkpoint."""
    a, b = (torch.load(checkpoint.rank_file(ckpt, r), weights_only=False)["trainer"]["model"] for r in (0, 1))
    gaps = [(a_chunk[name] - b_chunk[name]).abs().max().item()
            for a_chunk, b_chunk in zip(a, b, strict=True) for name in a_chunk if torch.is_tensor(a_chunk[name])]
    return max(gaps)


def test_local_sgd_replicas_identical_after_each_period_and_sync_every_step(tmp_path: Path) -> None:
    local = torchrun_job(tmp_path / "local", ["allreduce.mode=local_sgd", "allreduce.local_sgd_period=2"])
    sync = torchrun_job(tmp_path / "sync", ["allreduce.mode=sync"])
    assert local["status"] == sync["status"] == "done" and local["steps"] == 4
    gaps = {s: replica_gap(checkpoint.step_dir(tmp_path / "local" / "checkpoints", s)) for s in (1, 2, 3, 4)}
    assert gaps[2] == 0.0 and gaps[4] == 0.0, gaps  # period boundaries: parameters averaged
    assert gaps[1] > 1e-6 and gaps[3] > 1e-6, gaps  # in between the replicas train apart
    for step in (1, 2, 3, 4):
        assert replica_gap(checkpoint.step_dir(tmp_path / "sync" / "checkpoints", step)) == 0.0
    # torchrun's one thread per rank reaches the job
    assert local["threads_per_rank"] == sync["threads_per_rank"] == 1
    assert sync["comm"]["sync"].startswith("flat none sync")


SCONTROL = """SwitchName=rack1 Level=0 LinkSpeed=1 Nodes=n[1-2]
SwitchName=rack2 Level=0 LinkSpeed=1 Nodes=n[3-4]
SwitchName=spine Level=1 LinkSpeed=1 Switches=rack[1-2]
"""


def test_scontrol_topology_from_captured_output_gives_each_rank_its_rack() -> None:
    from hybridrec.distributed.allreduce.groups import rack_map_from_tasks

    tasks = [("n3", "", ""), ("n1", "", ""), ("n4", "", ""), ("n2", "", "")]
    rack_map = rack_map_from_tasks("scontrol", tasks, scontrol_text=SCONTROL)
    assert rack_map.rack_of_rank == ("rack2", "rack1", "rack2", "rack1")
    assert rack_map.racks_of([0, 1, 2, 3]) == [[0, 2], [1, 3]]


def test_codec_parameters_checked_once_by_the_codec() -> None:
    from hybridrec import preflight
    from hybridrec.config import RunConfig
    from hybridrec.config.comm import AllreduceConfig, CompressionConfig
    from hybridrec.distributed.compression import make_codec
    from hybridrec.errors import ConfigError

    fp16 = RunConfig(allreduce=AllreduceConfig(algorithm="flat"), compression=CompressionConfig(codec="fp16", ratio=0))
    assert preflight.problems(fp16, 1) == []  # the ratio is top-k's parameter, not fp16's
    assert make_codec(fp16.compression).name == "fp16"
    topk = RunConfig(allreduce=AllreduceConfig(algorithm="flat"), compression=CompressionConfig(codec="topk", ratio=1.5))
    with pytest.raises(ConfigError) as built:
        make_codec(topk.compression)
    assert [str(p) for p in preflight.problems(topk, 1)] == [str(built.value)]
    assert "compression.ratio" in str(built.value)


def test_choice_fields_are_refused_when_hydra_composes() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from hybridrec.config import register_configs

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["allreduce=flat", "allreduce.mode=async"])
        assert cfg.allreduce.mode == "async"
        with pytest.raises(ConfigCompositionException, match="allreduce.mode=local-sgd") as refused:
            compose("config", overrides=["allreduce.mode=local-sgd"])
    assert "expected one of [sync, async, local_sgd]" in str(refused.value.__cause__)


@pytest.mark.slow
def test_overlapped_sync_job_gives_the_same_loss_curve_as_after_backward(tmp_path: Path) -> None:
    """allreduce.overlap=true through the whole job (megatron buckets started from backward hooks,
    GradSync on its worker, Adam, clipping, 2 micro-batches per rank) trains exactly like overlap=false."""
    from hybridrec.telemetry.recorder import read_run

    common = ["allreduce=hierarchical", "allreduce.topology=single", "allreduce.bucket_mb=0.02",
              "compression.codec=topk", "compression.ratio=0.05", "parallel.micro_batch_size=4",
              "train.checkpoint_every=0", "telemetry=default"]
    off = torchrun_job(tmp_path / "off", [*common, "allreduce.overlap=false"])
    on = torchrun_job(tmp_path / "on", [*common, "allreduce.overlap=true"])
    assert off["status"] == on["status"] == "done"
    assert on["loss_curve"] == off["loss_curve"]  # exactly, every step
    assert on["comm"]["sync"].endswith(" overlap") and not off["comm"]["sync"].endswith(" overlap")
    steps_on = read_run(tmp_path / "on")[0]["steps"]
    steps_off = read_run(tmp_path / "off")[0]["steps"]
    assert steps_on["dp_comm_overlapped_s"][1:].max() > 0  # from step 2 buckets sync during backward
    assert steps_off["dp_comm_overlapped_s"].max() == 0.0
    assert (steps_off["dp_comm_exposed_s"] > 0).all()
