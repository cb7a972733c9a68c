"""Training losses as pure functions of tensors (no model, no process group)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lusifer.pooling import l2_normalize
from lusifer.train.config import DISTILL_LOSSES

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


def similarity_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    kind: str = "kl",
    temperature: float = 0.05,
) -> torch.Tensor:
    """Distil the similarity structure of ``teacher`` into ``student``: their in-batch cosine matrices must agree.

    Both sides embed the same N texts (row ``i`` is text ``i``); their widths may differ (e.g. 576 vs 384), as
    only the (N, N) cosine-similarity matrices are compared, without their diagonals (always 1). The teacher
    is detached: gradients flow to ``student`` only.

    Args:
        student: (N, D_s) student embeddings, not necessarily normalised (N >= 2).
        teacher: (N, D_t) teacher embeddings of the same texts.
        kind: ``"kl"``: per row, KL(teacher || student) of the softmax over the other N-1 texts of
            ``cos / temperature`` (matches neighbour rankings, invariant to a per-row shift of the cosines);
            ``"mse"``: mean squared difference of the off-diagonal cosines (matches the cosines themselves).
        temperature: Softmax temperature of ``"kl"`` (> 0); unused by ``"mse"``.

    Returns:
        A float32 scalar: 0 when the two cosine structures are equal, > 0 otherwise.
    """
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be (N, D_s) "
                         "and (N, D_t) embeddings of the same N texts")
    if student.shape[0] < 2:
        raise ValueError(f"similarity distillation needs at least 2 texts, got {student.shape[0]}")
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"kind={kind!r} is not a distillation loss; expected one of {', '.join(DISTILL_LOSSES)}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    n = student.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def cosines(x: torch.Tensor) -> torch.Tensor:
        x = l2_normalize(x.float())
        return (x @ x.T)[off_diagonal].view(n, n - 1)

    s = cosines(student)
    t = cosines(teacher.detach())
    if kind == "mse":
        return F.mse_loss(s, t)
    return F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                    log_target=True, reduction="batchmean")


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of already-aligned logits and labels, 0 where the label is ignored.

    Args:
        logits: (N, V) predictions, one row per labelled-or-not position.
        labels: (N,) target ids, ``-100`` where no loss is taken.

    Returns:
        (N,) float32 losses.
    """
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
