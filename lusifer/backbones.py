"""Loading the encoder and the decoder LLM from local folders, and switching decoder attention.

Bidirectional attention uses the public transformers 5 switch (``config.is_causal = False``, read by the
mask builders at every forward) and the public ``is_causal`` attribute of the attention modules (read by
the SDPA integration when no mask is materialised). No transformers class is subclassed or copied.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lusifer.extras import require

logger = logging.getLogger(__name__)

SUPPORTED_DECODERS = ("llama", "mistral", "qwen2")
# encoders whose position ids start after the padding index (RoBERTa-style)
ROBERTA_STYLE_ENCODERS = ("xlm-roberta", "roberta", "camembert")
SUPPORTED_ENCODERS = ROBERTA_STYLE_ENCODERS + ("bert",)


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or holds an unsupported architecture."""


def _check_folder(path: str | os.PathLike, what: str) -> Path:
    folder = Path(path)
    if not str(path):
        raise ModelFolderError(f"{what} path is empty; expected a local model folder")
    if not folder.is_dir():
        raise ModelFolderError(f"{what} folder {str(folder)!r} does not exist (hubs are not used: give a local folder)")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{what} folder {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" (found {', '.join(pickles)}: pickled weights are refused; convert them to safetensors)" if pickles else ""
        raise ModelFolderError(f"{what} folder {str(folder)!r} has no .safetensors weights{hint}")
    return folder


def load_encoder(path: str | os.PathLike, dtype=None):
    """Load a Hugging Face encoder (XLM-R or BERT family) without pooler, from safetensors only."""
    transformers = require("transformers", purpose="load the encoder")
    folder = _check_folder(path, "encoder")
    config = transformers.AutoConfig.from_pretrained(folder)
    if config.model_type not in SUPPORTED_ENCODERS:
        raise ModelFolderError(
            f"encoder model_type={config.model_type!r} in {str(folder)!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_ENCODERS)}"
        )
    kwargs = {"use_safetensors": True, "add_pooling_layer": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return transformers.AutoModel.from_pretrained(folder, config=config, **kwargs)


def load_decoder_lm(path: str | os.PathLike, attn_implementation: str = "sdpa", dtype=None):
    """Load a decoder LLM (with its LM head) and make its attention bidirectional."""
    transformers = require("transformers", purpose="load the LLM")
    folder = _check_folder(path, "LLM")
    config = transformers.AutoConfig.from_pretrained(folder)
    if config.model_type not in SUPPORTED_DECODERS:
        raise ModelFolderError(
            f"LLM model_type={config.model_type!r} in {str(folder)!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_DECODERS)}"
        )
    config.is_causal = False
    kwargs = {"use_safetensors": True, "attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, **kwargs)
    set_attention_causal(model, False)
    return model


def set_attention_causal(model, causal: bool) -> None:
    """Switch a decoder between causal (stage-1 generation) and bidirectional (embedding) attention."""
    model.config.is_causal = causal
    for module in model.modules():
        if hasattr(module, "is_causal") and not isinstance(getattr(module, "is_causal"), property):
            if hasattr(module, "config") and module is not model and module.config is not model.config:
                module.config.is_causal = causal
            module.is_causal = causal


def is_roberta_style(encoder_config) -> bool:
    return encoder_config.model_type in ROBERTA_STYLE_ENCODERS


def encoder_position_ids(attention_mask, encoder_config):
    """Position ids computed from the attention mask, so left and right padding give the same result.

    RoBERTa-style encoders number real tokens from ``pad_token_id + 1`` and give pads ``pad_token_id``;
    BERT numbers real tokens from 0.
    """
    mask = attention_mask.long()
    counts = mask.cumsum(-1)
    if is_roberta_style(encoder_config):
        pad = int(encoder_config.pad_token_id)
        return counts * mask + pad
    return ((counts - 1).clamp(min=0)) * mask


def decoder_position_ids(attention_mask):
    """Position ids 0..n-1 over the real positions of each row (pads get 0)."""
    mask = attention_mask.long()
    return ((mask.cumsum(-1) - 1).clamp(min=0)) * mask


def load_embedding_llm_tokenizer(path: str | os.PathLike):
    """The LLM's own tokenizer, set up to tokenize texts for the ``llm-only`` architecture.

    Padding and truncation are put on the right (as the encoder tokenizers and the runtime's ``tokenizer.json``
    do; pooling and position ids depend only on the mask, so the padding side does not change embeddings).
    A tokenizer without a pad token pads with its EOS token (padding is masked out everywhere).

    Raises:
        ModelFolderError: the folder has no loadable tokenizer, or it has neither a pad nor an EOS token.
    """
    transformers = require("transformers", purpose="load the LLM tokenizer")
    folder = Path(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFolderError(f"LLM folder {str(folder)!r} has no usable tokenizer: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelFolderError(
            f"the LLM tokenizer in {str(folder)!r} is not a fast tokenizer (tokenizer.json); the export and "
            "runtime need one"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelFolderError(
                f"the LLM tokenizer in {str(folder)!r} has neither a pad token nor an EOS token to pad with"
            )
        logger.info(
            "the LLM tokenizer in %s has no pad token; padding with its EOS token %r (id %d), which the "
            "attention mask hides", folder, tokenizer.eos_token, tokenizer.eos_token_id,
        )
        tokenizer.pad_token = tokenizer.eos_token
    for side in ("padding_side", "truncation_side"):
        if getattr(tokenizer, side, "right") != "right":
            logger.info("LLM tokenizer %s: %s=%r -> 'right' (as the runtime tokenizes)", folder, side,
                        getattr(tokenizer, side))
            setattr(tokenizer, side, "right")
    return tokenizer
