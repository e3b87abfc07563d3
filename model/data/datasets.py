"""Semantic-segmentation datasets: ADE20K, Cityscapes, a generic folder format and a synthetic scene set.

Every dataset is a plain indexable object (usable as a ``torch.utils.data.Dataset``) with

- ``classes: list[str]`` and ``palette: list[tuple[int, int, int]]`` (one display colour per class),
- ``ignore_index = 255`` (label value that is never a class),
- ``len(ds)`` and ``ds[i] -> SegmentationSample`` (``image`` uint8 ``(H, W, 3)`` RGB, ``label`` ``(H, W)``
  integer class ids in ``[0, num_classes)`` or 255, ``name``).

File lists are built (and image/mask pairing checked) at construction; pixel data is read lazily, and every
sample is checked when it is read: an image without a mask, a mask whose size differs from its image and a
label value that is neither a class id nor 255 raise ``FileNotFoundError`` / ``ValueError`` naming the file.
An empty dataset is an error too.

On-disk layouts
---------------
**ADE20K** (``ADE20KDataset(root, split)``, split ``training``/``validation``, or ``train``/``val``)::

    root/images/{training,validation}/*.jpg
    root/annotations/{training,validation}/<same stem>.png     # the raw ADEChallengeData2016 masks

The raw masks use 0 = "other" and 1..150 = classes; they are read with *reduce zero label* exactly like
``prepare_ade20k_sem_seg.py`` of Mask2Former (spec §3.6): 0 → 255 (ignore) and v → v − 1.

**Cityscapes** (``CityscapesDataset(root, split)``, split ``train``/``val``/``test``)::

    root/leftImg8bit/{split}/{city}/*_leftImg8bit.png
    root/gtFine/{split}/{city}/*_gtFine_labelTrainIds.png       # 19 train ids, 255 = ignore

The ``labelTrainIds`` files are made by cityscapesscripts' ``createTrainIdLabelImgs`` (spec §3.6).

**Folder** (``FolderDataset(root, split=None)``) — the format for fine-tuning on your own classes::

    root/classes.json
    root/images/[<split>/]*.{jpg,jpeg,png,webp}
    root/masks/[<split>/]<same stem>.png

``classes.json``::

    {
      "classes": ["background", "crack", "rust"],          # required: unique names, class id = position
      "palette": [[0, 0, 0], [255, 0, 0], [0, 128, 255]],   # optional: one [r, g, b] (0..255) per class
      "ignore_index": 255                                   # optional, default 255
    }

A mask is a single-channel PNG (mode ``L``, ``P`` — the palette index is the class id — or 16-bit) whose
pixel values are class ids, or the ignore value. A mask saved as RGB is accepted when every colour in it is
one of the ``palette`` colours, and is decoded to class ids through the palette. When ``ignore_index`` is not
255, those pixels are mapped to 255 on load, so every dataset hands out the same ignore value. At most 255
classes (255 is reserved for ignore).

**Synthetic** (``SyntheticDataset(split, num_images, size, seed)``, :mod:`.synthetic`): procedural outdoor
scenes with 10 classes (:mod:`.scene`), generated on the fly, deterministic per (seed, split, index), numpy
only. See :data:`~.scene.SYNTHETIC_CLASSES` and :class:`~.synthetic.SyntheticDataset` for what makes each
class recognisable. It is the data behind the tests and the demo model.

``build_dataset("KIND:PATH")`` builds any of them from one string (see its docstring).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .sample import IGNORE_INDEX, SegmentationSample
from .synthetic import synthetic_from_spec

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "CityscapesDataset",
    "FolderDataset",
    "SegmentationDataset",
    "SegmentationSample",
    "build_dataset",
    "make_palette",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def make_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A deterministic, well-spread palette: class ``i``'s bits are spread over the high bits of r, g, b."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1  # class 0 must not be black (black reads as "nothing" in overlays)
        for bit in range(8):
            r |= ((c >> (3 * bit)) & 1) << (7 - bit)
            g |= ((c >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((c >> (3 * bit + 2)) & 1) << (7 - bit)
        palette.append((r, g, b))
    return palette


# ---------------------------------------------------------------------------------------------------------
# Shared file reading and checking


def _read_image(path: Path) -> np.ndarray:
    """Reads an image as uint8 RGB ``(H, W, 3)``, applying EXIF orientation as detectron2's ``read_image``."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _read_label(path: Path, palette: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Reads a label PNG as an ``(H, W)`` integer array (palette indices for mode ``P``, no EXIF)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("L", "P"):
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int32)
            if mode in ("RGB", "RGBA") and palette is not None:
                return _decode_rgb_label(np.asarray(im.convert("RGB")), palette, path)
            raise ValueError(
                f"mask {path} has mode {mode}; expected a single-channel PNG of class ids (L, P or 16-bit)"
                + ("" if palette is None else " or RGB colours from the palette")
            )
    except FileNotFoundError:
        raise FileNotFoundError(f"mask file not found: {path}") from None
    except ValueError:
        raise
    except OSError as e:
        raise ValueError(f"cannot decode mask {path}: {e}") from e


def _decode_rgb_label(rgb: np.ndarray, palette: Sequence[tuple[int, int, int]], path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    found = keys[order][pos] == code
    if not found.all():
        bad = np.unique(code[~found])[:5]
        colours = ", ".join(str(((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255)) for c in bad)
        raise ValueError(f"mask {path} has colours that are not in the palette of classes.json: {colours}")
    return order[pos].astype(np.uint8 if len(palette) <= 255 else np.int32)


def _check_pair(image: np.ndarray, label: np.ndarray, num_classes: int, image_path: Path, mask_path: Path):
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
            f"{label.shape[1]}x{label.shape[0]}"
        )
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(label[bad]))[:10]
        raise ValueError(
            f"mask {mask_path} has label values {values} outside the {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, or {IGNORE_INDEX} = ignore)"
        )


def _list_images(directory: Path, extensions: Sequence[str]) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory not found: {directory}")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _require_mask(image: Path, mask: Path) -> None:
    if not mask.is_file():
        raise FileNotFoundError(f"missing mask for image {image}: expected {mask}")


class SegmentationDataset:
    """Base class for file-backed datasets: a list of (image path, mask path) pairs plus class metadata.

    Subclasses fill ``self.pairs``, ``self.classes``, ``self.palette`` and may override
    :meth:`_convert_label` (raw mask values → class ids / 255).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, pairs: list[tuple[Path, Path]], classes: list[str], palette, root: Path):
        if not pairs:
            raise ValueError(f"empty dataset: no images found under {root}")
        for image, mask in pairs:
            _require_mask(image, mask)
        self.pairs = pairs
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in c) for c in palette]
        self.root = root

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def _name(self, image_path: Path) -> str:
        return image_path.stem

    def _load_label(self, mask_path: Path) -> np.ndarray:
        return _read_label(mask_path)

    def _convert_label(self, label: np.ndarray) -> np.ndarray:
        return label

    def __getitem__(self, index: int) -> SegmentationSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        image_path, mask_path = self.pairs[index]
        image = _read_image(image_path)
        label = self._convert_label(self._load_label(mask_path))
        _check_pair(image, label, self.num_classes, image_path, mask_path)
        return SegmentationSample(image=image, label=label, name=self._name(image_path))

    def verify(self) -> None:
        """Reads every sample once, so bad data fails before training starts (raises on the first problem)."""
        for i in range(len(self)):
            self[i]

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(root={str(self.root)!r}, num_samples={len(self)}, classes={self.num_classes})"


# ---------------------------------------------------------------------------------------------------------
# ADE20K

# The 150 SceneParsing classes in train-id order (ADEChallengeData2016 objectInfo150, first name of each).
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
assert len(ADE20K_CLASSES) == 150

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}


def _canonical_split(split: str, allowed: Sequence[str]) -> str:
    canon = _SPLIT_ALIASES.get(split)
    if canon not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(allowed)}")
    return canon


class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (ADEChallengeData2016 layout), 150 classes, reduce-zero-label on load."""

    def __init__(self, root: str | Path, split: str = "training"):
        root = Path(root)
        sub = {"train": "training", "val": "validation"}[_canonical_split(split, ("train", "val"))]
        images = _list_images(root / "images" / sub, (".jpg", ".jpeg", ".png"))
        pairs = [(p, root / "annotations" / sub / f"{p.stem}.png") for p in images]
        super().__init__(pairs, ADE20K_CLASSES, make_palette(len(ADE20K_CLASSES)), root / "images" / sub)
        self.split = sub

    def _convert_label(self, label: np.ndarray) -> np.ndarray:
        # reduce_zero_label (spec §3.6): (v - 1) mod 256, so 0 ("other") → 255 and 1..150 → 0..149.
        if label.dtype == np.uint8:
            return label - np.uint8(1)  # uint8 arithmetic wraps 0 to 255
        out = label.astype(np.int32) - 1  # 16-bit masks: keep values > 256 visible to the range check
        out[out < 0] = IGNORE_INDEX
        return out


# ---------------------------------------------------------------------------------------------------------
# Cityscapes

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
# The official cityscapesscripts colours of the 19 train ids.
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations read from ``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignore)."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        split = _canonical_split(split, ("train", "val", "test"))
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image directory not found: {image_dir}")
        pairs = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*_leftImg8bit.png")):
                prefix = image.name[: -len("_leftImg8bit.png")]
                mask = root / "gtFine" / split / city.name / f"{prefix}_gtFine_labelTrainIds.png"
                if not mask.is_file():
                    raise FileNotFoundError(
                        f"missing mask for image {image}: expected {mask} (generate the labelTrainIds files "
                        "with cityscapesscripts' createTrainIdLabelImgs)"
                    )
                pairs.append((image, mask))
        super().__init__(pairs, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, image_dir)
        self.split = split

    def _name(self, image_path: Path) -> str:
        return f"{image_path.parent.name}/{image_path.name[: -len('_leftImg8bit.png')]}"


# ---------------------------------------------------------------------------------------------------------
# Generic folder format


def _load_classes_json(path: Path) -> tuple[list[str], list[tuple[int, int, int]], int]:
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path} (a folder dataset needs classes.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "classes" not in meta:
        raise ValueError(f'{path} must be a JSON object with a "classes" list')
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f'{path}: "classes" must be a non-empty list of non-empty strings')
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(f"{path}: duplicate class names {dup}")
    if len(classes) > 255:
        raise ValueError(f"{path}: {len(classes)} classes; at most 255 are supported (255 = ignore)")
    ignore = meta.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or ignore < len(classes) or ignore > 65535:
        raise ValueError(
            f'{path}: "ignore_index" must be an integer ≥ the number of classes ({len(classes)}), got {ignore!r}'
        )
    palette = meta.get("palette")
    if palette is None:
        palette = make_palette(len(classes))
    else:
        ok = isinstance(palette, list) and len(palette) == len(classes)
        ok = ok and all(
            isinstance(c, list | tuple)
            and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
            for c in palette
        )
        if not ok:
            raise ValueError(
                f'{path}: "palette" must hold one [r, g, b] triple of integers 0..255 per class '
                f"({len(classes)} classes)"
            )
        palette = [tuple(c) for c in palette]
    unknown = sorted(set(meta) - {"classes", "palette", "ignore_index"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (allowed: classes, palette, ignore_index)")
    return classes, palette, ignore


class FolderDataset(SegmentationDataset):
    """A user dataset in the folder format (see the module docstring for ``classes.json``)."""

    def __init__(self, root: str | Path, split: str | None = None):
        root = Path(root)
        classes, palette, self.source_ignore_index = _load_classes_json(root / "classes.json")
        image_dir = root / "images" if split is None else root / "images" / split
        mask_dir = root / "masks" if split is None else root / "masks" / split
        images = _list_images(image_dir, IMAGE_EXTENSIONS)
        stems: dict[str, Path] = {}
        for p in images:
            if p.stem in stems:
                raise ValueError(f"images {stems[p.stem]} and {p} share the stem {p.stem!r}; masks are matched by stem")
            stems[p.stem] = p
        pairs = [(p, mask_dir / f"{p.stem}.png") for p in images]
        super().__init__(pairs, classes, palette, image_dir)
        self.split = split

    def _load_label(self, mask_path: Path) -> np.ndarray:
        return _read_label(mask_path, self.palette)

    def _convert_label(self, label: np.ndarray) -> np.ndarray:
        if self.source_ignore_index != IGNORE_INDEX:
            label = label.copy()
            label[label == self.source_ignore_index] = IGNORE_INDEX
            if label.dtype != np.uint8 and label.max(initial=0) <= 255:
                label = label.astype(np.uint8)
        return label


# ---------------------------------------------------------------------------------------------------------
# Builder

def build_dataset(spec: str, split: str = "train") -> Any:
    """Builds a dataset from a ``KIND:PATH`` string.

    - ``ade20k:/data/ADEChallengeData2016`` (``split`` train/val),
    - ``cityscapes:/data/cityscapes`` (``split`` train/val/test),
    - ``folder:/data/my_set`` (uses ``images/<split>/`` when that folder exists, else all of ``images/``),
    - ``synthetic:train`` / ``synthetic:val`` (2000 / 200 images of 256×256, seed 0), with optional
      overrides after ``?``: ``synthetic:val?num_images=50&size=128&seed=3`` (``size`` = ``S`` or ``HxW``).
      ``synthetic`` alone takes ``split``.
    """
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        name, _, query = rest.partition("?")
        name = name or split
        return synthetic_from_spec(spec, _SPLIT_ALIASES.get(name, name), query)
    if not sep or not rest:
        raise ValueError(f"bad dataset spec {spec!r}: expected KIND:PATH (KIND: ade20k, cityscapes, folder, synthetic)")
    if kind == "ade20k":
        return ADE20KDataset(rest, split)
    if kind == "cityscapes":
        return CityscapesDataset(rest, split)
    if kind == "folder":
        root = Path(rest)
        # images/<split>/ when present (train also matches training, val validation), else all of images/
        names = [split] + [a for a, c in _SPLIT_ALIASES.items() if c == _SPLIT_ALIASES.get(split) and a != split]
        sub = next((n for n in names if (root / "images" / n).is_dir()), None)
        return FolderDataset(root, sub)
    raise ValueError(f"bad dataset spec {spec!r}: unknown kind {kind!r} (ade20k, cityscapes, folder, synthetic)")
