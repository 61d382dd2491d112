"""The bad-input catalogue: one table of wrong inputs across the five steps.

Every case runs the step's CLI in this process and must
- exit with status 2,
- print exactly one ``error:`` line that names the file, line or field (the expected text below),
- print no traceback,
- create or change no file (every file under the work folder is hashed before and after),
- and fail before any model is loaded (``from_pretrained`` raises if it is called).

``python -m tests.test_bad_input_catalogue docs/BAD_INPUTS.md`` writes the catalogue with each case's
actual message as a markdown table.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from detox_pa import alignment, pretraining
from detox_pa import generation
from detox_pa import ppl as ppl_step
from detox_pa import toxicity
from detox_pa.cli import run
from tests import tiny

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
STEPS = {"pretrain": (pretraining.train_teacher, pretraining.parse_args), "align": (alignment.run, alignment.parse_args),
         "generate": (generation.run, generation.parse_args), "eval_toxicity": (toxicity.run, toxicity.parse_args),
         "eval_ppl": (ppl_step.run, ppl_step.parse_args)}
TEACHER_DIM, TARGET_DIM = 24, 32
NESTED = [{"alpha": 0.0, "prompt-response pairs": [{"prompt": "Hello the", "response": " world is good"}]}]


# ------------------------------------------------------------------------------ the work folder


def make_workspace(root: Path) -> dict[str, Path]:
    """Valid inputs for every step; each case breaks exactly one of them."""
    root.mkdir(parents=True, exist_ok=True)
    w = {"root": root}
    w["base"] = tiny.make_model_folder(root, "base", "llama", "bl", seed=2, hidden=TEACHER_DIM, layers=2)
    w["target"] = tiny.make_model_folder(root, "target", "gemma3", "sp", seed=1, hidden=TARGET_DIM)
    w["A"] = root / "A.pt"
    torch.save({"mapping": torch.zeros(TEACHER_DIM, TARGET_DIM)}, w["A"])
    w["prompts"] = root / "prompts.jsonl"
    w["prompts"].write_text('{"prompt": "Hello the"}\n{"prompt": "The cat"}\n', encoding="utf-8")
    w["tsv"] = root / "teacher.tsv"
    w["tsv"].write_text("vanilla\tadversarial\tcompletion\nHello the\t\tworld is kind.\n", encoding="utf-8")
    w["gens"] = root / "gens.json"
    w["gens"].write_text(json.dumps(NESTED), encoding="utf-8")
    w["out"] = root / "outputs"
    w["out"].mkdir(exist_ok=True)
    return w


def put(w, name: str, data: bytes | str) -> Path:
    p = w["root"] / "bad" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return p


def matrix(w, A: torch.Tensor, name: str) -> Path:
    p = w["root"] / "bad" / name
    p.parent.mkdir(exist_ok=True)
    torch.save({"mapping": A}, p)
    return p


def without_tokenizer(w, src: str) -> Path:
    dst = w["root"] / "bad" / f"{src}_no_tokenizer"
    if not dst.exists():
        shutil.copytree(w[src], dst)
        for f in dst.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json", "merges.txt"):
                f.unlink()
    return dst


def unfinished_teacher(w) -> Path:
    """What a killed pretraining run leaves: checkpoint folders, no detox_pa_teacher.json."""
    dst = w["root"] / "bad" / "teacher_killed"
    if not dst.exists():
        shutil.copytree(w["base"], dst)
        shutil.copytree(w["base"], dst / "checkpoint-6")
    return dst


def readonly_folder(w) -> Path:
    """A folder nobody may write into. Root writes anywhere except a read-only mount, so as root
    this is /proc/sys (read-only to everyone); otherwise a chmod 555 folder."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/proc/sys")
    d = w["root"] / "readonly"
    d.mkdir(exist_ok=True)
    d.chmod(0o555)
    return d


# ------------------------------------------------------------------------------ the cases


def pre(w, *extra):
    return ["--model_name_or_path", w["base"], "--num_teacher_layers", 1, "--training_data_path", w["tsv"],
            "--output_dir", w["out"] / "teacher", *extra]


def ali(w, *extra):
    return ["--model1_name", w["base"], "--model2_name", w["target"], "--output_dir", w["out"] / "alignment", *extra]


def gen(w, *extra):
    return ["--method", "fusion", "--teacher_model", w["base"], "--target_model", w["target"], "--matrix_A", w["A"],
            "--data_path", w["prompts"], "--output_path", w["out"] / "gen.json", "--alphas", "0", "0.3", *extra]


def tox(w, *extra):
    return ["--input_json", w["gens"], "--scorer", "bilstm", *extra]


def ppl(w, *extra):
    return ["--input_json", w["gens"], "--model_path", w["target"], *extra]


@dataclass
class Case:
    step: str
    what: str
    argv: Callable[[dict], list]
    expect: str  # a regular expression the error line must match


def with_flag(base, flag, value_fn):
    def build(w):
        args = base(w)
        args[args.index(flag) + 1] = value_fn(w)
        return args
    return build


CASES = [
    # ---- pretrain.py
    Case("pretrain", "empty data file", with_flag(pre, "--training_data_path", lambda w: put(w, "empty.tsv", b"")),
         r"empty\.tsv.* is empty"),
    Case("pretrain", "TSV with the wrong delimiter (commas)",
         with_flag(pre, "--training_data_path", lambda w: put(w, "commas.tsv", "vanilla,adversarial,completion\na,,b\n")),
         r"commas\.tsv.*columns.*vanilla,adversarial,completion"),
    Case("pretrain", "TSV with a header and no rows",
         with_flag(pre, "--training_data_path", lambda w: put(w, "header.tsv", "vanilla\tadversarial\tcompletion\n")),
         r"header\.tsv"),
    Case("pretrain", "TSV where every completion field is empty",
         with_flag(pre, "--training_data_path", lambda w: put(w, "nocomp.tsv", "vanilla\tadversarial\tcompletion\na\t\t\nb\t\t \n")),
         r"nocomp\.tsv"),
    Case("pretrain", "non-UTF-8 data file",
         with_flag(pre, "--training_data_path", lambda w: put(w, "latin1.tsv", b"vanilla\tadversarial\tcompletion\ncaf\xe9\t\tok\n")),
         r"latin1\.tsv.*UTF-8"),
    Case("pretrain", "JSONL data with a truncated line",
         with_flag(pre, "--training_data_path",
                   lambda w: put(w, "cut.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "compl')),
         r"cut\.jsonl:2"),
    Case("pretrain", "JSONL data missing the completion field",
         with_flag(pre, "--training_data_path", lambda w: put(w, "nofield.jsonl", '{"prompt": "a", "answer": "b"}\n')),
         r"nofield\.jsonl:1.*completion"),
    Case("pretrain", "zero teacher layers", lambda w: pre(w)[:2] + ["--num_teacher_layers", 0] + pre(w)[4:],
         r"--num_teacher_layers must be at least 1"),
    Case("pretrain", "more teacher layers than the base has",
         lambda w: pre(w)[:2] + ["--num_teacher_layers", 9] + pre(w)[4:], r"config\.json.*2"),
    Case("pretrain", "missing base model folder", with_flag(pre, "--model_name_or_path", lambda w: w["root"] / "no_model"),
         r"no_model does not exist"),
    Case("pretrain", "base model folder without a tokenizer",
         with_flag(pre, "--model_name_or_path", lambda w: without_tokenizer(w, "base")), r"base_no_tokenizer has no tokenizer"),
    Case("pretrain", "output folder inside a read-only folder",
         with_flag(pre, "--output_dir", lambda w: readonly_folder(w) / "teacher"), r"not writable"),
    Case("pretrain", "missing DeepSpeed config", lambda w: pre(w, "--deepspeed", w["root"] / "no_ds.json"),
         r"no_ds\.json does not exist"),
    # ---- align.py
    Case("align", "missing teacher folder", with_flag(ali, "--model1_name", lambda w: w["root"] / "no_teacher"),
         r"no_teacher does not exist"),
    Case("align", "teacher folder without a tokenizer", with_flag(ali, "--model1_name", lambda w: without_tokenizer(w, "base")),
         r"has no tokenizer"),
    Case("align", "teacher folder of a killed, unfinished training",
         with_flag(ali, "--model1_name", unfinished_teacher), r"teacher_killed holds an unfinished teacher training"),
    Case("align", "zero epochs", lambda w: ali(w, "--epochs", 0), r"--epochs must be a positive integer"),
    Case("align", "negative learning rate", lambda w: ali(w, "--lr=-0.001"), r"--lr must be a positive number"),
    Case("align", "output folder inside a read-only folder",
         with_flag(ali, "--output_dir", lambda w: readonly_folder(w) / "alignment"), r"not writable"),
    Case("align", "output folder that already holds a matrix",
         with_flag(ali, "--output_dir", lambda w: put(w, "old_alignment/mapping_model.pt", b"earlier result").parent),
         r"old_alignment/mapping_model\.pt already exists: pass --overwrite"),
    # ---- generate.py
    Case("generate", "alpha -0.1", lambda w: gen(w)[:-2] + ["-0.1"], r"-0\.1.*outside \[0, 1\]"),
    Case("generate", "alpha 1.5", lambda w: gen(w)[:-2] + ["1.5"], r"1\.5.*outside \[0, 1\]"),
    Case("generate", "max_new_tokens 0", lambda w: gen(w, "--max_new_tokens", 0), r"--max_new_tokens must be >= 1"),
    Case("generate", "a CUDA device that does not exist", lambda w: gen(w, "--device", "cuda:3"), r"cuda:3"),
    Case("generate", "an unknown device", lambda w: gen(w, "--device", "tpu9"), r"tpu9"),
    Case("generate", "empty prompt file", with_flag(gen, "--data_path", lambda w: put(w, "empty.jsonl", b"")),
         r"empty\.jsonl.* is empty"),
    Case("generate", "non-UTF-8 prompt file",
         with_flag(gen, "--data_path", lambda w: put(w, "bytes.jsonl", b'{"prompt": "\xff\xfe"}\n')), r"bytes\.jsonl.*UTF-8"),
    Case("generate", "prompt file with a truncated JSONL line",
         with_flag(gen, "--data_path", lambda w: put(w, "cut.jsonl", '{"prompt": "a"}\n{"prompt": "b\n')),
         r"cut\.jsonl:2: not valid JSON"),
    Case("generate", "prompt line of the wrong JSON type (a list)",
         with_flag(gen, "--data_path", lambda w: put(w, "list.jsonl", '["a"]\n')), r"list\.jsonl:1.*expected a JSON object"),
    Case("generate", "prompt line without a prompt field",
         with_flag(gen, "--data_path", lambda w: put(w, "noprompt.jsonl", '{"text": "a"}\n')),
         r"noprompt\.jsonl:1: missing field 'prompt'"),
    Case("generate", "prompt line with an empty prompt field",
         with_flag(gen, "--data_path", lambda w: put(w, "blank.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n')),
         r"blank\.jsonl:2.*prompt"),
    Case("generate", "NaN in the alignment matrix",
         with_flag(gen, "--matrix_A", lambda w: matrix(w, torch.full((TEACHER_DIM, TARGET_DIM), float("nan")), "nan.pt")),
         r"nan\.pt.*NaN or inf"),
    Case("generate", "inf in the alignment matrix",
         with_flag(gen, "--matrix_A", lambda w: matrix(w, torch.zeros(TEACHER_DIM, TARGET_DIM).index_fill_(0, torch.tensor([3]), float("inf")), "inf.pt")),
         r"inf\.pt.*NaN or inf"),
    Case("generate", "alignment matrix of the wrong shape",
         with_flag(gen, "--matrix_A", lambda w: matrix(w, torch.zeros(TARGET_DIM, TEACHER_DIM), "shape.pt")),
         r"shape\.pt has shape \(32, 24\).*d_teacher=24, d_target=32"),
    Case("generate", "missing alignment matrix", with_flag(gen, "--matrix_A", lambda w: w["root"] / "no_A.pt"),
         r"no_A\.pt does not exist"),
    Case("generate", "missing target model folder", with_flag(gen, "--target_model", lambda w: w["root"] / "no_target"),
         r"no_target does not exist"),
    Case("generate", "target model folder without a tokenizer",
         with_flag(gen, "--target_model", lambda w: without_tokenizer(w, "target")), r"target_no_tokenizer has no tokenizer"),
    Case("generate", "output inside a missing folder that cannot be created",
         with_flag(gen, "--output_path", lambda w: readonly_folder(w) / "missing" / "gen.json"), r"cannot be written"),
    Case("generate", "output inside a read-only folder",
         with_flag(gen, "--output_path", lambda w: readonly_folder(w) / "gen.json"), r"not writable"),
    # ---- eval_toxicity.py
    Case("eval_toxicity", "missing generations file", with_flag(tox, "--input_json", lambda w: w["root"] / "no_gens.json"),
         r"no_gens\.json does not exist"),
    Case("eval_toxicity", "empty generations file", with_flag(tox, "--input_json", lambda w: put(w, "empty.json", b"")),
         r"empty\.json.* is empty"),
    Case("eval_toxicity", "wrong top-level JSON type (an object)",
         with_flag(tox, "--input_json", lambda w: put(w, "obj.json", '{"alpha": 0.1}')), r"obj\.json.*expected"),
    Case("eval_toxicity", "truncated JSON", with_flag(tox, "--input_json", lambda w: put(w, "cut.json", json.dumps(NESTED)[:-9])),
         r"cut\.json:1: not valid JSON"),
    Case("eval_toxicity", "a pair without its response field",
         with_flag(tox, "--input_json", lambda w: put(w, "noresp.json", json.dumps(
             [{"alpha": 0.0, "prompt-response pairs": [{"prompt": "a", "response": "b"}, {"prompt": "c"}]}]))),
         r"noresp\.json.*response"),
    Case("eval_toxicity", "non-UTF-8 generations file",
         with_flag(tox, "--input_json", lambda w: put(w, "bytes.json", b'[{"alpha": 0, "prompt-response pairs": [{"prompt": "\xff", "response": "x"}]}]')),
         r"bytes\.json.*UTF-8"),
    Case("eval_toxicity", "unknown scorer", lambda w: tox(w)[:2] + ["--scorer", "perspective"], r"perspective.*bilstm"),
    # ---- eval_ppl.py
    Case("eval_ppl", "missing generations file", with_flag(ppl, "--input_json", lambda w: w["root"] / "no_gens.json"),
         r"no_gens\.json does not exist"),
    Case("eval_ppl", "a flat list of pairs instead of the nested format",
         with_flag(ppl, "--input_json", lambda w: put(w, "flat.json", '[{"prompt": "a", "response": "b"}]')), r"flat\.json.*alpha"),
    Case("eval_ppl", "wrong top-level JSON type (an object)",
         with_flag(ppl, "--input_json", lambda w: put(w, "obj.json", '{"alpha": 0.1, "pairs": []}')), r"obj\.json.*expected a JSON list"),
    Case("eval_ppl", "missing reference model folder", with_flag(ppl, "--model_path", lambda w: w["root"] / "no_ref"),
         r"no_ref does not exist"),
    Case("eval_ppl", "reference model folder without a tokenizer",
         with_flag(ppl, "--model_path", lambda w: without_tokenizer(w, "target")), r"has no tokenizer"),
]


# ------------------------------------------------------------------------------ running a case


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")


def run_case(case: Case, w: dict) -> tuple[int, str, list[str]]:
    """(exit code, full stderr, error lines). Cases that need their bad file make it before the snapshot."""
    main, parse_args = STEPS[case.step]
    argv = [str(a) for a in case.argv(w)]
    buf = io.StringIO()
    with redirect_stderr(buf), redirect_stdout(io.StringIO()):  # DeepSpeed prints its notices to stdout
        code = run(main, parse_args, argv)
    err = buf.getvalue()
    return code, err, [ln for ln in err.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture
def no_model_load(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", boom)


def test_the_catalogue_covers_every_step_with_at_least_25_cases():
    assert len(CASES) >= 25
    assert {c.step for c in CASES} == set(STEPS)
    assert len({(c.step, c.what) for c in CASES}) == len(CASES)


def test_docs_list_exactly_these_cases():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUTS.md").read_text(encoding="utf-8")
    rows = [ln.split(" | ") for ln in doc.splitlines() if re.match(r"^\| \d+ \|", ln)]
    assert [(r[1], r[2]) for r in rows] == [(c.step, c.what) for c in CASES], \
        "docs/BAD_INPUTS.md is out of date: python -m tests.test_bad_input_catalogue docs/BAD_INPUTS.md"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.step}: {c.what}" for c in CASES])
def test_bad_input(case, workspace, no_model_load, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the CLI's handler follows the current sys.stderr
    for k in DIST_ENV:  # pretrain.py --deepspeed sets these for itself; they must not leak into later tests
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    case.argv(workspace)  # make the case's bad file first: the snapshot below must cover it
    before = snapshot(workspace["root"])
    code, err, errors = run_case(case, workspace)
    assert code == 2, err[-2000:]
    assert len(errors) == 1, err[-2000:]
    assert "Traceback" not in err
    assert re.search(case.expect, errors[0]), errors[0]
    other = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("error:") and not LOG_LINE.match(ln)]
    assert not other, other  # nothing else but log lines
    assert snapshot(workspace["root"]) == before


def markdown(root: Path) -> str:
    w = make_workspace(root)
    rows = ["# Bad-input catalogue", "",
            "Every row is a case of `tests/test_bad_input_catalogue.py`, run in CI. Each case exits with status 2, "
            "prints exactly one `error:` line (below, as printed; `<work>` is the test's work folder), no traceback, "
            "creates or changes no file, and fails before any model is loaded. Regenerate this file with "
            "`.venv/bin/python -m tests.test_bad_input_catalogue docs/BAD_INPUTS.md`.", "",
            "| # | step | bad input | exit | message |", "|---|---|---|---|---|"]
    for i, case in enumerate(CASES, 1):
        code, _, errors = run_case(case, w)
        msg = errors[0] if errors else "(no error line)"
        msg = msg.replace(str(root), "<work>").replace("|", "\\|")
        rows.append(f"| {i} | {case.step} | {case.what} | {code} | `{msg}` |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import tempfile

    from detox_pa.io import atomic_write_text

    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.test_bad_input_catalogue docs/BAD_INPUTS.md")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as d:
        atomic_write_text(sys.argv[1], markdown(Path(d)))
