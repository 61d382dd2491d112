"""Turn the results study's score files (bench/results.sh) into docs/RESULTS.md and a trade-off plot.

    python bench/results_report.py --choose_alpha outputs/results/dev_diff.json --cap 1.25   # prints the alpha
    python bench/results_report.py --res_dir outputs/results --out docs/RESULTS.md

Rule for choosing alpha (applied to the dev prompts only, part of the build split): the alpha with the
lowest mean BiLSTM toxicity whose token-weighted PPL under the unsteered target is <= cap x that of alpha 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from detox_pa.artifacts import matrix_sidecar_path
from detox_pa.errors import InputError
from detox_pa.io import atomic_write_bytes, atomic_write_text
from detox_pa.metrics import mean_ci, paired_difference
from detox_pa.report import (PlotPoint, PlotSeries, choose_alpha, compare_score_dirs, fmt as f, load_scored_run,
                             pareto_plot, tox_of)

PRIMARY = "bilstm"
SECOND = "profanity-check"
PPL_CAP = 1.25   # the goal: >= 40% lower toxicity at <= 1.25x PPL
GOAL_DROP = 0.40
MILESTONE = (0.30, 1.3)  # first milestone: >= 30% at <= 1.3x
SECOND_JUDGE = "smollm2"  # the tag of the second PPL judge's score files


def load_set(gen: Path) -> dict:
    """One set of the study: its per-alpha toxicity and PPL rows (both judges), its BiLSTM records by prompt
    and its generation sidecar."""
    run = load_scored_run(gen, PRIMARY)
    return {"tox": run.tox, "ppl": run.ppl.get("", {}), "ppl2": run.ppl.get(SECOND_JUDGE, {}), "recs": run.records,
            "meta": run.meta}


def row_for(label, s, a, secs=None):
    t, p, p2 = s["tox"][a], s["ppl"].get(a, {}), s["ppl2"].get(a, {})
    m, lo, hi = mean_ci(s["recs"][a]) if a in s["recs"] else (tox_of(t, PRIMARY), float("nan"), float("nan"))
    secs = s["meta"].get("generation_seconds_per_alpha", {}).get(str(a)) if secs is None else secs
    acted = (s["meta"].get("acted_share_per_alpha") or {}).get(str(a))
    return {"label": label, "alpha": a, "tox": m, "lo": lo, "hi": hi, "tox2": tox_of(t, SECOND),
            "share": t.get("toxic_share"), "ppl": p.get("ppl_token_weighted"), "ppl_paper": p.get("PPL"),
            "ppl2": p2.get("ppl_token_weighted"), "d1": p.get("dist_1"), "d2": p.get("dist_2"), "d3": p.get("dist_3"),
            "emt": (t.get("by_scorer", {}).get(PRIMARY) or {}).get("expected_max_toxicity", t.get("expected_max_toxicity")),
            "tp": (t.get("by_scorer", {}).get(PRIMARY) or {}).get("toxicity_probability", t.get("toxicity_probability")),
            "secs": secs, "n": t.get("n"), "acted": acted, "recs": s["recs"].get(a, {})}


def _change(x, ref):
    d = 100 * (1 - x / ref)
    return f"{d:.1f}% lower" if d >= 0 else f"{-d:.1f}% higher"


HEAD = ("| setting | alpha | BiLSTM tox (95% CI) | vs alone | profanity-check | PPL Gemma (tw) | PPL SmolLM2 (tw) | "
        "dist-1/2/3 | acted | gen s |\n|---|---|---|---|---|---|---|---|---|---|")


def line(r, base):
    rel = f"{100 * (r['tox'] / base['tox'] - 1):+.0f}% tox, {r['ppl'] / base['ppl']:.2f}x PPL" if base and r is not base else "-"
    return (f"| {r['label']} | {r['alpha']:g} | {f(r['tox'])} ({f(r['lo'])}–{f(r['hi'])}) | {rel} | {f(r['tox2'])} | "
            f"{f(r['ppl'], 2)} | {f(r['ppl2'], 1)} | {f(r['d1'], 2)}/{f(r['d2'], 2)}/{f(r['d3'], 2)} | "
            f"{'-' if r['acted'] is None else format(r['acted'], '.0%')} | {f(r['secs'], 0)} |")


# the study's rows: (set name, label, what it changes)
ROWS = (("paper", "the paper's recipe", "contrastive A, LayerNorm, one teacher (the expert)"),
        ("fix_A", "+ transmission", "the logits-objective A instead of the contrastive one; LayerNorm, one teacher"),
        ("fix_scale", "+ scale", "the logits-objective A, no LayerNorm: the teacher term on the teacher's logit scale"),
        ("fix_dir", "+ direction", "expert minus anti-expert through A, every token eligible, no gate"),
        ("diff", "+ plausibility (the default)", "expert minus anti-expert through A, the target's top-5 only"),
        ("diff_gate", "+ risk gate 0.5", "the default, acting only where log p_anti(pick) - log p_expert(pick) >= 0.5"))
TRANSMISSION = (("align_contrastive", "contrastive (the paper)"), ("align_closed_form", "logits, closed form only"),
                ("main", "logits, closed form + KL refinement (the default)"))


def _transmission_lines(res: Path, align_dir: Path | None) -> list[str]:
    out = ["| objective | teacher | norm | top-1 | top-10 | logit corr. | KL (nats) | logit scale | retrieval@1 (rows) |",
           "|---|---|---|---|---|---|---|---|---|"]
    n = 0
    for name, label in TRANSMISSION:
        folder = align_dir if name == "main" else res / name
        p = matrix_sidecar_path(folder) if folder is not None else None
        if p is None or not p.exists():
            continue
        side = json.loads(p.read_text())
        m = side["metrics"]
        ret = (m.get("heldout_after") or {}).get("dot", {}).get("top1")
        for who, wl in (("teacher", "expert"), ("also_teacher", "anti-expert")):
            for norm in ("none", "layernorm"):
                t = (m.get("transmission") or {}).get(who, {}).get(norm)
                if t:
                    n += 1
                    out.append(f"| {label} | {wl} | {norm} | {f(t['top1'])} | {f(t['top10'])} | {f(t['pearson'])} | "
                               f"{f(t['kl'])} | {f(t['scale'], 2)} | {f(ret) if ret is not None else '-'} |")
    return out if n else []


def report(res: Path, out: Path, cap: float = PPL_CAP, align_dir: Path | None = None, repro_dir: Path | None = None) -> str:
    sets = {name: load_set(res / f"{name}.json") for name in SETS if (res / f"{name}.json").exists()}
    chosen = json.loads((res / "chosen.json").read_text())["alpha"] if (res / "chosen.json").exists() else {}
    sw = sets["diff_sweep"]
    base = row_for("target alone", sw, 0.0)
    sweep = [row_for("the default recipe", sw, a) for a in sorted(sw["tox"]) if a > 0]
    a_def = float(chosen.get("diff", 0.0))
    main = next((r for r in sweep if r["alpha"] == a_def), base)
    rows = []
    for name, label, _ in ROWS:
        if name == "diff":
            rows.append(dict(main, label=label, set=name))
        elif name in sets and chosen.get(name) is not None and float(chosen[name]) in sets[name]["tox"]:
            rows.append(dict(row_for(label, sets[name], float(chosen[name])), set=name))
    base_rows = []
    if "wordban" in sets:
        base_rows.append(row_for("word-ban decoding (baseline)", sets["wordban"], 1.0))
    if "steer" in sets:
        base_rows += [row_for("activation steering (baseline)", sets["steer"], a) for a in sorted(sets["steer"]["tox"])]
    drop = 1 - main["tox"] / base["tox"] if base["tox"] else float("nan")
    ratio = main["ppl"] / base["ppl"] if base["ppl"] else float("nan")
    # "at equal PPL": every baseline setting whose PPL is no higher than the default's (2% slack), and the
    # steering curve interpolated (linear in log PPL) at the default's PPL
    comparable = [r for r in base_rows if r["ppl"] is not None and r["ppl"] <= main["ppl"] * 1.02]
    best_base = min(comparable, key=lambda r: r["tox"]) if comparable else None
    steer_pts = sorted([(base["ppl"], base["tox"])] + [(r["ppl"], r["tox"]) for r in base_rows if "steering" in r["label"]])
    steer_at = None
    for (p0, t0), (p1, t1) in zip(steer_pts, steer_pts[1:]):
        if p0 <= main["ppl"] <= p1 and p1 > p0:
            w = (math.log(main["ppl"]) - math.log(p0)) / (math.log(p1) - math.log(p0))
            steer_at = t0 + w * (t1 - t0)
    beats = (best_base is None or main["tox"] < best_base["tox"]) and (steer_at is None or main["tox"] < steer_at)
    goal = drop >= GOAL_DROP and ratio <= cap and beats
    milestone = drop >= MILESTONE[0] and ratio <= MILESTONE[1]
    n_dev = next((sets[k]["tox"][0.0].get("n") for k in sets if k.startswith("dev_") and 0.0 in sets[k]["tox"]), None)
    verdict = ("The goal (>= 40% lower at <= 1.25x PPL, better than word-ban and steering at equal PPL) is **met**."
               if goal else "The goal (>= 40% lower at <= 1.25x PPL, better than word-ban and steering at equal PPL) is "
               "**not met**" + ("; the first milestone (>= 30% at <= 1.3x) is met." if milestone else
                                "; nor is the first milestone (>= 30% at <= 1.3x).") + " See below.")
    lines = ["# Results: directed projection-alignment fusion on the embedded default", "",
             "Produced by `bench/results.sh`; every number below is read from its score files by "
             "`bench/results_report.py`.", "",
             f"**Headline.** The default recipe (expert minus anti-expert through the logits-objective A, the target's "
             f"top-5 tokens) at alpha = {a_def:g}, chosen on {n_dev} dev prompts, takes mean BiLSTM toxicity on "
             f"{base['n']} held-out RealToxicityPrompts prompts from {f(base['tox'])} to {f(main['tox'])} "
             f"({_change(main['tox'], base['tox'])}; 95% CI of the mean {f(main['lo'])}–{f(main['hi'])}) at {ratio:.2f}x the "
             f"token-weighted PPL of the target alone. {verdict}", ""]
    pr = next((r for r in rows if r["set"] == "paper"), None)
    if pr:
        lines += [f"The paper's recipe on the same prompts, at its own dev-chosen alpha ({pr['alpha']:g}): "
                  f"{f(pr['tox'])} at {pr['ppl'] / base['ppl']:.2f}x PPL ({_change(pr['tox'], base['tox'])}).", ""]
    lines += ["## Set-up", "",
              "- Target: Gemma-3-270M base. Teachers: the first 3 layers of SmolLM2-135M-Instruct with its tied "
              "embeddings frozen, fine-tuned 3 epochs: the expert on `data/teacher_data.tsv` (clean continuations "
              "the target itself wrote for build-split prompts), the anti-expert on `data/teacher_data_toxic.tsv` "
              "(its toxic ones).",
              "- A (576 x 640) over the 46k shared tokens: `logits` objective = least squares so that the target's output "
              "layer reads `h_teacher @ A` as the teacher's output layer reads `h_teacher`, refined by KL on teacher "
              "states of teacher-data text (both teachers); the paper's `contrastive` objective for its row.",
              "- The default step: the target's next-token logits `z` become `z + alpha * W_target((h_expert - h_anti) A)` "
              "on its top-5 tokens (the others cannot be chosen); alpha 0 is the target alone.",
              f"- Alpha of every row is chosen on the {n_dev} dev prompts (`rtp_dev.jsonl`: build-split prompts whose samples "
              f"were never used to train anything) by one rule: the lowest mean BiLSTM toxicity with token-weighted PPL "
              f"<= {cap:g}x alpha 0's. Held-out prompts (`rtp_eval.jsonl`) are used for nothing but these tables.",
              "- Greedy, 10 new tokens (the paper's setting) unless stated; sampled protocol: 5 samples per prompt, "
              "top-p 0.9, 20 new tokens.",
              "- Toxicity: BiLSTM port of toxic-comment-classifier (`toxic` label; primary) and profanity-check (second); "
              "lower is better. 95% CI: percentile bootstrap over prompts (2,000 resamples).",
              "- PPL: token-weighted, continuation given prompt, under the unsteered target (Gemma) and SmolLM2-135M as a "
              "second judge. dist-n: higher = more diverse. 'acted': share of decoding steps the fusion changed (the gate).",
              "- Generation time: wall seconds per alpha on 2 CPU cores, two jobs side by side (indicative).", ""]
    tl = _transmission_lines(res, align_dir)
    if tl:
        lines += ["## Does A carry the teacher's prediction? (transmission, held-out teacher-data text)", "",
                  "The teacher's own next-token logits against the logits the fused term gets from the target's output "
                  "layer, over the shared tokens, at every token of held-out texts (1, 1, 1, 0, 1 is perfect). "
                  "retrieval@1 is the old metric on embedding rows, shown for contrast.", ""] + tl + [""]
    mech = json.loads((res / "mechanism.json").read_text()) if (res / "mechanism.json").exists() else None
    if mech:
        lines += [f"## Does the change have a direction? ({mech['states']} greedy states of the target alone, first "
                  f"{mech['prompts']} held-out prompts x {mech['steps']} steps; `bench/mechanism.py`)", "",
                  f"A state is *toxic* when {mech['toxic_rule']}. A directed method lowers p(pick) more on toxic "
                  "states than on the others; 'flip' = the argmax changes; 'scale' = std of the method's logit change "
                  "over the target's top-10 / std of the target's logits there. The default recipe renormalises over the "
                  "target's top-5, which raises every eligible token's probability, so for it the flip shares are the "
                  "comparable figure. Toxic picks are rare in greedy decoding: read their row with its count.", "",
                  "| method | alpha | states | p(pick): target -> method | flip | scale |", "|---|---|---|---|---|---|"]
        for m, label in (("paper", "the paper's recipe"), ("default", "the default recipe")):
            for kind in ("toxic", "other"):
                r = (mech.get(m) or {}).get(kind)
                if r:
                    lines.append(f"| {label}, {kind} picks | {mech['alpha'][m]} | {r['states']} | {f(r['p_pick_target'])} -> "
                                 f"{f(r['p_pick_method'])} | {r['flip_share']:.0%} | {f(r['logit_change_scale'], 2)} |")
        lines.append("")
    lines += ["## Held-out: the paper's recipe, each fix, and the baselines (greedy, 10 tokens)", "",
              "Each fix is added on top of the row above it; each row at its own dev-chosen alpha.", "", HEAD,
              line(base, None)] + [line(r, base) for r in rows + base_rows]
    lines += [""] + [f"- {label}: {what}." for _, label, what in ROWS]
    lines += ["", "## Held-out: the default recipe over the whole sweep", "", HEAD, line(base, None)]
    lines += [line(r, base) for r in sweep]
    # paired differences
    pairs = [("the default vs the target alone", main, base)]
    pairs += [(f"the default vs {r['label']} alpha {r['alpha']:g}", main, r) for r in rows + base_rows if r is not main and r.get("set") != "diff"]
    pl = [(lab, *paired_difference(a["recs"], b["recs"])) for lab, a, b in pairs if a["recs"] and b["recs"]]
    if pl:
        lines += ["", "## Paired differences in mean toxicity (held-out, per prompt; 95% bootstrap CI)", "",
                  "| comparison | difference | 95% CI | prompts |", "|---|---|---|---|"]
        lines += [f"| {lab} | {d:+.3f} | {lo:+.3f} to {hi:+.3f} | {n} |" for lab, d, lo, hi, n in pl]
    lines += ["", "## Against the baselines at equal PPL", ""]
    if best_base is not None:
        lines.append(f"- Best baseline setting with PPL no higher than the default's ({f(main['ppl'], 2)}): "
                     f"{best_base['label']} alpha {best_base['alpha']:g}, toxicity {f(best_base['tox'])} "
                     f"(PPL {f(best_base['ppl'], 2)}) against the default's {f(main['tox'])}.")
    else:
        lines.append(f"- No baseline setting has a PPL as low as the default's ({f(main['ppl'], 2)}).")
    if steer_at is not None:
        lines.append(f"- The steering curve, interpolated (linear in log PPL) at the default's PPL: toxicity "
                     f"{f(steer_at)} against the default's {f(main['tox'])}.")
    lines.append("- Both offline scorers are keyword-driven, which flatters word-ban (it removes the keywords) and, "
                 "to a lesser degree, steering.")
    # dev choice
    devs = [(n, lab) for n, lab, _ in ROWS] + [("steer", "activation steering")]
    dl = []
    for n, lab in devs:
        s = sets.get(f"dev_{n}")
        if not s or 0.0 not in s["ppl"]:
            continue
        p0 = s["ppl"][0.0]["ppl_token_weighted"]
        cells = " ; ".join(f"{a:g}: {f(tox_of(s['tox'][a], PRIMARY))} / {s['ppl'][a]['ppl_token_weighted'] / p0:.2f}x"
                           for a in sorted(s["tox"]))
        dl.append(f"| {lab} | {chosen.get(n, '-')} | {cells} |")
    if dl:
        lines += ["", "## Choosing alpha on the dev prompts (toxicity / PPL ratio to alpha 0, per alpha)", "",
                  "| row | chosen | alpha: tox / PPL ratio |", "|---|---|---|"] + dl
    samp = []
    if "sampled" in sets:
        samp += [row_for("the default recipe" if a else "target alone", sets["sampled"], a) for a in sorted(sets["sampled"]["tox"])]
    if "sampled_wordban" in sets:
        samp.append(row_for("word-ban decoding", sets["sampled_wordban"], 1.0))
    if "sampled_steer" in sets:
        samp += [row_for("activation steering", sets["sampled_steer"], a) for a in sorted(sets["sampled_steer"]["tox"])]
    if samp:
        lines += ["", f"## Sampled protocol (held-out, first {samp[0]['n']} prompts; 5 samples, p=0.9, 20 tokens)", "",
                  "| setting | alpha | EMT (BiLSTM) | tox. probability (>= 0.5) | mean tox (95% CI) | PPL Gemma (tw) | dist-1/2/3 |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['alpha']:g} | {f(r['emt'])} | {f(r['tp'])} | {f(r['tox'])} ({f(r['lo'])}–{f(r['hi'])}) | "
                  f"{f(r['ppl'], 2)} | {f(r['d1'], 2)}/{f(r['d2'], 2)}/{f(r['d3'], 2)} |" for r in samp]
    missing = [n for n in SETS if n not in sets]
    if missing:
        lines += ["", f"Not run in this results directory: {', '.join(missing)}."]
    lines += ["", "## Reproducibility", ""]
    if repro_dir is not None:
        n, diffs = compare(res, repro_dir)
        lines.append(f"A second run of `bench/results.sh` in `{repro_dir}` was compared value by value with `{res}`: "
                     f"{n:,} values (every score, count and hash; timings and paths excluded), "
                     + ("all identical." if not diffs else f"{len(diffs)} differ, e.g. {diffs[0]}."))
    else:
        lines.append("Not checked for this directory: run `RES_DIR=<new dir> bench/results.sh`, then "
                     "`bench/results_report.py --res_dir <this dir> --compare <new dir>`.")
    def pt(r):
        return PlotPoint(f"{r['alpha']:g}", r["ppl"], r["tox"], r["lo"], r["hi"])

    series = [PlotSeries("the default recipe (alpha)", "method", [pt(r) for r in sweep])]
    series += [PlotSeries(f"{r['label']} ({r['alpha']:g})", "method", [pt(r)]) for r in rows if r["set"] != "diff"]
    steer = [r for r in base_rows if "steering" in r["label"]]
    if steer:
        series.append(PlotSeries("activation steering (s)", "baseline", [pt(r) for r in steer]))
    series += [PlotSeries(r["label"], "baseline", [pt(r)])
               for r in base_rows if "steering" not in r["label"]]
    png_bytes, _ = pareto_plot(series, base["ppl"], base["tox"], cap,
                               f"Toxicity vs fluency, {base['n']} held-out RTP prompts (greedy, 10 tokens)",
                               "token-weighted PPL under the unsteered target, log scale (lower is better)",
                               "mean BiLSTM toxicity, 95% CI (lower is better)")
    png = out.with_name("results_tradeoff.png")
    atomic_write_bytes(png, png_bytes)
    lines += ["", f"![trade-off]({png.name})", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text


SETS = tuple(f"dev_{n}" for n, _, _ in ROWS) + ("dev_steer", "diff_sweep") + tuple(n for n, _, _ in ROWS if n != "diff") + (
    "wordban", "steer", "sampled", "sampled_wordban", "sampled_steer")


def compare(res_a: Path, res_b: Path) -> tuple[int, list[str]]:
    """Every score of the study's sets in two results directories, value by value (timings and paths excluded)."""
    return compare_score_dirs(res_a, res_b, SETS, ppl_tags=("", SECOND_JUDGE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default="", metavar="OTHER_RES_DIR",
                    help="Compare every score in --res_dir with a second run's directory; exit 1 on any difference.")
    ap.add_argument("--repro_dir", default="", help="A second run's directory: the report states how it compares.")
    ap.add_argument("--choose_alpha", default="")
    ap.add_argument("--res_dir", default="outputs/results")
    ap.add_argument("--cap", type=float, default=PPL_CAP, help="PPL cap of the alpha rule (x alpha 0's PPL).")
    ap.add_argument("--align_dir", default="outputs/alignment", help="The default run's alignment folder (its sidecar).")
    ap.add_argument("--out", default="docs/RESULTS.md")
    a = ap.parse_args()
    if a.choose_alpha:
        print(f"{choose_alpha(Path(a.choose_alpha), a.cap, PRIMARY):g}")
        return
    if a.compare:
        n, diffs = compare(Path(a.res_dir), Path(a.compare))
        for d in diffs[:50]:
            print(f"differs: {d}")
        print(f"compared {n} values (every score, count and hash; timings and paths excluded) between {a.res_dir} "
              f"and {a.compare}: {len(diffs)} differ")
        sys.exit(1 if diffs or n == 0 else 0)
    print(report(Path(a.res_dir), Path(a.out), a.cap, Path(a.align_dir) if a.align_dir else None,
                 Path(a.repro_dir) if a.repro_dir else None))


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        sys.exit(f"error: {e}")
