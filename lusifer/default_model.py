"""The default model (lusifer-small): its name, version, cache locations and builder, shared by runtime and training.

Torch-free and standard-library only, so both :mod:`lusifer.runtime.default_model` (which finds or builds the
cached export) and :mod:`lusifer.train.lusifer_small` (which builds it) import it without importing each other.

Locations:

- cache root: ``$LUSIFER_CACHE_DIR`` or ``~/.cache/lusifer`` (also holds the downloaded base packages);
  the export goes to ``<root>/models/lusifer-small-<version>/export`` (CPU: fp32 + block INT8) or ``export-cuda``
  (CUDA: fp16).
- trained weights: ``$LUSIFER_SMALL_WEIGHTS`` or ``<source checkout>/models/lusifer-small`` (the weights are
  not package data: a wheel install needs ``LUSIFER_SMALL_WEIGHTS`` or ``--model EXPORT_DIR``).

The builder: :data:`BUILDER` names the one function on the training side that the runtime may call,
``lusifer.train.lusifer_small:build_lusifer_small``. The runtime looks it up by this name in exactly one place
(:func:`lusifer.runtime.default_model.load_builder`) and never imports training code otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "lusifer-small"
# bump when the committed weights or the build recipe change: a new version is a new cache folder
DEFAULT_MODEL_VERSION = "0.3.0"
CACHE_ENV = "LUSIFER_CACHE_DIR"
WEIGHTS_ENV = "LUSIFER_SMALL_WEIGHTS"
DEFAULT_CACHE_ROOT = "~/.cache/lusifer"
EXPORT_DIRS = {"cpu": "export", "cuda": "export-cuda"}
MANIFEST_FILE = "manifest.json"
# "module:function" of the builder; signature: (out_dir, cache_dir=, device=, *, weights=, progress=) -> Path
BUILDER = "lusifer.train.lusifer_small:build_lusifer_small"
# modules the builder needs (the [export] extra), checked before it is looked up
BUILD_MODULES = ("torch", "transformers", "peft", "safetensors", "yaml", "onnx", "onnxscript")
INSTALL_HINT = "pip install 'lusifer[export]'"


class BuildError(Exception):
    """The default model could not be built from its inputs (missing or corrupt weight files, a weight file
    that does not match the model, an unusable output folder or device); the message names the cause."""


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
    return Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
