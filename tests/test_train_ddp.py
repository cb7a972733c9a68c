"""Data-parallel training on CPU (gloo) through ``torchrun``: two processes with 2 examples each train the
same weights as one process with 4 (embeddings are gathered, so negatives are global). Slow: it starts
two extra Python processes per run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lusifer import LusiferModel
from lusifer.train.config import Stage2Config
from lusifer.train.stage2 import train_stage2

pytestmark = pytest.mark.slow

PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here", "negatives": [f"no {t}", f"a {t}?"],
          "instruction": "Find it" if i % 3 else None}
         for i, t in enumerate(["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup", "kite"])]


def _torchrun(args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "lusifer.train.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


@pytest.mark.parametrize("chunk, distill", [(None, False), (1, False), (None, True)])
def test_two_processes_equal_one_with_the_global_batch(tiny_model_dir, tmp_path, chunk, distill):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    common = dict(model_path=str(tiny_model_dir), train_files=[str(data)], max_steps=3, learning_rate=5e-3,
                  save_every=3, log_every=1, disable_dropout=True, grad_cache_chunk_size=chunk)
    per_process = {"batch_size": 2}
    if distill:  # the distillation term is global too (texts of every process in one similarity matrix)
        texts = tmp_path / "texts.jsonl"
        texts.write_text("".join(json.dumps({"text": f"The {p['positive']} today."}) + "\n" for p in PAIRS))
        common.update(distill_weight=1.0, distill_files=[str(texts)])
        per_process["distill_batch_size"] = 1
    torch.set_num_threads(1)
    single = train_stage2(Stage2Config(output_dir=str(tmp_path / "one"), **{**common, **{
        k: 2 * v for k, v in per_process.items()}}))
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps({**common, **per_process, "output_dir": str(tmp_path / "two")}))
    out = _torchrun(["stage2", "--config", str(config)], tmp_path)
    assert out.stdout.count("stage2 finished at step 3") == 1  # one summary, not one per process
    a = load_file(single.final_checkpoint / "weights.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step-00000003" / "weights.safetensors")
    # Adam turns float-rounding differences of near-zero gradients into differences up to ~lr; allow 4% of lr
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-4, msg=lambda m: f"{name}: {m}")
    log_a = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in log_b] == pytest.approx([m["loss"] for m in log_a], rel=1e-5)
    if distill:
        assert [m["loss_distill"] for m in log_b] == pytest.approx([m["loss_distill"] for m in log_a], rel=1e-5)
    # the gradient itself (before clipping) matches, including its scale
    assert [m["grad_norm"] for m in log_b] == pytest.approx([m["grad_norm"] for m in log_a], rel=1e-4)
    assert [m["candidates"] for m in log_b] == [m["candidates"] for m in log_a] == [8.0] * 3  # 4 positives + 4 hard negatives (one per record)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000003").glob("rng-rank*.pt")) == [
        "rng-rank0.pt", "rng-rank1.pt"]
    # resuming needs the same number of processes
    resumed = subprocess.run(
        [sys.executable, "-m", "lusifer.train.cli", "stage2", "--config", str(config), "--resume", "--max-steps", "4"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert resumed.returncode != 0 and "same number of processes" in resumed.stderr


def test_stage1_under_torchrun_writes_the_merged_model(tiny_model_dir, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"the {t} is red"}) + "\n" for t in ["apple", "car", "kite", "cup"]))
    config = tmp_path / "s1.yaml"
    config.write_text(f"model_path: {tiny_model_dir}\ntrain_files: [text.jsonl]\nbatch_size: 2\nmax_steps: 2\n")
    _torchrun(["stage1", "--config", str(config), "--output-dir", str(tmp_path / "run")], tmp_path)
    model = LusiferModel.from_pretrained(tmp_path / "run" / "model")
    assert model.encode(["the apple is red"]).shape == (1, model.config.embedding_dim)
