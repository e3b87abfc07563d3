"""ONNX / TensorRT export."""
