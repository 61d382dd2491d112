"""Data through Hugging Face ``datasets``: prompt sources for step 3, and any text to score in step 4.

Prompts (:func:`load_prompts`) come from ``rtp:<split>`` (the embedded RealToxicityPrompts split, read in
place), a local file (``.jsonl``/``.json``, ``.txt`` one a line, ``.csv``, ``.tsv``, ``.parquet``), a folder
written by ``Dataset.save_to_disk``, or a hub dataset id (``allenai/real-toxicity-prompts``; where a network
exists). Files go through ``load_dataset`` and its cache; when it cannot read a local text file, or a row
has no usable prompt, the strict reader of :mod:`detox_pa.io` names the file, line and field. Options: the
field (``auto``: ``prompt``, or ``prompt.text`` when it is RTP's dict; ``text`` for ``.txt``), the split, a
row filter (``challenging=true``) and a cap.

Texts to score (:func:`load_scoring_input`) are the paper's nested generations JSON, a ``.txt`` file (one
text a line), a JSONL of ``{"text"}`` (optionally with ``"prompt"``), or a DExperts-style JSONL of
``{"prompt", "generations": [{"text"}]}``. Every form comes back as nested alpha blocks (``alpha`` is None
for the forms that have none), so the scorers and their aggregates treat all of them alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .artifacts import PAIRS_KEY
from .errors import InputError

log = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv", ".tsv": "csv", ".tab": "csv",
            ".parquet": "parquet"}
PROMPT_FORMATS = ("rtp:<split>, .jsonl/.json ({'prompt': str} or RTP's {'prompt': {'text': str}}), .txt (one a "
                  "line), .csv, .tsv, .parquet, a folder saved with Dataset.save_to_disk, or a hub dataset id")
SCORING_FORMATS = (f"the paper's nested generations JSON ([{{'alpha', '{PAIRS_KEY}'}}]), .txt (one text a line), "
                   "JSONL {'text'} (optionally with 'prompt'), or DExperts JSONL {'prompt', 'generations': [{'text'}]}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _offline() -> bool:
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _quiet_datasets() -> None:
    import datasets

    # its loaders log a failure before raising it; we turn the exception itself into one line (below)
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    from .runtime import on_terminal

    if not on_terminal():
        datasets.disable_progress_bars()


def load_table(source: str, split: str = "train", what: str = "prompts"):
    """A ``datasets.Dataset`` for a local file, a ``save_to_disk`` folder or a hub id (one split)."""
    import datasets

    _quiet_datasets()
    p = Path(source).expanduser()
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"{what} {p} is a folder but not one written by Dataset.save_to_disk "
                             f"({str(e).splitlines()[0][:120]})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise InputError(f"{what} {p}: no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
        return ds
    if p.exists():
        builder = BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise InputError(f"{what} {p}: unknown format '{p.suffix}'; expected {PROMPT_FORMATS}")
        kw = {"delimiter": "\t"} if p.suffix.lower() in (".tsv", ".tab") else {}
        return datasets.load_dataset(builder, data_files=str(p), split="train", **kw)
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")) and not (p.parent != Path(".") and p.parent.exists()):
        if _offline():
            raise InputError(f"{what} {source} is not a local file or folder, and hub access is off (HF_HUB_OFFLINE=1); "
                             f"download it where a network exists, or give a local file")
        try:
            return datasets.load_dataset(source, split=split)
        except Exception as e:  # noqa: BLE001 - the hub and the builders raise many types
            raise InputError(f"{what} {source}: cannot load it from the hub ({' '.join(str(e).split())[:200]})") from None
    raise InputError(f"{what} {source} does not exist (expected {PROMPT_FORMATS})")


def _get(row: dict, path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def parse_filter(spec: str) -> list[tuple[str, Any]]:
    """``key=value[,key=value]`` (dotted keys; values read as JSON, else as strings): rows where all hold."""
    out = []
    for part in [s.strip() for s in (spec or "").split(",") if s.strip()]:
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--prompt_filter {spec!r}: expected key=value (e.g. challenging=true)")
        try:
            value = json.loads(raw.strip())
        except json.JSONDecodeError:
            value = raw.strip()
        out.append((key.strip(), value))
    return out


def _auto_field(ds, source: str) -> str:
    cols = ds.column_names
    if "prompt" in cols:
        first = ds[0]["prompt"]  # RealToxicityPrompts keeps the text in a dict with its scores
        return "prompt.text" if isinstance(first, dict) and "text" in first else "prompt"
    if Path(source).suffix.lower() == ".txt" and "text" in cols:
        return "text"
    raise InputError(f"prompts {source}: no 'prompt' column (columns: {', '.join(cols[:8])}); name the field with "
                     f"--prompt_field (e.g. prompt.text)")


def load_prompts(source: str, field: str = "auto", split: str = "train", where: str = "", max_prompts: int = 0) -> list[str]:
    """The prompt strings of ``source`` (see the module docstring), filtered by ``where`` and capped."""
    from .io import EMBEDDED_PROMPTS, read_prompts

    conditions = parse_filter(where)
    if str(source).startswith(EMBEDDED_PROMPTS):
        if conditions or field != "auto":
            raise InputError(f"prompts {source}: the embedded split takes no --prompt_field or --prompt_filter")
        prompts = read_prompts(source)
        return prompts[:max_prompts] if max_prompts else prompts
    local_text = Path(source).is_file() and Path(source).suffix.lower() in (".jsonl", ".json", ".txt")
    try:
        return _prompts_of_table(load_table(source, split), source, field, conditions, where, max_prompts)
    except InputError as e:
        if not (local_text and field == "auto" and not conditions):
            raise
        problem = e
    except Exception as e:  # noqa: BLE001 - datasets and pyarrow raise many types (bad JSON, bad UTF-8 ...)
        if not (local_text and field == "auto" and not conditions):
            raise InputError(f"prompts {source}: cannot be read ({' '.join(str(e).split())[:200]})") from None
        problem = None
    # a local text file in one of the original forms: the strict reader names the line and the field of what is
    # wrong, and reads the older forms datasets does not (a JSON list of strings)
    prompts = read_prompts(source)
    log.debug("datasets could not read %s (%s); the strict reader did", source, problem)
    return prompts[:max_prompts] if max_prompts else prompts


def _prompts_of_table(ds, source: str, field: str, conditions, where: str, max_prompts: int) -> list[str]:
    if len(ds) == 0:
        raise InputError(f"prompts {source} hold no rows")
    name = _auto_field(ds, source) if field == "auto" else field
    if name.split(".")[0] not in ds.column_names:
        raise InputError(f"prompts {source}: no field {name!r} (columns: {', '.join(ds.column_names[:8])})")
    if conditions:
        for key, _ in conditions:
            if key.split(".")[0] not in ds.column_names:
                raise InputError(f"--prompt_filter: prompts {source} have no field {key!r} "
                                 f"(columns: {', '.join(ds.column_names[:8])})")
        ds = ds.filter(lambda row: all(_get(row, k) == v for k, v in conditions))
        log.info("--prompt_filter %s: %d rows of %s kept", where, len(ds), source)
    text_lines = name == "text" and Path(source).suffix.lower() == ".txt"
    prompts = []
    for i, row in enumerate(ds):
        value = _get(row, name)
        if text_lines and not str(value or "").strip():
            continue  # a blank line of a text file
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"prompts {source}: row {i}: field {name!r} is "
                             f"{'empty' if isinstance(value, str) else 'not a string'}")
        prompts.append(value.rstrip("\r") if text_lines else value)
        if max_prompts and len(prompts) >= max_prompts:
            break
    if not prompts:
        raise InputError(f"prompts {source} hold no prompts" + (f" after --prompt_filter {where}" if conditions else ""))
    return prompts


# ------------------------------------------------------------------------------ texts to score


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    from .io import json_error

    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise json_error(path, e, n) from None
    return rows


def _prompt_text(value: Any, where: str) -> str:
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str):
        raise InputError(f"{where}: field 'prompt' must be a string or {{'text': str}}")
    return value


def load_scoring_input(path: str | os.PathLike) -> tuple[list[dict], str]:
    """``(blocks, form)``: nested alpha blocks for any input the scorers accept (see the module docstring).
    ``form`` is ``nested``, ``texts`` or ``dexperts``. Pairs carry ``prompt``, ``response`` (what toxicity
    scores), ``continuation`` (what PPL scores after the prompt), ``prompt_index`` and ``sample``."""
    from .io import read_generations, read_text

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return read_generations(p), "nested"
    text = read_text(p, "input file")
    if suffix == ".txt":
        lines = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()]
        pairs = [{"prompt": "", "response": t, "continuation": t, "prompt_index": i, "sample": 0}
                 for i, t in enumerate(lines)]
        return [{"alpha": None, PAIRS_KEY: pairs}], "texts"
    if suffix != ".jsonl":
        raise InputError(f"input {p}: unknown format '{p.suffix}'; expected {SCORING_FORMATS}")
    rows = _jsonl_rows(p, text)
    if not rows:
        raise InputError(f"input file {p} is empty")
    pairs: list[dict] = []
    forms = set()
    for i, (n, obj) in enumerate(rows):
        where = f"{p}:{n}"
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object; known formats: {SCORING_FORMATS}")
        if isinstance(obj.get("generations"), list):
            forms.add("dexperts")
            prompt = _prompt_text(obj.get("prompt", ""), where)
            for k, g in enumerate(obj["generations"]):
                t = g.get("text") if isinstance(g, dict) else g
                if not isinstance(t, str):
                    raise InputError(f"{where}: generation {k} has no 'text' string")
                pairs.append({"prompt": prompt, "response": t, "continuation": t, "prompt_index": i, "sample": k})
        elif isinstance(obj.get("text"), str):
            forms.add("texts")
            prompt = _prompt_text(obj.get("prompt", ""), where)
            pairs.append({"prompt": prompt, "response": obj["text"], "continuation": obj["text"], "prompt_index": i,
                          "sample": 0})
        else:
            raise InputError(f"{where}: no 'text' and no 'generations' list (fields found: {sorted(obj)[:8]}); "
                             f"known formats: {SCORING_FORMATS}")
    if len(forms) > 1:
        raise InputError(f"{p}: mixes {{'text'}} rows and DExperts rows; give one form per file")
    return [{"alpha": None, PAIRS_KEY: pairs}], forms.pop()
