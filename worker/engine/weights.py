"""Initial weights exactly as `torch.manual_seed(seed)` then `nn.Conv2d(...)` draws them, for one seed or many.

Large batches draw through a vectorized MT19937 (torch's CPU generator) in numpy, checked against
torch's own generator on the first seed of every batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

VECTOR_INIT_MIN = 32
"""Batches of at least this many jobs draw their initial weights through a vectorized MT19937."""

VECTOR_INIT_MAX_DRAWS = 227
"""Most draws per seed the vectorized MT19937 makes: its first twist covers 227 outputs."""


def _bounds(shape: tuple[int, int, int, int]) -> tuple[float, float]:
    """nn.Conv2d.reset_parameters: weights kaiming_uniform_(a=sqrt(5)), bias uniform in +-1/sqrt(fan_in)."""
    _, ci, kh, kw = shape
    fan_in = ci * kh * kw
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in)), 1 / math.sqrt(fan_in)


def initial_weights(seed: int, shape: tuple[int, int, int, int], bias: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `torch.manual_seed(seed); nn.Conv2d(...)` starts from, without nn.Conv2d's overhead."""
    bound, bias_bound = _bounds(shape)
    generator.manual_seed(seed)
    # float32 whatever torch's default dtype (a notebook's torch.set_default_dtype(torch.float64) drew other weights
    # and trained in float64): nn.Conv2d's, as `klab run` and the workers draw them
    w = torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    b = torch.empty(shape[0], dtype=torch.float32).uniform_(-bias_bound, bias_bound, generator=generator) if bias \
        else None
    return w, b


def _mt19937_first(seeds: np.ndarray, k: int) -> np.ndarray:
    """The first k outputs of torch's CPU generator (MT19937) after manual_seed(s), for every seed (B x k)."""
    s = (np.asarray(seeds, dtype=np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    state = np.empty((397 + k, s.size), dtype=np.uint32)
    state[0] = s
    mult = np.uint32(1812433253)
    with np.errstate(over="ignore"):
        for j in range(1, 397 + k):
            prev = state[j - 1]
            state[j] = mult * (prev ^ (prev >> np.uint32(30))) + np.uint32(j)
    out = np.empty((k, s.size), dtype=np.uint32)
    for i in range(k):  # the first twist needs only state[i], state[i + 1] and state[i + 397]
        y = (state[i] & np.uint32(0x80000000)) | (state[i + 1] & np.uint32(0x7FFFFFFF))
        v = state[i + 397] ^ (y >> np.uint32(1)) ^ np.where(y & np.uint32(1), np.uint32(0x9908B0DF), np.uint32(0))
        v ^= v >> np.uint32(11)
        v ^= (v << np.uint32(7)) & np.uint32(0x9D2C5680)
        v ^= (v << np.uint32(15)) & np.uint32(0xEFC60000)
        v ^= v >> np.uint32(18)
        out[i] = v
    return np.ascontiguousarray(out.T)  # B x k in rows: weights laid out as a job's alone (out.T's columns reached
    # Residuals as strides that summed a batch's outputs in another order: float32 losses apart from the job's alone)


def _uniform(raw: np.ndarray, bound: float) -> np.ndarray:
    """torch's CPU float uniform_(-bound, bound) from raw 32-bit outputs (its float math, fused)."""
    lo, hi = np.float32(-bound), np.float32(bound)
    x = (raw & np.uint32(0xFFFFFF)).astype(np.float64) * 2.0**-24
    return (x * np.float64(hi - lo) + np.float64(lo)).astype(np.float32)


def batch_initial_weights(seeds: Sequence[int], shape: tuple[int, int, int, int], bias: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`initial_weights` for many seeds at once: B x C_out x C_in x kh x kw (and B x C_out)."""
    gen = torch.Generator()

    def one_by_one() -> tuple[torch.Tensor, torch.Tensor | None]:
        inits = [initial_weights(s, shape, bias, gen) for s in seeds]
        return torch.stack([w for w, _ in inits]), torch.stack([b for _, b in inits]) if bias else None

    nw = math.prod(shape)
    k = nw + (shape[0] if bias else 0)
    if len(seeds) < VECTOR_INIT_MIN or k > VECTOR_INIT_MAX_DRAWS:
        return one_by_one()
    bound, bias_bound = _bounds(shape)
    raw = _mt19937_first(np.asarray(seeds, dtype=np.uint64), k)
    w = torch.from_numpy(_uniform(raw[:, :nw], bound).reshape(len(seeds), *shape))
    b = torch.from_numpy(_uniform(raw[:, nw:], bias_bound)) if bias else None
    # The emulation must agree with torch's own generator; check the first seed of every batch.
    w1, b1 = initial_weights(int(seeds[0]), shape, bias, gen)
    if not torch.equal(w1, w[0]) or (bias and not torch.equal(b1, b[0])):
        return one_by_one()
    return w, b
