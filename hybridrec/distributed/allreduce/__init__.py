"""All-reduce algorithms over torch.distributed groups, summing a 1-D fp32 bucket in place:
a registry name -> function(tensor, ctx, key). Groups come from `groups.build_comm_groups` (once)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridrec.distributed.allreduce.common import ReduceContext
from hybridrec.distributed.allreduce.flat import flat_sum_
from hybridrec.distributed.allreduce.groups import (
    CommGroups,
    build_comm_groups,
    discover_rack_map,
    plan_groups,
)
from hybridrec.distributed.allreduce.hierarchical import leader_sum_, reduce_scatter_sum_
from hybridrec.errors import ConfigError

SumFn = Callable[[torch.Tensor, ReduceContext, str], None]

ALGORITHMS: dict[str, SumFn] = {
    "flat": flat_sum_,
    "hierarchical/leader": leader_sum_,
    "hierarchical/reduce_scatter": reduce_scatter_sum_,
}


def get_algorithm(algorithm: str, variant: str = "leader") -> SumFn:
    name = f"hierarchical/{variant}" if algorithm == "hierarchical" else algorithm
    if name not in ALGORITHMS:
        raise ConfigError("allreduce.algorithm/variant", name, f"one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


__all__ = [
    "ALGORITHMS", "CommGroups", "ReduceContext", "build_comm_groups", "discover_rack_map", "get_algorithm",
    "plan_groups",
]
