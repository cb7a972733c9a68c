"""Typed errors of the runtime. The CLI turns every :class:`EmbedError` into a message and a non-zero exit."""

from __future__ import annotations

from lusifer.onnx_interface import ManifestError


class EmbedError(Exception):
    """Base class of every error the runtime reports to the user (bad input, bad setup)."""


class ExportFolderError(EmbedError, ManifestError):
    """An export folder is missing files, fails its checksums, or cannot be loaded by ONNX Runtime."""


class DeviceError(EmbedError):
    """The requested device or ONNX variant cannot be used (e.g. CUDA asked for but unavailable)."""


class CorpusError(EmbedError):
    """The corpus cannot be read as asked: missing or corrupt file, no such column, wrong type, nulls."""


class OutputError(EmbedError):
    """The output path cannot be used: it exists (without --resume/--overwrite), or resume does not match."""


class NoDefaultModelError(EmbedError):
    """No export folder was given and no default model is available."""


class OptionError(EmbedError, ValueError):
    """An option is out of range for this model or job (e.g. ``--max-length`` above the export's limit)."""
