"""Data benchmark: synthetic data at the paper's scale through the whole data pipeline.

Stages timed (wall seconds, time.perf_counter): generate, dedupe + iterative 5-core, remap + stable
chronological grouping, negatives (uni100/pop100 x valid/test), HDF5 cache write (atomic), cache read
(load_processed hit), train_examples (max_len 50); wall and CPU (process_time) seconds. Peak RSS is the process's ru_maxrss (KiB on Linux)
after all stages. Usage: .venv/bin/python benchmarks/data_bench.py [--scale paper|tiny] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from hybridrec.config.data import DataConfig
from hybridrec.data import cache, kcore, load_processed, negatives, split, synthetic
from hybridrec.data.batches import train_examples
from hybridrec.data.processed import _to_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="paper", choices=sorted(synthetic.SCALES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timings: dict[str, tuple[float, float]] = {}

    def timed(name: str, fn, *a, **kw):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        timings[name] = (time.perf_counter() - start, time.process_time() - cpu)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(source="synthetic", synthetic_scale=args.scale, seed=args.seed, cache_dir=tmp)
        raw = timed("generate", synthetic.generate, args.scale, args.seed)

        def core():
            keep = kcore.dedupe_mask(raw.users, raw.items, raw.timestamps)
            return kcore.kcore_mask(raw.users, raw.items, 5, 5, keep)

        keep, rounds = timed("dedupe + 5-core", core)
        offsets, items, _, item_codes = timed(
            "remap + stable sort", kcore.group_sequences, raw.users[keep], raw.items[keep], raw.timestamps[keep]
        )
        num_items = len(item_codes)
        counts = split.train_item_counts(offsets, items, num_items)

        negs = timed("negatives (4 sets x 100/user)", negatives.sample_all, offsets, items, num_items, 100,
                     args.seed, counts)
        # the full pipeline once more through the public API, to get the ProcessedData the cache stores
        from hybridrec.data.processed import ProcessedData

        data = ProcessedData(len(offsets) - 1, num_items, offsets, items, counts, negs,
                             {"users": len(offsets) - 1, "items": num_items, "interactions": len(items)})
        digest = cache.config_hash(cfg, None)
        path = cache.cache_file(cfg, digest)
        timed("cache write (HDF5, atomic)", _to_cache, data, cfg, digest, path)
        loaded = timed("cache read (load_processed hit)", load_processed, cfg)
        assert loaded.stats["cache"] == "hit" and np.array_equal(loaded.items, items)
        size_mb = path.stat().st_size / 2**20
        timed("train_examples (max_len 50)", train_examples, loaded, 50)

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"synthetic/{args.scale} seed {args.seed}")
    print(f"raw: {len(raw.users):,} interactions, {raw.stats['synthetic_spec']['num_users']:,} users, "
          f"{raw.stats['synthetic_spec']['num_items']:,} items")
    print(f"after dedupe + 5-core ({rounds} rounds): {len(offsets) - 1:,} users, {num_items:,} items, "
          f"{len(items):,} interactions (avg {len(items) / (len(offsets) - 1):.2f} per user)")
    print(f"cache file: {size_mb:.1f} MiB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(wall > CPU seconds means the process waited for a core)")
    print("| stage | wall s | CPU s |")
    print("|---|---|---|")
    for name, (wall, cpu) in timings.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    first = [timings[k] for k in ("generate", "dedupe + 5-core", "remap + stable sort")]
    print(f"| generation + 5-core + remap | {sum(w for w, _ in first):.2f} | {sum(c for _, c in first):.2f} |")
    print(f"peak RSS (ru_maxrss): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
