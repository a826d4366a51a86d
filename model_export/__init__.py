"""Keras -> ONNX export (graph rewrites, parity check) and SageMaker model packaging (training environment)."""
