"""Perplexity of continuations given their prompts, under a reference causal LM.

What is scored: the text ``prompt + response`` exactly as stored (the response carries its own
leading space, if any), tokenised ONCE with the tokenizer's own special tokens (BOS where the
tokenizer adds it). The prompt/continuation boundary is the first non-special token whose end
character offset lies past ``len(prompt)``; every token from there on is a continuation token and
is scored given everything before it. A token that straddles the boundary (prompt "The cat",
response "s are" -> "cats") therefore counts as a continuation token. Trailing special tokens
(an EOS some tokenizers append) are not scored.

Speed: the backbone (``model.base_model`` / ``get_decoder()``) gives the hidden states; the output
layer (``get_output_embeddings()``) is applied only at the positions that predict continuation
tokens, gathered across the batch into one ``[n_tokens, d]`` matrix, in row chunks. Vocabulary
logits are never computed at prompt positions (Gemma's output layer is 262,144 wide, so this is
most of the cost). Final-logit soft-capping (``config.final_logit_softcapping``, Gemma-2 style) and
the scalings of a few architectures are applied so the numbers equal the model's own logits; a
one-sample probe against ``model(...).logits`` checks that at start-up and falls back to full
logits (with a warning) if an architecture does something else.

Per record: ``sum_nll`` (nats), ``n_tokens``, ``mean_nll``; the aggregates live in
:mod:`detox_pa.metrics`.

Step 4b itself (``eval_ppl.py`` parses its arguments and calls :func:`run`) reads the paper's nested
generations JSON and writes, next to it (``<stem>`` = the input path without ``.json``; ``_<tag>`` only with
``--output_tag``):

- ``<stem>_ppl[_<tag>].json``: ``[{"alpha", "PPL", "ppl_token_weighted", "ppl_median_per_sample",
  "dist_1", "dist_2", "dist_3", "n", "n_prompts", "n_scored", "n_skipped_empty", "n_truncated",
  "n_tokens", "reference_model", "input", "input_sha256", "join", "note"}]`` (PPL as in the paper: exp of the
  mean per-sample loss; lower is better);
- ``<stem>_ppl[_<tag>]_records.jsonl``: one line per continuation (sum / mean NLL, token count, status);
- ``<stem>_ppl[_<tag>].meta.json``: the sidecar (model, dims, dtype, device, arguments, timing).

How prompt and continuation meet (``--join``): see :func:`choose_join`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .artifacts import PAIRS_KEY, check_tag, score_paths
from .cli import args_to_dict, log_args, parse_dataclasses
from .errors import InputError
from .runtime import DEVICE_HELP, DTYPE_HELP, check_device_name, check_dtype_name

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_EMPTY = "empty_response"
STATUS_NO_TOKENS = "no_continuation_tokens"

# ------------------------------------------------------------------------------------ encoding


@dataclass
class Encoded:
    """One ``prompt + response`` text, ready to score: ``ids[start:]`` are the scored tokens."""

    ids: list[int]
    start: int  # index of the first scored token (>= 1)
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.ids) - self.start


def split_at_boundary(tokenizer, prompt: str, response: str) -> tuple[list[int], int, int]:
    """Tokenise ``prompt + response`` once; return ``(ids, n_leading_special, boundary)``.

    ``boundary`` is the index of the first non-special token whose end offset is past
    ``len(prompt)`` (``len(ids)`` if there is none). Trailing special tokens are dropped."""
    enc = tokenizer(prompt + response, add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True, return_attention_mask=False)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    special = list(enc["special_tokens_mask"])
    while ids and special[-1]:  # an EOS the tokenizer appends is not part of the continuation
        ids.pop()
        special.pop()
    n_lead = 0
    while n_lead < len(ids) and special[n_lead]:
        n_lead += 1
    cut = len(prompt)
    boundary = len(ids)
    for i in range(n_lead, len(ids)):
        if not special[i] and offsets[i][1] > cut:
            boundary = i
            break
    return ids, n_lead, boundary


def encode_pair(tokenizer, prompt: str, response: str, max_length: int | None = None) -> tuple[Encoded | None, str]:
    """Encode one record; returns ``(Encoded, "ok")`` or ``(None, reason)`` when nothing can be scored.

    When the text is longer than ``max_length`` tokens, prompt tokens are dropped from the left
    (the leading BOS is kept); if the continuation alone does not fit, it is cut on the right."""
    if response == "":
        return None, STATUS_EMPTY
    ids, n_lead, boundary = split_at_boundary(tokenizer, prompt, response)
    head, ctx, cont = ids[:n_lead], ids[n_lead:boundary], ids[boundary:]
    truncated = False
    if max_length is not None and len(ids) > max_length:
        truncated = True
        min_ctx = 0 if head else 1
        budget = max_length - len(head) - len(cont)
        if budget >= min_ctx:
            ctx = ctx[len(ctx) - budget:] if budget > 0 else []
        else:
            ctx = ctx[len(ctx) - min_ctx:] if min_ctx else []
            cont = cont[: max(0, max_length - len(head) - len(ctx))]
    ids = head + ctx + cont
    start = max(1, len(head) + len(ctx))  # the first token of a text has nothing to be predicted from
    if start >= len(ids):
        return None, STATUS_NO_TOKENS
    return Encoded(ids, start, truncated), STATUS_OK


# ---------------------------------------------------------------------------------- the model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "is_fast", False):
        raise InputError(f"reference model {path}: its tokenizer is not a fast tokenizer; offset mappings are "
                         f"needed to find the prompt/continuation boundary")
    return tok


def load_reference(path: str, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer, device)`` for a local folder or hub id (already resolved)."""
    from .runtime import load_causal_lm, resolve_device, resolve_dtype

    dev = resolve_device(device)
    tok = load_tokenizer(path)
    model = load_causal_lm(path, resolve_dtype(dtype, dev), dev)
    return model, tok, dev


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def postprocess_logits(logits: torch.Tensor, softcap=None, logit_scale=None, logits_scaling=None) -> torch.Tensor:
    """The output layer's raw logits made the model's own, in float32: Cohere's ``logit_scale`` multiplies,
    Granite's ``logits_scaling`` divides, Gemma-2's ``final_logit_softcapping`` caps."""
    logits = logits.float()
    if logit_scale is not None:
        logits = logits * float(logit_scale)
    if logits_scaling is not None:
        logits = logits / float(logits_scaling)
    if softcap is not None:
        cap = float(softcap)
        logits = torch.tanh(logits / cap) * cap
    return logits


def judge_postprocess(model):
    """``f(raw output-layer logits) -> the logits this scorer scores with`` for ``model`` (see :class:`PPLScorer`)."""
    cfg = _text_config(model)
    knobs = (getattr(cfg, "final_logit_softcapping", None), getattr(cfg, "logit_scale", None),
             getattr(cfg, "logits_scaling", None))
    return lambda logits: postprocess_logits(logits, *knobs)


def _backbone(model):
    """The module that returns the final hidden states (final norm included), or None."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        return base
    try:
        dec = model.get_decoder()
    except Exception:  # noqa: BLE001 - exotic models: use the full-logits path
        return None
    return dec if dec is not None and dec is not model else None


class PPLScorer:
    """Batched continuation NLL under a causal LM (see the module docstring)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = 1024,
                 device: torch.device | str | None = None, head_rows: int | None = None, probe: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.head = model.get_output_embeddings()
        self.backbone = _backbone(model)
        cfg = _text_config(model)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)  # Cohere multiplies
        self.logits_scaling = getattr(cfg, "logits_scaling", None)  # Granite divides
        vocab = int(getattr(self.head, "out_features", 0) or getattr(cfg, "vocab_size", 0) or 32000)
        # rows of the output layer per chunk: about 64M logits (256 MB in fp32) at a time
        self.head_rows = head_rows or max(64, (1 << 26) // max(1, vocab))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.fast = self.backbone is not None and self.head is not None
        if not self.fast:
            log.warning("reference model %s: no separate backbone/output layer found; computing full logits",
                        type(model).__name__)
        self._probed = not probe

    # -- logits only where they are needed

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        return postprocess_logits(logits, self.softcap, self.logit_scale, self.logits_scaling)

    def _nll_rows(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row NLL of ``targets`` given final hidden states ``hidden`` ([n, d]), in row chunks."""
        out = []
        for i in range(0, hidden.shape[0], self.head_rows):
            logits = self._postprocess(self.head(hidden[i:i + self.head_rows]))
            tgt = targets[i:i + self.head_rows]
            out.append(torch.logsumexp(logits, dim=-1) - logits.gather(1, tgt[:, None]).squeeze(1))
        return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)

    def _batch_tensors(self, batch: Sequence[Encoded]):
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols = [], []
        for r, e in enumerate(batch):  # right padding: real tokens keep positions 0..L-1
            ids[r, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[r, : len(e.ids)] = 1
            pos = torch.arange(e.start - 1, len(e.ids) - 1)
            rows.append(torch.full_like(pos, r))
            cols.append(pos)
        rows_t, cols_t = torch.cat(rows), torch.cat(cols)
        targets = ids[rows_t, cols_t + 1]
        return ids.to(self.device), mask.to(self.device), rows_t.to(self.device), cols_t.to(self.device), targets.to(self.device)

    @torch.inference_mode()
    def _score_batch(self, batch: Sequence[Encoded], fast: bool | None = None) -> list[float]:
        fast = self.fast if fast is None else fast
        ids, mask, rows, cols, targets = self._batch_tensors(batch)
        if fast:
            out = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            nll = self._nll_rows(hidden[rows, cols], targets)
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logits = logits[rows, cols].float()
            nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)
        sums = torch.zeros(len(batch), dtype=torch.float64, device=nll.device)
        sums.index_add_(0, rows, nll.double())
        return sums.cpu().tolist()

    @torch.inference_mode()
    def _probe(self, enc: Encoded) -> None:
        """Check once that backbone + output layer reproduce the model's own logits."""
        self._probed = True
        if not self.fast:
            return
        ids = torch.tensor([enc.ids], device=self.device)
        full = self.model(input_ids=ids, use_cache=False).logits[0, enc.start - 1: len(enc.ids) - 1].float()
        out = self.backbone(input_ids=ids, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        ours = self._postprocess(self.head(hidden[0, enc.start - 1: len(enc.ids) - 1]))
        diff = float((full - ours).abs().max())
        tol = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 5e-2
        tol *= max(1.0, float(full.abs().max()))
        if not math.isfinite(diff) or diff > tol:
            log.warning("reference model %s: backbone + output layer differ from the model's logits by %.3g; "
                        "falling back to full logits (slower)", type(self.model).__name__, diff)
            self.fast = False
        else:
            log.info("output layer at continuation positions only (checked against full logits: max diff %.2g)", diff)

    def score_encoded(self, encoded: Sequence[Encoded], desc: str = "ppl") -> list[float]:
        """Sum of continuation NLL (nats) per encoded text, in input order."""
        from .runtime import progress

        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        if not self._probed and encoded:
            self._probe(encoded[order[-1]])
        sums: list[float] = [0.0] * len(encoded)
        with progress(len(encoded), desc, "text") as bar:
            for b in range(0, len(order), self.batch_size):
                idx = order[b: b + self.batch_size]
                for i, s in zip(idx, self._score_batch([encoded[i] for i in idx])):
                    sums[i] = s
                bar.update(len(idx))
        return sums

    def score(self, prompts: Sequence[str], responses: Sequence[str], desc: str = "ppl") -> list[dict]:
        """One dict per (prompt, response): ``status``, ``sum_nll``, ``n_tokens``, ``mean_nll``,
        ``n_context_tokens``, ``truncated``. Skipped records have ``sum_nll``/``mean_nll`` None and
        ``n_tokens`` 0."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        # identical (prompt, response) pairs (common across alphas: small alphas change few continuations)
        # are encoded and scored once
        first: dict[tuple[str, str], int] = {}
        encoded, where, records, copy_of = [], [], [], []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            j = first.setdefault((p, r), i)
            copy_of.append(j)
            if j != i:
                records.append(None)
                continue
            enc, status = encode_pair(self.tokenizer, p, r, self.max_length)
            records.append({"status": status, "sum_nll": None, "n_tokens": 0, "mean_nll": None,
                            "n_context_tokens": None, "truncated": False})
            if enc is not None:
                encoded.append(enc)
                where.append(i)
        self.n_distinct = len(first)
        sums = self.score_encoded(encoded, desc=desc)
        for i, enc, s in zip(where, encoded, sums):
            records[i].update(sum_nll=s, n_tokens=enc.n_tokens, mean_nll=s / enc.n_tokens,
                              n_context_tokens=enc.start, truncated=enc.truncated)
        return [dict(records[j]) for j in copy_of]


def model_info(model, tokenizer) -> dict:
    cfg = _text_config(model)
    return {"architecture": type(model).__name__, "model_type": getattr(cfg, "model_type", None),
            "vocab_size": getattr(cfg, "vocab_size", None), "hidden_size": getattr(cfg, "hidden_size", None),
            "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "final_logit_softcapping": getattr(cfg, "final_logit_softcapping", None),
            "tokenizer_adds_bos": bool(tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id])
            if tokenizer.bos_token_id is not None else False}


# ----------------------------------------------------------- the NLL recorded at generation time

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_weights_sha256(path: str) -> str | None:
    """sha256 over a model's weight files, by content: a single file's own sha256, or for a folder each weight
    file's name, size and sha256 in name order. None when there are no local weight files (a hub id)."""
    import hashlib

    from .io import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)) if p.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def judge_identity(path: str, dtype) -> dict:
    """What makes a model's NLL the same as another run's: its files (config, tokenizer and the weight files'
    names and sizes: :func:`detox_pa.runtime.model_files_fingerprint`), its weights by content, and the dtype."""
    from .runtime import model_files_fingerprint

    return {"model_path": str(path), "model_files": model_files_fingerprint(path),
            "model_weights_sha256": model_weights_sha256(path), "dtype": str(dtype).replace("torch.", "")}


def recorded_records(input_json: str, input_sha256: str, pairs: Sequence[dict], continuations: Sequence[str],
                     judge_path: str, dtype, tokenizer, max_length: int | None) -> tuple[list[dict | None], dict]:
    """Per pair, the record :meth:`PPLScorer.score` would give, built from the NLL that generation recorded, or
    None where it must be recomputed; and a summary for the sidecar (``used``, ``recomputed``, the reasons).

    The recorded numbers are taken only when all of these hold, so that they are the judge's own:
    - the generations meta file's ``recorded_nll`` belongs to this very file (its sha256);
    - the judge is verifiably the generation's target: the same files (config, tokenizer, weight names and
      sizes) and the same weights by content (sha256), at the same dtype;
    and, pair by pair, the text scored after the prompt is the exact continuation generation wrote, and
    tokenising ``prompt + continuation`` once, as the scorer does, gives the prompt's ids (as generation fed
    them) followed by exactly the generated ids, within ``max_length``. Otherwise (a token straddles the
    boundary, the target produced a tokenisation the tokenizer would not, a special token was dropped from the
    text) the pair is recomputed."""
    from .artifacts import CONT_IDS_KEY, CONT_NLL_KEY, RECORDED_NLL_KEY, generation_meta_path

    n = len(pairs)
    out: list[dict | None] = [None] * n
    info: dict = {"used": 0, "recomputed": n}
    if not any(CONT_NLL_KEY in p for p in pairs):
        info["reason"] = "the input carries no recorded NLL"
        return out, info
    meta_p = generation_meta_path(input_json)
    try:
        rec = json.loads(meta_p.read_text(encoding="utf-8")).get(RECORDED_NLL_KEY)
    except (OSError, ValueError, AttributeError):
        rec = None
    if not isinstance(rec, dict):
        info["reason"] = f"no {RECORDED_NLL_KEY!r} in {meta_p} (the generations' meta file)"
        return out, info
    if rec.get("output_sha256") != input_sha256:
        info["reason"] = f"{input_json} is not the file its meta file {meta_p} describes (sha256 differs)"
        return out, info
    want_dtype = str(dtype).replace("torch.", "")
    if rec.get("dtype") != want_dtype:
        info["reason"] = f"recorded at dtype {rec.get('dtype')}, the judge runs at {want_dtype}"
        return out, info
    from .runtime import model_files_fingerprint

    if rec.get("model_files") != model_files_fingerprint(judge_path):
        info["reason"] = f"the judge {judge_path} is not the generation's target {rec.get('model_path')} (files differ)"
        return out, info
    digest = rec.get("model_weights_sha256")
    if digest is None or digest != model_weights_sha256(judge_path):
        info["reason"] = (f"the judge {judge_path}'s weights are not verifiably the generation's target's "
                          f"{rec.get('model_path')} (weights sha256 {'missing' if digest is None else 'differs'})")
        return out, info
    info["reason"] = "the judge is the generation's target (same files, weights sha256 and dtype)"
    why: dict[str, int] = {}
    prompt_ids: dict[str, list[int]] = {}
    for i, (pair, cont) in enumerate(zip(pairs, continuations)):
        ids_rec, nll = pair.get(CONT_IDS_KEY), pair.get(CONT_NLL_KEY)
        if ids_rec is None or nll is None:
            miss = "no recorded NLL (an alpha whose hooks edit the output layer's input)"
        elif cont != pair.get("continuation"):
            miss = "the text scored is not the exact continuation (--join)"
        elif cont == "":
            out[i] = {"status": STATUS_EMPTY, "sum_nll": None, "n_tokens": 0, "mean_nll": None,
                      "n_context_tokens": None, "truncated": False}
            continue
        else:
            p = pair["prompt"]
            if p not in prompt_ids:
                prompt_ids[p] = list(tokenizer(p, add_special_tokens=True)["input_ids"])
            ids, _, boundary = split_at_boundary(tokenizer, p, cont)
            if not (0 < len(nll) == len(ids_rec) and ids[:boundary] == prompt_ids[p] and ids[boundary:] == list(ids_rec)):
                miss = "re-tokenising prompt + continuation does not give the generated ids"
            elif boundary < 1 or (max_length is not None and len(ids) > max_length):
                miss = "no BOS and no prompt, or longer than --max_length"
            elif not all(isinstance(x, (int, float)) and math.isfinite(x) for x in nll):
                miss = "a recorded NLL is not a finite number"
            else:
                total = float(sum(float(x) for x in nll))
                out[i] = {"status": STATUS_OK, "sum_nll": total, "n_tokens": len(nll), "mean_nll": total / len(nll),
                          "n_context_tokens": boundary, "truncated": False}
                continue
        why[miss] = why.get(miss, 0) + 1
    info["used"] = sum(1 for r in out if r is not None)
    info["recomputed"] = n - info["used"]
    info["recomputed_because"] = why
    return out, info


# --------------------------------------------------------------------------------- aggregation

PPL_NOTE = ("PPL (the paper's) = exp(mean over scored samples of each sample's mean continuation-token NLL); "
            "ppl_token_weighted = exp(total continuation NLL / total continuation tokens); "
            "ppl_median_per_sample = median over samples of exp(mean NLL); lower PPL is better. "
            "Continuation tokens are scored given BOS + prompt (boundary from one tokenisation of prompt+response "
            "by character offsets); empty responses are skipped and counted in n_skipped_empty. "
            "dist_n = per prompt, unique / total whitespace n-grams over its samples, averaged over prompts "
            "(higher = more diverse).")


def record_rows(alpha, pairs: Sequence[dict], records: Sequence[dict]) -> list[dict]:
    """The per-record JSONL rows of one alpha block."""
    rows = []
    for j, (pair, rec) in enumerate(zip(pairs, records)):
        row = {"alpha": alpha, "index": j}
        for k in ("prompt_index", "sample"):
            if k in pair:
                row[k] = pair[k]
        row.update(rec)
        m = rec.get("mean_nll")
        row["ppl"] = math.exp(m) if m is not None and m < 700 else None
        rows.append(row)
    return rows


def aggregate_alpha(alpha, pairs: Sequence[dict], records: Sequence[dict], extra: dict | None = None) -> dict:
    """One per-alpha entry of ``<stem>_ppl.json`` (the paper's ``{"alpha", "PPL"}`` plus our fields)."""
    from .metrics import (distinct_n, finite_or_none, group_by_prompt, ppl_mean_of_losses,
                          ppl_median_per_sample, ppl_token_weighted)

    ok = [r for r in records if r["status"] == STATUS_OK]
    means = [r["mean_nll"] for r in ok]
    groups = group_by_prompt(pairs)
    texts = [[pairs[i]["response"] for i in g] for g in groups]
    out = {"alpha": alpha,
           "PPL": finite_or_none(ppl_mean_of_losses(means)),
           "ppl_token_weighted": finite_or_none(ppl_token_weighted([r["sum_nll"] for r in ok], [r["n_tokens"] for r in ok])),
           "ppl_median_per_sample": finite_or_none(ppl_median_per_sample(means)),
           "dist_1": finite_or_none(distinct_n(texts, 1)),
           "dist_2": finite_or_none(distinct_n(texts, 2)),
           "dist_3": finite_or_none(distinct_n(texts, 3)),
           "n": len(records),
           "n_prompts": len(groups),
           "n_scored": len(ok),
           "n_skipped_empty": len(records) - len(ok),
           "n_truncated": sum(1 for r in ok if r.get("truncated")),
           "n_tokens": int(sum(r["n_tokens"] for r in ok))}
    out.update(extra or {})
    out["note"] = PPL_NOTE
    return out


# --------------------------------------------------------------------------------- the step


@dataclass
class PPLArguments:
    input_json: str = field(default="", metadata={
        "aliases": ["--input"],
        "help": "What to score: the paper's nested generations JSON, a DExperts JSONL {prompt, generations: [{text}]}, "
                "a JSONL of {text} with an optional prompt, or a .txt file (one text a line, scored from its start)."})
    model_path: str = field(default="gemma-3-270m", metadata={
        "help": "Reference causal LM: a local Hugging Face folder, a hub id (where a network exists) or an "
                "embedded alias (gemma-3-270m, smollm2-135m). The paper uses Llama-2-13B."})
    output_tag: str = field(default="", metadata={
        "help": "Write <stem>_ppl_<tag>.json instead of <stem>_ppl.json (e.g. a second reference model)."})
    batch_size: int = field(default=16, metadata={"help": "Texts per forward pass (sorted by length)."})
    max_length: int = field(default=1024, metadata={
        "help": "Longest text in tokens; longer ones lose prompt tokens on the left (BOS kept)."})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    join: str = field(default="auto", metadata={
        "help": "How prompt and continuation are joined. exact: prompt + the exact continuation (the pair's "
                "'continuation' field, which our generate.py writes, else 'response') verbatim; paper: prompt + ' ' + "
                "response unless the prompt ends in a space (the paper's scorer, for its stripped responses); auto: "
                "exact for a file our generate.py wrote (every pair holds 'continuation' beside its stripped "
                "'response'); for every other file paper when no response starts with whitespace, else exact. A text "
                "without a prompt is scored from its start. The choice and its reason are logged and recorded.",
        "choices": ["auto", "exact", "paper"]})
    recorded_nll: str = field(default="auto", metadata={
        "help": "auto: where generate.py recorded the unsteered target's NLL and this judge is verifiably that target "
                "(same files, weights sha256 and dtype), take it instead of recomputing, pair by pair where re-tokenising "
                "the text gives the generated ids (the others are recomputed); off: recompute everything.",
        "choices": ["auto", "off"]})

    def __post_init__(self):
        if not self.input_json:
            raise InputError("no input given: pass --input_json PATH (the generations JSON)")
        check_tag(self.output_tag)
        if self.batch_size < 1:
            raise InputError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise InputError(f"--max_length must be >= 2, got {self.max_length}")
        self.dtype = check_dtype_name(self.dtype)
        self.device = check_device_name(self.device)


def parse_args(argv=None, description: str | None = None) -> PPLArguments:
    (args,) = parse_dataclasses([PPLArguments], argv, description=description or __doc__.splitlines()[0])
    return args


def output_paths(input_json: str, tag: str = "") -> dict[str, Path]:
    """``summary`` (``<stem>_ppl[_<tag>].json``), ``records`` and ``meta`` (see :mod:`detox_pa.artifacts`)."""
    return score_paths(input_json, "ppl", tag)


def written_by_generate(pairs: list[dict]) -> bool:
    """True for the pairs of a file our generate.py wrote: every pair holds the exact ``continuation`` next to
    ``response`` = that continuation stripped (what :func:`detox_pa.generation.run` writes; no reader adds it)."""
    return bool(pairs) and all(isinstance(p.get("continuation"), str) and p["response"] == p["continuation"].strip()
                               for p in pairs)


def choose_join(pairs: list[dict], requested: str, form: str = "nested") -> tuple[str, str]:
    """The join convention for a file (see ``--join``) and the true reason it was chosen. ``form`` is what
    :func:`detox_pa.data.load_scoring_input` read (``nested``, ``dexperts`` or ``texts``)."""
    if requested != "auto":
        return requested, "--join " + requested
    if form == "nested" and written_by_generate(pairs):
        return "exact", ("every pair holds the exact 'continuation' beside its stripped 'response', as our "
                         "generate.py writes them: prompt + continuation, verbatim")
    joined = [p for p in pairs if p["prompt"] and p["response"]]
    if not joined:
        return "exact", f"no text has a prompt ({form}): each text is scored from its start"
    lead = sum(1 for p in joined if p["response"][:1].isspace())
    if lead == 0:
        return "paper", (f"no response starts with whitespace ({form}): joined to its prompt with one space unless "
                         f"the prompt ends in one, the paper's scorer's rule")
    return "exact", (f"{lead} of {len(joined)} responses start with whitespace ({form}): they carry their own, "
                     f"scored verbatim after the prompt")


def joined_continuation(pair: dict, join: str) -> str:
    """The text scored after the prompt. An empty response stays empty (counted and skipped); a text without a
    prompt is scored from its start, whatever the join."""
    if join == "exact":
        return pair.get("continuation", pair["response"])
    r = pair["response"]
    return r if r == "" or pair["prompt"] == "" or pair["prompt"].endswith(" ") else " " + r


def run(args: PPLArguments) -> list[dict]:
    """Score every continuation, aggregate per alpha and write the three files (eval_ppl.py's body)."""
    from .assets import describe_model, resolve_model
    from .data import load_scoring_input
    from .io import atomic_write_json, atomic_write_text, check_output_path, sha256_file, sha256_text
    from .runtime import library_versions, load_causal_lm, resolve_device, resolve_dtype

    log_args(args)
    # everything that can be wrong with the input is checked before the model is loaded
    blocks, form = load_scoring_input(args.input_json)
    paths = output_paths(args.input_json, args.output_tag)
    for p in paths.values():
        check_output_path(p)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model_dir = resolve_model(args.model_path, "reference model")
    input_sha = sha256_file(args.input_json)

    pairs_all = [p for b in blocks for p in b[PAIRS_KEY]]
    join, why = choose_join(pairs_all, args.join, form)
    log.info("join: %s (%s)", join, why)
    prompts = [p["prompt"] for p in pairs_all]
    responses = [joined_continuation(p, join) for p in pairs_all]
    tok = load_tokenizer(model_dir)
    t1 = time.time()
    if args.recorded_nll == "auto":
        records, reuse = recorded_records(args.input_json, input_sha, pairs_all, responses, model_dir, dtype, tok,
                                          args.max_length)
    else:
        records, reuse = [None] * len(pairs_all), {"used": 0, "recomputed": len(pairs_all), "reason": "--recorded_nll off"}
    log.info("recorded NLL: %d of %d records taken from generation, %d recomputed (%s)", reuse["used"],
             len(records), reuse["recomputed"], reuse["reason"])
    todo = [i for i, r in enumerate(records) if r is None]
    model = scorer = None
    if todo:
        t0 = time.time()
        model = load_causal_lm(model_dir, dtype, device)
        log.info("reference model %s loaded in %.1f s (%s, %s)", describe_model(args.model_path), time.time() - t0,
                 device, next(model.parameters()).dtype)
        scorer = PPLScorer(model, tok, batch_size=args.batch_size, max_length=args.max_length, device=device)
        for i, r in zip(todo, scorer.score([prompts[i] for i in todo], [responses[i] for i in todo], desc="ppl")):
            records[i] = r
        log.info("scored %d distinct (prompt, continuation) pairs for %d records (identical pairs are scored once)",
                 scorer.n_distinct, len(todo))
    seconds = time.time() - t1

    extra = {"reference_model": args.model_path, "input": str(args.input_json), "input_sha256": input_sha,
             "join": join}
    results, rows, k = [], [], 0
    for b in blocks:
        pairs = b[PAIRS_KEY]
        recs = records[k: k + len(pairs)]
        k += len(pairs)
        results.append(aggregate_alpha(b["alpha"], pairs, recs, extra))
        rows.extend(record_rows(b["alpha"], pairs, recs))

    records_text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    records_sha = sha256_text(records_text)
    for r in results:  # a reader can tell the records file belongs to this summary
        r["records"], r["records_sha256"] = str(paths["records"]), records_sha
    atomic_write_text(paths["records"], records_text)
    atomic_write_json(paths["summary"], results)
    atomic_write_json(paths["meta"], {
        "what": "perplexity of continuations given their prompts (eval_ppl.py)",
        "outputs": {k: str(v) for k, v in paths.items()},
        "input": str(args.input_json), "input_form": form, "input_sha256": input_sha,
        "reference_model": args.model_path, "reference_model_resolved": model_dir,
        "reference_model_description": describe_model(args.model_path),
        "model": model_info(model, tok) if model is not None else None, "device": str(device),
        "output_layer_only_at_continuation_positions": scorer.fast if scorer is not None else None,
        "join": join, "join_reason": why, "recorded_nll": reuse,
        "n_records": len(records), "n_texts_scored": sum(1 for r in records if r["status"] == "ok"),
        "n_distinct_pairs": scorer.n_distinct if scorer is not None else 0,
        "seconds_scoring": round(seconds, 3),
        "versions": library_versions(("torch", "transformers")),
        "arguments": args_to_dict(args), "note": results[0]["note"] if results else None,
    })
    for r in results:
        log.info("%s: PPL %s, token-weighted %s, n_scored %d/%d, dist-2 %s",
                 "all texts" if r["alpha"] is None else f"alpha {r['alpha']}", _fmt(r["PPL"]),
                 _fmt(r["ppl_token_weighted"]), r["n_scored"], r["n"], _fmt(r["dist_2"], 3))
    log.info("wrote %s, %s and %s (%.1f s scoring)", paths["summary"], paths["records"], paths["meta"], seconds)
    print(screen_summary(results, pairs_all, records, form, str(args.input_json), args.model_path, join, why,
                         paths["summary"], [b["alpha"] for b in blocks for _ in b[PAIRS_KEY]]))
    return results


def screen_summary(results: list[dict], pairs: list[dict], records: list[dict], form: str, source: str,
                   reference: str, join: str, why: str, summary_path, alphas: list | None = None, top: int = 3) -> str:
    """What a run found, on one screen (the twin of the toxicity step's): per block both PPLs, the median,
    dist-1/2/3 and the counts, then the continuations with the highest per-sample PPL."""
    from .metrics import group_by_prompt

    n_prompts = len(group_by_prompt(pairs))
    lines = [f"perplexity of {source} ({form}: {len(records)} texts, {n_prompts} prompts) under {reference}; "
             f"lower is better",
             f"  join: {join} ({why})",
             "  alpha   PPL(paper)  token-w.   median   dist-1  dist-2  dist-3  scored"]
    for r in results:
        a = "-" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append(f"  {a:<6}  {_fmt(r['PPL']):>10}  {_fmt(r['ppl_token_weighted']):>8}  "
                     f"{_fmt(r['ppl_median_per_sample']):>7}  {_fmt(r['dist_1'], 3):>6}  {_fmt(r['dist_2'], 3):>6}  "
                     f"{_fmt(r['dist_3'], 3):>6}  {r['n_scored']}/{r['n']}")
    worst = sorted((i for i, r in enumerate(records) if r.get("mean_nll") is not None),
                   key=lambda i: -records[i]["mean_nll"])[:top]
    if worst:
        lines.append(f"  the {len(worst)} continuations with the highest PPL:")
        for i in worst:
            ppl_i = math.exp(min(records[i]["mean_nll"], 700))
            text = " ".join(str(pairs[i].get("continuation", pairs[i]["response"])).split())
            a = alphas[i] if alphas else None
            lines.append(f"    {ppl_i:9.2f}  " + ("" if a is None else f"[alpha {a:g}] ") + repr(text[:90]))
    lines.append(f"  summary: {summary_path}")
    return "\n".join(lines)


def _fmt(x, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"
