"""Gradient caching (GradCache, Gao et al. 2021): large contrastive batches on small memory.

1. Embed all texts in chunks without building graphs, recording each chunk's RNG state.
2. Compute the loss on the detached embeddings and backpropagate it to them only (cheap).
3. Re-embed each chunk with gradients under its recorded RNG state (same dropout masks) and backpropagate
   the cached embedding gradients into the model.

The resulting parameter gradients equal those of one full-batch forward/backward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RngSnapshot:
    """The CPU and (current) CUDA generator states at one moment, to replay random ops exactly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def embed_without_graph(embed: EmbedFn, ids: torch.Tensor, mask: torch.Tensor, chunk_size: int,
                        autocast) -> tuple[torch.Tensor, list[RngSnapshot]]:
    """Step 1: float32 embeddings of all rows (no graph) and the RNG snapshot taken before each chunk."""
    reps, snapshots = [], []
    with torch.no_grad():
        for part in _chunks(ids.shape[0], chunk_size):
            snapshots.append(RngSnapshot(ids.device))
            with autocast():
                reps.append(embed(ids[part], mask[part]).float())
    return torch.cat(reps), snapshots


def backward_through_chunks(embed: EmbedFn, ids: torch.Tensor, mask: torch.Tensor, chunk_size: int,
                            grads: torch.Tensor, snapshots: list[RngSnapshot], autocast) -> None:
    """Step 3: re-embed each chunk with gradients and backpropagate the cached embedding gradients."""
    for part, snapshot in zip(_chunks(ids.shape[0], chunk_size), snapshots):
        with snapshot.replay():
            with autocast():
                rep = embed(ids[part], mask[part]).float()
            torch.autograd.backward(rep, grad_tensors=grads[part])
