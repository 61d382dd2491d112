"""Pretraining survives SIGKILL: killed after a checkpoint or in the middle of writing one, the rerun
with RESUME picks the last complete checkpoint and ends with the same weights as an uninterrupted
run. Also: two runs with the same seed give the same bytes, resuming with other arguments is
refused, and an unfinished teacher folder is never used downstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pretrain import REPO, training_rows, write_tsv
from tests.tiny import make_model_folder

SIDECAR = "detox_pa_teacher.json"
# keys of the sidecar that measure time or the moment of the run; everything else must be identical
TIMING_KEYS = {"train_wall_seconds", "train_cpu_seconds", "tokens_per_second", "total_wall_seconds"}

# Runs pretrain.py in this process after wrapping the Trainer's checkpoint save so that the process
# SIGKILLs itself at a fixed point: after checkpoint KILL_STEP is complete ("after"), or after its
# weights are written but before trainer_state.json ("during", a save cut off half-way).
KILLER = r"""
import os, signal, sys
import transformers
step, when = int(os.environ["KILL_STEP"]), os.environ["KILL_WHEN"]
orig_save, orig_state = transformers.Trainer._save_checkpoint, transformers.TrainerState.save_to_json

def save_checkpoint(self, model, trial):
    if self.state.global_step == step and when == "during":
        def cut(state, path):
            os.kill(os.getpid(), signal.SIGKILL)
        transformers.TrainerState.save_to_json = cut
    orig_save(self, model, trial)
    if self.state.global_step == step and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)

transformers.Trainer._save_checkpoint = save_checkpoint
sys.argv = ["pretrain.py"] + sys.argv[1:]
import runpy
runpy.run_path("pretrain.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    base = make_model_folder(root, "llama", arch="llama", kind="sp", layers=4)
    data = write_tsv(root / "data.tsv", training_rows())
    return {"root": root, "base": base, "data": data}


def argv(work, out, *extra):
    return ["--model_name_or_path", work["base"], "--num_teacher_layers", 2, "--training_data_path", work["data"],
            "--output_dir", out, "--per_device_train_batch_size", 8, "--learning_rate", 5e-3, "--logging_steps", 1,
            "--save_steps", 3, "--save_total_limit", 5, "--max_steps", 12, "--probe_rows", 8,
            "--disable_tqdm", "true", "--seed", 0, *extra]


def pretrain(args, env_extra=None, script=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env_extra or {}))
    cmd = [sys.executable] + (["-c", script] if script else [str(REPO / "pretrain.py")]) + [str(a) for a in args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def sidecar_without_timing(folder: Path) -> dict:
    side = json.loads((folder / SIDECAR).read_text())
    side.pop("created")
    side["training"] = {k: v for k, v in side["training"].items() if k not in TIMING_KEYS}
    side["arguments"] = {k: v for k, v in side["arguments"].items() if "dir" not in k}  # output_dir, logging_dir
    return side


@pytest.fixture(scope="module")
def reference(work):
    out = work["root"] / "reference"
    r = pretrain(argv(work, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow  # the SIGKILL tests below compare their weights with the same reference run too
def test_same_seed_gives_identical_weights_and_sidecar(work, reference):
    out = work["root"] / "again"
    r = pretrain(argv(work, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert weights(out) == weights(reference)
    assert sidecar_without_timing(out) == sidecar_without_timing(reference)
    assert json.loads((out / "detox_pa_run.json").read_text()) == json.loads((reference / "detox_pa_run.json").read_text())


@pytest.mark.parametrize("when,expect_resume", [
    pytest.param("after", "checkpoint-6", marks=pytest.mark.slow),  # 'during' also kills, resumes and compares
    ("during", "checkpoint-3")])
def test_sigkill_then_resume_equals_the_uninterrupted_run(work, reference, when, expect_resume):
    out = work["root"] / f"killed_{when}"
    r = pretrain(argv(work, out), {"KILL_STEP": "6", "KILL_WHEN": when}, script=KILLER)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (out / SIDECAR).exists() and not (out / "model.safetensors").exists()
    assert (out / "checkpoint-6").is_dir()
    assert (out / "checkpoint-6" / "trainer_state.json").exists() == (when == "after")

    # the killed folder is not a teacher: downstream steps refuse it with one line
    from detox_pa.assets import resolve_model
    from detox_pa.errors import InputError

    with pytest.raises(InputError, match="unfinished teacher training"):
        resolve_model(str(out), "teacher (--model1_name)")

    r = pretrain(argv(work, out, "--resume_from_checkpoint", "last"))
    assert r.returncode == 0, r.stderr[-3000:]
    side = json.loads((out / SIDECAR).read_text())
    assert side["training"]["resumed_from"].endswith(expect_resume)
    assert side["training"]["global_step"] == 12
    if when == "during":
        assert "checkpoint-6 is incomplete" in r.stderr
    assert weights(out) == weights(reference)
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    ref_state = json.loads((reference / "checkpoint-12" / "trainer_state.json").read_text())
    losses = [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]
    ref_losses = [(h["step"], h["loss"]) for h in ref_state["log_history"] if "loss" in h]
    assert losses == ref_losses and len(losses) == 12  # every step's loss, none lost or trained twice


def test_resume_with_different_arguments_is_refused(work, reference, tmp_path):
    out = tmp_path / "changed"
    r = pretrain(argv(work, out), {"KILL_STEP": "3", "KILL_WHEN": "after"}, script=KILLER)
    assert r.returncode == -signal.SIGKILL
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = pretrain(argv(work, out, "--resume_from_checkpoint", "last", "--learning_rate", 1e-3, "--seed", 1))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "different arguments" in errors[0] and "learning_rate 0.005 (now 0.001)" in errors[0]
    assert "seed 0 (now 1)" in errors[0] and str(out / "detox_pa_run.json") in errors[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # a longer run (more steps) is allowed: that is how training is extended
    r = pretrain(argv(work, out, "--resume_from_checkpoint", "last", "--max_steps", 15))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / SIDECAR).read_text())["training"]["global_step"] == 15
