"""Image files -> 28x28 input: any aspect ratio in memory that grows with the image, high bit depths scaled,
limits enforced per file; the result is what Pillow gives on the padded square, bit for bit."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, header_only_png, pillow_pad_and_resize, synthetic_images
from fmnist_seq.images import ImageRefused, resize_padded, to_pixels


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (27, 28), (28, 27), (28, 28), (29, 29), (7, 10),
                                   (40, 33), (200, 300), (1000, 57), (300, 1), (3, 500), (28, 1), (1, 29),
                                   (640, 640)])
def test_resize_without_the_square_is_pillow_bit_for_bit(shape):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    edges = ((np.indices(shape).sum(0) % 7) == 0).astype(np.uint8) * 255  # Lanczos rings: clipping exercised
    for gray in (noise, edges):
        assert np.array_equal(resize_padded(gray), pillow_pad_and_resize(gray))


def test_a_1x100000_strip_takes_little_memory_and_time(tmp_path):
    """Padding first would ask for a 100000x100000 square (10 GB); under a 2 GB address-space limit that
    fails, while the image's own 100 KB suffice."""
    path = tmp_path / "strip.png"
    Image.new("L", (1, 100_000), 255).save(path)
    assert path.stat().st_size < 2_000
    script = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from fmnist_seq.images import to_pixels
        start = time.perf_counter()
        pixels = to_pixels({str(path)!r})
        print(pixels.shape, pixels.dtype, time.perf_counter() - start)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT / "src"), "OPENBLAS_NUM_THREADS": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    shape, seconds = result.stdout.rsplit(" ", 1)
    assert shape == "(28, 28) uint8" and float(seconds) < 10


@pytest.mark.parametrize("width, height, message", [
    (15000, 15000, "225,000,000 pixels, over the limit of 89,478,485"),  # Pillow's DecompressionBombError
    (10000, 9000, "10000x9000 is 90,000,000 pixels, over the limit of 89,478,485"),  # Pillow only warns here
    (140000, 2, "140000x2: a side over 131,072 pixels"),
])
def test_images_past_the_limits_are_refused_before_decoding(tmp_path, width, height, message):
    path = tmp_path / "big.png"
    path.write_bytes(header_only_png(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's DecompressionBombWarning: the limit is an error
        with pytest.raises(ImageRefused) as err:
            to_pixels(path)
    assert message in str(err.value)


def _item() -> np.ndarray:
    """A real-looking 28x28 test image, enlarged so that resizing does real work."""
    return np.asarray(Image.fromarray(synthetic_images(np.array([3]), seed=4)[0]).resize((70, 90)))


@pytest.mark.parametrize("fmt, make", [
    ("png", lambda a: Image.fromarray(a.astype(np.uint16) * 257)),  # 16-bit PNG: mode I;16
    ("tif", lambda a: Image.fromarray(a.astype(np.uint16) * 257)),  # 16-bit TIFF
    ("tif", lambda a: Image.fromarray(a.astype(np.float32) / 255, "F")),  # 32-bit float TIFF, 0..1
    ("tif", lambda a: Image.fromarray(a.astype(np.float32), "F")),  # 32-bit float TIFF, 0..255
    ("tif", lambda a: Image.fromarray(a.astype(np.int32) * 257)),  # 32-bit integer TIFF holding 16-bit values
])
def test_high_bit_depth_is_scaled_not_clipped(tmp_path, fmt, make):
    item = _item()
    Image.fromarray(item).save(tmp_path / "item8.png")
    deep = make(item)
    deep.save(tmp_path / f"deep.{fmt}")
    assert Image.open(tmp_path / f"deep.{fmt}").mode in ("I;16", "I", "F")  # more than 8 bits, as written
    expected = to_pixels(tmp_path / "item8.png")
    assert np.array_equal(to_pixels(tmp_path / f"deep.{fmt}"), expected)
    assert np.array_equal(to_pixels(tmp_path / f"deep.{fmt}", dark_on_light=True),
                          to_pixels(tmp_path / "item8.png", dark_on_light=True))


def test_non_finite_float_pixels_are_refused(tmp_path):
    values = np.zeros((8, 8), np.float32)
    values[2, 2] = np.nan
    Image.fromarray(values, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageRefused, match="NaN or infinite"):
        to_pixels(tmp_path / "nan.tif")
