"""Mask post-processing before encoding: small islands and holes out, box clipping."""

from __future__ import annotations

import cv2
import numpy as np

# A region smaller than this fraction of the object (and of the image, see below) is
# noise: annotators would otherwise erase speckles by hand after every click.
MIN_REGION_FRACTION = 0.02
MIN_REGION_PIXELS = 16


def clean_mask(mask: np.ndarray, keep: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Remove islands and fill holes smaller than MIN_REGION_FRACTION of the object.

    `keep` lists (y, x) pixels (positive clicks) whose island is kept whatever its size:
    the annotator asked for it. The largest island always stays.
    """
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area == 0:
        return mask
    limit = max(MIN_REGION_PIXELS, MIN_REGION_FRACTION * area)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    wanted = set((np.flatnonzero(areas >= limit) + 1).tolist())
    wanted.add(int(np.argmax(areas)) + 1)
    for y, x in keep or []:
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and labels[y, x]:
            wanted.add(int(labels[y, x]))
    cleaned = np.isin(labels, sorted(wanted))
    # holes: background components (4-connected, the dual of 8) not touching the border
    background = ~cleaned
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background.astype(np.uint8), 4)
    h, w = mask.shape
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1 = x0 + stats[:, cv2.CC_STAT_WIDTH]
    y1 = y0 + stats[:, cv2.CC_STAT_HEIGHT]
    interior = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
    small = interior & (stats[:, cv2.CC_STAT_AREA] < limit)
    small[0] = False  # label 0 is the object itself here
    if small.any():
        cleaned |= np.isin(labels, np.flatnonzero(small))
    return cleaned


def clip_to_box(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels outside the rectangle (x0, y0, x1, y1) in pixels are not the object."""
    x0, y0, x1, y1 = box
    h, w = mask.shape
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    clipped = np.zeros_like(mask, dtype=bool)
    clipped[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    return clipped


# --- brush RLE from outside (webhooks, task payloads) -------------------------------------

# An RLE's first 32 bits claim its decoded length; the SDK's decoder allocates that many
# bytes before reading a single run (up to 4 GB for 4 bytes of input). Masks larger than
# this many pixels (x4 bytes, RGBA) are refused before anything is allocated.
MAX_RLE_PIXELS = 100_000_000


def decode_brush_rle(rle: object, width: int, height: int) -> np.ndarray:
    """Label Studio brush RLE of a (height, width) RGBA image -> uint8 alpha mask (H, W).

    Raises ValueError naming the problem for anything that is not such an RLE: not a list
    of bytes (ints 0-255), a size that is not positive or above MAX_RLE_PIXELS, a header
    whose length is not width x height x 4, or a bit stream that ends early or is corrupt.
    """
    if not isinstance(rle, list | tuple) or len(rle) < 6:
        raise ValueError("brush RLE must be a list of at least 6 bytes")
    if not all(type(v) is int and 0 <= v <= 255 for v in rle):
        raise ValueError("brush RLE must hold integers 0-255 only")
    for name, value in (("width", width), ("height", height)):
        if type(value) is not int or value <= 0:
            raise ValueError(f"mask {name} must be a positive integer, got {value!r}")
    if width * height > MAX_RLE_PIXELS:
        raise ValueError(f"mask {width}x{height} is above {MAX_RLE_PIXELS} pixels")
    claimed = int.from_bytes(bytes(rle[:4]), "big")
    if claimed != width * height * 4:
        raise ValueError(
            f"RLE holds {claimed} bytes, expected {width}x{height}x4 = {width * height * 4}"
        )
    try:
        flat = _decode_rle(rle)
    except Exception as exc:  # IndexError/OverflowError/ValueError on a corrupt bit stream
        raise ValueError(f"brush RLE does not decode: {type(exc).__name__}: {exc}") from None
    if flat.size != claimed:
        raise ValueError(f"brush RLE decoded to {flat.size} bytes, expected {claimed}")
    return np.ascontiguousarray(flat.reshape(height, width, 4)[:, :, 3])


def _decode_rle(rle: list[int] | tuple[int, ...]) -> np.ndarray:
    """Label Studio's brush RLE (thi.ng rle-pack) -> flat uint8 array.

    The same algorithm as label_studio_sdk.converter.brush.decode_rle (tests compare the
    two on real masks), written here because importing that module pulls in the whole
    SDK converter (nltk, pandas...): about 1 s, which the first webhook after a start
    paid inside Label Studio's 1 s webhook timeout. Also about 3x faster: the bit string
    is built by numpy, and literal runs are read in one comprehension.
    """
    bits = (np.unpackbits(np.frombuffer(bytes(rle), dtype=np.uint8)) + 48).tobytes().decode()
    total = len(bits)
    num = int(bits[0:32], 2)
    word = int(bits[32:37], 2) + 1
    sizes = [int(bits[37 + 4 * k : 41 + 4 * k], 2) + 1 for k in range(4)]
    pos, i = 53, 0
    out = np.zeros(num, dtype=np.uint8)
    while i < num:
        size = sizes[int(bits[pos + 1 : pos + 3], 2)]
        repeat = bits[pos] == "1"
        end = pos + 3 + size
        if end > total:
            raise ValueError("the bit stream ends inside a run header")
        j = i + 1 + int(bits[pos + 3 : end], 2)
        pos = end
        if repeat:
            end = pos + word
            if end > total:
                raise ValueError("the bit stream ends inside a run value")
            value = int(bits[pos:end], 2)
            if value > 255:
                raise ValueError(f"run value {value} does not fit a byte")
            out[i:j] = value
        else:
            if j > num:
                raise ValueError("a literal run reaches past the claimed length")
            end = pos + word * (j - i)
            if end > total:
                raise ValueError("the bit stream ends inside a literal run")
            values = [int(bits[k : k + word], 2) for k in range(pos, end, word)]
            if max(values) > 255:
                raise ValueError("a literal value does not fit a byte")
            out[i:j] = values
        pos, i = end, j
    return out
