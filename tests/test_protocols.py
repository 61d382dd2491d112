"""PROTOCOL=paper|dexperts: each preset's effective arguments (the launchers' and generate.py's values agree), explicit
variables win and are logged, an unknown protocol is one line and exit 2, and the protocol reaches the generations'
meta file and the report header."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import tiny
from detox_pa import generation
from detox_pa.cli import run
from detox_pa.errors import InputError
from detox_pa.generation import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
PRESET_VARS = ("PROTOCOL", "MAX_NEW_TOKENS", "NUM_SAMPLES", "DO_SAMPLE", "TOP_P", "OUTPUT_PATH", "DATA_PATH",
               "TEACHER_MODEL", "MATRIX_A", "DEVICE", "RECIPE", "METHOD", "ALPHAS", "MAX_PROMPTS", "NPROC", "SMOKE",
               "PPL_CAP", "OUT_DIR", "INPUT_JSON")


def stub_python(tmp_path):
    """A PYTHON that prints its command line (the effective arguments) and runs nothing."""
    return tiny.stub_python(tmp_path)


def launch(tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in PRESET_VARS}
    env.update(PYTHON=str(stub_python(tmp_path)), OUT_DIR=str(tmp_path / "out"), HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run(["bash", str(REPO / "run_generation.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)


def flags_of(args_line: str) -> dict:
    """``--name value`` pairs of a generate.py command line (a flag with no value is True)."""
    toks = args_line.split()
    out, i = {}, 0
    while i < len(toks):
        if toks[i].startswith("--"):
            if i + 1 < len(toks) and not toks[i + 1].startswith("--"):
                out[toks[i][2:]] = toks[i + 1]
                i += 2
                continue
            out[toks[i][2:]] = True
        i += 1
    return out


def effective(flags: dict) -> dict:
    return {"max_new_tokens": int(flags["max_new_tokens"]), "num_samples": int(flags["num_samples"]),
            "do_sample": flags.get("do_sample") is True, "top_p": float(flags["top_p"])}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_each_presets_effective_arguments_are_generate_pys(protocol, tmp_path):
    """The launcher's values (scripts/protocols.sh) are the ones generate.py records as the protocol's."""
    r = launch(tmp_path, PROTOCOL=protocol)
    assert r.returncode == 0, r.stderr
    flags = flags_of(r.stdout.strip().splitlines()[-1])
    assert flags["protocol"] == protocol
    eff = effective(flags)
    assert {k: eff[k] for k in PROTOCOLS[protocol]["settings"]} == PROTOCOLS[protocol]["settings"]
    # and generate.py parses exactly these into arguments that do not depart from the protocol
    args = generation.parse_args(["--protocol", protocol, "--max_new_tokens", flags["max_new_tokens"],
                                  "--num_samples", flags["num_samples"], "--top_p", flags["top_p"],
                                  *(["--do_sample"] if eff["do_sample"] else [])])
    assert generation.protocol_record(args)["departures"] == {}


def test_the_presets_are_the_literatures():
    assert PROTOCOLS["paper"]["settings"] == {"max_new_tokens": 10, "num_samples": 1, "do_sample": False}
    assert PROTOCOLS["dexperts"]["settings"] == {"max_new_tokens": 20, "num_samples": 25, "do_sample": True,
                                                 "top_p": 0.9}


def test_the_default_protocol_is_the_papers(tmp_path):
    r = launch(tmp_path)
    flags = flags_of(r.stdout.strip().splitlines()[-1])
    assert flags["protocol"] == "paper" and effective(flags)["max_new_tokens"] == 10 and "do_sample" not in flags


def test_an_explicit_variable_wins_over_the_preset(tmp_path):
    r = launch(tmp_path, PROTOCOL="dexperts", MAX_NEW_TOKENS="10", TOP_P="0.95")
    assert r.returncode == 0, r.stderr
    eff = effective(flags_of(r.stdout.strip().splitlines()[-1]))
    assert eff == {"max_new_tokens": 10, "num_samples": 25, "do_sample": True, "top_p": 0.95}
    args = generation.parse_args(["--protocol", "dexperts", "--max_new_tokens", "10", "--num_samples", "25",
                                  "--do_sample", "--top_p", "0.95"])
    assert generation.protocol_record(args)["departures"] == {"max_new_tokens": {"protocol": 20, "used": 10},
                                                               "top_p": {"protocol": 0.9, "used": 0.95}}


@pytest.mark.parametrize("script", ["run_generation.sh", "run_all.sh"])
def test_an_unknown_protocol_is_one_line_and_exit_2(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in PRESET_VARS}
    env.update(PYTHON=str(stub_python(tmp_path)), OUT_DIR=str(tmp_path / "out"), PROTOCOL="helm")
    r = subprocess.run(["bash", str(REPO / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {script}: PROTOCOL must be paper (greedy, 10 new tokens, mean toxicity) or dexperts (25 samples per "
        "prompt, top-p 0.9, 20 new tokens, EMT and toxicity probability), got 'helm'"]
    assert "ARGS" not in r.stdout and not (tmp_path / "out").exists()  # before any set-up or model
    with pytest.raises(InputError, match="--protocol must be one of paper, dexperts, got 'helm'"):
        generation.parse_args(["--protocol", "helm"])


def test_run_all_generates_each_protocol_into_its_own_files(tmp_path):
    """PROTOCOL=dexperts in run_all.sh: the same teachers and A, generations (and so their scores and report)
    under OUT_DIR/dexperts, with the preset's arguments; the report gets the alpha rule's PPL cap."""
    stub = tiny.stub_python(tmp_path, pipeline=True)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in PRESET_VARS}
    env.update(PYTHON=str(stub), OUT_DIR=str(out), NUM_GPUS="0", NPROC="1", PROTOCOL="dexperts", PPL_CAP="1.5",
               HF_HUB_OFFLINE="1")
    r = subprocess.run(["bash", str(REPO / "run_all.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    calls = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS ")]
    gens = out / "dexperts" / "generations.json"
    gen = flags_of(next(c for c in calls if "generate.py" in c))
    assert gen["output_path"] == str(gens) and gen["protocol"] == "dexperts"
    assert effective(gen) == {"max_new_tokens": 20, "num_samples": 25, "do_sample": True, "top_p": 0.9}
    assert flags_of(next(c for c in calls if "eval_toxicity.py" in c))["input_json"] == str(gens)
    assert flags_of(next(c for c in calls if "eval_ppl.py" in c))["input_json"] == str(gens)
    rep = next(c for c in calls if "report.py" in c)
    assert f"report.py {gens} --ppl_cap 1.5" in rep
    assert "PROTOCOL=dexperts" in r.stdout and f"-> {gens}" in r.stdout


# ------------------------------------------------------------------ generate.py records and logs it (tiny models)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny.make_generation_assets(tmp_path_factory.mktemp("proto"), tiny.corpus(3, seed=9))


def test_generation_records_the_protocol_and_logs_a_departure(assets, tmp_path, capsys):
    out = tmp_path / "g.json"
    argv = ["--teacher_model", str(assets / "teacher"), "--target_model", str(assets / "target"),
            "--matrix_A", str(assets / "A.pt"), "--data_path", str(assets / "p.jsonl"), "--output_path", str(out),
            "--method", "fusion", "--alphas", "0", "0.5", "--protocol", "dexperts", "--do_sample", "--num_samples", "25",
            "--max_new_tokens", "3", "--batch_size", "25"]
    assert run(generation.run, generation.parse_args, argv) == 0
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if "protocol dexperts" in ln]
    assert len(warn) == 1 and "WARNING" in warn[0] and "max_new_tokens 3 (the protocol's: 20)" in warn[0], err
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["protocol"] == {"name": "dexperts", "settings": PROTOCOLS["dexperts"]["settings"],
                                "metrics": PROTOCOLS["dexperts"]["metrics"],
                                "departures": {"max_new_tokens": {"protocol": 20, "used": 3}}}
    assert len(json.loads(out.read_text())[0]["prompt-response pairs"]) == 3 * 25

    # the report header names it, with the departure
    from detox_pa.report import build_report

    (tmp_path / "g_ppl.json").write_text(json.dumps([{"alpha": a, "PPL": 5.0, "ppl_token_weighted": 5.0}
                                                     for a in (0.0, 0.5)]))
    line = next(ln for ln in build_report(out).splitlines() if ln.startswith("- protocol:"))
    assert line == ('- protocol: dexperts (max_new_tokens 20, num_samples 25, do_sample true, top_p 0.9; read expected '
                    'maximum toxicity (EMT) and toxicity probability); **departs from it**: max_new_tokens 3 (the '
                    "protocol's: 20)")


def test_a_report_without_a_recorded_protocol_says_so(tmp_path):
    from detox_pa.report import build_report

    gen = tmp_path / "g.json"
    gen.write_text(json.dumps([{"alpha": 0.0, "prompt-response pairs": [{"prompt": "p", "response": "r"}]}]))
    (tmp_path / "g_ppl.json").write_text(json.dumps([{"alpha": 0.0, "PPL": 5.0, "ppl_token_weighted": 5.0}]))
    (tmp_path / "g.meta.json").write_text(json.dumps({"method": "diff"}))  # an older sidecar
    assert "- protocol: not recorded (no protocol in the generation sidecar)" in build_report(gen).splitlines()
