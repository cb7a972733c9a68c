"""Building the export manifest: interface, text format, versions and the sha256 of every file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lusifer.checksums import sha256_file  # noqa: F401  (re-exported)
from lusifer.extras import require
from lusifer.onnx_interface import TOKENIZER_NAME, ExportManifest, VariantInfo


def export_versions() -> dict[str, str]:
    """Versions of the libraries that made the export."""
    from lusifer.modeling import library_versions

    versions = library_versions()
    for module in ("onnx", "onnxruntime"):
        versions[module] = require(module, "export").__version__
    return versions


def variant_info(
    folder: Path, file: str, files: list[Path], dtype: str, quantization: str | None, parity: dict[str, Any]
) -> VariantInfo:
    """A manifest entry for one graph, with the sha256 of its graph and external-data files."""
    return VariantInfo(
        file=file,
        dtype=dtype,
        quantization=quantization,
        files={p.name: sha256_file(folder / p.name) for p in files},
        parity=parity,
    )


def build_manifest(
    config, pad_token_id: int, folder: Path, variants: dict[str, VariantInfo], opset: int, source: dict[str, Any]
) -> ExportManifest:
    """The manifest of an export folder whose graphs and ``tokenizer.json`` are already in ``folder``.

    Args:
        config: The model's ``LusiferConfig``.
        pad_token_id: The encoder tokenizer's padding id.
        folder: The (staging) export folder.
        variants: The validated graphs.
        opset: The ONNX opset of the graphs.
        source: Where the export came from and how it was made.
    """
    if pad_token_id is None:
        raise ValueError("the encoder tokenizer has no pad token; the runtime needs one to pad batches")
    return ExportManifest(
        embedding_dim=int(config.embedding_dim),
        max_length=int(config.max_length),
        pad_token_id=int(pad_token_id),
        variants=variants,
        query_template=config.query_template,
        document_template=config.document_template,
        default_query_instruction=config.default_query_instruction,
        default_document_instruction=config.default_document_instruction,
        normalize=bool(config.normalize),
        prompt_style=config.prompt_style,
        truncation=config.truncation,
        tokenizer_file=TOKENIZER_NAME,
        tokenizer_sha256=sha256_file(folder / TOKENIZER_NAME),
        opset=int(opset),
        versions=export_versions(),
        source=source,
    )
