"""The two prompt styles and where the special tokens come from (the released LUSIFER's text format)."""

from __future__ import annotations

import numpy as np
import pytest

from lusifer.onnx_interface import ExportManifest, ManifestError, VariantInfo
from lusifer.prompts import REFERENCE_DOCUMENT_TEMPLATE, REFERENCE_QUERY_TEMPLATE, format_text, format_texts


def test_reference_style_keeps_the_template_and_the_instruction_verbatim():
    assert format_text("hi", REFERENCE_QUERY_TEMPLATE, "", "reference") == "<s>.\nhi</s>"
    assert format_text("hi", REFERENCE_QUERY_TEMPLATE, None, "reference") == "<s>.\nhi</s>"
    assert format_text("hi", REFERENCE_DOCUMENT_TEMPLATE, "Find it.", "reference") == "<s>Find it.. Candidate:\nhi</s>"
    # this project's style: no template without an instruction, trailing dot stripped
    assert format_text("hi", "{instruction}.\n{text}", "", "lusifer") == "hi"
    assert format_text("hi", "{instruction}.\n{text}", "Find it.", "lusifer") == "Find it.\nhi"
    with pytest.raises(ValueError, match="prompt_style='e5'"):
        format_texts(["hi"], "query", "", style="e5")


def _manifest(**fields) -> ExportManifest:
    return ExportManifest(embedding_dim=4, max_length=8, pad_token_id=1, variants={"fp32": VariantInfo("model.onnx")},
                          query_template=REFERENCE_QUERY_TEMPLATE, document_template=REFERENCE_DOCUMENT_TEMPLATE,
                          **fields)


def test_runtime_tokenizer_cuts_the_closing_special_with_cut_specials(tmp_path):
    """With truncation='cut-specials' the runtime tokenises the templates' literal <s>/</s> and cuts a long text's
    closing </s>, as the reference does; with 'keep-specials' the tokenizer adds them around the cut text."""
    from lusifer.runtime.tokenize import TextTokenizer
    from lusifer.tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    long_text = "The cat sleeps on the warm windowsill. " * 10
    cut = TextTokenizer(tmp_path / "tokenizer.json", _manifest(prompt_style="reference", truncation="cut-specials"))
    enc = cut.encode(["hi", long_text], "query", "")
    short, long = enc.row(0), enc.row(1)
    assert short[0] == 0 and short[-1] == 2 and np.count_nonzero(short == 0) == 1  # <s> ... </s> once, from the text
    assert len(long) == 8 and long[0] == 0 and long[-1] != 2 and enc.truncated[1]
    keep = TextTokenizer(tmp_path / "tokenizer.json", _manifest(prompt_style="lusifer", truncation="keep-specials"))
    kept = keep.encode([long_text], "query", "").row(0)
    assert len(kept) == 8 and kept[0] == 0 and kept[-1] == 2


def test_manifest_rejects_unknown_text_format_values():
    with pytest.raises(ManifestError, match="prompt_style='e5'"):
        _manifest(prompt_style="e5")
    with pytest.raises(ManifestError, match="truncation='left'"):
        _manifest(truncation="left")


def test_chunking_follows_the_reference_text_format(tmp_path):
    """Windows of a reference-style export keep its literal <s>{instruction}.\\n ... </s> in every window, and a
    short row is tokenised exactly as without chunking."""
    from lusifer.runtime.chunking import ChunkSettings, RowEncoder
    from lusifer.runtime.tokenize import TextTokenizer
    from lusifer.tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    manifest = ExportManifest(embedding_dim=4, max_length=24, pad_token_id=1, variants={"fp32": VariantInfo("m.onnx")},
                              query_template=REFERENCE_QUERY_TEMPLATE, document_template=REFERENCE_DOCUMENT_TEMPLATE,
                              prompt_style="reference", truncation="cut-specials")
    tok = TextTokenizer(tmp_path / "tokenizer.json", manifest)
    encoder = RowEncoder(tok, "query", "", ChunkSettings(8, 2))
    long_text = " ".join(["word"] * 40)
    rows = encoder.encode(["hi", long_text])
    np.testing.assert_array_equal(rows.sequences.row(0), tok.encode(["hi"], "query", "").row(0))
    head = tok.encode([""], "query", "").row(0)[:-1]  # "<s>.\n" as the template writes it, without "</s>"
    assert head[0] == 0 and np.count_nonzero(head == 0) == 1
    windows = [rows.sequences.row(i) for i in range(rows.first[1], rows.first[2])]
    assert len(windows) > 2
    for seq in windows:
        assert seq[: len(head)].tolist() == head.tolist() and seq[-1] == 2 and np.count_nonzero(seq == 2) == 1
        assert len(seq) <= len(head) + 8 + 1
