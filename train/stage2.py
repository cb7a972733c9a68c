"""Stage 2, representation finetuning: contrastive loss with in-batch and hard negatives.

Trainable: LoRA on the LLM and the encoder, the connector and the projection (an ``llm-only`` model, the LLM
alone reading its own tokens, has LoRA on the LLM and the projection only). The LLM attends
bidirectionally and embeddings are mean-pooled, exactly as at embedding time (``LusiferModel.forward``).
Across processes, embeddings are gathered so every query sees the negatives of the whole global batch;
each process computes the global loss with gradients flowing into its own slice, so the averaged gradients
equal those of a single process holding the whole batch.

Optionally (``distill_weight > 0``, an addition to the paper), a distillation term pulls the in-batch
similarity structure of the LUSIFER vectors towards the encoder's own (``lusifer.train.distill``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lusifer.backbones import set_attention_causal
from lusifer.modeling import LusiferModel
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.collate import Stage2Collator
from lusifer.train.config import ConfigError, Stage2Config
from lusifer.train.data import DISTILL, load_examples_for_run
from lusifer.train.distill import (
    DistillBatches,
    global_distillation_loss,
    load_teacher,
    model_teacher,
    teacher_embeddings,
)
from lusifer.train.distributed import DistContext, gather_with_grad
from lusifer.train.gradcache import backward_through_chunks, embed_without_graph
from lusifer.train.losses import contrastive_loss
from lusifer.train.loop import Metrics, TrainResult, run_training
from lusifer.train.model_setup import DTYPES, build_stage_model

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
        self.config: Stage2Config | None = None
        self.teacher: torch.nn.Module | None = None  # a separate teacher encoder (distill_teacher_path)
        self.teacher_tokenizer = None

    def build_model(self, config: Stage2Config, device: torch.device) -> LusiferModel:
        self.temperature = config.temperature
        self.chunk_size = config.grad_cache_chunk_size
        self.config = config
        if config.distill:
            config.check_distill_files()  # before any weights load
        model = build_stage_model(config, device)
        if config.distill and model.encoder is None and not config.distill_teacher_path:
            raise ConfigError(f"distill_weight={config.distill_weight} but the starting model {config.model_path!r} "
                              "(architecture 'llm-only') has no encoder to distil from; set distill_teacher_path to "
                              "an encoder folder or distill_weight=0")
        if config.distill_teacher_path:
            self.teacher, self.teacher_tokenizer = load_teacher(config.distill_teacher_path, device,
                                                                DTYPES[config.model_dtype])
        return model

    def build_batches(self, config: Stage2Config, model: LusiferModel, ctx: DistContext):
        examples = load_examples_for_run(config, ctx)
        plan = BatchPlan(len(examples), config.batch_size, ctx.world_size, ctx.rank, config.seed)
        collate = Stage2Collator(
            tokenizer=model.tokenizer,
            model_config=model.config,
            max_length=config.max_length or model.config.max_length,
            num_hard_negatives=config.num_hard_negatives,
            instruct_documents=config.instruct_documents,
            seed=config.seed,
            teacher_prefix=config.distill_teacher_prefix if config.distill else None,
            teacher_tokenizer=self.teacher_tokenizer,
        )
        batches = MicroBatches(examples, plan, collate)
        if not config.distill:
            return batches
        if not config.distill_files:
            return DistillBatches(batches)
        texts = load_examples_for_run(config, ctx, config.distill_files, DISTILL)
        wanted = config.distill_batch_size * ctx.world_size
        if len(texts) < wanted:
            raise ConfigError(
                f"distill_files hold {len(texts)} texts, fewer than one global distillation batch of {wanted} "
                f"(distill_batch_size={config.distill_batch_size} x {ctx.world_size} process(es)); add texts or "
                "lower distill_batch_size"
            )
        return DistillBatches(batches, texts, BatchPlan(len(texts), config.distill_batch_size, ctx.world_size,
                                                        ctx.rank, config.seed))

    def start(self, model: LusiferModel) -> None:
        set_attention_causal(model.llm, False)

    def forward_backward(self, model: LusiferModel, batch: dict[str, torch.Tensor], loss_scale: float,
                         ctx: DistContext) -> Metrics:
        # each rank's gradient is d(global loss)/d(its slice); the loop averages over ranks, hence * world_size
        scale = loss_scale * ctx.world_size
        config = self.config
        distill = config is not None and config.distill
        inputs = [(batch["query_ids"], batch["query_mask"]), (batch["doc_ids"], batch["doc_mask"])]
        if distill and "distill_ids" in batch:  # the extra distillation texts (distill_files)
            inputs.append((batch["distill_ids"], batch["distill_mask"]))
        teacher = None
        if distill:
            teacher = teacher_embeddings(self.teacher or model_teacher(model), batch["teacher_ids"],
                                         batch["teacher_mask"], config.distill_teacher_pooling, self.chunk_size,
                                         ctx.autocast)
        if self.chunk_size is None:
            with ctx.autocast():
                embeddings = [model(ids, mask).float() for ids, mask in inputs]
        else:
            cached = [embed_without_graph(model, ids, mask, self.chunk_size, ctx.autocast) for ids, mask in inputs]
            embeddings = [emb.requires_grad_(True) for emb, _ in cached]
        q, d = embeddings[0], embeddings[1]
        loss, candidates = global_contrastive_loss(q, d, self.temperature, ctx)
        metrics = {"loss": (loss.item(), 1.0), "candidates": (float(candidates), 1.0)}
        if distill:
            distill_loss = global_distillation_loss(torch.cat(embeddings), teacher, config.distill_loss,
                                                    config.distill_temperature, ctx)
            metrics["loss_contrastive"] = metrics["loss"]
            metrics["loss_distill"] = (distill_loss.item(), 1.0)
            loss = loss + config.distill_weight * distill_loss
            metrics["loss"] = (loss.item(), 1.0)
        (loss * scale).backward()
        if self.chunk_size is not None:
            for (ids, mask), emb, (_, rng) in zip(inputs, embeddings, cached):
                backward_through_chunks(model, ids, mask, self.chunk_size, emb.grad, rng, ctx.autocast)
        return metrics

    def finish(self, config: Stage2Config, final_checkpoint: Path, ctx: DistContext) -> dict:
        logger.info("stage 2 done; merge LoRA with: lusifer-train merge %s --out MERGED_DIR", config.output_dir)
        return {}


def train_stage2(config: Stage2Config, on_step_end=None) -> TrainResult:
    """Run stage 2 (see :class:`lusifer.train.config.Stage2Config`); merge the result with
    :func:`lusifer.train.merge.merge_checkpoint` (``lusifer-train merge``)."""
    return run_training(Stage2Task(), config, on_step_end)
