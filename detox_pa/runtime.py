"""Where and how a step runs, decided in one place.

- **Device**: one rule and one wording for every step. ``auto`` (the default everywhere) is the first
  CUDA GPU when one is visible, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked
  against the machine before any model loads.
- **Dtype**: ``auto`` is bfloat16 on a GPU that supports it (else float16), float32 on the CPU.
- **Distributed**: rank and world size under torchrun; the DeepSpeed single-process bootstrap.
- **Models**: loading a causal LM and its tokenizer for inference.
- **Logs**: library versions for sidecars; progress bars only on a terminal (a log file gets plain
  lines); DeepSpeed's accelerator probe told the answer, so it does not warn on CPU.

Nothing here loads a model at import time; torch is imported where it is needed.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import sys
import time
from typing import Any, Iterable, Sequence

from .errors import InputError

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_HELP = ("auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda, cuda:N or mps; "
               "checked before any model loads")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16"}
DTYPE_HELP = "auto (bfloat16 on a GPU that has it, else float16; float32 on the CPU), float32, bfloat16 or float16"


# ------------------------------------------------------------------------------------- device


def check_device_name(spec: str, flag: str = "--device") -> str:
    """The device string, syntax checked without importing torch (for argument validation)."""
    s = (spec or "").strip() or "auto"
    if not _DEVICE_RE.match(s):
        raise InputError(f"{flag} {spec!r} is not a device; expected {DEVICE_CHOICES}")
    return s


def resolve_device(spec: str, flag: str = "--device"):
    """``torch.device`` for ``spec``, checked against this machine (one wording for every step)."""
    import torch

    s = check_device_name(spec, flag)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(s)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"{flag} {s}: no CUDA GPU is visible on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"{flag} {s}: only {n} CUDA GPU(s) are visible (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"{flag} mps: Apple's GPU is not available on this machine (use --device cpu or auto)")
    return dev


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


# -------------------------------------------------------------------------------------- dtype


def check_dtype_name(name: str, flag: str = "--dtype", allow_auto: bool = True) -> str:
    """The canonical dtype name (``float32``, ``bfloat16``, ``float16`` or ``auto``), without torch."""
    n = (name or "").strip().lower()
    if allow_auto and n == "auto":
        return n
    if n not in DTYPE_ALIASES:
        raise InputError(f"{flag} {name!r} is not known; expected {'auto, ' if allow_auto else ''}"
                         f"{', '.join(DTYPE_NAMES)}")
    return DTYPE_ALIASES[n]


def torch_dtype(name: Any):
    """``torch.dtype`` of a name or alias (a ``torch.dtype`` passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, check_dtype_name(str(name), allow_auto=False))


def resolve_dtype(name: str, device) -> Any:
    """``auto`` by the device (see the module docstring), else the named dtype."""
    import torch

    n = check_dtype_name(name)
    if n != "auto":
        return torch_dtype(n)
    if getattr(device, "type", str(device)) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# -------------------------------------------------------------------------------- distributed


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)``; under torchrun (WORLD_SIZE > 1) the process group is initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_device(device, rank: int):
    """Under torchrun each rank takes its own GPU (``cuda:LOCAL_RANK``); other devices are shared."""
    import torch

    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return device


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_single_process(argv: list[str]) -> list[str]:
    """DeepSpeed without a launcher needs the torch.distributed variables (else it asks for mpi4py),
    and with no GPU visible it needs ``--use_cpu``. Returns the (possibly extended) argv."""
    launched = any(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))
    if not launched:
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}
        os.environ.update(env)
        log.info("--deepspeed without a launcher: running one process (%s)",
                 " ".join(f"{k}={v}" for k, v in env.items()))
    if not any(a == "--use_cpu" or a.startswith("--use_cpu=") for a in argv) and not gpu_visible():
        log.info("--deepspeed with no GPU visible: adding --use_cpu (DeepSpeed runs on CPU over gloo)")
        argv = argv + ["--use_cpu"]
    return argv


def tell_deepspeed_the_accelerator() -> None:
    """accelerate imports DeepSpeed whenever it is installed (even when training without it), and DeepSpeed
    then probes for an accelerator and warns "Setting accelerator to CPU" when it finds no GPU. With no GPU
    visible we say so up front (``DS_ACCELERATOR=cpu``, unless the user set it), so the log stays clean."""
    if "DS_ACCELERATOR" not in os.environ and not gpu_visible():
        os.environ["DS_ACCELERATOR"] = "cpu"
    prepare_extension_cache()


STALE_LOCK_SECONDS = 300  # DeepSpeed's CPU op compiles in about 20 s; a lock this old belongs to a killed build


def prepare_extension_cache() -> None:
    """DeepSpeed on CPU JIT-compiles a small op (shm comm) into torch's extension cache. Two things there can hang a
    run for ever, and did: a build killed midway leaves its ``lock`` file, and torch waits on it without a timeout;
    and one cache shared by several checkouts (a CI copy of the repository) rebuilds each time its paths change,
    so a kill is likelier. Each environment gets its own cache (``TORCH_EXTENSIONS_DIR`` = ``<venv>/torch_extensions``
    unless the user set it), and a lock older than STALE_LOCK_SECONDS is removed with a warning."""
    from pathlib import Path

    root = os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    for lock in Path(root).glob("*/*/lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age > STALE_LOCK_SECONDS:
                lock.unlink()
                log.warning("removed a stale build lock %s (%.0f s old: a killed compile left it)", lock, age)
        except OSError:
            pass


# ------------------------------------------------------------------------------------ the hub

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def hub_offline() -> bool:
    """Hub access is off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or HF_DATASETS_OFFLINE is set)."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                 "HF_DATASETS_OFFLINE"))


def is_hub_id(name: str) -> bool:
    """``owner/name`` that cannot be a local path (not ./, /, ~, and no existing parent folder such as outputs/)."""
    from pathlib import Path

    p = Path(name).expanduser()
    local_parent = p.parent != Path(".") and p.parent.exists()  # e.g. outputs/teacher with outputs/ present
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~")) and not local_parent


# ------------------------------------------------------------------------------------- models


def load_tokenizer(path: str, padding_side: str | None = None, need_fast: bool = False, what: str = "model",
                   pad_with_eos: bool = True):
    """The tokenizer of a resolved model folder (or hub id); pads with EOS when it has no pad token (unless
    ``pad_with_eos`` is off)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if need_fast and not getattr(tok, "is_fast", False):
        raise InputError(f"{what} {path}: its tokenizer is not a fast tokenizer; character offsets are needed")
    if padding_side:
        tok.padding_side = padding_side
    if pad_with_eos and tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype, device=None, device_map: str | None = None):
    """A causal LM for inference (eval mode) on ``device``, or spread with ``device_map``."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"dtype": torch_dtype(dtype) if isinstance(dtype, str) else dtype}
    if device_map:
        kw["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    if device is not None and not device_map:
        model.to(device)
    return model


def model_hidden_size(path: str) -> int:
    """Hidden size from config.json, without loading weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return int(cfg.get_text_config().hidden_size)


def model_files_fingerprint(path: str) -> str:
    """What a model (folder or file) is, cheaply: a file's sha256, or a folder's config/tokenizer JSON files and
    its weight files' names and sizes. For journals and caches keyed by the model."""
    import hashlib
    from pathlib import Path

    from .io import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir() and (p / "config.json").exists():  # a model folder: hash its config and weights index
        h = hashlib.sha256()
        for name in sorted(os.listdir(p)):
            f = p / name
            if f.is_file() and (name.endswith(".json") or name.endswith(".safetensors")):
                st = f.stat()
                h.update(f"{name}:{st.st_size}".encode())
                if name.endswith(".json"):
                    h.update(f.read_bytes())
        return h.hexdigest()
    return str(path)


def library_versions(packages: Sequence[str] = ("torch", "transformers", "accelerate", "tokenizers")) -> dict:
    """Python and package versions for a sidecar (None for a package that is not installed)."""
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# ----------------------------------------------------------------------------------- progress


def on_terminal() -> bool:
    """Whether stderr is a terminal (progress bars then redraw in place; else they would fill a log with
    carriage returns and cursor-movement escape codes)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LogProgress:
    """tqdm's interface for a log file: a plain line at most every ``every`` seconds and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = 30.0):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.t0 = self._last = time.time()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self._last >= self.every:
            self._last = now
            self._line()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        log.info("%s: %d%s %s in %.0f s%s", self.desc, self.n, of, self.unit, time.time() - self.t0, extra)

    def close(self) -> None:
        if self.n:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):  # pragma: no cover - not used as an iterator wrapper
        raise TypeError("use update()")


def progress(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False):
    """A tqdm bar on a terminal; plain, occasional log lines otherwise."""
    if disable:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=True)
    if on_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return _LogProgress(total, desc, unit)


def quiet_library_progress() -> None:
    """Off a terminal, transformers' and the hub's own bars (loading weights, writing shards) are turned off."""
    if on_terminal():
        return
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - an old or absent transformers: nothing to quiet
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:  # its bars only: importing it costs a second otherwise
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def iter_progress(items: Iterable, total: int | None, desc: str, unit: str = "it"):
    bar = progress(total, desc, unit)
    try:
        for x in items:
            yield x
            bar.update(1)
    finally:
        bar.close()
