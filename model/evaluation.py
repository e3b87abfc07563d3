"""Semantic-segmentation evaluation: confusion matrix, mIoU / accuracy, multi-scale + flip inference.

Metrics follow detectron2's ``SemSegEvaluator`` (spec §4.6):

- pixels whose ground truth is ``ignore_index`` (255) are dropped before counting;
- ``IoU_c = TP_c / (GT_c + Pred_c − TP_c)`` and ``acc_c = TP_c / GT_c`` are defined only for classes with at
  least one ground-truth pixel. A class that never occurs in the ground truth is left out of every mean
  (reported as NaN) — *even when it was predicted*: detectron2's ``iou_valid`` is ``pos_gt > 0 and
  union > 0``, so its false positives only lower the IoU of the classes they were taken from;
- ``mIoU`` / ``mACC`` are means over those classes, ``pACC = ΣTP / ΣGT``, ``fwIoU`` weights IoU by GT share.

All values are fractions in [0, 1] (detectron2 prints them ×100). The confusion matrix is summed over ranks
with ``torch.distributed.all_reduce`` when a process group is initialised, so every rank gets the results.

:func:`predict_scores` is the model's prediction in the official evaluation order; the evaluation loop over a
dataset is :func:`faseg.model.train.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data.batch import collate
from .data.transforms import resize_image, shortest_edge_size
from .faseg import FASeg
from .inference import semantic_inference

__all__ = ["ConfusionMatrix", "SemSegEvaluator", "format_results", "multiscale_flip_probs"]

IGNORE_INDEX = 255


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


class ConfusionMatrix:
    """A ``(K, K)`` int64 confusion matrix; rows are ground truth, columns predictions.

    Args:
        num_classes: K.
        ignore_index: ground-truth value excluded from counting.
        device: where the matrix lives (updates on the GPU stay on the GPU).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Any, gt: Any) -> None:
        """Adds one or more label maps: ``pred`` and ``gt`` integer arrays/tensors of the same shape.

        Raises ``ValueError`` for a shape mismatch, a prediction outside ``[0, K)`` or a ground-truth value
        that is neither a class id nor ``ignore_index``.
        """
        pred, gt = _as_tensor(pred), _as_tensor(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(gt.shape)}")
        if pred.is_floating_point() or gt.is_floating_point():
            raise TypeError("ConfusionMatrix.update expects integer label maps (argmax the scores first)")
        k = self.num_classes
        device = self.matrix.device
        pred = pred.reshape(-1).to(device=device, dtype=torch.int64)
        gt = gt.reshape(-1).to(device=device, dtype=torch.int64)
        valid = gt != self.ignore_index
        pred, gt = pred[valid], gt[valid]
        if gt.numel() == 0:
            return
        if int(gt.min()) < 0 or int(gt.max()) >= k:
            bad = torch.unique(gt[(gt < 0) | (gt >= k)])[:10].tolist()
            raise ValueError(f"ground truth has values {bad} outside 0..{k - 1} (and not {self.ignore_index})")
        if int(pred.min()) < 0 or int(pred.max()) >= k:
            bad = torch.unique(pred[(pred < 0) | (pred >= k)])[:10].tolist()
            raise ValueError(f"prediction has values {bad} outside 0..{k - 1}")
        self.matrix += torch.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def reduced(self) -> torch.Tensor:
        """The matrix summed over all ranks (a copy; this object is unchanged); a plain copy without a
        process group."""
        matrix = self.matrix.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            comm = matrix
            if dist.get_backend() == "nccl" and not comm.is_cuda:
                comm = comm.cuda()
            dist.all_reduce(comm, op=dist.ReduceOp.SUM)
            matrix = comm.to(matrix.device)
        return matrix

    def compute(self, matrix: torch.Tensor | None = None, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Metrics of ``matrix`` (default: this rank's matrix). See the module docstring.

        Returns:
            ``miou``, ``pixel_acc``, ``mean_acc``, ``fwiou`` (floats, NaN when no pixel was counted),
            ``per_class_iou`` / ``per_class_acc`` (lists of K floats, NaN for classes absent from the GT),
            ``valid_classes`` (number of classes in the mean), ``num_pixels``, and ``class_names``.
        """
        m = (self.matrix if matrix is None else matrix).double().cpu()
        tp = m.diagonal()
        pos_gt = m.sum(dim=1)
        pos_pred = m.sum(dim=0)
        union = pos_gt + pos_pred - tp
        valid = (pos_gt > 0) & (union > 0)
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(valid, tp / union.clamp(min=1), nan)
        acc = torch.where(pos_gt > 0, tp / pos_gt.clamp(min=1), nan)
        total = float(pos_gt.sum())
        n_valid = int(valid.sum())
        miou = float(iou[valid].mean()) if n_valid else math.nan
        macc = float(acc[pos_gt > 0].mean()) if n_valid else math.nan
        pacc = float(tp.sum() / total) if total else math.nan
        fwiou = float((iou[valid] * pos_gt[valid] / total).sum()) if total else math.nan
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "miou": miou,
            "pixel_acc": pacc,
            "mean_acc": macc,
            "fwiou": fwiou,
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
            "valid_classes": n_valid,
            "num_pixels": int(total),
            "class_names": names,
        }


class SemSegEvaluator:
    """Accumulates predictions over a dataset and computes mIoU, per-class IoU and pixel accuracy.

    Usage::

        evaluator = SemSegEvaluator(num_classes, class_names)
        for image, gt in data:
            evaluator.process(model_scores_or_labels, gt)
        results = evaluator.evaluate()   # all-reduced across ranks when torch.distributed is initialised
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 ignore_index: int = IGNORE_INDEX, distributed: bool = True,
                 device: torch.device | str = "cpu"):  # fmt: skip
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.distributed = distributed
        self.confusion = ConfusionMatrix(num_classes, ignore_index, device)

    @property
    def num_classes(self) -> int:
        return self.confusion.num_classes

    def reset(self) -> None:
        self.confusion.reset()

    def process(self, pred: Any, gt: Any) -> None:
        """Adds predictions for one image or a batch.

        ``pred`` is either an integer label map (``(H, W)`` or ``(B, H, W)``) or floating class scores with
        the class axis first (``(K, H, W)`` or ``(B, K, H, W)``), which are arg-maxed over K as detectron2
        does. ``gt`` is the integer label map(s) of the same spatial shape (255 = ignore).
        """
        pred, gt = _as_tensor(pred), _as_tensor(gt)
        if pred.is_floating_point():
            if pred.ndim not in (3, 4) or pred.shape[-3] != self.num_classes:
                raise ValueError(
                    f"score maps must be (K, H, W) or (B, K, H, W) with K={self.num_classes}, got {tuple(pred.shape)}"
                )
            pred = pred.argmax(dim=-3)
        self.confusion.update(pred, gt)

    def evaluate(self) -> dict[str, Any]:
        """Metrics over everything processed so far (summed over ranks when ``distributed``)."""
        matrix = self.confusion.reduced() if self.distributed else self.confusion.matrix
        return self.confusion.compute(matrix, self.class_names)


def format_results(results: dict[str, Any], digits: int = 2) -> str:
    """A plain-text table of :meth:`SemSegEvaluator.evaluate` results (values ×100, like detectron2)."""
    names = results["class_names"]
    width = max([len("class"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}"]
    for name, iou, acc in zip(names, results["per_class_iou"], results["per_class_acc"]):
        fmt = lambda v: "    n/a" if math.isnan(v) else f"{100 * v:7.{digits}f}"  # noqa: E731
        lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
    lines.append(
        f"mIoU {100 * results['miou']:.{digits}f}  pAcc {100 * results['pixel_acc']:.{digits}f}  "
        f"mAcc {100 * results['mean_acc']:.{digits}f}  fwIoU {100 * results['fwiou']:.{digits}f}  "
        f"({results['valid_classes']} classes in the mean)"
    )
    return "\n".join(lines)


ProbsFn = Callable[[torch.Tensor], torch.Tensor]


def multiscale_flip_probs(
    probs_fn: ProbsFn,
    image: torch.Tensor | np.ndarray,
    scales: Sequence[int],
    flip: bool = True,
    max_long: int | None = None,
) -> torch.Tensor:
    """Multi-scale (+ horizontal flip) test-time augmentation, averaged in probability space (spec §4.7).

    For each short side in ``scales`` the image is resized as the test mapper does (short side = scale, long
    side ≤ ``max_long``, bilinear), ``probs_fn`` is run on it (and on its mirror image, whose output is
    mirrored back), each map is resized bilinearly (``align_corners=False``) to the original size, and all
    maps are averaged — like Mask2Former's ``SemanticSegmentorWithTTA``.

    Args:
        probs_fn: ``(3, h, w)`` uint8 RGB tensor → ``(K, h, w)`` class probabilities (any float dtype/device).
        image: ``(3, H, W)`` uint8 tensor, or an ``(H, W, 3)`` uint8 numpy array.
        scales: short-side sizes, e.g. ADE20K ``[256, 384, 512, 640, 768, 896]`` with ``max_long=3584``.
    Returns:
        ``(K, H, W)`` float32 averaged probabilities, on the device of ``probs_fn``'s output.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image array, got shape {image.shape}")
        hwc = np.ascontiguousarray(image)
    else:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
        hwc = image.detach().permute(1, 2, 0).contiguous().cpu().numpy()
    if hwc.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {hwc.dtype}")
    if not scales:
        raise ValueError("scales must not be empty")
    height, width = hwc.shape[:2]

    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        size = shortest_edge_size(height, width, int(scale), max_long)
        resized = torch.from_numpy(np.ascontiguousarray(resize_image(hwc, size))).permute(2, 0, 1)  # (3, h, w)
        views = [(resized, False)] + ([(resized.flip(-1), True)] if flip else [])
        for view, flipped in views:
            probs = probs_fn(view.contiguous())
            if probs.ndim != 3:
                raise ValueError(f"probs_fn must return (K, h, w), got shape {tuple(probs.shape)}")
            probs = probs.float()
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            total = probs if total is None else total + probs
            count += 1
    assert total is not None
    return total / count


@torch.no_grad()
def predict_scores(
    model: FASeg,
    images: list[np.ndarray],
    out_sizes: list[tuple[int, int]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Semantic scores (K, H_out, W_out) per image, in the official order (spec §4): batch → pad to a
    multiple of 32 → forward → semantic_inference (crop the padding, resize to the output size)."""
    batch = collate([(im, None) for im in images], size_divisibility=model.cfg.size_divisibility)
    x = batch.images.to(device)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x)
    padded = tuple(x.shape[-2:])
    scores = []
    for i, (size, out_size) in enumerate(zip(batch.image_sizes, out_sizes)):
        s = semantic_inference(
            out.pred_logits[i : i + 1].float(), out.pred_masks[i : i + 1].float(), padded, size, out_size
        )
        scores.append(s[0])
    return scores
