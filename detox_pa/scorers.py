"""Toxicity scorers behind one interface.

==========================  =================================================================
name                        what
==========================  =================================================================
``auto`` (default)          Detoxify ``original`` when its weights are in the torch hub cache
                            (``$TORCH_HOME/hub/checkpoints/toxic_original-c1212f89.ckpt``) or can
                            be fetched (hub access not switched off by ``HF_HUB_OFFLINE`` and a
                            2-second connectivity probe succeeds); otherwise the embedded BiLSTM,
                            announced in one log line. Never a silent zero.
``detoxify-original``       Detoxify 0.5.4 models (BERT / RoBERTa / XLM-R). They download where a
``detoxify-unbiased``       network exists. ``checkpoint=PATH`` loads a local Detoxify checkpoint
``detoxify-multilingual``   (``{"config": {"arch": {"args": ...}, "dataset": ...}, "state_dict"}``)
                            with no hub access when its ``config.arch.args.model_type`` is a local
                            folder with ``config.json`` + tokenizer files, or when ``hf_config_dir``
                            names such a folder.
``bilstm``                  The embedded Keras BiLSTM of toxic-comment-classifier 0.3.0, ported to
                            torch (:mod:`detox_pa.bilstm`). Toxicity = its ``toxic`` label; all 6
                            labels are kept.
``profanity-check``         alt-profanity-check ``predict_prob`` (linear SVM on TF-IDF, keyword
                            driven). Its one label is ``profanity``.
==========================  =================================================================

Every scorer returns probabilities in [0, 1]; higher = more toxic. All of them (the offline
ones especially) are keyword driven and miss implicit toxicity.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from .errors import InputError
from .runtime import hub_offline

log = logging.getLogger(__name__)

DETOXIFY_TYPES = ("original", "unbiased", "multilingual")
KNOWN_SCORERS = ("auto", *(f"detoxify-{t}" for t in DETOXIFY_TYPES), "bilstm", "profanity-check")
# Detoxify renames the Jigsaw class names of its checkpoints to these.
_DETOXIFY_RENAME = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _progress(total: int, desc: str):
    from .runtime import progress

    return progress(total, desc, "text", disable=total == 0)


class Scorer:
    """``score(texts) -> float [N]`` (toxicity probability) and ``score_all(texts) -> {label: [N]}``."""

    name: str = "scorer"
    version: str = "unknown"
    labels: tuple[str, ...] = ()
    toxicity_label: str = "toxicity"
    default_batch_size: int = 64

    def score_all(self, texts: Sequence[str], batch_size: int | None = None) -> dict[str, np.ndarray]:
        """``{label: float64 [N]}`` for every label the scorer has (``toxicity_label`` among them)."""
        raise NotImplementedError

    def score(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Toxicity probability per text, float64 ``[N]`` in [0, 1]."""
        return np.asarray(self.score_all(texts, batch_size)[self.toxicity_label], dtype=np.float64)

    def describe(self) -> str:
        return f"{self.name} ({self.version})"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("score() takes a list of texts, not a single string")
    return list(texts)


# ----------------------------------------------------------------------------------- BiLSTM


class BiLSTMScorer(Scorer):
    name = "bilstm"
    toxicity_label = "toxic"
    default_batch_size = 256

    def __init__(self, device: str = "cpu", model_dir: str | Path | None = None):
        from .bilstm import LABELS, BiLSTMToxicity

        self.model = BiLSTMToxicity(model_dir=model_dir, device=device)
        self.labels = LABELS
        self.version = f"{BiLSTMToxicity.name} {self.model.version} (torch port)"

    def score_all(self, texts, batch_size=None):
        texts = _check_texts(texts)
        batch_size = batch_size or self.default_batch_size
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        step = batch_size * 8  # tokenise and report progress in chunks; the model batches inside
        with _progress(len(texts), "bilstm") as bar:
            for s in range(0, len(texts), step):
                chunk = texts[s:s + step]
                out[s:s + len(chunk)] = self.model.predict(chunk, batch_size=batch_size)
                bar.update(len(chunk))
        return {lab: out[:, i].astype(np.float64) for i, lab in enumerate(self.labels)}


# -------------------------------------------------------------------------- profanity-check


class ProfanityCheckScorer(Scorer):
    name = "profanity-check"
    labels = ("profanity",)
    toxicity_label = "profanity"
    default_batch_size = 1024

    def __init__(self, device: str = "cpu"):
        try:
            from profanity_check import predict_prob
        except ImportError as e:
            raise InputError(f"scorer 'profanity-check' needs the alt-profanity-check package ({e})") from None
        self._predict = predict_prob
        self.version = f"alt-profanity-check {_version('alt-profanity-check')}"

    def score_all(self, texts, batch_size=None):
        texts = _check_texts(texts)
        out = np.empty(len(texts), dtype=np.float64)
        step = batch_size or self.default_batch_size
        with _progress(len(texts), "profanity-check") as bar:
            for s in range(0, len(texts), step):
                chunk = texts[s:s + step]
                out[s:s + len(chunk)] = self._predict(chunk)
                bar.update(len(chunk))
        return {"profanity": out}


# --------------------------------------------------------------------------------- Detoxify


def reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Quick connectivity probe (DNS + TCP connect), bounded by ``timeout`` even if DNS hangs.
    Probes the HTTPS proxy instead when one is configured."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if u.hostname:
            host, port = u.hostname, u.port or 8080
    result: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 0.5)
    return bool(result and result[0])


def detoxify_url(model_type: str) -> str:
    from detoxify.detoxify import MODEL_URLS

    return MODEL_URLS[model_type]


def detoxify_cache_path(model_type: str = "original") -> Path:
    """Where ``torch.hub`` keeps a downloaded Detoxify checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(detoxify_url(model_type)).path)


def _load_detoxify_checkpoint(path: Path) -> dict:
    import pickle

    import torch

    if not path.is_file():
        raise InputError(f"Detoxify checkpoint {path} does not exist" if not path.exists() else
                         f"Detoxify checkpoint {path} is not a file")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ModuleNotFoundError) as e:
        msg = " ".join(str(e).split())[:200]
        raise InputError(f"Detoxify checkpoint {path} cannot be read ({type(e).__name__}: {msg})") from None
    expected = ("expected a dict with 'state_dict' and 'config': {'arch': {'args': {'model_type', 'model_name', "
                "'tokenizer_name', 'num_classes'}}, 'dataset': {'args': {'classes'}}}")
    try:
        args = loaded["config"]["arch"]["args"]
        classes = loaded["config"]["dataset"]["args"]["classes"]
        ok = isinstance(loaded["state_dict"], dict) and all(k in args for k in ("model_type", "model_name", "tokenizer_name", "num_classes"))
        ok = ok and isinstance(classes, (list, tuple)) and len(classes) == int(args["num_classes"])
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"Detoxify checkpoint {path} is not in Detoxify's format: {expected}")
    return loaded


class DetoxifyScorer(Scorer):
    """A Detoxify checkpoint (downloaded by torch.hub, found in its cache, or given as a file)."""

    toxicity_label = "toxicity"
    default_batch_size = 32

    def __init__(self, model_type: str = "original", device: str = "cpu", checkpoint: str | Path | None = None,
                 hf_config_dir: str | Path | None = None, allow_download: bool = True):
        import torch

        if model_type not in DETOXIFY_TYPES:
            raise InputError(f"unknown Detoxify model '{model_type}'; expected one of {', '.join(DETOXIFY_TYPES)}")
        self.name = f"detoxify-{model_type}"
        if checkpoint is None:
            cached = detoxify_cache_path(model_type)
            if cached.is_file():
                checkpoint = cached
            elif not allow_download or hub_offline() or not reachable("github.com"):
                raise InputError(f"Detoxify '{model_type}' weights are not available offline: no {cached}, and no network "
                                 f"(or HF_HUB_OFFLINE is set); pass --checkpoint PATH, or use --scorer bilstm")
            else:
                log.info("downloading Detoxify '%s' weights into %s", model_type, cached.parent)
                try:
                    torch.hub.load_state_dict_from_url(detoxify_url(model_type), map_location="cpu", weights_only=False)
                except Exception as e:  # network failure mid-way: one line
                    raise InputError(f"could not download Detoxify '{model_type}' weights ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:200]})") from None
                checkpoint = cached
        self.checkpoint = Path(checkpoint)
        loaded = _load_detoxify_checkpoint(self.checkpoint)
        args = dict(loaded["config"]["arch"]["args"])
        self.class_names = [_DETOXIFY_RENAME.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
        if self.toxicity_label not in self.class_names:
            raise InputError(f"Detoxify checkpoint {self.checkpoint} has no 'toxic'/'toxicity' class (classes: {self.class_names})")
        self.labels = tuple(self.class_names)
        source = str(hf_config_dir) if hf_config_dir else str(args["model_type"])
        if hf_config_dir and not (Path(hf_config_dir) / "config.json").is_file():
            raise InputError(f"hf_config_dir {hf_config_dir} has no config.json")
        local = Path(source).expanduser().is_dir()
        # Detoxify 0.5.4 always asks the hub for model_type's config; we only do so when the hub is reachable.
        local_only = not local and (hub_offline() or not reachable("huggingface.co"))
        import transformers

        for cls_name in (args["model_name"], args["tokenizer_name"]):
            if not hasattr(transformers, str(cls_name)):
                raise InputError(f"Detoxify checkpoint {self.checkpoint}: transformers has no class '{cls_name}'")
        model_cls = getattr(transformers, args["model_name"])
        tok_cls = getattr(transformers, args["tokenizer_name"])
        try:
            config = model_cls.config_class.from_pretrained(source, num_labels=int(args["num_classes"]), local_files_only=local_only)
            self.model = model_cls.from_pretrained(None, config=config, state_dict=loaded["state_dict"])
            self.tokenizer = tok_cls.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            hint = ("" if local else f"; the checkpoint's model_type '{source}' is not a local folder and the hub is "
                    f"unreachable or switched off: pass --hf_config_dir FOLDER (config.json + tokenizer files)")
            raise InputError(f"cannot build the Detoxify model from {self.checkpoint} "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]}){hint}") from None
        del loaded
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.version = f"detoxify {_version('detoxify')} ({self.checkpoint.name}, {args['model_name']})"

    def score_all(self, texts, batch_size=None):
        import torch

        texts = _check_texts(texts)
        n = len(texts)
        out = np.empty((n, len(self.class_names)), dtype=np.float64)
        order = sorted(range(n), key=lambda i: len(texts[i]))  # similar lengths together: less padding
        step = batch_size or self.default_batch_size
        with _progress(n, self.name) as bar, torch.inference_mode():
            for s in range(0, n, step):
                idx = order[s:s + step]
                enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", truncation=True, padding=True)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc)[0]
                out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
                bar.update(len(idx))
        return {lab: out[:, i] for i, lab in enumerate(self.class_names)}


# ---------------------------------------------------------------------------------- factory


def check_scorer_name(name: str) -> str:
    name = (name or "").strip().lower()
    if name not in KNOWN_SCORERS:
        raise InputError(f"unknown scorer '{name}'; known scorers: {', '.join(KNOWN_SCORERS)}")
    return name


def get_scorer(name: str = "auto", device: str = "cpu", checkpoint: str | Path | None = None,
               hf_config_dir: str | Path | None = None) -> Scorer:
    """Build a scorer by name (see the module docstring). ``checkpoint`` is for the Detoxify scorers."""
    name = check_scorer_name(name)
    if name == "bilstm":
        return BiLSTMScorer(device=device)
    if name == "profanity-check":
        return ProfanityCheckScorer(device=device)
    if name.startswith("detoxify-"):
        return DetoxifyScorer(name.split("-", 1)[1], device=device, checkpoint=checkpoint, hf_config_dir=hf_config_dir)
    # auto
    if checkpoint:
        return DetoxifyScorer("original", device=device, checkpoint=checkpoint, hf_config_dir=hf_config_dir)
    cached = detoxify_cache_path("original")
    reason = None
    if cached.is_file() or (not hub_offline() and reachable("github.com")):
        try:
            return DetoxifyScorer("original", device=device, hf_config_dir=hf_config_dir)
        except InputError as e:
            reason = str(e)
    else:
        reason = f"no {cached} and no network" + (" (HF_HUB_OFFLINE is set)" if hub_offline() else "")
    scorer = BiLSTMScorer(device=device)
    log.warning("scorer auto: Detoxify 'original' is not available (%s); scoring with the embedded BiLSTM (%s) instead",
                reason, scorer.version)
    return scorer
