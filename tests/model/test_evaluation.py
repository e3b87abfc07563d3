"""mIoU / accuracy against hand-computed values, detectron2's averaging rules, distributed reduction, TTA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from faseg.model.evaluation import ConfusionMatrix, SemSegEvaluator, format_results, multiscale_flip_probs

# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_hand_computed_example():
    # 3 classes; one ignored pixel (its prediction must not count).
    gt = np.array([[0, 0, 1, 1],
                   [2, 2, 2, 255]])  # fmt: skip
    pred = np.array([[0, 1, 1, 1],
                     [2, 2, 0, 1]])  # fmt: skip
    ev = SemSegEvaluator(3, ["a", "b", "c"])
    ev.process(pred, gt)
    r = ev.evaluate()
    # class 0: TP 1, GT 2, Pred 2 -> IoU 1/3; class 1: TP 2, GT 2, Pred 3 -> 2/3;
    # class 2: TP 2, GT 3, Pred 2 -> 2/3 (the ignored pixel's prediction is not counted)
    assert r["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert r["miou"] == pytest.approx(5 / 9)
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    assert r["per_class_acc"] == pytest.approx([1 / 2, 1.0, 2 / 3])
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert r["fwiou"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 3 * 2 / 3) / 7)
    assert r["num_pixels"] == 7 and r["valid_classes"] == 3
    assert ev.confusion.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]  # rows GT, columns prediction
    table = format_results(r)
    assert "mIoU 55.56" in table and "b" in table


def test_classes_absent_from_ground_truth_are_left_out_like_detectron2():
    gt = np.array([[0, 0, 0, 1]])
    pred = np.array([[0, 0, 2, 1]])  # class 2 predicted but never in GT; class 3 nowhere
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    r = cm.compute()
    iou = r["per_class_iou"]
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1.0)
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert r["miou"] == pytest.approx((2 / 3 + 1.0) / 2) and r["valid_classes"] == 2
    assert math.isnan(r["per_class_acc"][2])


def test_empty_and_all_ignored():
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((2, 2), np.int64), np.full((2, 2), 255))
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"]) and r["num_pixels"] == 0


def _reference_metrics(preds, gts, k):
    """A direct per-class count, independent of the confusion-matrix code."""
    ious, tp_all, gt_all = [], 0, 0
    for c in range(k):
        tp = sum(((p == c) & (g == c)).sum() for p, g in zip(preds, gts))
        n_gt = sum((g == c).sum() for g in gts)
        n_pred = sum(((p == c) & (g != 255)).sum() for p, g in zip(preds, gts))
        if n_gt:
            ious.append(tp / (n_gt + n_pred - tp))
        tp_all += tp
        gt_all += n_gt
    return float(np.mean(ious)), tp_all / gt_all


def test_accumulation_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    k = 6
    preds = [rng.integers(0, k, (17, 23)) for _ in range(4)]
    gts = [np.where(rng.random((17, 23)) < 0.1, 255, rng.integers(0, k - 1, (17, 23))) for _ in range(4)]
    ev = SemSegEvaluator(k)
    for p, g in zip(preds, gts):
        ev.process(torch.from_numpy(p), torch.from_numpy(g))
    miou, pacc = _reference_metrics(preds, gts, k)
    r = ev.evaluate()
    assert r["miou"] == pytest.approx(miou) and r["pixel_acc"] == pytest.approx(pacc)
    # batched input gives the same matrix
    ev2 = SemSegEvaluator(k)
    ev2.process(np.stack(preds), np.stack(gts))
    assert torch.equal(ev.confusion.matrix, ev2.confusion.matrix)
    ev2.reset()
    assert ev2.confusion.matrix.sum() == 0


def test_scores_are_argmaxed_over_the_class_axis():
    gt = torch.tensor([[0, 1], [2, 255]])
    scores = torch.zeros(3, 2, 2)
    scores[0, 0, 0] = scores[1, 0, 1] = scores[1, 1, 0] = 1.0  # pixel (1, 0) wrongly class 1
    ev = SemSegEvaluator(3)
    ev.process(scores, gt)
    ev.process(scores[None], gt[None])  # (B, K, H, W)
    assert ev.confusion.matrix.tolist() == [[2, 0, 0], [0, 2, 0], [0, 2, 0]]
    with pytest.raises(ValueError, match="K=3"):
        ev.process(torch.zeros(4, 2, 2), gt)


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"prediction.*\[3\]"):
        cm.update(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match=r"ground truth.*\[7\]"):
        cm.update(np.array([[0]]), np.array([[7]]))
    with pytest.raises(TypeError):
        cm.update(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))
    with pytest.raises(ValueError):
        SemSegEvaluator(3, ["only", "two"])


def _distributed_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        ev = SemSegEvaluator(2)
        ev.process(np.full((1, 2), rank), np.array([[0, 0]]))  # rank 0: both right; rank 1: both wrong
        r = ev.evaluate()
        results[rank] = (r["pixel_acc"], ev.confusion.matrix.tolist())
    finally:
        dist.destroy_process_group()


def test_confusion_is_all_reduced_across_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_distributed_worker, args=(2, str(tmp_path / "init"), results), nprocs=2,
                           start_method="spawn")  # fmt: skip
        results = dict(results)
    for rank in (0, 1):
        pixel_acc, local = results[rank]
        assert pixel_acc == pytest.approx(2 / 4)  # 2 of the 4 pixels of both ranks together
        assert sum(map(sum, local)) == 2  # the local matrix is left unreduced


# ---------------------------------------------------------------------------------------------------------
# Multi-scale + flip


def _content_probs(image: torch.Tensor) -> torch.Tensor:
    """Identity-ish model: P(class 1) is the red channel / 255, P(class 0) the rest. Output at input size."""
    p1 = image[0].float() / 255.0
    return torch.stack([1 - p1, p1])  # (2, h, w)


def _gradient_image(h: int = 48, w: int = 80) -> torch.Tensor:
    x = torch.linspace(0, 255, w).round().to(torch.uint8)
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = x  # red grows left to right: any unflipped mirror would show up
    image[1] = 100
    return image


def test_multiscale_flip_recovers_content_based_probabilities():
    image = _gradient_image()
    calls = []

    def probs_fn(view):
        calls.append(tuple(view.shape))
        assert view.dtype == torch.uint8
        return _content_probs(view)

    out = multiscale_flip_probs(probs_fn, image, scales=[24, 48, 96], flip=True, max_long=4096)
    assert out.shape == (2, 48, 80) and out.dtype == torch.float32
    assert calls == [(3, 24, 40), (3, 24, 40), (3, 48, 80), (3, 48, 80), (3, 96, 160), (3, 96, 160)]
    expected = _content_probs(image)
    assert torch.allclose(out.sum(0), torch.ones(48, 80), atol=1e-5)
    assert (out - expected).abs().max() < 0.03
    # a single scale at the native size without flip is exactly the model output
    single = multiscale_flip_probs(_content_probs, image, scales=[48], flip=False)
    assert torch.allclose(single, expected)


def test_multiscale_flip_averages_mirrored_views():
    # A position-based model (ignores content): a correct un-flip makes flip and no-flip agree exactly.
    def position_probs(view):
        w = view.shape[-1]
        ramp = torch.linspace(0, 1, w).expand(view.shape[-2], w)
        return torch.stack([ramp, 1 - ramp])

    image = _gradient_image()
    out = multiscale_flip_probs(position_probs, image, scales=[48], flip=True)
    ramp = torch.linspace(0, 1, 80)
    assert torch.allclose(out[0, 0], (ramp + ramp.flip(0)) / 2, atol=1e-6)


def test_multiscale_caps_the_long_side_and_accepts_numpy():
    seen = []

    def probs_fn(view):
        seen.append(tuple(view.shape[-2:]))
        return _content_probs(view)

    hwc = _gradient_image().permute(1, 2, 0).numpy()
    out = multiscale_flip_probs(probs_fn, hwc, scales=[96], flip=False, max_long=100)
    assert seen == [(60, 100)] and out.shape == (2, 48, 80)
    with pytest.raises(ValueError):
        multiscale_flip_probs(probs_fn, torch.zeros(48, 80, dtype=torch.uint8), scales=[48])
    with pytest.raises(TypeError):
        multiscale_flip_probs(probs_fn, torch.zeros(3, 8, 8), scales=[8])
    with pytest.raises(ValueError):
        multiscale_flip_probs(probs_fn, _gradient_image(), scales=[])
