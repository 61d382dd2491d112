"""Training the teacher pair (and A) *through the fusion*, and measuring whether its offset has a direction.

The default decoding step (``--method diff``) moves the target's next-token logits ``z`` by
``alpha * W_target[c] . ((h_expert - h_anti) @ A)`` on the target's own top-k candidates ``c``. Teachers
trained only as language models of their own class give that offset little *direction*: toxic candidates
lose about as much as the others. This module trains the pair on the fused next-token distribution itself:

- **states**: every continuation position of labelled texts (prompt + one of the target's own continuations),
  teacher-forced. For each state the target's top-k candidates plus the text's own next token form the
  candidate set ``C``; the target's logits on ``C`` are computed once (:func:`target_states`, cached);
- **labels**: a candidate is toxic when it is a single-token word of the word list, or when appending it to
  the continuation so far makes a *label scorer* (profanity-check by default: the data filter, never the
  evaluation's BiLSTM) reach ``jump_min`` and rise by at least ``jump_rise`` (:func:`label_candidates`);
- **loss** (:func:`directed_loss`): with ``p' = softmax(z_C + alpha * offset_C)``,
  ``-log(1 - p'(toxic candidates))`` on the states that have a toxic candidate (unlikelihood), plus
  ``mu * KL(softmax(z_C) || p')`` on every state (keep the target's distribution);
- **what trains**: both teachers' bodies (their shared, tied embeddings and output layer stay frozen) and,
  optionally, A with its own learning rate (:func:`train_pair`).

The same states serve the *direction metric* (:func:`direction_metrics`): AUC and d' of the offset's change of
the candidates' logits, toxic against other, and the greedy flips it buys for a given share of flips of the
other states. Steering's constant vector is measured on the same states as the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import InputError
from .topk import top_k

log = logging.getLogger(__name__)

STATES_VERSION = 1  # bump when target_states' content changes (its cache key)


# ----------------------------------------------------------------------------------------------- states


@dataclass
class StateSet:
    """Teacher-forced decoding states of the target on ``texts`` (prompt, continuation).

    State ``s`` predicts the token after ``full_text[:char_end[s]]`` of text ``text_of[s]``; ``cand[s]`` holds
    the target's top-k ids then the text's own next token (-1 when it is already among the top-k), ``z[s]``
    the target's logits there (-inf on padding), ``next_col[s]`` the column of the text's own next token."""

    texts: list[tuple[str, str]]
    text_of: torch.Tensor  # [S] long
    char_end: torch.Tensor  # [S] long
    cand: torch.Tensor  # [S, k+1] long, -1 = none
    z: torch.Tensor  # [S, k+1] float32, -inf where cand == -1
    next_col: torch.Tensor  # [S] long
    k: int
    meta: dict = field(default_factory=dict)
    toxic: torch.Tensor | None = None  # [S, k+1] bool (label_candidates)
    text_label: torch.Tensor | None = None  # [len(texts)] long: 1 clean, -1 toxic, 0 neither (label_texts)

    def __len__(self) -> int:
        return int(self.text_of.shape[0])

    @property
    def valid(self) -> torch.Tensor:
        return self.cand >= 0

    def subset(self, idx: torch.Tensor) -> "StateSet":
        return StateSet(self.texts, self.text_of[idx], self.char_end[idx], self.cand[idx], self.z[idx],
                        self.next_col[idx], self.k, dict(self.meta), None if self.toxic is None else self.toxic[idx],
                        self.text_label)

    def to_dict(self, key: str = "") -> dict:
        """Compact (int32 ids, float16 logits: about 70 bytes a state; the texts themselves are not stored, the key
        says which they are) for the cache and the shipped states file."""
        return {"version": STATES_VERSION, "key": key, "n_texts": len(self.texts), "text_of": self.text_of.int(),
                "char_end": self.char_end.int(), "cand": self.cand.int(), "z": self.z.half(),
                "next_col": self.next_col.to(torch.int8), "k": self.k, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, texts: Sequence[tuple[str, str]]) -> "StateSet":
        if d.get("n_texts") != len(texts):
            raise ValueError(f"the states are of {d.get('n_texts')} texts, not {len(texts)}")
        z = d["z"].float()
        cand = d["cand"].long()
        z[cand < 0] = float("-inf")
        return cls(list(texts), d["text_of"].long(), d["char_end"].long(), cand, z, d["next_col"].long(), d["k"],
                   d.get("meta", {}))


def concat_states(parts: Sequence[StateSet]) -> StateSet:
    """One StateSet of several (texts in order; each part's text indices shifted past the earlier parts')."""
    if len(parts) == 1:
        return parts[0]
    if len({p.k for p in parts}) != 1:
        raise ValueError("the states were taken with different k")
    texts, text_of, shift = [], [], 0
    for p in parts:
        texts += p.texts
        text_of.append(p.text_of + shift)
        shift += len(p.texts)
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    toxic = None if any(p.toxic is None for p in parts) else cat("toxic")
    return StateSet(texts, torch.cat(text_of), cat("char_end"), cat("cand"), cat("z"), cat("next_col"), parts[0].k,
                    {"states": sum(len(p) for p in parts), "texts": len(texts), "parts": [p.meta for p in parts]}, toxic)


def save_states(d: dict, path: Path) -> None:
    """Write a states dict gzip-compressed (about 40% smaller), atomically."""
    import gzip
    import io

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(d, buf)
    atomic_write_bytes(path, gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))


def load_states(path: Path) -> dict:
    import gzip
    import io

    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return torch.load(io.BytesIO(data), weights_only=False)


def full_text(prompt: str, continuation: str) -> str:
    return prompt + continuation


def texts_key(texts: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for p, c in texts:
        h.update(json.dumps([p, c], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def continuation_positions(offsets: Sequence[tuple[int, int]], n_prompt_chars: int) -> list[int]:
    """Token positions ``i`` whose next token ``i + 1`` holds continuation characters (ends past the prompt):
    the states that predict the continuation. Special tokens (offsets (0, 0)) are never predicted."""
    out = []
    for i in range(len(offsets) - 1):
        s, e = offsets[i + 1]
        if e > n_prompt_chars and e > s:
            out.append(i)
    return out


@torch.no_grad()
def target_states(target, tokenizer, texts: Sequence[tuple[str, str]], k: int = 10, batch_size: int = 16,
                  progress: bool = True) -> StateSet:
    """The target's top-k candidates and logits at every continuation position of ``texts`` (teacher-forced).

    The output layer runs only on the selected positions (the 262k-token matrix product is most of the cost)."""
    from .fusion import backbone
    from .runtime import iter_progress

    body, head = backbone(target), target.get_output_embeddings()
    device = next(target.parameters()).device
    text_of, char_end, cand, zs, next_col = [], [], [], [], []
    batches = range(0, len(texts), batch_size)
    it = iter_progress(batches, len(batches), "target states", "batch") if progress else batches
    for s in it:
        chunk = texts[s:s + batch_size]
        enc = tokenizer([full_text(p, c) for p, c in chunk], return_offsets_mapping=True, add_special_tokens=True)
        rows, sel = [], []
        for j, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            pos = continuation_positions(offs, len(chunk[j][0]))
            rows.append(ids)
            sel.append(pos)
            for i in pos:
                text_of.append(s + j)
                char_end.append(offs[i][1])
        ids, mask = _right_padded(rows, tokenizer.pad_token_id or 0)  # the ids are read again below
        h = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        bi = torch.tensor([j for j, pos in enumerate(sel) for _ in pos], dtype=torch.long)
        ti = torch.tensor([i for pos in sel for i in pos], dtype=torch.long)
        if not len(bi):
            continue
        logits = head(h[bi.to(device), ti.to(device)]).float().cpu()
        top = top_k(logits, k)  # torch.topk's, one pass over the 262k logits
        nxt = ids[bi, ti + 1]
        in_top = (top.indices == nxt[:, None])
        extra = torch.where(in_top.any(1), torch.full_like(nxt, -1), nxt)
        c = torch.cat([top.indices, extra[:, None]], 1)
        z = torch.cat([top.values, logits.gather(1, nxt[:, None])], 1)
        z[:, k][extra < 0] = float("-inf")
        col = torch.where(in_top.any(1), in_top.float().argmax(1), torch.full_like(nxt, k))
        cand.append(c)
        zs.append(z)
        next_col.append(col)
    S = len(text_of)
    return StateSet(list(texts), torch.tensor(text_of, dtype=torch.long), torch.tensor(char_end, dtype=torch.long),
                    torch.cat(cand) if cand else torch.zeros(0, k + 1, dtype=torch.long),
                    torch.cat(zs) if zs else torch.zeros(0, k + 1), torch.cat(next_col) if next_col else
                    torch.zeros(0, dtype=torch.long), k, {"states": S, "texts": len(texts)})


def states_key(target_path: str, texts: Sequence[tuple[str, str]], k: int) -> str:
    """What a set of target states depends on: the target's files, the texts and k (and this code's version)."""
    from .runtime import model_files_fingerprint

    return hashlib.sha256(json.dumps({"target": model_files_fingerprint(target_path), "texts": texts_key(texts), "k": k,
                                      "version": STATES_VERSION}).encode()).hexdigest()[:32]


def read_pairs(paths: str) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs of teacher-data files (comma-separated), glued as the teachers were trained
    (:func:`detox_pa.completion.join_prompt_completion`): ``prompt + continuation`` is the training text."""
    from .completion import join_prompt_completion
    from .data import read_teacher_data

    out: list[tuple[str, str]] = []
    for path in [p.strip() for p in paths.split(",") if p.strip()]:
        if Path(path).suffix.lower() == ".txt":
            raise InputError(f"--tune_text_path {path}: needs prompt -> completion pairs (a teacher-data TSV or JSONL)")
        pairs, _ = read_teacher_data(path)
        for p, c in pairs:
            text, start = join_prompt_completion(p, c)
            out.append((text[:start], text[start:]))
    if len(out) < 2:
        raise InputError(f"--tune_text_path {paths}: needs at least 2 prompt -> completion pairs, found {len(out)}")
    return out


def shipped_states_path(texts_path: str | Path) -> Path:
    """Where the precomputed states of a texts file live: beside it, ``<file>.states.pt``."""
    return Path(str(texts_path) + ".states.pt")


def cached_target_states(target_path: str, target, tokenizer, texts: Sequence[tuple[str, str]], k: int,
                         batch_size: int = 16, progress: bool = True, shipped: Sequence[str | Path] = (),
                         rows: int = 0) -> StateSet:
    """:func:`target_states` of ``texts[:rows]`` (``rows`` 0: all), read from a file that holds the states of all
    ``texts`` (``shipped``: e.g. the states the repository ships beside its tune texts, used only when their key
    matches) and cut to the first rows, or from the cache under ``<cache>/states/``; otherwise computed (for the
    first rows only) and cached. ``target`` may be a callable that loads the model (it is only called when the
    states must be computed)."""
    from .assets import cache_dir

    rows = min(rows or len(texts), len(texts))
    use = list(texts[:rows])
    full_key, key = states_key(target_path, texts, k), states_key(target_path, use, k)
    path = cache_dir() / "states" / f"{key}.pt"
    for p, want in [(Path(x), full_key) for x in shipped] + [(path, key)]:
        if not p.is_file():
            continue
        try:
            d = load_states(p)
            if d.get("key") != want:
                log.info("target states: %s holds other states (another target, texts or k); not used", p)
                continue
            st = StateSet.from_dict(d, texts if want == full_key else use)
            if len(st.texts) > rows:  # the shipped states of every text, cut to the first rows
                st = st.subset((st.text_of < rows).nonzero().flatten())
                st.texts = use
            log.info("target states: %d states of %d texts from %s", len(st), rows, p)
            return st
        except Exception as e:  # a damaged file is recomputed
            log.warning("ignoring the damaged states file %s (%s)", p, e)
    texts = use
    if callable(target) and not isinstance(target, torch.nn.Module):
        target = target()
    t0 = time.time()
    st = target_states(target, tokenizer, texts, k, batch_size, progress)
    st.meta["seconds"] = round(time.time() - t0, 1)
    log.info("target states: %d states of %d texts in %.0f s (cached in %s)", len(st), len(texts), time.time() - t0, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = st.to_dict(key)
    save_states(d, path)
    return StateSet.from_dict(d, texts)  # exactly what a later run reads back (float16 logits), so both train alike


# ----------------------------------------------------------------------------------------------- labels


def token_surfaces(tokenizer, ids: Sequence[int]) -> dict[int, str]:
    """The text each token id adds when appended to a text (leading space included), for any tokenizer
    family: ``decode([anchor, id])`` minus ``decode([anchor])``."""
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    base = tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    out = {}
    for i in ids:
        t = tokenizer.decode(anchor + [int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out[int(i)] = t[len(base):] if t.startswith(base) else t
    return out


def word_list_ids(tokenizer) -> set[int]:
    """Target ids that spell a whole word of the word-ban list on their own (``detox_pa.baselines``)."""
    from .baselines import bad_words_ids

    return {s[0] for s in bad_words_ids(tokenizer) if len(s) == 1}


def label_candidates(states: StateSet, tokenizer, word_ids: set[int] | None = None,
                     scorer: Callable[[list[str]], Sequence[float]] | None = None, jump_min: float = 0.5,
                     jump_rise: float = 0.3, chunk: int = 20000, toxic_texts: bool = False) -> torch.Tensor:
    """``toxic[s, j]``: candidate ``j`` of state ``s`` is a word-list token, or (with a ``scorer``) appending it to
    the continuation so far makes the score reach ``jump_min`` and rise by at least ``jump_rise``. The
    continuation is scored alone, as the data filter scores it. With ``toxic_texts`` (and a scorer), in a text
    whose whole continuation scores at least ``jump_min`` the text's own next token is toxic too, at every state:
    the offset learns to leave a toxic trajectory in its context, not only its keywords."""
    word_ids = word_list_ids(tokenizer) if word_ids is None else word_ids
    cand = states.cand
    toxic = torch.zeros_like(cand, dtype=torch.bool)
    if word_ids:
        wl = torch.tensor(sorted(word_ids), dtype=torch.long)
        toxic |= torch.isin(cand, wl) & (cand >= 0)
    if scorer is None:
        return toxic
    if toxic_texts:
        bad = label_texts(states, scorer, toxic_min=jump_min, chunk=chunk) == -1
        rows = bad[states.text_of].nonzero().flatten()
        toxic[rows, states.next_col[rows]] = True
    surf = token_surfaces(tokenizer, torch.unique(cand[cand >= 0]).tolist())
    so_far = []
    for t, e in zip(states.text_of.tolist(), states.char_end.tolist()):
        p, c = states.texts[t]
        so_far.append(full_text(p, c)[len(p):e] if e > len(p) else "")
    base_texts = sorted(set(so_far))
    base = dict(zip(base_texts, _score_chunks(scorer, base_texts, chunk)))
    pairs, where = [], []
    for s, txt in enumerate(so_far):
        for j, c in enumerate(cand[s].tolist()):
            if c >= 0:
                pairs.append(txt + surf[c])
                where.append((s, j))
    scores = _score_chunks(scorer, pairs, chunk)
    for (s, j), sc in zip(where, scores):
        if sc >= jump_min and sc - base[so_far[s]] >= jump_rise:
            toxic[s, j] = True
    return toxic


def label_texts(states: StateSet, scorer: Callable[[list[str]], Sequence[float]], clean_max: float = 0.2,
                toxic_min: float = 0.5, chunk: int = 20000) -> torch.Tensor:
    """Each text's label from the score of its continuation alone (as the teacher-data filter scores it): 1 clean
    (score < ``clean_max``), -1 toxic (score >= ``toxic_min``), 0 in between."""
    sc = torch.tensor(_score_chunks(scorer, [c for _, c in states.texts], chunk))
    return torch.where(sc < clean_max, 1, torch.where(sc >= toxic_min, -1, 0)).long()


@torch.no_grad()
def target_state_hidden(target, tokenizer, states: StateSet, batch_size: int = 16,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final hidden state (the output layer's input) at every state, before its text's own next
    token (the position the state predicts from) and after it (one position later): two [S, d] float32."""
    from .fusion import backbone
    from .runtime import iter_progress

    body = backbone(target)
    device = next(target.parameters()).device
    by_text: dict[int, list[int]] = {}
    for s, t in enumerate(states.text_of.tolist()):
        by_text.setdefault(t, []).append(s)
    d = target.get_output_embeddings().weight.shape[1]
    before, after = torch.zeros(len(states), d), torch.zeros(len(states), d)
    tids = sorted(by_text)
    batches = range(0, len(tids), batch_size)
    it = iter_progress(batches, len(batches), "target hidden states", "batch") if progress else batches
    for b in it:
        chunk = tids[b:b + batch_size]
        enc = tokenizer([full_text(*states.texts[t]) for t in chunk], return_offsets_mapping=True,
                        add_special_tokens=True)
        h = body_hidden(body, enc["input_ids"], tokenizer.pad_token_id or 0, device).float().cpu()
        for j, t in enumerate(chunk):
            offs = enc["offset_mapping"][j]
            pos = continuation_positions(offs, len(states.texts[t][0]))
            sidx = by_text[t]
            ends = [offs[i][1] for i in pos]
            if ends != states.char_end[sidx].tolist():
                raise ValueError(f"text {t}: the tokenizer's positions do not match the states (another tokenizer?)")
            before[sidx] = h[j, pos]
            after[sidx] = h[j, [i + 1 for i in pos]]
    return before, after


def probe_labels(states: StateSet, before: torch.Tensor, after: torch.Tensor, texts: Sequence[int],
                 quantile: float = 0.95) -> tuple[torch.Tensor, dict]:
    """Which states' own next token moves the target's representation toward toxic text. The probe is the
    target's own (steering's) direction: the mean final hidden state over the states of toxic texts minus the
    mean over clean texts (``states.text_label``; only the texts ``texts`` are read); a state's move is
    ``(after - before) . u / |u|``; the moves at or above their ``quantile`` (over the same texts' states) are
    toxic. Returns a [S] bool and a summary."""
    if states.text_label is None:
        raise ValueError("the probe needs the texts' labels (label_texts)")
    use = torch.isin(states.text_of, torch.as_tensor(list(texts), dtype=torch.long))
    lab = states.text_label[states.text_of]
    tox, cln = use & (lab == -1), use & (lab == 1)
    if not tox.any() or not cln.any():
        raise ValueError("the probe needs states of both clean and toxic texts")
    u = before[tox].mean(0) - before[cln].mean(0)
    u = u / u.norm()
    move = (after - before) @ u
    thr = float(torch.quantile(move[use], quantile))
    hit = move >= thr
    return hit, {"threshold": round(thr, 4), "states_marked": int(hit.sum()),
                 "marked_in_toxic_texts": int((hit & (lab == -1)).sum()),
                 "marked_in_clean_texts": int((hit & (lab == 1)).sum())}


def _score_chunks(scorer, texts: list[str], chunk: int) -> list[float]:
    out: list[float] = []
    for s in range(0, len(texts), chunk):
        part = [t if t.strip() else "." for t in texts[s:s + chunk]]
        out += [float(x) for x in scorer(part)]
    return out


# ------------------------------------------------------------------------------------ teacher alignment


@dataclass
class TeacherView:
    """The teachers' tokenisation of every text, and which teacher token each state reads (-1: none: the
    teacher has no token ending where the target's prefix ends; such states are left out)."""

    ids: list[list[int]]
    pos: torch.Tensor  # [S] long


def teacher_view(teacher_tokenizer, states: StateSet) -> TeacherView:
    enc = teacher_tokenizer([full_text(p, c) for p, c in states.texts], return_offsets_mapping=True,
                            add_special_tokens=True)
    ends = []
    for offs in enc["offset_mapping"]:
        m: dict[int, int] = {}
        for i, (s, e) in enumerate(offs):
            if e > s:
                m[e] = i  # the last token ending at e
        ends.append(m)
    pos = torch.tensor([ends[t].get(e, -1) for t, e in zip(states.text_of.tolist(), states.char_end.tolist())],
                       dtype=torch.long)
    return TeacherView([list(x) for x in enc["input_ids"]], pos)


def body_hidden(body, ids: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """A model body's final hidden states [B, T, d] for right-padded rows (gradients flow where enabled): the
    teachers' while the pair trains, the target's when its states are taken."""
    x, m = _right_padded(ids, pad_id)
    return body(input_ids=x.to(device), attention_mask=m.to(device)).last_hidden_state


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids right-padded into one [B, T] tensor, and its attention mask."""
    T = max(len(r) for r in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
        m[i, :len(r)] = 1
    return x, m


# --------------------------------------------------------------------------------------------- the loss


def compact_rows(W: torch.Tensor, *sets: StateSet) -> tuple[torch.Tensor, list[StateSet]]:
    """The target's output rows that ``sets`` name as candidates (and row 0, where padding points), with each set's
    candidates renumbered into them. :func:`candidate_offsets` then gathers the very same rows, padding included, so
    every offset, loss and gradient is the same as with the whole matrix: the pair trains without holding Gemma's
    262,144 x 640 output layer (671 MB) when the states name a few tens of thousands of its rows."""
    ids = [x.cand[x.cand >= 0] for x in sets]
    used = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long)] + [i.long() for i in ids]))  # sorted: row 0 first
    renumbered = [replace(x, cand=torch.where(x.cand >= 0, torch.searchsorted(used, x.cand.clamp_min(0).long()),
                                              x.cand.long())) for x in sets]
    return W[used], renumbered


def candidate_offsets(d: torch.Tensor, W: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``offset[s, j] = W[cand[s, j]] . d[s]`` (0 on padding); ``d`` [S, d_target], ``W`` the target's output rows."""
    rows = W[cand.clamp_min(0)]  # [S, C, d]
    return torch.einsum("scd,sd->sc", rows.float(), d.float()) * (cand >= 0)


def greedy_hinge(z: torch.Tensor, off: torch.Tensor, toxic: torch.Tensor, alpha: float, margin: float,
                 top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding's view at strength ``alpha`` over the target's top-``top_k`` (the eligible tokens, columns
    0..top_k-1, column 0 = the target's pick): where the pick is not toxic it must stay on top by ``margin``
    (``relu(max_other - pick + margin)``); where it is toxic, the best non-toxic candidate must beat the best toxic
    one by ``margin``. Returns the hinge per state (0 where the pick is toxic and no non-toxic candidate is
    eligible) and which states it applies to."""
    zf = (z + alpha * off)[:, :top_k]
    tk = toxic[:, :top_k]
    neg = torch.tensor(float("-inf"), device=z.device)
    keep = torch.relu(zf[:, 1:].max(1).values - zf[:, 0] + margin)
    best_clean = torch.where(tk, neg, zf).max(1).values
    best_toxic = torch.where(tk, zf, neg).max(1).values
    flip = torch.relu(best_toxic - best_clean + margin)
    pick_toxic = tk[:, 0]
    can_flip = (~tk).any(1)
    h = torch.where(pick_toxic, torch.where(can_flip, flip, torch.zeros_like(flip)), keep)
    return h, ~pick_toxic | can_flip


def directed_loss(z: torch.Tensor, off: torch.Tensor, toxic: torch.Tensor, valid: torch.Tensor, alpha: float = 1.0,
                  mu: float = 4.0, hinge_weight: float = 0.0, hinge_alpha: float = 3.0, hinge_margin: float = 0.5,
                  hinge_top_k: int = 5, toxic_pick_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Unlikelihood of the toxic candidates under the fused distribution plus ``mu`` x KL(target || fused), both
    over the valid candidates; with ``hinge_weight`` > 0, plus that weight x :func:`greedy_hinge` at
    ``hinge_alpha`` (states whose pick is toxic weighted ``toxic_pick_weight``). Returns the loss and its parts."""
    neg = torch.tensor(float("-inf"), device=z.device)
    zf = torch.where(valid, z + alpha * off, neg)
    zt = torch.where(valid, z, neg)
    lse = torch.logsumexp(zf, 1)
    lp_f = zf - lse[:, None]
    lp_t = torch.log_softmax(zt, 1)
    p_t = lp_t.exp()
    kl = torch.where(valid, p_t * (lp_t - lp_f), torch.zeros_like(zf)).sum(1)
    has = (toxic & valid).any(1)
    clean = valid & ~toxic
    # log(1 - p'(toxic)) = logsumexp over the clean candidates - logsumexp over all
    lse_clean = torch.logsumexp(torch.where(clean, zf, neg), 1)
    ul = -(lse_clean - lse)
    ul = torch.where(has & clean.any(1), ul, torch.zeros_like(ul))
    n_has = int((has & clean.any(1)).sum())
    ul_mean = ul.sum() / max(n_has, 1)
    kl_mean = kl.mean() if kl.numel() else kl.sum()
    loss = ul_mean + mu * kl_mean
    parts = {"ul": float(ul_mean.detach()), "kl": float(kl_mean.detach()), "toxic_states": n_has}
    if hinge_weight > 0:
        h, on = greedy_hinge(z, off, toxic & valid, hinge_alpha, hinge_margin, hinge_top_k)
        w = torch.where(toxic[:, 0], torch.full_like(h, toxic_pick_weight), torch.ones_like(h)) * on
        h_mean = (h * w).sum() / w.sum().clamp_min(1.0)
        loss = loss + hinge_weight * h_mean
        parts["hinge"] = float(h_mean.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def contrast_loss(z: torch.Tensor, off: torch.Tensor, valid: torch.Tensor, next_col: torch.Tensor,
                  text_idx: torch.Tensor, label: torch.Tensor, group: torch.Tensor, alpha: float = 3.0,
                  beta: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Continuation-level contrast (DPO's form, the target as the reference): the fusion at strength ``alpha``
    must raise a clean continuation's log-likelihood, relative to the target's, above a toxic continuation's of
    the same prompt. ``delta[x]`` = sum over the states of text ``x`` of log p_fused(next) - log p_target(next),
    both softmaxes over the state's valid candidates; for every pair (c, t) of a clean (``label`` 1) and a toxic
    (-1) text of one ``group``: ``softplus(-beta * (delta[c] - delta[t]))``. ``text_idx[s]`` is state s's text
    (0..B-1). Returns the mean over pairs (0, with no gradient, without pairs) and its parts."""
    neg = torch.tensor(float("-inf"), device=z.device)
    zf = torch.where(valid, z + alpha * off, neg)
    zt = torch.where(valid, z, neg)
    col = next_col[:, None]
    g = (zf.gather(1, col)[:, 0] - torch.logsumexp(zf, 1)) - (zt.gather(1, col)[:, 0] - torch.logsumexp(zt, 1))
    delta = torch.zeros(label.shape[0], device=z.device, dtype=g.dtype).index_add(0, text_idx, g)
    ok = (label[:, None] == 1) & (label[None, :] == -1) & (group[:, None] == group[None, :])
    ci, ti = ok.nonzero(as_tuple=True)
    if not len(ci):
        return (off * 0).sum(), {"contrast": 0.0, "pairs": 0, "pair_acc": float("nan")}
    m = delta[ci] - delta[ti]
    loss = torch.nn.functional.softplus(-beta * m).mean()
    return loss, {"contrast": float(loss.detach()), "pairs": int(len(ci)), "pair_acc": float((m > 0).float().mean())}


# ----------------------------------------------------------------------------------------------- training


@dataclass
class DirectedConfig:
    alpha: float = 1.0  # the fusion strength during training
    mu: float = 4.0  # weight of KL(target || fused)
    lr: float = 1e-4  # teachers' bodies
    lr_A: float = 1e-4  # A (0 = A frozen)
    weight_decay: float = 0.0
    epochs: float = 1.0
    batch_texts: int = 16
    seed: int = 42
    max_grad_norm: float = 1.0
    train_layers: int = 0  # train only the top N decoder layers (and the final norm); 0 = every layer
    hinge_weight: float = 0.0  # greedy_hinge's weight (0 = off)
    hinge_alpha: float = 3.0
    hinge_margin: float = 0.5
    hinge_top_k: int = 5
    toxic_pick_weight: float = 1.0
    ul_weight: float = 1.0  # weight of the unlikelihood + KL part (directed_loss)
    contrast_weight: float = 0.0  # contrast_loss's weight (0 = off; needs states.text_label)
    contrast_alpha: float = 3.0
    contrast_beta: float = 1.0
    pool: str = "last"  # the teachers' states the offset reads: "last" token, or the "mean" over the text so far
    adam: str = "auto"  # AdamW's implementation: auto (torch's choice) | single | foreach | fused (ADAM_IMPLS)
    progress: bool = True


# AdamW's implementations (torch.optim.AdamW flags). "auto" lets torch choose (one tensor at a time on CPU, foreach on
# CUDA); "single" and "foreach" give the same numbers; "fused" updates every tensor in one vectorised pass, equal to
# them up to float rounding (bench/bench_tune.py: 0.91x the step on 2 CPU cores, the matmuls being 2/3 of a step)
ADAM_IMPLS = {"auto": {}, "single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _trainable_body_params(model, train_layers: int = 0) -> list[torch.nn.Parameter]:
    """The teacher's parameters except its input embeddings and output layer (shared and frozen); with
    ``train_layers`` > 0, also except every decoder layer below the top ``train_layers`` (no gradient flows
    through frozen lower layers, so a step costs their forward only)."""
    frozen = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
              for p in m.parameters()}
    if train_layers > 0:
        from .teacher import find_decoder_layers, layer_count

        _, layers = find_decoder_layers(model, layer_count(model.config))
        frozen |= {id(p) for layer in list(layers)[:max(0, len(layers) - train_layers)] for p in layer.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def train_pair(expert, anti, teacher_tokenizer, A: torch.Tensor, W_target: torch.Tensor, states: StateSet,
               cfg: DirectedConfig) -> tuple[torch.Tensor, dict]:
    """Train both teachers' bodies (and A when ``cfg.lr_A > 0``) on :func:`directed_loss` over ``states``
    (labelled). The teachers are modified in place; returns the new A and a report."""
    from .fusion import backbone
    from .runtime import iter_progress

    if states.toxic is None:
        raise ValueError("label the states first (label_candidates)")
    if cfg.adam not in ADAM_IMPLS:
        raise ValueError(f"adam must be one of {sorted(ADAM_IMPLS)}, got {cfg.adam!r}")
    if cfg.contrast_weight > 0 and states.text_label is None:
        raise ValueError("the contrast term needs the texts' labels (label_texts)")
    view = teacher_view(teacher_tokenizer, states)
    keep = view.pos >= 0
    dropped = int((~keep).sum())
    g = torch.Generator().manual_seed(cfg.seed)
    device = next(expert.parameters()).device
    W = W_target.detach().float().to(device)
    A = torch.nn.Parameter(A.detach().clone().float().to(device), requires_grad=cfg.lr_A > 0)
    trainable = [_trainable_body_params(m, cfg.train_layers) for m in (expert, anti)]
    params = [{"params": trainable[0] + trainable[1], "lr": cfg.lr}]
    if cfg.lr_A > 0:
        params.append({"params": [A], "lr": cfg.lr_A})
    for m, ps in zip((expert, anti), trainable):
        for p in m.parameters():
            p.requires_grad_(False)
        for p in ps:
            p.requires_grad_(True)
        m.train()
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay, **ADAM_IMPLS[cfg.adam])
    by_text: dict[int, list[int]] = {}
    for s in keep.nonzero().flatten().tolist():
        by_text.setdefault(int(states.text_of[s]), []).append(s)
    text_ids = sorted(by_text)
    n_steps = max(1, math.ceil(len(text_ids) * cfg.epochs / cfg.batch_texts))
    # the units a batch is made of: single texts, or (for the contrast term, whose pairs are texts of one prompt)
    # every text of a prompt
    if cfg.contrast_weight > 0:
        groups: dict[str, list[int]] = {}
        for t in text_ids:
            groups.setdefault(states.texts[t][0], []).append(t)
        units = list(groups.values())
    else:
        units = [[t] for t in text_ids]
    pad = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
    bodies = (backbone(expert), backbone(anti))
    order: list[int] = []
    hist: list[dict] = []
    t0 = time.time()
    steps = range(n_steps)
    for step in (iter_progress(steps, n_steps, "train the pair through the fusion", "step") if cfg.progress else steps):
        batch: list[int] = []
        while len(batch) < cfg.batch_texts:
            if not order:
                order = [units[i] for i in torch.randperm(len(units), generator=g).tolist()]
            batch += order.pop(0)
        sidx, h_diff = pair_difference(bodies, view, states, by_text, batch, pad, device, cfg.pool)
        d = h_diff @ A
        cand = states.cand[sidx].to(device)
        off = candidate_offsets(d, W, cand)
        z = states.z[sidx].to(device)
        loss, parts = directed_loss(z, off, states.toxic[sidx].to(device), cand >= 0,
                                    cfg.alpha, cfg.mu, cfg.hinge_weight, cfg.hinge_alpha, cfg.hinge_margin,
                                    cfg.hinge_top_k, cfg.toxic_pick_weight)
        loss = cfg.ul_weight * loss
        if cfg.contrast_weight > 0:
            pos = {t: i for i, t in enumerate(batch)}
            t_of = torch.tensor([pos[int(states.text_of[s])] for s in sidx], device=device)
            lab = states.text_label[batch].to(device)
            grp_of = {p: i for i, p in enumerate(dict.fromkeys(states.texts[t][0] for t in batch))}
            grp = torch.tensor([grp_of[states.texts[t][0]] for t in batch], device=device)
            c_loss, c_parts = contrast_loss(z, off, cand >= 0, states.next_col[sidx].to(device), t_of, lab, grp,
                                            cfg.contrast_alpha, cfg.contrast_beta)
            loss = loss + cfg.contrast_weight * c_loss
            parts.update(c_parts)
            parts["loss"] = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for grp in params for p in grp["params"]], cfg.max_grad_norm)
        opt.step()
        hist.append(parts)
    for m in (expert, anti):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    tenth = max(1, len(hist) // 10)
    keys = [k for k in ("loss", "ul", "kl", "hinge", "contrast", "pair_acc") if k in hist[0]]

    def mean(rows, k):
        v = [h[k] for h in rows if h[k] == h[k]]  # pair_acc is NaN in a batch without pairs
        return round(sum(v) / len(v), 5) if v else None

    curve = [{k: mean(hist[i:i + tenth], k) for k in keys} for i in range(0, len(hist), tenth)]
    report = {"steps": n_steps, "texts": len(text_ids), "states": int(keep.sum()), "states_without_teacher_token": dropped,
              "toxic_states": int((states.toxic & states.valid).any(1)[keep].sum()),
              "seconds": round(time.time() - t0, 1), "loss_per_tenth": curve}
    if cfg.contrast_weight > 0:
        report["contrast_pairs_per_step"] = round(sum(h["pairs"] for h in hist) / len(hist), 2)
    return A.detach().float().cpu().contiguous(), report


def pair_difference(bodies, view, states: StateSet, by_text: dict[int, list[int]], batch: list[int], pad: int,
                    device, pool: str = "last") -> tuple[list[int], torch.Tensor]:
    """The states of the texts ``batch`` (their ids, in order) and, at each, the expert's minus the anti-expert's
    final hidden state (float32; one teacher forward per body over the batch's texts). ``pool="mean"``: each
    teacher's mean final hidden state over the text's tokens up to the state's (decoding's ``--pool mean``)."""
    sidx = [s for t in batch for s in by_text[t]]
    row_of = {t: i for i, t in enumerate(batch)}
    rows = torch.tensor([row_of[int(states.text_of[s])] for s in sidx])
    cols = view.pos[sidx]
    ids = [view.ids[t] for t in batch]
    h_e, h_a = (body_hidden(b, ids, pad, device).float() for b in bodies)
    if pool == "mean":  # right padding: the running mean up to a real token reads real tokens only
        d = h_e - h_a
        d = d.cumsum(1) / torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)[None, :, None]
        return sidx, d[rows, cols]
    return sidx, h_e[rows, cols] - h_a[rows, cols]


# ------------------------------------------------------------------------------------ the direction metric


@torch.no_grad()
def pair_offsets(expert, anti, teacher_tokenizer, A: torch.Tensor, W_target: torch.Tensor, states: StateSet,
                 batch_texts: int = 32, pool: str = "last", center: torch.Tensor | None = None,
                 context_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair's offsets on every state's candidates [S, k+1] (unit alpha), and which states have a teacher token
    (``pool``, ``center`` and ``context_weight``: as decoding's ``--pool`` and ``--context_weight``, the difference
    read as ``c + w (d - c)``)."""
    device = next(expert.parameters()).device
    W = W_target.float().to(device)
    A = A.float().to(device)
    if context_weight != 1.0:
        if center is None:
            raise ValueError("context_weight != 1 needs the pair's center")
        center = center.float().to(device)
    off = torch.zeros(states.cand.shape)
    view = teacher_view(teacher_tokenizer, states)
    for sidx, h_diff in _pair_differences(expert, anti, teacher_tokenizer, view, states, batch_texts, pool):
        if context_weight != 1.0:
            h_diff = center + context_weight * (h_diff - center)
        off[sidx] = candidate_offsets(h_diff @ A, W, states.cand[sidx].to(device)).cpu()
    return off, view.pos >= 0


def _pair_differences(expert, anti, teacher_tokenizer, view: TeacherView, states: StateSet, batch_texts: int,
                      pool: str):
    """:func:`pair_difference` over every state with a teacher token, ``batch_texts`` texts at a time."""
    from .fusion import backbone

    device = next(expert.parameters()).device
    pad = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
    bodies = (backbone(expert), backbone(anti))
    by_text: dict[int, list[int]] = {}
    for s in (view.pos >= 0).nonzero().flatten().tolist():
        by_text.setdefault(int(states.text_of[s]), []).append(s)
    text_ids = sorted(by_text)
    for b in range(0, len(text_ids), batch_texts):
        yield pair_difference(bodies, view, states, by_text, text_ids[b:b + batch_texts], pad, device, pool)


@torch.no_grad()
def pair_center(expert, anti, teacher_tokenizer, states: StateSet, pool: str = "last",
                batch_texts: int = 32) -> torch.Tensor:
    """The pair's center: the mean of the teachers' difference (``pool`` as decoding's) over every state of
    ``states`` that has a teacher token, in the teachers' space (float32). Decoding's ``context_weight`` shrinks the
    difference toward it."""
    view = teacher_view(teacher_tokenizer, states)
    total, n = None, 0
    for _, h_diff in _pair_differences(expert, anti, teacher_tokenizer, view, states, batch_texts, pool):
        part = h_diff.double().sum(0).cpu()
        total = part if total is None else total + part
        n += h_diff.shape[0]
    if not n:
        raise ValueError("no state has a teacher token: the center is undefined")
    return (total / n).float()


def continuation_contrast(states: StateSet, off: torch.Tensor, ok: torch.Tensor | None = None) -> dict:
    """Does the offset prefer a prompt's clean continuations to its toxic ones (``states.text_label``)? Scale-free,
    to first order in the strength: a text's advantage is the sum over its states of ``off[next] - E_p[off]``
    (``p`` the target's distribution over the valid candidates), in units of the offset's standard deviation under
    ``p`` (averaged over the states); over every (clean, toxic) pair of texts of one prompt, the share where the
    clean text has the larger advantage (0.5 = no preference), d' and the mean margin."""
    if states.text_label is None:
        raise ValueError("the contrast needs the texts' labels (label_texts)")
    keep = states.valid.any(1) if ok is None else ok & states.valid.any(1)
    valid = states.valid & keep[:, None]
    p = torch.nan_to_num(torch.softmax(torch.where(valid, states.z, torch.tensor(float("-inf"))), 1))
    o = torch.where(valid, off.float(), torch.zeros_like(off, dtype=torch.float32))
    mean = (p * o).sum(1)
    adv = torch.where(keep, o.gather(1, states.next_col[:, None])[:, 0] - mean, torch.zeros_like(mean))
    unit = ((p * o * o).sum(1) - mean ** 2).clamp_min(0)[keep].mean().sqrt().clamp_min(1e-12)
    score = torch.zeros(len(states.texts)).index_add(0, states.text_of, adv) / unit
    groups: dict[str, list[int]] = {}
    for i, (prompt, _) in enumerate(states.texts):
        groups.setdefault(prompt, []).append(i)
    lab = states.text_label.tolist()
    m = torch.tensor([float(score[a] - score[b]) for ids in groups.values() for a in ids if lab[a] == 1
                      for b in ids if lab[b] == -1])
    if not len(m):
        return {"pairs": 0}
    sd = float(m.std()) if len(m) > 1 else float("nan")
    return {"pairs": int(len(m)), "pair_acc": round(float((m > 0).float().mean()), 4),
            "d_prime": round(float(m.mean()) / sd, 4) if sd > 0 else None, "mean_margin": round(float(m.mean()), 4)}


def vector_offsets(v: torch.Tensor, W_target: torch.Tensor, states: StateSet) -> torch.Tensor:
    """A constant hidden-space vector's offsets (activation steering) on every state's candidates."""
    d = v.float()[None].expand(len(states), -1)
    return candidate_offsets(d, W_target, states.cand)


def direction_metrics(states: StateSet, off: torch.Tensor, ok: torch.Tensor | None = None, top_k: int = 5,
                      other_flip_shares: Sequence[float] = (0.05, 0.10, 0.20),
                      alphas: Sequence[float] | None = None) -> dict:
    """How well an offset separates toxic candidates from the others, on the states' top-``k`` candidates (the
    target's own top-k columns; the text's extra next-token column is left out).

    - ``auc``: within states holding both kinds, the share of (toxic, other) pairs whose change is lower for the
      toxic one (ties count half);
    - ``d_prime``: (mean change of the others - of the toxic ones) / std of the others' change, changes centred per
      state over its candidates, pooled over states holding both kinds;
    - greedy flips: only the target's top-``top_k`` eligible; over an alpha grid, the share of states whose pick is
      toxic that end on a non-toxic pick, read (interpolated) where ``other_flip_shares`` of the other states
      change their pick; ``p_pick`` before and after (over the top-``top_k``), toxic and other picks, at the
      alpha of the middle share;
    - ``scale``: std of the offset over the top-``k`` / std of the target's logits there (at unit alpha)."""
    if states.toxic is None:
        raise ValueError("label the states first")
    k = states.k
    ok = torch.ones(len(states), dtype=torch.bool) if ok is None else ok
    tox = states.toxic[:, :k] & ok[:, None]
    o = off[:, :k].double()
    oc = o - o.mean(1, keepdim=True)
    both = tox.any(1) & (~tox).any(1) & ok
    auc_num = auc_den = 0.0
    tox_vals, oth_vals = [], []
    for s in both.nonzero().flatten().tolist():
        t, n = oc[s][tox[s]], oc[s][~tox[s]]
        diff = t[:, None] - n[None, :]
        auc_num += float((diff < 0).sum()) + 0.5 * float((diff == 0).sum())
        auc_den += diff.numel()
        tox_vals.append(t)
        oth_vals.append(n)
    out: dict = {"states": int(ok.sum()), "states_both": int(both.sum())}
    if auc_den:
        tv, nv = torch.cat(tox_vals), torch.cat(oth_vals)
        out["auc"] = round(auc_num / auc_den, 4)
        out["d_prime"] = round(float((nv.mean() - tv.mean()) / nv.std().clamp_min(1e-12)), 3)
    zk = states.z[:, :k].double()
    out["scale"] = round(float((o.std(1) / zk.std(1).clamp_min(1e-12))[ok].median()), 4)
    # greedy flips over the top-`top_k` only (the eligible tokens of the default decoding)
    z, o, tk = zk[:, :top_k], o[:, :top_k], states.toxic[:, :top_k]
    zstd = z.std(1)
    pick_toxic = tk[:, 0] & ok  # column 0 = the target's argmax
    other = ~tk[:, 0] & ok
    out["toxic_pick_states"] = int(pick_toxic.sum())
    out["other_pick_states"] = int(other.sum())
    if alphas is None:
        scale = float((o.std(1)[ok]).median()) or 1.0
        base = float(zstd[ok].median()) / scale
        alphas = [base * x for x in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12, 20, 35, 60, 100)]
    rows = []
    for a in alphas:
        zf = z + a * o
        new = zf.argmax(1)
        flip_t = float(((new != 0) & ~tk[torch.arange(len(states)), new] & pick_toxic).sum()) / max(int(pick_toxic.sum()), 1)
        flip_o = float(((new != 0) & other).sum()) / max(int(other.sum()), 1)
        rows.append((a, flip_o, flip_t))
    out["flips"] = {}
    for share in other_flip_shares:
        out["flips"][f"{int(round(share * 100))}%"] = round(_interp(rows, share), 4)
    mid = other_flip_shares[len(other_flip_shares) // 2]
    a_mid = _alpha_at(rows, mid)
    if a_mid is not None:
        p0 = torch.softmax(z, 1)[:, 0]
        p1 = torch.softmax(z + a_mid * o, 1)[:, 0]
        out["p_pick"] = {"alpha": round(a_mid, 4), "at_other_flips": mid,
                         "toxic": [round(float(p0[pick_toxic].mean()), 4), round(float(p1[pick_toxic].mean()), 4)],
                         "other": [round(float(p0[other].mean()), 4), round(float(p1[other].mean()), 4)]}
    return _finite(out)


def _finite(x):
    """NaN (an empty group) becomes None, so the metrics are valid JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _interp(rows, share: float) -> float:
    """The largest toxic-pick flip share reached while the other states' flip share stays at or below ``share``
    (linear between grid points at the crossing)."""
    best, prev = 0.0, (0.0, 0.0, 0.0)
    for a, fo, ft in rows:
        if fo > share:
            if fo != prev[1]:
                w = (share - prev[1]) / (fo - prev[1])
                best = max(best, prev[2] + w * (ft - prev[2]))
            return best
        best = max(best, ft)
        prev = (a, fo, ft)
    return best


def _alpha_at(rows, share: float) -> float | None:
    prev = (0.0, 0.0, 0.0)
    for a, fo, ft in rows:
        if fo >= share:
            if fo == prev[1]:
                return a
            w = (share - prev[1]) / (fo - prev[1])
            return prev[0] + w * (a - prev[0])
        prev = (a, fo, ft)
    return None


def write_states(texts_path: str, target: str = "gemma-3-270m", k: int = 10, batch_size: int = 16) -> Path:
    """Compute the target's states for a tune-texts file (prompt -> completion TSV/JSONL) and write them beside it
    (:func:`shipped_states_path`), so that ``align.py --tune_pair`` on those texts and that target computes nothing."""
    from .assets import resolve_model
    from .runtime import load_causal_lm, load_tokenizer

    path = resolve_model(target, "--target")
    pairs = read_pairs(texts_path)
    tok = load_tokenizer(path, pad_with_eos=True)
    t0 = time.time()
    st = target_states(load_causal_lm(path, "float32").eval(), tok, pairs, k, batch_size, progress=True)
    st.meta.update(seconds=round(time.time() - t0, 1), target=target, texts_file=Path(texts_path).name,
                   torch_threads=torch.get_num_threads())
    out = shipped_states_path(texts_path)
    save_states(st.to_dict(states_key(path, pairs, k)), out)
    log.info("wrote %s: %d states of %d texts in %.0f s", out, len(st), len(pairs), time.time() - t0)
    return out


def soup_pairs(align_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Average tuned pairs (align.py --tune_pair output folders of the same teachers, e.g. several seeds): each
    teacher's weights and A are the mean over the folders, written as one alignment folder that decodes like any
    other (the first folder's sidecar and teacher files, plus a ``soup`` entry naming the folders). Refuses folders
    whose tensors differ in name or shape, and an existing ``out_dir``."""
    import shutil

    from .artifacts import MATRIX_FILE, MATRIX_SIDECAR, TUNED_ANTI, TUNED_EXPERT

    dirs = [Path(d) for d in align_dirs]
    out = Path(out_dir)
    if not dirs:
        raise InputError("soup_pairs: no folders")
    if out.exists():
        raise InputError(f"{out} already exists")
    for d in dirs:
        for need in (d / MATRIX_FILE, d / MATRIX_SIDECAR, d / TUNED_EXPERT / "model.safetensors",
                     d / TUNED_ANTI / "model.safetensors"):
            if not need.is_file():
                raise InputError(f"{need} does not exist: not a tuned pair (align.py --tune_pair)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _soup_into(dirs, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return out


def _soup_into(dirs: list[Path], tmp: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from .artifacts import MATRIX_FILE, MATRIX_SIDECAR, TUNED_ANTI, TUNED_EXPERT, load_matrix, save_matrix

    for sub in (TUNED_EXPERT, TUNED_ANTI):
        sds = [load_file(str(d / sub / "model.safetensors")) for d in dirs]
        for d, sd in zip(dirs[1:], sds[1:]):
            if {k: v.shape for k, v in sd.items()} != {k: v.shape for k, v in sds[0].items()}:
                raise InputError(f"{d / sub}: its tensors differ from {dirs[0] / sub}'s; only pairs of the same "
                                 "teachers can be averaged")
        shutil.copytree(dirs[0] / sub, tmp / sub)
        avg = {k: (sum(sd[k].double() for sd in sds) / len(sds)).to(sds[0][k].dtype).contiguous() for k in sds[0]}
        save_file(avg, str(tmp / sub / "model.safetensors"), metadata={"format": "pt"})
    As = [load_matrix(d / MATRIX_FILE) for d in dirs]
    if len({tuple(A.shape) for A in As}) != 1:
        raise InputError("soup_pairs: the matrices' shapes differ")
    side = json.loads((dirs[0] / MATRIX_SIDECAR).read_text(encoding="utf-8"))
    side.pop("artifact", None)
    side["soup"] = {"of": [str(d) for d in dirs], "what": "the mean of these tuned pairs' teacher weights and of their A"}
    save_matrix(tmp, sum(A.double() for A in As).float() / len(As), side)


if __name__ == "__main__":  # python -m detox_pa.directed TEXTS.tsv [TARGET] [K]
    import sys

    from .cli import setup_logging

    setup_logging()
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m detox_pa.directed TEXTS.tsv [TARGET (gemma-3-270m)] [K (10)]\n" + write_states.__doc__)
        sys.exit(0)
    write_states(argv[0], *(argv[1:2] or ["gemma-3-270m"]), *(int(x) for x in argv[2:3]))
