"""Fusion exactness: cached, batched fused generation equals a from-scratch recompute."""

import pytest
import torch

import tiny
from detox_pa.fusion import TeacherStepper, fuse_hidden, fusion, reference_fused_logits

PROMPTS = ["Hello world, the dog", "The cat is", "A very long prompt about the weather today and the river"]


def _pair(target_arch, target_kind, teacher_kind, same_tok=False):
    tgt_tok = tiny.make_tokenizer(target_kind)
    tgt_tok.padding_side = "left"
    tch_tok = tgt_tok if same_tok else tiny.make_tokenizer(teacher_kind, vocab_size=280)
    target = tiny.make_model(target_arch, vocab_size=len(tgt_tok), hidden=32, seed=1, tokenizer=tgt_tok)
    teacher = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    return target, teacher, tgt_tok, tch_tok, A


def _generate(target, tok, prompts, teacher=None, tch_tok=None, A=None, alpha=0.0, sample=True, n=8, bridge="auto"):
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    kw = dict(max_new_tokens=n, do_sample=sample, output_logits=True, return_dict_in_generate=True,
              pad_token_id=tok.pad_token_id)
    if sample:
        kw.update(top_p=0.9, top_k=0)
    with fusion(target, teacher, A, alpha, tok, tch_tok, bridge=bridge) as f:
        out = target.generate(**enc, **kw)
    return enc, out, f


@pytest.mark.parametrize("target_arch,target_kind,teacher_kind,same_tok", [
    ("gemma3", "sp", "bl", False),   # two tokenizer families, like the embedded pair
    ("llama", "bl", "sp", False),
    ("gpt2", "bl", "bl", False),     # same family, different vocabularies
    ("qwen2", "sp", "sp", True),     # same tokenizer: ids fed straight
])
def test_cached_batched_fusion_matches_from_scratch_reference(target_arch, target_kind, teacher_kind, same_tok):
    target, teacher, tok, tch_tok, A = _pair(target_arch, target_kind, teacher_kind, same_tok)
    alpha = 0.5
    enc, out, f = _generate(target, tok, PROMPTS, teacher, tch_tok, A, alpha)
    assert f.stepper.bridge_text is (not same_tok)
    P = enc["input_ids"].shape[1]
    worst = 0.0
    for i in range(len(PROMPTS)):
        real = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        for s in range(len(out.logits)):
            ids = real + out.sequences[i, P:P + s].tolist()
            ref = reference_fused_logits(target, teacher, A, alpha, ids, tok, tch_tok)
            worst = max(worst, (ref - out.logits[s][i]).abs().max().item())
    assert worst < 1e-4
    # and the fusion really changed something
    plain = reference_fused_logits(target, teacher, A, 0.0, enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist())
    assert (plain - out.logits[0][0]).abs().max().item() > 1e-2


def test_teacher_without_its_own_cache_would_be_wrong():
    """The paper's bug: feeding the teacher only the newest token at position 0. Our stepper must not."""
    target, teacher, tok, tch_tok, A = _pair("llama", "bl", "bl", same_tok=True)
    ids = tok("The cat is happy and the dog", return_tensors="pt").input_ids
    st = TeacherStepper(teacher)
    st.reset(1)
    for t in range(1, ids.shape[1] + 1):
        h = st.step([ids[0, :t].tolist()])
    full = teacher.base_model(input_ids=ids).last_hidden_state[0, -1]
    lone = teacher.base_model(input_ids=ids[:, -1:]).last_hidden_state[0, -1]
    assert torch.allclose(h[0], full, atol=1e-5)
    assert (lone - full).abs().max() > 1e-3  # the bug would be visible


def test_alpha_zero_is_plain_generate_and_runs_no_teacher():
    target, teacher, tok, tch_tok, A = _pair("gemma3", "sp", "bl")
    calls = []
    h = teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    enc, fused, f = _generate(target, tok, PROMPTS, teacher, tch_tok, A, alpha=0.0)
    h.remove()
    assert f is None and calls == []
    torch.manual_seed(0)
    plain = target.generate(**enc, max_new_tokens=8, do_sample=True, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)
    assert torch.equal(fused.sequences, plain)


def test_hooks_are_removed_on_exit_even_after_an_error():
    target, teacher, tok, tch_tok, A = _pair("gemma3", "sp", "bl")
    head = target.get_output_embeddings()
    assert not target._forward_pre_hooks and not head._forward_pre_hooks
    with fusion(target, teacher, A, 0.3, tok, tch_tok):
        assert len(target._forward_pre_hooks) == 1 and len(head._forward_pre_hooks) == 1
    assert not target._forward_pre_hooks and not head._forward_pre_hooks
    with pytest.raises(RuntimeError):
        with fusion(target, teacher, A, 0.3, tok, tch_tok):
            raise RuntimeError("boom")
    assert not target._forward_pre_hooks and not head._forward_pre_hooks


def test_padding_does_not_change_greedy_fused_output():
    target, teacher, tok, tch_tok, A = _pair("gemma3", "sp", "bl")
    short = "The cat is"
    _, alone, _ = _generate(target, tok, [short], teacher, tch_tok, A, 0.4, sample=False)
    enc, batch, _ = _generate(target, tok, [PROMPTS[2], short, PROMPTS[0]], teacher, tch_tok, A, 0.4, sample=False)
    n_alone = alone.sequences.shape[1] - 8
    assert alone.sequences[0, n_alone:].tolist() == batch.sequences[1, -8:].tolist()


def test_fuse_hidden_formula_and_dtype():
    g = torch.Generator().manual_seed(0)
    h_t, h_teacher, A = torch.randn(3, 8, generator=g), torch.randn(3, 5, generator=g), torch.randn(5, 8, generator=g)
    m = h_teacher @ A
    ln = (m - m.mean(-1, keepdim=True)) / torch.sqrt(m.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(fuse_hidden(h_t, h_teacher, A, 0.3), 0.3 * ln + 0.7 * h_t, atol=1e-5)
    out = fuse_hidden(h_t.bfloat16(), h_teacher.bfloat16(), A, 0.3)
    assert out.dtype == torch.bfloat16
    r = fuse_hidden(h_t, h_teacher, A, 1.0, norm="rescale")
    assert torch.allclose(r.norm(dim=-1), h_t.norm(dim=-1), atol=1e-4)


def test_bf16_models_fuse_without_error():
    target, teacher, tok, tch_tok, A = _pair("llama", "bl", "sp")
    target, teacher = target.to(torch.bfloat16), teacher.to(torch.bfloat16)
    enc, out, _ = _generate(target, tok, PROMPTS[:2], teacher, tch_tok, A, 0.5, sample=False, n=4)
    assert out.sequences.shape[1] == enc["input_ids"].shape[1] + 4


def test_wrong_matrix_shape_is_refused():
    target, teacher, tok, tch_tok, _ = _pair("llama", "bl", "sp")
    with pytest.raises(ValueError, match="expected"):
        with fusion(target, teacher, torch.zeros(32, 24), 0.5, tok, tch_tok):
            pass
