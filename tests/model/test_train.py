"""Training: optimiser groups, schedule, clipping, overfitting, exact resume, crash resume, DDP gradients,
bad-data errors, `faseg eval`, and the shipped demo model's accuracy (spec §3.4, DESIGN §4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from faseg.model import build_model, get_preset
from faseg.model import matcher as matcher_module
from faseg.model import point_sample as point_sample_module
from faseg.model.checkpoint import save_pretrained
from faseg.model.data import SyntheticDataset, build_dataset
from faseg.model.data.batch import collate
from faseg.model.optim import (
    WarmupPolyLR,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    clip_grad_norm_full_model,
    freeze_backbone,
)
from faseg.model.train import (
    LAST_DIR,
    METRICS_NAME,
    DistInfo,
    TrainConfig,
    build_criterion,
    main,
    setup_distributed,
    train_one_step,
)
from PIL import Image
from torch import nn

from faseg.cli import main as cli_main

# Small inputs keep the loop tests fast. HRCA keeps S_(1/32) // divisor windows: at 128×128 that is
# 16 // 32 = 0 with the preset's divisor 32, so the tests use divisor 8 (2 windows); nothing else changes.
SIZE = 128
SMALL = ["decoder.hrca_topk_divisor=8"]


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """main() may switch on deterministic algorithms; leave the process as it was found.

    One thread: on a shared 2-core machine, two OpenMP threads that spin-wait on each other made a step up to
    50× slower; one thread is never much slower than two here.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def _tiny_config(out: Path, **changes) -> TrainConfig:
    """faseg_tiny on a few synthetic 192×192 images; fast settings (no augmentation, few points)."""
    base = dict(
        preset="faseg_tiny",
        overrides=list(SMALL),
        data=f"synthetic:train?num_images=4&size={SIZE}",
        out=str(out),
        max_iter=4,
        batch_size=2,
        lr=1e-3,
        num_points=256,
        crop_size=(SIZE, SIZE),
        short_edge_choices=(SIZE,),
        photometric=False,
        flip=False,
        num_workers=0,
        eval_period=0,
        checkpoint_period=1000,
        log_period=1,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)


def _state(out: Path) -> dict:
    return torch.load(out / LAST_DIR / "state.pt", map_location="cpu", weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for pid, slot in a["optimizer"]["state"].items():
        for key, value in slot.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][pid][key])), (pid, key)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["data_position"] == b["data_position"]


# ---------------------------------------------------------------------------------------------------------
# Optimiser, schedule, clipping


def test_param_groups_follow_the_official_rules() -> None:
    model = build_model(get_preset("faseg_tiny"))
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_param) == sum(len(g["params"]) for g in groups) == len(named)  # each parameter exactly once

    modules = dict(model.named_modules())
    for name, param in named.items():
        lr, wd = by_param[id(param)]
        assert lr == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
        owner = modules[name.rsplit(".", 1)[0]]
        if isinstance(owner, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm | nn.Embedding):
            assert wd == 0.0, name
        else:
            assert wd == 0.05, name

    hyper = {name: by_param[id(p)] for name, p in named.items()}
    # nn.Embedding parameters: no decay (query features / decoder level embedding)
    assert hyper["sem_seg_head.predictor.query_feat.weight"] == (pytest.approx(1e-4), 0.0)
    assert hyper["sem_seg_head.predictor.level_embed.weight"][1] == 0.0
    # the pixel decoder's level_embed is a raw Parameter: it KEEPS weight decay (spec §3.4)
    assert hyper["sem_seg_head.pixel_decoder.transformer.level_embed"] == (pytest.approx(1e-4), 0.05)
    # biases keep weight decay; norms don't
    assert hyper["sem_seg_head.predictor.class_embed.bias"][1] == 0.05
    assert hyper["backbone.stem.conv1.norm.weight"] == (pytest.approx(1e-5), 0.0)


def test_param_groups_swin_tables_and_frozen_backbone() -> None:
    from faseg.model.backbone import build_backbone

    cfg = get_preset(
        "faseg_swin_t_ade20k",
        ["backbone.swin.embed_dim=16", "backbone.swin.depths=[1,1,1,1]", "backbone.swin.num_heads=[1,1,1,1]"],
    )
    holder = nn.Module()
    holder.backbone = build_backbone(cfg.backbone)
    holder.head = nn.Linear(4, 4)
    groups = build_param_groups(holder, base_lr=1e-4, weight_decay=0.05)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    tables = [(n, p) for n, p in holder.named_parameters() if "relative_position_bias_table" in n]
    assert tables
    for name, p in tables:
        assert by_param[id(p)] == (pytest.approx(1e-5), 0.0), name
    assert by_param[id(holder.head.weight)] == (pytest.approx(1e-4), 0.05)

    frozen = freeze_backbone(holder)
    assert frozen == len(list(holder.backbone.parameters()))
    groups = build_param_groups(holder, base_lr=1e-4, weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == 2  # only the head's weight and bias are left


def test_poly_schedule_values() -> None:
    poly = WarmupPolyLR(max_iter=100, power=0.9)
    assert poly(0) == 1.0
    assert poly(50) == pytest.approx(0.5**0.9)
    assert poly(99) == pytest.approx(0.01**0.9)
    assert poly(100) == 0.0
    warm = WarmupPolyLR(max_iter=100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    assert warm(0) == pytest.approx(0.1)
    assert warm(5) == pytest.approx((0.1 * 0.5 + 0.5) * 0.95**0.9)
    assert warm(10) == pytest.approx(0.9**0.9)

    # Through LambdaLR: each group keeps its multiplier (backbone ×0.1).
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.head = nn.Linear(2, 2)
    opt = build_optimizer(model, base_lr=1e-3, weight_decay=0.05, backbone_multiplier=0.1)
    sched = build_scheduler(opt, max_iter=10, power=0.9)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for it, lrs in enumerate(seen):
        factor = (1 - it / 10) ** 0.9
        assert sorted(lrs) == pytest.approx(sorted([1e-4 * factor, 1e-3 * factor]))
    assert all(g["lr"] == 0.0 for g in opt.param_groups)


def test_full_model_gradient_clipping() -> None:
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_grad_norm_full_model([a, b], max_norm=0.01)
    assert float(norm) == pytest.approx(5.0)  # joint norm, before clipping
    joint = torch.cat([a.grad, b.grad]).norm()
    assert float(joint) == pytest.approx(0.01, rel=1e-4)
    assert a.grad[0] / b.grad[1] == pytest.approx(0.75)  # one factor for every parameter

    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert float(clip_grad_norm_full_model([a, b], max_norm=0)) == pytest.approx(5.0)
    assert float(a.grad[0]) == 3.0  # 0 disables clipping


# ---------------------------------------------------------------------------------------------------------
# The loop


def test_faseg_tiny_overfits_four_images(tmp_path: Path) -> None:
    """The weighted loss (10 predictions × CE + BCE + dice) falls ≥ 5× within 200 steps on 4 images."""
    losses: list[float] = []

    def record(iteration: int, metrics: dict) -> bool:
        losses.append(metrics["loss"])
        return metrics["loss"] <= losses[0] / 5  # stop as soon as the bar is met

    cfg = _tiny_config(tmp_path / "run", max_iter=200, batch_size=4, lr=3e-3, log_period=10, checkpoint_period=0)
    summary = main(cfg, step_callback=record)
    assert summary["stopped_early"], f"loss went {losses[0]:.2f} → {min(losses):.2f} in 200 steps"
    assert losses[-1] <= losses[0] / 5
    assert all(math.isfinite(v) for v in losses)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 deterministic steps without interruption: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test (the autouse fixture runs after module-scoped ones)
    try:
        main(_tiny_config(out, deterministic=True))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return out


def test_resume_is_exact(tmp_path: Path, straight_run: Path) -> None:
    """N steps straight == N/2 steps, stop, resume, N/2 steps (bit for bit, deterministic CPU)."""
    out = tmp_path / "stopped"
    summary = main(_tiny_config(out, deterministic=True), step_callback=lambda it, m: it == 2)
    assert summary["stopped_early"] and summary["iteration"] == 2 and summary["final_dir"] is None
    assert _state(out)["iteration"] == 2

    summary = main(_tiny_config(out, deterministic=True, resume=True))
    assert summary["iteration"] == 4 and not summary["stopped_early"]
    _assert_same_training_state(_state(straight_run), _state(out))


def test_crashed_run_resumes_from_its_last_checkpoint(tmp_path: Path, straight_run: Path) -> None:
    out = tmp_path / "crashed"

    def crash(iteration: int, metrics: dict) -> None:
        if iteration == 3:
            raise RuntimeError("injected crash")

    cfg = _tiny_config(out, deterministic=True, checkpoint_period=2)
    with pytest.raises(RuntimeError, match="injected crash"):
        main(cfg, step_callback=crash)
    assert _state(out)["iteration"] == 2  # the periodic checkpoint before the crash
    assert not any(p.name.startswith(".last") for p in out.iterdir())  # no temporary left behind

    with pytest.raises(ValueError, match="--resume"):
        main(cfg)  # never silently overwrites a run
    summary = main(_tiny_config(out, deterministic=True, checkpoint_period=2, resume=True))
    assert summary["iteration"] == 4
    iterations = [json.loads(line)["iteration"] for line in (out / METRICS_NAME).read_text().splitlines()]
    assert iterations == [1, 2, 3, 3, 4]  # iteration 3 ran again after the resume
    _assert_same_training_state(_state(straight_run), _state(out))
    assert (out / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes == 1 process on the combined batch


def _fixed_points(batch: int, num_points: int, *, device, dtype=torch.float32, generator=None) -> torch.Tensor:
    """The same points for every mask and image: the loss of an image no longer depends on its batch."""
    g = torch.Generator().manual_seed(num_points)
    return torch.rand(num_points, 2, generator=g, dtype=dtype).expand(batch, -1, -1).to(device).clone()


def _patch_points() -> None:
    point_sample_module.rand_points = _fixed_points
    matcher_module.rand_points = _fixed_points


# Per-process BN statistics would differ from the combined batch's by construction (SyncBN is CUDA-only).
DDP_OVERRIDES = [*SMALL, "backbone.resnet.norm=FrozenBN"]


def _ddp_setup() -> tuple[TrainConfig, list[int]]:
    cfg = _tiny_config(Path("unused"), overrides=DDP_OVERRIDES, clip_grad=0.0, lr=0.0)
    ds = SyntheticDataset("train", 12, SIZE)
    # Two images with the same number of classes: the official loss_ce is a weighted mean per process, so
    # only then is the mean over processes the mean over the combined batch.
    counts = {}
    for i in range(len(ds)):
        label = ds[i].label
        counts.setdefault(len(np.unique(label[label != 255])), []).append(i)
    pair = next(v[:2] for v in counts.values() if len(v) >= 2)
    return cfg, pair


def _gradients(world_size: int, images: list[int], micro_batches: int = 1) -> dict[str, torch.Tensor]:
    """Gradients of one train_one_step (lr 0, no clipping) on ``images``, split into ``micro_batches``."""
    cfg, _ = _ddp_setup()
    torch.manual_seed(0)
    model_cfg = get_preset("faseg_tiny", [*DDP_OVERRIDES, "num_classes=10"])
    model = build_model(model_cfg).train()
    core = model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    criterion = build_criterion(cfg, model_cfg)
    opt = torch.optim.SGD(core.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ds = SyntheticDataset("train", 12, SIZE)
    per = len(images) // micro_batches
    batches = [collate([ds[i] for i in images[k * per : (k + 1) * per]]) for k in range(micro_batches)]
    train_one_step(model, criterion, opt, sched, scaler, batches, device=torch.device("cpu"), clip_grad=0.0)
    return {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    _patch_points()
    info = setup_distributed("cpu", rank=rank, world_size=world_size, init_method=f"file://{init_file}")
    assert isinstance(info, DistInfo) and info.world_size == world_size
    try:
        _, pair = _ddp_setup()
        grads = _gradients(world_size, [pair[rank]])
        torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_sample_module, "rand_points", _fixed_points)
    monkeypatch.setattr(matcher_module, "rand_points", _fixed_points)
    _, pair = _ddp_setup()
    reference = _gradients(1, pair)

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0 = torch.load(tmp_path / "grads0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grads1.pt", weights_only=True)
    every = dict(build_model(get_preset("faseg_tiny", DDP_OVERRIDES)).named_parameters())
    assert set(g0) == set(reference) == set(every)  # every parameter gets a gradient (no unused ones)
    for name, ref in reference.items():
        assert torch.equal(g0[name], g1[name]), name  # all-reduced: identical on both ranks
        _assert_close_to(g0[name], ref, name)


def _assert_close_to(grad: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    # Equal up to float summation order (a batch of 1 vs 2 reduces in a different order): per tensor,
    # relative to its largest entry.
    error = float((grad - ref).abs().max())
    assert error <= 1e-4 * float(ref.abs().max()) + 1e-7, (name, error)


def test_gradient_accumulation_matches_the_combined_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_sample_module, "rand_points", _fixed_points)
    monkeypatch.setattr(matcher_module, "rand_points", _fixed_points)
    _, pair = _ddp_setup()
    reference = _gradients(1, pair)
    accumulated = _gradients(1, pair, micro_batches=2)
    assert set(accumulated) == set(reference)
    for name, ref in reference.items():
        _assert_close_to(accumulated[name], ref, name)


# ---------------------------------------------------------------------------------------------------------
# Bad data → a clear error naming the file (through `faseg train`)


def _folder(root: Path, masks: dict[str, np.ndarray | None], size: tuple[int, int] = (64, 64)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "thing"]}))
    for name, mask in masks.items():
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "images" / f"{name}.png")
        if mask is not None:
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_mask", "b.png"),
        ("bad_labels", "b.png"),
        ("size_mismatch", "b.png"),
        ("empty", "empty dataset"),
    ],
)
def test_bad_data_fails_with_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, expected: str):
    ok = np.zeros((64, 64), np.uint8)
    masks = {
        "missing_mask": {"a": ok, "b": None},
        "bad_labels": {"a": ok, "b": np.full((64, 64), 7, np.uint8)},
        "size_mismatch": {"a": ok, "b": np.zeros((32, 64), np.uint8)},
        "empty": {},
    }[case]
    root = _folder(tmp_path / "data", masks)
    argv = ["train", "--preset", "faseg_tiny", "--data", f"folder:{root}", "--out", str(tmp_path / "run")]
    argv += ["--iters", "2", "--batch", "2", "--workers", "1", "--num-points", "64", "--crop", "64"]
    argv += ["--short-edges", "64", "--no-progress", "--set", "decoder.hrca=off", "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "faseg train: error:" in err and expected in err, err


# ---------------------------------------------------------------------------------------------------------
# `faseg eval` and the demo model


def test_eval_json_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = build_model(get_preset("faseg_tiny", ["num_classes=10", *SMALL]))
    ckpt = save_pretrained(model, tmp_path / "ckpt")
    data = f"synthetic:val?num_images=2&size={SIZE}"
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--data", data, "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"miou", "per_class_iou", "pixel_acc"} <= set(report)
    assert len(report["per_class_iou"]) == 10 and report["num_images"] == 2
    assert 0.0 <= report["pixel_acc"] <= 1.0


# Accuracy bar of the shipped demo model, as data (metric, value, subset).
DEMO_EXPECTED = {"metric": "miou", "min": 0.80, "fast_subset": 40}


def _demo_miou(limit: int | None) -> float:
    from faseg.model.checkpoint import from_pretrained
    from faseg.model.demo import demo_checkpoint_dir
    from faseg.model.train import data_recipe, evaluate

    model = from_pretrained(demo_checkpoint_dir())
    val = build_dataset("synthetic:val")
    results = evaluate(model, val, torch.device("cpu"), recipe=data_recipe("synthetic:val", (256, 256)),
                       batch_size=8, limit=limit)  # fmt: skip
    return results[DEMO_EXPECTED["metric"]]


def test_demo_model_is_shipped_and_accurate_on_a_val_subset() -> None:
    """The first 40 of the 200 synthetic:val images (the full set is the slow test below)."""
    from faseg.model.checkpoint import read_checkpoint_info
    from faseg.model.demo import demo_checkpoint_dir

    path = demo_checkpoint_dir()
    info = read_checkpoint_info(path)
    assert info.classes == SyntheticDataset("val", 1).classes
    assert (path / "model.safetensors").stat().st_size < 20 * 2**20
    for key in ("command", "train_wall_time_s", "machine", "date", "val_miou"):
        assert key in info.metadata, key
    assert _demo_miou(DEMO_EXPECTED["fast_subset"]) >= DEMO_EXPECTED["min"]


@pytest.mark.slow
def test_demo_model_full_val_miou() -> None:
    assert _demo_miou(None) >= DEMO_EXPECTED["min"]


def test_focus_scores_are_supervised_by_the_training_step(tmp_path: Path) -> None:
    """With pixel_decoder.focus.enabled the step adds the Focus losses, so the scorer (top-k selection is not
    differentiable) gets a gradient; without them it would get none."""
    torch.manual_seed(0)
    cfg = _tiny_config(tmp_path)
    model_cfg = get_preset("faseg_tiny", [*SMALL, "num_classes=10", "pixel_decoder.focus.enabled=true"])
    model = build_model(model_cfg).train()
    criterion = build_criterion(cfg, model_cfg)
    assert "loss_focus" in criterion.weight_dict
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ds = SyntheticDataset("train", 4, SIZE)
    train_one_step(model, criterion, opt, sched, scaler, [collate([ds[0], ds[1]])], device=torch.device("cpu"))
    scorer = [p for n, p in model.named_parameters() if ".focus." in n and "scorer" in n]
    assert scorer and all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer)
