"""The teacher: the first N decoder layers of any Hugging Face causal LM.

The teacher keeps the base model's input embeddings, its first ``N`` decoder blocks, its final
norm and its output layer. Only the configuration changes (the layer count and every per-layer
list such as Gemma-3's ``layer_types``), so the result is a plain model of the base's own class:
``save_pretrained`` then ``AutoModelForCausalLM.from_pretrained`` loads it back with no custom code.

Two entry points:

- :func:`truncate_causal_lm` cuts an already loaded model in place (finds the decoder
  ``ModuleList`` generically: ``model.layers`` in Llama / Mistral / Gemma / Qwen2,
  ``transformer.h`` in GPT-2, ``gpt_neox.layers``, ``model.decoder.layers`` ...).
- :func:`build_teacher` reads the base's ``config.json`` first (so a bad layer count fails before
  any weight is read), then loads only the first ``N`` layers' weights: a 3-layer teacher of a 7B
  model never holds the other 29 layers in memory.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from .errors import InputError

log = logging.getLogger(__name__)

# Names under which configs store the decoder depth (GPT-2's ``n_layer`` is also reachable as
# ``num_hidden_layers`` through its ``attribute_map``; the others cover older layouts).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

def parse_dtype(dtype: Any) -> Any:
    """``torch.dtype``, a name (``float32``, ``bfloat16``, ``float16``) or ``"auto"`` (the checkpoint's own)."""
    from .runtime import torch_dtype

    return dtype if dtype == "auto" else torch_dtype(dtype)


def text_config(config):
    """The decoder's config (the text part of a multimodal config, else the config itself)."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get(decoder=True)
        except TypeError:
            return get()
    return config


def layer_count(config) -> int:
    """Number of decoder layers a config declares."""
    cfg = text_config(config)
    for key in LAYER_COUNT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise InputError(f"config of type {type(cfg).__name__} declares no layer count "
                     f"(looked for {', '.join(LAYER_COUNT_KEYS)})")


def check_layer_count(total: int, n_layers: int, where: str) -> None:
    """``1 <= n_layers <= total`` or a one-line :class:`InputError` naming ``where``."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise InputError(f"num_teacher_layers must be at least 1, got {n_layers!r}")
    if n_layers > total:
        raise InputError(f"{where}: the base model has {total} decoder layers; "
                         f"num_teacher_layers {n_layers} is more than that")


def truncate_config(config, n_layers: int) -> list[str]:
    """Set the decoder depth of ``config`` (in place) to ``n_layers`` and cut every per-layer list
    (``layer_types``, and any other list attribute with ``layer`` or ``pattern`` in its name whose
    length is the old depth, e.g. Gemma-3n's ``activation_sparsity_pattern``). Returns the names of the changed fields."""
    cfg = text_config(config)
    total = layer_count(cfg)
    check_layer_count(total, n_layers, type(cfg).__name__)
    changed = []
    per_layer = {}
    for key, value in list(vars(cfg).items()):
        low = key.lower()
        if ("layer" in low or "pattern" in low) and isinstance(value, (list, tuple)) and len(value) == total:
            per_layer[key] = type(value)(value[:n_layers])
    key = next(k for k in LAYER_COUNT_KEYS if isinstance(getattr(cfg, k, None), int))
    setattr(cfg, key, n_layers)
    changed.append(key)
    for k, v in per_layer.items():
        setattr(cfg, k, v)
        changed.append(k)
    if layer_count(cfg) != n_layers:  # pragma: no cover - a config with an unusual layout
        raise RuntimeError(f"could not set the layer count of {type(cfg).__name__} to {n_layers}")
    return changed


def find_decoder_layers(model: nn.Module, total: int | None = None) -> tuple[str, nn.ModuleList]:
    """The decoder's block list: the ``nn.ModuleList`` of identical blocks whose length is the
    config's layer count (prefers a text decoder over e.g. a vision tower)."""
    if total is None:
        total = layer_count(model.config)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == total > 0]
    if len(candidates) > 1:
        def rank(item):
            name, module = item
            low = name.lower()
            return (any(w in low for w in ("vision", "visual", "image", "audio", "encoder", "vit")),  # text first
                    len({type(m) for m in module}) != 1,                 # identical blocks first
                    name.rsplit(".", 1)[-1] not in ("layers", "h", "blocks", "layer"),
                    name.count("."))
        candidates.sort(key=rank)
        best = [c for c in candidates if rank(c) == rank(candidates[0])]
        if len(best) > 1:
            raise RuntimeError(f"{type(model).__name__}: several decoder layer lists of length {total}: "
                               f"{[n for n, _ in best]}")
    if not candidates:
        raise RuntimeError(f"{type(model).__name__}: found no nn.ModuleList of {total} decoder layers")
    return candidates[0]


def truncate_causal_lm(model: nn.Module, n_layers: int) -> nn.Module:
    """Keep the first ``n_layers`` decoder layers of a loaded causal LM, in place; returns it.

    Embeddings, the final norm and the output layer are untouched; the config is updated so that
    ``save_pretrained`` + ``AutoModelForCausalLM.from_pretrained`` round-trips with no custom class."""
    total = layer_count(model.config)
    check_layer_count(total, n_layers, type(model).__name__)
    name, layers = find_decoder_layers(model, total)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(list(layers)[:n_layers]))
    truncate_config(model.config, n_layers)
    log.info("teacher: kept %d of %d decoder layers (%s)", n_layers, total, name)
    return model


@contextlib.contextmanager
def _quiet_load_report():
    """The weights of the dropped layers are 'unexpected' on purpose: hide transformers' report
    of them (we check the missing keys ourselves)."""
    # transformers checks its tensor-parallel plan only when modeling_utils' level is WARNING or above, so
    # raising that level makes it warn about unsharded layers: quiet that logger too
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


def base_layer_count(path: str) -> int:
    """Decoder depth of a base model, read from its ``config.json`` alone (no weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}/config.json: cannot read the model config "
                         f"({' '.join(str(e).split())[:200]})") from None
    return layer_count(config)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied weights counted once; DeepSpeed ZeRO-3 partitions counted whole)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", 0) or p.numel())
    return total


def load_teacher_model(path: str, n_layers: int, dtype=torch.float32, name: str | None = None):
    """The first ``n_layers`` decoder layers of the model in ``path`` (a resolved local folder or
    hub id). Only the kept layers' weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = parse_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}/config.json: cannot read the model config "
                         f"({' '.join(str(e).split())[:200]})") from None
    total = layer_count(config)
    check_layer_count(total, n_layers, f"{path}/config.json")
    truncate_config(config, n_layers)
    with _quiet_load_report():
        model, info = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                           output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    if missing:  # an unusual layout where the config trick misses weights: load all, then cut
        log.warning("teacher: loading with a %d-layer config left %d weights missing (%s ...); "
                    "loading the whole base and cutting it instead", n_layers, len(missing), missing[:3])
        del model
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        truncate_causal_lm(model, n_layers)
    else:
        layers_name, layers = find_decoder_layers(model, n_layers)
        log.info("teacher: loaded %d of %d decoder layers of %s (%s), %s parameters",
                 len(layers), total, name or path, layers_name, f"{parameter_count(model):,}")
    return model


def build_teacher(base: str, n_layers: int = 3, dtype=torch.float32):
    """``(model, tokenizer)``: the first ``n_layers`` decoder layers of ``base`` (an alias such as
    ``smollm2-135m``, a local Hugging Face folder, or a hub id where a network exists), untrained.

    The layer count is checked against ``config.json`` before any weight is read. Only the kept
    layers' weights are loaded."""
    from transformers import AutoTokenizer

    from .assets import resolve_model

    path = resolve_model(base, "teacher base model")
    model = load_teacher_model(path, n_layers, dtype, name=base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
