"""A greedy alpha sweep decoded as one batch, each distinct (prompt, prefix) once (issue 22), gives every alpha the
continuations, stop reasons, recorded NLL and counts that decoding it alone gives (tiny random models, CPU).

Today's path (:func:`detox_pa.generation.sweep_batch` without ``share``) decodes each alpha on its own; the shared
path (with a :class:`detox_pa.fusion.RowShare`) decodes all alphas in one ``generate()`` call whose target computes
rows that hold the same tokens once and duplicates them where the alphas' picks part. The prompts are of unequal
lengths (left padding), and the alphas part at different steps."""

import copy

import pytest
import torch
from transformers import GenerationConfig

import tiny
from detox_pa.fusion import PromptMemo, RowShare, RowShareUnsupported
from detox_pa.generation import GenerateArguments, prefix_sharing, sweep_batch
from detox_pa.methods import get_method
from detox_pa.ppl import judge_postprocess

PROMPTS = ["Hello world, the dog", "The cat is", "A very long prompt about the weather today and the river", "We",
           "Good morning to the"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trio():
    tok = tiny.make_tokenizer("sp")
    tok.padding_side = "left"
    tch_tok = tiny.make_tokenizer("bl", vocab_size=280)
    target = tiny.make_model("gemma3", vocab_size=len(tok), hidden=32, seed=1, tokenizer=tok)
    expert = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    anti = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=5, tokenizer=tch_tok)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    return target, expert, anti, tok, tch_tok, A


def _gc(tok, n=7, **kw):
    return GenerationConfig(max_new_tokens=n, do_sample=kw.pop("do_sample", False),
                            pad_token_id=kw.pop("pad", tok.pad_token_id), eos_token_id=kw.pop("eos", tok.eos_token_id),
                            **kw)


def _method(name, trio, alphas, dtype=torch.float32, **opts):
    """generate.py's method object with the tiny models handed over (as bench/bench_generate.py does)."""
    target, expert, anti, tok, tch_tok, A = (m.to(dtype) if isinstance(m, torch.nn.Module) else m for m in trio)
    args = GenerateArguments(method=name, alphas=alphas, teacher_model="x", anti_teacher_model="x",
                             steer_vector="v.pt" if name == "steer" else "", **opts)
    m = get_method(name)(args)
    m.target, m.tokenizer = target, tok
    if name == "diff":
        m.expert, m.anti, m.teacher_tok, m.A, m.index = expert, anti, tch_tok, A, None
        m.center = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(6))  # read at context_weight != 1
        if args.diff_space == "logits":
            from detox_pa.fusion import teacher_index

            m.index = teacher_index(tok, tch_tok, target.get_output_embeddings().weight.shape[0])
    elif name == "fusion":
        m.teacher, m.teacher_tok, m.A = expert, tch_tok, A
    elif name == "steer":
        m.vector = torch.randn(32, generator=torch.Generator().manual_seed(4))
    return m


def _both(method, alphas, gc, post=None, prompts=PROMPTS):
    """Today's per-alpha sweep, then the shared one: (old, new, share, old counts, new counts)."""
    seed_of = lambda a: int(a * 100)  # noqa: E731
    tok = method.tokenizer
    old = [x[2] for x in sweep_batch(method, method.target, tok, prompts, alphas, seed_of, gc, CPU, PromptMemo(), post)]
    acted_old, method.acted = method.acted, {}
    share = RowShare()
    new = list(sweep_batch(method, method.target, tok, prompts, alphas, seed_of, gc, CPU, PromptMemo(), post, share))
    assert [a for a, *_ in new] == alphas and [s for _, s, *_ in new] == [seed_of(a) for a in alphas]
    return old, [x[2] for x in new], share, acted_old, method.acted


def _assert_same(old, new, nll_rel=1e-5):
    for o, n in zip(old, new):
        assert n.ids == o.ids and n.texts == o.texts and n.reasons == o.reasons  # token for token
        assert (n.nll is None) == (o.nll is None)
        if o.nll is not None:
            # the same picks' NLL; a row computed in a batch of another shape may round differently in the last bit
            assert [len(x) for x in n.nll] == [len(x) for x in o.nll]
            for x, y in zip(n.nll, o.nll):
                assert x == pytest.approx(y, rel=nll_rel)


def _parting_steps(decoded) -> set[int]:
    """The steps where an alpha's continuation of a prompt first leaves alpha 0's (the shared prefix's length)."""
    steps = set()
    for d in decoded[1:]:
        for x, y in zip(d.ids, decoded[0].ids):
            k = next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
            if k is not None:
                steps.add(k)
    return steps


# name: (method, alphas, options, dtype, how many different steps the alphas part at, at least)
CASES = {
    "diff top-5 (edits the logits)": ("diff", [0.0, 0.5, 1.0, 2.0, 4.0], {"top_k": 5}, torch.float32, 2),
    "diff top-5, bf16": ("diff", [0.0, 0.5, 1.0, 2.0, 4.0], {"top_k": 5}, torch.bfloat16, 2),
    "diff top-5, mean pool": ("diff", [0.0, 0.5, 1.0, 2.0, 4.0], {"top_k": 5, "pool": "mean"}, torch.float32, 2),
    "diff top-5, mean pool, context weight 0.25": ("diff", [0.0, 0.5, 1.0, 2.0, 4.0],
                                                   {"top_k": 5, "pool": "mean", "context_weight": 0.25}, torch.float32, 2),
    "diff top-5, gate": ("diff", [0.0, 1.0, 3.0, 10.0], {"top_k": 5, "gate": 0.0}, torch.float32, 2),
    # the tiny tokenizers share few tokens: the offset reaches few candidates, the alphas part rarely
    "diff logits space, top-5": ("diff", [0.0, 2.0, 6.0, 20.0], {"top_k": 5, "diff_space": "logits"}, torch.float32, 1),
    "diff top_k 0 (edits the hidden state)": ("diff", [0.0, 0.3, 0.6, 1.2], {"top_k": 0}, torch.float32, 2),
    "fusion (the paper's)": ("fusion", [0.0, 0.2, 0.4, 0.8], {}, torch.float32, 2),
    "steer": ("steer", [0.0, 0.05, 0.1, 0.2], {}, torch.float32, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_shared_sweep_gives_each_alpha_what_decoding_it_alone_gives(trio, case):
    name, alphas, opts, dtype, parts = CASES[case]
    method = _method(name, trio, alphas, dtype, **opts)
    post = judge_postprocess(method.target)
    try:
        assert prefix_sharing(method, _gc(method.tokenizer))
        with torch.no_grad():
            old, new, share, acted_old, acted_new = _both(method, alphas, _gc(method.tokenizer), post)
    finally:
        for m in trio[:3]:
            m.float()
    _assert_same(old, new, nll_rel=1e-5 if dtype == torch.float32 else 1e-2)
    assert acted_new == acted_old  # the same rows acted on, per alpha
    assert len(_parting_steps(old)) >= parts  # the alphas part at different steps
    assert 0 < share.computed < share.rows  # rows were shared ...
    assert share.rows == len(alphas) * len(PROMPTS) * (7 - 1)  # ... out of one per prompt, alpha and decode step
    assert not share.disabled
    if name == "diff" and opts["top_k"]:  # the logits are edited after the output layer: it ran once per distinct row
        assert share.head_computed < share.head_rows
    else:  # the output layer's input is edited per alpha: it ran on every row
        assert share.head_computed == share.head_rows


def test_rows_that_end_mid_way_end_as_they_do_alone(trio):
    """Rows stop at an EOS or at another stop token (the pad token: reason "control") at different steps, at some
    alphas and not others. The largest alpha's rows all end early while alpha 0 runs to the end: that alpha is then
    left alone (its counts stop where its own generate() stops) while the others go on."""
    alphas = [0.0, 0.5, 1.0, 2.0, 4.0]
    # last-token states: the stop tokens below are picked from where these tiny models' alphas part with them
    method = _method("diff", trio, alphas, top_k=5, pool="last")
    post = judge_postprocess(method.target)
    tok = method.tokenizer
    with torch.no_grad():
        free = [x[2] for x in sweep_batch(method, method.target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU)]
    # EOS: tokens the largest alpha reaches at steps 1 to 4 that alpha 0 never picks; the pad (a stop token that
    # does not end generate()'s row): one alpha 0 picks at step 3
    never = {t for row in free[0].ids for t in row}
    eos = sorted({t for row in free[-1].ids for t in row[1:5]} - never)
    pad = free[0].ids[1][3]
    assert all(set(row[1:5]) & set(eos) for row in free[-1].ids)
    method.acted = {}
    with torch.no_grad():
        old, new, share, acted_old, acted_new = _both(method, alphas, _gc(tok, eos=eos, pad=pad), post)
    _assert_same(old, new)
    assert acted_new == acted_old
    assert {"eos", "control", "length"} <= {r for d in old for r in d.reasons}
    assert len({len(x) for d in old for x, r in zip(d.ids, d.reasons) if r != "length"}) >= 2  # at different steps
    assert "eos" not in old[0].reasons and all(r == "eos" for r in old[-1].reasons)
    assert acted_old[4.0][1] < acted_old[0.5][1]  # the largest alpha's generate() stopped early, and in the sweep too


def test_the_target_computes_each_distinct_row_once(trio):
    """At every decode step the target computes one row per distinct (prompt, prefix): counted by its layers."""
    alphas = [0.0, 1.0, 2.0, 4.0]
    method = _method("diff", trio, alphas, top_k=5)
    target, tok = method.target, method.tokenizer
    rows = []
    h = target.model.layers[0].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            share = RowShare()
            out = list(sweep_batch(method, target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU, None, None, share))
    finally:
        h.remove()
    prefixes = [len({tuple(d.ids[i][:t]) for _, _, d, _ in out}) for t in range(1, 7) for i in range(len(PROMPTS))]
    assert rows[0] == len(PROMPTS)  # the prompts, once
    assert sum(rows[1:]) == share.computed == sum(prefixes)  # one row per distinct (prompt, prefix) and step
    assert share.rows == len(alphas) * len(PROMPTS) * 6


def test_a_model_that_cannot_share_rows_is_decoded_alpha_by_alpha(trio, monkeypatch, caplog):
    """Where the target cannot share rows (here: its cache refuses to select rows at the first branch), the batch
    is decoded alpha by alpha as before (nothing was yielded yet), the reason is logged once, and the later
    batches do not try again."""
    alphas = [0.0, 1.0, 4.0]
    method = _method("diff", trio, alphas, top_k=5)
    target, tok = method.target, method.tokenizer
    with torch.no_grad():
        ref = [x[2] for x in sweep_batch(method, target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU)]
    real = RowShare.on_backbone
    calls = []

    def refuse(self, kwargs):
        calls.append(1)
        if kwargs["input_ids"].shape[1] == 1 and len(set(kwargs["input_ids"][:, 0].tolist())) > 1:
            raise RowShareUnsupported("test: no row selection")
        return real(self, kwargs)

    monkeypatch.setattr(RowShare, "on_backbone", refuse)
    share = RowShare()
    with torch.no_grad():
        got = [x[2] for x in sweep_batch(method, target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU, None, None,
                                         share)]
        n_calls = len(calls)
        again = [x[2] for x in sweep_batch(method, target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU, None, None,
                                           share)]
    assert share.disabled == "test: no row selection" and "prefix sharing is off" in caplog.text
    assert len(calls) == n_calls  # the second batch did not try
    for d in (got, again):
        assert [x.ids for x in d] == [x.ids for x in ref]
    assert target.model.__dict__.get("forward") is None  # the wrappers are gone
    assert target.get_output_embeddings().__dict__.get("forward") is None


def test_sharing_needs_greedy_decoding_and_a_method_that_acts_at_the_output_layer(trio):
    tok = trio[3]
    assert prefix_sharing(_method("fusion", trio, [0.0, 0.5]), _gc(tok))
    assert not prefix_sharing(_method("diff", trio, [0.0, 1.0]), _gc(tok, do_sample=True, top_p=0.9))
    assert not prefix_sharing(_method("diff", trio, [0.0, 1.0]), _gc(tok, num_beams=2))
    assert not prefix_sharing(_method("wordban", trio, [0.0, 1.0]), _gc(tok))  # a logits processor on every row
    assert not prefix_sharing(_method("topk", trio, [0.0, 1.0], top_k=5), _gc(tok))


def test_a_dispatched_target_shares_rows_and_gets_its_wrappers_back(trio):
    """A target spread with accelerate's device_map (its backbone's and output layer's forwards wrapped at instance
    level) decodes the same, and gets those wrappers back after the sweep."""
    from accelerate import dispatch_model

    target, expert, anti, tok, tch_tok, A = trio
    moved = copy.deepcopy(target)
    dispatch_model(moved, device_map={"model": "cpu", "lm_head": "cpu"}, force_hooks=True)
    wrappers = (moved.model.__dict__.get("forward"), moved.lm_head.__dict__.get("forward"))
    assert all(w is not None for w in wrappers)
    alphas = [0.0, 1.0, 4.0]
    method = _method("diff", (moved, expert, anti, tok, tch_tok, A), alphas, top_k=5)
    ref = _method("diff", trio, alphas, top_k=5)
    with torch.no_grad():
        want = [x[2] for x in sweep_batch(ref, target, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU)]
        share = RowShare()
        got = [x[2] for x in sweep_batch(method, moved, tok, PROMPTS, alphas, lambda a: 0, _gc(tok), CPU, None, None,
                                         share)]
    assert [d.ids for d in got] == [d.ids for d in want] and share.computed < share.rows
    assert (moved.model.__dict__.get("forward"), moved.lm_head.__dict__.get("forward")) == wrappers


# ------------------------------------------------------------------------------ generate.py end to end


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    prompts = [" ".join(s.split()[:k]) for k, s in zip([2, 5, 3, 7, 4, 6, 3], tiny.corpus(7, seed=9))]
    d = tiny.make_generation_assets(tmp_path_factory.mktemp("share"), prompts)
    tiny.make_model_folder(d, "anti", "llama", "bl", seed=5, hidden=24, layers=2)
    return d


def _gen(d, out, *extra):
    from detox_pa import generation
    from detox_pa.cli import run

    argv = ["--method", "diff", "--top_k", "5", "--teacher_model", str(d / "teacher"), "--anti_teacher_model",
            str(d / "anti"), "--target_model", str(d / "target"), "--matrix_A", str(d / "A.pt"), "--data_path",
            str(d / "p.jsonl"), "--output_path", str(out), "--max_new_tokens", "6", "--batch_size", "3", "--alphas",
            "0", "1", "3", "9", *extra]
    return run(generation.run, generation.parse_args, argv)


def test_generate_writes_with_prefix_sharing_what_it_writes_alpha_by_alpha(assets, tmp_path):
    import json

    shared, alone = tmp_path / "shared.json", tmp_path / "alone.json"
    assert _gen(assets, shared) == 0
    assert _gen(assets, alone, "--no_prefix_sharing") == 0
    a, b = json.loads(shared.read_text()), json.loads(alone.read_text())
    assert [x["alpha"] for x in a] == [x["alpha"] for x in b] == [0.0, 1.0, 3.0, 9.0]
    for x, y in zip(a, b):
        for p, q in zip(x["prompt-response pairs"], y["prompt-response pairs"]):
            assert {k: v for k, v in p.items() if k != "continuation_nll"} == \
                {k: v for k, v in q.items() if k != "continuation_nll"}
            assert p["continuation_nll"] == pytest.approx(q["continuation_nll"], rel=1e-5)
    assert a[0]["prompt-response pairs"] != a[-1]["prompt-response pairs"]  # the alphas did part
    meta = json.loads((tmp_path / "shared.meta.json").read_text())
    rec = meta["prefix_sharing"]
    assert 0 < rec["rows_computed"] < rec["rows_asked"] and rec["share"] < 1 and "disabled" not in rec
    assert rec["prompt_rows_computed"] * 4 == rec["prompt_rows_asked"] == 4 * 7  # each prompt once for 4 alphas
    assert "prefix_sharing" not in json.loads((tmp_path / "alone.meta.json").read_text())
    assert meta["recorded_nll"]["alphas"] == [0.0, 1.0, 3.0, 9.0]


def test_a_resumed_shared_sweep_writes_what_an_uninterrupted_one_writes(assets, tmp_path, monkeypatch):
    """Killed between two alphas of a batch (the journal holds some of its alphas), the rerun decodes that batch
    with all its alphas again (the same rows, so the same floats) and writes only the missing ones: the file is
    byte for byte the uninterrupted run's."""
    from detox_pa import generation as G

    ref, out = tmp_path / "ref.json", tmp_path / "out.json"
    assert _gen(assets, ref) == 0
    real_append, calls = G.Journal.append, []

    def flaky(self, records):
        calls.append(1)
        if len(calls) == 7:  # batch 0's four alphas, then two of batch 1's
            raise KeyboardInterrupt
        return real_append(self, records)

    monkeypatch.setattr(G.Journal, "append", flaky)
    assert _gen(assets, out) == 130
    journal = tmp_path / "out.json.journal.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 6 * 3
    monkeypatch.setattr(G.Journal, "append", real_append)
    assert _gen(assets, out) == 0
    assert out.read_bytes() == ref.read_bytes()
