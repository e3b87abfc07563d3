"""GPU benchmarks of the device check: FASeg's CUDA kernels vs the references, the torch CUDA backend with vs
without them, and Hugging Face transformers' Mask2Former-R50 (eager) as the peer — side by side in one run.

Parts (``--parts``, default all), every time with CUDA events or a synchronising host clock after warm-up:

- ``ops``: MSDA forward (fp32, fp16) and forward + backward (fp32), kernel vs the ``grid_sample`` reference,
  at the pixel decoder's shapes of ``faseg_r50_ade20k`` at 512×512, batch 8 (levels 64², 32², 16²; 8 heads
  × 32; 4 points); HRCA kernel vs reference at the decoder's shapes (1/4 map 128², S0 = 256, C = 256, 8
  heads, Q = 100), both modes (``benchmarks/bench_kernels.py`` measures them).
- ``e2e``: ``faseg_r50_ade20k`` (random weights) at 512×512 through the torch backend on CUDA
  (``TorchBackend.infer``: uint8 images in, labels + confidence on the host out), batch 1 and 8, fp32 and bf16
  autocast, ``--kernels on`` vs ``off``: p50 ms and images/s.
- ``hf``: ``Mask2FormerForUniversalSegmentation`` with a ResNet-50 backbone (``ResNetConfig``; 150 classes,
  100 queries, transformers' default 6 encoder / 9 decoder layers), eager, the same images, same batch sizes
  and autocast dtypes, ending in a label map on the host like ours.

Targets (ratios from this one run): MSDA kernel ≥ 3× the reference (fp32 forward); torch backend with kernels
≥ 1.5× without (batch 8 bf16); ours with kernels ≥ 2× HF Mask2Former-R50 eager (batch 8 bf16).

    python benchmarks/bench_gpu.py --out results_dir          # all parts; writes results_dir/bench_gpu.json
    python benchmarks/bench_gpu.py --parts ops --runs 50

Without a CUDA device it writes ``{"status": "skipped", "reason": "no CUDA device ..."}`` and exits 0. The
result also goes to ``benchmarks/results/<date>_gpu_<device>.json`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("ops", "e2e", "hf")
PRESET = "faseg_r50_ade20k"
SIZE = (512, 512)
TARGETS = {
    "msda_kernel_vs_reference": 3.0,  # fp32 forward, batch 8
    "torch_kernels_vs_reference_b8_bf16": 1.5,
    "torch_kernels_vs_hf_b8_bf16": 2.0,
}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown or text!r}; choose from {', '.join(PARTS)}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for bench_gpu.json (e.g. $OUT)")
    parser.add_argument("--parts", type=_parts, default=list(PARTS), help="comma-separated: ops,e2e,hf (default all)")
    parser.add_argument("--batches", type=_batches, default=[1, 8], help="end-to-end batch sizes (default 1,8)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per measurement (default 3)")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    return parser


# ------------------------------------------------------------------------------------------------
# facts and timing
# ------------------------------------------------------------------------------------------------


def device_facts() -> dict:
    facts = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            facts["driver"] = f"unknown ({exc})"
    return facts


def host_time_ms(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """p50 / min / max milliseconds of ``fn``, which must synchronise (it returns host arrays)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def _images(batch: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, 256, (batch, *size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# parts
# ------------------------------------------------------------------------------------------------


def bench_ops(args: argparse.Namespace) -> dict:
    from bench_kernels import bench_hrca, bench_msda

    op_args = SimpleNamespace(batch=8, runs=args.runs, warmup=args.warmup)
    return {"msda": bench_msda(op_args), "hrca": bench_hrca(op_args)}


def bench_e2e(
    args: argparse.Namespace,
    *,
    device: str = "cuda",
    preset: str = PRESET,
    size: tuple[int, int] = SIZE,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    kernel_modes: tuple[str, ...] = ("on", "off"),
) -> dict:
    """``TorchBackend.infer`` on uint8 images, every (batch, precision, kernels) combination. Keys
    ``b<batch>_<precision>_<path>`` with path "fused" or "reference" as the backend reports it."""
    from faseg.model import ServingHead, build_model, get_preset
    from faseg.service.backends.base import ModelInfo
    from faseg.service.backends.torch import TorchBackend

    torch.manual_seed(0)
    module = ServingHead(build_model(get_preset(preset)))
    classes = tuple(f"class{i}" for i in range(module.model.num_classes))
    info = ModelInfo(name=preset, classes=classes, palette=(), input_size=size)
    out: dict = {}
    errors: dict[str, str] = {}
    for precision in precisions:
        for kernels in kernel_modes:
            try:  # a failing configuration (say, kernels on) must not lose the others' numbers
                backend = TorchBackend(module, info, device=device, max_batch_size=max(args.batches),
                                       precision=precision, kernels=kernels)  # fmt: skip
                for batch in args.batches:
                    images = _images(batch, size)
                    timing = host_time_ms(lambda b=backend, x=images: b.infer(x), args.runs, args.warmup)
                    timing["images_per_s"] = batch * 1000 / timing["p50_ms"]
                    out[f"b{batch}_{precision}_{backend.kernels.path}"] = timing
            except Exception as exc:
                errors[f"{precision}_kernels_{kernels}"] = f"{type(exc).__name__}: {exc}"
    if errors:
        out["errors"] = errors
    return out


def hf_mask2former_r50():
    from hf_compare import hf_mask2former_r50_model

    return hf_mask2former_r50_model()


def bench_hf(
    args: argparse.Namespace,
    *,
    device: str = "cuda",
    size: tuple[int, int] = SIZE,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict:
    """HF Mask2Former-R50 eager: uint8 images to the device, normalise, forward, semantic post-processing (as
    ``post_process_semantic_segmentation``: masks at 384², class softmax without null × mask sigmoid, resize to
    the input size, argmax), labels back on the host. Keys ``b<batch>_<precision>``."""
    import torch.nn.functional as F

    model = hf_mask2former_r50().to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}

    def run(images: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
        autocast = torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
            outputs = model(pixel_values=(x - mean) / std)
            masks = F.interpolate(outputs.masks_queries_logits, size=(384, 384), mode="bilinear", align_corners=False)
            classes = outputs.class_queries_logits.softmax(dim=-1)[..., :-1]
            scores = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            return scores.argmax(dim=1).to(torch.uint8).cpu().numpy()

    out: dict = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    for precision in precisions:
        for batch in args.batches:
            images = _images(batch, size)
            timing = host_time_ms(lambda x=images, d=dtypes[precision]: run(x, d), args.runs, args.warmup)
            timing["images_per_s"] = batch * 1000 / timing["p50_ms"]
            out[f"b{batch}_{precision}"] = timing
    return out


# ------------------------------------------------------------------------------------------------
# ratios and summary
# ------------------------------------------------------------------------------------------------


def ratios(result: dict) -> dict:
    """Speed-ups against their targets, from whatever parts ran."""
    out: dict = {}

    def add(name: str, value: float) -> None:
        target = TARGETS.get(name)
        out[name] = {"ratio": round(value, 3), "target": target, "met": None if target is None else value >= target}

    ops = result.get("ops") or {}
    if "msda" in ops:
        add("msda_kernel_vs_reference", ops["msda"]["forward_float32"]["speedup"])
        add("msda_fwd_bwd_kernel_vs_reference", ops["msda"]["forward_backward_float32"]["speedup"])
    if "hrca" in ops:
        add("hrca_window_kernel_vs_reference", ops["hrca"]["window"]["speedup"])
    e2e, hf = result.get("e2e") or {}, result.get("hf") or {}
    for key in [k.removesuffix("_fused") for k in e2e if k.endswith("_fused")]:
        if f"{key}_reference" in e2e:
            add(f"torch_kernels_vs_reference_{key}", e2e[f"{key}_reference"]["p50_ms"] / e2e[f"{key}_fused"]["p50_ms"])
        if key in hf:
            add(f"torch_kernels_vs_hf_{key}", hf[key]["p50_ms"] / e2e[f"{key}_fused"]["p50_ms"])
    return out


def summary(result: dict) -> list[str]:
    lines = [f"bench_gpu: {result['status']} on {result['facts'].get('gpu', 'no GPU')}"]
    if result["status"] == "skipped":
        return [*lines, f"  reason: {result['reason']}"]
    e2e, hf = result.get("e2e") or {}, result.get("hf") or {}
    if e2e:
        lines.append(f"  {'config':<12} {'ours fused':>18} {'ours reference':>18} {'HF M2F-R50':>18}   (p50 ms, img/s)")
        for key in sorted({k.rsplit("_", 1)[0] for k, v in e2e.items() if "p50_ms" in v}):
            cells = [e2e.get(f"{key}_fused"), e2e.get(f"{key}_reference"), hf.get(key)]
            text = [f"{c['p50_ms']:8.1f} {c['images_per_s']:7.1f}" if c else f"{'-':>16}" for c in cells]
            lines.append(f"  {key:<12} " + " ".join(f"{t:>18}" for t in text))
    for name, r in result["ratios"].items():
        verdict = "" if r["target"] is None else f" (target >= {r['target']}: {'met' if r['met'] else 'NOT met'})"
        lines.append(f"  {name:<40} {r['ratio']:6.2f}x{verdict}")
    for part, error in result.get("errors", {}).items():
        lines.append(f"  {part} FAILED: {error.splitlines()[-1]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict = {"status": "ok", "facts": device_facts(), "preset": PRESET, "size": list(SIZE),
                    "batches": args.batches, "runs": args.runs, "warmup": args.warmup, "parts": args.parts}  # fmt: skip
    if not torch.cuda.is_available():
        result.update(status="skipped", reason=f"no CUDA device (torch {torch.__version__} sees none)")
    else:
        runners = {"ops": bench_ops, "e2e": bench_e2e, "hf": bench_hf}
        errors = {}
        for part in args.parts:
            started = time.monotonic()
            try:
                result[part] = runners[part](args)
            except Exception:  # one failed part must not lose the others' numbers
                errors[part] = traceback.format_exc()
            result.setdefault("seconds", {})[part] = round(time.monotonic() - started, 1)
        if (result.get("e2e") or {}).get("errors"):
            errors["e2e"] = json.dumps(result["e2e"]["errors"])
        result["errors"] = errors
        result["ratios"] = ratios(result)
        if errors:
            result["status"] = "failed"
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.json").write_text(text)
    if result["status"] != "skipped" and not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        gpu = "".join(ch if ch.isalnum() else "-" for ch in result["facts"]["gpu"]).strip("-").lower()
        (RESULTS_DIR / f"{dt.date.today().isoformat()}_gpu_{gpu}.json").write_text(text)
    print("\n".join(summary(result)))
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
