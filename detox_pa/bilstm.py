"""Torch port of the toxic-comment-classifier 0.3.0 BiLSTM (no TensorFlow).

The package ``toxic-comment-classifier`` ships Keras weights for the 6 Jigsaw labels
(``toxic_classifier/model/model.weights.h5``, Keras 3 format) and a pickled Keras ``Tokenizer``
(``tokenizer.pickle``). Importing the package imports TensorFlow, so we never import it: we find
its folder with :func:`detox_pa.assets.package_dir`, read the weights with ``h5py`` and unpickle
the tokenizer with a stand-in class.

Model (as built by the package's ``model.py``)::

    ids [N, 100] -> Embedding(20000, 50) -> Bidirectional(LSTM(50), return_sequences) [N, 100, 100]
        -> global max-pool over all 100 steps (padding included) -> Dense(100->50, ReLU)
        -> (Dropout, inference no-op) -> Dense(50->6, sigmoid)

Text -> ids follows the Keras ``Tokenizer.texts_to_sequences`` + ``pad_sequences(maxlen=100)``
defaults exactly: lower-case, replace every ``filters`` character by ``split``, split on
``split``, drop empty words, look up ``word_index``, keep ids ``< num_words`` (OOV handling if
the tokenizer has an ``oov_token``), then keep the LAST 100 ids and pad at the FRONT with 0.
The package's ``classify`` does no other cleaning (its ``utils.clean_text`` is not used).

The port matches the original Keras model to about 1e-7 (``tests/test_bilstm.py`` checks the
committed TensorFlow reference ``tests/fixtures/bilstm_reference.json`` to within 1e-5).
"""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100
VOCAB_SIZE = 20000
EMBEDDING_DIM = 50
UNITS = 50
PACKAGE = "toxic_classifier"
DISTRIBUTION = "toxic-comment-classifier"


# ------------------------------------------------------------------------------ tokenizer


class _KerasTokenizerState:
    """Stand-in for ``keras...preprocessing.text.Tokenizer`` while unpickling: keeps its attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickles the Keras tokenizer without Keras, and refuses any other class (no code runs)."""

    _ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int"),
                ("builtins", "str"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "float")}

    def find_class(self, module, name):
        if name == "Tokenizer" and module.startswith(("keras", "tensorflow", "tf_keras")):
            return _KerasTokenizerState
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in the tokenizer pickle")


class KerasTokenizer:
    """``texts_to_sequences`` + ``pad_sequences`` of a pickled Keras ``Tokenizer`` (word level)."""

    def __init__(self, word_index: dict, num_words: int | None, filters: str = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n',
                 split: str = " ", lower: bool = True, oov_token: str | None = None, maxlen: int = MAXLEN):
        self.num_words = num_words
        self.split = split
        self.lower = lower
        self.oov_token = oov_token
        self.oov_index = word_index.get(oov_token) if oov_token is not None else None
        self.maxlen = maxlen
        self._table = str.maketrans({c: split for c in filters})
        # Pre-resolve the num_words / OOV rule into one dict: word -> id, or absent (dropped).
        limit = num_words if num_words else None
        self._ids: dict[str, int] = {}
        for w, i in word_index.items():
            if limit is None or i < limit:
                self._ids[w] = i
            elif self.oov_index is not None:
                self._ids[w] = self.oov_index

    @classmethod
    def from_pickle(cls, path: str | Path, maxlen: int = MAXLEN) -> "KerasTokenizer":
        try:
            with open(path, "rb") as f:
                state = _TokenizerUnpickler(f).load()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise InputError(f"cannot read the Keras tokenizer {path}: {e}") from None
        d = getattr(state, "__dict__", {})
        if not isinstance(d.get("word_index"), dict):
            raise InputError(f"{path}: not a pickled Keras Tokenizer (no word_index)")
        if d.get("char_level") or d.get("analyzer") is not None:
            raise InputError(f"{path}: char-level tokenizers or custom analyzers are not supported")
        return cls(word_index=d["word_index"], num_words=d.get("num_words"), filters=d.get("filters", ""),
                   split=d.get("split", " "), lower=d.get("lower", True), oov_token=d.get("oov_token"), maxlen=maxlen)

    def words(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        return [w for w in text.translate(self._table).split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        ids = self._ids
        unk = self.oov_index if self.oov_token is not None else None
        for text in texts:
            seq = []
            for w in self.words(text):
                i = ids.get(w, unk)
                if i is not None:
                    seq.append(i)
            out.append(seq)
        return out

    def pad(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """``pad_sequences(maxlen)`` defaults: keep the last ``maxlen`` ids, pad at the front with 0."""
        arr = np.zeros((len(sequences), self.maxlen), dtype=np.int64)
        for r, seq in enumerate(sequences):
            if seq:
                tail = seq[-self.maxlen:]
                arr[r, self.maxlen - len(tail):] = tail
        return arr

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.pad(self.texts_to_sequences(texts))


# ---------------------------------------------------------------------------------- model


def _read_h5_weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    names = {
        "embedding": "layers/embedding/vars/0",
        "fw_kernel": "layers/bidirectional/forward_layer/cell/vars/0",
        "fw_recurrent": "layers/bidirectional/forward_layer/cell/vars/1",
        "fw_bias": "layers/bidirectional/forward_layer/cell/vars/2",
        "bw_kernel": "layers/bidirectional/backward_layer/cell/vars/0",
        "bw_recurrent": "layers/bidirectional/backward_layer/cell/vars/1",
        "bw_bias": "layers/bidirectional/backward_layer/cell/vars/2",
        "dense_w": "layers/dense/vars/0",
        "dense_b": "layers/dense/vars/1",
        "out_w": "layers/dense_1/vars/0",
        "out_b": "layers/dense_1/vars/1",
    }
    shapes = {
        "embedding": (VOCAB_SIZE, EMBEDDING_DIM), "fw_kernel": (EMBEDDING_DIM, 4 * UNITS),
        "fw_recurrent": (UNITS, 4 * UNITS), "fw_bias": (4 * UNITS,), "bw_kernel": (EMBEDDING_DIM, 4 * UNITS),
        "bw_recurrent": (UNITS, 4 * UNITS), "bw_bias": (4 * UNITS,), "dense_w": (2 * UNITS, 50), "dense_b": (50,),
        "out_w": (50, len(LABELS)), "out_b": (len(LABELS),),
    }
    try:
        with h5py.File(path, "r") as f:
            out = {}
            for key, name in names.items():
                if name not in f:
                    raise InputError(f"{path}: missing weight '{name}' (not the toxic-comment-classifier 0.3.0 Keras 3 weights file)")
                arr = np.asarray(f[name][()], dtype=np.float32)
                if arr.shape != shapes[key]:
                    raise InputError(f"{path}: weight '{name}' has shape {arr.shape}, expected {shapes[key]}")
                out[key] = arr
            return out
    except OSError as e:
        raise InputError(f"cannot read the BiLSTM weights {path}: {e}") from None


def _build_module(w: dict[str, np.ndarray]):
    import torch
    from torch import nn

    class BiLSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB_SIZE, EMBEDDING_DIM)
            self.lstm = nn.LSTM(EMBEDDING_DIM, UNITS, batch_first=True, bidirectional=True)
            self.dense = nn.Linear(2 * UNITS, 50)
            self.out = nn.Linear(50, len(LABELS))

        def forward(self, ids):  # ids [N, T] int64 -> probabilities [N, 6]
            h, _ = self.lstm(self.embedding(ids))  # [N, T, 100] = [forward | backward]
            pooled = h.amax(dim=1)  # global max-pool over all steps, padding included
            return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))

    net = BiLSTMNet()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        net.embedding.weight.copy_(t(w["embedding"]))
        # Keras gate order (i, f, c, o) equals torch's (i, f, g, o); Keras kernels are [in, 4u].
        for suffix, pre in (("", "fw"), ("_reverse", "bw")):
            getattr(net.lstm, f"weight_ih_l0{suffix}").copy_(t(w[f"{pre}_kernel"].T))
            getattr(net.lstm, f"weight_hh_l0{suffix}").copy_(t(w[f"{pre}_recurrent"].T))
            getattr(net.lstm, f"bias_ih_l0{suffix}").copy_(t(w[f"{pre}_bias"]))
            getattr(net.lstm, f"bias_hh_l0{suffix}").zero_()  # Keras has a single bias
        net.dense.weight.copy_(t(w["dense_w"].T))
        net.dense.bias.copy_(t(w["dense_b"]))
        net.out.weight.copy_(t(w["out_w"].T))
        net.out.bias.copy_(t(w["out_b"]))
    net.eval()
    return net


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class BiLSTMToxicity:
    """The embedded offline toxicity classifier. ``predict(texts) -> float32 [N, 6]`` in :data:`LABELS` order."""

    LABELS = LABELS
    name = "bilstm-toxic-comment-classifier"

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", threads: int | None = 1):
        """``threads``: torch intra-op threads while predicting (restored afterwards); ``None`` keeps
        torch's setting. The default is 1: the LSTM's ops are tiny (hidden size 50), so intra-op
        threading costs more than it gains (about 10x slower with 2 threads on a busy 2-core machine;
        see bench/bench_toxicity.py)."""
        import torch

        if model_dir is None:
            from .assets import package_dir

            model_dir = package_dir(PACKAGE) / "model"
        model_dir = Path(model_dir)
        weights, tok = model_dir / "model.weights.h5", model_dir / "tokenizer.pickle"
        for p in (weights, tok):
            if not p.is_file():
                raise InputError(f"BiLSTM file {p} is missing; reinstall {DISTRIBUTION}==0.3.0 with --no-deps")
        self.version = package_version()
        self.threads = threads
        self.model_dir = model_dir
        self.device = torch.device(device)
        self.tokenizer = KerasTokenizer.from_pickle(tok)
        self.net = _build_module(_read_h5_weights(weights)).to(self.device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokenizer.encode(list(texts))

    def predict_ids(self, ids: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch

        out = np.empty((len(ids), len(LABELS)), dtype=np.float32)
        before = torch.get_num_threads()
        if self.threads and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for s in range(0, len(ids), batch_size):
                    x = torch.from_numpy(ids[s:s + batch_size]).to(self.device)
                    out[s:s + batch_size] = self.net(x).float().cpu().numpy()
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Probabilities ``[N, 6]`` (float32) for :data:`LABELS`."""
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts, not a single string")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        return self.predict_ids(self.encode(texts), batch_size)

    def predict_dict(self, texts: Sequence[str], batch_size: int = 256) -> dict[str, np.ndarray]:
        p = self.predict(texts, batch_size)
        return {lab: p[:, i] for i, lab in enumerate(LABELS)}
