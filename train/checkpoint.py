"""Resumable checkpoints: trainable weights (safetensors), optimizer, step, data position, RNG, config.

Layout of ``OUTPUT_DIR/checkpoints/step-NNNNNNNN/``:

- ``weights.safetensors``: every trainable parameter (LoRA, connector, projection) plus the connector and
  projection even where frozen, keyed by ``LusiferModel.named_parameters()`` names, so it loads onto a
  freshly built model of the same stage and config.
- ``optimizer.pt``: ``torch.save`` of the AdamW state (tensors and numbers only; read with ``weights_only=True``).
- ``rng-rank{R}.pt``: Python, NumPy, torch CPU and CUDA generator states of each process.
- ``trainer_state.json``: step, micro-batch counter, epoch, process layout, parameter names.
- ``config.json``: the training config (absolute paths).

A checkpoint is written under a ``.partial`` name and renamed when complete, so a folder named
``step-*`` is always whole.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lusifer._version import __version__
from lusifer.train.config import TrainConfig, config_from_saved
from lusifer.train.distributed import DistContext

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
FINAL_FILE = "final.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
OWN_PREFIXES = ("connector.", "projection.")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match the model or run it is loaded into."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def weight_names(model: nn.Module) -> list[str]:
    """Names of the parameters a checkpoint holds: trainable ones plus the connector and projection."""
    return [n for n, p in model.named_parameters() if p.requires_grad or n.startswith(OWN_PREFIXES)]


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    state = {n: params[n].detach().to("cpu", copy=True).contiguous() for n in weight_names(model)}
    save_file(state, str(path), metadata={"format": "pt", "lusifer": __version__})


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load checkpoint weights onto a model built the same way; every name must match."""
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint weights {str(file)!r} do not exist")
    state = load_file(str(file))
    expected = set(weight_names(model))
    params = dict(model.named_parameters())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} (was it written by another stage "
            "or LoRA config?)"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(params[name].shape)}")
            params[name].copy_(tensor.to(params[name].dtype))


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, sorted by step."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    file = Path(checkpoint) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{str(checkpoint)!r} is not a checkpoint folder ({STATE_FILE} is missing)")
    return json.loads(file.read_text(encoding="utf-8"))


def read_checkpoint_config(checkpoint: str | os.PathLike) -> TrainConfig:
    file = Path(checkpoint) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{str(checkpoint)!r} is not a checkpoint folder ({CONFIG_FILE} is missing)")
    return config_from_saved(json.loads(file.read_text(encoding="utf-8")))


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    config: TrainConfig,
    ctx: DistContext,
    keep: int,
) -> Path:
    """Write a complete checkpoint of step ``trainer_state["step"]`` (all ranks call this) and prune old ones."""
    step = int(trainer_state["step"])
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    staging = root / f".{checkpoint_name(step)}.partial"
    if ctx.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    ctx.barrier()
    torch.save(rng_state(), staging / f"rng-rank{ctx.rank}.pt")
    if ctx.is_main:
        save_weights(model, staging / WEIGHTS_FILE)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        config.to_json(staging / CONFIG_FILE)
        (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")
    ctx.barrier()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for old_step, old in list_checkpoints(run_dir)[:-keep]:
            if old_step != step:
                shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(
    checkpoint: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
) -> dict[str, Any]:
    """Restore weights and optimizer (RNG: :func:`restore_rng`); returns the trainer state."""
    folder = Path(checkpoint)
    state = read_trainer_state(folder)
    if state.get("world_size", 1) != ctx.world_size:
        raise CheckpointError(
            f"{folder} was written by {state.get('world_size')} process(es), this run has {ctx.world_size}: "
            "resume with the same number of processes"
        )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if state.get("param_names") != names:
        raise CheckpointError(f"{folder}: the trainable parameters differ from this model's (another stage or LoRA config?)")
    rng_file = folder / f"rng-rank{ctx.rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{folder} has no RNG state for rank {ctx.rank} ({rng_file.name})")
    load_weights(model, folder / WEIGHTS_FILE)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location=ctx.device, weights_only=True))
    return state


def restore_rng(checkpoint: str | os.PathLike, ctx: DistContext) -> None:
    """Restore this rank's generators as they were when ``checkpoint`` was written."""
    set_rng_state(torch.load(Path(checkpoint) / f"rng-rank{ctx.rank}.pt", map_location="cpu", weights_only=True))
