"""Launchers parse, call scripts that exist, and keep the seed's positional arguments."""

import re
import subprocess
from pathlib import Path

import pytest

import tiny

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = ["run_pretrain.sh", "run_alignment.sh", "run_generation.sh", "run_tox_score.sh", "run_ppl_score.sh",
             "run_all.sh", "run_tests.sh", "setup.sh", ".ci/run"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_parses_and_is_executable(name):
    path = REPO / name
    assert path.exists(), name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert path.stat().st_mode & 0o111, f"{name} is not executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_script_a_launcher_calls_exists(name):
    text = (REPO / name).read_text()
    called = set(re.findall(r'\$REPO_DIR/([\w./-]+\.(?:py|sh))', text))
    called |= set(re.findall(r'(?:^|\s)\./([\w./-]+\.sh)', text, flags=re.M))
    called |= set(re.findall(r'(?:^|\s)(?:bash|source)\s+"?(?:\$\(dirname[^)]*\)"?/)?([\w./-]+\.(?:sh|py))', text, flags=re.M))
    for rel in called:
        assert (REPO / rel).exists(), f"{name} calls {rel}, which does not exist"


def test_step_launchers_take_the_seeds_positional_arguments():
    gen = (REPO / "run_generation.sh").read_text()
    for i, var in enumerate(["TEACHER_MODEL", "TARGET_MODEL", "MATRIX_A", "DEVICE", "OUTPUT_PATH", "DATA_PATH"], 1):
        assert re.search(rf"^{var}=\$\{{POS\[{i - 1}\]:-", gen, flags=re.M), var
    tox = (REPO / "run_tox_score.sh").read_text()
    assert re.search(r"^DEVICE=\$\{POS\[0\]:-", tox, flags=re.M) and re.search(r"^INPUT_JSON=\$\{POS\[1\]:-", tox, flags=re.M)
    ppl = (REPO / "run_ppl_score.sh").read_text()
    assert re.search(r"^MODEL_PATH=\$\{POS\[0\]:-", ppl, flags=re.M) and re.search(r"^INPUT_JSON=\$\{POS\[1\]:-", ppl, flags=re.M)


@pytest.mark.parametrize("script", ["pretrain.py", "align.py", "generate.py", "eval_toxicity.py", "eval_ppl.py", "report.py"])
def test_every_script_has_help(script):
    r = subprocess.run([str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else "python3",
                        str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert "usage" in r.stdout.lower()


HELPED = ["run_pretrain.sh", "run_alignment.sh", "run_generation.sh", "run_tox_score.sh", "run_ppl_score.sh",
          "run_all.sh", "run_tests.sh", "setup.sh"]


@pytest.mark.parametrize("name", HELPED)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_writes_nothing(name, flag, tmp_path):
    """From another cwd, with OUT_DIR pointing at an empty folder: exit 0, the header and the editable
    variables printed, and not a file created (no setup, no prompt files, no model)."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OUT_DIR=str(out), PYTHON="/nonexistent/python")
    r = subprocess.run(["bash", str(REPO / name), flag], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Editable variables" in r.stdout and len(r.stdout.splitlines()) > 4
    assert not r.stdout.lstrip().startswith("#")  # the comment markers are stripped
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def _stub(tmp_path):
    return tiny.stub_python(tmp_path)


@pytest.mark.parametrize("argv,expect", [
    (["T", "G", "A", "cpu", "out.json", "p.jsonl", "--overwrite"], "--data_path p.jsonl"),
    (["--overwrite"], "--teacher_model"),  # flags only: every positional from its default
])
def test_generation_flags_pass_through(tmp_path, argv, expect):
    import os

    env = dict(os.environ, PYTHON=str(_stub(tmp_path)), OUT_DIR=str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    if argv[0] == "T":  # the teacher T is named: so must its anti-expert be (never the default run's)
        env["ANTI_TEACHER_MODEL"] = "AT"
    (tmp_path / "out" / "data").mkdir(parents=True)
    for n in ("rtp_eval", "rtp_build", "rtp_dev"):
        (tmp_path / "out" / "data" / f"{n}.jsonl").write_text('{"prompt": "x"}\n')
    r = subprocess.run(["bash", str(REPO / "run_generation.sh"), *argv], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert expect in line and line.endswith("--overwrite") and line.count("--overwrite") == 1


@pytest.mark.parametrize("script,argv,msg", [
    ("run_tox_score.sh", ["g.json"], "missing <input_json_path> (positional argument 2 of 2; or set INPUT_JSON)"),
    ("run_ppl_score.sh", ["gemma-3-270m"], "missing <input_json_path> (positional argument 2 of 2"),
    ("run_generation.sh", ["T", "G", "--overwrite"], "'--overwrite' is a flag where <matrix_A_path> (positional argument 3 of 6)"),
    ("run_generation.sh", ["T", "G", "A", "cpu"], "missing <output_path> (positional argument 5 of 6"),
])
def test_too_few_positionals_name_the_first_missing_one(tmp_path, script, argv, msg):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("INPUT_JSON", "OUTPUT_PATH", "MATRIX_A", "DATA_PATH")}
    env.update(PYTHON=str(_stub(tmp_path)), OUT_DIR=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(REPO / script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "ARGS" not in r.stdout and not (tmp_path / "out").exists()
    # the environment may give the missing ones
    r = subprocess.run(["bash", str(REPO / script), *argv], cwd=tmp_path, env={**env, "INPUT_JSON": "x.json",
                       "MATRIX_A": "a.pt", "DEVICE": "cpu", "OUTPUT_PATH": "o.json", "DATA_PATH": "d.jsonl"}, capture_output=True,
                       text=True, timeout=30)
    assert "missing" not in r.stderr and "is a flag" not in r.stderr


@pytest.mark.parametrize("script,expect", [
    ("run_tox_score.sh", "--input_json {repo}/outputs/generations.json"),
    ("run_ppl_score.sh", "--input_json {repo}/outputs/generations.json"),
    ("run_alignment.sh", "--output_dir {repo}/outputs/alignment"),
    ("run_pretrain.sh", "--training_data_path {repo}/data/teacher_data.tsv --output_dir {repo}/outputs/teacher"),
    ("run_generation.sh", "--matrix_A {repo}/outputs/alignment/mapping_model.pt --device auto --output_path {repo}/outputs/generations.json"),
])
def test_defaults_resolve_against_the_repo_from_any_cwd(tmp_path, script, expect):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OUT_DIR", "INPUT_JSON", "ALIGN_OUTPUT_DIR", "MODEL1_NAME",
                                                             "PRETRAIN_OUTPUT_DIR", "TRAINING_DATA_PATH", "MATRIX_A",
                                                             "OUTPUT_PATH", "DEVICE")}
    env.update(PYTHON=str(_stub(tmp_path)), MODEL1_NAME="smollm2-135m", NUM_GPUS="0", TEACHERS="expert")
    r = subprocess.run(["bash", str(REPO / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert expect.format(repo=REPO) in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python"]  # nothing written in the cwd


@pytest.mark.parametrize("method", ["diff", "paper"])
def test_run_all_wires_each_recipe_through_the_five_steps(tmp_path, method):
    """run_all.sh with a PYTHON that records each step's command line: the default trains both teachers,
    fits the logits A and generates with --method diff; RECIPE=paper trains one teacher with every weight,
    the contrastive A and the paper's LayerNorm fusion, under outputs/paper."""
    import os

    stub = tiny.stub_python(tmp_path, pipeline=True)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(stub), OUT_DIR=str(out), NUM_GPUS="0", NPROC="1", RECIPE=method,
               HF_HUB_OFFLINE="1")
    r = subprocess.run(["bash", str(REPO / "run_all.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    calls = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS ")]
    pre = [c for c in calls if "pretrain.py" in c]
    al = next(c for c in calls if "align.py" in c)
    gen = next(c for c in calls if "generate.py" in c)
    if method == "diff":
        assert len(pre) == 2 and "teacher_data_toxic.tsv" in pre[1] and all("--freeze_embeddings true" in c for c in pre)
        assert "--objective logits" in al and f"--also_teacher {out}/anti_teacher" in al and "--tune_pair auto" in al
        # no teacher named: generate.py decodes with the pair the matrix names (step 2's tuned pair)
        assert "--method diff" in gen and "--teacher_model  " in gen and "--anti_teacher_model  " in gen
        assert "--top_k 5" in gen
    else:
        assert len(pre) == 1 and "--freeze_embeddings false" in pre[0] and "teacher_data.tsv" in pre[0]
        assert "--objective contrastive" in al
        assert "--method fusion" in gen and "--norm layernorm" in gen and "--anti_teacher_model" not in gen
    assert "--alphas" not in gen  # each method's own sweep (diff 0..6, the paper's fusion 0..0.6)
    assert any("eval_toxicity.py" in c for c in calls) and any("eval_ppl.py" in c for c in calls)


def test_generation_in_a_clean_out_dir_writes_nothing_before_its_inputs_check(tmp_path):
    """The default prompts are read in place (rtp:eval) and the output folder is made only when generation
    starts writing: with no matrix (and so no teachers) yet, the step stops with one line and OUT_DIR stays as
    it was."""
    import os
    import sys

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TEACHER_MODEL", "DATA_PATH", "OUTPUT_PATH", "MATRIX_A")}
    env.update(PYTHON=sys.executable, OUT_DIR=str(out), HF_HUB_OFFLINE="1", DEVICE="cpu")
    r = subprocess.run(["bash", str(REPO / "run_generation.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"{out}/alignment" in errors[0] and "does not exist" in errors[0], r.stderr[-1000:]
    assert not out.exists()


def test_embedded_prompt_splits_are_read_in_place():
    from detox_pa.assets import rtp_split
    from detox_pa.errors import InputError
    from detox_pa.data import load_prompts

    ev = load_prompts("rtp:eval")
    assert ev == rtp_split("eval") and len(ev) > 250 and set(ev).isdisjoint(load_prompts("rtp:build"))
    assert load_prompts("rtp:eval", max_prompts=5) == ev[:5]
    with pytest.raises(InputError, match="unknown split 'test'"):
        load_prompts("rtp:test")
