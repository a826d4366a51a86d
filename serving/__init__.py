"""The GPU inference server: the SageMaker container contract over ONNX Runtime (its own image)."""
