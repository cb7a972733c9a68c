"""Lazy imports of optional heavy dependencies with an actionable message."""

from __future__ import annotations

import importlib
from types import ModuleType

# which extra provides which top-level module
_EXTRA_OF = {
    "torch": "train",
    "transformers": "train",
    "peft": "train",
    "datasets": "train",
    "accelerate": "train",
    "safetensors": "train",
    "yaml": "train",
    "onnx": "export",
    "onnxscript": "export",
    "ray": "ray",
    "faiss": "search",
}


class MissingExtraError(ImportError):
    """Raised when an optional dependency is not installed."""


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    Args:
        module: Dotted module name, e.g. ``"torch"``.
        extra: The lusifer extra that provides it; looked up from the module name when omitted.
        purpose: What the caller wanted to do, for the message.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or _EXTRA_OF.get(module.split(".")[0], "dev")
        what = f" to {purpose}" if purpose else ""
        raise MissingExtraError(
            f"'{module}' is needed{what} but is not installed. Install it with: pip install 'lusifer[{extra}]'"
        ) from exc
