"""The parallel layout: tp x pp x dp (+ virtual pipeline stages) and micro-batching, validated once.

`ParallelLayout.build(parallel_cfg, world_size, global_batch_size)` owns the arithmetic of a layout and
refuses impossible ones with a `ConfigError` naming the field. Rank groups are computed here as pure
data, in megatron-core's rank order ("tp-cp-ep-dp-pp", cp = ep = 1): a global rank is
``tp_rank + tp * dp_rank + tp * dp * pp_rank``. Creating torch/megatron process groups happens
elsewhere (megatron's `parallel_state.initialize_model_parallel`); the lists here must agree with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hybridrec.errors import ConfigError

# megatron-core's default order for `initialize_model_parallel`; cp and ep are always 1 here
MEGATRON_ORDER = "tp-cp-ep-dp-pp"
# the dimensions that vary in our layouts, fastest first
_DIMS = ("tp", "dp", "pp")


@dataclass(frozen=True)
class RankCoord:
    """Where one global rank sits in the layout."""

    rank: int
    tp: int
    dp: int
    pp: int


@dataclass(frozen=True)
class ParallelLayout:
    """A validated layout; build it with `ParallelLayout.build`, never by hand in training code."""

    tp: int
    pp: int
    vpp: int
    dp: int
    micro_batch_size: int
    num_micro_batches: int
    world_size: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, parallel_cfg: Any, world_size: int, global_batch_size: int) -> ParallelLayout:
        """Derive and check the layout from a `ParallelConfig` (or anything with its attributes).

        Raises ConfigError naming the offending field, its value and what is allowed.
        """
        tp = _positive_int(parallel_cfg, "tp")
        pp = _positive_int(parallel_cfg, "pp")
        vpp = _positive_int(parallel_cfg, "vpp")
        micro_batch_size = _positive_int(parallel_cfg, "micro_batch_size")
        dp_cfg = getattr(parallel_cfg, "dp", 0) or 0
        if not isinstance(world_size, int) or world_size < 1:
            raise ConfigError("world_size", world_size, "a positive integer (number of processes)")
        if not isinstance(global_batch_size, int) or global_batch_size < 1:
            raise ConfigError("train.global_batch_size", global_batch_size, "a positive integer")
        if dp_cfg < 0:
            raise ConfigError("parallel.dp", dp_cfg, "0 (derive from world size) or a positive integer")
        if world_size % (tp * pp) != 0:
            raise ConfigError(
                "parallel.tp*parallel.pp", tp * pp,
                f"a divisor of the world size {world_size} (tp={tp}, pp={pp}; tp*pp*dp must equal it)",
            )
        dp = world_size // (tp * pp)
        if dp_cfg and dp_cfg != dp:
            raise ConfigError(
                "parallel.dp", dp_cfg,
                f"tp*pp*dp == world size {world_size}: with tp={tp}, pp={pp} dp must be {dp} (or 0 = derive)",
            )
        if vpp > 1 and pp < 2:
            raise ConfigError("parallel.vpp", vpp, f"1 when parallel.pp={pp} (interleaving needs pp >= 2)")
        per_step = dp * micro_batch_size
        if global_batch_size % per_step != 0:
            raise ConfigError(
                "train.global_batch_size", global_batch_size,
                f"a multiple of dp*micro_batch_size = {dp}*{micro_batch_size} = {per_step}",
            )
        num_micro_batches = global_batch_size // per_step
        if vpp > 1 and num_micro_batches % pp != 0:
            raise ConfigError(
                "train.global_batch_size", global_batch_size,
                f"a value giving a number of micro-batches divisible by pp={pp} for interleaved schedules "
                f"(now {num_micro_batches} = {global_batch_size}/({dp}*{micro_batch_size}))",
            )
        return cls(tp=tp, pp=pp, vpp=vpp, dp=dp, micro_batch_size=micro_batch_size,
                   num_micro_batches=num_micro_batches, world_size=world_size)

    # ------------------------------------------------------------------ derived numbers
    @property
    def global_batch_size(self) -> int:
        return self.dp * self.micro_batch_size * self.num_micro_batches

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp

    def bubble_fraction(self) -> float:
        """1F1B theory: (p-1)/(m+p-1); interleaving divides the bubble by vpp: (p-1)/(v*m+p-1)."""
        p, m, v = self.pp, self.num_micro_batches, self.vpp
        return (p - 1) / (v * m + p - 1)

    def name(self) -> str:
        suffix = f"-vpp{self.vpp}" if self.vpp > 1 else ""
        return f"tp{self.tp}-pp{self.pp}-dp{self.dp}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["global_batch_size"] = self.global_batch_size
        out["name"] = self.name()
        return out

    # ------------------------------------------------------------------ rank arithmetic (pure)
    def _sizes(self) -> dict[str, int]:
        return {"tp": self.tp, "dp": self.dp, "pp": self.pp}

    def coords(self, rank: int) -> RankCoord:
        """tp, dp and pp index of a global rank (megatron order: tp fastest, pp slowest)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside [0, {self.world_size})")
        tp_rank = rank % self.tp
        dp_rank = (rank // self.tp) % self.dp
        pp_rank = rank // (self.tp * self.dp)
        return RankCoord(rank=rank, tp=tp_rank, dp=dp_rank, pp=pp_rank)

    def rank_of(self, tp: int, dp: int, pp: int) -> int:
        return tp + self.tp * dp + self.tp * self.dp * pp

    def groups(self, dims: str) -> list[list[int]]:
        """Rank groups varying the dimensions in `dims` (e.g. "tp", "dp", "tp-pp"), others fixed.

        Groups are listed in megatron's order: by the index of the fixed dimensions, fastest first;
        ranks inside a group by the varying dimensions, fastest first.
        """
        varying = dims.split("-")
        for dim in varying:
            if dim not in _DIMS:
                raise ValueError(f"unknown dimension {dim!r}; expected one of {_DIMS}")
        sizes = self._sizes()
        fixed = [d for d in _DIMS if d not in varying]
        inner = [d for d in _DIMS if d in varying]
        out: list[list[int]] = []
        for fixed_index in _mixed_radix(fixed, sizes):
            group = []
            for inner_index in _mixed_radix(inner, sizes):
                coord = {**fixed_index, **inner_index}
                group.append(self.rank_of(coord["tp"], coord["dp"], coord["pp"]))
            out.append(group)
        return out

    def tp_groups(self) -> list[list[int]]:
        return self.groups("tp")

    def dp_groups(self) -> list[list[int]]:
        return self.groups("dp")

    def pp_groups(self) -> list[list[int]]:
        return self.groups("pp")

    def model_parallel_groups(self) -> list[list[int]]:
        return self.groups("tp-pp")

    def group_of(self, rank: int, dims: str) -> list[int]:
        """The group (for `dims`) that contains `rank`."""
        for group in self.groups(dims):
            if rank in group:
                return group
        raise ValueError(f"rank {rank} outside [0, {self.world_size})")

    def is_first_stage(self, rank: int) -> bool:
        return self.coords(rank).pp == 0

    def is_last_stage(self, rank: int) -> bool:
        return self.coords(rank).pp == self.pp - 1


def _mixed_radix(dims: list[str], sizes: dict[str, int]) -> list[dict[str, int]]:
    """All index combinations of `dims`, the first dimension varying fastest."""
    combos: list[dict[str, int]] = [{}]
    for dim in dims:
        combos = [{**c, dim: i} for i in range(sizes[dim]) for c in combos]
    return combos


def _positive_int(cfg: Any, name: str) -> int:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"parallel.{name}", value, "a positive integer")
    return value
