"""COCO RLE: bit-exact against pycocotools in both directions."""

from __future__ import annotations

import numpy as np
import pytest
from faseg.service.imaging.rle import class_rles, decode_counts, encode_counts

mask_api = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0.x's Cython decode triggers numpy 2's __array__(copy=...) deprecation inside itself.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _labels(seed: int, shape: tuple[int, int], classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Blocky maps (long runs) mixed with noise (short runs, big and negative count deltas).
    coarse = rng.integers(0, classes, size=(shape[0] // 8 + 1, shape[1] // 8 + 1))
    labels = np.kron(coarse, np.ones((8, 8), dtype=np.int64))[: shape[0], : shape[1]]
    noise = rng.random(shape) < 0.05
    labels[noise] = rng.integers(0, classes, size=int(noise.sum()))
    return labels.astype(np.uint8)


@pytest.mark.parametrize(
    ("seed", "shape", "classes"),
    [(0, (37, 53), 4), (1, (120, 96), 6), (2, (1, 1), 1), (3, (300, 17), 3), (4, (64, 64), 12)],
)
def test_class_rles_match_pycocotools(seed: int, shape: tuple[int, int], classes: int) -> None:
    labels = _labels(seed, shape, classes)
    names = [f"c{i}" for i in range(classes)]
    ours = class_rles(labels, names)
    assert [r["id"] for r in ours] == sorted(np.unique(labels).tolist())
    for rle in ours:
        mask = (labels == rle["id"]).astype(np.uint8)
        reference = mask_api.encode(np.asfortranarray(mask))
        assert rle["counts"] == reference["counts"].decode("ascii")
        assert rle["size"] == list(reference["size"])
        decoded = mask_api.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        np.testing.assert_array_equal(decoded, mask)


def test_mask_touching_both_ends_and_empty_runs() -> None:
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[0, 0] = 1  # first pixel set: the zero run before it is empty
    labels[-1, -1] = 1  # last pixel set: no trailing zeros
    [_, one] = class_rles(labels, ["bg", "fg"])
    reference = mask_api.encode(np.asfortranarray((labels == 1).astype(np.uint8)))
    assert one["counts"] == reference["counts"].decode("ascii")


def test_uint16_labels() -> None:
    labels = np.array([[0, 300, 300], [299, 0, 300]], dtype=np.uint16)
    rles = {r["id"]: r for r in class_rles(labels, [f"c{i}" for i in range(301)])}
    for class_id, rle in rles.items():
        mask = np.asfortranarray((labels == class_id).astype(np.uint8))
        assert rle["counts"] == mask_api.encode(mask)["counts"].decode("ascii")


@pytest.mark.parametrize("counts", [[0], [5], [0, 3, 2], [10, 1, 1, 1, 1000, 2, 50000, 7], [3, 40, 2, 1, 60]])
def test_counts_round_trip(counts: list[int]) -> None:
    assert decode_counts(encode_counts(counts)) == counts
