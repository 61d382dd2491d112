"""Step 4a: toxicity of generated continuations, per alpha (the paper's ``<input>_toxicity.json``).

Copy-paste::

    python eval_toxicity.py --input_json outputs/generations.json
    python eval_toxicity.py --input_json outputs/generations.json --scorer bilstm,profanity-check
    python eval_toxicity.py --input_json gens.json --scorer detoxify-original --checkpoint toxic_original-c1212f89.ckpt
    python eval_toxicity.py --input my_texts.txt --scorer bilstm        # any texts, one a line
    ./run_tox_score.sh auto outputs/generations.json           # the paper's launcher form

Scores every ``response`` of the paper's nested generations JSON, or any texts (a ``.txt`` file, one a line;
a JSONL of ``{"text"}``; a DExperts JSONL ``{"prompt", "generations": [{"text"}]}``), with one or several
scorers (the first is the primary, the paper's ``toxicity_score``), prints a one-screen summary, and writes ``<stem>_toxicity.json`` (per alpha: the mean,
EMT, toxicity probability with the rule *toxic when score >= 0.5*, counts, the scorer),
``<stem>_toxicity_records.jsonl`` (one line per continuation) and ``<stem>_toxicity.meta.json``, records
first and the summary last, each atomically. Lower is better. Bad input exits with status 2 and one line,
before any model is loaded. The formats are documented in ``detox_pa/toxicity.py``.
"""

from __future__ import annotations

from detox_pa import toxicity
from detox_pa.cli import entry


def parse_args(argv=None) -> toxicity.ToxicityArguments:
    return toxicity.parse_args(argv, description=__doc__.splitlines()[0])


main = toxicity.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
