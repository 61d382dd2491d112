"""Every launcher's --help shows values, not code: each editable variable's name, its position (positionals), its
default resolved (paths under OUT_DIR), the value the environment gives it now, and its comment; nothing written."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSIGNED = re.compile(r"^([A-Z][A-Z0-9_]*)=\$\{", re.M)

# launcher -> (environment to set, lines the help must hold: `{out}` is OUT_DIR, `{repo}` the repository)
CASES = {
    "run_generation.sh": ({"DEVICE": "cpu", "PROTOCOL": "dexperts", "MAX_NEW_TOKENS": "12"}, [
        '  TEACHER_MODEL=""  [positional 1 <teacher_model_path>]',
        "      empty = the teacher(s) the matrix names (step 2's tuned pair)",
        "  MATRIX_A={out}/alignment/mapping_model.pt  [positional 3 <matrix_A_path>]",
        "  DEVICE=auto  [positional 4 <device>]  [environment: cpu]",
        "      auto = a CUDA GPU when one is visible, else the CPU",
        "  OUTPUT_PATH={out}/generations.json  [positional 5 <output_path>]",
        "  DATA_PATH=rtp:eval  [positional 6 <data_path>]",
        "  PROTOCOL=paper  [environment: dexperts]",
        "  MAX_NEW_TOKENS=10  [environment: 12]",            # the environment wins over the protocol's 20
        "  NUM_SAMPLES=1  [now: 25, from the variables above]",  # follows PROTOCOL
        '  ALPHAS=""',
        "      empty = the method's own sweep: diff 0 4 8 12 18 22 26, fusion 0 0.1 .. 0.6 (the paper), steer 0 0.1 .. 0.4",
        "      (passed as --target_model)",                    # no comment: the flag it becomes
        '  GATE=""',
    ]),
    "run_pretrain.sh": ({"FREEZE_EMBEDDINGS": "0"}, [
        "  TRAINING_DATA_PATH={repo}/data/teacher_data.tsv",
        "  PRETRAIN_OUTPUT_DIR={out}/teacher",
        "  PRETRAIN_ANTI_OUTPUT_DIR={out}/anti_teacher",
        "  FREEZE_EMBEDDINGS=1  [environment: 0]",
        "  FREEZE_LM_HEAD=1  [now: 0, from the variables above]",
        "      (passed as --freeze_lm_head)",
        "  LEARNING_RATE=1e-3",
    ]),
    "run_alignment.sh": ({"OBJECTIVE": "contrastive"}, [
        "  MODEL1_NAME={out}/teacher",
        "  ALIGN_OUTPUT_DIR={out}/alignment",
        "  OBJECTIVE=logits  [environment: contrastive]",
        "  TEXT_PATH={repo}/data/teacher_data.tsv,{repo}/data/teacher_data_toxic.tsv",
        # the comment line right above the variable, when it has none on its line
        "      texts for the KL refinement and the transmission metric (the teacher data: clean and toxic completions)",
        '  ALSO_TEACHER=""',  # no anti-expert folder under this OUT_DIR
    ]),
    "run_tox_score.sh": ({"INPUT_JSON": "x.json"}, [
        "  DEVICE=auto  [positional 1 <device>]",
        "  INPUT_JSON={out}/generations.json  [positional 2 <input_json_path>]  [environment: x.json]",
        "  SCORER=auto,profanity-check",
    ]),
    "run_ppl_score.sh": ({}, [
        "  MODEL_PATH=gemma-3-270m  [positional 1 <model_path>]",
        "  INPUT_JSON={out}/generations.json  [positional 2 <input_json_path>]",
        "  PPL_BATCH_SIZE=16",
        "      texts per forward pass",
    ]),
    "run_all.sh": ({"RECIPE": "paper"}, [
        "  RECIPE=diff  [environment: paper]",
        "  PROTOCOL=paper",
        "  PPL_CAP=1.25",
        "  SMOKE=0",
    ]),
}


def clean_env(**extra):
    """The test process's environment without any launcher variable, so defaults show as defaults."""
    names = set()
    for name in CASES:
        names |= set(ASSIGNED.findall((REPO / name).read_text()))
    env = {k: v for k, v in os.environ.items() if k not in names and k != "OUT_DIR"}
    env.update(extra)
    return env


@pytest.mark.parametrize("name", sorted(CASES))
def test_help_shows_each_variable_resolved_with_its_position_environment_and_comment(name, tmp_path):
    setenv, expect = CASES[name]
    out = tmp_path / "out"
    env = clean_env(OUT_DIR=str(out), PYTHON="/nonexistent/python", **setenv)
    r = subprocess.run(["bash", str(REPO / name), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    section = r.stdout[r.stdout.index("Editable variables"):]
    lines = section.splitlines()
    assert "${" not in section and "POS[" not in section  # values, not the launcher's code
    for want in expect:
        want = want.format(out=out, repo=REPO)
        assert want in lines, f"{want!r} not in:\n{section}"
    shown = [ln.split("=", 1)[0].strip() for ln in lines if re.match(r"^  [A-Z][A-Z0-9_]*=", ln)]
    assert shown == ASSIGNED.findall((REPO / name).read_text())  # every editable variable, in the file's order
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written (not even OUT_DIR)


def test_help_evaluates_no_python_and_checks_no_path(tmp_path):
    """With OUT_DIR somewhere that does not exist and no usable python, every value still resolves."""
    env = clean_env(OUT_DIR="/nonexistent/out", PYTHON="/nonexistent/python", PROTOCOL="nonsense")
    r = subprocess.run(["bash", str(REPO / "run_generation.sh"), "-h"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "  MATRIX_A=/nonexistent/out/alignment/mapping_model.pt  [positional 3 <matrix_A_path>]" in r.stdout.splitlines()
    assert "  PROTOCOL=paper  [environment: nonsense]" in r.stdout.splitlines()  # --help checks nothing
