"""End of the pipeline: one table and one plot from the score files of a generations file.

Copy-paste (after run_tox_score.sh and run_ppl_score.sh on the same file)::

    python report.py outputs/generations.json                      # one run: the per-alpha report
    python report.py runs/diff.json runs/wordban.json runs/steer.json --out_md runs/compare.md   # several runs
    python report.py dexperts.jsonl                                # a scored file of texts (.txt, .jsonl)

Reads ``<stem>_toxicity[_<tag>].json`` and ``<stem>_ppl[_<tag>].json`` beside ``<stem>.json`` (or beside the
``.txt`` / ``.jsonl`` texts that eval_toxicity.py and eval_ppl.py scored); writes
``<stem>_report.md`` (per-alpha table: toxicity per scorer, EMT and toxicity probability where defined, both
PPLs, dist-1/2/3, counts), ``<stem>_report.png`` (toxicity vs token-weighted PPL, points labelled with alpha)
and ``<stem>_report.meta.json``; prints the markdown to stdout. With several generations files: one table with a
row per (run, method, alpha) and one Pareto plot (log PPL axis, bootstrap 95% CI whiskers, the target alone as
each run's alpha 0 as a reference star, the 1.25x PPL budget band, the frontier; methods and baselines as separate
series), written to ``comparison_report.md`` / ``.png`` beside the first run unless ``--out_md`` / ``--out_png`` say
otherwise. Runs whose prompt set, token budget, decoding or judges differ are refused unless ``--allow_mismatch``.
"""

from __future__ import annotations

from detox_pa import report
from detox_pa.cli import entry


def parse_args(argv=None) -> report.ReportArguments:
    return report.parse_args(argv, description=__doc__.splitlines()[0])


main = report.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
