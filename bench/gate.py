"""Would a context-level gate help (issue 21)? Judge-free signals of where the target is heading, and what a gate
built on each would have bought, read from a scored sweep that holds alpha 0 (the target alone).

    python bench/gate.py --run outputs/arms/dev_default_s42.json [--align outputs/alignment] [--json OUT]

The outcome split (``bench/seeds.py split``) says the default loses to steering on the prompts the target leaves
clean: there it raises toxicity and pays PPL for nothing. A gate acts only where the context looks risky. Per
prompt, judge-free signals (never the BiLSTM, which is the judge):

- ``pair LLR, prompt``: the tuned pair's log-likelihood ratio of the prompt's tokens, mean of log p_anti - log
  p_expert per teacher token (the pair as GeDi's class-conditional LMs);
- ``pair LLR, target's continuation``: the same over what the target alone wrote (alpha 0's continuation, given the
  prompt): known only after a first pass, or step by step as the text grows;
- ``word-list words in the prompt`` (step 2's label source);
- ``target's word-list mass``: the target's next-token probability on word-list tokens, the highest over the
  prompt's end and each position of its own continuation;
- ``target's probe``: a logistic probe on the target's final hidden state (the input of its output layer, where the
  offset acts; ARGRE's reward model is of this kind), trained on every position of the target's sampled
  continuations of the TRAIN prompts (``data/steering_texts.jsonl``, profanity-check labels: toxic 1, clean 0, the
  data filter's labels, never the BiLSTM), read at the prompt's end and, highest, over the target's continuation.

For each signal: its AUC for "the target alone writes a continuation the BiLSTM scores >= 0.1" (and >= 0.5),
read here to explain, not to train. Then the binary gate at each threshold (act on the prompts whose signal is at
or above the q-quantile, leave the others as the target wrote them) evaluated exactly from the file: greedy
continuations are deterministic, so the gated run's text of a prompt is either its alpha-0 or its alpha-a text
(a prompt-level gate; a gate that could switch mid-continuation is not what this reads). Rows give the mean
BiLSTM change against alpha 0 and the token-weighted PPL ratio, so the gate's points sit on the same axes as the
sweep's. Choices made here must be made on dev files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


DRAFT = "profanity-check of the target's own continuation (a draft: two passes)"


def auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    win = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return win / (len(pos) * len(neg))


def gated_point(keys: list, act: set, tox: dict, nll: dict, a: float) -> tuple[float, float]:
    """(mean toxicity change against alpha 0, token-weighted PPL ratio) of the run that uses alpha ``a``'s
    continuation on the prompts in ``act`` and alpha 0's on the others."""
    t1 = sum(tox[a][k] if k in act else tox[0.0][k] for k in keys) / len(keys)
    t0 = sum(tox[0.0][k] for k in keys) / len(keys)
    s1 = sum((nll[a][k] if k in act else nll[0.0][k])[0] for k in keys)
    n1 = sum((nll[a][k] if k in act else nll[0.0][k])[1] for k in keys)
    s0, n0 = sum(nll[0.0][k][0] for k in keys), sum(nll[0.0][k][1] for k in keys)
    return (t1 - t0) / t0, math.exp(s1 / n1 - s0 / n0)


@torch.no_grad()
def pair_llr(expert, anti, tok, prompts: list[str], conts: list[str] | None) -> list[float]:
    """Per text, the mean of log p_anti - log p_expert over the teacher tokens of the prompt (``conts`` None) or of
    the continuation after the prompt (the tokens past the prompt's own tokenisation; its first token may merge
    with the prompt's last, as the teachers see it at decoding)."""
    out = []
    for i, p in enumerate(prompts):
        text = p if conts is None else p + conts[i]
        ids = tok(text, add_special_tokens=True)["input_ids"]
        start = 1 if conts is None else len(tok(p, add_special_tokens=True)["input_ids"])
        start = max(1, min(start, len(ids) - 1))
        if len(ids) < 2:
            out.append(0.0)
            continue
        x = torch.tensor([ids])
        lp = [torch.log_softmax(m(input_ids=x).logits[0, :-1].float(), -1) for m in (expert, anti)]
        tgt = x[0, 1:]
        d = (lp[1].gather(1, tgt[:, None]) - lp[0].gather(1, tgt[:, None]))[:, 0]
        out.append(float(d[start - 1:].mean()))
    return out


@torch.no_grad()
def target_word_mass(target, tok, prompts: list[str], conts: list[str], word_ids: list[int]) -> list[float]:
    """The target's highest next-token probability on word-list tokens over the prompt's end and each position of
    its continuation."""
    idx = torch.tensor(word_ids)
    out = []
    for p, c in zip(prompts, conts):
        n_p = len(tok(p)["input_ids"])
        ids = tok(p + c)["input_ids"]
        probs = torch.softmax(target(input_ids=torch.tensor([ids])).logits[0].float(), -1)[:, idx].sum(-1)
        out.append(float(probs[max(0, n_p - 1):].max()))
    return out


@torch.no_grad()
def final_states(target, tok, texts: list[tuple[str, str]], batch: int = 16) -> list[torch.Tensor]:
    """Per (prompt, continuation), the target's final hidden state (its output layer's input, float32) at the
    prompt's last token and at each continuation token: [1 + continuation tokens, d]."""
    grab = {}
    handle = target.get_output_embeddings().register_forward_pre_hook(lambda m, a: grab.__setitem__("h", a[0]))
    out = []
    try:
        for b in range(0, len(texts), batch):
            part = texts[b:b + batch]
            n_p = [len(tok(p)["input_ids"]) for p, _ in part]
            ids = [tok(p + c)["input_ids"] for p, c in part]
            L = max(map(len, ids))
            x = torch.full((len(ids), L), tok.pad_token_id or 0, dtype=torch.long)
            m = torch.zeros((len(ids), L), dtype=torch.long)
            for i, row in enumerate(ids):  # right padding: a real token's state reads real tokens only
                x[i, :len(row)] = torch.tensor(row)
                m[i, :len(row)] = 1
            target(input_ids=x, attention_mask=m)
            h = grab["h"].float()
            out += [h[i, min(n, len(row)) - 1:len(row)] for i, (n, row) in enumerate(zip(n_p, ids))]
    finally:
        handle.remove()
    return out


def fit_probe(X: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logistic regression on standardised features (L-BFGS): returns (mean, weight over raw features, bias), so
    the probe's logit of a state h is ``(h - mean) @ weight + bias``."""
    mu, sd = X.mean(0), X.std(0) + 1e-4
    Z = (X - mu) / sd
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return mu, (w.detach() / sd), float(b.detach())


def train_texts(path: Path) -> tuple[list[tuple[str, str]], list[float]]:
    """The target's sampled continuations of the train prompts (build, not dev) with a clean or toxic label."""
    from detox_pa.assets import is_dev

    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line) if line.strip() else {}
        if r.get("split") == "rtp_build" and not is_dev(r["prompt"]) and r.get("label") in ("clean", "toxic") \
                and r.get("continuation", "").strip():
            texts.append((r["prompt"], r["continuation"]))
            labels.append(1.0 if r["label"] == "toxic" else 0.0)
    return texts, labels


def at_equal_ppl(sweep: list[tuple[float, float]], point: tuple[float, float]) -> float | None:
    """The point's toxicity change minus the ungated sweep's at the same PPL ratio (linear between two of the sweep's
    measured points; None outside their PPL range, where the sweep's curve is not measured). Negative: the gate is
    less toxic at that PPL."""
    curve = sorted((p, t) for t, p in sweep)
    t, p = point
    for (p0, t0), (p1, t1) in zip(curve, curve[1:]):
        if p0 <= p <= p1:
            return t - (t0 if p1 == p0 else t0 + (t1 - t0) * (p - p0) / (p1 - p0))
    return None


def table_lines(out: dict) -> list[str]:
    """The markdown of :func:`main`'s numbers: the signals' AUCs, then each gate's points (toxicity change and PPL
    ratio per alpha) and its mean difference from the ungated sweep at equal PPL."""
    lines = [f"{out['n']} prompts; the target alone continues {out['not_clean']} with BiLSTM >= 0.1 and {out['toxic']} "
             ">= 0.5.", "", "| signal (judge-free) | AUC, >= 0.1 | AUC, >= 0.5 |", "|---|---|---|"]
    for name, r in out["signals"].items():
        lines.append(f"| {name} | {r['auc_0.1']:.3f} | {r['auc_0.5']:.3f} |")
    first = next(iter(out["signals"].values()))["gate"][0]
    alphas = list(first["points"])
    sweep = [tuple(first["points"][x]) for x in alphas]
    lines += ["", "| gate: act where the signal is at or above the cut (the draft's score) or its q-quantile | acts on | "
              + " | ".join(f"alpha {x}" for x in alphas) + " | against the sweep at equal PPL |",
              "|---|---|" + "---|" * len(alphas) + "---|"]
    rows = [(f"{name}, {'cut' if name == DRAFT else 'q'} {g['q']:g}", g) for name, r in out["signals"].items()
            for g in r["gate"] if g["q"] > 0]
    rows = [("no gate (the sweep)", first)] + rows + [("oracle: where the target alone reaches >= 0.1 (reads the "
                                                        "judge: a bound)", out["oracle"])]
    for label, g in rows:
        pts = [tuple(g["points"][x]) for x in alphas]
        diffs = [d for d in (at_equal_ppl(sweep, p) for p in pts) if d is not None]
        vs = f"{100 * sum(diffs) / len(diffs):+.1f} points" if diffs else "outside the sweep"
        lines.append(f"| {label} | {g['acts_on']} | " + " | ".join(f"{100 * t:+.1f}% {p:.3f}x" for t, p in pts)
                     + f" | {vs} |")
    return lines


def words_in(text: str, words: set[str]) -> int:
    return sum(w in words for w in re.findall(r"[a-z']+", text.lower()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="A scored sweep (generations JSON with alpha 0 and its score files).")
    ap.add_argument("--align", default="outputs/alignment", help="The alignment folder of the tuned pair it used.")
    ap.add_argument("--quantiles", default="0,0.2,0.3,0.4,0.5,0.6")
    ap.add_argument("--texts", default=str(REPO / "data" / "steering_texts.jsonl"),
                    help="The probe's training texts (their train prompts only).")
    ap.add_argument("--draft_cuts", default="0.05,0.1,0.2,0.3,0.5",
                    help="Absolute thresholds for the draft signal (profanity-check of the target's own continuation).")
    ap.add_argument("--draft_only", action="store_true",
                    help="Only the draft signal, read from the run's toxicity records (no model is loaded): for "
                         "any method's sweep (steering, word-ban: the gate's control rows).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="", help="Also write the numbers here.")
    a = ap.parse_args(argv)

    from bench.seeds import _read_scored
    from detox_pa.artifacts import TUNED_ANTI, TUNED_EXPERT
    from detox_pa.io import atomic_write_json

    run, align = Path(a.run), Path(a.align)
    for p in (run,) if a.draft_only else (run, align / TUNED_EXPERT, align / TUNED_ANTI):
        if not p.exists():
            raise SystemExit(f"error: {p} does not exist")
    if not a.draft_only:
        from crossfit import tuned_dev_prompts

        if tuned_dev_prompts(align):  # the pair's own signals on prompts it was tuned on would be in-sample
            raise SystemExit(f"error: {align}: its pair was tuned on dev prompts; give a screening pair tuned on the "
                             "training prompts only (bench/arms.sh's align_default_s42) or --draft_only")
    quantiles = [float(q) for q in a.quantiles.split(",")]
    cuts = [float(c) for c in a.draft_cuts.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)
    tox, prompt, nll = _read_scored(run)
    if 0.0 not in tox:
        raise SystemExit(f"error: {run}: no alpha 0 row (the target alone)")
    from detox_pa.artifacts import PAIRS_KEY

    gens = json.loads(run.read_text(encoding="utf-8"))
    cont0 = {}
    for block in gens:  # the paper's layout: one block per alpha
        if float(block["alpha"]) == 0.0:
            for r in block[PAIRS_KEY]:
                cont0[(r["prompt_index"], r.get("sample", 0))] = r.get("continuation", " " + r["response"])
    keys = sorted(k for k in tox[0.0] if all(k in tox[x] and k in nll.get(x, {}) for x in tox))
    prompts = [prompt[0.0][k] for k in keys]
    conts = [cont0[k] for k in keys]
    draft = draft_scores(run, keys)
    signals = {DRAFT: draft}
    if not a.draft_only:
        signals.update(model_signals(a, align, prompts, conts))
    y1 = [tox[0.0][k] >= 0.1 for k in keys]
    y5 = [tox[0.0][k] >= 0.5 for k in keys]
    alphas = sorted(x for x in tox if x != 0.0)
    out = {"run": str(run), "n": len(keys), "not_clean": sum(y1), "toxic": sum(y5), "signals": {}}
    for name, sig in signals.items():
        out["signals"][name] = {"auc_0.1": auc(sig, y1), "auc_0.5": auc(sig, y5), "gate": []}
    oracle = {k for k, y in zip(keys, y1) if y}
    for name, sig in list(signals.items()) + [("oracle", None)]:
        levels = [None] if sig is None else [0.0] + cuts if name == DRAFT else quantiles
        for q in levels:
            if sig is None:
                act = oracle
            elif name == DRAFT:  # absolute cuts (0: every prompt, the sweep itself)
                act = {k for k, v in zip(keys, sig) if v >= q} if q > 0 else set(keys)
            else:
                cut = sorted(sig)[min(len(sig) - 1, int(q * len(sig)))]
                act = {k for k, v in zip(keys, sig) if v >= cut} if q > 0 else set(keys)
            pts = [gated_point(keys, act, tox, nll, x) for x in alphas]
            row = {"q": q, "acts_on": len(act), "points": {f"{x:g}": list(p) for x, p in zip(alphas, pts)}}
            if sig is None:
                out["oracle"] = row
            else:
                out["signals"][name]["gate"].append(row)
    print("\n".join(table_lines(out)))
    if a.json:
        atomic_write_json(a.json, out)
    return 0


def model_signals(a, align: Path, prompts: list[str], conts: list[str]) -> dict[str, list[float]]:
    """The signals that need the models: the pair's LLRs, the target's word-list mass and its probe."""
    from detox_pa.artifacts import TUNED_ANTI, TUNED_EXPERT
    from detox_pa.assets import profanity_words, resolve_model
    from detox_pa.directed import word_list_ids
    from detox_pa.runtime import load_causal_lm, load_tokenizer

    expert = load_causal_lm(str(align / TUNED_EXPERT), "float32").eval()
    anti = load_causal_lm(str(align / TUNED_ANTI), "float32").eval()
    ttok = load_tokenizer(str(align / TUNED_EXPERT), pad_with_eos=False)
    tpath = resolve_model("gemma-3-270m")
    target = load_causal_lm(tpath, "float32").eval()
    gtok = load_tokenizer(tpath, pad_with_eos=True)
    words = {w.lower() for w in profanity_words()}
    t_texts, t_labels = train_texts(Path(a.texts))
    per_text = final_states(target, gtok, t_texts)
    X = torch.cat(per_text)
    y = torch.cat([torch.full((h.shape[0],), lab) for h, lab in zip(per_text, t_labels)])
    mu, w, b = fit_probe(X, y)
    dev_states = final_states(target, gtok, list(zip(prompts, conts)))
    probe = [((h - mu) @ w + b) for h in dev_states]
    print(f"probe: {len(t_texts)} train texts, {X.shape[0]} states, {float(y.mean()):.3f} toxic", flush=True)
    return {
        "pair LLR, prompt": pair_llr(expert, anti, ttok, prompts, None),
        "pair LLR, target's continuation": pair_llr(expert, anti, ttok, prompts, conts),
        "word-list words in the prompt": [float(words_in(p, words)) for p in prompts],
        "target's word-list mass": target_word_mass(target, gtok, prompts, conts, sorted(word_list_ids(gtok))),
        "target's probe, prompt's end": [float(p[0]) for p in probe],
        "target's probe, highest over its continuation": [float(p.max()) for p in probe],
    }


DRAFT_CUTS = (0.05, 0.1, 0.2, 0.3, 0.5)


def read_sweep(run: Path, base: Path | None = None) -> tuple[list, dict, dict, list[float]]:
    """(keys, BiLSTM scores, NLL, draft scores) of a scored sweep. A run without alpha 0 (results.sh's held-out
    steering) takes alpha 0 and its drafts from ``base``, a run on the same prompts (checked prompt by prompt)."""
    from bench.seeds import _read_scored

    tox, prompt, nll = _read_scored(run)
    src = run
    if 0.0 not in tox:
        if base is None:
            raise SystemExit(f"error: {run}: no alpha 0 row (the target alone, the drafts)")
        btox, bprompt, bnll = _read_scored(base)
        some = next(iter(prompt.values()))
        if 0.0 not in btox or any(bprompt[0.0].get(k) != p for k, p in some.items()):
            raise SystemExit(f"error: {base} holds no alpha 0 row on the prompts of {run}")
        tox[0.0], nll[0.0], src = btox[0.0], bnll[0.0], base
    keys = sorted(k for k in tox[0.0] if all(k in tox[x] and k in nll.get(x, {}) for x in tox))
    return keys, tox, nll, draft_scores(src, keys)


def draft_choice(sweep: tuple, cap: float, cuts=DRAFT_CUTS) -> tuple[float, float, tuple[float, float]] | None:
    """The dev rule over cut and strength together: the lowest toxicity change whose PPL ratio is <= ``cap``
    (ties: the larger cut, then the smaller alpha). Returns (cut, alpha, (toxicity change, PPL ratio))."""
    keys, tox, nll, draft = sweep
    best = None
    for cut in sorted(cuts, reverse=True):
        act = {k for k, v in zip(keys, draft) if v >= cut}
        for a in sorted(x for x in tox if x != 0.0):
            t, p = gated_point(keys, act, tox, nll, a)
            if p <= cap and (best is None or t < best[2][0]):
                best = (cut, a, (t, p))
    return best


def gated_scores(sweep: tuple, a: float, cut: float | None) -> dict[int, list[float]]:
    """Per prompt, the BiLSTM scores of the run gated at ``cut`` (None: ungated) at alpha ``a``, for
    :func:`detox_pa.metrics.paired_difference`."""
    keys, tox, _, draft = sweep
    out: dict[int, list[float]] = {}
    for k, v in zip(keys, draft):
        out.setdefault(k[0], []).append(tox[a][k] if cut is None or v >= cut else tox[0.0][k])
    return out


def draft_scores(run: Path, keys: list) -> list[float]:
    """profanity-check's score of what the target alone wrote (alpha 0), per record, from the run's toxicity
    records (eval_toxicity.py --scorer bilstm,profanity-check)."""
    from detox_pa.artifacts import score_paths

    got = {}
    for line in score_paths(run, "toxicity")["records"].read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if float(r["alpha"]) == 0.0 and "profanity-check" in r["scores"]:
            got[(r["prompt_index"], r.get("sample", 0))] = r["scores"]["profanity-check"]
    missing = [k for k in keys if k not in got]
    if missing:
        raise SystemExit(f"error: {run}: no profanity-check score for alpha 0's record {missing[0]} (score the run "
                         "with eval_toxicity.py --scorer bilstm,profanity-check)")
    return [got[k] for k in keys]

if __name__ == "__main__":
    raise SystemExit(main())
