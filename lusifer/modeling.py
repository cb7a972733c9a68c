"""`LusiferModel`: multilingual encoder -> connector -> bidirectional decoder LLM -> mean pooling -> projection.

The ``llm-only`` architecture (``LusiferConfig.architecture``) is the English-centric embedder baseline: the
same bidirectional decoder, pooling and projection, fed the LLM's own token embeddings (no encoder, no
connector).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from lusifer.atomic import replace_folder
from lusifer.extras import require

torch = require("torch", purpose="use LusiferModel")
from torch import nn  # noqa: E402

from lusifer._version import __version__  # noqa: E402
from lusifer.backbones import (  # noqa: E402
    ModelFolderError,
    decoder_position_ids,
    encoder_position_ids,
    load_decoder_lm,
    load_embedding_llm_tokenizer,
    load_encoder,
)
from lusifer.config import LusiferConfig  # noqa: E402
from lusifer.connector import Connector, Projection  # noqa: E402
from lusifer.pooling import l2_normalize, mean_pool  # noqa: E402
from lusifer.prompts import check_kind, format_texts  # noqa: E402

logger = logging.getLogger(__name__)

CONFIG_NAME = "lusifer_config.json"
WEIGHTS_NAME = "lusifer.safetensors"
ENCODER_DIR = "encoder"
LLM_DIR = "llm"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model or export was made with."""
    import transformers

    versions = {"lusifer": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    return versions


class LusiferModel(nn.Module):
    """A LUSIFER embedding model.

    Build one from base models with :meth:`from_config`, load a saved one with :meth:`from_pretrained`,
    and embed texts with :meth:`encode`. Only the encoder's tokenizer is used at embedding time; the LLM is
    fed ``inputs_embeds`` and its LM head is used only by stage-1 training.

    With ``config.architecture == "llm-only"`` there is no encoder and no connector (``encoder`` and
    ``connector`` are ``None``): ``tokenizer`` is the LLM's own and the LLM's inputs are its token embeddings.

    Args:
        config: The model configuration (hidden sizes filled in).
        encoder: A Hugging Face encoder model (no pooler); ``None`` for ``llm-only``.
        llm: A Hugging Face causal LM whose attention was made bidirectional.
        tokenizer: The encoder's fast tokenizer (the LLM's for ``llm-only``).
    """

    def __init__(self, config: LusiferConfig, encoder: nn.Module | None, llm: nn.Module, tokenizer):
        super().__init__()
        if config.is_llm_only != (encoder is None):
            raise ValueError(
                f"architecture={config.architecture!r} "
                + ("takes no encoder" if config.is_llm_only else "needs an encoder, got None")
            )
        config.llm_hidden = int(llm.config.hidden_size)
        self.config = config
        self.encoder = encoder
        self.llm = llm
        self.tokenizer = tokenizer
        if config.is_llm_only:
            self._check_llm_tokenizer(tokenizer, llm)
            self.connector = None
        else:
            config.encoder_hidden = int(encoder.config.hidden_size)
            self.connector = Connector(
                config.encoder_hidden,
                config.connector_hidden or config.llm_hidden,
                config.llm_hidden,
                config.num_learnable_tokens,
                config.connector_activation,
            )
        if config.projection_dim is not None:
            self.projection = Projection(
                config.llm_hidden, config.projection_hidden or config.llm_hidden, config.projection_dim
            )
        else:
            self.projection = None
        if self.connector is not None:
            self.connector.to(dtype=next(llm.parameters()).dtype)
        if self.projection is not None:
            self.projection.to(dtype=next(llm.parameters()).dtype)

    @staticmethod
    def _check_llm_tokenizer(tokenizer, llm: nn.Module) -> None:
        """``llm-only`` feeds token ids straight to the LLM's embedding table: every id must have a row."""
        rows = int(llm.get_input_embeddings().weight.shape[0])
        if len(tokenizer) > rows:
            raise ModelFolderError(
                f"the LLM tokenizer has {len(tokenizer)} tokens but the LLM's embedding table has {rows} rows "
                f"(pad token {tokenizer.pad_token!r} = id {tokenizer.pad_token_id}); use the tokenizer the LLM "
                "was trained with"
            )

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: LusiferConfig, dtype=None) -> "LusiferModel":
        """Build a fresh model from the base encoder and LLM folders named in ``config`` (the LLM folder only
        for ``llm-only``).

        The connector (and projection) start from random weights (seeded by the caller's torch seed).
        """
        transformers = require("transformers")
        llm = load_decoder_lm(config.llm_path, config.attn_implementation, dtype=dtype)
        if config.is_llm_only:
            encoder, tokenizer = None, load_embedding_llm_tokenizer(config.llm_path)
        else:
            encoder = load_encoder(config.encoder_path, dtype=dtype)
            tokenizer = transformers.AutoTokenizer.from_pretrained(config.encoder_path)
        model = cls(config, encoder, llm, tokenizer)
        model._llm_source = str(config.llm_path)
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None, dtype=None) -> "LusiferModel":
        """Load a model saved with :meth:`save_pretrained` (safetensors only, no remote code)."""
        transformers = require("transformers")
        from safetensors.torch import load_file

        folder = Path(path)
        config_file = folder / CONFIG_NAME
        weights_file = folder / WEIGHTS_NAME
        if not folder.is_dir():
            raise ModelFolderError(f"model folder {str(folder)!r} does not exist")
        for needed in (config_file, weights_file, folder / LLM_DIR):
            if not needed.exists():
                raise ModelFolderError(f"model folder {str(folder)!r} is incomplete: {needed.name} is missing")
        config = LusiferConfig.from_json(config_file)
        if not config.is_llm_only and not (folder / ENCODER_DIR).exists():
            raise ModelFolderError(f"model folder {str(folder)!r} is incomplete: {ENCODER_DIR} is missing")
        llm = load_decoder_lm(folder / LLM_DIR, config.attn_implementation, dtype=dtype)
        if config.is_llm_only:
            encoder, tokenizer = None, load_embedding_llm_tokenizer(folder / LLM_DIR)
        else:
            encoder = load_encoder(folder / ENCODER_DIR, dtype=dtype)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder / ENCODER_DIR)
            config.encoder_path = str(folder / ENCODER_DIR)
        config.llm_path = str(folder / LLM_DIR)
        model = cls(config, encoder, llm, tokenizer)
        state = load_file(str(weights_file))
        missing, unexpected = model.own_modules().load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelFolderError(
                f"{weights_file} does not match the config: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        model._llm_source = str(folder / LLM_DIR)
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def own_modules(self) -> nn.ModuleDict:
        """The LUSIFER-specific modules (connector, projection), saved in ``lusifer.safetensors``.

        Empty for an ``llm-only`` model without projection (the file then holds no tensors).
        """
        mods = {"connector": self.connector} if self.connector is not None else {}
        if self.projection is not None:
            mods["projection"] = self.projection
        return nn.ModuleDict(mods)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a self-describing folder: config JSON with versions, safetensors weights, tokenizers.

        ``encoder/`` (encoder and its tokenizer) is written only by the ``lusifer`` architecture; ``llm/``
        holds the LLM and its tokenizer (for ``llm-only``, the tokenizer the model embeds with).

        The folder is assembled beside the target and moved into place, so a crash never leaves a
        half-written model folder under the final name.
        """
        from safetensors.torch import save_file

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            if self.encoder is not None:
                self.encoder.save_pretrained(staging / ENCODER_DIR, safe_serialization=True)
                self.tokenizer.save_pretrained(staging / ENCODER_DIR)
            self.llm.save_pretrained(staging / LLM_DIR, safe_serialization=True)
            llm_tokenizer = self.load_llm_tokenizer()
            if llm_tokenizer is not None:
                llm_tokenizer.save_pretrained(staging / LLM_DIR)
            state = {k: v.detach().contiguous().cpu() for k, v in self.own_modules().state_dict().items()}
            save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
            saved = LusiferConfig.from_dict(self.config.to_dict())
            saved.encoder_path = ENCODER_DIR if self.encoder is not None else ""
            saved.llm_path = LLM_DIR
            saved.to_json(staging / CONFIG_NAME, _format_version=FORMAT_VERSION, _versions=library_versions())
            replace_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def load_llm_tokenizer(self):
        """The LLM's own tokenizer (used by stage-1 training), or ``None`` if the LLM folder has none.

        For ``llm-only`` this is the tokenizer the model embeds with (:attr:`tokenizer`).
        """
        transformers = require("transformers")
        if self.config.is_llm_only:
            return self.tokenizer
        source = getattr(self, "_llm_source", None)
        if source is None:
            return None
        try:
            return transformers.AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            return None

    # ---- forward pieces -------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """The decoder backbone without the LM head."""
        return self.llm.get_decoder()

    def llm_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Encoder + connector: ``(inputs_embeds, attention_mask)`` for the LLM (learnable tokens included).

        For ``llm-only``, ``input_ids`` are LLM token ids and this is the LLM's token-embedding lookup.
        """
        if self.encoder is None:
            return self.llm.get_input_embeddings()(input_ids), attention_mask
        position_ids = encoder_position_ids(attention_mask, self.encoder.config)
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.connector(states.to(self.connector.mlp[0].weight.dtype), attention_mask)

    def decoder_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states of the (bidirectional) decoder for the given input embeddings.

        ``position_ids`` default to ``0..n-1`` over the positions in ``attention_mask``; stage 1's reference
        objective passes its own, so positions removed from the mask keep their place.
        """
        return self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=decoder_position_ids(attention_mask) if position_ids is None else position_ids,
            use_cache=False,
        ).last_hidden_state

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean pooling then the optional projection (float32 result)."""
        pooled = mean_pool(states, attention_mask)
        if self.projection is not None:
            pooled = self.projection(pooled.to(self.projection.net[0].weight.dtype)).float()
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings (batch, dim), float32, not normalised."""
        embeds, mask = self.llm_inputs(input_ids, attention_mask)
        return self.pool(self.decoder_states(embeds, mask), mask)

    # ---- text API -------------------------------------------------------------------------------
    def format(self, texts: Sequence[str], kind: str = "query", instruction: str | None = None) -> list[str]:
        """Apply the prompt template of ``kind`` to ``texts``."""
        check_kind(kind)
        return format_texts(
            texts,
            kind,
            self.config.instruction_for(kind, instruction),
            self.config.query_template,
            self.config.document_template,
            self.config.prompt_style,
        )

    def tokenize(self, texts: Sequence[str], kind: str = "query", instruction: str | None = None) -> dict:
        """Format and tokenize texts with the model's tokenizer (right padding, truncation at max_length)."""
        return self.tokenizer(
            self.format(texts, kind, instruction),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            add_special_tokens=self.config.add_special_tokens,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str] | str,
        kind: str = "query",
        instruction: str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts.

        Args:
            texts: A list of strings (or one string).
            kind: ``"query"`` or ``"document"`` (selects the prompt template).
            instruction: Task instruction; ``None`` uses the config's default for ``kind``.
            batch_size: Texts per forward pass (texts are sorted by length to limit padding).
            normalize: L2-normalise rows; ``None`` uses ``config.normalize``.
            show_progress: Show a progress bar.

        Returns:
            float32 array of shape (len(texts), dim), rows in input order.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] is {type(t).__name__}, expected str")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        normalize = self.config.normalize if normalize is None else normalize
        dim = self.config.embedding_dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        batches = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode", unit="batch")
        for start in batches:
            idx = order[start : start + batch_size]
            enc = self.tokenize([texts[i] for i in idx], kind, instruction)
            emb = self(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            if normalize:
                emb = l2_normalize(emb)
            out[idx] = emb.float().cpu().numpy()
        self.train(was_training)
        return out
