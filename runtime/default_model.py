"""The default export folder used when ``--model`` is omitted: lusifer-small, built once and cached.

Torch-free. Names, version and locations come from :mod:`lusifer.default_model` (shared with the training side).
On first use :func:`resolve_default_model` builds lusifer-small from the pinned base packages and the committed
trained weights (``models/lusifer-small/*.safetensors``) and caches the export; later runs reuse the cache.

The build runs training code (torch, peft, the ONNX exporter): the runtime reaches it only through
:func:`load_builder`, the one documented entry point into the training side, which looks up
:data:`lusifer.default_model.BUILDER` (``lusifer.train.lusifer_small:build_lusifer_small``) after checking that
the ``[export]`` extra is installed. No other runtime module imports training code.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Callable

from lusifer.default_model import (
    BUILD_MODULES,
    BUILDER,
    DEFAULT_CACHE_ROOT,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    CACHE_ENV,
    EXPORT_DIRS,
    INSTALL_HINT,
    MANIFEST_FILE,
    WEIGHTS_ENV,
    BuildError,
    cache_root,
    export_dir_for,
    model_cache_dir,
    weights_dir,
)
from lusifer.runtime.errors import NoDefaultModelError

logger = logging.getLogger(__name__)

__all__ = [
    "BUILD_MODULES", "BUILDER", "CACHE_ENV", "DEFAULT_CACHE_ROOT", "DEFAULT_MODEL_NAME", "DEFAULT_MODEL_VERSION",
    "EXPORT_DIRS", "INSTALL_HINT", "MANIFEST_FILE", "WEIGHTS_ENV", "DefaultModelBuildError", "NoDefaultModelError",
    "build_target", "cache_root", "export_dir_for", "load_builder", "model_cache_dir", "resolve_default_model",
    "weights_dir",
]


class DefaultModelBuildError(NoDefaultModelError, BuildError):
    """The default model could not be built (missing or corrupt weight files, base packages, export failure).

    A runtime error (:class:`~lusifer.runtime.errors.EmbedError`) and a
    :class:`lusifer.default_model.BuildError`: ``resolve_default_model`` raises it with the builder's error as
    its cause.
    """


def build_target(device: str) -> str:
    """``"cuda"`` for a CUDA device (or ``auto`` when ONNX Runtime has the CUDA provider), else ``"cpu"``."""
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto":
        try:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                return "cuda"
        except ImportError:
            pass
    return "cpu"


def _missing_build_modules() -> list[str]:
    """The modules of :data:`BUILD_MODULES` that are not installed (looked up, not imported)."""
    missing = []
    for module in BUILD_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def load_builder() -> Callable[..., Path]:
    """The default model's builder (:data:`lusifer.default_model.BUILDER`), the runtime's one way into training code.

    Returns:
        ``build_lusifer_small(out_dir, cache_dir=, device=, *, weights=, progress=) -> Path``.

    Raises:
        NoDefaultModelError: the ``[export]`` extra (torch, peft, onnx...) is not installed; the message says
            what to install, or to pass ``--model``.
    """
    missing = _missing_build_modules()
    if missing:
        raise NoDefaultModelError(
            f"building the default model {DEFAULT_MODEL_NAME} needs {', '.join(missing)} (not installed). "
            f"Install the build extras with: {INSTALL_HINT}, or pass --model EXPORT_DIR (a folder written by "
            "lusifer-export)"
        )
    module_name, _, function = BUILDER.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an extra that is installed but broken, or a partial install
        raise NoDefaultModelError(
            f"building the default model {DEFAULT_MODEL_NAME} needs {module_name}, which cannot be imported "
            f"({exc}). Reinstall the build extras with: {INSTALL_HINT}, or pass --model EXPORT_DIR"
        ) from exc
    return getattr(module, function)


def resolve_default_model(device: str = "auto", progress: bool = True) -> Path:
    """Return the export folder of the default model (lusifer-small), building and caching it on first use.

    Args:
        device: The device the caller will embed on (``auto``, ``cpu``, ``cuda``, ``cuda:N``); picks the
            CPU export (fp32) or the CUDA export (fp16).
        progress: Show a progress bar while building.

    Returns:
        The cached export folder (complete: it only appears under its final name when the build finished).

    Raises:
        NoDefaultModelError: no cached export and it cannot be built here (runtime-only install, or the
            weights folder is not found); the message says what to install or to pass ``--model``.
        DefaultModelBuildError: the build was attempted and failed (the message names the cause).
    """
    target = build_target(device)
    export = export_dir_for(target)
    if (export / MANIFEST_FILE).is_file():
        logger.info("default model %s-%s: using the cached export %s", DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, export)
        return export
    missing = _missing_build_modules()
    if missing:
        raise NoDefaultModelError(
            f"the default model {DEFAULT_MODEL_NAME} is not cached at {export} and building it needs "
            f"{', '.join(missing)} (not installed). Install the build extras with: {INSTALL_HINT}, "
            "or pass --model EXPORT_DIR (a folder written by lusifer-export)"
        )
    weights = weights_dir()
    if not weights.is_dir():
        raise NoDefaultModelError(
            f"the default model {DEFAULT_MODEL_NAME} is not cached at {export} and its trained weights folder "
            f"{weights} does not exist (the weights ship with the source checkout, not the wheel): set "
            f"{WEIGHTS_ENV}=<checkout>/models/{DEFAULT_MODEL_NAME}, or pass --model EXPORT_DIR"
        )
    builder = load_builder()
    logger.warning(
        "building the default model %s-%s (first use, takes a few minutes) into %s",
        DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, export,
    )
    try:
        return builder(export, cache_dir=cache_root(), device=target, weights=weights, progress=progress)
    except NoDefaultModelError:
        raise
    except Exception as exc:  # reported with its cause, never swallowed
        raise DefaultModelBuildError(f"building the default model {DEFAULT_MODEL_NAME} failed: {exc}") from exc
