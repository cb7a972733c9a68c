"""Offline batch embedding with ONNX Runtime. Imports onnxruntime, tokenizers, numpy, pyarrow; never torch.

Python API: :class:`Embedder` (texts -> arrays, streaming with :meth:`Embedder.iter_embed`) and
:func:`embed_corpus` (parquet corpus -> resumable ``.npy`` or ``.parquet``); command line: ``lusifer-embed``.
"""

from lusifer.runtime.embedder import Embedder
from lusifer.runtime.errors import (
    CorpusError,
    DeviceError,
    EmbedError,
    ExportFolderError,
    NoDefaultModelError,
    OptionError,
    OutputError,
)

_LAZY = {"embed_corpus": "lusifer.runtime.job", "EmbedSummary": "lusifer.runtime.job"}


def __getattr__(name: str):
    """The corpus job (and pyarrow with it) loads on first use: a single-text ``Embedder`` starts faster."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Embedder",
    "embed_corpus",
    "EmbedSummary",
    "EmbedError",
    "CorpusError",
    "DeviceError",
    "ExportFolderError",
    "NoDefaultModelError",
    "OptionError",
    "OutputError",
]
