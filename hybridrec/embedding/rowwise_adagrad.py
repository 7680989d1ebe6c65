"""Row-wise AdaGrad and its momentum-scaled variant, applied sparsely to the touched rows of a shard.

Row-wise AdaGrad keeps one accumulator per embedding row (instead of one per element): for a row r
with gradient g_r (a vector of `dim` values) touched in this step

    v_r <- v_r + mean_j(g_rj ** 2)
    w_r <- w_r - lr * g_r / sqrt(v_r / c + eps)

and rows not touched in the step keep their weights *and* accumulators bit for bit (they are never
written). c = 1 is plain row-wise AdaGrad.

Momentum-scaled row-wise AdaGrad (Zhang et al., "Two-dimensional Sparse Parallelism for Large Scale
Deep Learning Recommendation Model Training", arXiv:2508.03854, Meta): under 2D sparse parallelism
each of the M replica groups steps on the gradient of its own share of the batch (1/M of it) and
the replicas' rows are then averaged. A smaller batch gives noisier row gradients, so the
accumulated second moment v (the paper's "momentum") grows about M times faster than with full
sharding, which silently decays the learning rate by ~sqrt(M). The paper's fix divides the
accumulator by c = M in the denominator, lr / sqrt(v / c + eps), restoring the effective step size;
the memory cost is nil (c is a scalar). The seed file in /work/shared/seeds holds only the abstract;
the form lr / sqrt(v/c + eps) with c = M was taken from a public summary of the paper, and the
placement of eps inside the square root follows that summary.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hybridrec.errors import ConfigError


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise AdaGrad over 2-D parameters (rows x dim) with sparse (COO) or dense gradients.

    `momentum_scale` is the paper's c: 1.0 for plain row-wise AdaGrad, M (number of replica groups)
    for the momentum-scaled variant under 2D sparse parallelism with weight averaging.
    A dense gradient counts every row as touched; a sparse gradient touches only its rows.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.05, eps: float = 1e-8,
                 momentum_scale: float = 1.0, initial_accumulator_value: float = 0.0):
        if not lr > 0:
            raise ConfigError("embedding.lr", lr, "a positive learning rate")
        if not eps > 0:
            raise ConfigError("embedding.eps", eps, "a positive epsilon")
        if not momentum_scale > 0:
            raise ConfigError("embedding.momentum_scale", momentum_scale, "a positive scale c (1 = plain)")
        if initial_accumulator_value < 0:
            raise ConfigError("embedding.initial_accumulator_value", initial_accumulator_value, ">= 0")
        defaults = {"lr": lr, "eps": eps, "momentum_scale": momentum_scale,
                        "initial_accumulator_value": initial_accumulator_value}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ConfigError("RowWiseAdagrad.params", tuple(p.shape), "2-D tensors (rows x dim)")
                self.state[p]["sum"] = p.new_full((p.shape[0],), float(initial_accumulator_value),
                                                  dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows = torch.arange(p.shape[0], device=p.device)
                    values = p.grad
                self.step_rows(p, rows, values, group)
        return loss

    @torch.no_grad()
    def step_rows(self, param: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor,
                  group: dict | None = None) -> None:
        """Update `param[rows]` (rows unique) with row gradients `grads` (len(rows) x dim)."""
        if rows.numel() == 0:
            return
        group = group or self.param_groups[0]
        if grads.shape != (rows.numel(), param.shape[1]):
            raise ValueError(f"row gradients of shape {tuple(grads.shape)} do not match "
                             f"{rows.numel()} rows x dim {param.shape[1]}")
        accumulator = self.state[param]["sum"]
        g = grads.to(torch.float32)
        new_sum = accumulator[rows] + g.pow(2).mean(dim=1)
        accumulator.index_copy_(0, rows, new_sum)
        denom = torch.sqrt(new_sum / group["momentum_scale"] + group["eps"])
        update = (g * (group["lr"] / denom).unsqueeze(1)).to(param.dtype)
        param.index_copy_(0, rows, param[rows] - update)
