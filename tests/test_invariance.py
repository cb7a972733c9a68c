"""A text's embedding does not depend on its batch mates, nor on the padding side."""

import numpy as np
import pytest
import torch

from conftest import DECODERS, MULTILINGUAL_TEXTS
from lusifer import LusiferModel


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("encoder", ["xlm-roberta", "bert"])
def test_batch_invariance(tiny_factory, encoder, decoder):
    model = LusiferModel.from_pretrained(tiny_factory(encoder, decoder))
    together = model.encode(MULTILINGUAL_TEXTS, batch_size=8)
    alone = np.stack([model.encode([t])[0] for t in MULTILINGUAL_TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def _left_pad(input_ids, attention_mask, pad_id):
    ids = torch.full_like(input_ids, pad_id)
    mask = torch.zeros_like(attention_mask)
    for i in range(input_ids.shape[0]):
        n = int(attention_mask[i].sum())
        ids[i, -n:] = input_ids[i, :n]
        mask[i, -n:] = 1
    return ids, mask


@pytest.mark.parametrize("encoder", ["xlm-roberta", "bert"])
def test_padding_side_invariance(tiny_factory, encoder):
    model = LusiferModel.from_pretrained(tiny_factory(encoder, "llama"))
    batch = model.tokenize(MULTILINGUAL_TEXTS, kind="document", instruction="Find the same sentence")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    left_ids, left_mask = _left_pad(ids, mask, model.tokenizer.pad_token_id)
    assert not torch.equal(left_ids, ids)
    with torch.no_grad():
        right = model(ids, mask)
        left = model(left_ids, left_mask)
        # extra padding on the right changes nothing either
        wide_ids = torch.cat([ids, torch.full((ids.shape[0], 5), model.tokenizer.pad_token_id)], dim=1)
        wide_mask = torch.cat([mask, torch.zeros(ids.shape[0], 5, dtype=mask.dtype)], dim=1)
        wide = model(wide_ids, wide_mask)
    torch.testing.assert_close(left, right, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(wide, right, atol=2e-5, rtol=1e-4)
