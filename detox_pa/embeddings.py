"""Embedding matrices read straight from a model folder's weight files: the safetensors header first (to
find the key and its shape without reading a tensor), then the one tensor; ``.bin`` checkpoints and whole-model
loading are fallbacks. Step 2 (:mod:`detox_pa.alignment`) reads only these matrices, never two whole models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import InputError

log = logging.getLogger(__name__)

SPACES = ("input", "output")
# Keys of the input embedding, as a dotted suffix (``model.embed_tokens.weight`` ends with ``embed_tokens.weight``)
INPUT_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
              "tok_embeddings.weight")
# Keys of the output layer (lm_head); ``output.weight`` only as a whole key (``*.attention.output.weight`` is not one)
OUTPUT_KEYS = ("lm_head.weight", "embed_out.weight")
OUTPUT_EXACT = ("output.weight",)


# ------------------------------------------------------------------------------ reading embeddings


@dataclass
class EmbeddingRef:
    """Where one embedding matrix lives. ``source`` is ``safetensors``, ``bin`` or ``model``."""

    model: str
    space: str
    source: str
    file: str | None
    key: str | None
    shape: tuple[int, int] | None
    tied: bool  # the output space was requested and the input embedding is used (tied weights)

    def describe(self) -> dict:
        return {"source": self.source, "file": self.file, "key": self.key,
                "shape": list(self.shape) if self.shape else None, "tied": self.tied}


def _read_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_value(cfg: dict, name: str):
    if name in cfg:
        return cfg[name]
    text = cfg.get("text_config")
    if isinstance(text, dict) and name in text:
        return text[name]
    return None


def _matches(key: str, suffixes: Sequence[str], exact: Sequence[str] = ()) -> bool:
    return key in exact or any(key == s or key.endswith("." + s) for s in suffixes)


def _pick(shapes: dict[str, tuple], suffixes, exact, vocab_size, hidden_size) -> str | None:
    cands = [k for k, s in shapes.items() if _matches(k, suffixes, exact) and len(s) == 2]
    if hidden_size:
        cands = [k for k in cands if shapes[k][1] == hidden_size] or cands
    if not cands:
        return None
    # rows equal to the config's vocab size first, then the shortest key (the text model's own), then by name
    return sorted(cands, key=lambda k: (shapes[k][0] != vocab_size, len(k), k))[0]


def _wanted_from_index(index: Path, what: str) -> dict[str, Path]:
    """The shard holding each embedding / output-layer tensor named by a Hugging Face weights index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{index}: not a valid {what} index (expected a 'weight_map' object): {e}") from None
    return {k: index.parent / f for k, f in weight_map.items() if _matches(k, INPUT_KEYS + OUTPUT_KEYS, OUTPUT_EXACT)}


def _safetensors_shapes(folder: Path) -> tuple[dict[str, tuple], dict[str, Path], list[Path]]:
    """Tensor shapes and the file holding each tensor, from headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    where: dict[str, Path] = {}
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wanted = _wanted_from_index(index, "safetensors")
        files = sorted(set(wanted.values()))
        for f in files:
            if not f.exists():
                raise InputError(f"{index} names shard {f.name}, which is missing from {folder}")
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    if k in wanted:
                        shapes[k] = tuple(h.get_slice(k).get_shape())
                        where[k] = f
        return shapes, where, [index]
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    shapes[k] = tuple(h.get_slice(k).get_shape())
                    where[k] = f
        except Exception as e:  # noqa: BLE001 - a corrupt header: one line naming the file
            raise InputError(f"{f}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None
    return shapes, where, files


def _bin_files(folder: Path) -> list[Path]:
    index = folder / "pytorch_model.bin.index.json"
    if index.exists():
        return sorted(set(_wanted_from_index(index, "weights").values()))
    return sorted(folder.glob("*.bin"))


def _looked_for(space: str) -> str:
    keys = [f"*{k}" for k in INPUT_KEYS]
    if space == "output":
        keys = [f"*{k}" for k in OUTPUT_KEYS] + list(OUTPUT_EXACT) + ["(tied) " + keys[0]] + keys[1:]
    return ", ".join(keys)


def find_embedding(model: str, space: str = "input", what: str = "model") -> EmbeddingRef:
    """Locate the embedding matrix of ``model`` (a local folder or a hub id) without loading it.

    Local folders: safetensors (one file, several, or sharded with ``model.safetensors.index.json``:
    only the headers are read here, and later only the one tensor), else PyTorch ``*.bin`` files
    (memory-mapped). A hub id (only where a network exists) falls back to loading the whole model.

    ``space="output"`` is the output layer (``lm_head``), or the input embedding when the weights
    are tied and the file holds no separate output layer. Raises :class:`InputError` when a local
    folder holds no embedding tensor."""
    if space not in SPACES:
        raise InputError(f"embedding space must be one of {SPACES}, got {space!r}")
    folder = Path(model)
    if not folder.is_dir():  # a hub id: only a full model load can get it
        return EmbeddingRef(model, space, "model", None, None, None, False)
    cfg = _read_config(folder)
    vocab_size = _config_value(cfg, "vocab_size")
    hidden_size = _config_value(cfg, "hidden_size") or _config_value(cfg, "n_embd") or _config_value(cfg, "d_model")
    tie_flag = _config_value(cfg, "tie_word_embeddings")
    tie = True if tie_flag is None else bool(tie_flag)

    def choose(shapes: dict[str, tuple]) -> tuple[str | None, bool]:
        if space == "output":
            k = _pick(shapes, OUTPUT_KEYS, OUTPUT_EXACT, vocab_size, hidden_size)
            if k is not None:
                return k, False
            if not tie:
                return None, False
            return _pick(shapes, INPUT_KEYS, (), vocab_size, hidden_size), True
        return _pick(shapes, INPUT_KEYS, (), vocab_size, hidden_size), False

    shapes, where, files = _safetensors_shapes(folder)
    if files:
        key, tied = choose(shapes)
        if key is None:
            names = ", ".join(f.name for f in files[:4])
            extra = (" (config.json says tie_word_embeddings=false, so the input embedding cannot stand in)"
                     if space == "output" and not tie else "")
            raise InputError(f"{what}: no {space} embedding tensor found in {folder}/{names}: looked for keys "
                             f"{_looked_for(space)} among {len(shapes)} tensors{extra}")
        return EmbeddingRef(model, space, "safetensors", str(where[key]), key, tuple(shapes[key]), tied)
    bins = _bin_files(folder)
    if bins:
        return EmbeddingRef(model, space, "bin", str(bins[0]), None, None, False)
    raise InputError(f"{what}: no embedding tensor found: folder {folder} holds no weights file "
                     f"(looked for *.safetensors, model.safetensors.index.json, *.bin, pytorch_model.bin.index.json)")


def load_embedding(ref: EmbeddingRef, what: str = "model") -> tuple[torch.Tensor, EmbeddingRef]:
    """The float32 embedding matrix (vocab x hidden), and the reference completed with key and shape."""
    if ref.source == "safetensors":
        from safetensors import safe_open

        with safe_open(ref.file, "pt") as h:
            w = h.get_tensor(ref.key)
        return w.float(), ref
    if ref.source == "bin":
        files = _bin_files(Path(ref.model))
        state: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                part = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - old (non-zip) format cannot be memory-mapped
                part = torch.load(str(f), map_location="cpu", weights_only=True)
            state.update({k: v for k, v in part.items() if _matches(k, INPUT_KEYS + OUTPUT_KEYS, OUTPUT_EXACT)})
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        cfg = _read_config(Path(ref.model))
        vocab_size = _config_value(cfg, "vocab_size")
        hidden = _config_value(cfg, "hidden_size") or _config_value(cfg, "n_embd")
        tie_flag = _config_value(cfg, "tie_word_embeddings")
        tied = False
        key = None
        if ref.space == "output":
            key = _pick(shapes, OUTPUT_KEYS, OUTPUT_EXACT, vocab_size, hidden)
            if key is None and (tie_flag is None or tie_flag):
                key, tied = _pick(shapes, INPUT_KEYS, (), vocab_size, hidden), True
        else:
            key = _pick(shapes, INPUT_KEYS, (), vocab_size, hidden)
        if key is None:
            raise InputError(f"{what}: no {ref.space} embedding tensor found in {', '.join(f.name for f in files)}: "
                             f"looked for keys {_looked_for(ref.space)}")
        w = state[key].float().clone()
        return w, EmbeddingRef(ref.model, ref.space, "bin", ref.file, key, tuple(w.shape), tied)
    # last resort: load the whole model (a hub id, or weights in a format we do not read directly)
    from transformers import AutoModelForCausalLM

    log.info("%s: reading the %s embedding by loading the whole model %s", what, ref.space, ref.model)
    model = AutoModelForCausalLM.from_pretrained(ref.model, dtype=torch.float32)
    tied = False
    if ref.space == "output" and model.get_output_embeddings() is not None:
        w = model.get_output_embeddings().weight
        tied = w.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    else:
        w = model.get_input_embeddings().weight
        tied = ref.space == "output"
    w = w.detach().float().clone()
    del model
    return w, EmbeddingRef(ref.model, ref.space, "model", None, "get_%s_embeddings()" % ref.space, tuple(w.shape), tied)
