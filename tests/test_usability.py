"""What a researcher reads on screen (issue 25, item 5): the scripts' --help, the toxicity step's summary
line, rescoring with fewer scorers, and the README's comparison example."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from detox_pa import scorers as S
from detox_pa import toxicity as ET
from detox_pa.cli import run

REPO = Path(__file__).resolve().parents[1]


class Fake(S.Scorer):
    """Deterministic: score = share of 'x' characters, per scorer a different factor."""

    toxicity_label = "toxicity"

    def __init__(self, name):
        self.name, self.version = name, f"fake {name}"
        self.factor = {"bilstm": 1.0, "profanity-check": 0.5}.get(name, 0.25)

    def score_all(self, texts, batch_size=None):
        t = np.array([min(1.0, self.factor * s.count("x") / max(len(s), 1)) for s in texts])
        return {"toxicity": t, "other": 1 - t}


def _gens(path, alphas=(0.0, 0.5)):
    path.write_text(json.dumps([{"alpha": a, "prompt-response pairs": [
        {"prompt": "p one", "response": "xx a", "prompt_index": 0, "sample": 0},
        {"prompt": "p two", "response": "b x", "prompt_index": 1, "sample": 0}]} for a in alphas]))
    return path


def test_toxicity_screen_summary_counts_distinct_prompts_not_prompts_times_alphas(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: Fake(name))
    inp = _gens(tmp_path / "g.json")
    assert run(ET.run, ET.parse_args, ["--input_json", str(inp), "--scorer", "bilstm"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(nested: 4 texts, 2 prompts;" in first, first


def test_rescoring_with_one_scorer_keeps_the_other_scorers_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: Fake(name))
    inp = _gens(tmp_path / "g.json")
    assert run(ET.run, ET.parse_args, ["--input_json", str(inp), "--scorer", "bilstm,profanity-check"]) == 0
    before = json.loads((tmp_path / "g_toxicity.json").read_text())
    capsys.readouterr()
    assert run(ET.run, ET.parse_args, ["--input_json", str(inp), "--scorer", "bilstm"]) == 0
    out = capsys.readouterr().out
    after = json.loads((tmp_path / "g_toxicity.json").read_text())
    for b, a in zip(before, after):
        assert a["toxicity_score_profanity-check"] == b["toxicity_score_profanity-check"]
        assert a["by_scorer"]["profanity-check"] == b["by_scorer"]["profanity-check"]
        assert a["scorer"] == "bilstm"
    recs = [json.loads(ln) for ln in (tmp_path / "g_toxicity_records.jsonl").read_text().splitlines()]
    assert all(set(r["scores"]) == {"bilstm", "profanity-check"} for r in recs)
    assert "kept from the earlier run on this input: profanity-check" in out
    # the input changed: the old column cannot be kept, and the run says it dropped it
    _gens(inp, alphas=(0.0, 0.7))
    assert run(ET.run, ET.parse_args, ["--input_json", str(inp), "--scorer", "bilstm"]) == 0
    out = capsys.readouterr().out
    assert "dropped: profanity-check (the input changed since they scored it)" in out
    assert "toxicity_score_profanity-check" not in json.loads((tmp_path / "g_toxicity.json").read_text())[0]
    meta = json.loads((tmp_path / "g_toxicity.meta.json").read_text())
    assert list(meta["dropped_from_earlier_run"]) == ["profanity-check"]


def _help(script, flag="--help"):
    """What ``python <script> --help`` prints, in-process (each script's own parse_args)."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location(script[:-3], REPO / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        mod.parse_args([flag])
    assert e.value.code in (0, None)
    return out.getvalue()


def test_align_help_gives_each_boolean_flag_and_its_negation_their_own_help():
    def help_of(lines, flag):
        i = next(k for k, ln in enumerate(lines) if ln.strip().startswith(flag))
        j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("  -"))
        return " ".join(" ".join(lines[i:j]).split()[1:])

    lines = _help("align.py").splitlines()
    on, off = help_of(lines, "--progress "), help_of(lines, "--no_progress,")
    assert "Show tqdm progress bars" in on and "Show tqdm progress bars" not in off
    assert "--progress off" in off and "default: False" not in off, off


def test_generate_help_says_what_alpha_range_each_method_accepts():
    from detox_pa.methods import REGISTRY

    flat = " ".join(_help("generate.py").split())
    m = re.search(r"--alphas ALPHAS \[ALPHAS \.\.\.\] (.*?) \(default", flat)
    assert m, flat[:2000]
    text = m.group(1)
    assert "each in [0, 1]" not in text.split("fusion")[0]  # no blanket [0, 1] rule
    for name, cls in REGISTRY.items():
        assert name in text
    assert "fusion: [0, 1]" in text and "diff: any alpha >= 0" in text, text


def test_pretrain_help_shows_the_projects_arguments_first_and_points_to_the_trainers():
    out = _help("pretrain.py")
    lines = out.splitlines()
    assert len(lines) < 150, len(lines)
    own = [lines.index(next(ln for ln in lines if ln.strip().startswith(f"--{a}"))) for a in
           ("model_name_or_path", "num_teacher_layers", "training_data_path", "freeze_embeddings")]
    trainer = lines.index(next(ln for ln in lines if ln.strip().startswith("--learning_rate")))
    assert max(own) < trainer
    assert "--help_all" in out and "TrainingArguments" in out
    assert not any(ln.strip().startswith("--fsdp") for ln in lines)  # the Trainer's long tail is behind --help_all
    assert any(ln.strip().startswith("--fsdp") for ln in _help("pretrain.py", "--help_all").splitlines())


def test_readme_comparison_example_says_which_command_writes_each_file():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("**Compare runs.**"):]
    block = block[:block.index("![an example comparison]")]
    assert "outputs/paper/generations.json" in block and "RECIPE=paper ./run_all.sh" in block
