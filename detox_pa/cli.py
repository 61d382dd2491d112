"""Shared command-line plumbing for the five top-level scripts.

Every script is ``parse_args(argv) -> args`` plus ``main(args)``; :func:`run` wraps them so that
bad input prints exactly one line (``error: ...``) and exits non-zero, with no traceback unless
``--debug`` or ``DEBUG=1`` is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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

    return _Parser(dataclass_types, description=description)


def parse_dataclasses(dataclass_types, argv: Sequence[str] | None, description: str | None = None):
    """Parse ``argv`` into the given dataclasses (HfArgumentParser). Returns a tuple."""
    parser = _make_parser(dataclass_types, description)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except InputError:
        raise
    except ValueError as e:  # HfArgumentParser / TrainingArguments validation
        raise InputError(str(e).splitlines()[0] if str(e) else repr(e)) from e


def args_to_dict(*objs: Any) -> dict:
    """JSON-safe dict of dataclass arguments (for logging and sidecars)."""
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
            try:
                json.dumps(v)
                out[k] = v
            except TypeError:
                out[k] = str(v)
    return out


def log_args(*objs: Any) -> None:
    log.info("arguments: %s", json.dumps(args_to_dict(*objs), sort_keys=True))


def run(main: Callable[[Any], Any], parse_args: Callable[[Sequence[str] | None], Any],
        argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn errors into one line on stderr. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("DEBUG", "0") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    setup_logging()
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
