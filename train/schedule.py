"""The learning-rate schedule as a pure function of the step: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warmup rises linearly from ``base_lr / (warmup_steps + 1)`` to ``base_lr`` over the first
    ``warmup_steps`` steps; the rest follows a half cosine from ``base_lr`` down to
    ``min_lr_ratio * base_lr`` at the last step.

    Args:
        step: 0-based index of the optimizer step about to run.
        base_lr: Peak learning rate.
        warmup_steps: Number of warmup steps (0: start at the peak).
        total_steps: Total number of optimizer steps of the run.
        min_lr_ratio: Final learning rate as a fraction of ``base_lr``.

    Returns:
        The learning rate for this step.
    """
    if step < 0 or total_steps < 1:
        raise ValueError(f"step={step} must be >= 0 and total_steps={total_steps} >= 1")
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 1:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1))
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
