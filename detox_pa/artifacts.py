"""Every artifact name, key and path of the pipeline, written once.

The five steps share only files; this module is their contract. Python code asks it; the shell launchers
source ``scripts/artifacts.env``, which ``python -m detox_pa.artifacts > scripts/artifacts.env`` writes from
it (a test keeps the two in step). Nothing here imports torch or reads a file.

==========  ====================================================================================
step        artifacts
==========  ====================================================================================
1 teacher   a Hugging Face folder + :data:`TEACHER_SIDECAR` (written last), :data:`RUN_RECORD`,
            ``checkpoint-*`` while training
2 align     :data:`MATRIX_FILE` (``torch.load(p)[MATRIX_KEY]`` is A) + :data:`MATRIX_SIDECAR`
3 generate  the paper's nested JSON (:data:`PAIRS_KEY`), ``<stem>.meta.json``, journals while running
4 scores    ``<stem>_toxicity[_tag].json`` / ``<stem>_ppl[_tag].json`` + ``_records.jsonl`` + ``.meta.json``
report      ``<stem>_report.md``, ``<stem>_report.png``, ``<stem>_report.meta.json``
==========  ====================================================================================
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError

# ----------------------------------------------------------------------------- step 1: teachers

TEACHER_SIDECAR = "detox_pa_teacher.json"  # written last: a teacher folder without it is unfinished
RUN_RECORD = "detox_pa_run.json"  # the arguments the checkpoints were trained with; checked on resume
FINAL_TMP = ".final.tmp"  # the finished teacher is saved here, then moved into place file by file
CHECKPOINT_GLOB = "checkpoint-*"

# ----------------------------------------------------------------------------- step 2: the matrix

MATRIX_FILE = "mapping_model.pt"
MATRIX_SIDECAR = "mapping_model.json"
TUNED_EXPERT = "expert"  # align.py --tune_pair: the tuned expert, a teacher folder inside the alignment folder
TUNED_ANTI = "anti_expert"  # ... and the tuned anti-expert
MATRIX_KEY = "mapping"  # the paper's format: torch.load(path)["mapping"] is A (d_teacher x d_target)
STEER_KEY = "vector"  # a steering vector file: torch.load(path)["vector"] (d_target)
CENTER_KEY = "center"  # beside A in a tuned pair's matrix file: the mean teacher difference over the training texts


def matrix_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / MATRIX_FILE


def matrix_sidecar_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / MATRIX_SIDECAR


def save_matrix(out_dir: str | os.PathLike, A, sidecar: dict, center=None) -> tuple[Path, Path]:
    """Write A in the paper's format (float32, ``{MATRIX_KEY: A}``; a tuned pair's ``center`` beside it under
    ``CENTER_KEY``, which the paper's code does not read) and its JSON sidecar, each atomically."""
    from .io import atomic_torch_save, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = {MATRIX_KEY: A.float().contiguous()}
    if center is not None:
        blob[CENTER_KEY] = center.float().contiguous()
    atomic_torch_save(blob, matrix_path(out))
    atomic_write_json(matrix_sidecar_path(out), {"artifact": MATRIX_FILE, **sidecar})
    return matrix_path(out), matrix_sidecar_path(out)


def load_matrix(path: str | os.PathLike, d_teacher: int | None = None, d_target: int | None = None):
    """``torch.load(path)[MATRIX_KEY]``, checked: 2-D, finite, shape (d_teacher, d_target) when given."""
    from .io import load_tensor_file

    A = load_tensor_file(path, MATRIX_KEY, "alignment matrix")
    if A.dim() != 2:
        raise InputError(f"alignment matrix {path}: {MATRIX_KEY!r} must be 2-D, got shape {tuple(A.shape)}")
    if d_teacher is not None and d_target is not None and tuple(A.shape) != (d_teacher, d_target):
        raise InputError(f"alignment matrix {path} has shape {tuple(A.shape)} but the models need "
                         f"(d_teacher={d_teacher}, d_target={d_target})")
    return A


def load_center(path: str | os.PathLike, d_teacher: int, required: bool = True, fix: str = "--context_weight 1"):
    """The tuned pair's center stored beside A (``torch.load(path)["center"]``), checked: 1-D of size d_teacher.
    ``required=False``: None when the file holds none. ``fix``: the flag the error names as the way around."""
    from .io import load_tensor_file

    c = load_tensor_file(path, CENTER_KEY, "alignment matrix", optional=True)
    if c is None:
        if not required:
            return None
        raise InputError(f"alignment matrix {path} holds no {CENTER_KEY!r} (the pair's mean teacher difference, "
                         f"written by step 2 since context weights exist): re-run run_alignment.sh, or decode with "
                         f"{fix}")
    if tuple(c.shape) != (d_teacher,):
        raise InputError(f"alignment matrix {path}: {CENTER_KEY!r} has shape {tuple(c.shape)}, expected ({d_teacher},)")
    return c


def save_steer_vector(path: str | os.PathLike, vector) -> None:
    from .io import atomic_torch_save

    atomic_torch_save({STEER_KEY: vector.float().contiguous()}, path)


def load_steer_vector(path: str | os.PathLike, d_target: int):
    """``torch.load(path)[STEER_KEY]``, checked: finite, shape (d_target,)."""
    from .io import load_tensor_file

    v = load_tensor_file(path, STEER_KEY, "steering vector")
    if v.dim() != 1 or v.shape[0] != d_target:
        raise InputError(f"steering vector {path}: expected {{{STEER_KEY!r}: tensor of shape [{d_target}]}}, "
                         f"got {tuple(v.shape)}")
    return v


# ----------------------------------------------------------------------------- step 3: generations

PAIRS_KEY = "prompt-response pairs"  # the paper's generation JSON: [{"alpha", PAIRS_KEY: [{prompt, response}]}]
# extra per-pair fields where generation recorded the unsteered target's NLL (eval_ppl.py reads them), and the
# generations meta file's key that says which target, dtype and file they belong to
CONT_IDS_KEY = "continuation_ids"
CONT_NLL_KEY = "continuation_nll"
RECORDED_NLL_KEY = "recorded_nll"
DRAFT_KEPT_KEY = "draft_kept"  # generate.py --draft_gate: True = the record is the draft (alpha 0's text), kept
_JOURNAL = ".journal"


def output_stem(path: str | os.PathLike) -> str:
    """``<stem>`` of a generations file (or of a file of texts to score): its path without ``.json`` (``.jsonl``,
    ``.txt``). Score and report files sit beside it."""
    s = str(path)
    for suffix in (".json", ".jsonl", ".txt"):
        if s.endswith(suffix):
            return s[: -len(suffix)]
    return s


def generation_meta_path(out: str | os.PathLike) -> Path:
    """The sidecar generate.py writes beside its output (``<name without suffix>.meta.json``)."""
    p = Path(out)
    return p.with_name(p.stem + ".meta.json")


def journal_path(out: str | os.PathLike, rank: int = 0, world: int = 1) -> Path:
    """The journal of one process: ``<out>.journal.jsonl``, or ``<out>.journal.rank<r>.jsonl`` under torchrun."""
    p = Path(out)
    return p.with_name(p.name + (f"{_JOURNAL}.jsonl" if world == 1 else f"{_JOURNAL}.rank{rank}.jsonl"))


def journal_paths(out: str | os.PathLike, ranks_only: bool = False) -> list[Path]:
    """Every journal beside ``out`` (of any earlier world size), sorted."""
    p = Path(out)
    pattern = p.name + (f"{_JOURNAL}.rank*.jsonl" if ranks_only else f"{_JOURNAL}*.jsonl")
    return sorted(p.parent.glob(pattern)) if p.parent.is_dir() else []


# ----------------------------------------------------------------------------- step 4: scores

TAG_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # --output_tag: letters, digits, '_' and '-'
SCORE_KINDS = ("toxicity", "ppl")


def check_tag(tag: str, flag: str = "--output_tag") -> str:
    if tag and not re.fullmatch(TAG_PATTERN, tag):
        raise InputError(f"{flag} {tag!r}: expected letters, digits, '_' or '-' (no dots, no slashes)")
    return tag


def score_paths(input_json: str | os.PathLike, kind: str, tag: str = "", output: str = "") -> dict[str, Path]:
    """``summary`` (``<stem>_<kind>[_<tag>].json``, the paper's file), ``records`` (``…_records.jsonl``, one
    line per continuation) and ``meta`` (``….meta.json``). ``output`` names the summary explicitly."""
    if kind not in SCORE_KINDS:
        raise ValueError(kind)
    base = output[: -len(".json")] if output else f"{output_stem(input_json)}_{kind}" + (f"_{tag}" if tag else "")
    return {"summary": Path(base + ".json"), "records": Path(base + "_records.jsonl"), "meta": Path(base + ".meta.json")}


def find_score_files(generations_path: str | os.PathLike) -> dict[str, list[tuple[str, Path]]]:
    """``{"toxicity": [(tag, path)], "ppl": [(tag, path)]}`` beside a generations file; untagged first."""
    stem = Path(output_stem(generations_path))
    folder = stem.parent if str(stem.parent) else Path(".")
    pat = re.compile(re.escape(stem.name) + r"_(" + "|".join(SCORE_KINDS) + r")(?:_(" + TAG_PATTERN + r"))?\.json")
    found: dict[str, list[tuple[str, Path]]] = {k: [] for k in SCORE_KINDS}
    if folder.is_dir():
        for p in folder.iterdir():
            m = pat.fullmatch(p.name)
            if m and p.is_file():
                found[m.group(1)].append((m.group(2) or "", p))
    for k in found:
        found[k].sort(key=lambda t: (t[0] != "", t[0]))
    return found


def parse_score_path(path: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``(the scored file's stem, kind, tag)`` when ``path`` is named like a score summary
    (``<stem>_<kind>[_<tag>].json``), else None."""
    p = Path(path)
    m = re.fullmatch(r"(.+)_(" + "|".join(SCORE_KINDS) + r")(?:_(" + TAG_PATTERN + r"))?\.json", p.name)
    return (p.with_name(m.group(1)), m.group(2), m.group(3) or "") if m else None


def report_paths(generations_path: str | os.PathLike, out_md: str | None = None,
                 out_png: str | None = None) -> dict[str, Path]:
    stem = output_stem(generations_path)
    md = Path(out_md) if out_md else Path(stem + "_report.md")
    return {"markdown": md, "png": Path(out_png) if out_png else Path(stem + "_report.png"),
            "meta": md.with_suffix(".meta.json")}


def comparison_paths(first_generations: str | os.PathLike, out_md: str | None = None,
                     out_png: str | None = None) -> dict[str, Path]:
    """The report that compares several runs: ``comparison_report.md`` / ``.png`` beside the first run."""
    md = Path(out_md) if out_md else Path(first_generations).parent / "comparison_report.md"
    return {"markdown": md, "png": Path(out_png) if out_png else md.with_suffix(".png"), "meta": md.with_suffix(".meta.json")}


# ----------------------------------------------------------------------------- the default run

def prompt_file(folder: str | os.PathLike, split: str) -> Path:
    """The embedded RealToxicityPrompts split written as a prompt file (setup.sh writes build, eval and dev)."""
    return Path(folder) / f"rtp_{split}.jsonl"


# the embedded default run's layout under OUT_DIR (the launchers' defaults)
DEFAULT_LAYOUT = {"TEACHER_DIR": "teacher", "ANTI_TEACHER_DIR": "anti_teacher", "ALIGN_DIR": "alignment",
                  "GENERATIONS": "generations.json", "PROMPT_DIR": "data"}


def shell_env() -> str:
    """``scripts/artifacts.env``: the names the launchers need, as shell assignments."""
    values = {"ART_TEACHER_SIDECAR": TEACHER_SIDECAR, "ART_MATRIX_FILE": MATRIX_FILE,
              "ART_MATRIX_SIDECAR": MATRIX_SIDECAR, "ART_TOX_STEM": "_toxicity", "ART_PPL_STEM": "_ppl",
              "ART_TUNED_EXPERT": TUNED_EXPERT, "ART_TUNED_ANTI": TUNED_ANTI,
              **{f"ART_{k}": v for k, v in DEFAULT_LAYOUT.items()},
              **{f"ART_PROMPTS_{s.upper()}": prompt_file("", s).name for s in ("build", "eval", "dev")}}
    lines = ["# Artifact names for the shell launchers, written by `python -m detox_pa.artifacts > scripts/artifacts.env`",
             "# from detox_pa/artifacts.py (the one place they are defined). Do not edit by hand."]
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(shell_env(), end="")
