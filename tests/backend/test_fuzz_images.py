"""Image decoding under hostile bytes: every input is an RGB array or an ImageError.

Never another exception, never a hang, never a decode of a pixel bomb. The number of
generated inputs per property is SQUEEZESAM_FUZZ_EXAMPLES (default 300; thousands with
e.g. `SQUEEZESAM_FUZZ_EXAMPLES=5000 pytest tests/backend/test_fuzz_images.py`).
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from squeezesam.backend.images import ImageError, decode

EXAMPLES = int(os.environ.get("SQUEEZESAM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_PIXELS = 4_000_000
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
TIME_LIMIT = 10  # seconds for one decode: a hang fails the test instead of blocking it


@contextmanager
def time_limit(seconds: int):
    def fail(_signum, _frame):
        raise TimeoutError(f"decode took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray | ImageError:
    """decode() either returns a sane RGB array or raises a typed, clear ImageError."""
    with time_limit(TIME_LIMIT):
        try:
            rgb = decode(data, max_pixels)
        except ImageError as exc:
            assert exc.status in (413, 422), exc
            assert str(exc), "an error must name the problem"
            return exc
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 1 <= rgb.shape[0] * rgb.shape[1] <= max_pixels
    return rgb


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_header(width: int, height: int, bit_depth: int = 8, color: int = 2) -> bytes:
    """A PNG that claims width x height in its IHDR (correct CRC) with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO"]


@st.composite
def generated_images(draw) -> bytes:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    try:
        image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
        return encode(image, fmt)
    except (OSError, ValueError, KeyError):  # PIL cannot write this mode in this format
        return encode(image.convert("RGB"), "PNG")


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check(data)


@FUZZ
@given(generated_images())
def test_generated_images_of_every_mode_and_format(data):
    result = check(data)
    assert not isinstance(result, ImageError), result  # valid images must decode


@FUZZ
@given(generated_images(), st.data())
def test_truncated_images(data, draw):
    cut = draw.draw(st.integers(0, max(0, len(data) - 1)))
    check(data[:cut])


@FUZZ
@given(generated_images(), st.data())
def test_corrupted_images(data, draw):
    mutable = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        i = draw.draw(st.integers(0, len(mutable) - 1))
        mutable[i] = draw.draw(st.integers(0, 255))
    check(bytes(mutable))


@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.sampled_from([1, 8, 16]))
def test_png_headers_claiming_any_size(width, height, depth):
    """Pixel bombs are refused from the header, at once (no decode, no allocation)."""
    t0 = time.monotonic()
    result = check(png_header(width, height, depth, color=0 if depth == 1 else 2))
    if width * height > MAX_PIXELS:
        assert isinstance(result, ImageError) and result.status == 413, result
        assert time.monotonic() - t0 < 1.0
        assert "pixels" in str(result) or "too large" in str(result)


def test_bomb_100000_squared():
    t0 = time.monotonic()
    result = check(png_header(100_000, 100_000))
    assert isinstance(result, ImageError) and result.status == 413
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"<!DOCTYPE html><html><body>Sign in</body></html>",
        b"%PDF-1.4\n1 0 obj\n",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS: Ghostscript never runs
        b"",
        b"\xff\xd8\xff",  # a JPEG start and nothing else
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
    ],
    ids=["svg", "svg-xml", "html", "pdf", "eps", "empty", "jpeg-soi", "png-magic", "gif-magic"],
)
def test_disguised_and_empty_files_are_not_images(data):
    result = check(data)
    assert isinstance(result, ImageError) and result.status == 422


def test_eps_is_not_decoded_even_when_pil_could():
    eps = encode(Image.new("RGB", (8, 8)), "EPS")
    result = check(eps)
    assert isinstance(result, ImageError) and "not an image" in str(result)


def test_special_modes_decode_to_what_a_browser_shows():
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0..65535
    rgb = check(encode(Image.fromarray(ramp), "PNG"))  # 16-bit grey
    assert isinstance(rgb, np.ndarray) and rgb[..., 0].ravel().tolist() == list(range(256))
    cmyk = check(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (10, 20, 3) and cmyk[5, 10, 0] > 200 and cmyk[5, 10, 1] < 60  # red
    grey = check(encode(Image.new("L", (7, 5), 128), "PNG"))
    assert grey.shape == (5, 7, 3) and (grey == 128).all()
    alpha = check(encode(Image.new("RGBA", (4, 3), (10, 20, 30, 0)), "PNG"))
    assert alpha.shape == (3, 4, 3) and alpha[0, 0].tolist() == [10, 20, 30]
    frames = [Image.new("RGB", (9, 6), (255 * (i % 2), 0, 0)) for i in range(30)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], loop=0)
    gif = check(out.getvalue())
    assert gif.shape == (6, 9, 3)  # the first frame of an animation


def test_exif_rotation_applied():
    image = Image.new("RGB", (30, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    rgb = check(encode(image, "JPEG", exif=exif.tobytes()))
    assert rgb.shape[:2] == (30, 10)


def test_real_images_truncated_anywhere(sample_images):
    data = sample_images[0].read_bytes()
    for cut in np.linspace(0, len(data) - 1, 40).astype(int):
        check(data[:cut])
