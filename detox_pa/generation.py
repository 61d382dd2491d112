"""Step 3: batched, resumable, sharded generation with a decoding method from the registry
(:mod:`detox_pa.methods`: the paper's fusion, the expert/anti-expert difference, and the baselines).

``generate.py`` parses :class:`GenerateArguments` and calls :func:`run`. The work list is every (prompt,
sample) pair, sorted by prompt length so batches pad little, and cut into fixed batches. Batch ``k`` of
alpha ``a`` is seeded with ``batch_seed(seed, a, k)``, so an alpha's output does not depend on which other
alphas ran, nor on resuming, nor on how batches are spread over ranks. The sweep runs batch by batch, every
alpha of a batch in turn: no method changes the prompt's states, so the target's and the teachers' prefill of
a batch is computed once and replayed, bit for bit, for its other alphas (:class:`detox_pa.fusion.PromptMemo`).

Greedy sweeps of a method that acts at the output layer only (``diff``, ``fusion``, ``steer``; alpha 0 is the
target alone) share more (**prefix sharing**, on unless ``--no_prefix_sharing``): greedy rows of one prompt at
different alphas hold the same tokens until the first step where the alphas' picks part, so all alphas of a batch
are decoded in one ``generate()`` call whose target and teachers compute each distinct (prompt, prefix) once and
duplicate its KV-cache rows where the picks part (:func:`decode_sweep`). Each alpha gets the continuations, stop
reasons and recorded NLL that decoding it alone gives, up to the rounding of batched kernels: a row computed in a
batch of another shape may differ in the last bits of a float, so the recorded NLL can differ in its last digit and,
where two candidates tie to that precision, a pick could differ (a resumed batch is therefore decoded with all its
alphas again, as the uninterrupted run decoded it). Sampling and the other methods decode each alpha on its own.

Finished batches are appended to a journal (:func:`detox_pa.artifacts.journal_path`, one JSON line per record,
fsync'ed per batch); a rerun of the same command resumes from it, a rerun with different arguments is refused.
Under torchrun each rank takes every ``world``-th batch and rank 0 merges the journals. The final file (the
paper's nested JSON) is written atomically at the end, then the journals are removed.

Each pair holds ``response`` = the continuation stripped of surrounding whitespace, as the paper's
generation stores it (so the paper's scorers read our files as they read theirs), and ``continuation`` =
the exact text the target produced (what our PPL scorer scores after the prompt). Where the target's own
logits are at hand at every step (alpha 0, and methods that edit the logits after the output layer, such as
``diff`` with ``--top_k``), a pair also holds ``continuation_ids`` (the target's ids of the continuation) and
``continuation_nll`` (the unsteered target's NLL of each, at the run's dtype): ``eval_ppl.py`` reads them
instead of recomputing when its judge is verifiably this target (see :func:`detox_pa.ppl.recorded_records`);
the meta file's ``recorded_nll`` says which model, dtype and file they belong to.
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
from typing import Any, Callable, Iterable, Optional

import torch

from .artifacts import (CONT_IDS_KEY, CONT_NLL_KEY, DRAFT_KEPT_KEY, MATRIX_FILE, MATRIX_KEY, PAIRS_KEY,
                        RECORDED_NLL_KEY, generation_meta_path, journal_path, journal_paths)
from .cli import args_to_dict, log_args, parse_dataclasses, require_min
from .errors import InputError
from .methods import alpha_ranges
from .runtime import DEVICE_HELP, DTYPE_HELP, check_device_name, check_dtype_name

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1

# The literature's decoding protocols (run_generation.sh's PROTOCOL; scripts/protocols.sh gives the launchers the same
# values, tests/test_protocols.py keeps them equal). A run records its protocol in the meta file with every argument
# that departs from it: explicit arguments win over a protocol, and the departure is logged, not refused.
PROTOCOLS = {
    "paper": {"settings": {"max_new_tokens": 10, "num_samples": 1, "do_sample": False},
              "metrics": "mean toxicity"},
    "dexperts": {"settings": {"max_new_tokens": 20, "num_samples": 25, "do_sample": True, "top_p": 0.9},
                 "metrics": "expected maximum toxicity (EMT) and toxicity probability"},
}


@dataclass
class GenerateArguments:
    teacher_model: str = field(default="", metadata={
        "help": "Teacher model folder (steps 1-2), alias or hub id; for --method diff the expert. Empty (the default): "
                "the teacher(s) the matrix's sidecar names, i.e. the pair step 2 tuned together with A "
                "(align.py --tune_pair), else the teacher(s) it was fitted for."})
    target_model: str = field(default="gemma-3-270m", metadata={"help": "Target LLM: alias (gemma-3-270m), folder or hub id."})
    matrix_A: str = field(default=f"outputs/alignment/{MATRIX_FILE}", metadata={
        "help": f"Alignment matrix (step 2): torch.load(p)[{MATRIX_KEY!r}]."})
    data_path: str = field(default="rtp:eval", metadata={
        "help": "Prompts: rtp:eval / rtp:dev / rtp:build (the embedded splits, read in place), JSONL {prompt} or RTP "
                "{prompt: {text}}, .txt one a line, .csv, .tsv, .parquet, a Dataset.save_to_disk folder, or a hub "
                "dataset id such as allenai/real-toxicity-prompts (where a network exists)."})
    prompt_field: str = field(default="auto", metadata={
        "help": "The prompt's field, dotted for nested ones (prompt.text for RealToxicityPrompts); auto: prompt "
                "(its text when it is a dict), text for .txt files."})
    prompt_split: str = field(default="train", metadata={"help": "The split of a hub dataset or save_to_disk folder."})
    prompt_filter: str = field(default="", metadata={
        "help": "Keep only rows where key=value (comma-separated, all must hold; values read as JSON), e.g. "
                "challenging=true for RealToxicityPrompts' challenging subset."})
    output_path: str = field(default="outputs/generations.json", metadata={"help": "Output JSON (the paper's nested format)."})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    alphas: list[float] = field(default_factory=list,
                                metadata={"help": "Strengths to sweep, 0 = the target alone (none given: the method's own "
                                                  "sweep); per --method: " + alpha_ranges() + "."})
    max_new_tokens: int = field(default=10, metadata={"help": "New tokens per continuation (paper: 10; the field: 20)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per generate() call."})
    num_samples: int = field(default=1, metadata={"help": "Samples per prompt (the field: 25 with --do_sample)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (nucleus) instead of greedy decoding."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus p when sampling."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    seed: int = field(default=2025, metadata={"help": "Base seed; each (alpha, batch) gets its own derived seed."})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    teacher_dtype: str = field(default="auto", metadata={
        "help": "The teachers' dtype (fusion, diff): auto = the target's (--dtype), or float32, bfloat16, float16. "
                "Their states enter the fusion as float32 either way. bfloat16 halves the bytes each decode step "
                "streams through the teachers' weights (bench/bench_generate.py measures it); it is a change of "
                "arithmetic, so picks at near-ties may differ from a float32 run."})
    norm: str = field(default="layernorm", metadata={"help": "For --method fusion: layernorm (the paper: parameter-free LayerNorm), rescale (to the norm "
                                                             "of h_target) or none (h_teacher A as it is: the teacher's logit scale with an A "
                                                             "from align.py --objective logits)."})
    bridge: str = field(default="auto", metadata={"help": "auto, ids (same tokenizer) or text (re-tokenise for the teacher)."})
    method: str = field(default="diff", metadata={"help": "diff (the default recipe: expert minus anti-expert through A), "
                                                          "fusion (the paper), wordban or steer (baselines). Alpha is "
                                                          "the strength of each."})
    anti_teacher_model: str = field(default="", metadata={
        "help": "For --method diff: the anti-expert teacher (same base as the expert). Empty (the default): the one "
                "the matrix's sidecar names; name both teachers or neither."})
    diff_space: str = field(default="hidden", metadata={"help": "For --method diff: hidden ((h_e - h_a) A through the target's "
                                                                 "output layer) or logits (the teachers' own logits on shared tokens)."})
    top_k: int = field(default=5, metadata={"help": "For --method diff: only the target's top-k tokens can be chosen "
                                                   "(0 = off; 5 measured best on dev)."})
    gate: Optional[float] = field(default=None, metadata={"help": "For --method diff: act only where log p_anti(pick) - "
                                                                  "log p_expert(pick) >= this (nats; unset = always act)."})
    pool: str = field(default="mean", metadata={"help": "For --method diff: mean (each teacher's mean hidden state over every "
                                                       "token of the text so far, the prompt's included: a context-level "
                                                       "offset; measured better on dev) or last (its state at the text's "
                                                       "last token, as before)."})
    context_weight: Optional[float] = field(default=None, metadata={
        "help": "For --method diff (hidden space, no gate): shrink the teachers' difference d toward its mean c over "
                "the training texts (the center step 2 stores beside a tuned pair's A): c + w (d - c). 1 = d as it is; "
                "0 = the constant c alone (a context-free offset). Unset: 0.25 (measured best on dev) when the matrix "
                "holds its pair's center, else 1 (an untuned pair, the logits space or a gate); the run's meta records "
                "the weight used."})
    promote_weight: Optional[float] = field(default=None, metadata={
        "help": "For --method diff (hidden space, no gate; needs the pair's center beside A): read each token's offset "
                "against a fixed threshold, the mean plus --demote_z standard deviations of the center's own logit "
                "bias over the target's vocabulary. Below it (what the pair demotes) the offset acts in full; above "
                "it (what the pair would promote) it is scaled by this. 1 = the offset as it is; 0 = demote only. "
                "Unset: 0.25 (measured best on dev) when the matrix holds its pair's center and no --gate is given, "
                "else 1; the run's meta records the weight used."})
    demote_z: float = field(default=-0.5, metadata={
        "help": "For --promote_weight other than 1: the threshold, in standard deviations of the center's logit bias "
                "from its mean (-0.5: tokens the center demotes by more than half a standard deviation)."})
    steer_vector: str = field(default="", metadata={"help": "For --method steer: a .pt file holding {'vector': [d_target]}."})
    draft_gate: Optional[float] = field(default=None, metadata={
        "help": "Detect, then revise (any method): at each alpha, keep the target's own continuation (alpha 0's record "
                "of the same prompt and sample: the draft) wherever profanity-check (the teacher data's labeller, not "
                "the BiLSTM judge) scores it below this, and the method's continuation elsewhere. Needs alpha 0 in "
                "--alphas. Unset = off (every record is the method's)."})
    max_prompts: int = field(default=0, metadata={"help": "Use only the first N prompts (after the filter; 0 = all)."})
    skip_prompts: int = field(default=0, metadata={
        "help": "Leave out the first N prompts (after the filter), before --max_prompts counts: e.g. a second half "
                "(--skip_prompts 150 of rtp:eval) that an earlier study never looked at."})
    device_map: str = field(default="", metadata={"help": "Place a large target across GPUs, e.g. 'auto' (needs accelerate)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output (and its journal)."})
    prefix_sharing: bool = field(default=True, metadata={
        "help": "Greedy sweeps of methods that act at the output layer (diff, fusion, steer): decode all alphas of "
                "a batch together, each distinct (prompt, prefix) once until the alphas' picks part (the same "
                "continuations, computed once). Off: each alpha decodes every row on its own."})
    protocol: str = field(default="paper", metadata={
        "help": "The literature protocol the run follows, recorded in the meta file: paper (greedy, 10 new tokens, one "
                "sample; mean toxicity) or dexperts (25 samples, top-p 0.9, 20 new tokens; EMT and toxicity "
                "probability). It sets no argument here (run_generation.sh's PROTOCOL does); arguments that depart "
                "from it are logged and recorded."})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        from .methods import get_method

        if not self.alphas:
            self.alphas = list(get_method(self.method).default_alphas)

        max_alpha = get_method(self.method).max_alpha
        for a in self.alphas:
            if not (isinstance(a, (int, float)) and math.isfinite(a)):
                raise InputError(f"--alphas: {a!r} is not a finite number")
            if max_alpha is not None and not 0.0 <= a <= max_alpha:
                raise InputError(f"--alphas: {a} is outside [0, {max_alpha:g}]")
            if a < 0:
                raise InputError(f"--alphas: {a} is negative (for --method {self.method} alpha is the strength)")
        if len(set(self.alphas)) != len(self.alphas):
            raise InputError(f"--alphas: repeated values in {self.alphas}")
        require_min(self, ("max_new_tokens", "batch_size", "num_samples"), 1)
        if self.max_prompts < 0:
            raise InputError(f"--max_prompts must be >= 0, got {self.max_prompts}")
        if self.skip_prompts < 0:
            raise InputError(f"--skip_prompts must be >= 0, got {self.skip_prompts}")
        from .data import parse_filter

        parse_filter(self.prompt_filter)
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top_p must be in (0, 1], got {self.top_p}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if self.bridge not in ("auto", "ids", "text"):
            raise InputError(f"--bridge must be auto, ids or text, got {self.bridge!r}")
        if self.gate is not None and not math.isfinite(self.gate):
            raise InputError(f"--gate must be a finite number, got {self.gate}")
        if self.draft_gate is not None:
            if not (0 < self.draft_gate <= 1):
                raise InputError(f"--draft_gate must be a profanity-check score in (0, 1], got {self.draft_gate}")
            if 0.0 not in [float(a) for a in self.alphas]:
                raise InputError("--draft_gate keeps the target's own continuation (the draft) where it is clean: "
                                 "--alphas must include 0")
        self.dtype = check_dtype_name(self.dtype)
        self.teacher_dtype = check_dtype_name(self.teacher_dtype, "--teacher_dtype")
        self.device = check_device_name(self.device)
        self.alphas = [float(a) for a in self.alphas]
        get_method(self.method)(self).check()


def parse_args(argv=None, description: str | None = None) -> GenerateArguments:
    (args,) = parse_dataclasses([GenerateArguments], argv, description=description or __doc__.split("\n\n")[0])
    return args


def protocol_record(args: GenerateArguments) -> dict:
    """The meta file's record of the run's protocol: its name, its settings, the metrics the literature reads under
    it, and each argument whose value departs from the protocol's (``{arg: {"protocol": v, "used": w}}``)."""
    spec = PROTOCOLS[args.protocol]
    departures = {k: {"protocol": v, "used": getattr(args, k)} for k, v in spec["settings"].items()
                  if getattr(args, k) != v}
    return {"name": args.protocol, "settings": dict(spec["settings"]), "metrics": spec["metrics"],
            "departures": departures}


def batch_seed(seed: int, alpha: float, batch_index: int, tag: str = "") -> int:
    h = hashlib.sha256(f"{seed}:{alpha:.6f}:{batch_index}:{tag}".encode()).hexdigest()
    return int(h[:8], 16) & 0x7FFFFFFF


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
class Decoded:
    """One batch's continuations: exact texts, kept token ids, stop reasons (``eos``, ``control``, ``length``)
    and, when recorded, the unsteered target's NLL of every kept token."""

    texts: list[str]
    ids: list[list[int]]
    reasons: list[str]
    nll: list[list[float]] | None = None

    @property
    def counts(self) -> list[int]:
        return [len(x) for x in self.ids]


def decode_batch(target, tokenizer, prompts: list[str], gen_config, context_factory: Callable[[], Any],
                 device: torch.device, extra_generate_kwargs: dict | None = None, stop_ids: set[int] | None = None,
                 eos_ids: set[int] | None = None, memo=None, nll_postprocess: Callable | None = None) -> Decoded:
    """One ``generate()`` call on a left-padded batch, inside ``context_factory()`` (a method's hooks).
    Each continuation is cut at its first stop token (default: pad or EOS) and decoded as the exact text it
    adds after its prompt; its stop reason is ``eos`` (an ``eos_ids`` token, default the config's EOS),
    ``control`` (another stop token) or ``length``. ``memo``: the batch's :class:`detox_pa.fusion.PromptMemo`
    (the prompt's prefill is computed once for all the alphas that share it). ``nll_postprocess``: record the
    NLL of each pick under the target's own logits made the judge's by this function
    (:func:`detox_pa.ppl.judge_postprocess`); only valid where no hook edits the output layer's input."""
    from .fusion import NLLRecorder, hooks, shared_prefill

    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    enc = {k: v.to(device) for k, v in enc.items()}
    P = enc["input_ids"].shape[1]
    recorder = NLLRecorder(target, nll_postprocess) if nll_postprocess is not None else None
    # the recorder's hooks go first: a method's hook that edits the logits runs after it has read them
    with torch.no_grad(), hooks(recorder.hooks if recorder else list), shared_prefill(target, memo), context_factory():
        out = target.generate(**enc, generation_config=gen_config, **(extra_generate_kwargs or {}))
    nll = recorder.finish(out[:, P:]) if recorder is not None else None
    return _decoded(tokenizer, enc, out[:, P:], nll, gen_config, stop_ids, eos_ids)


def _eos_ids(gen_config) -> set[int]:
    return set(_as_list(gen_config.eos_token_id)) - {None}


def _decoded(tokenizer, enc: dict, new_ids: torch.Tensor, nll: torch.Tensor | None, gen_config,
             stop_ids: set[int] | None = None, eos_ids: set[int] | None = None) -> Decoded:
    """Each row's continuation cut at its first stop token, as :func:`decode_batch` describes; ``enc``: the
    prompts' ids and mask, ``new_ids`` [B, T] the tokens generated after them, ``nll`` [B, T] or None."""
    eos = _eos_ids(gen_config) if eos_ids is None else eos_ids
    stop = ({gen_config.pad_token_id} - {None}) | eos if stop_ids is None else stop_ids
    texts, kept, reasons, nlls = [], [], [], []
    for i in range(new_ids.shape[0]):
        prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        new = new_ids[i].tolist()
        cut = next((j for j, t in enumerate(new) if t in stop), len(new))
        reasons.append("length" if cut == len(new) else "eos" if new[cut] in eos else "control")
        new = new[:cut]
        texts.append(continuation_text(tokenizer, prompt_ids, new))
        kept.append(new)
        if nll is not None:
            nlls.append(_float32_list(nll[i, :cut]))
    return Decoded(texts, kept, reasons, nlls if nll is not None else None)


def prefix_sharing(method, gen_config) -> bool:
    """Whether a sweep of ``method`` under ``gen_config`` can be decoded by :func:`decode_sweep`: greedy (one
    beam), and a method whose alphas act at the output layer only, each on its own rows (``shares_prefixes``)."""
    return (not gen_config.do_sample and (gen_config.num_beams or 1) == 1 and method.keeps_prompt_state
            and method.shares_prefixes)


def decode_sweep(method, target, tokenizer, prompts: list[str], alphas: list[float], gen_config, device,
                 nll_postprocess: Callable | None = None, share=None) -> list[tuple[float, Decoded]]:
    """Every alpha of one batch decoded greedily in ONE ``generate()`` call, each distinct prefix once.

    The batch holds the prompts once per alpha (alpha ``j``'s rows are ``[j * B, (j + 1) * B)``); the method's
    :meth:`~detox_pa.methods.Method.sweep_context` edits each alpha's rows at the output layer exactly as that
    alpha's own hooks do, and the target (:class:`detox_pa.fusion.RowShare`) and the teachers (that context)
    compute the rows that hold the same tokens once: greedy rows of one prompt share their continuation until the
    first step where the alphas' picks part, and there the row is duplicated. ``generate()`` itself is unchanged
    (its stopping, its padding of ended rows), so each alpha's :class:`Decoded` is the one :func:`decode_batch`
    gives for that alpha alone, up to float differences from computing rows in batches of another shape.
    ``share``: the :class:`~detox_pa.fusion.RowShare` that counts the rows computed (a fresh one when None).
    Raises :class:`~detox_pa.fusion.RowShareUnsupported` before anything is returned when the model cannot share
    rows."""
    from .fusion import NLLRecorder, RowShare, hooks, shared_rows

    share = RowShare() if share is None else share
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    B, P, n = len(prompts), enc["input_ids"].shape[1], len(alphas)
    ids = enc["input_ids"].repeat(n, 1).to(device)
    mask = enc["attention_mask"].repeat(n, 1).to(device)
    record = nll_postprocess is not None and any(method.records_nll(a) for a in alphas)
    recorder = NLLRecorder(target, nll_postprocess, share) if record else None
    with torch.no_grad(), hooks(recorder.hooks if recorder else list), shared_rows(target, share), \
            method.sweep_context(alphas, B, _eos_ids(gen_config), share=share):
        out = target.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
    nll = recorder.finish(out[:, P:]) if recorder is not None else None
    res = []
    for j, a in enumerate(alphas):
        rows = slice(j * B, (j + 1) * B)
        keep = nll is not None and method.records_nll(a)
        res.append((a, _decoded(tokenizer, enc, out[rows, P:], nll[rows] if keep else None, gen_config)))
    return res


def sweep_batch(method, target, tokenizer, prompts: list[str], alphas: list[float], seed_of: Callable[[float], int],
                gen_config, device, memo=None, nll_postprocess: Callable | None = None, share=None):
    """Every alpha of one batch, as :func:`run` does: yields ``(alpha, seed, Decoded, seconds)`` for each alpha.

    ``share`` (a :class:`detox_pa.fusion.RowShare`, for a sweep where :func:`prefix_sharing` holds): the alphas
    are decoded together by :func:`decode_sweep`, each distinct prefix once, and yielded when all have finished,
    the batch's time split evenly between them. When the model cannot share rows, ``share.disabled`` says why
    (logged once) and this batch and the later ones are decoded as below.

    Otherwise each alpha in turn, yielded as it finishes. ``memo`` (a :class:`detox_pa.fusion.PromptMemo`, for
    a method that keeps the prompt's states) is cleared first, so the batch's prompt is computed by its first
    alpha and replayed for the others. ``nll_postprocess``: record the unsteered NLL at the alphas where the
    method allows it."""
    from .fusion import RowShareUnsupported

    if share is not None and not share.disabled:
        t0 = time.time()
        try:
            decoded = decode_sweep(method, target, tokenizer, prompts, alphas, gen_config, device, nll_postprocess,
                                   share)
        except RowShareUnsupported as e:
            share.disabled = str(e)
            log.warning("prefix sharing is off for this run (%s): each alpha is decoded on its own", e)
        else:
            dt = (time.time() - t0) / len(alphas)
            for a, d in decoded:
                yield a, seed_of(a), d, dt
            return
    if memo is not None:
        memo.clear()
    method.memo = memo
    try:
        for a in alphas:
            seed = seed_of(a)
            torch.manual_seed(seed)
            t0 = time.time()
            d = decode_batch(target, tokenizer, prompts, gen_config, lambda: method.context(a), device,
                             method.generate_kwargs(a), memo=memo,
                             nll_postprocess=nll_postprocess if method.records_nll(a) else None)
            yield a, seed, d, time.time() - t0
    finally:
        method.memo = None


def _float32_list(x: torch.Tensor) -> list[float]:
    """Float32 values as the shortest decimals that give them back exactly (compact JSON, no precision lost)."""
    return [float(str(v)) for v in x.float().numpy()]


def generate_batch(target, tokenizer, prompts: list[str], gen_config, context_factory: Callable[[], Any],
                   device: torch.device, extra_generate_kwargs: dict | None = None, stop_ids: set[int] | None = None,
                   eos_ids: set[int] | None = None) -> tuple[list[str], list[int], list[str]]:
    """:func:`decode_batch` as ``(texts, token counts, stop reasons)``."""
    d = decode_batch(target, tokenizer, prompts, gen_config, context_factory, device, extra_generate_kwargs, stop_ids,
                     eos_ids)
    return d.texts, d.counts, d.reasons


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def assemble(alphas: list[float], done: dict[tuple[float, int], list[dict]], n_batches: int,
             keep_fields: Iterable[str] = ("prompt", "response", "continuation", "prompt_index", "sample", "seed",
                                           "n_new_tokens", CONT_IDS_KEY, CONT_NLL_KEY)) -> list[dict]:
    """The paper's nested JSON, records ordered by (prompt_index, sample)."""
    out = []
    keep = list(keep_fields)
    for a in alphas:
        recs = [r for k in range(n_batches) for r in done[(float(a), k)]]
        recs.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        out.append({"alpha": a, PAIRS_KEY: [{k: r[k] for k in keep if k in r} for r in recs]})
    return out


# ------------------------------------------------------------------------------------------ the step


def apply_draft_gate(result: list[dict], cut: float, score: Callable[[list[str]], list[float]]) -> dict:
    """``--draft_gate``: in every alpha block but 0's, a record whose draft (alpha 0's record of the same prompt and
    sample) scores below ``cut`` under ``score`` (what eval_toxicity.py scores: the response) takes the draft's text,
    ids and NLL (the target's own, as at alpha 0); each record gets ``draft_kept``. Edits ``result`` in place and
    returns what the meta file records (how many drafts each alpha kept)."""
    blocks = {float(b["alpha"]): b[PAIRS_KEY] for b in result}
    drafts = {(r["prompt_index"], r["sample"]): r for r in blocks[0.0]}
    keys = list(drafts)
    scores = dict(zip(keys, score([drafts[k]["response"] for k in keys])))
    copied = ("response", "continuation", "n_new_tokens", CONT_IDS_KEY, CONT_NLL_KEY)
    kept = {}
    for a, recs in blocks.items():
        if a == 0.0:
            continue
        n = 0
        for r in recs:
            k = (r["prompt_index"], r["sample"])
            r[DRAFT_KEPT_KEY] = bool(scores[k] < cut)
            if r[DRAFT_KEPT_KEY]:
                n += 1
                for f in copied:
                    if f in drafts[k]:
                        r[f] = drafts[k][f]
                    else:
                        r.pop(f, None)
        kept[f"{a:g}"] = n
    return {"scorer": "profanity-check", "cut": cut, "drafts": len(keys),
            "drafts_flagged": sum(v >= cut for v in scores.values()), "kept_per_alpha": kept,
            "what": "at each alpha, the target's own continuation (alpha 0's) was kept where profanity-check scored "
                    "it below the cut, the method's continuation elsewhere (detect, then revise)"}


def select_prompts(args: GenerateArguments) -> list[str]:
    """The prompts this run decodes: ``--data_path``'s (filtered), the first ``--skip_prompts`` left out, then at
    most ``--max_prompts``."""
    from .data import load_prompts

    skip, cap = args.skip_prompts, args.max_prompts
    prompts = load_prompts(args.data_path, args.prompt_field, args.prompt_split, args.prompt_filter,
                           skip + cap if cap else 0)
    if skip and len(prompts) <= skip:
        raise InputError(f"--skip_prompts {skip}: prompts {args.data_path} hold only {len(prompts)}, none is left")
    return prompts[skip:]


def run_fingerprint(args: GenerateArguments, target_path: str, prompts: list[str], method, method_inputs: dict) -> dict:
    """What defines the output: a journal written with another fingerprint is refused on resume."""
    from .io import sha256_text
    from .runtime import model_files_fingerprint

    return {
        "target_model": args.target_model, "target_files": model_files_fingerprint(target_path),
        "data": sha256_text("\n".join(prompts)), "max_prompts": args.max_prompts,
        **({"skip_prompts": args.skip_prompts} if args.skip_prompts else {}), "method": args.method,
        **({"teacher_dtype": args.teacher_dtype} if args.teacher_dtype != "auto" and method.needs_models() else {}),
        **method_inputs, **method.fingerprint(),
        **{k: getattr(args, k) for k in ("alphas", "max_new_tokens", "batch_size", "num_samples", "do_sample",
                                         "seed", "dtype")},
        "top_p": args.top_p if args.do_sample else None, "temperature": args.temperature if args.do_sample else None,
    }


def open_journals(out_path: Path, rank: int, world: int, fingerprint: dict, overwrite: bool) -> list[Journal]:
    """This process's journal first, then any other beside the output (an earlier run's, of any world
    size), all loaded; ``--overwrite`` removes them first (rank 0)."""
    from .runtime import barrier

    if overwrite and rank == 0:
        for p in journal_paths(out_path):
            p.unlink()
    barrier(world)
    mine = journal_path(out_path, rank, world)
    journals = [Journal(mine, fingerprint)] + [Journal(p, fingerprint) for p in journal_paths(out_path) if p != mine]
    for j in journals:
        j.load()
    return journals


def load_target(args: GenerateArguments, target_path: str, device, dtype):
    """The target (eval mode; spread with ``--device_map`` or on ``device``) and its left-padding tokenizer."""
    from .runtime import load_causal_lm, load_tokenizer

    tok = load_tokenizer(target_path, padding_side="left")
    return load_causal_lm(target_path, dtype, device, args.device_map or None), tok


def generation_config(args: GenerateArguments, target, tok):
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, top_k=0 if args.do_sample else None,
        top_p=args.top_p if args.do_sample else None, temperature=args.temperature if args.do_sample else None,
        pad_token_id=tok.pad_token_id, eos_token_id=target.generation_config.eos_token_id or tok.eos_token_id,
        bos_token_id=tok.bos_token_id)


def recorded_nll_meta(result: list[dict], out_path: Path, target_path: str, dtype, device) -> dict | None:
    """What the recorded NLL belongs to (the meta file's ``recorded_nll``): the target by its files and weights,
    the dtype, and the generations file by its sha256, so that ``eval_ppl.py`` takes it only for this very
    file and a judge verifiably the same (see :func:`detox_pa.ppl.recorded_records`). None when nothing was
    recorded."""
    from .io import sha256_file
    from .ppl import judge_identity

    alphas = [blk["alpha"] for blk in result if any(CONT_NLL_KEY in p for p in blk[PAIRS_KEY])]
    if not alphas:
        return None
    return {"fields": [CONT_IDS_KEY, CONT_NLL_KEY], "alphas": alphas, "output_sha256": sha256_file(out_path),
            "device": str(device), **judge_identity(target_path, dtype),
            "note": "per pair, the target's ids of the continuation (cut at its first stop token) and the unsteered "
                    "target's NLL of each (nats, float32 of the run's dtype), given the prompt as tokenised with "
                    "the tokenizer's special tokens and the ids before it"}


def sharing_record(share) -> dict | None:
    """The meta file's ``prefix_sharing``: the target's rows computed at the decode steps against the rows a
    per-alpha decode computes there, for this process's batches (None when the run did not share prefixes)."""
    if share is None:
        return None
    return {"rows_computed": share.computed, "rows_asked": share.rows,
            "share": round(share.computed / max(share.rows, 1), 4),
            "prompt_rows_computed": share.prefill_computed, "prompt_rows_asked": share.prefill_rows,
            "output_layer_rows_computed": share.head_computed, "output_layer_rows_asked": share.head_rows,
            **({"disabled": share.disabled} if share.disabled else {}),
            "note": "greedy rows of one prompt at several alphas hold the same tokens until the alphas' picks part: "
                    "at each decode step after the prompt the target computed each distinct (prompt, prefix) once "
                    "(rows_computed), where a per-alpha decode computes one row per prompt and alpha (rows_asked); "
                    "the prompts are computed once per batch either way"}


def run(args: GenerateArguments) -> list[dict] | None:
    """Generate for every alpha (resuming from the journals), write the paper's JSON and its sidecar.
    Returns the nested result (None on ranks other than 0)."""
    from .assets import resolve_model
    from .io import atomic_write_json, check_output_path
    from .methods import get_method
    from .runtime import (barrier, dist_rank_world, library_versions, progress, rank_device, resolve_device,
                          resolve_dtype)

    rank, world = dist_rank_world()
    log_args(args)
    protocol = protocol_record(args)
    if protocol["departures"] and rank == 0:
        log.warning("protocol %s, with explicit arguments that depart from it (they win; recorded in the meta file): %s",
                    args.protocol, ", ".join(f"{k} {d['used']} (the protocol's: {d['protocol']})"
                                             for k, d in protocol["departures"].items()))
    # ---- inputs first: nothing heavy is loaded (and nothing written) until all of them check out
    out_path = check_output_path(args.output_path, "--output_path")
    prompts = select_prompts(args)
    device = rank_device(resolve_device(args.device), rank) if world > 1 else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    target_path = resolve_model(args.target_model, "--target_model")
    method = get_method(args.method)(args)
    method_inputs = method.check_inputs(target_path)
    if out_path.exists() and not args.overwrite:
        raise InputError(f"output {out_path} already exists; pass --overwrite to replace it")
    fingerprint = run_fingerprint(args, target_path, prompts, method, method_inputs)
    journals = open_journals(out_path, rank, world, fingerprint, args.overwrite)
    done = {k: v for j in journals for k, v in j.done.items()}

    # ---- models
    t_load = time.time()
    target, tok = load_target(args, target_path, device, dtype)
    method.load(target, tok, device, dtype)
    log.info("loaded models in %.1f s (method %s, target %s, dtype %s, device %s)", time.time() - t_load,
             args.method, args.target_model, dtype, device)
    gen_config = generation_config(args, target, tok)
    lengths = [len(x) for x in tok(prompts, add_special_tokens=True)["input_ids"]]
    batches = make_batches(lengths, args.num_samples, args.batch_size)
    mine = [(a, k) for a in args.alphas for k in range(len(batches)) if k % world == rank]
    todo = {t for t in mine if t not in done}
    log.info("%d prompts x %d samples = %d continuations per alpha in %d batches; %d of this rank's %d batches "
             "already done (journal)", len(prompts), args.num_samples, len(prompts) * args.num_samples, len(batches),
             len(mine) - len(todo), len(mine))
    out_path.parent.mkdir(parents=True, exist_ok=True)  # the inputs and models are checked: now we write
    journals[0].start()
    memo_counts = (0, 0)

    bar = progress(len(todo), f"generate rank {rank}" if world > 1 else "generate", "batch",
                   disable=rank != 0 and world > 1)
    from .fusion import PromptMemo, RowShare
    from .ppl import judge_postprocess

    # batch by batch, every alpha in turn: the prompt's prefill (target and teachers) is computed once per batch;
    # a greedy sweep of a method that acts at the output layer decodes all alphas of a batch together instead,
    # each distinct (prompt, prefix) once
    memo = PromptMemo() if method.keeps_prompt_state else None
    share = RowShare() if args.prefix_sharing and prefix_sharing(method, gen_config) else None
    postprocess = judge_postprocess(target)
    for k, batch in enumerate(batches):
        alphas = [a for a in args.alphas if (a, k) in todo]
        if not alphas:
            continue
        batch_prompts = [prompts[it.prompt_index] for it in batch]
        if share is not None and not share.disabled:
            # decoded together, a batch's alphas share their rows' float arithmetic (batched kernels round by the
            # batch's shape): a resumed batch is decoded with all of them again, so its records are bit for bit
            # those of an uninterrupted run, and only the missing ones are written
            alphas = list(args.alphas)
        for a, seed, d, dt in sweep_batch(method, target, tok, batch_prompts, alphas,
                                          lambda a, k=k: batch_seed(args.seed, a, k), gen_config, device, memo,
                                          postprocess, share):
            if (a, k) not in todo:
                continue
            recs = [{"alpha": a, "batch": k, "batch_size": len(batch), "prompt_index": it.prompt_index,
                     "sample": it.sample, "prompt": prompts[it.prompt_index], "response": txt.strip(),
                     "continuation": txt, "seed": seed, "n_new_tokens": len(ids), "batch_seconds": round(dt, 4)}
                    for it, txt, ids in zip(batch, d.texts, d.ids)]
            if d.nll is not None:
                for r, ids, nll in zip(recs, d.ids, d.nll):
                    r[CONT_IDS_KEY], r[CONT_NLL_KEY] = ids, nll
            journals[0].append(recs)
            done[(a, k)] = recs
            bar.set_postfix(alpha=a)
            bar.update(1)
        if memo is not None:
            memo_counts = (memo_counts[0] + memo.computed, memo_counts[1] + memo.replays)
    bar.close()
    if memo is not None and memo_counts != (0, 0):
        log.info("prompt prefills (target and teachers): %d computed, %d replayed for other alphas", *memo_counts)
    sharing = sharing_record(share)
    if sharing and sharing["rows_asked"]:
        log.info("prefix sharing: at the decode steps the target computed %d of the %d rows a per-alpha decode "
                 "computes (%.1f%%)", sharing["rows_computed"], sharing["rows_asked"], 100 * sharing["share"])

    if world > 1:  # rank 0 merges what every rank journalled
        barrier(world)
        if rank != 0:
            return None
        for p in journal_paths(out_path, ranks_only=True):
            j = Journal(p, fingerprint)
            j.load()
            done.update(j.done)
    missing = [(a, k) for a in args.alphas for k in range(len(batches)) if (a, k) not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} batches missing after generation (first: alpha {missing[0][0]}, batch {missing[0][1]})")
    result = assemble(args.alphas, done, len(batches))
    draft = None
    if args.draft_gate is not None:  # a post-pass: the journals hold the method's own continuations
        from .scorers import get_scorer

        scorer = get_scorer("profanity-check")
        draft = apply_draft_gate(result, args.draft_gate, lambda texts: [float(x) for x in scorer.score(texts)])
        log.info("draft gate %g: %d of %d drafts flagged; kept per alpha %s", args.draft_gate, draft["drafts_flagged"],
                 draft["drafts"], draft["kept_per_alpha"])
    atomic_write_json(out_path, result)
    recorded = recorded_nll_meta(result, out_path, target_path, dtype, device)
    gen_seconds = {str(a): round(sum(r["batch_seconds"] for k in range(len(batches)) for r in done[(a, k)][:1]), 3)
                   for a in args.alphas}
    meta_path = generation_meta_path(out_path)
    atomic_write_json(meta_path, {
        "output": str(out_path), "method": args.method, "target_model": args.target_model, "target_path": target_path,
        **method.describe(), "protocol": protocol,
        "data_path": args.data_path, "n_prompts": len(prompts), "num_samples": args.num_samples,
        "n_batches_per_alpha": len(batches), "world_size": world,
        "generation_seconds_per_alpha": gen_seconds, "fingerprint": fingerprint, "arguments": args_to_dict(args),
        "versions": library_versions(("torch", "transformers")),
        "note": "generation_seconds_per_alpha sums the batches' wall times, including those of resumed earlier runs; "
                "a batch's prompt prefill is computed once, in its first alpha's time; with prefix sharing the "
                "alphas of a batch are decoded together and its time is split evenly between them",
        **({"prefix_sharing": sharing} if sharing else {}),
        **({RECORDED_NLL_KEY: recorded} if recorded else {}),
        **({"draft_gate": draft} if draft else {}),
    })
    for p in journal_paths(out_path):
        p.unlink()
    log.info("wrote %s (%d alphas x %d records) and %s", out_path, len(result), len(result[0][PAIRS_KEY]), meta_path)
    return result
