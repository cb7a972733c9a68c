"""The default export folder used when ``--model`` is omitted: lusifer-small, built once and cached.

Torch-free. On first use :func:`resolve_default_model` builds lusifer-small from the pinned base packages and
the committed trained weights (``models/lusifer-small/*.safetensors``) with
:func:`lusifer.train.lusifer_small.build_lusifer_small` (imported lazily; needs ``pip install 'lusifer[export]'``)
and caches the export; later runs reuse the cache.

Locations:

- cache root: ``$LUSIFER_CACHE_DIR`` or ``~/.cache/lusifer`` (also holds the downloaded base packages);
  the export goes to ``<root>/models/lusifer-small-<version>/export`` (CPU: fp32) or ``export-cuda``
  (CUDA: fp16).
- trained weights: ``$LUSIFER_SMALL_WEIGHTS`` or ``<source checkout>/models/lusifer-small`` (the weights are
  not package data: a wheel install needs ``LUSIFER_SMALL_WEIGHTS`` or ``--model EXPORT_DIR``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lusifer.runtime.errors import NoDefaultModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "lusifer-small"
# bump when the committed weights or the build recipe change: a new version is a new cache folder
DEFAULT_MODEL_VERSION = "0.2.0"
CACHE_ENV = "LUSIFER_CACHE_DIR"
WEIGHTS_ENV = "LUSIFER_SMALL_WEIGHTS"
DEFAULT_CACHE_ROOT = "~/.cache/lusifer"
EXPORT_DIRS = {"cpu": "export", "cuda": "export-cuda"}
MANIFEST_FILE = "manifest.json"
BUILD_MODULES = ("torch", "transformers", "peft", "safetensors", "yaml", "onnx", "onnxscript")
INSTALL_HINT = "pip install 'lusifer[export]'"


class DefaultModelBuildError(NoDefaultModelError):
    """The default model could not be built (missing or corrupt weight files, base packages, export failure)."""


def cache_root() -> Path:
    """The cache root: ``$LUSIFER_CACHE_DIR`` or ``~/.cache/lusifer`` (expanded, absolute)."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)).resolve()


def model_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/models/lusifer-small-<version>``: the folder holding the cached export(s)."""
    base = Path(os.path.expanduser(str(root))).resolve() if root else cache_root()
    return base / "models" / f"{DEFAULT_MODEL_NAME}-{DEFAULT_MODEL_VERSION}"


def export_dir_for(target: str, root: str | os.PathLike | None = None) -> Path:
    """The cached export folder for ``target`` (``"cpu"`` or ``"cuda"``)."""
    if target not in EXPORT_DIRS:
        raise ValueError(f"target={target!r}; expected one of {', '.join(EXPORT_DIRS)}")
    return model_cache_dir(root) / EXPORT_DIRS[target]


def weights_dir() -> Path:
    """The folder of the committed lusifer-small weights: ``$LUSIFER_SMALL_WEIGHTS`` or the source checkout's."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(os.path.expanduser(override)).resolve()
    import lusifer

    return Path(lusifer.__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME


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
    import importlib

    missing = []
    for module in BUILD_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


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
    from lusifer.train.lusifer_small import build_lusifer_small

    logger.warning(
        "building the default model %s-%s (first use, takes a few minutes) into %s",
        DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, export,
    )
    try:
        return build_lusifer_small(export, cache_dir=cache_root(), device=target, weights=weights, progress=progress)
    except NoDefaultModelError:
        raise
    except Exception as exc:  # reported with its cause, never swallowed
        raise DefaultModelBuildError(f"building the default model {DEFAULT_MODEL_NAME} failed: {exc}") from exc
