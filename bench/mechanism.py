"""Does the fused signal have a direction? Measured on the target's own greedy decoding states.

    python bench/mechanism.py --res_dir outputs/results [--prompts 60 --steps 10]

For the first N held-out prompts, the target alone decodes greedily for S steps. At every state (prefix)
the next-token distribution of the target alone is compared with that of the paper's fusion (contrastive
A, LayerNorm) and of the default recipe (expert minus anti-expert through the logits A, top-5), each at
its dev-chosen alpha (``chosen.json`` of bench/results.sh). Every number comes from the from-scratch
reference functions of ``detox_pa.fusion`` (no cache), so it measures the method, not the decoder.

A state is "toxic" when the target's pick is a single-token word of the profanity list (the word-ban
list). Printed, and written to ``<res_dir>/mechanism.json`` for docs/RESULTS.md:
- p(pick) before and after, for toxic and other states: a directed method lowers toxic picks more;
- the share of states whose argmax changes (a flip), for toxic and other states;
- the logit scale of the fused term: std over the target's top-10 of the method's logit change / the
  target's own logit std there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res_dir", default="outputs/results")
    ap.add_argument("--out_dir", default="outputs", help="The default run's OUT_DIR (teachers and A).")
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from detox_pa.assets import resolve_model, rtp_split
    from detox_pa.artifacts import load_matrix, matrix_path
    from detox_pa.baselines import bad_words_ids
    from detox_pa.fusion import DiffConfig, reference_diff_logits, reference_fused_logits
    from detox_pa.io import atomic_write_json

    torch.set_grad_enabled(False)
    res, out = Path(a.res_dir), Path(a.out_dir)
    chosen = json.loads((res / "chosen.json").read_text())["alpha"]
    tpath = resolve_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(tpath)
    target = AutoModelForCausalLM.from_pretrained(tpath, dtype=torch.float32).eval()
    expert = AutoModelForCausalLM.from_pretrained(out / "teacher", dtype=torch.float32).eval()
    anti = AutoModelForCausalLM.from_pretrained(out / "anti_teacher", dtype=torch.float32).eval()
    ttok = AutoTokenizer.from_pretrained(out / "teacher")
    A_logits = load_matrix(matrix_path(out / "alignment"))
    A_contr = load_matrix(matrix_path(res / "align_contrastive"))
    bad = {s[0] for s in bad_words_ids(tok) if len(s) == 1}
    methods = {
        "paper": lambda ids: reference_fused_logits(target, expert, A_contr, float(chosen["paper"]), ids, tok, ttok),
        "default": lambda ids: reference_diff_logits(target, expert, anti, DiffConfig(float(chosen["diff"]), top_k=5),
                                                     ids, A_logits, tok, ttok),
    }
    stats = {m: {"toxic": [], "other": []} for m in methods}
    t0 = time.time()
    n_states = 0
    for prompt in rtp_split("eval")[: a.prompts]:
        ids = tok(prompt)["input_ids"]
        for _ in range(a.steps):
            z = target(input_ids=torch.tensor([ids])).logits[0, -1].float()
            p = torch.softmax(z, -1)
            pick = int(z.argmax())
            kind = "toxic" if pick in bad else "other"
            top = z.topk(10).indices
            for m, fn in methods.items():
                zf = fn(ids).float()
                pf = torch.softmax(zf, -1)
                d = (zf - z)[top]
                d = d[torch.isfinite(d)]
                scale = float(d.std() / z[top].std()) if d.numel() > 1 else float("nan")
                stats[m][kind].append((float(p[pick]), float(pf[pick]), int(zf.argmax()) != pick, scale))
            n_states += 1
            ids = ids + [pick]
    summary = {"prompts": a.prompts, "steps": a.steps, "states": n_states, "alpha": {m: chosen["paper" if m == "paper" else "diff"] for m in methods},
               "seconds": round(time.time() - t0, 1), "toxic_rule": "the target's pick is a single-token word of the word-ban list"}
    for m in methods:
        summary[m] = {}
        for kind, rows in stats[m].items():
            if not rows:
                continue
            t = torch.tensor(rows, dtype=torch.float64)
            summary[m][kind] = {"states": len(rows), "p_pick_target": round(float(t[:, 0].mean()), 4),
                                "p_pick_method": round(float(t[:, 1].mean()), 4),
                                "flip_share": round(float(t[:, 2].mean()), 4),
                                "logit_change_scale": round(float(t[:, 3].nanmean()), 4)}
        print(m, json.dumps(summary[m]))
    atomic_write_json(res / "mechanism.json", summary)
    print(f"{n_states} states in {summary['seconds']} s -> {res / 'mechanism.json'}")


if __name__ == "__main__":
    main()
