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

import generate
import tiny
from detox_pa.cli import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    tiny.make_model_folder(d, "target", "gemma3", "sp", seed=1)
    tiny.make_model_folder(d, "teacher", "llama", "bl", seed=2, hidden=24, layers=2)
    torch.save({"mapping": torch.randn(24, 32, generator=torch.Generator().manual_seed(0)) * 0.3}, d / "A.pt")
    prompts = [" ".join(s.split()[:k]) for k, s in zip([2, 5, 3, 7, 4, 6, 3], tiny.corpus(7, seed=9))]
    (d / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return d


def stderr_lines(capsys):
    """stderr without the log lines (HH:MM:SS LEVEL name: ...): what a user sees as the error."""
    err = capsys.readouterr().err.strip().splitlines()
    return [e for e in err if not re.match(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ", e)]


def argv(d, out, *extra, alphas=("0", "0.5")):
    return ["--teacher_model", str(d / "teacher"), "--target_model", str(d / "target"), "--matrix_A", str(d / "A.pt"),
            "--data_path", str(d / "p.jsonl"), "--output_path", str(out), "--max_new_tokens", "5", "--batch_size", "3",
            "--alphas", *alphas, *extra]


def gen(d, out, *extra, alphas=("0", "0.5")):
    return run(generate.main, generate.parse_args, argv(d, out, *extra, alphas=alphas))


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
    assert len(journal.read_text().splitlines()) == 1 + 3 + 3 + 1  # header + 3 finished batches (3, 3, 1 records)
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


def test_sigkill_mid_run_then_rerun_loses_nothing(assets, tmp_path):
    ref, out = tmp_path / "ref.json", tmp_path / "out.json"
    assert gen(assets, ref, "--do_sample") == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "generate.py"), *argv(assets, out, "--do_sample")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "out.json.journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:  # header + at least one batch
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        assert not out.exists()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert out.read_bytes() == ref.read_bytes()
    records = [r for blk in json.loads(out.read_text()) for r in blk["prompt-response pairs"]]
    assert len(records) == 2 * 7


def test_torchrun_two_gloo_ranks_give_the_single_process_output(assets, tmp_path):
    ref, out = tmp_path / "ref.json", tmp_path / "sharded.json"
    assert gen(assets, ref, "--do_sample") == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(REPO / "generate.py"), *argv(assets, out, "--do_sample")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text()) == json.loads(ref.read_text())


@pytest.mark.parametrize("case,extra,expect", [
    ("alpha below 0", ["--alphas", "-0.1"], "outside [0, 1]"),
    ("alpha above 1", ["--alphas", "1.5"], "outside [0, 1]"),
    ("zero new tokens", ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    ("missing device", ["--device", "cuda:3"], "cuda:3"),
    ("bad device", ["--device", "tpu9"], "tpu9"),
])
def test_bad_arguments_give_one_line(assets, tmp_path, capsys, case, extra, expect):
    out = tmp_path / "o.json"
    assert run(generate.main, generate.parse_args, argv(assets, out) + extra) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case,make,expect", [
    ("empty prompt file", lambda t, d: ("--data_path", _write(t, "e.jsonl", b"")), "is empty"),
    ("not JSON", lambda t, d: ("--data_path", _write(t, "b.jsonl", b'{"prompt": "a"}\n{"prompt": "b\n')), "b.jsonl:2: not valid JSON"),
    ("missing prompt", lambda t, d: ("--data_path", _write(t, "m.jsonl", b'{"text": "a"}\n')), "m.jsonl:1: missing field 'prompt'"),
    ("wrong JSON type", lambda t, d: ("--data_path", _write(t, "w.jsonl", b'["a"]\n')), "expected a JSON object"),
    ("non-UTF-8", lambda t, d: ("--data_path", _write(t, "u.jsonl", b'{"prompt": "\xff\xfe"}\n')), "not valid UTF-8"),
    ("matrix shape", lambda t, d: ("--matrix_A", _save(t, torch.zeros(32, 24))), "(32, 24)"),
    ("matrix NaN", lambda t, d: ("--matrix_A", _save(t, torch.full((24, 32), float("nan")))), "NaN or inf"),
    ("matrix missing", lambda t, d: ("--matrix_A", t / "nope.pt"), "does not exist"),
    ("teacher folder missing", lambda t, d: ("--teacher_model", t / "no_such_model"), "does not exist"),
    ("no tokenizer", lambda t, d: ("--teacher_model", _no_tok(t, d)), "has no tokenizer"),
    ("output folder missing", lambda t, d: ("--output_path", t / "missing" / "o.json"), "does not exist"),
])
def test_bad_inputs_give_one_line_before_models_load(assets, tmp_path, capsys, monkeypatch, case, make, expect):
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    flag, value = make(tmp_path, assets)
    args = argv(assets, tmp_path / "o.json")
    args[args.index(flag) + 1] = str(value)
    before = sorted(os.listdir(tmp_path))
    assert run(generate.main, generate.parse_args, args) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert "Traceback" not in err[0]
    assert sorted(os.listdir(tmp_path)) == before


def _save(tmp_path, A):
    p = tmp_path / "bad_A.pt"
    torch.save({"mapping": A}, p)
    return p


def _no_tok(tmp_path, d):
    import shutil

    dst = tmp_path / "teacher_no_tok"
    shutil.copytree(d / "teacher", dst)
    for f in dst.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json", "merges.txt"):
            f.unlink()
    return dst
