"""Offline batch embedding with ONNX Runtime. Imports onnxruntime, tokenizers, numpy, pyarrow; never torch.

Python API: :class:`Embedder` (texts -> arrays, streaming with :meth:`Embedder.iter_embed`) and
:func:`embed_corpus` (parquet corpus -> resumable ``.npy``); command line: ``lusifer-embed``.
"""

from lusifer.runtime.embedder import Embedder
from lusifer.runtime.errors import (
    CorpusError,
    DeviceError,
    EmbedError,
    ExportFolderError,
    NoDefaultModelError,
    OutputError,
)
from lusifer.runtime.job import EmbedSummary, embed_corpus

__all__ = [
    "Embedder",
    "embed_corpus",
    "EmbedSummary",
    "EmbedError",
    "CorpusError",
    "DeviceError",
    "ExportFolderError",
    "NoDefaultModelError",
    "OutputError",
]
