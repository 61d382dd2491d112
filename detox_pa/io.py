"""Atomic writes, hashes, and checked reads of text and JSON (the file formats themselves are read in
:mod:`detox_pa.data`).

Every reader validates its input and raises :class:`InputError` with the file, the line or the
field, and what was expected. Every writer writes a temporary file in the destination folder
and renames it into place, so a killed run leaves the previous file or nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def load_tensor_file(path: str | os.PathLike, key: str, what: str, optional: bool = False):
    """``torch.load(path)[key]`` (or the bare tensor), checked: the file exists, loads with
    ``weights_only=True``, holds a tensor, and every value is finite. Shape checks are the caller's. ``optional``:
    None when the file is a dict without ``key``."""
    import torch

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{what} {p} cannot be read by torch.load ({type(e).__name__})") from None
    if optional and isinstance(obj, dict) and key not in obj:
        return None
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


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise json_error(p, e) from None
