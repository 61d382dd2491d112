"""Build the embedded default's teacher training data: clean (and toxic) continuations sampled from the target.

Rebuild the committed files (57 minutes measured on 2 CPU cores shared with other jobs; from the repository root)::

    python -m scripts.build_teacher_data --overwrite

A quick look on a few prompts, written elsewhere::

    python -m scripts.build_teacher_data --max_prompts 8 --out_tsv /tmp/td.tsv --out_toxic_tsv /tmp/tx.tsv \\
        --steering_out /tmp/st.jsonl

Writes data/teacher_data.tsv (+ .json sidecar), data/teacher_data_toxic.tsv and data/steering_texts.jsonl.
The sampling, the profanity-check filter and the selection rules are in ``detox_pa/teacher_data.py``.
"""

from __future__ import annotations

from detox_pa import teacher_data
from detox_pa.cli import entry


def parse_args(argv=None) -> teacher_data.BuildArgs:
    return teacher_data.parse_args(argv, description=__doc__.split("\n\n")[0])


main = teacher_data.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
