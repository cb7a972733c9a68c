"""Pooling and normalisation, independent of the padding side."""

from __future__ import annotations

import torch


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden_states`` over positions where ``attention_mask`` is 1, in float32.

    Args:
        hidden_states: (batch, seq, dim).
        attention_mask: (batch, seq), 1 for real positions, 0 for padding, on either side.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden_states.to(torch.float32) * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
