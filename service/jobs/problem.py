"""The problem a spec defines: input, labels and true kernel as arrays in canonical shapes, and which
jobs can train together."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import BadInput
from service.jobs import inputs
from service.jobs.choices import Method
from service.jobs.spec import JobSpec
from service.settings import settings

EPOCH_BYTES = 64
"""Bytes counted in a job's memory for each of its epochs: its loss, mse and kernel error while it trains, and
storing them (service.db.bulk.EPOCH_ROWS_CHUNK rows made at a time, whatever the batch's epochs)."""

ENGINE_BYTES = 4 * inputs.BLOCK_BYTES + 3 * 4 * 2**22 + 64 * 2**20
"""What the engine holds at most besides the arrays job_memory counts: a few blocks of row windows (labels, the
analysis), the elementwise path's im2col (worker.engine.residuals.MATMUL_LIMIT float32 values, thrice) and the
per-batch curvatures kept for the rate (worker.engine.pace.RATE_MEMORY_LIMIT)."""


@dataclass(frozen=True)
class Problem:
    """The arrays a spec defines, in canonical shapes, ready for the engine."""

    x: np.ndarray  # float32 N x C x H x W, samples on the first axis
    y: np.ndarray  # float32 N x C_out x Ho x Wo
    true_kernel: np.ndarray | None  # float64 C_out x C_in x kh x kw
    kernel_shape: tuple[int, int, int, int]
    true_bias: float | None
    has_bias: bool
    single_channel: bool  # report kernels as 2-D
    exact_labels: bool = False  # the true kernel's own labels (and bias), no noise added: rounded to float32 alone


def build_problem(spec: JobSpec, arrays: dict[str, np.ndarray] | None = None) -> Problem:
    """Materialize a spec: load or generate input, kernel and labels, check that they fit together.

    `arrays` may hold already-loaded arrays for "input", "kernel" and "labels" (from stored datasets).
    """
    arrays = arrays or {}
    made = None if "input" in arrays else inputs.made_dims(spec.input)  # an input klab makes, not made yet
    early = made is not None and spec.kernel is not None and spec.labels is None  # its job refused for memory before
    # the input is drawn (with labels, their fit to the kernel is told first, as ever)
    kernel, two_d = _kernel(spec, arrays) if early else (None, True)
    if early:
        _fits_before_drawn(spec, (1,) * (4 - len(made)) + made, kernel.shape)
    if "input" in arrays:
        x = np.ascontiguousarray(arrays["input"], dtype=np.float32)
        input_ndim = x.ndim
        while x.ndim < 4:
            x = x[None]
    else:
        x, input_ndim = inputs.parse_input(spec.input, spec.seed)
    if not early and spec.kernel is not None:  # after a file's input, as ever
        kernel, two_d = _kernel(spec, arrays)
    n, c, h, w = x.shape

    if spec.bias is not None and not _fits(np.array(spec.bias)):
        raise BadInput("bias", f"{spec.bias} is beyond float32's range, what the weights train in")
    if kernel is not None:
        co, ci, kh, kw = kernel.shape
        if ci != c:
            raise BadInput("kernel", f"has {ci} input channel(s) but the input has {c}")
        if kh > h or kw > w:
            raise BadInput("kernel", f"is {kh}x{kw}, larger than the {h}x{w} input")
    if spec.labels is not None:
        labels = arrays["labels"] if "labels" in arrays else inputs.parse_labels(spec.labels)
        two_d = two_d if kernel is not None else labels.ndim == 2 and c == 1
        labels = _labels_shape(labels, x, input_ndim)
        ho, wo = labels.shape[2:]
        if ho > h or wo > w:
            raise BadInput("labels", f"are {ho}x{wo}, larger than the {h}x{w} input")
        shape = (labels.shape[1], c, h - ho + 1, w - wo + 1)
        if kernel is not None and kernel.shape != shape:
            made = (kernel.shape[0], h - kernel.shape[2] + 1, w - kernel.shape[3] + 1)
            named = f"{spec.kernel} " if len(str(spec.kernel)) <= 40 else ""  # d2l: the default, maybe not given
            raise BadInput("labels", f"of shape {labels.shape[1:]} do not fit kernel {named}{kernel.shape} on input "
                                     f"{x.shape[1:]}, which makes labels of shape {made}; with kernel none (no true "
                                     f"kernel) the labels set the kernel's shape")
        if shape[2] * shape[3] * c * shape[0] > settings().max_kernel_elements:
            raise BadInput("labels", f"imply a {shape} kernel, more than the limit "
                                     f"{settings().max_kernel_elements} (KLAB_MAX_KERNEL_ELEMENTS)")
        check_memory(spec, x.shape, shape)
        y = labels
        true_bias = spec.bias if kernel is not None else None
    elif kernel is None:  # JobSpec refuses this already; a stored spec is checked again
        raise BadInput("kernel", "give a true kernel, or labels with --labels")
    else:
        shape = kernel.shape
        check_memory(spec, x.shape, shape)
        y = inputs.correlate(x, kernel)
        if spec.bias is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # labels too large are refused below, once
                y += spec.bias
        true_bias = spec.bias
    reach = y if spec.labels is not None else _seeds_fit(spec, x, kernel, y)  # the largest labels any seed gives
    if spec.noise > 0:
        _noise_fits(reach, spec.noise)
        noise = inputs.rng(spec.seed, inputs.NOISE_STREAM).standard_normal(y.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            noise *= spec.noise
            if spec.labels is None:
                y += noise  # labels of our own: no copy of them
            else:
                y = y + noise
        del noise
    if not _fits(y):  # named by what made them so: the labels given or the kernel, else the bias, else the noise
        clean = labels if spec.labels is not None else inputs.correlate(x, kernel)
        with np.errstate(over="ignore", invalid="ignore"):
            biased = spec.labels is None and spec.bias is not None and not _fits(clean + spec.bias)
        raise BadInput(("labels" if spec.labels else "kernel") if not _fits(clean) else "bias" if biased else "noise",
                       "the labels overflow: values too large for float32")

    if spec.method.is_minibatch and input_ndim == 2 and shape[2] == 1:
        # The seed cuts a 2-D H x W image into H one-row samples: X.view(H, 1, 1, W); sample i's labels are row i
        # of each output channel.
        x = x.reshape(h, 1, 1, w)
        y = y[0].transpose(1, 0, 2)[:, :, None, :]
    return Problem(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=np.ascontiguousarray(y, dtype=np.float32),
        true_kernel=kernel,
        kernel_shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        true_bias=true_bias,
        has_bias=spec.bias is not None,
        single_channel=two_d,
        exact_labels=spec.labels is None and spec.noise == 0,
    )


def _kernel(spec: JobSpec, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """The true kernel as C_out x C_in x kh x kw, and whether the user gave it 2-D (kernels are reported in the shape
    the user gave: the kernel's, else the labels')."""
    kernel = arrays["kernel"] if "kernel" in arrays else inputs.parse_kernel(spec.kernel, spec.seed)
    if not _fits(kernel):  # with labels given, nothing else would tell it: it is only compared with
        raise BadInput("kernel", "has values beyond float32's range, what the weights train in")
    two_d = kernel.ndim == 2
    while kernel.ndim < 4:
        kernel = kernel[None]
    return kernel, two_d


def _fits_before_drawn(spec: JobSpec, x_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> None:
    """A job whose input klab makes (random:, edge:...) refused for memory before that input is drawn (a 4096x4096
    one was, at 262 MB, and with KLAB_MAX_INPUT_ELEMENTS raised a 200000x200000 one ended in numpy's MemoryError);
    a kernel that does not fit the input is told by build_problem, as before."""
    if k_shape[1] == x_shape[1] and k_shape[2] <= x_shape[2] and k_shape[3] <= x_shape[3]:
        check_memory(spec, x_shape, k_shape)


def job_memory(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], bias: bool, method: Method, epochs: int
               ) -> int:
    """About the most bytes a job's arrays take at once, beyond the process itself: an upper bound from the arrays
    each stage makes (building the data, training, the analysis), the largest of the three."""
    n, c, h, w = x_shape
    co, _, kh, kw = kernel_shape
    ho, wo = h - kh + 1, w - kw + 1
    x, y, p = n * c * h * w, n * co * ho * wo, c * kh * kw + int(bias)
    # the input as read (a float64 file or draw, its float64 and float32 copies); beside the float32 input, float64
    # labels (read from a file, or correlated), their noise, the noisy labels and their float32 copy
    build = max(20 * x, 4 * x + 32 * y)
    # G, its eigenvectors and eigh's workspace (4 p^2 float64; G's shifted blocks take no more while it is summed),
    # beside the problem's float32 arrays
    analysis = 4 * (x + y) + 32 * p * p
    if method is Method.LSTSQ:
        return max(build, analysis) + ENGINE_BYTES
    # torch's CPU convolution copies its input and output into blocks of 16 channels (measured: 64 to 80 bytes
    # an output position for one channel in and out); the labels, torch's copy of them, the forward pass, its
    # residual and their gradients; the losses of every epoch
    def sixteen(channels: int) -> int:
        return -(-channels // 16) * 16

    padded = 4 * n * (sixteen(c) * h * w + sixteen(co) * ho * wo)
    train = 4 * x + 32 * y + padded + EPOCH_BYTES * epochs
    return max(build, analysis, train) + ENGINE_BYTES


def work(key: tuple, jobs: int, problems: int = 1, inputs: int = 1) -> float:
    """About how many floating-point operations `jobs` jobs with this key (`together`'s) take to load and train in
    one batch: building each of their `problems` (a seeded one is a job's); the analysis of each of their `inputs`
    (a random input is a job's), its Gram matrix and eigendecomposition; a pass over each output position a kernel
    weight (forward and backward: 3) an epoch a job; each minibatch step; storing each job's result and epochs. The
    fixed costs of Python, torch and the database count as operations too (STEP_WORK and the rest)."""
    x_shape, _, kernel_shape, has_bias, method, epochs, batch_size, *_ = key
    n, c, h, w = x_shape
    co, _, kh, kw = kernel_shape
    p = c * kh * kw + int(has_bias)
    analysis = (problems * (PROBLEM_WORK + 20 * n * c * h * w)
                + inputs * (INPUT_WORK + n * co * (h - kh + 1) * (w - kw + 1) * p * (p + 1) + 10 * p ** 3))
    if Method(method) is Method.LSTSQ:
        return float(analysis + jobs * (RESULT_WORK + EPOCH_WORK))
    steps = epochs * -(-n // batch_size)
    stored = jobs * (RESULT_WORK + epochs * EPOCH_WORK)
    return float(analysis + 3 * jobs * epochs * n * co * (h - kh + 1) * (w - kw + 1) * p + steps * STEP_WORK + stored)


STEP_WORK, PROBLEM_WORK, INPUT_WORK, RESULT_WORK, EPOCH_WORK = 1_000_000, 100_000, 300_000, 30_000, 2_000
"""The fixed costs, as floating-point operations at about a billion a second, measured on one core of this kind of
machine: a minibatch step (torch's dispatch of its few operations: 0.28 to 0.46 ms for d2l-manual, 0.89 ms for adam,
whatever the jobs' size); a problem built (0.09 ms for the book's input with noise); an input analysed (0.16 to
0.36 ms for random 6x8 to 24x24 inputs); a job's result and each of its epochs stored (a 4,096-job task of 10
epochs, 0.12 s; of 400 epochs, 5.4 s on a loaded machine)."""


def fitting(key: tuple) -> int:
    """How many jobs with this key (`together`'s) one batch may train at once within KLAB_MAX_JOB_MEMORY: each
    job's own arrays (job_memory, less the engine's) beside one engine's (ENGINE_BYTES); at least one."""
    x_shape, _, kernel_shape, has_bias, method, epochs, *_ = key
    own = job_memory(x_shape, kernel_shape, has_bias, Method(method), epochs) - ENGINE_BYTES
    return max(1, (settings().max_job_memory - ENGINE_BYTES) // max(1, own))


def check_memory(spec: JobSpec, x_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> None:
    """Refuse a job whose arrays would not fit in KLAB_MAX_JOB_MEMORY, before any of its large arrays is made."""
    need = job_memory(x_shape, kernel_shape, spec.bias is not None, spec.method, spec.epochs)
    limit = settings().max_job_memory
    if need > limit:
        shapes = f"input {'x'.join(map(str, x_shape))}, kernel {'x'.join(map(str, kernel_shape))}"
        digits = 3  # as many as tell the two apart ("needs about 176 MiB ... more than the limit 176 MiB" was)
        while gib(need, digits) == gib(limit, digits) and digits < 17:
            digits += 1
        raise BadInput("memory", f"the job needs about {gib(need, digits)} at once ({shapes}, method "
                                 f"{spec.method.value}), more than the limit {gib(limit, digits)} "
                                 "(KLAB_MAX_JOB_MEMORY)")


def gib(size: int, digits: int = 3) -> str:
    """A size in bytes for a message: 1.5 GiB, 512 MiB, 1000 MiB, 2 KiB, 100 bytes, 1 byte (at least the whole
    number's digits: 1000 MiB was "1e+03 MiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.{max(digits, len(str(int(value))))}g} {unit}"
    return f"{size} byte{'s' * (size != 1)}"


NORMAL_MOST = 12.3
"""No draw of numpy's standard_normal is larger in size: its ziggurat's tail returns r + x with r = 3.6542 and x
under sqrt(2 * 53 ln 2) = 8.57, the most a double's uniform draw allows."""


def _reach(spec: JobSpec, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The largest labels, in size, that any seed could give a job whose random input or kernel (and bias) make its
    labels: a bound from the draws' largest, NORMAL_MOST."""
    co, c, kh, kw = kernel.shape
    with np.errstate(over="ignore", invalid="ignore"):
        if not random_kernel(spec):  # |sum K x| <= sum |K| * max |x|, by output channel
            most = NORMAL_MOST * np.abs(kernel).reshape(co, -1).sum(axis=1)
        elif random_input(spec):
            most = np.array([NORMAL_MOST * NORMAL_MOST * c * kh * kw])
        else:  # the input's largest window, in absolute values; the cheap bound first, the window sums if need be
            most = np.array([NORMAL_MOST * c * kh * kw * float(np.abs(x).max(initial=0.0))])
            if not _fits(most):
                windows = inputs.correlate(np.abs(x), np.ones((1, c, kh, kw)))
                most = NORMAL_MOST * windows.max(initial=0.0, keepdims=True)
        return most.reshape(-1) + abs(spec.bias or 0.0)


def _seeds_fit(spec: JobSpec, x: np.ndarray, kernel: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The largest labels any seed could give (_reach), where a random input or kernel could give labels out of
    float32's range with some seed: such a job is refused whatever its seed, as noise is (a sweep is validated with
    its first seed, and stored jobs of the others failed at the worker: `--input random:6x8 --kernel [[1e38]] --seed
    57..59`, seed 58). Where neither is random, these labels: the caller checks them."""
    if not (random_input(spec) or random_kernel(spec)):
        return y
    reach = _reach(spec, x, kernel)
    with np.errstate(over="ignore", invalid="ignore"):
        if _fits(reach):
            return reach
        field = "bias" if spec.bias and _fits(reach - abs(spec.bias)) else \
            "input" if random_kernel(spec) and not random_input(spec) else "kernel"
    raise BadInput(field, f"can make the labels too large for float32 with some seeds (a random draw of up to "
                          f"{NORMAL_MOST} standard deviations)")


def _noise_fits(clean: np.ndarray, noise: float) -> None:
    """Noise that could take the labels out of float32's range with some seed is refused whatever the seed: a sweep
    is validated with its first seed, and stored jobs of the others failed at the worker (`--noise 1.2e38 --seed
    1..7`: seeds 6 and 7). `clean`: the labels without noise, or the most any seed could make them (_reach)."""
    if not _fits(clean):
        return  # named below by what made them so
    top = float(np.abs(clean).max(initial=0.0))
    room = max(0.0, float(np.finfo(np.float32).max) - top) / NORMAL_MOST  # labels a little over it round to it
    if noise > room:
        raise BadInput("noise", f"{noise:g} can make the labels too large for float32 with some seeds (a draw of up "
                                f"to {NORMAL_MOST} standard deviations); at most {room:.3g} with these labels")


def _fits(y: np.ndarray) -> bool:
    """Finite once rounded to float32 (what the engine trains in): numpy's float32 maximum as it prints it,
    3.4028235e38, is a little over it as a float64 and rounds to it (it was refused as beyond float32's range)."""
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(np.asarray(y).astype(np.float32))))


def _labels_shape(labels: np.ndarray, x: np.ndarray, input_ndim: int) -> np.ndarray:
    n = x.shape[0]
    if labels.ndim == 2:
        if n != 1:
            raise BadInput("labels", f"are 2-D but the input has {n} samples")
        return labels[None, None]
    if labels.ndim == 3:
        if n != 1:
            raise BadInput("labels", f"are 3-D but the input has {n} samples")
        return labels[None]
    if labels.shape[0] != n:
        raise BadInput("labels", f"have {labels.shape[0]} samples but the input has {n}")
    return labels




def random_input(spec: JobSpec) -> bool:
    """Whether a spec's input is drawn from its seed: each seed's input is its own, built and analysed apart."""
    return str(spec.input).startswith("random:")


def random_kernel(spec: JobSpec) -> bool:
    """Whether a spec's true kernel is drawn from its seed."""
    return str(spec.kernel).startswith("random:")


def seeded(spec: JobSpec) -> bool:
    """Whether a spec's arrays depend on its seed (random input, kernel or noise)."""
    return spec.noise > 0 or random_input(spec) or random_kernel(spec)


def problem_key(spec: JobSpec, datasets: tuple = ()) -> tuple:
    """What a spec's Problem depends on: specs with equal keys share one Problem (one build, one array)."""
    return (spec.input, spec.kernel, spec.labels, spec.bias, spec.noise, spec.method.is_minibatch,
            spec.seed if seeded(spec) else None, datasets)


def file_arrays(spec: JobSpec) -> dict[str, np.ndarray]:
    """The arrays of fields that name files (npy:, image:), loaded as the user gave them, for upload."""
    out: dict[str, np.ndarray] = {}
    if spec.input.startswith(("npy:", "image:")):
        x, ndim = inputs.parse_input(spec.input, spec.seed)
        out["input"] = x.reshape(x.shape[4 - ndim:])
    if spec.kernel is not None and spec.kernel.startswith("npy:"):
        out["kernel"] = inputs.parse_kernel(spec.kernel, spec.seed)
    if spec.labels is not None:
        out["labels"] = inputs.parse_labels(spec.labels)
    return out


def shapes(p: Problem) -> tuple:
    """What the arrays of jobs that train in one batch must share."""
    return (p.x.shape, p.y.shape, p.kernel_shape, p.has_bias)


def together(p: Problem, spec: JobSpec) -> tuple[Any, ...]:
    """Jobs with equal keys can train together, in one batch: the same shapes, method, epochs, batch size and
    device, and each with a true kernel or none (`--kernel none,random:2x3` with labels: a batch measured every
    job's error against the first job's, and a kernel-less job first cost the others their errors and gaps)."""
    return (*shapes(p), spec.method.value, spec.epochs, spec.batch_size, spec.device.value, p.true_kernel is not None)
