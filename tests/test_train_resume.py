"""Checkpoints resume exactly: a run killed after a checkpoint and resumed ends with the same weights,
optimizer state and metrics as an uninterrupted run (dropout on, gradient accumulation, GradCache).

The kill test runs ``lusifer-train`` in child processes and ends one with SIGKILL between two checkpoints; the
in-process test interrupts a run with an exception from the ``on_step_end`` callback.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lusifer.train.checkpoint import CheckpointError, list_checkpoints
from lusifer.train.config import Stage1Config, Stage2Config
from lusifer.train.loop import TrainingError
from lusifer.train.stage1 import train_stage1
from lusifer.train.stage2 import train_stage2

PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here", "negatives": [f"no {t} at all", f"a {t}?"],
          "instruction": "Find it" if i % 2 else None}
         for i, t in enumerate(["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup", "kite"])]
TEXTS = [{"text": f"the {t} is {c}"} for t in ["apple", "car", "boat", "kite"] for c in ["red", "blue"]]
TEXTS += [{"query": f"colour of the {t}?", "answer": f"the {t} is red"} for t in ["apple", "car"]]


class Crash(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(tmp_path, records, name):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _configs(stage, tiny_model_dir, tmp_path):
    if stage.startswith("stage1"):
        common = dict(model_path=str(tiny_model_dir), train_files=[_data(tmp_path, TEXTS, "t.jsonl")], batch_size=3,
                      grad_accum_steps=2, learning_rate=5e-3, warmup_steps=2, max_steps=6, save_every=2, log_every=1,
                      keep_checkpoints=5)
        if stage == "stage1-reference":  # LLM-side masks drawn per record: the same after resumption
            common.update(objective="reference", mask_ratio=0.0)
        return Stage1Config, train_stage1, common
    common = dict(model_path=str(tiny_model_dir), train_files=[_data(tmp_path, PAIRS, "p.jsonl")], batch_size=4,
                  grad_accum_steps=2, grad_cache_chunk_size=3, num_hard_negatives=1, learning_rate=5e-3,
                  warmup_steps=2, max_steps=6, save_every=2, log_every=1, keep_checkpoints=5)
    if stage == "stage2-distill":  # distillation with extra texts, whose order must continue too
        common.update(distill_weight=1.0, distill_files=[_data(tmp_path, TEXTS[:8], "d.jsonl")], distill_batch_size=3)
    return Stage2Config, train_stage2, common


@pytest.mark.parametrize("stage", ["stage1", "stage1-reference", "stage2-distill"])  # stage 2 without distillation: the SIGKILL test below
def test_resume_after_crash_equals_uninterrupted(tiny_model_dir, tmp_path, stage):
    cls, train, common = _configs(stage, tiny_model_dir, tmp_path)
    straight = train(cls(output_dir=str(tmp_path / "straight"), **common))

    def crash_at_5(step, _):
        if step == 5:  # step 4 was checkpointed, step 5 is lost with the crash
            raise Crash()

    crashed = cls(output_dir=str(tmp_path / "crashed"), **common)
    with pytest.raises(Crash):
        train(crashed, on_step_end=crash_at_5)
    assert [s for s, _ in list_checkpoints(tmp_path / "crashed")] == [2, 4]
    resumed = train(crashed.replace(resume_from="latest"))

    a = load_file(straight.final_checkpoint / "weights.safetensors")
    b = load_file(resumed.final_checkpoint / "weights.safetensors")
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-7, msg=name)
    opt_a = torch.load(straight.final_checkpoint / "optimizer.pt", weights_only=True)
    opt_b = torch.load(resumed.final_checkpoint / "optimizer.pt", weights_only=True)
    for i, state in opt_a["state"].items():
        torch.testing.assert_close(opt_b["state"][i]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-7)
    log_a = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log_b] == [1, 2, 3, 4, 5, 6]  # the lost step 5 is logged once
    assert [m["loss"] for m in log_b] == pytest.approx([m["loss"] for m in log_a], rel=1e-6)
    if stage == "stage2-distill":
        assert [m["loss_distill"] for m in log_b] == pytest.approx([m["loss_distill"] for m in log_a], rel=1e-6)


# ``lusifer-train`` in a child process. With PAUSE_AT set, the stage's run_training is wrapped (here, in the test
# child, not in the library) so that after that optimizer step (and any checkpoint before it) the child writes
# MARKER and waits to be killed.
TRAIN_CHILD = """
import os, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
stage, pause_at, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
if pause_at:
    import importlib

    module = importlib.import_module(f"lusifer.train.{stage}")
    run = module.run_training

    def run_until_killed(task, config, on_step_end=None):
        def step_end(step, metrics):
            if step == pause_at:
                marker.write_text(str(os.getpid()))
                time.sleep(600)
        return run(task, config, step_end)

    module.run_training = run_until_killed
from lusifer.train.cli import main

main(sys.argv[4:], prog_name="lusifer-train")
"""


def _train_child(stage: str, config: Path, out: Path, *extra: str, pause_at: int = 0,
                 marker: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-c", TRAIN_CHILD, stage, str(pause_at), str(marker or out / "unused"),
            stage, "--config", str(config), "--output-dir", str(out), *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_run_killed_between_checkpoints_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    """``lusifer-train stage2`` killed with SIGKILL after step 5 (checkpoints at steps 2 and 4), then rerun with
    ``--resume``, ends with the weights, optimizer state and logged losses of an uninterrupted run."""
    _, _, common = _configs("stage2", tiny_model_dir, tmp_path)
    config = tmp_path / "stage2.json"
    config.write_text(json.dumps(common))
    marker = tmp_path / "paused-at-step-5"
    straight = _train_child("stage2", config, tmp_path / "straight")  # both runs side by side
    killed = _train_child("stage2", config, tmp_path / "killed", pause_at=5, marker=marker)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if killed.poll() is not None:
            pytest.fail(f"the run ended before step 5: {killed.communicate()[0]}")
        if time.monotonic() > deadline:
            killed.kill()
            pytest.fail("the run did not reach step 5 in 300 s")
        time.sleep(0.05)
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == [2, 4]  # step 5 is done but not saved
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final.json").exists()

    _finish(_train_child("stage2", config, tmp_path / "killed", "--resume"))
    _finish(straight)
    a_dir, b_dir = (json.loads((tmp_path / run / "final.json").read_text())["checkpoint"]
                    for run in ("straight", "killed"))
    a = load_file(Path(a_dir) / "weights.safetensors")
    b = load_file(Path(b_dir) / "weights.safetensors")
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-7, msg=name)
    opt_a = torch.load(Path(a_dir) / "optimizer.pt", weights_only=True)
    opt_b = torch.load(Path(b_dir) / "optimizer.pt", weights_only=True)
    for i, state in opt_a["state"].items():
        torch.testing.assert_close(opt_b["state"][i]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-7)
    log_a = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log_b] == [1, 2, 3, 4, 5, 6]  # step 5, logged before the kill, is logged once
    assert [m["loss"] for m in log_b] == pytest.approx([m["loss"] for m in log_a], rel=1e-6)


def test_existing_run_needs_resume_and_same_settings(tiny_model_dir, tmp_path):
    cls, train, common = _configs("stage2", tiny_model_dir, tmp_path)
    config = cls(output_dir=str(tmp_path / "run"), **{**common, "max_steps": 2})
    train(config)
    with pytest.raises(TrainingError, match="already holds checkpoints.*--resume"):
        train(config)
    with pytest.raises(TrainingError, match="learning_rate"):
        train(config.replace(resume_from="latest", learning_rate=1e-3))
    # a finished run resumes to nothing; more steps continue it
    assert train(config.replace(resume_from="latest")).steps == 2
    assert train(config.replace(resume_from="latest", max_steps=3)).steps == 3
    # checkpoints of one stage do not load into the other
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "run", broken)
    state_file = broken / "checkpoints" / "step-00000003" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["param_names"] = state["param_names"][:-1]
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="trainable parameters differ"):
        train(config.replace(output_dir=str(broken), resume_from="latest", max_steps=4))


def test_non_finite_gradient_stops_before_the_update(tiny_model_dir, tmp_path):
    from lusifer.train.loop import run_training
    from lusifer.train.stage2 import Stage2Task

    class NanAtStep3(Stage2Task):
        calls = 0

        def forward_backward(self, model, batch, loss_scale, ctx):
            out = super().forward_backward(model, batch, loss_scale, ctx)
            NanAtStep3.calls += 1
            if NanAtStep3.calls == 3:
                next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("nan"))
            return out

    cls, _, common = _configs("stage2", tiny_model_dir, tmp_path)
    config = cls(output_dir=str(tmp_path / "run"), **{**common, "grad_accum_steps": 1})
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 3.*step-00000002"):
        run_training(NanAtStep3(), config)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
