"""Test scaffolding for the GPU path on a CPU-only build (used by tests/test_gpu_path.py).

- `fake_world(rank, world)`: torch's fake process group (collectives of any device, no math).
- `on_fake_cuda()`: FakeTensorMode (tensors on "cuda" without a GPU; a cuda/cpu mix raises
  FakeTensorDeviceMismatchError), the current `backend` device swapped for `backend.fake_cuda()`,
  and a `HostAudit` that records every operator whose output tensor is on the host, so a test can
  fail when any tensor of the sync path lands on CPU.
- `device_guard_free_bindings()`: on a CPU-only build a few Python bindings of Tensor methods
  (`copy_`, `__getitem__`, `__setitem__`, `contiguous`, `new_tensor`, `~`) take a CUDA device guard *before*
  dispatch and fail ("PyTorch is not linked with support for cuda devices") even for fake tensors;
  the shim routes them to the same aten operators, which FakeTensorMode handles (device checks
  included). Semantics are unchanged; it is active only inside `on_fake_cuda()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hybridrec.distributed import backend

CUDA = backend.fake_cuda().torch_device


def fake_world(rank: int = 0, world: int = 4) -> None:
    """(Re)start this process as `rank` of a fake world of `world` ranks."""
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(backend.FAKE_BACKEND, store=FakeStore(), rank=rank, world_size=world)


class HostAudit(TorchDispatchMode):
    """Records the operators whose outputs include a tensor on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.landed: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == backend.HOST.type for t in tree_leaves(out)):
            self.landed.append(str(func))
        return out


def _getitem(self: torch.Tensor, index: Any) -> torch.Tensor:
    """Basic indexing (ints, slices, None, ...) by aten view ops; tensor indices by aten.index."""
    indices = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in indices):
        if not all(isinstance(i, (torch.Tensor, list)) or i == slice(None) for i in indices):
            raise NotImplementedError(f"fake_gpu: mixed advanced index {index!r}")
        listed = [torch.as_tensor(i, device=self.device) if isinstance(i, list) else i for i in indices]
        return torch.ops.aten.index.Tensor(self, [i if isinstance(i, torch.Tensor) else None for i in listed])
    out, dim = self, 0
    consumed = sum(1 for i in indices if i is not None and i is not Ellipsis)
    for i in indices:
        if i is None:
            out = torch.ops.aten.unsqueeze.default(out, dim)
            dim += 1
        elif i is Ellipsis:
            dim = out.dim() - (consumed - sum(1 for j in indices[:indices.index(i)] if j is not None))
        elif isinstance(i, slice):
            out = torch.ops.aten.slice.Tensor(out, dim, i.start, i.stop, i.step or 1)
            dim += 1
        else:
            out = torch.ops.aten.select.int(out, dim, int(i))
    return out


def _setitem(self: torch.Tensor, index: Any, value: Any) -> None:
    indices = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, torch.Tensor) for i in indices):
        if not isinstance(value, torch.Tensor):
            value = torch.full((), value, dtype=self.dtype, device=self.device)
        torch.ops.aten.index_put_.default(self, list(indices), value)
        return
    target = self[index]
    if isinstance(value, torch.Tensor):
        torch.ops.aten.copy_.default(target, value)
    else:
        target.fill_(value)


def _new_tensor(self: torch.Tensor, data: Any, dtype: torch.dtype | None = None, device: Any = None,
                requires_grad: bool = False) -> torch.Tensor:
    mode = self.fake_mode if isinstance(self, FakeTensor) else contextlib.nullcontext()
    with mode:  # also on GradSync's async worker thread, where no mode is active
        return torch.tensor(data, dtype=dtype or self.dtype, device=device or self.device,
                            requires_grad=requires_grad)


def _contiguous(self: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    return self if self.is_contiguous(memory_format=memory_format) else torch.clone(self, memory_format=memory_format)


_SHIMS = {
    "copy_": lambda self, src, non_blocking=False: torch.ops.aten.copy_.default(self, src, non_blocking),
    "__getitem__": _getitem,
    "__setitem__": _setitem,
    "new_tensor": _new_tensor,
    "contiguous": _contiguous,
    "__invert__": lambda self: torch.bitwise_not(self),
}


@contextlib.contextmanager
def device_guard_free_bindings() -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in _SHIMS}
    for name, fn in _SHIMS.items():
        setattr(torch.Tensor, name, fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@contextlib.contextmanager
def unpatched_factories() -> Iterator[None]:
    """Undo backend patch C (tensor factories asked for "cuda" allocate on CPU) while faking CUDA: an
    earlier test in the same process may have set the process up for CPU megatron runs."""
    patched = {name: getattr(torch, name) for name in backend._FACTORIES
               if getattr(getattr(torch, name), "__hybridrec_patched__", False)}
    for name, fn in patched.items():
        setattr(torch, name, fn.__wrapped__)
    try:
        yield
    finally:
        for name, fn in patched.items():
            setattr(torch, name, fn)


@contextlib.contextmanager
def fake_cuda_mode(allow_non_fake_inputs: bool = False) -> Iterator[FakeTensorMode]:
    """FakeTensorMode + the fake-cuda device + the binding shim, without the audit."""
    with backend.use(backend.fake_cuda()), unpatched_factories(), device_guard_free_bindings(), \
            FakeTensorMode(allow_non_fake_inputs=allow_non_fake_inputs) as mode:
        yield mode


@contextlib.contextmanager
def on_fake_cuda(allow_non_fake_inputs: bool = False) -> Iterator[HostAudit]:
    with fake_cuda_mode(allow_non_fake_inputs), HostAudit() as audit:
        yield audit


def on_cuda(*tensors: torch.Tensor) -> bool:
    return all(t.device == CUDA for t in tensors)
