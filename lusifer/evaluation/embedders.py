"""Adapters that give the evaluator one way to embed texts with three kinds of model folder.

- ``export``: an ONNX export folder (``manifest.json``), embedded with :class:`lusifer.runtime.Embedder`
  (no torch needed);
- ``lusifer``: a saved :class:`lusifer.modeling.LusiferModel` folder (``lusifer_config.json``), of either
  architecture (``lusifer``, or ``llm-only``: the LLM alone);
- ``encoder``: a plain Hugging Face encoder folder (BERT / XLM-R family, ``config.json`` + safetensors), mean
  pooled over non-padding tokens and L2-normalised: "the encoder alone" baseline.

Heavy libraries are imported only by the adapter that needs them.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from lusifer._version import __version__
from lusifer.extras import require
from lusifer.onnx_interface import MANIFEST_NAME

logger = logging.getLogger(__name__)

MODEL_KINDS = ("export", "lusifer", "encoder")
LUSIFER_CONFIG_NAME = "lusifer_config.json"  # same as lusifer.modeling.CONFIG_NAME, kept torch-free here
ENCODER_MAX_LENGTH = 512


class ModelLoadError(ValueError):
    """A model folder cannot be recognised or loaded as the requested kind, or the device is unusable."""


class TextEmbedder(Protocol):
    """What the runner needs from a model."""

    kind: str
    path: Path

    def embed(self, texts: Sequence[str], kind: str, instruction: str | None) -> np.ndarray:
        """L2-normalised float32 embeddings (len(texts), dim), rows in input order."""

    def describe(self) -> dict:
        """JSON-able facts about the model (architecture, how instructions are used)."""

    def versions(self) -> dict:
        """Versions of the libraries that computed the embeddings."""

    def close(self) -> None:
        """Release the model's memory."""


def detect_model_kind(path: str | os.PathLike) -> str:
    """Recognise a model folder: ``"export"``, ``"lusifer"`` or ``"encoder"``.

    Raises:
        ModelLoadError: when the folder is missing or matches none of the three kinds.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {str(folder)!r} does not exist")
    if (folder / MANIFEST_NAME).is_file():
        return "export"
    if (folder / LUSIFER_CONFIG_NAME).is_file():
        return "lusifer"
    if (folder / "config.json").is_file():
        return "encoder"
    raise ModelLoadError(
        f"{str(folder)!r} is not a model folder this evaluator knows: expected an export folder "
        f"({MANIFEST_NAME}), a LusiferModel folder ({LUSIFER_CONFIG_NAME}) or a Hugging Face encoder folder "
        "(config.json + *.safetensors); use --kind-of-model to say which it is"
    )


def _check_torch_device(device: str):
    torch = require("torch", purpose="evaluate a PyTorch model")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device={device!r} is not a torch device; expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"device={device!r} is not supported; expected 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _torch_versions() -> dict:
    import numpy
    import torch
    import transformers

    return {"lusifer": __version__, "numpy": numpy.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


class LusiferModelEmbedder:
    """A saved LusiferModel folder, embedded with :meth:`LusiferModel.encode`."""

    kind = "lusifer"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 32):
        from lusifer.backbones import ModelFolderError
        from lusifer.modeling import LusiferModel

        self.path = Path(path)
        self.batch_size = batch_size
        dev = _check_torch_device(device)
        try:
            self.model = LusiferModel.from_pretrained(self.path, device=str(dev))
        except ModelFolderError as exc:
            raise ModelLoadError(str(exc)) from exc

    def embed(self, texts: Sequence[str], kind: str, instruction: str | None) -> np.ndarray:
        return self.model.encode(list(texts), kind=kind, instruction=instruction, batch_size=self.batch_size,
                                 normalize=True)

    def describe(self) -> dict:
        config = self.model.config.to_dict()
        for key in ("encoder_path", "llm_path"):
            config.pop(key, None)
        encoder = self.model.encoder  # None for the llm-only architecture (the LLM alone)
        return {
            "embedding_dim": self.model.config.embedding_dim,
            "architecture": self.model.config.architecture,
            "encoder_type": encoder.config.model_type if encoder is not None else None,
            "llm_type": self.model.llm.config.model_type,
            "instructions": "used, with the model's query/document templates",
            "config": config,
        }

    def versions(self) -> dict:
        return _torch_versions()

    def close(self) -> None:
        del self.model
        gc.collect()


class EncoderEmbedder:
    """A plain Hugging Face encoder: mean pooling over non-padding tokens, L2-normalised.

    The encoder alone is not instruction-tuned, so instructions are not used; ``prefix`` is prepended to
    every text instead (E5 models expect ``"query: "``).
    """

    kind = "encoder"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 32, prefix: str = "",
                 max_length: int = ENCODER_MAX_LENGTH):
        transformers = require("transformers", purpose="evaluate an encoder")
        from lusifer.backbones import ModelFolderError, is_roberta_style, load_encoder

        self.path = Path(path)
        self.batch_size = batch_size
        self.prefix = prefix
        self.device = _check_torch_device(device)
        try:
            self.model = load_encoder(self.path).to(self.device).eval()
        except ModelFolderError as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"encoder folder {str(self.path)!r} has no usable tokenizer: {exc}") from exc
        config = self.model.config
        positions = int(config.max_position_embeddings)
        if is_roberta_style(config):  # positions start after the padding index
            positions -= int(config.pad_token_id) + 1
        self.max_length = min(max_length, positions)

    def embed(self, texts: Sequence[str], kind: str, instruction: str | None) -> np.ndarray:
        """Embed texts (``kind`` and ``instruction`` are ignored: the encoder alone takes no instructions)."""
        import torch

        from lusifer.backbones import encoder_position_ids
        from lusifer.pooling import l2_normalize, mean_pool

        texts = [self.prefix + t for t in texts]
        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                mask = enc["attention_mask"].to(self.device)
                states = self.model(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=mask,
                    position_ids=encoder_position_ids(mask, self.model.config),
                ).last_hidden_state
                out[idx] = l2_normalize(mean_pool(states, mask)).cpu().numpy()
        return out

    def describe(self) -> dict:
        config = self.model.config
        return {
            "embedding_dim": int(config.hidden_size),
            "encoder_type": config.model_type,
            "num_layers": int(config.num_hidden_layers),
            "pooling": "mean over non-padding tokens, L2-normalised",
            "max_length": self.max_length,
            "instructions": "not used (encoder alone)",
            "prefix": self.prefix,
        }

    def versions(self) -> dict:
        return _torch_versions()

    def close(self) -> None:
        del self.model
        gc.collect()


class ExportEmbedder:
    """An ONNX export folder, embedded with :class:`lusifer.runtime.Embedder` (no torch).

    ``batch_size`` caps the rows per forward pass (the runtime also caps padded tokens per pass).
    """

    kind = "export"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 32,
                 variant: str | None = None):
        from lusifer.runtime import Embedder  # the runtime's typed errors (EmbedError, ManifestError) propagate

        self.path = Path(path)
        self.batch_size = batch_size
        self.embedder = Embedder(self.path, device=device, variant=variant)

    def embed(self, texts: Sequence[str], kind: str, instruction: str | None) -> np.ndarray:
        return self.embedder.embed(list(texts), kind=kind, instruction=instruction, normalize=True,
                                   max_batch_rows=self.batch_size)

    def describe(self) -> dict:
        manifest = self.embedder.manifest
        return {
            "embedding_dim": manifest.embedding_dim,
            "max_length": manifest.max_length,
            "variant": self.embedder.variant,
            "model_sha256": self.embedder.model_sha256,
            "provider": self.embedder.provider,
            "instructions": "used, with the manifest's query/document templates",
            "source": manifest.source,
        }

    def versions(self) -> dict:
        import numpy
        import onnxruntime

        return {"lusifer": __version__, "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
                **{f"export:{k}": v for k, v in self.embedder.manifest.versions.items()}}

    def close(self) -> None:
        del self.embedder
        gc.collect()


def load_embedder(
    path: str | os.PathLike,
    kind: str = "auto",
    device: str = "cpu",
    batch_size: int = 32,
    encoder_prefix: str = "",
    variant: str | None = None,
) -> TextEmbedder:
    """Open a model folder for evaluation.

    Args:
        path: The model folder.
        kind: ``"auto"`` (recognise the folder), ``"export"``, ``"lusifer"`` or ``"encoder"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; an unavailable device is an error.
        batch_size: Texts per forward pass.
        encoder_prefix: Text prepended to every input of an ``encoder`` model (e.g. ``"query: "`` for E5).
        variant: ONNX variant of an ``export`` (``fp32``, ``fp16``, ``int8``); ``None``: the runtime's default.

    Raises:
        ModelLoadError: on an unknown kind, an unrecognised or broken folder, an option that does not apply
            to the kind, or an unusable device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModelLoadError(f"batch_size={batch_size!r}; expected a positive integer")
    if kind == "auto":
        kind = detect_model_kind(path)
    elif kind not in MODEL_KINDS:
        raise ModelLoadError(f"kind of model {kind!r} is not known; expected auto or one of {', '.join(MODEL_KINDS)}")
    elif not Path(path).is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if encoder_prefix and kind != "encoder":
        raise ModelLoadError(f"an encoder prefix applies only to encoder folders; {str(path)!r} is a {kind} folder")
    if variant is not None and kind != "export":
        raise ModelLoadError(f"an ONNX variant applies only to export folders; {str(path)!r} is a {kind} folder")
    logger.info("loading %s model from %s", kind, path)
    if kind == "export":
        return ExportEmbedder(path, device=device, batch_size=batch_size, variant=variant)
    if kind == "lusifer":
        return LusiferModelEmbedder(path, device=device, batch_size=batch_size)
    return EncoderEmbedder(path, device=device, batch_size=batch_size, prefix=encoder_prefix)
