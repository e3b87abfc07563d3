"""`faseg demo-model`: train the bundled demo model (faseg_tiny on the synthetic dataset, ≤ 1 h on 2 CPU cores).

    faseg demo-model --out model/demo_model --work-dir /tmp/faseg-demo

Trains with :data:`faseg.model.demo.DEMO_RECIPE` (training state in ``--work-dir``, resumable with
``--resume``), evaluates the final weights on the full ``synthetic:val`` (200 images) and writes them to
``--out`` in our checkpoint format, with the command, wall time, machine, date and scores in
``config.json`` → ``metadata``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from faseg.machine import cpu_name as _cpu_name


def run(args: argparse.Namespace) -> int:
    # On a shared CPU, OpenMP threads that spin while waiting for a descheduled sibling make each step up to
    # 50× slower (measured on the 2-core dev machine under load). Must be set before torch starts OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from faseg.model.checkpoint import from_pretrained, save_pretrained
    from faseg.model.data import build_dataset
    from faseg.model.demo import demo_train_config
    from faseg.model.train import data_recipe, evaluate, main

    from . import CLIError

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work_dir or Path(tempfile.gettempdir()) / "faseg-demo-model")
    changes: dict[str, object] = {"resume": args.resume, "device": "cpu", "progress": not args.no_progress}
    if args.iters is not None:
        changes["max_iter"] = args.iters
    cfg = demo_train_config(str(work), **changes)
    load_start = [round(v, 2) for v in os.getloadavg()]
    summary = main(cfg)
    if summary["final_dir"] is None:
        raise CLIError(f"training stopped early; resume with --resume --work-dir {work}")

    model = from_pretrained(summary["final_dir"])
    val = build_dataset(args.val_data, split="val")
    results = evaluate(model, val, torch.device("cpu"), recipe=data_recipe(args.val_data, (256, 256)), batch_size=8)
    train_meta = model.checkpoint_info.metadata
    metadata = {
        "description": "faseg_tiny trained from scratch on the procedural synthetic dataset (faseg demo-model)",
        "command": "faseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "faseg demo-model",
        "recipe": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "resume", "progress")},
        "train_wall_time_s": round(float(train_meta.get("train_wall_time_s", summary["wall_time_s"])), 1),
        "machine": (
            f"{platform.node()}: {_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}"
        ),
        # The development machines are shared: the load average says how much of the CPU the run had.
        "load_average_at_start": load_start,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "iterations": summary["iteration"],
        "val_data": args.val_data,
        "val_images": results["num_images"],
        "val_miou": results["miou"],
        "val_pixel_acc": results["pixel_acc"],
        "val_per_class_iou": dict(zip(results["class_names"], results["per_class_iou"])),
    }
    info = model.checkpoint_info
    save_pretrained(model, out, info.classes, info.palette, input_size=info.input_size, metadata=metadata)
    print(json.dumps({"out": str(out), **{k: metadata[k] for k in ("train_wall_time_s", "val_miou", "val_pixel_acc")}}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-model",
        help="train the bundled demo model (faseg_tiny on synthetic data, CPU, < 1 h)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="where the checkpoint goes (config.json + model.safetensors)"
    )
    parser.add_argument("--work-dir", metavar="DIR", help="training state / logs (default: $TMPDIR/faseg-demo-model)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --work-dir")
    parser.add_argument("--iters", type=int, help="override the recipe's iteration count (shorter trial runs)")
    parser.add_argument(
        "--val-data", default="synthetic:val", help="final evaluation set (default synthetic:val, 200 images)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
