"""The update rules, for every job of a batch at once, each job with its own learning rate.

Each reproduces its torch.optim counterpart's arithmetic (SGD, SGD with momentum, Adam with its
defaults), so a job's weights match the book's code. Jobs that stopped (diverged, cancelled) keep
their weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from service import defaults
from service.jobs.choices import Method


class Optimizer:
    """Plain gradient descent: w -= lr * grad (the book's `weight.data -= lr * grad`, and torch.optim.SGD)."""

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float]):
        self.params = list(params)
        self.lrs = list(lrs)
        lr = torch.tensor(self.lrs, dtype=torch.float32, device=self.params[0].device)
        self.lr = [lr.view((-1,) + (1,) * (p.dim() - 1)) for p in self.params]  # broadcast over each param
        self.steps = 0

    def step(self, grads: Sequence[torch.Tensor], alive: torch.Tensor) -> None:
        self.steps += 1
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads)):
                new = self.update(i, p, g)
                p.copy_(torch.where(alive.view((-1,) + (1,) * (p.dim() - 1)), new, p))

    def update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return p - self.lr[i] * g


class Momentum(Optimizer):
    """torch.optim.SGD(momentum=MOMENTUM): buf = momentum * buf + grad; w -= lr * buf."""

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float]):
        super().__init__(params, lrs)
        self.buf: list[torch.Tensor | None] = [None] * len(self.params)

    def update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        buf = self.buf[i]
        buf = g.clone() if buf is None else buf.mul_(defaults.MOMENTUM).add_(g)
        self.buf[i] = buf
        return p - self.lr[i] * buf


class Adam(Optimizer):
    """torch.optim.Adam with its defaults (betas ADAM_BETAS, eps ADAM_EPS), bias-corrected."""

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float]):
        super().__init__(params, lrs)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = defaults.ADAM_BETAS
        m, v = self.m[i], self.v[i]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1 = 1 - b1**self.steps
        bc2_sqrt = (1 - b2**self.steps) ** 0.5
        step_size = torch.tensor([-lr / bc1 for lr in self.lrs], dtype=torch.float32,
                                 device=p.device).view(self.lr[i].shape)
        denom = (v.sqrt() / bc2_sqrt).add_(defaults.ADAM_EPS)
        return p + step_size * m / denom


def optimizer(method: Method, params: Sequence[torch.Tensor], lrs: Sequence[float]) -> Optimizer:
    """The update rule of a method (d2l-manual and d2l-sgd: plain gradient descent)."""
    return {Method.MOMENTUM: Momentum, Method.ADAM: Adam}.get(method, Optimizer)(params, lrs)
