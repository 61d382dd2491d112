"""The torch port of the toxic-comment-classifier BiLSTM against the original Keras model.

The reference outputs in tests/fixtures/bilstm_reference.json were produced once with TensorFlow /
Keras by scripts/make_bilstm_fixture.py; this test only reads the JSON (no TensorFlow here).
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from detox_pa.bilstm import LABELS, MAXLEN, BiLSTMToxicity, KerasTokenizer
from detox_pa.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "bilstm_reference.json"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model():
    return BiLSTMToxicity()


def test_fixture_covers_the_hard_cases(reference):
    texts = [r["text"] for r in reference["records"]]
    assert len(texts) >= 40
    assert "" in texts
    assert any(len(t.split()) > MAXLEN for t in texts)  # truncation to the last 100 ids
    assert any(not t.isascii() for t in texts)
    assert any("http" in t for t in texts)
    assert reference["labels"] == list(LABELS)
    assert reference["versions"]["tensorflow"] and reference["versions"]["keras"].startswith("3.")
    # toxic and clean texts are both present, so agreement is not trivially "all near zero"
    toxic = [r["probabilities"][0] for r in reference["records"]]
    assert max(toxic) > 0.99 and min(toxic) < 0.01


def test_tokenizer_matches_keras_texts_to_sequences(model, reference):
    for r in reference["records"]:
        assert model.tokenizer.texts_to_sequences([r["text"]])[0] == r["keras_sequence"], repr(r["text"][:60])


def test_port_matches_tensorflow_within_1e5(model, reference):
    texts = [r["text"] for r in reference["records"]]
    ref = np.array([r["probabilities"] for r in reference["records"]], dtype=np.float64)
    for batch_size in (1, 7, 256):  # uneven batches too: results must not depend on batching
        got = model.predict(texts, batch_size=batch_size)
        assert got.shape == (len(texts), 6) and got.dtype == np.float32
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        assert diff < TOLERANCE, f"batch_size={batch_size}: max abs diff {diff:.3g}"


def test_predict_edge_cases_and_threads_restored(model):
    import torch

    assert model.predict([]).shape == (0, 6)
    with pytest.raises(TypeError):
        model.predict("a single string")
    before = torch.get_num_threads()
    p = model.predict(["you are a stupid idiot", "have a nice day"])
    assert torch.get_num_threads() == before
    assert p[0, 0] > 0.9 > 0.1 > p[1, 0]
    assert model.name == "bilstm-toxic-comment-classifier" and model.version == "0.3.0"
    assert model.LABELS == LABELS


def test_keras_tokenizer_rules_on_hand_made_vocab():
    wi = {"a": 1, "b": 2, "c": 3, "don't": 4}
    tok = KerasTokenizer(wi, num_words=4, maxlen=5)
    # lower-cased, filters become spaces, empty words dropped, ids >= num_words dropped, unknown dropped
    assert tok.texts_to_sequences(["A,b!!c  zz DON'T\tb"]) == [[1, 2, 3, 2]]
    # pad_sequences defaults: keep the LAST maxlen ids, pad at the front with 0
    assert tok.pad([[1, 2, 3, 1, 2, 3, 3], [2], []]).tolist() == [[3, 1, 2, 3, 3], [0, 0, 0, 0, 2], [0] * 5]
    # with an OOV token: unknown words and words beyond num_words map to it
    tok = KerasTokenizer({"<oov>": 1, "a": 2, "b": 3, "c": 4}, num_words=4, oov_token="<oov>", maxlen=4)
    assert tok.texts_to_sequences(["a c zz b"]) == [[2, 1, 1, 3]]


def test_unpickler_accepts_only_the_tokenizer(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo should-not-run",))

    bad = tmp_path / "tokenizer.pickle"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="unexpected class"):
        KerasTokenizer.from_pickle(bad)


def test_wrong_weights_file_is_a_one_line_error(tmp_path):
    import h5py

    from detox_pa.assets import package_dir

    with h5py.File(tmp_path / "model.weights.h5", "w") as f:
        f["layers/embedding/vars/0"] = np.zeros((10, 50), dtype=np.float32)
    (tmp_path / "tokenizer.pickle").write_bytes((package_dir("toxic_classifier") / "model" / "tokenizer.pickle").read_bytes())
    with pytest.raises(InputError, match=r"model\.weights\.h5.*shape"):
        BiLSTMToxicity(model_dir=tmp_path)
