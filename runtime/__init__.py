"""Offline batch embedding with ONNX Runtime. Imports onnxruntime, tokenizers, numpy, pyarrow; never torch."""
