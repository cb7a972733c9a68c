"""The ONNX interface of a LUSIFER export, declared once as data, and the export manifest.

Shared by ``lusifer.export`` (which writes graphs and manifests) and ``lusifer.runtime`` (which reads them).
Pure Python: no torch, no onnx.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# text-format choices (as ``LusiferConfig.prompt_style`` / ``LusiferConfig.truncation``)
PROMPT_STYLES: tuple[str, ...] = ("lusifer", "reference")
TRUNCATIONS: tuple[str, ...] = ("keep-specials", "cut-specials")

# ---- graph interface --------------------------------------------------------------------------------
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")
OUTPUT_NAMES: tuple[str, ...] = ("embedding",)
INPUT_DTYPE = "int64"
OUTPUT_DTYPE = "float32"  # every variant casts its output to float32 inside the graph
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "embedding": {0: "batch"},
}
DEFAULT_OPSET = 18
# Graphs whose initializers exceed this are saved with external data (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000

# ---- variants and their parity tolerances (vs PyTorch fp32) -----------------------------------------
VARIANT_FILES: dict[str, str] = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
MIN_COSINE: dict[str, float] = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
# INT8 graphs (CPU only), by the manifest's variant ``quantization``:
# - "int8-block": ONNX Runtime's MatMulNBits, 8-bit weights in blocks along K, activations quantised at run time
#   per row and block (accuracy_level 4): a row's vector does not depend on its batch-mates;
# - "int8": dynamic INT8 (activation scale per tensor and per forward pass): run one row per pass.
QUANTIZATIONS: tuple[str, ...] = ("int8-block", "int8")
ONE_ROW_PER_PASS_QUANTIZATIONS = frozenset({"int8"})
# lusifer-export --int8-scheme -> the manifest's quantization
INT8_SCHEMES: dict[str, str] = {"block": "int8-block", "dynamic": "int8"}
DEFAULT_INT8_SCHEME = "block"
# fp16 graph fusion levels (lusifer.export.fp16): traced ops; norms + bias/GELU; also rotary and attention
FP16_FUSIONS: tuple[str, ...] = ("none", "norm", "all")
DEFAULT_FP16_FUSIONS = "norm"

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
MANIFEST_FORMAT_VERSION = 1


class ManifestError(ValueError):
    """An export folder's manifest is missing, malformed, or does not match the files."""


@dataclass
class VariantInfo:
    """One ONNX graph of an export.

    Args:
        file: Graph file name inside the export folder.
        dtype: Compute dtype, ``"fp32"`` or ``"fp16"``.
        quantization: ``None`` or one of :data:`QUANTIZATIONS` (INT8 graphs, CPU only).
        files: Every file of this graph (graph + external data) mapped to its sha256.
        parity: Validation figures vs PyTorch (``min_cosine``, ``max_abs_diff``, per-language figures...).
    """

    file: str
    dtype: str = "fp32"
    quantization: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "fp16"):
            raise ManifestError(f"variant dtype={self.dtype!r}; expected 'fp32' or 'fp16'")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ManifestError(
                f"variant quantization={self.quantization!r}; expected null or one of {', '.join(QUANTIZATIONS)}"
            )


@dataclass
class ExportManifest:
    """Everything the runtime needs to use an export folder, with no access to the model folder."""

    embedding_dim: int
    max_length: int
    pad_token_id: int
    variants: dict[str, VariantInfo]
    query_template: str
    document_template: str
    default_query_instruction: str = ""
    default_document_instruction: str = ""
    normalize: bool = True
    prompt_style: str = "lusifer"
    truncation: str = "keep-specials"
    tokenizer_file: str = TOKENIZER_NAME
    tokenizer_sha256: str = ""
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    opset: int = DEFAULT_OPSET
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = MANIFEST_FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(f"manifest {name}={value!r} must be a positive integer")
        if not self.variants:
            raise ManifestError("manifest lists no ONNX variants")
        self.variants = {
            k: (v if isinstance(v, VariantInfo) else VariantInfo(**v)) for k, v in self.variants.items()
        }
        if self.prompt_style not in PROMPT_STYLES:
            raise ManifestError(
                f"manifest prompt_style={self.prompt_style!r}; expected one of {', '.join(PROMPT_STYLES)}"
            )
        if self.truncation not in TRUNCATIONS:
            raise ManifestError(f"manifest truncation={self.truncation!r}; expected one of {', '.join(TRUNCATIONS)}")
        if list(self.input_names) != list(INPUT_NAMES) or list(self.output_names) != list(OUTPUT_NAMES):
            raise ManifestError(
                f"manifest names inputs {self.input_names} / outputs {self.output_names}; "
                f"this runtime expects {list(INPUT_NAMES)} / {list(OUTPUT_NAMES)}"
            )
        if self.format_version > MANIFEST_FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version={self.format_version} is newer than this lusifer supports "
                f"({MANIFEST_FORMAT_VERSION}); upgrade lusifer"
            )

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its special tokens (``False`` when the templates write them as text)."""
        return self.truncation == "keep-specials"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ExportManifest":
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise ManifestError(f"export folder {str(folder)!r} does not exist")
        if not path.is_file():
            raise ManifestError(f"export folder {str(folder)!r} has no {MANIFEST_NAME}; is it a lusifer export?")
        try:
            data = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"{path} has unknown field(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ManifestError(f"{path} is incomplete: {exc}") from exc
