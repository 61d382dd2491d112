"""Shared command-line plumbing for the five top-level scripts.

Every script is ``parse_args(argv) -> args`` plus ``main(args)``; :func:`run` wraps them so that
bad input prints exactly one line (``error: ...``) and exits non-zero, with no traceback unless
``--debug`` or ``DEBUG=1`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Sequence

from .errors import InputError

log = logging.getLogger("detox_pa")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest's capture swaps it between tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_detox_pa", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._detox_pa = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _make_parser(dataclass_types, description: str | None):
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message):  # argparse prints two lines and exits 2; we want one line
            raise InputError(f"argument error: {message} (see --help)")

    parser = _Parser(dataclass_types, description=description)
    parser.add_argument("--config", metavar="FILE", help="A JSON or YAML file of argument values (keys = the flag "
                        "names without '--'), read where it stands: flags after it override it.")
    # HfArgumentParser gives a boolean that defaults to true a --no_<name> twin with the same help text
    for action in parser._actions:
        if f"--no_{action.dest}" in action.option_strings and action.help not in (None, "==SUPPRESS=="):
            action.help = f"Turn --{action.dest} off (it is on by default)."
            action.default = argparse.SUPPRESS  # the value comes from --<name>'s default; no "(default: False)"
    return parser


def _config_tokens(path: str, known: set[str]) -> list[str]:
    """The argv tokens for a --config file's values, checked key by key."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 (json and yaml raise their own types)
        raise InputError(f"--config {path}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise InputError(f"--config {path}: expected a mapping of argument names to values, got {type(values).__name__}")
    out: list[str] = []
    for k, v in values.items():
        if k not in known:
            raise InputError(f"--config {path}: unknown argument {k!r}")
        if v is None:
            continue
        out.append(f"--{k}")
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, (list, tuple)):
            out += [str(x) for x in v]
        else:
            out.append(str(v))
    return out


def expand_config(argv: Sequence[str], dataclass_types) -> list[str]:
    """``--config FILE`` (or ``--config=FILE``) replaced, where it stands, by the file's values as flags: as
    everywhere in argparse the later value wins, so flags after ``--config`` override the file and flags
    before it are overridden by it."""
    argv = list(argv)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise InputError("--config needs a file")
            out += _config_tokens(argv[i + 1], known)
            i += 2
            continue
        if a.startswith("--config="):
            out += _config_tokens(a.split("=", 1)[1], known)
        else:
            out.append(a)
        i += 1
    return out


def parse_dataclasses(dataclass_types, argv: Sequence[str] | None, description: str | None = None):
    """Parse ``argv`` into the given dataclasses (HfArgumentParser). Returns a tuple."""
    parser = _make_parser(dataclass_types, description)
    argv = expand_config(sys.argv[1:] if argv is None else argv, dataclass_types)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)[:len(dataclass_types)])
    except InputError:
        raise
    except ValueError as e:  # HfArgumentParser / TrainingArguments validation
        raise InputError(str(e).splitlines()[0] if str(e) else repr(e)) from e


_SECRET = re.compile(r"(^|_)token$")  # hub_token, push_to_hub_token: never logged, never in a sidecar


def _json_safe(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def require_min(obj: Any, names: Sequence[str], minimum: int) -> None:
    """Each named integer argument of ``obj`` is at least ``minimum``, or a one-line error naming the flag."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise InputError(f"--{name} must be >= {minimum}, got {value}")


def args_to_dict(*objs: Any) -> dict:
    """JSON-safe dict of dataclass arguments (for sidecars); secrets such as ``hub_token`` are left out."""
    out: dict = {}
    for obj in objs:
        if obj is None:
            continue
        if hasattr(obj, "to_dict"):  # TrainingArguments
            d = obj.to_dict()
        elif dataclasses.is_dataclass(obj):
            d = dataclasses.asdict(obj)
        else:
            d = dict(vars(obj))
        for k, v in d.items():
            if not _SECRET.search(k):
                out[k] = _json_safe(v)
    return out


_NO_DEFAULT = object()


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _NO_DEFAULT


def non_default_args(*objs: Any) -> dict:
    """The arguments whose values differ from their dataclass defaults (secrets left out)."""
    out: dict = {}
    for obj in objs:
        if obj is None or not dataclasses.is_dataclass(obj):
            continue
        try:  # the defaults as __post_init__ leaves them (TrainingArguments rewrites several)
            ref = type(obj)()
        except Exception:  # noqa: BLE001 - a dataclass whose defaults do not validate alone: the field defaults
            ref = None
        for f in dataclasses.fields(obj):
            if _SECRET.search(f.name) or not f.init:
                continue
            v = getattr(obj, f.name)
            d = getattr(ref, f.name, _NO_DEFAULT) if ref is not None else _default_of(f)
            same = v == d or (isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(v, (int, float))
                              and not isinstance(v, bool) and float(v) == float(d))
            if not same:
                out[f.name] = _json_safe(v)
    return out


def format_args(values: dict) -> str:
    """``key=value, key=value`` sorted by name (strings bare, the rest as JSON): one log line, easy to grep."""
    if not values:
        return "(all defaults)"
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                     for k, v in sorted(values.items()))


def log_args(*objs: Any) -> None:
    """The arguments that differ from the defaults (every value goes into the step's sidecar)."""
    log.info("arguments not at their defaults: %s", format_args(non_default_args(*objs)))


def run(main: Callable[[Any], Any], parse_args: Callable[[Sequence[str] | None], Any],
        argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn errors into one line on stderr. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("DEBUG", "0") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    setup_logging()
    from .runtime import quiet_library_progress

    quiet_library_progress()
    try:
        args = parse_args(argv)
        main(args)
        return 0
    except InputError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (partial work is kept in the journal / checkpoints; rerun to resume)", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # unexpected: still one line unless debugging
        if debug:
            traceback.print_exc()
        msg = " ".join(str(e).split())[:500]
        print(f"error: {type(e).__name__}: {msg} (rerun with DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def entry(main, parse_args) -> None:
    """``if __name__ == "__main__": entry(main, parse_args)``"""
    sys.exit(run(main, parse_args))
