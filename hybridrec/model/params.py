"""Global parameter identity and the layout-independent initialisation.

Every parameter of a model chunk has a *global name*: its name in the one-process model
(decoder layers numbered globally; the last stage's tied output weight is the word embedding).
From the global name alone we derive the full (un-sliced) initial tensor, seeded by the name, and
then cut this rank's tensor-parallel slice. So every tp x pp x dp (x vpp) layout starts from the same
weights, and per-rank checkpoints can be reassembled into full tensors by global name.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
TIED_OUTPUT = "output_layer.weight"
WORD_EMBEDDING = "embedding.word_embeddings.weight"


@dataclass(frozen=True)
class ParamInfo:
    """Where one local parameter sits in the full model."""

    local_name: str
    global_name: str
    # dimension the parameter is split along across tp ranks, or None if replicated over tp
    partition_dim: int | None
    tp_size: int
    tp_rank: int
    local_shape: tuple[int, ...]

    @property
    def full_shape(self) -> tuple[int, ...]:
        shape = list(self.local_shape)
        if self.partition_dim is not None:
            shape[self.partition_dim] *= self.tp_size
        return tuple(shape)


def global_name(local_name: str, chunk: torch.nn.Module, tied_output: bool) -> str:
    """Name of a chunk's parameter in the one-process model."""
    name = local_name.removeprefix("module.")
    match = _LAYER.match(name)
    if match:
        layer = chunk.decoder.layers[int(match.group(1))]
        return f"decoder.layers.{layer.layer_number - 1}.{match.group(2)}"
    if tied_output and name == TIED_OUTPUT:
        return WORD_EMBEDDING
    return name


def param_infos(chunk: torch.nn.Module, tp_size: int, tp_rank: int, tied_output: bool) -> list[ParamInfo]:
    """ParamInfo for each parameter of a (not DDP-wrapped) megatron chunk, in named_parameters order."""
    infos = []
    for name, param in chunk.named_parameters():
        split = bool(getattr(param, "tensor_model_parallel", False)) and tp_size > 1
        infos.append(ParamInfo(
            local_name=name,
            global_name=global_name(name, chunk, tied_output),
            partition_dim=int(param.partition_dim) if split else None,
            tp_size=tp_size,
            tp_rank=tp_rank,
            local_shape=tuple(param.shape),
        ))
    return infos


def full_initial_value(name: str, shape: tuple[int, ...], std: float, seed: int) -> torch.Tensor:
    """The initial full tensor of the parameter called `name` (global name), on CPU.

    Norm weights start at 1, biases (and norm biases) at 0, matrices and embeddings ~ N(0, std),
    drawn from a generator seeded by (seed, name) so the value depends on nothing else.
    """
    leaf = name.rsplit(".", 1)[-1]
    is_norm = "norm" in name
    if leaf == "bias":
        return torch.zeros(shape)
    if is_norm and leaf == "weight":
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    return torch.randn(shape, generator=generator) * std


def tp_slice(full: torch.Tensor, info: ParamInfo) -> torch.Tensor:
    if info.partition_dim is None:
        return full
    return full.chunk(info.tp_size, dim=info.partition_dim)[info.tp_rank]


@torch.no_grad()
def initialize_chunk(chunk: torch.nn.Module, infos: list[ParamInfo], std: float, seed: int) -> None:
    """Overwrite every parameter of `chunk` with its slice of the layout-independent initial value."""
    params = dict(chunk.named_parameters())
    for info in infos:
        full = full_initial_value(info.global_name, info.full_shape, std, seed)
        params[info.local_name].copy_(tp_slice(full, info))


def assemble_full(shards: list[tuple[ParamInfo, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reassemble full tensors (by global name) from (info, local tensor) pairs of all tp/pp ranks.

    Pairs may repeat (dp replicas, the tied output weight); for a split parameter every tp rank's slice
    must be present exactly once.
    """
    slices: dict[str, dict[int, torch.Tensor]] = {}
    dims: dict[str, int | None] = {}
    for info, tensor in shards:
        dims[info.global_name] = info.partition_dim
        key = info.tp_rank if info.partition_dim is not None else 0
        slices.setdefault(info.global_name, {}).setdefault(key, tensor)
    full = {}
    for name, parts in slices.items():
        dim = dims[name]
        if dim is None:
            full[name] = parts[0]
        else:
            ranks = sorted(parts)
            if ranks != list(range(len(ranks))):
                raise ValueError(f"parameter {name}: tensor-parallel slices {ranks} are incomplete")
            full[name] = torch.cat([parts[r] for r in ranks], dim=dim)
    return full
