"""Plain-text reports of a result: kernels side by side, metrics, the gap and its sentence."""
from __future__ import annotations

import math
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 60) -> str:
    """The loss curve on a log scale, one character an epoch (sampled down to width)."""
    vals = [math.nan if v is None else float(v) for v in values]
    if not vals:
        return ""
    if len(vals) > width:  # evenly spaced samples, first and last included (as numpy.linspace rounds them)
        step = (len(vals) - 1) / (width - 1)
        vals = [vals[round(i * step)] for i in range(width - 1)] + [vals[-1]]
    logs = [math.log10(max(v, 1e-30)) if not math.isnan(v) else math.nan for v in vals]
    ok = [v for v in logs if math.isfinite(v)]
    if not ok:
        return "?" * len(vals)
    lo, hi = min(ok), max(ok)
    span = hi - lo or 1.0
    return "".join(SPARK[int((v - lo) / span * (len(SPARK) - 1))] if math.isfinite(v) else "?" for v in logs)


def _number(v: Any) -> float:
    return math.nan if v is None else float(v)


def _grid(kernel: Any) -> list[list[float]]:
    """A kernel as rows of numbers: 4-D kernels are laid out one (out, in) slice under another."""
    if kernel and isinstance(kernel[0], list) and kernel[0] and isinstance(kernel[0][0], list):
        return [row for out in kernel for plane in out for row in _grid(plane)]
    return [[_number(v) for v in row] for row in kernel]


def side_by_side(named: list[tuple[str, Any]]) -> str:
    """Kernels next to each other under their names."""
    blocks = []
    for name, kernel in named:
        if kernel is None:
            continue
        lines = ["  ".join(f"{v:8.4f}" if math.isfinite(v) else "     nan" for v in row) for row in _grid(kernel)]
        width = max(len(name), *(len(line) for line in lines))
        blocks.append([name.ljust(width)] + [line.ljust(width) for line in lines])
    if not blocks:
        return "(no kernels: the job did not train)"
    height = max(len(b) for b in blocks)
    for b in blocks:
        b.extend([" " * len(b[0])] * (height - len(b)))
    return "\n".join("   ".join(parts).rstrip() for parts in zip(*blocks))


def _minus(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return [_minus(x, y) for x, y in zip(a, b, strict=True)]
    return _number(a) - _number(b)


def difference(result: dict[str, Any]) -> Any:
    if result.get("true_kernel") is None or result.get("learned_kernel") is None:
        return None
    return _minus(result["learned_kernel"], result["true_kernel"])


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def render(spec: dict[str, Any], result: dict[str, Any]) -> str:
    """The human report of one job."""
    losses = [e["loss"] for e in result["epochs"]]
    head = (f"{spec['method']} on {spec['input']}, kernel {spec.get('kernel') or 'from labels'}, "
            + ("" if spec['method'] == 'lstsq' else f"lr {spec['lr']}, {spec['epochs']} epochs, ")
            + f"seed {spec['seed']}: {result['status']}")
    if result.get("diverged_epoch"):
        head += f" at epoch {result['diverged_epoch']}"
    lines = [head]
    if losses:
        lines.append(f"loss {_fmt(losses[0])} -> {_fmt(losses[-1])}  {sparkline(losses)}")
    lines.append("")
    lines.append(side_by_side([("true", result["true_kernel"]), ("learned", result["learned_kernel"]),
                               ("difference", difference(result))]))
    lines.append("")
    err = result.get("error")
    if err:
        lines.append("error: " + ", ".join(f"{k} {_fmt(v)}" for k, v in err.items()))
    ident = result.get("identifiability")
    if ident:
        lines.append(f"identifiable: {'yes' if ident['identifiable'] else 'no'} (rank {ident['rank']} of "
                     f"{ident['params']}); converged at epoch {_fmt(result.get('converged_epoch'))}")
    gap = result.get("gap")
    if gap:
        lines.append("gap: " + ", ".join(f"{k} {_fmt(v)}" for k, v in gap.items()))
    if result.get("error_message"):
        lines.append(f"error: {result['error_message']}")
    lines.append(result.get("explanation") or "")
    return "\n".join(lines)
