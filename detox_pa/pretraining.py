"""Step 1, the teacher: the first N decoder layers of a causal LM, fine-tuned on prompt -> completion pairs
with the loss on the completion only. ``pretrain.py`` parses :class:`Args` and calls :func:`train_teacher`.

The loss is on completion tokens only (exact mask, see :mod:`detox_pa.completion`). Works for any
Hugging Face causal LM (Llama, Mistral, Gemma-3, Qwen2, GPT-2, ...), in one CPU process, on GPUs
with the `deepspeed` launcher, or with DeepSpeed on CPU. `run_pretrain.sh` picks the launch mode.

Copy-paste (the embedded default, one CPU process, a few minutes on 2 cores):

    python pretrain.py --model_name_or_path smollm2-135m --num_teacher_layers 3 \
        --training_data_path data/teacher_data.tsv --output_dir outputs/teacher

Reads: a base model (alias, local folder or hub id) and a WildJailbreak-style TSV (`vanilla`,
`adversarial`, `completion`) or a JSONL file (`prompt`, `completion`).
Writes into --output_dir: a normal Hugging Face folder (model + tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads with no custom class, `checkpoint-*` folders while
training, and the sidecar `detox_pa_teacher.json` (base model, layers kept, data file and sha256,
row and token counts, losses, time, tokens/s, arguments, seed, library versions), written last.

Resume: `--resume_from_checkpoint last` (RESUME=1 in run_pretrain.sh) continues from the newest
`checkpoint-*` in --output_dir, or give a checkpoint folder. An --output_dir that already holds a
teacher or checkpoints is refused unless you resume or pass --overwrite_output_dir.

DeepSpeed: `--deepspeed ds_config.json`. Without a launcher, pretrain.py sets RANK=0 LOCAL_RANK=0
WORLD_SIZE=1 MASTER_ADDR/MASTER_PORT itself (else DeepSpeed asks for mpi4py), and adds --use_cpu
when no GPU is visible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from transformers import TrainingArguments

from .artifacts import CHECKPOINT_GLOB, FINAL_TMP, RUN_RECORD, TEACHER_SIDECAR
from .cli import args_to_dict, log_args, parse_dataclasses
from .errors import InputError
from .io import json_error

log = logging.getLogger(__name__)

RESUME_LAST = ("last", "true", "1", "yes")
RESUME_NONE = ("", "false", "0", "no", "none")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="smollm2-135m", metadata={
        "help": "Base causal LM: an alias (smollm2-135m, gemma-3-270m), a local Hugging Face folder or a hub id."})
    num_teacher_layers: int = field(default=3, metadata={"help": "Keep the first N decoder layers of the base."})
    freeze_embeddings: bool = field(default=True, metadata={
        "help": "Do not train the input token embeddings (when tied to the output layer, this freezes both). The "
                "default recipe freezes them, so expert and anti-expert share one output layer; the paper trains "
                "them (--freeze_embeddings false)."})
    freeze_lm_head: Optional[bool] = field(default=None, metadata={
        "help": "Do not train the output layer (when it is tied to the embeddings, this freezes both). Default: "
                "the same as --freeze_embeddings."})
    dtype: str = field(default="float32", metadata={
        "help": "Weights dtype when loading (float32, bfloat16, float16, auto). Keep float32 and use --bf16 "
                "for mixed precision."})

    def __post_init__(self):
        if self.freeze_lm_head is None:
            self.freeze_lm_head = self.freeze_embeddings
        if isinstance(self.num_teacher_layers, bool) or self.num_teacher_layers < 1:
            raise InputError(f"--num_teacher_layers must be at least 1, got {self.num_teacher_layers}")
        from detox_pa.runtime import check_dtype_name

        self.dtype = check_dtype_name(self.dtype)


@dataclass
class DataArguments:
    training_data_path: str = field(default="data/teacher_data.tsv", metadata={
        "help": "WildJailbreak-style TSV (vanilla, adversarial, completion) or JSONL (prompt, completion)."})
    max_length: int = field(default=128, metadata={
        "help": "Truncate prompt+completion to this many tokens (the completion keeps at least half)."})
    separator: str = field(default=" ", metadata={
        "help": "Put between prompt and completion when neither has whitespace at the boundary "
                "(\\n and \\t may be spelled out)."})
    append_eos: bool = field(default=False, metadata={"help": "Append the EOS token to every completion (trained)."})
    probe_rows: int = field(default=64, metadata={
        "help": "Measure the completion loss on the first K rows before and after training (0: off)."})

    def __post_init__(self):
        from .completion import unescape_separator

        p = Path(self.training_data_path)
        if not p.exists():
            raise InputError(f"training data file {p} does not exist (--training_data_path)")
        if p.is_dir():
            raise InputError(f"training data file {p} is a folder; expected a .tsv or .jsonl file")
        if p.suffix.lower() not in (".tsv", ".tab", ".jsonl", ".json"):
            raise InputError(f"training data file {p}: unknown format '{p.suffix}'; expected .tsv (WildJailbreak) "
                             f"or .jsonl (prompt, completion)")
        if self.max_length < 2:
            raise InputError(f"--max_length must be at least 2, got {self.max_length}")
        self.separator = unescape_separator(self.separator)
        if not self.separator:
            raise InputError("--separator must not be empty: prompt and completion are never glued together")
        if self.probe_rows < 0:
            raise InputError(f"--probe_rows must be >= 0, got {self.probe_rows}")


@dataclass
class TeacherTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for this step."""

    output_dir: str | None = field(default="outputs/teacher", metadata={
        "help": "Where the teacher, its checkpoints and its sidecar are written."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an --output_dir that already holds a teacher or checkpoints (deletes the old "
                "checkpoint-* folders)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (the default recipe's, for a "
                                                                   "3-layer teacher; the paper: 1e-5)."})
    per_device_train_batch_size: int = field(default=16, metadata={
        "help": "Rows per device and step (the paper: 2 per GPU x 7 GPUs x gradient accumulation 4)."})
    warmup_steps: float = field(default=5, metadata={"help": "Linear warm-up steps (or a share of all steps if < 1)."})
    save_steps: float = field(default=50, metadata={"help": "Save a checkpoint every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N steps."})
    logging_first_step: bool = field(default=True, metadata={"help": "Log the loss of the first step."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    include_num_input_tokens_seen: str = field(default="non_padding", metadata={
        "help": "Count tokens seen, for tokens/second: no, all or non_padding."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the dataset columns as they are."})

    def __post_init__(self):
        if self.deepspeed and isinstance(self.deepspeed, str):
            ds = Path(self.deepspeed)
            if not ds.is_file():
                raise InputError(f"DeepSpeed config {ds} does not exist (--deepspeed)")
            try:
                json.loads(ds.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"DeepSpeed config {json_error(ds, e)}") from None
        super().__post_init__()
        import torch

        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning is a no-op without a GPU (and warns every epoch)


@dataclass
class Args:
    model: ModelArguments
    data: DataArguments
    training: TeacherTrainingArguments


# The Trainer's options --help shows (the ones this step sets or run_pretrain.sh passes); --help_all shows all.
TRAINER_SHOWN = ("output_dir", "overwrite_output_dir", "learning_rate", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "num_train_epochs", "max_steps", "warmup_steps", "logging_steps",
                 "logging_first_step", "save_strategy", "save_steps", "save_total_limit", "seed", "report_to", "bf16",
                 "deepspeed", "use_cpu", "resume_from_checkpoint")
ModelArguments._argument_group_name = "the teacher (this project's arguments)"
DataArguments._argument_group_name = "its data (this project's arguments)"
TeacherTrainingArguments._argument_group_name = (
    "training: transformers' TrainingArguments (the ones this step sets; every other one is accepted too, "
    "pretrain.py --help_all lists them)")


def print_help(description: str | None, everything: bool = False) -> None:
    """``--help``: this project's arguments first, then the Trainer options the step uses; ``--help_all``: all."""
    import argparse

    from .cli import _make_parser

    parser = _make_parser((ModelArguments, DataArguments, TeacherTrainingArguments), description)
    if not everything:
        own = {f.name for t in (ModelArguments, DataArguments) for f in dataclasses.fields(t)}
        for action in parser._actions:
            if action.dest not in own and action.dest not in TRAINER_SHOWN and action.dest not in ("help", "config"):
                action.help = argparse.SUPPRESS
        parser.epilog = (f"Every other option of transformers' TrainingArguments (about "
                         f"{len(dataclasses.fields(TrainingArguments)) - len(TRAINER_SHOWN)} more: hub, FSDP, "
                         f"evaluation, logging, ...) is accepted too: pretrain.py --help_all lists them, or see "
                         f"https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments")
    parser.print_help()


def parse_args(argv: Sequence[str] | None = None, description: str | None = None) -> Args:
    """The three argument groups; ``--deepspeed`` without a launcher gets the single-process set-up."""
    from .cli import expand_config
    from .runtime import deepspeed_single_process

    raw = list(sys.argv[1:] if argv is None else argv)
    if "--help_all" in raw or "-h" in raw or "--help" in raw:
        print_help(description or __doc__.split("\n\n")[0], everything="--help_all" in raw)
        raise SystemExit(0)
    argv = expand_config(sys.argv[1:] if argv is None else argv, (ModelArguments, DataArguments, TeacherTrainingArguments))
    if any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in argv):
        argv = deepspeed_single_process(argv)
    m, d, t = parse_dataclasses((ModelArguments, DataArguments, TeacherTrainingArguments), argv,
                                description=description or __doc__.split("\n\n")[0])
    return Args(m, d, t)


# --------------------------------------------------------------------------------------- helpers


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob(CHECKPOINT_GLOB) if p.is_dir()) if out.is_dir() else []


def _holds_teacher(out: Path) -> bool:
    return (out / TEACHER_SIDECAR).exists() or (out / "config.json").exists()


def _complete(ck: Path) -> bool:
    """The Trainer writes trainer_state.json last in a checkpoint: without it the save was cut off."""
    return (ck / "trainer_state.json").is_file()


def _step_of(ck: Path) -> int:
    try:
        return int(ck.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def last_complete_checkpoint(out: Path, is_main: bool) -> Path | None:
    """The newest checkpoint whose save finished. Newer, cut-off ones (a run killed while saving) are
    removed so that the resumed run writes them again from scratch."""
    found = sorted((ck for ck in _checkpoints(out) if _step_of(ck) >= 0), key=_step_of)
    for ck in reversed(found):
        if _complete(ck):
            return ck
        log.warning("checkpoint %s is incomplete (no trainer_state.json: the run was stopped while saving it); "
                    "%s", ck, "removing it" if is_main else "skipping it")
        if is_main:
            shutil.rmtree(ck, ignore_errors=True)
    return None


# The arguments that define what a checkpoint is. Resuming with any of them changed would silently
# train a different model, so it is refused. Step counts, logging and saving may change.
RESUME_FIXED = {
    "model": ("model_name_or_path", "num_teacher_layers", "freeze_embeddings", "freeze_lm_head", "dtype"),
    "data": ("max_length", "separator", "append_eos"),
    "training": ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "lr_scheduler_type", "warmup_ratio", "warmup_steps", "optim", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "seed", "data_seed", "bf16", "fp16", "world_size"),
}


def run_fingerprint(args: Args, data_sha256: str) -> dict:
    fp = {"training_data_sha256": data_sha256}
    for group, keys in RESUME_FIXED.items():
        obj = getattr(args, group)
        for k in keys:
            if hasattr(obj, k):
                v = getattr(obj, k)
                fp[k] = v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
    return fp


def check_same_run(recorded: dict, now: dict, where: Path) -> None:
    diff = [f"{k} {recorded[k]!r} (now {now.get(k)!r})" for k in sorted(recorded) if recorded[k] != now.get(k)]
    if diff:
        raise InputError(f"{where}: the checkpoints were trained with different arguments: {'; '.join(diff)}; "
                         f"resume with the same ones, or start over with --overwrite_output_dir")


def resolve_resume(t: TeacherTrainingArguments, out: Path, is_main: bool) -> Path | None:
    """The checkpoint to resume from (or None), after checking --output_dir is safe to write."""
    value = (t.resume_from_checkpoint or "").strip()
    if value.lower() in RESUME_LAST:
        last = last_complete_checkpoint(out, is_main)
        if last is not None:
            return last
        if _holds_teacher(out) and not t.overwrite_output_dir:
            raise InputError(f"output_dir {out} holds a finished teacher and no checkpoint-* folder to resume from; "
                             f"pass --overwrite_output_dir to train again")
        log.warning("resume requested but %s holds no complete checkpoint-* folder: starting from scratch", out)
        return None
    if value.lower() not in RESUME_NONE:
        ck = Path(value)
        if not ck.is_dir() or not _complete(ck):
            raise InputError(f"checkpoint {ck} is not a complete Trainer checkpoint folder (no trainer_state.json) "
                             f"(--resume_from_checkpoint)")
        return ck
    old = _checkpoints(out)
    if (old or _holds_teacher(out)) and not t.overwrite_output_dir:
        what = f"{len(old)} checkpoint folder(s)" if old else "a teacher"
        raise InputError(f"output_dir {out} already holds {what}; resume with --resume_from_checkpoint last "
                         f"(RESUME=1) or start over with --overwrite_output_dir")
    if is_main and t.overwrite_output_dir:
        for ck in old:
            shutil.rmtree(ck, ignore_errors=True)
        for name in (TEACHER_SIDECAR, RUN_RECORD):
            (out / name).unlink(missing_ok=True)
        if old:
            log.info("--overwrite_output_dir: removed %d old checkpoint folder(s) in %s", len(old), out)
    return None


def check_or_record_run(args: Args, out: Path, resume: Path | None, data_sha256: str, is_main: bool) -> None:
    """A fresh run records its defining arguments in --output_dir; a resumed run must match them."""
    from .io import atomic_write_json, read_json

    now = run_fingerprint(args, data_sha256)
    if resume is not None:
        for rec in (out / RUN_RECORD, resume.parent / RUN_RECORD):
            if rec.is_file():
                check_same_run(read_json(rec, "run record"), now, rec)
                return
        log.warning("no %s next to %s (made by an older version?): cannot check the resumed arguments",
                    RUN_RECORD, resume)
        return
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_RECORD, now)


def tokenised_fingerprint(data_sha256: str, base_path: str, d: DataArguments) -> str:
    """The cache key of the tokenised teacher data: the data file, the tokenizer's files, the encoding options
    and the encoder's version."""
    import hashlib

    from .completion import ENCODING_VERSION
    from .runtime import model_files_fingerprint

    key = {"data": data_sha256, "tokenizer": model_files_fingerprint(base_path), "separator": d.separator,
           "max_length": d.max_length, "append_eos": d.append_eos, "encoding": ENCODING_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def freeze(model, embeddings: bool, lm_head: bool) -> dict:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb is not None and head is not None and head.weight is emb.weight
    if tied and embeddings != lm_head:
        log.warning("the input embeddings and the output layer are tied (one matrix): freezing one freezes both")
    if embeddings and emb is not None:
        for p in emb.parameters():
            p.requires_grad_(False)
    if lm_head and head is not None:
        for p in head.parameters():
            p.requires_grad_(False)
    return {"embeddings": bool(embeddings or (tied and lm_head)), "lm_head": bool(lm_head or (tied and embeddings)),
            "tied": bool(tied)}


def _zero_stage(t: TeacherTrainingArguments) -> int | None:
    if not t.deepspeed:
        return None
    cfg = t.deepspeed if isinstance(t.deepspeed, dict) else json.loads(Path(t.deepspeed).read_text(encoding="utf-8"))
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def _r(x, nd: int = 4):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _move_into(src: Path, dest: Path) -> None:
    """Move the files of a finished save into ``dest`` one by one (each rename is atomic); remove
    weight files of an older save that the new one does not have."""
    names = {p.name for p in src.iterdir()}
    for old in list(dest.glob("model*.safetensors*")) + list(dest.glob("pytorch_model*")):
        if old.name not in names:
            old.unlink()
    for p in src.iterdir():
        os.replace(p, dest / p.name)
    src.rmdir()


# ------------------------------------------------------------------------------------------ main


def train_teacher(args: Args) -> dict:
    """Step 1 (pretrain.py's body): check the inputs, tokenise with the exact mask, train (resuming when
    asked), save the teacher into place and write its sidecar last. Returns the sidecar."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback, set_seed

    from .assets import resolve_model
    from .assets import cache_dir
    from .completion import CompletionCollator, completion_loss, completion_trainer_class, encode_pairs, pad_token_id_of
    from .data import read_teacher_data
    from .io import atomic_write_json, check_output_dir, sha256_file
    from .runtime import library_versions, on_terminal, tell_deepspeed_the_accelerator
    from .teacher import base_layer_count, check_layer_count, load_teacher_model, parameter_count

    m, d, t = args.model, args.data, args.training
    tell_deepspeed_the_accelerator()
    log_args(m, d, t)
    t_start = time.time()
    is_main = t.process_index == 0

    # ---- everything that can be wrong with the input is checked before any model is loaded
    pairs, read_stats = read_teacher_data(d.training_data_path)
    log.info("read %s: %d rows, %d pairs used, %d skipped (empty completion), %d skipped (empty prompt)",
             d.training_data_path, read_stats["rows"], len(pairs), read_stats["skipped_empty_completion"],
             read_stats["skipped_empty_prompt"])
    base_path = resolve_model(m.model_name_or_path, "teacher base model (--model_name_or_path)")
    total_layers = base_layer_count(base_path)
    check_layer_count(total_layers, m.num_teacher_layers, f"{base_path}/config.json")
    out = check_output_dir(t.output_dir, "--output_dir")
    data_sha256 = sha256_file(d.training_data_path)
    resume = resolve_resume(t, out, is_main)
    check_or_record_run(args, out, resume, data_sha256, is_main)

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token: using EOS %r for padding (padded positions are masked)",
                 tokenizer.eos_token)
    fingerprint = tokenised_fingerprint(data_sha256, base_path, d)
    cache = cache_dir() / "tokenised" / f"{fingerprint}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with t.main_process_first(desc="tokenising the teacher data"):  # one rank writes the cache, the others read it
        examples, enc = encode_pairs(tokenizer, pairs, separator=d.separator, max_length=d.max_length,
                                     append_eos=d.append_eos, progress=is_main, cache_file=str(cache),
                                     fingerprint=fingerprint)
    log.info("tokenised %d pairs: %d used, %d truncated to %d tokens, %d dropped (no completion token); "
             "%d tokens, %d of them trained; longest %d", enc.rows_in, enc.rows_used, enc.rows_truncated,
             d.max_length, enc.rows_dropped_no_completion_token, enc.tokens_total, enc.tokens_trained, enc.max_tokens)
    if len(examples) == 0:
        raise InputError(f"training data file {d.training_data_path}: no row has a completion token left after "
                         f"tokenisation")

    # ---- the model
    set_seed(t.seed)
    model = load_teacher_model(base_path, m.num_teacher_layers, m.dtype, name=m.model_name_or_path)
    frozen = freeze(model, m.freeze_embeddings, m.freeze_lm_head)
    n_params, n_train = parameter_count(model), parameter_count(model, trainable_only=True)
    log.info("teacher: %d of %d layers of %s, %s parameters (%s trainable)", m.num_teacher_layers, total_layers,
             m.model_name_or_path, f"{n_params:,}", f"{n_train:,}")
    if n_train == 0:
        raise InputError("nothing to train: every parameter is frozen")
    if tokenizer.pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    collator = CompletionCollator(pad_token_id_of(tokenizer), pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    probe = examples.select(range(min(d.probe_rows, len(examples))))
    zero3 = _zero_stage(t) == 3
    probe_before = None
    if len(probe) and not zero3:
        probe_before = completion_loss(model.to(t.device), probe, collator)
        log.info("probe loss before training (%d rows): %.4f", len(probe), probe_before)

    class Clock(TrainerCallback):
        start_step = 0
        tokens0 = 0
        t0 = t1 = cpu0 = cpu1 = 0.0

        def on_train_begin(self, a, state, control, **kw):
            self.start_step, self.tokens0 = state.global_step, state.num_input_tokens_seen
            self.t0, self.cpu0 = time.time(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step >= state.max_steps:
                control.should_log = True  # log the last window's loss too
            return control

        def on_train_end(self, a, state, control, **kw):
            self.t1, self.cpu1 = time.time(), time.process_time()

    clock = Clock()
    logs_to_file = not on_terminal()
    if logs_to_file:
        t.disable_tqdm = True  # a log file gets our rounded loss lines instead of the progress bar's redraws
    trainer = completion_trainer_class()(model=model, args=t, train_dataset=examples, data_collator=collator,
                                         processing_class=tokenizer, callbacks=[clock])
    if logs_to_file:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LossLogger())
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    wall = clock.t1 - clock.t0
    tokens_run = state.num_input_tokens_seen - clock.tokens0
    losses = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h]
    probe_after = None
    if len(probe) and not zero3:
        probe_after = completion_loss(trainer.model, probe, collator)
        log.info("probe loss after training (%d rows): %.4f (before: %.4f)", len(probe), probe_after, probe_before)

    # ---- save: model + tokenizer into a temporary folder, then moved into place; the sidecar last
    tmp = out / FINAL_TMP
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # all ranks (ZeRO-3 gathers); only the main process writes
    report = {
        "kind": "detox_pa teacher",
        "base_model": m.model_name_or_path,
        "base_model_path": base_path,
        "base_layers": total_layers,
        "layers_kept": m.num_teacher_layers,
        "model_type": model.config.model_type,
        "architectures": list(getattr(model.config, "architectures", None) or [type(model).__name__]),
        "hidden_size": getattr(model.config.get_text_config(), "hidden_size", None),
        "vocab_size": len(tokenizer),
        "parameters": n_params,
        "trainable_parameters": n_train,
        "frozen": frozen,
        "data": {"path": str(d.training_data_path), "sha256": data_sha256,
                 "rows_read": read_stats["rows"], "rows_used": enc.rows_used,
                 "skipped_empty_completion": read_stats["skipped_empty_completion"],
                 "skipped_empty_prompt": read_stats["skipped_empty_prompt"],
                 "rows_truncated": enc.rows_truncated,
                 "rows_dropped_no_completion_token": enc.rows_dropped_no_completion_token,
                 "separator": d.separator, "append_eos": d.append_eos, "max_length": d.max_length},
        "tokens": {"total": enc.tokens_total, "trained": enc.tokens_trained, "longest_row": enc.max_tokens,
                   "mean_per_row": enc.as_dict()["mean_tokens"], "seen_this_run": int(tokens_run),
                   "seen_total": int(state.num_input_tokens_seen)},
        "loss": {"first_logged": losses[0][1] if losses else None, "first_logged_step": losses[0][0] if losses else None,
                 "last_logged": losses[-1][1] if losses else None, "last_logged_step": losses[-1][0] if losses else None,
                 "train_mean_this_run": result.metrics.get("train_loss"),
                 "probe_rows": len(probe), "probe_before": probe_before, "probe_after": probe_after,
                 "probe_note": "token-weighted completion loss on the first probe_rows training rows; "
                               "before = the untrained teacher"},
        "training": {"global_step": state.global_step, "start_step": clock.start_step,
                     "resumed_from": str(resume) if resume else None, "epochs": state.epoch, "train_wall_seconds": round(wall, 2),
                     "train_cpu_seconds": round(clock.cpu1 - clock.cpu0, 2), "torch_threads": torch.get_num_threads(),
                     "tokens_per_second": round(tokens_run / wall, 1) if wall > 0 else None,
                     "total_wall_seconds": round(time.time() - t_start, 2), "world_size": t.world_size,
                     "device": str(t.device), "deepspeed": bool(t.deepspeed), "zero_stage": _zero_stage(t),
                     "bf16": t.bf16},
        "seed": t.seed,
        "arguments": args_to_dict(m, d, t),
        "versions": library_versions(("torch", "transformers", "accelerate", "tokenizers", "deepspeed")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if is_main:
        _move_into(tmp, out)
        atomic_write_json(out / TEACHER_SIDECAR, report)
        log.info("teacher saved to %s (%s parameters); loss %s -> %s; %.1f s, %.0f tokens/s", out, f"{n_params:,}",
                 _r(report["loss"]["first_logged"]), _r(report["loss"]["last_logged"]), wall,
                 report["training"]["tokens_per_second"] or 0)
    return report


class LossLogger:
    """Logs the Trainer's loss lines, rounded, as ordinary log lines (for a log file, where a progress bar
    would only add carriage returns)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _LossLogger(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if not state.is_local_process_zero or not logs:
                    return
                keep = {k: v for k, v in logs.items() if k != "total_flos"}
                parts = [f"{k} {_round(v)}" for k, v in keep.items() if k != "epoch"]
                log.info("step %d/%d (epoch %s): %s", state.global_step, state.max_steps,
                         _round(keep.get("epoch", state.epoch or 0), 3), ", ".join(parts))

        return _LossLogger()


def _round(v, nd: int = 4):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    if isinstance(v, int):
        return v
    return f"{v:.{nd}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{nd}f}".rstrip("0").rstrip(".")
