"""Output-layer fusion of a target LM with a teacher (calibration) model.

At every decoding step the target's final hidden state, just before its output layer, becomes::

    h = alpha * Norm(h_teacher @ A) + (1 - alpha) * h_target

where ``Norm`` is a parameter-free LayerNorm over the target's hidden size (the paper), or
``rescale`` (the mapped vector rescaled to the norm of ``h_target``; an ablation).

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

At ``alpha == 0`` no hook is installed and the teacher is never run, so the output is exactly
plain ``generate()``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

NORMS = ("layernorm", "rescale")


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
    else:
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
    each row. Rows whose teacher tokenisation changed have the changed tail masked out of the cache
    (positions are reused), so the result always equals a from-scratch run on the full text.
    """

    def __init__(self, teacher, teacher_tokenizer=None, target_tokenizer=None, bridge_text: bool = False):
        self.teacher = teacher
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
    def step(self, target_rows: list[list[int]]) -> torch.Tensor:
        want = self.teacher_ids(target_rows)
        B = len(want)
        if len(self.ids) != B:
            self.reset(B)
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
        last = torch.tensor([c[-1] if c else 0 for c in self.cols], device=self.hidden.device)
        return self.hidden[torch.arange(B, device=self.hidden.device), last]


@dataclass
class FusionConfig:
    alpha: float
    norm: str = "layernorm"
    eps: float = 1e-5


class Fuser:
    """Holds the hooks' state. Use through :func:`fusion`."""

    def __init__(self, target, stepper: TeacherStepper, A: torch.Tensor, cfg: FusionConfig):
        self.target = target
        self.stepper = stepper
        self.cfg = cfg
        out_layer = target.get_output_embeddings()
        if out_layer is None:
            raise TypeError(f"{type(target).__name__} has no output embedding layer")
        self.out_layer = out_layer
        w = out_layer.weight
        self.A = A.to(device=w.device, dtype=torch.float32)
        self.history: torch.Tensor | None = None  # [B, T] target ids fed so far
        self.attn: torch.Tensor | None = None
        self.steps = 0

    # -- hooks
    def _on_target_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            raise RuntimeError("fusion needs input_ids (inputs_embeds is not supported)")
        cache = kwargs.get("past_key_values")
        fresh = cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)
        if fresh or self.history is None or self.history.shape[0] != ids.shape[0]:
            self.history = ids.detach().cpu()
            self.stepper.reset(ids.shape[0])
        else:
            self.history = torch.cat([self.history, ids.detach().cpu()], dim=1)
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            self.attn = torch.ones_like(self.history)
        else:
            self.attn = mask.detach().cpu()[:, -self.history.shape[1]:]
        return None

    def _on_output_layer(self, module, args):
        (hidden,) = args
        rows = [self.history[i][self.attn[i].bool()].tolist() for i in range(self.history.shape[0])]
        h_teacher = self.stepper.step(rows).to(hidden.device)
        fused = fuse_hidden(hidden[:, -1, :], h_teacher, self.A, self.cfg.alpha, self.cfg.norm, self.cfg.eps)
        out = hidden.clone()
        out[:, -1, :] = fused
        self.steps += 1
        return (out,)


@contextlib.contextmanager
def fusion(target, teacher, A: torch.Tensor, alpha: float, target_tokenizer=None, teacher_tokenizer=None,
           norm: str = "layernorm", bridge: str = "auto") -> Iterator[Fuser | None]:
    """Install the fusion hooks on ``target`` for the duration of the block.

    ``bridge`` is ``"ids"`` (same tokenizer: feed ids straight), ``"text"`` (re-tokenise the text),
    or ``"auto"`` (``ids`` when the tokenizers are identical). At ``alpha == 0`` nothing is installed
    and ``None`` is yielded."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        yield None
        return
    d_t = teacher.config.get_text_config().hidden_size
    d_g = target.get_output_embeddings().weight.shape[1]
    if tuple(A.shape) != (d_t, d_g):
        raise ValueError(f"alignment matrix has shape {tuple(A.shape)}, expected (d_teacher={d_t}, d_target={d_g})")
    if bridge == "auto":
        bridge = "ids" if teacher_tokenizer is None or target_tokenizer is None or same_tokenizer(teacher_tokenizer, target_tokenizer) else "text"
    stepper = TeacherStepper(teacher, teacher_tokenizer, target_tokenizer, bridge_text=(bridge == "text"))
    fuser = Fuser(target, stepper, A, FusionConfig(alpha=alpha, norm=norm))
    handles = [
        target.register_forward_pre_hook(fuser._on_target_forward, with_kwargs=True),
        fuser.out_layer.register_forward_pre_hook(fuser._on_output_layer),
    ]
    try:
        yield fuser
    finally:
        for h in handles:
            h.remove()


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
    if bridge == "auto":
        bridge = "ids" if teacher_tokenizer is None or same_tokenizer(teacher_tokenizer, target_tokenizer) else "text"
    if bridge == "text":
        text = target_tokenizer.decode(target_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        t_ids = teacher_tokenizer(text, add_special_tokens=True)["input_ids"]
    else:
        t_ids = target_ids
    tdev = next(teacher.parameters()).device
    h_teacher = backbone(teacher)(input_ids=torch.tensor([t_ids], device=tdev)).last_hidden_state[:, -1, :]
    h = fuse_hidden(h_target, h_teacher.to(device), A.to(device), alpha, norm)
    return target.get_output_embeddings()(h)[0]
