"""generate.py end to end on tiny models: format, seeding, resume, refusal, sharding, bad input."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detox_pa import generation
import tiny
from detox_pa.cli import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    prompts = [" ".join(s.split()[:k]) for k, s in zip([2, 5, 3, 7, 4, 6, 3], tiny.corpus(7, seed=9))]
    return tiny.make_generation_assets(tmp_path_factory.mktemp("gen"), prompts)


def stderr_lines(capsys):
    """stderr without the log lines (HH:MM:SS LEVEL name: ...): what a user sees as the error."""
    err = capsys.readouterr().err.strip().splitlines()
    return [e for e in err if not re.match(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ", e)]


def argv(d, out, *extra, alphas=("0", "0.5")):
    return ["--method", "fusion", "--teacher_model", str(d / "teacher"), "--target_model", str(d / "target"), "--matrix_A", str(d / "A.pt"),
            "--data_path", str(d / "p.jsonl"), "--output_path", str(out), "--max_new_tokens", "5", "--batch_size", "3",
            "--alphas", *alphas, *extra]


def gen(d, out, *extra, alphas=("0", "0.5")):
    return run(generation.run, generation.parse_args, argv(d, out, *extra, alphas=alphas))


def test_output_is_the_papers_nested_format_and_deterministic(assets, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert gen(assets, a, "--do_sample", "--num_samples", "2") == 0
    assert gen(assets, b, "--do_sample", "--num_samples", "2") == 0
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    assert [blk["alpha"] for blk in data] == [0.0, 0.5]
    pairs = data[1]["prompt-response pairs"]
    assert len(pairs) == 7 * 2
    assert all(isinstance(p["prompt"], str) and isinstance(p["response"], str) for p in pairs)
    # the paper's convention in 'response' (stripped), the exact text in 'continuation'
    assert all(p["response"] == p["continuation"].strip() for p in pairs)
    assert any(p["continuation"] != p["response"] for blk in data for p in blk["prompt-response pairs"])
    assert [(p["prompt_index"], p["sample"]) for p in pairs] == [(i, s) for i in range(7) for s in range(2)]
    assert data[0]["prompt-response pairs"] != data[1]["prompt-response pairs"]  # fusion changed the text
    assert not list(tmp_path.glob("*.journal*"))  # journal removed after success
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["dims"] == {"teacher": 24, "target": 32} and meta["arguments"]["num_samples"] == 2


def test_each_alpha_is_seeded_on_its_own(assets, tmp_path):
    both, alone = tmp_path / "both.json", tmp_path / "alone.json"
    assert gen(assets, both, "--do_sample", alphas=("0", "0.3")) == 0
    assert gen(assets, alone, "--do_sample", alphas=("0.3",)) == 0
    assert json.loads(both.read_text())[1] == json.loads(alone.read_text())[0]


def test_resume_after_interruption_equals_uninterrupted(assets, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref.json", tmp_path / "out.json"
    assert gen(assets, ref, "--do_sample") == 0
    from detox_pa import generation as G

    real_append, calls = G.Journal.append, []

    def flaky(self, records):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_append(self, records)

    monkeypatch.setattr(G.Journal, "append", flaky)
    assert gen(assets, out, "--do_sample") == 130
    assert not out.exists()
    journal = tmp_path / "out.json.journal.jsonl"
    # header + 3 finished batches: batch 0 at both alphas, then batch 1 at alpha 0 (3 records each; the sweep runs
    # batch by batch, every alpha in turn, so that a batch's prompt is computed once)
    assert len(journal.read_text().splitlines()) == 1 + 3 + 3 + 3
    monkeypatch.setattr(G.Journal, "append", real_append)
    assert gen(assets, out, "--do_sample") == 0
    assert out.read_bytes() == ref.read_bytes()


def test_resume_with_different_arguments_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "o.json"
    (tmp_path / "o.json.journal.jsonl").write_text(json.dumps({"journal": 1, "fingerprint": {"seed": 1}}) + "\n")
    assert gen(assets, out) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "different arguments" in err[0] and "--overwrite" in err[0]


def test_existing_output_is_not_overwritten_silently(assets, tmp_path, capsys):
    out = tmp_path / "o.json"
    out.write_text("keep me")
    assert gen(assets, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert gen(assets, out, "--overwrite") == 0
    assert json.loads(out.read_text())[0]["alpha"] == 0.0


@pytest.mark.slow  # test_resume_after_interruption_equals_uninterrupted checks the same promise in-process
@pytest.mark.parametrize("decoding", [("--do_sample",), ()], ids=["sampled", "greedy, prefix sharing"])
def test_sigkill_mid_run_then_rerun_loses_nothing(assets, tmp_path, decoding):
    ref, out = tmp_path / "ref.json", tmp_path / "out.json"
    assert gen(assets, ref, *decoding) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "generate.py"), *argv(assets, out, *decoding)]
    journal = tmp_path / "out.json.journal.jsonl"
    for _ in range(5):  # the tiny run can finish between the journal check and the kill: then try again
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 4:  # header + at least one batch
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not out.exists():
            break  # killed mid-run: no output, a journal to resume from
        # it finished first: the output is whole (written to a temp file and renamed), never a partial one
        assert out.read_bytes() == ref.read_bytes()
        out.unlink()
        journal.unlink(missing_ok=True)
    else:
        pytest.skip("the run finished before the kill five times: the resume path was not exercised")
    assert journal.exists() and not out.exists()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert out.read_bytes() == ref.read_bytes()
    records = [r for blk in json.loads(out.read_text()) for r in blk["prompt-response pairs"]]
    assert len(records) == 2 * 7


@pytest.mark.parametrize("decoding", [("--do_sample",), pytest.param((), marks=pytest.mark.slow)],
                         ids=["sampled", "greedy, prefix sharing"])  # the ranks' logic is the same for both
def test_torchrun_two_gloo_ranks_give_the_single_process_output(assets, tmp_path, decoding):
    ref, out = tmp_path / "ref.json", tmp_path / "sharded.json"
    assert gen(assets, ref, *decoding) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(REPO / "generate.py"), *argv(assets, out, *decoding)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text()) == json.loads(ref.read_text())


def test_draft_gate_keeps_the_clean_drafts_and_revises_the_flagged(assets, tmp_path, monkeypatch):
    """--draft_gate: at alpha 0.5, a record whose draft (alpha 0's text) scores below the cut is the draft, byte for
    byte (text, ids, NLL); the others are the method's own, as in the ungated run; the meta file counts them."""
    from detox_pa import scorers

    plain, gated = tmp_path / "plain.json", tmp_path / "gated.json"
    assert gen(assets, plain, "--do_sample", "--num_samples", "2") == 0
    drafts = [p["response"] for p in json.loads(plain.read_text())[0]["prompt-response pairs"]]
    flagged = set(drafts[::3])  # a stub labeller: these drafts score 0.9, the others 0.0

    class Stub:
        def score(self, texts):
            return [0.9 if t in flagged else 0.0 for t in texts]

    monkeypatch.setattr(scorers, "get_scorer", lambda name, **kw: Stub())
    assert gen(assets, gated, "--do_sample", "--num_samples", "2", "--draft_gate", "0.5") == 0
    p0, p1 = (blk["prompt-response pairs"] for blk in json.loads(plain.read_text()))
    g0, g1 = (blk["prompt-response pairs"] for blk in json.loads(gated.read_text()))
    assert g0 == p0  # alpha 0 is the target alone either way
    kept = 0
    for d, m, g in zip(p0, p1, g1):
        want = m if d["response"] in flagged else d
        assert g["draft_kept"] is (d["response"] not in flagged)
        kept += g["draft_kept"]
        assert {k: g[k] for k in want if k not in ("seed",)} == {k: want[k] for k in want if k not in ("seed",)}
    assert 0 < kept < len(g1) and any(d["response"] != m["response"] for d, m in zip(p0, p1))
    meta = json.loads((tmp_path / "gated.meta.json").read_text())["draft_gate"]
    assert meta["kept_per_alpha"] == {"0.5": kept} and meta["cut"] == 0.5 and meta["drafts"] == len(p0)


@pytest.mark.parametrize("extra, alphas, message", [
    (("--draft_gate", "0"), ("0", "0.5"), "--draft_gate must be a profanity-check score in (0, 1]"),
    (("--draft_gate", "1.5"), ("0", "0.5"), "--draft_gate must be a profanity-check score in (0, 1]"),
    (("--draft_gate", "0.1"), ("0.5",), "--alphas must include 0"),
])
def test_draft_gate_bad_input_is_one_line_before_anything_is_written(assets, tmp_path, capsys, extra, alphas, message):
    out = tmp_path / "g.json"
    assert gen(assets, out, *extra, alphas=alphas) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.iterdir())


def test_skip_prompts_decodes_the_rest_exactly_as_the_full_run_does(assets, tmp_path, capsys):
    """--skip_prompts N then --max_prompts M: prompts N..N+M-1, each continuation the one the full run gives it
    (greedy, so batching cannot change a row), and a skip that leaves nothing is a one-line error."""
    full, tail = tmp_path / "full.json", tmp_path / "tail.json"
    assert gen(assets, full, alphas=("0.5",)) == 0
    assert gen(assets, tail, "--skip_prompts", "4", "--max_prompts", "2", alphas=("0.5",)) == 0
    whole = json.loads(full.read_text())[0]["prompt-response pairs"]
    part = json.loads(tail.read_text())[0]["prompt-response pairs"]
    assert [p["prompt"] for p in part] == [p["prompt"] for p in whole[4:6]]
    assert [p["continuation"] for p in part] == [p["continuation"] for p in whole[4:6]]
    capsys.readouterr()
    assert gen(assets, tmp_path / "none.json", "--skip_prompts", "7", alphas=("0.5",)) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "--skip_prompts 7" in err[0] and "hold only 7" in err[0]
    assert not (tmp_path / "none.json").exists()


def test_teacher_dtype_loads_the_teacher_in_it_and_is_part_of_the_fingerprint(assets, tmp_path, capsys, monkeypatch):
    """--teacher_dtype bfloat16: the teacher is loaded in bfloat16 (the target stays float32) and the run decodes;
    the journal's fingerprint names it (and only then: earlier journals still resume), so a float32 run does not
    resume a bfloat16 one; an unknown dtype is a one-line error before anything is written."""
    from detox_pa import methods

    seen = []
    real = methods._load_teacher

    def spy(path, device, dtype, teacher_dtype="auto"):
        m, t = real(path, device, dtype, teacher_dtype)
        seen.append((next(m.parameters()).dtype, dtype))
        return m, t

    monkeypatch.setattr(methods, "_load_teacher", spy)
    out = tmp_path / "o.json"
    assert gen(assets, out, "--teacher_dtype", "bfloat16") == 0
    assert seen == [(torch.bfloat16, torch.float32)]
    rows = json.loads(out.read_text())
    assert [r["alpha"] for r in rows] == [0.0, 0.5] and all(p["continuation"] for p in rows[1]["prompt-response pairs"])
    assert json.loads(out.with_suffix(".meta.json").read_text())["arguments"]["teacher_dtype"] == "bfloat16"
    # the fingerprint a journal is checked against: it names bfloat16, and an auto run's (every earlier journal's)
    # has no such key, so a float32 run refuses a bfloat16 run's journal instead of mixing the two
    from detox_pa.methods import get_method

    def fingerprint(*extra):
        args = generation.parse_args(argv(assets, tmp_path / "f.json", *extra))
        return generation.run_fingerprint(args, str(assets / "target"), ["p"], get_method(args.method)(args), {})

    f16, auto = fingerprint("--teacher_dtype", "bfloat16"), fingerprint()
    assert f16["teacher_dtype"] == "bfloat16" and "teacher_dtype" not in auto
    assert {k: v for k, v in f16.items() if k != "teacher_dtype"} == auto
    capsys.readouterr()
    seen.clear()
    assert gen(assets, tmp_path / "bad.json", "--teacher_dtype", "float8") == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "--teacher_dtype 'float8' is not known" in err[0] and seen == []
    assert not (tmp_path / "bad.json").exists()
