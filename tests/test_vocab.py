"""Token normalisation across tokenizer families and the shared vocabulary (detox_pa.vocab)."""

from __future__ import annotations

import pytest
import torch

from detox_pa.vocab import (byte_level_decoder, detect_family, normalise_token, shared_vocab, token_keys)
from tests.tiny import make_tokenizer

SPECIALS = dict(pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def _fast(tok, added=()):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    if added:
        fast.add_tokens(list(added))  # non-special added tokens (like Gemma's "\n")
    return fast


def sp_tokenizer(tokens, added=()):
    """SentencePiece-style (▁, byte fallback) tokenizer with exactly these tokens after the 4 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + list(tokens))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return _fast(tok, added)


def bl_tokenizer(tokens, added=()):
    """Byte-level BPE (Ġ) tokenizer with exactly these tokens after the 4 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + list(tokens))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _fast(tok, added)


def test_normalise_token_reads_every_form_as_bytes():
    assert normalise_token("▁hello", "metaspace") == (b" hello", False)
    assert normalise_token("Ġhello", "byte_level") == (b" hello", False)
    assert normalise_token("Ã©", "byte_level") == ("é".encode(), False)  # byte-level encoding of UTF-8 bytes
    assert normalise_token("Ċ", "byte_level") == (b"\n", False)
    assert normalise_token("<0x41>", "metaspace", byte_fallback=True) == (b"A", True)
    assert normalise_token("<0xC3>", "metaspace", byte_fallback=True) == (b"\xc3", True)
    assert normalise_token("é", "metaspace") == ("é".encode(), False)
    # a character outside the byte-level alphabet cannot be read as byte-level
    assert normalise_token("€", "byte_level") == (None, False)


def test_byte_level_table_is_the_inverse_of_the_tokenizers_alphabet():
    from tokenizers import decoders, pre_tokenizers

    table = byte_level_decoder()
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(table.values()) == list(range(256))
    dec = decoders.ByteLevel()
    for ch, b in table.items():
        if b < 128:  # single ASCII bytes decode to themselves with the library's own decoder
            assert dec.decode([ch]) == chr(b)


def test_family_detection_on_tiny_tokenizers():
    assert detect_family(make_tokenizer("bl")) == ("byte_level", False)
    assert detect_family(make_tokenizer("sp")) == ("metaspace", False)
    assert detect_family(sp_tokenizer(["a", "<0x41>"])) == ("metaspace", True)


def test_shared_vocab_joins_word_initial_tokens_across_families():
    bl, sp = make_tokenizer("bl", vocab_size=600), make_tokenizer("sp", vocab_size=600)
    assert "Ġhello" in bl.get_vocab() and "▁hello" in sp.get_vocab()
    assert "Ġhello" not in set(bl.get_vocab()) & set(sp.get_vocab())  # what a raw intersection misses
    sv = shared_vocab(bl, sp)
    k = sv.strings.index(" hello")
    assert bl.convert_ids_to_tokens(int(sv.teacher_ids[k])) == "Ġhello"
    assert sp.convert_ids_to_tokens(int(sv.target_ids[k])) == "▁hello"
    # every pair decodes to the same text on both sides (ASCII keys)
    for i in range(len(sv)):
        if sv.keys[i].isascii():
            assert bl.decode([int(sv.teacher_ids[i])]) == sv.strings[i]
    word_initial = sum(s.startswith(" ") for s in sv.strings)
    assert word_initial >= 50


def test_specials_are_excluded_and_ids_are_one_to_one():
    bl, sp = make_tokenizer("bl", vocab_size=600), make_tokenizer("sp", vocab_size=600)
    sv = shared_vocab(bl, sp)
    for s in ("<pad>", "<bos>", "<eos>", "<unk>"):
        assert s not in sv.strings  # both tokenizers have them, neither is shared
    assert not set(sv.teacher_ids.tolist()) & set(bl.all_special_ids)
    assert not set(sv.target_ids.tolist()) & set(sp.all_special_ids)
    assert len(set(sv.teacher_ids.tolist())) == len(sv) == len(set(sv.target_ids.tolist()))
    assert sv.keys == sorted(sv.keys) and len(set(sv.keys)) == len(sv)
    assert sv.teacher_ids.dtype == sv.target_ids.dtype == torch.long


def test_non_ascii_byte_fallback_and_added_tokens():
    # target (SentencePiece): "é", a byte-fallback <0xC3>, "A" and its byte-fallback twin <0x41> (lower id),
    # and a non-special added "\n" (Gemma keeps newlines that way)
    sp = sp_tokenizer(["<0x41>", "<0xC3>", "▁hello", "é", "A", "▁world"], added=["\n"])
    bl = bl_tokenizer(["A", "Ã", "Ã©", "Ġhello", "Ċ", "Ġzz"])
    sv = shared_vocab(bl, sp)
    pairs = {s: (bl.convert_ids_to_tokens(int(t)), sp.convert_ids_to_tokens(int(g)))
             for s, t, g in zip(sv.strings, sv.teacher_ids, sv.target_ids)}
    assert pairs["é"] == ("Ã©", "é")
    assert pairs["\\xc3"] == ("Ã", "<0xC3>")  # a lone byte: byte-level char <-> byte-fallback token
    assert pairs[" hello"] == ("Ġhello", "▁hello")
    assert pairs["A"] == ("A", "A")  # the regular token wins over its byte-fallback twin, whatever the ids
    assert pairs["\n"][0] == "Ċ" and int(sv.target_ids[sv.strings.index("\n")]) == sp.convert_tokens_to_ids("\n")
    assert set(pairs) == {"é", "\\xc3", " hello", "A", "\n"}
    assert sv.target_stats["duplicates"] == 1
    # specials never count; non-special added tokens can be dropped on request
    assert "\n" not in shared_vocab(bl, sp, include_added=False).strings


def test_coverage_stats():
    bl, sp = make_tokenizer("bl", vocab_size=600), make_tokenizer("sp", vocab_size=600)
    sv = shared_vocab(bl, sp)
    st = sv.stats()
    assert st["shared"] == len(sv) > 0
    assert st["teacher_vocab_size"] == len(bl) and st["target_vocab_size"] == len(sp)
    assert sv.teacher_coverage == pytest.approx(len(sv) / len(bl))
    assert sv.target_coverage == pytest.approx(len(sv) / len(sp))
    keys, stats = token_keys(bl)
    assert stats["special"] == 4 and stats["normal_tokens"] == len(keys) == len(bl) - 4


def test_subset_keeps_pairs_aligned():
    bl, sp = make_tokenizer("bl", vocab_size=600), make_tokenizer("sp", vocab_size=600)
    sv = shared_vocab(bl, sp)
    mask = torch.arange(len(sv)) % 3 == 0
    sub = sv.subset(mask)
    idx = mask.nonzero().flatten()
    assert torch.equal(sub.teacher_ids, sv.teacher_ids[idx]) and torch.equal(sub.target_ids, sv.target_ids[idx])
    assert sub.strings == [sv.strings[i] for i in idx.tolist()]
