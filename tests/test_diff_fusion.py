"""Expert-minus-anti-expert fusion: cached, batched logits equal a from-scratch recompute; the
plausibility constraint and the risk gate do what they say, on hand-made numbers too."""

import pytest
import torch

import tiny
from detox_pa.fusion import (DiffConfig, DiffFuser, center_threshold, check_diff_config, difference_fusion,
                             reference_diff_logits, split_offset)

PROMPTS = ["Hello world, the dog", "The cat is", "A very long prompt about the weather today and the river"]


def _trio(target_arch, target_kind, teacher_kind, same_tok=False):
    tgt_tok = tiny.make_tokenizer(target_kind)
    tgt_tok.padding_side = "left"
    tch_tok = tgt_tok if same_tok else tiny.make_tokenizer(teacher_kind, vocab_size=280)
    target = tiny.make_model(target_arch, vocab_size=len(tgt_tok), hidden=32, seed=1, tokenizer=tgt_tok)
    expert = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    anti = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=5, tokenizer=tch_tok)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    return target, expert, anti, tgt_tok, tch_tok, A


CENTER = torch.randn(24, generator=torch.Generator().manual_seed(4))  # a pair's center (read when context_weight != 1)


def _run(target, tok, prompts, expert, anti, tch_tok, A, cfg, sample=True, n=8):
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    kw = dict(max_new_tokens=n, do_sample=sample, output_logits=True, return_dict_in_generate=True,
              pad_token_id=tok.pad_token_id)
    if sample:
        kw.update(top_p=0.9, top_k=0)
    with difference_fusion(target, expert, anti, cfg, A, tok, tch_tok, center=CENTER) as f:
        out = target.generate(**enc, **kw)
    return enc, out, f


CONFIGS = {
    "hidden, no top-k, no gate (pre-hook path)": DiffConfig(alpha=2.0, space="hidden", top_k=0),
    "hidden, top-5": DiffConfig(alpha=2.0, space="hidden", top_k=5),
    "hidden, top-5, gate": DiffConfig(alpha=2.0, space="hidden", top_k=5, gate=0.0),
    "logits, no top-k": DiffConfig(alpha=1.5, space="logits", top_k=0),
    "logits, top-5, gate": DiffConfig(alpha=1.5, space="logits", top_k=5, gate=0.0),
    # each teacher's mean state over the text so far: with two tokenizers the teacher's tokenisation of the text
    # changes as it grows, so the mean must leave out the cache columns the stepper masked (a stale token's state
    # would shift it)
    "hidden, top-5, mean pool": DiffConfig(alpha=2.0, space="hidden", top_k=5, pool="mean"),
    "hidden, no top-k, mean pool (pre-hook path)": DiffConfig(alpha=2.0, space="hidden", top_k=0, pool="mean"),
    # the difference shrunk toward the pair's center: partly (top-k path) and wholly (a constant, pre-hook path)
    "hidden, top-5, mean pool, context weight 0.25": DiffConfig(alpha=2.0, top_k=5, pool="mean", context_weight=0.25),
    "hidden, no top-k, context weight 0 (pre-hook path)": DiffConfig(alpha=2.0, top_k=0, context_weight=0.0),
    # the offset read against the center's threshold: what it would promote scaled down (top-k path), demote only
    # (every token eligible: no longer the pre-hook path, since the split is not linear in the hidden state)
    "hidden, top-5, mean pool, context weight 0.25, promote weight 0.25":
        DiffConfig(alpha=2.0, top_k=5, pool="mean", context_weight=0.25, promote_weight=0.25),
    "hidden, no top-k, promote weight 0, threshold at the mean":
        DiffConfig(alpha=2.0, top_k=0, promote_weight=0.0, demote_z=0.0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("target_arch,target_kind,teacher_kind,same_tok", [
    ("gemma3", "sp", "bl", False),   # two tokenizer families, like the embedded pair
    ("qwen2", "bl", "bl", True),     # same tokenizer: ids fed straight
])
def test_cached_batched_difference_matches_from_scratch(name, target_arch, target_kind, teacher_kind, same_tok):
    cfg = CONFIGS[name]
    target, expert, anti, tok, tch_tok, A = _trio(target_arch, target_kind, teacher_kind, same_tok)
    enc, out, f = _run(target, tok, PROMPTS, expert, anti, tch_tok, A, cfg)
    P = enc["input_ids"].shape[1]
    worst, changed = 0.0, 0
    for i in range(len(PROMPTS)):
        real = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        for s in range(len(out.logits)):
            ids = real + out.sequences[i, P:P + s].tolist()
            ref = reference_diff_logits(target, expert, anti, cfg, ids, A, tok, tch_tok, center=CENTER)
            got = out.logits[s][i].float()
            fin = torch.isfinite(ref)
            assert torch.equal(fin, torch.isfinite(got)), "the eligible tokens differ"
            worst = max(worst, (ref[fin] - got[fin]).abs().max().item())
            plain = reference_diff_logits(target, expert, anti, DiffConfig(alpha=0.0), ids)
            changed += int(not torch.allclose(plain, got, atol=1e-3, equal_nan=False))
    assert worst < 1e-4
    assert changed > 0  # the fusion really changed something
    assert f.rows_seen == len(PROMPTS) * len(out.logits)
    if cfg.gate is not None:
        assert f.acted < f.rows_seen  # the gate held back on some steps


def test_mean_pool_is_not_the_last_token():
    """The pooled and the last-token offsets differ (the pool is not silently ignored), and the from-scratch
    reference pools over every position of the teacher's text."""
    target, expert, anti, tok, tch_tok, A = _trio("gemma3", "sp", "bl")
    ids = tok("A very long prompt about the weather")["input_ids"]
    last = reference_diff_logits(target, expert, anti, DiffConfig(alpha=2.0, top_k=0), ids, A, tok, tch_tok)
    mean = reference_diff_logits(target, expert, anti, DiffConfig(alpha=2.0, top_k=0, pool="mean"), ids, A, tok, tch_tok)
    assert (last - mean).abs().max() > 1e-2
    with pytest.raises(ValueError, match="pool"):
        with difference_fusion(target, expert, anti, DiffConfig(alpha=1.0, pool="max"), A, tok, tch_tok):
            pass


def test_context_weight_shrinks_toward_the_center():
    """context_weight w reads c + w (d - c): at 0 the offset is the constant W (c A) whatever the text, at 1 the
    center is not read at all, in between it is the line between them; a shrunk run without a center, or with the
    logits space or a gate, is refused."""
    target, expert, anti, tok, tch_tok, A = _trio("gemma3", "sp", "bl")
    W = target.get_output_embeddings().weight.float()

    def offset(w, text, center=CENTER):
        ids = tok(text)["input_ids"]
        cfg = DiffConfig(alpha=1.0, top_k=0, pool="mean", context_weight=w)
        return (reference_diff_logits(target, expert, anti, cfg, ids, A, tok, tch_tok, center=center)
                - reference_diff_logits(target, expert, anti, DiffConfig(alpha=0.0), ids))

    const = W @ (CENTER @ A)
    for text in PROMPTS:
        assert torch.allclose(offset(0.0, text), const, atol=1e-4)
        full = offset(1.0, text, center=None)
        assert (full - const).abs().max() > 1e-2  # the text's own difference is not the center
        assert torch.allclose(offset(0.25, text), const + 0.25 * (full - const), atol=1e-4)
    with pytest.raises(ValueError, match="center"):
        with difference_fusion(target, expert, anti, DiffConfig(alpha=1.0, context_weight=0.5), A, tok, tch_tok):
            pass
    for bad in (DiffConfig(alpha=1.0, space="logits", context_weight=0.5),
                DiffConfig(alpha=1.0, gate=0.0, context_weight=0.5), DiffConfig(alpha=1.0, context_weight=-1.0)):
        with pytest.raises(ValueError, match="context_weight"):
            with difference_fusion(target, expert, anti, bad, A, tok, tch_tok, center=CENTER):
                pass


def test_alpha_zero_installs_nothing():
    target, expert, anti, tok, tch_tok, A = _trio("gemma3", "sp", "bl")
    head = target.get_output_embeddings()
    enc, out, f = _run(target, tok, PROMPTS, expert, anti, tch_tok, A, DiffConfig(alpha=0.0))
    assert f is None
    torch.manual_seed(0)
    plain = target.generate(**enc, max_new_tokens=8, do_sample=True, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)
    assert torch.equal(out.sequences, plain)
    assert not head._forward_hooks and not head._forward_pre_hooks and not target._forward_pre_hooks


def test_hooks_are_removed_after_an_error():
    target, expert, anti, tok, tch_tok, A = _trio("llama", "bl", "sp")
    head = target.get_output_embeddings()
    with pytest.raises(RuntimeError):
        with difference_fusion(target, expert, anti, DiffConfig(alpha=1.0, top_k=3), A, tok, tch_tok):
            assert len(head._forward_hooks) == 1
            raise RuntimeError("boom")
    assert not head._forward_hooks and not head._forward_pre_hooks and not target._forward_pre_hooks


class _Head:
    def __init__(self, W):
        self.weight = W


def _fuser(cfg, W, A):
    f = DiffFuser.__new__(DiffFuser)
    f.cfg, f.out_layer, f.A, f.heads, f.index, f.acted, f.rows_seen = cfg, _Head(W), A, None, None, 0, 0
    f.center, f.tau = None, None
    return f


def test_promote_weight_splits_the_offset_at_the_centers_threshold():
    """promote_weight lam reads each token's offset o against tau (the center's logit bias, its mean plus demote_z
    standard deviations over the vocabulary): min(o - tau, 0) + lam max(o - tau, 0). Hand-made numbers: the
    bias W (c A) = [2, -1, 1, -2] (mean 0, std 1.826); the offset [-2, 2, 0, 2] as in the test below."""
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    A = torch.eye(2)
    center = torch.tensor([2.0, -1.0])
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    h_e, h_a = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    std = torch.tensor([2.0, -1.0, 1.0, -2.0]).std().item()

    def fuse(cfg):
        f = _fuser(cfg, W, A)
        f.center = center
        f.tau = center_threshold(center, A, W, cfg.demote_z)
        return f.fuse_logits(z, h_e, h_a)

    assert abs(center_threshold(center, A, W, -0.5) - (-0.5 * std)) < 1e-6
    # tau 0, demote only: [-2, 0, 0, 0]; lam 0.5: [-2, 1, 0, 1]
    assert torch.allclose(fuse(DiffConfig(alpha=1.0, top_k=0, promote_weight=0.0, demote_z=0.0)),
                          z + torch.tensor([[-2.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(fuse(DiffConfig(alpha=1.0, top_k=0, promote_weight=0.5, demote_z=0.0)),
                          z + torch.tensor([[-2.0, 1.0, 0.0, 1.0]]))
    # tau = 1 * std = 1.826: o - tau = [-3.826, 0.174, -1.826, 0.174]; demote only keeps the two below
    t = std
    assert torch.allclose(fuse(DiffConfig(alpha=2.0, top_k=0, promote_weight=0.0, demote_z=1.0)),
                          z + 2.0 * torch.tensor([[-2.0 - t, 0.0, -t, 0.0]]), atol=1e-6)
    # lam 1 is the offset itself up to a constant: every softmax and argmax the same as the plain offset's
    plain = _fuser(DiffConfig(alpha=1.0, top_k=2), W, A).fuse_logits(z, h_e, h_a)
    assert torch.equal(split_offset(torch.tensor([1.0, -1.0]), 0.3, 1.0), torch.tensor([0.7, -1.3]))
    assert torch.allclose(torch.log_softmax(plain[0, :2], 0),
                          torch.log_softmax((z + torch.tensor([[-2.0, 2.0, 0.0, 2.0]]))[0, :2], 0))
    # the greedy effect: demote only, the target's pick 0 (offset -2, below tau) loses to its runner-up 1; a token
    # the pair promotes (3, offset +2) is not lifted past a clean runner-up, unlike with the plain offset
    d0 = fuse(DiffConfig(alpha=3.0, top_k=0, promote_weight=0.0, demote_z=0.0))
    assert int(d0.argmax()) == 1 and d0[0, 3] == z[0, 3]
    for bad in (DiffConfig(alpha=1.0, space="logits", promote_weight=0.5), DiffConfig(alpha=1.0, gate=0.0, promote_weight=0.5),
                DiffConfig(alpha=1.0, promote_weight=-1.0), DiffConfig(alpha=1.0, promote_weight=0.5, demote_z=float("nan"))):
        with pytest.raises(ValueError, match="promote_weight"):
            check_diff_config(bad)
    target, expert, anti, tok, tch_tok, A2 = _trio("gemma3", "sp", "bl")
    with pytest.raises(ValueError, match="promote_weight != 1 needs the pair's center"):
        with difference_fusion(target, expert, anti, DiffConfig(alpha=1.0, promote_weight=0.5), A2, tok, tch_tok):
            pass


def test_plausibility_and_gate_on_hand_made_numbers():
    # 4 target tokens in a 2-d space, A = identity: the teachers' scores are W h
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    A = torch.eye(2)
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]])       # the target prefers token 0, then 1, 2, 3
    h_e = torch.tensor([[0.0, 2.0]])                 # the expert likes token 1 and 2
    h_a = torch.tensor([[2.0, 0.0]])                 # the anti-expert likes token 0
    # offset = W (h_e - h_a) = [-2, 2, 0, 2]
    full = _fuser(DiffConfig(alpha=1.0, top_k=0), W, A).fuse_logits(z, h_e, h_a)
    assert torch.allclose(full, torch.tensor([[1.0, 4.0, 1.0, 2.0]]))
    top2 = _fuser(DiffConfig(alpha=1.0, top_k=2), W, A).fuse_logits(z, h_e, h_a)
    assert top2[0, :2].tolist() == [1.0, 4.0] and torch.isinf(top2[0, 2:]).all()  # token 3 (+2) is not eligible
    # the gate: over the top-2, log p_a(pick=0) - log p_e(pick=0) = log sigmoid(2) - log sigmoid(-2) = 2
    f = _fuser(DiffConfig(alpha=1.0, top_k=2, gate=1.9), W, A)
    assert torch.equal(f.fuse_logits(z, h_e, h_a), top2) and f.acted == 1
    f = _fuser(DiffConfig(alpha=1.0, top_k=2, gate=2.1), W, A)
    assert torch.equal(f.fuse_logits(z, h_e, h_a), z) and f.acted == 0 and f.rows_seen == 1


def test_decoding_a_pair_with_another_pool_than_it_was_tuned_with_is_said(tmp_path, caplog):
    import json
    import logging

    from detox_pa.generation import GenerateArguments
    from detox_pa.methods import get_method

    side = tmp_path / "mapping_model.json"
    m = get_method("diff")(GenerateArguments(method="diff", pool="last"))
    side.write_text(json.dumps({"tuned_pair": {"expert": "expert"}, "arguments": {"tune_pool": "mean"}}))
    with caplog.at_level(logging.WARNING, logger="detox_pa.methods"):
        assert m.note_tuned_pool(str(tmp_path / "mapping_model.pt")) == "mean"
    assert "--tune_pool mean" in caplog.text and "--pool last" in caplog.text
    caplog.clear()
    side.write_text(json.dumps({"tuned_pair": {"expert": "expert"}, "arguments": {}}))  # tuned before --tune_pool
    with caplog.at_level(logging.WARNING, logger="detox_pa.methods"):
        assert m.note_tuned_pool(str(tmp_path / "mapping_model.pt")) == "last"
    assert caplog.text == ""
    side.write_text(json.dumps({"arguments": {"tune_pool": "mean"}}))  # no tuned pair: nothing to say
    assert m.note_tuned_pool(str(tmp_path / "mapping_model.pt")) is None
