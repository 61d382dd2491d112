"""Completion-only training: prompt -> completion pairs tokenised with an exact completion-only mask, the
collator, and a Trainer whose loss sees only completion positions (used by step 1, :mod:`detox_pa.pretraining`).

Each pair is joined into one text (``prompt + separator + completion``; the separator is added
only when neither side has whitespace at the boundary, so the two are never glued together) and
tokenised ONCE with the fast tokenizer's character offsets. The first trained token is the first
non-special token whose end offset lies past the completion's first character; it and every
token after it (a trailing EOS included) get labels, everything before it (BOS, if the tokenizer
adds one, and all prompt tokens) gets ``-100``. This is exact whether or not the tokenizer adds
BOS/EOS, unlike measuring the prompt length with a separate tokenisation (the paper's code
trains on the last prompt token because its prompt length misses BOS).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .errors import InputError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def unescape_separator(separator: str) -> str:
    """Command lines can't easily carry a newline: accept ``\\n`` and ``\\t`` spelled out."""
    return separator.replace("\\n", "\n").replace("\\t", "\t")


def join_prompt_completion(prompt: str, completion: str, separator: str = " ") -> tuple[str, int]:
    """``(text, completion_start)``: the separator goes between the two only when the prompt
    does not end with whitespace and the completion does not start with whitespace."""
    if not separator:
        raise ValueError("separator must not be empty (prompt and completion are never glued together)")
    need = bool(prompt) and bool(completion) and not prompt[-1].isspace() and not completion[0].isspace()
    sep = separator if need else ""
    return prompt + sep + completion, len(prompt) + len(sep)


def completion_boundary(offsets: Sequence[Sequence[int]], special_mask: Sequence[int], completion_start: int) -> int:
    """Index of the first token to train on: the first non-special token whose end offset is past
    ``completion_start``. ``len(offsets)`` when there is none."""
    for i, ((_, end), special) in enumerate(zip(offsets, special_mask)):
        if not special and end > completion_start:
            return i
    return len(offsets)


def truncate_example(ids: list[int], boundary: int, special_mask: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """Cut ``ids`` to ``max_length``. The whole prompt is kept and the completion's tail is cut,
    unless that would leave the completion fewer than ``max_length // 2`` tokens: then the prompt
    keeps its leading special tokens (BOS) and its tail. Returns ``(ids, new_boundary)``."""
    if len(ids) <= max_length:
        return ids, boundary
    n_prompt, n_comp = boundary, len(ids) - boundary
    keep_comp = min(n_comp, max(max_length - n_prompt, min(n_comp, max_length // 2)))
    keep_prompt = max_length - keep_comp
    lead = 0
    while lead < n_prompt and special_mask[lead]:
        lead += 1
    lead = min(lead, keep_prompt)
    tail = keep_prompt - lead
    prompt_ids = ids[:lead] + (ids[boundary - tail:boundary] if tail > 0 else [])
    return prompt_ids + ids[boundary:boundary + keep_comp], len(prompt_ids)


@dataclass
class EncodeStats:
    rows_in: int = 0
    rows_used: int = 0
    rows_truncated: int = 0
    rows_dropped_no_completion_token: int = 0
    tokens_total: int = 0
    tokens_trained: int = 0
    max_tokens: int = 0

    def as_dict(self) -> dict:
        d = dict(vars(self))
        d["mean_tokens"] = round(self.tokens_total / self.rows_used, 2) if self.rows_used else 0.0
        return d


def _check_encoding(tokenizer, max_length: int | None, append_eos: bool) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; the completion mask needs "
                         f"character offsets (return_offsets_mapping)")
    if max_length is not None and max_length < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")
    if append_eos and tokenizer.eos_token_id is None:
        raise InputError("append_eos is set but the tokenizer has no EOS token")


def encode_batch(batch: dict[str, list], tokenizer, separator: str = " ", max_length: int | None = None,
                 append_eos: bool = False) -> dict[str, list]:
    """The ``Dataset.map`` function (batched): columns ``prompt`` and ``completion`` in; ``input_ids``, ``labels``
    (``-100`` on the prompt), ``n_trained``, ``truncated`` and ``dropped`` (no completion token left: empty
    ``input_ids``) out, one row per pair. One tokenisation with offsets per text (see the module docstring)."""
    eos = tokenizer.eos_token_id
    starts_texts = [join_prompt_completion(p, c, separator) for p, c in zip(batch["prompt"], batch["completion"])]
    enc = tokenizer([t for t, _ in starts_texts], return_offsets_mapping=True, return_special_tokens_mask=True,
                    add_special_tokens=True, truncation=False)
    out: dict[str, list] = {"input_ids": [], "labels": [], "n_trained": [], "truncated": [], "dropped": []}
    for (_, start), ids, offsets, special in zip(starts_texts, enc["input_ids"], enc["offset_mapping"],
                                                 enc["special_tokens_mask"]):
        ids, special = list(ids), list(special)
        # position 0 is never predicted: a first token that already holds completion text is context
        boundary = max(1, completion_boundary(offsets, special, start))
        truncated = False
        if boundary < len(ids):
            if append_eos and ids[-1] != eos:
                ids.append(eos)
                special.append(1)
            if max_length is not None and len(ids) > max_length:
                ids, boundary = truncate_example(ids, boundary, special, max_length)
                truncated = True
        dropped = boundary >= len(ids)  # no completion token (the guard after truncation cannot fire at >= 2)
        out["input_ids"].append([] if dropped else ids)
        out["labels"].append([] if dropped else [IGNORE_INDEX] * boundary + ids[boundary:])
        out["n_trained"].append(0 if dropped else len(ids) - boundary)
        out["truncated"].append(truncated)
        out["dropped"].append(dropped)
    return out


ENCODING_VERSION = 1  # part of the cache key of tokenised data: bump when encode_batch changes its output


def encode_pairs(tokenizer, pairs: Iterable[tuple[str, str]], *, separator: str = " ", max_length: int | None = None,
                 append_eos: bool = False, batch_size: int = 512, progress: bool = True,
                 cache_file: str | None = None, fingerprint: str | None = None):
    """Tokenise pairs with ``Dataset.map`` into a ``datasets.Dataset`` of ``{"input_ids", "labels"}`` rows (labels
    ``-100`` on the prompt), rows with no completion token dropped, in the pairs' order; and the counts.

    With ``cache_file`` (and the ``fingerprint`` of everything the result depends on), the tokenised data is
    written there once and read back on later runs (a resumed or repeated training), as HF training scripts do."""
    import datasets

    from .data import _quiet_datasets

    _check_encoding(tokenizer, max_length, append_eos)
    _quiet_datasets()
    pairs = list(pairs)
    raw = datasets.Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    kw = {"cache_file_name": cache_file, "new_fingerprint": fingerprint} if cache_file else {}
    enc = raw.map(encode_batch, batched=True, batch_size=batch_size, remove_columns=["prompt", "completion"],
                  fn_kwargs={"tokenizer": tokenizer, "separator": separator, "max_length": max_length,
                             "append_eos": append_eos}, desc="tokenising teacher data" if progress else None, **kw)
    dropped, truncated, n_trained = enc["dropped"], enc["truncated"], enc["n_trained"]
    lengths = [len(x) for x in enc["input_ids"]]
    keep = [i for i, d in enumerate(dropped) if not d]
    stats = EncodeStats(rows_in=len(pairs), rows_used=len(keep), rows_truncated=sum(1 for i in keep if truncated[i]),
                        rows_dropped_no_completion_token=len(pairs) - len(keep),
                        tokens_total=sum(lengths[i] for i in keep), tokens_trained=sum(n_trained[i] for i in keep),
                        max_tokens=max((lengths[i] for i in keep), default=0))
    if len(keep) < len(enc):
        enc = enc.select(keep)
    return enc.select_columns(["input_ids", "labels"]), stats


@dataclass
class CompletionCollator:
    """Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with ``-100``; adds the
    attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.long)
            attention[i, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pad_token_id_of(tokenizer) -> int:
    """The pad id for the collator: the tokenizer's pad, else EOS, else 0 (pads are masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class CompletionLogits:
    """Compute the output layer only at the positions that predict a completion token.

    Inside ``with CompletionLogits(model, labels):`` a forward pre-hook on the model's output layer
    (``get_output_embeddings()``) keeps only the hidden states at positions ``i`` with
    ``labels[:, i + 1] != -100`` (row-major order), so ``logits`` come out as ``[1, N, vocab]``
    instead of ``[batch, length, vocab]``. Anything applied after the output layer (logit
    soft-capping, scaling) is element-wise and unaffected. On a 49k vocabulary with short prompts
    this removes about half of the training cost. :meth:`loss` turns those logits into the
    completion loss; if the hook did not fire (a model that projects without calling its output
    module), it falls back to the full logits."""

    def __init__(self, model, labels: torch.Tensor):
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.labels = labels
        self.targets_mask = labels[:, 1:] != IGNORE_INDEX
        self.fired = False
        self._handle = None

    def _pre_hook(self, module, args, kwargs=None):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != self.labels.shape:
            return None  # not the call we expect (e.g. logits_to_keep): leave it alone
        self.fired = True
        return (hidden[:, :-1][self.targets_mask.to(hidden.device)].unsqueeze(0),) + tuple(args[1:])

    def __enter__(self):
        if self.head is not None:
            self._handle = self.head.register_forward_pre_hook(self._pre_hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def loss(self, logits: torch.Tensor, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
        """Summed cross-entropy over completion tokens, divided by ``num_items`` (the Trainer's count
        over the whole accumulated batch), else by this batch's count."""
        mask = self.targets_mask.to(logits.device)
        targets = self.labels[:, 1:].to(logits.device)[mask]
        if not self.fired:
            logits = logits[:, :-1][mask]
        logits = logits.reshape(-1, logits.size(-1)).float()
        total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        if num_items is None:
            num_items = targets.numel()
        if torch.is_tensor(num_items):
            num_items = num_items.to(total.device)
        return total / num_items if targets.numel() else total * 0.0


def completion_trainer_class():
    """A ``transformers.Trainer`` whose loss is computed from completion-position logits only
    (see :class:`CompletionLogits`); gradient accumulation and multi-device scaling stay the
    Trainer's own (via ``compute_loss_func`` and ``num_items_in_batch``)."""
    from transformers import Trainer

    class CompletionTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("compute_loss_func", self._completion_loss)
            super().__init__(*args, **kwargs)
            self._cl: CompletionLogits | None = None

        def _completion_loss(self, outputs, labels, num_items_in_batch=None):
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            return self._cl.loss(logits, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self._cl = CompletionLogits(self.accelerator.unwrap_model(model), inputs["labels"])
            with self._cl:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return CompletionTrainer


@torch.no_grad()
def completion_loss(model, examples: list[dict], collator: CompletionCollator, batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over the completion tokens of ``examples``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for b in range(0, len(examples), batch_size):
            batch = collator([examples[i] for i in range(b, min(b + batch_size, len(examples)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            with CompletionLogits(model, batch["labels"]) as cl:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                n = int(cl.targets_mask.sum())
                total += float(cl.loss(logits, 1))
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)
