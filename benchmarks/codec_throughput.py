"""Encode / decode throughput of every gradient codec on this process's device (issue 14).

    python benchmarks/codec_throughput.py [--device auto|cpu|cuda] [--mib 64] [--repeats 5] [--out F.json]

Input: one fp32 bucket of `--mib` MiB (randn, seed 0) on the device; error feedback off (the codec
alone). Times: the device's step clock (`backend.current().step_clock()`: CUDA events on GPU, process
CPU time on a single-threaded CPU run, else wall time), minimum of `--repeats` after one warm-up.
Throughput = input bytes / time (GB/s = 1e9 bytes/s), for encode (+ pack into one wire buffer) and
decode (unpack + decode); `wire_ratio` = wire bytes / input bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrec.config.comm import CompressionConfig
from hybridrec.distributed import backend
from hybridrec.distributed.compression import CODECS, pack, unpack
from hybridrec.io import atomic_write_json


def best_seconds(fn, repeats: int) -> float:
    device = backend.current()
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        clock = device.step_clock()
        device.synchronize()
        clock.start()
        fn()
        times.append(clock.stop())
    return min(times)


def measure(mib: float, repeats: int) -> dict:
    device = backend.current()
    numel = int(mib * 2**20) // 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen).to(device.torch_device)
    rows = {}
    for name, make in sorted(CODECS.items()):
        codec = make(CompressionConfig(codec=name, ratio=0.01, chunk_size=1024))
        payload = codec.encode(x, {})
        wire = pack(payload)
        encode_s = best_seconds(lambda c=codec: pack(c.encode(x, {})), repeats)
        decode_s = best_seconds(lambda c=codec, w=wire: c.decode(unpack(w, c, numel)), repeats)
        nbytes = numel * 4
        rows[name] = {"encode_s": encode_s, "decode_s": decode_s,
                      "encode_GBps": nbytes / encode_s / 1e9 if encode_s > 0 else None,
                      "decode_GBps": nbytes / decode_s / 1e9 if decode_s > 0 else None,
                      "wire_bytes": int(wire.numel()), "wire_ratio": wire.numel() / nbytes,
                      "on_device": str(wire.device)}
    return {"device": str(device.torch_device), "clock": device.step_clock().name, "input_mib": mib,
            "numel": numel, "repeats": repeats, "torch": torch.__version__, "codecs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mib", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)  # so the step clock is process CPU time (robust on a shared machine)
    backend.setup(args.device)
    result = measure(args.mib, args.repeats)
    print(f"codecs on {result['device']}, {args.mib:g} MiB fp32, clock: {result['clock']}")
    print("| codec | encode GB/s | decode GB/s | wire/input |")
    print("|---|---:|---:|---:|")
    for name, row in result["codecs"].items():
        print(f"| {name} | {row['encode_GBps']:.2f} | {row['decode_GBps']:.2f} | {row['wire_ratio']:.4f} |")
    if args.out:
        atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
