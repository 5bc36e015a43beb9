"""Draw the Neocloud mark (an indigo diamond on the top bar's dark rounded square) as a 16, 32 and 48 px ICO
of 32-bit bitmaps, anti-aliased by 4x4 supersampling; no imaging library needed. The SVG next to it
(webapp/portal/static/portal/favicon.svg) is the same drawing.

Usage: python scripts/draw_favicon.py webapp/portal/static/portal/favicon.ico
"""

from __future__ import annotations

import struct
import sys

BACKGROUND = (0x11, 0x18, 0x27)  # the top bar
MARK = (0x81, 0x8C, 0xF8)  # the brand mark in the top bar
SIZES = (16, 32, 48)
SUBSAMPLES = 4


def pixel(size: int, x: int, y: int) -> tuple[int, int, int, int]:
    """RGBA of one pixel: how much of it the rounded square covers (alpha) and the diamond (colour)."""
    corner = 0.19 * size
    in_square = in_mark = 0
    for i in range(SUBSAMPLES):
        for j in range(SUBSAMPLES):
            px, py = x + (i + 0.5) / SUBSAMPLES, y + (j + 0.5) / SUBSAMPLES
            dx = max(corner - px, 0, px - (size - corner))
            dy = max(corner - py, 0, py - (size - corner))
            if dx * dx + dy * dy <= corner * corner:
                in_square += 1
                if abs(px - size / 2) + abs(py - size / 2) <= 0.36 * size:
                    in_mark += 1
    if not in_square:
        return (0, 0, 0, 0)
    t = in_mark / in_square
    red, green, blue = (round(BACKGROUND[k] * (1 - t) + MARK[k] * t) for k in range(3))
    return (red, green, blue, round(255 * in_square / SUBSAMPLES**2))


def bitmap(size: int) -> bytes:
    """One ICO image: a BITMAPINFOHEADER (height doubled for the mask), BGRA rows bottom-up, an empty mask."""
    header = struct.pack("<IiiHHIIiiII", 40, size, 2 * size, 1, 32, 0, 0, 0, 0, 0, 0)
    rows = bytearray()
    for y in reversed(range(size)):
        for x in range(size):
            red, green, blue, alpha = pixel(size, x, y)
            rows += bytes((blue, green, red, alpha))
    mask_row = ((size + 31) // 32) * 4
    return header + bytes(rows) + b"\0" * mask_row * size


def icon() -> bytes:
    images = [bitmap(size) for size in SIZES]
    out = struct.pack("<HHH", 0, 1, len(SIZES))
    offset = 6 + 16 * len(SIZES)
    for size, image in zip(SIZES, images, strict=True):
        out += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(image), offset)
        offset += len(image)
    return out + b"".join(images)


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as file:
        file.write(icon())
