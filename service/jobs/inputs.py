"""Inputs, kernels and labels: the forms a user gives them in, turned into numpy arrays (no torch here).

Canonical shapes: inputs and labels are N x C x H x W, kernels C_out x C_in x kh x kw.
"""
from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from service.errors import BadInput
from service.jobs.choices import DIMS, KERNEL_PRESETS, MADE
from service.jobs.files import checked_file
from service.jobs.sweep import SWEEP_HINT, several
from service.settings import settings

# Streams of the job's seed, so random input, kernel and noise never share numbers.
INPUT_STREAM, KERNEL_STREAM, NOISE_STREAM = 1, 2, 3

INPUT_KINDS = (*MADE, "image", "npy")


def _dims(field: str, text: str, allowed: tuple[int, ...]) -> tuple[int, ...]:
    if not DIMS.match(text):
        raise BadInput(field, f"expected dimensions like 6x8, got {text!r}")
    dims = tuple(int(d) for d in text.split("x"))
    if len(dims) not in allowed:
        names = " or ".join(f"{n} numbers" for n in allowed)
        raise BadInput(field, f"expected {names} in {text!r}")
    if any(d <= 0 for d in dims):
        raise BadInput(field, f"every dimension must be positive, got {text!r}")
    return dims


LIMITS = {"input": "KLAB_MAX_INPUT_ELEMENTS", "labels": "KLAB_MAX_INPUT_ELEMENTS", "kernel": "KLAB_MAX_KERNEL_ELEMENTS"}
"""The variable that sets each array's limit, named in every message about it."""


def _check_elements(field: str, shape: tuple[int, ...], limit: int) -> None:
    """The field's array within its limit: `kernel: has 9 elements, more than the limit 4 (KLAB_MAX_...)`."""
    count = math.prod(shape)
    if count > limit:
        shown = count if count < 10**18 else f"about 10^{len(str(count)) - 1}"  # not a line of 300 digits
        raise BadInput(field, f"has {shown} elements, more than the limit {limit} ({LIMITS[field]})")


def rng(seed: int, stream: int) -> np.random.Generator:
    """The generator for one stream of a job's seed."""
    return np.random.default_rng([stream, seed])


def _finite(field: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise BadInput(field, "contains NaN or infinite values")
    return array


def load_npy(field: str, raw: str) -> np.ndarray:
    """An array from an .npy file, never unpickled, as float64."""
    path = checked_file(field, raw)
    with path.open("rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise BadInput(field, f"{raw} is not a .npy file")
        _header_fits(field, raw, fh)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise objects(field, raw) from None
        raise BadInput(field, f"{raw} is not a valid .npy file") from None
    except (OSError, EOFError):
        raise BadInput(field, f"{raw} is not a valid .npy file") from None
    if not isinstance(array, np.ndarray):
        raise BadInput(field, f"{raw} is not a single .npy array")
    numbers_only(field, raw, array)  # every value finite: what the cast makes infinite is past float64's range
    with np.errstate(over="ignore"):  # a longdouble's: numpy's warning went to stderr beside the line, which said
        wide = array.astype(np.float64)  # "contains NaN or infinite values"
    if not np.isfinite(wide).all():
        raise BadInput(field, "holds values too large for float32")
    return wide


def objects(field: str, raw: str) -> BadInput:
    """An array of Python objects, never unpickled."""
    return BadInput(field, f"{raw} holds Python objects; only numeric arrays are accepted")


def numbers_only(field: str, raw: str, array: np.ndarray) -> None:
    """What an array's values must be, in a file or handed to the Python API (before it is saved as one): numbers,
    some, all finite."""
    if array.dtype.hasobject:
        raise objects(field, raw)
    if array.dtype.kind not in "biuf":
        raise BadInput(field, f"{raw} holds {array.dtype} values; only numbers are accepted")
    if array.size == 0:
        raise BadInput(field, f"{raw} is empty")
    _finite(field, array)


def _header_fits(field: str, raw: str, fh: Any) -> None:
    """An .npy file's header read before its array: numpy makes an array of the shape the header claims, then reads
    the data into it, so a file of 145 bytes claiming 100,000 x 100,000 floats asked for 37 GiB (a traceback, or all
    of memory where it is overcommitted). The data a header claims must be in the file."""
    from numpy.lib import format as npy

    fh.seek(0)
    try:
        version = npy.read_magic(fh)
        # 3.0 differs from 2.0 in its header's encoding alone (UTF-8, for a structured dtype's field names)
        read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0,
                (3, 0): npy.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(version)
        shape, _, dtype = read(fh)
    except (ValueError, OSError, EOFError):
        raise BadInput(field, f"{raw} is not a valid .npy file") from None
    if dtype.hasobject:
        raise objects(field, raw)
    claimed = math.prod(shape) * dtype.itemsize
    held = os.fstat(fh.fileno()).st_size - fh.tell()
    if claimed > held:
        raise BadInput(field, f"{raw} is not a valid .npy file: its header claims {claimed} bytes of data "
                              f"(shape {tuple(shape)}), the file holds {held}")


def load_image(field: str, raw: str, rgb: bool) -> np.ndarray:
    """A PNG/JPEG as C x H x W in [0, 1], with Pillow's decompression-bomb limit."""
    from PIL import Image

    path = checked_file(field, raw)
    try:
        with warnings.catch_warnings():
            # our own pixel limit (below Pillow's bomb threshold) answers in one line, without a warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.format not in ("PNG", "JPEG", "MPO"):  # MPO: a JPEG with more pictures after it (a phone's,
                raise BadInput(field, f"{raw} is {img.format}, not a PNG or JPEG image")  # a camera's): its first
            pixels = max(1, settings().max_input_elements // (3 if rgb else 1))
            if img.width * img.height > pixels:
                raise BadInput(field, f"{raw} is {img.width}x{img.height}, {img.width * img.height} pixels, more "
                                      f"than the limit {pixels} ({LIMITS['input']}{' / 3 for rgb' if rgb else ''})")
            if img.mode.startswith("I;16") or img.mode == "I":  # a 16-bit grayscale PNG: to L, every value past
                gray = np.asarray(img, dtype=np.float64) / 65535.0  # 255 was clipped, a constant image of 1s
                array = np.stack([gray] * 3, axis=-1) if rgb else gray
            else:
                array = np.asarray(img.convert("RGB" if rgb else "L"), dtype=np.float64) / 255.0
    except BadInput:
        raise
    except Image.DecompressionBombError:
        raise BadInput(field, f"{raw} is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError):
        raise BadInput(field, f"{raw} is not a PNG or JPEG image") from None
    return array.transpose(2, 0, 1) if rgb else array[None]


def _one(parse: Callable[..., Any]) -> Callable[..., Any]:
    """A parser of one input or kernel whose errors, for a text that lists several (`d2l,sobel-x`), say that
    several make a sweep."""
    @functools.wraps(parse)
    def parsed(raw: str, *args: Any) -> Any:
        try:
            return parse(raw, *args)
        except BadInput as exc:
            if several(raw) and SWEEP_HINT not in exc.message:
                raise BadInput(exc.field, f"{exc.message}; {SWEEP_HINT}") from None
            raise

    return parsed


@_one
def made_dims(raw: str) -> tuple[int, ...] | None:
    """The dimensions, as given, of an input klab makes (edge, ones, checker, diagonal, random), checked and
    nothing drawn; None for one read from a file (image:, npy:)."""
    field = "input"
    kind, _, rest = raw.partition(":")
    if kind not in INPUT_KINDS:
        raise BadInput(field, f"unknown input {kind!r}; expected one of {', '.join(INPUT_KINDS)}")
    if kind in ("image", "npy"):
        return None
    dims = _dims(field, rest, (2, 3, 4) if kind == "random" else (2,))
    _check_elements(field, dims, settings().max_input_elements)
    return dims


@_one
def parse_input(raw: str, seed: int) -> tuple[np.ndarray, int]:
    """The input as float32 N x C x H x W, and how many dimensions the user gave (2, 3 or 4)."""
    field = "input"
    kind, _, rest = raw.partition(":")
    dims = made_dims(raw)
    if kind in ("edge", "ones", "checker", "diagonal"):
        h, w = dims
        if kind == "ones":
            x = np.ones((h, w))
        elif kind == "edge":
            x = np.ones((h, w))
            x[:, w // 4 : (3 * w) // 4] = 0.0
        elif kind == "checker":
            x = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(np.float64)
        else:
            x = (np.arange(w)[None, :] * h >= np.arange(h)[:, None] * w).astype(np.float64)
        array = x
    elif kind == "random":
        array = rng(seed, INPUT_STREAM).standard_normal(dims)
    elif kind == "image":
        path, rgb = rest, False
        if rest.endswith(":rgb"):
            path, rgb = rest[: -len(":rgb")], True
        elif rest.endswith(":gray"):
            path = rest[: -len(":gray")]
        array = load_image(field, path, rgb)
    else:
        array = load_npy(field, rest)
        if array.ndim not in (2, 3, 4):
            raise BadInput(field, f"expected H x W, C x H x W or N x C x H x W, got {array.ndim} dimensions")
        _check_elements(field, array.shape, settings().max_input_elements)
    ndim = array.ndim
    while array.ndim < 4:
        array = array[None]
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise BadInput(field, "holds values too large for float32")
    return x, ndim


def _literal(field: str, text: str) -> np.ndarray:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(field, f"not a valid JSON literal: {text[:40]!r}") from None
    return nested_array(field, value)


def nested_array(field: str, value: object) -> np.ndarray:
    """A 2-D or 4-D nested list of numbers as float64, rejecting ragged, empty or non-numeric ones."""
    def shape_of(v: object, depth: int) -> tuple[int, ...]:
        if depth > 4:
            raise BadInput(field, "nested more than 4 levels deep")
        if isinstance(v, list):
            if not v:
                raise BadInput(field, "has an empty list")
            shapes = {shape_of(item, depth + 1) for item in v}
            if len(shapes) != 1:
                raise BadInput(field, "is ragged: rows of different lengths")
            return (len(v), *shapes.pop())
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadInput(field, f"holds a non-numeric value {v!r:.20}")
        return ()

    shape = shape_of(value, 0)
    if len(shape) not in (2, 4):
        raise BadInput(field, f"must be 2-D (kh x kw) or 4-D (C_out x C_in x kh x kw), got {len(shape)}-D")
    try:
        array = np.array(value, dtype=np.float64)
    except OverflowError:
        raise BadInput(field, "holds a number too large") from None
    return _finite(field, array)


@_one
def parse_kernel(raw: str, seed: int) -> np.ndarray:
    """The true kernel as float64, 2-D (kh x kw) or 4-D (C_out x C_in x kh x kw) as the user gave it."""
    field = "kernel"
    raw = raw.strip()
    if raw in KERNEL_PRESETS:
        array = np.array(KERNEL_PRESETS[raw], dtype=np.float64)
    elif raw.startswith("["):
        array = _literal(field, raw)
    elif raw.startswith("random:"):
        dims = _dims(field, raw[len("random:"):], (2, 4))
        _check_elements(field, dims, settings().max_kernel_elements)
        array = rng(seed, KERNEL_STREAM).standard_normal(dims)
    elif raw.startswith("npy:"):
        array = load_npy(field, raw[len("npy:"):])
        if array.ndim not in (2, 4):
            raise BadInput(field, f"must be 2-D or 4-D, got {array.ndim}-D")
    else:
        presets = ", ".join(KERNEL_PRESETS)
        raise BadInput(field, f"unknown kernel {raw[:40]!r}; expected a preset ({presets}), "
                              "a JSON literal, random:KHxKW, npy:PATH or none (no true kernel)")
    _check_elements(field, array.shape, settings().max_kernel_elements)
    return array


def parse_labels(raw: str) -> np.ndarray:
    """User labels from npy:PATH, as float64 of 2 to 4 dimensions (shape checked later)."""
    field = "labels"
    if not raw.startswith("npy:"):
        raise BadInput(field, f"expected npy:PATH, got {raw[:40]!r}")
    array = load_npy(field, raw[len("npy:"):])
    if array.ndim not in (2, 3, 4):
        raise BadInput(field, f"expected Ho x Wo, C x Ho x Wo or N x C x Ho x Wo, got {array.ndim} dimensions")
    _check_elements(field, array.shape, settings().max_input_elements)
    return array


BLOCK_BYTES = 16 * 2**20
"""Most bytes of windows made at once: labels and the analysis go through the input a block at a time."""


def blocks(n: int, ho: int, wo: int, per_position: int) -> Iterator[tuple[slice, slice, slice]]:
    """Output positions (samples, rows, columns) in order, in blocks of at most BLOCK_BYTES at `per_position`
    bytes each (one position at least): whole samples, else whole rows, else parts of a row."""
    positions = max(1, BLOCK_BYTES // per_position)
    cols = min(wo, positions)
    rows = min(ho, positions // wo) if cols == wo else 1
    samples = min(n, positions // (ho * wo)) if rows == ho and cols == wo else 1
    for s in range(0, n, samples):
        for r in range(0, ho, rows):
            for q in range(0, wo, cols):
                yield slice(s, min(s + samples, n)), slice(r, min(r + rows, ho)), slice(q, min(q + cols, wo))


def row_blocks(n: int, ho: int, wo: int, kh: int, width: int) -> Iterator[tuple[slice, slice, slice]]:
    """Blocks of output positions (samples, rows, columns) whose row windows (`width` float64 values a position,
    for each of the block's rows and the kh - 1 rows below them) take about BLOCK_BYTES: at least kh rows a block,
    so that the rows below add at most as much again."""
    for at, _, cols in blocks(n, 1, wo, 16 * kh * width):
        per_row = 8 * width * (at.stop - at.start) * (cols.stop - cols.start)
        step = min(ho, max(kh, BLOCK_BYTES // per_row - kh + 1))
        for h0 in range(0, ho, step):
            yield at, slice(h0, min(h0 + step, ho)), cols


def row_windows(x: np.ndarray, at: slice, u0: int, u1: int, cols: slice, kw: int) -> np.ndarray:
    """R_u, the windows of input row u for u0 <= u < u1, at samples `at` and output columns `cols`: rows u by
    positions (n, w) by columns (c, j), float64. Output row h of kernel row i sees R_{h+i}."""
    slab = x[at, :, u0:u1, cols.start : cols.stop + kw - 1].astype(np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(slab, kw, axis=3)  # n x c x rows x w x kw
    return np.ascontiguousarray(windows.transpose(2, 0, 3, 1, 4)).reshape(u1 - u0, -1, slab.shape[1] * kw)


def correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation of N x C x H x W with C_out x C_in x kh x kw, in float64, through the windows of the
    input's rows a block at a time (the windows of the whole input would take kh*kw times its size)."""
    n, c, h, w = x.shape
    co, _, kh, kw = kernel.shape
    out = np.empty((n, co, h - kh + 1, w - kw + 1))
    k = kernel.transpose(2, 1, 3, 0).reshape(kh, c * kw, co)  # kernel row i: (c, j) by output channel
    for at, rows, cols in row_blocks(n, h - kh + 1, w - kw + 1, kh, c * kw + co):
        rw = row_windows(x, at, rows.start, rows.stop + kh - 1, cols, kw)
        nr = rows.stop - rows.start
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing labels are refused by the caller
            y = rw[:nr] @ k[0]
            for i in range(1, kh):
                y += rw[i : i + nr] @ k[i]
        out[at, :, rows, cols] = y.reshape(nr, at.stop - at.start, -1, co).transpose(1, 3, 0, 2)
    return out
