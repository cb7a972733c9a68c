"""Typed errors of the ONNX export. Every failure of ``export_model`` is an :class:`ExportError`."""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every export failure."""


class ExportOptionError(ExportError, ValueError):
    """An export option (dtype, quantize, opset, INT8 floor) has a value that is not supported."""


class ModelDirError(ExportError, ValueError):
    """The model folder is missing or incomplete (not a saved LusiferModel)."""


class UnsupportedArchitectureError(ExportError, ValueError):
    """The model folder holds an encoder or LLM family that this exporter does not support."""


class OutputDirError(ExportError, ValueError):
    """The output folder cannot be used: it is (inside) the model folder, exists, or is not a folder."""


class ExportGraphError(ExportError):
    """The traced ONNX graph does not have the declared interface or holds weights it must not hold."""


class ExportParityError(ExportError):
    """ONNX Runtime embeddings differ from PyTorch fp32 beyond the variant's tolerance.

    Attributes:
        variant: The failing variant (``"fp32"``, ``"fp16"`` or ``"int8"``).
        min_cosine: The lowest cosine similarity between ONNX Runtime and PyTorch over the validation texts.
        max_abs_diff: The largest absolute difference of any embedding component.
        tolerance: The lowest cosine the variant must reach.
        worst_language: The language code of the text with the lowest cosine.
    """

    def __init__(
        self, variant: str, min_cosine: float, max_abs_diff: float, tolerance: float, worst_language: str = ""
    ):
        self.variant = variant
        self.min_cosine = float(min_cosine)
        self.max_abs_diff = float(max_abs_diff)
        self.tolerance = float(tolerance)
        self.worst_language = worst_language
        where = f"; worst language: {worst_language}" if worst_language else ""
        super().__init__(
            f"{variant} ONNX graph failed validation against PyTorch fp32: min cosine {self.min_cosine:.6f} is "
            f"below the tolerance {self.tolerance:g} (max abs diff {self.max_abs_diff:.3g}{where})"
        )
