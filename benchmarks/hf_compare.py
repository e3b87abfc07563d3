"""Our fastest CPU path vs Hugging Face transformers' Mask2Former (eager PyTorch), side by side in one run.

What is compared (both with random weights — only speed is measured, and speed does not depend on the
weights' values beyond the data-dependent top-k / masking, which both sides run at full size):

- **HF Mask2Former Swin-T**: ``Mask2FormerForUniversalSegmentation`` with a Swin-T backbone (embed 96,
  depths 2-2-6-2, window 7), 150 classes, 100 queries, transformers' default 6 encoder / 10 decoder layers,
  eager PyTorch, plus its ``post_process_semantic_segmentation`` to a 512×512 label map. HF supports only
  Swin backbones for Mask2Former, hence Swin-T.
- **ours, same backbone**: ``faseg_swin_t_ade20k`` (FASeg Swin-T, ADE20K preset) — torch eager, ONNX Runtime
  portable export, and ONNX Runtime plugin export (our custom ops; when the library is built).
- **ours, R50**: ``faseg_r50_ade20k`` (ResNet-50, of similar size to Swin-T) through ONNX Runtime.

Every path gets the same uint8 512×512 image per round (scikit-image sample photographs resized, or
synthetic images without scikit-image), batch 1, the same thread count, and ends in a per-pixel label map.
Rounds are interleaved (each path once per round), so load from other processes hits all paths alike;
medians are reported. Target: ours ≥ 1.5× faster than HF.

    .venv/bin/python benchmarks/hf_compare.py                       # records benchmarks/results/<date>_hf_compare.json
    .venv/bin/python benchmarks/hf_compare.py --runs 1 --no-r50 --no-save
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SPEEDUP = 1.5
SIZE = (512, 512)
ADE20K_CLASSES = 150
HF_QUERIES = 100
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def test_images(size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    from PIL import Image

    h, w = size
    try:
        import skimage.data

        photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
        source = "scikit-image astronaut, coffee, chelsea resized to 512x512"
    except ImportError:
        from faseg.loadtest.images import synthetic_image

        photos = [np.asarray(synthetic_image((w, h), seed)) for seed in range(3)]
        source = "synthetic images 512x512 (scikit-image not installed)"
    return [
        np.array(Image.fromarray(p).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)) for p in photos
    ], source


def params_m(module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def hf_semantic_postprocess(outputs, size: tuple[int, int]):
    """What ``Mask2FormerImageProcessor.post_process_semantic_segmentation`` computes (its module imports
    torchvision, unusable with the CPU torch wheel here): mask logits resized to 384×384, class
    probabilities without the null class, einsum into per-class scores, resized to ``size``, argmax."""
    import torch
    import torch.nn.functional as F

    masks = F.interpolate(outputs.masks_queries_logits, size=(384, 384), mode="bilinear", align_corners=False)
    classes = outputs.class_queries_logits.softmax(dim=-1)[..., :-1]  # (B, Q, K)
    scores = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())  # (B, K, 384, 384)
    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return scores.argmax(dim=1)  # (B, H, W)


def hf_mask2former_r50_model():
    """transformers' Mask2Former with a ResNet-50 backbone (``ResNetConfig``: bottleneck blocks 3-4-6-3, widths
    256…2048), 150 classes, 100 queries, seeded random weights, eval mode: the R50 peer of every benchmark."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "Backbone resnet is not a supported model": it builds and runs
    resnet = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(backbone_config=resnet, num_labels=ADE20K_CLASSES, num_queries=HF_QUERIES)
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(config).eval()


def hf_mask2former_swin_t() -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        image_size=224,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(backbone_config=swin, num_labels=ADE20K_CLASSES, num_queries=HF_QUERIES)
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def run(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
            outputs = model(pixel_values=(x - mean) / std)
            return hf_semantic_postprocess(outputs, image.shape[:2])[0].numpy()

    return run, params_m(model)


def ours(preset: str, workdir: Path, threads: int, paths: list[str]) -> dict[str, tuple[Callable, str, float]]:
    """Our paths for ``preset`` (random weights, seed 0): name → (run(image) → labels, description, params)."""
    import torch
    from faseg.export.onnx_export import ExportOptions, export_model
    from faseg.export.session import OrtSession, SessionConfig
    from faseg.model import ServingHead, build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset(preset)).eval()
    count = params_m(model)
    runners: dict[str, tuple[Callable, str, float]] = {}
    if "torch" in paths:
        head = ServingHead(model).eval()

        def run_torch(image: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return head(torch.from_numpy(image)[None])[0][0].numpy()

        runners[f"{preset} torch eager"] = (run_torch, f"{preset}, torch eager (ServingHead)", count)
    config = SessionConfig(device="cpu", intra_op_threads=threads)
    for flavour in ("portable", "plugin"):
        if f"ort-{flavour}" not in paths:
            continue
        if flavour == "plugin":
            from faseg.export.custom_ops import ort_custom_ops_library

            if ort_custom_ops_library() is None:
                print(f"skipping {preset} ORT plugin: libfaseg_ort_ops.so is not built", file=sys.stderr)
                continue
        path = workdir / f"{preset}-{SIZE[0]}x{SIZE[1]}-{flavour}.onnx"
        if not path.is_file():
            print(f"exporting {preset} ({flavour}) to {path} ...", file=sys.stderr)
            export_model(model, path, ExportOptions(size=SIZE, flavour=flavour))
        session = OrtSession(path, config)

        def run_ort(image: np.ndarray, session: OrtSession = session) -> np.ndarray:
            return session.run(image[None], ["labels"])["labels"][0]

        runners[f"{preset} ORT {flavour}"] = (run_ort, f"{preset}, ONNX Runtime CPU, {flavour} export", count)
    return runners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (each path once per round)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch and ORT intra-op threads (0: all CPUs)")
    parser.add_argument("--paths", default="torch,ort-portable,ort-plugin", help="our paths for Swin-T")
    parser.add_argument("--r50-paths", default="ort-portable,ort-plugin", help="our paths for R50")
    parser.add_argument("--no-r50", action="store_true", help="leave out faseg_r50_ade20k")
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "faseg" / "hf-compare"))
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_hf_compare.json)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    import os

    import torch

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from faseg.loadtest.report import environment

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    images, source = test_images(SIZE)

    hf_run, hf_params = hf_mask2former_swin_t()
    runners: dict[str, tuple[Callable, str, float]] = {
        "HF Mask2Former Swin-T eager": (hf_run, "transformers Mask2Former Swin-T, eager + post_process", hf_params)
    }
    swin = ours("faseg_swin_t_ade20k", workdir, threads, args.paths.split(","))
    runners.update(swin)
    r50 = {} if args.no_r50 else ours("faseg_r50_ade20k", workdir, threads, args.r50_paths.split(","))
    runners.update(r50)

    for round_ in range(args.warmup):
        for run, _, _ in runners.values():
            run(images[round_ % len(images)])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(args.runs):
        image = images[round_ % len(images)]
        for name, (run, _, _) in runners.items():
            started = time.perf_counter()
            labels = run(image)
            times[name].append(time.perf_counter() - started)
            assert labels.shape == SIZE, (name, labels.shape)
        print(
            f"round {round_ + 1}/{args.runs}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
            file=sys.stderr,
        )

    latency = {
        name: {
            "what": runners[name][1],
            "params_m": runners[name][2],
            "median_ms": round(statistics.median(t) * 1e3, 1),
            "runs_ms": [round(x * 1e3, 1) for x in t],
        }
        for name, t in times.items()
    }
    hf_ms = latency["HF Mask2Former Swin-T eager"]["median_ms"]

    def fastest(names: list[str]) -> str:
        return min(names, key=lambda n: latency[n]["median_ms"])

    ratios = {}
    if swin:
        best = fastest(list(swin))
        ratios[f"HF Swin-T eager / ours Swin-T fastest ({best})"] = hf_ms / latency[best]["median_ms"]
        eager = "faseg_swin_t_ade20k torch eager"
        if eager in latency:
            ratios["HF Swin-T eager / ours Swin-T torch eager (same runtime)"] = hf_ms / latency[eager]["median_ms"]
    if r50:
        best = fastest(list(r50))
        ratios[f"HF Swin-T eager / ours R50 fastest ({best})"] = hf_ms / latency[best]["median_ms"]
    report = {
        "benchmark": "hf_compare",
        "title": "FASeg (our fastest CPU path) vs Hugging Face Mask2Former, 512x512, batch 1",
        "date": env["date"],
        "command": "python benchmarks/hf_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env,
        "threads": threads,
        "images": source,
        "compared": (
            "HF transformers Mask2FormerForUniversalSegmentation with a Swin-T backbone (random weights, 150 "
            "classes, 100 queries, eager, with post_process_semantic_segmentation) against our "
            "faseg_swin_t_ade20k (same backbone) and faseg_r50_ade20k (R50, similar size) through each of "
            "our CPU paths; random weights; same 512x512 images, batch 1, same threads; the fastest of ours "
            "counts"
        ),
        "latency": latency,
        "ratios": {
            name: (
                {"ratio": round(value, 3), "target": None, "met": None}  # informative: eager vs eager
                if "same runtime" in name
                else {"ratio": round(value, 3), "target": TARGET_SPEEDUP, "met": value >= TARGET_SPEEDUP}
            )
            for name, value in ratios.items()
        },
    }
    print(json.dumps(report, indent=2))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS / f"{env['date']}_hf_compare.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
