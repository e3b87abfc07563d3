"""Build TensorRT engines from FASeg ONNX files (``faseg export trt``).

Steps (each a function; :func:`build_engine` runs them in this order and never falls back to another
method; a failure raises :class:`EngineBuildError` naming the step):

1. :func:`inspect_onnx` — inputs, FASeg custom nodes and ``faseg.*`` metadata of the ONNX file (onnx
   only, no TensorRT);
2. :func:`input_profiles` — one optimisation profile: the batch dim from ``--batch-profile``
   (min,opt,max), other dynamic dims fixed to the model's input size;
3. plugin library — FASeg's ``libfaseg_trt_plugins.so`` is loaded into TensorRT's plugin registry when the
   file has ``faseg`` nodes (``--plugins``, else ``$FASEG_TRT_PLUGINS_LIB``, else the repo build);
4. parse + build — a **strongly typed** network (TensorRT 10 ``STRONGLY_TYPED``; TensorRT 11 networks
   always are): layer precisions come from the ONNX (fp32, or the mixed fp16/fp32 file the exporter
   writes when asked), no builder precision flags. The timing cache is read before and written after;
5. outputs — the plan (written atomically) and the sidecar ``<plan stem>.json``: the ONNX's ``faseg.*``
   metadata (classes, palette, input size: what the service needs, since a plan has no metadata of its
   own) plus ``faseg.engine.*`` build facts (:func:`engine_metadata`).

Steps 1, 2 and 5's metadata are plain Python and tested without TensorRT; steps 3-4 need TensorRT
10+ and a GPU and are written against its public Python API, not run on the development machines
(TensorRT's runtime libraries cannot be installed there).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import custom_ops
from .metadata import META_INPUT_SIZE
from .tensorrt_runtime import (
    PLUGIN_LIBRARY_ENV,
    PLUGIN_LIBRARY_NAME,
    TensorRTUnavailableError,
    import_tensorrt,
    load_plugin_library,
    plugin_library_path,
    trt_logger,
)

ENGINE_META_PREFIX = "faseg.engine."
DEFAULT_BATCH_PROFILE = "1,4,8"


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message names the step and the cause."""


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"8"`` (static), ``"1,8"`` (opt = max) or ``"1,4,8"``."""
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--batch-profile {text!r} must be 1 to 3 comma-separated integers") from None
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        if len(values) == 2:
            return cls(values[0], values[1], values[1])
        if len(values) == 3:
            return cls(*values)
        raise ValueError(f"--batch-profile {text!r} must be 1 to 3 comma-separated integers")

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


@dataclass(frozen=True)
class EngineBuildOptions:
    batch_profile: BatchProfile = field(default_factory=lambda: BatchProfile.parse(DEFAULT_BATCH_PROFILE))
    timing_cache: Path | None = None
    #: Plugin libraries to load; empty = FASeg's library when the ONNX has faseg nodes (see module doc).
    plugin_libraries: tuple[Path, ...] = ()
    workspace_gib: float = 4.0
    #: TF32 for fp32 layers (TensorRT's default); False for tighter fp32 parity.
    tf32: bool = True
    #: builder_optimization_level 0-5; None keeps TensorRT's default (3).
    optimization_level: int | None = None
    #: (H, W) for dynamic spatial input dims; None = the ONNX's faseg.input_size metadata.
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class OnnxSummary:
    path: Path
    #: input name -> (ONNX element type name, dims with str for symbolic and -1 for unknown)
    inputs: dict[str, tuple[str, list[int | str]]]
    #: FASeg custom op type -> number of nodes
    custom_nodes: dict[str, int]
    metadata: dict[str, str]
    opsets: dict[str, int]
    ir_version: int


@dataclass(frozen=True)
class EngineBuildResult:
    engine: Path
    metadata_file: Path
    engine_bytes: int
    seconds: float
    tensorrt_version: str
    profiles: dict[str, dict[str, list[int]]]
    precision: str
    plugin_libraries: list[str]
    plugin_layers: list[str]
    timing_cache: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["engine"], d["metadata_file"] = str(self.engine), str(self.metadata_file)
        return d


# ------------------------------------------------------------------------------------------------
# step 1-2: the ONNX file and the profile (no TensorRT)
# ------------------------------------------------------------------------------------------------


def inspect_onnx(path: str | Path) -> OnnxSummary:
    """Read inputs, FASeg custom nodes, metadata and opsets (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EngineBuildError(f"inspect: ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise EngineBuildError(f"inspect: {path} is not a readable ONNX file: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in tensor.shape.dim
        ]
        inputs[value.name] = (onnx.TensorProto.DataType.Name(tensor.elem_type), dims)
    custom: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in custom_ops.OP_TYPES:
            custom[node.op_type] = custom.get(node.op_type, 0) + 1
    return OnnxSummary(
        path=path,
        inputs=inputs,
        custom_nodes=custom,
        metadata={p.key: p.value for p in model.metadata_props},
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        ir_version=model.ir_version,
    )


def _dynamic(d: int | str) -> bool:
    return isinstance(d, str) or d <= 0


def input_profiles(
    summary: OnnxSummary, options: EngineBuildOptions
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape per input. Dim 0 is the batch (``options.batch_profile``; a static batch
    is kept as is); the other dynamic dims, at most two per input, are (H, W) from
    ``options.input_size`` or the ``faseg.input_size`` metadata."""
    size = options.input_size
    if size is None and META_INPUT_SIZE in summary.metadata:
        try:
            h, w = json.loads(summary.metadata[META_INPUT_SIZE])
            size = (int(h), int(w))
        except (ValueError, TypeError) as exc:
            raise EngineBuildError(f"profile: bad {META_INPUT_SIZE} metadata: {exc}") from exc
    bp = options.batch_profile
    profiles = {}
    for name, (_, dims) in summary.inputs.items():
        if not dims:
            raise EngineBuildError(f"profile: input {name} is a scalar or has no shape")
        rest = list(dims[1:])
        spatial = [i for i, d in enumerate(rest) if _dynamic(d)]
        if spatial:
            if size is None or len(spatial) != 2:
                raise EngineBuildError(
                    f"profile: input {name} {dims} has dynamic non-batch dims; pass --input-size HxW "
                    f"(or export with a fixed size / {META_INPUT_SIZE} metadata)"
                )
            rest[spatial[0]], rest[spatial[1]] = size
        fixed = tuple(int(d) for d in rest)
        if _dynamic(dims[0]):
            profiles[name] = ((bp.min, *fixed), (bp.opt, *fixed), (bp.max, *fixed))
        else:
            shape = (int(dims[0]), *fixed)
            profiles[name] = (shape, shape, shape)
    return profiles


def engine_metadata(
    summary: OnnxSummary,
    *,
    tensorrt_version: str,
    batch_profile: BatchProfile,
    profiles: Mapping[str, Sequence[Sequence[int]]],
    precision: str,
    plugin_libraries: Sequence[Path],
    plugin_layers: Sequence[str],
    device_name: str,
) -> dict[str, str]:
    """Sidecar content: the ONNX's ``faseg.*`` metadata verbatim plus ``faseg.engine.*`` build facts.
    Values are strings (JSON for structured ones), like ONNX metadata_props."""
    meta = {k: v for k, v in summary.metadata.items() if k.startswith("faseg.")}
    engine = {
        "tensorrt_version": tensorrt_version,
        "source_onnx": summary.path.name,
        "batch_profile": str(batch_profile),
        "profiles": json.dumps({k: [list(s) for s in v] for k, v in profiles.items()}),
        "precision": precision,
        "strongly_typed": "true",
        "plugin_libraries": json.dumps([Path(p).name for p in plugin_libraries]),
        "plugin_layers": json.dumps(list(plugin_layers)),
        "device": device_name,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    meta.update({ENGINE_META_PREFIX + k: v for k, v in engine.items()})
    return meta


# ------------------------------------------------------------------------------------------------
# steps 3-5: TensorRT
# ------------------------------------------------------------------------------------------------


def _plugin_libraries(summary: OnnxSummary, options: EngineBuildOptions) -> list[Path]:
    if options.plugin_libraries:
        return [Path(p) for p in options.plugin_libraries]
    if not summary.custom_nodes:
        return []
    default = plugin_library_path()
    if default is None or not default.is_file():
        nodes = ", ".join(f"{k} x{v}" for k, v in summary.custom_nodes.items())
        raise EngineBuildError(
            f"plugins: {summary.path.name} has FASeg plugin nodes ({nodes}) but no plugin library was given; "
            f"pass --plugins path/to/{PLUGIN_LIBRARY_NAME} or set {PLUGIN_LIBRARY_ENV} "
            "(build it with export/plugins/build_cuda.sh)"
        )
    return [default]


def _network_precision(trt: Any, network: Any) -> str:
    low = {trt.DataType.HALF, *(getattr(trt.DataType, n) for n in ("BF16", "FP8") if hasattr(trt.DataType, n))}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in low:
                return "mixed"
    return "fp32"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parse_network(trt: Any, builder: Any, logger: Any, summary: OnnxSummary) -> tuple[Any, list[str]]:
    """The strongly typed network parsed from the ONNX file and the names of its plugin layers."""
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(summary.path)):
        errors = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            errors.append(error.desc() if hasattr(error, "desc") else str(error))
        hint = ""
        if any("plugin" in e.lower() for e in errors):
            hint = f" (FASeg plugin nodes need --plugins {PLUGIN_LIBRARY_NAME})"
        raise EngineBuildError(f"parse: {summary.path.name}: " + "; ".join(errors) + hint)

    plugin_layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if "PLUGIN" in str(layer.type):
            plugin_layers.append(layer.name)
    wanted = sum(summary.custom_nodes.values())
    if len(plugin_layers) < wanted:
        raise EngineBuildError(
            f"parse: {wanted} FASeg custom nodes but only {len(plugin_layers)} plugin layers in the network"
        )
    return network, plugin_layers


def _builder_config(
    trt: Any,
    builder: Any,
    summary: OnnxSummary,
    profiles: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    options: EngineBuildOptions,
) -> Any:
    """Workspace, TF32, optimisation level, the batch profile and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if not options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    # One profile over the dynamic inputs (static inputs need none; a network without any takes none).
    dynamic = [name for name, (_, dims) in summary.inputs.items() if any(_dynamic(d) for d in dims)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for name in dynamic:
            profile.set_shape(name, *profiles[name])
        config.add_optimization_profile(profile)
    cache_bytes = b""
    if options.timing_cache is not None and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    return config


def build_engine(
    onnx_path: str | Path, out: str | Path, options: EngineBuildOptions | None = None
) -> EngineBuildResult:
    """Build ``out`` (a serialized engine) from ``onnx_path``; see the module docstring for the steps."""
    options = options or EngineBuildOptions()
    start = time.perf_counter()
    out = Path(out)
    summary = inspect_onnx(onnx_path)
    profiles = input_profiles(summary, options)
    try:
        trt = import_tensorrt()
    except TensorRTUnavailableError as exc:
        raise EngineBuildError(f"tensorrt: {exc}") from exc
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("tensorrt: building an engine needs a CUDA device")

    libraries = _plugin_libraries(summary, options)
    for library in libraries:
        try:
            load_plugin_library(library)
        except (TensorRTUnavailableError, RuntimeError) as exc:
            raise EngineBuildError(f"plugins: {exc}") from exc
    logger = trt_logger()
    trt.init_libnvinfer_plugins(logger, "")

    builder = trt.Builder(logger)
    network, plugin_layers = _parse_network(trt, builder, logger, summary)
    config = _builder_config(trt, builder, summary, profiles, options)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("build: TensorRT returned no engine (see the TensorRT log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, bytes(serialized))
    if options.timing_cache is not None:
        _atomic_write(Path(options.timing_cache), bytes(config.get_timing_cache().serialize()))

    precision = _network_precision(trt, network)
    meta = engine_metadata(
        summary,
        tensorrt_version=trt.__version__,
        batch_profile=options.batch_profile,
        profiles=profiles,
        precision=precision,
        plugin_libraries=libraries,
        plugin_layers=plugin_layers,
        device_name=torch.cuda.get_device_name(),
    )
    metadata_file = out.with_suffix(".json")
    _atomic_write(metadata_file, (json.dumps(meta, indent=2) + "\n").encode())
    return EngineBuildResult(
        engine=out,
        metadata_file=metadata_file,
        engine_bytes=out.stat().st_size,
        seconds=time.perf_counter() - start,
        tensorrt_version=trt.__version__,
        profiles={k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profiles.items()},
        precision=precision,
        plugin_libraries=[str(p) for p in libraries],
        plugin_layers=plugin_layers,
        timing_cache=str(options.timing_cache) if options.timing_cache else None,
    )


__all__ = [
    "DEFAULT_BATCH_PROFILE",
    "BatchProfile",
    "EngineBuildError",
    "EngineBuildOptions",
    "EngineBuildResult",
    "OnnxSummary",
    "build_engine",
    "engine_metadata",
    "input_profiles",
    "inspect_onnx",
]
