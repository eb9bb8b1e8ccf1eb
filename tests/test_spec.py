"""The job spec: defaults, validation naming the field, spec files, and the problem a spec builds."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from service.errors import BadInput
from service.jobs.choices import Method
from service.jobs.problem import build_problem
from service.jobs.spec import JobSpec, load_spec_file
from service.settings import Settings


def test_defaults_are_the_books_job():
    spec = JobSpec.parse({})
    assert (spec.input, spec.kernel, spec.method, spec.lr, spec.epochs, spec.batch_size, spec.seed) == \
        ("edge:6x8", "d2l", Method.D2L_MANUAL, 0.03, 10, 2, 0)
    assert spec.labels is None and spec.bias is None and spec.noise == 0.0 and spec.tol == 1e-4
    assert spec.device.value == "cpu"
    assert spec.to_json()["method"] == "d2l-manual"


def test_values_arrive_as_strings_from_the_cli_and_are_typed():
    spec = JobSpec.parse({"lr": "0.5", "epochs": "3", "seed": "7", "bias": "-1", "method": "adam", "device": "auto"})
    assert (spec.lr, spec.epochs, spec.seed, spec.bias, spec.method) == (0.5, 3, 7, -1.0, Method.ADAM)


def test_a_spec_is_frozen():
    spec = JobSpec.parse({})
    with pytest.raises(Exception):
        spec.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("values,field", [
    ({"lr": -0.1}, "lr"), ({"lr": 0}, "lr"), ({"lr": "nan"}, "lr"), ({"lr": "abc"}, "lr"),
    ({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"batch_size": 0}, "batch-size"),
    ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"), ({"noise": -1}, "noise"), ({"tol": -1}, "tol"),
    ({"bias": "inf"}, "bias"), ({"method": "sgd"}, "method"), ({"device": "tpu"}, "device"),
    ({"colour": "red"}, "colour"), ({"kernel": None}, "kernel"), ({"input": 5}, "input"),
])
def test_bad_values_name_their_field(values, field):
    with pytest.raises(BadInput) as exc:
        JobSpec.parse(values)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("values,field", [
    ({"lr": [0.01, 0.03]}, "lr"), ({"seed": "0..2"}, "seed"), ({"lr": "0.01,0.03"}, "lr"),
    ({"epochs": [10, 20]}, "epochs"), ({"method": "adam,momentum"}, "method"), ({"method": ["adam"]}, "method"),
    # a file's list of kernels or inputs, as a sweep file writes them (was: "holds a non-numeric value 'd2l'",
    # "must be 2-D ..., got 3-D", "unknown input '[\"edge'")
    ({"kernel": ["d2l", "sobel-x"]}, "kernel"), ({"kernel": [[[1, -1]], [[2, -1]]]}, "kernel"),
    ({"kernel": ["d2l", [[1, -1]]]}, "kernel"), ({"input": ["edge:6x8", "ones:6x8"]}, "input"),
])
def test_a_sweeps_values_given_to_one_job_point_at_klab_sweep(values, field):
    """klab run and submit, and their files, take one job: a list or range there is a sweep's."""
    with pytest.raises(BadInput) as exc:
        JobSpec.parse(values)
    assert exc.value.field == field
    assert str(exc.value).endswith("; several values make a sweep: klab sweep")


@pytest.mark.parametrize("values,field", [({"lr": "0.01:0.1:3"}, "lr"), ({"tol": "0.1,0.2"}, "tol"),
                                          ({"bias": [0.1, 0.2]}, "bias")])
def test_log_spaced_values_point_at_a_sweep_and_what_cannot_be_swept_says_so(values, field):
    """`--lr 0.01:0.1:3` is a sweep's too; `klab sweep --tol 0.1,0.2` was told to use klab sweep."""
    with pytest.raises(BadInput) as exc:
        JobSpec.parse(values)
    assert exc.value.field == field
    assert str(exc.value).endswith("; several values make a sweep: klab sweep" if field == "lr" else
                                   "; a sweep varies only input, kernel, method, lr, epochs, batch_size, seed, noise")


@pytest.mark.parametrize("values", [{"lr": "x"}, {"method": "sgd"}, {"epochs": "2.5"}, {"seed": -1}, {"lr": "1:2"},
                                    {"epochs": "1:2:3:4"}])
def test_a_single_bad_value_is_not_told_about_sweeps(values):
    with pytest.raises(BadInput) as exc:
        JobSpec.parse(values)
    assert "sweep" not in str(exc.value)


def test_a_specs_mistakes_in_their_own_words():
    """A value of 58 characters named whole; an unknown field with both its near names; a sweep's tags each once and
    its fixed tol a number, as its bias."""
    from service.jobs.sweep import grid, tags

    with pytest.raises(BadInput) as long:
        JobSpec.parse({"lr": "x" * 58})
    assert str(long.value) == f"lr: not a number: '{'x' * 58}'"
    with pytest.raises(BadInput) as unknown:
        JobSpec.parse({"biase": 1})
    assert str(unknown.value) == "biase: unknown field; did you mean bias or noise?"
    assert tags(["a", " a", "b", "a"]) == ["a", "b"]
    from service.jobs.sweep import name

    assert name(" " + "x" * 200) == "x" * 200 and tags(["y" * 100 + " "]) == ["y" * 100]  # limits after the strip
    from service.jobs.problem import build_problem

    with pytest.raises(BadInput) as empty:  # an empty list is no sweep's values
        build_problem(JobSpec.parse({"kernel": []}))
    assert str(empty.value) == "kernel: has an empty list"
    assert grid({"seed": "1,2", "tol": "0.5", "bias": "0.5"}).params()["fixed"] == {"tol": 0.5, "bias": 0.5}


@pytest.mark.parametrize("raw", ["[[1,-1],[2]]", "nope", "random:3x3x"])
def test_a_single_bad_kernel_is_not_told_about_sweeps_even_with_commas(raw):
    """The commas of one kernel's JSON literal are no sweep's list (`d2l,sobel-x` is: test_bad_input)."""
    from service.jobs.inputs import parse_kernel

    with pytest.raises(BadInput) as exc:
        parse_kernel(raw, 0)
    assert exc.value.field == "kernel" and "sweep" not in str(exc.value)


@pytest.mark.parametrize(("parse", "raw"), [("parse_kernel", "d2l,sobel-x"), ("parse_kernel", "[[1,-1]],[[2]]"),
                                            ("parse_input", "edge:6x8,edge:8x8"), ("parse_input", "npy:a.npy,npy:b")])
def test_several_inputs_or_kernels_given_to_one_job_point_at_klab_sweep(parse, raw):
    from service.jobs import inputs

    with pytest.raises(BadInput) as exc:
        getattr(inputs, parse)(raw, 0)
    assert str(exc.value).endswith("; several values make a sweep: klab sweep")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(BadInput) as exc:
        JobSpec.parse({"method": "sgd"})
    for m in ("d2l-manual", "d2l-sgd", "momentum", "adam", "lstsq"):
        assert m in exc.value.message


def test_epoch_limit_comes_from_the_environment(setenv):
    setenv(KLAB_MAX_EPOCHS="12")
    assert JobSpec.parse({"epochs": 12}).epochs == 12
    with pytest.raises(BadInput, match="^epochs: .*KLAB_MAX_EPOCHS"):
        JobSpec.parse({"epochs": 13})


def test_the_default_epochs_obey_the_epoch_limit_too(setenv):
    setenv(KLAB_MAX_EPOCHS="5")
    with pytest.raises(BadInput, match="^epochs: "):
        JobSpec.parse({})  # the default is 10 epochs, over the limit of 5


# ---------------------------------------------------------------------------------------------------
# Spec files
# ---------------------------------------------------------------------------------------------------

def test_yaml_file_with_dashed_keys_and_a_nested_list_kernel(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: edge:6x8\nkernel: [[1, -1], [0.5, 0.5]]\nmethod: adam\nbatch-size: 3\nlr: 0.1\n")
    docs = load_spec_file(str(path))
    assert docs == [{"input": "edge:6x8", "kernel": [[1, -1], [0.5, 0.5]], "method": "adam", "batch_size": 3,
                     "lr": 0.1}]
    spec = JobSpec.parse(docs[0])
    assert spec.batch_size == 3 and spec.method is Method.ADAM
    assert build_problem(spec).true_kernel[0, 0].tolist() == [[1, -1], [0.5, 0.5]]


def test_a_yaml_number_with_colons_is_a_range_not_base_60(tmp_path):
    """YAML 1.1 reads 1:16:5 as 4565 (base 60); a sweep file means five log-spaced values from 1 to 16."""
    path = tmp_path / "sweep.yaml"
    path.write_text("batch-size: 1:16:5\nlr: 0.001:0.1:3\nepochs: 1:30\nseed: 0..9\nnoise: 0.5\ntol: 1e-3\n")
    assert load_spec_file(str(path)) == [{"batch_size": "1:16:5", "lr": "0.001:0.1:3", "epochs": "1:30",
                                          "seed": "0..9", "noise": 0.5, "tol": 1e-3}]
    path.write_text("epochs: 12\nlr: 0.5\n")  # plain numbers stay numbers
    assert load_spec_file(str(path)) == [{"epochs": 12, "lr": 0.5}]


def test_a_yaml_number_with_an_exponent_is_a_number_as_in_json(tmp_path):
    """YAML 1.1 reads 1e-3 and 1.5e3 as text (it wants a dot and a sign): `kernel: [[1e-3, 1]]` was refused as
    holding a non-numeric value, where JSON and --kernel take it."""
    path = tmp_path / "job.yaml"
    path.write_text("kernel: [[1e-3, 1.5E3], [-2e+1, .5e1]]\nlr: 1e-3\nseed: 1e3\ninput: edge:1e3x2\n")
    (doc,) = load_spec_file(str(path))
    assert doc["kernel"] == [[0.001, 1500.0], [-20.0, 5.0]] and doc["lr"] == 0.001 and doc["input"] == "edge:1e3x2"
    spec = JobSpec.parse(doc)
    assert json.loads(spec.kernel) == [[0.001, 1500.0], [-20.0, 5.0]] and spec.seed == 1000 and spec.lr == 0.001
    path.write_text("input: 1e3\n")  # a text as written, which the input's parser names ("must be a string" was)
    assert JobSpec.parse(load_spec_file(str(path))[0]).input == "1e3"
    for text, line in (("method: 1e3", "method: unknown value '1e3'"), ("1e3: 1", "1e3: unknown field")):  # not 1000.0
        path.write_text(text + "\n")
        with pytest.raises(BadInput) as caught:
            JobSpec.parse(load_spec_file(str(path))[0])
        assert str(caught.value).startswith(line), caught.value


def test_a_yaml_number_in_base_16_2_or_8_is_text_refused_as_the_flag_refuses_it(tmp_path):
    """YAML 1.1 reads 0x10 as 16 and 0b11 as 3, where `--epochs 0x10` is refused: a file's number reads as the
    flag's (0o10 was text already)."""
    path = tmp_path / "job.yaml"
    path.write_text("epochs: 0x10\nseed: [0b11, -0x1F, 3]\nlr: 0o10\n")
    assert load_spec_file(str(path)) == [{"epochs": "0x10", "seed": ["0b11", "-0x1F", 3], "lr": "0o10"}]


def test_a_yaml_number_with_leading_zeros_is_decimal_as_on_the_command_line(tmp_path):
    """YAML 1.1 reads 010 in base 8 (eight epochs); `--epochs 010` is ten."""
    path = tmp_path / "job.yaml"
    path.write_text("epochs: 010\nseed: [010, 8, -007, 0_12]\nlr: 0.010\nbatch-size: 0\n")
    assert load_spec_file(str(path)) == [{"epochs": 10, "seed": [10, 8, -7, 12], "lr": 0.01, "batch_size": 0}]
    path.write_text("bias: -010\nseed: [-0_12]\n")  # signed: base 8 would read -8 and -10
    assert load_spec_file(str(path)) == [{"bias": -10, "seed": [-12]}]


@pytest.mark.parametrize("values", [{"lr": "nan"}, {"lr": float("nan")}, {"noise": "-inf"}, {"tol": "1e400"},
                                    {"bias": "nan"}])
def test_a_value_that_is_not_finite_is_told_so_before_its_bounds(values):
    with pytest.raises(BadInput, match=": must be a finite number$"):  # NaN said "Input should be greater than 0"
        JobSpec.parse(values)


def test_bias_none_is_no_bias_as_its_help_says_of_the_default():
    assert JobSpec.parse({"bias": "none"}).bias is None and JobSpec.parse({"bias": " None "}).bias is None
    assert JobSpec.parse({"bias": "0.5"}).bias == 0.5  # was: "Input should be a valid number" for none


def test_a_kernel_literal_that_is_not_finite_is_told_so_without_a_sweeps_hint():
    with pytest.raises(BadInput) as exc:  # YAML's .inf: was "must be a string or a nested list of numbers; several
        JobSpec.parse({"kernel": [[float("inf"), 1.0]]})  # values make a sweep", of one kernel's one row
    assert str(exc.value) == "kernel: must be a nested list of finite numbers"


def test_a_json_file_with_a_byte_order_mark_and_a_suffix_in_capitals(tmp_path):
    (tmp_path / "job.json").write_bytes(b'\xef\xbb\xbf{"epochs": 2}')  # as some editors save it
    assert load_spec_file(str(tmp_path / "job.json")) == [{"epochs": 2}]
    (tmp_path / "JOBS.JSONL").write_text('{"seed": 1}\n{"seed": 2}\n')  # was read as YAML: not valid
    assert load_spec_file(str(tmp_path / "JOBS.JSONL")) == [{"seed": 1}, {"seed": 2}]


def test_a_jsonl_line_ends_at_a_newline_alone_a_utf16_file_is_read_and_jobs_past_the_limit_are_counted_first(
        tmp_path, setenv):
    """U+2028, U+2029 and U+0085 may stand unescaped in a JSON string, where splitlines() ended the line (`not valid
    jsonl (line 1)`); a UTF-16 file with its byte-order mark (PowerShell's `>`) was `not a readable text file`; a
    JSONL file of more jobs than KLAB_MAX_SWEEP_JOBS was parsed whole first (a 21 MB file ran out of memory)."""
    (tmp_path / "odd.jsonl").write_text('{"input": "npy:x\u2028y.npy"}\r\n{"input": "a\u0085b\u2029c"}\n',
                                        encoding="utf-8")
    assert load_spec_file(str(tmp_path / "odd.jsonl")) == [{"input": "npy:x\u2028y.npy"}, {"input": "a\u0085b\u2029c"}]
    (tmp_path / "cr.jsonl").write_bytes(b'{"seed": 1,\r"epochs": 1}\r\r\n{"seed": 2}\n')  # \r is JSON's whitespace
    assert load_spec_file(str(tmp_path / "cr.jsonl")) == [{"seed": 1, "epochs": 1}, {"seed": 2}]  # splitlines() cut it
    (tmp_path / "bad.jsonl").write_text('{"input": "a\u2028b"}\n{"seed": 2\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r"is not valid jsonl \(line 2\)$"):  # counted as the file's lines
        load_spec_file(str(tmp_path / "bad.jsonl"))
    for bom in ("utf-16", "utf-16-be", "utf-32", "utf-32-be"):  # UTF-32-LE's mark begins as UTF-16-LE's
        text = "epochs: 3\n".encode(bom)
        (tmp_path / "u.yaml").write_bytes(text if bom in ("utf-16", "utf-32") else "\ufeff".encode(bom) + text)
        assert load_spec_file(str(tmp_path / "u.yaml")) == [{"epochs": 3}], bom
    setenv(KLAB_MAX_SWEEP_JOBS="10")
    (tmp_path / "ten.jsonl").write_text("{}\n" * 10)  # at the limit: taken
    assert len(load_spec_file(str(tmp_path / "ten.jsonl"))) == 10
    (tmp_path / "many.jsonl").write_text("{}\n" * 10 + "not json\n")
    with pytest.raises(BadInput, match=r"^file: 11 jobs, more than the limit 10 \(KLAB_MAX_SWEEP_JOBS\)$"):
        load_spec_file(str(tmp_path / "many.jsonl"))


def test_list_items_that_would_be_joined_or_a_list_past_the_limit_are_refused_before_they_are_expanded(setenv,
                                                                                                       monkeypatch):
    """A sweep file's items are joined with commas and split again: `["[[1", "-1]]"]` became the one kernel
    [[1, -1]], which the file never gave. Sixty ranges of 200,000 seeds, each within the limit, were all expanded (1.4
    GB) before the sweep's size was checked."""
    import tracemalloc

    from service.jobs.sweep import as_flag, grid

    for field, items in (("kernel", ["[[1", "-1]]"]), ("input", ["npy:a(.npy", "edge:6x8"]),
                         ("method", ["d2l-sgd", "adam)", "x("])):
        with pytest.raises(BadInput, match=f"^{field}: the items {re.escape(repr(items[-2]))} and "
                                           f"{re.escape(repr(items[-1]))} would be read as one value"):
            as_flag(field, items)
    assert as_flag("input", ["npy:a(.npy"]) == "npy:a(.npy" and as_flag("kernel", ["[[1, 2]]", "d2l"]) == "[[1, 2]],d2l"
    many = list(range(200_000))  # a list at KLAB_MAX_SWEEP_JOBS read back in one pass (item by item, each prefix
    assert as_flag("seed", many) == ",".join(map(str, many))  # split anew, it took 11 s for 8,000 seeds)
    for items in (["edge:6x8", "image:a(.png"], ["image:b)(c.png", "edge:6x8"]):  # read back as themselves, as
        assert as_flag("input", items) == ",".join(items)  # the flag --input 'edge:6x8,image:a(.png' is
    setenv(KLAB_MAX_SWEEP_JOBS="3")  # a value given twice is told so, not that the list is past the limit
    with pytest.raises(BadInput, match=r"^seed: 1 appears more than once in '1,2,3,1'; give each value once$"):
        grid({"seed": "1,2,3,1"})
    setenv(KLAB_MAX_SWEEP_JOBS=None)
    seeds = ",".join(f"{i * 200_000}..{i * 200_000 + 199_999}" for i in range(60))
    from service.jobs import sweep as sweep_module

    expanded, real_values = [], sweep_module._values  # the ranges expanded, counted
    monkeypatch.setattr(sweep_module, "_values", lambda *a: expanded.append(a[1]) or real_values(*a))
    tracemalloc.start()
    try:
        with pytest.raises(BadInput, match=r"^sweep: seed alone lists more than 200000 values, so more jobs than the "
                                           r"limit 200000 \(KLAB_MAX_SWEEP_JOBS\)$"):
            grid({"seed": seeds})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak  # two ranges' values at most, where all sixty took 1.4 GB
    assert len(expanded) == 2, expanded  # the second range passes the limit: none after it is expanded


def test_a_sweep_knows_every_field_of_a_job():
    from service.jobs.sweep import ONE_VALUE, SWEEPABLE

    assert sorted(SWEEPABLE + ONE_VALUE) == sorted(JobSpec.model_fields)


@pytest.mark.parametrize("values", [{"epochs": True}, {"lr": True}, {"seed": False}, {"batch_size": True},
                                    {"noise": False}, {"tol": True}, {"bias": True}])
def test_true_or_false_is_not_a_number(values):
    """JSON's and YAML's true is 1 to pydantic: `epochs: true` trained one epoch."""
    with pytest.raises(BadInput, match="must be a number, got (true|false)$") as exc:
        JobSpec.parse(values)
    assert exc.value.field == next(iter(values)).replace("_", "-")


def test_json_and_jsonl_files(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"seed": 4, "epochs": 3}))
    assert load_spec_file(str(tmp_path / "job.json")) == [{"seed": 4, "epochs": 3}]
    (tmp_path / "jobs.jsonl").write_text('{"seed": 1}\n\n{"seed": 2}\n')
    assert load_spec_file(str(tmp_path / "jobs.jsonl")) == [{"seed": 1}, {"seed": 2}]


def test_log_spaced_values_keep_the_ends_given():
    """Values between the ends are rounded to 12 digits; the ends were too (`0.0123456789012345:0.1:3` trained lr
    0.0123456789012, and `1:1.0000000000001:2` was refused as 1.0 twice)."""
    from service.jobs.sweep import grid

    assert grid({"lr": "0.0123456789012345:0.1:3"}).swept["lr"] == [0.0123456789012345, 0.0351364182882, 0.1]
    assert grid({"noise": "1:1.0000000000001:2"}).swept["noise"] == [1.0, 1.0000000000001]
    assert grid({"lr": "0.01:0.1:1", "seed": "0,1"}).fixed["lr"] == 0.01  # one value: A, as numpy's geomspace
    assert grid({"lr": "0.1:0.01:1", "seed": "0,1"}).fixed["lr"] == 0.1  # whichever end is greater (was told
    # "written backwards; write 0.01:0.1:1", which is 0.01)


def test_a_range_of_one_value_and_a_log_range_of_the_limits_count_are_sweeps(setenv):
    from service.jobs.sweep import grid

    assert grid({"seed": "3..3"}).fixed == {"seed": 3}  # not "written backwards"
    setenv(KLAB_MAX_SWEEP_JOBS="3")
    assert grid({"lr": "0.01:0.1:3"}).swept["lr"] == [0.01, 0.0316227766017, 0.1]  # the count at the limit


@pytest.mark.parametrize("item", ["0.1:0.01:2", "9:1:2"])
def test_a_log_range_of_two_values_written_backwards_is_refused(item):
    """Two values are a range with a direction, as three are: only one value (A) may be written either way."""
    from service.jobs.sweep import grid

    a, b, n = item.split(":")
    with pytest.raises(BadInput, match=f"^lr: range {re.escape(item)} is written backwards; write {b}:{a}:{n}$"):
        grid({"lr": item})


@pytest.mark.parametrize("name,text,message", [
    ("bad.yaml", "input: [unclosed\n", "not valid yaml \\(line 2\\)$"),
    ("bad.json", '{"lr": 0.1,\n "epochs": }', "not valid json \\(line 2\\)$"),
    ("bad.jsonl", '{"lr": 0.1}\n\n{"lr": 0.2\n', "not valid jsonl \\(line 3\\)$"),
    ("list.yaml", "- a\n- b\n", "mapping of job fields$"),
    ("list.jsonl", '{"lr": 0.1}\n[1, 2]\n', "mapping of job fields \\(job 2: list\\)$"),
    ("empty.jsonl", "\n", "no jobs"),
    ("twice.yaml", "epochs: 2\nepochs: 3\n", "names a field twice \\('epochs'\\); give each field once$"),
    ("spelled-twice.yaml", "batch-size: 3\nbatch_size: 4\n", "\\('batch-size' and 'batch_size'\\)"),
    ("twice.json", '{"epochs": 2, "epochs": 3}', "names a field twice \\('epochs'\\)"),
    ("twice.jsonl", '{"seed": 1}\n{"lr": 0.1, "lr": 0.2}\n', "names a field twice \\('lr', line 2\\)"),
    ("sweep-twice.yaml", "batch_size: [1, 2]\nbatch-size: 3\n", "\\('batch_size' and 'batch-size'\\)"),
    ("merged-twice.yaml", "<<: {lr: 0.1, lr: 0.2}\n", "names a field twice \\('lr'\\)"),  # yaml kept the last
    ("merged-spelled-twice.yaml", "seed: 1\n<<: [{epochs: 2}, {batch-size: 3, batch_size: 4}]\n",
     "\\('batch-size' and 'batch_size'\\)"),
])
def test_bad_spec_files_name_the_file_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as exc:
        load_spec_file(str(path))
    assert exc.value.field == "file"


@pytest.mark.parametrize("text,want", [
    ("batch_size: 4\n<<: {batch-size: 3}\n", 4),  # the mapping's own field wins over a merged one, as YAML says
    ("batch-size: 4\n<<: {batch_size: 3}\n", 4),
    ("<<: [{batch-size: 4}, {batch_size: 3}]\n", 4),  # the first merged mapping wins (3 was: the last spelling)
    ("<<: [{batch_size: 4}, {batch_size: 3}]\n", 4),
    ("<<: {<<: {batch-size: 9}, batch_size: 4}\n", 4),
    ("base: &b {batch-size: 4}\n", None),  # an anchor is a value of its own field, merged nowhere
])
def test_a_yaml_merge_key_gives_each_field_once(tmp_path, text, want):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    (doc,) = load_spec_file(str(path))
    assert doc.get("batch_size") == want and len(doc) == 1, doc


def test_missing_spec_file(tmp_path):
    with pytest.raises(BadInput, match="^file: no such file"):
        load_spec_file(str(tmp_path / "nope.yaml"))


def test_unknown_key_in_a_spec_file_names_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: edge:6x8\nlearning_rate: 0.1\n")
    with pytest.raises(BadInput, match="^learning_rate: unknown field; a job's fields are input, kernel, labels, "
                                       "bias, noise, method, lr, epochs, batch_size, seed, tol, device$"):
        JobSpec.parse(load_spec_file(str(path))[0])
    path.write_text("input: edge:6x8\nlearning-rate: 0.1\n")  # as written, dashes and all
    with pytest.raises(BadInput, match="^learning-rate: unknown field; "):
        JobSpec.parse(load_spec_file(str(path))[0])
    path.write_text("batch-size: 4\n")  # a field's flag spelling is the field
    assert JobSpec.parse(load_spec_file(str(path))[0]).batch_size == 4
    path.write_text("seed: .inf\n")  # not a number read from its text: not finite, as before
    with pytest.raises(BadInput, match="^seed: Input should be a finite number$"):
        JobSpec.parse(load_spec_file(str(path))[0])
    path.write_text("input: edge:6x8\nepochz: 5\n")  # a near miss is named
    with pytest.raises(BadInput, match=r"^epochz: unknown field; did you mean epochs\?$"):
        JobSpec.parse(load_spec_file(str(path))[0])
    path.write_text("methd: [adam]\n")  # a list under it too: no sweep's advice after the near miss
    with pytest.raises(BadInput, match=r"^methd: unknown field; did you mean method\?$"):
        JobSpec.parse(load_spec_file(str(path))[0])


# ---------------------------------------------------------------------------------------------------
# The problem a spec defines
# ---------------------------------------------------------------------------------------------------

def test_the_books_problem():
    p = build_problem(JobSpec.parse({}))
    assert p.x.shape == (1, 1, 6, 8) and p.y.shape == (1, 1, 6, 7)
    assert p.x.dtype == np.float32 and p.y.dtype == np.float32
    assert p.kernel_shape == (1, 1, 1, 2) and p.single_channel and not p.has_bias and p.true_bias is None
    assert p.true_kernel.tolist() == [[[[1.0, -1.0]]]]


def test_minibatch_methods_cut_the_books_image_into_rows_as_the_seed_does():
    p = build_problem(JobSpec.parse({"method": "d2l-sgd"}))
    assert p.x.shape == (6, 1, 1, 8) and p.y.shape == (6, 1, 1, 7)
    whole = build_problem(JobSpec.parse({}))
    assert np.array_equal(p.x.reshape(6, 8), whole.x[0, 0])
    assert np.array_equal(p.y.reshape(6, 7), whole.y[0, 0])
    # each row with its own labels, on an input whose rows differ (the book's six are the same: any order passed)
    cut = build_problem(JobSpec.parse({"method": "d2l-sgd", "input": "random:6x8", "seed": 3}))
    whole = build_problem(JobSpec.parse({"input": "random:6x8", "seed": 3}))
    assert len({tuple(row) for row in whole.x[0, 0]}) == 6
    assert np.array_equal(cut.x[:, 0, 0], whole.x[0, 0]) and np.array_equal(cut.y[:, 0, 0], whole.y[0, 0])
    assert np.allclose(cut.y[:, 0, 0], whole.x[0, 0, :, :-1] - whole.x[0, 0, :, 1:], atol=1e-6)  # [[1, -1]], row by row
    # a kernel of two rows spans rows, so the image stays one sample
    assert build_problem(JobSpec.parse({"method": "adam", "kernel": "edge-v"})).x.shape == (1, 1, 6, 8)
    # a 3-D input is one sample of several channels, never cut
    assert build_problem(JobSpec.parse({"method": "adam", "input": "random:1x6x8"})).x.shape == (1, 1, 6, 8)


def test_kernels_are_reported_in_the_shape_the_user_gave():
    """2-D for a 2-D kernel whatever the input (a grayscale image is 1 x H x W), 4-D for a 4-D one; without a
    kernel, 2-D for 2-D labels of a one-channel input."""
    assert build_problem(JobSpec.parse({"input": "random:6x8", "kernel": "random:2x2"})).single_channel
    assert build_problem(JobSpec.parse({"input": "random:1x6x8", "kernel": "random:2x2"})).single_channel
    assert build_problem(JobSpec.parse({"input": "random:2x1x6x8", "kernel": "sobel-x"})).single_channel
    assert not build_problem(JobSpec.parse({"input": "random:6x8", "kernel": "random:1x1x2x2"})).single_channel
    assert not build_problem(JobSpec.parse({"input": "random:3x6x8", "kernel": "random:1x3x2x2"})).single_channel


def test_labels_without_a_kernel_give_a_kernel_of_their_shape(tmp_path):
    np.save(tmp_path / "y2.npy", np.zeros((5, 7)))
    np.save(tmp_path / "y3.npy", np.zeros((1, 5, 7)))
    two = {"kernel": "none", "labels": f"npy:{tmp_path / 'y2.npy'}"}
    assert build_problem(JobSpec.parse({**two, "input": "random:1x6x8"})).single_channel
    assert not build_problem(JobSpec.parse({**two, "input": "random:2x6x8"})).single_channel  # 1 x 2 x 2 x 2
    three = {"kernel": "none", "labels": f"npy:{tmp_path / 'y3.npy'}", "input": "random:6x8"}
    assert not build_problem(JobSpec.parse(three)).single_channel


@pytest.mark.parametrize("text", ["none", "None", "NONE", " none "])
def test_kernel_none_means_no_true_kernel(tmp_path, text):
    np.save(tmp_path / "y.npy", np.zeros((6, 7)))
    spec = JobSpec.parse({"kernel": text, "labels": f"npy:{tmp_path / 'y.npy'}"})
    assert spec.kernel is None and spec.to_json()["kernel"] is None
    assert build_problem(spec).true_kernel is None
    with pytest.raises(BadInput, match="^kernel: give a true kernel, or labels"):
        JobSpec.parse({"kernel": text})


def test_bias_adds_to_the_labels_and_is_learned():
    plain = build_problem(JobSpec.parse({"input": "random:5x6", "kernel": "box3", "seed": 2}))
    biased = build_problem(JobSpec.parse({"input": "random:5x6", "kernel": "box3", "seed": 2, "bias": 0.75}))
    np.testing.assert_allclose(biased.y, plain.y + 0.75, rtol=1e-6)
    assert biased.has_bias and biased.true_bias == 0.75 and not plain.has_bias


def test_a_kernel_as_large_as_the_input_fits():
    assert build_problem(JobSpec.parse({"kernel": "random:6x8"})).y.shape == (1, 1, 1, 1)
    assert build_problem(JobSpec.parse({"kernel": "random:6x1"})).y.shape == (1, 1, 1, 8)


@pytest.mark.parametrize("values,field,message", [
    ({"kernel": "random:7x2"}, "kernel", "larger than the 6x8 input"),
    ({"kernel": "random:1x9"}, "kernel", "larger"),
    ({"input": "random:3x6x8"}, "kernel", "1 input channel(s) but the input has 3"),
    ({"input": "random:2x6x8", "kernel": "random:1x3x2x2"}, "kernel", "3 input channel(s)"),
])
def test_kernels_that_do_not_fit_the_input(values, field, message):
    with pytest.raises(BadInput) as exc:
        build_problem(JobSpec.parse(values))
    assert exc.value.field == field and message in exc.value.message


def test_labels_instead_of_a_kernel(tmp_path):
    y = np.random.default_rng(0).standard_normal((6, 7))
    np.save(tmp_path / "y.npy", y)
    p = build_problem(JobSpec.parse({"kernel": None, "labels": f"npy:{tmp_path / 'y.npy'}"}))
    assert p.true_kernel is None and p.kernel_shape == (1, 1, 1, 2)
    np.testing.assert_allclose(p.y[0, 0], y, rtol=1e-6)
    # with a kernel too, the kernel is what the result is compared with, and the labels are used as given
    q = build_problem(JobSpec.parse({"kernel": "d2l", "labels": f"npy:{tmp_path / 'y.npy'}"}))
    assert q.true_kernel is not None and np.array_equal(q.y, p.y)


@pytest.mark.parametrize("labels_shape,values,message", [
    # implies a 1x3 kernel, not d2l's 1x2: the kernel named (the default: maybe not given), and the way out
    ((6, 6), {}, "of shape (1, 6, 6) do not fit kernel d2l (1, 1, 1, 2) on input (1, 6, 8), which makes labels of "
                 "shape (1, 6, 7); with kernel none (no true kernel) the labels set the kernel's shape"),
    ((9, 9), {"kernel": None}, "larger than the 6x8 input"),
    ((2, 1, 6, 7), {}, "2 samples but the input has 1"),
    ((1, 1, 6, 7), {"input": "random:3x1x6x8"}, "1 samples but the input has 3"),  # fewer, as more
    ((6, 7), {"input": "random:3x1x6x8", "kernel": None}, "2-D but the input has 3 samples"),
    ((1, 6, 7), {"input": "random:2x1x6x8", "kernel": None}, "are 3-D but the input has 2 samples"),  # unchecked: a
    # traceback
])
def test_labels_of_the_wrong_shape(tmp_path, labels_shape, values, message):
    np.save(tmp_path / "y.npy", np.zeros(labels_shape))
    with pytest.raises(BadInput) as exc:
        build_problem(JobSpec.parse({**values, "labels": f"npy:{tmp_path / 'y.npy'}"}))
    assert exc.value.field == "labels" and message in exc.value.message


def test_labels_given_are_never_exact_and_count_against_the_input_limit(tmp_path, setenv):
    """Labels of the user's own may hold noise klab cannot see (the explanation must not call their gap float32's
    rounding), and are held to KLAB_MAX_INPUT_ELEMENTS as an input is (with channels they may be the larger)."""
    from service.jobs.inputs import parse_labels

    np.save(tmp_path / "y.npy", np.zeros((6, 7)))
    assert build_problem(JobSpec.parse({"labels": f"npy:{tmp_path / 'y.npy'}"})).exact_labels is False
    assert build_problem(JobSpec.parse({})).exact_labels is True  # the true kernel's own, no noise
    np.save(tmp_path / "y5.npy", np.zeros((5, 6, 7)))
    setenv(KLAB_MAX_INPUT_ELEMENTS="100")
    with pytest.raises(BadInput, match="^labels: has 210 elements, more than the limit 100 "):
        parse_labels(f"npy:{tmp_path / 'y5.npy'}")


def test_the_key_of_a_problem_and_a_stored_specs_tolerance():
    """Jobs share a problem (its labels drawn once) only where every value that makes it is the same: noise
    too. A stored spec that holds no tol reads as the default one, as parsing it would."""
    from service import defaults
    from service.jobs.problem import problem_key
    from service.jobs.stored import alike

    noisy = [JobSpec.parse({"noise": noise, "seed": 3}) for noise in (0.1, 0.5)]
    assert problem_key(noisy[0]) != problem_key(noisy[1])
    assert alike(['{"input": "edge:6x8", "seed": 0, "lr": 0.03}'])[1] == [defaults.TOL]


def test_labels_may_not_imply_a_kernel_over_the_limit(tmp_path, setenv):
    setenv(KLAB_MAX_KERNEL_ELEMENTS="4")
    np.save(tmp_path / "y.npy", np.zeros((4, 4)))  # a 3x5 kernel on the 6x8 input
    with pytest.raises(BadInput, match=r"^labels: .*kernel, more than the limit 4 \(KLAB_MAX_KERNEL_ELEMENTS\)"):
        build_problem(JobSpec.parse({"kernel": None, "labels": f"npy:{tmp_path / 'y.npy'}"}))


def test_labels_may_imply_a_kernel_of_exactly_the_limit(tmp_path, setenv):
    """6x7 labels on the 6x8 input imply a 1x2 kernel: 2 elements, within KLAB_MAX_KERNEL_ELEMENTS=2."""
    setenv(KLAB_MAX_KERNEL_ELEMENTS="2")
    np.save(tmp_path / "y.npy", np.ones((6, 7)))
    p = build_problem(JobSpec.parse({"kernel": None, "labels": f"npy:{tmp_path / 'y.npy'}"}))
    assert p.kernel_shape == (1, 1, 1, 2) and p.true_kernel is None


def test_given_arrays_replace_the_spec_forms():
    x = np.arange(20, dtype=np.float64).reshape(4, 5)
    p = build_problem(JobSpec.parse({"kernel": "d2l"}), {"input": x})
    assert p.x.shape == (1, 1, 4, 5) and p.y.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(p.y[0, 0], x[:, :-1] - x[:, 1:])
    # a kernel and labels given as arrays too, on an input that is no ramp (a ramp's labels are all -1: any kernel
    # of the same sum, any order of rows, passed)
    from scipy.signal import correlate2d

    x = np.random.default_rng(0).standard_normal((4, 5))
    k = np.array([[0.5, 2.0, -1.0]])
    p = build_problem(JobSpec.parse({"kernel": "d2l"}), {"input": x, "kernel": k})
    np.testing.assert_allclose(p.x[0, 0], x, rtol=1e-6)
    np.testing.assert_allclose(p.y[0, 0], correlate2d(x, k, mode="valid"), rtol=1e-5, atol=1e-6)
    y = np.random.default_rng(1).standard_normal((4, 4))
    p = build_problem(JobSpec.parse({"kernel": "none", "labels": "npy:/given.npy"}), {"input": x, "labels": y})
    np.testing.assert_allclose(p.y[0, 0], y, rtol=1e-6)


def test_limits_have_their_documented_defaults_and_reject_bad_env():
    s = Settings.from_env({})
    assert (s.max_input_elements, s.max_kernel_elements, s.max_epochs, s.max_file_bytes, s.max_sweep_jobs,
            s.max_job_seconds, s.visibility_timeout, s.lease_seconds, s.max_attempts, s.stranded_seconds) == \
        (16_777_216, 4096, 100_000, 256 * 1024 * 1024, 200_000, 6 * 3600, 3600, 60, 5, 60)
    with pytest.raises(BadInput, match="^KLAB_MAX_EPOCHS: must be an integer"):
        Settings.from_env({"KLAB_MAX_EPOCHS": "many"})
    with pytest.raises(BadInput, match="^KLAB_LEASE_SECONDS: must be positive"):
        Settings.from_env({"KLAB_LEASE_SECONDS": "0"})
    assert Settings.from_env({"KLAB_MAX_EPOCHS": ""}).max_epochs == 100_000  # empty: the default


@pytest.mark.parametrize("text,seed", [("9007199254740993.0", 9007199254740993), ("9223372036854775807.0", 2**63 - 1),
                                       ("1_000", 1000), (" 7 ", 7), ("1e3", 1000), ("+3", 3)])
def test_a_whole_number_given_as_text_is_read_exactly(text, seed):
    """Through a float, 9007199254740993.0 trained seed ...992 and 2**63 - 1 written .0 was refused as too large."""
    assert JobSpec.parse({"seed": text}).seed == seed


@pytest.mark.parametrize("text,message", [
    ("7.00000000000000001", "seed: must be an integer, got '7.00000000000000001'"),  # was seed 7
    ("0-9", "seed: not a number: '0-9'; did you mean 0..9?"),  # pydantic read -9
    ("9" * 5000, "seed: too large, got '99999999999999999999999999999...99999999999999999999999999999' (5000 "
                 "characters)"),  # was `must be finite`, and the 5,000 digits
    ("1e999999", "seed: too large, got '1e999999'"),
])
def test_a_whole_number_that_is_not_one_is_refused_in_one_short_line(text, message):
    with pytest.raises(BadInput) as caught:
        JobSpec.parse({"seed": text})
    assert str(caught.value) == message


@pytest.mark.parametrize("suffix,written", [
    (".yaml", "seed: {}\nepochs: {}\n"), (".json", '{{"seed": {}, "epochs": {}}}'),
    (".jsonl", '{{"seed": {}, "epochs": {}}}\n'),
], ids=["yaml", "json", "jsonl"])
def test_a_files_whole_number_is_read_from_its_text_as_its_flag_is(tmp_path, suffix, written):
    """A file's number with a fraction went through a float: `seed: 9007199254740993.0` trained seed ...992, and
    `epochs: 7.00000000000000001` trained 7 where --epochs refuses it; a sweep file's list of the two seeds around
    2**53 was 'given twice'."""
    from service.jobs.sweep import as_flag, grid

    path = tmp_path / f"job{suffix}"
    path.write_text(written.format("9007199254740993.0", "3.0"))
    (doc,) = load_spec_file(str(path))
    assert JobSpec.parse(doc).seed == 9007199254740993 and JobSpec.parse(doc).epochs == 3
    assert grid({"seed": as_flag("seed", [doc["seed"], 9007199254740992])}).swept["seed"] == [2**53 + 1, 2**53]
    assert JobSpec.parse({"lr": doc["seed"]}).lr == 9007199254740992.0  # the rest are floats, as before
    path.write_text(written.format("1", "7.00000000000000001"))
    with pytest.raises(BadInput) as caught:
        JobSpec.parse(load_spec_file(str(path))[0])
    assert str(caught.value) == "epochs: must be an integer, got '7.00000000000000001'"


@pytest.mark.parametrize("field", ["input", "kernel", "labels"])
@pytest.mark.parametrize("text", ['"npy:/tmp/\\ud800.npy"', '"image:/tmp/a\\udfffb.png"'])
def test_a_lone_surrogate_in_a_files_text_is_the_users_mistake(tmp_path, field, text):
    """JSON lets a file write "\\ud800", which no file name (os.stat) or database (its encoding) takes: `klab run
    -f`, `submit -f` and `sweep -f` with such a path ended in UnicodeEncodeError's traceback, exit 1."""
    from harness import klab_main

    path = tmp_path / "job.json"
    path.write_text(f'{{"{field}": {text}, "epochs": 1}}')
    half = text.partition("\\")[2][:5]
    with pytest.raises(BadInput, match=rf"^{field}: holds \\{half}, half of a UTF-16 surrogate pair, which no text or "
                                       "file name holds alone$"):
        JobSpec.parse(load_spec_file(str(path))[0])
    code, out, err = klab_main("run", "-f", str(path))
    assert (code, out, err.count("\n")) == (2, "", 1) and err.startswith(f"klab: error: {field}: holds \\"), err


def test_minus_zero_is_zero_as_it_trains():
    """`--bias -0 --noise -0` was kept as -0: shown `bias -0`, and `klab compare` showed a job of bias -0 apart from
    one of bias 0 (a column of `-0` and `0`), though both train alike."""
    import math

    from service.jobs.sweep import grid

    for given in ({"bias": "-0", "noise": "-0", "tol": "-0.0"}, {"bias": -0.0, "noise": -0.0, "tol": -0.0}):
        spec = JobSpec.parse(given)
        assert [math.copysign(1, v) for v in (spec.bias, spec.noise, spec.tol)] == [1, 1, 1], given
        assert json.dumps(spec.to_json()).count("-0") == 0
    g = grid({"noise": "-0,0.1", "bias": "-0"})
    assert math.copysign(1, g.swept["noise"][0]) == 1 and math.copysign(1, g.fixed["bias"]) == 1


@pytest.mark.parametrize(("line", "says"), [
    ("method: on", "method: unknown value 'on'; "),  # was: unknown value True
    ("lr: yes", "lr: not a number: 'yes'"),  # was: must be a number, got true
    ("device: No", "device: unknown value 'No'; "),
    ("epochs: TRUE", "epochs: must be a number, got true"),  # true and false stay booleans, as in JSON
])
def test_yaml_1_1_booleans_are_text_named_as_written(tmp_path, line, says):
    path = tmp_path / "job.yaml"
    path.write_text(line + "\n")
    with pytest.raises(BadInput) as exc:
        JobSpec.parse(load_spec_file(str(path))[0])
    assert str(exc.value).startswith(says), str(exc.value)
