"""Conversion of a GGUF decoder LLM (as shipped inside registry packages) to a standard Hugging Face folder.

transformers dequantizes GGUF files itself (``from_pretrained(folder, gguf_file=...)``, needs the ``gguf``
package) but a model loaded that way refuses ``save_pretrained``. So the loaded weights are moved into a
fresh model built from the same config (with ``quantization_config`` dropped) and that model is saved as
safetensors, together with the tokenizer read from the GGUF file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from lusifer.atomic import replace_folder
from lusifer.extras import require

logger = logging.getLogger(__name__)

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")


class GGUFConversionError(ValueError):
    """The GGUF file cannot be converted (missing, unsupported architecture, weights that do not fit)."""


def load_gguf_causal_lm(gguf_path: str | os.PathLike, dtype=None):
    """Load a GGUF causal LM and its tokenizer, and return a plain (serialisable) float model.

    Args:
        gguf_path: Path to the ``.gguf`` file.
        dtype: torch dtype of the returned model (default float32).

    Returns:
        ``(model, tokenizer)``: a fresh ``AutoModelForCausalLM`` holding the dequantized weights, and the
        GGUF's tokenizer.
    """
    transformers = require("transformers", purpose="convert a GGUF LLM")
    torch = require("torch", purpose="convert a GGUF LLM")
    require("gguf", extra="train", purpose="read GGUF files")
    path = Path(gguf_path)
    if not path.is_file():
        raise GGUFConversionError(f"GGUF file {str(path)!r} does not exist")
    dtype = dtype or torch.float32
    folder, name = str(path.parent), path.name
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    if config.model_type not in SUPPORTED_GGUF_ARCHITECTURES:
        raise GGUFConversionError(
            f"{name}: architecture {config.model_type!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = loaded.state_dict()
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    allowed_missing = {"lm_head.weight"} if tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise GGUFConversionError(f"{name}: weights do not fit the config: missing {missing}, unexpected {unexpected}")
    if tied:
        fresh.tie_weights()
        if fresh.get_output_embeddings().weight.data_ptr() != fresh.get_input_embeddings().weight.data_ptr():
            raise GGUFConversionError(f"{name}: tie_word_embeddings is set but the LM head is not tied")
    fresh.eval()
    del loaded
    return fresh, tokenizer


def _tidy_tokenizer_config(path: Path, max_length: int) -> None:
    """Drop load-time flags transformers writes back (``is_local`` ...) and set a real ``model_max_length``."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config["model_max_length"] = max_length
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_gguf_llm(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype=None) -> Path:
    """Convert a GGUF causal LM file into a Hugging Face folder (config, safetensors, tokenizer).

    The folder is assembled beside ``out_dir`` and moved into place, so an interrupted run never leaves a
    half-written folder under the final name.

    Returns:
        The output folder.
    """
    model, tokenizer = load_gguf_causal_lm(gguf_path, dtype=dtype)
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        _tidy_tokenizer_config(staging / "tokenizer_config.json", int(model.config.max_position_embeddings))
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "wrote %s LLM (%d layers, hidden %d) to %s",
        model.config.model_type,
        model.config.num_hidden_layers,
        model.config.hidden_size,
        target,
    )
    return target
