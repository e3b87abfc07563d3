"""Training / test augmentations (spec §3.5, §4.1).

Every transform is a small callable ``t(image, label, rng) -> (image, label)`` on numpy arrays:
``image`` is uint8 ``(H, W, 3)`` RGB, ``label`` an integer ``(H, W)`` map (or ``None`` at test time), and
``rng`` a ``numpy.random.Generator`` that supplies all randomness, so a pipeline is reproducible from a seed.
Images are resized bilinearly and labels with nearest neighbour, both through PIL as detectron2's
``ResizeTransform`` does.

The training pipeline of the official configs, in order (``build_train_transforms``):

1. :class:`ResizeShortestEdge` — short side chosen uniformly from a list, long side capped;
2. :class:`RandomCrop` — absolute crop size (smaller when the image is), optional ``cat_max_ratio``;
3. :class:`PhotometricDistortion` — detectron2's ``ColorAugSSDTransform``;
4. :class:`RandomHorizontalFlip` — p = 0.5;
5. :class:`Pad` — bottom/right to the crop size with 128 (image) and 255 (label); ADE20K only.

Batching the transformed samples is :mod:`faseg.model.data.batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from .sample import IGNORE_INDEX

__all__ = [
    "Compose",
    "Pad",
    "PhotometricDistortion",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "TransformedDataset",
    "build_test_transform",
    "build_train_transforms",
    "resize_image",
    "resize_label",
    "shortest_edge_size",
]

Label = np.ndarray | None
Transform = Callable[[np.ndarray, Label, np.random.Generator], tuple[np.ndarray, Label]]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"expected an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------------------------
# Resizing


def shortest_edge_size(height: int, width: int, short_edge: int, max_long: int | None) -> tuple[int, int]:
    """Output ``(h, w)`` of detectron2's ``ResizeShortestEdge``: short side → ``short_edge``, long side at
    most ``max_long``.

    Both sides are scaled by the same factor and rounded to the nearest integer at the end.
    """
    scale = short_edge / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max_long is not None and max(new_h, new_w) > max_long:
        shrink = max_long / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` image to ``size = (h, w)`` (PIL, as detectron2)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))  # writable copy


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer ``(H, W)`` label map to ``size = (h, w)``."""
    h, w = size
    if label.shape == (h, w):
        return label
    if label.dtype == np.uint8:
        return np.array(Image.fromarray(label).resize((w, h), Image.NEAREST))
    out = Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST)
    return np.asarray(out).astype(label.dtype)


class ResizeShortestEdge:
    """Resize so the short side is one of ``short_edge_choices`` (uniform choice), long ≤ ``max_long``."""

    def __init__(self, short_edge_choices: int | Sequence[int], max_long: int | None = None):
        choices = [short_edge_choices] if isinstance(short_edge_choices, int) else list(short_edge_choices)
        if not choices or any(int(c) <= 0 for c in choices):
            raise ValueError(f"short_edge_choices must be positive sizes, got {short_edge_choices!r}")
        self.choices = [int(c) for c in choices]
        self.max_long = max_long

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None):
        short = self.choices[0] if len(self.choices) == 1 else self.choices[_rng(rng).integers(len(self.choices))]
        size = shortest_edge_size(image.shape[0], image.shape[1], short, self.max_long)
        return resize_image(image, size), None if label is None else resize_label(label, size)

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(short_edge_choices={self.choices}, max_long={self.max_long})"


# ---------------------------------------------------------------------------------------------------------
# Cropping, flipping, padding


class RandomCrop:
    """Random ``crop_size`` window (clipped to the image) with detectron2's single-category area constraint.

    With ``cat_max_ratio < 1``, up to ``max_tries`` windows are drawn until one has at least two non-ignored
    classes and no class covering ``cat_max_ratio`` or more of its non-ignored pixels; if none qualifies the
    last window is used (``RandomCrop_CategoryAreaConstraint``). With ``cat_max_ratio >= 1`` (the official
    FASeg value, spec §3.5) it is a plain random crop.
    """

    def __init__(self, crop_size: int | Sequence[int], cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX, max_tries: int = 10):  # fmt: skip
        self.crop_size = _pair(crop_size)
        if min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size!r}")
        if cat_max_ratio <= 0:
            raise ValueError(f"cat_max_ratio must be > 0, got {cat_max_ratio}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _window(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        ch, cw = min(h, self.crop_size[0]), min(w, self.crop_size[1])
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        return y0, x0, ch, cw

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None):
        rng = _rng(rng)
        h, w = image.shape[:2]
        if self.cat_max_ratio >= 1.0 or label is None:
            y0, x0, ch, cw = self._window(h, w, rng)
        else:
            for _ in range(self.max_tries):  # the last window is kept when none qualifies
                y0, x0, ch, cw = self._window(h, w, rng)
                values, counts = np.unique(label[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
                counts = counts[values != self.ignore_index]
                if len(counts) > 1 and counts.max() < counts.sum() * self.cat_max_ratio:
                    break
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        label = None if label is None else label[y0 : y0 + ch, x0 : x0 + cw]
        return image, label

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomHorizontalFlip:
    """Mirror image and label left–right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None):
        if _rng(rng).random() < self.p:
            image = image[:, ::-1]
            label = None if label is None else label[:, ::-1]
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Pad:
    """Pad bottom/right to exactly ``size`` with ``image_value`` (raw, unnormalised) / ``label_value``.

    The official ADE20K mapper pads with 128 and 255 (``SIZE_DIVISIBILITY: 512``, spec §3.5). An input
    larger than ``size`` is an error (the mapper would silently crop it).
    """

    def __init__(self, size: int | Sequence[int], image_value: int = 128, label_value: int = IGNORE_INDEX):
        self.size = _pair(size)
        self.image_value = image_value
        self.label_value = label_value

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None):
        h, w = image.shape[:2]
        th, tw = self.size
        if h > th or w > tw:
            raise ValueError(f"cannot pad a {h}x{w} image to the smaller size {th}x{tw}")
        if (h, w) == (th, tw):
            return image, label
        out = np.full((th, tw, image.shape[2]), self.image_value, dtype=image.dtype)
        out[:h, :w] = image
        if label is not None:
            lab = np.full((th, tw), self.label_value, dtype=label.dtype)
            lab[:h, :w] = label
            label = lab
        return out, label

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, image_value={self.image_value}, label_value={self.label_value})"


# ---------------------------------------------------------------------------------------------------------
# Photometric distortion


def rgb_to_hsv_u8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB → uint8 HSV with OpenCV's 8-bit convention: H in [0, 180), S and V in [0, 255]."""
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    s = np.where(v > 0, diff * 255.0 / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(diff, 1e-6)
    h = np.where(v == r, (g - b) * 60.0 / safe, np.where(v == g, 120.0 + (b - r) * 60.0 / safe,
                                                           240.0 + (r - g) * 60.0 / safe))  # fmt: skip
    h = np.where(diff == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h) / 2.0
    hsv = np.stack([np.rint(h) % 180, np.rint(s), v], axis=-1)
    return hsv.astype(np.uint8)


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv_u8` (OpenCV's 8-bit HSV → RGB)."""
    h = hsv[..., 0].astype(np.float32) * (2.0 / 60.0)  # sector position in [0, 6)
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (r, g, b) per sector: 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q)
    choices = np.stack([v, t, p, q], axis=0)  # indices 0..3
    r_idx = np.array([0, 3, 2, 2, 1, 0])[sector]
    g_idx = np.array([1, 0, 0, 3, 2, 2])[sector]
    b_idx = np.array([2, 2, 1, 0, 0, 3])[sector]
    take = lambda idx: np.take_along_axis(choices, idx[None], axis=0)[0]  # noqa: E731
    rgb = np.stack([take(r_idx), take(g_idx), take(b_idx)], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class PhotometricDistortion:
    """detectron2 / PointRend ``ColorAugSSDTransform`` on uint8 RGB (spec §3.5); labels pass through.

    1. brightness: add U(−32, 32), p = 0.5;
    2. with p = 0.5 contrast first, else last; in between saturation then hue:
       contrast ×U(0.5, 1.5) p 0.5; saturation ×U(0.5, 1.5) on HSV's S, p 0.5;
       hue + randint[−18, 18] on OpenCV's 0–180 scale (mod 180), p 0.5.

    Each step goes back to uint8 (clip then truncate), as the original does. Hue and saturation do not
    depend on the channel order, so working on RGB instead of BGR gives the same result.
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):  # fmt: skip
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = int(hue_delta)

    @staticmethod
    def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _brightness(self, image, rng):
        if rng.integers(2):
            return self._convert(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def _contrast(self, image, rng):
        if rng.integers(2):
            return self._convert(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def _saturation(self, image, rng):
        if rng.integers(2):
            hsv = rgb_to_hsv_u8(image)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return hsv_to_rgb_u8(hsv)
        return image

    def _hue(self, image, rng):
        if rng.integers(2):
            hsv = rgb_to_hsv_u8(image)
            delta = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
            return hsv_to_rgb_u8(hsv)
        return image

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None):
        rng = _rng(rng)
        if image.dtype != np.uint8:
            raise TypeError(f"PhotometricDistortion expects a uint8 image, got {image.dtype}")
        image = self._brightness(image, rng)
        if rng.integers(2):
            image = self._hue(self._saturation(self._contrast(image, rng), rng), rng)
        else:
            image = self._contrast(self._hue(self._saturation(image, rng), rng), rng)
        return image, label

    def __repr__(self) -> str:
        return (
            f"PhotometricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )


# ---------------------------------------------------------------------------------------------------------
# Composition and builders


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


class Compose:
    """Applies transforms in order; ``rng`` (a numpy Generator) drives every random choice.

    Returns C-contiguous arrays (flips produce negative-stride views otherwise).
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, label: Label = None, rng: np.random.Generator | None = None):
        rng = _rng(rng)
        for t in self.transforms:
            image, label = t(image, label, rng)
        image = np.ascontiguousarray(image)
        return image, None if label is None else np.ascontiguousarray(label)

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner}\n])"


def build_train_transforms(
    crop_size: int | Sequence[int],
    short_edge_choices: Sequence[int],
    max_long: int | None,
    cat_max_ratio: float = 1.0,
    pad_to: int | Sequence[int] | Literal["crop"] | None = "crop",
    photometric: bool = True,
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The official training pipeline (spec §3.5).

    Examples (official values)::

        # ADE20K: short side 256..1024 (16 choices), long ≤ 2048, crop 512, pad to 512 with 128 / 255
        build_train_transforms(512, [int(x * 0.1 * 512) for x in range(5, 21)], 2048)
        # Cityscapes: crop 512×1024, no padding
        build_train_transforms((512, 1024), [int(x * 0.1 * 1024) for x in range(5, 21)], 4096, pad_to=None)

    ``pad_to="crop"`` pads to the crop size; ``None`` disables padding.
    """
    crop = _pair(crop_size)
    transforms: list[Transform] = [
        ResizeShortestEdge(short_edge_choices, max_long),
        RandomCrop(crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
    ]
    if photometric:
        transforms.append(PhotometricDistortion())
    if flip:
        transforms.append(RandomHorizontalFlip(0.5))
    if pad_to is not None:
        transforms.append(Pad(crop if pad_to == "crop" else pad_to, 128, ignore_index))
    return Compose(transforms)


def build_test_transform(short_edge: int, max_long: int | None) -> Compose:
    """Test-time resize (spec §4.1): short side → ``short_edge``, long side ≤ ``max_long``; no randomness."""
    return Compose([ResizeShortestEdge([short_edge], max_long)])


class TransformedDataset:
    """Wraps a dataset so ``ds[i]`` returns the transformed ``SegmentationSample``.

    The generator of sample ``i`` is seeded with ``(seed, epoch, i)``, so augmentation is reproducible and
    independent of worker assignment. Call :meth:`set_epoch` at the start of each epoch (before the
    DataLoader iterator is created: workers receive a copy of this object).
    """

    def __init__(self, dataset: Any, transform: Compose, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        rng = np.random.default_rng([self.seed, self.epoch, index % len(self)])
        image, label = self.transform(sample.image, sample.label, rng)
        return type(sample)(image=image, label=label, name=sample.name)

    def __getattr__(self, name: str) -> Any:  # classes, palette, ignore_index, num_classes of the dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
