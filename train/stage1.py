"""Stage 1, cross-lingual alignment: the frozen LLM reproduces or continues what the encoder read.

Trainable: the encoder's LoRA and the connector (with its learnable tokens). The LLM is trained with shifted
next-token cross-entropy on its own tokenization of the target; connector positions and padding are
unlabelled. Reconstruction and completion records share this form and may be mixed in one batch.

Two objectives (``Stage1Config.objective``):

- ``"current"``: the encoder reads masked text (``mask_ratio``); the LLM runs with CAUSAL attention over
  ``[connector outputs ; target tokens]``.
- ``"reference"`` (the authors' code): the encoder reads the clean text after a reconstruction instruction; the
  LLM runs BIDIRECTIONALLY over ``[bos ; connector outputs ; target tokens]`` with a share of the target tokens
  replaced by its mask token and a share of the target positions removed from the attention mask (a removed
  position keeps its position id and its label).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from lusifer.backbones import decoder_position_ids, set_attention_causal
from lusifer.modeling import LusiferModel
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.collate import Stage1Collator, Stage1ReferenceCollator
from lusifer.train.config import Stage1Config
from lusifer.train.data import load_examples_for_run
from lusifer.train.distributed import DistContext
from lusifer.train.losses import IGNORE_INDEX, next_token_losses
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


def pack_reference_inputs(
    lead_embeds: torch.Tensor,
    prefix: torch.Tensor,
    prefix_mask: torch.Tensor,
    target_embeds: torch.Tensor,
    target_ids: torch.Tensor,
    target_mask: torch.Tensor,
    target_attention: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out each row as ``[lead (bos) ; real prefix positions ; real target tokens ; padding]``.

    Args:
        lead_embeds: LLM embeddings of the tokens before the connector output (B, K, H), K = 1 (bos) or 0.
        prefix: Connector output (B, P, H).
        prefix_mask: (B, P), 1 on real positions.
        target_embeds: LLM input embeddings of the (partly masked) target tokens (B, T, H).
        target_ids: (B, T) the original target token ids (the labels).
        target_mask: (B, T), 1 on real target tokens.
        target_attention: (B, T), ``target_mask`` without the positions removed from the attention mask.

    Returns:
        ``(inputs_embeds, attention_mask, position_ids, labels)``, each (B, K+P+T[, H]), right-padded: the
        attention mask lacks the removed target positions, the position ids number every real position
        (removed ones included) from 0, the labels are the target ids on real target positions and ``-100``
        elsewhere (not yet shifted).
    """
    batch, lead = lead_embeds.shape[:2]
    ones = torch.ones((batch, lead), dtype=target_mask.dtype, device=target_mask.device)
    embeds = torch.cat([lead_embeds.to(prefix.dtype), prefix, target_embeds.to(prefix.dtype)], dim=1)
    real = torch.cat([ones, prefix_mask.to(target_mask.dtype), target_mask], dim=1)
    attend = torch.cat([ones, prefix_mask.to(target_mask.dtype), target_attention.to(target_mask.dtype)], dim=1)
    unlabelled = torch.full((batch, lead + prefix_mask.shape[1]), IGNORE_INDEX, dtype=torch.long, device=prefix.device)
    labels = torch.cat([unlabelled, target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)], dim=1)
    order = torch.argsort((real == 0).to(torch.int8), dim=1, stable=True)
    embeds = embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    real = real.gather(1, order)
    return embeds, attend.gather(1, order), decoder_position_ids(real), labels.gather(1, order)


def reference_token_losses(model: LusiferModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token losses of the reference objective (see :class:`Stage1ReferenceCollator`).

    Returns:
        ``(losses (N,), row (N,))``: one loss per labelled target token, and the batch row it belongs to.
    """
    prefix, prefix_mask = model.llm_inputs(batch["input_ids"], batch["attention_mask"])
    embed = model.llm.get_input_embeddings()
    embeds, attend, positions, labels = pack_reference_inputs(
        embed(batch["lead_ids"]), prefix, prefix_mask, embed(batch["llm_input_ids"]), batch["target_ids"],
        batch["target_mask"], batch["llm_attention"],
    )
    states = model.decoder_states(embeds, attend, position_ids=positions)
    shifted = labels[:, 1:]
    selected = shifted != IGNORE_INDEX
    logits = model.llm.get_output_embeddings()(states[:, :-1][selected])
    losses = next_token_losses(logits, shifted[selected])
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(shifted)[selected]
    return losses, rows


def llm_mask_token_id(llm_tokenizer) -> int | None:
    """The LLM's mask token id, else its unk token id (as the reference does), else ``None``."""
    for token_id in (llm_tokenizer.mask_token_id, llm_tokenizer.unk_token_id):
        if token_id is not None:
            return int(token_id)
    return None


class Stage1Task:
    """The stage-1 plug-in of the training loop; :meth:`build_model` takes the objective from the config."""

    name = "stage1"
    objective = "current"

    def build_model(self, config: Stage1Config, device: torch.device) -> LusiferModel:
        self.objective = config.objective
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
        common = dict(
            tokenizer=model.tokenizer,
            llm_tokenizer=llm_tokenizer,
            model_config=model.config,
            max_length=config.max_length or model.config.max_length,
            max_target_length=config.max_target_length,
            add_eos=config.add_eos,
            seed=config.seed,
        )
        if config.objective == "reference":
            collate = Stage1ReferenceCollator(
                **common,
                llm_mask_id=self._llm_mask_id(model, llm_tokenizer),
                mask_probability=config.llm_mask_probability,
                attention_drop_probability=config.llm_attention_drop_probability,
            )
            if llm_tokenizer.bos_token_id is None:
                logger.warning("the LLM tokenizer has no BOS token: the LLM input starts with the connector output")
        else:
            collate = Stage1Collator(**common, mask_ratio=config.mask_ratio)
        return MicroBatches(examples, plan, collate)

    @staticmethod
    def _llm_mask_id(model: LusiferModel, llm_tokenizer) -> int | None:
        mask_id = llm_mask_token_id(llm_tokenizer)  # None: the collator refuses llm_mask_probability > 0
        rows = int(model.llm.get_input_embeddings().weight.shape[0])
        if mask_id is not None and mask_id >= rows:
            raise ValueError(f"the LLM's mask token id {mask_id} is outside its embedding table ({rows} rows)")
        return mask_id

    def start(self, model: LusiferModel) -> None:
        set_attention_causal(model.llm, self.objective == "current")

    def forward_backward(self, model: LusiferModel, batch: dict[str, torch.Tensor], loss_scale: float,
                         ctx: DistContext) -> Metrics:
        token_losses = reference_token_losses if self.objective == "reference" else reconstruction_token_losses
        with ctx.autocast():
            losses, rows = token_losses(model, batch)
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
