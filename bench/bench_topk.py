"""The fusion step's top-k over the target's logits: ``torch.topk`` against :func:`detox_pa.topk.top_k` (one pass over
chunk maxima), side by side in one run, on random logits of the embedded target's vocabulary (262,144) and of a few
others, for the k the methods use (5 greedy, 20 sampled), with the answers compared.

    python bench/bench_topk.py [--rows 16] [--repeat 50]

One torch thread, CPU time per call, the fastest of 3 interleaved rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from detox_pa.topk import top_k

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(1)

    def per_call(fn) -> float:
        fn()
        t0 = time.process_time()
        for _ in range(a.repeat):
            fn()
        return (time.process_time() - t0) / a.repeat * 1000

    ok = True
    print(f"{'vocabulary':>10} {'k':>3} {'torch.topk (ms)':>16} {'top_k (ms)':>11} {'ratio':>7}  same answer")
    for V in (262144, 128256, 49152, 32000):
        z = torch.randn(a.rows, V, generator=torch.Generator().manual_seed(V)) * 3
        for k in (5, 20):
            best = {"torch": float("inf"), "ours": float("inf")}
            for _ in range(3):
                best["torch"] = min(best["torch"], per_call(lambda: z.topk(k, dim=-1)))
                best["ours"] = min(best["ours"], per_call(lambda: top_k(z, k)))
            got, want = top_k(z, k), z.topk(k, dim=-1)
            same = torch.equal(got.indices, want.indices) and torch.equal(got.values, want.values)
            ok &= same
            print(f"{V:>10} {k:>3} {best['torch']:>16.2f} {best['ours']:>11.2f} {best['ours'] / best['torch']:>6.3f}x  "
                  f"{'yes' if same else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
