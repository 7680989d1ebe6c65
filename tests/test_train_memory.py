"""Memory stays flat over a long run (issue 17, item 0): peak RSS after 4N training steps of a small
model is within a few percent of the peak after N steps, and torch's queue of deferred CUDA calls
(where megatron's RNG tracker used to pile up a closure plus a formatted stack per dropout fork on CPU)
does not grow. The control run without backend patch G shows the test can fail."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from test_train_harness import spawn_ranks, start_rank

N = 25


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _worker(rank: int, world: int, spec: dict[str, Any]) -> None:
    import json

    import torch.distributed as dist

    from hybridrec.config.model import ModelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.distributed import backend
    from hybridrec.model import parallel, sasrec
    from hybridrec.train.loop import Batch, Trainer

    device, layout = start_rank(rank, world, spec)
    if spec["undo_patch_g"]:  # control: torch's own queue, as before the fix
        torch.cuda._queued_calls = list(torch.cuda._queued_calls)
    items, seq, rows = 400, 30, spec["global_batch"]
    # 8 layers: 16 dropout forks per step, so the control grows well past 3 % (2 layers: 2.8-3.5 %, flaky)
    mcfg = ModelConfig(hidden_size=32, num_layers=8, num_attention_heads=2, ffn_hidden_size=64, dropout=0.2,
                       vocab_pad_multiple=64)
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(items, 64, 1), seq, items)
    tconfig = sasrec.transformer_config(mcfg, 1, 1, 1, device)
    trainer = Trainer(sasrec.build_chunks(mcfg, shape, tconfig, backend.device()), tconfig, layout,
                      TrainConfig(lr=1e-3, weight_decay=0.01))
    rng = np.random.default_rng(0)
    peaks, queued = {}, {}
    for step in range(1, 4 * N + 1):
        inputs = torch.from_numpy(rng.integers(1, items + 1, size=(rows, seq)))
        labels = torch.from_numpy(rng.integers(1, items + 1, size=(rows, seq)))
        trainer.train_step(Batch(inputs, labels, torch.ones(rows, seq)))
        if step in (N, 4 * N):
            peaks[step], queued[step] = _peak_rss_kib(), len(torch.cuda._queued_calls)
    Path(spec["out"]).write_text(json.dumps({"peaks": peaks, "queued": queued}))
    parallel.destroy()
    dist.destroy_process_group()


def _run(undo_patch_g: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"tp": 1, "pp": 1, "vpp": 1, "mbs": 32, "global_batch": 32, "undo_patch_g": undo_patch_g,
                "out": os.path.join(tmp, "record.json")}
        return spawn_ranks(_worker, 1, spec, 300, "memory run")


def test_peak_rss_is_flat_from_n_to_4n_steps() -> None:
    record = _run(undo_patch_g=False)
    peak_n, peak_4n = record["peaks"][str(N)], record["peaks"][str(4 * N)]
    print(f"with patch G: peak RSS {peak_n} KiB at step {N}, {peak_4n} KiB at {4 * N}")
    assert peak_4n <= peak_n * 1.03, f"peak RSS grew from {peak_n} KiB at step {N} to {peak_4n} KiB at {4 * N}"
    assert record["queued"][str(4 * N)] == record["queued"][str(N)]


def test_control_without_patch_g_grows() -> None:
    """Without patch G torch keeps every deferred RNG call: the queue grows with the steps."""
    record = _run(undo_patch_g=True)
    print(f"without patch G: peak RSS {record['peaks']}, queued calls {record['queued']}")
    assert record["queued"][str(4 * N)] > record["queued"][str(N)] + 3 * N
    assert record["peaks"][str(4 * N)] > record["peaks"][str(N)] * 1.03  # what the first test would catch
