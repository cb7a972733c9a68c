"""LoRA through peft's public API: wrap a backbone, find wrapped backbones, merge them back."""

from __future__ import annotations

import logging

from torch import nn

from lusifer.extras import require

logger = logging.getLogger(__name__)

# LusiferModel attributes that may hold a LoRA-wrapped backbone
BACKBONES = ("encoder", "llm")


def apply_lora(module: nn.Module, targets: list[str], r: int, alpha: int, dropout: float) -> nn.Module:
    """Wrap ``module`` in a ``peft.PeftModel`` with LoRA on the modules named ``targets``.

    The base weights are frozen by peft; only ``lora_A``/``lora_B`` train. Raises ``ValueError`` naming the
    targets when none of them exists in ``module``.
    """
    peft = require("peft", purpose="train with LoRA")
    present = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    missing = [t for t in targets if t not in present]
    if len(missing) == len(targets):
        raise ValueError(
            f"none of the LoRA target modules {targets} exists in {type(module).__name__}; "
            f"its linear layers are named {sorted({n.rsplit('.', 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)})}"
        )
    if missing:
        logger.warning("LoRA targets %s are not in %s; using the others", missing, type(module).__name__)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return peft.get_peft_model(module, config)


def is_lora_wrapped(module: nn.Module) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(module, peft.PeftModel)


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every LoRA-wrapped backbone of a ``LusiferModel`` into its base weights, in place.

    Each ``PeftModel`` is replaced by the plain model that ``merge_and_unload()`` returns.

    Returns:
        The names of the backbones that were merged.
    """
    merged = []
    for name in BACKBONES:
        module = getattr(model, name)
        if is_lora_wrapped(module):
            setattr(model, name, module.merge_and_unload())
            merged.append(name)
    return merged
