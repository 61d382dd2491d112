"""Token strings normalised across tokenizer families, and the vocabulary two tokenizers share.

Tokenizers spell the same text differently:

- SentencePiece / Metaspace (Gemma, Llama-2, Mistral): a word boundary is ``▁`` (``▁hello``), and
  with byte fallback a raw byte is ``<0x41>``;
- byte-level BPE (GPT-2, SmolLM2, Llama-3, Qwen): every byte is mapped to a printable character,
  so a space is ``Ġ`` (``Ġhello``) and ``é`` is ``Ã©``.

Intersecting raw strings therefore drops every word-initial token across families (and every
non-ASCII one). Here every token is turned into the **bytes of the text it stands for**
(``▁hello``, ``Ġhello`` -> ``b" hello"``; ``Ã©`` and ``é`` -> ``b"\\xc3\\xa9"``; ``<0x41>`` ->
``b"A"``), and the two vocabularies are intersected on those bytes.

Special tokens (``<bos>``, ``<|im_start|>``, ``<unused12>``...) are excluded. Non-special added
tokens (Gemma stores ``"\\n"``, runs of newlines and a few HTML tags that way) are literal text and
are kept by default (``include_added=False`` drops them too).

When several ids of one tokenizer normalise to the same bytes (``A`` and ``<0x41>``), one is kept,
deterministically: a regular vocabulary token before a non-special added token before a
byte-fallback token, then the lowest id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

__all__ = ["SharedVocab", "shared_vocab", "token_keys", "detect_family", "byte_level_decoder",
           "normalise_token", "display"]

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
METASPACE = "\u2581"  # ▁

# rank of a token kind when several ids normalise to the same bytes (lower wins)
_RANK_REGULAR, _RANK_ADDED, _RANK_BYTE_FALLBACK = 0, 1, 2


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """Printable character -> byte, the inverse of the byte-level BPE alphabet (GPT-2 scheme).

    Bytes that are printable and not whitespace keep their own code point; the remaining 68 bytes
    (controls, space, 0x7f-0xa0, 0xad) are given the code points 256, 257, ... in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table: dict[str, int] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _walk_types(node: Any) -> list[dict]:
    """Every component dict (normalizer / pre-tokenizer / decoder) inside a Sequence tree."""
    out: list[dict] = []
    if isinstance(node, dict):
        if "type" in node:
            out.append(node)
        for v in node.values():
            if isinstance(v, (dict, list)):
                out.extend(_walk_types(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk_types(v))
    return out


def _backend_json(tok) -> dict | None:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        return json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - a backend that cannot serialise: fall back to vocabulary statistics
        return None


def detect_family(tok) -> tuple[str, bool]:
    """``(family, byte_fallback)`` with family ``byte_level``, ``metaspace`` or ``plain``.

    Read from the fast tokenizer's pipeline when there is one, else guessed from how many vocabulary
    entries start with ``Ġ`` or ``▁``."""
    j = _backend_json(tok)
    vocab = None
    if j is not None:
        parts = []
        for section in ("pre_tokenizer", "decoder"):
            parts.extend(_walk_types(j.get(section)))
        types = {p.get("type") for p in parts}
        model = j.get("model") or {}
        byte_fallback = bool(model.get("byte_fallback", False))
        if "ByteLevel" in types:
            return "byte_level", byte_fallback
        replaces_metaspace = any(p.get("type") == "Replace" and (p.get("pattern") or {}).get("String") == METASPACE
                                 for p in parts)
        norm = _walk_types(j.get("normalizer"))
        normalises_space = any(p.get("type") == "Replace" and p.get("content") == METASPACE for p in norm)
        if "Metaspace" in types or replaces_metaspace or normalises_space:
            return "metaspace", byte_fallback
        if model.get("type") == "WordPiece":
            return "plain", False
    vocab = tok.get_vocab()
    n = max(len(vocab), 1)
    g = sum(1 for s in vocab if s.startswith("\u0120"))  # Ġ
    m = sum(1 for s in vocab if s.startswith(METASPACE))
    byte_fallback = sum(1 for s in vocab if BYTE_FALLBACK.match(s)) >= 200
    if g > m and g / n > 0.05:
        return "byte_level", False
    if m / n > 0.05:
        return "metaspace", byte_fallback
    return "plain", byte_fallback


def normalise_token(token: str, family: str, byte_fallback: bool = False) -> tuple[bytes | None, bool]:
    """``(bytes of the text the token stands for, is_byte_fallback)``; ``None`` when it cannot be read."""
    if family == "byte_level":
        table = byte_level_decoder()
        try:
            return bytes(table[c] for c in token), False
        except KeyError:
            return None, False
    if byte_fallback or family == "metaspace":
        m = BYTE_FALLBACK.match(token)
        if m:
            return bytes([int(m.group(1), 16)]), True
    if family == "metaspace":
        token = token.replace(METASPACE, " ")
    return token.encode("utf-8"), False


def display(key: bytes) -> str:
    """Readable form of a normalised token (invalid UTF-8 bytes shown as ``\\xNN``)."""
    return key.decode("utf-8", errors="backslashreplace")


def _special_ids(tok) -> set[int]:
    ids = set(int(i) for i in (getattr(tok, "all_special_ids", None) or []) if i is not None)
    for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def token_keys(tok, include_added: bool = True) -> tuple[dict[bytes, int], dict]:
    """Normalised bytes -> the one id chosen for it, plus statistics about what was dropped."""
    family, byte_fallback = detect_family(tok)
    special = _special_ids(tok)
    added = {int(i): t for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()}
    best: dict[bytes, tuple[int, int]] = {}  # key -> (rank, id)
    stats = {"family": family, "byte_fallback": byte_fallback, "vocab_size": len(tok), "special": 0,
             "added_skipped": 0, "unreadable": 0, "empty": 0, "duplicates": 0}
    for token, i in tok.get_vocab().items():
        i = int(i)
        if i in special:
            stats["special"] += 1
            continue
        if i in added:
            if not include_added:
                stats["added_skipped"] += 1
                continue
            content = getattr(added[i], "content", token)
            key, rank = content.encode("utf-8"), _RANK_ADDED
        else:
            key, is_bf = normalise_token(token, family, byte_fallback)
            if key is None:
                stats["unreadable"] += 1
                continue
            rank = _RANK_BYTE_FALLBACK if is_bf else _RANK_REGULAR
        if not key:
            stats["empty"] += 1
            continue
        cand = (rank, i)
        old = best.get(key)
        if old is not None:
            stats["duplicates"] += 1
            if cand >= old:
                continue
        best[key] = cand
    keys = {k: i for k, (_, i) in best.items()}
    stats["normal_tokens"] = len(keys)
    return keys, stats


@dataclass
class SharedVocab:
    """Tokens two tokenizers share, aligned pairwise: ``teacher_ids[k]`` and ``target_ids[k]`` both
    stand for ``keys[k]`` (bytes; ``strings[k]`` is the readable form). Sorted by ``keys``."""

    teacher_ids: torch.Tensor
    target_ids: torch.Tensor
    keys: list[bytes]
    strings: list[str]
    teacher_vocab_size: int
    target_vocab_size: int
    teacher_stats: dict = field(default_factory=dict)
    target_stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_shared(self) -> int:
        return len(self.keys)

    @property
    def teacher_coverage(self) -> float:
        """Shared tokens as a share of the teacher's vocabulary (``len(tokenizer)``)."""
        return self.n_shared / max(self.teacher_vocab_size, 1)

    @property
    def target_coverage(self) -> float:
        return self.n_shared / max(self.target_vocab_size, 1)

    def subset(self, mask: torch.Tensor) -> "SharedVocab":
        """Keep the entries where ``mask`` (bool, one per shared token) is true."""
        keep = mask.nonzero().flatten().tolist()
        return SharedVocab(self.teacher_ids[mask], self.target_ids[mask], [self.keys[k] for k in keep],
                           [self.strings[k] for k in keep], self.teacher_vocab_size, self.target_vocab_size,
                           dict(self.teacher_stats), dict(self.target_stats))

    def stats(self) -> dict:
        return {
            "shared": self.n_shared,
            "teacher_vocab_size": self.teacher_vocab_size,
            "target_vocab_size": self.target_vocab_size,
            "teacher_coverage": round(self.teacher_coverage, 6),
            "target_coverage": round(self.target_coverage, 6),
            "teacher": dict(self.teacher_stats),
            "target": dict(self.target_stats),
        }


def shared_vocab(teacher_tok, target_tok, include_added: bool = True) -> SharedVocab:
    """The normalised token strings both tokenizers have, with one id per side for each."""
    tk, ts = token_keys(teacher_tok, include_added)
    gk, gs = token_keys(target_tok, include_added)
    keys = sorted(set(tk) & set(gk))
    return SharedVocab(
        teacher_ids=torch.tensor([tk[k] for k in keys], dtype=torch.long),
        target_ids=torch.tensor([gk[k] for k in keys], dtype=torch.long),
        keys=keys,
        strings=[display(k) for k in keys],
        teacher_vocab_size=len(teacher_tok),
        target_vocab_size=len(target_tok),
        teacher_stats=ts,
        target_stats=gs,
    )
