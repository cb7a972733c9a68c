"""Export a LUSIFER model to a self-contained ONNX folder (fp32 / fp16 / int8). Needs the ``[export]`` extra.

``from lusifer.export import export_model`` does not import torch; the export itself does.
"""

from lusifer.export.api import export_model
from lusifer.export.errors import (
    ExportError,
    ExportGraphError,
    ExportOptionError,
    ExportParityError,
    ModelDirError,
    OutputDirError,
    UnsupportedArchitectureError,
)

__all__ = [
    "ExportError",
    "ExportGraphError",
    "ExportOptionError",
    "ExportParityError",
    "ModelDirError",
    "OutputDirError",
    "UnsupportedArchitectureError",
    "export_model",
]
