"""Inference backends shared by both encoders: names and the per-CPU default, the Runner contract, the
verified export cache, ONNX Runtime and OpenVINO export/quantisation/runners, token-budget batching and
static-int8 calibration data. Nothing here imports the encoders (``index/``, ``rerank/``); they import this.
"""
