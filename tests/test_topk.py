"""detox_pa.topk.top_k: torch.topk's values and indices, from one pass over chunk maxima."""

from __future__ import annotations

import pytest
import torch

from detox_pa import topk as T


def same(z, k, chunk=T.CHUNK):
    got, want = T.top_k(z, k, chunk), z.topk(k, dim=-1)
    assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    return got


@pytest.mark.parametrize("V", [262144, 8 * 5 * 64 + 37, 32000])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_random_logits_give_torch_topk(V, k):
    g = torch.Generator().manual_seed(V + k)
    z = torch.randn(6, V, generator=g) * 4
    same(z, k, 64)
    same(z, k)


def test_the_whole_top_k_in_one_chunk_and_in_the_short_last_chunk():
    z = torch.randn(3, 64 * 50 + 10)
    z[0, 128:133] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])  # all five in chunk 2
    z[1, -5:] = torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0])  # all five in the 10-column tail
    z[2, [0, 64 * 49 + 63]] = 10.0 + torch.tensor([0.5, 0.25])  # the first and the last full chunk's last column
    got = same(z, 5, 64)
    assert set(got.indices[0].tolist()) == set(range(128, 133))
    assert set(got.indices[1].tolist()) == set(range(z.shape[1] - 5, z.shape[1]))


def test_ties_nan_and_masked_rows_are_broken_as_torch_breaks_them(monkeypatch):
    """A tie at the k-th value across chunks, a tie inside the top k, a NaN and a row of -inf past a few finite
    values: each falls back to torch.topk (counted), so the result is torch's in every case."""
    calls = []
    orig = torch.Tensor.topk

    def counting(self, *a, **kw):
        calls.append(self.shape)
        return orig(self, *a, **kw)

    z = torch.randn(2, 64 * 60)
    fast = T.top_k(z, 5, 64)  # no tie: no call on the whole row
    monkeypatch.setattr(torch.Tensor, "topk", counting)
    T.top_k(z, 5, 64)
    assert all(s[1] < z.shape[1] for s in calls)
    monkeypatch.setattr(torch.Tensor, "topk", orig)
    assert torch.equal(fast.indices, z.topk(5, dim=-1).indices)
    cases = []
    a = z.clone(); a[0, [10, 64 * 30 + 3]] = 7.0; a[0, [100, 200, 300]] = torch.tensor([9.0, 8.5, 8.0])
    cases.append(a)  # the 4th and 5th tie, in two chunks
    b = z.clone(); b[1, [5, 70, 140, 900, 1800]] = 6.0
    cases.append(b)  # all five equal
    c = z.clone(); c[0, 77] = float("nan")
    cases.append(c)
    d = torch.full((2, 64 * 60), float("-inf")); d[:, :3] = torch.tensor([1.0, 2.0, 3.0])
    cases.append(d)  # the 4th and 5th are -inf
    for x in cases:
        calls.clear()
        monkeypatch.setattr(torch.Tensor, "topk", counting)
        got = T.top_k(x, 5, 64)
        monkeypatch.setattr(torch.Tensor, "topk", orig)
        want = x.topk(5, dim=-1)
        assert torch.equal(got.indices, want.indices)
        assert torch.allclose(got.values, want.values, equal_nan=True) or torch.equal(got.values, want.values)
        assert any(s[1] == x.shape[1] for s in calls)  # it fell back to the whole row


def test_small_vocabularies_and_large_k_are_torch_topk_itself(monkeypatch):
    z = torch.randn(2, 1000)
    same(z, 5)  # 8 x 5 chunks of 512 exceed 1000 columns
    same(torch.randn(2, 40000), 20)
