"""`faseg eval`: mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset (detectron2's SemSegEvaluator).

    faseg eval --data synthetic:val --json                        # the bundled demo model
    faseg eval --checkpoint runs/r50/best --data ade20k:/data/ADEChallengeData2016 --tta --json

Test-time resize per dataset kind (ADE20K short side 512, Cityscapes 1024, folder / synthetic native size);
``--tta`` adds multi-scale + flip. Runs under torchrun too (images sharded, results all-reduced).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from . import CLIError, add_kernels_option


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from faseg.model.checkpoint import from_pretrained
    from faseg.model.data import build_dataset
    from faseg.model.demo import demo_checkpoint_dir
    from faseg.model.evaluation import format_results
    from faseg.model.ops.kernels import KernelsUnavailableError, select_kernels
    from faseg.model.train import data_recipe, evaluate, setup_distributed

    checkpoint = args.checkpoint or str(demo_checkpoint_dir())
    if args.threads:
        torch.set_num_threads(args.threads)
    info = setup_distributed(args.device)
    try:
        try:
            print(select_kernels(args.kernels, info.device).summary(), file=sys.stderr)
        except KernelsUnavailableError as exc:
            raise CLIError(str(exc)) from None
        model = from_pretrained(checkpoint, device=info.device)
        dataset = build_dataset(args.data, split=args.split)
        if dataset.num_classes != model.num_classes:
            raise CLIError(
                f"{args.data} has {dataset.num_classes} classes but the checkpoint {checkpoint} has {model.num_classes}"
            )
        recipe = data_recipe(args.data, tuple(model.checkpoint_info.input_size))
        results = evaluate(
            model,
            dataset,
            info.device,
            recipe=recipe,
            tta=args.tta,
            batch_size=args.batch,
            limit=args.limit,
            progress=not args.json and info.is_main,
        )
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if not info.is_main:
        return 0
    results = {k: _finite_or_none(v) for k, v in results.items()}
    results.update({"checkpoint": checkpoint, "data": args.data, "tta": args.tta})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        nan = float("nan")
        table = {k: ([nan if x is None else x for x in v] if isinstance(v, list) else v) for k, v in results.items()}
        print(f"{checkpoint} on {args.data} ({results['num_images']} images{', tta' if args.tta else ''})")
        print(format_results(table))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="mIoU / per-class IoU / pixel accuracy of a checkpoint on a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (default: the bundled demo model)")
    parser.add_argument(
        "--data", required=True, metavar="KIND:PATH", help="ade20k|cityscapes|folder:PATH or synthetic:SPLIT"
    )
    parser.add_argument("--split", default="val", help="split for KIND:PATH datasets (default val)")
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1, as official)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_kernels_option(parser)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (miou, per_class_iou, pixel_acc, ...)"
    )
    parser.set_defaults(func=run)
