"""Cross-fitting on the dev prompts (bench/results.sh): the default pair trains on the dev prompts' texts too, so its
alpha is chosen out of fold. A pair tuned with fold dev_a's texts (and the training prompts') is swept on rtp:dev_b,
one tuned with dev_b's on rtp:dev_a; the two sweeps are merged into one generations file over rtp:dev in which every
prompt was decoded by a pair that never saw it, and that file is scored and read like any dev sweep.

    python bench/crossfit.py trained_on_dev ALIGN_DIR       # prints how many dev prompts the pair was tuned on
    python bench/crossfit.py fold_settings ALIGN_DIR dev_a  # TUNE_TEXT_PATH and TUNE_TEXT_ROWS of its dev_a fold pair
    python bench/crossfit.py merge OUT.json FOLD_A.json FOLD_B.json   # FOLD_A: rtp:dev_a's sweep, FOLD_B: rtp:dev_b's

``merge`` checks that the two files are greedy sweeps of the same alphas over exactly rtp:dev_a and rtp:dev_b, puts
every record at its prompt's position in rtp:dev (``prompt_index``), and writes the meta file with both parts'
provenance. The parts' recorded NLL is not carried over (the merged file is new): eval_ppl.py recomputes the PPL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FOLDS = ("dev_a", "dev_b")


def _tune_arguments(align_dir: str | Path) -> dict:
    """The step-2 arguments recorded in ``align_dir``'s alignment sidecar."""
    from detox_pa.artifacts import matrix_sidecar_path
    from detox_pa.errors import InputError

    side = matrix_sidecar_path(align_dir)
    if not side.is_file():
        raise InputError(f"{side}: no alignment sidecar (run step 2 first)")
    return json.loads(side.read_text(encoding="utf-8")).get("arguments", {})


def _text_paths(args: dict, key: str = "tune_text_path") -> list[str]:
    return [p.strip() for p in str(args.get(key) or "").split(",") if p.strip()]


def tuned_dev_prompts(align_dir: str | Path) -> int:
    """How many rtp:dev prompts the tuned pair of ``align_dir`` was trained on (its sidecar's tune texts and rows)."""
    from detox_pa.assets import rtp_split
    from detox_pa.directed import read_pairs

    args = _tune_arguments(align_dir)
    if str(args.get("tune_pair")) != "true":
        return 0
    left = int(args.get("tune_text_rows") or 0) or None
    prompts: set[str] = set()
    for p in _text_paths(args) or _text_paths(args, "text_path"):  # empty tune texts: step 2 tuned on --text_path
        pairs = read_pairs(p)
        take = pairs if left is None else pairs[:left]
        prompts |= {q.strip() for q, _ in take}  # read_pairs glues prompt and text as training does
        if left is not None:
            left -= len(take)
            if left <= 0:
                break
    return len(prompts & {q.strip() for q in rtp_split("dev")})


def fold_settings(align_dir: str | Path, fold: str) -> tuple[str, int]:
    """Step 2's TUNE_TEXT_PATH and TUNE_TEXT_ROWS for the pair tuned like ``align_dir``'s but with only ``fold``'s dev
    texts: its tune text files without the other fold's file (a file whose prompts are all of the other fold), and its
    row cap less that file's rows (the dev files come first, so the rows of the files after them stay the same)."""
    from detox_pa.assets import rtp_split
    from detox_pa.directed import read_pairs
    from detox_pa.errors import InputError

    if fold not in FOLDS:
        raise InputError(f"fold {fold!r}: expected one of {', '.join(FOLDS)}")
    other = {q.strip() for q in rtp_split(FOLDS[1 - FOLDS.index(fold)])}
    args = _tune_arguments(align_dir)
    paths = _text_paths(args)
    rows = int(args.get("tune_text_rows") or 0)
    keep, seen_other, before = [], False, 0
    for p in paths:
        pairs = read_pairs(p)
        if {q.strip() for q, _ in pairs} <= other:
            seen_other = True
            if rows and before < rows:  # the cap counted this file's rows
                rows -= min(len(pairs), rows - before)
            continue
        keep.append(p)
        before += len(pairs)
    if not seen_other:
        raise InputError(f"{align_dir}: none of its tune text files ({', '.join(paths)}) holds only rtp:"
                         f"{FOLDS[1 - FOLDS.index(fold)]}'s prompts; cannot leave that fold out")
    return ",".join(keep), rows


def merge(out: Path, part_a: Path, part_b: Path) -> dict:
    """Merge rtp:dev_a's sweep (``part_a``) and rtp:dev_b's (``part_b``) into one sweep over rtp:dev."""
    from detox_pa.artifacts import PAIRS_KEY, generation_meta_path
    from detox_pa.assets import rtp_split
    from detox_pa.errors import InputError
    from detox_pa.io import atomic_write_json

    if out.exists():
        raise InputError(f"{out} exists; remove it to merge again")
    order = {p: i for i, p in enumerate(rtp_split("dev"))}
    fold_prompts = {fold: set(rtp_split(fold)) for fold in FOLDS}
    runs, metas = [], []
    for path, fold in ((part_a, "dev_a"), (part_b, "dev_b")):
        meta_p = generation_meta_path(path)
        if not path.is_file() or not meta_p.is_file():
            raise InputError(f"{path}: a generations file with its meta file expected")
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
        if meta.get("data_path") != f"rtp:{fold}":
            raise InputError(f"{meta_p}: data_path {meta.get('data_path')!r}, expected 'rtp:{fold}'")
        if (meta.get("fingerprint") or {}).get("do_sample"):
            raise InputError(f"{meta_p}: a sampled run; only greedy sweeps are merged")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
        metas.append(meta)
    alphas = [sorted(float(b["alpha"]) for b in r) for r in runs]
    if alphas[0] != alphas[1]:
        raise InputError(f"{part_a} and {part_b} sweep different alphas: {alphas[0]} and {alphas[1]}")
    merged = []
    for a in alphas[0]:
        pairs = []
        for r, fold in zip(runs, FOLDS):
            want = fold_prompts[fold]
            block = next(b for b in r if float(b["alpha"]) == a)[PAIRS_KEY]
            got = {p["prompt"] for p in block}
            if got != want:
                raise InputError(f"alpha {a:g}: the {fold} part holds {len(got)} prompts, not exactly rtp:{fold}'s "
                                 f"{len(want)}")
            pairs += [{**p, "prompt_index": order[p["prompt"]]} for p in block]
        pairs.sort(key=lambda p: (p["prompt_index"], p.get("sample", 0)))
        merged.append({"alpha": a, PAIRS_KEY: pairs})
    meta = {k: v for k, v in metas[0].items() if k not in ("recorded_nll", "generation_seconds_per_alpha",
                                                           "acted_share_per_alpha")}
    meta.update({"output": str(out), "data_path": "rtp:dev", "n_prompts": len(order),
                 "matrix_A": "cross-fit: see crossfit", "fingerprint": None,
                 "crossfit": {"what": "every dev prompt decoded by a pair tuned without it: rtp:dev_a by the pair "
                                      "tuned with dev_b's texts, rtp:dev_b by the pair tuned with dev_a's (bench/"
                                      "crossfit.py merge)",
                              "parts": [{"file": str(p), "data_path": m.get("data_path"), "matrix_A": m.get("matrix_A"),
                                         "fingerprint": m.get("fingerprint")}
                                        for p, m in zip((part_a, part_b), metas)]},
                 "note": "merged from two sweeps (crossfit); the parts' recorded NLL is not carried over"})
    atomic_write_json(out, merged)
    atomic_write_json(generation_meta_path(out), meta)
    return meta


def main(argv=None) -> int:
    from detox_pa.errors import InputError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trained_on_dev")
    t.add_argument("align_dir")
    f = sub.add_parser("fold_settings")
    f.add_argument("align_dir")
    f.add_argument("fold", choices=FOLDS)
    m = sub.add_parser("merge")
    m.add_argument("out")
    m.add_argument("fold_a")
    m.add_argument("fold_b")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "trained_on_dev":
            print(tuned_dev_prompts(a.align_dir))
        elif a.cmd == "fold_settings":
            print("\n".join(map(str, fold_settings(a.align_dir, a.fold))))
        else:
            merge(Path(a.out), Path(a.fold_a), Path(a.fold_b))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
