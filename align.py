"""Step 2: train the alignment matrix A (d_teacher x d_target) between a teacher and a target model.

Reads only the two embedding matrices (straight from the safetensors files) and the two
tokenizers; trains A contrastively on the tokens both vocabularies share (normalised across
tokenizer families); reports held-out retrieval before and after training.

Writes ``<output_dir>/mapping_model.pt`` (``torch.load(p)["mapping"]`` is A, float32) and the
sidecar ``<output_dir>/mapping_model.json`` (models, dims, vocab overlap, metrics, arguments).

Copy-paste (embedded default pair, the paper's hyperparameters):

    python align.py --model1_name smollm2-135m --model2_name gemma-3-270m --output_dir outputs/alignment \\
        --batch_size 32 --epochs 5 --lr 1e-3 --n_negatives 10 --seed 42
"""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from detox_pa.cli import args_to_dict, entry, log_args, parse_dataclasses
from detox_pa.errors import InputError
from detox_pa.io import atomic_torch_save, atomic_write_json, check_output_dir

log = logging.getLogger("align")

MATRIX_NAME = "mapping_model.pt"
SIDECAR_NAME = "mapping_model.json"


@dataclass
class AlignArguments:
    model1_name: str = field(default="smollm2-135m", metadata={
        "help": "Teacher: a local model folder or an alias (smollm2-135m, gemma-3-270m). "
                "The pipeline passes the pretrained teacher (outputs/teacher)."})
    model2_name: str = field(default="gemma-3-270m", metadata={"help": "Target: a local model folder or an alias."})
    output_dir: str = field(default="outputs/alignment", metadata={
        "help": f"Folder for {MATRIX_NAME} and {SIDECAR_NAME}; created if missing."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size (the paper: 32)."})
    epochs: int = field(default=5, metadata={"help": "Training epochs (the paper: 5)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (the paper: 1e-3)."})
    n_negatives: int = field(default=10, metadata={"help": "Random negative tokens per positive (the paper: 10)."})
    seed: int = field(default=42, metadata={"help": "Seed for the initialisation, permutations and negatives."})
    temperature: float = field(default=1.0, metadata={"help": "Logits are divided by this (the paper: 1, none)."})
    init: str = field(default="random", metadata={
        "help": "random (the paper) or lstsq (closed-form least squares teacher->target rows).",
        "choices": ["random", "lstsq"]})
    objective: str = field(default="contrastive", metadata={
        "help": "contrastive (the paper: embedding rows, positive vs random negatives) or logits (the fused "
                "term reproduces the teacher's own next-token logits under the target's output layer: least "
                "squares on the shared tokens' output rows, then refined on real teacher states by KL).",
        "choices": ["contrastive", "logits"]})
    embedding_space: str = field(default="auto", metadata={
        "help": "input: input embedding rows (the paper); output: lm_head rows (the tied input embedding "
                "when the model has no separate lm_head). auto: input for contrastive, output for logits.",
        "choices": ["auto", "input", "output"]})
    text_path: str = field(default="", metadata={
        "help": "Text for the transmission metric (and the logits objective's refinement): a teacher-data "
                "TSV/JSONL (prompt + completion) or .txt (one text a line); several files separated by commas "
                "(e.g. the clean and the toxic teacher data). Empty: no transmission metric."})
    text_rows: int = field(default=600, metadata={"help": "Use at most this many texts of each --text_path file."})
    heldout_text_share: float = field(default=0.2, metadata={
        "help": "Share of the texts (by hash) held out: the transmission metric is measured on them only."})
    max_states: int = field(default=8000, metadata={"help": "At most this many teacher states to refine on."})
    refine_steps: int = field(default=150, metadata={
        "help": "logits objective: Adam steps of the KL refinement on teacher states (0 = closed form only)."})
    refine_lr: float = field(default=1e-3, metadata={"help": "Learning rate of the KL refinement."})
    ridge: float = field(default=0.0, metadata={"help": "logits objective: ridge term of the closed form."})
    also_teacher: str = field(default="", metadata={
        "help": "A second teacher with the same tokenizer and output layer (the anti-expert): its states "
                "join the refinement and its transmission is reported too."})
    heldout_share: float = field(default=0.05, metadata={
        "help": "Share of the shared tokens held out for the retrieval metric (deterministic, by hash)."})
    include_added: bool = field(default=True, metadata={
        "help": "Keep non-special added tokens (e.g. Gemma's '\\n') in the shared vocabulary; specials are always dropped."})
    threads: int = field(default=1, metadata={
        "help": "Intra-op CPU threads for the training loop (its matrix products are small: 1 is fastest, "
                "above all on a busy machine); 0 = torch's default."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self):
        for name in ("model1_name", "model2_name", "output_dir"):
            if not str(getattr(self, name)).strip():
                raise InputError(f"--{name} is empty")
        if self.batch_size < 1:
            raise InputError(f"--batch_size must be a positive integer, got {self.batch_size}")
        if self.epochs < 1:
            raise InputError(f"--epochs must be a positive integer, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.n_negatives < 1:
            raise InputError(f"--n_negatives must be a positive integer, got {self.n_negatives}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"--temperature must be a positive number, got {self.temperature}")
        if self.threads < 0:
            raise InputError(f"--threads must be >= 0, got {self.threads}")
        if not (0 < self.heldout_share <= 0.5):
            raise InputError(f"--heldout_share must be in (0, 0.5], got {self.heldout_share}")
        if not (0 < self.heldout_text_share < 1):
            raise InputError(f"--heldout_text_share must be in (0, 1), got {self.heldout_text_share}")
        for name in ("text_rows", "max_states", "refine_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.refine_lr) and self.refine_lr > 0):
            raise InputError(f"--refine_lr must be a positive number, got {self.refine_lr}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise InputError(f"--ridge must be >= 0, got {self.ridge}")
        if self.embedding_space == "auto":
            self.embedding_space = "output" if self.objective == "logits" else "input"
        if self.text_path:
            read_texts(self.text_path, self.text_rows)  # a bad file stops here, before any model is read
        check_output_dir(self.output_dir, "--output_dir")


def read_texts(paths: str, rows: int = 0) -> list[str]:
    """Texts for the transmission metric: prompt + completion of teacher-data files, or .txt lines; the first
    ``rows`` (0 = all) of each of the comma-separated ``paths``."""
    out: list[str] = []
    for path in [p for p in paths.split(",") if p.strip()]:
        out += _read_texts_one(path.strip())[: rows or None]
    if len(out) < 2:
        raise InputError(f"--text_path {paths}: needs at least 2 texts (one to fit on, one held out), found {len(out)}")
    return out


def _read_texts_one(path: str) -> list[str]:
    from detox_pa.io import read_teacher_data, read_text
    from detox_pa.pretraining import join_prompt_completion

    if Path(path).suffix.lower() == ".txt":
        texts = [ln.strip() for ln in read_text(path, "text file (--text_path)").splitlines() if ln.strip()]
    else:
        pairs, _ = read_teacher_data(path)
        texts = [join_prompt_completion(p, c)[0] for p, c in pairs]
    return texts


def parse_args(argv=None) -> AlignArguments:
    (args,) = parse_dataclasses([AlignArguments], argv, description=__doc__.split("\n\n")[0])
    return args


def _tokenizer(auto, path: str, what: str):
    if not Path(path).is_dir():
        log.warning("%s is not a local folder; trying it as a hub id", what)
    try:
        return auto.from_pretrained(path)
    except (OSError, ValueError) as e:
        hint = "" if Path(path).is_dir() else " (not a local folder, and the hub could not provide it)"
        raise InputError(f"{what}: cannot load its tokenizer{hint}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def teacher_text_states(args: AlignArguments, teacher_path: str, t_tok) -> dict:
    """The teacher's (and --also_teacher's) final hidden states on the fit and held-out texts."""
    import torch
    from transformers import AutoModelForCausalLM

    from detox_pa.alignment import teacher_states, text_split
    from detox_pa.assets import resolve_model

    texts = read_texts(args.text_path, args.text_rows)
    fit_i, held_i = text_split(texts, args.heldout_text_share)
    fit_t, held_t = [texts[i] for i in fit_i], [texts[i] for i in held_i]
    who = {"teacher": teacher_path}
    if args.also_teacher:
        who["also_teacher"] = resolve_model(args.also_teacher, "--also_teacher")
    fit_states, held = [], {}
    for name, path in who.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        n_fit = args.max_states // len(who) if args.max_states else 0
        if args.objective == "logits" and args.refine_steps > 0:
            fit_states.append(teacher_states(model, t_tok, fit_t, n_fit))
        held[name] = teacher_states(model, t_tok, held_t, 4000)
        del model
    return {"fit": torch.cat(fit_states) if fit_states else None, "heldout": held,
            "n_fit": len(fit_t), "n_heldout": len(held_t)}


def main(args: AlignArguments) -> dict:
    import torch
    from transformers import AutoTokenizer

    from detox_pa.alignment import (AlignmentResult, TrainConfig, check_sizes, find_embedding, fit,
                                    fit_logits_closed_form, heldout_split, load_embedding, refine_kl, transmission)
    from detox_pa.assets import describe_model, resolve_model
    from detox_pa.vocab import shared_vocab

    t0 = time.time()
    log_args(args)
    teacher = resolve_model(args.model1_name, "teacher (--model1_name)", need_tokenizer=True)
    target = resolve_model(args.model2_name, "target (--model2_name)", need_tokenizer=True)
    t_ref = find_embedding(teacher, args.embedding_space, f"teacher {args.model1_name}")
    s_ref = find_embedding(target, args.embedding_space, f"target {args.model2_name}")

    log.info("reading tokenizers")
    t_tok = _tokenizer(AutoTokenizer, teacher, f"teacher (--model1_name) {args.model1_name}")
    s_tok = _tokenizer(AutoTokenizer, target, f"target (--model2_name) {args.model2_name}")
    sv = shared_vocab(t_tok, s_tok, include_added=args.include_added)

    def within_rows(sv, rows_t: int | None, rows_s: int | None, always_check: bool):
        """Drop shared tokens whose ids lie past an embedding's rows (they cannot be trained on); check the
        sizes against --n_negatives and the held-out share when asked or when tokens were dropped."""
        if rows_t is not None and rows_s is not None:
            ok = (sv.teacher_ids < rows_t) & (sv.target_ids < rows_s)
            if not bool(ok.all()):
                log.warning("dropping %d shared tokens whose ids lie past the embedding rows", int((~ok).sum()))
                sv, always_check = sv.subset(ok), True
        if not always_check:
            return sv
        n_held = len(heldout_split(sv.keys, args.heldout_share)[1]) if sv.n_shared else 0
        check_sizes(sv.n_shared, sv.n_shared - n_held, args.n_negatives, sv.teacher_vocab_size, sv.target_vocab_size)
        return sv

    # the rows known from the file headers first (before any tensor is read), the loaded ones after
    sv = within_rows(sv, *((t_ref.shape[0], s_ref.shape[0]) if t_ref.shape and s_ref.shape else (None, None)), True)
    log.info("shared vocabulary: %d tokens = %.1f%% of the teacher's %d, %.1f%% of the target's %d "
             "(teacher %s, target %s)", sv.n_shared, 100 * sv.teacher_coverage, sv.teacher_vocab_size,
             100 * sv.target_coverage, sv.target_vocab_size, sv.teacher_stats["family"], sv.target_stats["family"])

    Wt, t_ref = load_embedding(t_ref, f"teacher {args.model1_name}")
    Ws, s_ref = load_embedding(s_ref, f"target {args.model2_name}")
    sv = within_rows(sv, Wt.shape[0], Ws.shape[0], False)
    Et = Wt[sv.teacher_ids].contiguous()
    Es = Ws[sv.target_ids].contiguous()
    d_t, d_s = Wt.shape[1], Ws.shape[1]
    rows_t, rows_s = Wt.shape[0], Ws.shape[0]
    del Wt, Ws
    log.info("embeddings: teacher %s (%d x %d, %s), target %s (%d x %d, %s)", t_ref.key, rows_t, d_t, t_ref.source,
             s_ref.key, rows_s, d_s, s_ref.source)

    cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, n_negatives=args.n_negatives,
                      temperature=args.temperature, init=args.init, seed=args.seed, threads=args.threads,
                      progress=args.progress)
    torch.manual_seed(args.seed)
    if args.objective == "contrastive":
        result = fit(Et, Es, sv.keys, cfg, args.heldout_share)
    else:
        result = AlignmentResult(fit_logits_closed_form(Et, Es, args.ridge), {"closed_form": "least squares "
                                 "Es_out A^T ~ Et_out over the shared tokens", "ridge": args.ridge})
    A = result.mapping
    states = None
    if args.objective == "logits" and not args.text_path:
        log.warning("--objective logits without --text_path: closed form only (no KL refinement on teacher states, "
                    "no transmission metric)")
    if args.text_path:
        # the metric compares output layers, whatever space A was trained in (one matrix for tied models)
        Ot, Os = Et, Es
        if args.embedding_space != "output":
            Ot = load_embedding(find_embedding(teacher, "output", f"teacher {args.model1_name}"))[0][sv.teacher_ids]
            Os = load_embedding(find_embedding(target, "output", f"target {args.model2_name}"))[0][sv.target_ids]
        states = teacher_text_states(args, teacher, t_tok)
        if args.objective == "logits" and args.refine_steps > 0:
            t_ref0 = time.time()
            A, losses = refine_kl(A, states["fit"], Ot, Os, args.refine_steps, args.refine_lr, seed=args.seed,
                                  progress=args.progress)
            result.report["refine"] = {"what": "Adam on KL(teacher || target output layer on h @ A) over the shared "
                                       "tokens, on teacher states of the fit texts, from the closed form",
                                       "steps": args.refine_steps, "lr": args.refine_lr, "batch": 256,
                                       "states": int(states["fit"].shape[0]), "loss_per_tenth": losses,
                                       "seconds": round(time.time() - t_ref0, 2)}
        result.report["transmission"] = {
            "what": "teacher's own logits vs the fused term's logits under the target's output layer, on the "
                    "shared tokens, at every token of held-out texts (1, 1, 1, 0 = perfect; scale = std ratio)",
            "text_path": args.text_path, "texts_fit": states["n_fit"], "texts_heldout": states["n_heldout"],
            **{who: {norm: transmission(H, A, Ot, Os, norm) for norm in ("none", "layernorm")}
               for who, H in states["heldout"].items()}}
        for who in states["heldout"]:
            m = result.report["transmission"][who]["none"]
            log.info("transmission (%s, held-out text, %d states): top-1 %.3f, top-10 %.3f, pearson %.3f, KL %.3f",
                     who, m["states"], m["top1"], m["top10"], m["pearson"], m["kl"])
    assert A.shape == (d_t, d_s) and A.dtype == torch.float32

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"mapping": A}, out / MATRIX_NAME)
    sidecar = {
        "artifact": MATRIX_NAME,
        "format": "torch.load(path)['mapping'] is a float32 tensor of shape (d_teacher, d_target); "
                  "fused vector = teacher hidden state @ mapping",
        "teacher": {"name": args.model1_name, "path": teacher, "description": describe_model(args.model1_name),
                    "dim": d_t, "vocab_size": sv.teacher_vocab_size, "embedding_rows": rows_t,
                    "embedding": t_ref.describe(), "tokenizer_family": sv.teacher_stats["family"]},
        "target": {"name": args.model2_name, "path": target, "description": describe_model(args.model2_name),
                   "dim": d_s, "vocab_size": sv.target_vocab_size, "embedding_rows": rows_s,
                   "embedding": s_ref.describe(), "tokenizer_family": sv.target_stats["family"]},
        "shape": [d_t, d_s],
        "dtype": "float32",
        "embedding_space": args.embedding_space,
        "init": args.init,
        "objective": args.objective,
        "seed": args.seed,
        "vocab_overlap": sv.stats(),
        "metrics": result.report,
        "arguments": args_to_dict(args),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "wall_seconds": round(time.time() - t0, 3),
    }
    atomic_write_json(out / SIDECAR_NAME, sidecar)
    log.info("wrote %s and %s (%.1f s)", out / MATRIX_NAME, out / SIDECAR_NAME, time.time() - t0)
    return sidecar


if __name__ == "__main__":
    entry(main, parse_args)
