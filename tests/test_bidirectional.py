"""The decoder must attend bidirectionally: a later input changes an earlier position's hidden state."""

import pytest
import torch

from conftest import DECODERS
from lusifer import LusiferModel
from lusifer.backbones import set_attention_causal


def _earlier_state_change(model, causal: bool) -> float:
    set_attention_causal(model.llm, causal)
    torch.manual_seed(0)
    embeds = torch.randn(2, 7, model.config.llm_hidden)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # second row right-padded: the mask is materialised
    with torch.no_grad():
        before = model.decoder_states(embeds, mask)
        changed = embeds.clone()
        changed[:, 4] += 1.0  # change a later (real) position
        after = model.decoder_states(changed, mask)
    return (before[:, :3] - after[:, :3]).abs().max().item()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_is_bidirectional(tiny_factory, decoder, attn):
    model = LusiferModel.from_pretrained(tiny_factory("xlm-roberta", decoder))
    model.llm.set_attn_implementation(attn)
    assert _earlier_state_change(model, causal=False) > 1e-4
    # causal control: the same change leaves earlier positions untouched
    assert _earlier_state_change(model, causal=True) < 1e-6


@pytest.mark.parametrize("decoder", DECODERS)
def test_bidirectional_without_padding(tiny_factory, decoder):
    """All-ones masks may be skipped by transformers; attention must stay bidirectional then too."""
    model = LusiferModel.from_pretrained(tiny_factory("xlm-roberta", decoder))
    embeds = torch.randn(1, 6, model.config.llm_hidden)
    mask = torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        before = model.decoder_states(embeds, mask)
        changed = embeds.clone()
        changed[:, -1] += 1.0
        after = model.decoder_states(changed, mask)
    assert (before[:, 0] - after[:, 0]).abs().max().item() > 1e-4


def test_full_model_first_token_sees_last(tiny_model_dir):
    """End to end through the encoder: editing the end of a text changes the decoder state at position 0."""
    model = LusiferModel.from_pretrained(tiny_model_dir)
    a = model.tokenize(["one two three four five six"])
    b = model.tokenize(["one two three four five sevenfold"])
    with torch.no_grad():
        ea, ma = model.llm_inputs(a["input_ids"], a["attention_mask"])
        eb, mb = model.llm_inputs(b["input_ids"], b["attention_mask"])
        # encoder states at position 0 differ too (encoder is bidirectional); isolate the decoder:
        eb2 = eb.clone()
        eb2[:, 0] = ea[:, 0]
        n = min(ea.shape[1], eb.shape[1])
        sa = model.decoder_states(ea[:, :n], ma[:, :n])
        sb = model.decoder_states(eb2[:, :n], mb[:, :n])
    assert (sa[:, 0] - sb[:, 0]).abs().max().item() > 1e-5
