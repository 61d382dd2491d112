"""Step 3: generate continuations with projection-alignment fusion, for a sweep of alpha.

``--method diff`` (run_generation.sh's default): the target's next-token logits move by
``alpha * W_target((h_expert - h_anti) A)`` over its top-k tokens; ``--method fusion`` (the paper):
the target's final hidden state becomes ``alpha * LayerNorm(h_teacher @ A) + (1 - alpha) * h_target``
(see detox_pa/fusion.py and detox_pa/methods.py).

Example (the embedded default, after steps 1 and 2)::

    python generate.py --method diff --teacher_model outputs/teacher --anti_teacher_model outputs/anti_teacher \\
        --target_model gemma-3-270m --matrix_A outputs/alignment/mapping_model.pt \\
        --data_path outputs/data/rtp_eval.jsonl --output_path outputs/generations.json --alphas 0 0.1 0.2 0.3

Each pair holds ``response`` = the continuation stripped of surrounding whitespace, as the paper's
generation stores it (so the paper's scorers read our files as they read theirs), and ``continuation`` =
the exact text the target produced (what our PPL scorer scores after the prompt).

The field's sampled protocol: ``--do_sample --num_samples 25 --top_p 0.9 --max_new_tokens 20``.
Scale-out: ``torchrun --nproc_per_node N generate.py ...`` spreads the batches over ranks and rank 0
writes one merged output. Rerunning the same command resumes from ``<output>.journal.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from detox_pa.cli import entry, log_args, args_to_dict, parse_dataclasses
from detox_pa.errors import InputError
from detox_pa.runtime import DEVICE_HELP, DTYPE_HELP, check_device_name, check_dtype_name

log = logging.getLogger("generate")



@dataclass
class GenerateArguments:
    teacher_model: str = field(default="outputs/teacher", metadata={"help": "Teacher model folder (step 1), alias or hub id."})
    target_model: str = field(default="gemma-3-270m", metadata={"help": "Target LLM: alias (gemma-3-270m), folder or hub id."})
    matrix_A: str = field(default="outputs/alignment/mapping_model.pt", metadata={"help": "Alignment matrix (step 2): torch.load(p)['mapping']."})
    data_path: str = field(default="rtp:eval", metadata={"help": "Prompts: JSONL {prompt}, RTP {prompt: {text}}, .txt one a line, "
                                                                    "or rtp:eval / rtp:dev / rtp:build (the embedded splits, read in place)."})
    output_path: str = field(default="outputs/generations.json", metadata={"help": "Output JSON (the paper's nested format)."})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                                metadata={"help": "Fusion weights to sweep, each in [0, 1]."})
    max_new_tokens: int = field(default=10, metadata={"help": "New tokens per continuation (paper: 10; the field: 20)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per generate() call."})
    num_samples: int = field(default=1, metadata={"help": "Samples per prompt (the field: 25 with --do_sample)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (nucleus) instead of greedy decoding."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus p when sampling."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    seed: int = field(default=2025, metadata={"help": "Base seed; each (alpha, batch) gets its own derived seed."})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    norm: str = field(default="layernorm", metadata={"help": "For --method fusion: layernorm (the paper: parameter-free LayerNorm), rescale (to the norm "
                                                             "of h_target) or none (h_teacher A as it is: the teacher's logit scale with an A "
                                                             "from align.py --objective logits)."})
    bridge: str = field(default="auto", metadata={"help": "auto, ids (same tokenizer) or text (re-tokenise for the teacher)."})
    method: str = field(default="fusion", metadata={"help": "fusion (the paper), diff (expert minus anti-expert through A), "
                                                            "wordban or steer (baselines). Alpha is the strength of each."})
    anti_teacher_model: str = field(default="", metadata={"help": "For --method diff: the anti-expert teacher (same base as the expert)."})
    diff_space: str = field(default="hidden", metadata={"help": "For --method diff: hidden ((h_e - h_a) A through the target's "
                                                                 "output layer) or logits (the teachers' own logits on shared tokens)."})
    top_k: int = field(default=10, metadata={"help": "For --method diff: only the target's top-k tokens can be chosen (0 = off)."})
    gate: Optional[float] = field(default=None, metadata={"help": "For --method diff: act only where log p_anti(pick) - "
                                                                  "log p_expert(pick) >= this (nats; unset = always act)."})
    steer_vector: str = field(default="", metadata={"help": "For --method steer: a .pt file holding {'vector': [d_target]}."})
    max_prompts: int = field(default=0, metadata={"help": "Use only the first N prompts (0 = all)."})
    device_map: str = field(default="", metadata={"help": "Place a large target across GPUs, e.g. 'auto' (needs accelerate)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output (and its journal)."})

    def __post_init__(self):
        if not self.alphas:
            raise InputError("--alphas: give at least one alpha")
        from detox_pa.methods import get_method

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
        for name in ("max_new_tokens", "batch_size", "num_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompts < 0:
            raise InputError(f"--max_prompts must be >= 0, got {self.max_prompts}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top_p must be in (0, 1], got {self.top_p}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if self.bridge not in ("auto", "ids", "text"):
            raise InputError(f"--bridge must be auto, ids or text, got {self.bridge!r}")
        if self.gate is not None and not math.isfinite(self.gate):
            raise InputError(f"--gate must be a finite number, got {self.gate}")
        self.dtype = check_dtype_name(self.dtype)
        self.device = check_device_name(self.device)
        self.alphas = [float(a) for a in self.alphas]
        get_method(self.method)(self).check()


def parse_args(argv=None) -> GenerateArguments:
    (args,) = parse_dataclasses([GenerateArguments], argv, description=__doc__.split("\n\n")[0])
    return args


def main(args: GenerateArguments) -> None:
    import torch

    from detox_pa import generation as G
    from detox_pa.assets import resolve_model
    from detox_pa.io import check_output_path, prompts_sha256, read_prompts
    from detox_pa.methods import get_method

    from detox_pa.runtime import dist_rank_world, rank_device, resolve_device, resolve_dtype

    rank, world = dist_rank_world()
    log_args(args)
    # ---- inputs first: nothing heavy is loaded until all of them check out
    out_path = check_output_path(args.output_path, "--output_path")
    prompts = read_prompts(args.data_path)
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    device = rank_device(resolve_device(args.device), rank) if world > 1 else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    target_path = resolve_model(args.target_model, "--target_model")
    method = get_method(args.method)(args)
    method_inputs = method.check_inputs(target_path)
    journal_path = out_path.with_name(out_path.name + (".journal.jsonl" if world == 1 else f".journal.rank{rank}.jsonl"))
    meta_path = out_path.with_name(out_path.stem + ".meta.json")
    if out_path.exists() and not args.overwrite:
        raise InputError(f"output {out_path} already exists; pass --overwrite to replace it")
    fingerprint = {
        "target_model": args.target_model, "target_files": G.file_fingerprint(target_path),
        "data": prompts_sha256(args.data_path, prompts), "max_prompts": args.max_prompts, "method": args.method,
        **method_inputs, **method.fingerprint(),
        **{k: getattr(args, k) for k in ("alphas", "max_new_tokens", "batch_size", "num_samples", "do_sample",
                                         "seed", "dtype")},
        "top_p": args.top_p if args.do_sample else None, "temperature": args.temperature if args.do_sample else None,
    }
    if args.overwrite and rank == 0:
        for p in out_path.parent.glob(out_path.name + ".journal*.jsonl"):
            p.unlink()
    if world > 1:
        torch.distributed.barrier()
    journals = [G.Journal(journal_path, fingerprint)]
    for p in sorted(out_path.parent.glob(out_path.name + ".journal*.jsonl")):
        if p != journal_path:
            journals.append(G.Journal(p, fingerprint))
    for j in journals:
        j.load()
    done = {k: v for j in journals for k, v in j.done.items()}

    # ---- models
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t_load = time.time()
    tok = AutoTokenizer.from_pretrained(target_path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    load_kw = {"dtype": dtype}
    if args.device_map:
        load_kw["device_map"] = args.device_map
    target = AutoModelForCausalLM.from_pretrained(target_path, **load_kw).eval()
    if not args.device_map:
        target.to(device)
    method.load(target, tok, device, dtype)
    log.info("loaded models in %.1f s (method %s, target %s, dtype %s, device %s)", time.time() - t_load,
             args.method, args.target_model, dtype, device)

    gen_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, top_k=0 if args.do_sample else None,
        top_p=args.top_p if args.do_sample else None, temperature=args.temperature if args.do_sample else None,
        pad_token_id=tok.pad_token_id, eos_token_id=target.generation_config.eos_token_id or tok.eos_token_id,
        bos_token_id=tok.bos_token_id)
    lengths = [len(x) for x in tok(prompts, add_special_tokens=True)["input_ids"]]
    batches = G.make_batches(lengths, args.num_samples, args.batch_size)
    mine = [(a, k) for a in args.alphas for k in range(len(batches)) if k % world == rank]
    todo = {t for t in mine if t not in done}
    log.info("%d prompts x %d samples = %d continuations per alpha in %d batches; %d of this rank's %d batches "
             "already done (journal)", len(prompts), args.num_samples, len(prompts) * args.num_samples, len(batches),
             len(mine) - len(todo), len(mine))
    out_path.parent.mkdir(parents=True, exist_ok=True)  # the inputs and models are checked: now we write
    journals[0].start()

    from tqdm.auto import tqdm

    seconds: dict[float, float] = {}
    bar = tqdm(total=len(todo), desc=f"generate rank {rank}" if world > 1 else "generate", unit="batch",
               disable=rank != 0 and world > 1)
    for a in args.alphas:
        factory = lambda a=a: method.context(a)  # noqa: E731
        extra = method.generate_kwargs(a)
        for k, batch in enumerate(batches):
            if (a, k) not in todo:
                continue
            seed = G.batch_seed(args.seed, a, k)
            torch.manual_seed(seed)
            t0 = time.time()
            texts, counts = G.generate_batch(target, tok, [prompts[it.prompt_index] for it in batch], gen_config,
                                             factory, device, extra)
            dt = time.time() - t0
            seconds[a] = seconds.get(a, 0.0) + dt
            recs = [{"alpha": a, "batch": k, "batch_size": len(batch), "prompt_index": it.prompt_index,
                     "sample": it.sample, "prompt": prompts[it.prompt_index], "response": txt.strip(),
                     "continuation": txt, "seed": seed,
                     "n_new_tokens": n, "batch_seconds": round(dt, 4)} for it, txt, n in zip(batch, texts, counts)]
            journals[0].append(recs)
            done[(a, k)] = recs
            bar.set_postfix(alpha=a)
            bar.update(1)
    bar.close()

    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            return
        for j in journals[1:]:
            j.done.clear()
            j.load()
            done.update(j.done)
        for p in sorted(out_path.parent.glob(out_path.name + ".journal.rank*.jsonl")):
            jj = G.Journal(p, fingerprint)
            jj.load()
            done.update(jj.done)
    missing = [(a, k) for a in args.alphas for k in range(len(batches)) if (a, k) not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} batches missing after generation (first: alpha {missing[0][0]}, batch {missing[0][1]})")
    result = G.assemble(args.alphas, done, len(batches))
    from detox_pa.io import atomic_write_json

    atomic_write_json(out_path, result)
    gen_seconds = {str(a): round(sum(r["batch_seconds"] for k in range(len(batches)) for r in done[(a, k)][:1]), 3)
                   for a in args.alphas}
    import transformers

    atomic_write_json(meta_path, {
        "output": str(out_path), "method": args.method, "target_model": args.target_model, "target_path": target_path,
        **method.describe(),
        "data_path": args.data_path, "n_prompts": len(prompts), "num_samples": args.num_samples,
        "n_batches_per_alpha": len(batches), "world_size": world,
        "generation_seconds_per_alpha": gen_seconds, "fingerprint": fingerprint, "arguments": args_to_dict(args),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "note": "generation_seconds_per_alpha sums the batches' wall times, including those of resumed earlier runs",
    })
    for p in out_path.parent.glob(out_path.name + ".journal*.jsonl"):
        p.unlink()
    log.info("wrote %s (%d alphas x %d records) and %s", out_path, len(result), len(result[0]["prompt-response pairs"]), meta_path)


if __name__ == "__main__":
    entry(main, parse_args)
