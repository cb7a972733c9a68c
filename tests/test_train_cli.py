"""``lusifer-train`` command line: config file plus flags, clear errors with a non-zero exit."""

import json

import pytest
import torch
from click.testing import CliRunner

from lusifer.train.cli import main as cli

PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here"} for t in ["apple", "car", "house", "boat", "kite"]]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def stage2_files(tmp_path, tiny_model_dir):
    data = tmp_path / "conf" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    config = tmp_path / "conf" / "stage2.yaml"
    config.write_text(f"train_files: [pairs.jsonl]\nmodel_path: {tiny_model_dir}\nbatch_size: 2\nmax_steps: 50\n")
    return config, data


def test_stage2_cli_runs_with_overrides(stage2_files, tmp_path):
    config, _ = stage2_files
    out = tmp_path / "run"
    args = ["stage2", "--config", str(config), "--output-dir", str(out), "--max-steps", "2", "--set", "save_every=1",
            "--set", "log_every=1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "stage2 finished at step 2" in result.output
    final = json.loads((out / "final.json").read_text())
    assert final["step"] == 2 and final["stage"] == "stage2"
    saved = json.loads((out / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert saved["train_files"] == [str(config.parent / "pairs.jsonl")] and saved["save_every"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # the same command again is refused; with --resume and more steps it continues
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--resume" in again.output
    more = CliRunner().invoke(cli, args[:6] + ["3", "--resume"] + args[7:])
    assert more.exit_code == 0 and "finished at step 3" in more.output, more.output


def test_stage_cli_errors_name_the_problem(stage2_files, tmp_path):
    config, data = stage2_files
    runner = CliRunner()
    bad_field = runner.invoke(cli, ["stage2", "--config", str(config), "--output-dir", str(tmp_path / "a"),
                                    "--set", "temperature=-1"])
    assert bad_field.exit_code != 0 and "temperature=-1.0 must be > 0" in bad_field.output
    data.write_text(data.read_text() + '{"query": "x"}\n')
    bad_data = runner.invoke(cli, ["stage2", "--config", str(config), "--output-dir", str(tmp_path / "b")])
    assert bad_data.exit_code != 0
    assert f"{data} line {len(PAIRS) + 1}: field 'positive' is missing" in bad_data.output
    missing = runner.invoke(cli, ["stage1", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_show_config(stage2_files):
    config, _ = stage2_files
    result = CliRunner().invoke(cli, ["show-config", "stage2", "--config", str(config), "--set", "output_dir=/tmp/x"])
    assert result.exit_code == 0, result.output
    assert "temperature: 0.05" in result.output and "output_dir: /tmp/x" in result.output
    defaults = CliRunner().invoke(cli, ["show-config", "stage1"])
    assert defaults.exit_code == 0 and "mask_ratio: 0.5" in defaults.output
