"""`faseg train`: fine-tune or train a preset with the official recipe (faseg.model.train).

    faseg train --preset faseg_r50_ade20k --data ade20k:/data/ADEChallengeData2016 \\
        --val-data ade20k:/data/ADEChallengeData2016 --out runs/r50 --init checkpoints/init
    faseg train --preset faseg_tiny --data synthetic:train --val-data synthetic:val --out runs/tiny \\
        --iters 2000 --batch 8          # the class count follows the dataset
    torchrun --nproc_per_node 2 -m faseg train ...     # DDP: gloo on CPU, nccl on GPU
    faseg train ... --resume                           # continue from OUT/last (after a crash or a stop)

``--batch`` is the total batch per optimiser step over all processes and accumulation steps.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import CLIError, add_kernels_option, add_overrides

# Official schedule lengths (Mask2Former's ADE20K and Cityscapes configs); anything else gets the ADE20K length.
_DEFAULT_ITERS = {"ade20k": 160_000, "cityscapes": 90_000}


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}")
    return (values[0], values[-1])


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def config_from_args(args: argparse.Namespace):  # -> faseg.model.train.TrainConfig
    from faseg.model.train import TrainConfig

    kind = args.data.partition(":")[0].strip().lower()
    return TrainConfig(
        preset=args.preset,
        overrides=list(args.overrides),
        data=args.data,
        val_data=args.val_data,
        out=args.out,
        init=args.init,
        resume=args.resume,
        max_iter=args.iters if args.iters is not None else _DEFAULT_ITERS.get(kind, 160_000),
        batch_size=args.batch,
        accum_steps=args.accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        backbone_multiplier=args.backbone_multiplier,
        clip_grad=args.clip_grad,
        warmup_iters=args.warmup_iters,
        warmup_factor=args.warmup_factor,
        freeze_backbone=args.freeze_backbone,
        amp=args.amp,
        num_points=args.num_points,
        crop_size=args.crop,
        short_edge_choices=args.short_edges,
        photometric=not args.no_color_aug,
        flip=not args.no_flip,
        num_workers=args.workers,
        eval_period=args.eval_period,
        eval_limit=args.eval_limit,
        checkpoint_period=args.checkpoint_period,
        log_period=args.log_period,
        seed=args.seed,
        deterministic=args.deterministic,
        device=args.device,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from faseg.model.ops.kernels import KernelsUnavailableError, select_kernels
    from faseg.model.train import main

    cfg = config_from_args(args)
    try:
        print(select_kernels(args.kernels, args.device).summary(), file=sys.stderr)
    except KernelsUnavailableError as exc:
        raise CLIError(str(exc)) from None
    rank = 0
    try:
        summary = main(cfg)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except FloatingPointError as exc:
        raise CLIError(f"training diverged: {exc}") from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        summary.pop("last_eval", None)
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train / fine-tune a preset (resumable; runs under torchrun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", required=True, help="model preset (see `faseg info --help`)")
    parser.add_argument(
        "--data",
        required=True,
        metavar="KIND:PATH",
        help="training set: ade20k|cityscapes|folder:PATH or synthetic:train",
    )
    parser.add_argument(
        "--val-data", metavar="KIND:PATH", help="validation set (split val); enables periodic evaluation and OUT/best"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run directory: last/ (training state), best/, final/, metrics.jsonl",
    )
    parser.add_argument(
        "--init",
        metavar="SRC",
        help="initial weights: a faseg checkpoint directory, an official detectron2 FASeg / Mask2Former .pth / .pkl "
        "or a Hugging Face Mask2Former directory; class-head rows of classes shared by name are carried over "
        "(reported in OUT/init_report.json)",
    )
    parser.add_argument("--iters", type=int, help="iterations (default: 160000; 90000 for cityscapes)")
    parser.add_argument("--batch", type=int, default=16, help="total images per optimiser step (default 16)")
    parser.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-batches per step (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last when it exists")
    opt = parser.add_argument_group("optimisation (defaults: the official recipe)")
    opt.add_argument("--lr", type=float, default=1e-4, help="base learning rate (default 1e-4)")
    opt.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    opt.add_argument("--backbone-multiplier", type=float, default=0.1, help="backbone LR factor (default 0.1)")
    opt.add_argument(
        "--clip-grad", type=float, default=0.01, help="full-model gradient-norm clip, 0 = off (default 0.01)"
    )
    opt.add_argument("--warmup-iters", type=int, default=0, help="linear warm-up iterations (default 0)")
    opt.add_argument("--warmup-factor", type=float, default=1.0, help="LR factor at the start of the warm-up")
    opt.add_argument("--freeze-backbone", action="store_true", help="train the head only (backbone frozen, BN in eval)")
    opt.add_argument(
        "--amp",
        choices=("auto", "off", "fp16", "bf16"),
        default="auto",
        help="mixed precision (auto: fp16 on CUDA, off on CPU)",
    )
    opt.add_argument("--num-points", type=int, default=12544, help="points per mask for matching and the mask losses")
    data = parser.add_argument_group("data")
    data.add_argument("--crop", type=_size, help="training crop S or HxW (default: per dataset kind)")
    data.add_argument("--short-edges", type=_int_list, help="comma-separated short-side choices of the resize")
    data.add_argument("--no-color-aug", action="store_true", help="disable the photometric distortion")
    data.add_argument("--no-flip", action="store_true", help="disable the horizontal flip")
    data.add_argument("--workers", type=int, default=2, help="data-loading worker processes per process (default 2)")
    run_ = parser.add_argument_group("bookkeeping")
    run_.add_argument("--eval-period", type=int, default=5000, help="evaluate every N iterations (default 5000)")
    run_.add_argument("--eval-limit", type=int, help="evaluate on the first N val images only")
    run_.add_argument("--checkpoint-period", type=int, default=5000, help="save OUT/last every N iterations")
    run_.add_argument("--log-period", type=int, default=20, help="metrics.jsonl line every N iterations")
    run_.add_argument("--seed", type=int, default=0, help="random seed (default 0; rank r uses seed + r)")
    run_.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume on CPU)")
    run_.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_kernels_option(run_)
    add_overrides(parser)
    parser.set_defaults(func=run)
