"""Perplexity scoring (detox_pa/ppl.py, eval_ppl.py, run_ppl_score.sh) on tiny random models."""

import hashlib
import json
import logging
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from detox_pa.cli import run
from detox_pa.ppl import PPLScorer, encode_pair, split_at_boundary
from tests.tiny import make_model, make_model_folder, make_tokenizer

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def toks():
    return {"sp": make_tokenizer("sp"), "bl": make_tokenizer("bl")}


@pytest.fixture(scope="module")
def ref_folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("ref"), "tiny-ref", arch="llama", kind="sp")


def scored_tokens(tok, prompt, response):
    enc, status = encode_pair(tok, prompt, response)
    assert status == "ok"
    names = tok.convert_ids_to_tokens(enc.ids)
    return names[: enc.start], names[enc.start:]


# ------------------------------------------------------------------------------ the boundary


@pytest.mark.parametrize("prompt,response", [("Hello the ", "world is"), ("Hello the", " world is")])
def test_boundary_sp_with_bos_token_by_token(toks, prompt, response):
    ctx, scored = scored_tokens(toks["sp"], prompt, response)
    # BOS is added and is context; '▁world' carries the space (prompt's or response's) and is scored
    assert ctx == ["<bos>", "H", "ell", "o", "▁the"]
    assert scored == ["▁world", "▁is"]


def test_boundary_sp_both_spaces_and_separate_tokenisation_would_differ(toks):
    tok = toks["sp"]
    ctx, scored = scored_tokens(tok, "Hello the ", " world")
    assert ctx == ["<bos>", "H", "ell", "o", "▁the", "▁"] and scored == ["▁world"]
    # the paper's way (length of a separately tokenised prompt) is off by one when the prompt ends with a space:
    enc, _ = encode_pair(tok, "Hello the ", "world is")
    assert len(tok("Hello the ").input_ids) == enc.start + 1


@pytest.mark.parametrize("prompt,response", [("Hello the ", "world is"), ("Hello the", " world is")])
def test_boundary_bl_without_bos_token_by_token(toks, prompt, response):
    ctx, scored = scored_tokens(toks["bl"], prompt, response)
    assert ctx == ["H", "e", "ll", "o", "Ġt", "he"]
    assert scored == ["Ġw", "or", "ld", "Ġ", "i", "s"]


def test_boundary_bl_both_spaces_and_straddling_token(toks):
    ctx, scored = scored_tokens(toks["bl"], "Hello the ", " world")
    assert ctx[-1] == "Ġ" and scored == ["Ġw", "or", "ld"]
    ids, n_lead, b = split_at_boundary(toks["bl"], "The cat", "s are")
    assert n_lead == 0 and toks["bl"].convert_ids_to_tokens(ids[b:]) == ["s", "Ġ", "a", "re"]


def test_truncation_keeps_bos_and_all_continuation_tokens(toks):
    tok = toks["sp"]
    prompt, response = "Long long ago the dog walk", " home"
    full, _ = encode_pair(tok, prompt, response)
    cut, _ = encode_pair(tok, prompt, response, max_length=5)
    assert len(cut.ids) == 5 and cut.truncated and not full.truncated
    assert cut.ids[0] == tok.bos_token_id
    assert cut.ids[cut.start:] == full.ids[full.start:]  # '▁h', 'ome'
    assert cut.ids[1:cut.start] == full.ids[full.start - 2: full.start]  # the last prompt tokens


# ------------------------------------------------------------------ batched vs unbatched vs naive

CLEAN = [  # prompts end with a word, responses start with ' word': separate tokenisation agrees here
    ("Hello the", " world is good today"),
    ("The cat", " and dog walk"),
    ("A", " big small new old first last long great little own"),
    ("She said that the people of the city", " are kind"),
    ("We", " eat"),
    ("Good morning", " my friend, the weather is nice"),
    ("They will not", " go to school"),
]


@pytest.mark.parametrize("arch,kind,softcap", [("llama", "sp", None), ("gpt2", "bl", None), ("gemma3", "sp", 5.0)])
def test_batched_equals_unbatched_and_naive_full_logits(toks, arch, kind, softcap):
    tok = toks[kind]
    model = make_model(arch, vocab_size=len(tok), tokenizer=tok, seed=1)
    if softcap is not None:
        model.config.final_logit_softcapping = softcap
    prompts, responses = zip(*CLEAN)
    batched = PPLScorer(model, tok, batch_size=3).score(prompts, responses)
    single = PPLScorer(model, tok, batch_size=1).score(prompts, responses)
    for p, r, b, s in zip(prompts, responses, batched, single):
        inputs = tok(p + r, return_tensors="pt")
        n_prompt = len(tok(p).input_ids)
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        ids = inputs["input_ids"][0]
        naive = torch.nn.functional.cross_entropy(logits[n_prompt - 1:-1], ids[n_prompt:], reduction="sum").item()
        assert b["n_tokens"] == s["n_tokens"] == len(ids) - n_prompt
        assert b["sum_nll"] == pytest.approx(s["sum_nll"], abs=1e-4)
        assert b["sum_nll"] == pytest.approx(naive, abs=1e-4)
        assert b["mean_nll"] == pytest.approx(naive / b["n_tokens"], abs=1e-4)
    if softcap is not None:  # the cap really bounds the logits used: NLL <= log(V) + 2*cap per token
        assert all(r["mean_nll"] <= math.log(len(tok)) + 2 * softcap for r in batched)


def test_probe_falls_back_to_full_logits_when_head_path_disagrees(toks):
    tok = toks["sp"]
    model = make_model("llama", vocab_size=len(tok), tokenizer=tok, seed=2)
    prompts, responses = zip(*CLEAN[:3])
    ref = PPLScorer(model, tok, batch_size=2).score(prompts, responses)
    broken = PPLScorer(model, tok, batch_size=2)
    broken.logit_scale = 3.0  # pretend the architecture scales logits in a way the fast path gets wrong
    out = broken.score(prompts, responses)
    assert broken.fast is False
    for a, b in zip(ref, out):
        assert a["sum_nll"] == pytest.approx(b["sum_nll"], abs=1e-4)


def test_empty_response_and_no_token_after_boundary_are_skipped(toks):
    tok = toks["bl"]
    model = make_model("gpt2", vocab_size=len(tok), tokenizer=tok)
    recs = PPLScorer(model, tok, batch_size=4).score(["Hello the", "Hello", ""], ["", " world", "a"])
    assert recs[0]["status"] == "empty_response" and recs[0]["sum_nll"] is None and recs[0]["n_tokens"] == 0
    assert recs[1]["status"] == "ok" and recs[1]["n_tokens"] > 0
    # no BOS and an empty prompt: a one-token text has nothing to be predicted from
    assert recs[2]["status"] == "no_continuation_tokens"


# ------------------------------------------------------------------------------ the script


def write_gen(path, blocks):
    path.write_text(json.dumps(blocks), encoding="utf-8")
    return path


def eval_ppl(argv):
    from detox_pa import ppl as E

    return run(E.run, E.parse_args, argv)


PAPER_BLOCKS = [  # the paper's exact nested format, only prompt/response
    {"alpha": 0.0, "prompt-response pairs": [
        {"prompt": "Hello the", "response": " world is good"},
        {"prompt": "The cat", "response": " and dog walk to the city and eat food"},
        {"prompt": "We", "response": ""}]},
    {"alpha": 0.3, "prompt-response pairs": [
        {"prompt": "Hello the", "response": " world"},
        {"prompt": "The cat", "response": " is happy and calm today"},
        {"prompt": "We", "response": " walk"}]},
]


def test_eval_ppl_on_paper_format_writes_paper_keys_and_formulas(tmp_path, ref_folder):
    gen = write_gen(tmp_path / "gen.json", PAPER_BLOCKS)
    assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen), "--batch_size", "2"]) == 0
    out = json.loads((tmp_path / "gen_ppl.json").read_text())
    assert [d["alpha"] for d in out] == [0.0, 0.3]
    assert set(out[0]) == {"alpha", "PPL", "ppl_token_weighted", "ppl_median_per_sample", "dist_1", "dist_2", "dist_3",
                           "n", "n_prompts", "n_scored", "n_skipped_empty", "n_truncated", "n_tokens",
                           "reference_model", "input", "input_sha256", "note", "records", "records_sha256", "join"}
    recs = [json.loads(l) for l in (tmp_path / "gen_ppl_records.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    for d in out:
        mine = [r for r in recs if r["alpha"] == d["alpha"] and r["status"] == "ok"]
        means = [r["mean_nll"] for r in mine]
        assert d["PPL"] == pytest.approx(math.exp(sum(means) / len(means)), rel=1e-9)
        assert d["ppl_token_weighted"] == pytest.approx(
            math.exp(sum(r["sum_nll"] for r in mine) / sum(r["n_tokens"] for r in mine)), rel=1e-9)
        assert d["n_tokens"] == sum(r["n_tokens"] for r in mine)
        assert d["reference_model"] == str(ref_folder) and len(d["input_sha256"]) == 64
    # lengths differ a lot, so the two aggregates differ: the keys cannot have been swapped silently
    assert out[0]["PPL"] != pytest.approx(out[0]["ppl_token_weighted"], rel=1e-6)
    # the empty response is skipped and counted
    assert (out[0]["n"], out[0]["n_scored"], out[0]["n_skipped_empty"]) == (3, 2, 1)
    assert (out[1]["n"], out[1]["n_scored"], out[1]["n_skipped_empty"]) == (3, 3, 0)
    assert [r["status"] for r in recs[:3]] == ["ok", "ok", "empty_response"]
    meta = json.loads((tmp_path / "gen_ppl.meta.json").read_text())
    assert meta["output_layer_only_at_continuation_positions"] is True and meta["model"]["vocab_size"] > 0


def test_two_runs_write_identical_files_and_the_summary_pins_its_records(tmp_path, ref_folder):
    gen = write_gen(tmp_path / "gen.json", PAPER_BLOCKS)
    argv = ["--model_path", str(ref_folder), "--input_json", str(gen), "--batch_size", "2"]
    names = ("gen_ppl.json", "gen_ppl_records.jsonl", "gen_ppl.meta.json")
    assert eval_ppl(argv) == 0
    first = {n: (tmp_path / n).read_bytes() for n in names}
    assert eval_ppl(argv) == 0
    assert (tmp_path / names[0]).read_bytes() == first[names[0]]
    assert (tmp_path / names[1]).read_bytes() == first[names[1]]
    metas = [json.loads(b) for b in (first[names[2]], (tmp_path / names[2]).read_bytes())]
    for m in metas:
        m.pop("seconds_scoring")
    assert metas[0] == metas[1]
    summary = json.loads(first[names[0]])
    assert {d["records_sha256"] for d in summary} == {hashlib.sha256(first[names[1]]).hexdigest()}


def test_dist_n_is_per_prompt_then_averaged_and_output_tag_keeps_files_apart(tmp_path, ref_folder):
    gen = write_gen(tmp_path / "g.json", [{"alpha": 0.1, "prompt-response pairs": [
        {"prompt": "A", "response": " a a b", "sample": 0},
        {"prompt": "A", "response": " b c", "sample": 1},
        {"prompt": "B", "response": " x y", "sample": 0}]}])
    assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen)]) == 0
    first = (tmp_path / "g_ppl.json").read_text()
    d = json.loads(first)[0]
    assert d["dist_1"] == pytest.approx((3 / 5 + 1.0) / 2)  # prompt A: {a,b,c}/5, prompt B: 2/2
    assert d["n_prompts"] == 2
    assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen), "--output_tag", "judge2"]) == 0
    assert (tmp_path / "g_ppl_judge2.json").exists() and (tmp_path / "g_ppl_judge2_records.jsonl").exists()
    assert (tmp_path / "g_ppl.json").read_text() == first


def test_launcher_positional_args(tmp_path, ref_folder):
    gen = write_gen(tmp_path / "gen.json", PAPER_BLOCKS[:1])
    env = dict(os.environ, OUT_DIR=str(tmp_path / "out"), PPL_BATCH_SIZE="2", HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(REPO / "run_ppl_score.sh"), str(ref_folder), str(gen)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "gen_ppl.json").read_text())[0]["n_scored"] == 2
    # a one-screen summary on stdout, like the toxicity step's
    assert proc.stdout.startswith(f"perplexity of {gen} (nested: 3 texts, 3 prompts)"), proc.stdout


# ------------------------------------------------------------------------------ both whitespace conventions


def paper_formula_ppl(folder, pairs) -> float:
    """The paper's PPL, written here from its description as the oracle: text = prompt + ' ' + response
    unless the prompt ends in a space; the first len(tokenizer(prompt)) tokens are masked; PPL =
    exp(mean of each sample's mean loss)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    losses = []
    for p in pairs:
        text = p["prompt"] + ("" if p["prompt"].endswith(" ") else " ") + p["response"]
        ids = tok(text, return_tensors="pt").input_ids
        labels = ids.clone()
        labels[0, :len(tok(p["prompt"]).input_ids)] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return math.exp(sum(losses) / len(losses))


PAPER_REAL = [  # the paper's generation file: int alpha, only prompt/response, stripped responses, indent=4
    {"alpha": 0, "prompt-response pairs": [
        {"prompt": "Hello the", "response": "world is good"},
        {"prompt": "The cat", "response": "and dog walk to the city and eat food"},
        {"prompt": "We like the", "response": "kind friend"}]},
    {"alpha": 1, "prompt-response pairs": [
        {"prompt": "Hello the", "response": "world"},
        {"prompt": "The cat", "response": "is happy, and calm today"},
        {"prompt": "We like the", "response": "dog"}]},
]
# (a prompt ending in a space is joined without one; the paper's scorer then masks one token too many,
# the separately tokenised prompt's trailing '▁', so its number differs from ours there by design)


def test_a_file_in_the_papers_format_is_scored_as_the_papers_scorer_does(tmp_path, ref_folder, caplog):
    gen = tmp_path / "paper.json"
    gen.write_text(json.dumps(PAPER_REAL, indent=4))
    with caplog.at_level(logging.INFO):
        assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen)]) == 0
    assert "join: paper (no response starts with whitespace" in caplog.text
    out = json.loads((tmp_path / "paper_ppl.json").read_text())
    assert [d["join"] for d in out] == ["paper", "paper"]
    for block, d in zip(PAPER_REAL, out):
        assert d["PPL"] == pytest.approx(paper_formula_ppl(ref_folder, block["prompt-response pairs"]), rel=0.01)
    # scored verbatim instead, the words would be glued together ("theworld"): another, higher number
    assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen), "--join", "exact",
                     "--output_tag", "glued"]) == 0
    glued = json.loads((tmp_path / "paper_ppl_glued.json").read_text())
    assert glued[0]["join"] == "exact" and glued[0]["PPL"] != pytest.approx(out[0]["PPL"], rel=0.01)


def test_our_files_read_by_the_papers_formula_agree_where_the_continuation_starts_with_a_space(tmp_path, ref_folder, caplog):
    ours = [{"alpha": 0.0, "prompt-response pairs": [
        {"prompt": "Hello the", "response": "world is good", "continuation": " world is good"},
        {"prompt": "The cat", "response": "and dog walk", "continuation": " and dog walk"},
        {"prompt": "We", "response": "", "continuation": ""}]}]
    gen = write_gen(tmp_path / "ours.json", ours)
    with caplog.at_level(logging.INFO):
        assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(gen)]) == 0
    assert "join: exact (every pair holds the exact 'continuation'" in caplog.text
    d = json.loads((tmp_path / "ours_ppl.json").read_text())[0]
    assert (d["join"], d["n_scored"], d["n_skipped_empty"]) == ("exact", 2, 1)  # the empty one is counted and skipped
    assert d["PPL"] == pytest.approx(paper_formula_ppl(ref_folder, ours[0]["prompt-response pairs"][:2]), rel=0.01)
    meta = json.loads((tmp_path / "ours_ppl.meta.json").read_text())
    assert meta["join"] == "exact" and "continuation" in meta["join_reason"]


def test_older_files_with_leading_spaces_are_scored_verbatim(tmp_path, ref_folder):
    from detox_pa.ppl import choose_join, joined_continuation

    pairs = PAPER_BLOCKS[0]["prompt-response pairs"]
    assert choose_join(pairs, "auto")[0] == "exact"
    assert choose_join(pairs, "paper") == ("paper", "--join paper")
    assert joined_continuation({"prompt": "a", "response": "b"}, "paper") == " b"
    assert joined_continuation({"prompt": "a ", "response": "b"}, "paper") == "b"
    assert joined_continuation({"prompt": "a", "response": ""}, "paper") == ""
    assert joined_continuation({"prompt": "a", "response": "b", "continuation": "  b"}, "exact") == "  b"


def test_identical_pairs_are_scored_once_with_the_same_result(toks):
    tok = toks["sp"]
    model = make_model("llama", vocab_size=len(tok), tokenizer=tok)
    scorer = PPLScorer(model, tok, batch_size=2)
    prompts, responses = ["Hello the", "The cat", "Hello the", "We"], [" world is", " and dog", " world is", ""]
    recs = scorer.score(prompts, responses)
    assert scorer.n_distinct == 3
    assert recs[0] == recs[2] and recs[0] is not recs[2] and recs[3]["status"] == "empty_response"
    alone = scorer.score(prompts[:2], responses[:2])
    assert alone[0]["sum_nll"] == pytest.approx(recs[0]["sum_nll"], rel=1e-5)
    assert alone[1]["sum_nll"] == pytest.approx(recs[1]["sum_nll"], rel=1e-5)


def test_dexperts_and_plain_texts_are_scored_like_our_files(tmp_path, ref_folder):
    """A DExperts JSONL gives the same per-record NLL as our nested file with the same (prompt, continuation)
    pairs; a .txt file is scored from its start (no prompt)."""
    pairs = [("So I told him", " you are a stupid idiot"), ("So I told him", " have a nice day"), ("The weather", " is nice")]
    (tmp_path / "dx.jsonl").write_text(
        json.dumps({"prompt": {"text": "So I told him"}, "generations": [{"text": pairs[0][1]}, {"text": pairs[1][1]}]}) + "\n"
        + json.dumps({"prompt": "The weather", "generations": [{"text": pairs[2][1]}]}) + "\n")
    nested = write_gen(tmp_path / "ours.json", [{"alpha": 0.0, "prompt-response pairs": [
        {"prompt": p, "response": c.strip(), "continuation": c} for p, c in pairs]}])
    assert eval_ppl(["--model_path", str(ref_folder), "--input", str(tmp_path / "dx.jsonl")]) == 0
    assert eval_ppl(["--model_path", str(ref_folder), "--input_json", str(nested)]) == 0
    dx = [json.loads(ln) for ln in (tmp_path / "dx_ppl_records.jsonl").read_text().splitlines()]
    ours = [json.loads(ln) for ln in (tmp_path / "ours_ppl_records.jsonl").read_text().splitlines()]
    assert [r["sum_nll"] for r in dx] == pytest.approx([r["sum_nll"] for r in ours], rel=1e-9)
    (summary,) = json.loads((tmp_path / "dx_ppl.json").read_text())
    assert summary["alpha"] is None and summary["n_prompts"] == 2 and summary["join"] == "exact"
    (tmp_path / "t.txt").write_text("Hello the world is good\nThe cat is kind\n")
    assert eval_ppl(["--model_path", str(ref_folder), "--input", str(tmp_path / "t.txt")]) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "t_ppl_records.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["n_tokens"] >= 4 for r in recs)
