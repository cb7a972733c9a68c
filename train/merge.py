"""Merging LoRA into the base weights and writing a standalone ``LusiferModel`` folder.

The merged folder is an ordinary ``save_pretrained`` folder: it loads with ``LusiferModel.from_pretrained``
without peft. Before saving, the merged model's embeddings are checked against the unmerged model's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lusifer.backbones import set_attention_causal
from lusifer.modeling import LusiferModel
from lusifer.train.checkpoint import (
    CHECKPOINTS_DIR,
    FINAL_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    latest_checkpoint,
    load_weights,
    read_checkpoint_config,
)
from lusifer.train.config import TrainConfig
from lusifer.train.distributed import resolve_device
from lusifer.train.lora import merge_lora
from lusifer.train.model_setup import build_stage_model
from lusifer.vectors import row_cosines

logger = logging.getLogger(__name__)

MIN_MERGE_COSINE = 0.9999
# a few short texts, several scripts: embeddings before and after merging must agree on all of them
VERIFY_TEXTS = [
    "The cat sleeps on the warm windowsill.",
    "How many languages are spoken in the world today?",
    "El gato duerme en la ventana.",
    "Кошка спит на тёплом подоконнике.",
    "猫在温暖的窗台上睡觉。",
    "A",
]


class MergeError(RuntimeError):
    """The source is not a finished run or checkpoint, or the merged model does not match the unmerged one."""


@dataclass
class MergeReport:
    """What :func:`merge_checkpoint` did."""

    output: Path
    checkpoint: Path
    stage: str
    merged: list[str]
    min_cosine: float | None


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint folder as is; a run folder -> its final checkpoint (the run must have finished)."""
    folder = Path(source)
    if (folder / STATE_FILE).is_file():
        return folder
    if (folder / CHECKPOINTS_DIR).is_dir():
        final = folder / FINAL_FILE
        if final.is_file():
            checkpoint = Path(json.loads(final.read_text(encoding="utf-8"))["checkpoint"])
            if not checkpoint.is_absolute():
                checkpoint = folder / checkpoint
            if not (checkpoint / STATE_FILE).is_file():
                raise MergeError(f"{final} names checkpoint {str(checkpoint)!r}, which is missing")
            return checkpoint
        latest = latest_checkpoint(folder)
        raise MergeError(
            f"the run in {str(folder)!r} has not finished (no {FINAL_FILE}; latest checkpoint: {latest}); "
            "pass a checkpoint folder to merge it anyway"
        )
    raise MergeError(f"{str(folder)!r} is neither a training run folder nor a checkpoint folder")


def model_from_checkpoint(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LusiferModel, TrainConfig]:
    """Rebuild a checkpoint's model (base weights, LoRA, trained weights) in float32, unmerged, in eval mode."""
    folder = Path(checkpoint)
    config = read_checkpoint_config(folder)
    config = config.replace(model_dtype="float32", gradient_checkpointing=False, device="auto", precision="auto")
    device = resolve_device(device) if device in ("auto", "cpu", "cuda") else torch.device(device)
    if config.stage not in ("stage1", "stage2"):
        raise MergeError(f"unknown stage {config.stage!r} in {folder}; expected stage1 or stage2")
    model = build_stage_model(config, device)
    load_weights(model, folder / WEIGHTS_FILE)
    set_attention_causal(model.llm, False)
    model.eval()
    return model, config


def merge_model(model: LusiferModel, verify: bool = True) -> tuple[list[str], float | None]:
    """Merge the LoRA of ``model`` in place (bidirectional attention, eval mode), checking embeddings.

    Returns:
        ``(merged backbone names, min cosine between unmerged and merged embeddings or None)``.
    """
    set_attention_causal(model.llm, False)
    model.eval()
    texts = VERIFY_TEXTS
    before = {kind: model.encode(texts, kind=kind, normalize=False) for kind in ("query", "document")} if verify else None
    merged = merge_lora(model)
    model.requires_grad_(False)
    set_attention_causal(model.llm, False)
    min_cos = None
    if verify:
        min_cos = min(float(row_cosines(before[k], model.encode(texts, kind=k, normalize=False)).min()) for k in before)
        if min_cos < MIN_MERGE_COSINE:
            raise MergeError(f"merged embeddings differ from unmerged ones: min cosine {min_cos:.6f} < {MIN_MERGE_COSINE}")
    return merged, min_cos


def merge_checkpoint(source: str | os.PathLike, out: str | os.PathLike, device: str = "cpu",
                     verify: bool = True) -> MergeReport:
    """Merge a run's final checkpoint (or a given checkpoint) into a standalone ``LusiferModel`` folder.

    Args:
        source: A run folder (``output_dir`` of a finished run) or a checkpoint folder.
        out: The folder to write (replaced atomically by ``save_pretrained``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch device string.
        verify: Compare merged and unmerged embeddings (cosine must exceed 0.9999).
    """
    checkpoint = resolve_checkpoint(source)
    model, config = model_from_checkpoint(checkpoint, device)
    merged, min_cos = merge_model(model, verify)
    model.to("cpu")
    saved = model.save_pretrained(out)
    logger.info("merged %s of %s into %s", ", ".join(merged) or "nothing", checkpoint, saved)
    return MergeReport(saved, checkpoint, config.stage, merged, min_cos)
