"""Inputs, kernels and labels from the CLI's forms, checked against plain numpy, Pillow and scipy."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from scipy.signal import correlate2d

from service.errors import BadInput
from service.jobs import inputs
from service.jobs.problem import build_problem
from service.jobs.spec import JobSpec

# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def test_edge_6x8_is_the_books_image():
    x, ndim = inputs.parse_input("edge:6x8", 0)
    book = np.ones((6, 8))
    book[:, 2:6] = 0
    assert ndim == 2
    assert x.dtype == np.float32 and x.shape == (1, 1, 6, 8)
    assert np.array_equal(x[0, 0], book)


@pytest.mark.parametrize("h,w", [(3, 4), (5, 10), (7, 13)])
def test_edge_zeroes_the_middle_half_of_the_columns(h, w):
    x, _ = inputs.parse_input(f"edge:{h}x{w}", 0)
    expected = np.ones((h, w))
    expected[:, w // 4 : 3 * w // 4] = 0
    assert np.array_equal(x[0, 0], expected)


def test_ones_checker_and_diagonal():
    assert np.array_equal(inputs.parse_input("ones:3x5", 0)[0][0, 0], np.ones((3, 5)))
    checker = inputs.parse_input("checker:4x5", 0)[0][0, 0]
    assert np.array_equal(checker, [[(i + j) % 2 for j in range(5)] for i in range(4)])
    diagonal = inputs.parse_input("diagonal:6x6", 0)[0][0, 0]
    assert np.array_equal(diagonal, np.triu(np.ones((6, 6))))  # a diagonal edge, ones on and above it
    tall = inputs.parse_input("diagonal:8x4", 0)[0][0, 0]
    assert tall[0].tolist() == [1, 1, 1, 1] and tall[-1].tolist() == [0, 0, 0, 0]
    # the edge from corner to corner whatever the aspect: column j is one from row 2j down (its first and last rows
    # held either way)
    assert np.array_equal(tall, [[1.0 if j * 8 >= i * 4 else 0.0 for j in range(4)] for i in range(8)])
    assert tall[2].tolist() == [0, 1, 1, 1] and tall[5].tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("dims,shape,ndim", [("5x7", (1, 1, 5, 7), 2), ("3x5x7", (1, 3, 5, 7), 3),
                                              ("4x2x5x7", (4, 2, 5, 7), 4)])
def test_random_inputs_are_seeded_standard_normal(dims, shape, ndim):
    x, got_ndim = inputs.parse_input(f"random:{dims}", 7)
    assert x.shape == shape and got_ndim == ndim
    again, _ = inputs.parse_input(f"random:{dims}", 7)
    other, _ = inputs.parse_input(f"random:{dims}", 8)
    assert np.array_equal(x, again)
    assert not np.array_equal(x, other)
    expected = np.random.default_rng([inputs.INPUT_STREAM, 7]).standard_normal(tuple(int(d) for d in dims.split("x")))
    assert np.array_equal(x.reshape(expected.shape), expected.astype(np.float32))


def test_random_input_kernel_and_noise_use_different_streams():
    """Each drawn from its own stream of the seed: labels' noise drawn from the input's stream is the input again,
    scaled (a check of the input against the kernel alone passed so)."""
    x, _ = inputs.parse_input("random:2x2", 5)
    k = inputs.parse_kernel("random:2x2", 5)
    job = {"input": "random:2x2", "kernel": "[[1]]", "seed": 5}
    noise = (build_problem(JobSpec.parse({**job, "noise": 0.5})).y - build_problem(JobSpec.parse(job)).y) / 0.5
    draws = [np.asarray(a, dtype=np.float64).ravel()[:4] for a in (x, k, noise)]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(draws[i], draws[j], rtol=1e-3), (i, j, draws)


@pytest.mark.parametrize("raw,field_text", [
    ("foo:6x8", "unknown input"), ("edge:6x8x", "dimensions"), ("edge:6", "dimensions"), ("edge:0x8", "positive"),
    ("random:1x2x3x4x5", "dimensions"), ("ones:abc", "dimensions"), ("edge", "dimensions"),
])
def test_bad_input_forms_name_the_input_field(raw, field_text):
    with pytest.raises(BadInput) as exc:
        inputs.parse_input(raw, 0)
    assert exc.value.field == "input"
    assert field_text in str(exc.value)
    assert str(exc.value).startswith("input: ")


def test_input_element_limit_comes_from_the_environment(setenv):
    setenv(KLAB_MAX_INPUT_ELEMENTS="47")
    with pytest.raises(BadInput, match="^input: .*limit 47"):
        inputs.parse_input("edge:6x8", 0)
    setenv(KLAB_MAX_INPUT_ELEMENTS="48")
    assert inputs.parse_input("edge:6x8", 0)[0].size == 48


@pytest.mark.parametrize(("raw", "shown"), [
    ("edge:9999999999x8", "79999999992"),  # 10 digits were "expected dimensions like 6x8" of a text of that form
    ("random:12345678x2x2x1", "49382712"),
    ("random:" + "9" * 300 + "x" + "9" * 300, "about 10^599"),  # not a line of 600 digits
])
def test_a_dimension_of_many_digits_is_told_the_limit_it_passes(raw, shown):
    with pytest.raises(BadInput, match=rf"^input: has {re.escape(shown)} elements, more than the limit 16777216 "
                                       r"\(KLAB_MAX_INPUT_ELEMENTS\)$"):
        inputs.parse_input(raw, 0)
    with pytest.raises(BadInput, match=r"^kernel: has .* elements, more than the limit 4096 \(KLAB_MAX_KERNEL_"):
        inputs.parse_kernel(raw.replace("edge:", "random:"), 0)


# ---------------------------------------------------------------------------------------------------
# Files: npy and images
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,expected", [((5, 6), (1, 1, 5, 6)), ((2, 5, 6), (1, 2, 5, 6)),
                                            ((3, 2, 5, 6), (3, 2, 5, 6))])
def test_npy_inputs_of_two_to_four_dimensions(tmp_path, shape, expected):
    array = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 7
    path = tmp_path / "x.npy"
    np.save(path, array)
    x, ndim = inputs.parse_input(f"npy:{path}", 0)
    assert x.shape == expected and ndim == len(shape)
    assert np.array_equal(x.reshape(shape), array.astype(np.float32))


def test_an_npy_input_is_held_to_the_element_limit_as_a_made_one_is(tmp_path, setenv):
    """The npy input's own check of KLAB_MAX_INPUT_ELEMENTS: without it a 6x8 file under a limit of 40 trained."""
    np.save(tmp_path / "x.npy", np.ones((6, 8)))
    setenv(KLAB_MAX_INPUT_ELEMENTS="40")
    with pytest.raises(BadInput) as caught:
        inputs.parse_input(f"npy:{tmp_path / 'x.npy'}", 0)
    assert str(caught.value) == "input: has 48 elements, more than the limit 40 (KLAB_MAX_INPUT_ELEMENTS)"
    setenv(KLAB_MAX_INPUT_ELEMENTS="48")  # the limit itself is allowed
    assert inputs.parse_input(f"npy:{tmp_path / 'x.npy'}", 0)[0].shape == (1, 1, 6, 8)


def test_npy_of_integers_is_accepted(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(12, dtype=np.int16).reshape(3, 4))
    assert inputs.load_npy("input", str(tmp_path / "i.npy")).dtype == np.float64


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_of_every_format_version_and_order_is_read_as_numpy_reads_it(tmp_path, version):
    """The header is read before the array (a header claiming more than the file holds is refused): every version
    numpy writes, big-endian and Fortran order included, still loads (3.0 was refused once)."""
    array = np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4))
    with (tmp_path / "a.npy").open("wb") as fh:
        np.lib.format.write_array(fh, array, version=version)
    assert np.array_equal(inputs.load_npy("input", str(tmp_path / "a.npy")), array)


@pytest.mark.parametrize("content,message", [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), "NaN or infinite"),
    (np.array([{"a": 1}, 2], dtype=object), "Python objects"),
    (np.array(["a", "b"]), "only numbers"),
    (np.zeros((0, 3)), "empty"),
])
def test_bad_npy_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(BadInput, match=message) as exc:
        inputs.load_npy("input", str(path))
    assert exc.value.field == "input"


def test_a_pickled_npy_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="objects"):
        inputs.parse_input(f"npy:{path}", 0)
    assert not marker.exists()


def test_npy_of_five_dimensions_and_missing_or_garbage_files(tmp_path):
    np.save(tmp_path / "x5.npy", np.zeros((1, 1, 1, 2, 2)))
    with pytest.raises(BadInput, match="^input: .*5 dimensions"):
        inputs.parse_input(f"npy:{tmp_path / 'x5.npy'}", 0)
    with pytest.raises(BadInput, match="^input: no such file"):
        inputs.parse_input(f"npy:{tmp_path / 'missing.npy'}", 0)
    for there in (tmp_path, "/dev/null"):  # a path that exists is not said to be missing
        with pytest.raises(BadInput, match=f"^labels: not a file: {there}$"):
            inputs.parse_labels(f"npy:{there}")
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "missing.npy")
    with pytest.raises(BadInput, match="^input: cannot read .*a.npy: Too many levels of symbolic links$"):
        inputs.parse_input(f"npy:{tmp_path / 'a.npy'}", 0)  # was "no such file", of a file ls lists
    with pytest.raises(BadInput, match="^kernel: a link to no file: .*dangling.npy$"):
        inputs.parse_kernel(f"npy:{tmp_path / 'dangling.npy'}", 0)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    with pytest.raises(BadInput, match="^input: ") as exc:  # numpy takes a non-npy file for a pickle
        inputs.parse_input(f"npy:{tmp_path / 'garbage.npy'}", 0)
    assert "garbage.npy" in exc.value.message


def test_grayscale_png_is_scaled_to_unit_interval(tmp_path):
    pixels = np.array([[0, 51, 255], [102, 204, 153]], dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "g.png")
    x, ndim = inputs.parse_input(f"image:{tmp_path / 'g.png'}", 0)
    assert x.shape == (1, 1, 2, 3) and ndim == 3
    np.testing.assert_allclose(x[0, 0], pixels / 255.0, rtol=1e-7)


def test_a_16_bit_grayscale_png_is_scaled_by_its_own_range(tmp_path):
    pixels = np.array([[0, 1000, 65535], [300, 40000, 255]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    x, _ = inputs.parse_input(f"image:{tmp_path / 'g16.png'}", 0)
    np.testing.assert_allclose(x[0, 0], pixels / 65535.0, rtol=1e-7)  # was 1.0 wherever a pixel was 255 or more
    rgb, _ = inputs.parse_input(f"image:{tmp_path / 'g16.png'}:rgb", 0)
    assert rgb.shape == (1, 3, 2, 3) and all(np.array_equal(rgb[0, c], x[0, 0]) for c in range(3))


def test_rgb_image_gives_three_channels(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    rgb[0, 3] = (10, 200, 60)  # one pixel of its own, top right: where it lands shows a flip or a transpose
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    x, _ = inputs.parse_input(f"image:{tmp_path / 'c.png'}:rgb", 0)
    assert x.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(x[0], rgb.transpose(2, 0, 1) / 255, rtol=1e-7)
    gray, _ = inputs.parse_input(f"image:{tmp_path / 'c.png'}", 0)
    assert gray.shape == (1, 1, 4, 5)  # Pillow's own luminance, not a channel (red, here, would be 255 and 10)
    np.testing.assert_allclose(gray[0, 0], np.asarray(Image.fromarray(rgb, mode="RGB").convert("L")) / 255, rtol=1e-7)
    assert gray[0, 0, 0, 0] != gray[0, 0, 0, 3]


def test_jpeg_is_accepted_and_other_formats_or_text_are_not(tmp_path):
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8), mode="L").save(tmp_path / "j.jpg")
    x, _ = inputs.parse_input(f"image:{tmp_path / 'j.jpg'}", 0)
    assert x.shape == (1, 1, 8, 8) and abs(float(x.mean()) - 200 / 255) < 0.02
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / "g.gif")
    with pytest.raises(BadInput, match="^input: .*not a PNG or JPEG"):
        inputs.parse_input(f"image:{tmp_path / 'g.gif'}", 0)
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(BadInput, match="^input: .*not a PNG or JPEG"):
        inputs.parse_input(f"image:{tmp_path / 't.png'}", 0)


def test_an_image_of_exactly_the_limits_pixels_is_taken(tmp_path, setenv):
    """An 8x6 PNG under KLAB_MAX_INPUT_ELEMENTS=48 is at the limit, not past it; one pixel fewer allowed refuses it."""
    Image.new("L", (8, 6)).save(tmp_path / "a.png")
    setenv(KLAB_MAX_INPUT_ELEMENTS="48")
    x, ndim = inputs.parse_input(f"image:{tmp_path / 'a.png'}", 0)
    assert x.shape == (1, 1, 6, 8) and ndim == 3
    setenv(KLAB_MAX_INPUT_ELEMENTS="47")
    with pytest.raises(BadInput) as caught:
        inputs.parse_input(f"image:{tmp_path / 'a.png'}", 0)
    assert str(caught.value) == (f"input: {tmp_path / 'a.png'} is 8x6, 48 pixels, more than the limit 47 "
                                 "(KLAB_MAX_INPUT_ELEMENTS)")


def test_a_jpeg_holding_several_pictures_is_read_as_its_first(tmp_path):
    """A phone's or camera's JPEG with a second picture after the first (Pillow's MPO) was refused: `is MPO, not a
    PNG or JPEG image`."""
    first = Image.new("L", (8, 6), 10)
    first.save(tmp_path / "two.jpg", format="MPO", save_all=True, append_images=[Image.new("L", (8, 6), 200)])
    first.save(tmp_path / "one.jpg", format="JPEG")
    with Image.open(tmp_path / "two.jpg") as img:
        assert img.format == "MPO" and img.n_frames == 2
    x, _ = inputs.parse_input(f"image:{tmp_path / 'two.jpg'}", 0)
    np.testing.assert_array_equal(x, inputs.parse_input(f"image:{tmp_path / 'one.jpg'}", 0)[0])


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------

def test_kernel_presets():
    assert inputs.parse_kernel("d2l", 0).tolist() == [[1.0, -1.0]]
    assert inputs.parse_kernel("edge-v", 0).tolist() == [[1.0], [-1.0]]
    assert inputs.parse_kernel("second-diff", 0).tolist() == [[1.0, -2.0, 1.0]]
    assert inputs.parse_kernel("sobel-x", 0).tolist() == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    assert np.array_equal(inputs.parse_kernel("sobel-y", 0), inputs.parse_kernel("sobel-x", 0).T)
    # the textbook kernels, written out here independently of service/jobs/inputs.py
    assert inputs.parse_kernel("laplacian", 0).tolist() == [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    assert inputs.parse_kernel("sharpen", 0).tolist() == [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
    np.testing.assert_array_equal(inputs.parse_kernel("box3", 0), np.full((3, 3), 1 / 9))
    np.testing.assert_array_equal(inputs.parse_kernel("gauss3", 0), np.outer([1, 2, 1], [1, 2, 1]) / 16)
    assert np.array_equal(inputs.parse_kernel("identity3", 0), np.pad([[1.0]], 1))


def test_kernel_literals_random_and_npy(tmp_path):
    assert inputs.parse_kernel("[[1, -1]]", 0).tolist() == [[1.0, -1.0]]
    four = inputs.parse_kernel("[[[[1, 2]], [[3, 4]]]]", 0)
    assert four.shape == (1, 2, 1, 2)
    r = inputs.parse_kernel("random:2x3x4x5", 3)
    assert r.shape == (2, 3, 4, 5)
    assert np.array_equal(r, inputs.parse_kernel("random:2x3x4x5", 3))
    # the seed's own stream of kernels: another seed draws another kernel
    assert np.array_equal(r, np.random.default_rng([inputs.KERNEL_STREAM, 3]).standard_normal((2, 3, 4, 5)))
    assert not np.allclose(r, inputs.parse_kernel("random:2x3x4x5", 4))
    np.save(tmp_path / "k.npy", np.eye(3))
    assert np.array_equal(inputs.parse_kernel(f"npy:{tmp_path / 'k.npy'}", 0), np.eye(3))


@pytest.mark.parametrize("raw,message", [
    ("[[1, -1]", "not a valid JSON"), ("[[1, 2], [3]]", "ragged"), ("[1, 2]", "2-D"), ("[[[1]]]", "3-D"),
    ('[[1, "a"]]', "non-numeric"), ("[[true, 1]]", "non-numeric"), ("[[]]", "empty"), ("[[NaN, 1]]", "NaN"),
    ("[[1e999, 1]]", "NaN or infinite"), ("sobel", "unknown kernel"), ("random:3", "dimensions"),
    ("random:2x2x2", "2 numbers or 4 numbers"),
])
def test_bad_kernels_name_the_kernel_field(raw, message):
    with pytest.raises(BadInput, match=message) as exc:
        inputs.parse_kernel(raw, 0)
    assert exc.value.field == "kernel"


def test_kernel_element_limit(setenv):
    setenv(KLAB_MAX_KERNEL_ELEMENTS="8")
    assert inputs.parse_kernel("random:2x4", 0).shape == (2, 4)
    with pytest.raises(BadInput, match="^kernel: .*limit 8"):
        inputs.parse_kernel("random:3x3", 0)
    with pytest.raises(BadInput, match="^kernel: .*limit 8"):
        inputs.parse_kernel("sobel-x", 0)


def test_labels_must_be_npy_of_two_to_four_dimensions(tmp_path):
    with pytest.raises(BadInput, match="^labels: expected npy:PATH"):
        inputs.parse_labels("labels.npy")
    np.save(tmp_path / "l1.npy", np.zeros(5))
    with pytest.raises(BadInput, match="^labels: "):
        inputs.parse_labels(f"npy:{tmp_path / 'l1.npy'}")
    np.save(tmp_path / "l2.npy", np.ones((6, 7)))
    assert inputs.parse_labels(f"npy:{tmp_path / 'l2.npy'}").shape == (6, 7)


# ---------------------------------------------------------------------------------------------------
# Labels against scipy.signal.correlate2d
# ---------------------------------------------------------------------------------------------------

def scipy_labels(x: np.ndarray, kernel: np.ndarray, bias: float | None = None) -> np.ndarray:
    """N x C_out x Ho x Wo: each output channel the sum over input channels of 'valid' correlations."""
    x = x.astype(np.float64)
    out = np.stack([np.stack([sum(correlate2d(x[n, c], kernel[o, c], mode="valid") for c in range(x.shape[1]))
                              for o in range(kernel.shape[0])]) for n in range(x.shape[0])])
    return out if bias is None else out + bias


@pytest.mark.parametrize("input_,kernel,bias", [
    ("edge:6x8", "d2l", None),
    ("edge:6x8", "edge-v", None),
    ("checker:7x9", "sobel-x", None),
    ("diagonal:8x8", "laplacian", 0.5),
    ("ones:5x5", "gauss3", None),
    ("random:9x11", "sharpen", -1.5),
    ("random:9x11", "random:3x2", None),
    ("random:3x9x10", "random:2x3x3x3", None),
    ("random:4x3x9x10", "random:2x3x2x4", 0.25),
    ("random:2x1x6x6", "second-diff", None),
])
def test_labels_agree_with_scipy_correlate2d(input_, kernel, bias):
    spec = JobSpec.parse({"input": input_, "kernel": kernel, "bias": bias, "seed": 3})
    problem = build_problem(spec)
    k = problem.true_kernel
    expected = scipy_labels(problem.x, k, bias)
    assert problem.y.shape == expected.shape
    np.testing.assert_allclose(problem.y, expected, rtol=1e-6, atol=1e-6)  # the engine's float32 labels
    np.testing.assert_allclose(inputs.correlate(problem.x, k), scipy_labels(problem.x, k), rtol=1e-12, atol=1e-12)


def test_the_books_labels():
    y = inputs.correlate(inputs.parse_input("edge:6x8", 0)[0], np.array([[[[1.0, -1.0]]]]))
    assert y.shape == (1, 1, 6, 7)
    assert np.array_equal(y[0, 0], np.tile([0.0, 1, 0, 0, 0, -1, 0], (6, 1)))


def test_label_noise_is_seeded_and_has_the_requested_scale():
    base = build_problem(JobSpec.parse({"input": "random:40x50", "kernel": "sobel-x", "seed": 1}))
    noisy = build_problem(JobSpec.parse({"input": "random:40x50", "kernel": "sobel-x", "seed": 1, "noise": 0.5}))
    again = build_problem(JobSpec.parse({"input": "random:40x50", "kernel": "sobel-x", "seed": 1, "noise": 0.5}))
    assert np.array_equal(noisy.y, again.y)
    residual = (noisy.y - base.y).astype(np.float64)
    assert abs(residual.std() - 0.5) < 0.05 and abs(residual.mean()) < 0.05
    expected = 0.5 * inputs.rng(1, inputs.NOISE_STREAM).standard_normal(base.y.shape)
    np.testing.assert_allclose(residual, expected, atol=1e-5)


def test_noise_that_could_overflow_the_labels_with_some_seed_is_refused_whatever_the_seed():
    """At noise 1.2e38 seed 1's labels fit float32 and seed 6's did not: a sweep validated with its first seed stored
    jobs its worker then failed. No standard normal draw of numpy's is larger than NORMAL_MOST."""
    from service.jobs.problem import NORMAL_MOST, build_problem
    from service.jobs.spec import JobSpec

    draws = np.random.default_rng(0).standard_normal(2_000_000)
    assert 5 < np.abs(draws).max() < NORMAL_MOST
    for seed in range(8):
        with pytest.raises(BadInput, match=r"^noise: 1\.2e\+38 can make the labels too large for float32 with some "
                                           r"seeds .*; at most 2\.77e\+37 with these labels$"):
            build_problem(JobSpec.parse({"noise": 1.2e38, "seed": seed}))
        assert np.isfinite(build_problem(JobSpec.parse({"noise": 2.7e37, "seed": seed})).y).all()


def test_random_draws_that_could_overflow_the_labels_with_some_seed_are_refused_whatever_the_seed(tmp_path):
    """A random input times a kernel of 1e38 fits float32 for seed 57 and not for seed 58 (a draw of 3.43): a sweep
    validated with its first seed stored seed 58's job, which its worker failed. A random kernel on an input of huge
    values likewise. The bound is the draws' largest, NORMAL_MOST, times the kernel's (or the window's) absolute sum."""
    from service.jobs.problem import NORMAL_MOST, build_problem
    from service.jobs.spec import JobSpec

    def build(**fields):
        return build_problem(JobSpec.parse({"epochs": 1, **fields}))

    x58, _ = inputs.parse_input("random:6x8", 58)
    assert float(np.abs(x58).max()) * 1e38 > float(np.finfo(np.float32).max)  # the seed the old check let through
    assert np.isfinite(build(input="random:6x8", kernel="[[1e37]]", seed=57).y).all()
    for seed in (57, 58):
        with pytest.raises(BadInput, match=r"^kernel: can make the labels too large for float32 with some seeds"):
            build(input="random:6x8", kernel="[[1e38]]", seed=seed)
        with pytest.raises(BadInput, match=r"^bias: can make the labels too large"):  # the kernel alone fits
            build(input="random:6x8", kernel="[[1e37]]", bias=3e38, seed=seed)
    # noise's room counts the most any seed's labels reach: 12.3e37 here, not this seed's largest label
    most = NORMAL_MOST * 1e37
    room = (float(np.finfo(np.float32).max) - most) / NORMAL_MOST
    with pytest.raises(BadInput, match=rf"^noise: .*; at most {re.escape(f'{room:.3g}')} with these labels$"):
        build(input="random:6x8", kernel="[[1e37]]", noise=room * 1.01, seed=57)
    assert np.isfinite(build(input="random:6x8", kernel="[[1e37]]", noise=room * 0.99, seed=58).y).all()

    window = np.zeros((6, 8))
    window[2, 3] = window[2, 4] = window[3, 3] = 2e37  # a 2x2 window sums 6e37, one value 2e37
    np.save(tmp_path / "huge.npy", window)
    with pytest.raises(BadInput, match=r"^input: can make the labels too large for float32 with some seeds"):
        build(input=f"npy:{tmp_path / 'huge.npy'}", kernel="random:2x2")
    assert np.isfinite(build(input=f"npy:{tmp_path / 'huge.npy'}", kernel="random:1x1").y).all()
    assert np.isfinite(build(input="random:6x8", kernel="random:3x3", seed=58).y).all()
    # one value of 2e37 alone in its windows: 12.3 x 2e37 fits, where the whole input's sum times 12.3 (four
    # windows' worth) does not: the window's bound takes it
    lone = np.zeros((6, 8))
    lone[2, 3] = 2e37
    np.save(tmp_path / "lone.npy", lone)
    assert np.isfinite(build(input=f"npy:{tmp_path / 'lone.npy'}", kernel="random:2x2").y).all()


def test_a_made_input_or_kernel_is_kept_by_its_numbers_and_trains_as_typed(tmp_path):
    """`edge:06x8` trained as `edge:6x8` but was another input to a sweep and to `compare --group-by input`, as
    `image:PATH:gray` was to `image:PATH`. Each is kept as the text of what it trains; a text the parser refuses,
    or one it reads otherwise, is kept as typed (its message names it so)."""
    from service.jobs.choices import input_text, kernel_text

    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(tmp_path / "a.png")
    png = tmp_path / "a.png"
    kept = {"edge:06x08": "edge:6x8", "random:01x2x003": "random:1x2x3", "ones:0010x2": "ones:10x2",
            f"image:{png}:gray": f"image:{png}", "checker:3x4": "checker:3x4", f"image:{png}:rgb": f"image:{png}:rgb",
            f"image:{png}:rgb:gray": f"image:{png}:rgb:gray", "image:a:gray:gray": "image:a:gray:gray",
            "edge:00x8": "edge:00x8", "edge:06x8x1": "edge:06x8x1", "edge: 06x8": "edge: 06x8", "npy:06x8": "npy:06x8",
            "Edge:06x8": "Edge:06x8", "random:1x1x1x1x01": "random:1x1x1x1x01"}
    assert {t: input_text(t) for t in kept} == kept
    for typed, text in kept.items():
        if text == typed:
            continue
        assert all(np.array_equal(a, b) for a, b in zip(inputs.parse_input(typed, 5), inputs.parse_input(text, 5)))
    for typed in ("edge:00x8", "edge:06x8x1", "random:1x1x1x1x01"):
        with pytest.raises(BadInput, match=re.escape(repr(typed.partition(":")[2]))):
            inputs.parse_input(typed, 0)
    kernels = {"random:02x03": "random:2x3", "random:1x01x2x2": "random:1x1x2x2", "random:02x2x2": "random:02x2x2",
               "d2l": "d2l", "npy:02x2": "npy:02x2"}
    assert {t: kernel_text(t) for t in kernels} == kernels
    literals = {"[[1.0, 0.5e-1]]": "[[1, 0.05]]", "[[1e20,-1]]": "[[1e+20, -1]]", "[[1e300, 1]]": "[[1e+300, 1]]",
                "[[1e15, -2.0]]": "[[1000000000000000, -2]]", "[[-0.0, 3]]": "[[0, 3]]"}  # whole numbers as ints
    assert {t: kernel_text(t) for t in literals} == literals  # while exact and short: 1e20 not 21 digits, 1e300 not 301
    assert np.array_equal(inputs.parse_kernel("random:02x03", 7), inputs.parse_kernel("random:2x3", 7))
    assert JobSpec.parse({"input": " edge:06x8 ", "kernel": "random:01x2"}).model_dump()["input"] == "edge:6x8"
    assert JobSpec.parse({"input": "edge:6x8", "kernel": "random:01x2"}).kernel == "random:1x2"


def test_a_longdouble_past_float64s_range_is_too_large_without_numpys_warning(tmp_path):
    """Every value finite, but past float64's range: numpy's 'overflow encountered in cast' went to stderr beside the
    line, which said the array 'contains NaN or infinite values'."""
    import warnings

    np.save(tmp_path / "ld.npy", np.full((6, 8), np.longdouble("1e4000")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadInput, match=r"^input: holds values too large for float32$"):
            inputs.parse_input(f"npy:{tmp_path / 'ld.npy'}", 0)
        with pytest.raises(BadInput, match=r"^kernel: holds values too large for float32$"):  # the loader's own
            inputs.parse_kernel(f"npy:{tmp_path / 'ld.npy'}", 0)  # check (parse_input checks again)
        with pytest.raises(BadInput, match=r"^labels: holds values too large for float32$"):
            inputs.parse_labels(f"npy:{tmp_path / 'ld.npy'}")


def test_numpys_float32_maximum_as_it_prints_is_a_float32_kernel():
    """np.finfo(np.float32).max prints as 3.4028235e+38, a little over it as a float64, and rounds to it: it was
    refused as beyond float32's range. One that rounds to infinity still is."""
    top = np.finfo(np.float32).max
    assert str(top) == "3.4028235e+38"
    problem = build_problem(JobSpec.parse({"kernel": f"[[{str(top)}, -1]]"}))
    assert problem.true_kernel.max() == float(str(top))  # as given
    with pytest.raises(BadInput, match="^kernel: has values beyond float32's range"):
        build_problem(JobSpec.parse({"kernel": "[[3.40282357e38, -1]]"}))
    with pytest.raises(BadInput, match=r"^noise: 0.5 can make .* at most 0 with these labels$"):  # was -2.73e+29
        build_problem(JobSpec.parse({"input": "ones:3x3", "kernel": f"[[{str(top)}]]", "noise": 0.5}))
