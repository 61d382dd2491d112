"""Build the activation-steering baseline's vector: mean final hidden state of the target over the
clean continuations minus the mean over the toxic ones (data/steering_texts.jsonl, written by
scripts/build_teacher_data.py from the ``build`` prompts only).

    python scripts/build_steer_vector.py --target_model gemma-3-270m --output outputs/results/steer_vector.pt

``generate.py --method steer --steer_vector <file> --alphas s1 s2 ...`` then adds ``s * vector``
(the difference is rescaled to the length of a typical mean hidden state, so strength 0.1 adds a
tenth of a typical hidden state's length in the clean-minus-toxic direction).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from detox_pa.cli import entry, log_args, parse_dataclasses
from detox_pa.errors import InputError

log = logging.getLogger("build_steer_vector")
REPO_DIR = Path(__file__).resolve().parent.parent  # the default texts are the repository's, from any folder


@dataclass
class SteerArguments:
    target_model: str = field(default="gemma-3-270m", metadata={"help": "Target LLM (alias, folder or hub id)."})
    texts: str = field(default=str(REPO_DIR / "data" / "steering_texts.jsonl"), metadata={
        "help": "Continuations labelled clean / toxic (default: the repository's data/steering_texts.jsonl)."})
    output: str = field(default="outputs/results/steer_vector.pt", metadata={"help": "Output .pt file (torch.load(p)[key] "
                                                                              "is the vector; see detox_pa.artifacts)."})
    max_per_class: int = field(default=400, metadata={"help": "At most this many texts per class (first in file order)."})
    batch_size: int = field(default=16, metadata={"help": "Batch size."})

    def __post_init__(self):
        if self.max_per_class < 1 or self.batch_size < 1:
            raise InputError("--max_per_class and --batch_size must be >= 1")


def parse_args(argv=None) -> SteerArguments:
    (a,) = parse_dataclasses([SteerArguments], argv, description=__doc__.split("\n\n")[0])
    return a


def main(args: SteerArguments) -> None:
    from detox_pa.assets import is_dev, resolve_model
    from detox_pa.runtime import load_causal_lm, load_tokenizer
    from detox_pa.baselines import mean_final_hidden
    from detox_pa.artifacts import save_steer_vector
    from detox_pa.io import atomic_write_json, check_output_path, read_text

    log_args(args)
    out = check_output_path(args.output, "--output")
    groups: dict[str, list[tuple[str, str]]] = {"clean": [], "toxic": []}
    for n, line in enumerate(read_text(args.texts, "steering texts").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{args.texts}:{n}: not valid JSON") from None
        lab = r.get("label")
        if r.get("split") == "rtp_dev" or (r.get("split") == "rtp_build" and is_dev(r.get("prompt", ""))):
            continue  # dev prompts train nothing (choices are made on them), whatever split label the file has
        if lab in groups and len(groups[lab]) < args.max_per_class and r.get("completion", r.get("continuation")):
            groups[lab].append((r["prompt"], r.get("completion", r.get("continuation"))))
    for lab, rows in groups.items():
        if len(rows) < 5:
            raise InputError(f"{args.texts}: only {len(rows)} '{lab}' continuations; need at least 5")
    path = resolve_model(args.target_model, "--target_model")
    tok = load_tokenizer(path, padding_side="right")
    model = load_causal_lm(path, "float32")
    means = {lab: mean_final_hidden(model, tok, [p for p, _ in rows], [c for _, c in rows], args.batch_size)
             for lab, rows in groups.items()}
    v = means["clean"] - means["toxic"]
    typical = float((means["clean"].norm() + means["toxic"].norm()) / 2)
    vec = v / v.norm() * typical  # strength 1.0 = a vector as long as a typical mean hidden state
    save_steer_vector(out, vec)
    atomic_write_json(out.with_suffix(".json"), {
        "target_model": args.target_model, "texts": args.texts, "n_clean": len(groups["clean"]),
        "n_toxic": len(groups["toxic"]), "raw_difference_norm": float(v.norm()), "typical_hidden_norm": typical,
        "note": "vector = (mean_clean - mean_toxic) rescaled to the typical mean hidden-state norm; "
                "generate.py --method steer adds alpha * vector to the final hidden state"})
    log.info("wrote %s (|clean - toxic| = %.3f, rescaled to %.3f)", out, float(v.norm()), typical)


if __name__ == "__main__":
    entry(main, parse_args)
