"""int8 accuracy of the demo model: mIoU on ``synthetic:val``, label agreement on photographs, per-group sensitivity.

Everything runs through ONNX Runtime (CPU) on files exported from the bundled demo model (``faseg_tiny``,
256×256, 10 classes): the fp32 export is the reference, the int8 export is calibrated on ``--calibration``
(default ``synthetic:train``, 16 images — not the images it is evaluated on).

- **accuracy** (the acceptance): mIoU of fp32 and int8 on ``synthetic:val`` (200 images, at their native
  256×256, the same confusion-matrix evaluator as ``faseg eval``), and the fraction of pixels whose label
  equals fp32's on scikit-image's colour photographs (letterboxed into 256×256, as the service does).
  Targets: mIoU drop ≤ 1.0 point, label agreement ≥ 98 %.
- **sensitivity** (``--sensitivity``): one node group of :data:`faseg.export.quantize.GROUPS` quantised at a
  time (everything else fp32), with ``--leave-one-out`` everything but one group, then the shipped choice
  (:data:`faseg.export.quantize.FLOAT_GROUPS` held in float): label agreement with fp32 and the median /
  max mask-logit error on the photographs plus 8 ``synthetic:val`` images. This is how the float groups
  were chosen.

    .venv/bin/python benchmarks/int8_accuracy.py                  # records benchmarks/results/<date>_int8_accuracy.json
    .venv/bin/python benchmarks/int8_accuracy.py --sensitivity    # adds the per-group table
    .venv/bin/python benchmarks/int8_accuracy.py --flavour plugin --no-save
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_MIOU_DROP = 1.0  # points
TARGET_PHOTO_AGREEMENT = 0.98
#: scikit-image's colour photographs (those shipped inside the wheel; no download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")


def photographs(size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    import skimage.data
    from faseg.export.verify import letterbox

    names, images = [], []
    for name in PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception as exc:  # a photo that would need a download is left out, and said so
            print(f"skipping photo {name}: {exc}", file=sys.stderr)
            continue
        names.append(name)
        images.append(letterbox(image, size))
    return names, np.stack(images)


def session(path: Path, threads: int) -> Any:
    from faseg.export.session import OrtSession, SessionConfig

    return OrtSession(path, SessionConfig(device="cpu", intra_op_threads=threads))


def run_all(sess: Any, images: np.ndarray, outputs: list[str], batch: int = 4) -> dict[str, np.ndarray]:
    from faseg.export.verify import run_batched

    return run_batched(lambda b: sess.run(b, outputs), images, batch)


def compare(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> dict[str, float]:
    result = {"label_agreement": float((ref["labels"] == out["labels"]).mean())}
    if "pred_masks" in ref:
        diff = np.abs(ref["pred_masks"].astype(np.float64) - out["pred_masks"])
        result["masks_median_abs"] = float(np.median(diff))
        result["masks_max_abs"] = float(diff.max())
        diff = np.abs(ref["pred_logits"].astype(np.float64) - out["pred_logits"])
        result["class_logits_median_abs"] = float(np.median(diff))
    return result


def miou(sess: Any, dataset: Any, limit: int | None) -> dict[str, Any]:
    """mIoU / pixel accuracy of an ONNX file on a dataset at native size (the images must match the bucket)."""
    from faseg.model.evaluation import SemSegEvaluator

    evaluator = SemSegEvaluator(dataset.num_classes, list(dataset.classes), device="cpu")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        sample = dataset[i]
        labels = sess.run(sample.image[None], ["labels"])["labels"][0].astype(np.int64)
        evaluator.process(labels, sample.label.astype(np.int64))
    result = evaluator.evaluate()
    return {"miou": result["miou"], "pixel_acc": result["pixel_acc"], "num_images": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavour", choices=("portable", "plugin"), default="portable")
    parser.add_argument("--calibration", default="synthetic:train", help="calibration dataset spec")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--data", default="synthetic:val", help="evaluation dataset spec (200 images)")
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sensitivity", action="store_true", help="add the per-group sensitivity table")
    parser.add_argument("--leave-one-out", action="store_true", help="sensitivity: add 'all but one group' rows")
    parser.add_argument("--no-accuracy", action="store_true", help="skip mIoU / photos (with --sensitivity)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_int8_accuracy.json)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    import onnx
    from faseg.export.onnx_export import ExportOptions, export_checkpoint
    from faseg.export.quantize import (
        FLOAT_GROUPS,
        GROUPS,
        Calibration,
        calibrate,
        calibration_images,
        quantize_int8,
    )
    from faseg.model.data import build_dataset
    from faseg.model.demo import demo_checkpoint_dir

    from faseg.loadtest.report import environment

    env = environment()
    checkpoint = demo_checkpoint_dir()
    workdir = Path(tempfile.mkdtemp(prefix="faseg-int8-accuracy-"))
    outputs = ["labels", "confidence", "logits"]
    fp32_path, int8_path = workdir / "demo_fp32.onnx", workdir / "demo_int8.onnx"
    calibration = Calibration(args.calibration, args.calibration_images)
    started = time.perf_counter()
    export_checkpoint(checkpoint, fp32_path, ExportOptions(flavour=args.flavour, outputs=outputs))
    export_checkpoint(
        checkpoint,
        int8_path,
        ExportOptions(flavour=args.flavour, outputs=outputs, precision="int8", calibration=calibration),
    )
    print(f"exported fp32 and int8 in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    fp32, int8 = session(fp32_path, args.threads), session(int8_path, args.threads)
    size = fp32.input_size
    names, photos = photographs(size)
    report: dict[str, Any] = {
        "benchmark": "int8_accuracy",
        "title": "int8 vs fp32, demo model (faseg_tiny 256x256), ONNX Runtime CPU",
        "date": env["date"],
        "command": "python benchmarks/int8_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env,
        "flavour": args.flavour,
        "calibration": json.loads(calibration.to_metadata()),
        "float_groups": FLOAT_GROUPS,
        "file_mb": {"fp32": fp32_path.stat().st_size / 1e6, "int8": int8_path.stat().st_size / 1e6},
    }

    if not args.no_accuracy:
        dataset = build_dataset(args.data, split="val")
        m32, m8 = miou(fp32, dataset, args.limit), miou(int8, dataset, args.limit)
        drop = (m32["miou"] - m8["miou"]) * 100
        agreement = compare(run_all(fp32, photos, ["labels"]), run_all(int8, photos, ["labels"]))
        report["accuracy"] = {
            "data": args.data,
            "fp32": m32,
            "int8": m8,
            "miou_drop_points": round(drop, 3),
            "miou_target": {"max_drop_points": TARGET_MIOU_DROP, "met": drop <= TARGET_MIOU_DROP},
            "photos": names,
            "photo_label_agreement": agreement["label_agreement"],
            "photo_target": {
                "min_agreement": TARGET_PHOTO_AGREEMENT,
                "met": agreement["label_agreement"] >= TARGET_PHOTO_AGREEMENT,
            },
        }
        print(json.dumps(report["accuracy"], indent=2), file=sys.stderr)

    if args.sensitivity:
        synthetic = build_dataset(args.data, split="val")
        probe = np.concatenate([photos, np.stack([synthetic[i].image for i in range(8)])])
        proto = onnx.load_model(str(fp32_path))
        ref = run_all(fp32, probe, ["labels", "pred_logits", "pred_masks"])
        cal = calibration_images(args.calibration, size, args.calibration_images)
        ranges = calibrate(proto, cal, plugin=args.flavour == "plugin")
        configs: list[tuple[str, str, set[str]]] = [("all quantised", "", set())]
        configs += [("only", g, set(GROUPS) - {g}) for g in GROUPS]
        if args.leave_one_out:
            configs += [("all but", g, {g}) for g in GROUPS]
        configs += [("shipped", "", set(FLOAT_GROUPS))]
        rows = []
        for kind, group, float_groups in configs:
            quantized, rep = quantize_int8(proto, cal, plugin=args.flavour == "plugin", float_groups=float_groups,
                                           ranges=ranges)  # fmt: skip
            path = workdir / "probe_int8.onnx"
            onnx.save_model(quantized, str(path))
            row = {"config": kind, "group": group, "quantized_nodes": rep.quantized_nodes}
            row.update(
                compare(ref, run_all(session(path, args.threads), probe, ["labels", "pred_logits", "pred_masks"]))
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        report["sensitivity"] = {
            "images": f"{len(names)} photographs + 8 {args.data} images",
            "reference": "the fp32 export through ONNX Runtime",
            "rows": rows,
        }

    print(json.dumps(report, indent=2, default=str))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS / f"{env['date']}_int8_accuracy.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
