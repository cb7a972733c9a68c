"""The connector: a 2-layer MLP from encoder states into the LLM's input space, plus learnable tokens."""

from __future__ import annotations

import torch
from torch import nn


class Connector(nn.Module):
    """Maps encoder states (B, T, E) to LLM input embeddings (B, T + N, H).

    Args:
        encoder_hidden: Encoder hidden size E.
        hidden: MLP hidden width.
        llm_hidden: LLM hidden size H.
        num_learnable_tokens: N learnable vectors appended after the mapped sequence (N may be 0).
        activation: ``"gelu"`` (this project) or ``"relu"`` (the released LUSIFER's ``ff`` connector).
    """

    ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}

    def __init__(
        self, encoder_hidden: int, hidden: int, llm_hidden: int, num_learnable_tokens: int = 0,
        activation: str = "gelu",
    ):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not supported; expected one of {', '.join(self.ACTIVATIONS)}")
        self.mlp = nn.Sequential(
            nn.Linear(encoder_hidden, hidden), self.ACTIVATIONS[activation](), nn.Linear(hidden, llm_hidden)
        )
        self.num_learnable_tokens = num_learnable_tokens
        if num_learnable_tokens > 0:
            self.learnable_tokens = nn.Parameter(torch.randn(num_learnable_tokens, llm_hidden) * 0.02)
        else:
            self.register_parameter("learnable_tokens", None)

    def forward(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor):
        """Return ``(inputs_embeds, attention_mask)`` for the LLM."""
        embeds = self.mlp(encoder_states)
        if self.learnable_tokens is None:
            return embeds, attention_mask
        batch = embeds.shape[0]
        tokens = self.learnable_tokens.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        ones = torch.ones(batch, self.num_learnable_tokens, dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([embeds, tokens], dim=1), torch.cat([attention_mask, ones], dim=1)


class Projection(nn.Module):
    """Linear-ReLU-Linear on the pooled vector, as in the released LUSIFER."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
