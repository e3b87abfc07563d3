"""End-to-end model tests: presets, input checks, DFPQ, HRCA, masking rule, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from faseg.model import build_model, get_preset, preset_names, semantic_inference
from faseg.model.config import ModelConfig
from faseg.model.transformer_decoder import unmask_full_rows

ALL_PRESETS = [
    "mask2former_r50_ade20k",
    "faseg_r50_ade20k",
    "faseg_swin_t_ade20k",
    "faseg_swin_b_ade20k",
    "faseg_swin_l_ade20k",
    "faseg_r50_cityscapes",
    "faseg_tiny",
]


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(get_preset("faseg_tiny")).eval()


def test_preset_list_is_complete() -> None:
    assert sorted(ALL_PRESETS) == preset_names()


def test_presets_are_json_round_trippable() -> None:
    for name in ALL_PRESETS:
        cfg = get_preset(name)
        assert ModelConfig.from_json(cfg.to_json()) == cfg


# Small sizes keep the big backbones fast; the full-size run is the slow test below. Each size is a multiple
# of 32 with at least 32 tokens at 1/32 so HRCA selects k >= 1 window.
@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_runs_at_two_sizes_batch_2(name: str) -> None:
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_model(cfg).eval()
    q, k = cfg.decoder.num_queries, cfg.num_classes
    n_pred = cfg.decoder.dec_layers + 1
    for h, w in [(192, 192), (160, 256)]:
        with torch.no_grad():
            out = model(_images(2, h, w))
        assert out.pred_logits.shape == (2, q, k + 1)  # +1: the no-object class
        assert out.pred_masks.shape == (2, q, h // 4, w // 4)
        assert len(out.aux_outputs) == n_pred - 1
        assert torch.isfinite(out.pred_logits).all() and torch.isfinite(out.pred_masks).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_runs_at_full_size_non_square(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(get_preset(name)).eval()
    for h, w in [(512, 512), (512, 704)]:
        with torch.no_grad():
            out = model(_images(2, h, w))
        assert out.pred_masks.shape[-2:] == (h // 4, w // 4)


@pytest.mark.parametrize("size", [(250, 256), (256, 100), (33, 64)])
def test_input_not_multiple_of_32_raises(tiny: torch.nn.Module, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(_images(1, *size))


def test_two_eval_forwards_are_identical(tiny: torch.nn.Module) -> None:
    x = _images(2, 256, 320)
    with torch.no_grad():
        a, b = tiny(x), tiny(x)
    assert torch.equal(a.pred_logits, b.pred_logits)
    assert torch.equal(a.pred_masks, b.pred_masks)


def _h(pq: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """h(x) = W2·relu(W1·x + b1) + b2 written out from the raw weights (independent of nn.Sequential)."""
    w1, b1 = pq.adapt_pos2d[0].weight, pq.adapt_pos2d[0].bias
    w2, b2 = pq.adapt_pos2d[2].weight, pq.adapt_pos2d[2].bias
    return torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2


def test_dfpq_equals_h_of_attention_weighted_pe_plus_bias(tiny: torch.nn.Module) -> None:
    with torch.no_grad():
        out = tiny(_images(2, 256, 256), trace=True)
    pq = tiny.sem_seg_head.predictor.pos_queries
    bias = pq.query_embed.weight
    layers = out.trace
    assert [t.level for t in layers] == [0, 1, 2, "hr", 0, 1, 2, "hr", 0]
    checked = 0
    for i, layer in enumerate(layers[:-1]):
        nxt = layers[i + 1]
        if layer.level == "hr":
            # after an HR layer the positional query is not updated: the next layer reuses the current one
            assert torch.equal(nxt.cross_query_pos, layer.self_query_pos)
            continue
        # A·P computed elementwise as Σ_s A[b,q,s]·P[b,s,:]
        weighted = (layer.attn.unsqueeze(-1) * layer.key_pos.unsqueeze(1)).sum(2)
        expected = _h(pq, weighted + bias)
        used = nxt.self_query_pos  # the HR layer's cross-attention uses B instead, its self-attention uses DFPQ
        torch.testing.assert_close(used, expected, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked == 6


def test_hr_layers_use_static_query_pe_and_no_mask(tiny: torch.nn.Module) -> None:
    with torch.no_grad():
        out = tiny(_images(1, 256, 256), trace=True)
    bias = tiny.sem_seg_head.predictor.pos_queries.query_embed.weight
    for layer in out.trace:
        if layer.level == "hr":
            assert torch.equal(layer.cross_query_pos[0], bias)
            assert layer.attn_mask is None


def test_first_layer_pooled_pe_uses_official_complement(tiny: torch.nn.Module) -> None:
    """query_pos_0 = h(Σ_s w·P_0 / (Σ_s w + 1e-6) + B) with w = sigmoid(mask_0 at 1/32) < 0.5."""
    x = _images(1, 256, 256)
    predictor = tiny.sem_seg_head.predictor
    with torch.no_grad():
        out = tiny(x, trace=True)
        initial_masks = out.aux_outputs[0]["pred_masks"]
        p0 = out.trace[0].key_pos  # (B, S0, C)
        s0 = out.trace[0].attn.shape[-1]
        side = int(s0**0.5)
        prob = F.interpolate(initial_masks, size=(side, side), mode="bilinear", align_corners=False).sigmoid()
        w = (prob.flatten(2) < 0.5).float()
        pooled = (w.unsqueeze(-1) * p0.unsqueeze(1)).sum(2) / (w.sum(-1, keepdim=True) + 1e-6)
        expected = _h(predictor.pos_queries, pooled + predictor.pos_queries.query_embed.weight)
    torch.testing.assert_close(out.trace[0].cross_query_pos, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "k"), [((256, 256), 2), ((512, 512), 8), ((512, 704), 11)])
def test_hrca_selects_s0_div_32_windows(tiny: torch.nn.Module, size: tuple[int, int], k: int) -> None:
    with torch.no_grad():
        out = tiny(_images(1, *size), trace=True)
    s0 = (size[0] // 32) * (size[1] // 32)
    assert k == s0 // 32
    hr = [t for t in out.trace if t.level == "hr"]
    assert hr and all(t.hr_indices.shape == (1, k) for t in hr)
    # the chosen windows are the top-k of the summed 1/32 attention of the round's first layer
    first = out.trace[0]
    expected = torch.sort(first.attn.sum(1), dim=-1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(hr[0].hr_indices, expected)


def test_unmask_full_rows_rule() -> None:
    mask = torch.tensor([[[[True, True, True], [True, False, True], [False, False, False]]]])
    fixed = unmask_full_rows(mask)
    assert fixed.tolist() == [[[[False, False, False], [True, False, True], [False, False, False]]]]


def test_fully_masked_rows_attend_everywhere() -> None:
    """Threshold > 1 blocks every key of every query; the rule then unblocks all rows, which must equal a
    threshold < 0 that blocks nothing (pooling for layer 0 uses its own threshold, unchanged)."""
    outs = []
    for threshold in (1.5, -0.5):
        torch.manual_seed(0)
        model = build_model(get_preset("faseg_tiny", [f"decoder.mask_threshold={threshold}"])).eval()
        with torch.no_grad():
            outs.append(model(_images(1, 256, 256)))
    torch.testing.assert_close(outs[0].pred_masks, outs[1].pred_masks, rtol=0, atol=0)
    assert torch.isfinite(outs[0].pred_logits).all()


def _perturb_zero_init(model: torch.nn.Module) -> None:
    """The official init zeroes the deformable-attention offset and weight projections, which makes the
    first step's gradient of everything feeding the encoder query (e.g. ``transformer.level_embed``) exactly
    zero. Perturb them so the test checks that the graph reaches each parameter, not an init artifact."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight", "anchor_refine.2.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 1e-2)


def test_backward_reaches_every_trainable_parameter() -> None:
    from faseg.model.criterion import SetCriterion, build_weight_dict, semantic_targets
    from faseg.model.matcher import HungarianMatcher

    torch.manual_seed(0)
    cfg = get_preset("faseg_tiny")
    model = build_model(cfg).train()
    _perturb_zero_init(model)
    x = _images(2, 256, 256)
    labels = torch.randint(0, cfg.num_classes, (2, 8, 8)).repeat_interleave(32, 1).repeat_interleave(32, 2)
    targets = [semantic_targets(lbl) for lbl in labels]
    criterion = SetCriterion(
        cfg.num_classes,
        HungarianMatcher(num_points=512),
        build_weight_dict(cfg.decoder.dec_layers),
        num_points=512,
    )
    out = model(x)
    outputs = {"pred_logits": out.pred_logits, "pred_masks": out.pred_masks, "aux_outputs": out.aux_outputs}
    loss = criterion.total(criterion(outputs, targets))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []


# One axis at a time around the FASeg default (dfpq, conditional, window), plus a few corners.
VARIANTS = (
    [(q, "conditional", "window") for q in ["learnable", "grid_anchor", "dynamic_anchor", "dynamic_foreground", "dfpq"]]
    + [("dfpq", pe, "window") for pe in ["sine", "learnable"]]
    + [("dfpq", "conditional", hr) for hr in ["off", "bilinear"]]
    + [("dynamic_anchor", "sine", "off"), ("learnable", "sine", "off"), ("dynamic_foreground", "learnable", "bilinear")]
)


@pytest.mark.parametrize(("queries", "key_pe", "hrca"), VARIANTS)
def test_ablation_variants_build_run_and_train(queries: str, key_pe: str, hrca: str) -> None:
    torch.manual_seed(0)
    overrides = [
        f"decoder.positional_queries={queries}",
        f"pixel_decoder.key_pe={key_pe}",
        f"decoder.hrca={hrca}",
        "decoder.dec_layers=5",
    ]
    model = build_model(get_preset("faseg_tiny", overrides)).train()
    _perturb_zero_init(model)
    out = model(_images(1, 128, 256))
    loss = out.pred_masks.mean() + out.pred_logits.mean() + sum(a["pred_masks"].mean() for a in out.aux_outputs)
    loss.backward()
    frozen = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert frozen == [], f"parameters without gradient: {frozen}"


def test_mask2former_preset_uses_static_queries_and_three_levels() -> None:
    torch.manual_seed(0)
    cfg = get_preset("mask2former_r50_ade20k", ["backbone.resnet.depth=18", "backbone.resnet.res2_out_channels=64"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(_images(1, 128, 160), trace=True)
    bias = model.sem_seg_head.predictor.pos_queries.query_embed.weight
    assert [t.level for t in out.trace] == [0, 1, 2] * 3
    for layer in out.trace:
        assert torch.equal(layer.cross_query_pos[0], bias)
    assert not hasattr(model.sem_seg_head.predictor.pos_queries, "adapt_pos2d")


def test_semantic_inference_official_order() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, generator=g)  # 3 classes + no-object
    masks = torch.randn(2, 5, 8, 12, generator=g)
    out = semantic_inference(logits, masks, padded_size=(32, 48), image_size=(30, 40), output_size=(15, 20))
    # independent recomputation, one image, one class at a time
    up = F.interpolate(masks, size=(32, 48), mode="bilinear", align_corners=False).sigmoid()
    probs = logits.softmax(-1)
    for b in range(2):
        for c in range(3):
            full = sum(probs[b, q, c] * up[b, q] for q in range(5))[:30, :40]
            ref = F.interpolate(full[None, None], size=(15, 20), mode="bilinear", align_corners=False)[0, 0]
            torch.testing.assert_close(out[b, c], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("queries", "hrca"), [("dfpq", "window"), ("dynamic_foreground", "bilinear"), ("dfpq", "off")])
def test_serving_path_without_aux_outputs_gives_the_same_masks(queries: str, hrca: str) -> None:
    # aux_outputs=False computes each earlier mask at its memory level (the mask features resized once per level)
    # instead of at H/4 then resized: the same logits up to rounding, the same attention masks, the same output.
    torch.manual_seed(0)
    overrides = [f"decoder.positional_queries={queries}", f"decoder.hrca={hrca}", "decoder.dec_layers=6"]
    model = build_model(get_preset("faseg_tiny", overrides)).eval()
    _perturb_zero_init(model)
    x = _images(2, 256, 256)  # HRCA needs S0 ≥ 32 tokens at 1/32
    with torch.no_grad():
        full = model(x, trace=True)
        lean = model(x, trace=True, aux_outputs=False)
    assert lean.aux_outputs == [] and len(full.aux_outputs) == 6
    torch.testing.assert_close(lean.pred_logits, full.pred_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lean.pred_masks, full.pred_masks, rtol=1e-4, atol=1e-4)
    masked = [(a, b) for a, b in zip(full.trace, lean.trace, strict=True) if a.attn_mask is not None]
    assert masked, "no masked layer traced"
    for a, b in masked:
        assert b.attn_mask is not None and torch.equal(a.attn_mask, b.attn_mask)
