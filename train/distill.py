"""Stage-2 distillation towards the encoder's own embedding (an addition to the paper).

By default the teacher is the model's own encoder with its LoRA adapters disabled (peft's
``disable_adapter()``), in eval mode and without gradients: no second copy of the encoder is loaded. A
stage-2 run starting from stage 1's merged model therefore distils towards the stage-1 encoder (the base
encoder with stage 1's LoRA merged in), not towards the encoder as first released; ``distill_teacher_path``
loads a separate frozen encoder (e.g. mE5-small as released) instead. The teacher reads the raw texts with
the encoder's usual prefix and pooling (E5: ``"query: "``, mean pooling), like the evaluation's
``EncoderEmbedder``.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Callable

import torch

from lusifer.backbones import encoder_position_ids, load_encoder
from lusifer.extras import require
from lusifer.modeling import LusiferModel
from lusifer.pooling import mean_pool
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.distributed import DistContext, gather_with_grad
from lusifer.train.lora import is_lora_wrapped
from lusifer.train.losses import similarity_distillation_loss


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``"mean"`` over real tokens, or ``"cls"``: the first real token (whatever the padding side); float32."""
    if pooling == "mean":
        return mean_pool(states, mask)
    if pooling == "cls":
        first = mask.to(torch.int64).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), first].float()
    raise ValueError(f"pooling={pooling!r}; expected mean or cls")


def load_teacher(path: str, device: torch.device, dtype: torch.dtype | None = None):
    """A separate frozen teacher encoder and its tokenizer from a plain encoder folder (safetensors only).

    Returns:
        ``(encoder in eval mode without gradients, on device, its tokenizer)``.
    """
    transformers = require("transformers", purpose="load the distillation teacher")
    encoder = load_encoder(path, dtype=dtype).to(device).eval()
    encoder.requires_grad_(False)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"distill_teacher_path={path!r} has no usable tokenizer: {exc}") from exc
    return encoder, tokenizer


def model_teacher(model: LusiferModel) -> torch.nn.Module:
    """The model's own encoder as teacher (its LoRA is disabled by :func:`teacher_embeddings`)."""
    if model.encoder is None:
        raise ValueError("distillation needs the model's encoder, but this model (architecture 'llm-only') has none; "
                         "set distill_teacher_path to an encoder folder")
    return model.encoder


def teacher_embeddings(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pooling: str = "mean",
                       chunk_size: int | None = None, autocast: Callable = nullcontext) -> torch.Tensor:
    """The teacher's embeddings of already tokenized texts: LoRA (if any) disabled, eval mode, no gradients.

    Args:
        encoder: The teacher: the model's own encoder (a peft ``PeftModel`` when it has LoRA) or a separate one.
        ids: (N, T) teacher token ids (the teacher's prefix included).
        mask: (N, T) attention mask.
        pooling: ``"mean"`` or ``"cls"``.
        chunk_size: Texts per forward pass (``None``: all at once).
        autocast: A no-argument context factory (the run's mixed precision).

    Returns:
        (N, encoder hidden size) float32 embeddings, not normalised, without a graph.
    """
    was_training = encoder.training
    encoder.eval()  # no dropout: the teacher is deterministic and draws nothing from the RNG
    out = []
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if is_lora_wrapped(encoder):
                stack.enter_context(encoder.disable_adapter())
            step = chunk_size or ids.shape[0]
            for start in range(0, ids.shape[0], step):
                part_ids, part_mask = ids[start : start + step], mask[start : start + step]
                with autocast():
                    states = encoder(input_ids=part_ids, attention_mask=part_mask,
                                     position_ids=encoder_position_ids(part_mask, encoder.config)).last_hidden_state
                out.append(pool(states, part_mask, pooling).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def global_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float,
                             ctx: DistContext) -> torch.Tensor:
    """The distillation loss over the texts of the global batch (every rank's rows gathered, gradients into
    this rank's own rows), as the contrastive loss is computed over the global batch."""
    return similarity_distillation_loss(gather_with_grad(student, ctx), gather_with_grad(teacher, ctx), kind,
                                        temperature)


class DistillBatches(torch.utils.data.Dataset):
    """Stage-2 micro-batches plus their extra distillation texts: item ``m`` is micro-batch ``m`` of
    ``batches``, collated with the texts of micro-batch ``m`` of ``plan`` over ``texts``.

    The extra texts follow their own seeded per-epoch order, a pure function of the micro-batch index (like
    the training records), so resuming and data parallelism see the same texts as an uninterrupted single
    process with the global batch.

    Args:
        batches: The stage-2 micro-batches (their collator has ``teacher_prefix`` set).
        texts: A ``datasets.Dataset`` with a ``text`` column, or ``None`` (no extra texts).
        plan: Which texts form each micro-batch (``None`` with ``texts=None``).
    """

    def __init__(self, batches: MicroBatches, texts=None, plan: BatchPlan | None = None):
        self.batches = batches
        self.plan = batches.plan  # the training loop reads the epoch from the main plan
        self.texts = texts
        self.extra_plan = plan

    def __getitem__(self, micro_batch: int) -> dict:
        rows, keys = self.batches.rows(micro_batch)
        extra = None
        if self.extra_plan is not None:
            extra = self.texts[[index for _, index in self.extra_plan.keys(micro_batch)]]["text"]
        return self.batches.collate(rows, keys, extra)

    def __len__(self) -> int:  # nominal, as MicroBatches
        return len(self.batches)
