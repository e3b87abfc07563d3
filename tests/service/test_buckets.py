"""The bucket policy (service/imaging/preprocess.py) and the repository layout reader (service/repository.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faseg.service.imaging.preprocess import bucket_name, choose_bucket, parse_bucket
from faseg.service.repository import ModelConfig, RepositoryError, read_model, scan_repository

SQUARE, WIDE, TALL, BIG_SQUARE, BIG_WIDE = (256, 256), (256, 512), (512, 256), (512, 512), (512, 1024)


@pytest.mark.parametrize(
    ("image_size", "buckets", "expected"),
    [
        ((1024, 512), [SQUARE, WIDE], WIDE),  # 2:1 image → the 2:1 bucket
        ((500, 480), [SQUARE, WIDE], SQUARE),  # closest aspect ratio wins over size
        ((300, 600), [SQUARE, WIDE, TALL], TALL),
        ((200, 100), [WIDE, BIG_WIDE], WIDE),  # smallest bucket not smaller than the image
        ((600, 300), [WIDE, BIG_WIDE], BIG_WIDE),
        ((4000, 2000), [WIDE, BIG_WIDE], BIG_WIDE),  # none is as large: the largest
        ((100, 100), [BIG_SQUARE, SQUARE], SQUARE),
        ((3000, 1000), [SQUARE, WIDE], WIDE),  # 3:1 is closer to 2:1 than to 1:1
        ((640, 480), [WIDE], WIDE),  # one bucket: always it
    ],
)
def test_policy(image_size: tuple[int, int], buckets: list[tuple[int, int]], expected: tuple[int, int]) -> None:
    assert choose_bucket(image_size, buckets) == expected


def test_bucket_names() -> None:
    assert bucket_name(WIDE) == "256x512" and parse_bucket("256x512") == WIDE and parse_bucket(" 256X512 ") == WIDE
    assert parse_bucket("auto") is None and parse_bucket("256") is None and parse_bucket("-1x5") is None


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_layout(tmp_path: Path) -> None:
    _touch(tmp_path / "seg" / "1" / "a.onnx")
    _touch(tmp_path / "seg" / "2" / "square.onnx")
    _touch(tmp_path / "seg" / "2" / "wide.plan")
    _touch(tmp_path / "seg" / "2" / "notes.txt")  # ignored
    (tmp_path / "seg" / "2" / "ckpt").mkdir()  # a torch checkpoint directory
    (tmp_path / "seg" / "config.json").write_text(json.dumps({"max_batch_size": 4, "num_versions": 2}))
    _touch(tmp_path / "empty" / "1" / "readme.md")
    models = scan_repository(tmp_path)
    assert sorted(models) == ["empty", "seg"]
    seg = models["seg"]
    assert seg.error is None and seg.config == ModelConfig(max_batch_size=4, num_versions=2)
    assert [p.name for p in seg.versions["2"]] == ["ckpt", "square.onnx", "wide.plan"]
    assert seg.wanted_versions() == ["2", "1"]
    assert "no version directory" in (models["empty"].error or "")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"bucket": "big"}, "bucket"),
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_bad_config(tmp_path: Path, config: dict[str, object], message: str) -> None:
    _touch(tmp_path / "m" / "1" / "a.onnx")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    source = read_model(tmp_path, "m")
    assert source is not None and message in (source.error or "")


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a directory"):
        scan_repository(tmp_path / "missing")
