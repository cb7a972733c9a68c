"""lusifer.runtime.Embedder: same ids and embeddings as LusiferModel, export checks, devices, no torch."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS
from test_runtime_support import BLOCK_TORCH, corpus_texts, run_python

from lusifer.onnx_interface import ExportManifest, VariantInfo
from lusifer.runtime import DeviceError, Embedder, ExportFolderError
from lusifer.runtime.export_folder import choose_variant

pytest_plugins = ["test_runtime_support"]  # tiny_export, export_copy fixtures


@pytest.fixture(scope="module")
def tiny_model(tiny_factory):
    from lusifer.modeling import LusiferModel

    return LusiferModel.from_pretrained(tiny_factory())


@pytest.fixture(scope="module")
def embedder(tiny_export):
    return Embedder(tiny_export, device="cpu")


def test_token_ids_match_hf_tokenizer_with_truncation(embedder, tiny_model):
    texts = MULTILINGUAL_TEXTS + corpus_texts(40) + [""]
    for kind, instruction in [("query", None), ("document", "Find the matching passage")]:
        hf = tiny_model.tokenize(texts, kind, instruction)
        ours = embedder.tokenize(texts, kind, instruction)
        for i in range(len(texts)):
            expected = hf["input_ids"][i][hf["attention_mask"][i].bool()].tolist()
            assert ours.row(i).tolist() == expected, (kind, texts[i])
        formatted = tiny_model.format(texts, kind, instruction)
        lengths_untruncated = [len(tiny_model.tokenizer(t)["input_ids"]) for t in formatted]
        assert ours.truncated.tolist() == [n > embedder.max_length for n in lengths_untruncated]
        assert ours.truncated.any()  # the test corpus really exercises truncation


@pytest.mark.parametrize("kind,instruction", [("query", None), ("document", "Find the same sentence"), ("query", "")])
def test_embed_matches_lusifer_model_encode(embedder, tiny_model, kind, instruction):
    texts = MULTILINGUAL_TEXTS + corpus_texts(30)
    ours = embedder.embed(texts, kind=kind, instruction=instruction)
    ref = tiny_model.encode(texts, kind=kind, instruction=instruction)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * ref).sum(axis=1).min() > 0.9999
    raw = embedder.embed(texts, kind=kind, instruction=instruction, normalize=False)
    raw_ref = tiny_model.encode(texts, kind=kind, instruction=instruction, normalize=False)
    np.testing.assert_allclose(raw, raw_ref, rtol=1e-4, atol=1e-5)


def test_iter_embed_streams_an_iterable_in_order(embedder):
    texts = corpus_texts(50)
    blocks = list(embedder.iter_embed((t for t in texts), kind="document", chunk_rows=16, token_budget=200))
    assert [len(b) for b in blocks] == [16, 16, 16, 2]
    np.testing.assert_allclose(np.concatenate(blocks), embedder.embed(texts, kind="document"), atol=1e-6)


def test_warmup_runs_one_full_budget_batch(embedder, monkeypatch):
    shapes = []
    real = embedder.runner

    def spy(input_ids, attention_mask):
        shapes.append(input_ids.shape)
        return real(input_ids, attention_mask)

    monkeypatch.setattr(embedder, "runner", spy)
    seconds = embedder.warmup(token_budget=4 * embedder.max_length, max_batch_rows=3)
    assert seconds > 0 and shapes == [(3, embedder.max_length)]
    embedder.warmup(token_budget=5)  # a budget below max_length: one row of the budget's length
    assert shapes[-1] == (1, 5)


def test_cuda_tokenizer_cap_is_computed_not_applied():
    """The cap of the tokenizer pool for CUDA runs is a setting for the entry point to apply; a user's value wins."""
    from lusifer.runtime.tokenize import cuda_tokenizer_env

    assert cuda_tokenizer_env(4, {}) == {"RAYON_NUM_THREADS": str(min(4, os.cpu_count() or 1))}
    assert cuda_tokenizer_env(4, {"RAYON_NUM_THREADS": "12"}) == {}


def test_lusifer_embed_applies_the_tokenizer_cap_on_cuda_only(monkeypatch):
    from lusifer.runtime import cli
    from lusifer.runtime.errors import DeviceError
    from lusifer.runtime.session import Device

    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    assert cli.apply_process_settings("cpu") == {} and "RAYON_NUM_THREADS" not in os.environ
    monkeypatch.setattr(cli, "resolve_device", lambda device: Device("cuda"))
    settings = cli.apply_process_settings("cuda")
    assert settings == {"RAYON_NUM_THREADS": str(min(4, os.cpu_count() or 1))}
    assert os.environ["RAYON_NUM_THREADS"] == settings["RAYON_NUM_THREADS"]
    monkeypatch.undo()
    with pytest.raises(DeviceError, match="cuda:x"):
        cli.apply_process_settings("cuda:x")


def test_ray_gpu_actors_get_the_tokenizer_cap_in_their_runtime_env(monkeypatch):
    from lusifer.runtime.ray_job import actor_environment

    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    assert actor_environment(0) == {}
    assert actor_environment(1) == {"runtime_env": {"env_vars": {"RAYON_NUM_THREADS": str(min(4, os.cpu_count() or 1))}}}
    monkeypatch.setenv("RAYON_NUM_THREADS", "7")
    assert actor_environment(1) == {}


def test_cuda_sessions_leave_cudnn_attention_out_unless_the_user_set_it(monkeypatch):
    """CUDA sessions get ``sdpa_kernel`` without cuDNN (a provider option, no environment variable written);
    with ``ORT_ENABLE_CUDNN_FLASH_ATTENTION`` set by the user, ONNX Runtime follows the variable."""
    from lusifer.runtime import session as session_mod

    cuda = session_mod.Device("cuda", 1)
    options = session_mod.cuda_provider_options(cuda, {})
    assert options == {"device_id": 1, "arena_extend_strategy": "kSameAsRequested", "sdpa_kernel": 631}
    assert not options["sdpa_kernel"] & session_mod.SDPA_CUDNN
    assert "sdpa_kernel" not in session_mod.cuda_provider_options(cuda, {"ORT_ENABLE_CUDNN_FLASH_ATTENTION": "1"})
    monkeypatch.delenv("ORT_ENABLE_CUDNN_FLASH_ATTENTION", raising=False)
    seen = []
    monkeypatch.setattr(session_mod.ort, "InferenceSession",
                        lambda *a, **k: seen.append(k["providers"]) or (_ for _ in ()).throw(RuntimeError("stop")))
    for kind in ("cpu", "cuda"):
        with pytest.raises(Exception, match="stop"):
            session_mod.create_session("graph.onnx", session_mod.Device(kind))
    assert seen[0] == ["CPUExecutionProvider"]
    assert seen[1][0] == ("CUDAExecutionProvider", session_mod.cuda_provider_options(session_mod.Device("cuda"), {}))
    assert "ORT_ENABLE_CUDNN_FLASH_ATTENTION" not in os.environ


def test_cuda_sessions_get_one_non_spinning_intra_op_thread_unless_asked():
    """On CUDA the CPU thread pool only computes shape nodes: one thread, no spinning workers competing with the
    tokenizer and the kernel-launching thread; CPU keeps a pool of physical cores."""
    from lusifer.runtime.session import Device, physical_cores, session_options

    cuda = session_options(Device("cuda"), None)
    assert cuda.intra_op_num_threads == 1
    assert cuda.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(Device("cuda"), 3).intra_op_num_threads == 3
    cpu = session_options(Device("cpu"), None)
    assert cpu.intra_op_num_threads == physical_cores()
    assert cpu.get_session_config_entry("session.intra_op.allow_spinning") == "0"



def test_inflight_batches_give_the_same_vectors_in_order(tiny_export, embedder):
    """Two batches in flight (worker threads) return what one at a time returns, row for row."""
    texts = MULTILINGUAL_TEXTS + corpus_texts(60)
    tokens = embedder.tokenize(texts, "document", None)
    batches = embedder.make_batches(tokens, token_budget=4 * 16, max_batch_rows=4)
    assert len(batches) > 5
    expected = embedder.run_batches(batches, len(texts))
    seen = []
    parallel = Embedder(tiny_export, device="cpu", inflight=2)
    got = parallel.run_batches(batches, len(texts), lambda rows, real, padded: seen.append(rows))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert seen == [len(b.positions) for b in batches]  # on_batch in batch order


def test_inflight_error_in_a_batch_is_raised(tiny_export):
    parallel = Embedder(tiny_export, device="cpu", inflight=2)
    real, calls = parallel.runner, []

    def failing(ids, mask):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("batch 3 failed")
        return real(ids, mask)

    parallel.runner = failing
    tokens = parallel.tokenize(corpus_texts(40), "document", None)
    batches = parallel.make_batches(tokens, token_budget=4 * 16, max_batch_rows=4)
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        parallel.run_batches(batches, len(tokens))


@pytest.mark.parametrize("bad", [0, -1, 9, 1.5, True, "2"])
def test_inflight_must_be_a_small_positive_integer(tiny_export, bad):
    with pytest.raises(ValueError, match=r"inflight=.*expected an integer from 1 to 8"):
        Embedder(tiny_export, device="cpu", inflight=bad)


def test_embed_rejects_non_strings(embedder):
    with pytest.raises(ValueError, match=r"texts\[1\] is None"):
        embedder.embed(["ok", None])
    with pytest.raises(ValueError, match="kind='passage'"):
        embedder.embed(["ok"], kind="passage")


def test_checksum_mismatch_is_refused(export_copy):
    graph = export_copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ExportFolderError, match="checksum mismatch for .*model.onnx"):
        Embedder(export_copy, device="cpu")


def test_tokenizer_checksum_mismatch_is_refused(export_copy):
    tok = export_copy / "tokenizer.json"
    tok.write_text(tok.read_text("utf-8").replace('"<mask>"', '"<MASK>"'), "utf-8")
    with pytest.raises(ExportFolderError, match="checksum mismatch for .*tokenizer.json"):
        Embedder(export_copy, device="cpu")


def test_incomplete_export_is_refused(export_copy):
    (export_copy / "tokenizer.json").unlink()
    with pytest.raises(ExportFolderError, match="incomplete: missing tokenizer.json"):
        Embedder(export_copy, device="cpu")
    (export_copy / "manifest.json").unlink()
    with pytest.raises(ExportFolderError, match="no manifest.json"):
        Embedder(export_copy, device="cpu")


def test_cuda_without_provider_is_refused(tiny_export, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        Embedder(tiny_export, device="cuda")


def test_cuda_session_that_falls_back_to_cpu_is_refused(tiny_export, monkeypatch):
    """The provider is listed but the session does not get it (e.g. missing cuDNN): no silent CPU run."""
    import onnxruntime as ort

    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(dict.fromkeys(real + ["CUDAExecutionProvider"])))
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DeviceError, match=r"session runs on \['CPUExecutionProvider'\] only"):
            Embedder(tiny_export, device="cuda")


def test_fast_int8_detection_reads_the_cpu_flags():
    from lusifer.runtime.export_folder import cpu_has_fast_int8

    assert cpu_has_fast_int8("flags\t: fpu avx2 fma avx512f avx512_vnni\n", "x86_64")
    assert cpu_has_fast_int8("flags\t: fpu avx2 avx_vnni\n", "x86_64")
    assert not cpu_has_fast_int8("flags\t: fpu sse4_2 avx2 fma\n", "x86_64")
    assert cpu_has_fast_int8("Features\t: fp asimd asimddp\n", "aarch64")


def test_variant_choice_by_device():
    def manifest(*names):
        files = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
        variants = {
            n: VariantInfo(file=files[n], dtype="fp16" if n == "fp16" else "fp32",
                           quantization="int8" if n == "int8" else None)
            for n in names
        }
        return ExportManifest(embedding_dim=4, max_length=8, pad_token_id=1, variants=variants,
                              query_template="{instruction}.\n{text}", document_template="{instruction}. {text}")

    assert choose_variant(manifest("fp32", "fp16", "int8"), "cuda", None) == "fp16"
    assert choose_variant(manifest("fp32", "fp16", "int8"), "cpu", None) == "int8"
    block = manifest("fp32", "int8")
    block.variants["int8"] = VariantInfo(file="model_int8.onnx", dtype="fp32", quantization="int8-block")
    assert choose_variant(block, "cpu", None, fast_int8=True) == "int8"
    assert choose_variant(block, "cpu", None, fast_int8=False) == "fp32"  # block INT8 is slower without VNNI
    assert choose_variant(block, "cpu", "int8", fast_int8=False) == "int8"  # asked for: always used
    assert choose_variant(manifest("fp32", "fp16"), "cpu", None) == "fp32"
    assert choose_variant(manifest("fp32", "int8"), "cuda", None) == "fp32"
    assert choose_variant(manifest("fp32", "fp16"), "cpu", "fp16") == "fp16"
    with pytest.raises(DeviceError, match="CPU only"):
        choose_variant(manifest("fp32", "int8"), "cuda", "int8")
    with pytest.raises(ExportFolderError, match="variant 'fp16' is not in this export; it has fp32"):
        choose_variant(manifest("fp32"), "cpu", "fp16")


def test_runtime_embeds_with_torch_blocked(tiny_export, tmp_path):
    code = BLOCK_TORCH + (
        "import json, sys\n"
        "import lusifer.runtime\n"
        "from lusifer.runtime import Embedder\n"
        f"vecs = Embedder({str(tiny_export)!r}, device='cpu').embed(['Кошка спит.', 'The cat sleeps.'])\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps(vecs.tolist()))\n"
    )
    out = run_python(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    vecs = np.array(json.loads(out.stdout))
    expected = Embedder(tiny_export, device="cpu").embed(["Кошка спит.", "The cat sleeps."])
    np.testing.assert_allclose(vecs, expected, atol=1e-6)


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu_fp32(tiny_factory, tiny_export, tmp_path):
    """On a GPU machine with onnxruntime-gpu: the fp16 graph on CUDA (IO binding) matches fp32 on CPU."""
    from test_runtime_support import export_tiny

    fp16 = export_tiny(tiny_factory(), tmp_path / "fp16", dtype="fp16")
    gpu = Embedder(fp16, device="cuda")
    assert gpu.provider == "CUDAExecutionProvider" and gpu.variant == "fp16"
    if not os.environ.get("ORT_ENABLE_CUDNN_FLASH_ATTENTION"):  # the provider option reached ONNX Runtime
        assert gpu.session.get_provider_options()["CUDAExecutionProvider"]["sdpa_kernel"] == "631"
    cpu = Embedder(tiny_export, device="cpu")
    texts = MULTILINGUAL_TEXTS + corpus_texts(200)
    a, b = gpu.embed(texts, kind="document"), cpu.embed(texts, kind="document")
    assert (a * b).sum(axis=1).min() > 0.999
    gpu32 = Embedder(tiny_export, device="cuda")
    assert gpu32.variant == "fp32" and gpu32.provider == "CUDAExecutionProvider"
    assert (gpu32.embed(texts, kind="document") * b).sum(axis=1).min() > 0.9999
