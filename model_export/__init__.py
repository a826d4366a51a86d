"""Keras -> ONNX export, parity checking and packaging; the endpoint's inference server."""
