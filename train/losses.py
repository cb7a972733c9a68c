"""Training losses as pure functions of tensors (no model, no process group)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def contrastive_loss(
    q: torch.Tensor,
    p: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives plus hard negatives, on cosine similarities.

    Query ``i``'s positive is ``p[i]``; every other positive and every hard negative in ``negatives`` is a
    negative for every query (hard negatives are shared across the batch, as in-batch negatives are).

    Args:
        q: Query embeddings (B, D), not necessarily normalised.
        p: Positive embeddings (B, D), row-aligned with ``q``.
        negatives: Hard-negative embeddings (M, D) or (B, K, D) (flattened into M = B*K); ``None`` or M = 0
            means in-batch negatives only.
        temperature: Softmax temperature (> 0); logits are ``cos(q, c) / temperature``.

    Returns:
        The mean cross-entropy over the B queries (a scalar, float32).
    """
    if q.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"q {tuple(q.shape)} and p {tuple(p.shape)} must both be (batch, dim)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    candidates = p
    if negatives is not None:
        if negatives.ndim == 3:
            negatives = negatives.reshape(-1, negatives.shape[-1])
        if negatives.ndim != 2 or negatives.shape[-1] != q.shape[-1]:
            raise ValueError(f"negatives {tuple(negatives.shape)} must be (M, {q.shape[-1]}) or (B, K, {q.shape[-1]})")
        candidates = torch.cat([p, negatives.to(p.dtype)], dim=0)
    qn = F.normalize(q.float(), dim=-1)
    cn = F.normalize(candidates.float(), dim=-1)
    logits = qn @ cn.T / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels)


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of already-aligned logits and labels, 0 where the label is ignored.

    Args:
        logits: (N, V) predictions, one row per labelled-or-not position.
        labels: (N,) target ids, ``-100`` where no loss is taken.

    Returns:
        (N,) float32 losses.
    """
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
