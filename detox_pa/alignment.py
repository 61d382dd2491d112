"""The alignment matrix A: carries teacher vectors into the target's embedding space.

Trained as in the paper, on the embedding rows of the tokens both vocabularies share
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
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .errors import InputError

log = logging.getLogger(__name__)

SPACES = ("input", "output")
INITS = ("random", "lstsq")
METRICS = ("dot", "cosine")
MIN_SHARED = 20  # fewer shared tokens than this is not a vocabulary overlap one can train a matrix on

# Keys of the input embedding, as a dotted suffix (``model.embed_tokens.weight`` ends with ``embed_tokens.weight``)
INPUT_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
              "tok_embeddings.weight")
# Keys of the output layer (lm_head); ``output.weight`` only as a whole key (``*.attention.output.weight`` is not one)
OUTPUT_KEYS = ("lm_head.weight", "embed_out.weight")
OUTPUT_EXACT = ("output.weight",)


# ------------------------------------------------------------------------------ reading embeddings


@dataclass
class EmbeddingRef:
    """Where one embedding matrix lives. ``source`` is ``safetensors``, ``bin`` or ``model``."""

    model: str
    space: str
    source: str
    file: str | None
    key: str | None
    shape: tuple[int, int] | None
    tied: bool  # the output space was requested and the input embedding is used (tied weights)

    def describe(self) -> dict:
        return {"source": self.source, "file": self.file, "key": self.key,
                "shape": list(self.shape) if self.shape else None, "tied": self.tied}


def _read_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_value(cfg: dict, name: str):
    if name in cfg:
        return cfg[name]
    text = cfg.get("text_config")
    if isinstance(text, dict) and name in text:
        return text[name]
    return None


def _matches(key: str, suffixes: Sequence[str], exact: Sequence[str] = ()) -> bool:
    return key in exact or any(key == s or key.endswith("." + s) for s in suffixes)


def _pick(shapes: dict[str, tuple], suffixes, exact, vocab_size, hidden_size) -> str | None:
    cands = [k for k, s in shapes.items() if _matches(k, suffixes, exact) and len(s) == 2]
    if hidden_size:
        cands = [k for k in cands if shapes[k][1] == hidden_size] or cands
    if not cands:
        return None
    # rows equal to the config's vocab size first, then the shortest key (the text model's own), then by name
    return sorted(cands, key=lambda k: (shapes[k][0] != vocab_size, len(k), k))[0]


def _wanted_from_index(index: Path, what: str) -> dict[str, Path]:
    """The shard holding each embedding / output-layer tensor named by a Hugging Face weights index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{index}: not a valid {what} index (expected a 'weight_map' object): {e}") from None
    return {k: index.parent / f for k, f in weight_map.items() if _matches(k, INPUT_KEYS + OUTPUT_KEYS, OUTPUT_EXACT)}


def _safetensors_shapes(folder: Path) -> tuple[dict[str, tuple], dict[str, Path], list[Path]]:
    """Tensor shapes and the file holding each tensor, from headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    where: dict[str, Path] = {}
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wanted = _wanted_from_index(index, "safetensors")
        files = sorted(set(wanted.values()))
        for f in files:
            if not f.exists():
                raise InputError(f"{index} names shard {f.name}, which is missing from {folder}")
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    if k in wanted:
                        shapes[k] = tuple(h.get_slice(k).get_shape())
                        where[k] = f
        return shapes, where, [index]
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    shapes[k] = tuple(h.get_slice(k).get_shape())
                    where[k] = f
        except Exception as e:  # noqa: BLE001 - a corrupt header: one line naming the file
            raise InputError(f"{f}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None
    return shapes, where, files


def _bin_files(folder: Path) -> list[Path]:
    index = folder / "pytorch_model.bin.index.json"
    if index.exists():
        return sorted(set(_wanted_from_index(index, "weights").values()))
    return sorted(folder.glob("*.bin"))


def _looked_for(space: str) -> str:
    keys = [f"*{k}" for k in INPUT_KEYS]
    if space == "output":
        keys = [f"*{k}" for k in OUTPUT_KEYS] + list(OUTPUT_EXACT) + ["(tied) " + keys[0]] + keys[1:]
    return ", ".join(keys)


def find_embedding(model: str, space: str = "input", what: str = "model") -> EmbeddingRef:
    """Locate the embedding matrix of ``model`` (a local folder or a hub id) without loading it.

    Local folders: safetensors (one file, several, or sharded with ``model.safetensors.index.json``:
    only the headers are read here, and later only the one tensor), else PyTorch ``*.bin`` files
    (memory-mapped). A hub id (only where a network exists) falls back to loading the whole model.

    ``space="output"`` is the output layer (``lm_head``), or the input embedding when the weights
    are tied and the file holds no separate output layer. Raises :class:`InputError` when a local
    folder holds no embedding tensor."""
    if space not in SPACES:
        raise InputError(f"embedding space must be one of {SPACES}, got {space!r}")
    folder = Path(model)
    if not folder.is_dir():  # a hub id: only a full model load can get it
        return EmbeddingRef(model, space, "model", None, None, None, False)
    cfg = _read_config(folder)
    vocab_size = _config_value(cfg, "vocab_size")
    hidden_size = _config_value(cfg, "hidden_size") or _config_value(cfg, "n_embd") or _config_value(cfg, "d_model")
    tie_flag = _config_value(cfg, "tie_word_embeddings")
    tie = True if tie_flag is None else bool(tie_flag)

    def choose(shapes: dict[str, tuple]) -> tuple[str | None, bool]:
        if space == "output":
            k = _pick(shapes, OUTPUT_KEYS, OUTPUT_EXACT, vocab_size, hidden_size)
            if k is not None:
                return k, False
            if not tie:
                return None, False
            return _pick(shapes, INPUT_KEYS, (), vocab_size, hidden_size), True
        return _pick(shapes, INPUT_KEYS, (), vocab_size, hidden_size), False

    shapes, where, files = _safetensors_shapes(folder)
    if files:
        key, tied = choose(shapes)
        if key is None:
            names = ", ".join(f.name for f in files[:4])
            extra = (" (config.json says tie_word_embeddings=false, so the input embedding cannot stand in)"
                     if space == "output" and not tie else "")
            raise InputError(f"{what}: no {space} embedding tensor found in {folder}/{names}: looked for keys "
                             f"{_looked_for(space)} among {len(shapes)} tensors{extra}")
        return EmbeddingRef(model, space, "safetensors", str(where[key]), key, tuple(shapes[key]), tied)
    bins = _bin_files(folder)
    if bins:
        return EmbeddingRef(model, space, "bin", str(bins[0]), None, None, False)
    raise InputError(f"{what}: no embedding tensor found: folder {folder} holds no weights file "
                     f"(looked for *.safetensors, model.safetensors.index.json, *.bin, pytorch_model.bin.index.json)")


def load_embedding(ref: EmbeddingRef, what: str = "model") -> tuple[torch.Tensor, EmbeddingRef]:
    """The float32 embedding matrix (vocab x hidden), and the reference completed with key and shape."""
    if ref.source == "safetensors":
        from safetensors import safe_open

        with safe_open(ref.file, "pt") as h:
            w = h.get_tensor(ref.key)
        return w.float(), ref
    if ref.source == "bin":
        files = _bin_files(Path(ref.model))
        state: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                part = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - old (non-zip) format cannot be memory-mapped
                part = torch.load(str(f), map_location="cpu", weights_only=True)
            state.update({k: v for k, v in part.items() if _matches(k, INPUT_KEYS + OUTPUT_KEYS, OUTPUT_EXACT)})
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        cfg = _read_config(Path(ref.model))
        vocab_size = _config_value(cfg, "vocab_size")
        hidden = _config_value(cfg, "hidden_size") or _config_value(cfg, "n_embd")
        tie_flag = _config_value(cfg, "tie_word_embeddings")
        tied = False
        key = None
        if ref.space == "output":
            key = _pick(shapes, OUTPUT_KEYS, OUTPUT_EXACT, vocab_size, hidden)
            if key is None and (tie_flag is None or tie_flag):
                key, tied = _pick(shapes, INPUT_KEYS, (), vocab_size, hidden), True
        else:
            key = _pick(shapes, INPUT_KEYS, (), vocab_size, hidden)
        if key is None:
            raise InputError(f"{what}: no {ref.space} embedding tensor found in {', '.join(f.name for f in files)}: "
                             f"looked for keys {_looked_for(ref.space)}")
        w = state[key].float().clone()
        return w, EmbeddingRef(ref.model, ref.space, "bin", ref.file, key, tuple(w.shape), tied)
    # last resort: load the whole model (a hub id, or weights in a format we do not read directly)
    from transformers import AutoModelForCausalLM

    log.info("%s: reading the %s embedding by loading the whole model %s", what, ref.space, ref.model)
    model = AutoModelForCausalLM.from_pretrained(ref.model, dtype=torch.float32)
    tied = False
    if ref.space == "output" and model.get_output_embeddings() is not None:
        w = model.get_output_embeddings().weight
        tied = w.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    else:
        w = model.get_input_embeddings().weight
        tied = ref.space == "output"
    w = w.detach().float().clone()
    del model
    return w, EmbeddingRef(ref.model, ref.space, "model", None, "get_%s_embeddings()" % ref.space, tuple(w.shape), tied)


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
    Et, Es = Et_out.float(), Es_out.float()
    n = H.shape[0]
    top1 = topk = pear = kl = scale = 0.0
    for s in range(0, n, chunk):
        h = H[s:s + chunk].float()
        zt = h @ Et.T
        zf = map_states(h, A, norm) @ Es.T
        top1 += float((zt.argmax(1) == zf.argmax(1)).sum())
        it, jf = zt.topk(k, dim=1).indices, zf.topk(k, dim=1).indices
        topk += float((it.unsqueeze(2) == jf.unsqueeze(1)).any(2).sum()) / k
        a = zt - zt.mean(1, keepdim=True)
        b = zf - zf.mean(1, keepdim=True)
        pear += float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).sum())
        lt, lf = torch.log_softmax(zt, 1), torch.log_softmax(zf, 1)
        kl += float((lt.exp() * (lt - lf)).sum())
        scale += float((zf.std(1) / zt.std(1).clamp_min(1e-12)).sum())
    r = lambda x: round(x / max(n, 1), 6)  # noqa: E731
    return {"top1": r(top1), f"top{k}": r(topk), "pearson": r(pear), "kl": r(kl), "scale": r(scale), "states": n,
            "norm": norm}


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
