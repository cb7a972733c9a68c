"""Building the model a stage trains: starting weights, LoRA, which parameters train, memory options."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lusifer.config import LusiferConfig
from lusifer.modeling import CONFIG_NAME, LusiferModel
from lusifer.train.config import TrainConfig, check_llm_only_stage
from lusifer.train.lora import apply_lora

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_starting_architecture(config: TrainConfig) -> None:
    """Fail before any weights load when the starting model's architecture does not fit the stage.

    ``model`` fields are checked when the config is built; this reads the architecture of a ``model_path``
    folder (an ``llm-only`` model cannot go through stage 1 and takes no encoder LoRA).
    """
    model_path = getattr(config, "model_path", "")
    config_file = Path(model_path) / CONFIG_NAME
    if not model_path or not config_file.is_file():
        return  # a fresh model (checked with the config) or a broken folder (from_pretrained says what is wrong)
    if LusiferConfig.from_json(config_file).is_llm_only:
        check_llm_only_stage(config.stage, config.encoder_lora_targets,
                             f"the starting model {model_path!r} (architecture 'llm-only')")


def load_starting_model(config: TrainConfig, dtype: torch.dtype | None = None) -> LusiferModel:
    """The model a run starts from: a saved folder (``model_path``) or base models (``model`` fields)."""
    check_starting_architecture(config)
    dtype = dtype or DTYPES[config.model_dtype]
    model_path = getattr(config, "model_path", "")
    if model_path:
        return LusiferModel.from_pretrained(model_path, dtype=dtype)
    return LusiferModel.from_config(LusiferConfig.from_dict(dict(config.model)), dtype=dtype)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability (modules and float ``attention_dropout`` attributes) to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def enable_checkpointing(backbone: nn.Module) -> None:
    """Recompute each layer's activations in backward (non-reentrant: works with frozen inputs and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.2x
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_trainable(
    model: LusiferModel,
    config: TrainConfig,
    llm_lora_targets: list[str] | None,
    train_projection: bool,
) -> LusiferModel:
    """Freeze the backbones, add LoRA, and mark the LUSIFER modules trainable (in float32).

    An ``llm-only`` model has no encoder and no connector: only the LLM's LoRA and the projection train.

    Args:
        model: The starting model (no LoRA yet).
        config: Stage config (LoRA rank/alpha/dropout, encoder targets, memory options).
        llm_lora_targets: LLM modules that get LoRA; ``None``: the LLM stays frozen without LoRA.
        train_projection: Whether the projection (if any) trains.

    Returns:
        The same model, with ``model.encoder`` / ``model.llm`` possibly replaced by ``PeftModel`` wrappers.
    """
    model.requires_grad_(False)
    if model.encoder is None and config.encoder_lora_targets:
        check_llm_only_stage(config.stage, config.encoder_lora_targets, "the model (architecture 'llm-only')")
    if config.gradient_checkpointing:
        for backbone in (model.encoder, model.llm):
            if backbone is not None:
                enable_checkpointing(backbone)
    if config.encoder_lora_targets:
        model.encoder = apply_lora(model.encoder, config.encoder_lora_targets, config.lora_r, config.lora_alpha,
                                   config.lora_dropout)
    if llm_lora_targets:
        model.llm = apply_lora(model.llm, llm_lora_targets, config.lora_r, config.lora_alpha, config.lora_dropout)
    if model.connector is not None:
        model.connector.requires_grad_(True)
    if train_projection and model.projection is not None:
        model.projection.requires_grad_(True)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if config.disable_dropout:
        disable_dropout(model)
    return model


def build_stage_model(config: TrainConfig, device: torch.device | str = "cpu") -> LusiferModel:
    """The model a stage trains, as its task builds it: the starting model, LoRA, the trainable modules.

    Stage 1 trains the encoder's LoRA and the connector (the LLM stays frozen, without LoRA); stage 2 also puts
    LoRA on the LLM and trains the projection. Used by both stages and to rebuild a checkpoint's model
    (:func:`lusifer.train.merge.model_from_checkpoint`).
    """
    model = load_starting_model(config)
    if config.stage == "stage1":
        prepare_trainable(model, config, llm_lora_targets=None, train_projection=False)
    elif config.stage == "stage2":
        prepare_trainable(model, config, llm_lora_targets=config.llm_lora_targets, train_projection=True)
    else:
        raise ValueError(f"stage={config.stage!r}; expected stage1 or stage2")
    return model.to(device)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every trainable parameter, in a stable order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
