"""`LusiferConfig`: the architecture and text format of a LUSIFER model, as a validated dataclass."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from lusifer.onnx_interface import PROMPT_STYLES, TRUNCATIONS
from lusifer.prompts import DEFAULT_DOCUMENT_TEMPLATE, DEFAULT_QUERY_TEMPLATE

POOLINGS = ("mean",)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# "lusifer": multilingual encoder -> connector -> LLM; "llm-only": the LLM reads its own tokenizer's tokens
# (the English-centric embedder baseline: no encoder, no connector)
ARCHITECTURES = ("lusifer", "llm-only")
LLM_ONLY = "llm-only"
# connector fields: only "lusifer" has a connector, so "llm-only" needs them at their defaults
_CONNECTOR_DEFAULTS = {
    "connector_hidden": None, "num_learnable_tokens": 0, "encoder_hidden": None, "connector_activation": "gelu",
}
CONNECTOR_ACTIVATIONS = ("gelu", "relu")
# truncation (TRUNCATIONS): "keep-specials": the tokenizer adds its special tokens around the text after cutting
# it to max_length (the closing </s> always stays); "cut-specials": the templates write the special tokens as
# text, tokenised without added specials, so a text longer than max_length loses its closing </s> (the reference)


def _positive_int(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    lower = 0 if allow_zero else 1
    if value < lower:
        raise ValueError(f"{name}={value!r} must be >= {lower}")


@dataclass
class LusiferConfig:
    """Configuration of a LUSIFER model.

    Args:
        encoder_path: Local folder of the multilingual encoder (XLM-R or BERT family, safetensors + tokenizer).
        llm_path: Local folder of the English-centric decoder LLM (Llama, Mistral or Qwen2 family).
        connector_hidden: Hidden width of the 2-layer connector MLP; ``None`` uses the LLM hidden size.
        num_learnable_tokens: Learnable vectors appended after the connector output (0 disables them).
        pooling: How token states become one vector; only ``"mean"`` over non-padding positions.
        projection_dim: Output size of the optional Linear-ReLU-Linear projection on the pooled vector;
            ``None`` means no projection (the embedding is the pooled LLM state).
        projection_hidden: Hidden width of the projection; ``None`` uses the LLM hidden size.
        max_length: Maximum number of tokens per text (encoder tokens; LLM tokens in ``"llm-only"``); longer
            texts are truncated.
        query_template: Template for queries, with ``{instruction}`` and ``{text}`` fields.
        document_template: Template for documents, with ``{instruction}`` and ``{text}`` fields.
        default_query_instruction: Instruction used for queries when none is given ("" = none).
        default_document_instruction: Instruction used for documents when none is given ("" = none).
        attn_implementation: Decoder attention kernel, ``"sdpa"`` or ``"eager"`` (both bidirectional).
        normalize: Whether embeddings are L2-normalised by default.
        encoder_hidden: Encoder hidden size; filled in when the model is built.
        llm_hidden: LLM hidden size; filled in when the model is built.
        extra: Free-form JSON metadata.
        architecture: ``"lusifer"`` (encoder -> connector -> LLM) or ``"llm-only"`` (the LLM alone reads its
            own tokenizer's tokens, bidirectionally, mean pooled: the English-centric embedder baseline).
            ``"llm-only"`` has no encoder and no connector: ``encoder_path`` must be empty and the connector
            fields (``connector_hidden``, ``num_learnable_tokens``, ``connector_activation``) must keep their
            defaults.
        connector_activation: Activation between the connector's two linear layers, ``"gelu"`` (this
            project's models) or ``"relu"`` (the released LUSIFER).
        prompt_style: ``"lusifer"`` (the template is applied only with a non-empty instruction, whose trailing
            dot is stripped) or ``"reference"`` (the template is always applied and the instruction kept
            verbatim, as the reference code does).
        truncation: ``"keep-specials"`` (the tokenizer adds its special tokens after cutting the text at
            ``max_length``) or ``"cut-specials"`` (the templates write the special tokens as text and texts are
            tokenised without added specials, so a cut text loses its closing ``</s>``, as in the reference).
    """

    encoder_path: str = ""
    llm_path: str = ""
    connector_hidden: int | None = None
    num_learnable_tokens: int = 0
    pooling: str = "mean"
    projection_dim: int | None = None
    projection_hidden: int | None = None
    max_length: int = 512
    query_template: str = DEFAULT_QUERY_TEMPLATE
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE
    default_query_instruction: str = ""
    default_document_instruction: str = ""
    attn_implementation: str = "sdpa"
    normalize: bool = True
    encoder_hidden: int | None = None
    llm_hidden: int | None = None
    extra: dict = field(default_factory=dict)
    architecture: str = "lusifer"  # after the older fields, so positional construction keeps its meaning
    connector_activation: str = "gelu"
    prompt_style: str = "lusifer"
    truncation: str = "keep-specials"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is not supported; expected one of {', '.join(ARCHITECTURES)}"
            )
        for name in ("encoder_path", "llm_path", "default_query_instruction", "default_document_instruction"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a string")
        _positive_int("connector_hidden", self.connector_hidden, allow_none=True)
        _positive_int("num_learnable_tokens", self.num_learnable_tokens, allow_zero=True)
        _positive_int("projection_dim", self.projection_dim, allow_none=True)
        _positive_int("projection_hidden", self.projection_hidden, allow_none=True)
        _positive_int("max_length", self.max_length)
        _positive_int("encoder_hidden", self.encoder_hidden, allow_none=True)
        _positive_int("llm_hidden", self.llm_hidden, allow_none=True)
        if self.max_length < 4:
            raise ValueError(f"max_length={self.max_length!r} must be >= 4 (room for special tokens and text)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; expected one of {', '.join(POOLINGS)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={self.attn_implementation!r} is not supported; "
                f"expected one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        for name in ("query_template", "document_template"):
            template = getattr(self, name)
            if not isinstance(template, str) or "{text}" not in template or "{instruction}" not in template:
                raise ValueError(f"{name}={template!r} must be a string containing '{{instruction}}' and '{{text}}'")
            try:
                template.format(instruction="i", text="t")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name}={template!r} has fields other than {{instruction}} and {{text}}") from exc
        if self.connector_activation not in CONNECTOR_ACTIVATIONS:
            raise ValueError(
                f"connector_activation={self.connector_activation!r} is not supported; "
                f"expected one of {', '.join(CONNECTOR_ACTIVATIONS)}"
            )
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(
                f"prompt_style={self.prompt_style!r} is not supported; expected one of {', '.join(PROMPT_STYLES)}"
            )
        if self.truncation not in TRUNCATIONS:
            raise ValueError(
                f"truncation={self.truncation!r} is not supported; expected one of {', '.join(TRUNCATIONS)}"
            )
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize={self.normalize!r} must be true or false")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra={self.extra!r} must be a JSON object")
        if self.is_llm_only:
            self._check_llm_only()

    def _check_llm_only(self) -> None:
        """``llm-only`` has no encoder and no connector: their fields must be empty / at their defaults."""
        if self.encoder_path:
            raise ValueError(
                f"encoder_path={self.encoder_path!r} but architecture='llm-only' has no encoder; "
                "leave encoder_path empty (the LLM reads its own tokenizer's tokens)"
            )
        for name, default in _CONNECTOR_DEFAULTS.items():
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} but architecture='llm-only' has no connector; "
                    f"leave {name} at {default!r}"
                )

    # ---- derived values -------------------------------------------------------------------------
    @property
    def is_llm_only(self) -> bool:
        """Whether this is the LLM-alone baseline (no encoder, no connector)."""
        return self.architecture == LLM_ONLY

    @property
    def embedding_dim(self) -> int | None:
        """Size of the output embedding, once the LLM hidden size is known."""
        return self.projection_dim if self.projection_dim is not None else self.llm_hidden

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its special tokens (``False`` when the templates write them as text)."""
        return self.truncation == "keep-specials"

    def instruction_for(self, kind: str, instruction: str | None) -> str:
        """The instruction to use for ``kind`` when the caller passed ``instruction`` (maybe None)."""
        if instruction is not None:
            return instruction
        return self.default_query_instruction if kind == "query" else self.default_document_instruction

    # ---- JSON round trip ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LusiferConfig":
        """Build a config from a dict, rejecting unknown keys by name."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LusiferConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None, **extra_top_level: Any) -> str:
        """Serialise to JSON (and write it to ``path`` when given)."""
        payload = {**extra_top_level, **self.to_dict()} if extra_top_level else self.to_dict()
        text = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "LusiferConfig":
        """Read a config from a JSON file path or a JSON string. Keys starting with ``_`` are metadata."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            with open(path_or_text, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config {str(path_or_text)[:200]!r} is not valid JSON: {exc}") from exc
        return cls.from_dict({k: v for k, v in data.items() if not k.startswith("_")})
