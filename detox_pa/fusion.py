"""Output-layer fusion of a target LM with a teacher (calibration) model.

At every decoding step the target's final hidden state, just before its output layer, becomes::

    h = alpha * Norm(h_teacher @ A) + (1 - alpha) * h_target

where ``Norm`` is a parameter-free LayerNorm over the target's hidden size (the paper), ``rescale``
(the mapped vector rescaled to the norm of ``h_target``: the target's scale), or ``none`` (the mapped
vector as it is; with an A fitted by ``align.py --objective logits`` its logits under the target's
output layer have the teacher's own scale).

:func:`difference_fusion` is the directed variant (expert minus anti-expert, as in DExperts, carried
through A): the target's next-token logits ``z`` become ``z + alpha * W_target ((h_e - h_a) A)``
(``space="hidden"``), or ``z + alpha * (z_e - z_a)`` on the shared vocabulary (``space="logits"``,
the teachers' own output layers), optionally restricted to the target's top-k tokens
(plausibility) and applied only where the anti-expert prefers the target's pick (the risk gate).

How it works (no copy of any model's ``forward``):

- a forward pre-hook on the target records the token ids it is fed and its attention mask;
- a forward pre-hook on the target's output layer (``get_output_embeddings()``) replaces the hidden
  state of the last position with the fused one. This works for any causal LM whose logits come
  from its output embedding layer (Llama, Mistral, Gemma-3, Qwen2, GPT-2, ...);
- the teacher runs in lockstep with its OWN KV cache (:class:`TeacherStepper`). It computes hidden
  states only (its backbone), never logits over its vocabulary.

Tokenizers: when teacher and target share a tokenizer, the teacher reads the target's ids
directly. Otherwise the teacher reads the same *text*: each step the target's text so far is
re-tokenised with the teacher's tokenizer, the longest unchanged prefix of the teacher's cached
ids is kept, tokens past it are masked out of the teacher's cache, and only the new ids are fed.
The fused state uses the teacher's hidden state at its last token. Each model adds its own BOS.
The directed variant can instead use the mean of each teacher's hidden states over every token of the text so
far (``DiffConfig.pool="mean"``: the prompt's and the continuation's; the cache keeps every state, so this costs
one weighted sum per step): a context-level offset that changes slowly as the text grows.

At ``alpha == 0`` no hook is installed and the teacher is never run, so the output is exactly
plain ``generate()``.

An alpha sweep computes each batch's prompt once (:class:`PromptMemo`): no method changes the target's
or a teacher's states of the prompt, so the target's prefill (:func:`shared_prefill`) and each teacher's
(:meth:`TeacherStepper.step`) are recorded by the first alpha and replayed, bit for bit, by the others.
:class:`NLLRecorder` keeps, at every step, the unsteered target's NLL of the token picked (the PPL judge's
number when the judge is the target itself).

A greedy sweep goes further (:func:`shared_rows`, :func:`alpha_sweep`): all alphas of a batch decode in one
``generate()`` call, rows ``[j * B, (j + 1) * B)`` being alpha ``j``'s. Rows that hold the same tokens (one
prompt's rows until the alphas' picks part) are computed once by the target (:class:`RowShare`, the KV-cache row
duplicated with ``Cache.reorder_cache`` where they part) and by the teachers (:meth:`TeacherStepper.select`), and
each alpha's own :class:`Fuser` or :class:`DiffFuser` edits its own rows (:class:`SweepFuser`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .topk import top_k

NORMS = ("layernorm", "rescale", "none")
SPACES = ("hidden", "logits")
POOLS = ("last", "mean")  # a teacher's state: at the text's last token, or the mean over every token so far


def same_tokenizer(tok_a, tok_b) -> bool:
    """True when both tokenizers map every string to the same ids (same vocab and specials)."""
    if tok_a is tok_b:
        return True
    if len(tok_a) != len(tok_b) or type(tok_a) is not type(tok_b):
        return False
    if tok_a.all_special_ids != tok_b.all_special_ids:
        return False
    return tok_a.get_vocab() == tok_b.get_vocab()


def fuse_hidden(h_target: torch.Tensor, h_teacher: torch.Tensor, A: torch.Tensor, alpha: float,
                norm: str = "layernorm", eps: float = 1e-5) -> torch.Tensor:
    """``alpha * Norm(h_teacher @ A) + (1 - alpha) * h_target`` (computed in float32)."""
    mapped = h_teacher.float() @ A.float()
    if norm == "layernorm":
        mapped = F.layer_norm(mapped, (mapped.shape[-1],), eps=eps)
    elif norm == "rescale":
        mapped = mapped * (h_target.float().norm(dim=-1, keepdim=True) / mapped.norm(dim=-1, keepdim=True).clamp_min(eps))
    elif norm != "none":
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return (alpha * mapped + (1.0 - alpha) * h_target.float()).to(h_target.dtype)


def backbone(model):
    """The model without its output layer (``model.model`` for Llama, ``model.transformer`` for GPT-2)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__} has no separate backbone (base_model)")
    return base


class TeacherStepper:
    """Steps the teacher in lockstep with the target, with its own KV cache.

    Call :meth:`reset` before a new batch, then :meth:`step` with the target's ids so far (one row
    per sequence, padding removed). It returns the teacher's final hidden state at the last token of
    each row (``pool="mean"``: the mean of its final hidden states over the row's tokens). Rows whose teacher tokenisation changed have the changed tail masked out of the cache
    (positions are reused), so the result always equals a from-scratch run on the full text.
    """

    def __init__(self, teacher, teacher_tokenizer=None, target_tokenizer=None, bridge_text: bool = False,
                 memo: "PromptMemo | None" = None, pool: str = "last"):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        self.pool = pool
        self.teacher = teacher
        self.memo = memo
        self.body = backbone(teacher)
        self.teacher_tok = teacher_tokenizer
        self.target_tok = target_tokenizer
        self.bridge_text = bridge_text
        if bridge_text and (teacher_tokenizer is None or target_tokenizer is None):
            raise ValueError("text bridging needs both tokenizers")
        self.pad_id = 0
        if teacher_tokenizer is not None and teacher_tokenizer.pad_token_id is not None:
            self.pad_id = teacher_tokenizer.pad_token_id
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        self.cache = None
        self.ids: list[list[int]] = [[] for _ in range(batch_size)]  # teacher ids in the cache, per row
        self.cols: list[list[int]] = [[] for _ in range(batch_size)]  # their cache columns
        self.mask: torch.Tensor | None = None  # [B, L] 1 = live cache entry
        self.hidden: torch.Tensor | None = None  # [B, L, d] hidden state at each cache column
        self.n_forward_tokens = 0

    def teacher_ids(self, target_rows: list[list[int]]) -> list[list[int]]:
        if not self.bridge_text:
            return target_rows
        texts = self.target_tok.batch_decode(target_rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return self.teacher_tok(texts, add_special_tokens=True)["input_ids"]

    @torch.no_grad()
    def step(self, target_rows: list[list[int]], want: list[list[int]] | None = None) -> torch.Tensor:
        """``want``: the teacher's ids for these rows, when already computed (two teachers sharing a tokenizer)."""
        if want is None:
            want = self.teacher_ids(target_rows)
        B = len(want)
        if len(self.ids) != B:
            self.reset(B)
        key = None
        if self.memo is not None and self.mask is None:  # a fresh batch: its prompt may be computed already
            key = (id(self.teacher), tuple(map(tuple, want)))
            if self.memo.restore_teacher(key, self):
                return self._last_hidden()
        device = next(self.teacher.parameters()).device
        keep, new = [], []
        for i in range(B):
            have, w = self.ids[i], want[i]
            if not w:
                raise ValueError(f"row {i}: the teacher sees no tokens (empty text and no BOS)")
            p, n = 0, min(len(have), len(w))
            while p < n and have[p] == w[p]:
                p += 1
            # cached tokens past the common prefix are dropped; a cached token's hidden state depends
            # only on its prefix, so the kept ones (and their stored hidden states) stay exact
            keep.append(p)
            new.append(w[p:])
        # mask out cache entries past the kept prefix
        for i in range(B):
            dropped = self.cols[i][keep[i]:]
            if dropped:
                self.mask[i, dropped] = 0
            self.cols[i] = self.cols[i][:keep[i]]
            self.ids[i] = self.ids[i][:keep[i]]
        W = max((len(x) for x in new), default=0)
        if W > 0:
            L = 0 if self.mask is None else self.mask.shape[1]
            block = torch.full((B, W), self.pad_id, dtype=torch.long)
            bmask = torch.zeros((B, W), dtype=torch.long)
            pos = torch.zeros((B, W), dtype=torch.long)
            for i, toks in enumerate(new):
                k = len(toks)
                if k:
                    block[i, W - k:] = torch.tensor(toks, dtype=torch.long)
                    bmask[i, W - k:] = 1
                    pos[i, W - k:] = torch.arange(keep[i], keep[i] + k)
                    self.cols[i].extend(range(L + W - k, L + W))
                    self.ids[i].extend(toks)
            mask = bmask if self.mask is None else torch.cat([self.mask, bmask], dim=1)
            out = self.body(input_ids=block.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                            past_key_values=self.cache, use_cache=True, return_dict=True)
            self.cache = out.past_key_values
            self.mask = mask
            h = out.last_hidden_state
            self.hidden = h if self.hidden is None else torch.cat([self.hidden, h], dim=1)
            self.n_forward_tokens += int(bmask.sum())
        if key is not None:
            self.memo.record_teacher(key, self)
        return self._last_hidden()

    def _last_hidden(self) -> torch.Tensor:
        """Each row's state: the hidden state at its last token (``pool="last"``), or the mean of the hidden states
        at every token of its text so far (``pool="mean"``: the live cache columns; a masked-out tail and the
        padding are left out), float32."""
        if self.pool == "mean":
            m = self.mask.to(device=self.hidden.device, dtype=torch.float32)
            return torch.einsum("bl,bld->bd", m, self.hidden.float()) / m.sum(1, keepdim=True).clamp_min(1.0)
        last = torch.tensor([c[-1] if c else 0 for c in self.cols], device=self.hidden.device)
        return self.hidden[torch.arange(len(self.cols), device=self.hidden.device), last]

    def state(self) -> tuple:
        """A copy of everything :meth:`step` carries between calls (the cache, ids, columns, mask, states)."""
        return (_copy_state(self.cache), [list(x) for x in self.ids], [list(c) for c in self.cols],
                None if self.mask is None else self.mask.clone(), self.hidden, self.n_forward_tokens)

    def set_state(self, state: tuple) -> None:
        cache, ids, cols, mask, hidden, n = state
        self.cache, self.ids, self.cols = _copy_state(cache), [list(x) for x in ids], [list(c) for c in cols]
        self.mask = None if mask is None else mask.clone()
        self.hidden, self.n_forward_tokens = hidden, n  # hidden is only ever concatenated to, never written

    def select(self, index: list[int]) -> None:
        """Keep the rows ``index`` (in that order; a row may be repeated): row ``i`` becomes what row ``index[i]``
        was, its KV cache rows included (``Cache.reorder_cache``, as beam search reorders). A branch of a greedy
        sweep duplicates the row it leaves, so each copy then steps on its own text."""
        if index == list(range(len(self.ids))):
            return
        if self.mask is None:  # nothing computed yet
            self.reset(len(index))
            return
        if not hasattr(self.cache, "reorder_cache"):
            raise RowShareUnsupported(f"the teacher's cache ({type(self.cache).__name__}) cannot select rows")
        idx = torch.tensor(index, dtype=torch.long)
        self.cache.reorder_cache(idx)
        self.ids = [list(self.ids[i]) for i in index]
        self.cols = [list(self.cols[i]) for i in index]
        self.mask = self.mask.index_select(0, idx)
        self.hidden = self.hidden.index_select(0, idx.to(self.hidden.device))


def _input_ids(args, kwargs) -> torch.Tensor:
    """The ids a target forward was called with (keyword or first positional argument)."""
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if ids is None:
        raise RuntimeError("fusion needs input_ids (inputs_embeds is not supported)")
    return ids


def _copy_state(obj):
    """A deep copy of a KV cache (or None): later steps append to a cache object in place."""
    with torch.no_grad():
        return copy.deepcopy(obj)


def _empty_cache(cache) -> bool:
    return cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0


class PromptMemo:
    """One batch's prompt states, computed by the first alpha of a sweep and replayed by the others.

    Every method leaves the target's and the teachers' states of the prompt as they are (the fusion acts at
    the output layer only), so the prompt's KV caches are the same for every alpha: the target's prefill
    (see :func:`shared_prefill`) and each teacher's first step are recorded once and later handed out as
    fresh copies. A replay is taken only for the very same input (ids, mask and position ids compared
    exactly), so its result is bit for bit the one a recomputation gives. Call :meth:`clear` between
    batches (it holds one batch's caches)."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.target: tuple | None = None  # (inputs, (output class, its fields but the cache), cache copy)
        self.teachers: dict[tuple, tuple] = {}
        self.replays = 0  # prefills (target or teacher) served from the memo
        self.computed = 0  # prefills computed (and recorded)

    @staticmethod
    def _inputs(kwargs: dict) -> tuple:
        return tuple(kwargs.get(k) for k in ("input_ids", "attention_mask", "position_ids"))

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        return all((x is None and y is None) or (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                                                 and x.shape == y.shape and torch.equal(x, y)) for x, y in zip(a, b))

    def replay_target(self, kwargs: dict):
        if self.target is None or not self._same(self.target[0], self._inputs(kwargs)):
            return None
        _, (cls, fields), cache = self.target
        fresh = cls(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})
        fresh.past_key_values = _copy_state(cache)
        self.replays += 1
        return fresh

    def record_target(self, kwargs: dict, out) -> None:
        inputs = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in self._inputs(kwargs))
        fields = {k: v for k, v in out.items() if k != "past_key_values"}  # the live cache grows: kept as a copy
        self.target = (inputs, (type(out), fields), _copy_state(out.past_key_values))
        self.computed += 1

    def restore_teacher(self, key: tuple, stepper: "TeacherStepper") -> bool:
        state = self.teachers.get(key)
        if state is None:
            return False
        stepper.set_state(state)
        self.replays += 1
        return True

    def record_teacher(self, key: tuple, stepper: "TeacherStepper") -> None:
        self.teachers[key] = stepper.state()
        self.computed += 1


@contextlib.contextmanager
def shared_prefill(target, memo: PromptMemo | None) -> Iterator[None]:
    """While the block runs, the target's backbone computes a prompt (a forward into an empty KV cache) only
    once per ``memo``: a later prefill on the same ids, mask and positions returns the recorded output with
    a fresh copy of its cache, and the model's own output layer (with any hooks on it) runs as usual on it.
    Works whatever wraps the backbone's ``forward`` (accelerate's ``device_map`` hooks): that wrapper is
    called for a real forward and put back afterwards. ``memo=None``: nothing is installed."""
    if memo is None:
        yield
        return
    body = backbone(target)
    own = body.__dict__.get("forward")  # an instance-level wrapper (accelerate) or None
    inner = body.forward

    def forward(*args, **kwargs):
        if args or not _empty_cache(kwargs.get("past_key_values")) or kwargs.get("input_ids") is None or \
                kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            return inner(*args, **kwargs)  # not a plain prefill: computed as usual
        out = memo.replay_target(kwargs)
        if out is None:
            out = inner(*args, **kwargs)
            memo.record_target(kwargs, out)
        return out

    body.forward = forward
    try:
        yield
    finally:
        if own is None:
            del body.forward
        else:
            body.forward = own


class NLLRecorder:
    """Records, at every decoding step, the unsteered target's NLL of the token the step picked.

    A forward hook on the output layer reads the target's own next-token logits ``z`` (registered before
    any method's hooks, so a method that edits the logits afterwards does not change what is read), turns
    them into the judge's logits with ``postprocess`` (soft-capping and scalings, as the PPL scorer does) and
    keeps ``logsumexp(z)``; a forward pre-hook on the target sees the pick when it is fed back and keeps
    ``logsumexp(z) - z[pick]``. :meth:`finish` settles the last step from ``generate()``'s output. Valid only
    where the output layer's own output is the unsteered target's (no pre-hook edits its input): the
    methods say when (``Method.records_nll``). ``share``: the :class:`RowShare` of a sweep decoded as one batch;
    where the output layer ran once per distinct row, ``logsumexp`` is taken once per distinct row too."""

    def __init__(self, target, postprocess: Callable[[torch.Tensor], torch.Tensor], share: "RowShare | None" = None):
        self.target = target
        self.out_layer = target.get_output_embeddings()
        if self.out_layer is None:
            raise TypeError(f"{type(target).__name__} has no output embedding layer")
        self.postprocess = postprocess
        self.share = share
        self.nll: list[torch.Tensor] = []
        self.pending: tuple | None = None

    def _on_target_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        cache = kwargs.get("past_key_values")
        if cache is None or _empty_cache(cache):
            self.nll, self.pending = [], None
        elif self.pending is not None and ids is not None:
            self._settle(ids[:, -1])
        return None

    def _on_output(self, module, args, output):
        rows = self.share.head_rows_of(output) if self.share is not None else None
        if rows is None:
            z = self.postprocess(output[:, -1, :])
            self.pending = (torch.logsumexp(z, dim=-1), z, None)
        else:  # every row is a copy of its distinct row's: each distinct row once
            distinct, group = rows
            z = self.postprocess(distinct[:, -1, :])
            self.pending = (torch.logsumexp(z, dim=-1), z, group.to(z.device))
        return None

    def _settle(self, picks: torch.Tensor) -> None:
        lse, z, group = self.pending
        picks = picks.to(z.device)
        if group is None:
            self.nll.append(lse - z.gather(1, picks[:, None]).squeeze(1))
        else:
            self.nll.append(lse[group] - z[group, picks])
        self.pending = None

    def finish(self, new_ids: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` float32 NLL of ``new_ids`` (``generate()``'s new tokens), step by step."""
        n = new_ids.shape[1]
        if self.pending is not None and len(self.nll) < n:
            self._settle(new_ids[:, len(self.nll)])
        self.pending = None
        if len(self.nll) < n:
            raise RuntimeError(f"recorded {len(self.nll)} steps for {n} new tokens")
        return torch.stack([x.cpu() for x in self.nll[:n]], dim=1) if n else torch.zeros(new_ids.shape[0], 0)

    def hooks(self):
        return [self.target.register_forward_pre_hook(self._on_target_forward, with_kwargs=True),
                self.out_layer.register_forward_hook(self._on_output)]


@dataclass
class FusionConfig:
    alpha: float
    norm: str = "layernorm"
    eps: float = 1e-5


class _InputTracker:
    """A forward pre-hook on the target that records the ids it is fed (the whole sequence so far, per
    row) and its attention mask, so that teachers can be stepped on the same text."""

    def __init__(self, steppers: list[TeacherStepper]):
        self.steppers = steppers
        self.history: torch.Tensor | None = None  # [B, T] target ids fed so far
        self.attn: torch.Tensor | None = None
        self.steps = 0

    def _on_target_forward(self, module, args, kwargs):
        ids = _input_ids(args, kwargs)
        cache = kwargs.get("past_key_values")
        fresh = cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)
        if fresh or self.history is None or self.history.shape[0] != ids.shape[0]:
            self.history = ids.detach().cpu()
            for st in self.steppers:
                st.reset(ids.shape[0])
        else:
            self.history = torch.cat([self.history, ids.detach().cpu()], dim=1)
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            self.attn = torch.ones_like(self.history)
        else:
            self.attn = mask.detach().cpu()[:, -self.history.shape[1]:]
        return None

    def rows(self) -> list[list[int]]:
        return [self.history[i][self.attn[i].bool()].tolist() for i in range(self.history.shape[0])]

    def teacher_states(self) -> list[torch.Tensor]:
        """Each teacher's final hidden state at the last token of every row. Teachers that share a
        tokenizer re-tokenise the text once."""
        return self._step_teachers(self.rows())

    def _step_teachers(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Step every teacher on ``rows`` (target ids); teachers that share a tokenizer re-tokenise once."""
        out, shared = [], {}
        for st in self.steppers:
            key = id(st.teacher_tok) if st.bridge_text else None
            if key is not None and key not in shared:
                shared[key] = st.teacher_ids(rows)
            out.append(st.step(rows, shared.get(key)))
        return out


class Fuser(_InputTracker):
    """Holds the hooks' state. Use through :func:`fusion`."""

    def __init__(self, target, stepper: TeacherStepper, A: torch.Tensor, cfg: FusionConfig):
        super().__init__([stepper])
        self.target = target
        self.stepper = stepper
        self.cfg = cfg
        out_layer = target.get_output_embeddings()
        if out_layer is None:
            raise TypeError(f"{type(target).__name__} has no output embedding layer")
        self.out_layer = out_layer
        w = out_layer.weight
        self.A = A.to(device=w.device, dtype=torch.float32)

    def _on_output_layer(self, module, args):
        (hidden,) = args
        return (self.edit_hidden(hidden, *self.teacher_states()),)

    def edit_hidden(self, hidden: torch.Tensor, h_teacher: torch.Tensor) -> torch.Tensor:
        """The output layer's input ``hidden`` [B, T, d] with its last position fused."""
        fused = fuse_hidden(hidden[:, -1, :], h_teacher.to(hidden.device), self.A, self.cfg.alpha, self.cfg.norm,
                            self.cfg.eps)
        out = hidden.clone()
        out[:, -1, :] = fused
        self.steps += 1
        return out


def _check_matrix(A: torch.Tensor, teacher, target) -> None:
    d_t = teacher.config.get_text_config().hidden_size
    d_g = target.get_output_embeddings().weight.shape[1]
    if tuple(A.shape) != (d_t, d_g):
        raise ValueError(f"alignment matrix has shape {tuple(A.shape)}, expected (d_teacher={d_t}, d_target={d_g})")


def _bridge_of(bridge: str, teacher_tokenizer, target_tokenizer) -> str:
    if bridge == "auto":
        return "ids" if teacher_tokenizer is None or target_tokenizer is None or \
            same_tokenizer(teacher_tokenizer, target_tokenizer) else "text"
    return bridge


@contextlib.contextmanager
def hooks(handles_factory) -> Iterator[None]:
    """Install the hooks ``handles_factory()`` returns for the block; remove them however it ends."""
    handles = handles_factory()
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def fusion(target, teacher, A: torch.Tensor, alpha: float, target_tokenizer=None, teacher_tokenizer=None,
           norm: str = "layernorm", bridge: str = "auto", memo: PromptMemo | None = None) -> Iterator[Fuser | None]:
    """Install the fusion hooks on ``target`` for the duration of the block.

    ``bridge`` is ``"ids"`` (same tokenizer: feed ids straight), ``"text"`` (re-tokenise the text),
    or ``"auto"`` (``ids`` when the tokenizers are identical). ``memo``: the batch's :class:`PromptMemo`
    (the teacher's prompt state is then computed once per batch). At ``alpha == 0`` nothing is installed
    and ``None`` is yielded."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if alpha == 0.0:
        yield None
        return
    _check_matrix(A, teacher, target)
    bridge = _bridge_of(bridge, teacher_tokenizer, target_tokenizer)
    stepper = TeacherStepper(teacher, teacher_tokenizer, target_tokenizer, bridge_text=(bridge == "text"), memo=memo)
    fuser = Fuser(target, stepper, A, FusionConfig(alpha=alpha, norm=norm))
    with hooks(lambda: [target.register_forward_pre_hook(fuser._on_target_forward, with_kwargs=True),
                         fuser.out_layer.register_forward_pre_hook(fuser._on_output_layer)]):
        yield fuser


# ------------------------------------------------------------------ expert minus anti-expert


@dataclass
class DiffConfig:
    """The directed fusion: ``z + alpha * offset`` on the target's next-token logits ``z``.

    - ``space="hidden"``: offset = ``W_target ((h_e - h_a) A)`` (the teachers' difference carried
      through A into the target's output layer; reaches every target token);
    - ``space="logits"``: offset = ``W_e h_e - W_a h_a`` (the teachers' own logits) on the shared
      vocabulary, 0 on target tokens the teachers do not have;
    - ``top_k > 0`` (plausibility): only the target's own top-k tokens can be chosen;
    - ``gate`` (risk gate): act only on rows where ``log p_a(pick) - log p_e(pick) >= gate``, the
      pick being the target's own argmax and both distributions taken over the target's top-k
      (``gate_top_k`` when plausibility is off) under the same space as the offset. Other rows are
      left exactly as the target made them;
    - ``pool="mean"``: ``h_e`` and ``h_a`` are each teacher's mean hidden state over every token of the text so far
      (the prompt's included) instead of its last token's (``"last"``, the default);
    - ``context_weight`` (``w``, hidden space only): the difference ``d = h_e - h_a`` is shrunk toward its mean ``c``
      over the training texts (step 2's ``center``), ``c + w (d - c)``: 1 (the default) reads ``d`` as it is, 0 the
      constant ``c`` alone (the context-free part of the pair's offset).
    - ``promote_weight`` (``lam``, hidden space, needs the center, no gate): each token's offset ``o`` is read
      against a fixed threshold ``tau`` (the mean plus ``demote_z`` standard deviations of the center's own logit
      bias ``W_target (c A)`` over the target's vocabulary): ``min(o - tau, 0) + lam * max(o - tau, 0)``. Below the
      threshold (what the pair demotes) the offset acts in full; above it (what it would promote) it is scaled by
      ``lam``. 1 (the default) is the offset as it is (a constant shift, which no softmax sees); 0 only demotes.
    """

    alpha: float
    space: str = "hidden"
    top_k: int = 10
    gate: float | None = None
    gate_top_k: int = 10
    pool: str = "last"
    context_weight: float = 1.0
    promote_weight: float = 1.0
    demote_z: float = -0.5

    @property
    def shrinks(self) -> bool:
        return self.context_weight != 1.0

    @property
    def splits(self) -> bool:
        """The offset is read against the center's threshold (``promote_weight != 1``)."""
        return self.promote_weight != 1.0

    @property
    def edits_hidden(self) -> bool:
        """The cheap path (hidden space, no top-k, no gate): a pre-hook adds ``alpha (h_e - h_a) A`` to the output
        layer's input, so the layer's own output is no longer the unsteered target's logits."""
        return self.space == "hidden" and self.top_k == 0 and self.gate is None and not self.splits


class DiffFuser(_InputTracker):
    """State of :func:`difference_fusion`'s hooks, plus how often it acted (``acted`` of ``rows_seen``)."""

    def __init__(self, target, expert: TeacherStepper, anti: TeacherStepper, cfg: DiffConfig, A=None,
                 teacher_index: torch.Tensor | None = None, center: torch.Tensor | None = None,
                 tau: float | None = None):
        super().__init__([expert, anti])
        self.cfg = cfg
        out_layer = target.get_output_embeddings()
        if out_layer is None:
            raise TypeError(f"{type(target).__name__} has no output embedding layer")
        self.out_layer = out_layer
        dev = out_layer.weight.device
        self.A = None if A is None else A.to(device=dev, dtype=torch.float32)
        if cfg.shrinks or cfg.splits:
            _check_center(center, self.A, "context_weight != 1" if cfg.shrinks else "promote_weight != 1")
        self.center = None if center is None else center.to(device=dev, dtype=torch.float32)
        # promote_weight's threshold: the run's (``tau``, computed once by the caller) or computed here
        self.tau = None if not cfg.splits else tau if tau is not None else \
            center_threshold(self.center, self.A, out_layer.weight, cfg.demote_z)
        self.heads = None
        self.index = None  # target id -> teacher id (-1: not shared)
        if cfg.space == "logits":
            self.heads = [expert.teacher.get_output_embeddings(), anti.teacher.get_output_embeddings()]
            self.index = teacher_index.to(dev)
        self.acted = 0
        self.rows_seen = 0

    # -- what the teachers say about candidate target tokens
    def _scores(self, h: torch.Tensor, which: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) scores of teacher ``which`` for the target tokens ``idx`` (B, k), and which are defined."""
        if self.cfg.space == "hidden":
            rows = self.out_layer.weight[idx].float()  # (B, k, d_target)
            return torch.einsum("bkd,bd->bk", rows, h.float() @ self.A), torch.ones_like(idx, dtype=torch.bool)
        tid = self.index[idx]
        ok = tid >= 0
        rows = self.heads[which].weight[tid.clamp_min(0)].float()  # (B, k, d_teacher)
        return torch.einsum("bkd,bd->bk", rows, h.float()) * ok, ok

    def _full_offset(self, h_e: torch.Tensor, h_a: torch.Tensor, V: int) -> torch.Tensor:
        if self.cfg.space == "hidden":
            d = h_e.float() if h_a is None else h_e.float() - h_a.float()
            return (d @ self.A) @ self.out_layer.weight.float().T[:, :V]
        off = torch.zeros(h_e.shape[0], V, device=h_e.device)
        shared = (self.index[:V] >= 0).nonzero().flatten()
        tids = self.index[shared]
        z_e = h_e.float() @ self.heads[0].weight[tids].float().T
        z_a = h_a.float() @ self.heads[1].weight[tids].float().T
        off[:, shared] = z_e - z_a
        return off

    def _shrunk(self, h_e: torch.Tensor, h_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``context_weight``: (``c + w (h_e - h_a - c)``, None), which the linear hidden-space offset reads as it
        reads (h_e, h_a) (None: nothing to subtract); the states unchanged otherwise."""
        if not self.cfg.shrinks:
            return h_e, h_a
        d = h_e.float() - h_a.float()
        return self.center + self.cfg.context_weight * (d - self.center), None

    def _split(self, off: torch.Tensor) -> torch.Tensor:
        return off if self.tau is None else split_offset(off, self.tau, self.cfg.promote_weight)

    def fuse_logits(self, z: torch.Tensor, h_e: torch.Tensor, h_a: torch.Tensor) -> torch.Tensor:
        """The fused last-position logits (float32) from the target's ``z`` (B, V) and the teachers' states."""
        cfg = self.cfg
        z = z.float()
        B, V = z.shape
        h_e, h_a = self._shrunk(h_e.to(z.device), h_a.to(z.device))  # h_a None: h_e is the (shrunk) difference
        k = min(cfg.top_k if cfg.top_k > 0 else cfg.gate_top_k, V)
        idx = top_k(z, k).indices if (cfg.top_k > 0 or cfg.gate is not None) else None  # torch.topk's, one pass
        s_e = s_a = ok = None
        if idx is not None:
            s_e, ok = self._scores(h_e, 0, idx)
            s_a = 0.0 if h_a is None else self._scores(h_a, 1, idx)[0]
        if cfg.top_k > 0:
            fused = torch.full_like(z, float("-inf"))
            fused.scatter_(1, idx, z.gather(1, idx) + cfg.alpha * self._split(s_e - s_a))
        else:
            fused = z + cfg.alpha * self._split(self._full_offset(h_e, h_a, V))
        act = torch.ones(B, dtype=torch.bool, device=z.device)
        if cfg.gate is not None:
            neg = torch.tensor(float("-inf"), device=z.device)
            lp_e = torch.log_softmax(torch.where(ok, s_e, neg), dim=-1)[:, 0]
            lp_a = torch.log_softmax(torch.where(ok, s_a, neg), dim=-1)[:, 0]
            act = ok[:, 0] & (lp_a - lp_e >= cfg.gate)
            fused = torch.where(act[:, None], fused, z)
        self.acted += int(act.sum())
        self.rows_seen += B
        return fused

    # -- hooks
    def _on_output_layer(self, module, args, output):
        return self.edit_logits(output, *self.teacher_states())

    def _on_output_input(self, module, args):
        """The cheap path (hidden space, no top-k, no gate): add ``alpha (h_e - h_a) A`` to the hidden state."""
        (hidden,) = args
        return (self.edit_hidden(hidden, *self.teacher_states()),)

    def edit_logits(self, output: torch.Tensor, h_e: torch.Tensor, h_a: torch.Tensor) -> torch.Tensor:
        """The output layer's ``output`` [B, T, V] with its last position's logits fused."""
        fused = self.fuse_logits(output[:, -1, :], h_e, h_a).to(output.dtype)
        self.steps += 1
        if output.shape[1] == 1:  # generate() asks for the last position only: no copy of the whole output
            return fused[:, None, :]
        out = output.clone()
        out[:, -1, :] = fused
        return out

    def edit_hidden(self, hidden: torch.Tensor, h_e: torch.Tensor, h_a: torch.Tensor) -> torch.Tensor:
        """The cheap path: the output layer's input ``hidden`` [B, T, d] plus ``alpha (h_e - h_a) A`` at its last
        position."""
        h_e, h_a = self._shrunk(h_e.to(hidden.device), h_a.to(hidden.device))
        d = (h_e.float() if h_a is None else h_e.float() - h_a.float()) @ self.A
        out = hidden.clone()
        out[:, -1, :] = (hidden[:, -1, :].float() + self.cfg.alpha * d).to(hidden.dtype)
        self.acted += hidden.shape[0]
        self.rows_seen += hidden.shape[0]
        self.steps += 1
        return out


def teacher_index(target_tokenizer, teacher_tokenizer, target_vocab: int) -> torch.Tensor:
    """``index[target_id]`` = the teacher id of the same (normalised) token, -1 where the teacher has none."""
    from .vocab import shared_vocab

    sv = shared_vocab(teacher_tokenizer, target_tokenizer)
    index = torch.full((target_vocab,), -1, dtype=torch.long)
    ok = sv.target_ids < target_vocab
    index[sv.target_ids[ok]] = sv.teacher_ids[ok]
    return index


def check_diff_config(cfg: DiffConfig) -> None:
    if cfg.space not in SPACES:
        raise ValueError(f"unknown space {cfg.space!r}; expected one of {SPACES}")
    if cfg.alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {cfg.alpha}")
    if cfg.top_k < 0 or cfg.gate_top_k < 1:
        raise ValueError(f"top_k must be >= 0 and gate_top_k >= 1, got {cfg.top_k} and {cfg.gate_top_k}")
    if cfg.pool not in POOLS:
        raise ValueError(f"unknown pool {cfg.pool!r}; expected one of {POOLS}")
    if not (cfg.context_weight >= 0 and math.isfinite(cfg.context_weight)):
        raise ValueError(f"context_weight must be a finite number >= 0, got {cfg.context_weight}")
    if cfg.shrinks and (cfg.space != "hidden" or cfg.gate is not None):
        raise ValueError("context_weight != 1 shrinks the hidden-space difference: it needs space 'hidden' and no gate")
    if not (cfg.promote_weight >= 0 and math.isfinite(cfg.promote_weight) and math.isfinite(cfg.demote_z)):
        raise ValueError(f"promote_weight must be a finite number >= 0 and demote_z finite, got {cfg.promote_weight} "
                         f"and {cfg.demote_z}")
    if cfg.splits and (cfg.space != "hidden" or cfg.gate is not None):
        raise ValueError("promote_weight != 1 reads the offset against the pair's center: it needs space 'hidden' "
                         "and no gate")


def center_threshold(center: torch.Tensor, A: torch.Tensor, W: torch.Tensor, demote_z: float) -> float:
    """``tau``: the mean plus ``demote_z`` standard deviations of the center's logit bias ``W (c A)`` over every
    row of the target's output layer ``W`` (float32)."""
    with torch.no_grad():
        b = (center.to(W.device, torch.float32) @ A.to(W.device, torch.float32)) @ W.float().T
        return float(b.mean() + demote_z * b.std())


def split_offset(off: torch.Tensor, tau: "float | torch.Tensor", promote_weight: float) -> torch.Tensor:
    """``min(off - tau, 0) + promote_weight * max(off - tau, 0)``: below ``tau`` the offset in full, above it scaled."""
    d = off - tau
    return d.clamp_max(0) + promote_weight * d.clamp_min(0)


def _check_center(center: torch.Tensor | None, A: torch.Tensor, why: str = "context_weight != 1") -> None:
    if center is None:
        raise ValueError(f"{why} needs the pair's center (the mean teacher difference over the training "
                         "texts, written by step 2)")
    if tuple(center.shape) != (A.shape[0],):
        raise ValueError(f"the center has shape {tuple(center.shape)}, A's teacher side is {A.shape[0]}")


def _diff_parts(target, expert, anti, cfg: DiffConfig, A, target_tokenizer, teacher_tokenizer, bridge: str,
                index: torch.Tensor | None,
                memo: PromptMemo | None = None) -> tuple[list[TeacherStepper], torch.Tensor | None]:
    """The checks of :func:`difference_fusion`, the teachers' steppers and the token index (``space="logits"``)."""
    if cfg.space == "hidden":
        if A is None:
            raise ValueError("space 'hidden' needs the alignment matrix A")
        _check_matrix(A, expert, target)
        _check_matrix(A, anti, target)
    bridge = _bridge_of(bridge, teacher_tokenizer, target_tokenizer)
    if cfg.space == "logits" and index is None:
        V = target.get_output_embeddings().weight.shape[0]
        if bridge == "ids":
            index = torch.arange(V)
        else:
            index = teacher_index(target_tokenizer, teacher_tokenizer, V)
    steppers = [TeacherStepper(t, teacher_tokenizer, target_tokenizer, bridge_text=(bridge == "text"), memo=memo,
                               pool=cfg.pool) for t in (expert, anti)]
    return steppers, index


@contextlib.contextmanager
def difference_fusion(target, expert, anti, cfg: DiffConfig, A: torch.Tensor | None = None, target_tokenizer=None,
                      teacher_tokenizer=None, bridge: str = "auto", index: torch.Tensor | None = None,
                      memo: PromptMemo | None = None, center: torch.Tensor | None = None,
                      tau: float | None = None) -> Iterator[DiffFuser | None]:
    """Install the expert-minus-anti-expert hooks on ``target`` for the block (see :class:`DiffConfig`).

    Both teachers step in lock-step with the target, each with its own KV cache; when they share a
    tokenizer the text is re-tokenised once for both. ``A`` is needed for ``space="hidden"``;
    ``space="logits"`` needs the target -> teacher token ``index`` (built from the tokenizers when not
    given). ``memo``: the batch's :class:`PromptMemo` (each teacher's prompt state is then computed once per
    batch). ``center``: the pair's mean difference (needed when ``cfg.context_weight != 1``). At ``alpha == 0``
    nothing is installed and ``None`` is yielded (plain ``generate()``)."""
    check_diff_config(cfg)
    if cfg.alpha == 0.0:
        yield None
        return
    steppers, index = _diff_parts(target, expert, anti, cfg, A, target_tokenizer, teacher_tokenizer, bridge, index,
                                  memo)
    fuser = DiffFuser(target, steppers[0], steppers[1], cfg, A, index, center, tau)
    out_hook = (lambda: fuser.out_layer.register_forward_pre_hook(fuser._on_output_input)) if cfg.edits_hidden else \
        (lambda: fuser.out_layer.register_forward_hook(fuser._on_output_layer))
    with hooks(lambda: [target.register_forward_pre_hook(fuser._on_target_forward, with_kwargs=True), out_hook()]):
        yield fuser


# ------------------------------------------------------------------ a greedy sweep decoded as one batch


class RowShareUnsupported(RuntimeError):
    """The target's forward or a cache does not allow rows to be shared (the harness then decodes each alpha on
    its own, as before)."""


_BATCH_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "inputs_embeds")


class RowShare:
    """Which rows of one ``generate()`` call hold the same tokens so far, so that the target computes each once.

    Greedy rows of one prompt at several alphas agree until the first step where their picks part. While
    :func:`shared_rows` is active, the target's backbone computes only the distinct rows (its KV cache holds one
    row for each) and hands every row the hidden states of its distinct row; where rows part, the distinct row's
    cache row is duplicated (``Cache.reorder_cache``, the index select beam search reorders its cache with). The
    output layer, too, runs once per distinct row while its input rows are still those copies (no hook edited
    them). Rows are keyed by their tokens: at the prefill by their ids and mask, then by (their distinct row,
    the token fed). Counts what was computed (``computed`` of ``rows``, per decode step; the prefill apart)."""

    def __init__(self):
        self.group: torch.Tensor | None = None  # [N] row -> its distinct row (in the target's cache)
        self.first: torch.Tensor | None = None  # [n] the first row of each distinct row
        self.identity = False  # every row distinct, in order: nothing to select or expand
        self.computed = self.rows = 0  # decode steps: distinct rows computed, rows generate() asked for
        self.prefill_computed = self.prefill_rows = 0
        self.head_computed = self.head_rows = 0  # output-layer rows computed, rows asked for
        self.head_out: tuple | None = None  # the output layer's last output per distinct row, and expanded
        self.disabled = ""  # why the harness stopped sharing rows (RowShareUnsupported), if it did

    def _assign(self, keys: list) -> list[int]:
        index: dict = {}
        group = [index.setdefault(k, len(index)) for k in keys]
        first: list[int] = [-1] * len(index)
        for p, g in enumerate(group):
            if first[g] < 0:
                first[g] = p
        self.group, self.first = torch.tensor(group, dtype=torch.long), torch.tensor(first, dtype=torch.long)
        self.identity = first == list(range(len(group)))
        return first

    def select_inputs(self, kwargs: dict) -> dict:
        """The backbone's keyword inputs for the distinct rows only (the first row of each)."""
        if self.identity:
            return kwargs
        n_rows, out = self.group.shape[0], dict(kwargs)
        for k in _BATCH_INPUTS:
            v = out.get(k)
            if isinstance(v, torch.Tensor):
                if k == "position_ids" and v.dim() == 3:  # (sections, batch, length): multi-axis positions
                    out[k] = v.index_select(1, self.first.to(v.device))
                elif v.shape[0] == n_rows:
                    out[k] = v.index_select(0, self.first.to(v.device))
        return out

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else x.index_select(0, self.group.to(x.device))

    def on_backbone(self, kwargs: dict) -> None:
        """Assign this forward's rows to distinct rows (and branch the cache where rows part)."""
        ids = kwargs.get("input_ids")
        if ids is None:
            raise RowShareUnsupported("row sharing needs input_ids (inputs_embeds is not supported)")
        mask = kwargs.get("attention_mask")
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            raise RowShareUnsupported("row sharing needs a 2D attention mask (a static cache prepares 4D ones)")
        cache = kwargs.get("past_key_values")
        if getattr(cache, "is_compileable", False):
            raise RowShareUnsupported(f"row sharing does not resize a static cache ({type(cache).__name__})")
        n_rows = ids.shape[0]
        if cache is None or _empty_cache(cache):
            rows = ids.tolist()
            masks = mask.tolist() if mask is not None else [()] * n_rows
            self._assign([(tuple(r), tuple(m)) for r, m in zip(rows, masks)])
            self.prefill_computed += int(self.first.shape[0])
            self.prefill_rows += n_rows
            return
        if self.group is None or self.group.shape[0] != n_rows or ids.shape[1] != 1:
            raise RowShareUnsupported("row sharing expects one new token per row and step")
        if not hasattr(cache, "reorder_cache"):
            raise RowShareUnsupported(f"the target's cache ({type(cache).__name__}) cannot select rows")
        old, n_old = self.group.tolist(), int(self.first.shape[0])
        first = self._assign(list(zip(old, ids[:, 0].tolist())))
        parents = [old[p] for p in first]
        if parents != list(range(n_old)):  # rows parted: their distinct row's cache row is duplicated
            cache.reorder_cache(torch.tensor(parents, dtype=torch.long))
        self.computed += len(first)
        self.rows += n_rows

    def expand_output(self, out):
        """Every row's share of the backbone's output (hidden states; the cache stays one row per distinct row)."""
        if self.identity:
            return out
        n = int(self.first.shape[0])
        for k, v in list(out.items()):
            if k == "past_key_values":
                continue
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                out[k] = self.expand(v)
            elif isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) and x.shape[0] == n for x in v):
                out[k] = tuple(self.expand(x) for x in v)
        return out

    def on_head(self, x: torch.Tensor):
        """The output layer's input for the distinct rows, when every row is still its distinct row's copy (no hook
        edited it); else None (the layer then runs on every row)."""
        self.head_out = None
        if self.group is None or self.identity or x.shape[0] != self.group.shape[0]:
            return None
        rep = x.index_select(0, self.first.to(x.device))
        if not torch.equal(self.expand(rep), x):
            return None
        return rep

    def head_rows_of(self, output: torch.Tensor):
        """``(distinct, group)`` when ``output`` is the output layer's last output computed per distinct row
        (``distinct``, its rows; row ``i`` of ``output`` is row ``group[i]`` of ``distinct``); else None."""
        if self.head_out is None or self.head_out[1]() is not output:
            return None
        return self.head_out[0], self.group


@contextlib.contextmanager
def shared_rows(target, share: RowShare) -> Iterator[RowShare]:
    """While the block runs, the target computes each distinct row of its batch once (see :class:`RowShare`).
    Works whatever wraps the backbone's or the output layer's ``forward`` (accelerate's ``device_map`` hooks): the
    wrapper is called on the distinct rows and put back afterwards."""
    try:
        body = backbone(target)
    except TypeError as e:
        raise RowShareUnsupported(str(e)) from None
    head = target.get_output_embeddings()
    if head is None:
        raise RowShareUnsupported(f"{type(target).__name__} has no output embedding layer")
    saved = [(m, m.__dict__.get("forward")) for m in (body, head)]  # instance-level wrappers (accelerate) or None
    inner_body, inner_head = body.forward, head.forward

    def body_forward(*args, **kwargs):
        if args:
            raise RowShareUnsupported("row sharing needs the backbone's inputs as keywords")
        share.on_backbone(kwargs)
        return share.expand_output(inner_body(**share.select_inputs(kwargs)))

    def head_forward(x, *args, **kwargs):
        rep = None if args or kwargs else share.on_head(x)
        share.head_rows += x.shape[0]
        if rep is None:
            share.head_computed += x.shape[0]
            return inner_head(x, *args, **kwargs)
        share.head_computed += rep.shape[0]
        distinct = inner_head(rep)
        out = share.expand(distinct)
        share.head_out = (distinct, weakref.ref(out))  # the expanded output is not kept alive past its step
        return out

    body.forward, head.forward = body_forward, head_forward
    share.group = share.first = None
    try:
        yield share
    finally:
        for m, own in saved:
            if own is None:
                del m.forward
            else:
                m.forward = own


class SweepFuser(_InputTracker):
    """The hooks of a greedy alpha sweep decoded as one batch (:func:`alpha_sweep`).

    Rows ``[j * rows, (j + 1) * rows)`` are alpha ``j``'s, and ``editors[j]`` (the :class:`DiffFuser` or
    :class:`Fuser` that alpha builds alone; None for alpha 0) edits exactly those rows, with its own code, on as
    many rows as when its alpha runs alone. The teachers step once per distinct text: rows of several alphas
    that hold the same tokens share one teacher row, duplicated (:meth:`TeacherStepper.select`) where their
    picks part. An alpha whose rows have all ended (an EOS) is left alone, as its own ``generate()`` would
    have stopped there."""

    def __init__(self, steppers: list[TeacherStepper], editors: list, rows: int, edits_hidden: bool, eos_ids,
                 share: RowShare | None = None):
        super().__init__(steppers)
        self.editors = editors
        self.share = share
        self.rows_per_alpha = rows
        self.edits_hidden = edits_hidden
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.prompt_len = 0
        self.t_group: dict[int, int] | None = None  # row -> its teacher row, for the rows stepped last
        self.teacher_rows = 0  # teacher rows stepped (distinct texts), over steps
        self.teacher_asked = 0  # rows that needed a teacher state, over steps

    def _on_target_forward(self, module, args, kwargs):
        ids = _input_ids(args, kwargs)
        cache = kwargs.get("past_key_values")
        if cache is None or _empty_cache(cache) or self.history is None or self.history.shape[0] != ids.shape[0]:
            self.history = ids.detach().cpu()
            self.prompt_len = self.history.shape[1]
            self.t_group = None
        else:
            self.history = torch.cat([self.history, ids.detach().cpu()], dim=1)
        mask = kwargs.get("attention_mask")
        self.attn = mask.detach().cpu()[:, -self.history.shape[1]:] if isinstance(mask, torch.Tensor) and \
            mask.dim() == 2 else torch.ones_like(self.history)
        return None

    def active(self) -> list[int]:
        """The alphas (indices) still decoding: they have an editor and a row without an EOS yet."""
        new = self.history[:, self.prompt_len:]
        ended = torch.isin(new, self.eos).any(dim=1) if new.shape[1] and self.eos.numel() else \
            torch.zeros(new.shape[0], dtype=torch.bool)
        R = self.rows_per_alpha
        return [j for j, e in enumerate(self.editors) if e is not None and not bool(ended[j * R:(j + 1) * R].all())]

    def sweep_states(self, active: list[int]) -> list[torch.Tensor]:
        """Each teacher's final hidden state at the last token of every row of the ``active`` alphas (other rows:
        any row's), each distinct text stepped once."""
        if not self.steppers:
            return []
        R = self.rows_per_alpha
        rows = self.rows()
        need = [p for j in active for p in range(j * R, (j + 1) * R)]
        keys: dict[tuple, int] = {}
        group = [keys.setdefault(tuple(rows[p]), len(keys)) for p in need]
        first: dict[int, int] = {}
        for p, g in zip(need, group):
            first.setdefault(g, p)
        texts = [rows[first[g]] for g in range(len(keys))]
        if self.t_group is None:
            for st in self.steppers:
                st.reset(len(texts))
        else:  # a row's text grew from its text at the last step: its teacher row continues from that one's
            parents = [self.t_group[first[g]] for g in range(len(keys))]
            for st in self.steppers:
                st.select(parents)
        self.t_group = dict(zip(need, group))
        self.teacher_rows += len(texts)
        self.teacher_asked += len(need)
        out = self._step_teachers(texts)
        idx = torch.zeros(self.history.shape[0], dtype=torch.long)
        idx[need] = torch.tensor(group, dtype=torch.long)
        return [h.index_select(0, idx.to(h.device)) for h in out]

    def _edit(self, x: torch.Tensor, hidden: bool) -> torch.Tensor | None:
        active = self.active()
        if not active:
            return None
        states = self.sweep_states(active)
        R = self.rows_per_alpha
        self.steps += 1
        if not hidden and self.share is not None and self.share.head_rows_of(x) is not None:
            # the output layer's rows expanded from the distinct rows': a copy of ours, edited in place (no second
            # copy of a [rows, vocabulary] tensor); each alpha's edit reads its rows before they are written
            for j in active:
                sl = slice(j * R, (j + 1) * R)
                x[sl] = self.editors[j].edit_logits(x[sl], *(s[sl] for s in states))
            return x
        pieces = []
        for j in range(len(self.editors)):
            sl = slice(j * R, (j + 1) * R)
            if j not in active:
                pieces.append(x[sl])
            elif hidden:
                pieces.append(self.editors[j].edit_hidden(x[sl], *(s[sl] for s in states)))
            else:
                pieces.append(self.editors[j].edit_logits(x[sl], *(s[sl] for s in states)))
        return torch.cat(pieces, dim=0)

    def _on_output_layer(self, module, args, output):
        return self._edit(output, hidden=False)

    def _on_output_input(self, module, args):
        (hidden,) = args
        out = self._edit(hidden, hidden=True)
        return None if out is None else (out,)


@contextlib.contextmanager
def alpha_sweep(target, steppers: list[TeacherStepper], editors: list, rows: int, edits_hidden: bool,
                eos_ids=(), share: RowShare | None = None) -> Iterator[SweepFuser | None]:
    """Install :class:`SweepFuser`'s hooks on ``target`` for the block: ``editors[j]`` edits rows
    ``[j * rows, (j + 1) * rows)`` at the output layer's input (``edits_hidden``) or output. ``share``: the
    batch's :class:`RowShare` (an output it expanded is edited in place). No editor at all (every alpha 0):
    nothing is installed and None is yielded."""
    if all(e is None for e in editors):
        yield None
        return
    sweep = SweepFuser(steppers, editors, rows, edits_hidden, eos_ids, share)
    out_layer = target.get_output_embeddings()
    out_hook = (lambda: out_layer.register_forward_pre_hook(sweep._on_output_input)) if edits_hidden else \
        (lambda: out_layer.register_forward_hook(sweep._on_output_layer))
    with hooks(lambda: [target.register_forward_pre_hook(sweep._on_target_forward, with_kwargs=True), out_hook()]):
        yield sweep


@contextlib.contextmanager
def difference_sweep(target, expert, anti, cfgs: list[DiffConfig], rows: int, A: torch.Tensor | None = None,
                     target_tokenizer=None, teacher_tokenizer=None, bridge: str = "auto",
                     index: torch.Tensor | None = None, eos_ids=(), share: RowShare | None = None,
                     center: torch.Tensor | None = None, tau: float | None = None) -> Iterator[list[DiffFuser | None]]:
    """:func:`difference_fusion` for several alphas at once, on one batch holding ``rows`` rows per alpha (alpha
    ``j``'s are rows ``[j * rows, (j + 1) * rows)``): yields each alpha's :class:`DiffFuser` (None at alpha 0)."""
    for cfg in cfgs:
        check_diff_config(cfg)
    if len({c.pool for c in cfgs}) > 1:
        raise ValueError("every alpha of a sweep pools the teachers' states the same way")
    live = [c for c in cfgs if c.alpha != 0.0]
    if not live:
        yield [None] * len(cfgs)
        return
    steppers, index = _diff_parts(target, expert, anti, live[0], A, target_tokenizer, teacher_tokenizer, bridge, index)
    fusers = [None if c.alpha == 0.0 else DiffFuser(target, steppers[0], steppers[1], c, A, index, center, tau) for c in cfgs]
    with alpha_sweep(target, steppers, fusers, rows, live[0].edits_hidden, eos_ids, share):
        yield fusers


@contextlib.contextmanager
def fusion_sweep(target, teacher, A: torch.Tensor, alphas: list[float], rows: int, target_tokenizer=None,
                 teacher_tokenizer=None, norm: str = "layernorm", bridge: str = "auto",
                 eos_ids=(), share: RowShare | None = None) -> Iterator[list[Fuser | None]]:
    """:func:`fusion` for several alphas at once (see :func:`difference_sweep`): yields each alpha's :class:`Fuser`
    (None at alpha 0)."""
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if all(a == 0.0 for a in alphas):
        yield [None] * len(alphas)
        return
    _check_matrix(A, teacher, target)
    bridge = _bridge_of(bridge, teacher_tokenizer, target_tokenizer)
    stepper = TeacherStepper(teacher, teacher_tokenizer, target_tokenizer, bridge_text=(bridge == "text"))
    fusers = [None if a == 0.0 else Fuser(target, stepper, A, FusionConfig(alpha=a, norm=norm)) for a in alphas]
    with alpha_sweep(target, [stepper], fusers, rows, True, eos_ids, share):
        yield fusers


@torch.no_grad()
def reference_fused_logits(target, teacher, A, alpha, target_ids: list[int], target_tokenizer=None,
                           teacher_tokenizer=None, norm: str = "layernorm", bridge: str = "auto") -> torch.Tensor:
    """From-scratch fused next-token logits for one sequence: both models recomputed on the full text,
    no cache. Used by the tests as the ground truth for cached, batched fusion."""
    device = next(target.parameters()).device
    ids = torch.tensor([target_ids], device=device)
    h_target = backbone(target)(input_ids=ids).last_hidden_state[:, -1, :]
    if alpha == 0:
        return target.get_output_embeddings()(h_target)[0]
    bridge = _bridge_of(bridge, teacher_tokenizer, target_tokenizer)
    h_teacher = _teacher_last_hidden(teacher, target_ids, target_tokenizer, teacher_tokenizer, bridge)[None]
    h = fuse_hidden(h_target, h_teacher.to(device), A.to(device), alpha, norm)
    return target.get_output_embeddings()(h)[0]


def _teacher_last_hidden(teacher, target_ids, target_tokenizer, teacher_tokenizer, bridge,
                         pool: str = "last") -> torch.Tensor:
    """The teacher's final hidden state (float32) at the last token of the target's sequence (``pool="mean"``: the
    mean of its final hidden states over every token of the sequence), from scratch."""
    if bridge == "text":
        text = target_tokenizer.decode(target_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        t_ids = teacher_tokenizer(text, add_special_tokens=True)["input_ids"]
    else:
        t_ids = target_ids
    tdev = next(teacher.parameters()).device
    h = backbone(teacher)(input_ids=torch.tensor([t_ids], device=tdev)).last_hidden_state[0].float()
    return h.mean(0) if pool == "mean" else h[-1]


@torch.no_grad()
def reference_diff_logits(target, expert, anti, cfg: DiffConfig, target_ids: list[int], A=None, target_tokenizer=None,
                          teacher_tokenizer=None, bridge: str = "auto", index: torch.Tensor | None = None,
                          center: torch.Tensor | None = None) -> torch.Tensor:
    """From-scratch next-token logits of :func:`difference_fusion` for one sequence, written out plainly
    (full offsets over the vocabulary, then the top-k and the gate by hand). The tests' ground truth."""
    device = next(target.parameters()).device
    head = target.get_output_embeddings()
    h = backbone(target)(input_ids=torch.tensor([target_ids], device=device)).last_hidden_state[0, -1, :]
    z = head(h).float()
    if cfg.alpha == 0:
        return z
    bridge = _bridge_of(bridge, teacher_tokenizer, target_tokenizer)
    h_e = _teacher_last_hidden(expert, target_ids, target_tokenizer, teacher_tokenizer, bridge, cfg.pool).to(device)
    h_a = _teacher_last_hidden(anti, target_ids, target_tokenizer, teacher_tokenizer, bridge, cfg.pool).to(device)
    V = z.shape[0]
    W = head.weight.float()
    if cfg.space == "hidden":
        if cfg.context_weight != 1.0:  # the difference shrunk toward the pair's center (no gate: checked)
            h_e = center.float() + cfg.context_weight * (h_e - h_a - center.float())
            h_a = torch.zeros_like(h_e)
        s_e, s_a = W @ (h_e @ A.float()), W @ (h_a @ A.float())
        defined = torch.ones(V, dtype=torch.bool)
    else:
        if index is None:
            index = torch.arange(V) if bridge == "ids" else teacher_index(target_tokenizer, teacher_tokenizer, V)
        s_e, s_a = torch.zeros(V), torch.zeros(V)
        defined = index[:V] >= 0
        for v in defined.nonzero().flatten().tolist():
            s_e[v] = expert.get_output_embeddings().weight[index[v]].float() @ h_e
            s_a[v] = anti.get_output_embeddings().weight[index[v]].float() @ h_a
    order = torch.argsort(z, descending=True, stable=True)
    off = s_e - s_a
    if cfg.promote_weight != 1.0:  # read against the center's threshold (hidden space, no gate: checked)
        bias = W @ (center.float() @ A.float())
        tau = bias.mean() + cfg.demote_z * bias.std()
        off = torch.minimum(off - tau, torch.zeros(())) + cfg.promote_weight * torch.maximum(off - tau, torch.zeros(()))
    fused = z + cfg.alpha * off
    if cfg.top_k > 0:
        keep = torch.zeros(V, dtype=torch.bool)
        keep[order[:cfg.top_k]] = True
        fused = torch.where(keep, fused, torch.tensor(float("-inf")))
    if cfg.gate is not None:
        cand = order[:cfg.top_k if cfg.top_k > 0 else cfg.gate_top_k]
        cand = cand[defined[cand]]
        pick = int(order[0])
        if not bool(defined[pick]):
            return z
        lp_e = torch.log_softmax(s_e[cand], 0)[(cand == pick).nonzero()[0, 0]]
        lp_a = torch.log_softmax(s_a[cand], 0)[(cand == pick).nonzero()[0, 0]]
        if float(lp_a - lp_e) < cfg.gate:
            return z
    return fused
