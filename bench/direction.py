"""Does the offset have a direction? Teacher-forced dev states, steering as the reference (docs/RESULTS.md).

    python bench/direction.py --res_dir outputs/results [--out_dir outputs] [--max_prompts 0]

States: every continuation position of the target reading a dev prompt plus one of its own sampled continuations
(``data/steering_texts.jsonl``, dev prompts only: every choice is made on them; the default pair also tunes on their
texts, so its rows are read out of fold with ``--folds``).
Candidates: the target's top-10 at each state (``detox_pa.directed.target_states``, cached). A candidate is toxic
under two label sets: the word list (a single-token word of the word-ban list), and the word list or a jump of the
evaluation's BiLSTM (appending the candidate makes the continuation's score reach 0.5 and rise by 0.3; the
training labels use profanity-check instead, never the BiLSTM). Rows, each an offset on the candidates' logits:

- activation steering (one constant vector at the input of the output layer: the reference);
- the LM pair (each teacher trained on its own class, the pre-tuning A): the default recipe before tuning;
- the tuned pair (the default recipe: both teachers and A trained through the fusion), read as the default recipe
  decodes it (generate.py's default ``--pool``, each teacher's mean state over the text so far, and its default
  ``--context_weight``, the difference shrunk toward its center), read whole (context weight 1), and read at its
  last-token states (the same pair: what pooling adds at decoding; the last-token recipe's own pair is an arm of
  bench/arms.sh); and the default pair's two parts alone: its center (the constant) and the difference minus its
  center (what the context adds);

each measured by :func:`detox_pa.directed.direction_metrics`: AUC and d' over the top-10, greedy flips over the
top-5 (the default decoding's eligible tokens) at 5/10/20% flips of the other states, p(pick) before and after
where 10% of the other states flip, and the offset's scale against the target's logits; and at the level of whole
continuations (:func:`detox_pa.directed.continuation_contrast`): over every (clean, toxic) pair of sampled
continuations of one dev prompt, how often the offset favours the clean one (0.5 = no preference), with the texts
labelled by profanity-check (the data filter's label, in the file) and by the BiLSTM (clean < 0.2, toxic >= 0.5).
``--pair NAME=ALIGN_DIR`` adds a tuned pair (e.g. an experiment's); ``--pool NAME=mean`` reads its offset from each
teacher's mean state over the text so far (generate.py --pool mean); ``--context_weight NAME=W`` shrinks its difference
toward its center (generate.py --context_weight W; the default row uses generate.py's default); ``--parts NAME`` adds
rows for the named pair's center alone and its context-dependent part alone. ``--folds DIR_A,DIR_B``: the default
pair was tuned on the dev prompts' texts too (step 2's default), so every row of the default's pair is read out of
fold instead: on the states of rtp:dev_b's prompts from the pair tuned with dev_a's texts (DIR_A), on rtp:dev_a's from
the one tuned with dev_b's (DIR_B; bench/results.sh's fold pairs). The default recipe's row reads its offset against
its center's threshold as generate.py does by default (``--promote_weight LAM --demote_z Z``, LAM generate.py's
default: in full below the threshold, scaled by LAM above it; each fold's threshold from its own pair's center; its
two parts' rows are of the offset before that split). ``--compare_promote_weight LAM2`` adds the same pair's row at
LAM2 (1: the previous default, the offset as it is). Writes ``<res_dir>/direction.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def dev_texts(path: Path, max_prompts: int = 0) -> list[tuple[str, str]]:
    from detox_pa.assets import is_dev

    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    recs = [r for r in recs if r.get("split") in ("rtp_build", "rtp_dev") and is_dev(r["prompt"])
            and r.get("continuation", "").strip()]
    if max_prompts:
        keep = set(list(dict.fromkeys(r["prompt"] for r in recs))[:max_prompts])
        recs = [r for r in recs if r["prompt"] in keep]
    return [(r["prompt"], r["continuation"]) for r in recs]


def text_labels_of(path: Path) -> dict[tuple[str, str], int]:
    """(prompt, continuation) -> 1 clean / -1 toxic / 0 mid, from the file's profanity-check label."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["prompt"], r.get("continuation", ""))] = {"clean": 1, "toxic": -1}.get(r.get("label"), 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res_dir", default="outputs/results", help="bench/results.sh's folder (steer_vector.pt, align_lm/)")
    ap.add_argument("--out_dir", default="outputs", help="The default run's OUT_DIR (teachers and the tuned pair).")
    ap.add_argument("--texts", default=str(REPO / "data" / "steering_texts.jsonl"))
    ap.add_argument("--max_prompts", type=int, default=0, help="Dev prompts to use (0 = all).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--pair", action="append", default=[], metavar="NAME=ALIGN_DIR",
                    help="Also measure the tuned pair of this alignment folder (repeatable).")
    ap.add_argument("--pool", action="append", default=[], metavar="NAME=mean",
                    help="Read the named pair's offset as generate.py --pool mean does (default: last).")
    ap.add_argument("--context_weight", action="append", default=[], metavar="NAME=W",
                    help="Read the named pair's difference shrunk toward its center, c + W (d - c), as generate.py "
                         "--context_weight W does (its matrix must hold the center).")
    ap.add_argument("--parts", action="append", default=[], metavar="NAME",
                    help="Also measure the named pair's two parts alone: its center (the constant, W=0) and the "
                         "difference minus its center (the context-dependent part).")
    ap.add_argument("--folds", default="", metavar="DIR_A,DIR_B",
                    help="Read the default pair's rows out of fold: DIR_A's pair (tuned with rtp:dev_a's texts) on "
                         "rtp:dev_b's states, DIR_B's on rtp:dev_a's.")
    ap.add_argument("--promote_weight", type=float, default=None, metavar="LAM",
                    help="The default recipe's generate.py --promote_weight (and --demote_z); unset: generate.py's "
                         "default for a tuned pair.")
    ap.add_argument("--compare_promote_weight", type=float, default=None, metavar="LAM2",
                    help="Also measure the default recipe's pair at this promote weight (1: the previous default).")
    ap.add_argument("--demote_z", type=float, default=-0.5)
    ap.add_argument("--output", default="", help="Where to write the JSON (default <res_dir>/direction.json).")
    a = ap.parse_args()

    from detox_pa.artifacts import TUNED_ANTI, TUNED_EXPERT, load_center, load_matrix, load_steer_vector, matrix_path
    from detox_pa.assets import resolve_model
    from detox_pa.directed import (cached_target_states, continuation_contrast, direction_metrics, label_candidates,
                                   label_texts, pair_offsets, vector_offsets)
    from detox_pa.io import atomic_write_json
    from detox_pa.runtime import load_causal_lm, load_tokenizer
    from detox_pa.scorers import BiLSTMScorer

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    res, out = Path(a.res_dir), Path(a.out_dir)
    t0 = time.time()
    tpath = resolve_model("gemma-3-270m")
    tok = load_tokenizer(tpath, pad_with_eos=True)
    target = load_causal_lm(tpath, "float32").eval()
    W = target.get_output_embeddings().weight.detach()
    texts = dev_texts(Path(a.texts), a.max_prompts)
    st = cached_target_states(tpath, target, tok, texts, k=10, progress=False)
    bil = BiLSTMScorer()
    labels = {"word list": label_candidates(st, tok),
              "word list + BiLSTM jump": label_candidates(st, tok, scorer=lambda ts: bil.score(ts))}
    offsets = {"activation steering": (vector_offsets(load_steer_vector(res / "steer_vector.pt", W.shape[1]), W, st),
                                       None)}
    tuned = (out / "alignment" / TUNED_EXPERT, out / "alignment" / TUNED_ANTI, matrix_path(out / "alignment"))
    pairs = {"the LM pair, pre-tuning A (the default before tuning)": (out / "teacher", out / "anti_teacher",
                                                                        matrix_path(res / "align_lm")),
             "the tuned pair read at its last-token states (--pool last)": tuned,
             "the tuned pair read whole (pooled, context weight 1)": tuned,
             "the tuned pair (the default recipe)": tuned}
    for spec in a.pair:
        name, _, d = spec.partition("=")
        pairs[name] = (Path(d) / TUNED_EXPERT, Path(d) / TUNED_ANTI, matrix_path(d))
    from detox_pa.fusion import POOLS
    from detox_pa.generation import GenerateArguments

    # the default recipe decodes with generate.py's default pool; the rows before it read last-token states
    default_pool = GenerateArguments.__dataclass_fields__["pool"].default
    pools = {"the tuned pair (the default recipe)": default_pool,
             "the tuned pair read whole (pooled, context weight 1)": default_pool}
    pools.update(dict(spec.partition("=")[::2] for spec in a.pool))
    for name in pools:
        if name not in pairs or pools[name] not in POOLS:
            raise SystemExit(f"error: --pool {name}={pools[name]}: name a --pair, and one of {', '.join(POOLS)}")
    weights = {k: float(v) for k, v in (spec.partition("=")[::2] for spec in a.context_weight)}
    from detox_pa.methods import DEFAULT_CONTEXT_WEIGHT

    weights.setdefault("the tuned pair (the default recipe)", DEFAULT_CONTEXT_WEIGHT)
    a.parts = ["the tuned pair (the default recipe)"] + a.parts  # the default's two parts are always measured
    for name in list(weights) + a.parts:
        if name not in pairs:
            raise SystemExit(f"error: --context_weight / --parts {name}: name a --pair")
    # the offset is linear in the difference: at weight w it is const + w (whole - const), so each pair and pool is
    # read twice at most (whole; its center alone), however many rows read it
    read: dict[tuple, tuple] = {}
    folds = [Path(x) for x in a.folds.split(",") if x.strip()] if a.folds else []
    if folds and len(folds) != 2:
        raise SystemExit(f"error: --folds {a.folds}: two alignment folders, DIR_A,DIR_B")
    if folds:
        from detox_pa.assets import rtp_split

        fold_b = {p.strip() for p in rtp_split("dev_b")}
        on_b = torch.tensor([p.strip() in fold_b for p, _ in st.texts])[st.text_of]  # each state's prompt's fold

    def offsets_of(e, an, A, pool: str, const: bool):
        if folds and (e, an, A) == tuned:  # out of fold: dev_b's states from DIR_A's pair, dev_a's from DIR_B's
            (off_a, ok_a), (off_b, ok_b) = (offsets_of(d / TUNED_EXPERT, d / TUNED_ANTI, matrix_path(d), pool, const)
                                            for d in folds)
            return torch.where(on_b[:, None], off_a, off_b), torch.where(on_b, ok_a, ok_b)
        key = (str(e), str(an), str(A), pool, const)
        if key not in read:
            ttok = load_tokenizer(str(e), pad_with_eos=True)
            A_ = load_matrix(A)
            c = load_center(A, A_.shape[0]) if const else None
            read[key] = pair_offsets(load_causal_lm(str(e), "float32").eval(), load_causal_lm(str(an), "float32").eval(),
                                     ttok, A_, W, st, pool=pool, center=c, context_weight=0.0 if const else 1.0)
        return read[key]

    for name, (e, an, A) in pairs.items():
        if not (Path(e) / "config.json").exists() or not Path(A).exists():
            print(f"skipping {name}: {e} or {A} is missing")
            continue
        w, pool = weights.get(name, 1.0), pools.get(name, "last")
        whole, ok = offsets_of(e, an, A, pool, const=False)
        const = offsets_of(e, an, A, pool, const=True)[0] if (w != 1.0 or name in a.parts) else None
        offsets[name] = (whole, ok) if w == 1.0 else (const + w * (whole - const), ok)
        if name in a.parts:  # the constant part (w = 0) and what the context adds to it
            offsets[f"{name}: its center alone (context weight 0)"] = (const, ok)
            offsets[f"{name}: the context part alone (d minus its center)"] = (whole - const, ok)
    from detox_pa.methods import DEFAULT_PROMOTE_WEIGHT

    lam = DEFAULT_PROMOTE_WEIGHT if a.promote_weight is None else a.promote_weight
    lams = {lam} | ({a.compare_promote_weight} if a.compare_promote_weight is not None else set())
    if lams != {1.0} and "the tuned pair (the default recipe)" in offsets:
        # the default's offset read against its pair's threshold, as generate.py does
        from detox_pa.fusion import center_threshold, split_offset

        def tau_of(d):
            A_ = load_matrix(matrix_path(d))
            return center_threshold(load_center(matrix_path(d), A_.shape[0], fix="--promote_weight 1"), A_, W,
                                    a.demote_z)
        tau = (torch.where(on_b, tau_of(folds[0]), tau_of(folds[1]))[:, None] if folds
               else tau_of(out / "alignment"))
        off, ok = offsets.pop("the tuned pair (the default recipe)")  # the offset as it is (promote weight 1)
        offsets["the tuned pair (the default recipe)"] = (split_offset(off, tau, lam) if lam != 1 else off, ok)
        if a.compare_promote_weight is not None:
            w2 = a.compare_promote_weight
            offsets[f"the tuned pair, promote weight {w2:g}" + (" (the previous default)" if w2 == 1 else "")] = (
                split_offset(off, tau, w2) if w2 != 1 else off, ok)
    filter_label = text_labels_of(Path(a.texts))
    text_labels = {"profanity-check (the file's label)": torch.tensor([filter_label.get(t, 0) for t in texts]),
                   "BiLSTM": label_texts(st, lambda ts: bil.score(ts), clean_max=0.2, toxic_min=0.5)}
    rows = {}
    for lab_name, tl in text_labels.items():
        st.text_label = tl
        for name, (off, ok) in offsets.items():
            m = continuation_contrast(st, off, ok)
            rows.setdefault(name, {})[f"continuation pairs [{lab_name}]"] = m
            print(f"{name} [continuation pairs, {lab_name}]: {m}", flush=True)
    for lab_name, lab in labels.items():
        st.toxic = lab
        for name, (off, ok) in offsets.items():
            m = direction_metrics(st, off, ok)
            rows.setdefault(name, {})[lab_name] = m
            print(f"{name} [{lab_name}]: AUC {m.get('auc')}, d' {m.get('d_prime')}, flips {m['flips']}", flush=True)
    summary = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "dev_prompts": len({p for p, _ in texts}),
               "folds": [str(d) for d in folds] or None,
               "texts": len(texts), "states": len(st),
               "text_labels": {k: {"clean": int((v == 1).sum()), "toxic": int((v == -1).sum())}
                               for k, v in text_labels.items()},
               "toxic_candidates": {k: int(v.sum()) for k, v in labels.items()},
               "toxic_pick_states": {k: int(v[:, 0].sum()) for k, v in labels.items()},
               "rows": rows, "seconds": round(time.time() - t0, 1)}
    dest = Path(a.output) if a.output else res / "direction.json"
    atomic_write_json(dest, summary)
    print(f"{len(st)} states of {len(texts)} dev texts in {summary['seconds']} s -> {dest}")


if __name__ == "__main__":
    main()
