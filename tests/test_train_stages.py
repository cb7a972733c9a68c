"""Both training stages on tiny models: losses fall, stage 1 cannot peek at later tokens, stage 2 improves
toy retrieval, and gradient caching gives the full-batch gradients."""

import json

import numpy as np
import pytest
import torch

from lusifer import LusiferModel
from lusifer.backbones import set_attention_causal
from lusifer.train.config import Stage1Config, Stage2Config
from lusifer.train.distributed import DistContext
from lusifer.train.merge import model_from_checkpoint
from lusifer.train.stage1 import Stage1Task, reconstruction_token_losses, train_stage1
from lusifer.train.stage2 import Stage2Task, train_stage2

COLOURS = ["red", "blue", "green", "white", "black", "yellow", "grey", "pink"]
THINGS = ["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup", "chair", "kite", "bag", "ball"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other tests for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def toy_pairs():
    return [
        {"query": f"which {thing}?", "positive": f"the {thing} is {COLOURS[i % len(COLOURS)]}",
         "negatives": [f"the {THINGS[(i + 1) % len(THINGS)]} is {COLOURS[i % len(COLOURS)]}"]}
        for i, thing in enumerate(THINGS)
    ]


def top1(model, pairs):
    q = model.encode([p["query"] for p in pairs], kind="query")
    d = model.encode([p["positive"] for p in pairs], kind="document")
    return float(np.mean((q @ d.T).argmax(axis=1) == np.arange(len(pairs))))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stage1_losses_fall(tiny_model_dir, tmp_path):
    records = [{"text": f"the {t} is {c}"} for t in THINGS for c in COLOURS[:2]]
    records += [{"query": f"what colour is the {t}?", "answer": f"the {t} is {COLOURS[i % 8]}", "instruction": "Answer"}
                for i, t in enumerate(THINGS)]
    config = Stage1Config(
        model_path=str(tiny_model_dir), train_files=[_write(tmp_path / "s1.jsonl", records)],
        output_dir=str(tmp_path / "run"), max_steps=24, batch_size=12, learning_rate=1e-2, log_every=4,
        save_every=24,
    )
    result = train_stage1(config)
    log = metrics(tmp_path / "run")
    for name in ("loss_reconstruction", "loss_completion"):
        assert log[-1][name] < log[0][name] - 0.02, (name, [m[name] for m in log])
    # the merged stage-1 model is a normal model folder, bidirectional again, with the trained connector
    merged = LusiferModel.from_pretrained(result.outputs["model"])
    assert merged.llm.config.is_causal is False
    start = LusiferModel.from_pretrained(tiny_model_dir)
    assert not torch.equal(merged.connector.mlp[0].weight, start.connector.mlp[0].weight)
    assert torch.equal(merged.llm.lm_head.weight, start.llm.lm_head.weight)  # the LLM stayed frozen
    assert torch.equal(merged.projection.net[0].weight, start.projection.net[0].weight)


def test_stage1_next_token_prediction_does_not_see_later_tokens(tiny_model_dir, tmp_path):
    config = Stage1Config(model_path=str(tiny_model_dir), train_files=["unused.jsonl"], output_dir=str(tmp_path))
    task = Stage1Task()
    model = task.build_model(config, torch.device("cpu")).eval()
    enc = model.tokenize(["the cat sleeps", "a dog"])
    target = torch.tensor([[11, 12, 13, 14], [15, 16, 0, 0]])
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "target_ids": target,
             "target_mask": (target > 0).long(), "completion": torch.tensor([False, True])}
    changed = {**batch, "target_ids": target.clone()}
    changed["target_ids"][0, 3] = 99  # change the last target token of row 0

    def losses(b):
        with torch.no_grad():
            return reconstruction_token_losses(model, b)[0]

    task.start(model)  # causal
    before, after = losses(batch), losses(changed)
    assert before.shape == (4 + 2,)  # every target token is labelled, nothing else
    assert torch.allclose(before[:3], after[:3]) and not torch.allclose(before[3], after[3])
    set_attention_causal(model.llm, False)  # control: bidirectional attention would leak
    assert not torch.allclose(losses(batch)[:3], losses(changed)[:3])


def test_stage2_improves_toy_retrieval(tiny_model_dir, tmp_path):
    pairs = toy_pairs()
    config = Stage2Config(
        model_path=str(tiny_model_dir), train_files=[_write(tmp_path / "pairs.jsonl", pairs)],
        output_dir=str(tmp_path / "run"), max_steps=40, batch_size=6, learning_rate=5e-3, warmup_steps=2,
        log_every=5, save_every=40,
    )
    result = train_stage2(config)
    log = metrics(tmp_path / "run")
    assert log[-1]["loss"] < log[0]["loss"]
    before = top1(LusiferModel.from_pretrained(tiny_model_dir), pairs)
    trained, _ = model_from_checkpoint(result.final_checkpoint)
    after = top1(trained, pairs)
    assert after >= before + 0.25, (before, after)


@pytest.mark.parametrize("chunk, checkpointing", [(1, False), (4, False), (None, True), (2, True)])
def test_grad_cache_and_checkpointing_give_full_batch_gradients(tiny_model_dir, tmp_path, chunk, checkpointing):
    def gradients(chunk_size, gradient_checkpointing=False):
        config = Stage2Config(model_path=str(tiny_model_dir), train_files=["unused.jsonl"], output_dir=str(tmp_path),
                              grad_cache_chunk_size=chunk_size, disable_dropout=True,
                              gradient_checkpointing=gradient_checkpointing)
        task = Stage2Task()
        torch.manual_seed(0)
        model = task.build_model(config, torch.device("cpu")).train()
        calls = []
        attention = next(m for m in model.llm.modules() if type(m).__name__.endswith("Attention"))
        attention.register_forward_hook(lambda *_: calls.append(1))
        q = model.tokenize(["which apple?", "which car is it", "a boat"], kind="query")
        d = model.tokenize(["the apple is red", "the car is blue", "boats float", "the kite is pink"], kind="document")
        batch = {"query_ids": q["input_ids"], "query_mask": q["attention_mask"],
                 "doc_ids": d["input_ids"], "doc_mask": d["attention_mask"]}
        loss = task.forward_backward(model, batch, 1.0, DistContext())["loss"][0]
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)

    loss_full, full, calls_full = gradients(None)
    loss_cached, cached, calls = gradients(chunk, checkpointing)
    if chunk is None:  # checkpointing really recomputes the layers in backward
        assert calls == 2 * calls_full
    assert loss_cached == pytest.approx(loss_full, rel=1e-6)
    assert full.keys() == cached.keys()
    assert any(g.abs().sum() > 0 for n, g in full.items() if "llm" in n and "lora_B" in n)
    for name in full:
        torch.testing.assert_close(cached[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_stage1_from_base_models(tiny_model_dir, tmp_path):
    """Stage 1 can start from base encoder and LLM folders with a fresh connector of the configured shape."""
    base = tiny_model_dir.parent / "base"
    records = [{"text": f"the {t} is red"} for t in THINGS]
    config = Stage1Config(
        model={"encoder_path": str(base / "encoder-xlm-roberta"), "llm_path": str(base / "llm-llama"),
               "num_learnable_tokens": 3, "projection_dim": 8, "max_length": 32},
        train_files=[_write(tmp_path / "t.jsonl", records)], output_dir=str(tmp_path / "run"), max_steps=2,
        batch_size=4,
    )
    result = train_stage1(config)
    model = LusiferModel.from_pretrained(result.outputs["model"])
    assert model.connector.learnable_tokens.shape[0] == 3 and model.config.embedding_dim == 8
    assert model.encode(["the cup is red"]).shape == (1, 8)
