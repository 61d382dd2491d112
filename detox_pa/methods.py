"""The decoding methods of step 3, as registered classes (the harness never branches on a method).

A method checks its own arguments, loads what it needs beside the target, and for each alpha returns a
context manager (the hooks, installed around ``generate()``) and extra ``generate()`` keyword
arguments. Alpha is every method's strength, so a sweep means the same thing for all of them; at alpha
0 every method is plain ``generate()``.

- ``fusion``: the paper's projection-alignment fusion, ``alpha * Norm(h_teacher A) + (1 - alpha) h``;
- ``diff``: expert minus anti-expert through A, ``z + alpha * W_target ((h_e - h_a) A)``, with the
  plausibility constraint (the target's top-k) and the risk gate as options;
- ``wordban``: forbid a profanity list's token sequences (a baseline);
- ``steer``: add ``alpha * v`` to the target's final hidden state (a baseline).

Adding a method is one class with ``@register``; generate.py reads its options from the arguments.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)

REGISTRY: dict[str, type["Method"]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def alpha_ranges() -> str:
    """What each registered method accepts as alpha, and its default sweep, for generate.py's --help."""
    return "; ".join(f"{name}: " + (f"[0, {cls.max_alpha:g}]" if cls.max_alpha is not None else "any alpha >= 0")
                     + f" ({cls.alpha_meaning}; default {' '.join(f'{a:g}' for a in cls.default_alphas)})"
                     for name, cls in REGISTRY.items())


def get_method(name: str) -> type["Method"]:
    if name not in REGISTRY:
        raise InputError(f"--method must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


class Method:
    """Base class. ``args`` is generate.py's argument object; methods read only their own fields."""

    name = ""
    baseline = False  # a baseline the reports draw apart from the projection-alignment methods
    max_alpha: float | None = None  # the largest alpha that makes sense (None: any >= 0)
    default_alphas: tuple[float, ...] = (0.0, 1.0)  # the sweep when --alphas is not given
    alpha_meaning = "a strength"  # what alpha scales, for --help
    uses: tuple[str, ...] = ()  # the argument fields that define the method's output (journal fingerprint)
    # True when the method leaves the target's (and its teachers') states of the prompt as alpha 0 computes them
    # (it acts at the output layer only): a sweep then computes each batch's prompt once (fusion.PromptMemo)
    keeps_prompt_state = False
    # True when a greedy sweep can decode all its alphas as one batch (:meth:`sweep_context`): each alpha edits its own
    # rows at the output layer exactly as it would alone, so rows of one prompt are computed once until the alphas'
    # picks part (generation.decode_sweep). Methods that pass generate() options (logits processors) cannot.
    shares_prefixes = False

    def __init__(self, args):
        self.args = args
        self.acted: dict[float, list[int]] = {}  # alpha -> [rows acted on, rows seen] (methods that count)
        self.memo = None  # the batch's fusion.PromptMemo, set by the harness (methods that keep the prompt state)

    # -- before any model is loaded
    def check(self) -> None:
        """Validate the method's own arguments (one-line InputError)."""

    def check_inputs(self, target_path: str) -> dict:
        """Resolve and check input files (before models load); returns their fingerprints."""
        return {}

    def needs_models(self) -> bool:
        return False

    # -- after the target is loaded
    def load(self, target, tokenizer, device, dtype) -> None:
        self.target, self.tokenizer = target, tokenizer

    def context(self, alpha: float):
        return contextlib.nullcontext()

    def generate_kwargs(self, alpha: float) -> dict:
        return {}

    def sweep_context(self, alphas: list[float], rows: int, eos_ids=(), share=None):
        """The hooks of every alpha at once, on a batch whose rows ``[j * rows, (j + 1) * rows)`` are alpha ``j``'s
        (methods with ``shares_prefixes``); yields each alpha's fuser (None where it has none). ``eos_ids``: the
        tokens that end a row (an alpha whose rows have all ended is left alone); ``share``: the batch's
        :class:`detox_pa.fusion.RowShare`."""
        raise NotImplementedError(f"--method {self.name} decodes each alpha on its own")

    def records_nll(self, alpha: float) -> bool:
        """Whether the target's output layer itself still yields the unsteered target's logits at this alpha (no
        hook edits its input), so each pick's unsteered NLL, what the PPL judge measures, can be recorded."""
        return alpha == 0

    def fingerprint(self) -> dict:
        return {k: getattr(self.args, k) for k in self.uses}

    def describe(self) -> dict:
        """For the generations' meta file."""
        out: dict[str, Any] = {"method": self.name, **self.fingerprint()}
        if self.acted:
            out["acted_share_per_alpha"] = {str(a): round(n / max(m, 1), 6) for a, (n, m) in self.acted.items()}
            out["acted_note"] = "share of (row, step) pairs the method changed, over the batches run by this process"
        return out

    def designed_objective(self) -> str | None:
        """The align.py --objective whose matrix this method (with its options) was designed for, if any."""
        return None

    @staticmethod
    def matrix_sidecar(matrix_path: str) -> tuple[Any, dict | None]:
        """The matrix's sidecar (``<matrix>.json``, else the folder's sidecar) and its content: (path, dict), or
        (None, None) when there is none or it does not read as a JSON object."""
        import json
        from pathlib import Path

        from .artifacts import matrix_sidecar_path

        p = Path(matrix_path)
        for side in (p.with_suffix(".json"), matrix_sidecar_path(p.parent)):
            if side.is_file():
                try:
                    meta = json.loads(side.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    return None, None
                return (side, meta) if isinstance(meta, dict) else (None, None)
        return None, None

    def note_matrix_objective(self, matrix_path: str) -> str | None:
        """One log line when the matrix's sidecar records another objective than :meth:`designed_objective`
        (a legitimate ablation, but not the recipe); returns that objective."""
        want = self.designed_objective()
        side, meta = self.matrix_sidecar(matrix_path) if want else (None, None)
        if meta is None:
            return None
        got = meta.get("objective")
        if got and got != want:
            log.warning("the matrix %s was fitted with --objective %s (%s); --method %s%s was designed for an A "
                        "from --objective %s: a legitimate ablation, but not the recipe", matrix_path, got,
                        side.name, self.name, self.option_note(), want)
        return got

    def option_note(self) -> str:
        return ""

    def _count(self, alpha: float, fuser) -> None:
        if fuser is not None:
            c = self.acted.setdefault(alpha, [0, 0])
            c[0] += fuser.acted
            c[1] += fuser.rows_seen


def matrix_teachers(matrix_path: str) -> dict:
    """The teachers a matrix was fitted for, from its sidecar: ``{"expert", "anti_expert", "tuned"}``.

    A matrix trained together with a tuned pair (``align.py --tune_pair``) names that pair; otherwise the sidecar's
    teacher (``--model1_name``) and ``--also_teacher``. Relative paths in the sidecar are read as they were written
    (relative to the working folder of align.py), then against the repository. Empty dict: no sidecar."""
    import json
    from pathlib import Path

    from .artifacts import TUNED_ANTI, TUNED_EXPERT, matrix_sidecar_path

    p = Path(matrix_path)
    for side in (p.with_suffix(".json"), matrix_sidecar_path(p.parent)):
        if side.is_file():
            try:
                d = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise InputError(f"{side}: the matrix's sidecar is not valid JSON") from None
            tuned = d.get("tuned_pair") or {}
            if tuned.get(TUNED_EXPERT):  # folders next to the sidecar (the alignment folder moves as one)
                return {"expert": str(side.parent / tuned[TUNED_EXPERT]),
                        "anti_expert": str(side.parent / tuned[TUNED_ANTI]) if tuned.get(TUNED_ANTI) else "",
                        "tuned": True, "sidecar": str(side)}
            args = d.get("arguments") or {}
            return {"expert": args.get("model1_name") or (d.get("teacher") or {}).get("name") or "",
                    "anti_expert": args.get("also_teacher") or "", "tuned": False, "sidecar": str(side)}
    return {}


def resolve_teachers(args, need_anti: bool) -> tuple[str, str]:
    """``--teacher_model`` and ``--anti_teacher_model``, or, when neither is named, the teachers the matrix names
    (:func:`matrix_teachers`): a matrix and its teachers are one unit. Naming one teacher of a pair and not the
    other is refused (it would pair yours with another run's); naming a pair that differs from the pair a tuned
    matrix was trained with is allowed (an ablation) and logged."""
    t, anti = args.teacher_model, args.anti_teacher_model if need_anti else ""
    named = [bool(t), bool(anti)] if need_anti else [bool(t)]
    if need_anti and any(named) and not all(named):
        mine, other = ("--teacher_model", "--anti_teacher_model") if t else ("--anti_teacher_model", "--teacher_model")
        raise InputError(f"{mine} is named but {other} is not: name both teachers of the pair (or neither: the "
                         f"teachers the matrix {args.matrix_A} names), or use --method fusion (one teacher)")
    from pathlib import Path

    if not Path(args.matrix_A).is_file():
        raise InputError(f"alignment matrix {args.matrix_A} does not exist (--matrix_A): run step 2 "
                         f"(./run_alignment.sh) first, or name the matrix")
    rec = matrix_teachers(args.matrix_A)
    if not any(named):
        if not rec or not rec["expert"] or (need_anti and not rec["anti_expert"]):
            what = "the expert and the anti-expert" if need_anti else "the teacher"
            raise InputError(f"no teacher named, and the matrix {args.matrix_A} has no sidecar naming {what}: name "
                             f"--teacher_model{' and --anti_teacher_model' if need_anti else ''}")
        log.info("teachers from the matrix's sidecar %s: %s%s", rec["sidecar"], rec["expert"],
                 f" and {rec['anti_expert']}" if need_anti else "")
        return _sidecar_path(rec["expert"], rec["sidecar"]), _sidecar_path(rec["anti_expert"], rec["sidecar"]) if need_anti else ""
    if rec.get("tuned"):
        log.warning("the matrix %s was trained together with the tuned pair %s / %s; decoding with %s%s instead is "
                    "an ablation, not the recipe", args.matrix_A, rec["expert"], rec["anti_expert"], t,
                    f" / {anti}" if need_anti else "")
    return t, anti


def _sidecar_path(name: str, sidecar: str) -> str:
    """A model path recorded in a sidecar: as written when it exists from here (or is an alias/hub id), else
    relative to the repository (the launchers' default folders are repository-relative)."""
    from pathlib import Path

    from .assets import EMBEDDED_MODELS

    if not name or name in EMBEDDED_MODELS or Path(name).is_absolute() or Path(name).exists():
        return name
    repo = Path(__file__).resolve().parent.parent
    return str(repo / name) if (repo / name).exists() else name


def _load_teacher(path: str, device, dtype, teacher_dtype: str = "auto"):
    """A teacher and its tokenizer, in ``teacher_dtype`` (``auto``: the target's ``dtype``)."""
    from .runtime import load_causal_lm, load_tokenizer, torch_dtype

    dt = dtype if teacher_dtype == "auto" else torch_dtype(teacher_dtype)
    return load_causal_lm(path, dt, device), load_tokenizer(path, pad_with_eos=False)


@register
class Fusion(Method):
    """The paper: ``alpha * Norm(h_teacher @ A) + (1 - alpha) * h_target`` at the output layer."""

    name = "fusion"
    max_alpha = 1.0
    default_alphas = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the paper's
    alpha_meaning = "the teacher's weight in the mix"
    uses = ("norm", "bridge")
    keeps_prompt_state = True
    shares_prefixes = True

    def check(self) -> None:
        from .fusion import NORMS

        if self.args.norm not in NORMS:
            raise InputError(f"--norm must be one of {', '.join(NORMS)}, got {self.args.norm!r}")

    def needs_models(self) -> bool:
        return any(a > 0 for a in self.args.alphas)

    def check_inputs(self, target_path: str) -> dict:
        from .assets import resolve_model
        from .artifacts import load_matrix
        from .runtime import model_files_fingerprint, model_hidden_size
        from .io import sha256_file

        if not self.needs_models():
            return {}
        teacher, _ = resolve_teachers(self.args, need_anti=False)
        self.teacher_path = resolve_model(teacher, "--teacher_model")
        self.A = load_matrix(self.args.matrix_A, model_hidden_size(self.teacher_path), model_hidden_size(target_path))
        self.note_matrix_objective(self.args.matrix_A)
        return {"teacher_model": self.args.teacher_model, "teacher_files": model_files_fingerprint(self.teacher_path),
                "matrix_A": sha256_file(self.args.matrix_A)}

    def designed_objective(self) -> str | None:
        # the paper's LayerNorm fusion goes with its contrastive A; --norm none reads h_teacher A at the teacher's
        # logit scale, which is what the logits objective fits
        return {"layernorm": "contrastive", "none": "logits"}.get(self.args.norm)

    def option_note(self) -> str:
        return f" --norm {self.args.norm}"

    def load(self, target, tokenizer, device, dtype) -> None:
        super().load(target, tokenizer, device, dtype)
        if self.needs_models():
            self.teacher, self.teacher_tok = _load_teacher(self.teacher_path, device, dtype, self.args.teacher_dtype)

    @contextlib.contextmanager
    def context(self, alpha: float):
        from .fusion import fusion

        if alpha == 0:
            yield None
            return
        with fusion(self.target, self.teacher, self.A, alpha, self.tokenizer, self.teacher_tok, norm=self.args.norm,
                    bridge=self.args.bridge, memo=self.memo) as f:
            yield f

    @contextlib.contextmanager
    def sweep_context(self, alphas: list[float], rows: int, eos_ids=(), share=None):
        from .fusion import fusion_sweep

        if not any(alphas):
            yield [None] * len(alphas)
            return
        with fusion_sweep(self.target, self.teacher, self.A, alphas, rows, self.tokenizer, self.teacher_tok,
                          norm=self.args.norm, bridge=self.args.bridge, eos_ids=eos_ids, share=share) as fusers:
            yield fusers

    def describe(self) -> dict:
        out = super().describe()
        if self.needs_models():
            out.update(teacher_model=self.args.teacher_model or self.teacher_path, teacher_path=self.teacher_path,
                       teachers_from="--teacher_model" if self.args.teacher_model else "the matrix's sidecar",
                       matrix_A=self.args.matrix_A,
                       dims={"teacher": int(self.A.shape[0]), "target": int(self.A.shape[1])})
        return out


DEFAULT_CONTEXT_WEIGHT = 0.25  # generate.py's unset --context_weight for a tuned pair (measured best on dev: bench/arms.sh)
DEFAULT_PROMOTE_WEIGHT = 0.25  # its unset --promote_weight for a tuned pair (measured best on dev: bench/results.sh 2c)


@register
class Diff(Method):
    """Expert minus anti-expert, carried through A (``--diff_space hidden``) or on the shared vocabulary
    (``logits``); ``--top_k`` keeps only the target's own top-k tokens eligible; ``--gate g`` acts only
    where the anti-expert prefers the target's pick by at least g nats (over those top-k); ``--pool mean`` reads each
    teacher's mean hidden state over the text so far instead of its last token's; ``--context_weight w`` shrinks the
    difference toward the pair's center (its mean over the training texts)."""

    name = "diff"
    alpha_meaning = "a logit scale"
    # the tuned pair's scale at context weight 0.25 and promote weight 0.25 (dev: bench/results.sh; 18 chosen there)
    default_alphas = (0.0, 4.0, 8.0, 12.0, 18.0, 22.0, 26.0)
    uses = ("diff_space", "top_k", "gate", "bridge", "pool", "context_weight", "promote_weight", "demote_z")
    keeps_prompt_state = True
    shares_prefixes = True
    tau: float | None = None  # --promote_weight's threshold, computed once per run by load() (None: each fuser's own)

    def check(self) -> None:
        from .fusion import POOLS, SPACES

        a = self.args
        if a.diff_space not in SPACES:
            raise InputError(f"--diff_space must be one of {', '.join(SPACES)}, got {a.diff_space!r}")
        if a.pool not in POOLS:
            raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {a.pool!r}")
        if a.top_k < 0:
            raise InputError(f"--top_k must be >= 0 (0 = every token eligible), got {a.top_k}")
        if not math.isfinite(a.demote_z):
            raise InputError(f"--demote_z must be a finite number, got {a.demote_z}")
        if a.promote_weight is None:
            pass  # resolved by check_inputs, from the matrix
        elif not (a.promote_weight >= 0 and math.isfinite(a.promote_weight)):
            raise InputError(f"--promote_weight must be a finite number >= 0, got {a.promote_weight}")
        elif a.promote_weight != 1 and (a.diff_space != "hidden" or a.gate is not None):
            raise InputError("--promote_weight other than 1 reads the offset against the pair's center: it needs "
                             "--diff_space hidden and no --gate")
        if a.context_weight is None:
            return  # resolved by check_inputs, from the matrix
        if not (a.context_weight >= 0 and math.isfinite(a.context_weight)):
            raise InputError(f"--context_weight must be a finite number >= 0, got {a.context_weight}")
        if a.context_weight != 1 and (a.diff_space != "hidden" or a.gate is not None):
            raise InputError("--context_weight other than 1 shrinks the hidden-space difference: it needs "
                             "--diff_space hidden and no --gate")

    def needs_models(self) -> bool:
        return any(a > 0 for a in self.args.alphas)

    def check_inputs(self, target_path: str) -> dict:
        from .assets import resolve_model
        from .artifacts import load_center, load_matrix
        from .runtime import model_files_fingerprint, model_hidden_size
        from .io import sha256_file

        if not self.needs_models():
            return {}
        a = self.args
        expert, anti = resolve_teachers(a, need_anti=True)
        self.expert_path = resolve_model(expert, "--teacher_model")
        self.anti_path = resolve_model(anti, "--anti_teacher_model")
        d_e, d_a = model_hidden_size(self.expert_path), model_hidden_size(self.anti_path)
        if d_e != d_a:
            raise InputError(f"--anti_teacher_model {anti} has hidden size {d_a}, the expert "
                             f"{expert} {d_e}: the two teachers must share one architecture and output layer")
        fp = {"teacher_model": a.teacher_model, "teacher_files": model_files_fingerprint(self.expert_path),
              "anti_teacher_model": a.anti_teacher_model, "anti_teacher_files": model_files_fingerprint(self.anti_path)}
        self.A = self.center = None
        if a.diff_space == "hidden":
            self.A = load_matrix(a.matrix_A, d_e, model_hidden_size(target_path))
            fp["matrix_A"] = sha256_file(a.matrix_A)
            # an unset weight follows the matrix: its default when the tuned pair's center is stored beside A (and
            # no gate reads the teachers one by one), else 1; the matrix file is read for the center once
            unset = a.context_weight is None or a.promote_weight is None
            self.center = load_center(a.matrix_A, d_e, required=False) if unset and a.gate is None else None
            why = "the pair's center is stored beside A" if self.center is not None else "no center beside A (or a gate)"
            if a.context_weight is None:
                a.context_weight = 1.0 if self.center is None else DEFAULT_CONTEXT_WEIGHT
                log.info("context weight %g: %s", a.context_weight, why if self.center is not None
                         else f"{why}: the teachers' difference is read whole")
            if a.promote_weight is None:
                a.promote_weight = 1.0 if self.center is None else DEFAULT_PROMOTE_WEIGHT
                log.info("promote weight %g: %s", a.promote_weight, why if self.center is not None
                         else f"{why}: the offset is read as it is")
            if self.center is None and (a.context_weight != 1 or a.promote_weight != 1):  # set explicitly: required
                self.center = load_center(a.matrix_A, d_e, fix="--context_weight 1" if a.context_weight != 1
                                          else "--promote_weight 1")
            self.note_matrix_objective(a.matrix_A)
            self.note_tuned_pool(a.matrix_A)
        else:  # the logits space: neither reads a center
            if a.context_weight is None:
                a.context_weight = 1.0
            if a.promote_weight is None:
                a.promote_weight = 1.0
        return fp

    def note_tuned_pool(self, matrix_path: str) -> str | None:
        """One log line when the matrix's sidecar says its pair was tuned through the fusion with another pool
        (``align.py --tune_pool``) than this run decodes with (``--pool``); returns the tuned pool."""
        side, meta = self.matrix_sidecar(matrix_path)
        if not meta or not meta.get("tuned_pair"):
            return None
        tuned = (meta.get("arguments") or {}).get("tune_pool", "last")  # pairs tuned before --tune_pool: last
        if tuned != self.args.pool:
            log.warning("the pair named by %s was tuned through the fusion with --tune_pool %s; this run decodes it "
                        "with --pool %s (a legitimate ablation, but not how it was trained)", side, tuned, self.args.pool)
        return tuned

    def designed_objective(self) -> str | None:
        return "logits" if self.args.diff_space == "hidden" else None  # (h_e - h_a) A read by the target's output layer

    def load(self, target, tokenizer, device, dtype) -> None:
        from .fusion import same_tokenizer, teacher_index

        super().load(target, tokenizer, device, dtype)
        if not self.needs_models():
            return
        self.expert, self.teacher_tok = _load_teacher(self.expert_path, device, dtype, self.args.teacher_dtype)
        self.anti, anti_tok = _load_teacher(self.anti_path, device, dtype, self.args.teacher_dtype)
        if not same_tokenizer(self.teacher_tok, anti_tok):
            raise InputError(f"--anti_teacher_model {self.args.anti_teacher_model} has another tokenizer than the "
                             f"expert {self.args.teacher_model}: both teachers must come from one base model")
        self.index = None
        if self.args.promote_weight not in (None, 1):  # its threshold: one product over the target's vocabulary, once per run
            from .fusion import center_threshold

            self.tau = center_threshold(self.center, self.A, target.get_output_embeddings().weight, self.args.demote_z)
        if self.args.diff_space == "logits":
            V = target.get_output_embeddings().weight.shape[0]
            self.index = teacher_index(tokenizer, self.teacher_tok, V)

    @contextlib.contextmanager
    def context(self, alpha: float):
        from .fusion import difference_fusion

        if alpha == 0:
            yield None
            return
        a = self.args
        cfg = self.config(alpha)
        with difference_fusion(self.target, self.expert, self.anti, cfg, self.A, self.tokenizer, self.teacher_tok,
                               bridge=a.bridge, index=self.index, memo=self.memo, center=self.center,
                               tau=self.tau) as f:
            yield f
            self._count(alpha, f)

    @contextlib.contextmanager
    def sweep_context(self, alphas: list[float], rows: int, eos_ids=(), share=None):
        from .fusion import difference_sweep

        if not any(alphas):
            yield [None] * len(alphas)
            return
        a = self.args
        cfgs = [self.config(x) for x in alphas]
        with difference_sweep(self.target, self.expert, self.anti, cfgs, rows, self.A, self.tokenizer, self.teacher_tok,
                              bridge=a.bridge, index=self.index, eos_ids=eos_ids, share=share,
                              center=self.center, tau=self.tau) as fusers:
            yield fusers
            for x, f in zip(alphas, fusers):
                self._count(x, f)

    def config(self, alpha: float):
        """The :class:`detox_pa.fusion.DiffConfig` of one alpha under this run's arguments."""
        from .fusion import DiffConfig

        a = self.args
        return DiffConfig(alpha=alpha, space=a.diff_space, top_k=a.top_k, gate=a.gate, pool=a.pool,
                          context_weight=1.0 if a.context_weight is None else a.context_weight,  # None: unresolved
                          promote_weight=1.0 if a.promote_weight is None else a.promote_weight, demote_z=a.demote_z)

    def records_nll(self, alpha: float) -> bool:
        return alpha == 0 or not self.config(alpha).edits_hidden

    def fingerprint(self) -> dict:
        out = super().fingerprint()
        if out["pool"] == "last":  # journals written before --pool existed resume unchanged
            del out["pool"]
        if out["context_weight"] in (None, 1):  # nor before --context_weight
            del out["context_weight"]
        if out["promote_weight"] in (None, 1):  # nor before --promote_weight (then the threshold is not read either)
            del out["promote_weight"], out["demote_z"]
        return out

    def describe(self) -> dict:
        out = {**super().describe(), "pool": self.args.pool, "context_weight": self.args.context_weight,
               "promote_weight": self.args.promote_weight}
        if self.args.promote_weight not in (None, 1):
            out["demote_z"] = self.args.demote_z
        if self.needs_models():
            out.update(teacher_model=self.args.teacher_model or self.expert_path, teacher_path=self.expert_path,
                       anti_teacher_model=self.args.anti_teacher_model or self.anti_path, anti_teacher_path=self.anti_path,
                       teachers_from="--teacher_model" if self.args.teacher_model else "the matrix's sidecar",
                       matrix_A=self.args.matrix_A if self.A is not None else None,
                       dims={"teacher": int(self.A.shape[0]), "target": int(self.A.shape[1])} if self.A is not None else None)
        return out


@register
class WordBan(Method):
    """Decoding that forbids every token sequence spelling a word of garak's profanity lists (alpha > 0: on)."""

    name = "wordban"
    baseline = True
    alpha_meaning = "0 = off, > 0 = on"
    keeps_prompt_state = True

    def load(self, target, tokenizer, device, dtype) -> None:
        from .baselines import bad_words_ids

        super().load(target, tokenizer, device, dtype)
        self.bad = bad_words_ids(tokenizer) if any(a > 0 for a in self.args.alphas) else None

    def generate_kwargs(self, alpha: float) -> dict:
        return {"bad_words_ids": self.bad} if alpha > 0 else {}

    def records_nll(self, alpha: float) -> bool:
        return True  # a logits processor after the output layer: the layer's output is the target's own


@register
class Steer(Method):
    """Activation steering: ``h + alpha * v`` at the input of the output layer."""

    name = "steer"
    baseline = True
    default_alphas = (0.0, 0.1, 0.2, 0.3, 0.4)
    alpha_meaning = "a hidden-state scale"
    uses = ("steer_vector",)
    keeps_prompt_state = True
    shares_prefixes = True

    def check(self) -> None:
        if not self.args.steer_vector:
            raise InputError("--method steer needs --steer_vector")

    def check_inputs(self, target_path: str) -> dict:
        from .artifacts import load_steer_vector
        from .runtime import model_hidden_size
        from .io import sha256_file

        self.vector = load_steer_vector(self.args.steer_vector, model_hidden_size(target_path))
        return {"steer_vector_sha256": sha256_file(self.args.steer_vector)}

    def context(self, alpha: float):
        from .baselines import steering

        return steering(self.target, self.vector, alpha)

    def sweep_context(self, alphas: list[float], rows: int, eos_ids=(), share=None):
        from .baselines import SteerEdit
        from .fusion import alpha_sweep

        layer = self.target.get_output_embeddings()
        editors = [SteerEdit(self.vector.to(device=layer.weight.device), a) if a else None for a in alphas]
        return alpha_sweep(self.target, [], editors, rows, True, eos_ids, share)


@register
class TopK(Method):
    """The target alone with only its own top-k tokens eligible (``--top_k``; alpha > 0: on): the truncation
    control of ``diff``, whose plausibility constraint restricts decoding the same way. Under greedy decoding it
    equals the target alone; under sampling it shows how much of a method's change the restriction alone makes."""

    name = "topk"
    baseline = True
    alpha_meaning = "0 = off, > 0 = on"
    uses = ("top_k",)

    def check(self) -> None:
        if self.args.top_k < 1:
            raise InputError(f"--method topk needs --top_k >= 1 (the eligible tokens), got {self.args.top_k}")

    def generate_kwargs(self, alpha: float) -> dict:
        return {"top_k": self.args.top_k} if alpha > 0 else {}
