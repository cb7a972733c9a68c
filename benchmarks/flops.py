"""Forward-pass FLOPs of a LUSIFER model (encoder -> connector -> bidirectional decoder -> pooling -> projection).

Counted as usual for model FLOPs: 2 x multiply-accumulates of every matrix product, i.e. the linear layers
(2 * tokens * in * out) and attention's two products (QK^T and AV: 4 * T^2 * heads * head_dim per layer,
full bidirectional attention, no causal halving). Norms, activations, softmax, embeddings lookups and pooling
are left out (well under 1% here). The decoder sees each text's encoder tokens plus the learnable tokens.

*Useful* FLOPs count each text at its own length; *executed* FLOPs count the padded batch shapes the
runtime really computes. ``workers torch-batches`` checks the per-batch count against PyTorch's
``FlopCounterMode`` on the loaded model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class FlopShape:
    """The sizes that determine a forward pass's FLOPs."""

    enc_layers: int
    enc_hidden: int
    enc_intermediate: int
    connector_hidden: int
    learnable_tokens: int
    dec_layers: int
    dec_hidden: int
    dec_q_dim: int  # heads * head_dim
    dec_kv_dim: int  # kv heads * head_dim
    dec_intermediate: int
    projection_hidden: int | None
    projection_dim: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def shape_from_model_dir(model_dir: str | Path) -> FlopShape:
    """Read the sizes from a saved LusiferModel folder (``lusifer_config.json``, ``encoder/``, ``llm/``)."""
    folder = Path(model_dir)
    cfg = json.loads((folder / "lusifer_config.json").read_text("utf-8"))
    if cfg.get("architecture", "lusifer") != "lusifer":
        raise ValueError(f"{folder}: architecture {cfg['architecture']!r}; the FLOP counter covers the "
                         "encoder -> connector -> LLM architecture ('lusifer') only")
    enc = json.loads((folder / "encoder" / "config.json").read_text("utf-8"))
    dec = json.loads((folder / "llm" / "config.json").read_text("utf-8"))
    heads = int(dec["num_attention_heads"])
    head_dim = int(dec.get("head_dim") or dec["hidden_size"] // heads)
    kv_heads = int(dec.get("num_key_value_heads") or heads)
    return FlopShape(
        enc_layers=int(enc["num_hidden_layers"]), enc_hidden=int(enc["hidden_size"]),
        enc_intermediate=int(enc["intermediate_size"]),
        connector_hidden=int(cfg.get("connector_hidden") or dec["hidden_size"]),
        learnable_tokens=int(cfg.get("num_learnable_tokens") or 0),
        dec_layers=int(dec["num_hidden_layers"]), dec_hidden=int(dec["hidden_size"]),
        dec_q_dim=heads * head_dim, dec_kv_dim=kv_heads * head_dim, dec_intermediate=int(dec["intermediate_size"]),
        projection_hidden=(int(cfg.get("projection_hidden") or dec["hidden_size"])
                           if cfg.get("projection_dim") else None),
        projection_dim=cfg.get("projection_dim"),
    )


def sequence_flops(s: FlopShape, length: np.ndarray | int, attention: bool = True) -> np.ndarray:
    """FLOPs of one sequence of ``length`` encoder tokens (vectorised over an array of lengths).

    ``attention=False`` leaves out the two attention products (linear layers only).
    """
    L = np.asarray(length, dtype=np.float64)
    he, hd = s.enc_hidden, s.dec_hidden
    att = 1.0 if attention else 0.0
    encoder = s.enc_layers * (2 * L * (4 * he * he + 2 * he * s.enc_intermediate) + att * 4 * L * L * he)
    connector = 2 * L * (he * s.connector_hidden + s.connector_hidden * hd)
    T = L + s.learnable_tokens
    dec_linear = 2 * hd * s.dec_q_dim + 2 * hd * s.dec_kv_dim + 3 * hd * s.dec_intermediate
    decoder = s.dec_layers * (2 * T * dec_linear + att * 4 * T * T * s.dec_q_dim)
    projection = 0.0
    if s.projection_dim:
        projection = 2.0 * (hd * s.projection_hidden + s.projection_hidden * s.projection_dim)
    return encoder + connector + decoder + projection


def useful_flops(s: FlopShape, lengths: np.ndarray) -> float:
    """FLOPs of every text at its own length (what the embeddings need)."""
    return float(sequence_flops(s, np.asarray(lengths)).sum())


def executed_flops(s: FlopShape, batch_shapes: Iterable[tuple[int, int]], attention: bool = True) -> float:
    """FLOPs of padded batches ``(rows, padded_length)`` (what the runtime computes)."""
    return float(sum(rows * float(sequence_flops(s, length, attention)) for rows, length in batch_shapes))


def parameter_count(s: FlopShape) -> int:
    """Parameters of the matrices counted above (token-embedding tables excluded)."""
    he, hd = s.enc_hidden, s.dec_hidden
    n = s.enc_layers * (4 * he * he + 2 * he * s.enc_intermediate)
    n += he * s.connector_hidden + s.connector_hidden * hd
    n += s.dec_layers * (2 * hd * s.dec_q_dim + 2 * hd * s.dec_kv_dim + 3 * hd * s.dec_intermediate)
    if s.projection_dim:
        n += hd * s.projection_hidden + s.projection_hidden * s.projection_dim
    return int(n)
