"""Stage-2 distillation towards the encoder's own embedding: it trains with and without GradCache, the
teacher is the base encoder with its adapters disabled and never changes, distill_weight=0 is today's
stage 2 bit for bit, and bad inputs are named."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lusifer import LusiferModel
from lusifer.backbones import encoder_position_ids, load_encoder
from lusifer.pooling import mean_pool
from lusifer.train.batching import BatchPlan, MicroBatches
from lusifer.train.collate import Stage2Collator
from lusifer.train.config import ConfigError, Stage2Config
from lusifer.train.data import DataError, load_examples_for_run
from lusifer.train.distill import teacher_embeddings
from lusifer.train.distributed import DistContext
from lusifer.train.gradcache import backward_through_chunks, embed_without_graph
from lusifer.train.loop import run_training
from lusifer.train.losses import similarity_distillation_loss
from lusifer.train.merge import model_from_checkpoint
from lusifer.train.stage2 import Stage2Task, global_contrastive_loss, train_stage2

THINGS = ["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup", "kite"]
PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here", "negatives": [f"no {t} at all"],
          "instruction": "Find it" if i % 2 else None} for i, t in enumerate(THINGS)]
TEXTS = [{"text": f"The {t} was {c} yesterday."} for t in THINGS for c in ("red", "blue")]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _common(tiny_model_dir, tmp_path, **changes):
    return dict(model_path=str(tiny_model_dir), train_files=[_write(tmp_path / "pairs.jsonl", PAIRS)], batch_size=4,
                max_steps=3, learning_rate=5e-3, save_every=3, log_every=1, **changes)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _base_encoder_weights(model):
    """The encoder's own weights (LoRA excluded) under their plain names."""
    return {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach().clone()
            for n, p in model.encoder.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("chunk", [None, 3])
def test_stage2_with_distillation_trains_and_the_teacher_is_the_base_encoder(tiny_model_dir, tmp_path, chunk):
    config = Stage2Config(output_dir=str(tmp_path / "run"), grad_cache_chunk_size=chunk, distill_weight=2.0,
                          distill_files=[_write(tmp_path / "texts.jsonl", TEXTS)], distill_batch_size=3,
                          **_common(tiny_model_dir, tmp_path))
    result = train_stage2(config)
    log = _metrics(tmp_path / "run")
    assert [m["step"] for m in log] == [1, 2, 3]
    for m in log:  # the distillation term is logged on its own, and the logged loss is the optimised sum
        assert m["loss_distill"] > 0 and m["loss_contrastive"] > 0
        assert m["loss"] == pytest.approx(m["loss_contrastive"] + 2.0 * m["loss_distill"], rel=1e-6)

    trained, _ = model_from_checkpoint(result.final_checkpoint)
    start = LusiferModel.from_pretrained(tiny_model_dir)
    # the encoder's own weights did not change (only its LoRA trained) ...
    base = _base_encoder_weights(trained)
    original = dict(start.encoder.named_parameters())
    assert base.keys() == original.keys()
    for name, weight in base.items():
        assert torch.equal(weight, original[name]), name
    # ... so the teacher (adapters disabled) is the starting encoder, while the student's encoder has moved
    enc = start.tokenizer(["query: " + t["text"] for t in TEXTS[:5]], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    plain = load_encoder(tiny_model_dir / "encoder").eval()
    with torch.no_grad():
        expected = mean_pool(plain(input_ids=ids, attention_mask=mask,
                                   position_ids=encoder_position_ids(mask, plain.config)).last_hidden_state, mask)
        with_lora = mean_pool(trained.encoder(input_ids=ids, attention_mask=mask,
                                              position_ids=encoder_position_ids(mask, plain.config)).last_hidden_state,
                              mask)
    trained.train()  # the teacher switches dropout off itself and restores the mode
    teacher = teacher_embeddings(trained.encoder, ids, mask, "mean", chunk_size=2)
    assert trained.encoder.training
    torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(with_lora, expected, atol=1e-4)


def test_distillation_pulls_the_similarity_structure_towards_the_teacher(tiny_model_dir, tmp_path):
    """Weighted heavily, the distillation term brings the model's cosine structure on its distillation texts
    closer to the teacher's."""
    config = Stage2Config(output_dir=str(tmp_path / "run"), distill_weight=50.0,
                          distill_files=[_write(tmp_path / "texts.jsonl", TEXTS[:12])], distill_batch_size=6,
                          disable_dropout=True, **{**_common(tiny_model_dir, tmp_path), "max_steps": 12})
    texts = [t["text"] for t in TEXTS[:12]]

    def distance(model):
        model.eval()
        student = model.tokenize(texts, kind="query")
        teacher = model.tokenizer(["query: " + t for t in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            return similarity_distillation_loss(
                model(student["input_ids"], student["attention_mask"]),
                teacher_embeddings(model.encoder, teacher["input_ids"], teacher["attention_mask"]), "kl", 0.05).item()

    before = distance(Stage2Task().build_model(config, torch.device("cpu")))
    trained, _ = model_from_checkpoint(train_stage2(config).final_checkpoint)
    after = distance(trained)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("chunk", [1, 3])
def test_grad_cache_gives_the_full_batch_gradients_with_distillation(tiny_model_dir, tmp_path, chunk):
    texts = _write(tmp_path / "texts.jsonl", TEXTS)

    def gradients(chunk_size):
        config = Stage2Config(output_dir=str(tmp_path / f"run-{chunk_size}"), grad_cache_chunk_size=chunk_size,
                              disable_dropout=True, distill_weight=1.0, distill_files=[texts], distill_batch_size=3,
                              **_common(tiny_model_dir, tmp_path))
        task = Stage2Task()
        torch.manual_seed(0)
        model = task.build_model(config, torch.device("cpu")).train()
        batch = task.build_batches(config, model, DistContext())[0]
        assert batch["teacher_ids"].shape[0] == 4 + 4 + 4 + 3  # queries, positives, hard negatives, extra texts
        metrics = task.forward_backward(model, batch, 1.0, DistContext())
        return metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full_metrics, full = gradients(None)
    cached_metrics, cached = gradients(chunk)
    for name in ("loss", "loss_distill"):
        assert cached_metrics[name][0] == pytest.approx(full_metrics[name][0], rel=1e-5)
    assert any(g.abs().sum() > 0 for n, g in full.items() if "encoder" in n and "lora_B" in n)
    for name in full:
        torch.testing.assert_close(cached[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


class TodaysStage2(Stage2Task):
    """Stage 2 as it was before distillation existed (batches and forward/backward), the reference."""

    def build_batches(self, config, model, ctx):
        examples = load_examples_for_run(config, ctx)
        plan = BatchPlan(len(examples), config.batch_size, ctx.world_size, ctx.rank, config.seed)
        collate = Stage2Collator(model.tokenizer, model.config, config.max_length or model.config.max_length,
                                 config.num_hard_negatives, config.instruct_documents, config.seed)
        return MicroBatches(examples, plan, collate)

    def forward_backward(self, model, batch, loss_scale, ctx):
        scale = loss_scale * ctx.world_size
        qi, qm, di, dm = batch["query_ids"], batch["query_mask"], batch["doc_ids"], batch["doc_mask"]
        if self.chunk_size is None:
            with ctx.autocast():
                q = model(qi, qm)
                d = model(di, dm)
            loss, candidates = global_contrastive_loss(q.float(), d.float(), self.temperature, ctx)
            (loss * scale).backward()
        else:
            q, q_rng = embed_without_graph(model, qi, qm, self.chunk_size, ctx.autocast)
            d, d_rng = embed_without_graph(model, di, dm, self.chunk_size, ctx.autocast)
            q.requires_grad_(True)
            d.requires_grad_(True)
            loss, candidates = global_contrastive_loss(q, d, self.temperature, ctx)
            (loss * scale).backward()
            backward_through_chunks(model, qi, qm, self.chunk_size, q.grad, q_rng, ctx.autocast)
            backward_through_chunks(model, di, dm, self.chunk_size, d.grad, d_rng, ctx.autocast)
        return {"loss": (loss.item(), 1.0), "candidates": (float(candidates), 1.0)}


@pytest.mark.parametrize("chunk", [None, 3])
def test_distill_weight_zero_is_todays_stage2_bit_for_bit(tiny_model_dir, tmp_path, chunk):
    common = _common(tiny_model_dir, tmp_path, grad_cache_chunk_size=chunk, grad_accum_steps=2)  # dropout on
    today = run_training(TodaysStage2(), Stage2Config(output_dir=str(tmp_path / "today"), **common))
    off = train_stage2(Stage2Config(output_dir=str(tmp_path / "off"), distill_weight=0.0, **common))
    log_today, log_off = _metrics(tmp_path / "today"), _metrics(tmp_path / "off")
    assert [{k: v for k, v in m.items() if k != "elapsed_s"} for m in log_off] == \
        [{k: v for k, v in m.items() if k != "elapsed_s"} for m in log_today]
    a = load_file(today.final_checkpoint / "weights.safetensors")
    b = load_file(off.final_checkpoint / "weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_distillation_inputs_are_named(tiny_model_dir, tiny_llm_only_factory, tmp_path):
    common = _common(tiny_model_dir, tmp_path)
    missing = Stage2Config(output_dir=str(tmp_path / "a"), distill_weight=1.0, distill_batch_size=2,
                           distill_files=[str(tmp_path / "nowhere.jsonl")], **common)
    with pytest.raises(ConfigError, match=r"distill_files\[0\]=.*nowhere.jsonl.* does not exist"):
        train_stage2(missing)
    bad = _write(tmp_path / "bad.jsonl", [{"text": "fine"}, {"query": "not a text row"}])
    with pytest.raises(DataError, match=r"bad.jsonl line 2: field 'text' is missing"):
        train_stage2(missing.replace(output_dir=str(tmp_path / "b"), distill_files=[bad]))
    few = _write(tmp_path / "few.jsonl", TEXTS[:2])
    with pytest.raises(ConfigError, match=r"distill_files hold 2 texts, fewer than .* 3 \(distill_batch_size=3"):
        train_stage2(missing.replace(output_dir=str(tmp_path / "c"), distill_files=[few], distill_batch_size=3))
    llm_only = {**common, "model_path": str(tiny_llm_only_factory()), "encoder_lora_targets": []}
    with pytest.raises(ConfigError, match="llm-only.*no encoder to distil from"):
        train_stage2(Stage2Config(output_dir=str(tmp_path / "d"), distill_weight=1.0, **llm_only))
    with pytest.raises(ConfigError, match=r"distill_teacher_path=.*nowhere.* is not an encoder folder"):
        train_stage2(Stage2Config(output_dir=str(tmp_path / "e"), distill_weight=1.0,
                                  distill_teacher_path=str(tmp_path / "nowhere"), **common))


def test_a_separate_teacher_folder(tiny_model_dir, tiny_llm_only_factory, tmp_path):
    """distill_teacher_path: a separate frozen encoder teaches (outside the model: never trained or saved);
    it even lets the LLM alone (llm-only, no encoder) distil towards an encoder."""
    teacher_dir = tiny_model_dir.parent / "base" / "encoder-xlm-roberta"
    common = _common(tiny_model_dir, tmp_path, distill_weight=1.0, distill_teacher_path=str(teacher_dir))
    task = Stage2Task()
    config = Stage2Config(output_dir=str(tmp_path / "a"), **common)
    model = task.build_model(config, torch.device("cpu")).train()
    assert task.teacher is not None and task.teacher is not model.encoder
    assert not any(p.requires_grad for p in task.teacher.parameters())
    before = {n: p.clone() for n, p in task.teacher.named_parameters()}
    batch = task.build_batches(config, model, DistContext())[0]
    assert task.forward_backward(model, batch, 1.0, DistContext())["loss_distill"][0] > 0
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in task.teacher.named_parameters())

    llm_only = {**common, "model_path": str(tiny_llm_only_factory()), "encoder_lora_targets": []}
    result = train_stage2(Stage2Config(output_dir=str(tmp_path / "b"), **llm_only))
    assert all(m["loss_distill"] > 0 for m in _metrics(tmp_path / "b"))
    saved = load_file(result.final_checkpoint / "weights.safetensors")
    assert saved and not any("encoder" in name for name in saved)  # the teacher is not part of the model


def test_lusifer_small_distill_recipe_is_stage2_plus_distillation():
    from pathlib import Path

    from lusifer.train.config import load_config

    recipe = Path(__file__).resolve().parents[1] / "models" / "lusifer-small" / "recipe"
    paths = ["output_dir=run", "model_path=stage1"]
    plain = load_config("stage2", recipe / "stage2.yaml", paths).to_dict()
    distill = load_config("stage2", recipe / "stage2_distill.yaml", paths).to_dict()
    changed = {k for k in distill if distill[k] != plain[k]}
    assert changed == {"distill_weight", "distill_files", "distill_batch_size"}
    assert distill["distill_weight"] > 0 and distill["distill_files"] == [str(recipe / "stage1_text.jsonl")]
    assert (distill["distill_teacher_prefix"], distill["distill_teacher_pooling"]) == ("query: ", "mean")


def test_a_checkpoint_from_before_distillation_resumes(tiny_model_dir, tmp_path):
    """Checkpoint configs written before the distill_* fields existed load with distillation off and resume."""
    config = Stage2Config(output_dir=str(tmp_path / "run"), **{**_common(tiny_model_dir, tmp_path), "max_steps": 2,
                                                               "save_every": 1})
    first = train_stage2(config)
    saved = first.final_checkpoint / "config.json"
    old = {k: v for k, v in json.loads(saved.read_text()).items() if not k.startswith("distill_")}
    saved.write_text(json.dumps(old))
    assert train_stage2(config.replace(resume_from="latest", max_steps=3)).steps == 3
    assert "loss_distill" not in _metrics(tmp_path / "run")[-1]
