"""Step 2's pair training (``detox_pa.directed.train_pair``), AdamW per tensor against AdamW fused, side by side.

The same states (the first ``--texts`` training texts of ``data/tune_texts.tsv``, their shipped target states,
word-list labels), the same teachers (the default run's ``outputs/teacher`` and ``outputs/anti_teacher``) and the
same A (the default run's ``outputs/alignment``), ``--steps`` steps of 16 texts each way, ``--rounds`` interleaved
rounds, the fastest of each kept:

- ``single``: ``torch.optim.AdamW(foreach=False)``, what torch picks on CPU by default (``auto``, step 2's default:
  one tensor at a time);
- ``foreach``: the same arithmetic over lists of tensors (the same numbers);
- ``fused``: one vectorised pass over every tensor (``fused=True``): the same update up to float rounding.

Prints seconds per step (wall, or ``--clock cpu``), each ratio to ``single``, and the largest difference of any
trained weight (and of A) from ``single``'s after the same steps; then the step's floor: on batches of the same 16
texts, both teachers' forward and backward alone (the bodies' matmuls every step must pay; no offset, loss or
optimizer), and each step's ratio to it. Writes bench/out/bench_tune.json.

    .venv/bin/python bench/bench_tune.py                  # 24 steps, 2 rounds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    import torch

    from detox_pa.artifacts import MATRIX_FILE, MATRIX_KEY
    from detox_pa.assets import DEFAULT_TARGET, resolve_model
    from detox_pa.cli import setup_logging
    from detox_pa.directed import (ADAM_IMPLS, DirectedConfig, cached_target_states, label_candidates, read_pairs,
                                   shipped_states_path, train_pair)
    from detox_pa.embeddings import find_embedding, load_embedding
    from detox_pa.runtime import load_causal_lm, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--impls", default="single,foreach,fused")
    ap.add_argument("--outputs", default=str(REPO / "outputs"), help="the default run's OUT_DIR")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_tune.json"))
    a = ap.parse_args(argv)
    setup_logging()
    out_dir = Path(a.outputs)
    for need in (out_dir / "teacher", out_dir / "anti_teacher", out_dir / "alignment"):
        if not need.exists():
            print(f"error: {need} does not exist: run ./run_all.sh first", file=sys.stderr)
            return 2
    clock = time.perf_counter if a.clock == "wall" else time.process_time
    target = str(resolve_model(DEFAULT_TARGET, "target"))
    tok = load_tokenizer(target, pad_with_eos=True)
    texts_path = REPO / "data" / "tune_texts.tsv"
    pairs = read_pairs(str(texts_path))
    states = cached_target_states(target, lambda: load_causal_lm(target, "float32").eval(), tok, pairs, 10,
                                  progress=False, shipped=[shipped_states_path(texts_path)], rows=a.texts)
    states.toxic = label_candidates(states, tok, scorer=None)
    W = load_embedding(find_embedding(target, "output", "target"))[0]
    A0 = torch.load(out_dir / "alignment" / MATRIX_FILE, weights_only=True)[MATRIX_KEY]
    t_tok = load_tokenizer(str(out_dir / "teacher"), pad_with_eos=True)
    base = (load_causal_lm(str(out_dir / "teacher"), "float32").eval(),
            load_causal_lm(str(out_dir / "anti_teacher"), "float32").eval())
    impls = [x.strip() for x in a.impls.split(",") if x.strip()]
    for impl in impls:
        if impl not in ADAM_IMPLS:
            print(f"error: --impls: unknown {impl!r} (one of {sorted(ADAM_IMPLS)})", file=sys.stderr)
            return 2
    n_texts = len({int(t) for t in states.text_of})
    epochs = a.steps * 16 / n_texts
    best: dict[str, float] = {}
    weights: dict[str, tuple] = {}
    for r in range(a.rounds):
        for impl in impls:
            e, an = copy.deepcopy(base[0]), copy.deepcopy(base[1])
            cfg = DirectedConfig(alpha=1.0, mu=4.0, lr=1e-4, lr_A=1e-4, epochs=epochs, batch_texts=16, seed=42,
                                 hinge_weight=1.0, pool="mean", adam=impl, progress=False)
            t0 = clock()
            A, rep = train_pair(e, an, t_tok, A0, W, states, cfg)
            dt = (clock() - t0) / rep["steps"]
            best[impl] = min(best.get(impl, float("inf")), dt)
            if r == 0:
                weights[impl] = (A, torch.cat([p.detach().flatten() for m in (e, an) for p in m.parameters()]))
            print(f"round {r + 1} {impl:8} {rep['steps']} steps: {dt * 1000:.0f} ms a step", flush=True)
    # the floor: both teachers' bodies forward and backward on batches of 16 texts (the same sampling of texts)
    from detox_pa.directed import pair_difference, teacher_view
    from detox_pa.fusion import backbone

    view = teacher_view(t_tok, states)
    by_text: dict[int, list[int]] = {}
    for s_i in (view.pos >= 0).nonzero().flatten().tolist():
        by_text.setdefault(int(states.text_of[s_i]), []).append(s_i)
    text_ids = sorted(by_text)
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0
    floor = float("inf")
    for r in range(a.rounds):
        e, an = copy.deepcopy(base[0]), copy.deepcopy(base[1])
        for m in (e, an):
            m.train()
            for name, p in m.named_parameters():
                p.requires_grad_("embed" not in name and "lm_head" not in name)
        g = torch.Generator().manual_seed(42)
        t0 = clock()
        for _ in range(a.steps):
            batch = [text_ids[i] for i in torch.randperm(len(text_ids), generator=g)[:16].tolist()]
            _, d = pair_difference((backbone(e), backbone(an)), view, states, by_text, batch, pad, "cpu", "mean")
            d.pow(2).sum().backward()
        floor = min(floor, (clock() - t0) / a.steps)
    print(f"round floor: both teachers' forward + backward alone: {floor * 1000:.0f} ms a step", flush=True)
    ref = "single" if "single" in weights else impls[0]
    rows = []
    print(f"\n{'AdamW':8} {'ms/step':>8} {'x ' + ref:>9} {'x floor':>8} {'max |dW|':>10} {'max |dA|':>10}  ({a.clock} "
          f"time, {a.texts} texts' states, fastest of {a.rounds} rounds)")
    for impl in impls:
        dW = float((weights[impl][1] - weights[ref][1]).abs().max())
        dA = float((weights[impl][0] - weights[ref][0]).abs().max())
        rows.append({"adam": impl, "seconds_per_step": round(best[impl], 4), "ratio": round(best[impl] / best[ref], 3),
                     "ratio_to_floor": round(best[impl] / floor, 3), "max_abs_weight_diff": dW, "max_abs_A_diff": dA})
        print(f"{impl:8} {best[impl] * 1000:8.0f} {best[impl] / best[ref]:9.3f} {best[impl] / floor:8.3f} {dW:10.2e} "
              f"{dA:10.2e}")
    print(f"{'floor':8} {floor * 1000:8.0f}  (both teachers' bodies, forward + backward, batches of 16 texts)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"clock": a.clock, "steps": a.steps, "texts": a.texts, "rounds": a.rounds,
                                       "cpu_count": os.cpu_count(), "floor_seconds_per_step": round(floor, 4),
                                       "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
