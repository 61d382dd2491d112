"""Training the pair through the fusion (detox_pa.directed): the teacher-forced states equal the target's own
from-scratch logits, the loss equals its formula on hand-made numbers, training recovers a planted direction,
and the direction metric reads what it says."""

import math

import pytest
import torch

import tiny
from detox_pa.directed import (DirectedConfig, StateSet, candidate_offsets, direction_metrics, directed_loss,
                               label_candidates, pair_offsets, target_states, teacher_view, token_surfaces, train_pair)

TEXTS = [("Hello world, the dog", " is a good dog and the cat is nice."), ("The cat is", " happy today, the weather is warm."),
         ("A very long prompt about the weather", " today and the river is calm"), ("She said", " you stupid idiot fool")]


@pytest.fixture(scope="module")
def trio():
    tgt_tok = tiny.make_tokenizer("sp")
    tch_tok = tiny.make_tokenizer("bl", vocab_size=280)
    target = tiny.make_model("gemma3", vocab_size=len(tgt_tok), hidden=32, seed=1, tokenizer=tgt_tok)
    expert = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    anti = tiny.make_model("llama", vocab_size=len(tch_tok), hidden=24, layers=2, seed=2, tokenizer=tch_tok)
    return target, expert, anti, tgt_tok, tch_tok


def test_states_are_the_targets_own_next_token_logits(trio):
    target, _, _, tok, _ = trio
    st = target_states(target, tok, TEXTS, k=5, batch_size=3, progress=False)
    assert len(st) > 20 and st.cand.shape == (len(st), 6)
    for s in range(len(st)):
        p, c = TEXTS[int(st.text_of[s])]
        full = p + c
        e = int(st.char_end[s])
        assert len(p) <= e < len(full) + 1
        enc = tok(full, return_offsets_mapping=True)
        i = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if b == e and b > a][-1]
        with torch.no_grad():
            z = target(input_ids=torch.tensor([enc["input_ids"][:i + 1]])).logits[0, -1].float()
        top = z.topk(5)
        assert st.cand[s, :5].tolist() == top.indices.tolist()
        assert torch.allclose(st.z[s, :5], top.values, atol=1e-4)
        nxt = enc["input_ids"][i + 1]
        assert int(st.cand[s, int(st.next_col[s])]) == nxt
        assert math.isclose(float(st.z[s, int(st.next_col[s])]), float(z[nxt]), abs_tol=1e-4)
        if nxt in top.indices.tolist():
            assert int(st.cand[s, 5]) == -1 and st.z[s, 5] == float("-inf")


def test_loss_equals_its_formula_on_hand_made_numbers():
    z = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, float("-inf")]])
    off = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 0.0]])
    toxic = torch.tensor([[False, True, False], [False, False, False]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss, parts = directed_loss(z, off, toxic, valid, alpha=2.0, mu=4.0)
    zf0 = torch.tensor([3.0, -1.0, 4.0])
    p0 = torch.softmax(zf0, 0)
    ul = -math.log(1 - float(p0[1]))
    pt0, pt1 = torch.softmax(z[0], 0), torch.softmax(torch.tensor([1.0, 1.0]), 0)
    pf1 = torch.softmax(torch.tensor([1.0, 7.0]), 0)
    kl0 = float((pt0 * (pt0.log() - p0.log())).sum())
    kl1 = float((pt1 * (pt1.log() - pf1.log())).sum())
    assert parts["toxic_states"] == 1
    assert math.isclose(float(loss), ul + 4.0 * (kl0 + kl1) / 2, rel_tol=1e-5)


def test_candidate_offsets_read_the_output_rows():
    W = torch.randn(7, 4)
    d = torch.randn(2, 4)
    cand = torch.tensor([[3, 0, -1], [6, 2, 1]])
    off = candidate_offsets(d, W, cand)
    assert torch.allclose(off[0, :2], W[[3, 0]] @ d[0]) and off[0, 2] == 0
    assert torch.allclose(off[1], W[[6, 2, 1]] @ d[1])


def test_direction_metric_on_planted_offsets():
    torch.manual_seed(0)
    S, k = 400, 10
    cand = torch.arange(S * (k + 1)).reshape(S, k + 1) % 50
    z = torch.sort(torch.randn(S, k + 1), 1, descending=True).values
    toxic = torch.rand(S, k + 1) < 0.15
    st = StateSet([("p", "c")], torch.zeros(S, dtype=torch.long), torch.zeros(S, dtype=torch.long), cand, z,
                  torch.zeros(S, dtype=torch.long), k, toxic=toxic)
    perfect = torch.where(toxic, -1.0, 1.0) + 0.01 * torch.randn(S, k + 1)
    m = direction_metrics(st, perfect)
    assert m["auc"] > 0.99 and m["d_prime"] > 10
    assert m["flips"]["10%"] > 0.9  # every toxic pick flips before 10% of the others do
    noise = torch.randn(S, k + 1)
    m0 = direction_metrics(st, noise)
    assert 0.4 < m0["auc"] < 0.6 and abs(m0["d_prime"]) < 0.3
    wrong = -perfect
    assert direction_metrics(st, wrong)["auc"] < 0.01


def test_labels_word_list_and_score_jump(trio):
    target, _, _, tok, _ = trio
    st = target_states(target, tok, TEXTS, k=5, progress=False)
    idiot = tok(" idiot", add_special_tokens=False)["input_ids"]
    assert len(idiot) == 1
    lab = label_candidates(st, tok, word_ids={idiot[0]})
    assert bool((lab == (st.cand == idiot[0])).all())
    surf = token_surfaces(tok, [idiot[0]])
    assert surf[idiot[0]] == " idiot"
    # a scorer that fires on "fool": the jump label marks exactly the candidates whose text adds it
    fool = set(tok(" fool", add_special_tokens=False)["input_ids"])
    lab2 = label_candidates(st, tok, word_ids=set(), scorer=lambda ts: [1.0 if "fool" in t else 0.0 for t in ts])
    so_far_has = torch.tensor([("fool" in (p + c)[len(p):int(e)]) for (p, c), e in
                               zip([TEXTS[int(t)] for t in st.text_of], st.char_end)])
    want = torch.isin(st.cand, torch.tensor(sorted(fool))) & ~so_far_has[:, None] if len(fool) == 1 else None
    if want is not None:
        assert bool((lab2 == want).all())


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_training_recovers_a_planted_direction(trio, pool):
    """Toxic = a fixed set of target tokens. Before training the pair (two copies of one model) gives no
    offset at all; after training through the fusion its offset ranks the planted tokens below the others
    (``pool="mean"``: the offset reads each teacher's mean state over the text so far, as decoding's --pool mean)."""
    target, expert, anti, tok, ttok = trio
    texts = [(p, c) for p, c in TEXTS] * 3
    st = target_states(target, tok, texts, k=8, progress=False)
    planted = set(torch.unique(st.cand[st.cand >= 0])[::4].tolist())
    st.toxic = label_candidates(st, tok, word_ids=planted)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    W = target.get_output_embeddings().weight.detach()
    e, a = [type(m)(m.config) for m in (expert, anti)]
    e.load_state_dict(expert.state_dict())
    a.load_state_dict(expert.state_dict())  # identical: the offset starts at exactly 0
    off0, ok = pair_offsets(e, a, ttok, A, W, st)
    assert float(off0.abs().max()) == 0.0
    emb_before = e.get_input_embeddings().weight.clone()
    A2, rep = train_pair(e, a, ttok, A, W, st, DirectedConfig(epochs=40, batch_texts=6, lr=3e-3, lr_A=1e-3,
                                                              mu=1.0, pool=pool, progress=False))
    assert rep["toxic_states"] > 0 and rep["loss_per_tenth"][-1]["ul"] < rep["loss_per_tenth"][0]["ul"]
    assert torch.equal(e.get_input_embeddings().weight, emb_before)  # the shared embeddings stay frozen
    assert not torch.equal(A2, A)
    off, ok = pair_offsets(e, a, ttok, A2, W, st, pool=pool)
    m = direction_metrics(st, off, ok, top_k=5)
    assert m["auc"] > 0.9, m
    # A frozen (lr_A = 0) keeps A exactly
    A3, _ = train_pair(e, a, ttok, A, W, st, DirectedConfig(epochs=1, batch_texts=6, lr_A=0.0, progress=False))
    assert torch.equal(A3, A)


def test_mean_pooled_offsets_are_the_mean_state_over_the_text_so_far(trio):
    """pair_offsets(pool="mean") at a state = W[cand] . ((mean h_e - mean h_a) A), the means over the teacher's
    tokens of the text up to the state's token, each text recomputed alone (no padding)."""
    target, expert, anti, tok, ttok = trio
    st = target_states(target, tok, TEXTS, k=4, progress=False)
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    W = target.get_output_embeddings().weight.detach()
    a2 = type(anti)(anti.config)
    a2.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in anti.state_dict().items()})
    off, ok = pair_offsets(expert, a2, ttok, A, W, st, batch_texts=3, pool="mean")
    last, _ = pair_offsets(expert, a2, ttok, A, W, st, batch_texts=3)
    view = teacher_view(ttok, st)
    checked = 0
    with torch.no_grad():
        for s in ok.nonzero().flatten().tolist():
            ids = torch.tensor([view.ids[int(st.text_of[s])][:int(view.pos[s]) + 1]])
            h = expert.model(input_ids=ids).last_hidden_state[0] - a2.model(input_ids=ids).last_hidden_state[0]
            ref = candidate_offsets((h.mean(0) @ A)[None], W, st.cand[s:s + 1])[0]
            assert torch.allclose(off[s], ref, atol=1e-4)
            checked += 1
    assert checked > 20
    assert (off - last).abs().max() > 1e-3  # pooling changed the offsets


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_pair_center_is_the_mean_difference_over_every_state(trio, pool):
    """pair_center = the mean over the states with a teacher token of h_e - h_a (pooled as ``pool``), each text
    recomputed alone; batching does not change it."""
    from detox_pa.directed import pair_center

    target, expert, anti, tok, ttok = trio
    st = target_states(target, tok, TEXTS, k=4, progress=False)
    a2 = type(anti)(anti.config)
    a2.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in anti.state_dict().items()})
    c = pair_center(expert, a2, ttok, st, pool=pool, batch_texts=3)
    assert torch.allclose(c, pair_center(expert, a2, ttok, st, pool=pool, batch_texts=64), atol=1e-6)
    view = teacher_view(ttok, st)
    rows = []
    with torch.no_grad():
        for s in (view.pos >= 0).nonzero().flatten().tolist():
            ids = torch.tensor([view.ids[int(st.text_of[s])][:int(view.pos[s]) + 1]])
            h = expert.model(input_ids=ids).last_hidden_state[0] - a2.model(input_ids=ids).last_hidden_state[0]
            rows.append(h.mean(0) if pool == "mean" else h[-1])
    assert len(rows) > 20
    assert torch.allclose(c, torch.stack(rows).mean(0), atol=1e-5)
    # the offsets decoding's --context_weight reads: c + w (d - c); at 0 the center's own offsets at every state
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    W = target.get_output_embeddings().weight.detach()
    full, ok = pair_offsets(expert, a2, ttok, A, W, st, pool=pool)
    const, _ = pair_offsets(expert, a2, ttok, A, W, st, pool=pool, center=c, context_weight=0.0)
    half, _ = pair_offsets(expert, a2, ttok, A, W, st, pool=pool, center=c, context_weight=0.5)
    assert torch.allclose(const[ok], candidate_offsets((c @ A)[None].expand(int(ok.sum()), -1), W, st.cand[ok]),
                          atol=1e-4)
    assert torch.allclose(half, (full + const) / 2, atol=1e-4) and (full - const).abs().max() > 1e-2
    with pytest.raises(ValueError, match="center"):
        pair_offsets(expert, a2, ttok, A, W, st, context_weight=0.5)


def test_teacher_view_reads_the_teacher_token_ending_where_the_target_prefix_ends(trio):
    target, _, _, tok, ttok = trio
    st = target_states(target, tok, TEXTS, k=3, progress=False)
    view = teacher_view(ttok, st)
    assert (view.pos >= 0).float().mean() > 0.5
    for s in (view.pos >= 0).nonzero().flatten().tolist():
        p, c = TEXTS[int(st.text_of[s])]
        enc = ttok(p + c, return_offsets_mapping=True)
        assert enc["offset_mapping"][int(view.pos[s])][1] == int(st.char_end[s])


def _tiny_tune_setup(tmp_path, monkeypatch):
    """Tiny teacher, anti-expert and target folders, a teacher-data TSV, and align.py --tune_pair arguments."""
    monkeypatch.setenv("DETOX_PA_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "m"
    ttok = tiny.make_tokenizer("bl", vocab_size=280)
    teacher = tiny.make_model("llama", vocab_size=len(ttok), hidden=24, layers=2, seed=2, tokenizer=ttok,
                              folder=d / "teacher")
    tiny.make_model("llama", vocab_size=len(ttok), hidden=24, layers=2, seed=2, tokenizer=ttok, folder=d / "anti")
    tok = tiny.make_tokenizer("sp")
    tiny.make_model("gemma3", vocab_size=len(tok), hidden=32, seed=1, tokenizer=tok, folder=d / "target")
    rows = ["vanilla\tadversarial\tcompletion"] + [f"{p}\t\t{c}" for p, c in TEXTS * 4]
    (d / "td.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "align"
    argv = ["--model1_name", str(d / "teacher"), "--also_teacher", str(d / "anti"), "--model2_name", str(d / "target"),
            "--output_dir", str(out), "--progress", "false", "--text_path", str(d / "td.tsv"), "--refine_steps", "5",
            "--tune_text_path", str(d / "td.tsv"),
            "--tune_pair", "true", "--tune_label_scorer", "none", "--tune_epochs", "2", "--tune_batch_texts", "4"]
    return d, out, argv, teacher


def test_tune_label_texts_reaches_the_labels_and_needs_a_scorer(tmp_path, monkeypatch):
    """--tune_label_texts true is passed to label_candidates as toxic_texts (the default passes False); without a
    scorer it stops at the arguments."""
    from detox_pa import alignment, directed
    from detox_pa.cli import run

    d, out, argv, _ = _tiny_tune_setup(tmp_path, monkeypatch)
    seen = []

    class Stop(Exception):
        pass

    def spy(*a, **kw):
        seen.append(kw.get("toxic_texts"))
        raise Stop

    monkeypatch.setattr(directed, "label_candidates", spy)
    argv = [x if x != "none" else "profanity-check" for x in argv]
    for flag, want in (([], False), (["--tune_label_texts", "true"], True)):
        with pytest.raises(Stop):
            alignment.run(alignment.parse_args(argv + flag))
        assert seen[-1] is want
    assert run(alignment.run, alignment.parse_args,
               [x if x != "profanity-check" else "none" for x in argv] + ["--tune_label_texts", "true"]) == 2


def test_align_tune_pair_writes_the_tuned_pair_and_a_matrix_that_names_it(tmp_path, monkeypatch):
    """align.py --tune_pair end to end on tiny folders: the tuned expert and anti-expert are loadable teacher
    folders (sidecar last) inside the alignment folder, the matrix's sidecar names them, the direction on
    held-out texts is recorded before and after, and the target states come from the cache the second time."""
    import json

    from detox_pa import alignment
    from detox_pa.artifacts import TEACHER_SIDECAR
    from detox_pa.cli import run

    d, out, argv, teacher = _tiny_tune_setup(tmp_path, monkeypatch)
    assert run(alignment.run, alignment.parse_args, argv) == 0
    side = json.loads((out / "mapping_model.json").read_text())
    tp = side["tuned_pair"]
    assert tp["expert"] == "expert" and tp["anti_expert"] == "anti_expert"  # next to the matrix
    from types import SimpleNamespace

    from detox_pa.methods import resolve_teachers
    ns = SimpleNamespace(teacher_model="", anti_teacher_model="", matrix_A=str(out / "mapping_model.pt"))
    assert resolve_teachers(ns, need_anti=True) == (str(out / "expert"), str(out / "anti_expert"))
    with pytest.raises(Exception, match="name both teachers"):
        resolve_teachers(SimpleNamespace(teacher_model=str(d / "teacher"), anti_teacher_model="",
                                         matrix_A=str(out / "mapping_model.pt")), need_anti=True)
    for name in ("expert", "anti_expert"):
        t_side = json.loads((out / name / TEACHER_SIDECAR).read_text())
        assert t_side["tuned"]["stage"].startswith("tune_pair")
        assert not (out / name / ".final.tmp").exists()
    rep = side["metrics"]["tune_pair"]
    assert rep["texts_heldout"] >= 1 and rep["training"]["steps"] >= 1
    assert "auc" in rep["direction_heldout_after"] or rep["direction_heldout_after"]["states_both"] == 0
    # with the pair tuned, the transmission is measured after tuning only (what decoding reads) unless asked
    after = side["metrics"]["transmission_after_tuning"]
    assert set(after) == {"teacher", "also_teacher"} and after["teacher"]["none"]["states"] > 0
    assert "teacher" not in side["metrics"]["transmission"] and "after tuning only" in side["metrics"]["transmission"]["measured"]
    # the pair's center (decoding's --context_weight) is stored beside A, which the paper's reader still finds
    blob = torch.load(out / "mapping_model.pt")
    from detox_pa.artifacts import load_center, load_matrix
    assert torch.equal(blob["mapping"], load_matrix(out / "mapping_model.pt"))
    assert blob["center"].shape == (blob["mapping"].shape[0],) and torch.isfinite(blob["center"]).all()
    assert torch.equal(load_center(out / "mapping_model.pt", blob["mapping"].shape[0]), blob["center"])
    assert rep["center"]["states"] == rep["states"] and rep["center"]["pool"] == "mean"
    with pytest.raises(Exception, match="holds no 'center'"):
        torch.save({"mapping": blob["mapping"]}, tmp_path / "no_center.pt")
        load_center(tmp_path / "no_center.pt", blob["mapping"].shape[0])
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(out / "anti_expert")
    assert not torch.equal(tuned.model.layers[0].self_attn.q_proj.weight, teacher.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(tuned.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    # a second run reads the target states from the cache
    cached = list((tmp_path / "cache" / "states").glob("*.pt"))
    assert len(cached) == 1
    out2 = tmp_path / "align2"
    argv2 = [a if a != str(out) else str(out2) for a in argv] + ["--transmission_before_tuning", "true"]
    assert run(alignment.run, alignment.parse_args, argv2) == 0
    assert list((tmp_path / "cache" / "states").glob("*.pt")) == cached
    # ... and --transmission_before_tuning adds the closed form's own measurement without changing A or the rest
    side2 = json.loads((out2 / "mapping_model.json").read_text())
    assert side2["metrics"]["transmission"]["teacher"]["none"]["states"] == after["teacher"]["none"]["states"]
    assert "measured" not in side2["metrics"]["transmission"]
    assert side2["metrics"]["transmission_after_tuning"] == after
    assert torch.equal(torch.load(out2 / "mapping_model.pt")["mapping"], torch.load(out / "mapping_model.pt")["mapping"])
    # states shipped beside the texts (python -m detox_pa.directed TEXTS TARGET) are used when their key matches:
    # with an empty cache nothing is computed, and the tuned pair is the same
    from detox_pa.directed import shipped_states_path, write_states

    write_states(str(d / "td.tsv"), str(d / "target"), 10)
    assert shipped_states_path(d / "td.tsv").is_file()
    monkeypatch.setenv("DETOX_PA_CACHE", str(tmp_path / "cache2"))
    out3 = tmp_path / "align3"
    assert run(alignment.run, alignment.parse_args, [a if a != str(out) else str(out3) for a in argv]) == 0
    assert not (tmp_path / "cache2" / "states").exists()
    assert torch.equal(torch.load(out3 / "mapping_model.pt")["mapping"], torch.load(out / "mapping_model.pt")["mapping"])
    # a row cap reads the shipped states of the whole file and cuts them to its rows: still no target forward, and
    # exactly the states the first rows have on their own
    out4 = tmp_path / "align4"
    n = len(TEXTS) * 2
    assert run(alignment.run, alignment.parse_args,
               [a if a != str(out) else str(out4) for a in argv] + ["--tune_text_rows", str(n)]) == 0
    assert not (tmp_path / "cache2" / "states").exists()
    rep4 = json.loads((out4 / "mapping_model.json").read_text())["metrics"]["tune_pair"]
    from detox_pa.alignment import read_pairs
    from detox_pa.runtime import load_tokenizer

    alone = target_states(tiny_target(d / "target"), load_tokenizer(str(d / "target"), pad_with_eos=True),
                          read_pairs(str(d / "td.tsv"))[:n], k=10, progress=False)
    assert rep4["texts"] == n and rep4["states"] == len(alone) < rep["states"]


def tiny_target(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_toxic_texts_mark_their_own_next_token_at_every_state(trio):
    target, _, _, tok, _ = trio
    st = target_states(target, tok, TEXTS, k=4, progress=False)
    scorer = lambda ts: [1.0 if "stupid" in t else 0.0 for t in ts]  # noqa: E731  (text 3 is the toxic one)
    base = label_candidates(st, tok, word_ids=set(), scorer=scorer, jump_min=2.0)  # no jump can reach 2
    assert not base.any()
    lab = label_candidates(st, tok, word_ids=set(), scorer=scorer, jump_min=0.5, jump_rise=2.0, toxic_texts=True)
    in_toxic = st.text_of == 3
    assert bool(lab[in_toxic, :].any(1).all()) and not lab[~in_toxic].any()
    assert bool(lab[in_toxic.nonzero().flatten(), st.next_col[in_toxic]].all())
    assert int(lab.sum()) == int(in_toxic.sum())


def test_greedy_hinge_on_hand_made_numbers():
    from detox_pa.directed import greedy_hinge

    z = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.5, 0.0], [3.0, 2.9, 2.0]])
    off = torch.zeros(3, 3)
    toxic = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    h, on = greedy_hinge(z, off, toxic, alpha=2.0, margin=0.5, top_k=3)
    # clean pick, 1 logit ahead: no loss; toxic pick 0.5 ahead of the best clean one: 0.5 + 0.5; no clean candidate: 0
    assert torch.allclose(h, torch.tensor([0.0, 1.0, 0.0])) and on.tolist() == [True, True, False]
    off = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    h, _ = greedy_hinge(z, off, toxic, alpha=2.0, margin=0.5, top_k=3)
    # the offset now flips the clean pick (3 - 2 < 2: hinge 2 - 1 + 0.5) and the toxic one (2.5 > 1: none left)
    assert torch.allclose(h, torch.tensor([1.5, 0.0, 0.0]))


def _fake_tuned_dir(root, seed, hidden=24):
    """An alignment folder as align.py --tune_pair writes it (matrix, sidecar naming the pair, two teacher folders)."""
    from detox_pa.artifacts import save_matrix

    ttok = tiny.make_tokenizer("bl", vocab_size=280)
    for sub, s in (("expert", seed), ("anti_expert", seed + 100)):
        tiny.make_model("llama", vocab_size=len(ttok), hidden=hidden, layers=2, seed=s, tokenizer=ttok, folder=root / sub)
    A = torch.randn(hidden, 32, generator=torch.Generator().manual_seed(seed))
    save_matrix(root, A, {"tuned_pair": {"expert": "expert", "anti_expert": "anti_expert"}, "seed": seed})
    return A


def test_soup_pairs_averages_weights_and_matrix_and_decodes_like_a_tuned_pair(tmp_path):
    """The soup of two tuned pairs: every teacher tensor and A are the means of the two, the folder names its own
    pair for generate.py, the sidecar says what it is; a second soup into the same folder and pairs of different
    shapes are refused."""
    import json

    from safetensors.torch import load_file

    from types import SimpleNamespace

    from detox_pa.directed import soup_pairs
    from detox_pa.errors import InputError
    from detox_pa.methods import resolve_teachers

    A1, A2 = _fake_tuned_dir(tmp_path / "a", 1), _fake_tuned_dir(tmp_path / "b", 2)
    out = soup_pairs([tmp_path / "a", tmp_path / "b"], tmp_path / "soup")
    assert torch.allclose(torch.load(out / "mapping_model.pt")["mapping"], (A1 + A2) / 2, atol=1e-6)
    for sub in ("expert", "anti_expert"):
        sa, sb, ss = (load_file(str(p / sub / "model.safetensors")) for p in (tmp_path / "a", tmp_path / "b", out))
        assert set(ss) == set(sa) and any(not torch.equal(sa[k], sb[k]) for k in sa)
        for k in sa:
            assert torch.allclose(ss[k], (sa[k] + sb[k]) / 2, atol=1e-6), k
    side = json.loads((out / "mapping_model.json").read_text())
    assert side["soup"]["of"] == [str(tmp_path / "a"), str(tmp_path / "b")] and side["artifact"] == "mapping_model.pt"
    ns = SimpleNamespace(teacher_model="", anti_teacher_model="", matrix_A=str(out / "mapping_model.pt"))
    assert resolve_teachers(ns, need_anti=True) == (str(out / "expert"), str(out / "anti_expert"))
    with pytest.raises(InputError, match="already exists"):
        soup_pairs([tmp_path / "a", tmp_path / "b"], out)
    _fake_tuned_dir(tmp_path / "c", 3, hidden=16)
    with pytest.raises(InputError, match="differ"):
        soup_pairs([tmp_path / "a", tmp_path / "c"], tmp_path / "soup2")
    assert not (tmp_path / "soup2").exists() and not (tmp_path / "soup2.tmp").exists()


def test_contrast_loss_equals_its_formula_on_hand_made_numbers():
    """Two texts of one prompt (clean, toxic) and a toxic text of another prompt (no pair): one pair, and the
    loss is softplus(-beta * (delta_clean - delta_toxic)) with delta the summed fused-minus-target log-prob of
    each state's own next token over its valid candidates."""
    from detox_pa.directed import contrast_loss

    ninf = float("-inf")
    z = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.5, ninf], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    off = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 0.0], [1.0, -2.0, 0.5], [3.0, 0.0, 0.0]])
    valid = z > ninf
    next_col = torch.tensor([0, 1, 2, 0])
    text_idx = torch.tensor([0, 0, 1, 2])
    label = torch.tensor([1, -1, -1])
    group = torch.tensor([0, 0, 1])
    alpha, beta = 2.0, 0.7
    loss, parts = contrast_loss(z, off, valid, next_col, text_idx, label, group, alpha, beta)

    def g(s):
        v = valid[s]
        zf, zt = (z[s] + alpha * off[s])[v], z[s][v]
        c = int(next_col[s])
        return float(torch.log_softmax(zf, 0)[c] - torch.log_softmax(zt, 0)[c])

    d_clean, d_toxic = g(0) + g(1), g(2)
    assert parts["pairs"] == 1
    assert math.isclose(float(loss), math.log1p(math.exp(-beta * (d_clean - d_toxic))), rel_tol=1e-5)
    assert parts["pair_acc"] == float(d_clean > d_toxic)
    # no pair in the batch: zero loss that still backpropagates (no crash), and no pair counted
    l0, p0 = contrast_loss(z, off.requires_grad_(), valid, next_col, text_idx, torch.tensor([1, 1, -1]),
                           torch.tensor([0, 0, 1]))
    l0.backward()
    assert float(l0.detach()) == 0.0 and p0["pairs"] == 0


def test_contrast_training_separates_clean_from_toxic_continuations(trio):
    """The contrast term alone (ul_weight 0): a pair that starts identical (offset 0, every margin 0) learns to
    give each prompt's clean continuation more fused likelihood than its toxic one, relative to the target."""
    from detox_pa.directed import contrast_loss, label_texts

    target, expert, anti, tok, ttok = trio
    prompts = ["Hello world, the dog", "The cat is", "A very long prompt about the weather", "She said"]
    texts = []
    for p in prompts:
        texts += [(p, " is a good friend and the day is nice."), (p, " you stupid idiot fool, shut up")]
    st = target_states(target, tok, texts, k=8, progress=False)
    st.toxic = torch.zeros_like(st.cand, dtype=torch.bool)  # no token labels: the contrast alone
    st.text_label = label_texts(st, lambda ts: [0.9 if "idiot" in t else 0.0 for t in ts])
    assert st.text_label.tolist() == [1, -1] * 4
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    W = target.get_output_embeddings().weight.detach()
    e, a = [type(m)(m.config) for m in (expert, anti)]
    e.load_state_dict(expert.state_dict())
    a.load_state_dict(expert.state_dict())

    def margins():
        off, ok = pair_offsets(e, a, ttok, A2, W, st)
        idx = ok.nonzero().flatten()
        _, parts = contrast_loss(st.z[idx], off[idx], st.valid[idx], st.next_col[idx], st.text_of[idx],
                                 st.text_label, torch.arange(len(texts)) // 2, alpha=3.0)
        return parts

    A2 = A
    before = margins()
    assert before["pairs"] == 4 and before["pair_acc"] == 0.0  # all margins exactly 0: none is > 0
    with pytest.raises(ValueError, match="label_texts"):
        st2 = st.subset(torch.arange(len(st)))
        st2.text_label = None
        train_pair(e, a, ttok, A, W, st2, DirectedConfig(contrast_weight=1.0, progress=False))
    A2, rep = train_pair(e, a, ttok, A, W, st, DirectedConfig(epochs=30, batch_texts=4, lr=3e-3, lr_A=1e-3, mu=1.0,
                                                              ul_weight=0.0, contrast_weight=1.0, progress=False))
    assert rep["contrast_pairs_per_step"] >= 2  # batches hold whole prompts, so their pairs
    assert rep["loss_per_tenth"][-1]["contrast"] < rep["loss_per_tenth"][0]["contrast"]
    after = margins()
    assert after["pair_acc"] == 1.0 and after["contrast"] < 0.5 * before["contrast"], (before, after)


def test_target_state_hidden_reads_the_positions_around_each_states_next_token(trio):
    from detox_pa.directed import target_state_hidden

    target, _, _, tok, _ = trio
    st = target_states(target, tok, TEXTS, k=5, progress=False)
    h0, h1 = target_state_hidden(target, tok, st, batch_size=3, progress=False)
    for s in [0, 5, len(st) - 1]:
        p, c = TEXTS[int(st.text_of[s])]
        enc = tok(p + c, return_offsets_mapping=True)
        i = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if b == int(st.char_end[s]) and b > a][-1]
        with torch.no_grad():
            h = target.model(input_ids=torch.tensor([enc["input_ids"]])).last_hidden_state[0]
        assert torch.allclose(h0[s], h[i], atol=1e-4) and torch.allclose(h1[s], h[i + 1], atol=1e-4)


def test_probe_labels_mark_the_moves_toward_the_toxic_mean():
    """Planted: toxic texts' states sit at +u, clean ones at -u; the states whose next token moves the state along
    +u by the most are marked, whatever text they are in."""
    from detox_pa.directed import probe_labels

    torch.manual_seed(0)
    S, d = 200, 8
    text_of = torch.arange(S) // 10  # 20 texts of 10 states
    st = StateSet([("p", "c")] * 20, text_of, torch.zeros(S, dtype=torch.long), torch.zeros(S, 3, dtype=torch.long),
                  torch.zeros(S, 3), torch.zeros(S, dtype=torch.long), 2)
    st.text_label = torch.tensor([-1, 1] * 10)
    u = torch.zeros(d)
    u[0] = 1.0
    before = 0.1 * torch.randn(S, d) + torch.where(st.text_label[text_of] == -1, 1.0, -1.0)[:, None] * u
    move = torch.randn(S)
    after = before + move[:, None] * u + 0.01 * torch.randn(S, d)
    hit, info = probe_labels(st, before, after, range(20), quantile=0.9)
    assert int(hit.sum()) == 20 and set(hit.nonzero().flatten().tolist()) == set(move.topk(20).indices.tolist())
    assert info["marked_in_toxic_texts"] + info["marked_in_clean_texts"] == 20
    st.text_label = None
    with pytest.raises(ValueError, match="label_texts"):
        probe_labels(st, before, after, range(20))


def test_concat_states_shifts_the_text_indices(trio):
    from detox_pa.directed import concat_states

    target, _, _, tok, _ = trio
    a = target_states(target, tok, TEXTS[:2], k=5, progress=False)
    b = target_states(target, tok, TEXTS[2:], k=5, progress=False)
    whole = target_states(target, tok, TEXTS, k=5, batch_size=2, progress=False)
    c = concat_states([a, b])
    assert c.texts == TEXTS and len(c) == len(whole)
    assert torch.equal(c.text_of, whole.text_of) and torch.equal(c.cand, whole.cand)
    assert torch.equal(c.char_end, whole.char_end) and torch.equal(c.next_col, whole.next_col)
    assert concat_states([a]) is a


def test_continuation_contrast_reads_which_texts_the_offset_favours():
    """Two prompts, each with a clean and a toxic text of two states. An offset that raises the clean texts' own
    next tokens (and lowers the toxic ones') prefers every clean text: pair accuracy 1; its negation 0; an offset
    on a column no text reads gives no preference."""
    from detox_pa.directed import continuation_contrast

    texts = [("a", " x"), ("a", " y"), ("b", " x"), ("b", " y")]
    text_of = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    z = torch.tensor([[2.0, 1.0, 0.0]] * 8)
    next_col = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0])
    st = StateSet(texts, text_of, torch.zeros(8, dtype=torch.long), torch.tensor([[1, 2, 3]] * 8), z, next_col, 2)
    st.text_label = torch.tensor([1, -1, 1, -1])
    lab = st.text_label[text_of]
    off = torch.zeros(8, 3)
    off[torch.arange(8), next_col] = lab.float()
    m = continuation_contrast(st, off)
    assert m["pairs"] == 2 and m["pair_acc"] == 1.0 and m["mean_margin"] > 0
    assert continuation_contrast(st, -off)["pair_acc"] == 0.0
    flat = torch.zeros(8, 3)
    flat[:, 2] = 1.0  # a column none of the texts continues with: the same advantage for every text
    assert continuation_contrast(st, flat)["pair_acc"] == 0.0 and continuation_contrast(st, flat)["mean_margin"] == 0.0


def test_adam_implementations_foreach_equals_single_fused_within_rounding(trio):
    """DirectedConfig.adam: "foreach" gives the per-tensor update's numbers exactly, "fused" the same update up to
    float rounding; an unknown name is refused before any step."""
    target, expert, anti, tok, ttok = trio
    st = target_states(target, tok, [(p, c) for p, c in TEXTS] * 2, k=8, progress=False)
    st.toxic = label_candidates(st, tok, word_ids=set(torch.unique(st.cand[st.cand >= 0])[::4].tolist()))
    A = torch.randn(24, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    W = target.get_output_embeddings().weight.detach()
    out = {}
    for impl in ("auto", "single", "foreach", "fused"):
        e, a = [type(m)(m.config) for m in (expert, anti)]
        e.load_state_dict(expert.state_dict())
        a.load_state_dict(anti.state_dict())
        A2, _ = train_pair(e, a, ttok, A, W, st, DirectedConfig(epochs=4, batch_texts=4, lr=3e-3, lr_A=1e-3,
                                                                adam=impl, progress=False))
        out[impl] = (A2, torch.cat([p.detach().flatten() for m in (e, a) for p in m.parameters()]))
    start = torch.cat([p.detach().flatten() for m in (expert, anti) for p in m.parameters()])
    moved = float((out["single"][1] - start).abs().max())
    assert moved > 1e-3  # the steps did something
    for same in ("auto", "foreach"):  # auto: torch's choice, one tensor at a time on CPU
        assert torch.equal(out[same][0], out["single"][0]) and torch.equal(out[same][1], out["single"][1])
    assert float((out["fused"][1] - out["single"][1]).abs().max()) < 1e-4 * moved
    assert float((out["fused"][0] - out["single"][0]).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="adam must be one of"):
        train_pair(expert, anti, ttok, A, W, st, DirectedConfig(adam="sgd", progress=False))


def test_compact_rows_gives_the_same_offsets_from_the_rows_the_states_name():
    """compact_rows keeps only the output rows named as candidates (and row 0, where padding points): the offsets,
    padding included, are equal to the whole matrix's bit for bit, in two sets sharing the rows."""
    from detox_pa.directed import StateSet, candidate_offsets, compact_rows

    g = torch.Generator().manual_seed(3)
    W = torch.randn(5000, 8, generator=g)

    def states(n):
        cand = torch.randint(0, 5000, (n, 4), generator=g)
        cand[::3, 3] = -1  # the text's next token already among the top-k
        return StateSet([("p", "c")], torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long), cand,
                        torch.randn(n, 4, generator=g), torch.zeros(n, dtype=torch.long), 3)

    a, b = states(30), states(20)
    Wc, (ac, bc) = compact_rows(W, a, b)
    assert Wc.shape[0] < 200 and torch.equal(Wc[0], W[0])
    for x, xc in ((a, ac), (b, bc)):
        d = torch.randn(len(x), 8, generator=g)
        assert torch.equal(candidate_offsets(d, W, x.cand), candidate_offsets(d, Wc, xc.cand))
        assert torch.equal(xc.cand < 0, x.cand < 0) and torch.equal(Wc[xc.cand.clamp_min(0)], W[x.cand.clamp_min(0)])
        assert torch.equal(xc.z, x.z) and len(xc) == len(x)
