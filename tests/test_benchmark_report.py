"""The README's performance table and docs/benchmarks.md are generated from benchmarks/results (benchmarks.report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.report", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_readme_and_benchmarks_page_match_the_results_files():
    proc = report("--check")
    assert proc.returncode == 0, proc.stderr


def test_check_fails_when_a_results_file_changes(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    edge = results / "cpu" / "edge_small_int8_only.json"  # the latest edge run: the README quotes it
    data = json.loads(edge.read_text("utf-8"))
    data["variants"]["int8"]["latency"]["2"]["p50_ms"] = 12.0
    edge.write_text(json.dumps(data), "utf-8")
    readme, docs = tmp_path / "README.md", tmp_path / "docs" / "benchmarks.md"
    shutil.copy(REPO / "README.md", readme)
    docs.parent.mkdir()
    shutil.copy(REPO / "docs" / "benchmarks.md", docs)

    proc = report("--check", "--results", str(results), "--readme", str(readme), "--docs", str(docs))
    assert proc.returncode == 1
    assert str(readme) in proc.stderr and str(docs) in proc.stderr

    assert report("--results", str(results), "--readme", str(readme), "--docs", str(docs)).returncode == 0
    assert "s, 12 ms" in readme.read_text("utf-8")
    assert report("--check", "--results", str(results), "--readme", str(readme), "--docs", str(docs)).returncode == 0


def test_a_headline_figure_without_a_results_file_is_an_error(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results" / "cpu", results / "cpu")  # no GPU results
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)

    proc = report("--results", str(results), "--readme", str(readme), "--docs", str(tmp_path / "benchmarks.md"))
    assert proc.returncode == 2
    assert "no results file for 'fp16 on CUDA vs PyTorch fp32'" in proc.stderr
    assert readme.read_text("utf-8") == (REPO / "README.md").read_text("utf-8")


def test_results_files_are_written_without_local_paths(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not an installed package
    from benchmarks.common import REPO_ROOT, machine_info, write_results

    data = {"benchmark": "edge", "machine": machine_info(),
            "model": f"{REPO_ROOT}/benchmarks/work/small/export-int8", "command": f"{sys.executable} -m x"}
    json_path, md_path = write_results(tmp_path, "run", data, f"# run\n\nexport {REPO_ROOT}/benchmarks/work/small\n")

    for path in (json_path, md_path):
        text = path.read_text("utf-8")
        assert str(REPO_ROOT) not in text and sys.executable not in text and "dirty" not in text
    saved = json.loads(json_path.read_text("utf-8"))
    assert saved["model"] == "benchmarks/work/small/export-int8" and saved["command"] == "python -m x"
    assert "cwd" not in saved["machine"]


def test_edge_latency_headline_comes_only_from_a_run_started_on_an_idle_machine(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    shutil.copy(REPO / "README.md", readme)
    edge = json.loads((results / "cpu" / "edge_small_int8_only.json").read_text("utf-8"))
    edge["machine"]["started"] = "2099-01-01T00:00:00+00:00"  # the newest edge run
    edge["variants"]["int8"]["latency"]["2"]["p50_ms"] = 12.0
    for load, quoted in ((9.5, False), (0.5, True)):
        edge["machine"]["load_average_at_start"] = [load, load, load]  # 2 usable CPUs
        (results / "cpu" / "edge_later.json").write_text(json.dumps(edge), "utf-8")
        assert report("--results", str(results), "--readme", str(readme), "--docs", str(docs)).returncode == 0
        assert ("s, 12 ms" in readme.read_text("utf-8")) is quoted, load
