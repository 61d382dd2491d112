"""Batched continuation PPL vs the paper's per-sample loop, side by side, with the embedded reference.

    .venv/bin/python bench/bench_ppl.py            # 200 pairs, batch 16, gemma-3-270m, CPU fp32

Pairs: the first N held-out RealToxicityPrompts prompts (detox_pa.assets.rtp_split("eval")), each with
a deterministic 10-20 word "response" made of the words of the following prompts.

- ours: detox_pa.ppl.PPLScorer (one tokenisation, offsets boundary, sorted batches, output layer only at
  continuation positions);
- paper: one text at a time, ``model(input_ids, labels=labels).loss`` with the prompt masked by the
  length of a separately tokenised prompt (BOS included, i.e. the paper's off-by-one fixed);
- optional ablation: our batching but full-vocabulary logits at every position (--ablation).

Throughput (tokens per second, every token through the model counted once, padding not): ours against a plain
forward of the same model on the same batches (``model(input_ids, attention_mask)``, target >= 0.9), and against
the floor of any scorer (the backbone over every token plus the output layer at the scored positions only).

The reuse path (``--generations FILE``, a generations file whose NLL generate.py recorded, with its meta file):
:func:`detox_pa.ppl.recorded_records` (judge identity and per-pair token check) against recomputing the same
records with the scorer; records per second, and how many pairs it takes or leaves to recompute.

Prints both wall times, the ratio, the max |difference| of per-sample mean NLL where both methods
put the boundary at the same token, how many samples have a different boundary, and (--check64) how
far each method is from a float64 log-softmax of the same logits. Times are the process's CPU time with one torch
thread by default (``--clock cpu``: the work, whatever else shares the machine); ``--clock wall`` for wall time.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
clock = time.process_time  # set in main(): time.process_time (CPU) or time.perf_counter (wall)


def make_pairs(n: int) -> tuple[list[str], list[str]]:
    from detox_pa.assets import rtp_split

    prompts = rtp_split("eval")
    words = [p.split() for p in prompts]
    out_p, out_r = [], []
    for i in range(min(n, len(prompts))):
        want = 10 + (i * 7) % 11  # 10..20 words
        pool: list[str] = []
        j = i + 1
        while len(pool) < want:
            pool.extend(words[j % len(prompts)])
            j += 1
        out_p.append(prompts[i])
        out_r.append(" " + " ".join(pool[:want]))
    return out_p, out_r


def paper_loop(model, tok, prompts, responses):
    import torch

    means, bounds = [], []
    with torch.inference_mode():
        for p, r in zip(prompts, responses):
            ids = tok(p + r, return_tensors="pt").input_ids
            n_prompt = len(tok(p).input_ids)
            labels = ids.clone()
            labels[:, :n_prompt] = -100
            means.append(float(model(input_ids=ids, labels=labels).loss))
            bounds.append(n_prompt)
    return means, bounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--ablation", action="store_true", help="also time batched full-logits scoring")
    ap.add_argument("--check64", type=int, default=16,
                    help="on this many samples, compare both methods with a float64 log-softmax of the full logits")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = 1 with --clock cpu, else torch's default)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="process CPU time (default: the work, whatever else runs on a shared machine) or wall time")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the throughput comparison (fastest kept)")
    ap.add_argument("--generations", default="", help="a generations file with recorded NLL: time the reuse path")
    a = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from detox_pa.assets import resolve_model
    from detox_pa.cli import setup_logging
    from detox_pa.ppl import PPLScorer, encode_pair, load_reference

    setup_logging()
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    if a.threads or a.clock == "cpu":
        torch.set_num_threads(a.threads or 1)
    prompts, responses = make_pairs(a.n)
    model, tok, dev = load_reference(resolve_model(a.model), "float32", "cpu")
    print(f"model {a.model} ({type(model).__name__}, vocab {model.config.vocab_size}), {len(prompts)} pairs, "
          f"torch threads {torch.get_num_threads()}, batch {a.batch_size}, {a.clock} time")
    lens = [len(tok(p + r).input_ids) for p, r in zip(prompts, responses)]
    print(f"tokens per text: mean {statistics.mean(lens):.1f}, max {max(lens)}")

    # warm-up both paths on a few texts (first-call allocations)
    paper_loop(model, tok, prompts[:2], responses[:2])
    scorer = PPLScorer(model, tok, batch_size=a.batch_size, device=dev)
    scorer.score(prompts[:4], responses[:4])

    t0 = clock()
    paper_means, paper_bounds = paper_loop(model, tok, prompts, responses)
    t_paper = clock() - t0

    t0 = clock()
    ours = scorer.score(prompts, responses)
    t_ours = clock() - t0

    t_full = None
    if a.ablation:
        full = PPLScorer(model, tok, batch_size=a.batch_size, device=dev, probe=False)
        full.fast = False
        t0 = clock()
        full_recs = full.score(prompts, responses)
        t_full = clock() - t0
        d_full = max(abs(x["mean_nll"] - y["mean_nll"]) for x, y in zip(ours, full_recs))

    our_bounds = [encode_pair(tok, p, r)[0].start for p, r in zip(prompts, responses)]
    same = [i for i in range(len(prompts)) if our_bounds[i] == paper_bounds[i]]
    diff_b = len(prompts) - len(same)
    dmax = max((abs(ours[i]["mean_nll"] - paper_means[i]) for i in same), default=float("nan"))
    paper_ppl = math.exp(statistics.mean(paper_means))
    our_ppl = math.exp(statistics.mean(r["mean_nll"] for r in ours))
    print(f"paper-style per-sample loop : {t_paper:8.2f} s  ({len(prompts) / t_paper:6.1f} texts/s)")
    print(f"ours, batched, head at cont.: {t_ours:8.2f} s  ({len(prompts) / t_ours:6.1f} texts/s)")
    if t_full is not None:
        print(f"ablation, batched full logits: {t_full:7.2f} s  (max |mean NLL diff| vs ours {d_full:.2e})")
    print(f"speed-up ours vs paper loop : {t_paper / t_ours:.2f}x  (target >= 2x)")
    print(f"max |mean NLL diff| on {len(same)} samples with the same boundary: {dmax:.2e}")
    print(f"samples with a different boundary: {diff_b}")
    for i in [i for i in range(len(prompts)) if i not in set(same)][:3]:
        print(f"  e.g. prompt ends {prompts[i][-12:]!r}: ours starts at token {our_bounds[i]}, paper at {paper_bounds[i]}")
    print(f"PPL (paper formula): paper loop {paper_ppl:.3f}, ours {our_ppl:.3f}")
    if a.check64:
        d_ours, d_paper = [], []
        with torch.inference_mode():
            for i in same[: a.check64]:
                ids = tok(prompts[i] + responses[i], return_tensors="pt").input_ids
                b = paper_bounds[i]
                ref = float(torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, b - 1:-1].double(), ids[0, b:]))
                d_ours.append(abs(ours[i]["mean_nll"] - ref))
                d_paper.append(abs(paper_means[i] - ref))
        print(f"vs a float64 log-softmax on {len(d_ours)} samples: max |diff| ours {max(d_ours):.2e}, "
              f"paper loop (fp32 cross_entropy) {max(d_paper):.2e}")
    throughput(model, tok, scorer, prompts, responses, a)
    if a.generations:
        reuse_path(a.generations, a.model, model, tok, scorer, a.n)
    return 0


def throughput(model, tok, scorer, prompts, responses, a) -> None:
    """Tokens per second: ours, a plain forward of the same model on the same batches, the floor of any scorer."""
    import torch

    from detox_pa.ppl import encode_pair

    encoded = [e for e in (encode_pair(tok, p, r, scorer.max_length)[0] for p, r in zip(prompts, responses)) if e]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))  # the scorer's own batches
    batches = [[encoded[i] for i in order[b: b + a.batch_size]] for b in range(0, len(order), a.batch_size)]
    n_tok = sum(len(e.ids) for e in encoded)

    @torch.inference_mode()
    def plain():
        for batch in batches:
            ids, mask, *_ = scorer._batch_tensors(batch)
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    @torch.inference_mode()
    def floor():
        for batch in batches:
            ids, mask, rows, cols, _ = scorer._batch_tensors(batch)
            hidden = scorer.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            scorer.head(hidden[rows, cols])

    best = {"ours": float("inf"), "plain forward": float("inf"), "floor": float("inf")}
    for r in range(a.rounds):
        jobs = [("ours", lambda: scorer.score_encoded(encoded)), ("plain forward", plain), ("floor", floor)]
        for name, job in (jobs if r % 2 == 0 else jobs[::-1]):
            t0 = clock()
            job()
            best[name] = min(best[name], clock() - t0)
    print(f"\nthroughput on {len(encoded)} texts, {n_tok} tokens (batch {a.batch_size}, fastest of {a.rounds} rounds):")
    for name, t in best.items():
        print(f"  {name:14s}: {t:7.2f} s  {n_tok / t:8.0f} tok/s")
    print(f"  ours / plain forward: {best['plain forward'] / best['ours']:.2f}x the tokens per second (target >= 0.9); "
          f"ours / floor (backbone + output layer at scored positions): {best['floor'] / best['ours']:.2f}x")


def reuse_path(path, model_name, model, tok, scorer, n) -> None:
    """eval_ppl.py's reading of the recorded NLL against recomputing the same records."""
    import json as _json

    from detox_pa.artifacts import PAIRS_KEY
    from detox_pa.assets import resolve_model
    from detox_pa.io import sha256_file
    from detox_pa.ppl import choose_join, joined_continuation, recorded_records

    blocks = _json.loads(Path(path).read_text(encoding="utf-8"))
    pairs = [p for b in blocks for p in b[PAIRS_KEY]]
    join, _ = choose_join(pairs, "auto")
    conts = [joined_continuation(p, join) for p in pairs]
    dtype = next(model.parameters()).dtype
    t0 = clock()
    sha = sha256_file(path)
    recs, info = recorded_records(path, sha, pairs, conts, resolve_model(model_name), dtype, tok, scorer.max_length)
    t_reuse = clock() - t0
    sub = list(range(min(n, len(pairs))))
    t0 = clock()
    again = scorer.score([pairs[i]["prompt"] for i in sub], [conts[i] for i in sub])
    t_score = clock() - t0
    worst = max((abs(recs[i]["sum_nll"] - again[j]["sum_nll"]) / again[j]["sum_nll"] for j, i in enumerate(sub)
                 if recs[i] is not None and recs[i]["sum_nll"]), default=float("nan"))
    print(f"\nreuse path on {path}: {len(pairs)} records, {info['used']} taken, {info['recomputed']} to recompute "
          f"({info.get('recomputed_because') or info['reason']})")
    print(f"  recorded_records (identity incl. weights sha256, token check): {t_reuse:.2f} s, "
          f"{len(pairs) / t_reuse:.0f} records/s")
    print(f"  recomputing the first {len(sub)} records: {t_score:.2f} s, {len(sub) / t_score:.1f} records/s "
          f"({scorer.n_distinct} distinct); max relative |sum NLL| difference where taken: {worst:.1e}")


if __name__ == "__main__":
    raise SystemExit(main())
