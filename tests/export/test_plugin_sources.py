"""The CUDA / TensorRT plugin sources and their compile check (no GPU needed).

- Each plugin's ``*_PluginConfig.yaml`` agrees with docs/plugin_contract.md (inputs in order, ranks,
  dtypes, output shape, dimension constraints, attributes and defaults), and the C++ creators use the
  contract's names, version and namespace.
- The build is wired: ``export/plugins/build_cuda.sh`` (sm_80 + sm_90, fetched headers pinned by hash),
  every source the CMake files name exists, the ORT CUDA registration stays optional.
- When nvcc is present, ``build_cuda.sh`` must have produced its artifacts (``build/cuda``): SASS for
  sm_80 and sm_90 in each library, the TensorRT plugin library exporting only ``getCreators`` /
  ``setLoggerFinder`` and linking neither libnvinfer nor libcudart, the host-only plugin harness passing,
  the C-ABI library's host functions agreeing with the contract's geometry rules, and the ORT library
  built with the CUDA kernels still running the CPU ops. Without a build these skip with the command to
  run, unless ``FASEG_REQUIRE_CUDA_BUILD=1`` (then they fail); without nvcc they skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from faseg.export import custom_ops
from faseg.model.ops import cuda_library

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "export" / "plugins"
TRT = PLUGINS / "tensorrt"
CONTRACT = REPO / "docs" / "plugin_contract.md"
BUILD = Path(os.environ.get("FASEG_CUDA_BUILD_DIR", REPO / "build" / "cuda"))
REQUIRED = os.environ.get("FASEG_REQUIRE_CUDA_BUILD") == "1"

PLUGIN_FOLDERS = {
    custom_ops.MS_DEFORM_ATTN_OP: TRT / "msDeformAttnPlugin",
    custom_ops.TOPK_CROSS_ATTN_OP: TRT / "topkCrossAttnPlugin",
}
CONTRACT_SECTIONS = {custom_ops.MS_DEFORM_ATTN_OP: "## 1.", custom_ops.TOPK_CROSS_ATTN_OP: "## 2."}


# ------------------------------------------------------------------------------------------------
# docs/plugin_contract.md as data
# ------------------------------------------------------------------------------------------------


def _section(op: str) -> str:
    text = CONTRACT.read_text()
    start = text.index(CONTRACT_SECTIONS[op])
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _table_after(section: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped, header and separator dropped) of the first table after ``heading``."""
    lines = section[section.index(heading) :].splitlines()[1:]
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows[2:]


def contract_io(op: str) -> tuple[list[tuple[str, list[str], str]], tuple[str, list[str], str]]:
    """([(name, shape symbols, dtype)] of the inputs in order, the output)."""
    section = _section(op)
    rows = _table_after(section, "### Inputs and output")
    all_float32 = "(all float32)" in section
    parsed = []
    for row in rows:
        name = row[1].strip("`")
        shape = [d.strip() for d in row[2].strip("[]").split(",")]
        dtype = "float32" if all_float32 else row[3]
        parsed.append((row[0], name, shape, dtype))
    inputs = [(n, s, d) for idx, n, s, d in parsed if not idx.startswith("out")]
    assert [int(idx) for idx, *_ in parsed if not idx.startswith("out")] == list(range(len(inputs)))
    (output,) = [(n, s, d) for idx, n, s, d in parsed if idx.startswith("out")]
    return inputs, output


def contract_attributes(op: str) -> dict[str, str]:
    """INT attribute -> default ("required" when required); the two plugin_* strings excluded."""
    rows = _table_after(_section(op), "### Attributes")
    out = {}
    for row in rows:
        name = row[0].strip("`")
        if name in custom_ops.PLUGIN_ATTRIBUTES:
            continue
        assert row[1] == "INT", row
        out[name] = "required" if "required" in row[2] else row[2]
    return out


def plugin_config(op: str) -> dict:
    yaml = pytest.importorskip("yaml")
    (path,) = PLUGIN_FOLDERS[op].glob("*_PluginConfig.yaml")
    config = yaml.safe_load(path.read_text())
    assert config["name"] == op
    assert config["interface"] == "IPluginV3"
    return config["versions"][custom_ops.PLUGIN_VERSION]


# ------------------------------------------------------------------------------------------------
# the YAML files agree with the contract
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", custom_ops.OP_TYPES)
def test_plugin_config_io_matches_contract(op: str) -> None:
    config = plugin_config(op)
    inputs, (out_name, _, out_dtype) = contract_io(op)
    assert config["inputs"] == [name for name, _, _ in inputs]
    assert config["outputs"] == [out_name]
    assert config["input_dims"] == {name: len(shape) for name, shape, _ in inputs}
    # Input dtypes of every config: int32 where the contract says so, else the config's float type.
    for cfg_name, cfg in config["configs"].items():
        floats = {t for t in cfg["input_types"].values() if t != "int32"}
        assert len(floats) == 1, cfg_name
        (float_type,) = floats
        for name, _, dtype in inputs:
            assert cfg["input_types"][name] == ("int32" if dtype == "int32" else float_type), (cfg_name, name)
            if dtype == "float32":
                assert float_type == "float32", (cfg_name, name)
        assert cfg["output_types"] == {out_name: float_type if out_dtype in ("T", "float32") else out_dtype}


def _symbol(ref: str, shapes: dict[str, list[str]]) -> str:
    """``value_2`` -> the contract's symbol for dim 2 of value; ``3 * query_2`` -> ``3C``; ``2`` -> ``2``."""
    ref = ref.strip()
    if m := re.fullmatch(r"(\d+) \* (\w+)_(\d+)", ref):
        return m.group(1) + shapes[m.group(2)][int(m.group(3))]
    if m := re.fullmatch(r"(\w+)_(\d+)", ref):
        return shapes[m.group(1)][int(m.group(2))]
    return ref


@pytest.mark.parametrize("op", custom_ops.OP_TYPES)
def test_plugin_config_shapes_match_contract(op: str) -> None:
    config = plugin_config(op)
    inputs, (out_name, out_shape, _) = contract_io(op)
    shapes = {name: shape for name, shape, _ in inputs}
    assert [_symbol(ref, shapes) for ref in config["output_dims"][out_name].split(",")] == out_shape
    checked = 0
    for constraint in config["input_dim_constraints"]:
        if (m := re.fullmatch(r"([\w ]+?) == ([\w *]+)", constraint)) and "%" not in constraint:
            assert _symbol(m.group(1), shapes) == _symbol(m.group(2), shapes), constraint
            checked += 1
    # Every dimension the contract names twice is tied by a constraint (or is the same symbol).
    assert checked >= len({s for shape in shapes.values() for s in shape}) - 2


def test_topk_plugin_attributes_match_contract() -> None:
    op = custom_ops.TOPK_CROSS_ATTN_OP
    config = plugin_config(op)
    attributes = contract_attributes(op)
    assert config["attributes"] == list(attributes)
    assert set(config["attribute_types"].values()) == {"int32"}
    assert config["attributes_required"] == [k for k, v in attributes.items() if v == "required"]
    assert {k: str(v) for k, v in config["attribute_defaults"].items()} == {
        k: v for k, v in attributes.items() if v != "required"
    }
    assert config["attribute_options"]["mode"] == list(custom_ops.TOPK_MODES.values())


def test_msda_plugin_has_no_attributes() -> None:
    assert contract_attributes(custom_ops.MS_DEFORM_ATTN_OP) == {}
    assert plugin_config(custom_ops.MS_DEFORM_ATTN_OP)["attributes"] == []


def test_creators_use_contract_names() -> None:
    common = (TRT / "common" / "pluginCommon.h").read_text()
    assert f'kPluginVersion = "{custom_ops.PLUGIN_VERSION}"' in common
    assert f'kPluginNamespace = "{custom_ops.PLUGIN_NAMESPACE}"' in common
    for op, folder in PLUGIN_FOLDERS.items():
        headers = "".join(p.read_text() for p in folder.glob("*.h"))
        assert re.search(rf'constexpr char const\* k\w+Name = "{op}";', headers), op
    entry = (TRT / "fasegPlugins.cpp").read_text()
    code = "\n".join(line.split("//")[0] for line in entry.splitlines())
    assert 'extern "C"' in code and "getCreators" in code and "setLoggerFinder" in code
    assert "REGISTER_TENSORRT_PLUGIN" not in code  # dynamic registration only: no libnvinfer at link time


def test_plugin_folders_follow_the_layout() -> None:
    for op, folder in PLUGIN_FOLDERS.items():
        names = {p.name for p in folder.iterdir()}
        assert {"README.md", "CMakeLists.txt"} <= names, op
        assert any(n.endswith(".cpp") for n in names) and any(n.endswith(".h") for n in names), op
        readme = (folder / "README.md").read_text()
        sections = ("Description", "Parameters", "Additional resources", "License", "Changelog", "Known issues")
        positions = [readme.find(f"## {s}") for s in sections]
        assert -1 not in positions and positions == sorted(positions), op
        assert "### Structure" in readme
        inputs, _ = contract_io(op)
        order = [readme.find(f"`{name}`\n") for name, _, _ in inputs]
        assert -1 not in order and order == sorted(order), f"{op}: README inputs not in contract order"
    for header in (PLUGINS / "cuda").glob("*_kernel.h"):
        text = header.read_text()
        assert "Provenance" in text, header
        assert "nvinfer1" not in text and "Ort::" not in text and "torch" not in text, header


# ------------------------------------------------------------------------------------------------
# build wiring
# ------------------------------------------------------------------------------------------------


def test_build_script_is_wired() -> None:
    script = PLUGINS / "build_cuda.sh"
    assert os.access(script, os.X_OK) and os.access(PLUGINS / "fetch_trt_headers.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", "-n", str(PLUGINS / "fetch_trt_headers.sh")], check=True)
    text = script.read_text()
    assert "80-real;90" in text and "fetch_trt_headers.sh" in text and "fetch_ort_headers.sh" in text
    fetch = (PLUGINS / "fetch_trt_headers.sh").read_text()
    assert "kernel-lens==2.0.1" in fetch and re.search(r"wheel_sha256=[0-9a-f]{64}", fetch)
    ort_cmake = (PLUGINS / "ort" / "CMakeLists.txt").read_text()
    assert 'option(FASEG_WITH_CUDA "' in ort_cmake and '(needs nvcc)" OFF)' in ort_cmake


def test_cmake_sources_exist() -> None:
    for cmake in PLUGINS.rglob("CMakeLists.txt"):
        code = "\n".join(line.split("#")[0] for line in cmake.read_text().splitlines())
        for name in re.findall(r"[\w./${}_-]+\.(?:cu|cpp|cc)\b", code):
            path = name.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(cmake.parent))
            path = Path(path) if Path(path).is_absolute() else cmake.parent / path
            assert path.is_file(), f"{cmake.relative_to(REPO)} names missing {name}"


# ------------------------------------------------------------------------------------------------
# the compile check (build/cuda from export/plugins/build_cuda.sh)
# ------------------------------------------------------------------------------------------------


def _sass(path: Path) -> set[str]:
    """sm_XY of the CUDA cubins embedded in an ELF file (e_machine 190; arch in e_flags bits 8-15)."""
    data = path.read_bytes()
    found = set()
    for m in re.finditer(b"\x7fELF", data):
        off = m.start()
        if data[off + 18 : off + 20] == (190).to_bytes(2, "little"):
            found.add(f"sm_{(int.from_bytes(data[off + 48 : off + 52], 'little') >> 8) & 0xFF}")
    return found


@pytest.fixture(scope="module")
def manifest() -> dict:
    nvcc = (
        os.environ.get("CUDACXX")
        or shutil.which("nvcc")
        or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    )
    if nvcc is None and not REQUIRED:
        pytest.skip("nvcc not found: the CUDA compile check does not apply here")
    path = BUILD / "compile_check.json"
    if not path.is_file():
        reason = f"{path} missing: run `bash export/plugins/build_cuda.sh` first"
        if REQUIRED:
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUDA_BUILD=1)", pytrace=False)
        pytest.skip(reason)
    return json.loads(path.read_text())


def test_compile_check_built_every_library_for_sm80_and_sm90(manifest: dict) -> None:
    assert set(manifest["artifacts"]) == {"cuda_kernels", "trt_plugins", "ort_ops_cuda"}
    for name, artifact in manifest["artifacts"].items():
        path = Path(artifact["path"])
        assert path.is_file(), name
        assert {"sm_80", "sm_90"} <= _sass(path), name
        assert not any("nvinfer" in n or "cudart" in n or "onnxruntime" in n for n in artifact["needed"]), name
    objects = "\n".join(manifest["objects"])
    for source in ("ms_deform_attn_kernel.cu.o", "topk_cross_attn_kernel.cu.o", "msDeformAttnPlugin.cpp.o",
                   "topkCrossAttnPlugin.cpp.o", "fasegPlugins.cpp.o", "faseg_ort_cuda_ops.cc.o"):  # fmt: skip
        assert source in objects, source
    assert "80" in manifest["cuda_architectures"] and "90" in manifest["cuda_architectures"]


def test_compile_check_library_exports(manifest: dict) -> None:
    artifacts = manifest["artifacts"]
    assert artifacts["trt_plugins"]["exports"] == ["getCreators", "setLoggerFinder"]
    assert artifacts["ort_ops_cuda"]["exports"] == ["RegisterCustomOps"]
    assert all(name.startswith("faseg_") for name in artifacts["cuda_kernels"]["exports"])
    assert "faseg_ms_deform_attn_backward" in artifacts["cuda_kernels"]["exports"]


def test_compile_check_plugin_host_harness(manifest: dict) -> None:
    report = manifest["plugin_host_check"]
    assert report["failures"] == 0, [c for c in report["checks"] if not c["ok"]]
    creators = {c["name"]: c for c in report["creators"]}
    assert set(creators) == set(custom_ops.OP_TYPES)
    for creator in creators.values():
        assert creator["version"] == custom_ops.PLUGIN_VERSION
        assert creator["namespace"] == custom_ops.PLUGIN_NAMESPACE
    topk = plugin_config(custom_ops.TOPK_CROSS_ATTN_OP)
    assert creators[custom_ops.TOPK_CROSS_ATTN_OP]["fields"] == topk["attribute_types"]
    assert creators[custom_ops.MS_DEFORM_ATTN_OP]["fields"] == {}
    assert report["topk_serialized"] == {"num_heads": 8, **topk["attribute_defaults"]}


def test_compile_check_torch_binding(manifest: dict) -> None:
    if manifest["torch_ext"].startswith("skipped"):
        pytest.skip(manifest["torch_ext"])
    assert manifest["torch_ext"] == "compiled"
    assert (BUILD / "torch_ext" / "faseg_torch_ext.o").is_file()


@pytest.fixture(scope="module")
def kernels_library(manifest: dict) -> cuda_library.CtypesKernels:
    return cuda_library.load_library(Path(manifest["artifacts"]["cuda_kernels"]["path"]))


GEOMETRY = [
    # (batch, Q, C, H3, W3, S0, heads, divisor, mode, level0_h, level0_w), expected error substring or ""
    ((2, 100, 256, 128, 128, 256, 8, 32, 0, 0, 0), ""),
    ((2, 100, 256, 128, 128, 256, 8, 32, 1, 16, 16), ""),
    ((1, 100, 256, 128, 256, 512, 8, 32, 0, 16, 32), ""),
    ((2, 100, 256, 128, 120, 256, 8, 32, 0, 0, 0), "multiples of 32"),
    ((2, 100, 256, 128, 128, 256, 8, 32, 0, 16, 8), "level0_h * level0_w"),
    ((2, 100, 256, 128, 128, 256, 3, 32, 0, 0, 0), "multiple of num_heads"),
    ((2, 100, 256, 32, 32, 16, 8, 32, 0, 0, 0), "too small"),
    ((2, 100, 256, 128, 128, 256, 8, 32, 2, 0, 0), "mode must be"),
    ((2, 100, 1024, 128, 128, 256, 2, 32, 0, 0, 0), "limit of 256"),
]


@pytest.mark.parametrize(("shape", "error"), GEOMETRY)
def test_kernel_library_geometry_rules(kernels_library, shape, error) -> None:
    message = kernels_library.topk_check(cuda_library.TopKShape(*shape))
    assert (error in message) if error else message == ""


def test_kernel_library_workspace_bounds(kernels_library) -> None:
    for shape, error in GEOMETRY:
        if error:
            continue
        s = cuda_library.TopKShape(*shape)
        window = int((s.hr_h * s.hr_w // s.num_tokens) ** 0.5)
        assert kernels_library.topk_num_memory(s) == (s.num_tokens // s.divisor) * window * window
        exact = kernels_library.topk_workspace_size(s)
        assert exact > 0
        bound = kernels_library.topk_workspace_size(s._replace(level0_h=0, level0_w=0), upper_bound=True)
        assert bound >= exact
        bigger = s._replace(batch=s.batch * 2, num_queries=s.num_queries + 7)
        assert kernels_library.topk_workspace_size(bigger, upper_bound=True) >= bound


def test_ort_library_with_cuda_kernels_runs_cpu_ops(manifest: dict) -> None:
    """The FASEG_WITH_CUDA library adds the CUDA kernels to the CPU ops' domain; CPU sessions still work."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from faseg.model.ops import ms_deform_attn_reference

    shapes = [(3, 4), (2, 2)]
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, 16, 2, 4, generator=g)
    loc = torch.rand(1, 5, 2, 2, 3, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(1, 5, 2, 2, 3, generator=g)
    feed = {
        "value": value.numpy(),
        "spatial_shapes": np.array(shapes, dtype=np.int32),
        "level_start_index": np.array([0, 12], dtype=np.int32),
        "sampling_locations": loc.numpy(),
        "attention_weights": weights.numpy(),
    }
    model = custom_ops.single_node_model(custom_ops.MS_DEFORM_ATTN_OP, feed, [1, 5, 2, 4])
    options = ort.SessionOptions()
    options.register_custom_ops_library(manifest["artifacts"]["ort_ops_cuda"]["path"])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feed)
    want = ms_deform_attn_reference(value, shapes, loc, weights).numpy()
    assert np.abs(out.reshape(want.shape) - want).max() <= 1e-5
