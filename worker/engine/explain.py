"""The one sentence under a result: which part of the gap dominates, and what would close it; for every job
of a batch at once (the cases found with numpy, then one f-string a job)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.jobs.status import TRAINED, JobStatus
from service.render.text import each_channel, factor
from worker.engine.pace import as_fast, under_bound


@dataclass(frozen=True)
class Facts:
    """What the sentences are made from: arrays, one value a job (NaN where a number does not apply)."""

    status: np.ndarray  # JobStatus values
    optimization: np.ndarray  # 0 under the weights' float32 rounding, as text prints it (service.render.text)
    noise: np.ndarray
    identifiability: np.ndarray
    relative: np.ndarray
    rank: np.ndarray
    params: np.ndarray
    sums_only: np.ndarray  # bool
    grew: np.ndarray  # bool: the mse ended above where it began
    overflowed: np.ndarray  # bool: diverged with a loss or mse out of float32's range (not by growth alone)
    exact: np.ndarray  # bool: labels of the true kernel itself, no noise added (rounded to float32 alone)
    lr: np.ndarray
    lr_bound: np.ndarray  # the largest stable lr (worker.engine.pace)
    rate: np.ndarray
    more: np.ndarray
    best_lr: np.ndarray  # the least lr that closes the gap fastest (worker.engine.pace.Pace.best_lr)
    best_rate: np.ndarray
    converged: np.ndarray  # the epoch from which the mse stayed within --tol of the optimum's (NaN: none)
    outputs: int = 1  # the kernel's output channels: rank and params are one channel's (each is fitted alone)
    with_bias: np.ndarray | None = None  # the relative error of the kernel and the bias together (NaN: no true bias)
    best_high: np.ndarray | None = None  # the most lr that closes it as fast (None: best_lr alone)

    @cached_property
    def fastest(self) -> tuple[np.ndarray, np.ndarray]:
        """The least and the most lr that close the gap fastest (NaN where not known; the most is the least where
        not given)."""
        high = self.best_lr if self.best_high is None else np.where(np.isnan(self.best_high), self.best_lr,
                                                                    self.best_high)
        return self.best_lr, high

    @cached_property
    def about_fastest(self) -> np.ndarray:
        """Jobs whose epochs shrink the gap at least as much as the fastest lr's within ABOUT_FASTEST, log for log."""
        return as_fast(self.rate, self.best_rate, ABOUT_FASTEST)

    @cached_property
    def unbounded(self) -> np.ndarray:
        """Jobs trained with no stable lr to go by (adam; lstsq has no lr): their gap need not shrink every epoch."""
        return np.isnan(self.lr_bound) & np.isfinite(self.lr)

    @classmethod
    def one(cls, status: JobStatus, optimization: float | None, noise: float | None,
            identifiability: float | None, rank: int, params: int, sums_only: bool = False, **more: float | None
            ) -> Facts:
        """The facts of a single job (missing numbers: None)."""
        def arr(v: float | bool | str | None) -> np.ndarray:
            return np.array([np.nan if v is None else v])

        values = dict(optimization=optimization, noise=noise, identifiability=identifiability, rank=rank,
                      params=params)
        for name in ("relative", "lr", "lr_bound", "rate", "more", "best_lr", "best_high", "best_rate", "converged"):
            values[name] = more.get(name)
        return cls(status=np.array([status.value]), sums_only=np.array([sums_only]),
                   grew=np.array([bool(more.get("grew"))]), exact=np.array([bool(more.get("exact"))]),
                   overflowed=np.array([bool(more.get("overflowed"))]),
                   **{k: arr(v) for k, v in values.items()})


(DIVERGED, NOTHING, NO_TRUTH, MATCH, TOO_FAST_DIVERGED, TOO_FAST, STALLED, GREW, CLOSING, SLOW, SLOW_UNBOUNDED,
 WITHIN_TOL, IDENT, NOISE, ROUNDING, OVERFLOW) = range(16)


def cases(f: Facts) -> np.ndarray:
    """Which sentence each job gets."""
    with np.errstate(invalid="ignore"):  # above the bound and not closing: d2l-sgd's bound over several batches
        # is only sufficient, and a job above it whose epochs shrink the gap (rate < 1) was told it was not converging
        too_fast = np.isfinite(f.lr_bound) & (f.lr > f.lr_bound) & ~(f.rate < 1)
    trained = np.isin(f.status, [s.value for s in TRAINED])
    parts = np.stack([f.optimization, f.noise, f.identifiability])
    with np.errstate(invalid="ignore"):
        total = np.sqrt(np.nansum(parts**2, axis=0))
        main = np.argmax(np.nan_to_num(parts, nan=-1.0), axis=0)
    out = np.full(len(f.status), NOISE)
    out[f.exact] = ROUNDING  # no noise in the labels: their float32 rounding, grown by an ill-conditioned input
    out[main == 2] = IDENT
    optimization = main == 0
    out[optimization] = SLOW
    out[optimization & f.unbounded] = SLOW_UNBOUNDED
    out[optimization & np.isfinite(f.more) & np.isfinite(f.rate)] = CLOSING
    out[optimization & np.isfinite(f.converged)] = WITHIN_TOL  # converged as --tol says: not "not converged yet"
    stable = np.isfinite(f.lr_bound) & (f.lr <= f.lr_bound)  # a transient rise (heavy ball) within the bound
    # a gap that grows is the optimization's, whichever part dominates so far: it will (lr 0.0204 on edge:6x8, 2x2
    # kernel, 8 epochs, said the data could not tell the weights apart while its mse grew 4% an epoch)
    with np.errstate(invalid="ignore"):  # not where an epoch's steps shrink the gap: a heavy ball's mse rises before it
        # falls (momentum over several batches, rate 0.81, was told "the mse grew ... lower --lr")
        out[f.grew & ~stable & ~(f.rate < 1)] = GREW
        # under the stable lr a rate of 1 is float64's rounding of 1 - lr * curvature (lr 1e-18 on edge:6x8, lr 0.03
        # on an input of 1e-30): such a job was told its gap does not shrink, and to lower an lr already tiny
        out[(f.rate >= 1) & ~under_bound(f.lr, f.lr_bound)] = STALLED
    out[too_fast] = TOO_FAST
    lr_told = np.isin(out, (GREW, STALLED, TOO_FAST))
    no_truth = np.isnan(f.noise) | np.isnan(f.identifiability)
    with np.errstate(invalid="ignore"):  # relative to the true kernel's size (a kernel of 1e-4 learned as its
        # opposite "matched" under an absolute 1e-3); a true kernel of zeros has no relative error. With a true bias,
        # the kernel and the bias together too (a bias at 0.76 of a true 3, the weights learned, matched), never
        # instead (a true bias of 1000 then hid a kernel 14% off)
        kernel = (f.relative < 1e-3) | (np.isnan(f.relative) & (total < 1e-3))
        both = True if f.with_bias is None else ~(f.with_bias >= 1e-3)
        out[kernel & both & ~no_truth] = MATCH
    out[no_truth & ~lr_told] = NO_TRUTH  # labels alone: told of an lr too large too (at lr 0.05, stable up to 0.033,
    # the gap grew to 344 and only "no true kernel" was said)
    out[~trained | np.isnan(f.optimization)] = NOTHING
    diverged = f.status == JobStatus.DIVERGED.value
    out[diverged] = DIVERGED
    out[diverged & stable & f.overflowed] = OVERFLOW  # no step at that lr grows the gap: float32's range did it
    out[diverged & too_fast] = TOO_FAST_DIVERGED
    return out


def _too_fast(f: Facts, i: int) -> str:
    lr, bound = _apart(f.lr[i], f.lr_bound[i])
    return f"lr {lr} is above the largest stable learning rate {bound} for this input; lower --lr below it."


def _apart(a: float, b: float) -> tuple[str, str]:
    """Two numbers to 3 digits, or as many more as tell them apart (lr 1.0000001 was "above ... 1", as "lr 1")."""
    digits = 3
    while f"{a:.{digits}g}" == f"{b:.{digits}g}" and digits < 17:
        digits += 1
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def _closing(f: Facts, i: int) -> str:
    more = int(f.more[i])
    words = (f"about {more} more epoch{'s' if more != 1 else ''} at this lr would reach --tol "
             f"(the gap shrinks x{factor(f.rate[i], 3)} an epoch)")
    if np.isfinite(f.best_rate[i]) and not f.about_fastest[i]:
        words += (f"; {_fastest(f, i, 'lr', 'lrs between')} would close it fastest "
                  f"(x{factor(f.best_rate[i], 3)} an epoch)")
    return words


ABOUT_FASTEST = 0.05
"""A job whose epochs shrink the gap at least 95% as much as the fastest lr's, log for log, is told its lr is about the
fastest (worker.engine.pace.as_fast)."""


def _fastest(f: Facts, i: int, one: str, several: str) -> str:
    """The lr that closes the gap fastest after `one`, or the range of them (momentum's) after `several`."""
    lo, hi = f.fastest[0][i], f.fastest[1][i]
    # the fastest lr can lie a thousandth under the stable one (the heavy ball on an ill-conditioned input): printed to
    # as many digits as tell them apart, it is never printed at or above it
    top = _apart(hi, f.lr_bound[i])[0] if np.isfinite(f.lr_bound[i]) else f"{hi:.3g}"
    return f"{one} {top}" if hi <= lo else f"{several} {lo:.3g} and {top}"


def _slow(f: Facts, i: int) -> str:
    """What would close a gap still open, where no number of epochs says how long it takes (--tol 0): more epochs,
    and the way to the fastest lr where one is known."""
    best, lr = f.fastest[0][i], f.lr[i]
    if lr > f.lr_bound[i]:  # d2l-sgd's bound over several batches is only sufficient: the epochs shrink the gap
        bound = _apart(lr, f.lr_bound[i])[1]  # never printed above the lr (0.807 for 0.80692, at lr 0.80693)
        return (f"train longer: at this lr, above the stable lr {bound} that keeps every step from growing the gap, "
                f"each epoch still shrinks it (x{factor(f.rate[i], 3)}).")
    if not np.isfinite(best) and lr >= 0.9 * f.lr_bound[i]:  # momentum just under its bound: raising it would not
        return "train longer: this lr is near the largest stable one."
    if not np.isfinite(best):
        return "train longer or raise the learning rate."
    if f.about_fastest[i]:  # by the rate: within 5% of the fastest lr, on an ill-conditioned input, was told so at
        # a rate of 0.99999 against its 0.9992
        return "train longer: this lr is about the fastest for this input."
    if lr < best:
        return f"train longer or raise the learning rate {_fastest(f, i, 'towards', 'to between')}, the fastest for " \
               "this input."
    return f"train longer, or lower the learning rate {_fastest(f, i, 'to', 'to between')}, the fastest for " \
           "this input."


def _stopped(f: Facts, i: int) -> str:
    return f"not converged yet: training stopped {f.optimization[i]:.3g} from the best kernel the data allow; "


def _ident(f: Facts, i: int) -> str:
    r, p = int(f.rank[i]), int(f.params[i])
    what = "only their sums are determined" if f.sums_only[i] else \
        f"only {r} combination{'s' * (r != 1)} of the {p} weights {'are' if r != 1 else 'is'} determined"
    each = each_channel(f.outputs)
    return (f"the data cannot tell these weights apart: {what} (rank {r} of {p}{' weights' + each if each else ''}); "
            f"a richer input would.")


SENTENCES: dict[int, Callable[[Facts, int], str]] = {
    DIVERGED: lambda f, i: "training diverged: the learning rate is too large for this input; lower --lr.",
    TOO_FAST_DIVERGED: lambda f, i: "training diverged: " + _too_fast(f, i),
    NOTHING: lambda f, i: "no result to explain.",
    NO_TRUTH: lambda f, i: ("no true kernel to compare with; the learned kernel is "
                            + (f"{f.optimization[i]:.3g} from " if f.optimization[i] else "")
                            + "the least-squares kernel the labels determine."),
    MATCH: lambda f, i: "the learned kernel matches the true kernel.",
    TOO_FAST: lambda f, i: "not converging: " + _too_fast(f, i),
    STALLED: lambda f, i: f"not converging: at lr {f.lr[i]:.3g} the gap does not shrink; lower --lr.",
    GREW: lambda f, i: ("not converging: the mse grew during training, so the learning rate is too large for "
                        "this input; lower --lr."),
    CLOSING: lambda f, i: _stopped(f, i) + _closing(f, i) + ".",
    SLOW: lambda f, i: _stopped(f, i) + _slow(f, i),
    SLOW_UNBOUNDED: lambda f, i: (_stopped(f, i) + "train longer, or try other learning rates (klab sweep --lr): "
                                  "no stable lr is known for this job to say which way."),
    WITHIN_TOL: lambda f, i: (f"converged: the mse has been within --tol of the optimum's since epoch "
                              f"{int(f.converged[i])}, with the learned kernel still {f.optimization[i]:.3g} from "
                              "the best kernel the data allow; "
                              + ("more epochs may bring it closer (no stable lr is known for this job to promise it)."
                                 if f.unbounded[i] else "more epochs would bring it closer.")),
    IDENT: _ident,
    NOISE: lambda f, i: (f"label noise: even the exact least-squares kernel is {f.noise[i]:.3g} from the true "
                         "one; more data or less noise would close it."),
    ROUNDING: lambda f, i: (f"an ill-conditioned input: the labels hold no noise, yet their rounding to float32 alone "
                            f"puts the exact least-squares kernel {f.noise[i]:.3g} from the true one; a "
                            "better-conditioned input would close it."),
    OVERFLOW: lambda f, i: (f"training diverged, though lr {f.lr[i]:.3g} is within the largest stable learning rate "
                            f"{f.lr_bound[i]:.3g}: the values left float32's range (over 3.4e38); scale the input or "
                            "the labels down."),
}


CANCELLED_PART_WAY = "cancelled before its last epoch; up to then, "
"""Before the sentence of a job stopped by `klab cancel` part way: what its epochs so far came to."""

TIMED_OUT_PART_WAY = "stopped at the time limit (KLAB_MAX_JOB_SECONDS) before its last epoch; up to then, "
"""The same, of a job stopped by the time limit (worker.progress), which ends failed."""


def explain(f: Facts) -> list[str]:
    """One sentence a job."""
    cancelled = (f.status == JobStatus.CANCELLED.value).tolist()
    return [CANCELLED_PART_WAY * (stopped and c != NOTHING) + SENTENCES[c](f, i)
            for i, (c, stopped) in enumerate(zip(cases(f).tolist(), cancelled))]
