"""Process group set-up from launcher environment variables, gathers that keep gradients, grad averaging.

One code path for a single process and for ``torchrun`` / ``accelerate launch`` (both set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Gradients are averaged with one
all-reduce per optimizer step instead of wrapping the model in ``DistributedDataParallel``: the trainable
weights (LoRA, connector, projection) are small, and gradient caching runs several forward/backward passes
per step, which DDP's per-backward reducer does not allow.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process runs and how it talks to the others.

    Args:
        rank: Global rank (0 in a single process).
        world_size: Number of processes.
        local_rank: Rank on this host (selects the CUDA device).
        device: The torch device of this process.
        precision: ``"bf16"`` (autocast on CUDA) or ``"fp32"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast on CUDA when precision is bf16, otherwise nothing."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from exc


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA if present else CPU; ``"cuda"`` without CUDA is an error, never a silent CPU run."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but CUDA is not available (torch.cuda.is_available() is False)")
        return torch.device("cuda", local_rank)
    if device in ("auto", "cpu"):
        return torch.device("cpu")
    raise ValueError(f"device={device!r}; expected auto, cpu or cuda")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CUDA, fp32 on CPU; ``"bf16"`` on CPU is an error."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise RuntimeError("precision='bf16' needs a CUDA device; training on CPU runs in fp32")
    return precision


def init_distributed(device: str = "auto", precision: str = "auto") -> DistContext:
    """Join the process group named by the launcher's environment, or run as a single process."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    prec = resolve_precision(precision, dev)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not torch_dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            torch_dist.init_process_group(backend=backend, **kwargs)
        logger.info("process %d of %d on %s", rank, world_size, dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, precision=prec)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``x`` (N_r, ...) from every rank in rank order; only this rank's slice keeps its gradient.

    Ranks may hold different N_r (rows are padded for the all-gather and trimmed after).
    """
    if not ctx.distributed:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    torch_dist.all_gather(sizes, n)
    sizes_list = [int(s.item()) for s in sizes]
    longest = max(sizes_list)
    padded = x.detach()
    if x.shape[0] < longest:
        pad = torch.zeros((longest - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded = torch.cat([padded, pad], dim=0)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    torch_dist.all_gather(parts, padded.contiguous())
    pieces = [part[:size] for part, size in zip(parts, sizes_list)]
    pieces[ctx.rank] = x
    return torch.cat(pieces, dim=0)


def average_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over ranks with one flat all-reduce (missing grads count as 0)."""
    if not ctx.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def sum_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum scalar values over ranks (every rank must pass the same keys)."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))
