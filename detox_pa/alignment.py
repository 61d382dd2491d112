"""Step 2, the alignment matrix A: carries teacher vectors into the target's embedding space.
``align.py`` parses :class:`AlignArguments` and calls :func:`run`, which writes A in the paper's format
(:func:`detox_pa.artifacts.save_matrix`) with a sidecar of its models, vocabulary overlap and metrics.

Two objectives. ``logits`` (the default recipe): the target's output layer must read ``h_teacher @ A`` the
way the teacher's own output layer reads ``h_teacher``: least squares on the shared tokens' output rows
(:func:`fit_logits_closed_form`), refined by KL on real teacher states (:func:`refine_kl`). ``contrastive``
(the paper), below. Both record the *transmission* metric (:func:`transmission`) on held-out text.

The contrastive objective is trained as in the paper, on the embedding rows of the tokens both vocabularies share
(:mod:`detox_pa.vocab`): for a shared token with teacher row ``e_t`` and target row ``e_s``,
the logits are dot products between ``e_t @ A`` and the target rows of
``[positive, n_negatives random other shared tokens]``, and the loss is cross-entropy with the
positive at index 0 (optionally divided by a temperature). Adam, batch 32, 5 epochs, lr 1e-3.

What differs from the paper's code:

- only the embedding matrices are read, straight from the safetensors files (header first, then one
  tensor), never two whole models;
- negatives are drawn for a whole epoch at once on the tensor side (``torch.randint`` over the other
  training tokens, shifted past the positive so it is never its own negative); batches are slices of
  a per-epoch permutation: no DataLoader, no per-item Python; the gradient is computed in closed
  form (no autograd graph) into a reused buffer, Adam uses its fused kernel, and the loop runs on one
  intra-op thread (its matrix products are small; extra threads only add synchronisation);
- a deterministic 5% of the shared tokens (lowest SHA-256 of the normalised token bytes) is held out;
  retrieval top-1 / top-10 on them is reported before and after training: is the nearest target
  embedding (among ALL shared target tokens) of ``e_t @ A`` the same token? ``dot`` (the training
  logit and what the output layer computes) is the headline metric, ``cosine`` is reported too.
  Negatives are drawn from the training tokens only.

Embedding rows are used raw, as stored (Gemma's ``sqrt(hidden)`` input scale is not applied; it
is a constant factor). ``input`` (the paper) aligns input-embedding rows; ``output`` aligns output-layer
(``lm_head``) rows, the space the fusion actually mixes into (the target's final hidden state is
scored against them). For tied models, such as both embedded defaults, the two are the same matrix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .artifacts import MATRIX_FILE, MATRIX_KEY, MATRIX_SIDECAR, TUNED_ANTI, TUNED_EXPERT
from .cli import args_to_dict, log_args, parse_dataclasses, require_min
from .directed import read_pairs  # noqa: F401  (the tune texts' reader; re-exported)
from .embeddings import SPACES, EmbeddingRef, find_embedding, load_embedding  # noqa: F401  (re-exported)
from .errors import InputError
from .io import check_output_dir

log = logging.getLogger(__name__)

INITS = ("random", "lstsq")
METRICS = ("dot", "cosine")
MIN_SHARED = 20  # fewer shared tokens than this is not a vocabulary overlap one can train a matrix on

# ------------------------------------------------------------------------------ split and metric


def heldout_split(keys: Sequence[bytes], share: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, heldout_idx)``: the ``round(share * n)`` (at least 1) tokens with the lowest SHA-256
    of their normalised bytes are held out. Independent of seeds and of token ids."""
    n = len(keys)
    k = max(1, int(round(share * n))) if share > 0 else 0
    digests = [hashlib.sha256(b"detox-pa/heldout/" + key).digest() for key in keys]
    order = sorted(range(n), key=lambda i: digests[i])
    held = torch.tensor(sorted(order[:k]), dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held


def _rank_stats(ranks: torch.Tensor, ks: Sequence[int]) -> dict:
    r = ranks.double()
    if not len(r):
        return {**{f"top{k}": float("nan") for k in ks}, "mrr": float("nan"), "median_rank": float("nan")}
    out = {f"top{k}": round(float((r < k).double().mean()), 6) for k in ks}
    out["mrr"] = round(float((1.0 / (r + 1)).mean()), 6)
    out["median_rank"] = float(r.median() + 1)
    return out


@torch.no_grad()
def retrieval(mapped: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor,
              metrics: Sequence[str] = METRICS, ks: Sequence[int] = (1, 10), chunk: int = 256) -> dict:
    """Rank of the right target row among all ``candidates`` for each mapped vector, per metric.

    ``mapped``: (H, d) teacher rows @ A; ``candidates``: (N, d) target rows; ``positives``: (H,) row
    of the right token. Ties count against the mapping (rank = number of candidates scoring >= the
    positive, minus one). Dot and cosine scores come from one matrix product. Returns, per metric,
    top-k accuracies, mean reciprocal rank and median rank (1-based)."""
    for m in metrics:
        if m not in METRICS:
            raise ValueError(m)
    cand_t = candidates.T.contiguous()
    inv_cand = 1.0 / candidates.norm(dim=1).clamp_min(1e-12)
    ranks: dict[str, list[torch.Tensor]] = {m: [] for m in metrics}
    for s in range(0, mapped.shape[0], chunk):
        scores = mapped[s:s + chunk] @ cand_t
        pos = positives[s:s + chunk, None]
        for m in metrics:
            sc = scores * inv_cand if m == "cosine" else scores  # the row's own norm does not change its ranking
            ranks[m].append((sc >= sc.gather(1, pos)).sum(1) - 1)
    return {m: _rank_stats(torch.cat(ranks[m]) if ranks[m] else torch.zeros(0), ks) for m in metrics}


def evaluate(A: torch.Tensor, Et: torch.Tensor, Es: torch.Tensor, held: torch.Tensor) -> dict:
    """Held-out retrieval with both metrics: ``{"dot": {...}, "cosine": {...}}``."""
    return retrieval(Et[held] @ A, Es, held)


# ------------------------------------------------------------------------------ training


@dataclass
class TrainConfig:
    batch_size: int = 32
    epochs: int = 5
    lr: float = 1e-3
    n_negatives: int = 10
    temperature: float = 1.0
    init: str = "random"
    seed: int = 42
    threads: int = 1  # intra-op threads for the training loop (its ops are tiny; 1 is fastest on a busy CPU)
    progress: bool = True


@contextlib.contextmanager
def num_threads(n: int):
    """Temporarily set torch's intra-op thread count (``n <= 0``: leave it)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def init_mapping(Et: torch.Tensor, Es: torch.Tensor, init: str, generator: torch.Generator) -> torch.Tensor:
    """``random``: N(0, 1/d_teacher) entries (keeps a vector's scale); ``lstsq``: argmin ||Et A - Es||."""
    d_t, d_s = Et.shape[1], Es.shape[1]
    if init == "random":
        return torch.randn(d_t, d_s, generator=generator, dtype=torch.float32) / math.sqrt(d_t)
    if init == "lstsq":
        return torch.linalg.lstsq(Et.double(), Es.double()).solution.float().contiguous()
    raise ValueError(init)


def epoch_candidates(n: int, n_negatives: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1 + n_negatives) row indices for one epoch: column 0 is a permutation of the n rows (the
    positives, in batch order); the other columns are uniform draws over the other n - 1 rows
    (``randint`` over n - 1 values, shifted by one at and past the positive, so a negative is never
    the positive; negatives may repeat within a row, as with sampling with replacement)."""
    perm = torch.randperm(n, generator=generator)
    r = torch.randint(0, n - 1, (n, n_negatives), generator=generator)
    return torch.cat([perm[:, None], r + (r >= perm[:, None]).long()], dim=1)


def contrastive_loss_and_grad(A: torch.Tensor, et: torch.Tensor, y: torch.Tensor, temperature: float = 1.0,
                              out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (positive at index 0) of logits ``y @ (et @ A) / temperature`` and its gradient
    with respect to ``A``, in closed form (no autograd graph): with p = softmax(logits),
    dL/dA = et^T ((p - onehot_0) @ y) / (b * temperature).

    ``et``: (b, d_t) teacher rows; ``y``: (b, 1 + K, d_s) target rows of [positive, negatives];
    ``out``: an optional (d_t, d_s) buffer the gradient is written into (saves an allocation per step)."""
    b = et.shape[0]
    logits = (y * (et @ A).unsqueeze(1)).sum(-1)  # (b, 1 + K); several times faster than bmm for these shapes
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=1)
    loss = -logp[:, 0].mean()
    p = logp.exp_()
    p[:, 0] -= 1.0
    p.mul_(1.0 / (b * temperature))
    gx = torch.bmm(p.unsqueeze(1), y).squeeze(1)  # (b, d_s)
    grad = torch.mm(et.T, gx, out=out) if out is not None else et.T @ gx
    return loss, grad


@torch.no_grad()
def train_mapping(Et: torch.Tensor, Es: torch.Tensor, cfg: TrainConfig, A0: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, list[float], int]:
    """Contrastive training on the training rows ``Et`` (n x d_t) and ``Es`` (n x d_s), row i of both
    being the same token. Adam (fused kernel where available). Returns ``(A, mean loss per epoch, steps)``."""
    from .runtime import iter_progress

    n, K, B = Et.shape[0], cfg.n_negatives, cfg.batch_size
    if K >= n:
        raise InputError(f"n_negatives ({K}) must be smaller than the number of training tokens ({n})")
    Et = Et.float().contiguous()
    Es = Es.float().contiguous()
    d_s = Es.shape[1]
    A = torch.nn.Parameter(A0.clone().float().contiguous())
    try:
        opt = torch.optim.Adam([A], lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device / build
        opt = torch.optim.Adam([A], lr=cfg.lr)
    A.grad = torch.zeros_like(A)
    losses: list[float] = []
    steps = 0
    with num_threads(cfg.threads):
        for epoch in range(cfg.epochs):
            cand = epoch_candidates(n, K, generator)
            total = torch.zeros((), dtype=torch.float64)
            starts = range(0, n, B)
            bar = iter_progress(starts, len(starts), f"align epoch {epoch + 1}/{cfg.epochs}", "batch") \
                if cfg.progress else starts
            for s in bar:
                c = cand[s:s + B]
                y = Es.index_select(0, c.reshape(-1)).view(c.shape[0], c.shape[1], d_s)
                loss, _ = contrastive_loss_and_grad(A, Et.index_select(0, c[:, 0]), y, cfg.temperature, out=A.grad)
                opt.step()
                total += loss * c.shape[0]
                steps += 1
            losses.append(float(total) / n)
            log.info("epoch %d/%d: mean training loss %.4f", epoch + 1, cfg.epochs, losses[-1])
    return A.detach().clone(), losses, steps


def check_sizes(n_shared: int, n_train: int, n_negatives: int, teacher_vocab: int, target_vocab: int) -> None:
    """One-line errors when the overlap is too small to train on."""
    if n_shared == 0:
        raise InputError(f"the tokenizers share no vocabulary (0 of {teacher_vocab} teacher and {target_vocab} "
                         f"target tokens after normalisation); the alignment needs tokens both models have")
    if n_shared < MIN_SHARED:
        raise InputError(f"the tokenizers share only {n_shared} tokens (of {teacher_vocab} teacher and "
                         f"{target_vocab} target tokens); at least {MIN_SHARED} are needed to train the alignment")
    if n_negatives >= n_train:
        raise InputError(f"n_negatives ({n_negatives}) must be smaller than the {n_train} training tokens "
                         f"({n_shared} shared tokens minus the held-out ones)")


@dataclass
class AlignmentResult:
    mapping: torch.Tensor
    report: dict = field(default_factory=dict)


def fit(Et: torch.Tensor, Es: torch.Tensor, keys: Sequence[bytes], cfg: TrainConfig,
        heldout_share: float = 0.05) -> AlignmentResult:
    """Split, initialise, evaluate, train, evaluate. ``Et``/``Es``: the shared tokens' rows, aligned."""
    t0 = time.time()
    train_idx, held_idx = heldout_split(keys, heldout_share)
    gen = torch.Generator().manual_seed(cfg.seed)
    Et_train, Es_train = Et[train_idx], Es[train_idx]
    t_init = time.time()
    A0 = init_mapping(Et_train, Es_train, cfg.init, gen)
    t_init = time.time() - t_init
    before = evaluate(A0, Et, Es, held_idx)
    log.info("held-out retrieval before training (%d tokens): dot top-1 %.4f top-10 %.4f | cosine top-1 %.4f top-10 %.4f",
             len(held_idx), before["dot"]["top1"], before["dot"]["top10"], before["cosine"]["top1"], before["cosine"]["top10"])
    t_train = time.time()
    A, losses, steps = train_mapping(Et_train, Es_train, cfg, A0, gen) if cfg.epochs > 0 else (A0, [], 0)
    t_train = time.time() - t_train
    after = evaluate(A, Et, Es, held_idx)
    log.info("held-out retrieval after training: dot top-1 %.4f top-10 %.4f | cosine top-1 %.4f top-10 %.4f",
             after["dot"]["top1"], after["dot"]["top10"], after["cosine"]["top1"], after["cosine"]["top10"])
    report = {
        "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)),
        "heldout_share": heldout_share,
        "heldout_rule": "lowest sha256('detox-pa/heldout/' + normalised token bytes)",
        "retrieval": "nearest target embedding among all shared target tokens to (teacher embedding @ A); "
                     "'dot' = dot product (the headline; same as the training logits), 'cosine' also given",
        "heldout_before": before,
        "heldout_after": after,
        "loss_per_epoch": [round(x, 6) for x in losses],
        "optimizer_steps": steps,
        "init_seconds": round(t_init, 3),
        "train_seconds": round(t_train, 3),
        "fit_seconds": round(time.time() - t0, 3),
    }
    return AlignmentResult(A.float().contiguous(), report)


# ------------------------------------------------------------------------------ the logits objective

OBJECTIVES = ("contrastive", "logits")


def fit_logits_closed_form(Et_out: torch.Tensor, Es_out: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """A (d_teacher x d_target) such that the target's output layer reads ``h @ A`` the way the teacher's
    output layer reads ``h``, on the shared tokens: ``Es_out @ A.T ~ Et_out`` in least squares.

    For a teacher state ``h``: ``Es_out @ (h @ A)`` ~ ``Et_out @ h`` (the teacher's own logits), for every
    ``h``. ``Et_out``/``Es_out``: the shared tokens' output-layer rows (n x d_t, n x d_s). ``ridge`` adds
    ``ridge * n * I`` to the normal equations."""
    X = Es_out.double()
    Y = Et_out.double()
    if ridge > 0:
        G = X.T @ X + ridge * X.shape[0] * torch.eye(X.shape[1], dtype=X.dtype)
        At = torch.linalg.solve(G, X.T @ Y)
    else:
        At = torch.linalg.lstsq(X, Y).solution  # (d_s, d_t)
    return At.T.float().contiguous()


def map_states(H: torch.Tensor, A: torch.Tensor, norm: str = "none", eps: float = 1e-5) -> torch.Tensor:
    """The fused term before alpha: ``Norm(H @ A)`` (``layernorm`` as in the paper, or ``none``)."""
    M = H.float() @ A.float()
    if norm == "layernorm":
        M = torch.nn.functional.layer_norm(M, (M.shape[-1],), eps=eps)
    elif norm != "none":
        raise ValueError(norm)
    return M


@torch.no_grad()
def transmission(H: torch.Tensor, A: torch.Tensor, Et_out: torch.Tensor, Es_out: torch.Tensor, norm: str = "none",
                 k: int = 10, chunk: int = 256) -> dict:
    """Does the fused term carry the teacher's next-token prediction to the target's output layer?

    For each teacher state ``h`` (rows of ``H``, taken on real text), compare the teacher's own logits on
    the shared tokens (``Et_out @ h``) with the logits the fused term gets from the target's output
    layer (``Es_out @ Norm(h @ A)``), both over the same shared tokens:
    ``top1`` = same argmax; ``top{k}`` = mean overlap of the two top-k sets / k; ``pearson`` = mean
    per-state correlation of the two logit vectors; ``kl`` = mean KL(teacher || fused term) in nats;
    ``scale`` = mean std of the fused term's logits / the teacher's. 1, 1, 1, 0, 1 is perfect."""
    return transmissions(H, A, Et_out, Es_out, (norm,), k, chunk)[norm]


@torch.no_grad()
def transmissions(H: torch.Tensor, A: torch.Tensor, Et_out: torch.Tensor, Es_out: torch.Tensor,
                  norms: Sequence[str] = ("none", "layernorm"), k: int = 10, chunk: int = 256) -> dict:
    """:func:`transmission` for each of ``norms`` (a dict by norm), the teacher's side of each chunk (its logits
    over the shared tokens, their top-k, centring and log-softmax) computed once for all of them: the same numbers
    as one call per norm."""
    Et, Es = Et_out.float(), Es_out.float()
    n = H.shape[0]
    sums = {norm: dict.fromkeys(("top1", "topk", "pear", "kl", "scale"), 0.0) for norm in norms}
    for s in range(0, n, chunk):
        h = H[s:s + chunk].float()
        zt = h @ Et.T
        it = zt.topk(k, dim=1).indices
        a = zt - zt.mean(1, keepdim=True)
        lt = torch.log_softmax(zt, 1)
        pt, st = lt.exp(), zt.std(1).clamp_min(1e-12)
        for norm in norms:
            zf = map_states(h, A, norm) @ Es.T
            m = sums[norm]
            m["top1"] += float((zt.argmax(1) == zf.argmax(1)).sum())
            jf = zf.topk(k, dim=1).indices
            m["topk"] += float((it.unsqueeze(2) == jf.unsqueeze(1)).any(2).sum()) / k
            b = zf - zf.mean(1, keepdim=True)
            m["pear"] += float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).sum())
            lf = torch.log_softmax(zf, 1)
            m["kl"] += float((pt * (lt - lf)).sum())
            m["scale"] += float((zf.std(1) / st).sum())
    r = lambda x: round(x / max(n, 1), 6)  # noqa: E731
    return {norm: {"top1": r(m["top1"]), f"top{k}": r(m["topk"]), "pearson": r(m["pear"]), "kl": r(m["kl"]),
                   "scale": r(m["scale"]), "states": n, "norm": norm} for norm, m in sums.items()}


def refine_kl(A0: torch.Tensor, H: torch.Tensor, Et_out: torch.Tensor, Es_out: torch.Tensor, steps: int,
              lr: float = 1e-3, batch: int = 256, seed: int = 42, progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Refine A on real teacher states: minimise KL(teacher || target's output layer on ``h @ A``) over
    the shared tokens, with Adam from ``A0``. Returns A and the mean loss of each tenth of the steps."""
    from .runtime import iter_progress

    g = torch.Generator().manual_seed(seed)
    A = torch.nn.Parameter(A0.clone().float())
    opt = torch.optim.Adam([A], lr=lr)
    Et, Es = Et_out.float(), Es_out.float()
    Hf = H.float()
    losses, window = [], []
    every = max(1, steps // 10)
    for step in (iter_progress(range(steps), steps, "refine A (KL on teacher states)", "step") if progress else range(steps)):
        idx = torch.randint(0, Hf.shape[0], (min(batch, Hf.shape[0]),), generator=g)
        h = Hf[idx]
        with torch.no_grad():
            pt = torch.softmax(h @ Et.T, 1)
        lf = torch.log_softmax((h @ A) @ Es.T, 1)
        loss = -(pt * lf).sum(1).mean()  # cross-entropy = KL + the teacher's entropy (a constant)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % every == 0:
            losses.append(round(sum(window) / len(window), 6))
            window = []
    return A.detach().float().contiguous(), losses


def text_split(texts: Sequence[str], share: float) -> tuple[list[int], list[int]]:
    """(fit rows, held-out rows): held out are the ``round(share * n)`` (at least 1) texts with the lowest
    SHA-256; independent of order and seeds."""
    digests = [hashlib.sha256(b"detox-pa/text/" + t.encode("utf-8")).digest() for t in texts]
    order = sorted(range(len(texts)), key=lambda i: digests[i])
    k = max(1, int(round(share * len(texts)))) if texts else 0
    held = sorted(order[:k])
    hs = set(held)
    return [i for i in range(len(texts)) if i not in hs], held


@torch.no_grad()
def teacher_states(model, tokenizer, texts: Sequence[str], max_states: int = 0, batch_size: int = 16) -> torch.Tensor:
    """The teacher's final hidden states (the input of its output layer) at every real token of ``texts``."""
    from .fusion import backbone

    body = backbone(model)
    device = next(model.parameters()).device
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[torch.Tensor] = []
    total = 0
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[s:s + batch_size]), return_tensors="pt", padding=True)
        h = body(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).last_hidden_state
        sel = h[enc["attention_mask"].to(device).bool()].float().cpu()
        out.append(sel)
        total += sel.shape[0]
        if max_states and total >= max_states:
            break
    H = torch.cat(out) if out else torch.zeros(0, 0)
    return H[:max_states] if max_states else H


# ------------------------------------------------------------------------------ the step


REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TEXT_PATH = "data/teacher_data.tsv,data/teacher_data_toxic.tsv"  # the teacher data (clean, toxic)
# every sampled continuation of the dev prompts (both cross-fit folds), then of the training prompts
DEFAULT_TUNE_TEXTS = "data/tune_texts_dev_a.tsv,data/tune_texts_dev_b.tsv,data/tune_texts.tsv"
DEFAULT_TUNE_ROWS = 2546  # all 1,277 dev texts, then the training prompts' first sampling round (1,269)


@dataclass
class AlignArguments:
    model1_name: str = field(default="outputs/teacher", metadata={
        "help": "Teacher: step 1's output folder (the default), another local model folder or an alias "
                "(smollm2-135m, gemma-3-270m)."})
    model2_name: str = field(default="gemma-3-270m", metadata={"help": "Target: a local model folder or an alias."})
    output_dir: str = field(default="outputs/alignment", metadata={
        "help": f"Folder for {MATRIX_FILE} and {MATRIX_SIDECAR}; created if missing."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size (the paper: 32)."})
    epochs: int = field(default=5, metadata={"help": "Training epochs (the paper: 5)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (the paper: 1e-3)."})
    n_negatives: int = field(default=10, metadata={"help": "Random negative tokens per positive (the paper: 10)."})
    seed: int = field(default=42, metadata={"help": "Seed for the initialisation, permutations and negatives."})
    temperature: float = field(default=1.0, metadata={"help": "Logits are divided by this (the paper: 1, none)."})
    init: str = field(default="random", metadata={
        "help": "random (the paper) or lstsq (closed-form least squares teacher->target rows).",
        "choices": ["random", "lstsq"]})
    objective: str = field(default="logits", metadata={
        "help": "logits (the default recipe: the fused term reproduces the teacher's own next-token logits under "
                "the target's output layer: least squares on the shared tokens' output rows, then refined on real "
                "teacher states by KL) or contrastive (the paper: embedding rows, positive vs random negatives).",
        "choices": ["contrastive", "logits"]})
    embedding_space: str = field(default="auto", metadata={
        "help": "input: input embedding rows (the paper); output: lm_head rows (the tied input embedding "
                "when the model has no separate lm_head). auto: input for contrastive, output for logits.",
        "choices": ["auto", "input", "output"]})
    text_path: str = field(default=DEFAULT_TEXT_PATH, metadata={
        "help": "Text for the transmission metric (and the logits objective's refinement): a teacher-data "
                "TSV/JSONL (prompt + completion) or .txt (one text a line); several files separated by commas. "
                "The default, the clean and the toxic teacher data, is read from the repository's data/ folder. "
                "Empty: no transmission metric and no refinement."})
    text_rows: int = field(default=600, metadata={"help": "Use at most this many texts of each --text_path file."})
    heldout_text_share: float = field(default=0.2, metadata={
        "help": "Share of the texts (by hash) held out: the transmission metric is measured on them only."})
    max_states: int = field(default=8000, metadata={"help": "At most this many teacher states to refine on."})
    refine_steps: int = field(default=0, metadata={
        "help": "logits objective: Adam steps of the KL refinement on teacher states (0 = closed form only: the "
                "default recipe, whose --tune_pair trains A with the teachers; 150 was the untuned recipe's)."})
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
    tune_pair: str = field(default="auto", metadata={
        "help": "After fitting A, train the expert (--model1_name) and the anti-expert (--also_teacher) bodies, and A, "
                "through the fusion: on labelled texts, the fused next-token distribution over the target's top-k "
                "must give the toxic candidates little mass while staying close to the target's "
                "(detox_pa.directed). Writes the tuned pair into --output_dir (expert/, anti_expert/). auto (the "
                "default recipe): whenever an anti-expert is given; true; false (fit A only, as the paper).",
        "choices": ["auto", "true", "false"]})
    tune_text_path: str = field(default=DEFAULT_TUNE_TEXTS, metadata={
        "help": "Texts for --tune_pair (teacher-data TSV/JSONL, comma-separated; empty: --text_path). Every "
                "continuation position is a training state; a share (--heldout_text_share, by hash) is held out "
                "for the direction metric. The default: every sampled continuation of the 160 dev prompts (the "
                "folds rtp:dev_a and rtp:dev_b, 8 samples each), then of the 160 training prompts, read from the "
                "repository's data/ folder (with their precomputed target states). Twice the prompts transfer "
                "better than more samples of the same prompts; since the pair then trains on the dev prompts, "
                "bench/results.sh chooses its alpha out of fold (a pair tuned without each fold sweeps it)."})
    tune_text_rows: int = field(default=DEFAULT_TUNE_ROWS, metadata={
        "help": "--tune_pair: use the first this many texts over the files in order (0 = all). 2546 = all 1,277 dev "
                "texts, then the training prompts' first sampling round (1,269: samples 0-7 of each; on dev states "
                "it gave a sharper direction than all 3,809 texts for the same steps, AUC .970 vs .949)."})
    tune_top_k: int = field(default=10, metadata={"help": "--tune_pair: the target's top-k candidates per state."})
    tune_alpha: float = field(default=1.0, metadata={"help": "--tune_pair: the fusion strength while training."})
    tune_mu: float = field(default=4.0, metadata={"help": "--tune_pair: weight of KL(target || fused)."})
    tune_lr: float = field(default=1e-4, metadata={"help": "--tune_pair: AdamW learning rate of the teachers' bodies."})
    tune_lr_A: float = field(default=1e-4, metadata={"help": "--tune_pair: learning rate of A (0: A stays fixed)."})
    tune_epochs: float = field(default=2.5, metadata={
        "help": "--tune_pair: passes over the fit texts (2.5 over the default's ~2,040: about 320 steps)."})
    tune_batch_texts: int = field(default=16, metadata={"help": "--tune_pair: texts per step."})
    tune_hinge_weight: float = field(default=1.0, metadata={
        "help": "--tune_pair: weight of the greedy hinge (detox_pa.directed.greedy_hinge; 0 = off): at strength "
                "--tune_hinge_alpha, over the target's top --tune_hinge_top_k, a clean pick stays on top by "
                "--tune_hinge_margin and a toxic pick loses to the best clean candidate by that margin."})
    tune_hinge_alpha: float = field(default=3.0, metadata={"help": "--tune_pair: the hinge's decoding strength."})
    tune_hinge_margin: float = field(default=0.5, metadata={"help": "--tune_pair: the hinge's margin (logits)."})
    tune_hinge_top_k: int = field(default=5, metadata={"help": "--tune_pair: the hinge's eligible tokens (step 3's TOP_K)."})
    tune_label_scorer: str = field(default="profanity-check", metadata={
        "help": "--tune_pair: a candidate is toxic when it is a word of the word list, or when appending it makes "
                "this scorer's score of the continuation jump (profanity-check: the data filter, never the "
                "evaluation's scorer; none: the word list only).", "choices": ["profanity-check", "none"]})
    tune_jump_min: float = field(default=0.5, metadata={"help": "--tune_pair: a jump reaches at least this score."})
    tune_jump_rise: float = field(default=0.3, metadata={"help": "--tune_pair: ... and rises by at least this much."})
    tune_label_texts: bool = field(default=False, metadata={
        "help": "--tune_pair: also, in a continuation the scorer rates >= --tune_jump_min as a whole, the text's own "
                "next token is toxic at every state (the offset learns to leave a toxic trajectory, not only its "
                "keywords; needs a --tune_label_scorer)."})
    tune_ul_weight: float = field(default=1.0, metadata={
        "help": "--tune_pair: weight of the token-level part (unlikelihood of toxic candidates + KL + hinge)."})
    tune_contrast_weight: float = field(default=0.0, metadata={
        "help": "--tune_pair: weight of the continuation-level contrast (detox_pa.directed.contrast_loss; 0 = off): "
                "the fusion must raise a clean continuation's log-likelihood, relative to the target's, above a toxic "
                "continuation's of the same prompt (texts labelled by --tune_label_scorer on the continuation alone: "
                "clean < 0.2, toxic >= --tune_jump_min). Batches then hold every text of their prompts."})
    tune_contrast_alpha: float = field(default=3.0, metadata={"help": "--tune_pair: the contrast's fusion strength."})
    tune_contrast_beta: float = field(default=1.0, metadata={"help": "--tune_pair: the contrast's inverse temperature."})
    tune_probe_quantile: float = field(default=0.0, metadata={
        "help": "--tune_pair: > 0 also marks a state's own next token toxic when it moves the target's final hidden "
                "state along the target's own clean-to-toxic direction (the mean over toxic fit texts minus clean, "
                "steering's direction) by at least this quantile of all moves (detox_pa.directed.probe_labels; "
                "0 = off). Sees what the target's representation calls toxic, not only keywords."})
    tune_pool: str = field(default="mean", metadata={
        "help": "--tune_pair: the teachers' states the offset reads while training: mean (each teacher's mean state "
                "over the text up to that position, as generate.py --pool mean, the default, decodes) or last (the "
                "position's own, as --pool last decodes). Decode a pair with the pool it was tuned with."})
    transmission_before_tuning: bool = field(default=False, metadata={
        "help": "--tune_pair: also measure the transmission of the closed-form A with the untuned teachers, before "
                "tuning (the sidecar's 'transmission'; about 20 s for the embedded default). Without it, only the "
                "tuned pair through the tuned A is measured ('transmission_after_tuning'), which is what decoding "
                "reads. Without --tune_pair the transmission is always measured."})
    tune_adam: str = field(default="auto", metadata={
        "help": "--tune_pair: AdamW's implementation: auto (torch's choice: one tensor at a time on CPU, foreach on "
                "CUDA), single, foreach (the same numbers as single) or fused (one vectorised pass; the same update "
                "up to float rounding). bench/bench_tune.py measures them side by side."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    overwrite: bool = field(default=False, metadata={
        "help": f"Replace an existing {MATRIX_FILE} in --output_dir (and the tuned pair next to it); without it, an "
                "existing matrix stops the run before anything is read or written."})

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
        require_min(self, ("text_rows", "max_states", "refine_steps"), 0)
        if not (math.isfinite(self.refine_lr) and self.refine_lr > 0):
            raise InputError(f"--refine_lr must be a positive number, got {self.refine_lr}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise InputError(f"--ridge must be >= 0, got {self.ridge}")
        if self.text_path == DEFAULT_TEXT_PATH:  # the repository's files, from any working folder
            self.text_path = ",".join(str(REPO_DIR / p) for p in DEFAULT_TEXT_PATH.split(","))
        if self.tune_text_path == DEFAULT_TUNE_TEXTS:
            self.tune_text_path = ",".join(str(REPO_DIR / p) for p in DEFAULT_TUNE_TEXTS.split(","))
        require_min(self, ("tune_text_rows",), 0)
        if self.embedding_space == "auto":
            self.embedding_space = "output" if self.objective == "logits" else "input"
        if self.text_path:
            read_texts(self.text_path, self.text_rows)  # a bad file stops here, before any model is read
        self.tune_pair = str(self.tune_pair).lower()
        if self.tune_pair == "auto":
            self.tune_pair = "true" if self.also_teacher else "false"
        if self.tune_pair == "true":
            if not self.also_teacher:
                raise InputError("--tune_pair trains the expert and the anti-expert together: name the anti-expert "
                                 "with --also_teacher")
            if not (self.tune_text_path or self.text_path):
                raise InputError("--tune_pair needs labelled texts: --tune_text_path (or --text_path)")
            require_min(self, ("tune_top_k", "tune_batch_texts", "tune_hinge_top_k"), 1)
            if self.tune_hinge_top_k > self.tune_top_k:
                raise InputError(f"--tune_hinge_top_k ({self.tune_hinge_top_k}) cannot exceed --tune_top_k "
                                 f"({self.tune_top_k}): the hinge reads the states' candidates")
            for name in ("tune_alpha", "tune_lr", "tune_epochs"):
                v = getattr(self, name)
                if not (math.isfinite(v) and v > 0):
                    raise InputError(f"--{name} must be a positive number, got {v}")
            for name in ("tune_mu", "tune_lr_A", "tune_hinge_weight", "tune_hinge_alpha", "tune_hinge_margin",
                         "tune_ul_weight", "tune_contrast_weight", "tune_contrast_alpha", "tune_contrast_beta"):
                v = getattr(self, name)
                if not (math.isfinite(v) and v >= 0):
                    raise InputError(f"--{name} must be >= 0, got {v}")
            if self.tune_label_texts and self.tune_label_scorer == "none":
                raise InputError("--tune_label_texts labels whole continuations with the scorer: set "
                                 "--tune_label_scorer (profanity-check), not none")
            from .fusion import POOLS

            if self.tune_pool not in POOLS:
                raise InputError(f"--tune_pool must be one of {', '.join(POOLS)}, got {self.tune_pool!r}")
            from .directed import ADAM_IMPLS

            if self.tune_adam not in ADAM_IMPLS:
                raise InputError(f"--tune_adam must be one of {', '.join(ADAM_IMPLS)}, got {self.tune_adam!r}")
            if not (0 <= self.tune_probe_quantile < 1):
                raise InputError(f"--tune_probe_quantile must be in [0, 1), got {self.tune_probe_quantile}")
            if (self.tune_contrast_weight > 0 or self.tune_probe_quantile > 0) and self.tune_label_scorer == "none":
                raise InputError("--tune_contrast_weight and --tune_probe_quantile label whole continuations with the scorer: set "
                                 "--tune_label_scorer (profanity-check), not none")
            read_pairs(self.tune_text_path or self.text_path)
        check_output_dir(self.output_dir, "--output_dir")
        if (Path(self.output_dir) / MATRIX_FILE).exists() and not self.overwrite:
            raise InputError(f"{Path(self.output_dir) / MATRIX_FILE} already exists: pass --overwrite "
                             "(ALIGN_OVERWRITE=1 in run_alignment.sh) to replace it, or choose another --output_dir")


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
    from .completion import join_prompt_completion
    from .data import read_teacher_data
    from .io import read_text

    if Path(path).suffix.lower() == ".txt":
        texts = [ln.strip() for ln in read_text(path, "text file (--text_path)").splitlines() if ln.strip()]
    else:
        pairs, _ = read_teacher_data(path)
        texts = [join_prompt_completion(p, c)[0] for p, c in pairs]
    return texts


def parse_args(argv=None, description: str | None = None) -> AlignArguments:
    (args,) = parse_dataclasses([AlignArguments], argv, description=description or __doc__.split("\n\n")[0])
    return args


def _tokenizer(auto, path: str, what: str):
    if not Path(path).is_dir():
        log.warning("%s is not a local folder; trying it as a hub id", what)
    try:
        return auto.from_pretrained(path)
    except (OSError, ValueError) as e:
        hint = "" if Path(path).is_dir() else " (not a local folder, and the hub could not provide it)"
        raise InputError(f"{what}: cannot load its tokenizer{hint}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def teacher_text_states(args: AlignArguments, teacher_path: str, t_tok, also: str | None = None,
                        parts: tuple[str, ...] = ("fit", "heldout")) -> dict:
    """The teacher's (and --also_teacher's, or ``also``'s) final hidden states on the texts of ``parts``: ``fit``
    (for the KL refinement; computed only when it runs) and ``heldout`` (4,000 states, for the transmission)."""
    from transformers import AutoModelForCausalLM

    from .assets import resolve_model

    texts = read_texts(args.text_path, args.text_rows)
    fit_i, held_i = text_split(texts, args.heldout_text_share)
    fit_t, held_t = [texts[i] for i in fit_i], [texts[i] for i in held_i]
    who = {"teacher": teacher_path}
    if also or args.also_teacher:
        who["also_teacher"] = also or resolve_model(args.also_teacher, "--also_teacher")
    fit_states, held_states = [], {}
    need_fit = args.objective == "logits" and args.refine_steps > 0 and "fit" in parts
    held = "heldout" in parts
    for name, path in who.items():
        if not (need_fit or held):
            break  # nothing to compute: no teacher is loaded
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        n_fit = args.max_states // len(who) if args.max_states else 0
        if need_fit:
            fit_states.append(teacher_states(model, t_tok, fit_t, n_fit))
        if held:
            held_states[name] = teacher_states(model, t_tok, held_t, 4000)
        del model
    return {"fit": torch.cat(fit_states) if fit_states else None, "heldout": held_states,
            "n_fit": len(fit_t), "n_heldout": len(held_t)}


def tune_pair_stage(args: AlignArguments, teacher_path: str, target_path: str, A: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """--tune_pair: train the expert's and the anti-expert's bodies and A through the fusion
    (:func:`detox_pa.directed.train_pair`) on the continuation states of the texts, measure the offset's
    direction on held-out texts before and after, and save the tuned pair into --output_dir."""
    from .assets import resolve_model
    from .directed import (DirectedConfig, cached_target_states, compact_rows, concat_states, direction_metrics,
                           label_candidates, label_texts, pair_center, pair_offsets, shipped_states_path, train_pair)
    from .runtime import load_causal_lm, load_tokenizer

    t0 = time.time()
    anti_path = resolve_model(args.also_teacher, "--also_teacher")
    paths = args.tune_text_path or args.text_path
    s_tok = load_tokenizer(target_path, pad_with_eos=True)
    # --tune_text_rows takes the first rows (of the files in order); each file's states come from the file it ships
    # beside it (cut to the rows taken, so a row cap costs no target forward either), the cache, or the target
    left = args.tune_text_rows or None
    parts = []
    for path in [p.strip() for p in paths.split(",") if p.strip()]:
        file_pairs = read_pairs(path)
        take = len(file_pairs) if left is None else min(len(file_pairs), left)
        if take == 0:
            break
        parts.append(cached_target_states(target_path, lambda: load_causal_lm(target_path, "float32").eval(), s_tok,
                                          file_pairs, args.tune_top_k, progress=args.progress,
                                          shipped=[shipped_states_path(path)], rows=take))
        left = None if left is None else left - take
    states = concat_states(parts)
    pairs = states.texts
    fit_i, held_i = text_split([p + c for p, c in pairs], args.heldout_text_share)
    scorer = None
    if args.tune_label_scorer != "none":
        from .scorers import get_scorer

        sc = get_scorer(args.tune_label_scorer)
        scorer = lambda texts: sc.score(texts)  # noqa: E731
    t_lab = time.time()
    states.toxic = label_candidates(states, s_tok, scorer=scorer, jump_min=args.tune_jump_min,
                                    jump_rise=args.tune_jump_rise, toxic_texts=args.tune_label_texts)
    if args.tune_contrast_weight > 0 or args.tune_probe_quantile > 0:
        states.text_label = label_texts(states, scorer, toxic_min=args.tune_jump_min)
    probe = None
    if args.tune_probe_quantile > 0:
        from .directed import probe_labels, target_state_hidden

        h0, h1 = target_state_hidden(load_causal_lm(target_path, "float32").eval(), s_tok, states,
                                     progress=args.progress)
        hit, probe = probe_labels(states, h0, h1, fit_i, args.tune_probe_quantile)
        rows = hit.nonzero().flatten()
        states.toxic[rows, states.next_col[rows]] = True
        log.info("probe labels: %s", probe)
    t_lab = time.time() - t_lab
    is_fit = torch.isin(states.text_of, torch.tensor(fit_i, dtype=torch.long))
    fit, held = states.subset(is_fit.nonzero().flatten()), states.subset((~is_fit).nonzero().flatten())
    # only the output rows the states name are ever read: the same offsets from a fraction of the 262k-row matrix
    W, (fit, held) = compact_rows(load_embedding(find_embedding(target_path, "output",
                                                                f"target {args.model2_name}"))[0], fit, held)
    t_tok = load_tokenizer(teacher_path, pad_with_eos=True)
    expert = load_causal_lm(teacher_path, "float32").eval()
    anti = load_causal_lm(anti_path, "float32").eval()
    before = direction_metrics(held, *pair_offsets(expert, anti, t_tok, A, W, held, pool=args.tune_pool), top_k=5)
    cfg = DirectedConfig(alpha=args.tune_alpha, mu=args.tune_mu, lr=args.tune_lr, lr_A=args.tune_lr_A,
                         epochs=args.tune_epochs, batch_texts=args.tune_batch_texts, seed=args.seed,
                         hinge_weight=args.tune_hinge_weight, hinge_alpha=args.tune_hinge_alpha,
                         hinge_margin=args.tune_hinge_margin, hinge_top_k=args.tune_hinge_top_k,
                         ul_weight=args.tune_ul_weight, contrast_weight=args.tune_contrast_weight,
                         contrast_alpha=args.tune_contrast_alpha, contrast_beta=args.tune_contrast_beta,
                         pool=args.tune_pool, adam=args.tune_adam, progress=args.progress)
    A, rep = train_pair(expert, anti, t_tok, A, W, fit, cfg)
    after = direction_metrics(held, *pair_offsets(expert, anti, t_tok, A, W, held, pool=args.tune_pool), top_k=5)
    log.info("direction on held-out texts (%d states, %d with both kinds): AUC %s -> %s, d' %s -> %s",
             after["states"], after["states_both"], before.get("auc"), after.get("auc"), before.get("d_prime"),
             after.get("d_prime"))
    # decoding's --context_weight shrinks the difference toward its mean over the tune texts (no labels)
    center = pair_center(expert, anti, t_tok, states, pool=args.tune_pool)
    out = Path(args.output_dir)
    paths = {}
    for name, model, src in ((TUNED_EXPERT, expert, teacher_path), (TUNED_ANTI, anti, anti_path)):
        paths[name] = str(save_tuned_teacher(model, t_tok, out / name, src, {"stage": "tune_pair (align.py)",
                                             "arguments": {k: v for k, v in args_to_dict(args).items()
                                                           if k.startswith("tune_")}, "report": rep}))
    report = {"what": "both teachers' bodies and A trained through the fusion: unlikelihood of toxic candidates + "
                      "mu * KL(target || fused) over the target's top-k (+ the text's next token), states of "
                      "the fit texts", "texts": len(pairs), "texts_fit": len(fit_i), "texts_heldout": len(held_i),
              "states": len(states), "states_meta": states.meta, "label_seconds": round(t_lab, 1),
              "toxic_candidates": int(states.toxic.sum()), "states_with_a_toxic_candidate": int(states.toxic.any(1).sum()),
              "probe_labels": probe, "text_labels": None if states.text_label is None else
              {"clean": int((states.text_label == 1).sum()), "toxic": int((states.text_label == -1).sum())},
              "training": rep, "direction_heldout_before": before, "direction_heldout_after": after,
              "center": {"what": "the mean teachers' difference (h_e - h_a, pooled as --tune_pool) over every state of "
                                 "the tune texts, stored beside A under 'center' (generate.py --context_weight)",
                         "states": len(states), "pool": args.tune_pool, "norm": round(float(center.norm()), 4)},
              "seconds": round(time.time() - t0, 1)}
    return A, {"report": report, "expert": paths[TUNED_EXPERT], "anti_expert": paths[TUNED_ANTI], "center": center}


def save_tuned_teacher(model, tokenizer, dest: Path, source: str, tuned: dict) -> Path:
    """Save a tuned teacher as a plain Hugging Face folder (into a temporary folder, moved into place), with
    its source's teacher sidecar plus a ``tuned`` entry, written last."""
    import shutil

    from .artifacts import FINAL_TMP, TEACHER_SIDECAR
    from .io import atomic_write_json, read_json
    from .pretraining import _move_into

    dest.mkdir(parents=True, exist_ok=True)
    (dest / TEACHER_SIDECAR).unlink(missing_ok=True)
    tmp = dest / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _move_into(tmp, dest)
    src = Path(source) / TEACHER_SIDECAR
    side = read_json(src, "teacher sidecar") if src.is_file() else {"kind": "detox_pa teacher"}
    side["tuned"] = {"from": source, **tuned, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(dest / TEACHER_SIDECAR, side)
    return dest


def _log_transmission(held: dict, rep: dict, when: str) -> None:
    for who in held:
        m = rep[who]["none"]
        log.info("transmission (%s, held-out text, %d states%s): top-1 %.3f, top-10 %.3f, pearson %.3f, KL %.3f",
                 who, m["states"], when, m["top1"], m["top10"], m["pearson"], m["kl"])


def run(args: AlignArguments) -> dict:
    """Fit A for ``args.objective``, measure it, and write the matrix and its sidecar (align.py's body)."""
    from transformers import AutoTokenizer

    from .artifacts import save_matrix
    from .assets import describe_model, resolve_model
    from .runtime import library_versions, tell_deepspeed_the_accelerator
    from .vocab import shared_vocab

    t0 = time.time()
    log_args(args)
    tell_deepspeed_the_accelerator()  # saving the tuned pair imports accelerate, which probes for an accelerator
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
        # with --tune_pair the decoding reads the tuned pair through the tuned A: that is what is measured (after
        # tuning); the closed form's own transmission only with --transmission_before_tuning
        before = args.tune_pair != "true" or args.transmission_before_tuning
        states = teacher_text_states(args, teacher, t_tok, parts=("fit", "heldout") if before else ("fit",))
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
            **{who: transmissions(H, A, Ot, Os) for who, H in states["heldout"].items()}}
        if not before:
            result.report["transmission"]["measured"] = ("after tuning only (transmission_after_tuning: the tuned "
                                                         "pair through the tuned A, what decoding reads); "
                                                         "--transmission_before_tuning true also measures the "
                                                         "closed form with the untuned teachers here")
        _log_transmission(states["heldout"], result.report["transmission"], "")
    tuned = None
    if args.tune_pair == "true":
        A, tuned = tune_pair_stage(args, teacher, target, A)
        result.report["tune_pair"] = tuned["report"]
        if states is not None:  # how A carries each tuned teacher's own prediction now, as the diff method reads
            # it (through A with no norm: the tuned pair is decoded by --method diff only), so one norm is measured
            tstates = teacher_text_states(args, tuned["expert"], t_tok, also=tuned["anti_expert"], parts=("heldout",))
            result.report["transmission_after_tuning"] = {
                who: transmissions(H, A, Ot, Os, ("none",)) for who, H in tstates["heldout"].items()}
            _log_transmission(tstates["heldout"], result.report["transmission_after_tuning"], ", after tuning")
    assert A.shape == (d_t, d_s) and A.dtype == torch.float32

    sidecar = {
        "format": f"torch.load(path)[{MATRIX_KEY!r}] is a float32 tensor of shape (d_teacher, d_target); "
                  f"fused vector = teacher hidden state @ {MATRIX_KEY}",
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
        "tuned_pair": None if tuned is None else {TUNED_EXPERT: TUNED_EXPERT, TUNED_ANTI: TUNED_ANTI,
                                                  "note": "A was trained together with this pair (--tune_pair), "
                                                          "folders next to this file: decode with these teachers"},
        "seed": args.seed,
        "vocab_overlap": sv.stats(),
        "metrics": result.report,
        "arguments": args_to_dict(args),
        "versions": library_versions(("torch",)),
        "wall_seconds": round(time.time() - t0, 3),
    }
    matrix, side = save_matrix(args.output_dir, A, sidecar, center=None if tuned is None else tuned["center"])
    log.info("wrote %s and %s (%.1f s)", matrix, side, time.time() - t0)
    return {"artifact": MATRIX_FILE, **sidecar}
