"""Segmentation quality of a 2:1 image through a matching 2:1 input bucket vs through the square bucket.

What serving does, measured side by side on the same images: the demo model (model/demo_model) is exported
to ONNX at 256×256 and at 256×512; each synthetic validation image (512×1024, aspect ratio 2:1, with its
label map; ``SyntheticDataset(size=(512, 1024))``) is letterboxed into each bucket with the service's own
letterbox (``service/imaging/preprocess.py``), run through the export session (``export/session.py``), and
its labels are cropped and resized back to 512×1024 as the service does (``restore``). mIoU is computed
against the full-resolution labels. The service's bucket policy (same module) is checked to pick
the 2:1 bucket for these images.

    .venv/bin/python benchmarks/bucket_quality.py --images 64 \\
        --out benchmarks/results/$(date +%F)_bucket_quality.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from faseg.export.onnx_export import ExportOptions, export_checkpoint
from faseg.export.session import OrtSession
from faseg.model.data.synthetic import SyntheticDataset
from faseg.model.demo import demo_checkpoint_dir
from faseg.model.evaluation import SemSegEvaluator
from faseg.service.imaging.preprocess import bucket_name, choose_bucket, fit, letterbox, restore
from PIL import Image

from faseg.machine import cpu_name

IMAGE_SIZE = (512, 1024)  # (H, W): 2:1
BUCKETS = {"square": (256, 256), "matching_2to1": (256, 512)}
BATCH = 4


def _evaluate(
    session: OrtSession, bucket: tuple[int, int], dataset: SyntheticDataset, count: int
) -> tuple[dict[str, Any], float]:
    evaluator = SemSegEvaluator(dataset.num_classes, dataset.classes)
    infer_s = 0.0
    for start in range(0, count, BATCH):
        samples = [dataset[i] for i in range(start, min(count, start + BATCH))]
        boxes, tensors = [], []
        for sample in samples:
            h, w = sample.label.shape
            box = fit((w, h), bucket)
            boxes.append(box)
            tensors.append(letterbox(Image.fromarray(sample.image), box))
        began = time.perf_counter()
        labels = session.run(np.stack(tensors), ["labels"])["labels"]
        infer_s += time.perf_counter() - began
        for sample, box, label_map in zip(samples, boxes, labels, strict=True):
            prediction = restore(label_map, box, box.original_size)
            evaluator.process(prediction.astype(np.int64), sample.label.astype(np.int64))
    return evaluator.evaluate(), infer_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic validation images (512x1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)

    dataset = SyntheticDataset("val", num_images=args.images, size=IMAGE_SIZE, seed=args.seed)
    chosen = choose_bucket((IMAGE_SIZE[1], IMAGE_SIZE[0]), list(BUCKETS.values()))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bucket in BUCKETS.items():
            path = Path(tmp) / f"demo_{bucket_name(bucket)}.onnx"
            began = time.perf_counter()
            export_checkpoint(demo_checkpoint_dir(), path, ExportOptions(flavour="portable", size=bucket))
            export_s = time.perf_counter() - began
            session = OrtSession(path)
            metrics, infer_s = _evaluate(session, bucket, dataset, args.images)
            results[label] = {
                "bucket": bucket_name(bucket),
                "miou": round(metrics["miou"], 4),
                "pixel_acc": round(metrics["pixel_acc"], 4),
                "per_class_iou": {
                    name: None if np.isnan(iou) else round(iou, 4)
                    for name, iou in zip(dataset.classes, metrics["per_class_iou"], strict=True)
                },
                "export_s": round(export_s, 1),
                "infer_s_per_image": round(infer_s / args.images, 4),
            }
            print(f"{label:>14} bucket {bucket_name(bucket)}: mIoU {metrics['miou']:.4f}  pixel acc "
                  f"{metrics['pixel_acc']:.4f}  infer {infer_s / args.images * 1000:.1f} ms/image")  # fmt: skip
    square, wide = results["square"]["miou"], results["matching_2to1"]["miou"]
    record = {
        "benchmark": "bucket_quality",
        "date": dt.date.today().isoformat(),
        "command": " ".join([os.path.relpath(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "model": "model/demo_model (faseg_tiny, 10 synthetic classes), ONNX portable, ONNX Runtime CPU",
        "images": {"count": args.images, "size_hw": list(IMAGE_SIZE), "split": "val", "seed": args.seed},
        "policy_picks": bucket_name(chosen),
        "results": results,
        "miou_gain_2to1_minus_square": round(wide - square, 4),
    }
    print(f"policy picks {bucket_name(chosen)}; mIoU 2:1 bucket {wide:.4f} vs square {square:.4f} "
          f"({wide - square:+.4f})")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
