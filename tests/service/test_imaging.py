"""Decoding untrusted bytes, letterboxing, label maps, stats and PNG output (in-process, no server)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from faseg.service.core.errors import EmptyBody, ImageTooLarge, InvalidImage, UnsupportedMediaType
from faseg.service.imaging.encode import label_png, read_label_png
from faseg.service.imaging.preprocess import decode_image, fit, letterbox, restore, sniff_format
from faseg.service.imaging.stats import class_stats
from PIL import Image
from service_images import encode

MAX_PIXELS = 1_000_000


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
    ],
)
def test_sniff_allowed(data: bytes, expected: str) -> None:
    assert sniff_format(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a...",
        b"BM\x00\x00",
        b"II*\x00....",
        b'<?xml version="1.0"?><svg/>',
        b"  <svg xmlns=...>",
        b"\x00\x00\x00\x1cftypavif....",
    ],
)
def test_sniff_refused_formats(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        sniff_format(data)


def test_sniff_unknown_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        sniff_format(b"hello, I am text")
    with pytest.raises(EmptyBody):
        decode_image(b"", max_pixels=MAX_PIXELS)


def test_pixel_cap_checked_from_header() -> None:
    big = encode(Image.new("L", (1200, 1000)), "PNG")  # 1.2 MP, a few KB compressed
    with pytest.raises(ImageTooLarge):
        decode_image(big, max_pixels=MAX_PIXELS)


def test_truncated_jpeg_is_invalid() -> None:
    data = encode(_gradient(64, 48), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode: str) -> None:
    source = _gradient(40, 30)
    image = source.convert("L").convert(mode) if mode in ("I;16", "1") else source.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encode(image, fmt), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    assert decoded.size == (40, 30)


def test_sixteen_bit_grey_keeps_its_range() -> None:
    grey = (np.arange(0, 65536, 256, dtype=np.uint16)[None, :]).repeat(4, axis=0)  # (4, 256)
    decoded = decode_image(encode(Image.fromarray(grey), "PNG"), max_pixels=MAX_PIXELS)
    red = np.asarray(decoded.image)[0, :, 0]
    np.testing.assert_array_equal(red, np.arange(256, dtype=np.uint8))


def test_exif_orientation_applied() -> None:
    image = _gradient(60, 20)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert decoded.orientation_applied
    assert decoded.size == (20, 60)
    assert decoded.image.size == (20, 60)
    raw = decode_image(data, max_pixels=MAX_PIXELS, apply_exif=False)
    assert raw.size == (60, 20) and not raw.orientation_applied


def test_jpeg_draft_keeps_true_size() -> None:
    data = encode(_gradient(1600, 1200), "JPEG")
    decoded = decode_image(data, max_pixels=10_000_000, draft_size=(128, 96))
    assert decoded.size == (1600, 1200)
    assert 128 <= decoded.image.size[0] < 1600


def test_letterbox_and_restore() -> None:
    box = fit((300, 100), (96, 128))  # wide image into a 128x96 input
    assert box.content_size == (128, 43)
    tensor = letterbox(_gradient(300, 100), box)
    assert tensor.shape == (96, 128, 3) and tensor.dtype == np.uint8
    assert not tensor[43:].any()  # padding below the content
    labels = np.zeros((96, 128), dtype=np.uint8)
    labels[:, 64:] = 1
    labels[43:] = 7  # padding must never reach the output
    restored = restore(labels, box, (300, 100))
    assert restored.shape == (100, 300)
    assert set(np.unique(restored)) == {0, 1}
    assert restored[:, :149].max() == 0 and restored[:, 151:].min() == 1
    assert restore(labels, box).shape == (43, 128)


def test_class_stats() -> None:
    labels = np.zeros((10, 20), dtype=np.uint8)
    labels[2:5, 3:9] = 2
    labels[9, 19] = 5
    stats = {s["id"]: s for s in class_stats(labels, ["a", "b", "c", "d", "e", "f"])}
    assert sorted(stats) == [0, 2, 5]
    assert stats[2]["pixels"] == 18 and stats[2]["bbox"] == [3, 2, 6, 3] and stats[2]["name"] == "c"
    assert stats[5]["bbox"] == [19, 9, 1, 1]
    assert stats[0]["bbox"] == [0, 0, 20, 10]
    assert abs(sum(s["fraction"] for s in stats.values()) - 1.0) < 1e-5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_png_round_trip(dtype: type) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6 if dtype == np.uint8 else 400, size=(33, 47)).astype(dtype)
    palette = [(i, 255 - i, 7) for i in range(6)]
    data = label_png(labels, palette, compress_level=1)
    np.testing.assert_array_equal(read_label_png(data), labels)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == ("P" if dtype == np.uint8 else "I;16")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_mutated_files_only_raise_documented_errors(fmt: str) -> None:
    """Random truncations and byte flips of valid files: decoded, or refused with a 4xx error."""
    valid = encode(_gradient(48, 32), fmt)
    rng = np.random.default_rng(1234)
    for _ in range(150):
        data = bytearray(valid[: int(rng.integers(1, len(valid) + 1))])
        for position in rng.integers(0, len(data), size=int(rng.integers(0, 8))):
            data[position] = int(rng.integers(0, 256))
        try:
            decoded = decode_image(bytes(data), max_pixels=MAX_PIXELS)
        except (InvalidImage, ImageTooLarge, UnsupportedMediaType, EmptyBody) as exc:
            assert exc.status < 500
        else:
            assert decoded.image.mode == "RGB"


def test_class_stats_match_a_per_class_reference() -> None:
    """Counts and boxes against np.nonzero per class, on blocky maps (a few runs per row) and on noise
    (a run per pixel), where the run-based extents have the most runs to merge."""
    rng = np.random.default_rng(3)
    blocky = np.zeros((37, 53), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 37), rng.integers(0, 53)
        blocky[y : y + rng.integers(1, 15), x : x + rng.integers(1, 20)] = rng.integers(0, 9)
    noise = rng.integers(0, 9, (23, 31)).astype(np.uint8)
    for labels in (blocky, noise, np.full((5, 7), 4, np.uint8)):
        stats = class_stats(labels, [str(i) for i in range(9)])
        assert [s["id"] for s in stats] == sorted(np.unique(labels).tolist())
        for s in stats:
            ys, xs = np.nonzero(labels == s["id"])
            assert s["pixels"] == ys.size
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
