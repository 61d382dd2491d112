"""The teacher-data builder (detox_pa/teacher_data.py, scripts/build_teacher_data.py) on a tiny random model and
a fake scorer (no real model, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detox_pa.assets import rtp_split
from detox_pa.errors import InputError
from detox_pa.data import read_teacher_data
from tests.tiny import make_model, make_tokenizer

REPO = Path(__file__).resolve().parent.parent


from detox_pa import teacher_data as btd  # noqa: E402

TOXIC_WORDS = {"stupid", "idiot", "hate", "kill", "damn", "dirty", "ugly", "nasty", "crap", "hell", "jerk",
               "loser", "trash", "fool"}
MID_WORDS = {"bad", "angry", "shut"}


def fake_scorer(texts):
    """0.9 with a 'toxic' word, 0.3 with a 'mid' word, else 0.05 (word-based, like profanity-check)."""
    out = []
    for t in texts:
        words = set(t.lower().replace(".", " ").replace(",", " ").split())
        out.append(0.9 if words & TOXIC_WORDS else 0.3 if words & MID_WORDS else 0.05)
    return out


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is fastest on one thread (no OpenMP spinning on a busy machine)
    tok = make_tokenizer("sp")
    model = make_model("llama", vocab_size=len(tok), tokenizer=tok, seed=0)
    yield model, tok
    torch.set_num_threads(threads)


def _args(folder: Path, **kw) -> "btd.BuildArgs":
    folder.mkdir(parents=True, exist_ok=True)
    base = dict(model="tiny-test-model", neutral_prompts=str(REPO / "data" / "neutral_prompts.txt"),
                out_tsv=str(folder / "td.tsv"), steering_out=str(folder / "st.jsonl"), out_toxic_tsv=str(folder / "tox.tsv"),
                out_tune_tsv=str(folder / "tune.tsv"), max_prompts=6,
                samples_rtp=4, samples_neutral=2, max_new_tokens=12, batch_size=8, min_words=2)
    base.update(kw)
    return btd.BuildArgs(**base)


def _build(folder: Path, tiny, **kw):
    model, tok = tiny
    args = _args(folder, **kw)
    sidecar = btd.build(args, model=model, tokenizer=tok, scorer=fake_scorer, scorer_info={"name": "fake"},
                        progress=False)
    records = [json.loads(line) for line in args.steering_path.read_text(encoding="utf-8").splitlines()]
    return args, sidecar, records


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    return _build(tmp_path_factory.mktemp("run1"), tiny)


def test_tsv_parses_and_holds_exactly_the_kept_rows(built):
    args, sidecar, records = built
    text = args.tsv_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "vanilla\tadversarial\tcompletion"
    pairs, stats = read_teacher_data(args.tsv_path)
    kept = [(r["prompt"], r["completion"]) for r in records if r["kept"]]
    assert pairs == kept and len(pairs) == sidecar["rows"] == stats["rows"] > 0
    # 6 RTP prompts x 4 samples + 6 neutral prompts x 2 samples, one steering record each
    assert len(records) == 6 * 4 + 6 * 2
    assert sidecar["counts"]["rtp_build"]["samples"] + sidecar["counts"]["rtp_dev"]["samples"] == 24
    assert sidecar["counts"]["neutral"]["samples"] == 12


def test_toxic_tsv_holds_the_toxic_rows_and_no_dev_prompt_trains(built):
    from detox_pa.assets import rtp_split

    args, sidecar, records = built
    dev = set(rtp_split("dev"))
    assert any(r["prompt"] in dev for r in records)  # the first 6 build prompts include a dev prompt
    for r in records:
        assert (r["split"] == "rtp_dev") == (r["prompt"] in dev)
        if r["split"] == "rtp_dev":
            assert not r["kept"] and not r["toxic_kept"] and r["reason"] == "dev_prompt"
    toxic = [(r["prompt"], r["completion"]) for r in records if r["toxic_kept"]]
    pairs = read_teacher_data(args.toxic_tsv_path)[0] if toxic else []
    assert pairs == toxic and sidecar["toxic_rows"] == len(toxic)
    assert all(r["prob"] >= args.toxic_threshold and r["completion_prob"] >= args.toxic_threshold
               for r in records if r["toxic_kept"])
    for prompt, comp in pairs:
        assert "\t" not in comp and "\n" not in comp and comp.strip() == comp.lstrip()
        assert btd.count_words(comp) >= args.min_words
    per_prompt = {}
    for p, _ in pairs:
        per_prompt[p] = per_prompt.get(p, 0) + 1
    assert max(per_prompt.values()) <= args.max_per_prompt
    # continuations are cut at the first control token (any added token: <pad>, <bos>, <unk> here)
    stops = {r["stop"] for r in records}
    assert "control" in stops and stops <= {"eos", "control", "length"}
    for r in records:
        assert not any(t in r["continuation"] for t in ("<pad>", "<bos>", "<eos>", "<unk>"))
        assert r["new_tokens"] == 12 if r["stop"] == "length" else r["new_tokens"] < 12
    assert json.loads(args.sidecar_path.read_text())["counts"] == sidecar["counts"]


def test_tune_texts_hold_every_training_sample_and_no_dev_or_neutral_prompt(built):
    args, _, records = built
    pairs, _ = read_teacher_data(args.tune_tsv_path)
    train = {(r["prompt"], r["continuation"]) for r in records if r["split"] == btd.SPLIT_RTP and r["continuation"].strip()}
    assert pairs and set(pairs) == train and len(pairs) == len(set(pairs))
    from detox_pa.assets import is_dev
    assert not any(is_dev(p) for p, _ in pairs)
    assert {r["label"] for r in records if (r["prompt"], r["continuation"]) in set(pairs)} >= {"toxic", "clean"}


def test_labels_follow_the_thresholds(built):
    args, _, records = built
    labels = {r["label"] for r in records}
    assert labels == {"clean", "mid", "toxic"}, labels  # the fake scorer yields all three on this run
    for r in records:
        expected = "toxic" if r["prob"] >= 0.5 else "clean" if r["prob"] < args.clean_threshold else "mid"
        assert r["label"] == expected
        assert r["prob"] == pytest.approx(fake_scorer([r["continuation"]])[0])
        if r["kept"]:
            assert r["prob"] < args.clean_threshold and r["completion_prob"] < args.clean_threshold
        elif r["split"] == "rtp_dev":
            assert r["reason"] == "dev_prompt"
        elif r["label"] != "clean":
            assert r["reason"] == "not_clean"


def test_select_rules_on_synthetic_samples():
    args = btd.BuildArgs.__new__(btd.BuildArgs)  # skip output-path checks: select() needs only thresholds
    args.clean_threshold, args.toxic_threshold, args.max_per_prompt, args.min_words = 0.2, 0.5, 2, 3
    probs = {" one two three.": 0.19, " four five six.": 0.2, " seven eight nine.": 0.5,
             " ten eleven twelve.": 0.49, " ok": 0.0, " see http://x.org now": 0.0, " an <em>odd</em> one": 0.0,
             " a b c d.": 0.01, " e f g h.": 0.01, " i j k l.": 0.01}
    texts = list(probs) + [" a b c d."]  # a duplicate of a kept one
    prompts = [("P", "rtp_build")]
    samples = [(t, "eos", 4) for t in texts]
    recs = btd.select(prompts, [0] * len(texts), samples, lambda xs: [probs[x] for x in xs], args)
    got = [(r["label"], r["reason"]) for r in recs]
    assert got == [("clean", "kept"), ("mid", "not_clean"), ("toxic", "not_clean"), ("mid", "not_clean"),
                   ("clean", "trivial"), ("clean", "url_or_markup"), ("clean", "url_or_markup"),
                   ("clean", "kept"), ("clean", "cap"), ("clean", "cap"),
                   ("clean", "duplicate")]
    args.clean_threshold = 0.25  # a higher threshold keeps the 0.2 one
    recs = btd.select(prompts, [0] * len(texts), samples, lambda xs: [probs[x] for x in xs], args)
    assert [r["reason"] for r in recs][:2] == ["kept", "kept"] and recs[1]["label"] == "clean"


def test_no_eval_split_prompt_is_ever_used(built, tmp_path):
    held_out = set(rtp_split("eval"))
    build = rtp_split("build")
    assert held_out and build
    prompts = btd.collect_prompts(REPO / "data" / "neutral_prompts.txt")
    assert not {p for p, _ in prompts} & held_out
    assert [p for p, s in prompts if s in ("rtp_build", "rtp_dev")] == build  # the whole build split, in order
    assert [p for p, s in prompts if s == "rtp_dev"] == rtp_split("dev")
    _, _, records = built
    assert {r["prompt"] for r in records if r["split"] == "rtp_build"} <= set(build)
    assert not {r["prompt"] for r in records} & held_out
    bad = tmp_path / "neutral.txt"
    bad.write_text("A harmless opener about the weather\n" + sorted(held_out)[0] + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="held-out"):
        btd.collect_prompts(bad)


def test_build_is_deterministic(built, tiny, tmp_path):
    args1, _, _ = built
    args2, _, _ = _build(tmp_path / "run2", tiny)
    assert args1.tsv_path.read_bytes() == args2.tsv_path.read_bytes()
    assert args1.steering_path.read_bytes() == args2.steering_path.read_bytes()
    args3, _, _ = _build(tmp_path / "run3", tiny, seed=7)  # the seed matters
    assert args1.steering_path.read_bytes() != args3.steering_path.read_bytes()


def test_text_cleanup():
    assert btd.normalize("\n\tHello\tthere\n\nfriend ") == " Hello there friend"
    assert btd.normalize("word  \r\n next") == "word next"
    assert btd.normalize(" \n ") == ""
    # cut off by the token limit: cut after the last sentence end if enough words remain ...
    assert btd.trim_completion(" It was warm. We went out to the par", False, 3) == " It was warm."
    # ... else before the last (maybe partial) word
    assert btd.trim_completion(" we went out to the par", False, 3) == " we went out to the"
    assert btd.trim_completion(" we went out to the par", True, 3) == " we went out to the par"  # EOS: whole
    assert btd.trim_completion(" ... !!", True, 3) is None
    assert btd.trim_completion(" two words", True, 3) is None
    assert btd.trim_completion(" bad \ufffd decoding here now", True, 3) is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_nucleus_warper_matches_transformers(temperature):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 1.0, 3.0, 8.0]).repeat(2)[:, None]  # flat ... peaked rows
    scores = torch.randn(8, 5000, generator=g) * scale
    ref = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(temperature)(None, scores.clone())
                                if temperature != 1.0 else scores.clone())
    for candidates in (1024, 16):  # 16 forces the full-sort fallback on the flatter rows
        got = btd.NucleusWarper(0.9, temperature, candidates)(None, scores.clone())
        assert torch.equal(torch.isinf(got), torch.isinf(ref))
        assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)])


def test_bad_arguments_fail_before_any_model_load(tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(btd, "load_target", no_load)
    with pytest.raises(InputError, match="clean_threshold"):
        _args(tmp_path, clean_threshold=0.6)
    with pytest.raises(InputError, match="top_p"):
        btd.parse_args(["--top_p", "0", "--out_tsv", str(tmp_path / "a.tsv"), "--steering_out", str(tmp_path / "a.jsonl"), "--out_toxic_tsv", str(tmp_path / "a_tox.tsv"), "--out_tune_tsv", str(tmp_path / "a_tune.tsv")])
    (tmp_path / "td.tsv").write_text("x")
    with pytest.raises(InputError, match="--overwrite"):
        _args(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        btd.build(_args(tmp_path / "new", neutral_prompts=str(tmp_path / "missing.txt")))
    args = btd.parse_args(["--out_tsv", str(tmp_path / "b.tsv"), "--steering_out", str(tmp_path / "b.jsonl"), "--out_toxic_tsv", str(tmp_path / "b_tox.tsv"), "--out_tune_tsv", str(tmp_path / "b_tune.tsv"),
                           "--samples_rtp", "5"])
    assert args.samples_rtp == 5 and args.sidecar_path == tmp_path / "b.json"
    assert "--samples_rtp 5" in args.command() and "--seed" not in args.command()


def test_committed_data_files():
    """The committed files: our neutral prompts, and teacher data built from the build split only."""
    lines = (REPO / "data" / "neutral_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert 140 <= len(lines) == len(set(lines))
    assert all(4 <= len(line.split()) <= 12 for line in lines)
    tsv = REPO / "data" / "teacher_data.tsv"
    if not tsv.exists():
        pytest.skip("data/teacher_data.tsv is not built yet")
    pairs, _ = read_teacher_data(tsv)
    allowed = set(rtp_split("build")) | set(lines)
    assert {p for p, _ in pairs} <= allowed
    assert not {p for p, _ in pairs} & set(rtp_split("eval"))
    side = json.loads((REPO / "data" / "teacher_data.json").read_text(encoding="utf-8"))
    assert side["rows"] == len(pairs)
    toxic, _ = read_teacher_data(REPO / "data" / "teacher_data_toxic.tsv")
    assert side["toxic_rows"] == len(toxic) > 0
    used = {p for p, _ in pairs} | {p for p, _ in toxic}
    assert used <= allowed and not used & set(rtp_split("dev"))  # no dev prompt trains anything


def test_extend_adds_a_second_round_equal_to_a_fresh_build(tiny, tmp_path):
    """--extend keeps the first round's samples and samples only the second round; the result equals a fresh
    build with the same arguments (same seeds), and the second round draws only training prompts."""
    import shutil

    args1, _, first = _build(tmp_path / "a", tiny)
    ext = _args(tmp_path / "a", extra_samples_train=2, extend=True, overwrite=True)
    model, tok = tiny
    side = btd.build(ext, model=model, tokenizer=tok, scorer=fake_scorer, scorer_info={"name": "fake"}, progress=False)
    extended = [json.loads(line) for line in ext.steering_path.read_text(encoding="utf-8").splitlines()]
    assert extended[:len(first)] == first
    second = extended[len(first):]
    assert second and all(r["split"] == btd.SPLIT_RTP for r in second)
    assert side["sampling"]["extra_samples_train"] == 2 and "generate_second_round" in side["times_s"]
    _, _, fresh = _build(tmp_path / "b", tiny, extra_samples_train=2)
    assert [(r["prompt"], r["continuation"]) for r in fresh] == [(r["prompt"], r["continuation"]) for r in extended]
    # an extension with another second-round seed is refused on reselect
    shutil.copy(ext.sidecar_path, tmp_path / "keep.json")
    with pytest.raises(InputError, match="extra_seed"):
        btd.build(_args(tmp_path / "a", extra_samples_train=2, extra_seed=9, reselect=True, overwrite=True),
                  scorer=fake_scorer, scorer_info={"name": "fake"}, progress=False)


def test_dev_tune_texts_hold_each_folds_dev_samples_and_nothing_else(built):
    """Step 2's default also tunes on the dev prompts' texts, one file per cross-fit fold (rtp:dev_a / rtp:dev_b):
    each holds every sampled continuation of its fold's dev prompts, once, and no other prompt's."""
    args, sidecar, records = built
    dev = [r for r in records if r["split"] == btd.SPLIT_DEV and r["continuation"].strip()]
    assert dev, "the fixture's build holds no dev prompt: the check would be vacuous"
    seen_prompts = set()
    for fold in btd.DEV_FOLDS:
        path = args.tune_dev_paths[fold]
        assert path.name == f"tune_{fold}.tsv" and sidecar["files"][f"tune_texts_{fold}"].endswith(path.name)
        want = {(r["prompt"], r["continuation"]) for r in dev if r["prompt"] in set(rtp_split(fold))}
        text = path.read_text(encoding="utf-8")
        if not want:  # an empty fold is a header-only file
            assert text.count("\n") == 1
            continue
        pairs, _ = read_teacher_data(path)
        assert set(pairs) == want and len(pairs) == len(want)
        seen_prompts |= {p for p, _ in pairs}
    assert seen_prompts == {r["prompt"] for r in dev}
