"""The README's recipes run as written (issue 25, item 3), and a launcher never pairs an artifact the user named
with the default run's artifact of another kind.

The paper-scale block is taken from README.md itself and run through bash with only its hub ids, data paths and
GPU flags replaced by tiny local models and data; it must end with scored files."""

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.tiny import WORDS, make_model_folder

REPO = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return section[section.index("```bash\n") + len("```bash\n"):section.index("\n```", section.index("```bash\n"))]


def clean_env(tmp_path, **extra):
    """The caller's environment without any launcher knob, so only what the block sets is set."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "HOME": str(tmp_path / "home"), "DETOX_PA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NUM_GPUS": "0", "OUT_DIR": str(tmp_path / "out"),
            "PYTHON": str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else "python3", **extra}


def test_the_paper_scale_block_runs_as_written_on_tiny_models(tmp_path):
    block = readme_block("## Paper scale on GPUs")
    work = tmp_path / "work"
    work.mkdir()
    base = make_model_folder(tmp_path, "mistral", "llama", "bl", layers=4)
    target = make_model_folder(tmp_path, "llama3", "llama", "sp", layers=2)
    data = tmp_path / "train.tsv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["vanilla", "adversarial", "completion"])
        for i in range(16):
            w.writerow([" ".join(WORDS[(5 * i + j) % 60] for j in range(4)).capitalize(), "",
                        "the kind friend is happy today."])
    (work / "challenge_prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                                          ["So I told him", "The weather is", "We like the", "A dog"]))
    subs = {  # what the block names that does not exist here -> its tiny local stand-in
        "mistralai/Mistral-7B-v0.1": str(base), "/data/wildjailbreak/train.tsv": str(data),
        "meta-llama/Meta-Llama-3-8B": str(target), "/models/llama-2-13b": str(target),
        "NPROC=8": "NPROC=1", "cuda:0": "cpu", " cuda ": " cpu ", "detoxify-original": "profanity-check",
        "./run_": f"{REPO}/run_"}
    script = block
    for old, new in subs.items():
        assert old in script, f"the README block no longer holds {old!r}: update this test's stand-ins"
        script = script.replace(old, new)
    assert not re.search(r"\bcuda\b", script)
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=work, env=clean_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    gens = json.loads((work / "runs" / "gen.json").read_text())
    assert [b["alpha"] for b in gens] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    meta = json.loads((work / "runs" / "gen.meta.json").read_text())
    assert meta["method"] == "fusion" and meta["teacher_model"] == "runs/teacher"
    side = json.loads((work / "runs" / "align" / "mapping_model.json").read_text())
    assert side["objective"] == "contrastive"
    tox = json.loads((work / "runs" / "gen_toxicity.json").read_text())
    ppl = json.loads((work / "runs" / "gen_ppl.json").read_text())
    assert len(tox) == len(ppl) == 7 and all(d["n_scored"] == 4 or d["n_skipped_empty"] for d in ppl)
    assert all(isinstance(d["toxicity_score"], float) for d in tox)
    assert not (tmp_path / "out").exists()  # nothing from the default run's folder was read or written


def _stub(tmp_path):
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\necho \"ARGS $*\"\n")
    stub.chmod(0o755)
    return stub


def launch(tmp_path, script, *argv, **env):
    e = clean_env(tmp_path, PYTHON=str(_stub(tmp_path)), **env)
    return subprocess.run(["bash", str(REPO / script), *argv], cwd=tmp_path, env=e, capture_output=True, text=True,
                          timeout=60)


POS = ["runs/teacher", "meta-llama/Meta-Llama-3-8B", "runs/align/mapping_model.pt", "cpu", "runs/gen.json", "p.jsonl"]


@pytest.mark.parametrize("argv,env,needle", [
    (POS, {}, "name yours with ANTI_TEACHER_MODEL=..., or use METHOD=fusion"),
    ([], {"TEACHER_MODEL": "runs/teacher", "ANTI_TEACHER_MODEL": "runs/anti"}, "name the matrix step 2 fitted for yours"),
    ([], {"ANTI_TEACHER_MODEL": "runs/anti"}, "name the expert too"),
    ([], {"TARGET_MODEL": "meta-llama/Meta-Llama-3-8B"}, "your target meta-llama/Meta-Llama-3-8B would be paired"),
    ([], {"METHOD": "fusion", "TEACHER_MODEL": "runs/teacher"}, "name the matrix step 2 fitted for yours"),
])
def test_generation_never_pairs_a_named_artifact_with_the_default_runs(tmp_path, argv, env, needle):
    r = launch(tmp_path, "run_generation.sh", *argv, **env)
    errors = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(errors) == 1 and needle in errors[0], r.stderr
    assert "ARGS" not in r.stdout


@pytest.mark.parametrize("argv,env,expect", [
    (POS, {"ANTI_TEACHER_MODEL": "runs/anti"}, "--anti_teacher_model runs/anti"),
    (POS, {"METHOD": "fusion"}, "--method fusion"),
    (POS, {"METHOD": "wordban"}, "--method wordban"),  # no teacher, no matrix: nothing to pair
    (POS, {"ALPHAS": "0"}, "--alphas 0"),  # alpha 0 alone loads no teacher
    ([], {}, "--method diff"),  # everything the default run's
    ([], {"MATRIX_A": "runs/other_A.pt"}, "--matrix_A runs/other_A.pt"),  # another A for the default teachers
])
def test_generation_runs_when_every_paired_artifact_is_named_or_none_is(tmp_path, argv, env, expect):
    r = launch(tmp_path, "run_generation.sh", *argv, **env)
    assert r.returncode == 0 and expect in r.stdout, r.stderr


def test_alignment_never_pairs_a_named_teacher_with_the_default_anti_expert(tmp_path):
    out = tmp_path / "out"
    (out / "teacher").mkdir(parents=True)
    (out / "anti_teacher").mkdir()
    r = launch(tmp_path, "run_alignment.sh")  # the default run's teacher: its anti-expert joins
    assert r.returncode == 0 and f"--also_teacher {out}/anti_teacher" in r.stdout, r.stderr
    r = launch(tmp_path, "run_alignment.sh", MODEL1_NAME="runs/teacher", ALIGN_OUTPUT_DIR="runs/align")
    assert r.returncode == 0 and "anti_teacher" not in r.stdout, r.stdout  # yours: the default anti-expert stays out
    r = launch(tmp_path, "run_alignment.sh", ALSO_TEACHER="runs/anti")  # yours with the default run's teacher
    assert r.returncode == 2 and "name your expert too (MODEL1_NAME=...)" in r.stderr and "ARGS" not in r.stdout
    r = launch(tmp_path, "run_alignment.sh", MODEL1_NAME="runs/teacher", ALSO_TEACHER="runs/anti")
    assert r.returncode == 0 and "--also_teacher runs/anti" in r.stdout, r.stderr


@pytest.mark.slow  # two subprocesses; tests/test_ppl_formats.py and test_toxicity.py check the same forms in-process
def test_the_score_your_own_texts_block_runs_as_written(tmp_path):
    """README "Score your own texts": a .txt file through run_tox_score.sh and a DExperts JSONL through eval_ppl.py
    (the embedded Gemma replaced by a tiny local model)."""
    text = (REPO / "README.md").read_text()
    start = text.index("**Score your own texts.**")
    block = text[text.index("```bash\n", start) + len("```bash\n"):text.index("\n```", text.index("```bash\n", start))]
    target = make_model_folder(tmp_path, "tiny", "llama", "sp", layers=1)
    (tmp_path / "my_texts.txt").write_text("you are a stupid idiot\nhave a nice day\n")
    (tmp_path / "dexperts_generations.jsonl").write_text(
        json.dumps({"prompt": "So I told him", "generations": [{"text": "you are nice"}, {"text": " go away"}]}) + "\n")
    script = block
    for old, new in {"./run_": f"{REPO}/run_", "python eval_ppl.py": f'"$PYTHON" {REPO}/eval_ppl.py',
                     "gemma-3-270m": str(target)}.items():
        assert old in script, old
        script = script.replace(old, new)
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path, env=clean_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "my_texts_toxicity.json").read_text())[0]["n"] == 2
    (ppl,) = json.loads((tmp_path / "dexperts_generations_ppl.json").read_text())
    assert ppl["n_scored"] == 2 and ppl["join"] == "exact"  # one text carries its own leading space
