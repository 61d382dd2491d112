"""End of the pipeline: one table and one plot from the score files of a generations file.

Copy-paste (after run_tox_score.sh and run_ppl_score.sh on the same file)::

    python report.py outputs/generations.json

Reads ``<stem>_toxicity[_<tag>].json`` and ``<stem>_ppl[_<tag>].json`` beside ``<stem>.json``; writes
``<stem>_report.md`` (per-alpha table: toxicity per scorer, EMT and toxicity probability where defined, both
PPLs, dist-1/2/3, counts), ``<stem>_report.png`` (toxicity vs token-weighted PPL, points labelled with alpha)
and ``<stem>_report.meta.json``; prints the markdown to stdout.
"""

from __future__ import annotations

from detox_pa import report
from detox_pa.cli import entry


def parse_args(argv=None) -> report.ReportArguments:
    return report.parse_args(argv, description=__doc__.splitlines()[0])


main = report.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
