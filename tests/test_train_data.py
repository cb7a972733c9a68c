"""Training data: record validation with file and line, loading through datasets, batch plans, collators."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lusifer import LusiferModel
from lusifer.train.batching import BatchPlan
from lusifer.train.collate import Stage1Collator, Stage2Collator
from lusifer.train.data import DataError, load_examples


def _jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "stage, bad, message",
    [
        ("stage2", '{"query": "q", "positive": ', "line 3: not valid JSON"),
        ("stage2", {"query": "q"}, "line 3: field 'positive' is missing"),
        ("stage2", {"query": "q", "positive": 5}, "line 3: field 'positive' is int"),
        ("stage2", {"query": "q", "positive": "p", "negatives": "n"}, "line 3: field 'negatives' is str"),
        ("stage2", {"query": "q", "positive": "p", "negatives": ["n", ""]}, r"line 3: negatives\[1\]"),
        ("stage2", ["q", "p"], "line 3: record is list"),
        ("stage1", {"text": "t", "query": "q", "answer": "a"}, "line 3: record has both"),
        ("stage1", {"query": "q"}, "line 3: field 'answer' is missing"),
        ("stage1", {"title": "x"}, "line 3: record has neither"),
        ("stage1", {"text": "  "}, "line 3: field 'text' is empty"),
        ("stage1", {"text": "t", "instruction": "i"}, "line 3: 'instruction' is only used"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(tmp_path, stage, bad, message):
    good = {"query": "q", "positive": "p"} if stage == "stage2" else {"text": "fine"}
    path = _jsonl(tmp_path / "data.jsonl", [good, "", bad])  # the blank line 2 is skipped but counted
    with pytest.raises(DataError, match=message) as info:
        load_examples([str(path)], stage)
    assert str(path) in str(info.value)


def test_bad_parquet_row_and_missing_files(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["a", "b"], "positive": ["x", None]}), path)
    with pytest.raises(DataError, match=rf"{path} row 2: field 'positive' is missing"):
        load_examples([str(path)], "stage2")
    with pytest.raises(DataError, match="does not exist"):
        load_examples([str(tmp_path / "nope.jsonl")], "stage2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        load_examples([str(empty)], "stage2")


def test_loading_mixed_files(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": "one two"}, {"query": "q?", "answer": "a.", "instruction": "Answer", "id": 3}])
    b = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["three four"]}), b)
    ds = load_examples([str(a), str(b)], "stage1", cache_dir=tmp_path / "cache")
    assert ds["objective"] == ["reconstruction", "completion", "reconstruction"]
    assert ds["target_text"] == ["one two", "a.", "three four"]
    assert ds["instruction"] == [None, "Answer", None]
    pairs = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": "p"}, {"query": "r", "positive": "s", "negatives": ["n"]}])
    ds2 = load_examples([str(pairs)], "stage2")
    assert ds2["negatives"] == [[], ["n"]]


def test_batch_plan_partitions_global_batches():
    single = BatchPlan(num_records=10, batch_size=4, seed=3)
    ranks = [BatchPlan(num_records=10, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    assert single.batches_per_epoch == 2  # the last incomplete batch of each epoch is dropped
    for m in range(5):
        keys = single.keys(m)
        assert keys == ranks[0].keys(m) + ranks[1].keys(m)
        assert len({i for _, i in keys}) == 4
    assert {e for e, _ in single.keys(2)} == {1}
    assert single.keys(2) != single.keys(0)  # a new order each epoch
    assert BatchPlan(10, 4, seed=3).keys(3) == single.keys(3)  # a pure function of (seed, micro-batch)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchPlan(num_records=3, batch_size=2, world_size=2)


def test_stage1_collator_masks_and_targets(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    llm_tok = model.load_llm_tokenizer()
    collate = Stage1Collator(model.tokenizer, llm_tok, model.config, max_length=64, max_target_length=32,
                             mask_ratio=0.5, add_eos=True, seed=0)
    rows = [
        {"encoder_text": "The cat sleeps on the warm windowsill.", "target_text": "The cat sleeps on the warm windowsill.",
         "instruction": None, "objective": "reconstruction"},
        {"encoder_text": "Where does the cat sleep?", "target_text": "On the windowsill.", "instruction": "Answer",
         "objective": "completion"},
    ]
    batch = collate(rows, [(0, 0), (0, 1)])
    clean = model.tokenizer([rows[0]["encoder_text"]])["input_ids"][0]
    got = batch["input_ids"][0, : len(clean)].tolist()
    masked = [j for j, (a, b) in enumerate(zip(got, clean)) if a != b]
    assert all(got[j] == model.tokenizer.mask_token_id for j in masked)
    assert len(masked) == round(0.5 * (len(clean) - 2))  # specials (<s>, </s>) are never masked
    assert got[0] == clean[0] and got[-1] == clean[-1]
    # completion input is the instruction-formatted query, unmasked
    formatted = model.format([rows[1]["encoder_text"]], "query", "Answer")[0]
    expected = model.tokenizer([formatted])["input_ids"][0]
    assert batch["input_ids"][1, : len(expected)].tolist() == expected
    # targets: the LLM's own tokens, then EOS
    target = llm_tok(rows[1]["target_text"], add_special_tokens=False)["input_ids"] + [llm_tok.eos_token_id]
    assert batch["target_ids"][1, : len(target)].tolist() == target
    assert batch["target_mask"][1].sum().item() == len(target)
    assert batch["completion"].tolist() == [False, True]
    # masking depends only on (seed, epoch, index)
    again = collate(rows[:1], [(0, 0)])
    assert again["input_ids"][0].tolist() == batch["input_ids"][0, : again["input_ids"].shape[1]].tolist()
    other = collate(rows[:1], [(1, 0)])
    assert other["input_ids"][0].tolist() != again["input_ids"][0].tolist()


def test_stage1_reconstruction_target_follows_encoder_truncation(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    collate = Stage1Collator(model.tokenizer, model.load_llm_tokenizer(), model.config, max_length=6,
                             max_target_length=100, mask_ratio=0.0, add_eos=False, seed=0)
    text = "alpha beta gamma delta epsilon zeta eta theta"
    batch = collate([{"encoder_text": text, "target_text": text, "instruction": None, "objective": "reconstruction"}],
                    [(0, 0)])
    seen = model.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True).strip()
    target = model.load_llm_tokenizer().decode(batch["target_ids"][0]).strip()
    assert target == seen and len(target) < len(text)


def test_stage2_collator_draws_hard_negatives(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    collate = Stage2Collator(model.tokenizer, model.config, max_length=64, num_hard_negatives=2,
                             instruct_documents=True, seed=0)
    rows = [
        {"query": "q0", "positive": "p0", "negatives": ["a", "b", "c"], "instruction": "Find it"},
        {"query": "q1", "positive": "p1", "negatives": [], "instruction": None},
        {"query": "q2", "positive": "p2", "negatives": ["d"], "instruction": None},
    ]
    batch = collate(rows, [(0, 0), (0, 1), (0, 2)])
    assert batch["query_ids"].shape[0] == 3
    assert batch["doc_ids"].shape[0] == 3 + 2 + 0 + 1  # positives first, then drawn negatives
    decoded = model.tokenizer.batch_decode(batch["doc_ids"], skip_special_tokens=True)
    assert decoded[0].strip() == "Find it. Candidate:\np0"
    assert decoded[1].strip() == "p1"
    assert {d.strip().split("\n")[-1] for d in decoded[3:5]} <= {"a", "b", "c"}
    assert decoded[5].strip() == "d"
    assert model.tokenizer.decode(batch["query_ids"][0], skip_special_tokens=True).strip() == "Find it.\nq0"
