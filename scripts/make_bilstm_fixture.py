"""Reference outputs of the ORIGINAL Keras toxic-comment-classifier, for tests/test_bilstm.py.

Runs the package's own model-building code (``toxic_classifier.ToxicCommentClassifier``: Keras
layers + ``load_weights`` + the pickled Keras ``Tokenizer`` + ``pad_sequences``) on a fixed set of
varied texts and writes ``tests/fixtures/bilstm_reference.json`` with, per text, the Keras token ids
(``texts_to_sequences``) and the 6 label probabilities, plus the TensorFlow / Keras versions.
Our torch port (``detox_pa/bilstm.py``) is tested against that file, so CI never needs TensorFlow.

This script needs TensorFlow, which the project's venv must NOT contain. Run it once, in a
throwaway venv outside the repository (TensorFlow 2.21 / Keras 3.15 were used for the committed
fixture; Keras 3 is needed to read the package's ``model.weights.h5``)::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu h5py numpy
    /tmp/tfvenv/bin/pip install --no-deps toxic-comment-classifier==0.3.0
    /tmp/tfvenv/bin/python scripts/make_bilstm_fixture.py            # from the repository root

It only reads the package and writes the fixture (atomically). It does not import detox_pa.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

# Varied texts: clean, profane, threats, insults, identity attacks, empty, whitespace,
# punctuation-only, unicode, mixed case, URLs, Keras-filter characters, words at the
# num_words boundary ("wes" has id 19999 and is kept, "shattering" has id 20000 and is dropped),
# and texts longer than the 100-token window (only the LAST 100 ids are kept).
_LONG_CLEAN = " ".join(["the weather in the garden was calm and the river was quiet today"] * 12)
_LONG_TOXIC_END = _LONG_CLEAN + " you are a stupid idiot and i hate you"
_LONG_TOXIC_START = "you are a stupid idiot and i hate you " + _LONG_CLEAN
TEXTS = [
    "",
    " ",
    "Have a nice day, my friend!",
    "Thank you for your edits to the article about the history of the city.",
    "The weather is lovely today and the garden looks great.",
    "I think this paragraph needs a better source; could you add one?",
    "You are a stupid idiot.",
    "YOU ARE A STUPID IDIOT",
    "yOu ArE a StUpId IdIoT",
    "shut up you fucking moron",
    "What the hell is wrong with you, you piece of shit?",
    "I will kill you and your whole family.",
    "I'm going to find where you live and hurt you",
    "Go die in a fire, loser.",
    "You're an ugly, worthless loser and everyone hates you.",
    "All immigrants are criminals and should be thrown out.",
    "gay people are disgusting",
    "people like you should be thrown out of this country",
    "fuck",
    "f*ck this sh!t",
    "F.U.C.K. Y.O.U.",
    "!!!???...,,,;;;",
    "@#$%^&*()_+-=[]{}|\\:\";'<>?,./~`",
    "\t\n\t\n",
    "http://www.example.com/some/path?query=1&x=2",
    "Check https://en.wikipedia.org/wiki/Toxicity for details, idiot.",
    "Héllo wörld, ça va? Naïve café résumé",
    "Привет, как дела? 你好，世界。こんにちは",
    "🙂🙂 you are great 👍",
    "don’t “quote” me — it’s fine… really",
    "non\u00a0breaking\u00a0space and a zero\u200bwidth space",
    "word\r\nwith\rcarriage returns",
    "UPPERCASE SHOUTING ABOUT NOTHING IN PARTICULAR",
    "wes shattering climates reaper",
    "shattering",
    "don't you're it's i've doesn't",
    "123 456 7890 3.14159",
    "a " * 150,
    _LONG_CLEAN,
    _LONG_TOXIC_END,
    _LONG_TOXIC_START,
    "The cat sat on the mat. The dog barked. Nothing else happened at all.",
    "Please stop vandalizing pages or you will be blocked from editing.",
    "suck my dick you bastard",
]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bilstm_reference.json"))
    a = ap.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    from toxic_classifier.model import LIST_CLASSES, MAXLEN, ToxicCommentClassifier
    from tensorflow.keras.preprocessing.sequence import pad_sequences

    clf = ToxicCommentClassifier()
    records = []
    for text in TEXTS:
        seq = clf.tokenizer.texts_to_sequences([text])[0]
        scores = clf.classify(text)  # the package's own path: texts_to_sequences -> pad_sequences -> model
        records.append({"text": text, "keras_sequence": [int(i) for i in seq],
                        "probabilities": [float(scores[c]) for c in LIST_CLASSES]})
    # The same texts as one batch through the Keras model (checks that batching does not matter there either).
    padded = pad_sequences(clf.tokenizer.texts_to_sequences(TEXTS), maxlen=MAXLEN)
    batch = clf.model.predict(padded, verbose=0, batch_size=16)
    single = np.array([r["probabilities"] for r in records])
    out = {
        "description": "Outputs of the original Keras toxic-comment-classifier 0.3.0 (made by scripts/make_bilstm_fixture.py)",
        "labels": list(LIST_CLASSES),
        "maxlen": MAXLEN,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
                     "h5py": _version("h5py"), "toxic-comment-classifier": _version("toxic-comment-classifier"),
                     "python": platform.python_version()},
        "keras_batch_vs_single_max_abs_diff": float(np.abs(batch - single).max()),
        "records": records,
    }
    dest = Path(a.output)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=str(dest.parent))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, dest)
    print(f"wrote {len(records)} records to {dest} (TF {tf.__version__}, Keras {keras.__version__})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
