"""The job spec: one validated model, from CLI flags or a JSON/YAML file."""
from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service import defaults
from service.errors import BadInput, surrogate, visible
from service.jobs.choices import Device, Method, input_text, kernel_text, means_no_kernel
from service.jobs.files import JSON_SPACE, Twice, Written, checked_file, named_once, read_text
from service.jobs.sweep import INTEGER, NOT_AN_ARRAY, SWEEP_HINT, SWEEPABLE, kernel_literal, number
from service.settings import settings


class JobSpec(BaseModel):
    """A kernel-learning job, as the user asked for it (a kernel literal kept as the numbers it trains with)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, validate_default=True)

    input: str = defaults.INPUT
    kernel: str | None = defaults.KERNEL
    labels: str | None = None
    bias: float | None = None
    noise: float = Field(default=0.0, ge=0.0)
    method: Method = Method(defaults.METHOD)
    lr: float = Field(default=defaults.LR, gt=0.0)
    epochs: int = Field(default=defaults.EPOCHS, gt=0)  # at most KLAB_MAX_EPOCHS, itself at most INT32_MOST
    batch_size: int = Field(default=defaults.BATCH_SIZE, gt=0, le=defaults.INT32_MOST)
    seed: int = Field(default=defaults.SEED, ge=0, lt=2**63)
    tol: float = Field(default=defaults.TOL, ge=0.0)
    device: Device = Device.CPU

    @field_validator("input", "kernel", "labels", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        if value is not None and not isinstance(value, str):
            if isinstance(value, list) and info.field_name in NOT_AN_ARRAY and kernel_literal(value):
                raise ValueError(NOT_AN_ARRAY[info.field_name])
            if isinstance(value, list) and value and (info.field_name != "kernel" or _kernels(value)):
                raise ValueError("takes one value, not a list")  # a sweep's, told so by bad_input_from (a list of
                # kernels was "holds a non-numeric value 'd2l'", a list of inputs "unknown input '[\"edge'")
            if isinstance(value, list):  # a YAML/JSON file may hold the kernel as a nested list
                try:
                    return json.dumps(value, allow_nan=False)
                except ValueError:  # inf or NaN (YAML's .inf), or a list inside itself (YAML's aliases)
                    raise ValueError("must be a nested list of finite numbers") from None
                except (TypeError, RecursionError):
                    raise ValueError("must be a string or a nested list of numbers") from None
            raise ValueError("must be a string, or from Python a numpy array or torch tensor")  # a DataFrame too
        if value is not None and (half := surrogate(value)):  # a file's "\ud800": os.stat and the database raised
            # UnicodeEncodeError (a traceback)
            raise ValueError(f"holds {visible(half)}, half of a UTF-16 surrogate pair, which no text or file name "
                             "holds alone")
        return value.strip() if isinstance(value, str) else value

    @field_validator("input", "kernel", "labels", "method", "device", mode="before")
    @classmethod
    def _as_written(cls, value: Any) -> Any:
        """A file's number where a text goes, named as written (`method: 1e3` was "unknown value 1000.0"); before
        validators run last defined first, so this one is defined after _text."""
        return value.text if isinstance(value, Written) else value

    @field_validator("kernel")
    @classmethod
    def _no_kernel(cls, value: str | None) -> str | None:
        """`--kernel none`: no true kernel (labels given with --labels); the kernel's shape follows from them. A
        literal as kernel_text writes it."""
        return None if value is None or means_no_kernel(value) else kernel_text(value)

    @field_validator("input")
    @classmethod
    def _input_as_kept(cls, value: str) -> str:
        """`edge:06x8` as `edge:6x8`, `image:PATH:gray` as `image:PATH`: what it trains (input_text)."""
        return input_text(value)

    @field_validator("lr", "bias", "noise", "tol", "epochs", "batch_size", "seed", mode="before")
    @classmethod
    def _not_true_or_false(cls, value: Any) -> Any:
        if isinstance(value, bool):  # a file's `epochs: true` would train one epoch
            raise ValueError(f"must be a number, got {str(value).lower()}")
        return value

    @field_validator("lr", "bias", "noise", "tol", "epochs", "batch_size", "seed", mode="before")
    @classmethod
    def _as_sweeps_read_it(cls, value: Any, info: Any) -> Any:
        """A number given as text (a flag of `klab run`, a file's quoted value) read as a sweep reads one: pydantic
        read `--seed 0-9` as -9 (and `0-0` as 0), where `klab sweep --seed 0-9` asks `did you mean 0..9?`."""
        if isinstance(value, Written) and info.field_name in INTEGER and (math.isfinite(value) or
                                                                         value.text.lstrip("+-").isdigit()):
            value = value.text  # .inf and .nan are told they are not finite, as before; digits past a float's
            # range are read as the flag reads them (too large)
        if not isinstance(value, str) or value.strip().lower() == "none" or _swept(value):  # a sweep's values:
            return value  # pydantic's error, which bad_input_from points at klab sweep
        try:
            return number(info.field_name, value.strip(), info.field_name in INTEGER)
        except BadInput as exc:
            raise ValueError(exc.message) from None

    @field_validator("bias", mode="before")
    @classmethod
    def _no_bias(cls, value: Any) -> Any:
        """`--bias none`, the default its help names: no bias (and a file's bias left out from the command line)."""
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @field_validator("lr", "bias", "noise", "tol", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        """Before the bounds: NaN, which no bound holds, is told what it is rather than `greater than 0`."""
        try:
            number = None if value is None or isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            return value  # not a number: the field's own check says so
        if number is not None and not math.isfinite(number):
            raise ValueError("must be a finite number")
        return value

    @field_validator("bias", "noise", "tol")
    @classmethod
    def _no_minus_zero(cls, value: float | None) -> float | None:
        """-0 (a file's number too) as 0, the number it trains as, stored, shown and compared so."""
        return None if value is None else value + 0.0

    @field_validator("epochs")
    @classmethod
    def _epoch_limit(cls, value: int) -> int:
        limit = settings().max_epochs
        if value > limit:
            raise ValueError(f"{value} is more than the limit {limit} (KLAB_MAX_EPOCHS)")
        return value

    @model_validator(mode="after")
    def _kernel_or_labels(self) -> JobSpec:
        if self.kernel is None and self.labels is None:
            raise ValueError("kernel: give a true kernel, or labels with --labels")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any]) -> JobSpec:
        """A spec from plain values, with any error turned into BadInput naming the field."""
        settings()  # a bad KLAB_* variable is named as itself here, not inside a field's validator (epochs')
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise bad_input_from(exc) from None

    @classmethod
    def check_fields(cls, values: dict[str, Any]) -> None:
        """BadInput for the first of `values` that is wrong on its own, whatever the rest of a job holds (a flag
        given for every job of a file); the check of kernel and labels together is the whole job's."""
        settings()
        try:
            cls.model_validate(values)
        except ValidationError as exc:
            # a field's own error (the kernel-or-labels check has none), of a field given: a default is checked with
            # each job's values (epochs' 10 past KLAB_MAX_EPOCHS=5 refused a file whose every job said 5)
            given = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
            if given:
                raise bad_input_from(exc, given[0]) from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _kernels(value: list[Any]) -> bool:
    """Whether a file's list is kernels, as a sweep reads it (names, or kernels written as nested lists), not one."""
    return not kernel_literal(value) and all(isinstance(v, str) or kernel_literal(v) for v in value)


def _swept(text: str) -> bool:
    """Whether a value given as text reads as a sweep's values (a list, a range, log-spaced values)."""
    return ".." in text or "," in text or text.count(":") == 2


def bad_input_from(exc: ValidationError, err: Any = None) -> BadInput:
    """The first pydantic error (or `err`, one of them) as one BadInput line."""
    err = err or exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "spec"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = list(JobSpec.model_fields)
        close = difflib.get_close_matches(field, known, n=2, cutoff=0.6)
        message = "unknown field" + (f"; did you mean {' or '.join(close)}?" if close
                                     else f"; a job's fields are {', '.join(known)}")
    if field == "spec" and ":" in message:
        field, _, message = message.partition(": ")
    if err["type"] == "extra_forbidden":  # named as it was written: foo_bar is no flag's --foo-bar; no sweep's
        # advice (`methd: [adam]` was "did you mean method?; a sweep varies only ...")
        return BadInput(field, message)
    got = err.get("input")
    if err["type"] in ("enum",):
        message = f"unknown value {got!r}; {message[0].lower()}{message[1:]}"
    listed = (isinstance(got, Iterable) and not isinstance(got, (str, bytes, Mapping))  # a list, tuple, range, array
              and not (field in ("kernel", "input", "labels") and kernel_literal(got))  # not one kernel's rows
              and "array" not in message)  # a DataFrame for an input: no sweep to make
    if listed or (isinstance(got, str) and (err["type"].endswith("_parsing") or err["type"] == "enum")
                  and _swept(got)):
        message += f"; {SWEEP_HINT}" if field in SWEEPABLE else f"; a sweep varies only {', '.join(SWEEPABLE)}"
    return BadInput(field.replace("_", "-"), message)


def load_spec_file(path: str) -> list[dict[str, Any]]:
    """Job values from a JSON, YAML or JSONL file (JSONL: one job a line)."""
    import yaml

    field = "file"
    p = checked_file(field, path)
    text = read_text(field, p, path)
    try:
        suffix = p.suffix.lower()  # JOBS.JSONL is JSONL too
        if suffix == ".jsonl":
            lines = text.split("\n")  # as JSON Lines ends a line (\r, as JSON's whitespace, stays in it): not
            # splitlines(), which broke a string holding U+2028 and a line holding \r between its tokens
            count, limit = sum(1 for line in lines if line.strip()), settings().max_sweep_jobs  # a line of \x0c
            # is no job: not counted, and refused below
            if count > limit:  # before parsing them all (a 21 MB file of {} ran out of memory first)
                raise BadInput(field, f"{count} jobs, more than the limit {limit} (KLAB_MAX_SWEEP_JOBS)")
            docs = []
            for number, line in enumerate(lines, 1):
                if line.strip(JSON_SPACE):  # a line of \x1c, which str.strip() takes for space, is no job's
                    try:
                        docs.append(json.loads(line, object_pairs_hook=named_once, parse_float=Written.read,
                                               parse_int=Written.whole))
                    except Twice as exc:
                        raise Twice(f"{exc}, line {number}") from None
                    except ValueError:
                        raise BadInput(field, f"{path} is not valid jsonl (line {number})") from None
            if not docs:
                raise BadInput(field, f"{path} holds no jobs")
        elif suffix == ".json":
            docs = [json.loads(text, object_pairs_hook=named_once, parse_float=Written.read, parse_int=Written.whole)]
        else:
            docs = [_yaml(field, path, text)]
    except Twice as exc:
        raise BadInput(field, f"{path} names a field twice ({exc}); give each field once") from None
    except BadInput:
        raise
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)  # YAML's lines count from 0, JSON's from 1
        line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
        where = f" (line {line})" if line is not None else ""
        raise BadInput(field, f"{path} is not valid {p.suffix.lstrip('.') or 'YAML'}{where}") from None
    for n, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            which = f" (job {n}: {type(doc).__name__})" if suffix == ".jsonl" else ""
            raise BadInput(field, f"{path} must hold a mapping of job fields{which}")
    return [{_field_key(k): v for k, v in doc.items()} for doc in docs]


def _field_key(key: Any) -> Any:
    """A file's key as the field it names (batch-size is batch_size); a key of no field as written, for its error to
    name it so (learning-rate, not learning_rate)."""
    if isinstance(key, str) and key.replace("-", "_") in JobSpec.model_fields:
        return key.replace("-", "_")
    return key  # a YAML key is its text (`1e3:`, `true:`): the loader reads keys so


YAML_VALUES = 100_000
"""Values a YAML file's aliases may expand it to, beyond one a character of the file (more than any file without
aliases holds): that many take a moment to read. A text weighs its characters."""


def _yaml(field: str, path: str, text: str) -> Any:
    """A YAML file's one document, as yaml.safe_load reads it (see _loader), once its aliases are known not to
    expand it past YAML_VALUES or its length: a file of a few hundred bytes whose aliases nest ten deep (YAML's
    "billion laughs") would otherwise take gigabytes and minutes to turn into a kernel's or a sweep's text."""
    loader = _loader()(text)
    most = max(len(text), YAML_VALUES)
    try:
        node = loader.get_single_node()
        if node is not None and _values(node, most) > most:
            raise BadInput(field, f"{path}: its YAML aliases expand it to more than {most:,} values; write the "
                                  "values out, or use ranges (0..99)")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _values(node: Any, most: int) -> int:
    """How many values (scalars, lists and mappings) a composed YAML node holds, every alias expanded, a text
    weighing its characters (a text of 20,000 characters aliased 50,000 times in a file of 220 KB took 2 GB and
    ended in a MemoryError's traceback, counted as 50,000 values); counting stops past `most`. An alias is the node
    it names, so each node is counted once and its count reused."""
    counts: dict[int, int] = {}

    def count(n: Any) -> int:
        if id(n) in counts:
            return counts[id(n)] if counts[id(n)] >= 0 else most + 1  # a value inside itself never ends
        counts[id(n)] = -1
        total = 1 if isinstance(n.value, list) else max(1, len(n.value))  # a scalar's value is its text
        if isinstance(n.value, list):  # a sequence's nodes, or a mapping's (key, value) pairs
            for child in n.value:
                for c in child if isinstance(child, tuple) else (child,):
                    total += count(c)
                if total > most:
                    break
        counts[id(n)] = min(total, most + 1)
        return counts[id(n)]

    return count(node)


_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
"""A whole number written with leading zeros, which YAML 1.1 reads in base 8."""


_BASE_PREFIX = re.compile(r"[-+]?0[xXbBoO][0-9a-fA-F_]+")
"""A whole number written in base 16, 2 or 8 (0x10, 0b11, 0o10), which YAML 1.1 reads so and no flag does."""


_EXPONENT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
"""A number with an exponent as JSON, YAML 1.2 and the flags write it (1e-3, 1.5e3), which YAML 1.1 reads as text
unless it has a dot and a signed exponent (1.5e+3): `kernel: [[1e-3, 1]]` was refused as holding text."""


def _loader() -> type:
    """YAML's safe loader, but a number with colons stays text: YAML 1.1 reads `1:16:5` in base 60 (as 4565),
    where a sweep file means 5 log-spaced values from 1 to 16; and one with leading zeros is in base 10."""
    import yaml

    class Loader(yaml.SafeLoader):
        def flatten_mapping(self, node: yaml.MappingNode) -> None:
            """Each mapping names a field once, a merged one (`<<: {lr: 1, lr: 2}`) too, which yaml flattens
            into the mapping that merges it without constructing it. Then, as YAML says, the mapping's own field
            wins over a merged one, and the first of several merged mappings over the next, whatever the spelling:
            `<<: [{batch-size: 4}, {batch_size: 3}]` trained 3 (yaml keeps both, and the last spelling won)."""
            named_once([(k.value, None) for k, _ in node.value if isinstance(k, yaml.ScalarNode)])
            own = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
            super().flatten_mapping(node)  # the merged pairs, first mapping first, then the mapping's own
            merged, mine = node.value[:len(node.value) - own], node.value[len(node.value) - own:]
            seen = {_field_key(k.value) for k, _ in mine if isinstance(k, yaml.ScalarNode)}
            kept = []
            for key, value in merged:
                field = _field_key(key.value) if isinstance(key, yaml.ScalarNode) else id(key)
                if field not in seen:
                    seen.add(field)
                    kept.append((key, value))
            node.value = kept + mine
            for key, _ in node.value:  # a key names a field: as written (`true:`, `3:` were "Keys should be strings")
                if isinstance(key, yaml.ScalarNode):
                    key.tag = "tag:yaml.org,2002:str"

    def number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        if ":" in node.value:
            return loader.construct_scalar(node)
        if _LEADING_ZERO.fullmatch(node.value):  # 010 is ten, as on the command line (YAML 1.1: eight)
            return int(node.value.replace("_", ""), 10)
        if _BASE_PREFIX.fullmatch(node.value):  # 0x10, 0b11: text, refused as the flag refuses it (YAML 1.1: 16, 3)
            return loader.construct_scalar(node)
        if node.tag.endswith(":int"):
            whole = Written.whole(node.value.replace("_", ""))  # past any field's digits: as JSON's
            return whole if isinstance(whole, Written) else yaml.SafeLoader.construct_yaml_int(loader, node)
        return Written(yaml.SafeLoader.construct_yaml_float(loader, node), node.value)

    def boolean(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        """true and false, as JSON and YAML 1.2 write them; YAML 1.1's yes, no, on and off are text, named as
        written (`method: on` was "unknown value True")."""
        if node.value.lower() in ("true", "false"):
            return yaml.SafeLoader.construct_yaml_bool(loader, node)
        return loader.construct_scalar(node)

    for tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        Loader.add_constructor(tag, number)
    Loader.add_constructor("tag:yaml.org,2002:bool", boolean)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)  # 2001-12-14 is text
    # (`method: 2001-12-14` was "unknown value datetime.date(2001, 12, 14)")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+0123456789."))
    return Loader
