"""Step 4b: perplexity of generated continuations under a reference causal LM (batched).

Copy-paste (the embedded default: reference = the unsteered target Gemma-3-270M):

    python eval_ppl.py --model_path gemma-3-270m --input_json outputs/generations.json

The paper's setting (Llama-2-13B on a GPU):

    python eval_ppl.py --model_path /path/to/llama-2-13b --input_json results.json --device cuda:0

Reads the paper's nested generations JSON
``[{"alpha": a, "prompt-response pairs": [{"prompt": p, "response": r, ...}, ...]}, ...]``.
Writes, next to it (``<stem>`` = the input path without ``.json``; ``_<tag>`` only with --output_tag):

- ``<stem>_ppl[_<tag>].json``: ``[{"alpha", "PPL", "ppl_token_weighted", "ppl_median_per_sample",
  "dist_1", "dist_2", "dist_3", "n", "n_prompts", "n_scored", "n_skipped_empty", "n_truncated",
  "n_tokens", "reference_model", "input", "input_sha256", "note"}]`` (PPL as in the paper: exp of the
  mean per-sample loss; lower is better);
- ``<stem>_ppl[_<tag>]_records.jsonl``: one line per continuation (sum / mean NLL, token count, status);
- ``<stem>_ppl[_<tag>].meta.json``: the sidecar (model, dims, dtype, device, arguments, timing).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from detox_pa.cli import args_to_dict, entry, log_args, parse_dataclasses
from detox_pa.errors import InputError
from detox_pa.runtime import DEVICE_HELP, DTYPE_HELP, check_device_name, check_dtype_name

log = logging.getLogger("eval_ppl")

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class PPLArguments:
    input_json: str = field(default="", metadata={"help": "Generations JSON in the paper's nested format."})
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
                "exact when every pair has 'continuation', else paper when no response starts with whitespace (the "
                "paper's generation strips them), else exact. The choice and its reason are logged and recorded.",
        "choices": ["auto", "exact", "paper"]})

    def __post_init__(self):
        if not self.input_json:
            raise InputError("no input given: pass --input_json PATH (the generations JSON)")
        if self.output_tag and not _TAG.match(self.output_tag):
            raise InputError(f"--output_tag {self.output_tag!r}: expected letters, digits, '_' or '-' (no dots, no slashes)")
        if self.batch_size < 1:
            raise InputError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise InputError(f"--max_length must be >= 2, got {self.max_length}")
        self.dtype = check_dtype_name(self.dtype)
        self.device = check_device_name(self.device)


def parse_args(argv=None) -> PPLArguments:
    (args,) = parse_dataclasses([PPLArguments], argv, description=__doc__.splitlines()[0])
    return args


def output_paths(input_json: str, tag: str = "") -> dict[str, Path]:
    from detox_pa.report import output_stem

    base = output_stem(input_json) + "_ppl" + (f"_{tag}" if tag else "")
    return {"json": Path(base + ".json"), "records": Path(base + "_records.jsonl"), "meta": Path(base + ".meta.json")}


def choose_join(pairs: list[dict], requested: str) -> tuple[str, str]:
    """The join convention for a file (see ``--join``) and why it was chosen."""
    if requested != "auto":
        return requested, "--join " + requested
    if pairs and all("continuation" in p for p in pairs):
        return "exact", "every pair has the exact 'continuation' (our generate.py)"
    lead = sum(1 for p in pairs if p["response"][:1].isspace())
    if lead == 0:
        return "paper", ("no response starts with whitespace (stripped, as the paper's generation writes them): "
                         "joined with one space unless the prompt ends in one, as the paper's scorer does")
    return "exact", f"{lead} of {len(pairs)} responses start with whitespace: they carry their own, scored verbatim"


def joined_continuation(pair: dict, join: str) -> str:
    """The text scored after the prompt. An empty response stays empty (counted and skipped)."""
    if join == "exact":
        return pair.get("continuation", pair["response"])
    r = pair["response"]
    return r if r == "" or pair["prompt"].endswith(" ") else " " + r


def main(args: PPLArguments) -> list[dict]:
    from detox_pa.assets import describe_model, resolve_model
    from detox_pa.io import (PAIRS_KEY, atomic_write_json, atomic_write_text, check_output_path, read_generations,
                             sha256_file, sha256_text)
    from detox_pa.ppl import PPLScorer, aggregate_alpha, load_reference, model_info, record_rows
    from detox_pa.runtime import resolve_device

    log_args(args)
    # everything that can be wrong with the input is checked before the model is loaded
    blocks = read_generations(args.input_json)
    paths = output_paths(args.input_json, args.output_tag)
    for p in paths.values():
        check_output_path(p)
    resolve_device(args.device)
    model_dir = resolve_model(args.model_path, "reference model")
    input_sha = sha256_file(args.input_json)

    t0 = time.time()
    model, tok, device = load_reference(model_dir, args.dtype, args.device)
    log.info("reference model %s loaded in %.1f s (%s, %s)", describe_model(args.model_path), time.time() - t0,
             device, next(model.parameters()).dtype)
    scorer = PPLScorer(model, tok, batch_size=args.batch_size, max_length=args.max_length, device=device)

    pairs_all = [p for b in blocks for p in b[PAIRS_KEY]]
    join, why = choose_join(pairs_all, args.join)
    log.info("join: %s (%s)", join, why)
    prompts = [p["prompt"] for p in pairs_all]
    responses = [joined_continuation(p, join) for p in pairs_all]
    t1 = time.time()
    records = scorer.score(prompts, responses, desc="ppl")
    seconds = time.time() - t1
    log.info("scored %d distinct (prompt, continuation) pairs for %d records (identical pairs are scored once)",
             scorer.n_distinct, len(records))

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
    atomic_write_json(paths["json"], results)
    import torch
    import transformers

    atomic_write_json(paths["meta"], {
        "what": "perplexity of continuations given their prompts (eval_ppl.py)",
        "outputs": {k: str(v) for k, v in paths.items()},
        "input": str(args.input_json), "input_sha256": input_sha,
        "reference_model": args.model_path, "reference_model_resolved": model_dir,
        "reference_model_description": describe_model(args.model_path),
        "model": model_info(model, tok), "device": str(device),
        "output_layer_only_at_continuation_positions": scorer.fast,
        "join": join, "join_reason": why,
        "n_records": len(records), "n_texts_scored": sum(1 for r in records if r["status"] == "ok"),
        "n_distinct_pairs": scorer.n_distinct,
        "seconds_scoring": round(seconds, 3),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "arguments": args_to_dict(args), "note": results[0]["note"] if results else None,
    })
    for r in results:
        log.info("alpha %s: PPL %s, token-weighted %s, n_scored %d/%d, dist-2 %s", r["alpha"], _fmt(r["PPL"]),
                 _fmt(r["ppl_token_weighted"]), r["n_scored"], r["n"], _fmt(r["dist_2"], 3))
    log.info("wrote %s, %s and %s (%.1f s scoring)", paths["json"], paths["records"], paths["meta"], seconds)
    return results


def _fmt(x, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


if __name__ == "__main__":
    entry(main, parse_args)
