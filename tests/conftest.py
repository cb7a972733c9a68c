"""Shared fixtures: tiny random models built locally (no hub access)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

DECODERS = ("llama", "mistral", "qwen2")


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    """Build (once per session) a tiny saved LusiferModel for an (encoder, decoder) pair; returns its folder."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from lusifer.tiny import build_tiny_lusifer

    cache: dict = {}

    def make(encoder: str = "xlm-roberta", decoder: str = "llama"):
        key = (encoder, decoder)
        if key not in cache:
            cache[key] = build_tiny_lusifer(tmp_path_factory.mktemp(f"tiny-{encoder}-{decoder}"), encoder, decoder)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llm_only_factory(tmp_path_factory):
    """Build (once per session) a tiny saved ``llm-only`` LusiferModel (the LLM alone) for a decoder family."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from lusifer.tiny import build_tiny_llm_only

    cache: dict = {}

    def make(decoder: str = "llama", projection_dim: int | None = 16):
        key = (decoder, projection_dim)
        if key not in cache:
            cache[key] = build_tiny_llm_only(tmp_path_factory.mktemp(f"tiny-llm-only-{decoder}"), decoder,
                                             projection_dim=projection_dim)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_factory):
    """The default tiny model folder (XLM-R encoder, Llama decoder)."""
    return tiny_factory()


MULTILINGUAL_TEXTS = [
    "The cat sleeps on the warm windowsill.",
    "El gato duerme en la ventana.",
    "Кошка спит на тёплом подоконнике после обеда.",
    "猫在下午睡在温暖的窗台上。",
    "القطة تنام على حافة النافذة الدافئة بعد الظهر.",
    "Paka analala.",
    "हर सुबह सात बजे स्टेशन से एक ट्रेन निकलती है।",
    "A",
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread, and the test machine's cores are shared (per module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bidirectional_and_causal(model, ids, mask):
    """PyTorch embeddings of ``model`` as it is (bidirectional) and with its decoder made causal (the control)."""
    import torch

    from lusifer.backbones import set_attention_causal

    with torch.no_grad():
        bidirectional = model(ids, mask).numpy()
        set_attention_causal(model.llm, True)
        try:
            causal = model(ids, mask).numpy()
        finally:
            set_attention_causal(model.llm, False)
    return bidirectional, causal
