"""The engine against the book's own code, against torch.optim, and against itself (batched vs alone)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from harness import run_json as run_spec
from harness import strict_json
from scipy.signal import correlate2d
from torch import nn
from torch.utils import data

from service.jobs.choices import Method
from service.jobs.problem import build_problem
from service.jobs.result import to_json
from service.jobs.spec import JobSpec
from worker.engine import Job, residuals, resolve_device, train
from worker.engine.weights import VECTOR_INIT_MIN, batch_initial_weights, initial_weights


def record(batch, i: int) -> dict:
    """One job of a trained batch as `klab run --no-store --json` prints it."""
    row, epochs = batch.row(i)
    return to_json(row, epochs, stored=False, spec={"method": batch.method.value, "seed": batch.jobs[i].seed})

RESULT_KEYS = {"status", "method", "device", "seed", "torch_version", "train_seconds", "epochs", "true_kernel",
               "initial_kernel", "learned_kernel", "learned_bias", "error", "converged_epoch", "diverged_epoch",
               "identifiability", "lstsq_kernel", "gap", "explanation", "epochs_done", "pace"}
EPOCH_KEYS = {"epoch", "loss", "mse", "kernel_error"}

# ---------------------------------------------------------------------------------------------------
# The book's code (d2l zh-v2 6.2.4, "Learning a Kernel"), as the seed notebook runs it, plus a seed.
# ---------------------------------------------------------------------------------------------------


def corr2d(X, K):
    """计算二维互相关运算"""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def book_data():
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    K = torch.tensor([[1.0, -1.0]])
    Y = corr2d(X, K)
    return X, K, Y


def book_manual(seed: int, lr: float = 3e-2, epochs: int = 10) -> tuple[list[float], np.ndarray]:
    """The book's first loop; returns l.sum() of every epoch and the learned kernel (1 x 2)."""
    X, K, Y = book_data()
    torch.manual_seed(seed)
    # 构造一个二维卷积层，它具有1个输出通道和形状为（1，2）的卷积核
    conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    X = X.reshape((1, 1, 6, 8))
    Y = Y.reshape((1, 1, 6, 7))
    losses = []
    for i in range(epochs):
        Y_hat = conv2d(X)
        l = (Y_hat - Y) ** 2
        conv2d.zero_grad()
        l.sum().backward()
        # 迭代卷积核
        conv2d.weight.data[:] -= lr * conv2d.weight.grad
        losses.append(l.sum().item())  # the book prints f'epoch {i+1}, loss {l.sum():.3f}'
    return losses, conv2d.weight.data.reshape((1, 2)).numpy().astype(np.float64)


def book_sgd(seed: int, lr: float = 0.03, num_epochs: int = 16, batch_size: int = 2
             ) -> tuple[list[float], np.ndarray]:
    """The seed's second loop, started fresh from torch.manual_seed(seed); the last batch's loss per epoch."""
    X, K, Y = book_data()
    torch.manual_seed(seed)
    conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    X = X.reshape((1, 1, 6, 8))
    Y = Y.reshape((1, 1, 6, 7))
    net = nn.Sequential(conv2d)
    trainer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.MSELoss()

    def load_array(data_arrays, batch_size, is_train=True):
        dataset = data.TensorDataset(*data_arrays)
        return data.DataLoader(dataset, batch_size, shuffle=is_train)

    data_arrays = [X.view(6, 1, 1, 8), Y.view(6, 1, 1, 7)]
    data_loader = load_array(data_arrays, batch_size, False)
    losses = []
    for epoch in range(num_epochs):
        for _data, _label in data_loader:
            l = loss(net(_data), _label)
            trainer.zero_grad()
            l.backward()
            trainer.step()
        l = loss(net(_data), _label)
        losses.append(l.item())  # the seed prints f'epoch {epoch + 1}, loss {l:f}'
    return losses, net[0].weight.data.reshape((1, 2)).numpy().astype(np.float64)


def torch_minibatch(problem, method: str, seed: int, lr: float, epochs: int, batch_size: int):
    """The seed's second loop on any problem, with torch.optim's SGD, SGD(momentum=0.9) or Adam."""
    X, Y = torch.from_numpy(problem.x), torch.from_numpy(problem.y.astype(np.float32))
    co, ci, kh, kw = problem.kernel_shape
    torch.manual_seed(seed)
    conv2d = nn.Conv2d(ci, co, kernel_size=(kh, kw), bias=problem.has_bias)
    net = nn.Sequential(conv2d)
    make = {"d2l-sgd": lambda p: torch.optim.SGD(p, lr=lr),
            "momentum": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=lr)}[method]
    trainer = make(net.parameters())
    loss = nn.MSELoss()
    data_loader = data.DataLoader(data.TensorDataset(X, Y), batch_size, shuffle=False)
    losses, mses = [], []
    for _ in range(epochs):
        for _data, _label in data_loader:
            l = loss(net(_data), _label)
            trainer.zero_grad()
            l.backward()
            trainer.step()
        with torch.no_grad():
            losses.append(loss(net(_data), _label).item())
            mses.append(loss(net(X), Y).item())
    bias = None if conv2d.bias is None else conv2d.bias.detach().numpy().astype(np.float64)
    return np.array(losses), np.array(mses), conv2d.weight.detach().numpy().astype(np.float64), bias


def spec(**values) -> JobSpec:
    return JobSpec.parse(values)


def losses_of(result: dict) -> np.ndarray:
    return np.array([e["loss"] for e in result["epochs"]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# The book, seed by seed
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 42])
def test_d2l_manual_equals_the_books_loop(seed):
    result = run_spec(spec(input="edge:6x8", kernel="d2l", method="d2l-manual", lr=0.03, epochs=10, seed=seed))
    book_losses, book_kernel = book_manual(seed)
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 11))
    np.testing.assert_allclose(losses_of(result), book_losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(result["learned_kernel"]), book_kernel, rtol=1e-6, atol=1e-6)
    torch.manual_seed(seed)
    assert result["initial_kernel"] == nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False).weight.reshape(1, 2).tolist()


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_d2l_sgd_equals_the_seeds_second_loop_started_fresh(seed):
    result = run_spec(spec(input="edge:6x8", kernel="d2l", method="d2l-sgd", lr=0.03, epochs=16, batch_size=2,
                           seed=seed))
    book_losses, book_kernel = book_sgd(seed)
    assert len(result["epochs"]) == 16
    np.testing.assert_allclose(losses_of(result), book_losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(result["learned_kernel"]), book_kernel, rtol=1e-6, atol=1e-6)


def test_the_books_kernel_is_learned_almost_exactly_in_the_book_setting():
    result = run_spec(spec(method="d2l-manual", lr=0.03, epochs=10, seed=0))
    assert result["status"] == "succeeded"
    # the book's own loop, run independently (book_manual), ends at this kernel: the error is its distance
    _, book_kernel = book_manual(0)
    assert result["error"]["frobenius"] == pytest.approx(float(np.linalg.norm(book_kernel - [[1.0, -1.0]])),
                                                         rel=1e-5)
    assert result["identifiability"] == {"rank": 2, "params": 2, "identifiable": True}
    np.testing.assert_allclose(result["lstsq_kernel"], [[1.0, -1.0]], atol=1e-12)


MINIBATCH_CASES = [
    dict(input="edge:6x8", kernel="d2l", method="momentum", lr=0.01, epochs=16, batch_size=2, seed=3),
    dict(input="edge:6x8", kernel="d2l", method="adam", lr=0.05, epochs=16, batch_size=2, seed=3),
    dict(input="edge:6x8", kernel="d2l", method="adam", lr=0.05, epochs=10, batch_size=4, seed=42),
    dict(input="random:5x3x6x7", kernel="random:2x3x2x3", bias=0.5, noise=0.1, method="momentum", lr=0.01,
         epochs=12, batch_size=2, seed=7),
    dict(input="random:5x3x6x7", kernel="random:2x3x2x3", bias=0.5, noise=0.1, method="adam", lr=0.05,
         epochs=12, batch_size=2, seed=7),
    dict(input="random:5x3x6x7", kernel="random:2x3x2x3", bias=0.5, method="d2l-sgd", lr=0.05, epochs=12,
         batch_size=3, seed=7),
    dict(input="random:6x7", kernel="random:2x2", bias=-0.3, method="adam", lr=0.05, epochs=12, batch_size=2,
         seed=11),
]


@pytest.mark.parametrize("method", [m.value for m in Method])
def test_torchs_default_dtype_changes_no_number(method):
    """A notebook's torch.set_default_dtype(torch.float64) made klab.run draw other initial weights and train in
    float64: other numbers than `klab run` and the workers give for the same spec."""
    s = spec(input="random:2x6x8", kernel="random:2x2x2x2", bias=0.5, method=method, lr=0.01, epochs=3, batch_size=2,
             seed=5)
    alone = run_spec(s)
    torch.set_default_dtype(torch.float64)
    try:
        in_float64 = run_spec(s)
    finally:
        torch.set_default_dtype(torch.float32)
    assert in_float64["initial_kernel"] == alone["initial_kernel"]
    assert losses_of(in_float64).tolist() == losses_of(alone).tolist()
    for key in ("learned_kernel", "learned_bias"):
        assert in_float64[key] == alone[key]


@pytest.mark.parametrize("method", ["d2l-sgd", "momentum", "adam"])
def test_a_2d_input_cut_into_rows_keeps_each_output_channel_on_its_own_row(method):
    """A 2-D input meets the minibatch methods as H one-row samples (the seed's X.view(H, 1, 1, W)); with two output
    channels each sample's labels are that row of each channel, as scipy makes them from the image, and the job
    trains as torch.optim does on those samples. (The labels once came cut as if one channel: rows of the two
    channels crossed, and the least-squares kernel of such a job was 2.7 from the true one.)"""
    kernel = np.array([[[[1.0, -1.0]]], [[[0.5, 2.0]]]])
    s = spec(input="edge:6x8", kernel=kernel.tolist(), method=method, lr=0.02, epochs=6, batch_size=2, seed=3)
    x = np.ones((6, 8))
    x[:, 2:6] = 0
    labels = np.stack([correlate2d(x, k[0], mode="valid") for k in kernel])  # (channel, row, column)
    rows = SimpleNamespace(x=x.reshape(6, 1, 1, 8).astype(np.float32), kernel_shape=(2, 1, 1, 2), has_bias=False,
                           y=labels.transpose(1, 0, 2)[:, :, None, :].astype(np.float32))
    problem = build_problem(s)
    np.testing.assert_array_equal(problem.y, rows.y)
    result = run_spec(s, problem)
    losses, mses, learned, _ = torch_minibatch(rows, method, s.seed, s.lr, s.epochs, s.batch_size)
    np.testing.assert_allclose(losses_of(result), losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([e["mse"] for e in result["epochs"]], mses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(result["learned_kernel"]), learned, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(result["lstsq_kernel"]), kernel, atol=1e-6)


@pytest.mark.parametrize("values", MINIBATCH_CASES, ids=lambda v: f"{v['method']}-{v['input']}-b{v['batch_size']}")
def test_minibatch_methods_equal_torch_optim(values):
    s = spec(**values)
    problem = build_problem(s)
    result = run_spec(s, problem)
    losses, mses, kernel, bias = torch_minibatch(problem, values["method"], s.seed, s.lr, s.epochs, s.batch_size)
    np.testing.assert_allclose(losses_of(result), losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([e["mse"] for e in result["epochs"]], mses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(result["learned_kernel"]).reshape(kernel.shape), kernel, rtol=1e-5, atol=1e-6)
    if bias is None:
        assert result["learned_bias"] is None
    else:
        np.testing.assert_allclose(result["learned_bias"], bias, rtol=1e-5, atol=1e-6)


def test_adams_eps_as_torchs_where_a_weights_gradient_is_tiny(tmp_path):
    """Adam divides each weight's step by sqrt(v) + eps: eps weighs only where a gradient is near 1e-8, which no
    case above reaches. Here the left weight of [[1, -1]] sees only columns of about 1e-7 (the right one a column
    of ones), so its steps are torch's only with torch's eps (1e-8): an eps of 0, 1e-9 or 1e-6 fails here, and no
    case above."""
    x = np.random.default_rng(4).standard_normal((6, 8)) * 1e-7
    x[:, 7] = 1.0
    np.save(tmp_path / "x.npy", x)
    s = spec(input=f"npy:{tmp_path / 'x.npy'}", kernel="d2l", method="adam", lr=0.05, epochs=8, batch_size=2, seed=3)
    problem = build_problem(s)
    result = run_spec(s, problem)
    losses, _, kernel, _ = torch_minibatch(problem, "adam", s.seed, s.lr, s.epochs, s.batch_size)
    np.testing.assert_allclose(losses_of(result), losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(result["learned_kernel"]).reshape(kernel.shape), kernel, rtol=1e-5, atol=1e-6)


def test_d2l_manual_mse_is_the_next_epochs_summed_loss_over_the_count():
    result = run_spec(spec(method="d2l-manual", lr=0.03, epochs=10, seed=5))
    losses = losses_of(result)
    mses = np.array([e["mse"] for e in result["epochs"]])
    np.testing.assert_allclose(mses[:-1], losses[1:] / 42, rtol=1e-6)
    _, kernel = book_manual(5)
    X, _, Y = book_data()
    final = torch.from_numpy(kernel.astype(np.float32)).reshape(1, 1, 1, 2)
    last_mse = ((nn.functional.conv2d(X.reshape(1, 1, 6, 8), final) - Y.reshape(1, 1, 6, 7)) ** 2).mean().item()
    np.testing.assert_allclose(mses[-1], last_mse, rtol=1e-5)


def test_kernel_error_per_epoch_is_the_distance_to_the_true_kernel():
    result = run_spec(spec(method="d2l-manual", lr=0.03, epochs=4, seed=2))
    learned = np.array(result["learned_kernel"])
    assert result["epochs"][-1]["kernel_error"] == pytest.approx(np.linalg.norm(learned - [[1, -1]]), rel=1e-6)
    assert result["epochs"][-1]["kernel_error"] == pytest.approx(result["error"]["frobenius"], rel=1e-6)
    errors = [e["kernel_error"] for e in result["epochs"]]
    assert errors == sorted(errors, reverse=True)  # the book's setting approaches K monotonically


def test_a_kernel_error_past_float32s_squares_is_still_measured():
    """`--lr 1e30`: weights of 2.6e31 after epoch 1, whose squares overflow float32; the epoch's kernel error
    (stored as null, and drawn as 'no epochs') is the job's Frobenius error, which float32 holds."""
    result = run_spec(spec(method="d2l-manual", lr=1e30, epochs=5, seed=0))
    assert result["status"] == "diverged" and result["diverged_epoch"] == 2
    learned = np.array(result["learned_kernel"])
    assert result["epochs"][0]["kernel_error"] == pytest.approx(np.linalg.norm(learned - [[1, -1]]), rel=1e-6)
    assert result["epochs"][0]["kernel_error"] == pytest.approx(result["error"]["frobenius"], rel=1e-6)
    assert result["error"]["frobenius"] > 1e31


# ---------------------------------------------------------------------------------------------------
# Initial weights: torch.manual_seed(s); nn.Conv2d(...)
# ---------------------------------------------------------------------------------------------------

SEEDS = [0, 1, 2, 42, 1234, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 7, 2**53 + 1, 2**63 - 1]
MANY_SEEDS = SEEDS + list(range(100, 140)) + [987654321987654321]
SHAPES = [(1, 1, 1, 2), (1, 1, 2, 2), (2, 3, 3, 3), (4, 1, 3, 1), (1, 1, 15, 15), (8, 3, 5, 5)]


def conv_init(seed: int, shape: tuple[int, int, int, int], bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    co, ci, kh, kw = shape
    torch.manual_seed(seed)
    conv = nn.Conv2d(ci, co, kernel_size=(kh, kw), bias=bias)
    return conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_initial_weights_equal_nn_conv2d_exactly(shape, bias):
    gen = torch.Generator()
    for seed in SEEDS:
        w, b = initial_weights(seed, shape, bias, gen)
        rw, rb = conv_init(seed, shape, bias)
        assert torch.equal(w, rw), (seed, shape)
        assert (b is None) == (rb is None)
        if bias:
            assert torch.equal(b, rb), (seed, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("seeds", [SEEDS[:5], MANY_SEEDS], ids=["few", "many"])
def test_batch_initial_weights_equal_nn_conv2d_exactly(shape, bias, seeds):
    w, b = batch_initial_weights(seeds, shape, bias)
    assert w.shape == (len(seeds), *shape) and w.dtype == torch.float32
    for i, seed in enumerate(seeds):
        rw, rb = conv_init(seed, shape, bias)
        assert torch.equal(w[i], rw), (seed, shape)
        if bias:
            assert torch.equal(b[i], rb), (seed, shape)
    if not bias:
        assert b is None


def test_vectorized_initial_weights_cover_a_large_batch_of_consecutive_seeds(monkeypatch):
    from worker.engine import weights

    drawn_alone = []  # the vectorized draw checks its first seed with torch's generator, and falls back silently
    alone = weights.initial_weights
    monkeypatch.setattr(weights, "initial_weights", lambda seed, *rest: drawn_alone.append(seed) or alone(seed, *rest))
    seeds = list(range(5000, 5000 + 4 * VECTOR_INIT_MIN))
    w, _ = batch_initial_weights(seeds, (1, 1, 1, 2), False)
    assert drawn_alone == [5000]  # its check, not a fallback to drawing one seed at a time
    for i in range(0, len(seeds), 7):
        assert torch.equal(w[i], conv_init(seeds[i], (1, 1, 1, 2), False)[0])
    assert len({tuple(v.flatten().tolist()) for v in w}) == len(seeds)
    # the emulated generator is torch's, draw for draw, whatever the seed's size
    raw = weights._mt19937_first(np.array([0, 1, 5000, 2**40 + 7, 2**63 - 1], dtype=np.uint64), 9)
    for row, seed in zip(raw, (0, 1, 5000, 2**40 + 7, 2**63 - 1)):
        generator = torch.Generator()
        generator.manual_seed(seed)
        assert torch.equal(torch.from_numpy(weights._uniform(row, 0.7)),
                           torch.empty(9).uniform_(-0.7, 0.7, generator=generator)), seed


# ---------------------------------------------------------------------------------------------------
# Batched == alone
# ---------------------------------------------------------------------------------------------------

BATCH_SEEDS = [0, 1, 42, 2**40 + 7, 2**63 - 1] + list(range(100, 135))  # 40 jobs: the vectorized init too
# Jobs 0..5 cover every kernel (i % 4), lr (i % 3) and noise/bias (i % 2), and the extreme seeds; 39 is the last.
ALONE_SAMPLE = list(range(6)) + [39]
SHARED_KERNELS = ["d2l", "[[0.5, 2.0]]", "random:1x2", "[[-3, 0.25]]"]
PER_JOB_KERNELS = ["random:2x3", "[[1, 0, -1], [0.5, 0.5, 0.5]]"]
# Learning rates small enough that no job diverges, so every epoch of every job is compared.
LRS = {"d2l-manual": (0.03, 0.01, 0.02), "d2l-sgd": (0.03, 0.01, 0.02), "momentum": (0.01, 0.005, 0.02),
       "adam": (0.05, 0.01, 0.02)}
PER_JOB_LRS = {"d2l-manual": (0.003, 0.001, 0.002), "d2l-sgd": (0.03, 0.01, 0.02),
               "momentum": (0.01, 0.005, 0.02), "adam": (0.05, 0.01, 0.02)}


def batch_specs(method: str, inputs: str, bias: bool, epochs: int = 7) -> list[JobSpec]:
    specs = []
    for i, seed in enumerate(BATCH_SEEDS):
        values = dict(method=method, seed=seed, epochs=epochs, batch_size=2, noise=(0.0, 0.1)[i % 2])
        if inputs == "shared":
            values.update(input="edge:6x8", kernel=SHARED_KERNELS[i % 4], lr=LRS[method][i % 3])
            if bias and method == "d2l-manual":  # a bias's column lowers edge:6x8's stable lr to 0.0161: at 0.03
                # and 0.02 the loss grew up to 1.6e5 times in 7 epochs; 5 of 40 passed 1e6 times after the last update
                values["lr"] /= 2
        else:  # random input: every seed gives its own
            values.update(input=inputs, kernel=PER_JOB_KERNELS[i % 2], lr=PER_JOB_LRS[method][i % 3])
        if bias:
            values["bias"] = (0.5, -1.0)[i % 2]
        specs.append(JobSpec.parse(values))
    return specs


def jobs_of(specs: list[JobSpec]) -> list[Job]:
    return [Job(build_problem(s), seed=s.seed, lr=s.lr, tol=s.tol) for s in specs]


def assert_batched_equals_alone(jobs: list[Job], method: str, epochs: int, batch_size: int,
                                sample: list[int] | None = None) -> None:
    batch = train(jobs, Method(method), epochs, batch_size)
    assert len(batch) == len(jobs)
    for i in range(len(jobs)) if sample is None else sample:
        job = jobs[i]
        alone = train([job], Method(method), epochs, batch_size)
        rb, ra = record(batch, i), record(alone, 0)
        # The engine is designed to be bit-identical; the issue asks for 1e-6 at least.
        np.testing.assert_allclose(losses_of(rb), losses_of(ra), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(rb["learned_kernel"], ra["learned_kernel"], rtol=1e-6, atol=1e-6)
        assert np.array_equal(batch.trained.loss[:, i], alone.trained.loss[:, 0]), f"job {i}: losses differ in a batch"
        assert np.array_equal(batch.trained.mse[:, i], alone.trained.mse[:, 0], equal_nan=True), f"job {i}: mse differs"
        assert np.array_equal(batch.trained.weights[i], alone.trained.weights[0]), f"job {i}: kernel differs in a batch"
        assert np.array_equal(batch.initial[i], alone.initial[0])
        if job.problem.has_bias:
            assert np.array_equal(batch.trained.bias[i], alone.trained.bias[0])
        assert [(e["epoch"], e["loss"], e["mse"]) for e in rb["epochs"]] == \
            [(e["epoch"], e["loss"], e["mse"]) for e in ra["epochs"]]
        np.testing.assert_allclose([e["kernel_error"] for e in rb["epochs"]],
                                   [e["kernel_error"] for e in ra["epochs"]], rtol=1e-6, atol=1e-7)
        for key in ("status", "seed", "learned_kernel", "learned_bias", "converged_epoch", "diverged_epoch",
                    "identifiability", "explanation"):
            assert rb[key] == ra[key], (i, key)
        np.testing.assert_allclose(rb["lstsq_kernel"], ra["lstsq_kernel"], rtol=1e-9, atol=1e-12)
        for part in ("optimization", "noise", "identifiability"):
            assert rb["gap"][part] == pytest.approx(ra["gap"][part], rel=1e-9, abs=1e-12)


METHODS = ["d2l-manual", "d2l-sgd", "momentum", "adam"]
BATCH_CASES = ([(m, "shared", b) for m in METHODS for b in (False, True)]
               + [(m, "random:5x7", b) for m in METHODS for b in (False, True)]
               + [(m, "random:4x1x5x7", True) for m in METHODS])  # several samples: several minibatches


@pytest.mark.parametrize("method,inputs,bias", BATCH_CASES,
                         ids=[f"{m}-{i}-{'bias' if b else 'no-bias'}" for m, i, b in BATCH_CASES])
def test_batched_equals_alone(method, inputs, bias):
    specs = batch_specs(method, inputs, bias)
    jobs = jobs_of(specs)
    if inputs != "shared":
        assert not np.array_equal(jobs[0].problem.x, jobs[1].problem.x)  # per-job inputs really differ
    assert len({j.problem.y.tobytes() for j in jobs}) > 1
    batch = train(jobs, Method(method), 7, 2)
    assert [batch.status(i).value for i in range(len(batch))] == ["succeeded"] * len(jobs)
    assert_batched_equals_alone(jobs, method, 7, 2, ALONE_SAMPLE)


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_alone_with_several_channels_in_and_out(method):
    """From 32 jobs a batch draws its initial weights vectorized, laid out by column: with two channels in and out,
    the batch's outputs were summed in another order than a job's alone, and 36 of 40 jobs' losses differed from
    their own alone in float32's last bits."""
    jobs = jobs_of([JobSpec.parse(dict(input="random:3x2x5x6", kernel="random:2x2x2x2", method=method, lr=0.01,
                                       epochs=3, batch_size=2, seed=seed)) for seed in BATCH_SEEDS])
    assert len(jobs) >= VECTOR_INIT_MIN
    assert_batched_equals_alone(jobs, method, 3, 2, ALONE_SAMPLE)


@pytest.mark.parametrize("method", ["d2l-manual", "adam"])
def test_batched_equals_alone_when_jobs_share_input_and_labels(method):
    # the benchmark's case: one Problem object for every job, only seeds and learning rates differ
    problem = build_problem(spec(method=method))
    jobs = [Job(problem, seed=s, lr=(0.03, 0.01, 0.02)[i % 3]) for i, s in enumerate(BATCH_SEEDS)]
    assert_batched_equals_alone(jobs, method, 7, 2, ALONE_SAMPLE)


def diverging_batch() -> list[Job]:
    """ones:6x8 at lr 0.03 passes the 1e6 threshold; lr 1e30 overflows to inf; the others converge."""
    problem = build_problem(spec(input="ones:6x8"))
    return [Job(problem, seed=0, lr=0.03), Job(problem, seed=1, lr=1e30), Job(problem, seed=2, lr=0.01),
            Job(problem, seed=3, lr=0.001)]


def test_a_diverging_job_leaves_the_others_in_its_batch_untouched():
    jobs = diverging_batch()
    batch = train(jobs, Method.D2L_MANUAL, 10, 2)
    assert [batch.status(i).value for i in range(len(batch))] == ["diverged", "diverged", "succeeded", "succeeded"]
    assert record(batch, 1)["diverged_epoch"] == 2  # inf at the second epoch's forward pass
    json.dumps([record(batch, i) for i in range(4)], allow_nan=False)
    for i in (2, 3):
        alone = train([jobs[i]], Method.D2L_MANUAL, 10, 2)
        assert np.array_equal(batch.trained.loss[:, i], alone.trained.loss[:, 0])
        assert np.array_equal(batch.trained.mse[:, i], alone.trained.mse[:, 0])
        assert np.array_equal(batch.trained.weights[i], alone.trained.weights[0])
        assert record(batch, i)["epochs"] == record(alone, 0)["epochs"]


@pytest.mark.parametrize("epochs", [1, 3])
def test_a_book_job_whose_last_update_blows_up_diverged_in_that_epoch(epochs):
    """d2l-manual reports each epoch's loss before its update, as the book prints it: the last update is measured by
    no later epoch. Weights it blew up (lr 1e30: a loss past float32's range; lr 1e300: weights of inf and NaN) ended
    `succeeded`, with a kernel of NaN at 1e300; they diverged in that last epoch (in one of 3, the next epoch's loss
    says so, as before), and the batch's other job is as alone."""
    problem = build_problem(spec(input="ones:6x8"))
    jobs = [Job(problem, seed=0, lr=0.001), Job(problem, seed=1, lr=1e30), Job(problem, seed=2, lr=1e300)]
    batch = train(jobs, Method.D2L_MANUAL, epochs, 2)
    assert [batch.status(i).value for i in range(3)] == ["succeeded", "diverged", "diverged"]
    assert [record(batch, i)["diverged_epoch"] for i in (1, 2)] == [min(epochs, 2)] * 2
    assert np.isfinite(batch.trained.weights[1]).all() and not np.isfinite(batch.trained.weights[2]).all()
    alone = train(jobs[:1], Method.D2L_MANUAL, epochs, 2)
    assert record(batch, 0)["epochs"] == record(alone, 0)["epochs"]
    json.dumps([record(batch, i) for i in range(3)], allow_nan=False)


@pytest.mark.parametrize("method", [Method.D2L_SGD, Method.MOMENTUM])
def test_an_lr_past_what_an_epochs_map_holds_diverges_alone_and_leaves_its_batch_untouched(method):
    """The minibatch methods' pace multiplies each batch's step into an epoch's map: at lr 1e300 its entries
    overflowed, numpy's eigvals raised LinAlgError, and every job of the batch ended failed (`klab run` printed a
    traceback). That job diverges; its rate is unknown (None), the other job's is as alone."""
    problem = build_problem(spec(method=method.value))
    jobs = [Job(problem, seed=0, lr=0.01), Job(problem, seed=1, lr=1e300)]
    batch = train(jobs, method, 5, 2)
    assert [batch.status(i).value for i in range(2)] == ["succeeded", "diverged"]
    assert record(batch, 1)["pace"]["convergence_rate"] is None
    alone = train(jobs[:1], method, 5, 2)
    assert record(batch, 0)["epochs"] == record(alone, 0)["epochs"]
    assert record(batch, 0)["pace"] == record(alone, 0)["pace"] and record(alone, 0)["pace"]["convergence_rate"] < 1


@pytest.mark.parametrize("i", [0, 1])
def test_a_diverged_jobs_record_is_the_same_in_a_batch_and_alone(i):
    jobs = diverging_batch()
    rb = record(train(jobs, Method.D2L_MANUAL, 10, 2), i)
    ra = record(train([jobs[i]], Method.D2L_MANUAL, 10, 2), 0)
    assert rb["status"] == ra["status"] == "diverged" and rb["diverged_epoch"] == ra["diverged_epoch"]
    assert rb["learned_kernel"] == ra["learned_kernel"]
    assert [e["loss"] for e in rb["epochs"]] == [e["loss"] for e in ra["epochs"]]
    assert rb["epochs"] == ra["epochs"], "per-epoch results of a diverged job differ between batch and alone"


def test_kernel_error_is_bit_identical_batched_and_alone():
    jobs = jobs_of(batch_specs("d2l-manual", "shared", False))
    batch = train(jobs, Method.D2L_MANUAL, 7, 2)
    for i in ALONE_SAMPLE:
        alone = train([jobs[i]], Method.D2L_MANUAL, 7, 2)
        np.testing.assert_allclose(batch.trained.kernel_error[:, i], alone.trained.kernel_error[:, 0], rtol=1e-6)
        assert np.array_equal(batch.trained.kernel_error[:, i], alone.trained.kernel_error[:, 0]), \
            f"job {i}: kernel_error {batch.trained.kernel_error[:, i]} vs {alone.trained.kernel_error[:, 0]} alone"


def test_batched_equals_alone_bitwise_for_large_outputs():
    # 198 x 198 outputs per job: torch may split a long reduction over threads differently for B=1 and B=3.
    specs = [spec(input="random:1x1x200x200", kernel="random:3x3", method="adam", lr=0.01, epochs=3, batch_size=1,
                  seed=s) for s in (0, 5, 9)]
    jobs = jobs_of(specs)
    batch = train(jobs, Method.ADAM, 3, 1)
    for i, job in enumerate(jobs):
        alone = train([job], Method.ADAM, 3, 1)
        np.testing.assert_allclose(batch.trained.loss[:, i], alone.trained.loss[:, 0], rtol=1e-6)
        np.testing.assert_allclose(batch.trained.weights[i], alone.trained.weights[0], rtol=1e-6, atol=1e-7)
        assert np.array_equal(batch.trained.loss[:, i], alone.trained.loss[:, 0]), f"job {i}: losses not bit-identical"
        assert np.array_equal(batch.trained.weights[i], alone.trained.weights[0]), f"job {i}: kernel not bit-identical"


@pytest.mark.parametrize("method", ["d2l-manual", "momentum", "adam"])
def test_the_convolution_path_equals_torch_and_is_batch_independent(method, monkeypatch):
    # Problems above MATMUL_LIMIT train by one convolution per job; lower the limit to take that path cheaply.
    monkeypatch.setattr(residuals, "MATMUL_LIMIT", 0)
    values = dict(input="random:3x2x9x10", kernel="random:2x2x3x3", bias=0.2, noise=0.05, method=method,
                  lr=0.003 if method == "d2l-manual" else 0.01, epochs=4, batch_size=2)
    jobs = jobs_of([spec(**values, seed=s) for s in (3, 4, 2**40 + 7)])
    assert_batched_equals_alone(jobs, method, 4, 2)
    if method != "d2l-manual":
        s = spec(**values, seed=3)
        result = run_spec(s, jobs[0].problem)
        losses, mses, kernel, bias = torch_minibatch(jobs[0].problem, method, 3, s.lr, 4, 2)
        np.testing.assert_allclose(losses_of(result), losses, rtol=1e-5)
        np.testing.assert_allclose(np.array(result["learned_kernel"]), kernel, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["learned_bias"], bias, rtol=1e-5, atol=1e-6)


def test_lstsq_batched_equals_alone_and_needs_no_training():
    from reference import design_matrix, label_columns

    jobs = jobs_of([spec(method="lstsq", kernel=k, noise=0.1, seed=s) for s, k in enumerate(SHARED_KERNELS)])
    batch = train(jobs, Method.LSTSQ, 1, 2)
    for i, job in enumerate(jobs):
        rb, ra = record(batch, i), record(train([job], Method.LSTSQ, 1, 2), 0)
        np.testing.assert_allclose(rb["learned_kernel"], ra["learned_kernel"], rtol=1e-12, atol=1e-14)
        # the kernel it reports is numpy.linalg.lstsq's on the job's own data (tests/reference.py's im2col)
        a = design_matrix(job.problem.x.astype(np.float64), 1, 2, False)
        wstar = np.linalg.lstsq(a, label_columns(job.problem.y.astype(np.float64)), rcond=None)[0]
        np.testing.assert_allclose(np.ravel(rb["learned_kernel"]), wstar.ravel(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.ravel(rb["lstsq_kernel"]), wstar.ravel(), rtol=1e-6, atol=1e-6)
        assert rb["converged_epoch"] == 1 and len(rb["epochs"]) == 1


def test_jobs_of_different_shapes_cannot_share_a_batch(tmp_path):
    a = Job(build_problem(spec(input="edge:6x8")))
    b = Job(build_problem(spec(input="edge:6x9")))
    with pytest.raises(ValueError):
        train([a, b], Method.D2L_MANUAL, 2, 2)
    np.save(labels := tmp_path / "y.npy", np.ones((6, 7)))  # a job with a true kernel beside one without: the
    # first's was used for both
    free, known = (Job(build_problem(spec(kernel=k, labels=f"npy:{labels}"))) for k in (None, "d2l"))
    with pytest.raises(ValueError, match="a true kernel or none"):
        train([free, known], Method.D2L_MANUAL, 2, 2)


# ---------------------------------------------------------------------------------------------------
# Status, convergence, divergence, identifiability
# ---------------------------------------------------------------------------------------------------

def test_ones_input_diverges_with_its_epoch_and_valid_json():
    result = run_spec(spec(input="ones:6x8", method="d2l-manual", lr=0.03, epochs=10, seed=0))
    assert result["status"] == "diverged"
    d = result["diverged_epoch"]
    assert isinstance(d, int) and 1 <= d <= 10
    assert len(result["epochs"]) == d
    losses = losses_of(result)
    assert np.isfinite(losses[-1]) and losses[-1] > 1e6 * losses[0]  # the loss that crossed it, recorded (6.8e6)
    assert np.all(losses[:-1] <= 1e6 * losses[0])  # the first epoch past the threshold is the one reported
    assert result["converged_epoch"] is None
    text = json.dumps(result, allow_nan=False)  # raises on NaN or infinity
    assert strict_json(text)["status"] == "diverged"
    assert "diverged" in result["explanation"]
    blown = run_spec(spec(input="ones:6x8", method="d2l-manual", lr=1e200, epochs=3, seed=0))  # weights past a float
    json.dumps(blown, allow_nan=False)  # its kernels and epochs' kernel errors as null, never inf
    assert blown["learned_kernel"] == [[None, None]] and {e["kernel_error"] for e in blown["epochs"]} == {None}
    assert type(blown["identifiability"]["identifiable"]) is bool  # not 0.0
    assert list(blown)[list(blown).index("lstsq_kernel") + 1:][:4] == ["error", "identifiability", "gap",
                                                                      "converged_epoch"]  # groups in table order


def test_d2l_sgd_from_a_fresh_start_does_not_converge_in_16_epochs():
    result = run_spec(spec(method="d2l-sgd", lr=0.03, epochs=16, batch_size=2, seed=0))
    assert result["status"] == "succeeded"
    assert result["converged_epoch"] is None
    assert result["gap"]["optimization"] > 0.1
    assert result["explanation"].startswith("not converged")


def test_lstsq_converges_at_epoch_1():
    result = run_spec(spec(method="lstsq", seed=0))
    assert result["status"] == "succeeded"
    assert result["converged_epoch"] == 1
    assert [e["epoch"] for e in result["epochs"]] == [1]
    assert result["epochs"][0]["mse"] == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_allclose(result["learned_kernel"], [[1.0, -1.0]], atol=1e-12)


def test_converged_epoch_is_the_first_epoch_within_tol_of_the_optimum():
    result = run_spec(spec(method="d2l-manual", lr=0.03, epochs=30, seed=0, tol=1e-4))
    mses = [e["mse"] for e in result["epochs"]]
    first = next(i + 1 for i, m in enumerate(mses) if m <= 1e-4)  # the optimum's mse is 0 here
    assert result["converged_epoch"] == first


@pytest.mark.parametrize("noise", [0.2, 0.5])
def test_converged_epoch_with_noisy_labels_is_measured_from_the_optimums_nonzero_mse(noise):
    """With label noise the least-squares optimum leaves an mse above 0: a job converges when its mse is within
    --tol of that optimum's, computed here by numpy.linalg.lstsq on the job's own labels (tests/reference.py)."""
    from reference import design_matrix, label_columns

    s = spec(input="random:8x8", kernel="random:3x3", method="d2l-manual", lr=0.002, epochs=300, seed=3,
             noise=noise, tol=1e-3)
    problem = build_problem(s)
    a = design_matrix(problem.x.astype(np.float64), 3, 3, False)
    t = label_columns(problem.y.astype(np.float64))
    wstar = np.linalg.lstsq(a, t, rcond=None)[0]
    optimum = float(np.mean((a @ wstar - t) ** 2))
    assert optimum > 5 * s.tol  # the noise leaves far more than --tol: an optimum of 0 would be the wrong floor
    result = run_spec(s)
    mses = [e["mse"] for e in result["epochs"]]
    within = [i + 1 for i, m in enumerate(mses) if m <= optimum + s.tol]
    assert within, (optimum, mses[-5:])  # the test must see it converge
    assert result["converged_epoch"] == within[0]
    assert all(m > optimum * (1 - 1e-5) for m in mses)  # nothing trains below the optimum


def test_a_2x2_kernel_from_the_edge_image_is_not_identifiable():
    result = run_spec(spec(kernel="[[1, -1], [1, -1]]", method="d2l-manual", lr=0.01, epochs=100, seed=0))
    assert result["identifiability"] == {"rank": 2, "params": 4, "identifiable": False}
    assert result["gap"]["identifiability"] > 0.1
    assert "cannot tell these weights apart" in result["explanation"]
    assert "sums" in result["explanation"]


def test_result_has_exactly_the_documented_keys():
    result = run_spec(spec(method="momentum", lr=0.01, epochs=3, seed=4, bias=0.5))
    assert set(result) == RESULT_KEYS
    assert [set(e) for e in result["epochs"]] == [EPOCH_KEYS] * 3
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3]
    assert set(result["error"]) == {"frobenius", "relative", "max_abs", "cosine"}
    assert set(result["gap"]) == {"optimization", "identifiability", "noise"}
    assert set(result["identifiability"]) == {"rank", "params", "identifiable"}
    assert result["identifiability"]["params"] == 3
    assert result["method"] == "momentum" and result["seed"] == 4 and result["device"] == "cpu"
    assert result["torch_version"] == torch.__version__
    assert len(result["learned_bias"]) == 1
    assert result["train_seconds"] >= 0


def test_four_d_kernels_are_reported_four_d():
    result = run_spec(spec(input="random:2x6x7", kernel="random:3x2x2x2", method="adam", lr=0.05, epochs=2, seed=1))
    assert np.array(result["learned_kernel"]).shape == (3, 2, 2, 2)
    assert np.array(result["true_kernel"]).shape == (3, 2, 2, 2)
    assert np.array(result["lstsq_kernel"]).shape == (3, 2, 2, 2)
    # and each value in its place (out, in, row, column): a kernel of distinct values, which this input determines,
    # and the initial weights nn.Conv2d draws at the seed (transposed or flipped, the shapes above passed)
    kernel = np.arange(1.0, 25.0).reshape(3, 2, 2, 2).tolist()
    given = run_spec(spec(input="random:2x6x7", kernel=json.dumps(kernel), method="adam", lr=0.05, epochs=2, seed=1))
    assert given["true_kernel"] == kernel and given["identifiability"]["identifiable"]
    np.testing.assert_allclose(given["lstsq_kernel"], kernel, rtol=1e-6)
    torch.manual_seed(1)
    assert given["initial_kernel"] == nn.Conv2d(2, 3, kernel_size=(2, 2), bias=False).weight.tolist()


# ---------------------------------------------------------------------------------------------------
# The per-epoch callback
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["d2l-manual", "adam"])
def test_on_epoch_sees_every_epoch_of_every_job(method):
    jobs = jobs_of([spec(method=method, seed=s, lr=0.01) for s in range(3)])
    events = []
    batch = train(jobs, Method(method), 5, 2, on_epoch=events.append)
    assert [e.epoch for e in events] == [1, 2, 3, 4, 5]
    for e in events:
        assert np.array_equal(e.loss, batch.trained.loss[e.epoch - 1].astype(np.float32))
        assert e.alive.tolist() == [True] * 3
        assert e.kernel_error is not None and e.kernel_error.shape == (3,)
        assert np.array_equal(e.kernel_error, batch.trained.kernel_error[e.epoch - 1].astype(np.float32))
        if method == "d2l-manual":
            assert e.mse is None
        else:
            np.testing.assert_allclose(e.mse, batch.trained.mse[e.epoch - 1], rtol=1e-7)


def test_training_stops_once_every_job_has_stopped():
    """The book's job at lr 3 diverges at its third epoch, at lr 0.2 at its fifth: training ends there, where
    without the loop's break it went on to the tenth epoch of NaN (`klab run -v` printed `epoch 4, loss nan` to
    `epoch 10`); the job still training trains on alone in between."""
    jobs = jobs_of([spec(method="d2l-manual", seed=0, lr=lr) for lr in (3.0, 0.2)])
    seen = []  # each epoch's alive as it was then
    batch = train(jobs, Method.D2L_MANUAL, 10, 2, on_epoch=lambda e: seen.append((e.epoch, e.alive.tolist())))
    assert [batch.status(i).value for i in range(2)] == ["diverged", "diverged"]
    assert batch.trained.diverged_epoch.tolist() == [3, 5]
    assert seen == [(1, [True, True]), (2, [True, True]), (3, [False, True]), (4, [False, True]), (5, [False, False])]


def test_on_epoch_can_cancel_a_job_and_the_others_are_unaffected():
    jobs = jobs_of([spec(method="d2l-manual", seed=s, lr=0.01) for s in range(3)])
    full = train(jobs, Method.D2L_MANUAL, 6, 2)
    cancel = lambda event: np.array([event.epoch == 2, False, False])  # noqa: E731
    batch = train(jobs, Method.D2L_MANUAL, 6, 2, on_epoch=cancel)
    assert [batch.status(i).value for i in range(len(batch))] == ["cancelled", "succeeded", "succeeded"]
    rec = record(batch, 0)
    assert rec["status"] == "cancelled"
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    np.testing.assert_array_equal(losses_of(rec), full.trained.loss[:2, 0])
    for i in (1, 2):
        assert np.array_equal(batch.trained.loss[:, i], full.trained.loss[:, i])
        assert np.array_equal(batch.trained.weights[i], full.trained.weights[i])
    # the cancelled job keeps its kernel as its second epoch left it (README), not trained on to the sixth
    assert np.array_equal(batch.trained.weights[0], train(jobs, Method.D2L_MANUAL, 2, 2).trained.weights[0])
    assert not np.array_equal(batch.trained.weights[0], full.trained.weights[0])


def test_cuda_trains_as_the_cpu_does_or_is_refused_where_there_is_none():
    """With a GPU: CUDA equals the CPU to 1e-6 (relative) and a batch equals its jobs alone, for a shared input
    and per-job inputs. Without one: `auto` is the cpu and `cuda` is refused, saying why. Both branches assert."""
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
        return
    assert resolve_device("auto") == "cuda"
    for method in (Method.D2L_MANUAL, Method.ADAM):
        for inputs in ({"input": "edge:6x8", "kernel": "d2l"}, {"input": "random:5x7", "kernel": "random:2x2"}):
            jobs = jobs_of([spec(seed=s, method=method.value, lr=0.01, **inputs) for s in range(4)])
            on_cpu = train(jobs, method, 20, 2, "cpu")
            on_gpu = train(jobs, method, 20, 2, "cuda")
            np.testing.assert_allclose(on_gpu.trained.loss, on_cpu.trained.loss, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(on_gpu.trained.weights, on_cpu.trained.weights, rtol=1e-6, atol=1e-9)
            for i, job in enumerate(jobs):
                alone = train([job], method, 20, 2, "cuda")
                np.testing.assert_allclose(alone.trained.loss[:, 0], on_gpu.trained.loss[:, i], rtol=1e-6,
                                           atol=1e-9)


def test_train_seconds_is_the_batch_time_shared_among_jobs():
    """Measured around the call, independently of how the engine times itself: each job's share times the
    batch's size is no more than the call took, and every job's share is the same."""
    import time

    jobs = jobs_of([spec(seed=s) for s in range(4)])
    started = time.perf_counter()
    batch = train(jobs, Method.D2L_MANUAL, 3, 2)
    took = time.perf_counter() - started
    shares = [record(batch, i)["train_seconds"] for i in range(4)]
    assert len(set(shares)) == 1 and 0 < shares[0] * 4 <= took


def test_at_its_stable_lr_a_job_is_not_converging_whatever_float64_rounds_its_rate_to():
    """At the stable lr the rate is 1 (the largest eigenvalue's direction flips sign each epoch); float64 made it
    0.999999999999999 for the heavy ball with one batch at lr 2.66 on the book's input, and the sentence promised
    10892616853088272 more epochs of a loss that rose 43 times; the same at d2l-manual's exact bound on a random
    input, where another input's job at its bound was told it is not converging."""
    heavy = run_spec(spec(method="momentum", batch_size=6, lr=2.66, epochs=50, seed=0))
    assert heavy["pace"]["stable_lr"] == pytest.approx(2.66) and heavy["pace"]["convergence_rate"] >= 1
    assert heavy["pace"]["more_epochs"] is None and "more epochs" not in heavy["explanation"]
    first = run_spec(spec(input="random:6x8", kernel="random:3x3", lr=0.01, epochs=2, seed=0))
    at = run_spec(spec(input="random:6x8", kernel="random:3x3", lr=first["pace"]["stable_lr"], epochs=10, seed=0))
    assert at["pace"]["convergence_rate"] >= 1 and at["pace"]["more_epochs"] is None
    below = run_spec(spec(input="random:6x8", kernel="random:3x3", lr=first["pace"]["stable_lr"] * 0.9, epochs=10,
                          seed=0))
    assert below["pace"]["convergence_rate"] < 1  # just below it, the rate is what it is


def test_lstsq_reports_its_kernel_error_as_the_frobenius_norm_of_the_gap():
    """Its one epoch's kernel_error is the result's Frobenius error (the book's job, its error about 0, passed with
    the square's root left out)."""
    result = run_spec(spec(method="lstsq", kernel="random:2x2", input="random:6x7", noise=0.1, seed=1))
    assert result["error"]["frobenius"] > 0.01
    assert result["epochs"][0]["kernel_error"] == pytest.approx(result["error"]["frobenius"], rel=1e-6)


def test_lstsq_mse_is_over_every_label_of_every_sample():
    """Three samples of 16 labels: the mse divides the sum of squares by all 48, not by one sample's 16."""
    result = run_spec(JobSpec.parse(dict(input="random:3x1x6x6", kernel="sobel-x", method="lstsq", seed=4,
                                         noise=0.3)))
    (epoch,) = result["epochs"]
    assert epoch["mse"] == pytest.approx(epoch["loss"] / 48, rel=1e-6) and epoch["mse"] > 0


def test_a_minibatch_job_is_judged_diverged_by_its_whole_datas_mse_not_its_last_batchs(tmp_path):
    """Three samples, the last 10^4 times smaller than the others: the last batch's loss after the first epoch is
    some 10^8 times under the whole data's mse, and a rise of the mse past 10^6 times that loss (its second epoch,
    still falling) was told `diverged at epoch 2`, `training diverged: the learning rate is too large`."""
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 8))
    x[2] *= 1e-4
    np.save(tmp_path / "x.npy", x)
    job = spec(input=f"npy:{tmp_path / 'x.npy'}", kernel="d2l", method="d2l-sgd", batch_size=1, lr=0.01, epochs=5)
    got = run_spec(job)
    assert got["status"] == "succeeded" and got["epochs_done"] == 5, got["status"]
    losses = [e["loss"] for e in got["epochs"]]
    assert losses[-1] < losses[0] and got["diverged_epoch"] is None, losses


def test_a_fit_that_starts_exact_is_no_divergence_when_its_loss_rises():
    """A first mse of exactly 0: the loss 10^6 times the first is any rise at all, and is no divergence (the
    factor is of a loss that was not 0)."""
    from worker.engine.loop import fit
    from worker.engine.residuals import Residuals

    x, y = np.zeros((1, 1, 4, 4), np.float32), np.full((1, 1, 4, 4), 3.0, np.float32)
    res = Residuals([x], [y], (1, 1, 1, 1), "cpu")
    trained = fit(res, torch.zeros(1, 1, 1, 1, 1), torch.tensor([[0.5]]), [0.5], None, Method.MOMENTUM, 4, 1)
    assert trained.mse[0, 0] == 0 and trained.mse[1, 0] > 0  # exact at first, then it rises
    assert trained.diverged_epoch[0] == 0 and np.isfinite(trained.mse[:, 0]).all()
