"""Schemas of the `compression/` and `allreduce/` groups: how data-parallel gradients travel,
plus `validate_comm` (pure cross-field checks, raising ConfigError) and `rack_problems` /
`duplicate_rack_names` (every problem of a configured rack map, before any process starts)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hybridrec.errors import ConfigError


class Codec(StrEnum):
    """Gradient codecs; each one's own parameters and rules live with it in hybridrec.distributed.compression."""

    none = "none"
    fp16 = "fp16"
    bf16 = "bf16"
    topk = "topk"
    sign1bit = "sign1bit"


class Hops(StrEnum):
    cross_rack = "cross_rack"  # compress only the slow hop between racks
    all = "all"


# Member names are the values: Hydra/OmegaConf match a YAML or command-line string by member name.
class Algorithm(StrEnum):
    megatron = "megatron"  # megatron DDP's own flat all-reduce
    flat = "flat"
    hierarchical = "hierarchical"


class Variant(StrEnum):
    leader = "leader"
    reduce_scatter = "reduce_scatter"


class Topology(StrEnum):
    slurm = "slurm"
    scontrol = "scontrol"
    config = "config"
    single = "single"


# sync | async (bounded staleness) | local_sgd (parameter averaging every `local_sgd_period` steps);
# the functional form because `async` is a keyword and cannot be a member name in a class body
Mode = StrEnum("Mode", [("sync", "sync"), ("async", "async"), ("local_sgd", "local_sgd")])


@dataclass
class CompressionConfig:
    codec: Codec = Codec.none
    # topk only: the kept fraction, in (0, 1]
    ratio: float = 0.01
    error_feedback: bool = True
    # which hops are compressed
    hops: Hops = Hops.cross_rack
    # sign1bit: elements per fp32 scale
    chunk_size: int = 1024


@dataclass
class AllreduceConfig:
    algorithm: Algorithm = Algorithm.megatron
    # hierarchical only: leader (reduce to a rack leader, leaders all-reduce, broadcast; fastest on gloo)
    # | reduce_scatter (ring reduce-scatter in the rack, all-reduce per shard column, all-gather)
    variant: Variant = Variant.leader
    # rack map: slurm (SLURM_TOPOLOGY_ADDR of every rank) | scontrol (`scontrol show topology`)
    # | config (the `racks` mapping) | single (one rack)
    topology: Topology = Topology.single
    # used when topology=config: rack name -> list of hostnames
    racks: dict[str, list[str]] = field(default_factory=dict)
    bucket_mb: float = 25.0
    # start each megatron gradient bucket's sync during backward, as soon as its gradients are ready
    # (flat/hierarchical: GradSync on a FIFO worker; megatron: DDP's overlap_grad_reduce); false =
    # after backward. Same buckets, same order, bit-identical results either way.
    overlap: bool = False
    # GPU runs: false = gradient groups use the tensors' backend (NCCL) and buckets stay on the GPU;
    # true = stage every bucket through host memory and gloo groups (e.g. no NCCL between nodes)
    cpu_staging: bool = False
    mode: Mode = Mode.sync  # type: ignore[valid-type]
    staleness: int = 0
    local_sgd_period: int = 8
    # straggler knob for experiments: rank `straggler_rank` sleeps `straggler_delay_s` before its
    # gradient sync every `straggler_every` steps (-1: off)
    straggler_rank: int = -1
    straggler_delay_s: float = 0.0
    straggler_every: int = 1


ALGORITHMS = tuple(Algorithm)
VARIANTS = tuple(Variant)
TOPOLOGIES = tuple(Topology)
MODES = tuple(Mode)
HOPS = tuple(Hops)


def validate_comm(allreduce: AllreduceConfig, compression: CompressionConfig, world_size: int | None = None) -> None:
    """Refuse inconsistent communication settings before anything starts."""
    checks = [
        ("allreduce.algorithm", allreduce.algorithm, ALGORITHMS),
        ("allreduce.variant", allreduce.variant, VARIANTS),
        ("allreduce.topology", allreduce.topology, TOPOLOGIES),
        ("allreduce.mode", allreduce.mode, MODES),
        ("compression.hops", compression.hops, HOPS),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(name, value, f"one of {[str(a) for a in allowed]}")
    if allreduce.bucket_mb <= 0:
        raise ConfigError("allreduce.bucket_mb", allreduce.bucket_mb, "a positive bucket size in MiB")
    if allreduce.staleness < 0:
        raise ConfigError("allreduce.staleness", allreduce.staleness, "an integer >= 0 (0 = synchronous)")
    if allreduce.mode == "local_sgd" and allreduce.local_sgd_period < 1:
        raise ConfigError("allreduce.local_sgd_period", allreduce.local_sgd_period, "an integer >= 1")
    if allreduce.straggler_every < 1:
        raise ConfigError("allreduce.straggler_every", allreduce.straggler_every, "an integer >= 1")
    if allreduce.straggler_delay_s < 0:
        raise ConfigError("allreduce.straggler_delay_s", allreduce.straggler_delay_s, "seconds >= 0")
    if world_size is not None and allreduce.straggler_rank >= world_size:
        raise ConfigError("allreduce.straggler_rank", allreduce.straggler_rank, f"-1 or a rank < {world_size}")
    if allreduce.topology == "config" and not allreduce.racks:
        raise ConfigError("allreduce.racks", allreduce.racks, "a rack -> hostnames mapping when topology=config")
    if allreduce.algorithm == "megatron":
        if compression.codec != "none":
            raise ConfigError(
                "compression.codec", compression.codec,
                "'none' with allreduce.algorithm=megatron (codecs need flat or hierarchical)",
            )
        if allreduce.mode != "sync":
            raise ConfigError("allreduce.mode", allreduce.mode, "'sync' with allreduce.algorithm=megatron")


def rack_problems(racks: Mapping[str, Any]) -> list[ConfigError]:
    """Every problem of an `allreduce.racks` map (rack name -> hostnames): an empty rack, a value that is
    not a list of hostnames, a host listed twice in one rack, a host in two racks."""
    found: list[ConfigError] = []
    rack_of_host: dict[str, str] = {}
    for rack, hosts in racks.items():
        key = f"allreduce.racks.{rack}"
        if not isinstance(hosts, (list, tuple)):
            found.append(ConfigError(key, hosts, "a list of hostnames, e.g. [n1,n2]"))
            continue
        hosts = list(hosts)
        if not hosts:
            found.append(ConfigError(key, hosts, "a non-empty list of hostnames (an empty rack has no ranks)"))
        for host in hosts:
            if not isinstance(host, str) or not host:
                found.append(ConfigError(key, host, "hostnames as non-empty strings"))
            elif rack_of_host.get(host) == rack:
                found.append(ConfigError(key, host, "each host once in its rack (listed twice)"))
            elif host in rack_of_host:
                found.append(ConfigError(key, host, f"each host in one rack (also in '{rack_of_host[host]}')"))
            else:
                rack_of_host[host] = rack
    return found


_RACKS_OVERRIDE = re.compile(r"^[+~]*allreduce\.racks=(.*)$", re.DOTALL)


def duplicate_rack_names(overrides: list[str]) -> list[ConfigError]:
    """A rack named twice in a command-line `allreduce.racks={...}` override (Hydra keeps only the last
    one silently, so this looks at the override's text: top-level keys of the braces)."""
    found: list[ConfigError] = []
    for override in overrides:
        match = _RACKS_OVERRIDE.match(override.strip())
        if not match or not match.group(1).strip().startswith("{"):
            continue
        seen: set[str] = set()
        for name in _top_level_keys(match.group(1).strip()[1:]):
            if name in seen:
                found.append(ConfigError(f"allreduce.racks.{name}", override.split("=", 1)[1],
                                         f"each rack named once (rack '{name}' is listed twice)"))
            seen.add(name)
    return found


def _top_level_keys(body: str) -> list[str]:
    """Keys at depth 0 of a Hydra dict literal's body (the text after its opening brace)."""
    keys: list[str] = []
    depth, token, quote = 0, "", ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and char in ":,":
            if char == ":":
                keys.append(token.strip().strip("'\""))
            token = ""
            continue
        if depth == 0:
            token += char
    return keys
