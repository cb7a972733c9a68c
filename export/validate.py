"""Validation of exported graphs: ONNX Runtime (CPU) against PyTorch fp32 on multilingual texts.

The texts (:mod:`lusifer.export.validation_texts`) are formatted with the model's prompt templates,
tokenised by the model's tokenizer and split into batches of 1, 3, 4, 5, 7 and 8 texts (never the traced
batch of 2), so lengths and batch sizes differ from the traced shapes. Every other batch is left-padded
for ONNX Runtime while PyTorch sees it right-padded, so padding-side invariance is part of the check.

A causal control is computed too: the same PyTorch model with causal decoder attention. Its cosine to the
bidirectional reference shows that parity at the tolerance would catch an export that silently became
causal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lusifer.export.errors import ExportError, ExportParityError
from lusifer.export.validation_texts import validation_items

from lusifer.extras import require
from lusifer.onnx_interface import INPUT_NAMES
from lusifer.vectors import row_cosines

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 3, 5, 8, 4, 7)
VALIDATION_INSTRUCTION = "Retrieve passages about the same topic"
ORT_PROVIDER = "CPUExecutionProvider"


@dataclass
class ValidationBatch:
    """One batch: right-padded ids for PyTorch, ids in the padding side used for ONNX Runtime."""

    languages: list[str]
    input_ids: np.ndarray
    attention_mask: np.ndarray
    padding_side: str = "right"

    def for_onnx(self, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
        if self.padding_side == "right":
            return self.input_ids, self.attention_mask
        return left_pad(self.input_ids, self.attention_mask, pad_token_id)


@dataclass
class Reference:
    """PyTorch fp32 embeddings of the validation batches (bidirectional, and the causal control)."""

    batches: list[ValidationBatch]
    embeddings: np.ndarray
    causal: np.ndarray
    pad_token_id: int
    languages: list[str] = field(default_factory=list)

    @property
    def causal_min_cosine(self) -> float:
        return float(row_cosines(self.causal, self.embeddings).min())


def left_pad(input_ids: np.ndarray, attention_mask: np.ndarray, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's real tokens (right-padded input) to the right end."""
    ids = np.full_like(input_ids, pad_token_id)
    mask = np.zeros_like(attention_mask)
    for i in range(input_ids.shape[0]):
        n = int(attention_mask[i].sum())
        ids[i, input_ids.shape[1] - n :] = input_ids[i, :n]
        mask[i, input_ids.shape[1] - n :] = 1
    return ids, mask


def build_batches(model) -> list[ValidationBatch]:
    """Format and tokenise the validation texts into batches (see the module docstring)."""
    items = validation_items()
    batches: list[ValidationBatch] = []
    start = 0
    index = 0
    while start < len(items):
        size = BATCH_SIZES[index % len(BATCH_SIZES)]
        chunk = items[start : start + size]
        kind = ("query", "document")[index % 2]
        instruction = None if index % 3 == 0 else VALIDATION_INSTRUCTION
        texts = model.format([t for _, t in chunk], kind=kind, instruction=instruction)
        enc = model.tokenizer(
            texts, padding=True, truncation=True, max_length=model.config.max_length, return_tensors="np"
        )
        batches.append(
            ValidationBatch(
                languages=[lang for lang, _ in chunk],
                input_ids=enc["input_ids"].astype(np.int64),
                attention_mask=enc["attention_mask"].astype(np.int64),
                padding_side=("right", "left")[index % 2],
            )
        )
        start += size
        index += 1
    return batches


def calibration_texts(model) -> list[str]:
    """Formatted calibration texts, disjoint from the validation texts (used to make the INT8 graph).

    The multilingual sample sentences shipped with lusifer as documents, two-word fragments of every other one
    as queries, and paragraphs of four consecutive sentences as documents, interleaved so that every batch
    mixes lengths (and padding) as the validation batches do.
    """
    from lusifer.tiny import sample_texts

    sentences = sample_texts()
    documents = model.format(sentences, kind="document")
    fragments = model.format([" ".join(t.split()[:2]) for t in sentences[::2]], kind="query")
    paragraphs = model.format([" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)], kind="document")
    texts: list[str] = []
    for i, document in enumerate(documents):
        texts.append(document)
        if i % 2 == 0 and i // 2 < len(fragments):
            texts.append(fragments[i // 2])
        if i % 4 == 3 and i // 4 < len(paragraphs):
            texts.append(paragraphs[i // 4])
    used_paragraphs = min(len(paragraphs), len(documents) // 4)
    return texts + paragraphs[used_paragraphs:]


def calibration_batches(model, batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Right-padded ``(input_ids, attention_mask)`` batches of :func:`calibration_texts`."""
    texts = calibration_texts(model)
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = model.tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True,
            max_length=model.config.max_length, return_tensors="np",
        )
        batches.append((enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
    return batches


def torch_reference(model) -> Reference:
    """PyTorch fp32 embeddings of the validation batches, bidirectional and causal (control)."""
    torch = require("torch", "export")
    from lusifer.backbones import set_attention_causal

    batches = build_batches(model)
    was_causal = bool(getattr(model.llm.config, "is_causal", False))
    outputs: dict[bool, list[np.ndarray]] = {False: [], True: []}
    model.eval()
    try:
        with torch.inference_mode():
            for causal in (False, True):
                set_attention_causal(model.llm, causal)
                for batch in batches:
                    emb = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
                    outputs[causal].append(emb.float().numpy())
    finally:
        set_attention_causal(model.llm, was_causal)
    pad = model.tokenizer.pad_token_id
    return Reference(
        batches=batches,
        embeddings=np.concatenate(outputs[False]),
        causal=np.concatenate(outputs[True]),
        pad_token_id=int(pad),
        languages=[lang for b in batches for lang in b.languages],
    )


def ort_session(path: Path):
    """A CPU ONNX Runtime session with the default (full) graph optimisations, as the runtime uses."""
    ort = require("onnxruntime", "export")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # validation runs between torch work on shared CPUs: idle ORT threads should sleep, not spin
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=[ORT_PROVIDER])


def ort_embeddings(path: Path, reference: Reference, desc: str = "validate") -> np.ndarray:
    """Run the graph at ``path`` on the validation batches with CPU ONNX Runtime."""
    from tqdm.auto import tqdm

    session = ort_session(path)
    out = []
    for batch in tqdm(reference.batches, desc=desc, unit="batch", leave=False):
        ids, mask = batch.for_onnx(reference.pad_token_id)
        (emb,) = session.run(None, {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask})
        if emb.dtype != np.float32:
            raise ExportError(f"{path.name} returned {emb.dtype} embeddings; the interface declares float32")
        out.append(emb)
    return np.concatenate(out)


def parity_figures(candidate: np.ndarray, reference: Reference) -> dict[str, Any]:
    """Cosine and absolute-difference figures of ``candidate`` vs the PyTorch reference, overall and per language."""
    cos = row_cosines(candidate, reference.embeddings)
    diff = np.abs(candidate.astype(np.float64) - reference.embeddings.astype(np.float64)).max(axis=1)
    causal = row_cosines(candidate, reference.causal)
    langs = np.array(reference.languages)
    per_language = {}
    for lang in dict.fromkeys(reference.languages):
        sel = langs == lang
        per_language[lang] = {"min_cosine": float(cos[sel].min()), "max_abs_diff": float(diff[sel].max())}
    worst = int(np.nanargmin(cos)) if not np.isnan(cos).all() else 0
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(diff.max()),
        "worst_language": str(langs[worst]),
        "per_language": per_language,
        "num_texts": len(cos),
        "batch_sizes": sorted({int(b.input_ids.shape[0]) for b in reference.batches}),
        "padding_sides": sorted({b.padding_side for b in reference.batches}),
        "min_cosine_to_causal_control": float(causal.min()),
        "causal_control_min_cosine": reference.causal_min_cosine,
        "provider": ORT_PROVIDER,
        "reference": "PyTorch fp32, bidirectional",
    }


def validate_graph(variant: str, path: Path, reference: Reference, tolerance: float) -> dict[str, Any]:
    """Validate one graph; return its parity figures or raise :class:`ExportParityError`.

    Args:
        variant: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        path: The graph file.
        reference: PyTorch embeddings of the validation batches.
        tolerance: The lowest acceptable cosine to PyTorch fp32.
    """
    started = time.perf_counter()
    candidate = ort_embeddings(path, reference, desc=f"validate {variant}")
    figures = parity_figures(candidate, reference)
    figures["tolerance_min_cosine"] = float(tolerance)
    # parity at the tolerance while the causal control is outside it: the graph attends bidirectionally
    figures["bidirectional_verified"] = bool(
        figures["min_cosine"] >= tolerance > figures["min_cosine_to_causal_control"]
    )
    figures["seconds"] = round(time.perf_counter() - started, 3)
    logger.info(
        "%s vs PyTorch fp32 on %d texts: min cosine %.7f (tolerance %g), max abs diff %.3g, worst language %s",
        variant, figures["num_texts"], figures["min_cosine"], tolerance, figures["max_abs_diff"],
        figures["worst_language"],
    )
    if variant == "int8":
        logger.info(
            "int8 drift per language (min cosine to PyTorch fp32): %s",
            ", ".join(f"{k} {v['min_cosine']:.5f}" for k, v in figures["per_language"].items()),
        )
    if not figures["min_cosine"] >= tolerance:  # NaN fails too
        raise ExportParityError(
            variant, figures["min_cosine"], figures["max_abs_diff"], tolerance, figures["worst_language"]
        )
    if reference.causal_min_cosine >= tolerance:
        logger.warning(
            "the causal control is within the %s tolerance of the bidirectional model (min cosine %.6f): "
            "validation cannot tell bidirectional from causal attention for this model",
            variant, reference.causal_min_cosine,
        )
    return figures


def check_tokenizer_file(tokenizer_json: Path, hf_tokenizer, max_length: int) -> None:
    """The ``tokenizer.json`` to export gives the model tokenizer's ids with the Rust ``tokenizers`` library
    (as the runtime uses it) on the validation texts."""
    tokenizers = require("tokenizers", "export")
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_length)
    texts = [t for _, t in validation_items()]
    expected = hf_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    got = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
    for text, want, have in zip(texts, expected, got):
        if list(want) != list(have):
            raise ExportError(
                f"{tokenizer_json} does not reproduce the model tokenizer's ids for {text[:40]!r}: "
                f"{list(have)[:12]}... vs {list(want)[:12]}..."
            )
