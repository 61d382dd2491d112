"""Step 4b: perplexity of generated continuations under a reference causal LM (batched).

Copy-paste (the embedded default: reference = the unsteered target Gemma-3-270M)::

    python eval_ppl.py --model_path gemma-3-270m --input_json outputs/generations.json

The paper's setting (Llama-2-13B on a GPU)::

    python eval_ppl.py --model_path /path/to/llama-2-13b --input_json results.json --device cuda:0

Writes ``<stem>_ppl.json`` (per alpha: the paper's ``PPL`` = exp of the mean per-sample loss, the
token-weighted PPL, dist-1/2/3, counts), ``<stem>_ppl_records.jsonl`` (one line per continuation) and
``<stem>_ppl.meta.json`` beside the input. ``--join auto|exact|paper`` says how prompt and continuation meet
(our files carry the exact ``continuation``; the paper's strip ``response`` and join with one space). The
formats are documented in ``detox_pa/ppl.py``.
"""

from __future__ import annotations

from detox_pa import ppl
from detox_pa.cli import entry


def parse_args(argv=None) -> ppl.PPLArguments:
    return ppl.parse_args(argv, description=__doc__.splitlines()[0])


main = ppl.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
