"""The whole job for one rank: `run(cfg) -> summary dict`. Build, run, summarise:

    cfg -> (process group, data, model, comm, telemetry)   hybridrec.train.job.build_job
        -> optional resume                                  Job.resume
        -> training loop with step hooks                    hybridrec.train.run_loop / hooks
        -> ranking evaluation                               hybridrec.train.evaluate
        -> checkpoint, `summary.json` (rank 0, atomically), `telemetry/rank<k>.h5` per rank

everything under `cfg.output_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from hybridrec.config import RunConfig
from hybridrec.io import atomic_write_json, keep_previous
from hybridrec.train.preemption import Preempted

SUMMARY = "summary.json"


def _say(rank: int) -> Any:
    def say(message: str) -> None:
        if rank == 0:
            print(message, flush=True)

    return say


def _train_and_evaluate(job: Any, summary: dict[str, Any]) -> None:
    from hybridrec.data.skips import skipped_counts
    from hybridrec.train import evaluate, hooks, run_loop
    from hybridrec.train import job as job_mod

    say = _say(job.rank)
    job_mod.build_job(job, say)
    summary["layout"], summary["balance"] = job.layout.to_dict(), job.balance
    summary["comm"] = {"sync": job.comm.describe, "racks": list(job.comm.rack_map.rack_of_rank)}
    message = job.resume()
    if message:
        say(message)
    summary.update(run_loop.train(job, hooks.default_hooks(job, say)))
    summary["steps"] = job.trainer.step
    summary.update(evaluate.evaluate(job))
    if job.cfg.train.save_final:
        summary["checkpoint"] = str(job.save())
    summary["data"] = {"num_users": job.data.num_users, "num_items": job.data.num_items,
                       "vocab_size": job.shape.vocab_size, "skipped": skipped_counts(job.data.stats)}
    summary["threads_per_rank"] = torch.get_num_threads()
    if job.table is not None:  # the 2D item table (issue 15)
        from hybridrec.embedding.wiring import summary_record

        summary["embedding"] = summary_record(job)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run one rank of the job described by `cfg`; rank 0 writes `summary.json`. Returns the summary.

    On `Preempted` no summary is written (the requeued attempt writes the result) and the process
    group stays up for the requeue wrapper's barriers (`jobs.requeue.run_requeueable`)."""
    from hybridrec.distributed.env import configure_threads
    from hybridrec.train.job import start_process_group

    configure_threads()  # here, not in one entry point: the Hydra job and jobs.submit's task both land here
    start = time.perf_counter()
    summary: dict[str, Any] = {"config": dataclasses.asdict(cfg), "status": "failed", "error": None}
    job = None
    try:
        job = start_process_group(cfg)
        summary["layout"] = job.layout.to_dict()
        _train_and_evaluate(job, summary)
        summary["status"] = "done"
    except Preempted as exc:
        summary["status"], summary["error"] = "preempted", str(exc)
        raise
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["wall_s"] = time.perf_counter() - start
        rank = job.rank if job is not None else 0
        if rank == 0 and cfg.output_dir and summary["status"] != "preempted":
            keep_previous(Path(cfg.output_dir) / SUMMARY)  # an earlier attempt's becomes summary.attempt<n>.json
            atomic_write_json(Path(cfg.output_dir) / SUMMARY, summary)
        if job is not None:
            job.close(summary["status"])
        if summary["status"] != "preempted":
            _teardown()
    return summary


def _teardown() -> None:
    import torch.distributed as dist

    from hybridrec.model import parallel

    with contextlib.suppress(Exception):  # groups half-built: nothing more to tear down
        parallel.destroy()
    if dist.is_initialized():
        dist.destroy_process_group()
