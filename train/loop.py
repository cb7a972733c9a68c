"""The one training loop of both stages: optimizer, schedule, accumulation, clipping, logging, checkpoints.

A stage plugs in through :class:`Task`; the loop owns everything that must behave the same in both stages,
in particular exact resumption: data order, per-example randomness, RNG states, optimizer and schedule all
continue from a checkpoint as if the run had never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from lusifer._version import __version__
from lusifer.atomic import write_text_atomic
from lusifer.modeling import LusiferModel
from lusifer.train.batching import MicroBatches
from lusifer.train.checkpoint import (
    CHECKPOINTS_DIR,
    FINAL_FILE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    read_checkpoint_config,
    save_checkpoint,
)
from lusifer.train.config import TrainConfig
from lusifer.train.distributed import (
    DistContext,
    average_gradients,
    init_distributed,
    shutdown_distributed,
    sum_over_ranks,
)
from lusifer.train.model_setup import count_parameters, trainable_parameters
from lusifer.train.schedule import lr_at

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# fields that may change when resuming (they do not change what the next steps compute)
RESUMABLE_CHANGES = {"max_steps", "save_every", "keep_checkpoints", "log_every", "num_workers", "resume_from",
                     "output_dir"}
# metrics: name -> (sum, weight); the logged value is sum / weight over the logging window and all ranks
Metrics = dict[str, tuple[float, float]]


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, unusable checkpoint...)."""


class Task(Protocol):
    """What a stage contributes to the loop."""

    name: str

    def build_model(self, config: TrainConfig, device: torch.device) -> LusiferModel:
        """The model with LoRA applied and the trainable parameters marked, on ``device``."""

    def build_batches(self, config: TrainConfig, model: LusiferModel, ctx: DistContext) -> MicroBatches:
        """The micro-batches of this rank."""

    def start(self, model: LusiferModel) -> None:
        """Switch the model into the stage's training mode (e.g. causal attention)."""

    def forward_backward(self, model: LusiferModel, batch: dict[str, torch.Tensor], loss_scale: float,
                         ctx: DistContext) -> Metrics:
        """Forward and backward of one micro-batch (gradients accumulate); ``metrics["loss"]`` is required."""

    def finish(self, config: TrainConfig, final_checkpoint: Path, ctx: DistContext) -> dict:
        """Stage-specific outputs from the final checkpoint once training is done (the training model is
        freed first); returns paths for ``final.json``."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    final_checkpoint: Path
    steps: int
    last_metrics: dict[str, float]
    outputs: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only."""
    named = trainable_parameters(model)
    if not named:
        raise TrainingError("the model has no trainable parameters")
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith("learnable_tokens")]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not n.endswith("learnable_tokens"))]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
    )


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _resolve_resume(config: TrainConfig) -> Path | None:
    run_dir = Path(config.output_dir)
    existing = latest_checkpoint(run_dir)
    if not config.resume_from:
        if existing is not None:
            raise TrainingError(
                f"output_dir {str(run_dir)!r} already holds checkpoints (latest {existing.name}); pass --resume to "
                "continue that run, or choose another output_dir"
            )
        return None
    if config.resume_from == "latest":
        if existing is None:
            logger.warning("resume requested but %s holds no checkpoint: starting from step 0", run_dir)
        return existing
    folder = Path(config.resume_from)
    if not folder.is_dir():
        raise TrainingError(f"resume_from={config.resume_from!r} is not a checkpoint folder")
    return folder


def _check_resumable(saved: TrainConfig, config: TrainConfig, checkpoint: Path) -> None:
    before, now = saved.to_dict(), config.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise TrainingError(
            f"cannot resume from {checkpoint}: the config differs in {details}. Resume with the checkpoint's "
            "settings (only max_steps, save_every, keep_checkpoints, log_every, num_workers may change)"
        )
    if before["max_steps"] != now["max_steps"]:
        logger.warning("max_steps changed from %d to %d: the cosine schedule is stretched from here on",
                       before["max_steps"], now["max_steps"])


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past ``last_step`` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _reduce_window(window: dict[str, list[float]], ctx: DistContext) -> dict[str, float]:
    flat = {}
    for name, (total, weight) in window.items():
        flat[f"{name}/sum"] = total
        flat[f"{name}/weight"] = weight
    flat = sum_over_ranks(flat, ctx)
    out = {}
    for name in window:
        weight = flat[f"{name}/weight"]
        if weight > 0:
            out[name] = flat[f"{name}/sum"] / weight
    return out


def run_training(
    task: Task,
    config: TrainConfig,
    on_step_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``task`` as configured, resuming when ``config.resume_from`` says so.

    Args:
        task: The stage (see :class:`Task`).
        config: The stage config.
        on_step_end: Called with ``(step, metrics)`` after every optimizer step and its checkpoint; an
            exception raised there stops the run like a crash would (tests use this).

    Returns:
        The run's :class:`TrainResult`.
    """
    ctx = init_distributed(config.device, config.precision)
    try:
        return _train(task, config, ctx, on_step_end)
    finally:
        shutdown_distributed(ctx)


def _train(task: Task, config: TrainConfig, ctx: DistContext, on_step_end) -> TrainResult:
    from tqdm.auto import tqdm

    run_dir = Path(config.output_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    resume_from = _resolve_resume(config)
    if resume_from is not None:
        _check_resumable(read_checkpoint_config(resume_from), config, resume_from)

    seed_everything(config.seed)
    model = task.build_model(config, ctx.device)
    params = [p for _, p in trainable_parameters(model)]
    optimizer = build_optimizer(model, config)
    trainable, total = count_parameters(model)
    logger.info("%s: %d trainable parameters of %d (%.2f%%)", task.name, trainable, total, 100.0 * trainable / total)

    step = 0
    elapsed_before = 0.0
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer, ctx)
        step = int(state["step"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if step > config.max_steps:
            raise CheckpointError(f"{resume_from} is at step {step}, past max_steps={config.max_steps}")
        logger.info("resumed from %s at step %d", resume_from, step)
    metrics_file = run_dir / METRICS_FILE
    if ctx.is_main:
        if resume_from is not None:
            _truncate_metrics(metrics_file, step)
        elif metrics_file.exists():
            metrics_file.unlink()
        (run_dir / FINAL_FILE).unlink(missing_ok=True)

    batches = task.build_batches(config, model, ctx)
    accum = config.grad_accum_steps
    loader = torch.utils.data.DataLoader(
        batches,
        sampler=range(step * accum, config.max_steps * accum),
        batch_size=None,
        num_workers=config.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # keeps the loader off the global RNG
    )
    data = iter(loader)
    task.start(model)
    model.train()
    # the generators (dropout) continue exactly where the checkpoint left them; fresh runs get one stream per rank
    if resume_from is not None:
        restore_rng(resume_from, ctx)
    else:
        torch.manual_seed(config.seed + 7919 * (ctx.rank + 1))

    progress = tqdm(total=config.max_steps, initial=step, desc=task.name, unit="step", disable=not ctx.is_main,
                    dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    started = time.perf_counter()
    last_checkpoint = resume_from
    while step < config.max_steps:
        lr = lr_at(step, config.learning_rate, config.warmup_steps, config.max_steps, config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(accum):
            batch = _to_device(next(data), ctx.device)
            metrics = task.forward_backward(model, batch, 1.0 / accum, ctx)
            for name, (value, weight) in metrics.items():
                acc = window.setdefault(name, [0.0, 0.0])
                acc[0] += value
                acc[1] += weight
        average_gradients(params, ctx)
        if config.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        # a non-finite loss makes the (all-reduced, so identical on every rank) gradient norm non-finite
        if not math.isfinite(grad_norm):
            raise TrainingError(
                f"non-finite loss or gradient at step {step + 1} (gradient norm {grad_norm}); the weights were not "
                f"updated; last complete checkpoint: {last_checkpoint}. Lower learning_rate or check the data"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.setdefault("grad_norm", [0.0, 0.0])
        window["grad_norm"][0] += grad_norm
        window["grad_norm"][1] += 1.0

        elapsed = elapsed_before + time.perf_counter() - started
        if step % config.log_every == 0 or step == config.max_steps:
            last = _reduce_window(window, ctx)
            window = {}
            if ctx.is_main:
                record = {"step": step, "lr": lr, "epoch": batches.plan.epoch_of(step * accum - 1), **last,
                          "elapsed_s": round(elapsed, 3)}
                with open(metrics_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}")
        progress.update(1)
        if step % config.save_every == 0 or step == config.max_steps:
            trainer_state = {
                "step": step,
                "micro_batch": step * accum,
                "epoch": batches.plan.epoch_of(step * accum - 1),
                "world_size": ctx.world_size,
                "batch_size": config.batch_size,
                "grad_accum_steps": accum,
                "param_names": [n for n, _ in trainable_parameters(model)],
                "elapsed_s": elapsed,
                "stage": task.name,
                "lusifer_version": __version__,
            }
            last_checkpoint = save_checkpoint(run_dir, model, optimizer, trainer_state, config, ctx,
                                              config.keep_checkpoints)
        if on_step_end is not None:
            on_step_end(step, last)
    progress.close()
    del data, loader

    final_checkpoint = latest_checkpoint(run_dir)
    if final_checkpoint is None:
        raise TrainingError(f"no checkpoint was written to {run_dir / CHECKPOINTS_DIR}")
    del model, optimizer, params, batches
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    outputs = task.finish(config, final_checkpoint, ctx)
    if ctx.is_main:
        final = {"stage": task.name, "step": step, "checkpoint": str(final_checkpoint), **outputs,
                 "metrics": last}
        write_text_atomic(run_dir / FINAL_FILE, json.dumps(final, indent=2) + "\n")  # whole or absent
    ctx.barrier()
    return TrainResult(run_dir, final_checkpoint, step, last, outputs)
