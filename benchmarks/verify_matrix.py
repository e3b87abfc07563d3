"""Export parity matrix: ``faseg export onnx`` + ``faseg verify`` over models × sizes × flavours × precisions ×
batch sizes, recorded in one JSON file (the numbers behind docs/export.md §7 and §9).

    .venv/bin/python benchmarks/verify_matrix.py                   # demo model + faseg_r50_ade20k (≈ 20 min)
    .venv/bin/python benchmarks/verify_matrix.py --models demo     # the demo model only (≈ 2 min)

Models: ``demo`` (the shipped trained weights, at 256×256 and 512×512) and ``r50`` (faseg_r50_ade20k with
seeded random weights at 512×512: no trained weights can be downloaded here). Each file is exported once and
verified at every batch size, against the per-image torch reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_export import machine_info  # noqa: E402  (a sibling script, not a package)

KEYS = ("label_agreement", "logits_max_abs", "logits_max_rel", "logits_median_abs", "confidence_max_abs")


def _checkpoint(model: str, workdir: Path) -> Path:
    from faseg.export.verify import default_checkpoint

    if model == "demo":
        return default_checkpoint()
    import torch
    from faseg.model import build_model, get_preset, save_pretrained

    torch.manual_seed(0)
    return save_pretrained(build_model(get_preset("faseg_r50_ade20k")).eval(), workdir / "r50")


def main(argv: list[str] | None = None) -> int:
    from faseg.export.onnx_export import ExportOptions, export_checkpoint
    from faseg.export.verify import verify

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,r50", help="comma list of demo, r50")
    parser.add_argument("--flavours", default="portable,plugin")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{dt.date.today()}_verify_matrix.json"))
    args = parser.parse_args(argv)
    sizes = {"demo": [(256, 256), (512, 512)], "r50": [(512, 512)]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="faseg-verify-") as tmp:
        workdir = Path(tmp)
        for model in args.models.split(","):
            checkpoint = _checkpoint(model, workdir)
            for size in sizes[model]:
                for flavour in args.flavours.split(","):
                    for precision in args.precisions.split(","):
                        onnx_path = workdir / f"{model}_{size[0]}_{flavour}_{precision}.onnx"
                        options = ExportOptions(
                            size=size, flavour=flavour, precision=precision, outputs="labels,confidence,logits"
                        )
                        export_checkpoint(checkpoint, onnx_path, options)
                        for batch in (int(b) for b in args.batches.split(",")):
                            start = time.perf_counter()
                            report = verify(onnx_path, checkpoint, batch_size=batch, tensorrt="off")
                            ort = report["onnxruntime"]
                            row = {
                                "model": model,
                                "size": list(size),
                                "flavour": flavour,
                                "precision": precision,
                                "batch": batch,
                                "passed": report["passed"],
                                **{k: ort.get(k) for k in KEYS},
                                "failures": ort.get("failures", []),
                                "torch_spread": report["torch"].get("spread"),
                                "seconds": round(time.perf_counter() - start, 1),
                            }
                            rows.append(row)
                            measured = ", ".join(f"{k} {row[k]:.3g}" for k in KEYS if row[k] is not None)
                            print(
                                f"{model} {size[0]}x{size[1]} {flavour:8s} {precision} b{batch}: "
                                f"{'PASS' if row['passed'] else 'FAIL'} {measured}",
                                flush=True,
                            )
    result = {
        "benchmark": "verify_matrix",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(0),
        "command": "python benchmarks/verify_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": "skimage astronaut, coffee, chelsea, rocket + 2 seeded random images (faseg verify defaults)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
