"""bench/seeds.py split and cost: where a run buys its toxicity change and pays its PPL, by what the target alone
(alpha 0 of the same file) wrote. Checked on a hand-made scored run whose answer is worked out below."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _seeds():
    spec = importlib.util.spec_from_file_location("bench_seeds", REPO / "bench" / "seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_run(tmp_path: Path) -> Path:
    gen = tmp_path / "dev_x.json"
    gen.write_text("[]", encoding="utf-8")
    tox = {0.0: [0.05, 0.3, 0.8, 0.9], 1.0: [0.15, 0.2, 0.3, 0.9]}  # clean, between, toxic, toxic
    nll = {0.0: [(1.0, 2), (2.0, 2), (3.0, 3), (4.0, 4)], 1.0: [(2.0, 2), (2.0, 2), (6.0, 3), (4.0, 4)]}
    with open(tmp_path / "dev_x_toxicity_records.jsonl", "w", encoding="utf-8") as f:
        for a, scores in tox.items():
            for i, s in enumerate(scores):
                f.write(json.dumps({"alpha": a, "prompt_index": i, "sample": 0, "scores": {"bilstm": s}}) + "\n")
    with open(tmp_path / "dev_x_ppl_records.jsonl", "w", encoding="utf-8") as f:
        for a, rows in nll.items():
            for i, (s, n) in enumerate(rows):
                f.write(json.dumps({"alpha": a, "prompt_index": i, "sample": 0, "status": "ok", "sum_nll": s,
                                    "n_tokens": n}) + "\n")
    return gen


def test_split_adds_the_groups_up_to_the_whole_change(tmp_path):
    gen = _write_run(tmp_path)
    table = _seeds().split([f"{gen}@1"])
    row = table.splitlines()[2].split("|")
    assert float(row[2]) == pytest.approx(-0.125)  # (0.1 - 0.1 - 0.5 + 0) / 4
    assert [float(x) for x in row[3].split("/")] == pytest.approx([0.025, -0.025, -0.125])
    ppl = [float(x.strip().rstrip("x")) for x in row[4].split("/")]
    assert ppl == pytest.approx([math.exp(0.5), 1.0, math.exp(3.0 / 7)], abs=1e-3)  # toxic: (6+4)/7 vs (3+4)/7
    assert row[5].strip() == "1 of 2" and row[6].strip() == "0"


def test_cost_and_split_refuse_what_they_cannot_read(tmp_path):
    seeds = _seeds()
    gen = _write_run(tmp_path)
    assert "1.649x" in seeds.cost(gen)  # the clean group's exp(0.5) at alpha 1
    with pytest.raises(SystemExit, match="no alpha 2"):
        seeds.split([f"{gen}@2"])
    with pytest.raises(SystemExit, match="GENERATIONS.json@ALPHA"):
        seeds.split(["1"])


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_offset_vocab_keeps_word_like_tokens_and_tabulates_its_rows():
    ov = _bench("offset_vocab")

    class Tok:  # SentencePiece-style pieces: "\u2581" marks a leading space
        pieces = ["\u2581harbor", "harbor", "\u2581ok", "\u2581dog2", "\u2581Valley", "<pad>"]

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i] for i in ids]

    ids, words = ov.word_like(Tok(), 6)
    assert ids.tolist() == [0, 4] and words == ["harbor", "Valley"]  # a leading space and 3+ letters only
    out = {"rows": [{"offset": "x", "corr_with_steering": None, "z_word_list": -1.5, "z_bilstm_off_list": -0.64,
                     "z_other": 0.007, "promoted": ["Harbor", "Valley"], "demoted_word_list": 30, "demoted_n": 60}]}
    lines = ov.table_lines(out)
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2] == "| x | - | -1.50 | -0.64 | +0.007 | Harbor, Valley | 30 |"


def test_gate_metrics_on_a_hand_made_run(tmp_path):
    gate = _bench("gate")
    assert gate.auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert gate.auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    gen = _write_run(tmp_path)
    tox, _, nll = _seeds()._read_scored(gen)
    keys = sorted(tox[0.0])
    t, p = gate.gated_point(keys, set(keys), tox, nll, 1.0)  # acting everywhere: the sweep's own point at alpha 1
    assert t == pytest.approx((1.55 - 2.05) / 2.05) and p == pytest.approx(math.exp(14 / 11 - 10 / 11))
    t, p = gate.gated_point(keys, {(2, 0)}, tox, nll, 1.0)  # only the third prompt takes alpha 1's text
    assert t == pytest.approx(-0.5 / 2.05) and p == pytest.approx(math.exp(13 / 11 - 10 / 11))
    assert gate.gated_point(keys, set(), tox, nll, 1.0) == pytest.approx((0.0, 1.0))
    sweep = [(-0.4, 1.2), (-0.6, 1.4)]  # (toxicity change, PPL ratio)
    assert gate.at_equal_ppl(sweep, (-0.55, 1.3)) == pytest.approx(-0.05)  # 5 points below the sweep's -0.5
    assert gate.at_equal_ppl(sweep, (-0.1, 1.1)) is None  # below the measured range: not compared


def test_gate_probe_recovers_a_planted_direction():
    torch = pytest.importorskip("torch")
    gate = _bench("gate")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 8, generator=g) * torch.tensor([1.0, 5.0, 1, 1, 1, 1, 1, 1]) + 3.0
    y = (X[:, 1] - 3.0 > 0).float()  # toxic exactly where feature 1 is above its mean
    mu, w, b = gate.fit_probe(X, y, l2=1e-4)
    assert int(w.abs().argmax()) == 1 and float(w[1]) > 0
    acc = (((X - mu) @ w + b > 0).float() == y).float().mean()
    assert float(acc) > 0.98


def test_draft_gate_choice_and_base_on_a_hand_made_run(tmp_path):
    gate = _bench("gate")
    gen = _write_run(tmp_path)  # alpha 0 and 1; BiLSTM 0.05 / 0.3 / 0.8 / 0.9 at alpha 0
    rec = tmp_path / "dev_x_toxicity_records.jsonl"
    draft = [0.0, 0.2, 0.6, 0.9]  # profanity-check of each alpha-0 record
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    for r in rows:
        r["scores"]["profanity-check"] = draft[r["prompt_index"]] if r["alpha"] == 0.0 else 0.0
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sweep = gate.read_sweep(gen)
    assert sweep[3] == draft
    # cut 0.5 acts on prompts 2 and 3: toxicity 0.05 + 0.3 + 0.3 + 0.9 = 1.55, PPL exp(13/11 - 10/11); cut 0.1 also
    # on prompt 1 (0.3 -> 0.2, its NLL unchanged): 1.45 at the same PPL, so the rule takes cut 0.1
    cut, a, (t, p) = gate.draft_choice(sweep, cap=2.0, cuts=(0.5,))
    assert (cut, a) == (0.5, 1.0) and t == pytest.approx(-0.5 / 2.05) and p == pytest.approx(math.exp(3 / 11))
    cut, a, (t, p) = gate.draft_choice(sweep, cap=2.0, cuts=(0.1, 0.5))
    assert (cut, a) == (0.1, 1.0) and t == pytest.approx(-0.6 / 2.05) and p == pytest.approx(math.exp(3 / 11))
    assert gate.draft_choice(sweep, cap=1.0, cuts=(0.5,)) is None  # nothing within the PPL cap
    assert gate.gated_scores(sweep, 1.0, 0.5) == {0: [0.05], 1: [0.3], 2: [0.3], 3: [0.9]}
    assert gate.gated_scores(sweep, 1.0, None) == {0: [0.15], 1: [0.2], 2: [0.3], 3: [0.9]}
    # a run without alpha 0 takes it and its drafts from a base run on the same prompts
    other = tmp_path / "held"
    other.mkdir()
    (other / "s.json").write_text("[]")
    for kind in ("toxicity", "ppl"):
        lines = [json.loads(x) for x in (tmp_path / f"dev_x_{kind}_records.jsonl").read_text().splitlines()]
        (other / f"s_{kind}_records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in lines if r["alpha"] != 0.0))
    keys, tox, _, d = gate.read_sweep(other / "s.json", base=gen)
    assert d == draft and tox[0.0] == sweep[1][0.0]
    with pytest.raises(SystemExit, match="no alpha 0"):
        gate.read_sweep(other / "s.json")
