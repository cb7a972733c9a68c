"""Training configurations: validated dataclasses with a JSON/YAML round trip and ``key=value`` overrides.

Paths written in a config file are relative to that file's folder; paths given as overrides (command-line
flags or ``--set``) are relative to the current directory. Both are made absolute when the config is loaded,
so a checkpoint's saved config stays valid wherever it is read from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lusifer.config import LusiferConfig

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
MODEL_DTYPES = ("float32", "bfloat16")
# stage-1 objectives: "current" (this project's: masked encoder input, causal LLM) and "reference" (the authors'
# code: clean encoder input, masked LLM input and attention, bidirectional LLM)
STAGE1_OBJECTIVES = ("current", "reference")
REFERENCE_LLM_MASK_PROBABILITY = 0.5  # the reference's alignment configs (its collator's default is 0.15)
TEACHER_POOLINGS = ("mean", "cls")
DISTILL_LOSSES = ("kl", "mse")  # lusifer.train.losses.similarity_distillation_loss kinds
ENCODER_LORA_TARGETS = ["query", "key", "value", "dense"]
LLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(ValueError):
    """A training config is malformed; the message names the field, the value and what was expected."""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return f"a list of {_type_name(inner)}"
    if annotation is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(
        annotation, str(annotation)
    )


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a simple annotation; ints pass as floats and YAML's ``1e-4`` strings as numbers."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{name}={value!r} must be {_type_name(annotation)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be {_type_name(annotation)}")
        (inner,) = typing.get_args(annotation) or (Any,)
        return [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer")
        return value
    if annotation is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return value
    return value


def check_model_fields(stage: str, model: dict, encoder_lora_targets: list[str]) -> LusiferConfig:
    """Validate the ``model`` mapping of a stage config (``LusiferConfig`` fields of a fresh model).

    The ``lusifer`` architecture needs ``encoder_path`` and ``llm_path``; ``llm-only`` (the LLM alone) needs
    ``llm_path``, cannot go through stage 1 (no encoder to align) and takes no encoder LoRA.
    """
    try:
        built = LusiferConfig.from_dict(model)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc
    needed = ("llm_path",) if built.is_llm_only else ("encoder_path", "llm_path")
    for name in needed:
        if not getattr(built, name):
            raise ConfigError(f"model.{name} is empty; expected a local model folder")
    if built.is_llm_only:
        check_llm_only_stage(stage, encoder_lora_targets, "model.architecture='llm-only'")
    return built


def check_llm_only_stage(stage: str, encoder_lora_targets: list[str], where: str) -> None:
    """Raise :class:`ConfigError` when an ``llm-only`` model (no encoder) meets a setting that needs one."""
    if stage == "stage1":
        raise ConfigError(
            f"stage 1 aligns the multilingual encoder with the LLM, but {where} has no encoder (nothing to "
            "align); train the LLM alone with stage 2 directly (lusifer-train stage2 with model: "
            "{architecture: llm-only, llm_path: ...})"
        )
    if encoder_lora_targets:
        raise ConfigError(
            f"encoder_lora_targets={encoder_lora_targets} but {where} has no encoder; set encoder_lora_targets=[]"
        )


def _check_range(name: str, value: float | int | None, low: float, high: float | None = None,
                 low_open: bool = False) -> None:
    if value is None:
        return
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ConfigError(f"{name}={value!r} must be {bound}")


@dataclass
class TrainConfig:
    """Settings shared by both training stages.

    Args:
        output_dir: Run folder: checkpoints, metrics log, final outputs.
        train_files: Local JSONL (``.jsonl``/``.json``, one object per line) or ``.parquet`` files.
        seed: Seed of weights initialisation, data order, masking/negative sampling and dropout.
        max_steps: Optimizer steps to train for.
        batch_size: Examples per process per micro-batch (stage 2: the in-batch negatives of one process).
        grad_accum_steps: Micro-batches per optimizer step.
        learning_rate: Peak learning rate.
        weight_decay: AdamW weight decay on matrices (biases, norms and vectors get none).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_eps: AdamW epsilon.
        warmup_steps: Linear warmup steps, then cosine decay to ``min_lr_ratio * learning_rate``.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        max_grad_norm: Gradient clipping threshold on the global norm (0 disables clipping).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scale = alpha / r).
        lora_dropout: Dropout on the LoRA input.
        encoder_lora_targets: Encoder module names that get LoRA (empty list: encoder frozen).
        max_length: Encoder tokens per text; ``None`` uses the model's ``max_length``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"`` (CUDA only) or ``"fp32"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (fails if CUDA is missing).
        model_dtype: Storage dtype of the frozen backbones, ``"float32"`` or ``"bfloat16"`` (CUDA only);
            trainable weights are always float32.
        gradient_checkpointing: Recompute activations in backward to save memory.
        disable_dropout: Set every dropout probability to 0 (deterministic across data-parallel layouts).
        save_every: Write a resumable checkpoint every N steps (the last step is always saved).
        keep_checkpoints: How many most recent checkpoints to keep (older ones are deleted).
        log_every: Append averaged metrics to ``metrics.jsonl`` every N steps.
        num_workers: DataLoader worker processes for tokenization (0: in the training process).
        resume_from: ``""`` (fresh run), ``"latest"`` (latest checkpoint in ``output_dir`` if any) or the
            path of a checkpoint folder.
    """

    stage: ClassVar[str] = ""
    path_fields: ClassVar[tuple[str, ...]] = ("output_dir", "train_files")

    output_dir: str = ""
    train_files: list[str] = field(default_factory=list)
    seed: int = 42
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    encoder_lora_targets: list[str] = field(default_factory=lambda: list(ENCODER_LORA_TARGETS))
    max_length: int | None = None
    precision: str = "auto"
    device: str = "auto"
    model_dtype: str = "float32"
    gradient_checkpointing: bool = False
    disable_dropout: bool = False
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 0
    resume_from: str = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if not self.output_dir:
            raise ConfigError("output_dir is empty; expected the folder for checkpoints and outputs")
        if not self.train_files:
            raise ConfigError("train_files is empty; expected at least one .jsonl or .parquet file")
        for i, name in enumerate(self.train_files):
            if not name.endswith((".jsonl", ".json", ".parquet")):
                raise ConfigError(f"train_files[{i}]={name!r} must end with .jsonl, .json or .parquet")
        _check_range("seed", self.seed, 0)
        for name in ("max_steps", "batch_size", "grad_accum_steps", "lora_r", "lora_alpha", "save_every",
                     "keep_checkpoints", "log_every"):
            _check_range(name, getattr(self, name), 1)
        _check_range("warmup_steps", self.warmup_steps, 0)
        _check_range("num_workers", self.num_workers, 0)
        _check_range("max_length", self.max_length, 4)
        _check_range("learning_rate", self.learning_rate, 0.0, low_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0)
        _check_range("adam_beta1", self.adam_beta1, 0.0, 1.0)
        _check_range("adam_beta2", self.adam_beta2, 0.0, 1.0)
        _check_range("adam_eps", self.adam_eps, 0.0, low_open=True)
        _check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_range("max_grad_norm", self.max_grad_norm, 0.0)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 1.0)
        if self.warmup_steps > self.max_steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be <= max_steps={self.max_steps}")
        for name, allowed in (("precision", PRECISIONS), ("device", DEVICES), ("model_dtype", MODEL_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported; expected one of {', '.join(allowed)}")
        if self.precision == "bf16" and self.device == "cpu":
            raise ConfigError("precision='bf16' needs device 'cuda' or 'auto' (on CPU training runs in fp32)")
        if self.model_dtype == "bfloat16" and self.device == "cpu":
            raise ConfigError("model_dtype='bfloat16' needs a CUDA device (on CPU training runs in fp32)")
        if self.model_dtype == "bfloat16" and self.precision == "fp32":
            raise ConfigError("model_dtype='bfloat16' needs precision 'bf16' or 'auto' (bf16 autocast), not 'fp32'")
        for i, target in enumerate(self.encoder_lora_targets):
            if not target:
                raise ConfigError(f"encoder_lora_targets[{i}] is empty; expected a module name such as 'query'")

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data, with the stage under ``"stage"``."""
        return {"stage": self.stage, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build a config from plain data, rejecting unknown keys and a mismatched ``stage`` by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.stage} config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        stage = data.pop("stage", cls.stage)
        if stage != cls.stage:
            raise ConfigError(f"stage={stage!r} but this is a {cls.stage} config")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.stage} config field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialise to JSON (and write it to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_yaml(self) -> str:
        yaml = _yaml()
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def absolute_paths(self, base: str | os.PathLike) -> "TrainConfig":
        """A copy whose relative path fields are resolved against ``base``."""
        return type(self).from_dict(_resolve_paths(self.to_dict(), type(self), Path(base)))


@dataclass
class Stage1Config(TrainConfig):
    """Stage 1, cross-lingual alignment: frozen LLM, encoder LoRA and connector train.

    Exactly one of ``model_path`` and ``model`` names the starting model.

    Args:
        model_path: A saved ``LusiferModel`` folder to start from.
        model: ``LusiferConfig`` fields (``encoder_path``, ``llm_path``, ``num_learnable_tokens``, ...) to
            build a fresh model (random connector) from base encoder and LLM folders.
        mask_ratio: Fraction of the encoder's (non-special) tokens replaced by the mask token in
            reconstruction records (the paper's 0.5). Objective ``"current"`` only: ``"reference"`` needs 0.
        max_target_length: LLM tokens of the target (text to reconstruct, or answer) before the EOS token.
        add_eos: Append the LLM's EOS token to the target so the LLM learns where the text ends.
        objective: ``"current"``: the encoder reads masked text, the LLM runs causally over
            ``[connector outputs ; target]``. ``"reference"`` (the authors' code): the encoder reads the clean
            text after the instruction "Please reconstruct the following text.", the LLM runs bidirectionally
            over ``[bos ; connector outputs ; target]`` with a share of the target tokens replaced by its mask
            token (its unk token when it has none) and a share of the target positions removed from the
            attention mask; shifted next-token labels on the target in both.
        llm_mask_probability: Objective ``"reference"``: probability that a target token is replaced by the
            LLM's mask token (``None``: 0.5, as the reference's alignment configs). Must stay unset with
            ``"current"``.
        llm_attention_drop_probability: Objective ``"reference"``: probability that a target position is
            removed from the attention mask (``None``: 0.5). Must stay unset with ``"current"``.
    """

    stage: ClassVar[str] = "stage1"
    path_fields: ClassVar[tuple[str, ...]] = ("output_dir", "train_files", "model_path", "model.encoder_path",
                                              "model.llm_path")

    model_path: str = ""
    model: dict = field(default_factory=dict)
    mask_ratio: float = 0.5
    max_target_length: int = 128
    add_eos: bool = True
    objective: str = "current"
    llm_mask_probability: float | None = None
    llm_attention_drop_probability: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.model_path) == bool(self.model):
            raise ConfigError(
                "stage1 needs exactly one of model_path (a saved LusiferModel folder) and model (LusiferConfig "
                f"fields with encoder_path and llm_path); got model_path={self.model_path!r}, model={self.model!r}"
            )
        if self.model:
            check_model_fields(self.stage, self.model, self.encoder_lora_targets)
        _check_range("mask_ratio", self.mask_ratio, 0.0, 1.0)
        _check_range("max_target_length", self.max_target_length, 1)
        self._check_objective()

    def _check_objective(self) -> None:
        if self.objective not in STAGE1_OBJECTIVES:
            raise ConfigError(
                f"objective={self.objective!r} is not supported; expected one of {', '.join(STAGE1_OBJECTIVES)}"
            )
        llm_fields = ("llm_mask_probability", "llm_attention_drop_probability")
        if self.objective == "current":
            for name in llm_fields:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name}={getattr(self, name)!r} is used only by objective 'reference' (masking on the LLM "
                        "side); remove it, or set objective: reference (the current objective masks the encoder "
                        "input with mask_ratio)"
                    )
            return
        if self.mask_ratio != 0:
            raise ConfigError(
                f"mask_ratio={self.mask_ratio!r} but objective='reference' keeps the encoder input clean (it masks "
                "on the LLM side: llm_mask_probability, llm_attention_drop_probability); set mask_ratio: 0"
            )
        for name in llm_fields:
            if getattr(self, name) is None:  # recorded resolved, so a saved config states what was trained
                setattr(self, name, REFERENCE_LLM_MASK_PROBABILITY)
            _check_range(name, getattr(self, name), 0.0, 1.0)


@dataclass
class Stage2Config(TrainConfig):
    """Stage 2, representation finetuning: LoRA on LLM and encoder, connector and projection train.

    Exactly one of ``model_path`` and ``model`` names the starting model. An ``llm-only`` model (the LLM
    alone, ``model: {architecture: llm-only, llm_path: ...}``) trains LoRA on the LLM and the projection
    only; it needs ``encoder_lora_targets: []``.

    Args:
        model_path: The starting ``LusiferModel`` folder (stage 1 writes one to ``OUTPUT_DIR/model``).
        model: ``LusiferConfig`` fields to build a fresh model from base folders instead (e.g. the LLM alone:
            ``{architecture: llm-only, llm_path: LLM_DIR}``; a fresh ``lusifer`` model starts with a random
            connector).
        llm_lora_targets: LLM module names that get LoRA.
        temperature: Softmax temperature of the contrastive loss on cosine similarities.
        num_hard_negatives: Hard negatives drawn per record from its ``negatives`` (fewer if it has fewer).
        grad_cache_chunk_size: Texts per forward pass with gradient caching (GradCache); ``None`` embeds a
            whole micro-batch at once. The contrastive batch stays ``batch_size`` either way.
        instruct_documents: Format positives and negatives with the record's instruction (document
            template); otherwise documents are embedded without instruction.
        distill_weight: Weight of the distillation term towards the encoder's own embedding (an addition to
            the paper; 0 turns it off). The in-batch cosine-similarity matrix of the LUSIFER vectors of every
            training text (queries, positives, hard negatives, plus the ``distill_files`` sentences) is pulled
            towards that of the encoder alone (adapters disabled: no second copy) on the same texts.
        distill_files: Optional ``.jsonl``/``.parquet`` files of unlabelled ``{"text"}`` rows used as extra
            distillation inputs, ``distill_batch_size`` per micro-batch, in a seeded order.
        distill_batch_size: Extra distillation texts per process per micro-batch (0 with no ``distill_files``).
        distill_teacher_path: ``""``: the teacher is the model's own encoder with its LoRA disabled (no second
            copy; after stage 1 that is the stage-1-merged encoder). A folder: a plain Hugging Face encoder
            (config.json, safetensors, tokenizer; e.g. mE5-small as released) loaded frozen as the teacher, a
            second encoder in memory, reading its own tokenization.
        distill_teacher_prefix: Text prepended to every teacher input, as the encoder is normally used
            (``"query: "`` for E5 models; the teacher reads the raw text, without the LUSIFER instruction).
        distill_teacher_pooling: The teacher's pooling of its last hidden states: ``"mean"`` (E5) or ``"cls"``.
        distill_loss: ``"kl"`` (softmax over each row's similarities) or ``"mse"`` (the cosines themselves);
            see :func:`lusifer.train.losses.similarity_distillation_loss`.
        distill_temperature: Softmax temperature of the ``"kl"`` distillation loss.
    """

    stage: ClassVar[str] = "stage2"
    path_fields: ClassVar[tuple[str, ...]] = ("output_dir", "train_files", "model_path", "model.encoder_path",
                                              "model.llm_path", "distill_files", "distill_teacher_path")

    model_path: str = ""
    model: dict = field(default_factory=dict)
    llm_lora_targets: list[str] = field(default_factory=lambda: list(LLM_LORA_TARGETS))
    temperature: float = 0.05
    num_hard_negatives: int = 1
    grad_cache_chunk_size: int | None = None
    instruct_documents: bool = True
    distill_weight: float = 0.0
    distill_files: list[str] = field(default_factory=list)
    distill_batch_size: int = 0
    distill_teacher_path: str = ""
    distill_teacher_prefix: str = "query: "
    distill_teacher_pooling: str = "mean"
    distill_loss: str = "kl"
    distill_temperature: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.model_path) == bool(self.model):
            raise ConfigError(
                "stage2 needs exactly one of model_path (a saved LusiferModel folder, e.g. stage 1's "
                "OUTPUT_DIR/model) and model (LusiferConfig fields of a fresh model, e.g. {architecture: llm-only, "
                f"llm_path: ...}}); got model_path={self.model_path!r}, model={self.model!r}"
            )
        if self.model:
            check_model_fields(self.stage, self.model, self.encoder_lora_targets)
        _check_range("temperature", self.temperature, 0.0, low_open=True)
        _check_range("num_hard_negatives", self.num_hard_negatives, 0)
        _check_range("grad_cache_chunk_size", self.grad_cache_chunk_size, 1)
        for i, target in enumerate(self.llm_lora_targets):
            if not target:
                raise ConfigError(f"llm_lora_targets[{i}] is empty; expected a module name such as 'q_proj'")
        self._check_distillation()

    @property
    def distill(self) -> bool:
        """Whether the distillation term is on."""
        return self.distill_weight > 0

    def _check_distillation(self) -> None:
        _check_range("distill_weight", self.distill_weight, 0.0)
        _check_range("distill_batch_size", self.distill_batch_size, 0)
        _check_range("distill_temperature", self.distill_temperature, 0.0, low_open=True)
        for name, allowed in (("distill_teacher_pooling", TEACHER_POOLINGS), ("distill_loss", DISTILL_LOSSES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported; expected one of {', '.join(allowed)}")
        for i, name in enumerate(self.distill_files):
            if not name.endswith((".jsonl", ".json", ".parquet")):
                raise ConfigError(f"distill_files[{i}]={name!r} must end with .jsonl, .json or .parquet")
        if self.distill_files and not self.distill:
            raise ConfigError(f"distill_files={self.distill_files} but distill_weight=0 (distillation off); set "
                              "distill_weight > 0 or remove distill_files")
        if self.distill_files and self.distill_batch_size == 0:
            raise ConfigError(f"distill_files={self.distill_files} but distill_batch_size=0; set how many of their "
                              "texts join each micro-batch (e.g. distill_batch_size=64)")
        if self.distill_batch_size and not self.distill_files:
            raise ConfigError(f"distill_batch_size={self.distill_batch_size} but distill_files is empty; name the "
                              "files of unlabelled {\"text\"} rows or set distill_batch_size=0")
        if self.distill_teacher_path and not self.distill:
            raise ConfigError(f"distill_teacher_path={self.distill_teacher_path!r} but distill_weight=0 (distillation "
                              "off); set distill_weight > 0 or remove distill_teacher_path")
        if (self.distill and not self.distill_teacher_path and self.model
                and LusiferConfig.from_dict(self.model).is_llm_only):
            raise ConfigError(f"distill_weight={self.distill_weight} but model.architecture='llm-only' has no "
                              "encoder to distil from; set distill_teacher_path to an encoder folder or "
                              "distill_weight=0")

    def check_distill_files(self) -> None:
        """Raise :class:`ConfigError` naming the first of ``distill_files`` (or ``distill_teacher_path``) that
        does not exist.

        Checked when a run starts rather than in ``__post_init__``: a finished run's saved config must still
        load (e.g. to merge it) where its distillation inputs are not present.
        """
        for i, name in enumerate(self.distill_files):
            if not Path(name).is_file():
                raise ConfigError(f"distill_files[{i}]={name!r} does not exist; expected a .jsonl or .parquet file "
                                  'of {"text": ...} rows')
        if self.distill_teacher_path and not (Path(self.distill_teacher_path) / "config.json").is_file():
            raise ConfigError(f"distill_teacher_path={self.distill_teacher_path!r} is not an encoder folder "
                              "(config.json, *.safetensors, tokenizer); expected e.g. mE5-small's folder")


CONFIG_CLASSES: dict[str, type[TrainConfig]] = {"stage1": Stage1Config, "stage2": Stage2Config}


# ---- loading with overrides ----------------------------------------------------------------------------
def _yaml():
    from lusifer.extras import require

    return require("yaml", purpose="read YAML configs")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) mapping."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(file)!r} is not valid JSON: {exc}") from exc
    elif suffix in (".yaml", ".yml"):
        yaml = _yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(file)!r} is not valid YAML: {exc}") from exc
    else:
        raise ConfigError(f"config file {str(file)!r} must end with .json, .yaml or .yml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a mapping of fields, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as JSON, else YAML (``[a, b]``, ``true``), else kept as text."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return key, _yaml().safe_load(raw)
    except Exception:  # noqa: BLE001 - any YAML failure means: keep the raw text
        return key, raw


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def _get_dotted(data: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    parts = key.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), parts[-1]


def _resolve_one(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and value not in ("latest",) and not os.path.isabs(value):
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_resolve_one(v, base) for v in value]
    return value


def _resolve_paths(data: dict[str, Any], cls: type[TrainConfig], base: Path,
                   only: set[str] | None = None) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    for key in cls.path_fields + ("resume_from",):
        if only is not None and key not in only:
            continue
        node, leaf = _get_dotted(data, key)
        if node is not None and leaf in node:
            node[leaf] = _resolve_one(node[leaf], base)
    return data


def load_config(stage: str, path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> TrainConfig:
    """Load a stage config from a file, then apply ``key=value`` overrides and explicit values.

    Args:
        stage: ``"stage1"`` or ``"stage2"``.
        path: JSON or YAML config file (its relative paths are resolved against its folder).
        overrides: ``key=value`` strings (dotted keys reach into ``model``), relative to the current folder.
        values: Already-typed overrides (e.g. from command-line flags), relative to the current folder.

    Returns:
        The validated config with absolute paths.
    """
    if stage not in CONFIG_CLASSES:
        raise ConfigError(f"stage={stage!r}; expected one of {', '.join(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[stage]
    data: dict[str, Any] = {}
    if path is not None:
        data = _resolve_paths(read_config_file(path), cls, Path(path).resolve().parent)
    changed: dict[str, Any] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        changed[key] = value
    changed.update({k: v for k, v in (values or {}).items() if v is not None})
    for key, value in changed.items():
        _set_dotted(data, key, value)
    data = _resolve_paths(data, cls, Path.cwd(), only=set(changed))
    return cls.from_dict(data)


def config_from_saved(data: dict[str, Any]) -> TrainConfig:
    """Rebuild the config stored in a checkpoint (its ``stage`` key selects the class)."""
    stage = data.get("stage") if isinstance(data, dict) else None
    if stage not in CONFIG_CLASSES:
        raise ConfigError(f"saved config has stage={stage!r}; expected one of {', '.join(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[stage].from_dict(data)
