"""Side-by-side comparison on the synthetic dataset: baseline vs +Focus vs +LDA-AQU (faseg_tiny).

What one run does, for every seed and variant (variants of one seed are trained back to back):

1. Build the baseline ``faseg_tiny`` with ``torch.manual_seed(seed)``; build the variant with the same seed and
   load the baseline's weights into it (``strict=False``), so every shared parameter starts identical and
   only the variant's own modules (``transformer.focus.*``, ``upsample_1.*``) have their own init.
2. Train ``--iters`` steps with the project's training loop (:func:`faseg.model.train.train_loop` over a
   :func:`faseg.model.trainer.build_trainer`: same criterion, AdamW groups, poly schedule, clipping) on the
   same augmented batches (data order, augmentation and the criterion's point sampling are seeded by ``seed``
   only). The Focus variant adds its score losses (:func:`faseg.model.focus.focus_loss`) as ``faseg train``
   does.
3. mIoU on the first ``--val-images`` synthetic val images at their native 256×256. (The recorded ``loss_*``
   values are the weighted totals the optimiser saw, so the Focus variant's include its score losses: compare
   mIoU, not losses, across variants.)

Then the CPU latency of each trained variant (seed of the first run): batch 1, 256×256, ``torch.no_grad``,
eval mode, ``--latency-threads`` threads, the variants measured round-robin so that load changes on a
shared machine hit them alike; median and p90 of ``--latency-runs`` forwards after 3 warm-up runs. MACs of
the three variants (faseg_tiny, 256×256, the counter of ``faseg info``) are recorded with them, and with
``--r50-macs`` also the ``faseg_r50_ade20k`` 512×512 numbers of the deformable encoder.

The hyper-parameters are the bundled demo model's recipe (faseg.model.demo.DEMO_RECIPE: lr 1e-3 with a
linear warm-up, backbone ×1.0, 2048 points) at a budget given on the command line. Example (what produced
``benchmarks/results/*_focus_lda_synthetic.json``)::

    OUT=benchmarks/results/$(date +%F)_focus_lda_synthetic.json
    nice -n 10 .venv/bin/python benchmarks/compare_focus_lda.py --iters 50 --seeds 0 1 --batch-size 4 \\
        --val-images 40 --latency-runs 20 --out $OUT
    nice -n 10 .venv/bin/python benchmarks/compare_focus_lda.py --macs-only --out $OUT   # adds the R50 MACs

The JSON records the exact command, budget, machine, date, per-run numbers and the per-variant means. It
makes no claim beyond those numbers: at a small budget the mIoU differences are within seed noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "focus": ["pixel_decoder.focus.enabled=true", "pixel_decoder.focus.keep_ratio=0.3"],
    "lda_aqu": ["pixel_decoder.upsampler=lda_aqu"],
}
PRESET = "faseg_tiny"
SIZE = (256, 256)


def machine() -> dict[str, Any]:
    from faseg.machine import cpu_name

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def build_variant(variant: str, seed: int, num_classes: int, extra: list[str]) -> tuple[nn.Module, list[str]]:
    """The variant with the baseline's initial weights of this seed (see the module docstring)."""
    from faseg.model import build_model, get_preset

    torch.manual_seed(seed)
    base = build_model(get_preset(PRESET, [f"num_classes={num_classes}"]))
    torch.manual_seed(seed)
    model = build_model(get_preset(PRESET, [f"num_classes={num_classes}", *VARIANTS[variant], *extra]))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected:
        raise RuntimeError(f"{variant}: baseline weights do not fit: unexpected {unexpected[:5]}")
    return model, missing


def train_and_evaluate(variant: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, Any], nn.Module]:
    from faseg.model.data import build_dataset
    from faseg.model.data.batch import collate
    from faseg.model.data.loader import InfiniteLoader, build_train_dataset
    from faseg.model.distributed import DistInfo
    from faseg.model.recipes import TrainConfig, data_recipe
    from faseg.model.train import evaluate, train_loop
    from faseg.model.train_state import seed_everything
    from faseg.model.trainer import build_trainer

    device = torch.device("cpu")
    cfg = TrainConfig(
        preset=PRESET,
        data=f"synthetic:train?num_images={args.train_images}",
        max_iter=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_multiplier=1.0,
        warmup_iters=min(args.warmup_iters, max(args.iters - 1, 0)),
        warmup_factor=0.01,
        num_points=args.num_points,
        short_edge_choices=(192, 224, 256, 288, 320, 352, 384),
        num_workers=0,
        seed=seed,
        progress=False,
    )
    raw = build_dataset(cfg.data, split="train")
    val = build_dataset(f"synthetic:val?num_images={args.val_images}", split="val")
    extra = args.focus_set if variant == "focus" else args.lda_set if variant == "lda_aqu" else []
    seed_everything(seed)
    model, new_params = build_variant(variant, seed, raw.num_classes, extra)
    model_cfg = model.cfg
    train_set = build_train_dataset(cfg, model_cfg, raw)
    trainer = build_trainer(cfg, model, DistInfo(device=device), torch.Generator().manual_seed(seed))
    loader = iter(InfiniteLoader(train_set, cfg.batch_size, 0, 1, seed, 0, collate))
    losses: list[float] = []

    def record_loss(iteration: int, metrics: dict[str, float]) -> bool:
        losses.append(round(metrics["loss"], 4))
        return False

    t0 = time.perf_counter()
    train_loop(trainer, loader, start_iter=0, max_iter=cfg.max_iter, after_step=record_loss)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(model, val, device, recipe=data_recipe("synthetic:val", model_cfg.default_input_size))
    eval_s = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 5) :]
    return {
        "variant": variant,
        "seed": seed,
        "overrides": [*VARIANTS[variant], *extra],
        "new_parameters": len(new_params),
        "miou": result["miou"],
        "pixel_acc": result["pixel_acc"],
        "loss_first": losses[0],
        "loss_last_fifth_mean": round(statistics.fmean(tail), 4),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "load_average_after": load_average(),
    }, model


def latency(models: dict[str, nn.Module], runs: int, threads: int) -> dict[str, dict[str, float]]:
    """Round-robin CPU latency (ms) of one 256×256 forward per variant."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0)) * 255
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.no_grad():
            for m in models.values():
                m.eval()
                for _ in range(3):
                    m(x)
            for _ in range(runs):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        out[name] = {
            "median_ms": round(statistics.median(ts), 1),
            "p90_ms": round(ts[min(len(ts) - 1, int(0.9 * len(ts)))], 1),
            "min_ms": round(ts[0], 1),
        }
    return out


def tiny_macs(num_classes: int, args: argparse.Namespace) -> dict[str, dict[str, int]]:
    from faseg.model import build_model, get_preset
    from faseg.model.complexity import count_macs

    out = {}
    for variant in args.variants:
        extra = args.focus_set if variant == "focus" else args.lda_set if variant == "lda_aqu" else []
        torch.manual_seed(0)
        cfg = get_preset(PRESET, [f"num_classes={num_classes}", *VARIANTS[variant], *extra])
        report = count_macs(build_model(cfg).eval(), torch.zeros(1, 3, *SIZE), max_depth=3)
        out[variant] = {
            "model": report.total,
            "pixel_decoder": report.by_module["sem_seg_head.pixel_decoder"],
            "pixel_decoder.transformer": report.by_module["sem_seg_head.pixel_decoder.transformer"],
        }
    return out


def r50_macs() -> dict[str, Any]:
    """`faseg info` numbers (faseg.model.summary.describe, one level deeper than the CLI prints)."""
    from faseg.model.presets import get_preset
    from faseg.model.summary import describe

    settings = {
        "baseline": [],
        "focus_keep0.3_no_cascade": [
            "pixel_decoder.focus.enabled=true",
            "pixel_decoder.focus.keep_ratio=0.3",
            "pixel_decoder.focus.cascade=[1.0]",
        ],
        "focus_keep0.3_default_cascade": ["pixel_decoder.focus.enabled=true", "pixel_decoder.focus.keep_ratio=0.3"],
        "lda_aqu": ["pixel_decoder.upsampler=lda_aqu"],
    }
    out: dict[str, Any] = {}
    for name, overrides in settings.items():
        info = describe(get_preset("faseg_r50_ade20k", overrides), (512, 512), max_depth=3)
        out[name] = {
            "overrides": overrides,
            "model": info["macs"],
            "pixel_decoder": info["modules"]["sem_seg_head.pixel_decoder"]["macs"],
            "pixel_decoder.transformer": info["modules"]["sem_seg_head.pixel_decoder.transformer"]["macs"],
        }
    base = out["baseline"]["pixel_decoder.transformer"]
    for row in out.values():
        row["transformer_vs_baseline"] = round(row["pixel_decoder.transformer"] / base, 4)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == variant]
        mious = [r["miou"] for r in rows]
        out[variant] = {
            "seeds": [r["seed"] for r in rows],
            "miou_mean": round(statistics.fmean(mious), 4),
            "miou_min": round(min(mious), 4),
            "miou_max": round(max(mious), 4),
            "miou_per_seed": [round(m, 4) for m in mious],
            "loss_last_fifth_mean": round(statistics.fmean(r["loss_last_fifth_mean"] for r in rows), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=60, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-iters", type=int, default=20)
    parser.add_argument("--num-points", type=int, default=2048)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training (shared machine)")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--latency-threads", type=int, default=1)
    parser.add_argument("--focus-set", nargs="*", default=[], help="extra --set overrides for the Focus variant")
    parser.add_argument("--lda-set", nargs="*", default=[], help="extra --set overrides for the LDA-AQU variant")
    parser.add_argument("--r50-macs", action="store_true", help="also count faseg_r50_ade20k at 512×512 (~1 min)")
    parser.add_argument(
        "--macs-only",
        action="store_true",
        help="no training: count faseg_r50_ade20k at 512×512 and add it (with its own command and date) to --out",
    )
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.macs_only:
        record = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
        record["macs_faseg_r50_ade20k_512"] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "counter": "faseg.model.summary.describe (what `faseg info` prints), batch 1",
            **r50_macs(),
        }
        text = json.dumps(record, indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
        return 0
    record: dict[str, Any] = {
        "benchmark": "benchmarks/compare_focus_lda.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_start": load_average(),
        "budget": {
            "preset": PRESET,
            "input_size": list(SIZE),
            "iters_per_run": args.iters,
            "batch_size": args.batch_size,
            "images_seen_per_run": args.iters * args.batch_size,
            "seeds": args.seeds,
            "variants": {v: VARIANTS[v] for v in args.variants},
            "focus_extra": args.focus_set,
            "lda_extra": args.lda_set,
            "lr": args.lr,
            "warmup_iters": args.warmup_iters,
            "num_points": args.num_points,
            "val_images": args.val_images,
            "train_threads": args.threads,
        },
    }
    runs, trained = [], {}
    for seed in args.seeds:
        for variant in args.variants:
            row, model = train_and_evaluate(variant, seed, args)
            print(json.dumps(row), file=sys.stderr, flush=True)
            runs.append(row)
            if seed == args.seeds[0]:
                trained[variant] = model
    record["runs"] = runs
    record["summary"] = summarise(runs)
    record["latency"] = {
        "what": f"one forward, batch 1, {SIZE[0]}x{SIZE[1]}, eval, no_grad, models of seed {args.seeds[0]}",
        "threads": args.latency_threads,
        "runs": args.latency_runs,
        "load_average_before": load_average(),
        "ms": latency(trained, args.latency_runs, args.latency_threads),
        "load_average_after": load_average(),
    }
    num_classes = next(iter(trained.values())).cfg.num_classes
    record["macs_faseg_tiny_256"] = tiny_macs(num_classes, args)
    if args.r50_macs:
        record["macs_faseg_r50_ade20k_512"] = r50_macs()
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    record["note"] = (
        f"Small budget: {args.iters} steps of batch {args.batch_size} per run (the bundled demo model trains "
        "2400 steps of batch 8). mIoU at this budget measures early training only, and differences between "
        "variants smaller than the spread between seeds are not evidence either way. Latency was measured on "
        "a shared machine (see the load averages)."
    )
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
