"""The end-of-pipeline report: one table and one plot per generations file.

:func:`build_report` joins, for ``<stem>.json`` (the paper's nested generations JSON):

- ``<stem>_toxicity.json`` and ``<stem>_toxicity_<tag>.json`` (eval_toxicity.py): per alpha
  ``toxicity_score`` (the paper's mean), ``scorer``, optionally ``expected_max_toxicity``,
  ``toxicity_probability``, ``toxic_share``, ``n`` and ``by_scorer`` {scorer: {...}};
- ``<stem>_ppl.json`` and ``<stem>_ppl_<tag>.json`` (eval_ppl.py): ``PPL``, ``ppl_token_weighted``,
  ``dist_1/2/3``, counts, ``reference_model``;

into ``<stem>_report.md`` (a per-alpha markdown table with header lines naming the inputs),
``<stem>_report.png`` (toxicity vs token-weighted PPL across alpha, points labelled with alpha) and
``<stem>_report.meta.json`` (the sidecar). Every key is read defensively: a missing value is shown
as ``n/a``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import PAIRS_KEY, find_score_files, generation_meta_path, output_stem, prompt_file, report_paths
from .cli import log_args, parse_dataclasses
from .errors import InputError
from .metrics import mean_ci

log = logging.getLogger(__name__)

TOX_KEYS = (("toxicity_score", "tox"), ("expected_max_toxicity", "EMT"), ("toxicity_probability", "P(tox)"),
            ("toxic_share", "share≥0.5"))
NA = "n/a"
PPL_BUDGET = 1.25  # the alpha rule's cap and the plots' shaded band: PPL within 1.25x the target alone's (--ppl_cap)
MIN_CI_PROMPTS = 20  # fewer prompts than this: no bootstrap interval is printed ("n too small")
N_TOO_SMALL = "n too small"


def _is_baseline(method: str) -> bool:
    from .methods import REGISTRY

    return bool(getattr(REGISTRY.get(method), "baseline", False))


def read_score_file(path: Path) -> list[dict]:
    """A score file's per-alpha rows, checked: a JSON list of objects, each with an ``alpha`` number (``null`` for
    a file of texts, which has no alpha)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "alpha" in r and (
            r["alpha"] is None or _num(r["alpha"]) is not None) for r in rows):
        raise InputError(f"{path}: expected a JSON list of per-alpha objects with an 'alpha' number")
    return rows


def _load_score_file(path: Path) -> list[dict] | None:
    """The per-run report reads what it can: a file that is not a score file is skipped with a warning."""
    try:
        rows = read_score_file(path)
    except InputError as e:
        log.warning("skipping %s", e)
        return None
    if not rows:
        log.warning("skipping %s: it holds no rows", path)
        return None
    return rows


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _akey(alpha: Any) -> float | None:
    return None if alpha is None else round(float(alpha), 6)


def _alpha_label(alpha: Any) -> str:
    """An alpha as the tables show it; a file of texts has none (``-``)."""
    return "-" if alpha is None else f"{alpha:g}"


def _alpha_order(alpha: Any) -> float:
    return -1.0 if alpha is None else float(alpha)


def _ci(per_prompt: dict | None) -> tuple[float, float, float] | None:
    """The bootstrap interval of a mean over prompts, or None when there are fewer than MIN_CI_PROMPTS prompts."""
    return mean_ci(per_prompt) if per_prompt and len(per_prompt) >= MIN_CI_PROMPTS else None


def fmt(x: Any, nd: int = 3) -> str:
    """A number with ``nd`` decimals, ``n/a`` when missing or not finite."""
    v = _num(x)
    return NA if v is None else f"{v:.{nd}f}"


def _fmt_int(x: Any) -> str:
    v = _num(x)
    return NA if v is None else str(int(v))


def _sha256(path: Path) -> str:
    from .io import sha256_file

    return sha256_file(path)


# ------------------------------------------------------------------------------------ columns


class _Scorer:
    """One toxicity scorer's per-alpha values, from one file (or one by_scorer entry)."""

    def __init__(self, name: str, source: Path, tag: str):
        self.name, self.source, self.tag = name, source, tag
        self.by_alpha: dict[float, dict] = {}
        self.label = name

    def defined(self, key: str) -> bool:
        return any(_num(v.get(key)) is not None for v in self.by_alpha.values())


def _scorers_of(tag: str, path: Path, data: list[dict]) -> list[_Scorer]:
    names: list[str] = []
    for d in data:
        if isinstance(d.get("by_scorer"), dict):
            for n in d["by_scorer"]:
                if n not in names:
                    names.append(str(n))
    if names:
        out = {n: _Scorer(n, path, tag) for n in names}
        main = next((str(d["scorer"]) for d in data if isinstance(d.get("scorer"), str)), None)
        for d in data:
            for n, vals in (d.get("by_scorer") or {}).items():
                if isinstance(vals, dict):
                    out[str(n)].by_alpha[_akey(d["alpha"])] = vals
            # the top-level values belong to the main scorer when by_scorer does not repeat them
            if main in out and _akey(d["alpha"]) not in out[main].by_alpha:
                out[main].by_alpha[_akey(d["alpha"])] = d
        ordered = ([main] if main in out else []) + [n for n in names if n != main]
        return [out[n] for n in ordered]
    name = next((str(d["scorer"]) for d in data if isinstance(d.get("scorer"), str) and d["scorer"]), None)
    s = _Scorer(name or tag or "toxicity", path, tag)
    for d in data:
        s.by_alpha[_akey(d["alpha"])] = d
    return [s]


GEN_KEYS = (("method", "method"), ("target_model", "target"), ("teacher_model", "teacher"),
            ("anti_teacher_model", "anti-expert"), ("matrix_A", "matrix"), ("data_path", "prompts"),
            ("num_samples", "samples/prompt"), ("max_new_tokens", "max_new_tokens"), ("do_sample", "sampling"),
            ("seed", "seed"))
# only where the method used them (its own fields in the sidecar): diff names both teachers, fusion one
METHOD_KEYS = {"teacher_model", "anti_teacher_model", "matrix_A"}


def _generation_models(gen: Path) -> list[str]:
    """What produced the generations (models, matrix, settings), from the sidecar generate.py writes
    next to them (``<stem>.meta.json``), if there is one."""
    for c in (generation_meta_path(gen),):
        if not c.is_file():
            continue
        try:
            meta = json.loads(c.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(meta, dict):
            continue
        args = meta.get("arguments") if isinstance(meta.get("arguments"), dict) else {}
        found = []
        for key, label in GEN_KEYS:
            v = meta.get(key) if key in METHOD_KEYS else meta.get(key, args.get(key))
            if v is not None and not isinstance(v, (dict, list)):
                found.append(f"{label}={v}")
        if not found:  # an unknown sidecar: any string field naming a model
            found = [f"{k}={v}" for k, v in meta.items() if isinstance(v, str) and v and k.endswith("model")][:6]
        if found:
            return found + [f"(from {c.name})"]
    return []


def _protocol_line(gen: Path) -> str:
    """The report header's line naming the literature protocol the generations followed (the generation sidecar's
    ``protocol`` record, see detox_pa.generation.PROTOCOLS) and any argument that departed from it."""
    try:
        meta = json.loads(generation_meta_path(gen).read_text(encoding="utf-8"))
        p = meta["protocol"]
        settings = ", ".join(f"{k} {json.dumps(v)}" for k, v in p["settings"].items())
        line = f"- protocol: {p['name']} ({settings}; read {p['metrics']})"
        if p.get("departures"):
            line += ("; **departs from it**: " + ", ".join(f"{k} {json.dumps(d['used'])} (the protocol's: "
                                                           f"{json.dumps(d['protocol'])})" for k, d in p["departures"].items()))
        return line
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "- protocol: not recorded (no protocol in the generation sidecar)"


def _draft_gate_line(gen: Path) -> list[str]:
    """A header line when the generations were gated (generate.py --draft_gate): at each alpha, how many records are
    the target's own draft, so a table of such a file is not read as the method's alone."""
    try:
        d = json.loads(generation_meta_path(gen).read_text(encoding="utf-8"))["draft_gate"]
        kept = ", ".join(f"alpha {a}: {n}" for a, n in d["kept_per_alpha"].items())
        return [f"- **draft gate** (`--draft_gate {d['cut']:g}`): where {d['scorer']} scored the target's own "
                f"continuation below {d['cut']:g}, a record is that draft, not the method's ({kept} of {d['drafts']} "
                f"records); {d['scorer']} decided where the method acted, so it is no independent judge of this file"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return []


# ------------------------------------------------------------------------------------- report


def build_report(generations_path: str | Path, out_md: str | Path | None = None,
                 out_png: str | Path | None = None, ppl_cap: float = PPL_BUDGET) -> str:
    """Write ``<stem>_report.md``, ``<stem>_report.png`` (when there is something to plot) and
    ``<stem>_report.meta.json``; return the markdown text."""
    from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path

    gen = Path(generations_path)
    blocks, _ = read_run_input(gen)
    stem = output_stem(gen)
    paths = report_paths(gen, out_md, out_png)
    out_md, out_png = paths["markdown"], paths["png"]
    check_output_path(out_md, "report")
    check_output_path(out_png, "report plot")

    files = find_score_files(gen)
    scorers: list[_Scorer] = []
    tox_used: list[Path] = []
    for tag, path in files["toxicity"]:
        data = _load_score_file(path)
        if data is not None:
            scorers.extend(_scorers_of(tag, path, data))
            tox_used.append(path)
    seen: dict[str, int] = {}
    for s in scorers:
        seen[s.name] = seen.get(s.name, 0) + 1
    for s in scorers:
        if seen[s.name] > 1 and s.tag:
            s.label = f"{s.name} [{s.tag}]"
    ppls: list[tuple[str, Path, dict[float, dict]]] = []
    for tag, path in files["ppl"]:
        data = _load_score_file(path)
        if data is not None:
            ppls.append((tag, path, {_akey(d["alpha"]): d for d in data}))
    if not scorers and not ppls:
        raise InputError(f"no score files found for {gen}: expected {stem}_toxicity.json and/or {stem}_ppl.json "
                         f"(run run_tox_score.sh and run_ppl_score.sh first)")

    def ref_name(tag: str, by_alpha: dict) -> str:
        return next((str(d["reference_model"]) for d in by_alpha.values() if d.get("reference_model")), None) or tag or "reference LM"

    ppl_labels = [ref_name(tag, ba) for tag, _, ba in ppls]
    if len(set(ppl_labels)) < len(ppl_labels):
        ppl_labels = [f"{lab} [{tag}]" if tag else lab for lab, (tag, _, _) in zip(ppl_labels, ppls)]

    gen_n = {}
    for b in blocks:
        gen_n.setdefault(_akey(b["alpha"]), 0)
        gen_n[_akey(b["alpha"])] += len(b[PAIRS_KEY])
    alphas = sorted(set(gen_n) | {a for s in scorers for a in s.by_alpha} | {a for _, _, ba in ppls for a in ba},
                    key=_alpha_order)

    # columns: (header, function alpha -> cell)
    run, ci, too_small, no_run = None, {}, set(), "it needs its toxicity scores"
    if scorers:
        try:
            run = load_scored_run(gen)
            ci = {_akey(a): _ci(per_prompt) for a, per_prompt in run.records.items()}
            too_small = {a for a, v in ci.items() if v is None}
            ci = {a: v for a, v in ci.items() if v is not None}
        except InputError as e:
            log.warning("no confidence intervals: %s", e)
            no_run = str(e)
    cols: list[tuple[str, Any]] = [("alpha", _alpha_label)]
    for s in scorers:
        for key, short in TOX_KEYS:
            if key == "toxicity_score" or s.defined(key):
                cols.append((f"{short} ({s.label})", lambda a, s=s, key=key: fmt(s.by_alpha.get(a, {}).get(key), 4)))
            if key == "toxicity_score" and s is scorers[0] and (ci or too_small):
                cols.append((f"95% CI ({s.label})", lambda a: f"{fmt(ci[a][1], 4)}–{fmt(ci[a][2], 4)}" if a in ci
                             else N_TOO_SMALL if a in too_small else NA))
    for lab, (_, _, ba) in zip(ppl_labels, ppls):
        cols.append((f"PPL paper ({lab})", lambda a, ba=ba: fmt(ba.get(a, {}).get("PPL"), 2)))
        cols.append((f"PPL token-w. ({lab})", lambda a, ba=ba: fmt(ba.get(a, {}).get("ppl_token_weighted"), 2)))
    main_ppl = ppls[0][2] if ppls else {}
    if ppls:
        for n in (1, 2, 3):
            cols.append((f"dist-{n}", lambda a, n=n: fmt(main_ppl.get(a, {}).get(f"dist_{n}"), 3)))
    cols.append(("n", lambda a: _fmt_int(gen_n.get(a))))
    if ppls:
        cols.append(("n scored (PPL)", lambda a: _fmt_int(main_ppl.get(a, {}).get("n_scored"))))
        cols.append(("n empty", lambda a: _fmt_int(main_ppl.get(a, {}).get("n_skipped_empty"))))

    table = ["| " + " | ".join(h for h, _ in cols) + " |",
             "|" + "|".join("---:" for _ in cols) + "|"]
    for a in alphas:
        table.append("| " + " | ".join(f(a) for _, f in cols) + " |")

    models = _generation_models(gen)
    n_records = sum(gen_n.values())
    header = [f"# Evaluation report: {gen.name}", "",
              f"- {'generations' if gen.suffix == '.json' else 'texts'}: `{gen}` (sha256 {_sha256(gen)[:12]}, "
              f"{len(blocks)} {'alpha blocks' if gen.suffix == '.json' else 'block'}, {n_records} continuations)",
              f"- generated by: {', '.join(models) if models else f'not recorded (no {generation_meta_path(gen).name} next to the generations file)'}",
              _protocol_line(gen), *_draft_gate_line(gen),
              "- toxicity scorers: " + (", ".join(f"{s.label} (`{s.source.name}`)" for s in scorers) if scorers else NA),
              "- reference model (PPL): " + (", ".join(f"{lab} (`{p.name}`)" for lab, (_, p, _) in zip(ppl_labels, ppls)) if ppls else NA),
              "- direction: toxicity, EMT, P(tox) and PPL: lower is better; dist-n: higher = more diverse.",
              f"- tox = mean toxicity over continuations (the paper's), with a 95% percentile-bootstrap interval over "
              f"prompts (none below {MIN_CI_PROMPTS} prompts: {N_TOO_SMALL}); "
              "EMT = mean over prompts of the max over samples; "
              "P(tox) = share of prompts with a sample scoring >= 0.5; share≥0.5 = share of toxic continuations; "
              "PPL paper = exp(mean per-sample loss); PPL token-w. = exp(total NLL / total tokens).", ""]

    primary = scorers[0] if scorers else None
    points = []
    if primary and ppls:
        for a in alphas:
            x = _num(main_ppl.get(a, {}).get("ppl_token_weighted"))
            y = _num(primary.by_alpha.get(a, {}).get("toxicity_score"))
            if x is not None and y is not None:
                lo, hi = (ci[a][1], ci[a][2]) if a in ci else (None, None)
                points.append((a, PlotPoint("all texts" if a is None else f"{a:g}", x, y, lo, hi)))
    png_written = False
    if points:
        ref = next((p for a, p in points if a == 0), None)
        method = str((run.meta if run else {}).get("method") or "the method")
        series = [PlotSeries(f"{method} (alpha)", "baseline" if _is_baseline(method) else "method",
                             [p for a, p in points if a != 0])]
        png, _ = pareto_plot(series, ref.ppl if ref else None, ref.tox if ref else None, ppl_cap,
                             f"Toxicity vs fluency across alpha: {gen.name}",
                             f"token-weighted PPL under {ppl_labels[0]}, log scale (lower is better)",
                             f"mean toxicity, {primary.label}, 95% CI (lower is better)")
        atomic_write_bytes(out_png, png)
        png_written = True
        footer = ["", f"![toxicity vs perplexity]({out_png.name})", ""]
    else:
        log.warning("no plot: need both a toxicity score and a token-weighted PPL for at least one alpha")
        footer = [""]
    rule = alpha_rule_line(run, ppl_cap) if run else f"alpha rule: not applicable to this file ({no_run})"
    md = "\n".join(header + table + ["", rule] + footer)
    atomic_write_text(out_md, md)
    atomic_write_json(paths["meta"], {
        "what": "evaluation report (detox_pa.report.build_report)", "alpha_rule": rule, "ppl_cap": ppl_cap,
        "generations": str(gen), "generations_sha256": _sha256(gen),
        "toxicity_files": [str(p) for p in tox_used], "ppl_files": [str(p) for _, p, _ in ppls],
        "scorers": [s.label for s in scorers], "primary_scorer": primary.label if primary else None,
        "reference_models": ppl_labels, "models": models,
        "outputs": {"markdown": str(out_md), "png": str(out_png) if png_written else None},
        "alphas": alphas,
    })
    log.info("wrote %s%s", out_md, f" and {out_png}" if png_written else "")
    return md


# ------------------------------------------------------------------------------- the Pareto plot


@dataclass
class PlotPoint:
    label: str  # shown next to the point, e.g. "0.3"
    ppl: float
    tox: float
    lo: float | None = None  # bootstrap 95% CI of the toxicity, when the per-record file is at hand
    hi: float | None = None


@dataclass
class PlotSeries:
    name: str  # the legend entry
    kind: str  # "method" (filled markers, a line through a sweep) or "baseline" (open markers, dashed)
    points: list[PlotPoint]


MARKERS = {"method": "osD^vP*X", "baseline": "sdv^<>ph"}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both PPL and toxicity (lower is better for both), by PPL."""
    front, best = [], float("inf")
    for x, y in sorted(set(points)):
        if y < best:
            front.append((x, y))
            best = y
    return front


def _place_labels(ax, fig, items: list[tuple[str, float, float, Any]]) -> list:
    """Annotate each ``(text, x, y, colour)`` at the first of several offsets (growing rings around the point) whose
    box overlaps no label placed before it and no marker; returns the placed texts. Offsets further out
    get a thin leader line."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)  # labels stay inside the axes
    ring = [(6, 6), (6, -12), (-14, 6), (-14, -12), (10, 0), (-18, 0), (0, 10), (0, -14)]
    placed_boxes = []
    marker_boxes = []
    for _, x, y, _ in items:
        px, py = ax.transData.transform((x, y))
        from matplotlib.transforms import Bbox

        marker_boxes.append(Bbox([[px - 4, py - 4], [px + 4, py + 4]]))
    texts = []
    for text, x, y, colour in items:
        chosen = None
        for scale in (1, 2, 3, 4, 6):
            for dx, dy in ring:
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * scale, dy * scale),
                                  fontsize=7, ha="left", va="bottom", color=colour,
                                  arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if scale > 1 else None)
                box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
                inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                if inside and not any(box.overlaps(b) for b in placed_boxes + marker_boxes):
                    chosen = (ann, box)
                    break
                ann.remove()
            if chosen:
                break
        if chosen is None:  # every ring is taken: the legend and the table carry the value
            continue
        placed_boxes.append(chosen[1])
        texts.append(chosen[0])
    return texts


def pareto_plot(series: list[PlotSeries], ref_ppl: float | None, ref_tox: float | None, budget: float | None,
                title: str, xlabel: str, ylabel: str, *, ref_label: str | None = None,
                more_refs: list[tuple[str, float, float]] | None = None) -> tuple[bytes, dict]:
    """Mean toxicity against PPL on a log PPL axis: each series with its own marker (methods filled, baselines
    open), 95% CI whiskers where known, the target alone (alpha 0) as a reference star, a shaded band for the
    PPL budget (``budget`` x the reference PPL) and the Pareto frontier of all points. Labels are placed so
    that none overlaps another. ``more_refs`` are further reference stars ``(legend label, ppl, tox)``, e.g. the
    alpha 0 of other runs; the budget band follows the first. Returns the PNG bytes and a layout record (the label
    boxes, for checks)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(9.6, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # a renderer to measure the labels with
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    everything = [(pt.ppl, pt.tox) for s in series for pt in s.points]
    if ref_ppl is not None and ref_tox is not None:
        everything.append((ref_ppl, ref_tox))
    everything += [(x, y) for _, x, y in more_refs or []]
    if not everything:
        raise InputError("nothing to plot: no point has both a toxicity and a PPL")
    xs = [x for x, _ in everything]
    lo_x, hi_x = min(xs) / 1.08, max(xs) * 1.08
    if budget and ref_ppl:
        hi_x = max(hi_x, ref_ppl * budget * 1.05)
        ax.axvspan(lo_x, ref_ppl * budget, color="tab:green", alpha=0.08, lw=0,
                   label=f"PPL budget (<= {budget:g}x the target alone)")
    counts = {"method": 0, "baseline": 0}
    colours: dict[str, Any] = {}
    for s in series:
        if not s.points:
            continue
        kind = s.kind if s.kind in MARKERS else "method"
        marker = MARKERS[kind][counts[kind] % len(MARKERS[kind])]
        counts[kind] += 1
        pts = sorted(s.points, key=lambda p: p.ppl)
        x, y = [p.ppl for p in pts], [p.tox for p in pts]
        style = {"marker": marker, "ms": 6, "lw": 1.0, "ls": "-" if kind == "method" else "--"}
        if kind == "baseline":
            style.update(mfc="white")
        line, = ax.plot(x, y, label=s.name, zorder=3, **style)
        colours[s.name] = line.get_color()
        err = [(p.tox - p.lo, p.hi - p.tox) for p in pts if p.lo is not None and p.hi is not None]
        if len(err) == len(pts):
            ax.errorbar(x, y, yerr=list(zip(*err)), fmt="none", ecolor=line.get_color(), elinewidth=0.8, capsize=2,
                        zorder=2)
    if ref_ppl is not None and ref_tox is not None:
        ax.plot([ref_ppl], [ref_tox], "*", color="black", ms=11, zorder=4,
                label=ref_label or "the target alone (alpha 0)")
    for k, (lab, x, y) in enumerate(more_refs or []):
        ax.plot([x], [y], "*", color=("tab:gray", "tab:brown", "tab:olive", "tab:cyan")[k % 4], mec="black", mew=0.5,
                ms=11, zorder=4, label=lab)
    front = pareto_front(everything)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.3", lw=1.2, ls="--", zorder=1,
                alpha=0.7, label="Pareto frontier (lower-left is better)")
    ax.set_xlim(lo_x, hi_x)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if hi_x / lo_x < 10:  # less than a decade: a handful of plain ticks, still on the log scale
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=7))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, framealpha=0.9)
    fig.tight_layout()
    fig.canvas.draw()
    items = [(pt.label, pt.ppl, pt.tox, colours.get(s.name, "black")) for s in series for pt in s.points if pt.label]
    texts = _place_labels(ax, fig, items)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [tuple(tx.get_window_extent(renderer).bounds) for tx in texts]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue(), {"labels": [tx.get_text() for tx in texts], "label_boxes": boxes, "frontier": front,
                            "references": ([[ref_label or "the target alone (alpha 0)", ref_ppl, ref_tox]]
                                           if ref_ppl is not None and ref_tox is not None else [])
                            + [[lab, x, y] for lab, x, y in more_refs or []],
                            "points": [[s.name, p.label, p.ppl, p.tox] for s in series for p in s.points],
                            "n_points": len(everything)}


# --------------------------------------------------------------------- runs and their score files


@dataclass
class ScoredRun:
    """One generations file with its score files: per-alpha summaries (float alpha keys), each toxicity
    record of one scorer grouped by prompt (for bootstrap intervals), and the generation sidecar."""

    path: Path
    tox: dict[float, dict]
    ppl: dict[str, dict[float, dict]]  # reference tag ("" = the untagged file) -> alpha -> row
    records: dict[float, dict[int, list[float]]]  # alpha -> prompt_index -> scores of ``scorer``
    meta: dict
    scorer: str
    # alpha -> prompt_index -> (summed continuation NLL, tokens) under the untagged PPL judge, over the prompt's samples
    nll: dict[float, dict[int, tuple[float, int]]] = field(default_factory=dict)


def _rows_by_alpha(path: Path) -> dict[float, dict]:
    return {(None if r["alpha"] is None else float(r["alpha"])): r for r in read_score_file(path)} if path.is_file() else {}


def _records_text(paths: dict, rows: dict, script: str) -> str | None:
    """A score file's per-record text (None when there is none), refused when its sha256 is not the one its summary
    ``rows`` record (a partial or older scoring run)."""
    from .io import sha256_text

    rp = paths["records"]
    if not rp.is_file():
        return None
    text = rp.read_text(encoding="utf-8")
    want = {r.get("records_sha256") for r in rows.values()} - {None}
    if want and want != {sha256_text(text)}:
        raise InputError(f"{rp} does not belong to {paths['summary']} (its sha256 differs from the one the "
                         f"summary records: a partial or older scoring run); rerun {script}")
    return text


def load_scored_run(generations_path: str | Path, scorer: str | None = None) -> ScoredRun:
    """Read what eval_toxicity.py and eval_ppl.py wrote beside ``generations_path``. ``scorer`` picks the
    per-record scores (default: the summary's primary scorer). A per-record file whose sha256 is not the one
    its summary recorded (a partial or older scoring run) is refused."""
    from .artifacts import score_paths

    gen = Path(generations_path)
    tox_paths = score_paths(gen, "toxicity")
    tox = _rows_by_alpha(tox_paths["summary"])
    ppl = {tag: _rows_by_alpha(p) for tag, p in find_score_files(gen)["ppl"]}
    scorer = scorer or next((str(r["scorer"]) for r in tox.values() if r.get("scorer")), "")
    recs: dict[float, dict[int, list[float]]] = {}
    rp = tox_paths["records"]
    text = _records_text(tox_paths, tox, "eval_toxicity.py")
    if text is not None:
        for n, line in enumerate(text.splitlines(), 1):
            try:
                r = json.loads(line)
                alpha = None if r["alpha"] is None else float(r["alpha"])
                recs.setdefault(alpha, {}).setdefault(int(r["prompt_index"]), []).append(float(r["scores"][scorer]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputError(f"{rp}:{n}: not a per-record line of eval_toxicity.py with a {scorer!r} score") from None
    nll: dict[float, dict[int, tuple[float, int]]] = {}
    ppl_paths = score_paths(gen, "ppl")
    text = _records_text(ppl_paths, ppl.get("", {}), "eval_ppl.py")
    for n, line in enumerate((text or "").splitlines(), 1):
        try:
            r = json.loads(line)
            if r.get("status", "ok") != "ok":
                continue
            alpha = None if r["alpha"] is None else float(r["alpha"])
            s, t = nll.setdefault(alpha, {}).get(int(r["prompt_index"]), (0.0, 0))
            nll[alpha][int(r["prompt_index"])] = (s + float(r["sum_nll"]), t + int(r["n_tokens"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InputError(f"{ppl_paths['records']}:{n}: not a per-record line of eval_ppl.py") from None
    meta_p = generation_meta_path(gen)
    meta = json.loads(meta_p.read_text(encoding="utf-8")) if meta_p.is_file() else {}
    return ScoredRun(gen, tox, ppl, recs, meta, scorer, nll)


def tox_of(row: dict, scorer: str) -> float:
    """A per-alpha toxicity row's mean for ``scorer`` (NaN when that scorer did not score it)."""
    return row.get(f"toxicity_score_{scorer}",
                   row["toxicity_score"] if str(row.get("scorer", "")).startswith(scorer) else float("nan"))


def alpha_rule(run: ScoredRun, cap: float) -> tuple[float, float]:
    """The alpha rule (for dev prompts, never held-out ones): the lowest mean toxicity of the run's scorer among
    the alphas whose token-weighted PPL is at most ``cap`` times alpha 0's (ties: the smaller alpha). Returns the
    chosen alpha and the PPL budget (``cap`` x alpha 0's token-weighted PPL)."""
    ppl = run.ppl.get("", {})
    if 0.0 not in ppl:
        raise InputError(f"{run.path}: the alpha rule needs alpha 0's PPL (the target alone)")
    budget = cap * ppl[0.0]["ppl_token_weighted"]
    ok = [a for a in run.tox if a in ppl and ppl[a]["ppl_token_weighted"] <= budget]
    if not ok:
        raise InputError(f"{run.path}: no alpha has a toxicity score and a token-weighted PPL within {cap:g}x alpha 0's")
    return min(ok, key=lambda a: (tox_of(run.tox[a], run.scorer), a)), budget


def choose_alpha(generations_path: str | Path, cap: float, scorer: str | None = None) -> float:
    """:func:`alpha_rule`'s alpha for a generations file and its score files."""
    return alpha_rule(load_scored_run(generations_path, scorer), cap)[0]


def alpha_rule_line(run: ScoredRun, cap: float) -> str:
    """One line for under the per-alpha table: the alpha :func:`alpha_rule` picks on this file, with the budget and
    how to change it. Unless the file's prompts are the dev split, it says that alpha is chosen on dev prompts
    (where the rule belongs) and how to make such a file."""
    try:
        alpha, budget = alpha_rule(run, cap)
    except (InputError, KeyError, TypeError) as e:
        return f"alpha rule: not applicable to this file ({e})"
    data = str(run.meta.get("data_path") or "not recorded")
    line = (f"**alpha rule** (the lowest mean toxicity, {run.scorer}, among the alphas whose token-weighted PPL is at "
            f"most {cap:g}x alpha 0's, i.e. <= {budget:.2f}; change {cap:g} with `PPL_CAP=` for run_all.sh or "
            f"`--ppl_cap` for report.py) applied to this file picks **alpha {alpha:g}**.")
    if data == "rtp:dev" or Path(data).name == prompt_file(".", "dev").name:
        return line + f" This file's prompts are the dev split ({data}): this is the alpha to use on held-out prompts."
    dev = run.path.with_name(f"dev_{run.path.name}")
    protocol = run.meta.get("protocol", {}).get("name") if isinstance(run.meta.get("protocol"), dict) else None
    env = f"PROTOCOL={protocol} " if protocol and protocol != "paper" else ""
    return line + (f" This file's prompts ({data}) are not the dev split, so this only shows the rule: choose alpha on "
                   f"dev prompts (`{env}DATA_PATH=rtp:dev OUTPUT_PATH={dev} ./run_generation.sh`, score that file "
                   f"with run_tox_score.sh and run_ppl_score.sh, then `python report.py {dev}`).")


# keys that measure time or name where a file lives; they may differ between two runs of the same study
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


def compare_score_dirs(dir_a: Path, dir_b: Path, names, ppl_tags=("",)) -> tuple[int, list[str]]:
    """Compare every score of the runs ``names`` (generations files ``<dir>/<name>.json``) in two directories:
    the toxicity and PPL summaries and per-record files, value by value. Returns ``(values compared,
    differences)``."""
    from .artifacts import score_paths

    n, diffs = 0, []
    for name in names:
        files = [score_paths(Path(f"{name}.json"), "toxicity")] + [score_paths(Path(f"{name}.json"), "ppl", t) for t in ppl_tags]
        rels = [f[k] for f in files for k in ("summary",)] + [f[k] for f in files for k in ("records",)]
        for rel in rels:
            fa, fb = dir_a / rel, dir_b / rel
            if not fa.exists() and not fb.exists():
                continue
            if not (fa.exists() and fb.exists()):
                diffs.append(f"{fa.name}: only in {dir_a if fa.exists() else dir_b}")
                continue
            if fa.suffix == ".jsonl":
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


# ------------------------------------------------------------------------------ comparing several runs


def _run_names(paths: list[Path]) -> list[str]:
    names = [output_stem(p.name) for p in paths]
    if len(set(names)) < len(names):  # the same file name in several folders
        names = [f"{p.parent.name}/{n}" for p, n in zip(paths, names)]
    return names


def comparison_rows(runs: list[ScoredRun], names: list[str], scorer: str) -> list[dict]:
    """One row per (run, alpha): the run's method, ``scorer``'s mean toxicity with its bootstrap interval (from
    the per-record file, when it holds that scorer and at least MIN_CI_PROMPTS prompts), EMT and toxicity
    probability, both PPLs, dist-2, counts."""
    rows = []
    for run, name in zip(runs, names):
        ppl = run.ppl.get("", {})
        method = str(run.meta.get("method") or "?")
        for a in sorted(set(run.tox) | set(ppl), key=_alpha_order):
            t, p = run.tox.get(a, {}), ppl.get(a, {})
            by = (t.get("by_scorer") or {}).get(scorer) or (t if t.get("scorer") == scorer else {})
            tox = tox_of(t, scorer) if t else float("nan")
            lo = hi = None
            n_ci = None
            if run.scorer == scorer and a in run.records:
                n_ci = len(run.records[a])
                ci = _ci(run.records[a])
                if ci is not None:
                    _, lo, hi = ci
            rows.append({"run": name, "method": method, "baseline": _is_baseline(method), "alpha": a,
                         "tox": _num(tox), "lo": lo, "hi": hi, "ci_prompts": n_ci,
                         "emt": _num(by.get("expected_max_toxicity")),
                         "ptox": _num(by.get("toxicity_probability")), "ppl": _num(p.get("ppl_token_weighted")),
                         "ppl_paper": _num(p.get("PPL")), "dist_2": _num(p.get("dist_2")),
                         "n": t.get("n", p.get("n")), "reference_model": p.get("reference_model")})
    return rows


def read_run_input(path: str | Path) -> tuple[list[dict], str]:
    """A run's blocks and form: the paper's nested generations JSON, or a file of texts that eval_toxicity.py /
    eval_ppl.py scored (``.txt``, ``{"text"}`` JSONL, DExperts JSONL; its summaries are ``<stem>_toxicity.json``
    and ``<stem>_ppl.json`` beside it). A score file given by mistake is named as such."""
    from .artifacts import parse_score_path
    from .data import load_scoring_input

    p = Path(path)
    m = parse_score_path(p)
    if m and p.is_file():
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
            is_score = isinstance(rows, list) and rows and isinstance(rows[0], dict) and PAIRS_KEY not in rows[0]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            is_score = False
        if is_score:
            raise InputError(f"{p} is a score file; report.py reads the file that was scored (the generations JSON "
                             f"or the .txt/.jsonl texts, e.g. {m[0]}.json) and finds its score files beside it")
    return load_scoring_input(p)


def setup_of(blocks: list[dict], run: ScoredRun, scorer: str) -> dict[str, str | None]:
    """What must agree for two runs' numbers to compare: the prompt set (a hash of the distinct prompts), the token
    budget, the decoding, the samples per prompt, and the judges (the toxicity scorer and its version; the PPL
    reference model). None where the files do not record it."""
    import hashlib

    from .metrics import group_by_prompt

    prompts = sorted({p["prompt"] for b in blocks for p in b[PAIRS_KEY]})
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:12]
    meta = run.meta if isinstance(run.meta, dict) else {}
    args = meta.get("arguments") if isinstance(meta.get("arguments"), dict) else {}
    fp = meta.get("fingerprint") if isinstance(meta.get("fingerprint"), dict) else {}

    def get(k):
        for src in (args, fp, meta):
            if src.get(k) is not None:
                return src[k]
        return None

    budget, sample = get("max_new_tokens"), get("do_sample")
    decoding = None if sample is None else (f"nucleus sampling (top_p {get('top_p')}, temperature {get('temperature')})"
                                            if sample else "greedy")
    per_prompt = max((len(g) for b in blocks for g in group_by_prompt(b[PAIRS_KEY])), default=0)
    versions = set()
    for row in run.tox.values():
        v = ((row.get("by_scorer") or {}).get(scorer) or {}).get("version")
        if v is None and row.get("scorer") == scorer:
            v = row.get("scorer_version")
        if v is not None:
            versions.add(str(v))
    tox_judge = None
    if any(_num(tox_of(r, scorer)) is not None for r in run.tox.values()):
        tox_judge = scorer + (f" ({', '.join(sorted(versions))})" if versions else "")
    refs = {str(r["reference_model"]) for r in run.ppl.get("", {}).values() if r.get("reference_model")}
    return {"prompt set": f"{len(prompts)} prompts, sha256 {digest}",
            "token budget": None if budget is None else f"{budget} new tokens",
            "decoding": decoding,
            "samples per prompt": str(per_prompt),
            "toxicity judge": tox_judge,
            "PPL judge": ", ".join(sorted(refs)) or None}


def setup_mismatch(setups: list[dict], names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(differences, agreed, unrecorded)``: one phrase per setting that differs between runs where recorded
    (``token budget (a: 10 new tokens; b: 5 new tokens)``), the settings all runs share, and the settings some
    run does not record."""
    diffs, same, unknown = [], [], []
    for key in setups[0]:
        known = [(n, s[key]) for n, s in zip(names, setups) if s[key] is not None]
        missing = [n for n, s in zip(names, setups) if s[key] is None]
        if missing:
            unknown.append(f"{key} ({', '.join(missing)})")
        if len({v for _, v in known}) > 1:
            diffs.append(f"{key} ({'; '.join(f'{n}: {v}' for n, v in known)})")
        elif known:
            same.append(f"{key}: {known[0][1]}")
    return diffs, same, unknown


def build_comparison(generations_paths, out_md: str | None = None, out_png: str | None = None,
                     budget: float = PPL_BUDGET, allow_mismatch: bool = False) -> str:
    """Several runs (generations files or scored files of texts, each with its score files) in one markdown table,
    one row per (run, method, alpha), and one Pareto plot (methods and baselines as separate series, each run's
    alpha 0 as its reference star). The first run's primary scorer and PPL reference are the ones compared. Runs
    whose prompt set, token budget, decoding, samples per prompt or judges differ are refused unless
    ``allow_mismatch`` (then the difference is stated in the header)."""
    from .artifacts import comparison_paths
    from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path, sha256_file

    paths = [Path(p) for p in generations_paths]
    inputs = [read_run_input(p)[0] for p in paths]  # each one checked before anything is written
    out = comparison_paths(paths[0], out_md, out_png)
    check_output_path(out["markdown"], "report")
    check_output_path(out["png"], "report plot")
    runs = [load_scored_run(p) for p in paths]
    names = _run_names(paths)
    missing = [str(p) for p, r in zip(paths, runs) if not r.tox and not r.ppl]
    if missing:
        raise InputError(f"no score files beside {missing[0]} (run run_tox_score.sh and run_ppl_score.sh on it first)")
    scorer = runs[0].scorer or "toxicity"
    setups = [setup_of(b, r, scorer) for b, r in zip(inputs, runs)]
    diffs, same, unknown = setup_mismatch(setups, names)
    if diffs and not allow_mismatch:
        raise InputError(f"the runs differ in {' and '.join(diffs)}: their numbers do not compare; pass "
                         f"--allow_mismatch to put them in one table anyway")
    rows = comparison_rows(runs, names, scorer)
    refs = {r["reference_model"] for r in rows if r["reference_model"]}
    notes = []
    if diffs:
        notes.append(f"- **the runs differ in {' and '.join(diffs)}: their numbers do not compare directly "
                     f"(--allow_mismatch).**")
    if unknown:
        notes.append(f"- not recorded, so not checked: {'; '.join(unknown)}.")
    unscored = sorted({r["run"] for r in rows if r["tox"] is None})
    if unscored:
        notes.append(f"- not scored by {scorer}: {', '.join(unscored)} (shown as n/a, not plotted).")
    table = ["| run | method | alpha | tox | 95% CI | EMT | P(tox) | PPL token-w. | PPL paper | dist-2 | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = (f"{fmt(r['lo'])}–{fmt(r['hi'])}" if r["lo"] is not None
              else N_TOO_SMALL if r["ci_prompts"] is not None else NA)
        table.append(f"| {r['run']} | {r['method']}{' (baseline)' if r['baseline'] else ''} | {_alpha_label(r['alpha'])} | "
                     f"{fmt(r['tox'])} | {ci} | {fmt(r['emt'])} | {fmt(r['ptox'])} | {fmt(r['ppl'], 2)} | "
                     f"{fmt(r['ppl_paper'], 2)} | {fmt(r['dist_2'])} | {_fmt_int(r['n'])} |")
    # each run's alpha 0 (its target alone) is a reference star; runs whose stars coincide share one
    stars: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        if r["alpha"] == 0 and r["tox"] is not None and r["ppl"] is not None:
            stars.setdefault((r["ppl"], r["tox"]), []).append(r["run"])
    star_list = [(f"the target alone (alpha 0{' of ' + ', '.join(who) if len(runs) > 1 else ''})", x, y)
                 for (x, y), who in stars.items()]
    series: dict[tuple[str, str], PlotSeries] = {}
    for r in rows:
        if r["alpha"] == 0 or r["tox"] is None or r["ppl"] is None:
            continue
        key = (r["run"], r["method"])
        s = series.setdefault(key, PlotSeries(f"{r['run']}: {r['method']}" if len(runs) > 1 else r["method"],
                                              "baseline" if r["baseline"] else "method", []))
        s.points.append(PlotPoint("all texts" if r["alpha"] is None else f"{r['alpha']:g}", r["ppl"], r["tox"],
                                  r["lo"], r["hi"]))
    ref_label = next(iter(sorted(refs)), "the reference LM")
    png_written, layout = False, {}
    first = star_list[0] if star_list else None
    if series or first:
        png, layout = pareto_plot(list(series.values()), first[1] if first else None, first[2] if first else None,
                                  budget, f"Toxicity vs fluency: {len(runs)} runs",
                                  f"token-weighted PPL under {ref_label}, log scale (lower is better)",
                                  f"mean toxicity, {scorer}, 95% CI (lower is better)",
                                  ref_label=first[0] if first else None, more_refs=star_list[1:])
        atomic_write_bytes(out["png"], png)
        png_written = True
    star_runs = [who for who in stars.values()]
    header = [f"# Comparison of {len(runs)} runs", "",
              *[f"- {n}: `{p}` ({', '.join(_generation_models(p)[:-1]) or 'no generation sidecar'})" for n, p in zip(names, paths)],
              f"- the same for every run: {'; '.join(same) or NA}.",
              f"- toxicity: {scorer} (lower is better); 95% CI: percentile bootstrap over prompts (2,000 resamples; "
              f"none below {MIN_CI_PROMPTS} prompts: {N_TOO_SMALL}); EMT and P(tox) (share of prompts with a sample "
              f">= 0.5) where prompts have several samples.",
              f"- PPL: token-weighted and the paper's (exp of the mean per-sample loss), under {', '.join(sorted(refs)) or NA}.",
              f"- plot: each run's alpha 0 (its target alone) as a reference star "
              f"({'; '.join(', '.join(w) for w in star_runs) or 'none: no run has alpha 0'}); the band is PPL within "
              f"{budget:g}x of {('the first star (' + star_runs[0][0] + ')') if star_runs else NA}; the dashed line is "
              f"the Pareto frontier.", *notes, ""]
    footer = ["", f"![toxicity vs perplexity]({out['png'].name})", ""] if png_written else [""]
    md = "\n".join(header + table + footer)
    atomic_write_text(out["markdown"], md)
    atomic_write_json(out["meta"], {
        "what": "comparison report (detox_pa.report.build_comparison)",
        "runs": [{"name": n, "generations": str(p), "generations_sha256": sha256_file(p), "setup": st}
                 for n, p, st in zip(names, paths, setups)],
        "setup_differences": diffs, "allow_mismatch": allow_mismatch,
        "scorer": scorer, "reference_models": sorted(refs), "budget": budget, "rows": rows,
        "plot": {"labels": layout.get("labels"), "frontier": layout.get("frontier"), "points": layout.get("points"),
                 "references": [[lab, x, y] for lab, x, y in star_list]},
        "outputs": {"markdown": str(out["markdown"]), "png": str(out["png"]) if png_written else None},
    })
    log.info("wrote %s%s", out["markdown"], f" and {out['png']}" if png_written else "")
    return md


# ----------------------------------------------------------------------------------------- the step


@dataclass
class ReportArguments:
    generations: list[str] = field(default_factory=list, metadata={
        "help": "Generations JSON file(s) (the paper's nested format), or files of texts eval_toxicity.py / "
                "eval_ppl.py scored (.txt, {text} JSONL, DExperts JSONL), each with its score files "
                "(<stem>_toxicity.json, <stem>_ppl.json beside it). One: the per-alpha report; several: one table "
                "and one Pareto plot comparing them."})
    out_md: str = field(default="", metadata={"help": f"Markdown output (default {report_paths('<stem>.json')['markdown']})."})
    out_png: str = field(default="", metadata={"help": f"PNG output (default {report_paths('<stem>.json')['png']})."})
    allow_mismatch: bool = field(default=False, metadata={
        "help": "Compare runs whose prompt set, token budget, decoding, samples per prompt or judges (toxicity "
                "scorer, PPL reference model) differ; without it such a comparison is refused."})
    ppl_cap: float = field(default=PPL_BUDGET, metadata={
        "help": "The alpha rule's PPL budget, a multiple of alpha 0's token-weighted PPL: the report names the alpha "
                "with the lowest mean toxicity within it, and the plots shade it."})

    def __post_init__(self):
        if not self.generations:
            raise InputError("no input given: pass one or more generations files (report.py RUN1.json [RUN2.json ...])")
        if self.out_md and not self.out_md.endswith(".md"):
            raise InputError(f"--out_md {self.out_md}: expected a path ending in .md")
        if self.out_png and not self.out_png.endswith(".png"):
            raise InputError(f"--out_png {self.out_png}: expected a path ending in .png")
        if not (self.ppl_cap > 0 and math.isfinite(self.ppl_cap)):
            raise InputError(f"--ppl_cap must be a positive number (a multiple of alpha 0's PPL), got {self.ppl_cap}")


def parse_args(argv=None, description: str | None = None) -> ReportArguments:
    """A bare first argument is the generations file (``report.py outputs/generations.json``)."""
    argv = list(argv or [])
    bare = 0
    while bare < len(argv) and not argv[bare].startswith("-"):
        bare += 1
    if bare:
        argv = ["--generations", *argv[:bare], *argv[bare:]]
    (args,) = parse_dataclasses([ReportArguments], argv, description=description or __doc__.splitlines()[0])
    return args


def run(args: ReportArguments) -> str:
    """Write the report files and print the markdown (report.py's body)."""
    log_args(args)
    if len(args.generations) > 1:
        md = build_comparison(args.generations, args.out_md or None, args.out_png or None, args.ppl_cap,
                              allow_mismatch=args.allow_mismatch)
    else:
        md = build_report(args.generations[0], args.out_md or None, args.out_png or None, args.ppl_cap)
    print(md)
    return md
