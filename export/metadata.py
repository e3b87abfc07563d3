"""The ``faseg.*`` metadata keys of exported files: ``onnx.ModelProto.metadata_props`` of an ONNX export and
the JSON sidecar of a TensorRT plan. The exporter writes them; the ONNX Runtime session, the TensorRT build and
the service's backends read them. No imports: the service's runtime image has no torch."""

FORMAT_VERSION = "1"

META_CLASSES = "faseg.classes"
META_PALETTE = "faseg.palette"
META_INPUT_SIZE = "faseg.input_size"
META_PRESET = "faseg.preset"
META_FLAVOUR = "faseg.flavour"
META_PRECISION = "faseg.precision"  # fp32 | fp16 | int8
#: int8 files: JSON {"data": dataset spec, "num_images": images used, "method": "minmax"}.
META_CALIBRATION = "faseg.calibration"
META_FORMAT_VERSION = "faseg.format_version"
META_OUTPUTS = "faseg.outputs"
META_INPUT_LAYOUT = "faseg.input_layout"
META_EXPORTER = "faseg.exporter"
