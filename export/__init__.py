"""Deployment of the global model: ONNX export, signed packages, atomic install, MQTT push.

Modules that gateways use (``package``, ``install``, ``push``) import neither torch nor onnx,
so they work in an inference-only install; ``run_model``, ``onnx_export``, ``verify``,
``quantize`` and ``build`` run on the aggregator/host and import torch/onnx.
"""
