"""The shared helpers: atomic file writes (:mod:`lusifer.atomic`) and cosine / L2 normalisation
(:mod:`lusifer.vectors`), and that the code uses them rather than its own copies."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lusifer.atomic import atomic_path, replace_file, write_json_atomic, write_text_atomic
from lusifer.vectors import cosine_matrix, l2_normalize, row_cosines

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("lusifer", "runtime", "export", "train", "benchmarks")
# where a folder is made whole by renaming a staging folder into place (atomic.py covers single files)
FOLDER_SWAPS = {"train/prepare_data.py", "train/lusifer_small.py", "train/checkpoint.py"}


def _code_files():
    for folder in CODE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_write_json_atomic_writes_whole_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json_atomic(target, {"b": 1, "a": "é"}, sort_keys=True)
    assert target.read_text("utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # an ordinary file, not a 0600 temp
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json_atomic(target, {"x": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_file_moves_a_finished_file(tmp_path):
    source = tmp_path / "x.partial"
    source.write_bytes(b"123")
    assert replace_file(source, tmp_path / "x") == tmp_path / "x"
    assert (tmp_path / "x").read_bytes() == b"123" and not source.exists()


def test_l2_normalize_keeps_zero_rows_and_float_dtypes():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert l2_normalize(x).dtype == np.float32
    assert l2_normalize(x.astype(np.float64)).dtype == np.float64
    assert l2_normalize(x.astype(np.float16)).dtype == np.float32
    assert l2_normalize([[1, 1]]).dtype == np.float32


def test_row_cosines_and_cosine_matrix():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    b = np.array([[2.0, 2.0], [1.0, 0.0], [1.0, 1.0]])
    cos = row_cosines(a, b)
    np.testing.assert_allclose(cos[:2], [np.sqrt(0.5), 0.0])
    assert np.isnan(cos[2])  # a broken vector is never hidden
    np.testing.assert_allclose(cosine_matrix([[1.0, 0.0]], [[1.0, 1.0], [0.0, 2.0]]), [[np.sqrt(0.5), 0.0]])
    with pytest.raises(ValueError, match="same shape"):
        row_cosines(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="equal columns"):
        cosine_matrix(np.ones((2, 3)), np.ones((2, 4)))


def test_code_has_one_cosine_and_one_normalisation():
    """No module other than lusifer/vectors.py (numpy) and lusifer/pooling.py (torch) computes a cosine or an L2
    normalisation itself: a function named so elsewhere must delegate to :mod:`lusifer.vectors`."""
    allowed = {"lusifer/vectors.py", "lusifer/pooling.py"}
    helpers = {"row_cosines", "cosine_matrix", "_cosine_matrix", "l2_normalize"}
    bad = []
    for path in _code_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name.lower()
                if "cosine" in name or name.lstrip("_") in ("cos", "l2", "normalize", "l2_normalize"):
                    called = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                              for c in ast.walk(node) if isinstance(c, ast.Call)}
                    if not called & helpers:
                        bad.append(f"{rel}:{node.lineno} {node.name}")
    assert not bad, "use lusifer.vectors:\n" + "\n".join(bad)


def test_files_are_replaced_only_through_lusifer_atomic():
    """``os.replace`` / ``os.rename`` / ``mkstemp`` appear only in lusifer/atomic.py and the folder swaps."""
    bad = []
    for path in _code_files():
        rel = path.relative_to(REPO).as_posix()
        if rel == "lusifer/atomic.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                if name == "mkstemp" or (name in ("replace", "rename") and isinstance(node.func.value, ast.Name)
                                         and node.func.value.id == "os" and rel not in FOLDER_SWAPS):
                    bad.append(f"{rel}:{node.lineno} {name}")
    assert not bad, "write files with lusifer.atomic:\n" + "\n".join(bad)


def test_json_written_by_the_runtime_is_unchanged_in_form(tmp_path):
    """Sidecars and manifests keep their layout (sorted keys, indent 2, non-ASCII kept)."""
    write_json_atomic(tmp_path / "s.json", {"z": [1, 2], "a": {"y": "ü", "b": None}}, sort_keys=True)
    text = (tmp_path / "s.json").read_text("utf-8")
    assert text == json.dumps({"z": [1, 2], "a": {"y": "ü", "b": None}}, indent=2, sort_keys=True,
                              ensure_ascii=False) + "\n"


def test_replace_folder_swaps_in_the_new_folder_and_keeps_the_old_one_on_error(tmp_path, monkeypatch):
    from lusifer.atomic import replace_folder

    target, staging = tmp_path / "model", tmp_path / ".model.staging"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_folder(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and (target / "new.txt").read_text() == "new"

    staging.mkdir()
    real_replace = os.replace

    def failing(src, dst):
        if Path(src) == staging:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_folder(staging, target)
    assert (target / "new.txt").read_text() == "new"  # the folder in place is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.staging", "model"]
