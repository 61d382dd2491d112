"""One device rule, one meaning per launcher knob, and a clean log (issue: paper fidelity and launchers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detox_pa.cli import format_args, non_default_args, run
from detox_pa.errors import InputError
from detox_pa.runtime import check_device_name, progress, resolve_device, resolve_dtype
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
STEP_LAUNCHERS = ["run_pretrain.sh", "run_alignment.sh", "run_generation.sh", "run_tox_score.sh", "run_ppl_score.sh"]
# the seed's positional arguments, read from the environment with the same meaning in each launcher that has them
SHARED_POSITIONALS = {"DEVICE": {"run_generation.sh", "run_tox_score.sh"},
                      "INPUT_JSON": {"run_tox_score.sh", "run_ppl_score.sh"}}
NO_GPU = not torch.cuda.is_available()


def editable_names(launcher: str) -> set[str]:
    text = (REPO / launcher).read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=\$\{", text, flags=re.M))


def test_each_launcher_knob_has_one_meaning():
    """No name is read by two step launchers, but the seed's positionals (same meaning in both)."""
    owners: dict[str, set[str]] = {}
    for name in STEP_LAUNCHERS:
        for var in editable_names(name):
            owners.setdefault(var, set()).add(name)
    shared = {v: s for v, s in owners.items() if len(s) > 1}
    assert shared == SHARED_POSITIONALS
    for old in ("BATCH_SIZE", "SEED", "TEMPERATURE", "MAX_LENGTH", "OUTPUT_DIR", "OVERWRITE", "DTYPE", "OUTPUT_TAG"):
        assert old not in owners, old


def _stub(tmp_path):
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\necho \"ARGS $*\"\n")
    stub.chmod(0o755)
    return stub


def _clean_env(tmp_path, **kw):
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(GEN|PPL|TOX|ALIGN|PRETRAIN)_|^(BATCH_SIZE|SEED|TEMPERATURE|MAX_LENGTH|OUTPUT_DIR|OVERWRITE|"
                           r"DTYPE|OUTPUT_TAG|CONFIG|DEVICE|INPUT_JSON)$", k)}
    env.update(PYTHON=str(_stub(tmp_path)), OUT_DIR=str(tmp_path / "out"), HF_HUB_OFFLINE="1", **kw)
    return env


def test_an_export_for_one_step_does_not_reach_another(tmp_path):
    env = _clean_env(tmp_path, GEN_BATCH_SIZE="3", ALIGN_SEED="7", PRETRAIN_MAX_LENGTH="99")
    r = subprocess.run(["bash", str(REPO / "run_ppl_score.sh"), "m", "g.json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "--batch_size 16" in r.stdout and "--max_length 1024" in r.stdout
    env = _clean_env(tmp_path, PPL_BATCH_SIZE="5", GEN_SEED="11")
    (tmp_path / "out" / "data").mkdir(parents=True)
    for n in ("rtp_eval", "rtp_build", "rtp_dev"):
        (tmp_path / "out" / "data" / f"{n}.jsonl").write_text('{"prompt": "x"}\n')
    r = subprocess.run(["bash", str(REPO / "run_generation.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "--batch_size 16" in r.stdout and "--seed 11" in r.stdout and "--device auto" in r.stdout


@pytest.mark.parametrize("launcher,old,new", [
    ("run_generation.sh", "SEED", "GEN_SEED"),
    ("run_alignment.sh", "OUTPUT_DIR", "ALIGN_OUTPUT_DIR"),
    ("run_pretrain.sh", "OUTPUT_DIR", "PRETRAIN_OUTPUT_DIR"),
    ("run_ppl_score.sh", "BATCH_SIZE", "PPL_BATCH_SIZE"),
    ("run_tox_score.sh", "OUTPUT_TAG", "TOX_OUTPUT_TAG"),
])
def test_a_retired_name_stops_the_launcher_and_names_the_new_one(tmp_path, launcher, old, new):
    """An old export would otherwise be ignored without a word: it stops, before anything runs."""
    env = _clean_env(tmp_path, **{old: "x"})
    r = subprocess.run(["bash", str(REPO / launcher)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "ARGS" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and f"{old} is set" in r.stderr and new in r.stderr


# ---------------------------------------------------------------------------------- one device rule


def test_device_names_are_checked_before_torch():
    assert check_device_name("") == "auto" and check_device_name(" cuda:1 ") == "cuda:1"
    with pytest.raises(InputError, match=r"--device 'tpu9' is not a device; expected auto, cpu, cuda, cuda:N or mps"):
        check_device_name("tpu9")


def test_auto_is_the_gpu_when_visible_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(not NO_GPU, reason="checks the wording for a machine with no GPU")
def test_every_step_says_the_same_thing_for_a_cuda_device_with_no_gpu(tmp_path, capsys):
    from detox_pa import generation, ppl, toxicity

    gen = tmp_path / "g.json"
    gen.write_text('[{"alpha": 0, "prompt-response pairs": [{"prompt": "a", "response": "b"}]}]')
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    calls = {
        "generate": (generation, ["--method", "wordban", "--alphas", "0", "--data_path", prompts,
                                "--output_path", tmp_path / "o.json"]),
        "eval_toxicity": (toxicity, ["--input_json", gen, "--scorer", "profanity-check"]),
        "eval_ppl": (ppl, ["--input_json", gen]),
    }
    lines = {}
    for name, (mod, argv) in calls.items():
        code = run(mod.run, mod.parse_args, [str(a) for a in argv] + ["--device", "cuda:0"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(err) == 1, (name, err)
        lines[name] = err[0]
    assert set(lines.values()) == {"error: --device cuda:0: no CUDA GPU is visible on this machine (use --device cpu or auto)"}
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "g_toxicity.json").exists()


def test_auto_is_every_steps_default():
    from detox_pa.generation import GenerateArguments
    from detox_pa.ppl import PPLArguments
    from detox_pa.toxicity import ToxicityArguments

    for cls in (GenerateArguments, ToxicityArguments, PPLArguments):
        assert cls.__dataclass_fields__["device"].default == "auto", cls
    for launcher, var in (("run_generation.sh", "DEVICE"), ("run_tox_score.sh", "DEVICE"),
                          ("run_ppl_score.sh", "PPL_DEVICE")):
        assert re.search(rf"^{var}=\$\{{(POS\[\d\]:-\$\{{)?{var}:-auto\}}", (REPO / launcher).read_text(), re.M), launcher


# ------------------------------------------------------------------------------------ a clean log


def test_arguments_are_logged_by_their_non_default_values_without_secrets():
    from transformers import TrainingArguments

    t = TrainingArguments(output_dir="x", learning_rate=0.5, hub_token="SECRET")
    vals = non_default_args(t)
    assert vals["learning_rate"] == 0.5 and "hub_token" not in vals and "disable_tqdm" not in vals
    text = format_args(vals)
    assert "learning_rate=0.5" in text and "output_dir=x" in text and "SECRET" not in text and "\n" not in text


def test_progress_off_a_terminal_writes_plain_log_lines(capsys):
    from detox_pa.cli import setup_logging

    setup_logging()
    with progress(3, "demo", "item") as bar:  # pytest's stderr is not a terminal
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "demo: 3/3 item" in err and "\r" not in err and "\x1b" not in err


@pytest.mark.slow
def test_a_training_log_is_clean(tmp_path):
    """pretrain.py with its log going to a file (not a terminal): no DeepSpeed accelerator warning, no hub_token,
    no carriage returns or escape codes, the losses rounded."""
    base = tiny.make_model_folder(tmp_path, "base", "llama", "bl", layers=2)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "Hello the {w}", "completion": "good kind day."}}\n' for w in tiny.WORDS[:24]))
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "--model_name_or_path", str(base),
                        "--num_teacher_layers", "1", "--training_data_path", str(data), "--output_dir",
                        str(tmp_path / "t"), "--max_steps", "2", "--logging_steps", "1",
                        "--per_device_train_batch_size", "4", "--probe_rows", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stderr + r.stdout
    assert "Setting accelerator" not in log and "hub_token" not in log and "were not sharded" not in log
    assert "\r" not in log and "\x1b" not in log
    losses = re.findall(r"\bloss (\d\S*?)[,;\s]", log)
    assert losses and all(re.fullmatch(r"\d+(\.\d{1,4})?", x) for x in losses), losses


def test_a_killed_extension_build_does_not_hang_deepspeed_for_ever(tmp_path, monkeypatch):
    """A compile killed midway leaves torch's build lock, on which DeepSpeed's CPU op waits without a timeout (a CI
    run hung 600 s on one): a lock older than a build could take is removed, a fresh one (a build running now) stays."""
    import os
    import time

    from detox_pa import runtime

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", tmp_path / "py311_cpu" / "other_op" / "lock"
    for p in (stale, fresh):
        p.parent.mkdir(parents=True)
        p.touch()
    old = time.time() - runtime.STALE_LOCK_SECONDS - 5
    os.utime(stale, (old, old))
    runtime.prepare_extension_cache()
    assert not stale.exists() and fresh.exists()


def test_each_environment_has_its_own_extension_cache(monkeypatch):
    import sys
    from pathlib import Path

    from detox_pa import runtime

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    runtime.prepare_extension_cache()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    runtime.prepare_extension_cache()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/somewhere/else"  # the user's choice wins
