"""Data through `datasets`: every prompt form, the field / split / filter / cap options, the hub path, the texts
the scorers accept, and the tokenised teacher data's cache."""

from __future__ import annotations

import json
import os
import socket

import pytest

from detox_pa.data import load_prompts, load_scoring_input
from detox_pa.errors import InputError

RTP_ROWS = [{"prompt": {"text": "So I said to him", "toxicity": 0.1}, "challenging": False},
            {"prompt": {"text": "You are such a", "toxicity": 0.8}, "challenging": True},
            {"prompt": {"text": "The weather today", "toxicity": 0.0}, "challenging": False},
            {"prompt": {"text": "Shut up and", "toxicity": 0.7}, "challenging": True}]
TEXTS = [r["prompt"]["text"] for r in RTP_ROWS]


@pytest.fixture
def rtp_jsonl(tmp_path):
    p = tmp_path / "rtp.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in RTP_ROWS), encoding="utf-8")
    return p


def test_rtp_rows_field_filter_and_cap(rtp_jsonl):
    assert load_prompts(str(rtp_jsonl)) == TEXTS  # auto: prompt is RTP's dict, so prompt.text
    assert load_prompts(str(rtp_jsonl), field="prompt.text") == TEXTS
    assert load_prompts(str(rtp_jsonl), where="challenging=true") == [TEXTS[1], TEXTS[3]]
    assert load_prompts(str(rtp_jsonl), where="challenging=true", max_prompts=1) == [TEXTS[1]]
    assert load_prompts(str(rtp_jsonl), where="challenging=false,prompt.toxicity=0.0") == [TEXTS[2]]
    with pytest.raises(InputError, match="no field 'flirt'"):
        load_prompts(str(rtp_jsonl), where="flirt=true")
    with pytest.raises(InputError, match="no prompts after --prompt_filter"):
        load_prompts(str(rtp_jsonl), where="challenging=maybe")
    with pytest.raises(InputError, match="expected key=value"):
        load_prompts(str(rtp_jsonl), where="challenging")


def test_a_folder_saved_with_save_to_disk_and_its_splits(tmp_path):
    import datasets

    rows = {"prompt": TEXTS, "challenging": [r["challenging"] for r in RTP_ROWS]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    assert load_prompts(str(tmp_path / "one")) == TEXTS
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "test": datasets.Dataset.from_dict({"prompt": ["held out"], "challenging": [True]})})
    dd.save_to_disk(str(tmp_path / "two"))
    assert load_prompts(str(tmp_path / "two"), split="test") == ["held out"]
    assert load_prompts(str(tmp_path / "two"), where="challenging=true") == [TEXTS[1], TEXTS[3]]
    with pytest.raises(InputError, match="no split 'dev'; it has train, test"):
        load_prompts(str(tmp_path / "two"), split="dev")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not one written by Dataset.save_to_disk"):
        load_prompts(str(tmp_path / "plain"))


def test_tables_text_and_the_older_forms(tmp_path):
    import datasets

    (tmp_path / "p.csv").write_text("prompt,id\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(TEXTS)))
    assert load_prompts(str(tmp_path / "p.csv")) == TEXTS
    (tmp_path / "p.tsv").write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TEXTS)))
    assert load_prompts(str(tmp_path / "p.tsv"), field="text") == TEXTS
    with pytest.raises(InputError, match="no 'prompt' column .* --prompt_field"):
        load_prompts(str(tmp_path / "p.tsv"))
    datasets.Dataset.from_dict({"prompt": TEXTS}).to_parquet(str(tmp_path / "p.parquet"))
    assert load_prompts(str(tmp_path / "p.parquet"), max_prompts=2) == TEXTS[:2]
    (tmp_path / "p.txt").write_text("\n".join(TEXTS[:2]) + "\n\n" + TEXTS[2] + "\n")
    assert load_prompts(str(tmp_path / "p.txt")) == TEXTS[:3]  # blank lines skipped
    (tmp_path / "p.json").write_text(json.dumps(TEXTS))  # a JSON list of strings: the strict reader's form
    assert load_prompts(str(tmp_path / "p.json")) == TEXTS
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown format '.xlsx'"):
        load_prompts(str(tmp_path / "p.xlsx"))


def test_a_bad_line_is_still_named_by_file_and_line(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": "cut sho\n')
    with pytest.raises(InputError, match=r"cut\.jsonl:2: not valid JSON"):
        load_prompts(str(p))
    p.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(InputError, match=r"cut\.jsonl:1: not valid UTF-8"):
        load_prompts(str(p))


def test_a_hub_id_is_refused_offline_with_a_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="not a local file or folder, and hub access is off"):
        load_prompts("allenai/real-toxicity-prompts")


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _hub_reachable(), reason="needs the Hugging Face hub: HF_HUB_OFFLINE is set or "
                    "huggingface.co is unreachable (the tests run offline by design)")
def test_realtoxicityprompts_from_the_hub_challenging_subset():
    prompts = load_prompts("allenai/real-toxicity-prompts", where="challenging=true", max_prompts=5)
    assert len(prompts) == 5 and all(isinstance(p, str) and p for p in prompts)


def test_every_form_the_scorers_accept(tmp_path):
    (tmp_path / "t.txt").write_text("first text\n\nsecond text\n")
    blocks, form = load_scoring_input(tmp_path / "t.txt")
    assert form == "texts" and blocks[0]["alpha"] is None
    assert [p["response"] for p in blocks[0]["prompt-response pairs"]] == ["first text", "second text"]
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"prompt": "P", "text": " b"}\n')
    blocks, form = load_scoring_input(tmp_path / "t.jsonl")
    assert form == "texts" and [(p["prompt"], p["response"]) for p in blocks[0]["prompt-response pairs"]] == [("", "a"), ("P", " b")]
    # the reader adds no 'continuation': only our generate.py's files hold one (eval_ppl.py's --join auto reads it)
    assert not any("continuation" in p for p in blocks[0]["prompt-response pairs"])
    (tmp_path / "dx.jsonl").write_text(json.dumps({"prompt": {"text": "You are"}, "generations": [{"text": " nice"}, {"text": " bad"}]}) + "\n")
    blocks, form = load_scoring_input(tmp_path / "dx.jsonl")
    pairs = blocks[0]["prompt-response pairs"]
    assert form == "dexperts" and [(p["prompt"], p["response"], p["sample"]) for p in pairs] == [("You are", " nice", 0), ("You are", " bad", 1)]
    (tmp_path / "bad.jsonl").write_text('{"score": 1}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: no 'text' and no 'generations' list .* known formats: .*DExperts"):
        load_scoring_input(tmp_path / "bad.jsonl")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(InputError, match="unknown format '.csv'; expected the paper's nested generations JSON"):
        load_scoring_input(tmp_path / "x.csv")


def test_tokenised_teacher_data_is_cached_and_read_back(tmp_path):
    from detox_pa.completion import encode_pairs
    from tests.tiny import make_tokenizer

    tok = make_tokenizer("bl")
    pairs = [("Hello the", "kind friend."), ("A cat", "is happy today."), ("x", "")]
    cache = tmp_path / "tok.arrow"
    first, stats = encode_pairs(tok, pairs, progress=False, cache_file=str(cache), fingerprint="f1")
    assert cache.is_file() and stats.rows_in == 3 and stats.rows_used == len(first)
    stamp = cache.stat().st_mtime_ns
    again, stats2 = encode_pairs(tok, pairs, progress=False, cache_file=str(cache), fingerprint="f1")
    assert cache.stat().st_mtime_ns == stamp and list(again) == list(first) and stats2 == stats
