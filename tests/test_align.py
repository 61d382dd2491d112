"""The alignment matrix (detox_pa/alignment.py, align.py) on planted problems and tiny model folders."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detox_pa import alignment
from detox_pa.alignment import (TrainConfig, contrastive_loss_and_grad, epoch_candidates, find_embedding, fit,
                                heldout_split, load_embedding, retrieval)
from detox_pa.cli import run
from detox_pa.errors import InputError
from tests.tiny import make_model, make_model_folder, make_tokenizer

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")




@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A byte-level teacher (hidden 32) and a SentencePiece target (hidden 48): two tokenizer families."""
    d = tmp_path_factory.mktemp("models")
    return {"teacher": make_model_folder(d, "teacher", arch="llama", kind="bl", hidden=32),
            "target": make_model_folder(d, "target", arch="gemma3", kind="sp", hidden=48, seed=1)}


def planted(n=1000, d_t=24, d_s=32, noise=0.01, seed=0):
    """Teacher rows of norm 3; target rows = teacher rows @ M + noise, M with orthonormal rows."""
    g = torch.Generator().manual_seed(seed)
    Et = F.normalize(torch.randn(n, d_t, generator=g), dim=1) * 3
    Q, _ = torch.linalg.qr(torch.randn(d_s, d_s, generator=g))
    M = Q[:d_t].contiguous()
    Es = Et @ M + noise * torch.randn(n, d_s, generator=g)
    keys = [f"tok{i}".encode() for i in range(n)]
    return Et, Es, M, keys


# ------------------------------------------------------------------------------ training pieces


def test_training_recovers_a_planted_mapping():
    Et, Es, M, keys = planted()
    res = fit(Et, Es, keys, TrainConfig(epochs=5, lr=1e-2, progress=False))
    rep = res.report
    assert rep["n_heldout"] == 50 and rep["n_train"] == 950
    assert rep["heldout_before"]["dot"]["top1"] <= 0.1  # a random matrix retrieves nothing
    assert rep["heldout_after"]["dot"]["top1"] >= 0.9
    assert rep["heldout_after"]["cosine"]["top10"] >= 0.95
    assert rep["loss_per_epoch"][-1] < 0.5 * rep["loss_per_epoch"][0]
    assert rep["optimizer_steps"] == 5 * 30  # ceil(950 / 32) steps per epoch
    # the mapped held-out teacher rows turn towards their target rows (they start orthogonal-ish)
    _, held = heldout_split(keys)
    A0 = alignment.init_mapping(Et, Es, "random", torch.Generator().manual_seed(42))
    cos0 = F.cosine_similarity(Et[held] @ A0, Es[held], dim=1).mean()
    cos = F.cosine_similarity(Et[held] @ res.mapping, Es[held], dim=1).mean()
    assert abs(cos0) < 0.3 and cos > 0.6


def test_lstsq_init_solves_the_planted_problem_in_closed_form():
    Et, Es, M, keys = planted()
    res = fit(Et, Es, keys, TrainConfig(epochs=1, lr=1e-4, init="lstsq", progress=False))
    assert res.report["heldout_before"]["dot"]["top1"] == 1.0
    A0 = alignment.init_mapping(Et, Es, "lstsq", torch.Generator())
    assert torch.linalg.norm(A0 - M) / torch.linalg.norm(M) < 0.05


def test_closed_form_gradient_matches_autograd():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 5, generator=g)
    et, y = torch.randn(4, 6, generator=g), torch.randn(4, 3, 5, generator=g)
    for temperature in (1.0, 0.5):
        loss, grad = contrastive_loss_and_grad(A, et, y, temperature)
        Ag = A.clone().requires_grad_(True)
        logits = torch.einsum("bkd,bd->bk", y, et @ Ag) / temperature
        ref = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(grad, Ag.grad, rtol=1e-5, atol=1e-6)


def test_negatives_are_sampled_on_the_tensor_side_and_never_the_positive():
    n, K = 7, 6  # K = n - 1: every other token is a possible negative
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(n, n, dtype=torch.long)
    for _ in range(200):
        cand = epoch_candidates(n, K, g)
        assert cand.shape == (n, 1 + K)
        assert sorted(cand[:, 0].tolist()) == list(range(n))  # column 0: a permutation (the positives)
        assert not (cand[:, 1:] == cand[:, :1]).any()  # no negative equals its positive
        assert cand.min() >= 0 and cand.max() < n
        seen.index_put_((cand[:, :1].expand(-1, K).reshape(-1), cand[:, 1:].reshape(-1)),
                        torch.ones(n * K, dtype=torch.long), accumulate=True)
    off = seen[~torch.eye(n, dtype=torch.bool)]
    assert off.min() > 0.5 * off.float().mean()  # every other token is drawn, roughly uniformly
    assert seen.diagonal().sum() == 0
    # same seed, same draws
    a = epoch_candidates(50, 10, torch.Generator().manual_seed(5))
    b = epoch_candidates(50, 10, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_heldout_split_is_deterministic_by_content():
    keys = [f"w{i}".encode() for i in range(400)]
    train, held = heldout_split(keys, 0.05)
    assert len(held) == 20 and len(train) == 380
    assert sorted(train.tolist() + held.tolist()) == list(range(400))
    held_keys = {keys[i] for i in held.tolist()}
    shuffled = keys[::-1]
    _, held2 = heldout_split(shuffled, 0.05)
    assert {shuffled[i] for i in held2.tolist()} == held_keys  # the same tokens, whatever their order
    assert len(heldout_split(keys[:10], 0.05)[1]) == 1  # at least one


def test_retrieval_ranks_and_ties_count_against():
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    mapped = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = retrieval(mapped, cands, torch.tensor([0, 1]), ks=(1, 2, 3))
    # query 0: dot ranks row 2 (2.0) above, ties with row 3 -> rank 2 (0-based); cosine ties rows 0, 2, 3 -> rank 2
    assert out["dot"]["top1"] == 0.5 and out["dot"]["top3"] == 1.0 and out["dot"]["top2"] == 0.5
    assert out["cosine"]["top1"] == 0.5 and out["cosine"]["top3"] == 1.0
    assert out["dot"]["median_rank"] in (1.0, 3.0)


# ------------------------------------------------------------------------------ reading embeddings


def test_find_embedding_reads_headers_tied_untied_sharded_and_bin(tmp_path):
    tok = make_tokenizer("bl")
    tied = make_model("llama", folder=tmp_path / "tied", tokenizer=tok, tie=True)
    ref = find_embedding(str(tmp_path / "tied"), "output")
    assert ref.key == "model.embed_tokens.weight" and ref.tied and ref.shape == (len(tok), 32)
    W, _ = load_embedding(ref)
    assert torch.equal(W, tied.get_output_embeddings().weight.detach())

    untied = make_model("llama", tokenizer=tok, tie=False, seed=4)
    untied.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    for space, module in (("output", untied.get_output_embeddings()), ("input", untied.get_input_embeddings())):
        ref = find_embedding(str(tmp_path / "sharded"), space)
        assert not ref.tied and ref.key == {"output": "lm_head.weight", "input": "model.embed_tokens.weight"}[space]
        W, _ = load_embedding(ref)
        assert torch.equal(W, module.weight.detach())

    binf = tmp_path / "bin"
    binf.mkdir()
    (binf / "config.json").write_text((tmp_path / "tied" / "config.json").read_text())
    torch.save(untied.state_dict(), binf / "pytorch_model.bin")
    ref = find_embedding(str(binf), "input")
    assert ref.source == "bin"
    W, ref = load_embedding(ref)
    assert ref.key == "model.embed_tokens.weight" and torch.equal(W, untied.get_input_embeddings().weight.detach())


def test_untied_config_without_lm_head_is_an_input_error(tmp_path):
    folder = make_model_folder(tmp_path, "m", arch="llama", kind="bl", tie=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(cfg))
    assert find_embedding(str(folder), "input").key == "model.embed_tokens.weight"
    with pytest.raises(InputError, match="tie_word_embeddings=false"):
        find_embedding(str(folder), "output")


# ------------------------------------------------------------------------------ align.py end to end


def _argv(folders, out, *extra):
    return ["--model1_name", str(folders["teacher"]), "--model2_name", str(folders["target"]),
            "--output_dir", str(out), "--progress", "false", "--objective", "contrastive", "--text_path", "", *extra]


def test_align_main_writes_matrix_and_sidecar(folders, tmp_path):
    out = tmp_path / "align"
    assert run(alignment.run, alignment.parse_args, _argv(folders, out, "--epochs", "2")) == 0
    A = torch.load(out / "mapping_model.pt")["mapping"]
    assert A.shape == (32, 48) and A.dtype == torch.float32 and torch.isfinite(A).all()
    assert set(torch.load(out / "mapping_model.pt")) == {"mapping"}
    side = json.loads((out / "mapping_model.json").read_text())
    assert side["shape"] == [32, 48] and side["teacher"]["dim"] == 32 and side["target"]["dim"] == 48
    assert side["teacher"]["tokenizer_family"] == "byte_level" and side["target"]["tokenizer_family"] == "metaspace"
    ov = side["vocab_overlap"]
    assert ov["shared"] > 50 and ov["teacher_vocab_size"] == 300 == ov["target_vocab_size"]
    assert ov["teacher_coverage"] == pytest.approx(ov["shared"] / 300, abs=1e-6)
    m = side["metrics"]
    assert len(m["loss_per_epoch"]) == 2 and m["n_train"] + m["n_heldout"] == ov["shared"]
    for when in ("heldout_before", "heldout_after"):
        assert set(m[when]) == {"dot", "cosine"} and 0 <= m[when]["dot"]["top1"] <= m[when]["dot"]["top10"] <= 1
    assert side["arguments"]["epochs"] == 2 and side["seed"] == 42 and side["init"] == "random"
    assert side["embedding_space"] == "input" and side["wall_seconds"] > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_existing_matrix_is_refused_unless_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "align"
    assert run(alignment.run, alignment.parse_args, _argv(folders, out, "--epochs", "1")) == 0
    before = (out / "mapping_model.pt").read_bytes(), (out / "mapping_model.json").read_bytes()
    capsys.readouterr()
    # a second run into the same folder stops before reading a model: the earlier matrix and sidecar are untouched
    assert run(alignment.run, alignment.parse_args, _argv(folders, out, "--epochs", "1", "--seed", "7")) != 0
    err = capsys.readouterr().err
    assert f"{out / 'mapping_model.pt'} already exists" in err and "--overwrite" in err
    assert ((out / "mapping_model.pt").read_bytes(), (out / "mapping_model.json").read_bytes()) == before
    assert run(alignment.run, alignment.parse_args,
               _argv(folders, out, "--epochs", "1", "--seed", "7", "--overwrite", "true")) == 0
    assert (out / "mapping_model.pt").read_bytes() != before[0]


def test_same_seed_same_matrix_other_seed_other_matrix(folders, tmp_path):
    mats = []
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        assert run(alignment.run, alignment.parse_args,
                   _argv(folders, tmp_path / name, "--epochs", "1", "--seed", str(seed))) == 0
        mats.append(torch.load(tmp_path / name / "mapping_model.pt")["mapping"])
    assert torch.equal(mats[0], mats[1])
    assert not torch.equal(mats[0], mats[2])
    # the same seed gives the same bytes, and the same sidecar apart from timings and the output folder
    assert (tmp_path / "a" / "mapping_model.pt").read_bytes() == (tmp_path / "b" / "mapping_model.pt").read_bytes()
    sides = [json.loads((tmp_path / n / "mapping_model.json").read_text()) for n in ("a", "b")]
    for side in sides:
        for part in (side, side["metrics"]):
            for k in [k for k in part if "seconds" in k or k in ("created", "output_dir")]:
                part.pop(k)
        side["arguments"].pop("output_dir")
    assert sides[0] == sides[1]


def test_output_space_init_lstsq_and_temperature(folders, tmp_path):
    out = tmp_path / "o"
    assert run(alignment.run, alignment.parse_args, _argv(folders, out, "--epochs", "1", "--embedding_space", "output",
                                                   "--init", "lstsq", "--temperature", "0.5")) == 0
    side = json.loads((out / "mapping_model.json").read_text())
    assert side["embedding_space"] == "output" and side["target"]["embedding"]["tied"] is True
    assert side["init"] == "lstsq" and side["arguments"]["temperature"] == 0.5


def _no_embedding_folder(tmp_path, folders):
    from safetensors.torch import save_file

    d = tmp_path / "noemb"
    d.mkdir()
    for f in folders["teacher"].iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, str(d / "model.safetensors"))
    return ["--model1_name", str(d)]


def _disjoint_tokenizer_folder(tmp_path, folders):
    """A teacher whose tokens (Greek words) appear nowhere in the target's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + [f"λ{a}{b}" for a in "αβγδεζηθ" for b in "ικμνξοπρ"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    d = tmp_path / "greek"
    make_model("llama", vocab_size=len(fast), folder=d, tokenizer=fast)
    return ["--model1_name", str(d)]


@pytest.mark.parametrize("case,make,expect", [
    ("no embeddings", _no_embedding_folder, "no input embedding tensor found in"),
    ("no shared vocabulary", _disjoint_tokenizer_folder, "share no vocabulary"),
    ("n_negatives too large", lambda t, f: ["--n_negatives", "5000"], "n_negatives (5000) must be smaller"),
    ("lr zero", lambda t, f: ["--lr", "0"], "--lr must be a positive number"),
    ("lr negative", lambda t, f: ["--lr=-1e-3"], "--lr must be a positive number"),
    ("epochs zero", lambda t, f: ["--epochs", "0"], "--epochs must be a positive integer"),
    ("batch size zero", lambda t, f: ["--batch_size", "0"], "--batch_size must be a positive integer"),
    ("temperature zero", lambda t, f: ["--temperature", "0"], "--temperature must be a positive number"),
    ("bad init", lambda t, f: ["--init", "zeros"], "invalid choice"),
    ("output is a file", lambda t, f: ["--output_dir", str(_touch(t / "file.txt"))], "exists and is not a folder"),
    ("teacher missing", lambda t, f: ["--model1_name", str(t / "nope")], "does not exist"),
])
def test_bad_input_gives_one_line_before_embeddings_load(folders, tmp_path, capsys, monkeypatch, case, make, expect):
    import transformers

    def boom(*a, **k):
        raise AssertionError("an embedding or model was loaded before the inputs were checked")

    monkeypatch.setattr(alignment, "load_embedding", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    extra = make(tmp_path, folders)
    argv = _argv(folders, tmp_path / "out") + extra  # a repeated flag: the last value wins
    capsys.readouterr()  # drop what building the fixture printed
    assert run(alignment.run, alignment.parse_args, argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    others = [line for line in err.splitlines() if line and not line.startswith("error: ") and not LOG_LINE.match(line)]
    assert len(errors) == 1 and expect in errors[0], err
    assert not others and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


def test_no_embedding_error_names_the_file_and_keys(folders, tmp_path):
    argv = _no_embedding_folder(tmp_path, folders)
    with pytest.raises(InputError) as e:
        find_embedding(argv[1], "input")
    msg = str(e.value)
    assert "model.safetensors" in msg and "embed_tokens.weight" in msg and "wte.weight" in msg
    assert "\n" not in msg


def test_launcher_is_valid_bash_and_calls_align_py():
    script = REPO / "run_alignment.sh"
    assert script.exists() and script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert '"$REPO_DIR/align.py"' in text and (REPO / "align.py").exists()
    for name in ("MODEL1_NAME", "MODEL2_NAME", "ALIGN_OUTPUT_DIR", "ALIGN_BATCH_SIZE", "EPOCHS", "LR", "N_NEGATIVES",
                 "ALIGN_SEED", "INIT", "EMBEDDING_SPACE", "ALIGN_TEMPERATURE"):
        assert re.search(rf"^{name}=\$\{{{name}:-", text, re.M), name


def test_launcher_runs_align_py_end_to_end(folders, tmp_path):
    import os

    env = dict(os.environ, MODEL1_NAME=str(folders["teacher"]), MODEL2_NAME=str(folders["target"]),
               ALIGN_OUTPUT_DIR=str(tmp_path / "a"), EPOCHS="1", INIT="lstsq", HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(REPO / "run_alignment.sh"), "--progress", "false"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    side = json.loads((tmp_path / "a" / "mapping_model.json").read_text())
    assert side["arguments"]["epochs"] == 1 and side["init"] == "lstsq" and side["arguments"]["batch_size"] == 32
    # the pipeline default teacher (outputs/teacher) missing: one clear line, exit 2
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL1_NAME", "OUT_DIR")}
    proc = subprocess.run([str(REPO / "run_alignment.sh")], env=dict(env, OUT_DIR=str(tmp_path / "none")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run ./run_pretrain.sh first" in proc.stderr


# ------------------------------------------------------------------------------ the logits objective and transmission


def planted_output(n=400, d_t=16, d_s=24, seed=3):
    """Teacher output rows ``Et`` and target rows ``Es = Et @ M`` (M with orthonormal rows): the map that
    carries the teacher's prediction exactly is ``A = M`` (``Es @ (h @ M) = Et @ M @ M^T @ h = Et @ h``)."""
    g = torch.Generator().manual_seed(seed)
    Et = torch.randn(n, d_t, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(d_s, d_s, generator=g))
    M = Q[:d_t].contiguous()
    return Et, Et @ M, M, torch.randn(300, d_t, generator=g) * 2


def test_transmission_is_perfect_for_the_known_map_and_poor_for_a_random_one():
    Et, Es, M, H = planted_output()
    perfect = alignment.transmission(H, M, Et, Es)
    assert perfect["top1"] == 1.0 and perfect["top10"] == 1.0
    assert perfect["pearson"] > 0.9999 and perfect["kl"] < 1e-6 and perfect["scale"] == pytest.approx(1, abs=1e-4)
    rand = alignment.transmission(H, torch.randn_like(M), Et, Es)
    assert rand["top1"] < 0.1 and rand["top10"] < 0.3 and abs(rand["pearson"]) < 0.2 and rand["kl"] > 1
    # the paper's LayerNorm on top of the known map: centring shifts each token's logit by its row sum, and
    # the scale is set by the dimension, not the teacher; the metric sees both
    ln = alignment.transmission(H, M, Et, Es, norm="layernorm")
    assert ln["norm"] == "layernorm" and ln["kl"] > perfect["kl"] + 0.01 and ln["scale"] != pytest.approx(1, abs=0.05)


def test_logits_closed_form_recovers_the_known_map_and_refinement_lowers_kl():
    Et, Es, M, H = planted_output()
    A = alignment.fit_logits_closed_form(Et, Es)
    # Es has rank d_t < d_s, so A is M up to the null space of Es: the same logits, the same transmission
    assert torch.allclose(Es @ A.T, Et, atol=1e-3)
    assert alignment.transmission(H, A, Et, Es)["top1"] == 1.0
    assert alignment.fit_logits_closed_form(Et, Es, ridge=1e-3).shape == M.shape
    # refinement from a damaged start lowers the KL on the states it is given
    g = torch.Generator().manual_seed(0)
    A0 = M + 0.3 * torch.randn(M.shape, generator=g)
    before = alignment.transmission(H, A0, Et, Es)["kl"]
    A1, losses = alignment.refine_kl(A0, H, Et, Es, steps=150, lr=1e-2, progress=False)
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert alignment.transmission(H, A1, Et, Es)["kl"] < 0.5 * before


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """Teacher (hidden 32) and a target (hidden 48) with the same byte-level tokenizer, whose tied
    embeddings are the teacher's times a matrix with orthonormal rows: a known map exists."""
    d = tmp_path_factory.mktemp("rotated")
    teacher = make_model_folder(d, "teacher", arch="llama", kind="bl", hidden=32, layers=2)
    tok = make_tokenizer("bl")
    target = make_model("llama", vocab_size=len(tok), hidden=48, layers=2, seed=5, tokenizer=tok)
    from transformers import AutoModelForCausalLM
    E_t = AutoModelForCausalLM.from_pretrained(teacher).get_input_embeddings().weight.detach()
    Q, _ = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        target.get_input_embeddings().weight.copy_(E_t @ Q[:32])
    target.save_pretrained(d / "target")
    tok.save_pretrained(d / "target")
    from tests.tiny import corpus
    (d / "texts.txt").write_text("\n".join(corpus(60, seed=4)) + "\n")
    return {"teacher": teacher, "target": d / "target", "texts": d / "texts.txt"}


def test_align_logits_objective_transmits_where_contrastive_is_only_reported(rotated, tmp_path):
    base = ["--model1_name", str(rotated["teacher"]), "--model2_name", str(rotated["target"]), "--progress", "false",
            "--text_path", str(rotated["texts"])]
    assert run(alignment.run, alignment.parse_args, base + ["--output_dir", str(tmp_path / "l"), "--objective", "logits",
                                                     "--refine_steps", "20"]) == 0
    side = json.loads((tmp_path / "l" / "mapping_model.json").read_text())
    assert side["objective"] == "logits" and side["embedding_space"] == "output"
    tr = side["metrics"]["transmission"]
    assert tr["texts_heldout"] >= 1 and tr["teacher"]["none"]["states"] > 20
    m = tr["teacher"]["none"]
    assert m["top1"] >= 0.97 and m["top10"] >= 0.95 and m["pearson"] > 0.99 and m["kl"] < 0.01
    assert side["metrics"]["refine"]["steps"] == 20 and len(side["metrics"]["refine"]["loss_per_tenth"]) == 10
    # the paper's contrastive objective on the same pair: the same metric is recorded, whatever it gets
    assert run(alignment.run, alignment.parse_args, base + ["--output_dir", str(tmp_path / "c"), "--epochs", "1",
                                                     "--objective", "contrastive"]) == 0
    side_c = json.loads((tmp_path / "c" / "mapping_model.json").read_text())
    assert side_c["objective"] == "contrastive" and side_c["embedding_space"] == "input"
    mc = side_c["metrics"]["transmission"]["teacher"]["none"]
    assert 0 <= mc["top1"] <= 1 and mc["states"] == m["states"] and "refine" not in side_c["metrics"]
    assert mc["kl"] > m["kl"]


def test_transmissions_shares_the_teacher_side_without_changing_a_number():
    """One pass for both norms (the teacher's logits computed once) gives each norm's numbers as a plain
    recomputation does, chunk by chunk or all at once."""
    g = torch.Generator().manual_seed(3)
    H, A = torch.randn(70, 6, generator=g), torch.randn(6, 5, generator=g)
    Et, Es = torch.randn(40, 6, generator=g), torch.randn(40, 5, generator=g)
    both = alignment.transmissions(H, A, Et, Es, ("none", "layernorm"), k=4, chunk=16)
    for norm in ("none", "layernorm"):
        zt = H @ Et.T
        zf = alignment.map_states(H, A, norm) @ Es.T
        ref_top1 = float((zt.argmax(1) == zf.argmax(1)).float().mean())
        lt, lf = torch.log_softmax(zt, 1), torch.log_softmax(zf, 1)
        ref_kl = float((lt.exp() * (lt - lf)).sum(1).mean())
        ref_pear = float(torch.stack([torch.corrcoef(torch.stack([zt[i], zf[i]]))[0, 1] for i in range(70)]).mean())
        got = both[norm]
        assert got["norm"] == norm and got["states"] == 70
        assert got["top1"] == pytest.approx(ref_top1, abs=1e-6)
        assert got["kl"] == pytest.approx(ref_kl, rel=1e-4)
        assert got["pearson"] == pytest.approx(ref_pear, abs=1e-5)
        assert alignment.transmission(H, A, Et, Es, norm, k=4, chunk=16) == got
    assert both["none"]["kl"] != both["layernorm"]["kl"]
