"""Stage 1's reference objective (``objective: reference``): clean encoder input with the reconstruction
instruction, masked LLM input and attention, bidirectional LLM, next-token labels on the target only."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lusifer import LusiferModel
from lusifer.backbones import set_attention_causal
from lusifer.train.collate import RECONSTRUCT_INSTRUCTION, Stage1ReferenceCollator
from lusifer.train.config import ConfigError, Stage1Config, config_from_saved, load_config
from lusifer.train.loop import TrainingError
from lusifer.train.losses import IGNORE_INDEX
from lusifer.train.stage1 import Stage1Task, pack_reference_inputs, reference_token_losses, train_stage1

STAGE1_MIN = {"output_dir": "/tmp/run", "train_files": ["/tmp/text.jsonl"], "model_path": "/tmp/model"}
RECIPE = Path(__file__).resolve().parents[1] / "models" / "lusifer-small" / "recipe"
WORDS = ["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup", "chair", "kite", "bag", "ball"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    return model, model.load_llm_tokenizer()


def _collator(model, llm_tok, mask=0.0, drop=0.0, max_length=64, add_eos=True):
    return Stage1ReferenceCollator(model.tokenizer, llm_tok, model.config, max_length=max_length,
                                   max_target_length=32, add_eos=add_eos, seed=0, llm_mask_id=llm_tok.unk_token_id,
                                   mask_probability=mask, attention_drop_probability=drop)


def _rows():
    return [
        {"encoder_text": "the cat sleeps", "target_text": "the cat sleeps", "instruction": None,
         "objective": "reconstruction"},
        {"encoder_text": "where is the cat?", "target_text": "on the mat", "instruction": "Answer",
         "objective": "completion"},
    ]


# ---- config ------------------------------------------------------------------------------------------
def test_objective_is_checked_and_current_stays_the_default():
    assert Stage1Config(**STAGE1_MIN).objective == "current"
    with pytest.raises(ConfigError, match=r"objective='masked' is not supported; expected one of current, reference"):
        Stage1Config(**STAGE1_MIN, objective="masked")
    with pytest.raises(ConfigError, match=r"llm_mask_probability=0\.3 is used only by objective 'reference'"):
        Stage1Config(**STAGE1_MIN, llm_mask_probability=0.3)
    with pytest.raises(ConfigError, match=r"mask_ratio=0\.5 but objective='reference' keeps the encoder input clean"):
        Stage1Config(**STAGE1_MIN, objective="reference")
    with pytest.raises(ConfigError, match=r"llm_attention_drop_probability=1\.5 must be >= 0\.0 and <= 1\.0"):
        Stage1Config(**STAGE1_MIN, objective="reference", mask_ratio=0, llm_attention_drop_probability=1.5)
    config = Stage1Config(**STAGE1_MIN, objective="reference", mask_ratio=0, llm_mask_probability=0.2)
    assert (config.llm_mask_probability, config.llm_attention_drop_probability) == (0.2, 0.5)  # recorded resolved
    assert config_from_saved(json.loads(config.to_json())) == config
    # a checkpoint written before the field existed reads as the current objective
    old = {k: v for k, v in Stage1Config(**STAGE1_MIN).to_dict().items() if not k.startswith(("objective", "llm_"))}
    assert config_from_saved(old) == Stage1Config(**STAGE1_MIN)


def test_reference_recipe_is_the_stage1_recipe_with_the_reference_objective():
    current = load_config("stage1", RECIPE / "stage1.yaml", ["output_dir=run"]).to_dict()
    reference = load_config("stage1", RECIPE / "stage1_reference.yaml", ["output_dir=run"]).to_dict()
    changed = {k for k in current if current[k] != reference[k]}
    assert changed == {"objective", "mask_ratio", "llm_mask_probability", "llm_attention_drop_probability"}
    assert (reference["objective"], reference["mask_ratio"], reference["llm_mask_probability"],
            reference["llm_attention_drop_probability"]) == ("reference", 0.0, 0.5, 0.5)


# ---- collation and layout ----------------------------------------------------------------------------
def test_reference_collation_tokens_labels_and_masks(tiny):
    model, llm_tok = tiny
    rows = _rows()
    batch = _collator(model, llm_tok)(rows, [(0, 0), (0, 1)])
    # encoder: clean text behind the reconstruction instruction; completion keeps its own instruction
    for i, instruction in enumerate([RECONSTRUCT_INSTRUCTION, "Answer"]):
        expected = model.tokenize([rows[i]["encoder_text"]], "query", instruction)["input_ids"][0].tolist()
        assert batch["input_ids"][i, : len(expected)].tolist() == expected
    assert model.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True).strip().startswith(
        "Please reconstruct the following text.\nthe cat sleeps")
    # LLM side: bos before the connector output, the target's tokens + EOS as labels and (unmasked) input
    assert batch["lead_ids"].tolist() == [[llm_tok.bos_token_id]] * 2
    for i in range(2):
        target = llm_tok(rows[i]["target_text"], add_special_tokens=False)["input_ids"] + [llm_tok.eos_token_id]
        n = len(target)
        assert batch["target_ids"][i, :n].tolist() == target and batch["target_mask"][i].sum() == n
        assert batch["llm_input_ids"][i, :n].tolist() == target
        assert batch["llm_attention"][i].tolist() == batch["target_mask"][i].tolist()
    # probability 1: every real target token masked (the LLM's unk: the tiny LLM has no mask token) and dropped
    full = _collator(model, llm_tok, mask=1.0, drop=1.0)(rows, [(0, 0), (0, 1)])
    real = full["target_mask"] == 1
    assert (full["llm_input_ids"][real] == llm_tok.unk_token_id).all() and (full["llm_input_ids"][~real] == 0).all()
    assert full["llm_attention"].sum() == 0
    assert torch.equal(full["target_ids"], batch["target_ids"])  # the labels stay the original tokens


def test_pack_reference_inputs_exact_layout():
    """Row 0: 2 real connector positions of 3 and target [7, 8, 9] with position 1 (token 8) removed from the
    attention; row 1: 3 connector positions and target [5]."""
    emb = lambda ids: ids.float().unsqueeze(-1)  # noqa: E731 - a 1-wide "embedding": the value is the id
    prefix = torch.tensor([[[101.0], [102.0], [0.0]], [[201.0], [202.0], [203.0]]])
    prefix_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    target_ids = torch.tensor([[7, 8, 9], [5, 0, 0]])
    target_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    attention = torch.tensor([[1, 0, 1], [1, 0, 0]])
    embeds, attend, positions, labels = pack_reference_inputs(
        emb(torch.tensor([[1], [1]])), prefix, prefix_mask, emb(target_ids), target_ids, target_mask, attention)
    assert embeds[..., 0].tolist() == [[1, 101, 102, 7, 8, 9, 0], [1, 201, 202, 203, 5, 0, 0]]
    assert attend.tolist() == [[1, 1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0, 0]]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 0, 0]]  # a removed position keeps its place
    I = IGNORE_INDEX  # noqa: E741
    assert labels.tolist() == [[I, I, I, 7, 8, 9, I], [I, I, I, I, 5, I, I]]  # never on bos or connector outputs
    # shifted: the last connector position predicts the first target token
    assert labels[:, 1:][0].tolist().index(7) == 2 and labels[:, 1:][1].tolist().index(5) == 3


def test_masked_share_is_near_the_probability_and_deterministic(tiny):
    model, llm_tok = tiny
    texts = [f"the {a} and the {b} are here today" for a in WORDS for b in WORDS]
    rows = [{"encoder_text": t, "target_text": t, "instruction": None, "objective": "reconstruction"} for t in texts]
    keys = [(0, i) for i in range(len(rows))]
    collate = _collator(model, llm_tok, mask=0.3, drop=0.6)
    batch = collate(rows, keys)
    real = batch["target_mask"] == 1
    masked = (batch["llm_input_ids"] == llm_tok.unk_token_id) & real
    dropped = (batch["llm_attention"] == 0) & real
    assert int(real.sum()) > 2000
    assert abs(masked.sum() / real.sum() - 0.3) < 0.03
    assert abs(dropped.sum() / real.sum() - 0.6) < 0.03
    assert abs((masked & dropped).sum() / real.sum() - 0.18) < 0.03  # independent draws
    # decided per (seed, epoch, record): another batch layout gives the same masks, another epoch other ones
    alone = collate(rows[5:6], keys[5:6])
    n = int(alone["target_mask"].sum())
    assert alone["llm_input_ids"][0, :n].tolist() == batch["llm_input_ids"][5, :n].tolist()
    assert alone["llm_attention"][0, :n].tolist() == batch["llm_attention"][5, :n].tolist()
    later = collate(rows[:20], [(1, i) for i in range(20)])
    assert not torch.equal(later["llm_attention"], batch["llm_attention"][:20, : later["llm_attention"].shape[1]])


def test_reconstruction_target_is_what_the_encoder_read(tiny):
    model, llm_tok = tiny
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    row = {"encoder_text": text, "target_text": text, "instruction": None, "objective": "reconstruction"}
    batch = _collator(model, llm_tok, max_length=36, add_eos=False)([row], [(0, 0)])
    seen = model.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True).strip()
    assert seen.startswith(RECONSTRUCT_INSTRUCTION)
    seen_text = seen.split("\n", 1)[1].strip()
    target = llm_tok.decode(batch["target_ids"][0]).strip()
    assert target == seen_text and 0 < len(target) < len(text)
    with pytest.raises(ValueError, match="max_length=12 leaves no encoder tokens for the text"):
        _collator(model, llm_tok, max_length=12)([row], [(0, 0)])


def test_llm_without_mask_or_unk_token_is_refused(tiny):
    model, llm_tok = tiny
    with pytest.raises(ValueError, match="neither a mask nor an unk token"):
        Stage1ReferenceCollator(model.tokenizer, llm_tok, model.config, max_length=32, max_target_length=8,
                                add_eos=True, seed=0, llm_mask_id=None, mask_probability=0.5,
                                attention_drop_probability=0.5)


def test_removed_positions_are_invisible_to_the_others(tiny_model_dir, tmp_path):
    config = Stage1Config(model_path=str(tiny_model_dir), train_files=["unused.jsonl"], output_dir=str(tmp_path),
                          objective="reference", mask_ratio=0)
    task = Stage1Task()
    model = task.build_model(config, torch.device("cpu")).eval()
    task.start(model)
    assert model.llm.config.is_causal is False  # the reference runs the LLM bidirectionally
    llm_tok = model.load_llm_tokenizer()
    batch = _collator(model, llm_tok)(_rows()[:1], [(0, 0)])
    n = int(batch["target_mask"].sum())
    assert n >= 4
    batch["llm_attention"][0, 2] = 0  # target position 2 leaves the attention mask

    def losses(b):
        with torch.no_grad():
            return reference_token_losses(model, b)[0]

    base = losses(batch)
    assert base.shape == (n,) and torch.isfinite(base).all()  # one loss per target token, nothing else
    changed = {**batch, "llm_input_ids": batch["llm_input_ids"].clone()}
    changed["llm_input_ids"][0, 2] = llm_tok.unk_token_id
    after = losses(changed)
    # loss j predicts target token j from the state before it; only the removed position's own state changed
    assert torch.allclose(torch.cat([after[:3], after[4:]]), torch.cat([base[:3], base[4:]]), atol=1e-6)
    assert not torch.allclose(after[3], base[3])
    batch["llm_attention"][0, 2] = 1  # control: an attended position is seen by the others (bidirectional)
    changed["llm_attention"] = batch["llm_attention"]
    assert not torch.allclose(losses(batch)[:2], losses(changed)[:2])
    set_attention_causal(model.llm, False)


# ---- training ----------------------------------------------------------------------------------------
def _texts(tmp_path):
    records = [{"text": f"the {t} is red"} for t in WORDS[:8]]
    records += [{"query": f"colour of the {t}?", "answer": f"the {t} is blue", "instruction": "Answer"}
                for t in WORDS[8:]]
    path = tmp_path / "s1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_reference_stage1_trains_the_encoder_side_only(tiny_model_dir, tmp_path):
    config = Stage1Config(model_path=str(tiny_model_dir), train_files=[_texts(tmp_path)],
                          output_dir=str(tmp_path / "run"),
                          objective="reference", mask_ratio=0, max_steps=3, batch_size=4, learning_rate=1e-2,
                          log_every=1, save_every=3)
    result = train_stage1(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in log)
    assert "loss_reconstruction" in log[0] and "loss_completion" in log[0]
    saved = json.loads((result.final_checkpoint / "config.json").read_text())
    assert (saved["objective"], saved["llm_mask_probability"]) == ("reference", 0.5)
    start = LusiferModel.from_pretrained(tiny_model_dir)
    weights = load_file(result.final_checkpoint / "weights.safetensors")
    lora_b = [k for k in weights if "encoder" in k and "lora_B" in k]
    assert lora_b and all(weights[k].abs().sum() > 0 for k in lora_b)  # encoder LoRA trained (B starts at 0)
    assert not torch.equal(weights["connector.mlp.0.weight"], start.connector.mlp[0].weight)
    assert not any(k.startswith("llm.") for k in weights)  # nothing of the LLM trains
    merged = LusiferModel.from_pretrained(result.outputs["model"])
    assert merged.llm.config.is_causal is False
    for name, param in start.llm.state_dict().items():
        assert torch.equal(merged.llm.state_dict()[name], param), name
    assert torch.equal(merged.projection.net[0].weight, start.projection.net[0].weight)


def test_resume_with_another_objective_is_refused(tiny_model_dir, tmp_path):
    config = Stage1Config(model_path=str(tiny_model_dir), train_files=[_texts(tmp_path)],
                          output_dir=str(tmp_path / "run"),
                          max_steps=1, batch_size=4, save_every=1)
    train_stage1(config)
    other = config.replace(resume_from="latest", objective="reference", mask_ratio=0, max_steps=2)
    with pytest.raises(TrainingError, match=r"cannot resume .*objective: 'current' -> 'reference'"):
        train_stage1(other)
