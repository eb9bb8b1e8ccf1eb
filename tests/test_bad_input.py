"""Bad input through the real CLI (`klab run`, `submit`, `sweep`): exit code 2, one line naming the field,
nothing stored, nothing queued. The table runs with no broker at all (validation needs none: a case that
slipped past it would exit 3); a few cases run as real processes against a real broker, which stays empty.

The table runs the console script's entry point in this process (a hundred processes would take
minutes); a few cases run as real processes too, to see exactly what reaches a terminal.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import traceback
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import pytest
from harness import Client, clean_env
from sqlalchemy import create_engine, text


@dataclass(frozen=True)
class Case:
    """`klab ARGS` ({d} is the directory of the test files) must fail naming `field`."""

    name: str
    args: tuple[str, ...]
    field: str
    env: dict[str, str] = dataclass_field(default_factory=dict)


def tiny_png(path: Path, width: int, height: int) -> None:
    """A PNG of a few dozen bytes that claims width x height pixels: only the header is ever read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def make_files(d: Path) -> None:
    """Every file the cases name."""
    from PIL import Image

    (d / "bad.json").write_text('{"lr": 0.1,')
    (d / "bad.yaml").write_text("lr: [0.1, 0.2\nepochs: 3\n")
    (d / "bad.jsonl").write_text('{"seed": 1}\n{"seed": 2\n')
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "scalar.yaml").write_text("just some words\n")
    (d / "empty.jsonl").write_text("\n\n")
    (d / "two.jsonl").write_text('{"seed": 1}\n{"seed": 2}\n')
    (d / "unknown.json").write_text('{"learning_rate": 0.1}')
    (d / "epochs_text.yaml").write_text("epochs: ten\n")
    (d / "epochs_float.json").write_text('{"epochs": 2.5}')
    (d / "lr_list.json").write_text('{"lr": [0.1, 0.2]}')
    for name in ("kernel", "seed"):  # YAML's "billion laughs" in 519 bytes: each alias names ten of the one before
        levels = [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        (d / f"{name}_aliases.yaml").write_text("\n".join([f"{name}:", "  - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
                                                            *levels]) + "\n")
    for name in ("input", "seed"):  # a long text aliased thousands of times: 220 KB asked for 2 GB and ended in a
        # MemoryError's traceback (input), or took 11 s (seed), counted a value an alias
        (d / f"{name}_long_aliases.yaml").write_text(f"{name}: [&s {'a' * 20_000}, {', '.join(['*s'] * 50_000)}]\n")
    (d / "tol_list.yaml").write_text("lr: [0.1, 0.2]\ntol: [0.001, 0.01]\n")
    (d / "input_number.yaml").write_text("input: 5\n")
    (d / "kernel_date.yaml").write_text("kernel: [2024-01-01]\n")
    (d / "kernel_bytes.yaml").write_text("kernel: [!!binary aGVsbG8=]\n")
    (d / "kernel_null.json").write_text('{"kernel": null}')
    (d / "lr_nan.json").write_text('{"lr": NaN}')
    (d / "lr_inf.yaml").write_text("lr: .inf\n")
    (d / "epochs_hex.yaml").write_text("epochs: 0x10\n")
    (d / "method_date.yaml").write_text("method: 2001-12-14\n")  # was "unknown value datetime.date(2001, 12, 14)"
    (d / "key_true.yaml").write_text("true: 3\n")  # the key True: "1: Keys should be strings"
    (d / "key_number.yaml").write_text("3: 3\n")
    (d / "epochs_5000_digits.json").write_text('{"epochs": ' + "9" * 5000 + "}")  # past int()'s 4,300 digits: the
    (d / "epochs_5000_digits.yaml").write_text("epochs: " + "9" * 5000 + "\n")  # file was "not valid json"
    (d / "separator_line.jsonl").write_text('{"seed": 1}\n\x1c\n{"seed": 2}\n')  # skipped: str.strip() took it
    # for space, where JSON's space is " \t\r\n"
    (d / "form_feed_line.jsonl").write_text('{"seed": 1}\n\x0c\n{"seed": 2}\n')  # two jobs: within a limit of 2
    (d / "seed_32_digits.json").write_text('{"seed": 1' + "0" * 31 + "}")  # as --seed says it: past any field's
    (d / "seed_31_digits.yaml").write_text("seed: 1" + "0" * 30 + "\n")  # digits, and within them
    (d / "seed_item_comma.yaml").write_text('seed: ["1,2", 3]\n')  # two values in one item: it swept 1, 2, 3
    (d / "batch_item_comma.yaml").write_text('method: adam\nbatch-size: ["1,2", 3]\n')  # named batch_size
    (d / "kernel_nan.json").write_text('{"kernel": [[1.0, NaN]]}')
    (d / "third_bad.jsonl").write_text('{"seed": 1}\n{"seed": 2}\n{"seed": 3, "lr": -1}\n')
    (d / "eleven.jsonl").write_text("".join(f'{{"seed": {i}}}\n' for i in range(11)))
    (d / "two.jsonl").write_text('{"seed": 1}\n{"seed": 2}\n')
    (d / "long.json").write_text('{"seed": 1, "epochs": 3, "lr": 0.01, "method": "d2l-manual", "tol": 0.0001}')
    np.save(d / "x.npy", np.ones((6, 8)))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    np.save(d / "inf_labels.npy", np.full((6, 7), np.inf))
    np.save(d / "empty.npy", np.zeros((0, 4)))
    np.save(d / "vector.npy", np.ones(8))
    np.save(d / "labels_6x6.npy", np.ones((6, 6)))
    np.save(d / "labels_6x7.npy", np.ones((6, 7)))
    np.save(d / "kernel_1e300.npy", np.array([[1e300, -1.0]]))
    np.save(d / "big.npy", np.ones((40, 40)))  # 12,928 bytes
    (d / "corrupt.npy").write_bytes((d / "x.npy").read_bytes()[:90])
    with (d / "claims_37_gib.npy").open("wb") as fh:  # 145 bytes: numpy made the array the header claims first
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
        fh.write(bytes(16))
    (d / "nul_in_path.json").write_text('{"input": "npy:a\\u0000b"}')  # ValueError from the file system's calls
    (d / "text.png").write_text("not an image at all\n")
    Image.new("L", (8, 8)).save(d / "tiny.gif")
    tiny_png(d / "bomb.png", 20_000, 20_000)  # past twice Pillow's limit: a DecompressionBombError
    tiny_png(d / "warned.png", 10_000, 10_000)  # past Pillow's limit once: only a warning from Pillow
    tiny_png(d / "large.png", 5_000, 5_000)  # within Pillow's limit, over the input limit
    (d / "a_directory.npy").mkdir()
    os.mkfifo(d / "fifo.npy")
    (d / "locked.npy").write_bytes((d / "x.npy").read_bytes())
    (d / "locked.npy").chmod(0)


CASES = [
    # files: malformed, wrong shape of document, wrong types, unknown keys
    Case("malformed-json", ("submit", "-f", "{d}/bad.json"), "file"),
    Case("malformed-yaml", ("run", "-f", "{d}/bad.yaml"), "file"),
    Case("yaml-aliases-past-the-files-size", ("run", "-f", "{d}/kernel_aliases.yaml"), "file"),
    Case("yaml-aliases-past-the-files-size-in-a-sweep", ("sweep", "-f", "{d}/seed_aliases.yaml"), "file"),
    Case("yaml-aliases-of-a-long-text", ("run", "--no-store", "-f", "{d}/input_long_aliases.yaml"), "file"),
    Case("yaml-aliases-of-a-long-text-in-a-sweep", ("sweep", "-f", "{d}/seed_long_aliases.yaml"), "file"),
    Case("malformed-jsonl", ("submit", "-f", "{d}/bad.jsonl"), "file"),
    Case("json-not-a-mapping", ("submit", "-f", "{d}/list.json"), "file"),
    Case("yaml-scalar", ("sweep", "-f", "{d}/scalar.yaml"), "file"),
    Case("empty-jsonl", ("submit", "-f", "{d}/empty.jsonl"), "file"),
    Case("two-jobs-for-run", ("run", "-f", "{d}/two.jsonl"), "file"),
    Case("missing-spec-file", ("submit", "-f", "{d}/nope.yaml"), "file"),
    Case("spec-file-is-a-directory", ("run", "-f", "{d}/a_directory.npy"), "file"),
    Case("spec-file-too-large", ("submit", "-f", "{d}/long.json"), "file", {"KLAB_MAX_FILE_BYTES": "40"}),
    Case("unknown-key-in-file", ("submit", "-f", "{d}/unknown.json"), "learning_rate"),
    Case("epochs-text-in-file", ("run", "-f", "{d}/epochs_text.yaml"), "epochs"),
    Case("epochs-fraction-in-file", ("submit", "-f", "{d}/epochs_float.json"), "epochs"),
    Case("lr-list-in-file", ("submit", "-f", "{d}/lr_list.json"), "lr"),
    Case("input-number-in-file", ("run", "-f", "{d}/input_number.yaml"), "input"),
    Case("kernel-date-in-yaml", ("submit", "-f", "{d}/kernel_date.yaml"), "kernel"),
    Case("kernel-bytes-in-yaml", ("run", "-f", "{d}/kernel_bytes.yaml"), "kernel"),
    Case("no-kernel-no-labels", ("submit", "-f", "{d}/kernel_null.json"), "kernel"),
    Case("nan-lr-in-json", ("submit", "-f", "{d}/lr_nan.json"), "lr"),
    Case("inf-lr-in-yaml", ("run", "-f", "{d}/lr_inf.yaml"), "lr"),
    Case("a-sweep-files-list-item-holding-a-comma", ("sweep", "-f", "{d}/seed_item_comma.yaml"), "seed"),
    Case("a-batch-size-list-item-holding-a-comma", ("sweep", "-f", "{d}/batch_item_comma.yaml"), "batch-size"),
    Case("nan-kernel-in-json", ("submit", "-f", "{d}/kernel_nan.json"), "kernel"),
    Case("third-of-three-jobs-bad", ("submit", "-f", "{d}/third_bad.jsonl"), "lr"),
    Case("jobs-in-file-over-limit", ("submit", "-f", "{d}/eleven.jsonl"), "file", {"KLAB_MAX_SWEEP_JOBS": "10"}),
    Case("sweep-base-of-two-jobs", ("sweep", "-f", "{d}/two.jsonl", "--seed", "1,2"), "file"),
    Case("run-of-two-jobs", ("run", "-f", "{d}/two.jsonl"), "file"),
    # whole numbers: past their 32-bit columns (PostgreSQL stored -2147483648), log-spaced ones that round together
    Case("batch-size-past-its-column", ("submit", "--method", "adam", "--batch-size", "2147483648"), "batch-size"),
    Case("epochs-past-their-column", ("run", "--method", "lstsq", "--epochs", "2147483648"), "epochs",
         {"KLAB_MAX_EPOCHS": "2147483647"}),  # the limit at the column's: a KLAB_MAX_EPOCHS past it is refused
    Case("max-epochs-past-the-column", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "3000000000"}),
    Case("a-setting-in-arabic-digits", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "١٠"}),  # read
    # as 10, where --epochs ١٠ is refused
    Case("a-setting-of-5000-digits", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "9" * 5000}),
    Case("a-setting-ending-in-an-underscore", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "10_"}),
    Case("a-negative-setting-of-40-digits", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS",
         {"KLAB_MAX_EPOCHS": "-" + "9" * 40}),
    Case("a-lease-of-zero-seconds", ("run", "--epochs", "1"), "KLAB_LEASE_SECONDS", {"KLAB_LEASE_SECONDS": "0"}),
    Case("a-setting-of-minus-zero", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "-0"}),
    Case("a-setting-of-30-digits", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "9" * 30}),
    Case("a-setting-of-31-digits", ("run", "--epochs", "1"), "KLAB_MAX_EPOCHS", {"KLAB_MAX_EPOCHS": "1" + "0" * 30}),
    Case("an-lr-in-arabic-digits", ("sweep", "--lr", "٠.١,0.2"), "lr"),  # swept 0.1 and 0.2
    Case("a-hex-number-in-a-file", ("run", "-f", "{d}/epochs_hex.yaml"), "epochs"),  # YAML 1.1 read 0x10 as 16
    Case("a-date-in-a-file", ("run", "-f", "{d}/method_date.yaml"), "method"),
    Case("a-key-of-true", ("run", "-f", "{d}/key_true.yaml"), "true"),
    Case("a-key-of-a-number", ("run", "-f", "{d}/key_number.yaml"), "3"),
    Case("epochs-of-5000-digits-in-json", ("run", "-f", "{d}/epochs_5000_digits.json"), "epochs"),
    Case("epochs-of-5000-digits-in-yaml", ("submit", "-f", "{d}/epochs_5000_digits.yaml"), "epochs"),
    Case("a-jsonl-line-of-a-separator", ("submit", "-f", "{d}/separator_line.jsonl"), "file"),
    Case("a-jsonl-line-of-a-form-feed-at-the-limit", ("submit", "-f", "{d}/form_feed_line.jsonl"), "file",
         {"KLAB_MAX_SWEEP_JOBS": "2"}),  # not counted as a third job: refused as what it is
    Case("a-seed-of-32-digits-in-a-file", ("run", "-f", "{d}/seed_32_digits.json"), "seed"),
    Case("a-seed-of-31-digits-in-a-file", ("run", "-f", "{d}/seed_31_digits.yaml"), "seed"),
    Case("batch-size-past-64-bits", ("sweep", "--local", "--batch-size", str(2**63)), "batch-size"),
    Case("batch-size-dash-range", ("sweep", "--local", "--batch-size", "1-2"), "batch-size"),  # these four named
    Case("batch-size-word", ("sweep", "--local", "--batch-size", "x"), "batch-size"),  # batch_size, the keyword
    Case("batch-size-twice-in-a-range", ("sweep", "--local", "--batch-size", "1..2,2"), "batch-size"),
    Case("batch-size-log-rounds-together", ("sweep", "--local", "--batch-size", "1:2:3"), "batch-size"),
    Case("log-spaced-lrs-closer-than-12-digits", ("sweep", "--lr", "1:1.0000000000001:3"), "lr"),  # was "1.0
    # appears more than once", each value given once
    Case("log-spaced-noise-of-equal-ends", ("sweep", "--noise", "0.5:0.5:3"), "noise"),
    Case("log-spaced-seeds-of-equal-ends", ("sweep", "--seed", "3:3:2"), "seed"),  # "1 whole numbers"
    Case("log-spaced-seeds-that-round-together", ("sweep", "--seed", "1:2:5"), "seed"),
    Case("log-spaced-epochs-that-round-together", ("sweep", "--local", "--epochs", "1:100:100"), "epochs"),
    Case("log-spaced-seeds-not-whole", ("sweep", "--seed", "0.5:1.4:2"), "seed"),
    # paths: empty (was: no file), too long for the file system (was: OSError), a database in memory (was: lost)
    Case("spec-file-empty-path", ("run", "-f", ""), "file"),
    Case("sweep-file-empty-path", ("sweep", "--local", "-f", ""), "file"),
    Case("input-name-too-long", ("run", "--input", "npy:" + "x" * 256), "input"),
    Case("spec-file-name-too-long", ("submit", "-f", "x" * 256 + ".yaml"), "file"),
    Case("database-in-memory", ("run", "--epochs", "1"), "KLAB_DATABASE_URL", {"KLAB_DATABASE_URL": "sqlite://"}),
    Case("database-in-memory-as-a-uri", ("run", "--epochs", "1"), "KLAB_DATABASE_URL",  # stored, then lost
         {"KLAB_DATABASE_URL": "sqlite:///file::memory:?cache=shared&uri=true"}),
    Case("database-in-memory-by-mode", ("run", "--epochs", "1"), "KLAB_DATABASE_URL",  # stored, then lost
         {"KLAB_DATABASE_URL": "sqlite:///file:m.db?mode=memory&uri=true"}),
    Case("database-in-memory-by-name", ("sweep", "--local", "--seed", "0..1"), "KLAB_DATABASE_URL",
         {"KLAB_DATABASE_URL": "sqlite:///:memory:"}),
    Case("a-newline-in-a-path", ("run", "--input", "npy:a\nb"), "input"),  # printed on two lines
    Case("a-nul-byte-in-a-path", ("run", "-f", "{d}/nul_in_path.json"), "input"),  # was a traceback, exit 1
    Case("an-npy-header-claiming-more-than-the-file", ("submit", "--kernel", "npy:{d}/claims_37_gib.npy"), "kernel"),
    # a broker URL whose database is not a number (redis-py would use 0, kombu raised after the jobs were stored)
    Case("broker-database-not-a-number", ("submit",), "KLAB_BROKER_URL", {"KLAB_BROKER_URL": "redis://127.0.0.1:1/abc"}),
    Case("broker-database-with-more", ("sweep", "--seed", "0..2"), "KLAB_BROKER_URL",
         {"KLAB_BROKER_URL": "redis://:pw@127.0.0.1:1/11/extra"}),
    Case("a-worker-of-a-broker-that-is-not-redis", ("worker", "--queue", "cpu"), "KLAB_BROKER_URL",
         {"KLAB_BROKER_URL": "http://127.0.0.1:1/0"}),  # kombu's KeyError, after Celery's banner
    Case("a-worker-of-a-broker-database-not-a-number", ("worker",), "KLAB_BROKER_URL",
         {"KLAB_BROKER_URL": "redis://127.0.0.1:1/abc"}),  # three tracebacks, exit 1
    Case("a-worker-of-a-broker-port-not-a-number", ("worker",), "KLAB_BROKER_URL",
         {"KLAB_BROKER_URL": "redis://127.0.0.1:notaport/0"}),
    # unknown names
    Case("unknown-method", ("submit", "--method", "sgd"), "method"),
    Case("unknown-device", ("run", "--device", "tpu"), "device"),
    Case("unknown-queue", ("submit", "--queue", "tpu"), "queue"),
    Case("unknown-kernel-preset", ("sweep", "--kernel", "d2l,sobel-z"), "kernel"),
    Case("unknown-input-kind", ("submit", "--input", "blob:6x8"), "input"),
    # shapes and literals
    Case("kernel-larger-than-input", ("submit", "--input", "edge:3x3", "--kernel", "random:5x5"), "kernel"),
    Case("kernel-wider-than-input", ("run", "--input", "ones:8x2", "--kernel", "[[1, 2, 3]]"), "kernel"),
    Case("empty-kernel-literal", ("submit", "--kernel", "[]"), "kernel"),
    Case("empty-row-kernel-literal", ("run", "--kernel", "[[]]"), "kernel"),
    Case("ragged-kernel-literal", ("submit", "--kernel", "[[1, 2], [3]]"), "kernel"),
    Case("nan-kernel-literal", ("run", "--kernel", "[[1, NaN]]"), "kernel"),
    Case("a-kernel-literal-nested-5-deep", ("run", "--kernel", "[[[[[1]]]]]"), "kernel"),  # taken: "got 5-D"
    Case("inf-kernel-literal", ("submit", "--kernel", "[[1, -Infinity]]"), "kernel"),
    Case("huge-kernel-literal", ("submit", "--kernel", "[[1e999, 1]]"), "kernel"),
    Case("non-numeric-kernel-literal", ("run", "--kernel", '[["a", 1]]'), "kernel"),
    Case("boolean-kernel-literal", ("submit", "--kernel", "[[true, false]]"), "kernel"),
    Case("one-dimensional-kernel-literal", ("submit", "--kernel", "[1, -1]"), "kernel"),
    Case("broken-kernel-literal", ("run", "--kernel", "[[1, 2"), "kernel"),
    Case("three-dimensional-random-kernel", ("submit", "--kernel", "random:2x3x3"), "kernel"),
    Case("zero-dimension-input", ("submit", "--input", "random:0x5"), "input"),
    Case("one-number-input", ("run", "--input", "edge:6"), "input"),
    Case("label-shape-mismatch", ("submit", "--labels", "npy:{d}/labels_6x6.npy"), "labels"),
    Case("labels-not-a-file-form", ("submit", "--labels", "labels.npy"), "labels"),
    Case("channel-mismatch", ("run", "--input", "random:3x8x8", "--kernel", "random:1x2x3x3"), "kernel"),
    # numbers
    Case("non-numeric-lr", ("submit", "--lr", "fast"), "lr"),
    Case("zero-lr", ("submit", "--lr", "0"), "lr"),
    Case("negative-lr", ("run", "--lr", "-0.03"), "lr"),
    Case("nan-lr", ("submit", "--lr", "nan"), "lr"),
    Case("inf-lr", ("run", "--lr", "inf"), "lr"),
    Case("zero-epochs", ("submit", "--epochs", "0"), "epochs"),
    Case("negative-epochs", ("sweep", "--epochs", "-3,5"), "epochs"),
    Case("fractional-epochs", ("submit", "--epochs", "2.5"), "epochs"),
    Case("zero-batch-size", ("submit", "--batch-size", "0"), "batch-size"),
    Case("negative-batch-size", ("run", "--batch-size", "-2"), "batch-size"),
    Case("negative-noise", ("submit", "--noise", "-1"), "noise"),
    Case("negative-seed", ("submit", "--seed", "-1"), "seed"),
    Case("seed-too-large", ("run", "--seed", str(2**63)), "seed"),
    Case("a-seed-of-31-digits-in-a-sweep", ("sweep", "--seed", "1e30"), "seed"),  # read whole and told the
    # column's bound; 'too large, got ...' is for longer ones
    Case("non-numeric-bias", ("submit", "--bias", "some"), "bias"),
    Case("negative-tol", ("run", "--tol", "-1"), "tol"),
    Case("zero-batch-jobs", ("sweep", "--seed", "1,2", "--batch-jobs", "0"), "--batch-jobs"),
    # limits
    Case("input-elements-over-limit", ("submit", "--input", "random:5000x5000"), "input"),
    Case("input-elements-over-env-limit", ("run", "--input", "ones:20x20"), "input",
         {"KLAB_MAX_INPUT_ELEMENTS": "100"}),
    Case("kernel-size-over-limit", ("submit", "--input", "random:100x100", "--kernel", "random:70x70"), "kernel"),
    Case("epochs-over-limit", ("submit", "--epochs", "100001"), "epochs"),
    Case("epochs-over-env-limit", ("sweep", "--epochs", "5,50"), "epochs", {"KLAB_MAX_EPOCHS": "20"}),
    Case("sweep-jobs-over-limit", ("sweep", "--seed", "0..4", "--lr", "0.01,0.02,0.03"), "sweep",
         {"KLAB_MAX_SWEEP_JOBS": "10"}),
    Case("sweep-range-over-limit", ("sweep", "--seed", "0..20"), "seed", {"KLAB_MAX_SWEEP_JOBS": "10"}),
    Case("a-range-one-value-longer-than-the-limit", ("sweep", "--seed", "1..11"), "seed",
         {"KLAB_MAX_SWEEP_JOBS": "10"}),  # its 11 values were let through to the grid's own check
    Case("upload-over-size-limit", ("submit", "--input", "npy:{d}/big.npy"), "input",
         {"KLAB_MAX_FILE_BYTES": "4096"}),
    # sweeps
    Case("integer-range-backwards", ("sweep", "--seed", "9..1"), "seed"),
    Case("log-range-backwards", ("sweep", "--lr", "0.1:0.001:3"), "lr"),
    Case("log-range-to-infinity", ("sweep", "--seed", "1e-300:1e300:3"), "seed"),
    Case("empty-sweep-item", ("sweep", "--lr", "0.01,,0.02"), "lr"),
    Case("non-numeric-sweep-item", ("sweep", "--epochs", "5,ten"), "epochs"),
    Case("sweep-seed-past-its-column", ("sweep", "--seed", "0,9223372036854775808"), "seed"),  # the greatest
    Case("log-range-from-zero", ("sweep", "--lr", "0:1:3"), "lr"),
    # files named by fields
    Case("missing-npy", ("submit", "--input", "npy:{d}/nope.npy"), "input"),
    Case("directory-as-npy", ("run", "--input", "npy:{d}/a_directory.npy"), "input"),
    Case("fifo-as-npy", ("submit", "--labels", "npy:{d}/fifo.npy"), "labels"),
    Case("npy-of-pickled-objects", ("submit", "--input", "npy:{d}/objects.npy"), "input"),
    Case("npy-of-pickled-objects-as-kernel", ("run", "--kernel", "npy:{d}/objects.npy"), "kernel"),
    Case("npy-of-strings", ("submit", "--input", "npy:{d}/strings.npy"), "input"),
    Case("npy-with-nan", ("submit", "--input", "npy:{d}/nan.npy", "--kernel", "[[1]]"), "input"),
    Case("labels-with-inf", ("run", "--labels", "npy:{d}/inf_labels.npy"), "labels"),
    Case("empty-npy", ("submit", "--input", "npy:{d}/empty.npy"), "input"),
    Case("one-dimensional-npy", ("submit", "--input", "npy:{d}/vector.npy"), "input"),
    Case("truncated-npy", ("run", "--input", "npy:{d}/corrupt.npy"), "input"),
    Case("not-an-image", ("submit", "--input", "image:{d}/text.png"), "input"),
    Case("gif-not-png-or-jpeg", ("run", "--input", "image:{d}/tiny.gif"), "input"),
    Case("decompression-bomb", ("submit", "--input", "image:{d}/bomb.png"), "input"),
    Case("image-over-pillow-limit", ("run", "--input", "image:{d}/warned.png"), "input"),
    Case("image-over-input-limit", ("submit", "--input", "image:{d}/large.png"), "input"),
    Case("missing-image", ("sweep", "--input", "image:{d}/nope.png,edge:6x8"), "input"),
    Case("a-value-twice-in-a-sweep", ("sweep", "--lr", "0.03,0.03"), "lr"),
    Case("overlapping-ranges", ("sweep", "--seed", "0..5,3..8"), "seed"),
    Case("a-kernel-twice", ("sweep", "--kernel", "d2l,sobel-x,d2l"), "kernel"),
    Case("a-kernel-literal-twice-spaced-apart", ("sweep", "--kernel", "[[1,-1]],[[1, -1]]"), "kernel"),  # ran twice
    Case("a-kernel-literal-twice-spelled-apart", ("sweep", "--kernel", "[[1,-1]],[[1.0,-1e0]]"), "kernel"),  # ran
    # twice
    Case("cuda-job-to-the-cpu-queue", ("submit", "--device", "cuda", "--queue", "cpu"), "queue"),
    Case("a-list-of-what-cannot-sweep-in-a-sweep-file", ("sweep", "-f", "{d}/tol_list.yaml"), "tol"),
    Case("a-range-written-with-a-dash", ("sweep", "--seed", "0-9"), "seed"),
    Case("a-range-written-with-a-dash-swept-here", ("sweep", "--local", "--lr", "0.01-0.1"), "lr"),
    Case("a-local-sweep-sent-to-a-queue", ("sweep", "--local", "--queue", "cpu"), "queue"),
    Case("a-local-sweep-of-bad-jobs", ("sweep", "--local", "--kernel", "d2l,random:9x9"), "kernel"),
    Case("an-empty-tag", ("sweep", "--seed", "1,2", "--tag", " "), "tag"),
    Case("a-tag-with-a-comma", ("sweep", "--seed", "1,2", "--tag", "a,b"), "tag"),
    Case("a-sweep-name-longer-than-its-column", ("sweep", "--seed", "1,2", "--name", "x" * 201), "name"),
    Case("a-blank-sweep-name", ("sweep", "--seed", "1,2", "--name", " "), "name"),
    Case("a-sweep-name-of-two-lines", ("sweep", "--seed", "1,2", "--name", "two\nlines"), "name"),  # split its row
    Case("an-invisible-sweep-name", ("sweep", "--seed", "1,2", "--name", "\u200b"), "name"),
    Case("a-tag-that-plays-on-the-terminal", ("sweep", "--seed", "1,2", "--tag", "\x1b[31mred"), "tag"),
    Case("no-value-for-a-swept-field", ("sweep", "--seed", ""), "seed"),
    Case("no-true-kernel-and-no-labels", ("run", "--kernel", "none"), "kernel"),
    Case("a-kernel-whose-labels-overflow", ("run", "--input", "ones:6x8", "--kernel", "[[3e38, 3e38]]"), "kernel"),
    Case("a-bias-that-overflows-the-labels", ("run", "--bias", "1e308"), "bias"),
    # with labels given the true kernel and bias make nothing: they were compared with, as inf and overflow warnings
    Case("a-true-kernel-beyond-float32-with-labels",
         ("run", "--labels", "npy:{d}/labels_6x7.npy", "--kernel", "[[1e39, -1]]"), "kernel"),
    Case("a-true-kernel-file-beyond-float32-with-labels",
         ("sweep", "--labels", "npy:{d}/labels_6x7.npy", "--kernel", "npy:{d}/kernel_1e300.npy"), "kernel"),
    Case("a-true-bias-beyond-float32-with-labels", ("run", "--labels", "npy:{d}/labels_6x7.npy", "--bias", "1e39"),
         "bias"),
    Case("noise-that-overflows-the-labels", ("sweep", "--noise", "0,1e308"), "noise"),
    # validated with seed 1, whose labels fit; seed 6's did not, and its job was stored, then failed by its worker
    Case("noise-that-overflows-the-labels-of-a-later-seed", ("sweep", "--noise", "1.2e38", "--seed", "1,6"), "noise"),
    # validated with seed 57, whose labels fit; seed 58's random input has a draw of 3.43 and made 3.4e38
    Case("a-kernel-that-overflows-the-labels-of-a-later-seed",
         ("sweep", "--input", "random:6x8", "--kernel", "[[1e38]]", "--seed", "57..59"), "kernel"),
    Case("gpu-index-for-a-cpu-worker", ("worker", "--queue", "cpu", "--gpu", "0"), "gpu"),
    Case("a-worker-name-with-an-at", ("worker", "--queue", "gpu", "--name", "gpu@2"), "name"),
    Case("a-worker-name-past-64-characters", ("worker", "--queue", "gpu", "--name", "g" * 65), "name"),
    Case("two-children-of-a-gpu-worker", ("worker", "--queue", "gpu", "--concurrency", "2"), "concurrency"),
    Case("an-unknown-log-level", ("worker", "--loglevel", "bogus"), "--loglevel"),
]
if os.geteuid() != 0:  # root reads a file whatever its mode
    CASES.append(Case("unreadable-npy", ("submit", "--input", "npy:{d}/locked.npy"), "input"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-input")
    make_files(d)
    return d


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One fresh SQLite database at head for every case: each must leave it empty."""
    from service.db.engine import dispose_engines, upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'klab.db'}"
    upgrade(url)
    yield url
    dispose_engines()


NO_BROKER = "redis://127.0.0.1:1/0"
"""Nothing listens there: bad input is refused before any broker is asked (a valid job would exit 3)."""


@pytest.fixture
def cli_env(database: str, tmp_path: Path, setenv) -> dict:
    env = {"KLAB_HOME": str(tmp_path / "home"), "KLAB_DATABASE_URL": database, "KLAB_BROKER_URL": NO_BROKER}
    setenv(**{**{k: None for k in os.environ if k.startswith("KLAB_")}, **env})  # a KLAB_HOME of the caller's: replaced
    return env


def klab_here(*args: str) -> tuple[int, str, list[str]]:
    """The console script's entry point in this process: exit code, stdout, and the lines a real process
    would print on stderr (Python's warnings included)."""
    from service.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        except Exception:  # noqa: BLE001 - a real process would print this traceback and exit 1
            code = 1
            err.write(traceback.format_exc())
    lines = err.getvalue().splitlines() + [f"{w.category.__name__}: {w.message}" for w in caught]
    return (code if isinstance(code, int) else 1), out.getvalue(), lines


def names(line: str, field: str) -> bool:
    """`klab: error: FIELD: ...`; an option click itself rejects may be quoted in click's words instead."""
    if line.startswith(f"klab: error: {field}: "):
        return True
    return field.startswith("--") and line.startswith("klab: error: ") and f"'{field}'" in line


def stored(url: str) -> dict[str, int]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("jobs", "sweeps", "datasets", "epochs")}
    finally:
        eng.dispose()


def clear(url: str) -> None:
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            for t in ("epochs", "jobs", "sweeps", "datasets"):
                conn.execute(text(f"DELETE FROM {t}"))
    finally:
        eng.dispose()


LINES = json.loads((Path(__file__).parent / "bad_input_lines.json").read_text(encoding="utf-8"))
"""Each case's line, after `klab: error: ` ({d}: the directory of the test files): the field and what is wrong in
this case's own words, where the field alone passed with another check's message (a negative setting of 40
digits told it was too large, NaN that it was beyond float32)."""


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} == {"run", "submit", "sweep", "worker"}
    assert {c.name for c in CASES} <= set(LINES) and set(LINES) - {c.name for c in CASES} <= {"unreadable-npy"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_stored_nothing_queued(case, files, cli_env, database, setenv):
    """No service but the SQLite file: validation needs no broker (nothing could be queued), and a case that
    slipped past it would reach the broker check and exit 3, not 2."""
    setenv(**case.env)
    args = [a.replace("{d}", str(files)) for a in case.args]
    try:
        code, out, lines = klab_here(*args)
        assert code == 2, (code, out, lines)
        assert out == ""
        assert len(lines) == 1, lines
        assert names(lines[0], case.field), lines[0]
        assert lines[0] == "klab: error: " + LINES[case.name].replace("{d}", str(files))
        assert stored(database) == {"jobs": 0, "sweeps": 0, "datasets": 0, "epochs": 0}
    finally:
        clear(database)


@pytest.mark.parametrize("args,hint", [
    (("sweep", "--seed", "0-9"), "seed: not a number: '0-9'; did you mean 0..9?"),
    (("sweep", "--epochs", "10 - 100"), "did you mean 10..100?"),
    (("sweep", "--lr", "0.001-0.1"), "did you mean 0.001,0.1 or 0.001:0.1:N (N log-spaced values)?"),
    (("sweep", "--lr", "1e-3-1e-1"), "did you mean 1e-3,1e-1 or 1e-3:1e-1:N"),
    (("sweep", "--seed", "1,2", "--tag", "book, v2"), "tag: a tag has no commas, got 'book, v2'; give each tag its "
                                                    "own --tag (--tag book --tag v2)"),
    (("run", "--lr", "0.01,0.03"), "lr: Input should be a valid number, unable to parse string as a number; "
                                   "several values make a sweep: klab sweep"),
    (("run", "--kernel", "d2l,sobel-x"), "kernel: unknown kernel 'd2l,sobel-x'; expected a preset (d2l, edge-v, "),
    (("run", "--kernel", "d2l,sobel-x"), "(no true kernel); several values make a sweep: klab sweep"),
    (("submit", "--input", "edge:6x8,edge:8x8"), "input: expected dimensions like 6x8, got '6x8,edge:8x8'; several "
                                                 "values make a sweep: klab sweep"),
    (("sweep", "--lr", "0.01..0.05"), "lr: range 0.01..0.05: A..B counts integers; did you mean 0.01,0.05 or "
                                      "0.01:0.05:N (N log-spaced values)?"),
    (("sweep", "--lr", "0.5..3"), "lr: range 0.5..3: A..B counts integers; did you mean 0.5,3 or 0.5:3:N (N "
                                  "log-spaced values)?"),  # one end whole: the same
    (("sweep", "--noise=0,-1,0.1"), "noise: Input should be greater than or equal to 0 (the sweep's value -1.0)"),
    (("sweep", "--epochs", "0..3"), "epochs: Input should be greater than 0 (the sweep's value 0)"),
    (("sweep", "--input", "edge:6x8,image:/nowhere.png"), "input: no such file: /nowhere.png (the sweep's value "
                                                          "'image:/nowhere.png')"),
    (("sweep", "--method", "adam,sgd"), "method: unknown value 'sgd'; input should be 'd2l-manual',"),
    (("compare", "--by", "lr"), "--by: no such option; did you mean --group-by?"),
    (("list", "--metod", "adam"), "--metod: no such option; did you mean --method?"),
    (("show", "1", "--format", "csv"), "--format: no such option; see klab show --help"),
    (("show", "1", "--sweep", "3"), "--sweep: no such option; see klab show --help"),  # was "did you mean --help?"
    (("run", "--no-store", "--seed", "0-9"), "seed: not a number: '0-9'; did you mean 0..9?"),  # pydantic read -9
    (("run", "--no-store", "--seed", "0-0"), "seed: not a number: '0-0'; did you mean 0..0?"),  # and trained seed 0
    (("run", "--no-store", "--epochs", "00-3"), "epochs: not a number: '00-3'; did you mean 00..3?"),
    (("lis",), "no such command 'lis'; did you mean list?"),
    (("swep", "--seed", "1,2"), "no such command 'swep'; did you mean sweep or sweeps?"),
    (("compre", "1"), "did you mean compare?"),
    (("frobnicate",), "no such command 'frobnicate'; see klab --help"),
    (("db", "downgrade"), "klab: error: db: no such command 'downgrade'; did you mean upgrade?"),
    (("run", "--lr"), "klab: error: --lr: requires an argument"),  # was "Option '--lr' requires an argument."
    (("export", "1", "-o"), "klab: error: -o: requires an argument"),
    (("list", "--json=1"), "klab: error: --json: does not take a value"),
])
def test_a_near_miss_is_answered_with_what_was_meant(args, hint, cli_env):
    code, out, lines = klab_here(*args)
    assert code == 2 and out == "" and len(lines) == 1, lines
    assert lines[0].startswith("klab: error: ") and hint in lines[0], lines[0]


def test_a_sweeps_value_its_message_names_is_not_named_again(cli_env):
    """`(the sweep's value ...)` tells which of a sweep's values a message is about; one that quotes it says so."""
    assert klab_here("sweep", "--kernel", "sobel-x,bogus") == (2, "", [
        "klab: error: kernel: unknown kernel 'bogus'; expected a preset (d2l, edge-v, sobel-x, sobel-y, laplacian, "
        "second-diff, box3, gauss3, sharpen, identity3), a JSON literal, random:KHxKW, npy:PATH or none (no true "
        "kernel)"])
    assert klab_here("sweep", "--method", "sgd,adam") == (2, "", [
        "klab: error: method: unknown value 'sgd'; input should be 'd2l-manual', 'd2l-sgd', 'momentum', 'adam' or "
        "'lstsq'"])


def test_a_mistake_in_one_of_several_jobs_of_a_file_names_the_job(tmp_path, cli_env):
    """A file it could not read or a queue it cannot go to, in job 2 of 2, named no job (a value out of range did)."""
    (tmp_path / "files.jsonl").write_text('{"seed": 1}\n{"input": "npy:/nowhere.npy"}\n')
    (tmp_path / "cuda.jsonl").write_text('{"seed": 1}\n{"device": "cuda"}\n')
    for args, line in ((("-f", "files.jsonl"), "input: no such file: /nowhere.npy (job 2 of {d}/files.jsonl)"),
                       (("-f", "cuda.jsonl", "--queue", "cpu"), "queue: a --device cuda job goes to the gpu queue "
                                                                "(--queue gpu, or leave --queue out) (job 2 of "
                                                                "{d}/cuda.jsonl)")):
        args = tuple(str(tmp_path / a) if a.endswith(".jsonl") else a for a in args)
        assert klab_here("submit", *args) == (2, "", ["klab: error: " + line.format(d=tmp_path)])


def test_a_bad_flag_for_several_jobs_of_a_file_is_named_as_a_flag(tmp_path, cli_env):
    """A flag is every job's: its mistake was labelled "(job 1 of FILE)". A job's own mistake still names the job,
    with a flag's value or without (kernel none and no labels in job 2)."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"seed": 1}\n{"seed": 2, "labels": null}\n')
    for flags, line in ((("--lr", "abc"), "lr: not a number: 'abc'"),
                        (("--epochs", "0"), "epochs: Input should be greater than 0"),
                        (("--kernel", "none"), f"kernel: give a true kernel, or labels with --labels (job 1 of "
                                               f"{jobs})"),
                        (("--seed", "x"), "seed: not a number: 'x'"),
                        (("--lr", "abc", "--epochs", "0"), "lr: not a number: 'abc'")):  # the first, as run says
        assert klab_here("submit", "-f", str(jobs), *flags) == (2, "", ["klab: error: " + line])


@pytest.mark.parametrize("args,line", [
    (("show",), "id: missing; see klab show --help"),  # was `show: missing argument 'ID'`: the field first
    (("show", "1", "2"), "show: unexpected extra argument (2); see klab show --help"),
    (("show", "x"), "id: 'x' is not a valid integer; see klab show --help"),
    (("export", "epochs", "13"), "id: 'epochs' is not a valid integer; see klab export --help"),
    (("cancel", "1", "x"), "id: 'x' is not a valid integer; see klab cancel --help"),
    (("db", "frob"), "db: no such command 'frob'; see klab db --help"),
    (("list", "--limit", "-1"), "--limit: -1 is not in the range x>=0"),
    (("worker", "--loglevel", "loud"), "--loglevel: 'loud' is not one of 'debug', 'info', 'warning', 'error', "
                                       "'critical'"),
    (("export", "3", "--format", "xml"), "--format: 'xml' is not one of 'csv', 'json'"),
    (("plot", "3"), "--output: missing; see klab plot --help"),
    (("delete", "--sweep", "1", "--sweep", "2"), "--sweep: given 2 times; give it once"),  # click kept the last:
    # sweep 2 alone was deleted
    (("list", "--sweep", "3", "--sweep", "3"), "--sweep: given 2 times; give it once"),
    (("list", "--limit", "٢"), "--limit: '٢' is not a number of ASCII digits"),  # int() read it as 2, where job
    (("workers", "--timeout", "١"), "--timeout: '١' is not a number of ASCII digits"),
    (("sweep", "--seed", "1,2", "--batch-jobs", "١٠"), "--batch-jobs: '١٠' is not a number of ASCII digits"),  # values,
    (("show", "٣"), "id: '٣' is not a number of ASCII digits; see klab show --help"),  # and
    (("export", "--ids", "١,2"), "ids: must be job ids separated by commas, got '١,2'"),  # settings refuse them
    # an option of one value given twice: click kept the last (`--seed 0..2 --seed 5` was one job, of seed 5)
    (("sweep", "--seed", "0..2", "--seed", "5"), "--seed: given 2 times; give it once"),
    (("run", "--no-store", "-f", "a.yaml", "--file", "b.yaml"), "--file: given 2 times; give it once"),
    (("submit", "--queue", "cpu", "--queue=gpu"), "--queue: given 2 times; give it once"),
    (("list", "--limit", "1", "--limit", "2", "--limit", "3"), "--limit: given 3 times; give it once"),
    (("db", "upgrade", "--revision", "0010", "--revision", "0010"), "--revision: given 2 times; give it once"),
])
def test_a_misused_command_names_itself_or_the_option(args, line, cli_env):
    """Arguments that the command does not take: one line naming the command and where its usage is."""
    code, out, lines = klab_here(*args)
    assert (code, out, lines) == (2, "", [f"klab: error: {line}"])


@pytest.mark.parametrize("args,shown", [
    (("run", "--kernel", "npy:/tmp/a\x1b]0;pwn\x07.npy", "--no-store"),
     "kernel: no such file: /tmp/a\\x1b]0;pwn\\x07.npy"),
    (("run", "--bogus\x1b[31m"), "--bogus\\x1b[31m: no such option"),
    (("run", "--input", "npy:/tmp/\u202eypn.npy", "--no-store"), "input: no such file: /tmp/\\u202eypn.npy"),
    (("run", "--input", "npy:/tmp/a\u2028b.npy", "--no-store"), "input: no such file: /tmp/a\\u2028b.npy"),  # a line
    # separator: a new line to a terminal that plays it
    (("sweep", "--local", "--seed", "1,2", "--name", "bad\udcffname"),
     "--name: bad\\udcffname holds bytes that are not UTF-8"),  # the option named, not the value in its place
    (("list", "--tag=t\udcff"), "--tag: t\\udcff holds bytes that are not UTF-8"),
    (("show", "1\udcff"), "klab: error: 1\\udcff holds bytes that are not UTF-8"),
    (("show", "--json", "1\udcff"), "klab: error: 1\\udcff holds bytes"),  # an argument after a flag: no option's
    (("show", "--", "1\udcff"), "klab: error: 1\\udcff holds bytes"),
    (("export", "--ids=1,2", "x\udcff"), "klab: error: x\\udcff holds bytes"),
    (("db", "upgrade", "--revision", "1\udcff"), "klab: error: --revision: 1\\udcff holds bytes"),  # a subcommand's
])
def test_what_a_terminal_would_play_is_shown_as_written(args, shown, cli_env):
    """An escape sequence (a window title, colours), a bidi override or bytes that are not UTF-8 in a value: the
    error line played them on the terminal, or a traceback could not print them (a name of such bytes was stored)."""
    code, out, lines = klab_here(*args)
    assert code == 2 and out == "" and len(lines) == 1 and shown in lines[0], lines
    assert lines[0].isprintable()


def test_a_ctrl_c_that_a_driver_turned_into_its_own_error_is_an_interrupt(monkeypatch, cli_env):
    """Ctrl-C while SQLAlchemy's pool pinged a connection: psycopg raised "can't change 'autocommit' now" while the
    KeyboardInterrupt was handled, and `klab sweep` printed a traceback, exit 1, under its note of what it stored."""
    import click
    import psycopg
    from sqlalchemy.exc import ProgrammingError

    from service.cli import cli

    @click.command("pinged")
    def pinged() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            error = ProgrammingError("SELECT 1", {}, psycopg.ProgrammingError("can't change 'autocommit' now"))
            error.add_note("sweep 3 was stored in part")
            raise error  # noqa: B904 - raised while the interrupt is handled: its __context__, as psycopg's

    monkeypatch.setitem(cli.commands, "pinged", pinged)
    assert klab_here("pinged") == (130, "", ["klab: error: interrupted; sweep 3 was stored in part"])


def test_a_second_ctrl_c_keeps_what_the_first_noted(monkeypatch, cli_env):
    """Ctrl-C twice while `klab sweep` stored 200,000 jobs on PostgreSQL: the second came while the first unwound,
    and the line said `aborted` alone, of a sweep with 151,552 jobs stored and queued."""
    import click

    from service.cli import cli

    @click.command("twice")
    def twice() -> None:
        try:
            first = KeyboardInterrupt()
            first.add_note("sweep 5 was stored in part")
            raise first
        finally:
            raise KeyboardInterrupt  # the second, while the first is on its way out: its __context__

    @click.command("replaced")
    def replaced() -> None:
        try:
            other = ValueError()
            other.add_note("a note of another error")
            raise other
        except ValueError:
            raise KeyboardInterrupt from None  # its context set aside, as Python's traceback sets it aside

    monkeypatch.setitem(cli.commands, "twice", twice)
    monkeypatch.setitem(cli.commands, "replaced", replaced)
    assert klab_here("twice") == (130, "", ["", "klab: error: aborted; sweep 5 was stored in part"])  # click's \n
    assert klab_here("replaced") == (130, "", ["", "klab: error: aborted"])


@pytest.mark.parametrize("args", [(), ("db",)])
def test_a_group_without_a_command_prints_its_help_whole(args, cli_env):
    code, out, lines = klab_here(*args)
    assert code == 2 and out == ""  # as click's own: the usage on stderr, exit code 2
    assert lines[0] == f"Usage: klab {' '.join(args) + ' ' if args else ''}[OPTIONS] COMMAND [ARGS]..."
    assert "Commands:" in lines and not any(line.startswith("klab: error:") for line in lines)
    assert any(line.split()[:1] == ["upgrade" if args else "sweep"] for line in lines)  # one line a command


@pytest.mark.parametrize("args", [("run", "--epochs", "1"), ("list",)])
def test_a_klab_home_that_cannot_be_a_folder_is_one_line(args, files, cli_env, setenv):
    setenv(KLAB_DATABASE_URL=None, KLAB_HOME=str(files / "x.npy"))  # a file: was FileExistsError, exit 1
    assert klab_here(*args) == (2, "", [f"klab: error: KLAB_HOME: cannot make the folder {files / 'x.npy'}: "
                                        f"{files / 'x.npy'} is a file, not a folder"])


@pytest.mark.parametrize("args", [("--lr", "1e300"), ("--lr", "1e308"), ("--lr", "1e38"),
                                  ("--method", "momentum", "--lr", "1e300"),
                                  ("--input", "random:8x8", "--kernel", "random:3x3", "--bias", "0.5", "--lr", "1e38"),
                                  ("--input", "random:8x8", "--kernel", "random:3x3", "--method", "momentum", "--lr",
                                   "1e300")])
def test_a_job_that_blows_up_says_so_without_numpys_warnings(args, cli_env):
    code, out, lines = klab_here("run", "--no-store", *args)  # 1e300: a RuntimeWarning in matmul; 1e38 (weights of
    # inf and NaN) one in the gap's subtraction; momentum at 1e300 a traceback, or one in the heavy ball's rate
    assert (code, lines) == (0, []) and out.startswith("diverged (not stored)")


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "1e9"])
def test_workers_waits_a_time_it_can_wait(value, cli_env):
    assert klab_here("workers", "--timeout", value)[0:2] == (2, "")  # nan and inf were tracebacks, 0 "no workers"
    assert klab_here("workers", "--timeout", value)[2][0].startswith("klab: error: --timeout: ")


def test_a_sweep_value_that_is_a_number_gets_no_range_hint(cli_env):
    code, _, lines = klab_here("sweep", "--seed", "ten")
    assert code == 2 and lines == ["klab: error: seed: not a number: 'ten'"]


SUBPROCESS_CASES = ["kernel-date-in-yaml", "image-over-pillow-limit", "log-range-to-infinity", "npy-of-pickled-objects",
                    "yaml-aliases-past-the-files-size-in-a-sweep"]


def test_bad_input_in_a_real_process_prints_exactly_one_line(files, database, redis_url, tmp_path):
    """A few cases through the console script itself: no warning or traceback reaches the terminal."""
    import redis

    by_name = {c.name: c for c in CASES}
    base = clean_env(tmp_path / "home", database, KLAB_BROKER_URL=redis_url)
    procs = {name: Client({**base, **by_name[name].env}, *[a.replace("{d}", str(files)) for a in by_name[name].args])
             for name in SUBPROCESS_CASES}
    failures = []
    for name, client in procs.items():
        done = client.result(120)
        lines = done.stderr.splitlines()
        if done.returncode != 2 or done.stdout or len(lines) != 1 or not names(lines[0], by_name[name].field):
            failures.append((name, done.returncode, done.stdout, done.stderr[-800:]))
    assert failures == []
    assert stored(database)["jobs"] == 0
    assert redis.Redis.from_url(redis_url).dbsize() == 0


LIMIT_CASES = [
    (("run", "--epochs", "100001"), {}, "KLAB_MAX_EPOCHS", "epochs: 100001 is more than the limit 100000"),
    (("run", "--input", "random:4097x4097"), {}, "KLAB_MAX_INPUT_ELEMENTS",
     "input: has 16785409 elements, more than the limit 16777216"),
    (("run", "--input", "image:{d}/large.png"), {}, "KLAB_MAX_INPUT_ELEMENTS",
     "large.png is 5000x5000, 25000000 pixels, more than the limit 16777216"),
    (("run", "--kernel", "random:65x65", "--input", "random:80x80"), {}, "KLAB_MAX_KERNEL_ELEMENTS",
     "kernel: has 4225 elements, more than the limit 4096"),
    (("run", "--input", "npy:{d}/nan.npy"), {"KLAB_MAX_FILE_BYTES": "10"}, "KLAB_MAX_FILE_BYTES",
     "input: file is 160 bytes, more than the limit 10"),
    (("sweep", "--seed", "0..9"), {"KLAB_MAX_SWEEP_JOBS": "3"}, "KLAB_MAX_SWEEP_JOBS",
     "seed: range 0..9 has 10 values, more than the limit 3"),
    (("sweep", "--seed", "0..2", "--lr", "0.1,0.2"), {"KLAB_MAX_SWEEP_JOBS": "5"}, "KLAB_MAX_SWEEP_JOBS",
     "sweep: 6 jobs, more than the limit 5"),
    (("sweep", "--lr", "0.1:1:9"), {"KLAB_MAX_SWEEP_JOBS": "5"}, "KLAB_MAX_SWEEP_JOBS",
     "lr: 0.1:1:9: the count must be between 1 and 5"),  # before the 9 values are made (the grid's check would
    # name the variable too, after making a count of 10**9)
]


@pytest.mark.parametrize("args,env,variable,words", LIMIT_CASES, ids=[c[2] + "-" + c[0][1] for c in LIMIT_CASES])
def test_every_limit_names_its_variable(args, env, variable, words, files, cli_env, setenv):
    """A user over a limit learns which variable raises it (issue 12: only KLAB_MAX_EPOCHS said so), from the check
    of that limit."""
    setenv(**env)
    code, out, lines = klab_here(*[a.replace("{d}", str(files)) for a in args])
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("klab: error: ") and f"{words} ({variable})" in lines[0], lines[0]


def test_help_is_shown_whatever_else_the_line_holds(cli_env):
    """An option given twice was refused before click's --help could show the usage."""
    code, out, lines = klab_here("run", "--seed", "1", "--seed", "2", "--help")
    assert (code, lines) == (0, []) and out.startswith("Usage: klab run [OPTIONS]")


def test_a_default_past_a_lowered_limit_is_no_mistake_of_a_job_file(cli_env, database, setenv, tmp_path: Path):
    """KLAB_MAX_EPOCHS=5 and a JSONL file whose jobs say 5 epochs or fewer: the default (10), checked as a flag given
    for every job, refused the file (`epochs: 10 is more than the limit 5`, a value nobody gave), and a job of 6 was
    told of that 10."""
    setenv(KLAB_MAX_EPOCHS="5")
    (tmp_path / "ok.jsonl").write_text('{"epochs": 5}\n{"epochs": 4}\n')
    (tmp_path / "bad.jsonl").write_text('{"epochs": 5}\n{"epochs": 6}\n')
    try:
        code, _, lines = klab_here("submit", "-f", str(tmp_path / "bad.jsonl"))
        assert (code, lines) == (2, ["klab: error: epochs: 6 is more than the limit 5 (KLAB_MAX_EPOCHS) (job 2 of "
                                     f"{tmp_path / 'bad.jsonl'})"])
        code, _, lines = klab_here("submit", "-f", str(tmp_path / "ok.jsonl"))
        assert code == 3 and lines[0].startswith("klab: error: cannot reach the broker"), lines  # valid: sent
        assert stored(database) == {"jobs": 0, "sweeps": 0, "datasets": 0, "epochs": 0}
    finally:
        clear(database)


def test_values_at_their_limits_are_no_mistake(files, cli_env, database, setenv, tmp_path: Path):
    """A job file of exactly KLAB_MAX_SWEEP_JOBS jobs, a range of as many values, a sweep's name of 200 characters
    and a tag of 100 are valid: each goes on to the broker, which is not there (exit code 3: nothing was refused as
    bad input)."""
    setenv(KLAB_MAX_SWEEP_JOBS="11")
    try:
        for args in (("submit", "-f", str(files / "eleven.jsonl")), ("sweep", "--seed", "1..11"),
                     ("sweep", "--seed", "1,2", "--name", "é" * 200, "--tag", "t" * 100)):
            code, _, lines = klab_here(*args)
            assert code == 3 and lines[0].startswith("klab: error: cannot reach the broker"), (args, lines)
            assert stored(database)["jobs"] == 0
    finally:
        clear(database)


def test_an_unknown_queue_for_a_files_jobs_is_the_flags_mistake(cli_env, database, tmp_path: Path):
    """`klab submit -f jobs.jsonl --queue nosuch` was told of the first job: `... (job 1 of jobs.jsonl)`."""
    (tmp_path / "jobs.jsonl").write_text('{"epochs": 5}\n{"epochs": 4}\n')
    try:
        code, _, lines = klab_here("submit", "-f", str(tmp_path / "jobs.jsonl"), "--queue", "nosuch")
        assert (code, lines) == (2, ["klab: error: queue: unknown queue 'nosuch'; expected cpu or gpu"])
        assert stored(database) == {"jobs": 0, "sweeps": 0, "datasets": 0, "epochs": 0}
    finally:
        clear(database)


@pytest.mark.parametrize("args,said", [
    (("--input", "random:3x6x8,random:2x6x8", "--kernel", "random:1x3x2x2"),
     "kernel: has 3 input channel(s) but the input has 2 (with the sweep's input 'random:2x6x8')"),
    (("--input", "edge:6x8,edge:3x3", "--kernel", "random:4x4", "--epochs", "3,4"),
     "kernel: is 4x4, larger than the 3x3 input (with the sweep's input 'edge:3x3')"),  # epochs build nothing
    (("--input", "random:3x6x8,random:2x6x8", "--kernel", "random:1x3x2x2,random:1x2x2x2"),
     "kernel: has 2 input channel(s) but the input has 3 (the sweep's value 'random:1x2x2x2', with input "
     "'random:3x6x8')"),
    (("--input", "edge:6x8", "--kernel", "d2l,random:1x3x2x2"),  # as before
     "kernel: has 3 input channel(s) but the input has 1 (the sweep's value 'random:1x3x2x2')"),
    (("--input", "random:3x6x8,random:2x6x8", "--kernel", "random:1x3x2x2", "--method", "d2l-manual,adam"),
     "kernel: has 3 input channel(s) but the input has 2 (with the sweep's input 'random:2x6x8')"),  # no method
    (("--input", "edge:6x8,checker:8x8", "--bias", "1e39"),  # wrong whatever the input: none named
     "bias: 1e+39 is beyond float32's range, what the weights train in"),
    (("--kernel", "[[1,-1]],[[2e38,-2e38]]", "--bias", "2e38"),  # the labels one kernel makes with it
     "bias: the labels overflow: values too large for float32 (with the sweep's kernel '[[2e38,-2e38]]')"),
])
def test_a_job_of_a_sweep_that_does_not_fit_names_the_swept_values_it_was_built_from(args, said, cli_env, database):
    """With the input swept, a kernel that did not fit one of them named neither: `kernel: has 3 input channel(s)
    but the input has 2`, out of several inputs."""
    try:
        code, _, lines = klab_here("sweep", "--local", *args)
        assert (code, lines) == (2, [f"klab: error: {said}"])
        assert stored(database) == {"jobs": 0, "sweeps": 0, "datasets": 0, "epochs": 0}
    finally:
        clear(database)
