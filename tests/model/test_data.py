"""Datasets (synthetic, folder, ADE20K, Cityscapes), bad-data errors, augmentations and batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from faseg.model.data import batch as B
from faseg.model.data import scene as S
from faseg.model.data import transforms as T
from faseg.model.data.datasets import ADE20KDataset, CityscapesDataset, FolderDataset, build_dataset
from faseg.model.data.sample import SegmentationSample
from faseg.model.data.synthetic import SyntheticDataset
from PIL import Image
from scipy import ndimage

# ---------------------------------------------------------------------------------------------------------
# Fixture helpers


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _label(h: int = 12, w: int = 16, num_classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (h, w)).astype(np.uint8)


def _folder_tree(root: Path, classes=("bg", "crack", "rust"), n: int = 2, split: str | None = None, **meta) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(classes), **meta}))
    sub = Path(split) if split else Path()
    for i in range(n):
        _write_png(root / "images" / sub / f"img{i}.png", _image(seed=i))
        _write_png(root / "masks" / sub / f"img{i}.png", _label(num_classes=len(classes), seed=i))
    return root


# ---------------------------------------------------------------------------------------------------------
# Synthetic


@pytest.fixture(scope="module")
def synthetic_first50() -> list[SegmentationSample]:
    ds = SyntheticDataset("train", num_images=2000, seed=0)
    return [ds[i] for i in range(50)]


def test_synthetic_sample_format():
    ds = SyntheticDataset("val", num_images=3, size=(96, 160), seed=1)
    s = ds[0]
    assert len(ds) == 3 and ds.ignore_index == 255
    assert s.image.shape == (96, 160, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (96, 160) and s.label.dtype == np.uint8
    assert s.label.max() < len(ds.classes)
    assert s.name == "synthetic_val_00000"
    assert len(ds.classes) >= 8 and len(ds.palette) == len(ds.classes)
    assert np.array_equal(ds[-1].label, ds[2].label)
    with pytest.raises(IndexError):
        ds[3]


def test_synthetic_is_deterministic_per_seed_split_index():
    a, b = SyntheticDataset("train", 10, size=64, seed=7), SyntheticDataset("train", 10, size=64, seed=7)
    for i in (0, 5, 9):
        assert np.array_equal(a[i].image, b[i].image) and np.array_equal(a[i].label, b[i].label)
    # reading out of order gives the same sample
    assert np.array_equal(a[3].image, SyntheticDataset("train", 10, size=64, seed=7)[3].image)
    assert not np.array_equal(a[0].image, a[1].image)
    assert not np.array_equal(a[0].image, SyntheticDataset("train", 10, size=64, seed=8)[0].image)
    assert not np.array_equal(a[0].image, SyntheticDataset("val", 10, size=64, seed=7)[0].image)


def test_synthetic_covers_every_class(synthetic_first50):
    counts = np.zeros(len(S.SYNTHETIC_CLASSES), dtype=np.int64)
    for s in synthetic_first50:
        counts[np.unique(s.label)] += 1
    missing = [S.SYNTHETIC_CLASSES[c] for c in np.flatnonzero(counts == 0)]
    assert not missing, f"classes never present in the first 50 images: {missing}"
    # thin and small classes are common, not exceptional
    assert counts[S.POLE] >= 25 and counts[S.BALL] >= 25


def test_synthetic_thin_and_small_structures(synthetic_first50):
    widths, areas = [], []
    for s in synthetic_first50:
        pole = s.label == S.POLE
        for row in pole[::8]:  # horizontal run lengths of pole pixels
            edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
            widths.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
        comp, _ = ndimage.label(s.label == S.BALL)
        areas.extend(np.bincount(comp.ravel())[1:])
    assert widths and np.median(widths) <= 8, "poles should be a few pixels wide"
    assert areas and np.median(areas) <= 400, "balls should be small objects"


def test_synthetic_images_are_not_flat_colours(synthetic_first50):
    # texture + noise + illumination: pixels of one class vary within an image
    s = synthetic_first50[0]
    stds = [s.image[s.label == c].std() for c in np.unique(s.label) if (s.label == c).sum() > 200]
    assert stds and min(stds) > 2.0


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticDataset("nope", 10)
    with pytest.raises(ValueError, match="empty"):
        SyntheticDataset("train", 0)


def test_build_dataset_synthetic_specs():
    train, val = build_dataset("synthetic:train"), build_dataset("synthetic:val")
    assert (len(train), len(val)) == (2000, 200) and train.size == (256, 256)
    small = build_dataset("synthetic:val?num_images=5&size=64x96&seed=3")
    assert (len(small), small.size, small.seed, small.split) == (5, (64, 96), 3, "val")
    assert build_dataset("synthetic", split="val").split == "val"
    for bad in ("synthetic:bogus", "synthetic:train?colour=red", "nope:/x", "ade20k", "folder:"):
        with pytest.raises(ValueError):
            build_dataset(bad)


# ---------------------------------------------------------------------------------------------------------
# Folder format


def test_folder_dataset_loads(tmp_path):
    root = _folder_tree(tmp_path / "set", palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    ds = FolderDataset(root)
    assert len(ds) == 2 and ds.classes == ["bg", "crack", "rust"]
    assert ds.palette == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    s = ds[1]
    assert s.name == "img1"
    assert np.array_equal(s.image, _image(seed=1)) and np.array_equal(s.label, _label(seed=1))


def test_folder_dataset_palette_default_split_and_ignore_remap(tmp_path):
    root = _folder_tree(tmp_path / "set", n=1, split="val", ignore_index=7)
    mask = _label()
    mask[0, :4] = 7
    _write_png(root / "masks" / "val" / "img0.png", mask)
    ds = build_dataset(f"folder:{root}", split="val")
    assert isinstance(ds, FolderDataset) and len(ds.palette) == 3
    label = ds[0].label
    assert (label[0, :4] == 255).all() and np.array_equal(label[1:], mask[1:])


def test_folder_dataset_rgb_masks_decoded_through_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    root = _folder_tree(tmp_path / "set", n=1, palette=palette)
    ids = _label()
    _write_png(root / "masks" / "img0.png", np.array(palette, dtype=np.uint8)[ids])
    assert np.array_equal(FolderDataset(root)[0].label, ids)
    rgb = np.array(palette, dtype=np.uint8)[ids]
    rgb[0, 0] = (1, 2, 3)
    _write_png(root / "masks" / "img0.png", rgb)
    with pytest.raises(ValueError, match=r"img0\.png.*\(1, 2, 3\)"):
        FolderDataset(root)[0]


def test_folder_missing_mask_names_the_image(tmp_path):
    root = _folder_tree(tmp_path / "set")
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img1\.png"):
        FolderDataset(root)


def test_folder_label_out_of_range_names_the_mask(tmp_path):
    root = _folder_tree(tmp_path / "set")
    bad = _label()
    bad[3, 3] = 9
    _write_png(root / "masks" / "img0.png", bad)
    ds = FolderDataset(root)
    with pytest.raises(ValueError, match=r"img0\.png.*\[9\]"):
        ds[0]
    ds[1]  # the other sample is fine
    with pytest.raises(ValueError, match=r"img0\.png"):
        ds.verify()


def test_folder_size_mismatch_names_both_files(tmp_path):
    root = _folder_tree(tmp_path / "set")
    _write_png(root / "masks" / "img0.png", _label(h=10))
    with pytest.raises(ValueError, match=r"images.*img0\.png.*masks.*img0\.png"):
        FolderDataset(root)[0]


def test_folder_empty_dataset(tmp_path):
    root = _folder_tree(tmp_path / "set", n=0)
    (root / "images").mkdir()
    with pytest.raises(ValueError, match=r"empty dataset.*images"):
        FolderDataset(root)
    with pytest.raises(FileNotFoundError, match=r"nothere"):
        FolderDataset(tmp_path / "set", split="nothere")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"names": ["a"]}), '"classes"'),
        (json.dumps({"classes": []}), "non-empty"),
        (json.dumps({"classes": ["a", "a"]}), "duplicate"),
        (json.dumps({"classes": ["a", "b"], "palette": [[0, 0, 0]]}), "palette"),
        (json.dumps({"classes": ["a"], "palette": [[0, 0, 300]]}), "palette"),
        (json.dumps({"classes": ["a", "b"], "ignore_index": 1}), "ignore_index"),
        (json.dumps({"classes": ["a"], "colours": []}), "unknown keys"),
    ],
)
def test_folder_bad_classes_json_names_the_file(tmp_path, content, match):
    root = _folder_tree(tmp_path / "set", n=1)
    (root / "classes.json").write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        FolderDataset(root)
    assert "classes.json" in str(info.value)


def test_folder_missing_classes_json(tmp_path):
    root = _folder_tree(tmp_path / "set", n=1)
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.json"):
        FolderDataset(root)


def test_corrupt_image_names_the_file(tmp_path):
    root = _folder_tree(tmp_path / "set", n=1)
    (root / "images" / "img0.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"img0\.png"):
        FolderDataset(root)[0]


# ---------------------------------------------------------------------------------------------------------
# ADE20K and Cityscapes


def _ade_tree(root: Path) -> Path:
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _write_png(root / "annotations" / split / f"{stem}.png", np.array([[0, 1, 2, 150]] * 3, np.uint8))
        _write_png(root / "images" / split / f"{stem}.jpg", _image(3, 4))
    return root


def test_ade20k_reduce_zero_label(tmp_path):
    root = _ade_tree(tmp_path / "ADEChallengeData2016")
    ds = ADE20KDataset(root, "training")
    assert len(ds) == 1 and len(ds.classes) == 150 and ds.classes[0] == "wall"
    s = ds[0]
    assert s.image.shape == (3, 4, 3) and s.name == "ADE_train_00000001"
    assert s.label.tolist() == [[255, 0, 1, 149]] * 3
    assert len(ADE20KDataset(root, "val")) == 1
    assert len(build_dataset(f"ade20k:{root}", split="val")) == 1


def test_ade20k_bad_data(tmp_path):
    root = _ade_tree(tmp_path / "ade")
    _write_png(root / "annotations" / "training" / "ADE_train_00000001.png", np.full((3, 4), 151, np.uint8))
    with pytest.raises(ValueError, match=r"ADE_train_00000001\.png.*\[150\]"):
        ADE20KDataset(root, "training")[0]
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_val_00000001"):
        ADE20KDataset(root, "validation")
    with pytest.raises(ValueError, match="split"):
        ADE20KDataset(root, "test")


def _cityscapes_tree(root: Path, split: str = "train") -> Path:
    for city, frame in (("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")):
        _write_png(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", _image(8, 16))
        _write_png(root / "gtFine" / split / city / f"{frame}_gtFine_labelTrainIds.png",
                   np.array([[0, 18, 255, 5] * 4] * 8, np.uint8))  # fmt: skip
        _write_png(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", np.zeros((8, 16), np.uint8))
    return root


def test_cityscapes_loads_train_ids(tmp_path):
    root = _cityscapes_tree(tmp_path / "cityscapes")
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 2 and len(ds.classes) == 19 and ds.palette[0] == (128, 64, 128)
    s = ds[1]
    assert s.name == "bremen/bremen_000001_000019"
    assert s.label[0, :4].tolist() == [0, 18, 255, 5]
    assert len(build_dataset(f"cityscapes:{root}", split="train")) == 2


def test_cityscapes_bad_data(tmp_path):
    root = _cityscapes_tree(tmp_path / "cs")
    bad = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png"
    _write_png(bad, np.full((8, 16), 19, np.uint8))
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelTrainIds\.png.*\[19\]"):
        CityscapesDataset(root, "train")[0]
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=r"aachen_000000_000019_leftImg8bit\.png"):
        CityscapesDataset(root, "train")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.val"):
        CityscapesDataset(root, "val")


# ---------------------------------------------------------------------------------------------------------
# Transforms


def test_shortest_edge_size_matches_detectron2():
    assert T.shortest_edge_size(480, 640, 512, 2048) == (512, 683)
    assert T.shortest_edge_size(512, 2048, 1024, 2048) == (512, 2048)  # long side capped
    assert T.shortest_edge_size(1024, 2048, 1024, 2048) == (1024, 2048)
    assert T.shortest_edge_size(300, 200, 100, None) == (150, 100)


def test_resize_by_choice_picks_from_the_list():
    choices = [32, 48, 64, 80]
    resize = T.ResizeShortestEdge(choices, max_long=1000)
    image, label = _image(40, 60), _label(40, 60)
    seen = set()
    for seed in range(40):
        im, lab = resize(image, label, np.random.default_rng(seed))
        assert im.shape[:2] == lab.shape and lab.dtype == np.uint8
        assert min(im.shape[:2]) in choices
        assert set(np.unique(lab)) <= set(np.unique(label))  # nearest: no new values
        seen.add(min(im.shape[:2]))
    assert seen == set(choices)
    im, _ = T.ResizeShortestEdge([100], max_long=150)(image, None, np.random.default_rng(0))
    assert im.shape[:2] == (100, 150)


def test_random_crop_size_and_alignment():
    h, w = 30, 50
    image = _image(h, w)
    label = np.arange(h * w, dtype=np.int32).reshape(h, w)  # every pixel unique: locates the window
    crop = T.RandomCrop((20, 64))
    for seed in range(10):
        im, lab = crop(image, label, np.random.default_rng(seed))
        assert im.shape == (20, 50, 3) and lab.shape == (20, 50)  # clipped to the image width
        y0, x0 = divmod(int(lab[0, 0]), w)
        assert np.array_equal(im, image[y0 : y0 + 20, x0 : x0 + 50])


def test_random_crop_cat_max_ratio_is_respected():
    label = np.zeros((64, 128), np.uint8)
    label[:, 64:] = 1
    image = _image(64, 128)

    def worst_share(lab):
        counts = np.bincount(lab.ravel())
        return counts.max() / counts.sum(), (counts > 0).sum()

    # 78% of the windows satisfy the 0.9 bound, so 10 tries essentially always find one
    constrained = T.RandomCrop(64, cat_max_ratio=0.9)
    plain = T.RandomCrop(64)
    plain_violations = 0
    for seed in range(60):
        share, n = worst_share(constrained(image, label, np.random.default_rng(seed))[1])
        assert n > 1 and share < 0.9
        share, n = worst_share(plain(image, label, np.random.default_rng(seed))[1])
        plain_violations += share >= 0.9
    assert plain_violations >= 5  # without the constraint ~22% of the crops violate it


def test_pad_values():
    image, label = _image(10, 12), _label(10, 12)
    im, lab = T.Pad(16)(image, label, None)
    assert im.shape == (16, 16, 3) and lab.shape == (16, 16)
    assert np.array_equal(im[:10, :12], image) and np.array_equal(lab[:10, :12], label)
    assert (im[10:] == 128).all() and (im[:, 12:] == 128).all()
    assert (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    with pytest.raises(ValueError, match="pad"):
        T.Pad(8)(image, label, None)


def test_flip_flips_image_and_label_together():
    image, label = _image(), _label()
    im, lab = T.RandomHorizontalFlip(p=1.0)(image, label, np.random.default_rng(0))
    assert np.array_equal(im, image[:, ::-1]) and np.array_equal(lab, label[:, ::-1])
    im, lab = T.RandomHorizontalFlip(p=0.0)(image, label, np.random.default_rng(0))
    assert im is image and lab is label
    flips = sum(
        np.array_equal(T.RandomHorizontalFlip()(image, label, np.random.default_rng(s))[1], label[:, ::-1])
        for s in range(40)
    )
    assert 8 < flips < 32


def test_photometric_distortion_changes_image_not_label():
    image, label = _image(32, 32), _label(32, 32)
    t = T.PhotometricDistortion()
    changed = 0
    for seed in range(12):
        im, lab = t(image, label, np.random.default_rng(seed))
        assert lab is label
        assert im.shape == image.shape and im.dtype == np.uint8
        changed += not np.array_equal(im, image)
    assert changed >= 8


def test_photometric_brightness_and_hue_ranges():
    # A uniform colour: brightness shifts it by ≤ 32 per channel; hue moves by ≤ 18 (OpenCV 0–180 scale).
    image = np.zeros((4, 4, 3), np.uint8)
    image[:] = (60, 120, 200)
    hue0 = int(T.rgb_to_hsv_u8(image)[0, 0, 0])
    brightness_only = T.PhotometricDistortion(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    hue_only = T.PhotometricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1))
    for seed in range(20):
        im, _ = brightness_only(image, None, np.random.default_rng(seed))
        assert np.abs(im.astype(int) - image).max() <= 33
        im, _ = hue_only(image, None, np.random.default_rng(seed))
        d = abs(int(T.rgb_to_hsv_u8(im)[0, 0, 0]) - hue0)
        assert min(d, 180 - d) <= 19


def test_hsv_conversion_matches_opencv_convention():
    from skimage.color import rgb2hsv

    image = _image(32, 32, seed=3)
    hsv = T.rgb_to_hsv_u8(image)
    ref = rgb2hsv(image)
    dh = np.abs(hsv[..., 0] - ref[..., 0] * 180)
    assert np.minimum(dh, 180 - dh).max() <= 0.51  # H on 0..180
    assert np.abs(hsv[..., 1] - ref[..., 1] * 255).max() <= 0.51
    assert np.array_equal(hsv[..., 2], image.max(axis=-1))
    assert np.abs(T.hsv_to_rgb_u8(hsv).astype(int) - image).max() <= 5  # 8-bit HSV round trip


def test_build_train_transforms_end_to_end():
    t = T.build_train_transforms(64, [48, 64, 96], max_long=256, cat_max_ratio=0.75)
    ds = SyntheticDataset("train", 4, size=(80, 120))
    for i in range(4):
        s = ds[i]
        im, lab = t(s.image, s.label, np.random.default_rng(i))
        assert im.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert im.flags.c_contiguous and lab.flags.c_contiguous
    # short side 48 < crop: padded with 128 / 255
    t = T.build_train_transforms(64, [48], max_long=256, photometric=False, flip=False)
    im, lab = t(ds[0].image, ds[0].label, np.random.default_rng(0))
    assert (im[48:] == 128).all() and (lab[48:] == 255).all()
    t = T.build_train_transforms(64, [48], max_long=256, pad_to=None)
    assert t(ds[0].image, ds[0].label, np.random.default_rng(0))[0].shape[0] == 48


def test_build_test_transform_is_deterministic():
    t = T.build_test_transform(64, max_long=100)
    im, lab = t(_image(30, 60), None)
    assert im.shape == (50, 100, 3) and lab is None


def test_transformed_dataset_reproducible_per_epoch():
    base = SyntheticDataset("train", 3, size=64)
    t = T.build_train_transforms(48, [48, 64], max_long=128)
    a, b = T.TransformedDataset(base, t, seed=1), T.TransformedDataset(base, t, seed=1)
    assert np.array_equal(a[2].image, b[2].image) and a[2].name == base[2].name
    before = a[2].image
    a.set_epoch(1)
    assert not np.array_equal(before, a[2].image)
    assert a.classes == base.classes and len(a) == 3


# ---------------------------------------------------------------------------------------------------------
# Targets and batching


def test_label_to_targets():
    label = torch.tensor([[0, 0, 3], [255, 3, 3]])
    t = B.label_to_targets(label)
    assert t["labels"].tolist() == [0, 3] and t["labels"].dtype == torch.int64
    assert t["masks"].dtype == torch.bool and t["masks"].shape == (2, 2, 3)
    assert t["masks"][0].tolist() == [[True, True, False], [False, False, False]]
    assert t["masks"][1].tolist() == [[False, False, True], [False, True, True]]
    empty = B.label_to_targets(torch.full((4, 5), 255))
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 4, 5)


def test_collate_pads_and_builds_targets():
    a = (_image(40, 64), _label(40, 64), "a")
    b = SegmentationSample(image=_image(30, 20, seed=1), label=_label(30, 20, seed=1), name="b")
    batch = B.collate([a, b], size_divisibility=32)
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.labels.shape == (2, 64, 64) and batch.image_sizes == [(40, 64), (30, 20)]
    assert batch.names == ["a", "b"]
    assert torch.equal(batch.images[0, :, :40, :64], torch.from_numpy(a[0]).permute(2, 0, 1).float())
    assert torch.allclose(batch.images[1, :, 30:, :], torch.tensor(B.PIXEL_MEAN).view(3, 1, 1).expand(3, 34, 64))
    assert (batch.labels[1, 30:] == 255).all() and (batch.labels[1, :, 20:] == 255).all()
    t = batch.targets[1]
    assert t["masks"].shape[1:] == (64, 64) and not t["masks"][:, 30:].any()
    assert t["labels"].tolist() == sorted(np.unique(b.label).tolist())
    assert torch.equal(t["masks"].sum(0)[:30, :20], torch.ones(30, 20, dtype=torch.int64))
    assert batch.to("cpu").images.shape == batch.images.shape
    with pytest.raises(ValueError):
        B.collate([])
