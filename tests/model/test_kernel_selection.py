"""``--kernels auto|on|off``: :func:`faseg.model.ops.kernels.select_kernels` and the train / eval commands.

On a machine without CUDA every path is the reference; ``on`` fails with the reason. Where CUDA would be
present, torch's device check is patched and a stand-in kernel backend is forced, so the decision logic is
tested here too (the kernels themselves run in tests/model/test_cuda_kernels.py on a GPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from faseg.model import ops as model_ops
from faseg.model.ops import cuda_library, cuda_ops
from faseg.model.ops.kernels import KernelsUnavailableError, select_kernels

from faseg.cli import main as cli_main

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def clean_dispatch():
    """Leave the CUDA registration and the cached kernel backend as they were found."""
    previous = cuda_library.set_backend(None)
    cuda_library.reset_cache()
    yield
    cuda_ops.disable_kernels()
    cuda_library.set_backend(previous)


class StandInKernels(cuda_library.KernelBackend):
    """A kernel backend that is never called: only its presence matters to the selection."""

    name = "stand-in"
    origin = "test"

    def msda_forward(self, *args):
        raise AssertionError("not called")

    msda_backward = topk_check = topk_num_memory = topk_workspace_size = topk_forward = topk_select = msda_forward


def test_auto_on_cpu_chooses_the_reference_and_logs_it(clean_dispatch, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="faseg.model.ops.kernels"):
        choice = select_kernels("auto", "cpu")
    assert (choice.mode, choice.path) == ("auto", "reference")
    assert "no CUDA device" in choice.reason
    assert "kernels: reference (--kernels auto: no CUDA device" in caplog.text
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is None


def test_on_fails_with_the_reason_on_cpu(clean_dispatch) -> None:
    with pytest.raises(KernelsUnavailableError, match=r"--kernels on: .*no CUDA device"):
        select_kernels("on", "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA device is present")
def test_on_cuda_without_a_device_fails_with_the_reason(clean_dispatch) -> None:
    with pytest.raises(KernelsUnavailableError, match="no CUDA device"):
        select_kernels("on", "cuda")
    assert select_kernels("auto", "auto").path == "reference"


def test_off_restores_the_references(clean_dispatch) -> None:
    model_ops.register_kernel("ms_deform_attn", "cuda", cuda_ops.ms_deform_attn)
    choice = select_kernels("off", "cuda")
    assert (choice.mode, choice.path) == ("off", "reference")
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is None


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernels mode 'fast'"):
        select_kernels("fast", "cuda")


def test_cuda_without_the_library_reports_why(clean_dispatch, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(cuda_library.LIBRARY_ENV, str(tmp_path / "missing.so"))
    choice = select_kernels("auto", "cuda")
    assert choice.path == "reference"
    assert "kernel library not available" in choice.reason and "libfaseg_cuda_kernels.so not found" in choice.reason
    with pytest.raises(KernelsUnavailableError, match=r"libfaseg_cuda_kernels\.so not found \(looked at .*missing\.so"):
        select_kernels("on", "cuda:0")


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_cuda_with_kernels_registers_the_fused_ops(clean_dispatch, monkeypatch, mode) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda_library.set_backend(StandInKernels())
    choice = select_kernels(mode, "cuda")
    assert (choice.mode, choice.path, choice.reason) == (mode, "fused", "stand-in: test")
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is cuda_ops.ms_deform_attn
    assert model_ops.registered_kernel("topk_cross_attention", "cuda") is cuda_ops.topk_cross_attention
    assert model_ops.registered_kernel("ms_deform_attn", "cpu") is None
    assert select_kernels("off", "cuda").path == "reference"
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is None


# ------------------------------------------------------------------------------------------------
# faseg train / faseg eval
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval"])
def test_kernels_option_is_parsed(command, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--kernels", "fast", "--data", "synthetic:val"])
    assert exc.value.code == 2
    assert "argument --kernels: invalid choice: 'fast'" in capsys.readouterr().err


def test_train_kernels_on_fails_before_training(clean_dispatch, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = cli_main(
        ["train", "--preset", "faseg_tiny", "--data", "synthetic:train", "--out", str(out), "--device", "cpu",
         "--kernels", "on", "--iters", "1", "--batch", "1"]
    )  # fmt: skip
    assert code == 2
    assert (
        "faseg train: error: --kernels on: the fused CUDA kernels cannot run: no CUDA device" in capsys.readouterr().err
    )
    assert not out.exists()


def test_eval_kernels_on_fails_with_the_reason(clean_dispatch, capsys) -> None:
    code = cli_main(["eval", "--data", "synthetic:val", "--device", "cpu", "--kernels", "on", "--json"])
    assert code == 2
    assert (
        "faseg eval: error: --kernels on: the fused CUDA kernels cannot run: no CUDA device" in capsys.readouterr().err
    )


def test_eval_auto_reports_the_reference_path(clean_dispatch, capsys) -> None:
    code = cli_main(["eval", "--data", "synthetic:val", "--device", "cpu", "--limit", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kernels: reference (--kernels auto: no CUDA device" in captured.err
    assert '"miou"' in captured.out
