"""Least squares, identifiability and the gap, against numpy.linalg on a design matrix built here."""
from __future__ import annotations

import numpy as np
import pytest
from harness import run_json as run_spec
from reference import design_matrix, flat, label_columns, reference_analysis

from service.jobs.inputs import correlate
from service.jobs.problem import build_problem
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from worker.engine import analysis
from worker.engine.explain import Facts, explain


def problem_of(**values):
    return build_problem(JobSpec.parse(values))


# ---------------------------------------------------------------------------------------------------
# The design matrix and the row space
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,kh,kw", [((1, 1, 6, 8), 1, 2), ((2, 3, 5, 6), 2, 3), ((3, 2, 4, 4), 4, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_im2col_matches_a_design_matrix_built_by_loops(shape, kh, kw, bias):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert np.array_equal(analysis.im2col(x, kh, kw, bias), design_matrix(x, kh, kw, bias))


def test_im2col_times_a_flat_kernel_is_the_convolution():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 7))
    k = rng.standard_normal((4, 3, 2, 3))
    np.testing.assert_allclose(analysis.im2col(x, 2, 3, False) @ k.reshape(4, -1).T,
                               analysis.targets(correlate(x, k)), rtol=1e-12, atol=1e-12)
    assert np.array_equal(analysis.targets(correlate(x, k)), label_columns(correlate(x, k)))


@pytest.mark.parametrize("input_,kshape,bias,rank", [
    ("edge:6x8", (1, 1, 1, 2), False, 2),
    ("edge:6x8", (1, 1, 2, 2), False, 2),  # rows of the edge image repeat: only column sums are seen
    ("edge:6x8", (1, 1, 2, 2), True, 3),
    ("ones:6x8", (1, 1, 1, 2), False, 1),
    ("ones:6x8", (1, 1, 1, 2), True, 1),
    ("checker:6x6", (1, 1, 3, 3), False, 2),
    ("random:6x7", (1, 1, 3, 3), True, 10),
])
def test_rank_agrees_with_numpy_matrix_rank(input_, kshape, bias, rank):
    x = problem_of(input=input_).x
    design = analysis.Design(x, kshape, bias)
    a = design_matrix(x, kshape[2], kshape[3], bias)
    assert design.rank == np.linalg.matrix_rank(a) == rank
    assert design.params == a.shape[1]
    assert design.identifiable == (rank == a.shape[1])


def test_projection_is_the_pinv_projector():
    x = problem_of(input="edge:6x8").x
    design = analysis.Design(x, (1, 1, 2, 2), True)
    a = design_matrix(x, 2, 2, True)
    p = np.linalg.pinv(a) @ a
    w = np.random.default_rng(2).standard_normal((3, 2, 5))
    np.testing.assert_allclose(design.project(w), w @ p.T, atol=1e-12)
    assert design.sums_only  # identical columns: each pair of weights is seen only through its sum


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunked", [False, True], ids=["svd", "qr-chunks"])
def test_solve_agrees_with_numpy_lstsq(bias, chunked, monkeypatch):
    if chunked:  # designs above DIRECT_LIMIT are decomposed through a QR of per-sample chunks
        monkeypatch.setattr(analysis, "DIRECT_LIMIT", 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 6, 7)).astype(np.float32)
    y = rng.standard_normal((4, 3, 2, 5, 5))  # 4 jobs sharing x, 2 output channels
    design = analysis.Design(x, (2, 2, 2, 3), bias)
    assert (design.a is None) == chunked
    t = np.stack([analysis.targets(yy) for yy in y])
    wstar, sse = design.solve(t)
    a = design_matrix(x, 2, 3, bias)
    for b in range(4):
        ref, res, rank, _ = np.linalg.lstsq(a, label_columns(y[b]), rcond=None)
        np.testing.assert_allclose(wstar[b], ref.T, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(sse[b], res.sum(), rtol=1e-8)
        assert design.rank == rank


def test_solve_is_minimum_norm_when_not_identifiable(monkeypatch):
    x = problem_of(input="edge:6x8").x
    y = np.random.default_rng(4).standard_normal((1, 1, 5, 7))
    a = design_matrix(x, 2, 2, False)
    ref = np.linalg.lstsq(a, label_columns(y), rcond=None)[0].T
    for limit in (analysis.DIRECT_LIMIT, 0):
        monkeypatch.setattr(analysis, "DIRECT_LIMIT", limit)
        design = analysis.Design(x, (1, 1, 2, 2), False)
        wstar, _ = design.solve(analysis.targets(y)[None])
        np.testing.assert_allclose(wstar[0], ref, atol=1e-10)
        assert design.rank == 2


# ---------------------------------------------------------------------------------------------------
# The gap of whole results, recomputed from numpy.linalg
# ---------------------------------------------------------------------------------------------------

GAP_CASES = [
    dict(input="edge:6x8", kernel="d2l", method="d2l-manual", lr=0.03, epochs=10, seed=0),
    dict(input="edge:6x8", kernel="[[1, -1], [1, -1]]", method="d2l-manual", lr=0.01, epochs=40, seed=1),
    dict(input="edge:6x8", kernel="[[1, -1], [0.5, 2]]", method="adam", lr=0.05, epochs=20, seed=2, bias=0.3,
         noise=0.1),
    dict(input="random:2x6x7", kernel="random:2x2x2x2", method="momentum", lr=0.01, epochs=15, seed=3, bias=-0.5,
         noise=0.2),
    dict(input="random:3x1x6x6", kernel="sobel-x", method="d2l-sgd", lr=0.05, epochs=10, seed=4, noise=0.3),
    dict(input="checker:6x6", kernel="laplacian", method="d2l-manual", lr=0.003, epochs=20, seed=5, bias=1.0),
    dict(input="ones:5x6", kernel="d2l", method="lstsq", seed=6, bias=0.5, noise=0.1),
    dict(input="random:6x7", kernel="box3", method="lstsq", seed=7, noise=0.05),
]


@pytest.mark.parametrize("values", GAP_CASES, ids=lambda v: f"{v['method']}-{v['input']}-{v['kernel']}")
def test_lstsq_rank_and_gaps_agree_with_numpy(values):
    spec = JobSpec.parse(values)
    problem = build_problem(spec)
    result = run_spec(spec, problem)
    co = problem.kernel_shape[0]
    bias = problem.has_bias
    learned = flat(result["learned_kernel"], result["learned_bias"], co)
    true = flat(problem.true_kernel, problem.true_bias if bias else None, co)
    ref = reference_analysis(problem.x, problem.y, problem.kernel_shape, bias, learned, true)
    kdim = int(np.prod(problem.kernel_shape[1:]))

    assert result["identifiability"] == {"rank": ref["rank"], "params": ref["params"],
                                         "identifiable": ref["rank"] == ref["params"]}
    np.testing.assert_allclose(np.array(result["lstsq_kernel"]).reshape(co, kdim), ref["wstar"][:, :kdim],
                               rtol=1e-8, atol=1e-9)
    for part in ("optimization", "noise", "identifiability"):
        assert result["gap"][part] == pytest.approx(ref[part], rel=1e-7, abs=1e-9), part
    if spec.method.value == "lstsq":
        assert result["gap"]["optimization"] == pytest.approx(0.0, abs=1e-9)
        np.testing.assert_allclose(result["epochs"][0]["loss"], ref["sse"], rtol=1e-7, atol=1e-12)


def test_identifiable_noise_free_jobs_have_no_noise_or_identifiability_gap():
    result = run_spec(JobSpec.parse(dict(input="random:8x9", kernel="sobel-y", method="adam", lr=0.05, epochs=5)))
    assert result["identifiability"]["identifiable"]
    assert result["gap"]["noise"] == pytest.approx(0.0, abs=1e-6)
    assert result["gap"]["identifiability"] == pytest.approx(0.0, abs=1e-9)
    assert result["gap"]["optimization"] == pytest.approx(result["error"]["frobenius"], rel=1e-6)


def test_without_a_true_kernel_only_the_optimization_gap_is_known(tmp_path):
    labels = np.tile([0.0, 1, 0, 0, 0, -1, 0], (6, 1))
    np.save(tmp_path / "y.npy", labels)
    result = run_spec(JobSpec.parse(dict(kernel=None, labels=f"npy:{tmp_path / 'y.npy'}", method="lstsq")))
    assert result["true_kernel"] is None and result["error"] is None
    assert result["gap"]["noise"] is None and result["gap"]["identifiability"] is None
    np.testing.assert_allclose(result["learned_kernel"], [[1.0, -1.0]], atol=1e-12)
    assert result["explanation"].startswith("no true kernel")
    assert result["epochs"][0]["kernel_error"] is None


# ---------------------------------------------------------------------------------------------------
# Kernel errors and the sentence
# ---------------------------------------------------------------------------------------------------

def test_kernel_errors():
    learned = np.array([[[1.0, -0.5]], [[0.0, 0.0]], [[2.0, 2.0]]])
    true = np.array([[[1.0, -1.0]], [[1.0, -1.0]], [[0.0, 0.0]]])
    e = analysis.kernel_errors(learned, true)
    np.testing.assert_allclose(e["frobenius"], [0.5, np.sqrt(2), np.sqrt(8)])
    np.testing.assert_allclose(e["relative"][:2], [0.5 / np.sqrt(2), 1.0])
    np.testing.assert_allclose(e["max_abs"], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(e["cosine"][0], 1.5 / (np.sqrt(1.25) * np.sqrt(2)))
    assert np.isnan(e["relative"][2]) and np.isnan(e["cosine"][1]) and np.isnan(e["cosine"][2])


IDENT = {"rank": 2, "params": 4, "identifiable": False}


@pytest.mark.parametrize("gap,ident,status,expected", [
    ({"optimization": 1.0, "noise": 0.0, "identifiability": 0.0}, IDENT, "diverged", "diverged"),
    ({"optimization": 0.0, "noise": 0.0, "identifiability": 0.0}, IDENT, "failed", "no result"),
    ({"optimization": 1e-5, "noise": 1e-5, "identifiability": 1e-5}, IDENT, "succeeded", "matches the true"),
    ({"optimization": 0.5, "noise": 0.01, "identifiability": 0.1}, IDENT, "succeeded", "not converged"),
    ({"optimization": 0.01, "noise": 0.5, "identifiability": 0.1}, IDENT, "succeeded", "label noise"),
    ({"optimization": 0.01, "noise": 0.0, "identifiability": 0.5}, {**IDENT, "sums_only": True}, "succeeded",
     "cannot tell these weights apart: only their sums are determined (rank 2 of 4)"),
    ({"optimization": 0.01, "noise": 0.0, "identifiability": 0.5}, IDENT, "succeeded",
     "only 2 combinations of the 4 weights"),
    ({"optimization": 0.3, "noise": None, "identifiability": None}, IDENT, "succeeded", "no true kernel"),
])
def test_explain_names_the_dominant_part(gap, ident, status, expected):
    facts = Facts.one(JobStatus(status), gap["optimization"], gap["noise"], gap["identifiability"], ident["rank"],
                      ident["params"], ident.get("sums_only", False))
    (sentence,) = explain(facts)
    assert expected in sentence


def test_a_growing_loss_is_never_told_to_raise_the_learning_rate():
    # A 2x2 kernel on the edge image at the book's lr: the summed loss grows ~17,000-fold in 10 epochs,
    # short of the 1e6 divergence threshold, so the job "succeeds" with a huge optimization gap.
    result = run_spec(JobSpec.parse(dict(kernel="[[1, -1], [1, -1]]", method="d2l-manual", lr=0.03, epochs=10)))
    losses = [e["loss"] for e in result["epochs"]]
    assert losses[-1] > 1000 * losses[0]
    assert "raise the learning rate" not in result["explanation"]
