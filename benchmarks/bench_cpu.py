"""CPU serving paths side by side in one run: HF Mask2Former-R50, our torch / ONNX Runtime fp32 + int8, OpenVINO.

One process, one model (``faseg_r50_ade20k``, random weights, seed 0), 512×512, batch 1, the same number of
threads for every path (``--threads``, default 2), rounds interleaved (each path once per round, so load
from other processes on a shared machine hits every path alike), medians reported:

- ``HF Mask2Former-R50 eager``: transformers' ``Mask2FormerForUniversalSegmentation`` with its own ResNet-50
  backbone (depths 3-4-6-3, bottleneck), 150 classes, 100 queries, random weights, eager PyTorch, plus the
  semantic post-processing of ``post_process_semantic_segmentation`` to a 512×512 label map (as
  ``benchmarks/hf_compare.py`` builds its Swin-T twin);
- ``torch eager``: our :class:`faseg.model.ServingHead` (the same graph the exporter captures);
- ``ORT portable|plugin fp32|int8``: our exports through :class:`faseg.export.session.OrtSession` (the int8
  files calibrated on ``--calibration``, a handful of synthetic 512×512 images; the plugin flavour needs
  ``libfaseg_ort_ops.so``);
- ``OpenVINO fp32``: OpenVINO's CPU plugin on our portable fp32 file (``INFERENCE_PRECISION_HINT f32``);
- ``OpenVINO int8 (NNCF)``: the same model quantised by NNCF's post-training ``nncf.quantize`` on the same
  calibration images; and ``OpenVINO int8 (our QDQ file)``: OpenVINO reading our portable int8 export.

OpenVINO and NNCF are optional (``pip install -e .[bench]``): a path whose package is missing is skipped
and the reason recorded. Each path's labels are compared with torch eager fp32 on the same images
(``label_agreement``). Targets: our fastest path ≥ 3× HF eager and ≥ 1.5× OpenVINO fp32.

``--session-sweep`` adds a second, separate table: ONNX Runtime session settings (graph optimisation level,
intra-op threads, execution mode, spinning) on one file, interleaved the same way — the measurement behind the
settings the service uses.

    .venv/bin/python benchmarks/bench_cpu.py                       # records benchmarks/results/<date>_bench_cpu.json
    .venv/bin/python benchmarks/bench_cpu.py --runs 1 --paths ort-portable-fp32,ort-portable-int8 --no-save
    .venv/bin/python benchmarks/bench_cpu.py --checkpoint model/demo_model --size 256x256 --batch 4 --no-hf \
        --paths torch,ort-portable-fp32,ort-portable-int8 --session-sweep --calibration-images 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_VS_HF = 3.0
TARGET_VS_OPENVINO = 1.5
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
HF = "HF Mask2Former-R50 eager"
TORCH = "torch eager"
OPENVINO_FP32 = "OpenVINO fp32 (portable file)"
OURS_PREFIXES = ("torch", "ORT")
ALL_PATHS = (
    "torch",
    "ort-portable-fp32",
    "ort-plugin-fp32",
    "ort-portable-int8",
    "ort-plugin-int8",
    "openvino-fp32",
    "openvino-nncf-int8",
    "openvino-qdq-int8",
)

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> labels (N, H, W)


@dataclass
class Candidate:
    name: str
    run: Runner
    what: str


# ---------------------------------------------------------------------------------------------------
# the paths
# ---------------------------------------------------------------------------------------------------


def hf_mask2former_r50() -> Runner:
    import torch
    import torch.nn.functional as F
    from hf_compare import hf_mask2former_r50_model

    model = hf_mask2former_r50_model()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
            out = model(pixel_values=(x - mean) / std)
            # post_process_semantic_segmentation (its module imports torchvision, unusable here)
            masks = F.interpolate(out.masks_queries_logits, size=(384, 384), mode="bilinear", align_corners=False)
            classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]  # (N, Q, K)
            scores = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())
            scores = F.interpolate(scores, size=images.shape[1:3], mode="bilinear", align_corners=False)
            return scores.argmax(dim=1).numpy()

    return run


def torch_eager(model: Any) -> Runner:
    import torch
    from faseg.model import ServingHead

    head = ServingHead(model).eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.from_numpy(images))[0].numpy()

    return run


def ort(path: Path, threads: int, **settings: Any) -> Runner:
    from faseg.export.session import OrtSession, SessionConfig

    session = OrtSession(path, SessionConfig(device="cpu", intra_op_threads=threads, **settings))
    return lambda images: session.run(images, ["labels"])["labels"]


def openvino_compiled(model: Any, threads: int) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    labels = compiled.outputs[0]

    def run(images: np.ndarray) -> np.ndarray:
        return request.infer({0: images})[labels]

    return run


def nncf_int8(path: Path, calibration: np.ndarray) -> Any:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(path))
    dataset = nncf.Dataset(list(calibration), lambda image: image[None])
    return nncf.quantize(model, dataset, subset_size=len(calibration))


# ---------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------


def interleaved(paths: list[Candidate], images: list[np.ndarray], runs: int, warmup: int) -> dict[str, Any]:
    """Each path once per round, same image per round; {name: times (s)} and {name: [labels per round]}."""
    for i in range(warmup):
        for path in paths:
            path.run(images[i % len(images)])
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    labels: dict[str, list[np.ndarray]] = {p.name: [] for p in paths}
    for round_ in range(runs):
        batch = images[round_ % len(images)]
        for path in paths:
            start = time.perf_counter()
            out = path.run(batch)
            times[path.name].append(time.perf_counter() - start)
            labels[path.name].append(np.asarray(out))
        print(
            f"round {round_ + 1}/{runs}: " + ", ".join(f"{n} {t[-1] * 1e3:.0f}ms" for n, t in times.items()),
            file=sys.stderr,
        )
    return {"times": times, "labels": labels}


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "median_ms": round(statistics.median(t) * 1e3, 1),
            "min_ms": round(min(t) * 1e3, 1),
            "runs_ms": [round(x * 1e3, 1) for x in t],
        }
        for name, t in times.items()
    }


def session_sweep(path: Path, images: list[np.ndarray], threads: int, runs: int) -> dict[str, Any]:
    """ONNX Runtime session settings on one file, interleaved; the first variant is the baseline."""
    spin_off = {"session.intra_op.allow_spinning": "0"}
    variants: dict[str, dict[str, Any]] = {
        f"all, {threads} threads, spinning on": {},
        f"all, {threads} threads, spinning off": {"extra_options": spin_off},
        f"extended, {threads} threads, spinning off": {"graph_optimization": "extended", "extra_options": spin_off},
        f"basic, {threads} threads, spinning off": {"graph_optimization": "basic", "extra_options": spin_off},
        "all, 1 thread": {"intra_op_threads": 1},
        f"all, {threads} threads, parallel execution, spinning off": {
            "extra_options": spin_off,
            "parallel": True,
        },
    }
    paths = []
    for name, settings in variants.items():
        settings = dict(settings)
        parallel = settings.pop("parallel", False)
        count = settings.pop("intra_op_threads", threads)
        run = ort_session_variant(path, count, parallel, **settings)
        paths.append(Candidate(name, run, name))
    result = interleaved(paths, images, runs, warmup=1)
    latency = summarise(result["times"])
    base = latency[paths[0].name]["median_ms"]
    for row in latency.values():
        row["vs_baseline"] = round(row["median_ms"] / base, 3)
    return {"file": path.name, "latency": latency}


def ort_session_variant(path: Path, threads: int, parallel: bool, **settings: Any) -> Runner:
    """Like :func:`ort`, with the execution mode settable (``SessionConfig`` fixes it to sequential)."""
    import onnxruntime
    from faseg.export.session import SessionConfig, session_options

    config = SessionConfig(device="cpu", intra_op_threads=threads, **settings)
    options = session_options(config, plugin=False)
    if parallel:
        options.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["labels"], {"images": images})[0]


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="faseg_r50_ade20k")
    parser.add_argument("--checkpoint", help="a checkpoint directory instead of --preset with random weights")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (each path once per round)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default=",".join(ALL_PATHS), help=f"our / OpenVINO paths ({', '.join(ALL_PATHS)})")
    parser.add_argument("--no-hf", action="store_true", help="leave out HF Mask2Former-R50")
    parser.add_argument("--calibration", default="synthetic:train", help="int8 calibration data spec")
    parser.add_argument("--calibration-images", type=int, default=4)
    parser.add_argument("--session-sweep", action="store_true", help="add the ONNX Runtime session-settings table")
    parser.add_argument("--sweep-file", default="portable-int8", help="file of the sweep: FLAVOUR-PRECISION")
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "faseg" / "bench-cpu"))
    parser.add_argument("--reexport", action="store_true", help="export again even when the files exist")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_bench_cpu.json)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from faseg.export.custom_ops import ort_custom_ops_library
    from faseg.export.onnx_export import ExportOptions, export_model, load_checkpoint
    from faseg.export.quantize import Calibration, calibration_images
    from faseg.model import build_model, get_preset
    from faseg.model.summary import parse_size

    from faseg.loadtest.report import environment

    env = environment()
    size = parse_size(args.size)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint).eval()
        args.preset = model.cfg.name
    else:
        model = build_model(get_preset(args.preset)).eval()
    wanted = [p for p in args.paths.split(",") if p]
    unknown = set(wanted) - set(ALL_PATHS)
    if unknown:
        parser.error(f"unknown path(s) {sorted(unknown)}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    calibration = Calibration(f"{args.calibration}?size={size[0]}x{size[1]}", args.calibration_images)
    skipped: dict[str, str] = {}

    def exported(flavour: str, precision: str) -> Path:
        path = workdir / f"{args.preset}-{size[0]}x{size[1]}-{flavour}-{precision}.onnx"
        if args.reexport or not path.is_file():
            print(f"exporting {path.name} ...", file=sys.stderr)
            options = ExportOptions(
                size=size,
                flavour=flavour,
                precision=precision,
                calibration=calibration if precision == "int8" else None,
            )
            export_model(model, path, options)
        return path

    paths: list[Candidate] = []
    if not args.no_hf:
        paths.append(Candidate(HF, hf_mask2former_r50(), "transformers Mask2Former ResNet-50, eager + post-processing"))
    if "torch" in wanted:
        paths.append(Candidate(TORCH, torch_eager(model), "our ServingHead, torch eager fp32"))
    for flavour in ("portable", "plugin"):
        for precision in ("fp32", "int8"):
            key = f"ort-{flavour}-{precision}"
            if key not in wanted:
                continue
            if flavour == "plugin" and ort_custom_ops_library() is None:
                skipped[key] = "libfaseg_ort_ops.so is not built (bash export/plugins/build.sh)"
                continue
            run = ort(exported(flavour, precision), args.threads)
            paths.append(
                Candidate(f"ORT {flavour} {precision}", run, f"ONNX Runtime CPU, {flavour} export, {precision}")
            )
    openvino_keys = [k for k in wanted if k.startswith("openvino")]
    if openvino_keys:
        try:
            import openvino as ov
        except ImportError as exc:
            skipped.update({k: f"openvino not installed ({exc})" for k in openvino_keys})
            openvino_keys = []
    if "openvino-fp32" in openvino_keys:
        model_ov = ov.Core().read_model(str(exported("portable", "fp32")))
        paths.append(Candidate(OPENVINO_FP32, openvino_compiled(model_ov, args.threads), "OpenVINO CPU f32, our file"))
    if "openvino-qdq-int8" in openvino_keys:
        model_ov = ov.Core().read_model(str(exported("portable", "int8")))
        try:
            run = openvino_compiled(model_ov, args.threads)
            paths.append(Candidate("OpenVINO int8 (our QDQ file)", run, "OpenVINO CPU, our int8 file"))
        except RuntimeError as exc:  # OpenVINO 2026.4's MatMulTransformation rejects the value projections
            skipped["openvino-qdq-int8"] = f"OpenVINO cannot compile the file: {' '.join(str(exc).split())[-400:]}"
    if "openvino-nncf-int8" in openvino_keys:
        try:
            started = time.perf_counter()
            cal = calibration_images(calibration.data, size, calibration.num_images)
            quantized = nncf_int8(exported("portable", "fp32"), cal)
            print(f"NNCF quantised in {time.perf_counter() - started:.0f}s", file=sys.stderr)
            paths.append(
                Candidate(
                    "OpenVINO int8 (NNCF)", openvino_compiled(quantized, args.threads), "NNCF PTQ of our fp32 file"
                )
            )
        except ImportError as exc:
            skipped["openvino-nncf-int8"] = f"nncf not installed ({exc})"

    images, source = test_images(size, args.batch)
    result = interleaved(paths, images, args.runs, args.warmup)
    latency = summarise(result["times"])
    reference = result["labels"].get(TORCH)
    for path in paths:
        row = latency[path.name]
        row["what"] = path.what
        if reference is not None:
            pairs = zip(result["labels"][path.name], reference)
            row["label_agreement_vs_torch"] = round(float(np.mean([(a == b).mean() for a, b in pairs])), 5)

    ours = [p.name for p in paths if p.name.startswith(OURS_PREFIXES)]
    ratios: dict[str, dict[str, Any]] = {}
    if ours:
        fastest = min(ours, key=lambda n: latency[n]["median_ms"])
        for peer, target in ((HF, TARGET_VS_HF), (OPENVINO_FP32, TARGET_VS_OPENVINO)):
            if peer in latency:
                value = latency[peer]["median_ms"] / latency[fastest]["median_ms"]
                ratios[f"{peer} / ours fastest ({fastest})"] = {
                    "ratio": round(value, 3),
                    "target": target,
                    "met": value >= target,
                }
        for name in latency:
            if HF in latency and name != HF:
                ratios[f"{HF} / {name}"] = {"ratio": round(latency[HF]["median_ms"] / latency[name]["median_ms"], 3)}

    report: dict[str, Any] = {
        "benchmark": "bench_cpu",
        "title": f"CPU paths, {args.preset} {size[0]}x{size[1]} batch {args.batch}, {args.threads} threads",
        "date": env["date"],
        "command": "python benchmarks/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env,
        "preset": args.preset,
        "weights": args.checkpoint or "random (torch.manual_seed(0))",
        "input_size": list(size),
        "batch": args.batch,
        "threads": args.threads,
        "runs": args.runs,
        "images": source,
        "calibration": json.loads(calibration.to_metadata()),
        "latency": latency,
        "ratios": ratios,
        "skipped": skipped,
    }
    if args.session_sweep:
        flavour, precision = args.sweep_file.split("-")
        report["session_sweep"] = session_sweep(exported(flavour, precision), images, args.threads, args.runs)
    report["environment"]["load_average_at_end"] = environment()["machine"]["load_average"]
    print(json.dumps(report, indent=2))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS / f"{env['date']}_bench_cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def test_images(size: tuple[int, int], batch: int) -> tuple[list[np.ndarray], str]:
    """Three batches: scikit-image photographs resized to ``size`` (the same for every path)."""
    import skimage.data
    from PIL import Image

    h, w = size
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    resized = [np.array(Image.fromarray(p).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)) for p in photos]
    batches = [np.stack([resized[(i + j) % 3] for j in range(batch)]) for i in range(3)]
    return batches, f"scikit-image astronaut, coffee, chelsea resized to {h}x{w}, batch {batch}"


if __name__ == "__main__":
    sys.exit(main())
