"""ONNX export (fp32): parity with PyTorch for every backbone family, bidirectional attention, padding sides,
a self-contained folder whose manifest checksums match, and no LLM vocabulary tables in the graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, bidirectional_and_causal

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lusifer.export import export_model
from lusifer.export.manifest import sha256_file
from lusifer.export.validation_texts import LANGUAGES

from lusifer import LusiferModel
from lusifer.onnx_interface import MANIFEST_NAME, MIN_COSINE, ExportManifest
from lusifer.vectors import row_cosines

# each decoder family once, each encoder at least once
PAIRS = [("xlm-roberta", "llama"), ("bert", "mistral"), ("xlm-roberta", "qwen2")]
INSTRUCTION = "Find the same sentence"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32_exports(tiny_factory, tmp_path_factory, one_torch_thread):
    """fp32 exports of the pairs; the first also has an INT8 graph, the last goes through the CLI at opset 17."""
    from click.testing import CliRunner
    from lusifer.export.cli import main

    out = {}
    for i, pair in enumerate(PAIRS):
        target = tmp_path_factory.mktemp("export") / f"{pair[0]}-{pair[1]}"
        if i == len(PAIRS) - 1:
            result = CliRunner().invoke(main, [str(tiny_factory(*pair)), "--out", str(target), "--opset", "17"])
            assert result.exit_code == 0, result.output
            assert "fp32: model.onnx  min cosine" in result.output
        else:
            export_model(tiny_factory(*pair), target, quantize="int8" if i == 0 else None)
        out[pair] = target
    return out


@pytest.fixture(scope="module")
def models(tiny_factory):
    cache = {}

    def get(pair):
        if pair not in cache:
            cache[pair] = LusiferModel.from_pretrained(tiny_factory(*pair))
        return cache[pair]

    return get


def ort_embed(folder: Path, input_ids: np.ndarray, attention_mask: np.ndarray, file: str = "model.onnx") -> np.ndarray:
    session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    (emb,) = session.run(None, {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)})
    return emb


def left_pad(ids: np.ndarray, mask: np.ndarray, pad: int, extra: int = 0):
    n_rows, width = ids.shape
    width += extra
    out_ids = np.full((n_rows, width), pad, dtype=np.int64)
    out_mask = np.zeros((n_rows, width), dtype=np.int64)
    for i in range(n_rows):
        n = int(mask[i].sum())
        out_ids[i, width - n :] = ids[i, :n]
        out_mask[i, width - n :] = 1
    return out_ids, out_mask


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_onnx_matches_pytorch(fp32_exports, models, pair):
    """New texts, batch sizes 1 and 8, queries with an instruction: ORT equals PyTorch fp32."""
    folder, model = fp32_exports[pair], models(pair)
    manifest = ExportManifest.load(folder)
    assert manifest.variants["fp32"].parity["min_cosine"] >= MIN_COSINE["fp32"]
    for texts in (MULTILINGUAL_TEXTS, MULTILINGUAL_TEXTS[2:3]):
        enc = model.tokenize(texts, kind="query", instruction=INSTRUCTION)
        got = ort_embed(folder, enc["input_ids"].numpy(), enc["attention_mask"].numpy())
        want = model.encode(texts, kind="query", instruction=INSTRUCTION, normalize=False, batch_size=3)
        assert got.dtype == np.float32 and got.shape == (len(texts), manifest.embedding_dim)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
        assert row_cosines(got, want).min() >= MIN_COSINE["fp32"]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_onnx_attention_is_bidirectional(fp32_exports, models, pair):
    """ORT equals the bidirectional PyTorch model and clearly differs from the same model made causal."""
    folder, model = fp32_exports[pair], models(pair)
    enc = model.tokenize(MULTILINGUAL_TEXTS, kind="document", instruction=INSTRUCTION)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    got = ort_embed(folder, ids.numpy(), mask.numpy())
    bidirectional, causal = bidirectional_and_causal(model, ids, mask)
    to_bidirectional = np.abs(got - bidirectional).max()
    to_causal = np.abs(got - causal).max()
    assert to_bidirectional < 1e-5
    assert to_causal > 1e-3 and to_causal > 100 * to_bidirectional
    assert row_cosines(got, bidirectional).min() >= MIN_COSINE["fp32"]
    assert ExportManifest.load(folder).variants["fp32"].parity["bidirectional_verified"] is True


@pytest.mark.parametrize("pair", PAIRS[:2], ids=lambda p: "-".join(p))
def test_onnx_padding_side_invariance(fp32_exports, models, pair):
    """Left padding, and extra padding columns, give the same ORT embeddings as right padding."""
    folder, model = fp32_exports[pair], models(pair)
    enc = model.tokenize(MULTILINGUAL_TEXTS, kind="query", instruction=INSTRUCTION)
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    pad = ExportManifest.load(folder).pad_token_id
    assert pad == model.tokenizer.pad_token_id
    right = ort_embed(folder, ids, mask)
    left = ort_embed(folder, *left_pad(ids, mask, pad))
    wide_left = ort_embed(folder, *left_pad(ids, mask, pad, extra=5))
    wide_right = ort_embed(
        folder, np.pad(ids, ((0, 0), (0, 7)), constant_values=pad), np.pad(mask, ((0, 0), (0, 7)))
    )
    for other in (left, wide_left, wide_right):
        np.testing.assert_allclose(other, right, atol=1e-5, rtol=1e-4)


def test_manifest_lists_every_file_with_matching_checksums(fp32_exports, models):
    pair = PAIRS[0]
    folder, model = fp32_exports[pair], models(pair)
    manifest = ExportManifest.load(folder)
    listed = {manifest.tokenizer_file: manifest.tokenizer_sha256}
    for info in manifest.variants.values():
        assert info.file in info.files
        listed.update(info.files)
    on_disk = {p.name for p in folder.iterdir()}
    assert on_disk == set(listed) | {MANIFEST_NAME}
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.variants["fp32"].file == "model.onnx" and manifest.variants["int8"].file == "model_int8.onnx"
    for name, sha in listed.items():
        assert sha256_file(folder / name) == sha, name
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    # what the runtime needs, straight from the model
    config = model.config
    assert manifest.embedding_dim == config.embedding_dim
    assert manifest.max_length == config.max_length
    assert manifest.pad_token_id == model.tokenizer.pad_token_id
    assert (manifest.query_template, manifest.document_template) == (config.query_template, config.document_template)
    assert manifest.normalize is config.normalize
    for lib in ("lusifer", "torch", "transformers", "onnx", "onnxruntime"):
        assert lib in manifest.versions
    assert json.loads((folder / MANIFEST_NAME).read_text("utf-8")) == manifest.to_dict()
    for info in manifest.variants.values():
        assert set(info.parity["per_language"]) == set(LANGUAGES)
        assert info.parity["batch_sizes"] and 2 not in info.parity["batch_sizes"]  # 2 is the traced batch
        assert info.parity["padding_sides"] == ["left", "right"]


def test_opset_option_is_honoured(fp32_exports):
    folder = fp32_exports[PAIRS[-1]]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert ExportManifest.load(folder).opset == 17
    assert ExportManifest.load(fp32_exports[PAIRS[0]]).opset == 18  # the default


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_graph_has_no_llm_token_table_or_lm_head(fp32_exports, models, pair):
    folder, model = fp32_exports[pair], models(pair)
    graph = onnx.load(str(folder / "model.onnx"))
    forbidden = [
        model.llm.get_input_embeddings().weight.detach().numpy(),
        model.llm.get_output_embeddings().weight.detach().numpy(),
    ]
    for init in graph.graph.initializer:
        value = onnx.numpy_helper.to_array(init)
        for table in forbidden:
            for candidate in (table, table.T):
                assert not (value.shape == candidate.shape and np.allclose(value, candidate)), init.name


def test_int8_variant_runs_within_its_floor(fp32_exports, models):
    pair = PAIRS[0]
    folder, model = fp32_exports[pair], models(pair)
    info = ExportManifest.load(folder).variants["int8"]
    assert info.quantization == "int8-block" and info.file == "model_int8.onnx"
    assert info.parity["min_cosine"] >= MIN_COSINE["int8"]
    assert set(info.parity["per_language"]) == set(LANGUAGES)
    graph = onnx.load(str(folder / info.file))
    # the default (block) scheme: MatMulNBits, shipped as ONNX Runtime optimised it for the CPU (offline)
    ops = {n.op_type for n in graph.graph.node}
    assert "MatMulNBits" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert "graph_optimization" in ExportManifest.load(folder).source["int8_quantization"]
    enc = model.tokenize(MULTILINGUAL_TEXTS)
    got = ort_embed(folder, enc["input_ids"].numpy(), enc["attention_mask"].numpy(), file=info.file)
    want = model.encode(MULTILINGUAL_TEXTS, normalize=False)
    assert row_cosines(got, want).min() >= MIN_COSINE["int8"]


NO_TORCH_EMBED = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _Block())
import json
from pathlib import Path
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
from lusifer.onnx_interface import ExportManifest
from lusifer.prompts import format_texts
folder = Path(sys.argv[1])
texts = json.loads(sys.argv[2])
m = ExportManifest.load(folder)
tok = Tokenizer.from_file(str(folder / m.tokenizer_file))
tok.no_padding()
tok.enable_truncation(m.max_length)
encs = tok.encode_batch(format_texts(texts, "query", sys.argv[3], m.query_template, m.document_template))
width = max(len(e.ids) for e in encs)
ids = np.full((len(encs), width), m.pad_token_id, dtype=np.int64)
mask = np.zeros((len(encs), width), dtype=np.int64)
for i, e in enumerate(encs):
    ids[i, width - len(e.ids):] = e.ids
    mask[i, width - len(e.ids):] = 1
session = ort.InferenceSession(str(folder / m.variants["fp32"].file), providers=["CPUExecutionProvider"])
(emb,) = session.run(m.output_names, {m.input_names[0]: ids, m.input_names[1]: mask})
np.save(sys.argv[4], emb)
"""


def test_export_folder_is_self_contained_without_torch(fp32_exports, models, tmp_path):
    """A copy of the folder alone, with onnxruntime + tokenizers and torch blocked, reproduces PyTorch."""
    import shutil

    pair = PAIRS[1]
    copy = tmp_path / "copied"
    shutil.copytree(fp32_exports[pair], copy)
    out = tmp_path / "emb.npy"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_EMBED, str(copy), json.dumps(MULTILINGUAL_TEXTS), INSTRUCTION, str(out)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    want = models(pair).encode(MULTILINGUAL_TEXTS, kind="query", instruction=INSTRUCTION, normalize=False)
    np.testing.assert_allclose(np.load(out), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pair", PAIRS[:2], ids=lambda p: "-".join(p))
def test_exported_tokenizer_is_compact_and_gives_the_same_ids(fp32_exports, tiny_factory, pair):
    """tokenizer.json is written without indentation (XLM-R's file: 17 -> 9 MB), the same JSON data."""
    from tokenizers import Tokenizer

    exported = fp32_exports[pair] / "tokenizer.json"
    source = tiny_factory(*pair) / "encoder" / "tokenizer.json"
    assert json.loads(exported.read_text("utf-8")) == json.loads(source.read_text("utf-8"))
    assert b"\n" not in exported.read_bytes() and exported.stat().st_size < source.stat().st_size
    texts = MULTILINGUAL_TEXTS
    a, b = Tokenizer.from_file(str(exported)), Tokenizer.from_file(str(source))
    assert [e.ids for e in a.encode_batch(texts)] == [e.ids for e in b.encode_batch(texts)]
