"""ONNX / TensorRT export (see DESIGN §5)."""
