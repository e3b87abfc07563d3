"""Focus sparse encoder and LDA-AQU through `faseg export onnx`, ONNX Runtime and the service.

faseg_tiny with ``pixel_decoder.focus.enabled`` (keep ratio 0.3) and, separately, with
``pixel_decoder.upsampler=lda_aqu``: random weights with the zero-initialised offset projections moved off
zero so the graphs really sample; exported at 256×256 with logits, portable flavour (Focus also plugin).
Parity bars are the export issue's (tests/export/test_onnx_export.py): labels ≥ 99.9 % equal, logits and
confidence within 1e-3. Plugin-flavour runs need ``libfaseg_ort_ops.so`` and skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime: pip install onnxruntime")
onnx_export = pytest.importorskip("faseg.export.onnx_export", reason="the ONNX exporter is not importable")

from faseg.export import custom_ops, session  # noqa: E402
from faseg.model import ServingHead, build_model, get_preset  # noqa: E402

LOGITS_ATOL = 1e-3
LABEL_AGREEMENT = 0.999
REQUIRED = os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1"
VARIANTS = {
    "focus": ["pixel_decoder.focus.enabled=true", "pixel_decoder.focus.keep_ratio=0.3"],
    "lda_aqu": ["pixel_decoder.upsampler=lda_aqu"],
}


def _model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_preset("faseg_tiny", VARIANTS[variant])).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight", "conv_offset.3.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 2e-2)
    return model


# LDA-AQU has no custom op, so its plugin-flavour graph is its portable one: only Focus is exported twice.
@pytest.fixture(scope="module", params=[("focus", "portable"), ("focus", "plugin"), ("lda_aqu", "portable")], ids=str)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    variant, flavour = request.param
    if flavour == "plugin" and custom_ops.ort_custom_ops_library() is None:
        reason = custom_ops.missing_library_message()
        if REQUIRED:
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)
    model = _model(variant)
    out = tmp_path_factory.mktemp("onnx") / f"tiny_{variant}_{flavour}.onnx"
    options = onnx_export.ExportOptions(flavour=flavour, outputs="labels,confidence,logits")
    return variant, model, onnx_export.export_model(model, out, options)


@pytest.mark.only_flavour("portable")
def test_portable_graph_is_standard_onnx(exported) -> None:
    variant, _, result = exported
    assert result.flavour == "portable"  # only_flavour deselects the other flavour
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    ops = {n.op_type for n in proto.graph.node}
    if variant == "focus":  # fixed-k selection: TopK + gather/scatter, no data-dependent shapes
        assert {"TopK", "GatherElements", "ScatterElements"} <= ops
        assert "NonZero" not in ops
    else:
        assert "GridSample" in ops


def test_onnxruntime_matches_torch(exported) -> None:
    _, model, result = exported
    sess = session.OrtSession(result.path, session.SessionConfig(device="cpu"))
    rng = np.random.default_rng(0)
    for batch in (1, 2):
        images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
        with torch.no_grad():
            ref = [t.numpy() for t in ServingHead(model, with_logits=True)(torch.from_numpy(images))]
        out = sess.run(images)
        assert (out["labels"] == ref[0]).mean() >= LABEL_AGREEMENT
        assert np.abs(out["confidence"] - ref[1]).max() <= LOGITS_ATOL
        assert np.abs(out["pred_logits"] - ref[2]).max() <= LOGITS_ATOL
        assert np.abs(out["pred_masks"] - ref[3]).max() <= LOGITS_ATOL


@pytest.mark.only_flavour("portable")
def test_served_by_the_service(exported) -> None:
    """The exported file behind the real app (ONNX Runtime backend), one PNG request."""
    _, _, result = exported
    assert result.flavour == "portable"  # only_flavour deselects the other flavour
    pytest.importorskip("fastapi")
    import io
    import time

    from faseg.service import Settings, create_app
    from fastapi.testclient import TestClient
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(buf, "PNG")
    app = create_app(Settings(model=Path(result.path), max_batch_size=1, warmup=True))
    with TestClient(app) as client:
        for _ in range(3000):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        response = client.post(
            "/v1/segment?outputs=stats", content=buf.getvalue(), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["backend"] == "onnxruntime" and body["stats"]
