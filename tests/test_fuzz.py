"""Property-based fuzzing of what a user can type: spec values, spec files and sweep flags.

Whatever comes in, the only error allowed out is BadInput (one line naming the field, exit code 2);
anything else would reach the user as a traceback, or a worker as a job it cannot load.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.errors import BadInput
from service.jobs.problem import build_problem, file_arrays
from service.jobs.spec import JobSpec, load_spec_file
from service.jobs.sweep import SWEEPABLE, grid
from service.submit import plan_sweep

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

FIELDS = ("input", "kernel", "labels", "method", "lr", "epochs", "batch_size", "seed", "noise", "bias", "tol",
          "device")
PRESETS = ("d2l", "edge-v", "sobel-x", "sobel-y", "laplacian", "second-diff", "box3", "gauss3", "sharpen",
           "identity3")
FILES = ("x.npy", "x3.npy", "x4.npy", "objects.npy", "strings.npy", "nan.npy", "empty.npy", "vector.npy",
         "five.npy", "labels.npy", "labels3.npy", "labels4.npy", "wide.npy", "corrupt.npy", "gray.png", "rgb.png",
         "text.png", "tiny.gif", "bomb.png", "missing.npy", "dir")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few files of every kind a field may name: good ones, bad ones, hostile ones."""
    from PIL import Image
    from test_bad_input import tiny_png

    d = tmp_path_factory.mktemp("fuzz-files")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.standard_normal((6, 8)))
    np.save(d / "x3.npy", rng.standard_normal((2, 5, 5)))
    np.save(d / "x4.npy", rng.standard_normal((3, 1, 4, 4)))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    np.save(d / "nan.npy", np.array([[np.nan, 1.0], [2.0, np.inf]]))
    np.save(d / "empty.npy", np.zeros((0, 3)))
    np.save(d / "vector.npy", np.ones(5))
    np.save(d / "five.npy", np.ones((1, 1, 1, 2, 2)))
    np.save(d / "labels.npy", rng.standard_normal((6, 7)))
    np.save(d / "labels3.npy", rng.standard_normal((2, 5, 4)))
    np.save(d / "labels4.npy", rng.standard_normal((3, 2, 3, 3)))
    np.save(d / "wide.npy", np.ones((3, 5)))  # labels wider than a 4x4 input
    (d / "corrupt.npy").write_bytes((d / "x.npy").read_bytes()[:100])
    Image.fromarray((rng.random((6, 9)) * 255).astype(np.uint8)).save(d / "gray.png")
    Image.fromarray((rng.random((5, 5, 3)) * 255).astype(np.uint8)).save(d / "rgb.png")
    (d / "text.png").write_text("no image here")
    Image.new("L", (4, 4)).save(d / "tiny.gif")
    tiny_png(d / "bomb.png", 20_000, 20_000)
    (d / "dir").mkdir()
    return d


@pytest.fixture(scope="module", autouse=True)
def small_limits() -> Iterator[None]:
    """Limits small enough that no generated spec allocates much."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KLAB_MAX_INPUT_ELEMENTS", "4096")
        mp.setenv("KLAB_MAX_KERNEL_ELEMENTS", "256")
        mp.setenv("KLAB_MAX_EPOCHS", "1000")
        mp.setenv("KLAB_MAX_SWEEP_JOBS", "64")
        yield


# --- strategies ------------------------------------------------------------------------------------

# What a JSON or YAML file can hold (YAML adds bytes and dates).
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
                   st.binary(max_size=6), st.dates(), st.datetimes())
documents = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)

small = st.integers(-1, 12)
dims = st.lists(small, min_size=0, max_size=5).map(lambda ds: "x".join(map(str, ds)))
file_ref = st.sampled_from(FILES).map(lambda name: "{d}/" + name)


numbers = st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5), st.sampled_from([float("nan"), float("inf"), 1e308]))
kernel_literals = st.one_of(
    st.lists(st.lists(numbers, min_size=0, max_size=4), min_size=0, max_size=4),
    st.lists(st.lists(st.lists(st.lists(numbers, min_size=1, max_size=3), min_size=1, max_size=3),
                      min_size=1, max_size=2), min_size=1, max_size=2),
    st.recursive(st.one_of(numbers, st.text(max_size=3), st.booleans(), st.none()),
                 lambda inner: st.lists(inner, max_size=3), max_leaves=8),
).map(json.dumps)

inputs = st.one_of(
    st.builds(lambda kind, d: f"{kind}:{d}",
              st.sampled_from(["edge", "ones", "random", "checker", "diagonal", "blob", ""]), dims),
    st.builds(lambda kind, f, mode: f"{kind}:{f}{mode}", st.sampled_from(["image", "npy"]), file_ref,
              st.sampled_from(["", ":rgb", ":gray", ":cmyk"])),
    st.text(max_size=20),
)
kernels = st.one_of(
    st.sampled_from(PRESETS), kernel_literals, dims.map(lambda d: f"random:{d}"),
    file_ref.map(lambda f: f"npy:{f}"), st.text(max_size=20),
)
labels = st.one_of(file_ref.map(lambda f: f"npy:{f}"), st.text(max_size=12))
methods = st.one_of(st.sampled_from(["d2l-manual", "d2l-sgd", "momentum", "adam", "lstsq"]), st.text(max_size=8))
devices = st.one_of(st.sampled_from(["cpu", "auto"]), st.text(max_size=6))
numeric_text = st.one_of(st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,3})?(e-?[0-9]{1,3})?\Z"),
                         st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "1_000", " 3 ", ""]))

FIELD_VALUES = {
    "input": inputs, "kernel": kernels | st.none(), "labels": labels, "method": methods,
    "lr": st.floats(1e-4, 1.0) | numeric_text, "epochs": st.integers(-2, 30) | numeric_text,
    "batch_size": st.integers(-1, 8) | numeric_text, "seed": st.integers(-1, 2**64) | numeric_text,
    "noise": st.floats(-1, 1) | numeric_text, "bias": st.floats() | numeric_text,
    "tol": st.floats(-1, 1) | numeric_text, "device": devices,
}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly plausible values for some fields, arbitrary documents for others, sometimes unknown keys."""
    values: dict[Any, Any] = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS))):
        values[name] = draw(FIELD_VALUES[name] | documents if draw(st.integers(0, 9)) == 0 else FIELD_VALUES[name])
    if draw(st.integers(0, 9)) == 0:
        values.update(draw(st.dictionaries(st.text(max_size=8) | st.integers(), documents, max_size=2)))
    return values


def with_files(value: Any, d: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{d}", str(d))
    if isinstance(value, dict):
        return {k: with_files(v, d) for k, v in value.items()}
    if isinstance(value, list):
        return [with_files(v, d) for v in value]
    return value


def only_bad_input(call, *args: Any) -> Any:
    """Call; BadInput is the one allowed failure and must be one line naming a field."""
    try:
        return call(*args)
    except BadInput as exc:
        assert exc.field and "\n" not in str(exc), repr(exc)
        return None


# --- properties ------------------------------------------------------------------------------------

@FUZZ
@given(values=specs())
@example(values={"kernel": [dt.date(2024, 1, 1)]})  # YAML turns 2024-01-01 into a date
@example(values={"labels": [b"\x00"]})  # and !!binary into bytes
@example(values={"input": "npy:{d}/objects.npy"})
@example(values={"input": "image:{d}/bomb.png"})
@example(values={"kernel": "[[1e308, 1e308]]", "input": "ones:3x3"})
@example(values={"input": "npy:{d}/strings.npy"})  # the draws reach a file's loader a few times in 300: each
@example(values={"input": "image:{d}/text.png"})  # refusal a loader makes of its own is given once here
@example(values={"bias": 10**400})  # past a float
@example(values={"input": "ones:3x3", "kernel": "random:2x5"})  # wider than the input, not taller
@example(values={"input": "random:3x6x6", "kernel": "random:2x1x3x3"})  # one input channel of three
@example(values={"input": "ones:3x3", "kernel": "[[3e38]]", "bias": 3e38})  # labels past float32
@example(values={"input": "ones:4x4", "labels": "npy:{d}/wide.npy", "kernel": None})  # labels wider than it
@example(values={"input": "npy:/tmp/\ud800.npy"})  # a name that is not UTF-8 (Hypothesis' text never is)
@example(values={"input": "npy:~nosuchuserxx/a.npy"})  # a home that is not there
@example(values={"input": "npy:/tmp/a\x00.npy"})  # a NUL in a path
def test_spec_parser_raises_only_bad_input(values, files):
    spec = only_bad_input(JobSpec.parse, with_files(values, files))
    if spec is None:
        return
    arrays = only_bad_input(file_arrays, spec)
    if arrays is None:
        return
    problem = only_bad_input(build_problem, spec, arrays)
    if problem is not None:
        assert np.all(np.isfinite(problem.x)) and np.all(np.isfinite(problem.y))
        assert problem.x.ndim == problem.y.ndim == 4
        assert problem.y.shape[2] <= problem.x.shape[2] and problem.y.shape[3] <= problem.x.shape[3]
        assert min(problem.kernel_shape) > 0


flag_text = st.one_of(
    st.text(alphabet="0123456789.,:-+eE[]()x ", max_size=24),
    st.text(max_size=16),
    st.builds(lambda a, b: f"{a}..{b}", st.integers(-3, 70), st.integers(-3, 70)),
    st.builds(lambda a, b, n: f"{a}:{b}:{n}", st.floats(allow_nan=True), st.floats(allow_nan=True),
              st.integers(-2, 70)),
    st.lists(st.sampled_from(["0.1", "1e-3", "2", "d2l", "[[1,2],[3,4]]", "edge:6x8", "adam", "", "nan"]),
             min_size=1, max_size=5).map(",".join),
)
flag_sets = st.dictionaries(st.sampled_from([*SWEEPABLE, "tol", "device", "bias", "labels"]), flag_text, max_size=4)


@FUZZ
@given(flags=flag_sets)
@example(flags={"seed": "1e-300:1e300:3"})
@example(flags={"epochs": "1:1e308:2"})
@example(flags={"lr": "1e-320:1e300:4"})
@example(flags={"kernel": "[[1,2],[3,4]],d2l", "lr": "0.1,,0.2"})
@example(flags={"lr": "inf..2"})  # the draws build A..B of whole numbers only
@example(flags={"seed": "1,9223372036854775808"})  # past a seed's column: the plan checks a sweep's extremes
@example(flags={"seed": "0..9", "epochs": "1..9"})  # 90 jobs: past the limit of 64 together, not each
@example(flags={"lr": "0.1,-1"})  # the least value refused, not only the greatest
@example(flags={"lr": "0:1:3"})  # a log range from 0
def test_sweep_flags_raise_only_bad_input(flags):
    g = only_bad_input(grid, flags)
    if g is None:
        return
    assert g.size <= 64
    plan = only_bad_input(plan_sweep, g, None)
    if plan is None:
        return
    jobs = list(plan.jobs)  # once the plan is validated, making its jobs cannot fail
    assert len(jobs) == g.size
    for values, _, _ in jobs:  # and every job made is one the spec accepts, as a worker will parse it
        JobSpec.parse(values)


spec_texts = st.one_of(
    st.text(max_size=60),
    documents.map(lambda doc: json.dumps(doc, default=str)),
    st.lists(specs().map(lambda s: json.dumps(s, default=str)), max_size=3).map("\n".join),
    st.sampled_from(["kernel: [2024-01-01]\n", "lr: !!binary aGk=\n", "? [1, 2]\n: 3\n", "kernel: &x [*x]\n",
                     "!!python/object:os.system {}\n", "[" * 300, "lr: 1e999\n", '{"lr": NaN}', "- 1\n- 2\n",
                     "\ufeff{}", "~\n"]),
)


@FUZZ
@given(text=spec_texts, suffix=st.sampled_from([".json", ".jsonl", ".yaml", ".yml", ""]))
@example(text="kernel: [2024-01-01]\n", suffix=".yaml")
@example(text='{"labels": [1, 2]}\n{"kernel": [[1, NaN]]}\n', suffix=".jsonl")
@example(text="[" * 100_000, suffix=".yaml")  # nested past Python's recursion limit (300 deep is not)
@example(text="[" * 100_000, suffix=".json")
def test_spec_files_raise_only_bad_input(text, suffix, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / f"fuzzed-spec{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    docs = only_bad_input(load_spec_file, str(path))
    for doc in docs or []:
        only_bad_input(JobSpec.parse, doc)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".yaml", ""])
@pytest.mark.parametrize("mark", [b"", b"\xef\xbb\xbf"], ids=["", "after a byte-order mark"])
def test_a_spec_file_not_in_utf8_is_bad_input_saying_where(suffix, mark, tmp_path):
    """The fuzzed files above are all UTF-8 (written so). A file of Latin-1 bytes, an old editor's, was "not a
    readable text file", as a file that cannot be opened is. Where is counted in the file, its mark included."""
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(mark + b'{"lr": "\xe9"}\n')
    with pytest.raises(BadInput, match=rf"^file: .* is not UTF-8 text \(byte 0xe9 at offset {8 + len(mark)}\); save it "
                                       "as UTF-8$"):
        load_spec_file(str(path))


def test_a_kernel_nested_past_pythons_recursion_limit_is_bad_input():
    kernel: Any = 1.0
    for _ in range(5_000):
        kernel = [kernel]
    with pytest.raises(BadInput, match="^kernel: must be a string or a nested list of numbers"):
        JobSpec.parse({"kernel": kernel})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


@st.composite
def chunks(draw) -> list[dict[str, Any]]:
    """A chunk of specs as a sweep makes them: one base dict, each job overriding a few of its keys (equal
    values as other objects too: 1 and 1.0, 0.0 and -0.0), now and then one job with its keys reordered."""
    base = draw(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=6))
    keys = list(base)
    specs = []
    for _ in range(draw(st.integers(1, 5))):
        changed = draw(st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys)))
        spec = {**base, **changed}
        if len(keys) > 1 and draw(st.integers(0, 9)) == 0:
            spec = dict(reversed(spec.items()))
        specs.append(spec)
    return specs


@FUZZ
@given(specs=chunks())
@example(specs=[{"lr": 1, "seed": 0.0, "s": "{}"}, {"lr": 1.0, "seed": -0.0, "s": "{}"}])
@example(specs=[{"a": 0, "b": True}, {"a": 0, "b": False}])  # a bool is no int to JSON: true, not True
def test_spec_texts_from_a_template_are_what_json_dumps_writes(specs):
    """The jobs' spec texts are made from one template of what they share (service.submit); each must be
    exactly json.dumps of its spec, whatever the values and whatever the keys share."""
    from service.db.rows import spec_texts, varying

    assert spec_texts(specs, varying(specs)) == [json.dumps(s) for s in specs]
