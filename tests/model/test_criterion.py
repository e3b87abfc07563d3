"""Matcher, point sampling and set-criterion tests (spec §3.1–3.3)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from faseg.model.criterion import (
    SetCriterion,
    build_weight_dict,
    dice_loss,
    semantic_targets,
    sigmoid_ce_loss,
)
from faseg.model.matcher import HungarianMatcher, batch_dice_loss, batch_sigmoid_ce_loss
from faseg.model.point_sample import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    rand_points,
)

NUM_CLASSES = 5
LN2 = math.log(2.0)


def _outputs(batch: int = 2, queries: int = 6, size: int = 8, num_aux: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def one() -> dict:
        return {
            "pred_logits": torch.randn(batch, queries, NUM_CLASSES + 1, generator=g).requires_grad_(),
            "pred_masks": (3 * torch.randn(batch, queries, size, size, generator=g)).requires_grad_(),
        }

    out = one()
    out["aux_outputs"] = [one() for _ in range(num_aux)]
    return out


def _targets(batch: int = 2, size: int = 32, seed: int = 1) -> list[dict]:
    """Semantic targets from random blocky label maps (8×8 blocks upsampled to size×size)."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        coarse = torch.randint(0, NUM_CLASSES, (4, 4), generator=g)
        coarse[0, 0] = 255  # an ignore block
        label = coarse.repeat_interleave(size // 4, 0).repeat_interleave(size // 4, 1)
        targets.append(semantic_targets(label))
    return targets


def _criterion(num_aux: int = 0, num_points: int = 256) -> SetCriterion:
    matcher = HungarianMatcher(num_points=num_points)
    return SetCriterion(NUM_CLASSES, matcher, build_weight_dict(num_aux), num_points=num_points)


# ------------------------------------------------------------------ point sampling


def test_point_sample_reads_pixel_centres_and_interpolates() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    # Pixel (row r, col c) has its centre at ((c + 0.5) / 2, (r + 0.5) / 2) in (x, y).
    pts = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]])
    out = point_sample(x, pts)
    assert out.shape == (1, 1, 5)
    # The image centre is the mean of the four pixels: 2.5.
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0, 2.5]))
    # Grid form: (N, Hg, Wg, 2) -> (N, C, Hg, Wg).
    assert point_sample(x, pts.view(1, 5, 1, 2)).shape == (1, 1, 5, 1)


def test_uncertain_points_follow_detectron2_semantics() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    num_points, ratio, importance = 20, 3, 0.75

    gen = torch.Generator().manual_seed(123)
    coords = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, num_points, ratio, importance, generator=gen
    )
    assert coords.shape == (3, num_points, 2)
    assert coords.min() >= 0 and coords.max() <= 1

    # Replay the draws: 60 oversampled points, keep the 15 with the smallest |logit|, add 5 fresh ones.
    replay = torch.Generator().manual_seed(123)
    over = rand_points(3, 60, device="cpu", generator=replay)
    unc = -point_sample(logits, over).abs()[:, 0]  # (3, 60)
    keep = unc.topk(15, dim=1).indices
    expected_kept = torch.stack([over[i, keep[i]] for i in range(3)])
    fresh = rand_points(3, 5, device="cpu", generator=replay)
    torch.testing.assert_close(coords, torch.cat([expected_kept, fresh], dim=1))
    # The kept points are at least as uncertain as any dropped oversampled point.
    kept_unc = -point_sample(logits, coords[:, :15]).abs()[:, 0]
    kept_min = kept_unc.min(dim=1).values[:, None]  # (3, 1)
    assert (unc >= kept_min - 1e-6).sum(dim=1).eq(15).all()


def test_uncertain_points_without_importance_are_uniform_draws() -> None:
    logits = torch.zeros(2, 1, 4, 4)
    coords = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, 10, 3, 0.0, generator=torch.Generator().manual_seed(5)
    )
    replay = torch.Generator().manual_seed(5)
    rand_points(2, 30, device="cpu", generator=replay)  # the oversampled draw, all dropped
    torch.testing.assert_close(coords, rand_points(2, 10, device="cpu", generator=replay))


# ------------------------------------------------------------------ loss functions by hand


def test_dice_and_bce_against_hand_computation() -> None:
    # mask 0: logits [0, 0] -> σ = [0.5, 0.5], target [1, 0]
    #   BCE = mean(ln 2, ln 2) = 0.693147
    #   dice = 1 - (2·0.5 + 1) / (1 + 1 + 1) = 1 - 2/3 = 1/3
    # mask 1: logits [ln 3, -ln 3] -> σ = [0.75, 0.25], target [1, 1]
    #   BCE = mean(-ln 0.75, -ln 0.25) = (0.287682 + 1.386294) / 2 = 0.836988
    #   dice = 1 - (2·(0.75 + 0.25) + 1) / (1 + 2 + 1) = 1 - 3/4 = 0.25
    # num_masks = 2: loss_mask = (0.693147 + 0.836988) / 2 = 0.765068, loss_dice = (1/3 + 1/4) / 2 = 7/24
    ln3 = math.log(3.0)
    inputs = torch.tensor([[0.0, 0.0], [ln3, -ln3]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert sigmoid_ce_loss(inputs, targets, 2.0).item() == pytest.approx(0.765068, abs=1e-6)
    assert dice_loss(inputs, targets, 2.0).item() == pytest.approx(7 / 24, abs=1e-6)

    # Pairwise versions: rows = predictions, columns = targets.
    #   dice[0, 1]: σ = [0.5, 0.5] vs [1, 1]: 1 - (2·1 + 1) / (1 + 2 + 1) = 0.25
    #   dice[1, 0]: σ = [0.75, 0.25] vs [1, 0]: 1 - (2·0.75 + 1) / (1 + 1 + 1) = 1/6
    #   bce[0, 1] = ln 2 = 0.693147 (logit 0 costs ln 2 whatever the target)
    #   bce[1, 0] = mean(-ln 0.75, -ln 0.75) = 0.287682
    dice = batch_dice_loss(inputs, targets)
    bce = batch_sigmoid_ce_loss(inputs, targets)
    expected_dice = torch.tensor([[1 / 3, 0.25], [1 / 6, 0.25]])
    expected_bce = torch.tensor([[0.693147, 0.693147], [0.287682, 0.836988]])
    torch.testing.assert_close(dice, expected_dice, atol=1e-6, rtol=0)
    torch.testing.assert_close(bce, expected_bce, atol=1e-6, rtol=0)


def test_batch_costs_equal_per_pair_losses() -> None:
    g = torch.Generator().manual_seed(0)
    inputs = 4 * torch.randn(5, 50, generator=g)
    targets = (torch.rand(3, 50, generator=g) > 0.5).float()
    dice = batch_dice_loss(inputs, targets)
    bce = batch_sigmoid_ce_loss(inputs, targets)
    for q, j in itertools.product(range(5), range(3)):
        torch.testing.assert_close(dice[q, j], dice_loss(inputs[q : q + 1], targets[j : j + 1], 1.0))
        torch.testing.assert_close(bce[q, j], sigmoid_ce_loss(inputs[q : q + 1], targets[j : j + 1], 1.0))


def test_loss_ce_weights_no_object() -> None:
    # K = 1 (columns: class 0, no-object). Query 0 matched to class 0, query 1 unmatched -> no-object.
    #   query 0: logits [0, 0], ce = -ln 0.5 = ln 2 = 0.693147, weight 1
    #   query 1: logits [ln 3, 0] -> softmax [0.75, 0.25], ce = -ln 0.25 = 1.386294, weight eos_coef = 0.1
    #   loss = (0.693147 + 0.1·1.386294) / (1 + 0.1) = 0.756160
    criterion = SetCriterion(1, HungarianMatcher(num_points=16), build_weight_dict(0), eos_coef=0.1)
    outputs = {
        "pred_logits": torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]]),
        "pred_masks": torch.zeros(1, 2, 4, 4),
    }
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 16, 16)}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    assert criterion.loss_labels(outputs, targets, indices).item() == pytest.approx(0.756160, abs=1e-6)


def test_loss_ce_matches_manual_weighted_mean() -> None:
    criterion = _criterion()
    outputs = _outputs()
    targets = _targets()
    indices = criterion.matcher(outputs, targets, generator=torch.Generator().manual_seed(0))
    logits = outputs["pred_logits"].detach()
    total, weight_sum = 0.0, 0.0
    for b, (src, tgt) in enumerate(indices):
        cls = torch.full((logits.shape[1],), NUM_CLASSES)
        cls[src] = targets[b]["labels"][tgt]
        for q in range(logits.shape[1]):
            w = 0.1 if cls[q] == NUM_CLASSES else 1.0
            total += w * -torch.log_softmax(logits[b, q], -1)[cls[q]].item()
            weight_sum += w
    loss = criterion.loss_labels(outputs, targets, indices)
    assert loss.item() == pytest.approx(total / weight_sum, rel=1e-5)


def test_mask_losses_with_zero_logits_are_exact() -> None:
    # Logit 0 everywhere: BCE = ln 2 at every point whatever the target, σ = 0.5.
    # With an empty target mask, dice = 1 - 1 / (0.5·P + 1) = 1 - 1/51 for P = 100, whatever the points.
    # One target in total -> num_masks = 1.
    criterion = SetCriterion(
        NUM_CLASSES, HungarianMatcher(num_points=100), build_weight_dict(0), num_points=100
    )
    outputs = {"pred_logits": torch.zeros(1, 3, NUM_CLASSES + 1), "pred_masks": torch.zeros(1, 3, 8, 8)}
    targets = [{"labels": torch.tensor([2]), "masks": torch.zeros(1, 32, 32, dtype=torch.bool)}]
    losses = criterion(outputs, targets, generator=torch.Generator().manual_seed(0))
    assert losses["loss_mask"].item() == pytest.approx(LN2, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(50 / 51, abs=1e-6)


# ------------------------------------------------------------------ matcher


def _brute_force_min(cost: torch.Tensor) -> float:
    queries, targets = cost.shape
    return min(
        sum(cost[q, j].item() for j, q in enumerate(perm))
        for perm in itertools.permutations(range(queries), targets)
    )


@pytest.mark.parametrize("seed", range(5))
def test_matcher_is_optimal_against_brute_force(seed: int) -> None:
    matcher = HungarianMatcher(num_points=64)
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(2, 4, NUM_CLASSES + 1, generator=g),
        "pred_masks": 3 * torch.randn(2, 4, 8, 8, generator=g),
    }
    targets = [
        {
            "labels": torch.randint(0, NUM_CLASSES, (3,), generator=g),
            "masks": torch.rand(3, 32, 32, generator=g) > 0.5,
        }
        for _ in range(2)
    ]
    costs = matcher.cost_matrices(outputs, targets, generator=torch.Generator().manual_seed(seed))
    indices = matcher(outputs, targets, generator=torch.Generator().manual_seed(seed))
    for cost, (rows, cols) in zip(costs, indices):
        assert cost.shape == (4, 3)
        assert sorted(cols.tolist()) == [0, 1, 2]
        assert len(set(rows.tolist())) == 3
        assert rows.dtype == cols.dtype == torch.int64
        assert cost[rows, cols].sum().item() == pytest.approx(_brute_force_min(cost), abs=1e-5)


def test_matcher_cost_equals_weighted_per_pair_costs() -> None:
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=40)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, NUM_CLASSES + 1, generator=g)
    masks = torch.randn(4, 8, 8, generator=g)
    labels = torch.tensor([1, 3])
    tgt = (torch.rand(2, 32, 32, generator=g) > 0.5).float()
    points = torch.rand(40, 2, generator=g)
    cost = matcher.image_cost(logits, masks, labels, tgt, points)
    prob = logits.softmax(-1)
    for q, j in itertools.product(range(4), range(2)):
        p = point_sample(masks[q][None, None], points[None])[0]  # (1, P)
        t = point_sample(tgt[j][None, None], points[None])[0]  # (1, P)
        expected = (
            2.0 * -prob[q, labels[j]]
            + 5.0 * F.binary_cross_entropy_with_logits(p, t)
            + 5.0 * dice_loss(p, t, 1.0)
        )
        torch.testing.assert_close(cost[q, j], expected)


def test_matcher_recovers_obvious_assignment() -> None:
    # Query q predicts the quadrant of target perm[q] with the right class; the others are confidently empty.
    size = 16
    quadrants = torch.zeros(3, size, size)
    quadrants[0, :8, :8] = 1
    quadrants[1, :8, 8:] = 1
    quadrants[2, 8:, :] = 1
    labels = torch.tensor([4, 0, 2])
    perm = {1: 2, 3: 0, 4: 1}  # query -> target
    logits = torch.full((1, 5, NUM_CLASSES + 1), -5.0)
    logits[0, :, NUM_CLASSES] = 5.0
    masks = torch.full((1, 5, 4, 4), -10.0)
    for q, j in perm.items():
        logits[0, q, labels[j]] = 10.0
        masks[0, q] = 20 * F.interpolate(quadrants[j][None, None], size=(4, 4), mode="area")[0, 0] - 10
    indices = HungarianMatcher(num_points=200)(
        {"pred_logits": logits, "pred_masks": masks}, [{"labels": labels, "masks": quadrants}]
    )
    rows, cols = indices[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == perm


def test_matcher_empty_targets_and_nonfinite_costs() -> None:
    matcher = HungarianMatcher(num_points=16)
    outputs = {"pred_logits": torch.randn(2, 4, NUM_CLASSES + 1), "pred_masks": torch.randn(2, 4, 8, 8)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32)},
    ]
    indices = matcher(outputs, targets)
    assert indices[0][0].numel() == indices[0][1].numel() == 0
    assert indices[0][0].dtype == torch.int64
    assert indices[1][1].tolist() == [0]

    outputs["pred_masks"][1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        matcher(outputs, targets)


def test_matcher_rejects_all_zero_costs() -> None:
    with pytest.raises(ValueError):
        HungarianMatcher(0.0, 0.0, 0.0)


# ------------------------------------------------------------------ criterion


def test_semantic_targets() -> None:
    label = torch.tensor([[3, 3, 255], [0, 3, 255]])
    t = semantic_targets(label)
    assert t["labels"].tolist() == [0, 3]
    assert t["labels"].dtype == torch.int64
    assert t["masks"].dtype == torch.bool
    assert t["masks"].int().tolist() == [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 1, 0]]]
    padded = semantic_targets(label, pad_to=(4, 5))
    assert padded["masks"].shape == (2, 4, 5)
    assert padded["masks"].sum() == t["masks"].sum()

    empty = semantic_targets(torch.full((4, 4), 255))
    assert empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, 4, 4)


def test_criterion_aux_keys_weights_and_total() -> None:
    criterion = _criterion(num_aux=3)
    outputs = _outputs(num_aux=3)
    losses = criterion(outputs, _targets(), generator=torch.Generator().manual_seed(0))
    expected_keys = {"loss_ce", "loss_mask", "loss_dice"} | {
        f"loss_{n}_{i}" for n in ("ce", "mask", "dice") for i in range(3)
    }
    assert set(losses) == expected_keys == set(build_weight_dict(3))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    manual = sum(losses[k] * (2.0 if k.startswith("loss_ce") else 5.0) for k in losses)
    torch.testing.assert_close(criterion.total(losses), manual)

    # A weight dict built for fewer aux outputs than the model has is an error, not a silent drop.
    short = SetCriterion(NUM_CLASSES, criterion.matcher, build_weight_dict(1))
    with pytest.raises(KeyError, match="loss_ce_2"):
        short.total(losses)


def test_criterion_gradients_reach_every_prediction() -> None:
    criterion = _criterion(num_aux=2)
    outputs = _outputs(num_aux=2)
    losses = criterion(outputs, _targets(), generator=torch.Generator().manual_seed(0))
    criterion.total(losses).backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_masks"):
            grad = out[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_criterion_empty_targets() -> None:
    criterion = _criterion(num_aux=1)
    outputs = _outputs(num_aux=1)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = criterion(outputs, [empty, dict(empty)])
    assert losses["loss_mask"].item() == losses["loss_dice"].item() == 0.0
    # Every query targets no-object: the weighted mean equals the plain mean (all weights are eos_coef).
    expected_ce = F.cross_entropy(
        outputs["pred_logits"].detach().flatten(0, 1), torch.full((12,), NUM_CLASSES, dtype=torch.int64)
    )
    torch.testing.assert_close(losses["loss_ce"].detach(), expected_ce)
    criterion.total(losses).backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().sum() == 0

    # A batch where only one image has targets.
    mixed = criterion(_outputs(num_aux=1), [empty, _targets(batch=1)[0]])
    assert all(torch.isfinite(v) for v in mixed.values())
    assert mixed["loss_mask"] > 0


def test_criterion_is_deterministic_given_a_generator() -> None:
    criterion = _criterion(num_aux=1, num_points=64)
    outputs = _outputs(num_aux=1)
    targets = _targets()
    a = criterion(outputs, targets, generator=torch.Generator().manual_seed(7))
    b = criterion(outputs, targets, generator=torch.Generator().manual_seed(7))
    c = criterion(outputs, targets, generator=torch.Generator().manual_seed(8))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["loss_mask"], c["loss_mask"])


def test_criterion_bool_and_float_masks_agree() -> None:
    criterion = _criterion()
    outputs = _outputs()
    targets = _targets()
    as_float = [{"labels": t["labels"], "masks": t["masks"].float()} for t in targets]
    a = criterion(outputs, targets, generator=torch.Generator().manual_seed(3))
    b = criterion(outputs, as_float, generator=torch.Generator().manual_seed(3))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_criterion_num_masks_and_validation() -> None:
    criterion = _criterion()
    targets = _targets()
    assert criterion.get_num_masks(targets, torch.device("cpu")) == sum(len(t["labels"]) for t in targets)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}
    assert criterion.get_num_masks([empty], torch.device("cpu")) == 1.0

    bad = [{"labels": torch.tensor([NUM_CLASSES]), "masks": torch.ones(1, 32, 32)}, targets[1]]
    with pytest.raises(ValueError, match="labels must lie"):
        criterion(_outputs(), bad)
    with pytest.raises(ValueError, match="targets for a batch"):
        criterion(_outputs(), targets[:1])
    smaller = {"labels": targets[1]["labels"], "masks": targets[1]["masks"][:, :16, :16]}
    with pytest.raises(ValueError, match="different sizes"):
        criterion(_outputs(), [targets[0], smaller])


def test_empty_weight_is_a_checkpoint_buffer() -> None:
    criterion = _criterion()
    state = criterion.state_dict()
    assert "empty_weight" in state
    torch.testing.assert_close(state["empty_weight"], torch.tensor([1.0] * NUM_CLASSES + [0.1]))


def test_criterion_under_autocast_with_low_precision_predictions() -> None:
    criterion = _criterion()
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 6, NUM_CLASSES + 1, generator=g).bfloat16().requires_grad_(),
        "pred_masks": torch.randn(2, 6, 8, 8, generator=g).bfloat16().requires_grad_(),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(outputs, _targets())
    # Mask costs and losses are computed in fp32 whatever the prediction dtype.
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    criterion.total(losses).backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().sum() > 0


def test_num_masks_is_all_reduced_over_the_process_group(tmp_path) -> None:
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        targets = _targets()
        # world size 1: the all-reduced sum divided by the world size is the local count.
        assert _criterion().get_num_masks(targets, torch.device("cpu")) == sum(
            len(t["labels"]) for t in targets
        )
    finally:
        dist.destroy_process_group()
