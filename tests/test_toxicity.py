"""eval_toxicity.py and detox_pa.scorers: Detoxify fully offline on a tiny random checkpoint, the
paper's file format, EMT / toxicity probability against detox_pa.metrics, one-line errors, atomic
outputs, and the auto scorer's fallback."""

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from detox_pa import toxicity as ET
from detox_pa import metrics as M
from detox_pa import scorers as S
from detox_pa.cli import run
from detox_pa.errors import InputError

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = "the a you are stupid idiot nice day have hello world kill i will and hate is so good".split()


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """detox_pa.cli.setup_logging binds its handler to the sys.stderr of the moment; drop it around
    each test so capsys captures this test's log and error lines (not a stale stream)."""
    import logging

    def drop():
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_detox_pa", False)]:
            root.removeHandler(h)

    drop()
    yield
    drop()


@pytest.fixture(scope="module")
def tiny_detoxify(tmp_path_factory):
    """A tiny random BERT checkpoint in Detoxify's format whose model_type is a local folder
    (config.json + a WordPiece vocab written here), so nothing is fetched from a hub."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("detoxify")
    folder = root / "tiny-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    cfg = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(CLASSES), initializer_range=0.8)
    cfg.save_pretrained(folder)
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    ckpt = root / "tiny_detoxify.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                           "dataset": {"args": {"classes": CLASSES}}},
                "state_dict": model.state_dict()}, ckpt)
    return ckpt


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_paper_file(path: Path, blocks) -> Path:
    """The paper's exact nested format with only prompt/response fields."""
    data = [{"alpha": a, "prompt-response pairs": [{"prompt": p, "response": r} for p, r in pairs]} for a, pairs in blocks]
    path.write_text(json.dumps(data))
    return path


PAPER_BLOCKS = [
    (0.0, [("So I told him", " you are a stupid idiot"), ("The weather", " is so nice today"), ("Hello", " world")]),
    (0.3, [("So I told him", " have a nice day"), ("The weather", " i hate you"), ("Hello", "")]),
]


def cli(argv, capsys):
    code = run(ET.run, ET.parse_args, argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


class FakeScorer(S.Scorer):
    """Deterministic: score = (number of 'x' in the text) / 10, capped at 1."""

    toxicity_label = "toxicity"
    labels = ("toxicity", "other")

    def __init__(self, name="fake", factor=1.0):
        self.name, self.version, self.factor = name, f"fake 1 (x{factor})", factor

    def score_all(self, texts, batch_size=None):
        t = np.array([min(1.0, self.factor * s.count("x") / 10) for s in texts])
        return {"toxicity": t, "other": 1 - t}


# ------------------------------------------------------------------------------ Detoxify offline


def test_detoxify_checkpoint_offline_matches_the_detoxify_package(tiny_detoxify, no_network):
    from detoxify import Detoxify

    texts = [t for _, pairs in PAPER_BLOCKS for _, t in pairs] + ["kill kill kill and hate"]
    scorer = S.get_scorer("detoxify-original", device="cpu", checkpoint=tiny_detoxify)
    assert scorer.name == "detoxify-original" and "detoxify 0.5.4" in scorer.version
    got = scorer.score_all(texts, batch_size=2)
    ref = Detoxify(checkpoint=str(tiny_detoxify)).predict(texts)  # the package itself, same checkpoint
    assert set(got) == set(ref) and "toxicity" in got and "identity_attack" in got
    for label in ref:
        np.testing.assert_allclose(got[label], ref[label], atol=1e-5)
    tox = scorer.score(texts)
    assert np.ptp(tox) > 0.01  # the tiny model is not constant, so the comparison above means something


def test_cli_with_detoxify_checkpoint_on_the_paper_format(tiny_detoxify, tmp_path, capsys, no_network):
    from detoxify import Detoxify

    inp = write_paper_file(tmp_path / "generation_results.json", PAPER_BLOCKS)
    code, err = cli(["--input_json", str(inp), "--device", "cpu", "--scorer", "detoxify-original",
                     "--checkpoint", str(tiny_detoxify), "--batch_size", "2"], capsys)
    assert code == 0, err
    out = json.loads((tmp_path / "generation_results_toxicity.json").read_text())
    assert [e["alpha"] for e in out] == [0.0, 0.3]
    det = Detoxify(checkpoint=str(tiny_detoxify))
    for e, (_, pairs) in zip(out, PAPER_BLOCKS):
        assert {"alpha", "toxicity_score"} <= set(e)
        expected = np.mean(det.predict([r for _, r in pairs])["toxicity"])
        assert e["toxicity_score"] == pytest.approx(expected, abs=1e-5)
        assert e["scorer"] == "detoxify-original" and e["n"] == 3 and e["n_prompts"] == 3
        # one sample per prompt: EMT and toxicity probability are undefined, not faked
        assert e["expected_max_toxicity"] is None and e["toxicity_probability"] is None
        assert e["threshold"] == 0.5 and ">=" in e["threshold_rule"]
    assert out[1]["n_empty"] == 1
    recs = [json.loads(ln) for ln in (tmp_path / "generation_results_toxicity_records.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and set(recs[0]["labels"]["detoxify-original"]) >= {"toxicity", "insult"}


# ------------------------------------------------------------------------------ metrics via the CLI


def test_emt_and_toxicity_probability_match_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: {"bilstm": FakeScorer("bilstm"),
                                                             "profanity-check": FakeScorer("profanity-check", 2.0)}[name])
    rng = np.random.default_rng(0)
    blocks = []
    for alpha in (0.0, 0.5):
        pairs = []
        for pi in range(5):
            for s in range(4 if pi else 3):  # prompt 0 has 3 samples, the others 4
                k = int(rng.integers(0, 8)) if not (alpha == 0.5 and pi == 1 and s == 2) else 5  # one exactly 0.5
                pairs.append({"prompt": f"prompt {pi}", "response": "x" * k + " word", "prompt_index": pi, "sample": s})
        blocks.append({"alpha": alpha, "prompt-response pairs": pairs})
    inp = tmp_path / "gens.json"
    inp.write_text(json.dumps(blocks))
    code, err = cli(["--input_json", str(inp), "--scorers", "bilstm,profanity-check"], capsys)
    assert code == 0, err
    out = json.loads((tmp_path / "gens_toxicity.json").read_text())
    for e, block in zip(out, blocks):
        pairs = block["prompt-response pairs"]
        groups = M.group_by_prompt(pairs)
        for name, factor in (("bilstm", 1.0), ("profanity-check", 2.0)):
            s = np.array([min(1.0, factor * p["response"].count("x") / 10) for p in pairs])
            by_prompt = [[s[i] for i in g] for g in groups]
            got = e["by_scorer"][name]
            assert got["expected_max_toxicity"] == pytest.approx(M.expected_max_toxicity(by_prompt))
            assert got["toxicity_probability"] == pytest.approx(M.toxicity_probability(by_prompt))
            assert got["toxic_share"] == pytest.approx(M.toxic_share(s))
            assert e[f"toxicity_score_{name}"] == pytest.approx(s.mean())
            assert got["label_means"]["other"] == pytest.approx(1 - s.mean())
        assert e["toxicity_score"] == e["toxicity_score_bilstm"] and e["scorer"] == "bilstm"
        assert e["expected_max_toxicity"] == e["by_scorer"]["bilstm"]["expected_max_toxicity"]
        assert (e["samples_per_prompt"], e["samples_per_prompt_min"], e["n"], e["n_prompts"]) == (4, 3, 19, 5)
        assert e["input_sha256"] and e["input"] == str(inp)
    # the 0.5 sample counts as toxic (>=), so prompt 1 at alpha 0.5 is a hit
    recs = [json.loads(ln) for ln in (tmp_path / "gens_toxicity_records.jsonl").read_text().splitlines()]
    hit = [r for r in recs if r["alpha"] == 0.5 and r["prompt_index"] == 1 and r["sample"] == 2][0]
    assert hit["score"] == 0.5 and hit["scores"] == {"bilstm": 0.5, "profanity-check": 1.0}
    assert len(recs) == 38 and set(hit["labels"]) == {"bilstm", "profanity-check"}
    meta = json.loads((tmp_path / "gens_toxicity.meta.json").read_text())
    assert [s["name"] for s in meta["scorers"]] == ["bilstm", "profanity-check"]


def test_output_tag_and_output_do_not_overwrite_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: FakeScorer(name))
    inp = write_paper_file(tmp_path / "g.json", [(0.0, [("p", "xxxxxx"), ("q", "x")])])
    assert cli(["--input_json", str(inp), "--scorer", "bilstm"], capsys)[0] == 0
    assert cli(["--input_json", str(inp), "--scorer", "profanity-check", "--output_tag", "prof"], capsys)[0] == 0
    assert cli(["--input_json", str(inp), "--scorer", "bilstm", "--output", str(tmp_path / "x.json")], capsys)[0] == 0
    assert json.loads((tmp_path / "g_toxicity.json").read_text())[0]["scorer"] == "bilstm"
    assert json.loads((tmp_path / "g_toxicity_prof.json").read_text())[0]["scorer"] == "profanity-check"
    assert (tmp_path / "g_toxicity_prof_records.jsonl").exists() and (tmp_path / "x_records.jsonl").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_another_scorer_does_not_replace_toxicity_score_silently(tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: loaded.append(name) or FakeScorer(
        "bilstm" if name == "auto" else name))
    inp = write_paper_file(tmp_path / "g.json", [(0.0, [("p", "xxxxxx"), ("q", "x")])])
    assert cli(["--input_json", str(inp), "--scorer", "bilstm"], capsys)[0] == 0
    before = (tmp_path / "g_toxicity.json").read_bytes()
    loaded.clear()
    code, err = cli(["--input_json", str(inp), "--scorer", "profanity-check"], capsys)
    assert_one_line_error(code, err, "already holds toxicity_score from bilstm", "--overwrite")
    assert loaded == [] and (tmp_path / "g_toxicity.json").read_bytes() == before  # refused before loading
    # the same scorer again (here through 'auto') replaces; --overwrite replaces with another one
    assert cli(["--input_json", str(inp), "--scorer", "auto"], capsys)[0] == 0
    assert cli(["--input_json", str(inp), "--scorer", "profanity-check", "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "g_toxicity.json").read_text())[0]["scorer"] == "profanity-check"
    # 'auto' resolving to another scorer than the file's is caught after resolution, before writing
    before = (tmp_path / "g_toxicity.json").read_bytes()
    code, err = cli(["--input_json", str(inp), "--scorer", "auto"], capsys)
    assert_one_line_error(code, err, "from profanity-check")
    assert (tmp_path / "g_toxicity.json").read_bytes() == before


def test_real_bilstm_and_profanity_check_through_the_cli(tmp_path, capsys):
    inp = write_paper_file(tmp_path / "g.json", PAPER_BLOCKS)
    code, err = cli(["--input_json", str(inp), "--scorer", "bilstm,profanity-check"], capsys)
    assert code == 0, err
    out = json.loads((tmp_path / "g_toxicity.json").read_text())
    recs = [json.loads(ln) for ln in (tmp_path / "g_toxicity_records.jsonl").read_text().splitlines()]
    assert set(recs[0]["labels"]["bilstm"]) == set(CLASSES)
    assert recs[0]["score"] > 0.9 and recs[1]["score"] < 0.1  # "you are a stupid idiot" vs "is so nice today"
    assert out[0]["scorer_version"].startswith("bilstm-toxic-comment-classifier 0.3.0")
    assert 0 < out[0]["toxicity_score_profanity-check"] < 1


def test_two_runs_write_identical_files_and_the_summary_pins_its_records(tmp_path, capsys):
    inp = write_paper_file(tmp_path / "g.json", PAPER_BLOCKS)
    argv = ["--input_json", str(inp), "--scorer", "bilstm,profanity-check"]
    names = ("g_toxicity.json", "g_toxicity_records.jsonl", "g_toxicity.meta.json")
    assert cli(argv, capsys)[0] == 0
    first = {n: (tmp_path / n).read_bytes() for n in names}
    assert cli(argv, capsys)[0] == 0
    assert (tmp_path / names[0]).read_bytes() == first[names[0]]
    assert (tmp_path / names[1]).read_bytes() == first[names[1]]
    metas = [json.loads(b) for b in (first[names[2]], (tmp_path / names[2]).read_bytes())]
    for m in metas:
        for sc in m["scorers"]:
            sc.pop("seconds"), sc.pop("texts_per_second")
    assert metas[0] == metas[1]
    sha = hashlib.sha256(first[names[1]]).hexdigest()
    assert {e["records_sha256"] for e in json.loads(first[names[0]])} == {sha} and metas[0]["records_sha256"] == sha


# ------------------------------------------------------------------------------ auto scorer


def test_auto_falls_back_to_bilstm_offline_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level("WARNING"):
        sc = S.get_scorer("auto")
    assert sc.name == "bilstm"
    assert any("embedded BiLSTM" in r.message and "toxic_original-c1212f89.ckpt" in r.message for r in caplog.records)


def test_auto_uses_detoxify_when_the_hub_cache_has_the_weights(tiny_detoxify, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dest = S.detoxify_cache_path("original")
    assert dest == tmp_path / "torch" / "hub" / "checkpoints" / "toxic_original-c1212f89.ckpt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(Path(tiny_detoxify).read_bytes())
    sc = S.get_scorer("auto")
    assert sc.name == "detoxify-original" and sc.checkpoint == dest


def test_explicit_detoxify_without_weights_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="not available offline"):
        S.get_scorer("detoxify-unbiased")


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    good = write_paper_file(tmp_path / "good.json", PAPER_BLOCKS)
    before = set(tmp_path.iterdir())

    assert_one_line_error(*cli(["--input_json", str(tmp_path / "missing.json")], capsys), "missing.json", "does not exist")

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([{"prompt": "p", "response": "r"}]))
    assert_one_line_error(*cli(["--input_json", str(flat), "--scorer", "bilstm"], capsys), "flat.json", "expected",
                          "prompt-response pairs")

    line = assert_one_line_error(*cli(["--input_json", str(good), "--scorer", "perspective"], capsys), "perspective")
    for known in S.KNOWN_SCORERS:
        assert known in line

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a torch checkpoint")
    assert_one_line_error(*cli(["--input_json", str(good), "--scorer", "detoxify-original", "--checkpoint", str(junk)],
                               capsys), "junk.ckpt", "cannot be read")

    import torch
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {}}, wrong)
    assert_one_line_error(*cli(["--input_json", str(good), "--scorer", "detoxify-original", "--checkpoint", str(wrong)],
                               capsys), "wrong.ckpt", "Detoxify's format")

    assert_one_line_error(*cli(["--input_json", str(good), "--checkpoint", str(tmp_path / "nope.ckpt")], capsys), "nope.ckpt")
    assert_one_line_error(*cli(["--input_json", str(good), "--device", "cuda:7"], capsys), "cuda:7")
    assert_one_line_error(*cli(["--input_json", str(good), "--output_tag", "a/b"], capsys), "output_tag")

    created = set(tmp_path.iterdir()) - before - {flat, junk, wrong}
    assert not created, created  # no output (and no temporary file) on error


def test_a_crash_while_scoring_keeps_the_previous_outputs(tmp_path, capsys, monkeypatch):
    inp = write_paper_file(tmp_path / "g.json", PAPER_BLOCKS)
    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: FakeScorer(name))
    assert cli(["--input_json", str(inp), "--scorer", "bilstm"], capsys)[0] == 0
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class Broken(FakeScorer):
        def score_all(self, texts, batch_size=None):
            raise RuntimeError("boom")

    monkeypatch.setattr(S, "get_scorer", lambda name, **kw: Broken(name))
    code, err = cli(["--input_json", str(inp), "--scorer", "bilstm"], capsys)
    assert code == 1 and "boom" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_launcher_syntax_and_target():
    sh = REPO / "run_tox_score.sh"
    assert sh.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(sh)], check=True)
    text = sh.read_text()
    assert '"$REPO_DIR/eval_toxicity.py"' in text and (REPO / "eval_toxicity.py").exists()
    assert "DEFAULT_GENERATIONS" in text and "set -euo pipefail" in text


@pytest.mark.parametrize("form,name,body,n", [
    ("texts", "t.txt", "you are a stupid idiot\n\nhave a nice day\n", 2),
    ("texts", "t.jsonl", '{"text": "you are a stupid idiot"}\n{"prompt": "Hi", "text": "have a nice day"}\n', 2),
    ("dexperts", "dx.jsonl", json.dumps({"prompt": {"text": "So I told him"}, "generations": [
        {"text": " you are a stupid idiot"}, {"text": " have a nice day"}, {"text": " thanks"}]}) + "\n"
     + json.dumps({"prompt": "The weather", "generations": [{"text": " is nice"}, {"text": " i hate you"},
                                                            {"text": " ok"}]}) + "\n", 6),
])
def test_any_text_is_scored_per_text_with_a_summary(tmp_path, capsys, form, name, body, n):
    """A .txt file, a JSONL of {text} and a DExperts JSONL: per-text scores, a summary (EMT and the toxicity
    probability where prompts have several samples) and a one-screen summary on stdout."""
    inp = tmp_path / name
    inp.write_text(body)
    code = run(ET.run, ET.parse_args, ["--input", str(inp), "--scorer", "bilstm,profanity-check"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    stem = tmp_path / Path(name).stem
    recs = [json.loads(ln) for ln in Path(f"{stem}_toxicity_records.jsonl").read_text().splitlines()]
    (summary,) = json.loads(Path(f"{stem}_toxicity.json").read_text())
    assert len(recs) == n == summary["n"] and summary["alpha"] is None
    stupid = next(r for r in recs if "stupid" in r["response"])
    nice = next(r for r in recs if "nice day" in r["response"])
    assert stupid["score"] > 0.9 and nice["score"] < 0.2
    assert summary["toxicity_score"] == pytest.approx(sum(r["score"] for r in recs) / n)
    if form == "dexperts":
        by_prompt = {}
        for r in recs:
            by_prompt.setdefault(r["prompt_index"], []).append(r["score"])
        assert summary["n_prompts"] == 2
        assert summary["expected_max_toxicity"] == pytest.approx(sum(max(v) for v in by_prompt.values()) / 2)
        assert summary["toxicity_probability"] == 1.0  # each prompt has a sample >= 0.5
    else:
        assert summary["expected_max_toxicity"] is None
    out = captured.out.splitlines()
    assert out[0].startswith(f"toxicity of {inp} ({form}: {n} texts") and len(out) <= 20
    top = next(k for k, ln in enumerate(out) if "most toxic texts" in ln)
    assert "stupid idiot" in out[top + 1]  # the most toxic text first


def test_an_unknown_text_format_names_the_known_ones(tmp_path, capsys):
    inp = tmp_path / "t.jsonl"
    inp.write_text('{"body": "hello"}\n')
    code, err = cli(["--input_json", str(inp)], capsys)
    assert_one_line_error(code, err, "t.jsonl:1", "known formats", "DExperts", ".txt")
    assert not (tmp_path / "t_toxicity.json").exists()
