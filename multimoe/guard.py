"""Numerical guard: training stops at the first non-finite loss or gradient, with a message naming the step.

A NaN that reaches the optimizer spreads to every weight in one step, and the run then reports chance-level
metrics as if nothing happened. The guard records the first bad step on the tensors' device without a host sync
and reads it every ``every`` steps (every step on CPU, where reading costs nothing), so the message names the exact
step either way. Nothing is written after a fault: the checkpoints of the last completed epoch stay as they were.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multimoe.errors import NonFiniteError


def grad_norm(model: nn.Module, clip: float = 0.0) -> Tensor:
    """Total L2 norm of the gradients (before clipping); clips to ``clip`` when it is > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


class FiniteGuard:
    """Watches each training step's loss and gradient norm; raises ``NonFiniteError`` on the first bad one."""

    def __init__(self, device: torch.device, steps_per_epoch: int, every: int | None = None) -> None:
        self.every = every or (1 if device.type == "cpu" else 50)
        self.steps_per_epoch = steps_per_epoch
        self.first_step = torch.tensor(-1, device=device)  # global step of the first bad step (-1: none)
        self.first_values = torch.zeros(2, device=device)  # its loss and gradient norm
        self.pending = 0

    def observe(self, epoch: int, step: int, loss: Tensor, norm: Tensor) -> None:
        """Record step ``step`` (from 1) of ``epoch`` (from 1); reads the record every ``every`` steps."""
        values = torch.stack([loss.detach().float(), norm.detach().float().to(loss.device)])
        new = ~torch.isfinite(values).all() & (self.first_step < 0)
        self.first_step = torch.where(new, (epoch - 1) * self.steps_per_epoch + step - 1, self.first_step)
        self.first_values = torch.where(new, values, self.first_values)
        self.pending += 1
        if self.pending >= self.every:
            self.check()

    def check(self) -> None:
        """Raise if any step observed so far was not finite (a host sync on accelerators)."""
        self.pending = 0
        first = int(self.first_step)
        if first < 0:
            return
        loss, norm = self.first_values.tolist()
        done, step = divmod(first, self.steps_per_epoch)  # epochs completed before the bad one; step from 0
        what = f"loss {loss}" if not torch.isfinite(torch.tensor(loss)) else f"gradient norm {norm} (loss {loss:.4g})"
        kept = (
            f"the checkpoints of epoch {done} (the last completed) are kept"
            if done
            else "no epoch had completed, so there is no checkpoint"
        )
        raise NonFiniteError(
            f"non-finite {what} at epoch {done + 1}, step {step + 1} of {self.steps_per_epoch}: training stopped; "
            f"{kept}. Lower train.lr, set train.grad_clip, or check the input data"
        )
