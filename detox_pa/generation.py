"""Batched, resumable generation with output-layer fusion (and the baselines of the results study).

The work list is every (prompt, sample) pair, sorted by prompt length so batches pad little, and
cut into fixed batches. Batch ``k`` of alpha ``a`` is seeded with ``batch_seed(seed, a, k)``, so an
alpha's output does not depend on which other alphas ran, nor on resuming, nor on how batches are
spread over ranks. Finished batches are appended to a journal (``<output>.journal.jsonl``, one JSON
line per record, fsync'ed per batch); a rerun of the same command resumes from it, a rerun with
different arguments is refused. The final file (the paper's nested JSON) is written atomically at
the end, then the journal is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import InputError
from .io import PAIRS_KEY, atomic_write_json, load_tensor_file, sha256_file

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


def batch_seed(seed: int, alpha: float, batch_index: int, tag: str = "") -> int:
    h = hashlib.sha256(f"{seed}:{alpha:.6f}:{batch_index}:{tag}".encode()).hexdigest()
    return int(h[:8], 16) & 0x7FFFFFFF


def model_hidden_size(path: str) -> int:
    """Hidden size from config.json, without loading weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return int(cfg.get_text_config().hidden_size)


def load_matrix(path: str, d_teacher: int | None = None, d_target: int | None = None) -> torch.Tensor:
    """``torch.load(path)["mapping"]``, checked: 2-D, finite, shape (d_teacher, d_target)."""
    A = load_tensor_file(path, "mapping", "alignment matrix")
    if A.dim() != 2:
        raise InputError(f"alignment matrix {path}: 'mapping' must be 2-D, got shape {tuple(A.shape)}")
    if d_teacher is not None and d_target is not None and tuple(A.shape) != (d_teacher, d_target):
        raise InputError(f"alignment matrix {path} has shape {tuple(A.shape)} but the models need "
                         f"(d_teacher={d_teacher}, d_target={d_target})")
    return A


# --------------------------------------------------------------------------------------- journal


class Journal:
    """Append-only JSONL of finished records; the first line holds the run's fingerprint."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint
        self.done: dict[tuple[float, int], list[dict]] = {}

    @staticmethod
    def _diff(a: dict, b: dict) -> str:
        keys = sorted(set(a) | set(b))
        diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
        return "; ".join(diffs[:3])

    def load(self, check: bool = True) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines:
            return
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError:
            raise InputError(f"journal {self.path} is damaged (bad header line); delete it to start over") from None
        if check and head.get("fingerprint") != self.fingerprint:
            raise InputError(f"journal {self.path} was written with different arguments "
                             f"({self._diff(head.get('fingerprint') or {}, self.fingerprint)}); "
                             f"rerun with the same arguments, or pass --overwrite to start over")
        batches: dict[tuple[float, int], list[dict]] = {}
        for n, line in enumerate(lines[1:], 2):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # a write cut short by a kill: that batch is simply redone
                    break
                raise InputError(f"journal {self.path}:{n} is damaged; delete it to start over") from None
            batches.setdefault((float(rec["alpha"]), int(rec["batch"])), []).append(rec)
        for key, recs in batches.items():
            if recs and len(recs) == recs[0]["batch_size"]:
                self.done[key] = recs

    def start(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"journal": JOURNAL_VERSION, "fingerprint": self.fingerprint}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        else:  # drop a torn last line before appending
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as f:
                    f.truncate(cut)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.done[(float(records[0]["alpha"]), int(records[0]["batch"]))] = records


# --------------------------------------------------------------------------------------- work list


@dataclass
class WorkItem:
    prompt_index: int
    sample: int


def make_batches(prompt_lengths: list[int], num_samples: int, batch_size: int) -> list[list[WorkItem]]:
    items = [WorkItem(i, s) for i in range(len(prompt_lengths)) for s in range(num_samples)]
    items.sort(key=lambda it: (prompt_lengths[it.prompt_index], it.prompt_index, it.sample))
    return [items[k:k + batch_size] for k in range(0, len(items), batch_size)]


def continuation_text(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The exact text the new tokens add after the prompt (keeps a leading space, whatever the tokenizer)."""
    full = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if full.startswith(head):
        return full[len(head):]
    return tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@dataclass
class Method:
    """What runs for one alpha block: projection-alignment fusion, or a baseline."""
    name: str = "fusion"  # fusion | wordban | steer
    alpha: float = 0.0
    extra: dict = field(default_factory=dict)


def generate_batch(target, tokenizer, prompts: list[str], gen_config, context_factory: Callable[[], Any],
                   device: torch.device, extra_generate_kwargs: dict | None = None) -> tuple[list[str], list[int]]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    enc = {k: v.to(device) for k, v in enc.items()}
    P = enc["input_ids"].shape[1]
    with torch.no_grad(), context_factory():
        out = target.generate(**enc, generation_config=gen_config, **(extra_generate_kwargs or {}))
    stop = set(x for x in [gen_config.pad_token_id] + list(_as_list(gen_config.eos_token_id)) if x is not None)
    texts, counts = [], []
    for i in range(len(prompts)):
        prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        new = out[i, P:].tolist()
        cut = next((j for j, t in enumerate(new) if t in stop), len(new))
        new = new[:cut]
        texts.append(continuation_text(tokenizer, prompt_ids, new))
        counts.append(len(new))
    return texts, counts


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def assemble(alphas: list[float], done: dict[tuple[float, int], list[dict]], n_batches: int,
             keep_fields: Iterable[str] = ("prompt", "response", "continuation", "prompt_index", "sample", "seed",
                                           "n_new_tokens")) -> list[dict]:
    """The paper's nested JSON, records ordered by (prompt_index, sample)."""
    out = []
    keep = list(keep_fields)
    for a in alphas:
        recs = [r for k in range(n_batches) for r in done[(float(a), k)]]
        recs.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        out.append({"alpha": a, PAIRS_KEY: [{k: r[k] for k in keep if k in r} for r in recs]})
    return out


def file_fingerprint(path: str) -> str:
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
