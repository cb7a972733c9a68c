"""Tiny random encoders and decoders built from configs into local folders, for tests and examples.

The tokenizer is a small byte-level BPE trained on a multilingual sample shipped with the package, so
every script and language tokenizes (no unknown tokens) while the vocabulary stays tiny.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from lusifer.extras import require

logger = logging.getLogger(__name__)

ENCODER_TYPES = ("xlm-roberta", "bert")
DECODER_TYPES = ("llama", "mistral", "qwen2")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R order: ids 0..4


def sample_texts() -> list[str]:
    """The multilingual sample sentences shipped with the package."""
    text = resources.files("lusifer").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(vocab_size: int = 600, add_bos_eos: bool = True):
    """Train a deterministic byte-level BPE tokenizer on the sample texts.

    Args:
        vocab_size: Target vocabulary size (>= 261: 256 bytes plus specials).
        add_bos_eos: Encoder style ``<s> text </s>``; otherwise decoder style ``<s> text``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    tokenizers = require("tokenizers")
    transformers = require("transformers", purpose="build tiny models")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(), trainer=trainer)
    if add_bos_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=512,
    )


def build_tiny_encoder(
    out_dir: str | os.PathLike,
    encoder_type: str = "xlm-roberta",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random encoder (XLM-R or BERT) with its tokenizer into ``out_dir``."""
    torch = require("torch")
    transformers = require("transformers")
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(f"encoder_type={encoder_type!r}; expected one of {', '.join(ENCODER_TYPES)}")
    tokenizer = build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    if encoder_type == "xlm-roberta":
        config = transformers.XLMRobertaConfig(max_position_embeddings=514 + 2, type_vocab_size=1, **common)
    else:
        config = transformers.BertConfig(max_position_embeddings=520, type_vocab_size=2, **common)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config, add_pooling_layer=False)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_decoder(
    out_dir: str | os.PathLike,
    decoder_type: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random decoder LLM (Llama, Mistral or Qwen2) with its tokenizer into ``out_dir``."""
    torch = require("torch")
    transformers = require("transformers")
    if decoder_type not in DECODER_TYPES:
        raise ValueError(f"decoder_type={decoder_type!r}; expected one of {', '.join(DECODER_TYPES)}")
    tokenizer = build_tokenizer(add_bos_eos=False)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
    }[decoder_type]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_lusifer(
    out_dir: str | os.PathLike,
    encoder_type: str = "xlm-roberta",
    decoder_type: str = "llama",
    num_learnable_tokens: int = 2,
    projection_dim: int | None = 16,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Build tiny base models under ``out_dir/base`` and save a tiny random LusiferModel to ``out_dir/model``.

    Returns:
        The saved model folder.
    """
    torch = require("torch")
    from lusifer.config import LusiferConfig
    from lusifer.modeling import LusiferModel

    out = Path(out_dir)
    enc = build_tiny_encoder(out / "base" / f"encoder-{encoder_type}", encoder_type, seed=seed)
    dec = build_tiny_decoder(out / "base" / f"llm-{decoder_type}", decoder_type, seed=seed + 1)
    config = LusiferConfig(
        encoder_path=str(enc),
        llm_path=str(dec),
        connector_hidden=48,
        num_learnable_tokens=num_learnable_tokens,
        projection_dim=projection_dim,
        projection_hidden=24 if projection_dim else None,
        max_length=64,
        **config_overrides,
    )
    torch.manual_seed(seed + 2)
    model = LusiferModel.from_config(config)
    return model.save_pretrained(out / "model")


def build_tiny_llm_only(
    out_dir: str | os.PathLike,
    decoder_type: str = "llama",
    projection_dim: int | None = 16,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Build a tiny decoder under ``out_dir/base`` and save a tiny random ``llm-only`` LusiferModel (the LLM
    alone, reading its own tokens) to ``out_dir/model``.

    Returns:
        The saved model folder.
    """
    torch = require("torch")
    from lusifer.config import LusiferConfig
    from lusifer.modeling import LusiferModel

    out = Path(out_dir)
    dec = build_tiny_decoder(out / "base" / f"llm-{decoder_type}", decoder_type, seed=seed + 1)
    config = LusiferConfig(
        architecture="llm-only",
        llm_path=str(dec),
        projection_dim=projection_dim,
        projection_hidden=24 if projection_dim else None,
        max_length=64,
        **config_overrides,
    )
    torch.manual_seed(seed + 2)
    model = LusiferModel.from_config(config)
    return model.save_pretrained(out / "model")


def main(argv: list[str] | None = None) -> None:
    """``python -m lusifer.tiny OUT_DIR [--encoder xlm-roberta|bert] [--decoder llama|mistral|qwen2] [--llm-only]``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--encoder", default="xlm-roberta", choices=ENCODER_TYPES)
    parser.add_argument("--decoder", default="llama", choices=DECODER_TYPES)
    parser.add_argument("--llm-only", action="store_true", help="The LLM alone (no encoder, no connector).")
    args = parser.parse_args(argv)
    if args.llm_only:
        print(build_tiny_llm_only(args.out_dir, args.decoder))
    else:
        print(build_tiny_lusifer(args.out_dir, args.encoder, args.decoder))


if __name__ == "__main__":
    main()
