"""The adaptive plan inside a real 2-rank job: rank 0 profiles, both ranks get the same plan, then the
real pp=2 groups gather both stages' times for the drift monitor (slow: two megatron processes)."""

from __future__ import annotations

import json
import textwrap

import pytest

from hybridrec.distributed.spawn import run_torchrun

RANK = textwrap.dedent("""
    import json, sys, torch
    import torch.distributed as dist
    from hybridrec.config.model import ModelConfig
    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.distributed import backend
    from hybridrec.distributed.env import DistEnv, init_process_group
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.model import parallel
    from hybridrec.train.balance import RebalanceMonitor
    from hybridrec.train.profile import plan_adaptive, stage_times_across_pipeline

    torch.set_num_threads(1)
    backend.setup("cpu")
    env = DistEnv.from_environ()
    init_process_group(env, "gloo", timeout_s=300)
    pcfg = ParallelConfig(pp=2, micro_batch_size=4, balance="adaptive", profile_repeats=1)
    layout = ParallelLayout.build(pcfg, env.world_size, 16)
    mcfg = ModelConfig(hidden_size=32, num_layers=4, num_attention_heads=2, ffn_hidden_size=64, dropout=0.0)
    plan = plan_adaptive(mcfg, pcfg, layout, vocab_size=8192, seq_len=10)
    parallel.initialize(layout.tp, layout.pp, layout.vpp, seed=1)
    stage = layout.coords(env.rank).pp
    times = stage_times_across_pipeline(0.1 * (stage + 1))
    monitor = RebalanceMonitor(plan.partition, threshold=0.15, window=1, cooldown=0)
    monitor.observe(times)
    fired, why = monitor.check()
    json.dump({"split": list(plan.partition.layers_per_stage), "reason": plan.partition.reason,
               "times": times, "fired": fired}, open(sys.argv[1] + f".{env.rank}", "w"))
    parallel.destroy()
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_every_rank_gets_rank0s_plan_and_the_pipeline_times(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    out = tmp_path / "plan.json"
    proc = run_torchrun(2, str(script), [str(out)], timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [json.loads((tmp_path / f"plan.json.{r}").read_text()) for r in range(2)]
    assert plans[0]["split"] == plans[1]["split"] and sum(plans[0]["split"]) == 4
    assert plans[0]["reason"] == plans[1]["reason"]
    assert plans[0]["times"] == plans[1]["times"] == pytest.approx([0.1, 0.2])
    assert plans[0]["fired"] == plans[1]["fired"]
