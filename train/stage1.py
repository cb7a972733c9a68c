"""Stage 1, cross-lingual alignment: the frozen LLM reproduces or continues what the encoder read.

Trainable: the encoder's LoRA and the connector (with its learnable tokens). The LLM runs with CAUSAL
attention over ``[connector outputs ; target tokens]`` and is trained with next-token cross-entropy on its
own tokenization of the target; connector positions and padding are unlabelled. Both objectives (masked
reconstruction and autoregressive completion) share this form and may be mixed in one batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from lusifer.backbones import set_attention_causal
from lusifer.modeling import LusiferModel
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.collate import Stage1Collator
from lusifer.train.config import Stage1Config
from lusifer.train.data import load_examples_for_run
from lusifer.train.distributed import DistContext
from lusifer.train.losses import IGNORE_INDEX
from lusifer.train.loop import Metrics, TrainResult, run_training
from lusifer.train.merge import merge_checkpoint
from lusifer.train.model_setup import build_stage_model

logger = logging.getLogger(__name__)

MERGED_MODEL_DIR = "model"


def pack_prefix_and_target(
    prefix: torch.Tensor,
    prefix_mask: torch.Tensor,
    target_embeds: torch.Tensor,
    target_ids: torch.Tensor,
    target_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out each row as its real prefix positions, then its real target tokens, then padding.

    The connector output may have holes (padding between the mapped text and the learnable tokens); packing
    removes them so that the first target token directly follows the last real prefix position.

    Args:
        prefix: Connector output (B, P, H).
        prefix_mask: (B, P), 1 on real positions.
        target_embeds: LLM input embeddings of the target tokens (B, T, H).
        target_ids: (B, T) target token ids.
        target_mask: (B, T), 1 on real target tokens.

    Returns:
        ``(inputs_embeds (B, P+T, H), attention_mask (B, P+T), labels (B, P+T))``, right-padded; labels
        are the token ids on target positions and ``-100`` elsewhere (not yet shifted).
    """
    embeds = torch.cat([prefix, target_embeds.to(prefix.dtype)], dim=1)
    mask = torch.cat([prefix_mask.to(target_mask.dtype), target_mask], dim=1)
    prefix_labels = torch.full(prefix_mask.shape, IGNORE_INDEX, dtype=torch.long, device=prefix.device)
    labels = torch.cat([prefix_labels, target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)], dim=1)
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)
    embeds = embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return embeds, mask.gather(1, order), labels.gather(1, order)


def reconstruction_token_losses(model: LusiferModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token losses of the targets given the encoder input.

    Returns:
        ``(losses (N,), row (N,))``: one loss per labelled target token, and the batch row it belongs to.
    """
    prefix, prefix_mask = model.llm_inputs(batch["input_ids"], batch["attention_mask"])
    target_embeds = model.llm.get_input_embeddings()(batch["target_ids"])
    embeds, mask, labels = pack_prefix_and_target(
        prefix, prefix_mask, target_embeds, batch["target_ids"], batch["target_mask"]
    )
    states = model.decoder_states(embeds, mask)
    shifted = labels[:, 1:]
    selected = shifted != IGNORE_INDEX
    logits = model.llm.get_output_embeddings()(states[:, :-1][selected])
    losses = F.cross_entropy(logits.float(), shifted[selected], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(shifted)[selected]
    return losses, rows


class Stage1Task:
    """The stage-1 plug-in of the training loop."""

    name = "stage1"

    def build_model(self, config: Stage1Config, device: torch.device) -> LusiferModel:
        return build_stage_model(config, device)

    def build_batches(self, config: Stage1Config, model: LusiferModel, ctx: DistContext) -> MicroBatches:
        llm_tokenizer = model.load_llm_tokenizer()
        if llm_tokenizer is None:
            raise ValueError(
                f"stage 1 needs the LLM's tokenizer, but the LLM folder {model.config.llm_path!r} has none "
                "(add its tokenizer.json / tokenizer_config.json)"
            )
        if config.mask_ratio > 0 and model.tokenizer.mask_token_id is None:
            raise ValueError(
                f"mask_ratio={config.mask_ratio} but the encoder tokenizer has no mask token; set mask_ratio=0"
            )
        examples = load_examples_for_run(config, ctx)
        plan = BatchPlan(len(examples), config.batch_size, ctx.world_size, ctx.rank, config.seed)
        collate = Stage1Collator(
            tokenizer=model.tokenizer,
            llm_tokenizer=llm_tokenizer,
            model_config=model.config,
            max_length=config.max_length or model.config.max_length,
            max_target_length=config.max_target_length,
            mask_ratio=config.mask_ratio,
            add_eos=config.add_eos,
            seed=config.seed,
        )
        return MicroBatches(examples, plan, collate)

    def start(self, model: LusiferModel) -> None:
        set_attention_causal(model.llm, True)

    def forward_backward(self, model: LusiferModel, batch: dict[str, torch.Tensor], loss_scale: float,
                         ctx: DistContext) -> Metrics:
        with ctx.autocast():
            losses, rows = reconstruction_token_losses(model, batch)
        (losses.mean() * loss_scale).backward()
        losses = losses.detach()
        completion = batch["completion"][rows]
        return {
            "loss": (losses.sum().item(), float(losses.numel())),
            "loss_reconstruction": (losses[~completion].sum().item(), float((~completion).sum().item())),
            "loss_completion": (losses[completion].sum().item(), float(completion.sum().item())),
        }

    def finish(self, config: Stage1Config, final_checkpoint: Path, ctx: DistContext) -> dict:
        out = Path(config.output_dir) / MERGED_MODEL_DIR
        if ctx.is_main:
            report = merge_checkpoint(final_checkpoint, out, device=str(ctx.device))
            logger.info("stage 1 model (LoRA merged, bidirectional) saved to %s (min cosine %.6f)", out,
                        report.min_cosine)
        ctx.barrier()
        return {"model": str(out)}


def train_stage1(config: Stage1Config, on_step_end=None) -> TrainResult:
    """Run stage 1 (see :class:`lusifer.train.config.Stage1Config`); the merged model lands in
    ``OUTPUT_DIR/model``."""
    return run_training(Stage1Task(), config, on_step_end)
