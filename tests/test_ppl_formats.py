"""eval_ppl.py on every input form it accepts: the PPL equals one computed by hand from the intended join of
prompt and continuation (issue 25, item 1), and the logged reason for ``--join auto`` is true.

The oracle is written here from the definition, independent of detox_pa.ppl: tokenise the intended text
(prompt + continuation) with the tokenizer's own BOS, mask the tokens of the prompt tokenised alone (the
prompts below end in a word, so that prefix is exact), take each text's mean token loss, and PPL = exp of
their mean. A text without a prompt is scored from its first token after BOS."""

import json
import logging
import math

import pytest
import torch

from detox_pa.cli import run
from tests.tiny import make_model_folder


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_model_folder(tmp_path_factory.mktemp("ref"), "tiny-ref", arch="llama", kind="sp", seed=3)
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def oracle_ppl(ref, texts: list[tuple[str, str]]) -> float:
    """``texts`` = (prompt, what the intended join puts after it)."""
    _, model, tok = ref
    losses = []
    for prompt, cont in texts:
        ids = tok(prompt + cont, return_tensors="pt").input_ids
        n_ctx = len(tok(prompt).input_ids) if prompt else 1  # 1 = the BOS alone
        labels = ids.clone()
        labels[0, :n_ctx] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return math.exp(sum(losses) / len(losses))


def score(ref, path, caplog, *extra):
    from detox_pa import ppl as E

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run(E.run, E.parse_args, ["--model_path", str(ref[0]), "--input", str(path), "--device", "cpu",
                                         *extra]) == 0
    join_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("join: ")]
    assert len(join_lines) == 1
    stem = str(path).rsplit(".", 1)[0]
    tag = "_" + extra[extra.index("--output_tag") + 1] if "--output_tag" in extra else ""
    return json.loads(open(f"{stem}_ppl{tag}.json").read()), join_lines[0]


PROMPTS = ["So I told him", "The weather", "We like the"]
# continuations as a generator produced them: mostly a leading space, one starting with punctuation
EXACT = [" you are a stupid idiot", ", is nice today", " kind friend"]
STRIPPED = [c.strip() for c in EXACT]


def test_our_generations_are_joined_exactly_and_said_so(ref, tmp_path, caplog):
    path = tmp_path / "ours.json"
    path.write_text(json.dumps([{"alpha": 0.0, "prompt-response pairs": [
        {"prompt": p, "response": r, "continuation": c, "prompt_index": i, "sample": 0, "seed": 1, "n_new_tokens": 5}
        for i, (p, r, c) in enumerate(zip(PROMPTS, STRIPPED, EXACT))]}]))
    (summary,), why = score(ref, path, caplog)
    assert summary["join"] == "exact" and "generate.py" in why
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, list(zip(PROMPTS, EXACT))), rel=1e-4)
    # the exact text differs from the paper's join here ("weather, is" vs "weather , is"): the two numbers differ
    assert summary["PPL"] != pytest.approx(oracle_ppl(ref, [(p, " " + r) for p, r in zip(PROMPTS, STRIPPED)]), rel=1e-4)


def test_the_papers_json_is_joined_with_one_space(ref, tmp_path, caplog):
    path = tmp_path / "paper.json"
    path.write_text(json.dumps([{"alpha": 0, "prompt-response pairs": [
        {"prompt": p, "response": r} for p, r in zip(PROMPTS, STRIPPED)]}], indent=4))
    (summary,), why = score(ref, path, caplog)
    assert summary["join"] == "paper" and "generate.py" not in why and "no response starts with whitespace" in why
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, [(p, " " + r) for p, r in zip(PROMPTS, STRIPPED)]), rel=1e-4)


def _dexperts(path, texts):
    path.write_text(json.dumps({"prompt": {"text": PROMPTS[0]}, "generations": [{"text": texts[0]}, {"text": texts[1]}]})
                    + "\n" + json.dumps({"prompt": PROMPTS[2], "generations": [{"text": texts[2]}]}) + "\n")
    return [(PROMPTS[0], texts[0]), (PROMPTS[0], texts[1]), (PROMPTS[2], texts[2])]


def test_dexperts_jsonl_with_leading_spaces_is_scored_verbatim(ref, tmp_path, caplog):
    pairs = _dexperts(tmp_path / "dx.jsonl", EXACT)
    (summary,), why = score(ref, tmp_path / "dx.jsonl", caplog)
    assert summary["join"] == "exact" and "generate.py" not in why and "start with whitespace" in why
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, pairs), rel=1e-4)


def test_dexperts_jsonl_without_leading_spaces_gets_one_space_not_glued(ref, tmp_path, caplog):
    """The issue's case: texts without a leading space were glued to the prompt ("saidhello") under a false
    reason ("our generate.py")."""
    pairs = _dexperts(tmp_path / "dx_stripped.jsonl", STRIPPED)
    (summary,), why = score(ref, tmp_path / "dx_stripped.jsonl", caplog)
    assert summary["join"] == "paper" and "generate.py" not in why and "dexperts" in why
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, [(p, " " + t) for p, t in pairs]), rel=1e-4)
    glued = oracle_ppl(ref, pairs)
    assert summary["PPL"] != pytest.approx(glued, rel=1e-3)
    meta = json.loads((tmp_path / "dx_stripped_ppl.meta.json").read_text())
    assert meta["join"] == "paper" and meta["join_reason"] == why[len("join: paper ("):-1]


@pytest.mark.parametrize("texts,join", [(STRIPPED, "paper"), (EXACT, "exact")])
def test_prompt_text_jsonl_follows_the_whitespace_rule(ref, tmp_path, caplog, texts, join):
    path = tmp_path / "pt.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "text": t}) + "\n" for p, t in zip(PROMPTS, texts)))
    (summary,), why = score(ref, path, caplog)
    assert summary["join"] == join and "generate.py" not in why
    intended = [(p, (" " if join == "paper" else "") + t) for p, t in zip(PROMPTS, texts)]
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, intended), rel=1e-4)


def test_txt_texts_are_scored_from_their_start(ref, tmp_path, caplog):
    lines = ["Hello the world is good", "The cat is kind and calm", "We walk"]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    (summary,), why = score(ref, path, caplog)
    assert "no text has a prompt" in why and summary["n_scored"] == 3
    assert summary["PPL"] == pytest.approx(oracle_ppl(ref, [("", t) for t in lines]), rel=1e-4)
    # --join paper puts no space before a text that has no prompt: the same number
    (forced,), _ = score(ref, path, caplog, "--join", "paper", "--output_tag", "paper")
    assert forced["join"] == "paper" and forced["PPL"] == pytest.approx(summary["PPL"], rel=1e-9)


def test_eval_ppl_prints_a_one_screen_summary(ref, tmp_path, caplog, capsys):
    path = tmp_path / "paper.json"
    path.write_text(json.dumps([{"alpha": a, "prompt-response pairs": [
        {"prompt": p, "response": r} for p, r in zip(PROMPTS, STRIPPED)]} for a in (0, 0.5)]))
    capsys.readouterr()
    score(ref, path, caplog)
    out = capsys.readouterr().out
    assert f"perplexity of {path} (nested: 6 texts, 3 prompts)" in out, out
    assert "join: paper" in out and str(tmp_path / "paper_ppl.json") in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("0 ", "0.5 "))]
    summary = json.loads((tmp_path / "paper_ppl.json").read_text())
    assert [r[0] for r in rows] == ["0", "0.5"]
    assert [float(r[1]) for r in rows] == pytest.approx([d["PPL"] for d in summary], abs=0.006)
    assert len(out.splitlines()) <= 25
