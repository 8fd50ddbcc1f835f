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
