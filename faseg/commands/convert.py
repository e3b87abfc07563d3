"""`faseg convert`: import official / Hugging Face / ImageNet weights into our checkpoint format.

    faseg convert --from detectron2 ade_faseg_r50.pth --out checkpoints/faseg_r50 [--preset faseg_r50_ade20k]
    faseg convert --from hf ./mask2former-swin-tiny-ade-semantic --out checkpoints/m2f_swin_t
    faseg convert --from torchvision-resnet resnet50.pth --preset faseg_r50_ade20k --out checkpoints/init
    faseg convert --from swin swin_tiny_patch4_window7_224.pth --preset faseg_swin_t_ade20k --out checkpoints/init
    faseg convert --from detectron2 m2f_r50.pkl --preset faseg_r50_ade20k --warm-start --out checkpoints/warm

The report (missing / unexpected / shape-mismatched / newly initialised / ignored keys) is always printed.
Anything but an exact load fails unless --allow-partial is given; nothing is written on failure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, add_overrides

FORMATS = ("detectron2", "hf", "torchvision-resnet", "swin")


def _read_classes(spec: str) -> list[str]:
    """--classes: a JSON list, a JSON object with "classes" (names or {"name": ...}), a text file (one per line),
    or an inline comma-separated list."""
    path = Path(spec)
    if not path.is_file():
        if "," in spec:
            return [name.strip() for name in spec.split(",")]
        raise CLIError(f"--classes {spec}: no such file (give a file or a comma-separated list)")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--classes {spec}: not valid JSON ({exc})") from None
        items = doc.get("classes") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise CLIError(f'--classes {spec}: expected a list or an object with "classes"')
        return [str(i["name"]) if isinstance(i, dict) else str(i) for i in items]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _known_classes(name: str, num_classes: int) -> list[str] | None:
    """Class names of the datasets our presets are trained on, when the preset and the count say so."""
    try:
        from faseg.model.data import datasets
    except ImportError:
        return None
    for tag, attr in (("ade20k", "ADE20K_CLASSES"), ("cityscapes", "CITYSCAPES_CLASSES")):
        names = getattr(datasets, attr, None)
        if tag in name and names is not None and len(names) == num_classes:
            return list(names)
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from faseg.model.checkpoint import save_pretrained
    from faseg.model.convert import ConversionError, convert
    from faseg.model.presets import get_preset

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CLIError(f"--out {out} exists and is not empty (pass --overwrite to replace its checkpoint files)")
    cfg = get_preset(args.preset) if args.preset else None
    torch.manual_seed(args.seed)  # newly initialised tensors are reproducible
    try:
        result = convert(
            args.source_format,
            args.source,
            cfg,
            overrides=args.overrides,
            warm_start=args.warm_start,
            allow_partial=args.allow_partial,
        )
    except ConversionError as exc:
        raise CLIError(str(exc)) from None
    report = result.report
    print(report.format(max_keys=args.max_keys))
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")

    model_cfg = result.model.cfg
    classes = _read_classes(args.classes) if args.classes else result.classes
    classes = classes or _known_classes(model_cfg.name, model_cfg.num_classes)
    if classes is not None and len(classes) != model_cfg.num_classes:
        raise CLIError(
            f"class-count mismatch: the model has {model_cfg.num_classes} classes, --classes gives {len(classes)}"
        )
    metadata = {"converted_from": report.summary(), "seed": args.seed}
    save_pretrained(result.model, out, classes=classes, input_size=result.input_size, metadata=metadata)
    print(f"wrote {out} ({model_cfg.name}, {model_cfg.num_classes} classes)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="import detectron2 / Hugging Face / ImageNet weights into a faseg checkpoint directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=FORMATS, help="source format")
    parser.add_argument("source", help="checkpoint file (.pth / .pkl) or Hugging Face model directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory (model.safetensors + config.json)")
    parser.add_argument(
        "--preset",
        help="target preset; required for backbone weights, inferred for detectron2 when unambiguous, derived "
        "from config.json for hf",
    )
    add_overrides(parser)
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept missing / unexpected / mis-shaped keys; they stay freshly initialised (listed in the report)",
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="initialise a FASeg model from Mask2Former weights (detectron2 or hf); FASeg's own parts start fresh",
    )
    parser.add_argument("--classes", help='class names: JSON list / object with "classes", text file or a,b,c')
    parser.add_argument("--report-json", help="also write the full report (every key) as JSON to this file")
    parser.add_argument("--seed", type=int, default=0, help="seed for newly initialised tensors (default 0)")
    parser.add_argument("--max-keys", type=int, default=40, help="longest key list printed per report section")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")
    parser.set_defaults(func=run)
