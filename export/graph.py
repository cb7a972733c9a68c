"""The torch module that is traced into ONNX: input ids + attention mask -> float32 embedding.

It runs exactly ``LusiferModel.forward`` (encoder -> connector -> bidirectional decoder without LM head or
KV cache -> mean pooling -> projection). Before tracing, both backbones are switched to the "eager"
attention kernel, which always applies the explicit (padding-only, bidirectional) mask as an additive
tensor. SDPA kernels may drop an all-ones mask and fall back to their own ``is_causal`` flag, so a trace
through SDPA could silently become causal; eager cannot. The decoder is fed ``inputs_embeds``, so its
token-embedding table and LM head are never touched by the trace and do not enter the graph. An ``llm-only``
model (the LLM alone) takes LLM token ids: its graph starts with the token-embedding lookup, so the table is
in the graph (once) while the LM head still is not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from lusifer.export.errors import ExportGraphError

from lusifer.extras import require

torch = require("torch", "export", purpose="export a LUSIFER model to ONNX")
from torch import nn

from lusifer.backbones import set_attention_causal

logger = logging.getLogger(__name__)

TRACE_ATTN_IMPLEMENTATION = "eager"
# Two texts of different lengths, so the traced batch is padded and the mask path is recorded.
TRACE_TEXTS = ("Trace.", "A longer second text, used only to trace the export graph.")


class EmbeddingGraph(nn.Module):
    """``(input_ids, attention_mask) -> embedding`` (float32, not normalised) around a ``LusiferModel``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask).to(torch.float32)


@contextlib.contextmanager
def export_mode(model) -> Iterator[EmbeddingGraph]:
    """Put a loaded fp32 ``LusiferModel`` in export mode and yield the module to trace.

    Eval mode, no KV cache, bidirectional decoder attention, "eager" attention in both backbones. The
    attention kernels and causality the model had are restored on exit.
    """
    backbones = [m for m in (model.llm, model.encoder) if hasattr(m, "set_attn_implementation")]
    before = [m.config._attn_implementation for m in backbones]
    was_causal = bool(getattr(model.llm.config, "is_causal", False))
    model.eval()
    model.float()
    model.llm.config.use_cache = False
    set_attention_causal(model.llm, False)
    try:
        for m in backbones:
            m.set_attn_implementation(TRACE_ATTN_IMPLEMENTATION)
        if getattr(model.llm.config, "is_causal", True) is not False:
            raise ExportGraphError("the decoder config is still causal after set_attention_causal(False)")
        yield EmbeddingGraph(model).eval()
    finally:
        for m, impl in zip(backbones, before):
            m.set_attn_implementation(impl)
        set_attention_causal(model.llm, was_causal)


def trace_inputs(model):
    """A small right-padded batch (2 texts of different lengths) for tracing."""
    batch = model.tokenizer(list(TRACE_TEXTS), padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    if bool(mask.all()):
        raise ExportGraphError("trace inputs must contain padding so that the attention mask is traced")
    return ids, mask
