"""Stage 2, representation finetuning: contrastive loss with in-batch and hard negatives.

Trainable: LoRA on the LLM and the encoder, the connector and the projection (an ``llm-only`` model, the LLM
alone reading its own tokens, has LoRA on the LLM and the projection only). The LLM attends
bidirectionally and embeddings are mean-pooled, exactly as at embedding time (``LusiferModel.forward``).
Across processes, embeddings are gathered so every query sees the negatives of the whole global batch;
each process computes the global loss with gradients flowing into its own slice, so the averaged gradients
equal those of a single process holding the whole batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lusifer.backbones import set_attention_causal
from lusifer.modeling import LusiferModel
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.collate import Stage2Collator
from lusifer.train.config import Stage2Config
from lusifer.train.data import load_examples_for_run
from lusifer.train.distributed import DistContext, gather_with_grad
from lusifer.train.gradcache import backward_through_chunks, embed_without_graph
from lusifer.train.losses import contrastive_loss
from lusifer.train.loop import Metrics, TrainResult, run_training
from lusifer.train.model_setup import build_stage_model

logger = logging.getLogger(__name__)


def global_contrastive_loss(q: torch.Tensor, docs: torch.Tensor, temperature: float,
                            ctx: DistContext) -> tuple[torch.Tensor, int]:
    """Contrastive loss over the global batch; ``docs`` holds this rank's positives (first ``len(q)`` rows)
    then its hard negatives.

    Returns:
        ``(loss, candidates)``: the loss and the number of documents every query is scored against.
    """
    batch = q.shape[0]
    q_all = gather_with_grad(q, ctx)
    p_all = gather_with_grad(docs[:batch], ctx)
    n_all = gather_with_grad(docs[batch:], ctx)
    loss = contrastive_loss(q_all, p_all, n_all if n_all.shape[0] else None, temperature)
    return loss, p_all.shape[0] + n_all.shape[0]


class Stage2Task:
    """The stage-2 plug-in of the training loop."""

    name = "stage2"

    def __init__(self) -> None:
        self.temperature = 0.05
        self.chunk_size: int | None = None

    def build_model(self, config: Stage2Config, device: torch.device) -> LusiferModel:
        self.temperature = config.temperature
        self.chunk_size = config.grad_cache_chunk_size
        return build_stage_model(config, device)

    def build_batches(self, config: Stage2Config, model: LusiferModel, ctx: DistContext) -> MicroBatches:
        examples = load_examples_for_run(config, ctx)
        plan = BatchPlan(len(examples), config.batch_size, ctx.world_size, ctx.rank, config.seed)
        collate = Stage2Collator(
            tokenizer=model.tokenizer,
            model_config=model.config,
            max_length=config.max_length or model.config.max_length,
            num_hard_negatives=config.num_hard_negatives,
            instruct_documents=config.instruct_documents,
            seed=config.seed,
        )
        return MicroBatches(examples, plan, collate)

    def start(self, model: LusiferModel) -> None:
        set_attention_causal(model.llm, False)

    def forward_backward(self, model: LusiferModel, batch: dict[str, torch.Tensor], loss_scale: float,
                         ctx: DistContext) -> Metrics:
        # each rank's gradient is d(global loss)/d(its slice); the loop averages over ranks, hence * world_size
        scale = loss_scale * ctx.world_size
        qi, qm, di, dm = batch["query_ids"], batch["query_mask"], batch["doc_ids"], batch["doc_mask"]
        if self.chunk_size is None:
            with ctx.autocast():
                q = model(qi, qm)
                d = model(di, dm)
            loss, candidates = global_contrastive_loss(q.float(), d.float(), self.temperature, ctx)
            (loss * scale).backward()
        else:
            q, q_rng = embed_without_graph(model, qi, qm, self.chunk_size, ctx.autocast)
            d, d_rng = embed_without_graph(model, di, dm, self.chunk_size, ctx.autocast)
            q.requires_grad_(True)
            d.requires_grad_(True)
            loss, candidates = global_contrastive_loss(q, d, self.temperature, ctx)
            (loss * scale).backward()
            backward_through_chunks(model, qi, qm, self.chunk_size, q.grad, q_rng, ctx.autocast)
            backward_through_chunks(model, di, dm, self.chunk_size, d.grad, d_rng, ctx.autocast)
        return {"loss": (loss.item(), 1.0), "candidates": (float(candidates), 1.0)}

    def finish(self, config: Stage2Config, final_checkpoint: Path, ctx: DistContext) -> dict:
        logger.info("stage 2 done; merge LoRA with: lusifer-train merge %s --out MERGED_DIR", config.output_dir)
        return {}


def train_stage2(config: Stage2Config, on_step_end=None) -> TrainResult:
    """Run stage 2 (see :class:`lusifer.train.config.Stage2Config`); merge the result with
    :func:`lusifer.train.merge.merge_checkpoint` (``lusifer-train merge``)."""
    return run_training(Stage2Task(), config, on_step_end)
