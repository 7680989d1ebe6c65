"""The one place where CPU and GPU runs differ.

megatron-core assumes CUDA in a handful of places. On a machine without a GPU, `setup("cpu")`
patches torch once (idempotently) so the same megatron code path runs on CPU with gloo
(docs: ../shared/design/NOTES.md section 1, patches A, B, C, E; D only matters with batched p2p):

- A: `torch.cuda.get_rng_state` (both names) return the CPU RNG state (megatron's RNG tracker).
- B: `torch.cuda.current_device()` returns `torch.device("cpu")`, so megatron allocates on CPU.
- C: tensor factories called with `device="cuda"` allocate on CPU (the pipeline schedules).
- D: `torch.cuda.synchronize` is a no-op (batched p2p with sync).
- E: no-argument `Tensor.type()` on a CPU float tensor reports the CUDA type name, which is what
  megatron's optimizer, gradient clipping and distributed optimizer check for.
- F: `Tensor.cuda()` returns the tensor itself (megatron moves the tied output embedding of the last
  pipeline stage with `.cuda()` before its first all-reduce: language_module.py:244).
- G: torch's queue of deferred CUDA calls drops what is queued after setup. megatron's RNG tracker
  sets the "CUDA" RNG state through `torch.cuda._lazy_call` (random.py:111) several times per step;
  with CUDA never initialised torch keeps every call with a formatted stack trace forever (they would
  only run at CUDA initialisation, which never comes), so memory grew with every step (issue 17).

Nothing else in hybridrec knows about these differences: callers ask `device()` and
`process_group_backend()` and build everything else the same way.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from hybridrec.errors import ConfigError

_FACTORIES = ("zeros", "empty", "ones", "full", "tensor", "arange", "randn", "rand", "zeros_like", "empty_like")
_state: dict[str, Any] = {"device": None, "patched": False}


def _cuda_to_cpu_device(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        dev = kwargs.get("device")
        if dev is not None and str(dev).startswith("cuda"):
            kwargs["device"] = "cpu"
        return fn(*args, **kwargs)

    wrapper.__hybridrec_patched__ = True  # type: ignore[attr-defined]
    return wrapper


def _cuda_type_name(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def tensor_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or self.is_cuda:
            return original(self, *args, **kwargs)
        return original(self).replace("torch.", "torch.cuda.", 1)

    return tensor_type


class _DiscardedCalls(list):
    """Stands in for `torch.cuda._queued_calls` on CPU: deferred CUDA calls are dropped, not kept."""

    def append(self, item: Any) -> None:  # the call would only run at CUDA initialisation
        return None


def _patch_torch_for_cpu() -> None:
    """Apply patches A-G once per process."""
    if _state["patched"]:
        return
    cpu_rng = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.get_rng_state = cpu_rng  # A
    torch.cuda.random.get_rng_state = cpu_rng  # A
    torch.cuda.current_device = lambda: torch.device("cpu")  # B
    for name in _FACTORIES:  # C
        fn = getattr(torch, name)
        if not getattr(fn, "__hybridrec_patched__", False):
            setattr(torch, name, _cuda_to_cpu_device(fn))
    torch.cuda.synchronize = lambda *args, **kwargs: None  # D
    torch.Tensor.type = _cuda_type_name(torch.Tensor.type)  # E
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # F
    if not torch.cuda.is_initialized():  # G
        torch.cuda._queued_calls = _DiscardedCalls(torch.cuda._queued_calls)
    # on CPU the RNG tracker's fork switches nothing (NOTES.md): megatron warns on every dropout call
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)
    _state["patched"] = True


def resolve_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Refuses 'cuda' without a GPU."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ConfigError("device", requested, "one of auto, cpu, cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", requested, "cpu or auto (no CUDA device is visible)")
    return requested


def setup(device: str = "auto", local_rank: int = 0) -> str:
    """Prepare this process for megatron on `device` ('auto', 'cpu', 'cuda'); idempotent.

    Returns the resolved device. On CPU the torch patches above are applied; on GPU the process is
    bound to `local_rank`'s GPU.
    """
    resolved = resolve_device(device)
    if _state["device"] is not None and _state["device"] != resolved:
        raise ConfigError("device", resolved, f"the device this process was set up for ({_state['device']})")
    if resolved == "cpu":
        _patch_torch_for_cpu()
    else:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    _state["device"] = resolved
    return resolved


def device() -> torch.device:
    """The torch device tensors of this process live on (after `setup`)."""
    if _state["device"] is None:
        setup("auto")
    if _state["device"] == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def process_group_backend(requested: str = "auto") -> str:
    """torch.distributed backend: gloo on CPU, nccl on GPU, unless a config names one."""
    if requested not in ("auto", "gloo", "nccl"):
        raise ConfigError("parallel.backend", requested, "one of auto, gloo, nccl")
    if requested != "auto":
        if requested == "nccl" and not torch.cuda.is_available():
            raise ConfigError("parallel.backend", requested, "gloo or auto (nccl needs a GPU)")
        return requested
    resolved = _state["device"] or resolve_device("auto")
    return "nccl" if resolved == "cuda" else "gloo"


def is_cpu() -> bool:
    return device().type == "cpu"
