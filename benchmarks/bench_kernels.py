"""GPU latency of FASeg's CUDA kernels vs the PyTorch references, per op and end to end (needs a CUDA GPU).

Three measurements, each with CUDA events after warm-up, median of ``--runs``:

1. **MSDA** at the pixel-decoder shapes of a 512×512 input, batch 8 (levels 1/8, 1/16, 1/32 =
   64×64, 32×32, 16×16; S = Lq = 5376; 8 heads × 32 channels; 4 points): the grid_sample reference vs
   the kernel, forward in fp32 and fp16, and forward + backward in fp32. **Target: kernel ≥ 3× faster
   than the reference (fp32 forward).**
2. **HRCA** at 512×512, batch 8 (1/4 map 128×128, S0 = 256, k = 8 windows of 8×8, C = 256, 8 heads,
   Q = 100): reference vs kernel, both modes.
3. **End to end**: the torch CUDA backend (``--preset``, random weights, eval, ``--size``, ``--batch``)
   with vs without ``faseg.export.cuda_ops.enable_kernels()``.

    .venv/bin/python benchmarks/bench_kernels.py                        # all three, faseg_r50_ade20k
    .venv/bin/python benchmarks/bench_kernels.py --only msda --runs 50
    .venv/bin/python benchmarks/bench_kernels.py --backend extension    # force the cpp_extension build

The kernels come from ``libfaseg_cuda_kernels.so`` (``export/plugins/build_cuda.sh``, or
``$FASEG_CUDA_KERNELS_LIB``) or, with ``--backend extension``, from the PyTorch extension (built on the
first run; needs nvcc). The result is written to ``benchmarks/results/<date>_kernels_<gpu>.json``
(``--no-save`` to skip) with a one-line markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_MSDA_SPEEDUP = 3.0
MSDA_SHAPES_512 = [(64, 64), (32, 32), (16, 16)]


def cuda_time_ms(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Median/min/max milliseconds of ``fn`` measured with CUDA events, one event pair per run."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def msda_inputs(batch: int, dtype: torch.dtype, *, requires_grad: bool = False):
    g = torch.Generator(device="cuda").manual_seed(0)
    s = sum(h * w for h, w in MSDA_SHAPES_512)
    value = torch.randn(batch, s, 8, 32, device="cuda", generator=g, dtype=dtype)
    loc = torch.rand(batch, s, 8, 3, 4, 2, device="cuda", generator=g, dtype=dtype)
    weights = torch.rand(batch, s, 8, 3, 4, device="cuda", generator=g, dtype=dtype).softmax(-1)
    return [t.requires_grad_(requires_grad) for t in (value, loc, weights)]


def bench_msda(args: argparse.Namespace) -> dict:
    from faseg.model import ops as model_ops
    from faseg.model.ops import cuda_ops

    out: dict[str, dict] = {}
    shapes = MSDA_SHAPES_512
    for dtype in (torch.float32, torch.float16):
        inputs = msda_inputs(args.batch, dtype)
        with torch.no_grad():
            ref = cuda_time_ms(
                lambda inputs=inputs: model_ops.ms_deform_attn_reference(inputs[0], shapes, inputs[1], inputs[2]),
                args.runs,
                args.warmup,
            )
            ker = cuda_time_ms(
                lambda inputs=inputs: cuda_ops.ms_deform_attn(inputs[0], shapes, inputs[1], inputs[2]),
                args.runs,
                args.warmup,
            )
        name = f"forward_{str(dtype).removeprefix('torch.')}"
        out[name] = {"reference": ref, "kernel": ker, "speedup": ref["median_ms"] / ker["median_ms"]}

    value, loc, weights = msda_inputs(args.batch, torch.float32, requires_grad=True)
    grad = torch.randn(args.batch, value.shape[1], 256, device="cuda")

    def step(fn):
        def run():
            for t in (value, loc, weights):
                t.grad = None
            fn(value, shapes, loc, weights).backward(grad)

        return run

    ref = cuda_time_ms(step(model_ops.ms_deform_attn_reference), max(args.runs // 2, 3), args.warmup)
    ker = cuda_time_ms(step(cuda_ops.ms_deform_attn), max(args.runs // 2, 3), args.warmup)
    out["forward_backward_float32"] = {"reference": ref, "kernel": ker, "speedup": ref["median_ms"] / ker["median_ms"]}
    out["target_forward_float32_speedup"] = TARGET_MSDA_SPEEDUP
    out["meets_target"] = out["forward_float32"]["speedup"] >= TARGET_MSDA_SPEEDUP
    out["shapes"] = {"batch": args.batch, "levels": shapes, "heads": 8, "head_dim": 32, "points": 4}
    return out


def bench_hrca(args: argparse.Namespace) -> dict:
    from faseg.model import ops as model_ops
    from faseg.model.ops import cuda_ops

    g = torch.Generator(device="cuda").manual_seed(0)
    n, q, c, heads, level0, window = args.batch, 100, 256, 8, (16, 16), 8
    h3, w3 = level0[0] * window, level0[1] * window
    query = torch.randn(n, q, c, device="cuda", generator=g)
    feat = torch.randn(n, c, h3, w3, device="cuda", generator=g)
    pos = torch.randn(n, c, h3, w3, device="cuda", generator=g)
    coarse = torch.randn(n, q, level0[0] * level0[1], device="cuda", generator=g).softmax(-1)
    w_in = torch.randn(3 * c, c, device="cuda", generator=g) / c**0.5
    b_in = torch.zeros(3 * c, device="cuda")
    w_out = torch.randn(c, c, device="cuda", generator=g) / c**0.5
    b_out = torch.zeros(c, device="cuda")
    tensors = (query, feat, pos, coarse, w_in, b_in, w_out, b_out)
    out = {}
    with torch.no_grad():
        for mode in ("window", "bilinear"):
            ref = cuda_time_ms(
                lambda mode=mode: model_ops.topk_cross_attention_reference(*tensors, heads, level0, mode, 32),
                args.runs, args.warmup,
            )  # fmt: skip
            ker = cuda_time_ms(
                lambda mode=mode: cuda_ops.topk_cross_attention(*tensors, heads, level0, mode, 32),
                args.runs, args.warmup,
            )  # fmt: skip
            out[mode] = {"reference": ref, "kernel": ker, "speedup": ref["median_ms"] / ker["median_ms"]}
    out["shapes"] = {"batch": n, "queries": q, "channels": c, "heads": heads, "hr": [h3, w3], "level0": level0}
    return out


def bench_end_to_end(args: argparse.Namespace) -> dict:
    from faseg.model.faseg import build_model
    from faseg.model.ops import cuda_ops
    from faseg.model.presets import get_preset
    from faseg.model.summary import parse_size

    h, w = parse_size(args.size)
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset)).cuda().eval()
    images = torch.rand(args.batch, 3, h, w, device="cuda") * 255
    out = {}
    with torch.no_grad():
        for label, enable in (("reference", False), ("kernels", True)):
            if enable:
                assert cuda_ops.enable_kernels(), cuda_ops.unavailable_reason()
            else:
                cuda_ops.disable_kernels()
            out[label] = cuda_time_ms(lambda: model(images), max(args.runs // 4, 3), max(args.warmup // 2, 2))
        cuda_ops.disable_kernels()
    out["speedup"] = out["reference"]["median_ms"] / out["kernels"]["median_ms"]
    out["setup"] = {"preset": args.preset, "size": [h, w], "batch": args.batch}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("msda", "hrca", "e2e"), action="append", help="run only these parts")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--preset", default="faseg_r50_ade20k", help="model for the end-to-end run")
    parser.add_argument("--size", default="512x512", help="input HxW for the end-to-end run")
    parser.add_argument("--backend", choices=("auto", "ctypes", "extension"), default="auto")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    from faseg.model.ops import cuda_library

    if args.backend == "ctypes":
        cuda_library.set_backend(cuda_library.load_library())
    elif args.backend == "extension":
        cuda_library.set_backend(cuda_library.build_extension(verbose=True))
    backend = cuda_library.kernel_backend()
    if backend is None:
        print(f"bench_kernels: kernels unavailable: {cuda_library.unavailable_reason()}", file=sys.stderr)
        return 2

    parts = args.only or ["msda", "hrca", "e2e"]
    result: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "kernel_backend": {"name": backend.name, "origin": backend.origin},
        "runs": args.runs,
    }
    if "msda" in parts:
        result["msda"] = bench_msda(args)
    if "hrca" in parts:
        result["hrca"] = bench_hrca(args)
    if "e2e" in parts:
        result["end_to_end"] = bench_end_to_end(args)
    print(json.dumps(result, indent=2))

    summary = [f"{result['gpu']}"]
    if "msda" in result:
        m = result["msda"]
        summary.append(
            f"MSDA 512² b{args.batch}: fp32 {m['forward_float32']['kernel']['median_ms']:.2f} ms vs "
            f"{m['forward_float32']['reference']['median_ms']:.2f} ms ({m['forward_float32']['speedup']:.1f}×, "
            f"target ≥{TARGET_MSDA_SPEEDUP:.0f}× {'met' if m['meets_target'] else 'NOT met'}), "
            f"fp16 {m['forward_float16']['speedup']:.1f}×, fwd+bwd {m['forward_backward_float32']['speedup']:.1f}×"
        )
    if "hrca" in result:
        summary.append(f"HRCA window {result['hrca']['window']['speedup']:.1f}×")
    if "end_to_end" in result:
        e = result["end_to_end"]
        summary.append(
            f"{args.preset} {args.size} b{args.batch}: {e['kernels']['median_ms']:.1f} ms with kernels vs "
            f"{e['reference']['median_ms']:.1f} ms ({e['speedup']:.2f}×)"
        )
    print("| " + " | ".join(summary) + " |")
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        gpu = "".join(ch if ch.isalnum() else "-" for ch in result["gpu"]).strip("-").lower()
        path = RESULTS_DIR / f"{dt.date.today().isoformat()}_kernels_{gpu}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
