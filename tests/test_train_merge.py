"""LoRA merge: merged and unmerged embeddings agree, the merged folder loads without peft, and trainable-weight
checkpoints load onto a freshly built model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from conftest import MULTILINGUAL_TEXTS
from lusifer import LusiferModel
from lusifer.train.cli import main as cli
from lusifer.train.config import Stage2Config
from lusifer.train.merge import MergeError, merge_checkpoint, model_from_checkpoint
from lusifer.train.stage2 import train_stage2
from lusifer.vectors import row_cosines

PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here", "negatives": [f"no {t}"]}
         for t in ["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup"]]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A short stage-2 run with a large learning rate, so that the LoRA weights are far from zero."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("merge")
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    config = Stage2Config(model_path=str(tiny_model_dir), train_files=[str(data)], output_dir=str(tmp / "run"),
                          max_steps=6, batch_size=4, learning_rate=2e-2, save_every=3, keep_checkpoints=3)
    result = train_stage2(config)
    torch.set_num_threads(before)
    return result


def test_merged_equals_unmerged_and_differs_from_start(trained_run, tiny_model_dir, tmp_path):
    report = merge_checkpoint(trained_run.output_dir, tmp_path / "merged")
    assert report.merged == ["encoder", "llm"] and report.min_cosine > 0.9999
    assert report.checkpoint == trained_run.final_checkpoint
    unmerged, _ = model_from_checkpoint(trained_run.final_checkpoint)
    merged = LusiferModel.from_pretrained(tmp_path / "merged")
    start = LusiferModel.from_pretrained(tiny_model_dir)
    for kind in ("query", "document"):
        u = unmerged.encode(MULTILINGUAL_TEXTS, kind=kind, instruction="Find it", normalize=False)
        m = merged.encode(MULTILINGUAL_TEXTS, kind=kind, instruction="Find it", normalize=False)
        s = start.encode(MULTILINGUAL_TEXTS, kind=kind, instruction="Find it", normalize=False)
        assert row_cosines(u, m).min() > 0.9999
        assert row_cosines(s, m).min() < 0.999  # training changed the model: the check above is not vacuous
    # nothing of peft is left in the folder
    for file in (tmp_path / "merged").rglob("*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            assert not [k for k in fh.keys() if "lora" in k or "base_model" in k], file
    assert not list((tmp_path / "merged").rglob("adapter_config.json"))


def test_merged_folder_loads_without_peft(trained_run, tmp_path):
    merge_checkpoint(trained_run.output_dir, tmp_path / "merged", verify=False)
    expected = LusiferModel.from_pretrained(tmp_path / "merged").encode(MULTILINGUAL_TEXTS)
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys, numpy as np\n"
        "sys.modules['peft'] = None  # importing peft now fails\n"
        "from lusifer import LusiferModel\n"
        "from conftest import MULTILINGUAL_TEXTS\n"
        f"got = LusiferModel.from_pretrained({str(tmp_path / 'merged')!r}).encode(MULTILINGUAL_TEXTS)\n"
        f"np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-6)\n"
        "assert 'peft' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "print('ok')\n"
    )
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests_dir, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_checkpoint_weights_load_onto_fresh_model(trained_run):
    """Every checkpoint (not just the last) rebuilds on a fresh model; different steps give different models."""
    checkpoints = sorted((trained_run.output_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-00000003", "step-00000006"]
    e3 = model_from_checkpoint(checkpoints[0])[0].encode(["which apple?"])
    e6 = model_from_checkpoint(checkpoints[1])[0].encode(["which apple?"])
    assert not np.allclose(e3, e6)


def test_merge_cli_and_errors(trained_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["merge", str(trained_run.final_checkpoint), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "min cosine" in result.output and (tmp_path / "m" / "lusifer_config.json").is_file()
    # an unfinished run is refused (with the way out), a random folder too
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    with pytest.raises(MergeError, match="has not finished"):
        merge_checkpoint(unfinished, tmp_path / "x")
    result = runner.invoke(cli, ["merge", str(tmp_path), "--out", str(tmp_path / "y")])
    assert result.exit_code != 0 and "neither a training run folder nor a checkpoint folder" in result.output
