"""``torch.topk`` over a large vocabulary for a small k, on the CPU in one pass over the logits.

``torch.topk(z, 5)`` over Gemma's 262,144 logits takes about 8 ms for 16 rows on one CPU thread, as long as the
rest of the fusion step together; a row's maximum takes about 0.5 ms. :func:`top_k` reads the logits once, as the
maxima of chunks of ``chunk`` columns, takes the k chunks with the largest maxima, and finds the top-k among their
columns only. That is exact: an element of the top-k has at most k - 1 larger elements, each in some chunk, so its
own chunk's maximum is among the k largest chunk maxima.

The result is ``torch.topk``'s (values and indices, sorted descending) wherever the order is defined: a row whose
k-th value is tied (inside the chosen chunks, or with the next chunk's maximum), holds a NaN, or whose top k + 1
candidates hold equal values falls back to ``torch.topk`` for the batch, so ties are broken as torch breaks them.
Off the CPU, and where k x 8 chunks exceed the vocabulary (too few chunks to gain), it is ``torch.topk`` itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

CHUNK = 512


class TopK(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor


def top_k(z: torch.Tensor, k: int, chunk: int = CHUNK) -> TopK:
    """The ``k`` largest entries of each row of ``z`` [B, V] and their columns, as ``z.topk(k, dim=-1)``."""
    B, V = z.shape
    n = V // chunk
    if z.device.type != "cpu" or k < 1 or 8 * k * chunk > V:  # too few chunks to gain
        v, i = z.topk(k, dim=-1)
        return TopK(v, i)
    full = n * chunk
    m = z[:, :full].reshape(B, n, chunk).amax(-1)  # [B, n] chunk maxima
    if full < V:  # the last, shorter chunk
        m = torch.cat([m, z[:, full:].amax(-1, keepdim=True)], dim=1)
    cm, ci = m.topk(k + 1, dim=-1)  # the k chunks that hold the top-k, and the next chunk's maximum
    ci = ci[:, :k].sort(dim=-1).values  # ascending: the candidates keep the row's column order
    cols = (ci[:, :, None] * chunk + torch.arange(chunk, device=z.device)).reshape(B, k * chunk)
    inside = cols < V
    vals = z.gather(1, cols.clamp_max(V - 1)).masked_fill(~inside, float("-inf"))
    v, j = vals.topk(k + 1, dim=-1)
    kth = v[:, k - 1]
    # exact unless the k-th value ties with something outside the chosen chunks (their maxima are <= cm[:, k]) or
    # the top k + 1 candidates hold a tie (torch's own tie-breaking then decides), or padding reached the top k; a NaN
    # (topk ranks it first, so its chunk is chosen or is cm[:, k]) fails a comparison here too
    exact = (cm[:, k] < kth) & (v[:, :-1] > v[:, 1:]).all(dim=1) & inside.gather(1, j[:, :k]).all(dim=1)
    if not bool(exact.all()):
        v, i = z.topk(k, dim=-1)
        return TopK(v, i)
    return TopK(v[:, :k], cols.gather(1, j[:, :k]))
