"""An alpha sweep computes each batch's prompt once (target and teachers) and gives what a recomputation gives;
the unsteered target's NLL recorded at generation time is what the PPL judge computes, and eval_ppl.py takes it
only from a judge that is verifiably the generation's target (tiny random models, CPU)."""

import json
import math
import shutil

import pytest
import torch
from transformers import GenerationConfig

import tiny
from detox_pa.cli import run
from detox_pa.fusion import DiffConfig, PromptMemo, difference_fusion, fusion
from detox_pa.generation import decode_batch
from detox_pa.ppl import PPLScorer, judge_postprocess, split_at_boundary

PROMPTS = ["Hello world, the dog", "The cat is", "A very long prompt about the weather today and the river", "We"]


def _trio(dtype=torch.float32, softcap=None):
    tok = tiny.make_tokenizer("sp")
    tok.padding_side = "left"
    tch_tok = tiny.make_tokenizer("bl", vocab_size=280)
    target = tiny.make_model("gemma3", vocab_size=len(tok), hidden=32, seed=1, tokenizer=tok)
    if softcap is not None:
        target.config.final_logit_softcapping = softcap
    expert = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    anti = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=5, tokenizer=tch_tok)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    return [m.to(dtype) for m in (target, expert, anti)] + [tok, tch_tok, A]


def _gc(tok, sample=True, n=6):
    return GenerationConfig(max_new_tokens=n, do_sample=sample, top_p=0.9 if sample else None, top_k=0 if sample else None,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def _count_real_prefills(model):
    """Forwards of the model's layers into an empty KV cache: real prefills (a replay runs no layer)."""
    calls = []

    def pre(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            calls.append(1)

    model.base_model.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    return calls


def _sweep(target, expert, anti, tok, tch_tok, A, alphas, memo, method="diff", sample=True, post=None):
    out = []
    for a in alphas:
        torch.manual_seed(int(a * 100) + 7)
        if method == "diff":
            factory = lambda: difference_fusion(target, expert, anti, DiffConfig(alpha=a, top_k=5), A, tok, tch_tok,  # noqa: E731
                                                memo=memo)
        else:
            factory = lambda: fusion(target, expert, A, a, tok, tch_tok, memo=memo)  # noqa: E731
        out.append(decode_batch(target, tok, PROMPTS, _gc(tok, sample), factory, torch.device("cpu"), memo=memo,
                                nll_postprocess=post))
    return out


@pytest.mark.parametrize("dtype,method", [(torch.float32, "diff"), (torch.float32, "fusion"), (torch.bfloat16, "diff")])
def test_a_sweep_computes_each_prompt_once_and_gives_what_recomputing_gives(dtype, method):
    target, expert, anti, tok, tch_tok, A = _trio(dtype)
    alphas = [0.0, 0.4, 0.8] if method == "diff" else [0.0, 0.3, 0.6]
    with torch.no_grad():
        t_calls, e_calls = _count_real_prefills(target), _count_real_prefills(expert)
        fresh = _sweep(target, expert, anti, tok, tch_tok, A, alphas, None, method)
        assert len(t_calls) == 3 and len(e_calls) == 2  # today: every alpha computes the prompt again
        t_calls.clear(), e_calls.clear()
        memo = PromptMemo()
        shared = _sweep(target, expert, anti, tok, tch_tok, A, alphas, memo, method)
    assert len(t_calls) == 1 and len(e_calls) == 1  # once per batch, whatever the number of alphas
    n_teachers = 2 if method == "diff" else 1
    assert (memo.computed, memo.replays) == (1 + n_teachers, 2 + n_teachers)
    for f, s in zip(fresh, shared):
        assert f.ids == s.ids and f.texts == s.texts and f.reasons == s.reasons  # bit for bit: the same sampled tokens
    assert fresh[0].ids != fresh[2].ids  # the fusion did change the output: a replay is not stuck on one alpha


def test_a_replay_is_refused_for_another_batch_and_leaves_a_wrapped_forward_in_place():
    """Another prompt batch under the same memo computes its own prefill; a backbone whose forward is wrapped at
    instance level (accelerate's device_map hooks) gets its wrapper back after the block."""
    from accelerate import dispatch_model

    target, expert, anti, tok, tch_tok, A = _trio()
    ref = tiny.make_model("gemma3", vocab_size=len(tok), hidden=32, seed=1, tokenizer=tok)
    dispatch_model(target, device_map={"model": "cpu", "lm_head": "cpu"}, force_hooks=True)
    wrapper = target.model.__dict__.get("forward")
    assert wrapper is not None  # accelerate put its hook there
    memo = PromptMemo()
    with torch.no_grad():
        calls = _count_real_prefills(target)
        for prompts in (PROMPTS, PROMPTS[:2], PROMPTS[:2]):
            torch.manual_seed(0)
            got = decode_batch(target, tok, prompts, _gc(tok), lambda: difference_fusion(
                target, expert, anti, DiffConfig(alpha=0.5, top_k=5), A, tok, tch_tok, memo=memo), torch.device("cpu"),
                memo=memo)
            torch.manual_seed(0)
            want = decode_batch(ref, tok, prompts, _gc(tok), lambda: difference_fusion(
                ref, expert, anti, DiffConfig(alpha=0.5, top_k=5), A, tok, tch_tok), torch.device("cpu"))
            assert got.ids == want.ids
    assert len(calls) == 2  # the second batch differs from the first: computed; the third repeats the second: replayed
    assert target.model.__dict__.get("forward") is wrapper


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_recorded_nll_is_the_unsteered_targets_nll_of_each_pick(softcap):
    """At alpha 0 and under the diff method (which moves the picks), the recorded NLL equals the PPL scorer's
    recomputation of prompt + continuation under the plain target, wherever re-tokenising gives the same ids."""
    target, expert, anti, tok, tch_tok, A = _trio(softcap=softcap)
    post = judge_postprocess(target)
    with torch.no_grad():
        out = _sweep(target, expert, anti, tok, tch_tok, A, [0.0, 2.0], PromptMemo(), post=post)
    scorer = PPLScorer(target, tok, batch_size=3)
    compared = worst = 0
    for d in out:
        assert d.nll is not None and [len(x) for x in d.nll] == d.counts
        for p, text, ids, nll in zip(PROMPTS, d.texts, d.ids, d.nll):
            full, _, b = split_at_boundary(tok, p, text)
            if not text or full[b:] != ids or full[:b] != tok(p)["input_ids"]:
                continue
            (r,) = scorer.score([p], [text])
            worst = max(worst, abs(sum(nll) - r["sum_nll"]) / r["sum_nll"])
            compared += 1
    assert compared >= 6 and worst <= 1e-3
    assert out[0].ids != out[1].ids  # alpha 2 picked other tokens, and their NLL is still the plain target's


# ------------------------------------------------------------------------------ eval_ppl.py reads it


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from detox_pa import generation

    d = tmp_path_factory.mktemp("recorded")
    tiny.make_model_folder(d, "target", "gemma3", "sp", seed=1)
    for name, seed in (("expert", 2), ("anti", 5)):
        tiny.make_model_folder(d, name, "llama", "bl", seed=seed, hidden=24, layers=2)
    torch.save({"mapping": torch.randn(24, 32, generator=torch.Generator().manual_seed(0)) * 0.3}, d / "A.pt")
    prompts = [" ".join(s.split()[:k]) for k, s in zip([2, 5, 3, 7, 4, 6, 3, 8], tiny.corpus(8, seed=9))]
    (d / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    gen = d / "gen.json"
    argv = ["--teacher_model", str(d / "expert"), "--anti_teacher_model", str(d / "anti"), "--method", "diff",
            "--top_k", "5", "--target_model", str(d / "target"), "--matrix_A", str(d / "A.pt"), "--data_path",
            str(d / "p.jsonl"), "--output_path", str(gen), "--max_new_tokens", "6", "--batch_size", "3", "--alphas", "0",
            "1.5", "--do_sample"]
    assert run(generation.run, generation.parse_args, argv) == 0
    return d, gen


def _eval(gen, judge, *extra, tag="t"):
    from detox_pa import ppl

    assert run(ppl.run, ppl.parse_args, ["--input_json", str(gen), "--model_path", str(judge), "--output_tag", tag,
                                         *extra]) == 0
    stem = str(gen)[:-len(".json")] + f"_ppl_{tag}"
    recs = [json.loads(line) for line in open(stem + "_records.jsonl")]
    return recs, json.load(open(stem + ".meta.json"))["recorded_nll"], json.load(open(stem + ".json"))


def test_eval_ppl_takes_the_recorded_nll_from_the_same_target_and_agrees_with_recomputing(generated):
    d, gen = generated
    meta = json.loads((d / "gen.meta.json").read_text())["recorded_nll"]
    assert meta["alphas"] == [0.0, 1.5] and meta["dtype"] == "float32" and len(meta["model_weights_sha256"]) == 64
    taken, info, summary = _eval(gen, d / "target", tag="auto")
    again, off, summary_off = _eval(gen, d / "target", "--recorded_nll", "off", tag="off")
    assert off["used"] == 0 and info["used"] >= 8 and info["used"] + info["recomputed"] == len(taken) == 16
    for a, b in zip(taken, again):
        assert (a["status"], a["n_tokens"], a["n_context_tokens"]) == (b["status"], b["n_tokens"], b["n_context_tokens"])
        if a["sum_nll"] is not None:
            assert a["sum_nll"] == pytest.approx(b["sum_nll"], rel=1e-3)
    for x, y in zip(summary, summary_off):
        assert x["PPL"] == pytest.approx(y["PPL"], rel=1e-3)


def test_eval_ppl_recomputes_for_another_judge_another_dtype_or_a_changed_file(generated, tmp_path):
    d, gen = generated
    # the same architecture, config and file sizes, other weights: only the weights' sha256 tells them apart
    other = tiny.make_model_folder(tmp_path, "other", "gemma3", "sp", seed=9)
    _, info, _ = _eval(gen, other, tag="other")
    assert info["used"] == 0 and "weights" in info["reason"]
    _, info, _ = _eval(gen, d / "target", "--dtype", "bfloat16", tag="bf16")
    assert info["used"] == 0 and "dtype" in info["reason"]
    changed = tmp_path / "gen.json"
    data = json.loads(gen.read_text())
    data[0]["prompt-response pairs"][0]["seed"] += 1
    changed.write_text(json.dumps(data))
    shutil.copy(d / "gen.meta.json", tmp_path / "gen.meta.json")
    _, info, _ = _eval(changed, d / "target", tag="changed")
    assert info["used"] == 0 and "sha256" in info["reason"]
    # the paper's format (prompt and response only) carries no NLL: scored as before
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps([{"alpha": b["alpha"], "prompt-response pairs": [
        {"prompt": p["prompt"], "response": p["response"]} for p in b["prompt-response pairs"]]} for b in data]))
    recs, info, _ = _eval(paper, d / "target", tag="paper")
    assert info["used"] == 0 and "no recorded NLL" in info["reason"] and all(math.isfinite(r["sum_nll"] or 0) for r in recs)
