"""Server-side rendering: PNG thumbnails (decoded back exactly), item views and SVG plots."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bayesal.exceptions import InvalidInputError
from bayesal.serve.render import image_data_uri, is_image, item_view, line_plot_svg, png_bytes


def decode_png(data: bytes) -> np.ndarray:
    """Minimal PNG reader for the files png_bytes writes (8-bit, filter 0), checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, color, *_ = header
    assert depth == 8
    ch = {0: 1, 2: 3}[color]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * ch)
    assert (raw[:, 0] == 0).all()
    px = raw[:, 1:]
    return px.reshape(h, w) if ch == 1 else px.reshape(h, w, 3)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_png_roundtrip_gray(img):
    np.testing.assert_array_equal(decode_png(png_bytes(img)), img)


@settings(max_examples=15, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3))))
def test_png_roundtrip_rgb(img):
    np.testing.assert_array_equal(decode_png(png_bytes(img)), img)


def test_png_rejects_other_shapes():
    with pytest.raises(InvalidInputError):
        png_bytes(np.zeros((2, 2, 2), dtype=np.uint8))


def test_thumbnail_scales_and_upsamples():
    img = np.arange(64, dtype=np.float32).reshape(8, 8) / 4  # digits-like: floats, not 0..255
    uri = image_data_uri(img, side=64)
    assert uri.startswith("data:image/png;base64,")
    px = decode_png(base64.b64decode(uri.split(",", 1)[1]))
    assert px.shape == (64, 64)
    assert px[0, 0] == 0 and px[-1, -1] == 255 and (px[:8, :8] == px[0, 0]).all()  # nearest-neighbour blocks


def test_item_views():
    assert item_view("hello", 3) == {"kind": "text", "text": "hello"}
    assert item_view("x" * 5000, 0)["text"].endswith(" …")
    assert item_view(None, 7) == {"kind": "id", "text": "instance #7"}
    assert item_view(np.zeros(5), 2)["kind"] == "id"
    assert item_view(np.zeros((28, 28), dtype=np.uint8), 0)["kind"] == "image"
    assert item_view(np.zeros((3, 16, 16)), 0)["kind"] == "image"  # channels first
    assert item_view(b"bytes", 0) == {"kind": "text", "text": "bytes"}
    assert not is_image(np.array([["a", "b"], ["c", "d"]]))
    view = item_view(np.full((4, 4), np.nan), 1)  # all-NaN image still renders
    assert view["kind"] == "image"


def test_line_plot_svg():
    svg = line_plot_svg([("exp <acc>", [1, 2, 3], [0.5, float("nan"), 0.7], "#123456")], title="a & b",
                        y_range=(0, 1))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "exp &lt;acc&gt;" in svg and "a &amp; b" in svg and "<acc>" not in svg
    pts = svg.split('points="')[1].split('"')[0].split()
    assert len(pts) == 2  # the NaN point is left out
    assert "no data yet" in line_plot_svg([("s", [], [], "#000")], title="t")
    single = line_plot_svg([("s", [4], [0.2], "#000")], title="t")
    assert "<circle" in single
