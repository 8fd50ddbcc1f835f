"""Pixel bombs for tests: tiny, valid-looking files whose header declares a huge image."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from shared.images import encode_image


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, CRC fixed to match) says ``width x height``."""
    data = bytearray(encode_image(np.zeros((1, 1, 3), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header (SOF0) says ``width x height``."""
    data = bytearray(encode_image(np.zeros((8, 8, 3), np.uint8), "image/jpeg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_of_black(width: int, height: int) -> bytes:
    """A real, fully valid PNG of ``width x height`` black RGB pixels. Deflate packs the
    zeros about a thousand to one, so 20000 x 20000 (1.2 GB decoded) is about 1.2 MB."""
    row = b"\x00" + bytes(width * 3)  # filter type 0, then the row's pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
