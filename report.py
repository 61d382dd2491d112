"""End of the pipeline: one table and one plot from the score files of a generations file.

Copy-paste (after run_tox_score.sh and run_ppl_score.sh on the same file):

    python report.py --generations outputs/generations.json

(``python report.py outputs/generations.json`` works too.) Reads ``<stem>.json`` (``<stem>`` = the
path without ``.json``), ``<stem>_toxicity[_<tag>].json`` and ``<stem>_ppl[_<tag>].json``; writes
``<stem>_report.md`` (per-alpha table: toxicity per scorer, EMT and toxicity probability where
defined, both PPLs, dist-1/2/3, counts), ``<stem>_report.png`` (toxicity vs token-weighted PPL,
points labelled with alpha) and ``<stem>_report.meta.json``; prints the markdown to stdout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detox_pa.cli import entry, log_args, parse_dataclasses
from detox_pa.errors import InputError


@dataclass
class ReportArguments:
    generations: str = field(default="", metadata={"help": "Generations JSON (the paper's nested format)."})
    out_md: str = field(default="", metadata={"help": "Markdown output (default <stem>_report.md)."})
    out_png: str = field(default="", metadata={"help": "PNG output (default <stem>_report.png)."})

    def __post_init__(self):
        if not self.generations:
            raise InputError("no input given: pass --generations PATH (the generations JSON)")
        if self.out_md and not self.out_md.endswith(".md"):
            raise InputError(f"--out_md {self.out_md}: expected a path ending in .md")
        if self.out_png and not self.out_png.endswith(".png"):
            raise InputError(f"--out_png {self.out_png}: expected a path ending in .png")


def parse_args(argv=None) -> ReportArguments:
    argv = list(argv or [])
    if argv and not argv[0].startswith("-"):  # a bare path is the generations file
        argv = ["--generations", argv[0], *argv[1:]]
    (args,) = parse_dataclasses([ReportArguments], argv, description=__doc__.splitlines()[0])
    return args


def main(args: ReportArguments) -> str:
    from detox_pa.report import build_report

    log_args(args)
    md = build_report(args.generations, args.out_md or None, args.out_png or None)
    print(md)
    return md


if __name__ == "__main__":
    entry(main, parse_args)
