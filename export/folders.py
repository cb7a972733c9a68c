"""Input and output folders of an export: checks, staging beside the target, and the final move."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from lusifer.export.errors import (
    ModelDirError,
    OutputDirError,
    UnsupportedArchitectureError,
)

from lusifer.atomic import replace_folder
from lusifer.backbones import SUPPORTED_DECODERS, SUPPORTED_ENCODERS
from lusifer.config import LusiferConfig
from lusifer.onnx_interface import MANIFEST_NAME

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


def _model_type(config_file: Path, what: str) -> str:
    try:
        data = json.loads(config_file.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{what} config {str(config_file)!r} cannot be read: {exc}") from exc
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str):
        raise ModelDirError(f"{what} config {str(config_file)!r} has no model_type")
    return model_type


class ModelDirInfo(NamedTuple):
    """What :func:`check_model_dir` found: the folder, its architecture and backbone families."""

    path: Path
    architecture: str
    encoder_type: str | None  # None for ``llm-only`` (no encoder)
    llm_type: str
    tokenizer_dir: str  # the sub-folder whose tokenizer.json the model embeds with


def check_model_dir(model_dir: str | os.PathLike) -> ModelDirInfo:
    """Check that ``model_dir`` is a complete saved LusiferModel of a supported architecture.

    A ``lusifer`` folder needs ``encoder/`` (the model tokenizes with the encoder's tokenizer); an ``llm-only``
    folder (the LLM alone) has no encoder and tokenizes with ``llm/tokenizer.json``.

    Returns:
        The resolved folder, the architecture, the encoder model_type (``None`` for ``llm-only``), the LLM
        model_type, and the sub-folder holding the tokenizer.

    Raises:
        ModelDirError: The folder is missing or incomplete.
        UnsupportedArchitectureError: The encoder or LLM family is not supported.
    """
    # the layout written by LusiferModel.save_pretrained (needs torch, as the whole export does)
    from lusifer.modeling import CONFIG_NAME, ENCODER_DIR, LLM_DIR, WEIGHTS_NAME

    if model_dir is None or not str(model_dir).strip():
        raise ModelDirError("model folder path is empty; expected a folder written by LusiferModel.save_pretrained")
    folder = Path(model_dir).expanduser()
    if not folder.exists():
        raise ModelDirError(f"model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ModelDirError(f"model folder {str(folder)!r} is not a folder")
    architecture = _architecture(folder / CONFIG_NAME)
    llm_only = LusiferConfig(architecture=architecture).is_llm_only
    backbones = (LLM_DIR,) if llm_only else (ENCODER_DIR, LLM_DIR)
    tokenizer_dir = LLM_DIR if llm_only else ENCODER_DIR
    needed = [CONFIG_NAME, WEIGHTS_NAME] + [f"{sub}/config.json" for sub in backbones]
    needed.append(f"{tokenizer_dir}/{TOKENIZER_FILE}")
    missing = [name for name in needed if not (folder / name).is_file()]
    for sub in backbones:
        if (folder / sub).is_dir() and not any((folder / sub).glob("*.safetensors")):
            missing.append(f"{sub}/*.safetensors")
    if missing:
        raise ModelDirError(
            f"model folder {str(folder)!r} ({architecture} architecture) is incomplete: missing "
            f"{', '.join(missing)} (expected a folder written by LusiferModel.save_pretrained)"
        )
    llm_type = _model_type(folder / LLM_DIR / "config.json", "LLM")
    encoder_type = None if llm_only else _model_type(folder / ENCODER_DIR / "config.json", "encoder")
    if encoder_type is not None and encoder_type not in SUPPORTED_ENCODERS:
        raise UnsupportedArchitectureError(
            f"encoder model_type={encoder_type!r} in {str(folder / ENCODER_DIR)!r} is not supported for export; "
            f"expected one of {', '.join(SUPPORTED_ENCODERS)}"
        )
    if llm_type not in SUPPORTED_DECODERS:
        raise UnsupportedArchitectureError(
            f"LLM model_type={llm_type!r} in {str(folder / LLM_DIR)!r} is not supported for export; "
            f"expected one of {', '.join(SUPPORTED_DECODERS)}"
        )
    return ModelDirInfo(folder.resolve(), architecture, encoder_type, llm_type, tokenizer_dir)


def _architecture(config_file: Path) -> str:
    """The ``architecture`` of a saved model's ``lusifer_config.json`` (``"lusifer"`` when it predates the field)."""
    if not config_file.is_file():
        return "lusifer"  # reported as a missing file by the caller
    try:
        return LusiferConfig.from_json(config_file).architecture
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"model config {str(config_file)!r} cannot be read: {exc}") from exc


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out_dir: str | os.PathLike, model_dir: Path, overwrite: bool) -> Path:
    """Check that ``out_dir`` can receive the export and return it resolved.

    Raises:
        OutputDirError: ``out_dir`` is the model folder, inside it, contains it, is a file, or exists
            (non-empty) without ``overwrite``; or, with ``overwrite``, it is not a previous export.
    """
    if out_dir is None or not str(out_dir).strip():
        raise OutputDirError("output folder path is empty")
    target = Path(out_dir).expanduser().resolve()
    model_dir = model_dir.resolve()
    if _is_within(target, model_dir):
        raise OutputDirError(
            f"output folder {str(target)!r} is the model folder or inside it ({str(model_dir)!r}); "
            "choose a folder outside the model folder"
        )
    if _is_within(model_dir, target):
        raise OutputDirError(
            f"the model folder {str(model_dir)!r} is inside the output folder {str(target)!r}; "
            "choose an output folder that does not contain the model"
        )
    if target.exists() and not target.is_dir():
        raise OutputDirError(f"output path {str(target)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputDirError(
                f"output folder {str(target)!r} already exists and is not empty; "
                "pass --overwrite (overwrite=True) to replace it"
            )
        if not (target / MANIFEST_NAME).is_file():
            raise OutputDirError(
                f"refusing to overwrite {str(target)!r}: it is not a lusifer export folder (no {MANIFEST_NAME})"
            )
    return target


def make_staging(target: Path) -> Path:
    """A fresh folder beside ``target``, named ``.<name>.partial-*`` so it is never mistaken for an export."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def _apply_umask(folder: Path) -> None:
    """``mkdtemp`` creates private (0700) folders; give the export the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def move_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``staging`` folder (the old export is removed only afterwards)."""
    _apply_umask(staging)
    replace_folder(staging, target)


def write_compact_tokenizer(src: Path, dst: Path) -> int:
    """Copy a ``tokenizer.json`` without its indentation (the same JSON data; XLM-R's 17 MB file becomes 9 MB).

    Returns:
        The bytes written.
    """
    data = json.loads(Path(src).read_text("utf-8"))
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    Path(dst).write_text(text, "utf-8")
    return len(text.encode("utf-8"))
