"""Suite loading and validation of lusifer-eval: good suites load, bad ones name the file and line."""

from __future__ import annotations

import json

import pytest

from lusifer.evaluation.suite import SuiteError, load_suite, load_task

BITEXT_ROWS = [{"sentence1": "Hola.", "sentence2": "Hello."}, {"sentence1": "Adiós.", "sentence2": "Goodbye."},
               {"sentence1": "Gracias.", "sentence2": "Thanks."}]
STS_ROWS = [{"sentence1": "A cat.", "sentence2": "A cat sleeps.", "score": 4.0},
            {"sentence1": "A dog.", "sentence2": "Rain.", "score": 0},
            {"sentence1": "Sun.", "sentence2": "The sun.", "score": 5}]


def write_suite(folder, tasks, files, as_list=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        text = "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
        (folder / name).write_text(text, "utf-8")
    (folder / "suite.json").write_text(json.dumps(tasks if as_list else {"tasks": tasks}), "utf-8")
    return folder


GOOD_TASKS = [{"name": "bitext-es", "type": "bitext", "lang": "es", "file": "es.jsonl"},
              {"name": "sts-en", "type": "sts", "lang": "en", "file": "data/sts-en.jsonl"}]


def test_good_suite_loads_with_checksums_and_limit(tmp_path):
    (tmp_path / "s" / "data").mkdir(parents=True)
    write_suite(tmp_path / "s", GOOD_TASKS, {"es.jsonl": BITEXT_ROWS, "data/sts-en.jsonl": STS_ROWS})
    suite = load_suite(tmp_path / "s")
    assert [t.name for t in suite.tasks] == ["bitext-es", "sts-en"]
    assert set(suite.sha256) == {"suite.json", "es.jsonl", "data/sts-en.jsonl"}
    assert all(len(v) == 64 for v in suite.sha256.values())
    data = load_task(suite.task("sts-en"))
    assert data.sentence1[0] == "A cat." and data.scores == [4.0, 0.0, 5.0] and data.total_rows == 3
    limited = load_task(suite.task("bitext-es"), limit=2)
    assert len(limited) == 2 and limited.total_rows == 3 and limited.scores is None
    # a plain list of tasks is accepted too, and the suite.json path itself
    write_suite(tmp_path / "s", GOOD_TASKS, {}, as_list=True)
    assert len(load_suite(tmp_path / "s" / "suite.json").tasks) == 2


@pytest.mark.parametrize(
    "tasks, files, message",
    [
        ([{"name": "x", "type": "retrieval", "lang": "es", "file": "es.jsonl"}], {"es.jsonl": BITEXT_ROWS},
         "type='retrieval'"),
        ([{"name": "x", "type": "bitext", "lang": "spa", "file": "es.jsonl"}], {"es.jsonl": BITEXT_ROWS},
         "lang='spa'"),
        ([{"name": "x", "type": "bitext", "lang": "en", "file": "es.jsonl"}], {"es.jsonl": BITEXT_ROWS},
         "English bitext"),
        ([{"name": "x", "type": "bitext", "lang": "es"}], {}, "lacks file"),
        (GOOD_TASKS[:1] * 2, {"es.jsonl": BITEXT_ROWS}, "used twice"),
        (GOOD_TASKS[:1], {}, "does not exist"),
        ([], {}, "empty"),
    ],
)
def test_bad_suite_json_is_rejected_by_name(tmp_path, tasks, files, message):
    write_suite(tmp_path, tasks, files)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(tmp_path)
    assert "suite.json" in str(info.value)


def test_missing_or_broken_suite_json(tmp_path):
    with pytest.raises(SuiteError, match="has no suite.json"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text("{not json", "utf-8")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load_suite(tmp_path)
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "task, rows, message",
    [
        (GOOD_TASKS[0], [BITEXT_ROWS[0], "{broken", BITEXT_ROWS[1]], r"es\.jsonl:2: not valid JSON"),
        (GOOD_TASKS[0], [BITEXT_ROWS[0], {"sentence1": "Hola."}], r"es\.jsonl:2: missing 'sentence2'"),
        (GOOD_TASKS[0], [BITEXT_ROWS[0], {"sentence1": "", "sentence2": "x"}], r"es\.jsonl:2: sentence1=''"),
        (GOOD_TASKS[0], [BITEXT_ROWS[0]], "1 row"),
        (GOOD_TASKS[0], [BITEXT_ROWS[0], [1, 2]], r"es\.jsonl:2: row is list"),
        ({**GOOD_TASKS[0], "type": "sts"}, [STS_ROWS[0], {"sentence1": "a", "sentence2": "b"}],
         r"es\.jsonl:2: missing 'score'"),
        ({**GOOD_TASKS[0], "type": "sts"}, [STS_ROWS[0], {**STS_ROWS[1], "score": 7}], r"es\.jsonl:2: score=7 is outside"),
        ({**GOOD_TASKS[0], "type": "sts"}, [{**STS_ROWS[0], "score": "4"}, STS_ROWS[1]], r"es\.jsonl:1: score='4'"),
        ({**GOOD_TASKS[0], "type": "sts"}, [{**r, "score": 3} for r in STS_ROWS], "same gold score"),
    ],
)
def test_bad_rows_are_rejected_with_file_and_line(tmp_path, task, rows, message):
    write_suite(tmp_path, [task], {"es.jsonl": rows})
    suite = load_suite(tmp_path)
    with pytest.raises(SuiteError, match=message):
        load_task(suite.tasks[0])


def test_limit_still_validates_every_row(tmp_path):
    write_suite(tmp_path, GOOD_TASKS[:1], {"es.jsonl": BITEXT_ROWS + ["{broken"]})
    with pytest.raises(SuiteError, match=r"es\.jsonl:4"):
        load_task(load_suite(tmp_path).tasks[0], limit=2)
    with pytest.raises(SuiteError, match="limit=1"):
        load_task(load_suite(tmp_path).tasks[0], limit=1)
