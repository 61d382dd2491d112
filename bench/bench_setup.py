"""The set-up's model conversion: each embedded GGUF model de-quantised into a Hugging Face folder, the way
``./setup.sh`` does it (``detox_pa.assets``), with the GGUF file parsed once from a plain array
(:func:`detox_pa.assets.gguf_read_once`, the default) against transformers' own three parses through
``numpy.memmap`` slices, side by side in one run, into temporary caches (the real cache is not touched).

    .venv/bin/python bench/bench_setup.py                 # both embedded models
    .venv/bin/python bench/bench_setup.py --models gemma-3-270m
    .venv/bin/python bench/bench_setup.py --prepare      # set-up's prepare_models: one after the other vs side by side

Prints each conversion's time (CPU time of this process by default, ``--clock wall`` for wall time), the
ratio, and whether the two folders hold the same weights (every tensor equal) and the same tokenizer files.
Writes the same as JSON to bench/out/bench_setup.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_folders(a: Path, b: Path) -> dict:
    import torch

    wa, wb = _weights(a), _weights(b)
    same_w = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    tok = {}
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        ha = hashlib.sha256((a / name).read_bytes()).hexdigest() if (a / name).exists() else None
        hb = hashlib.sha256((b / name).read_bytes()).hexdigest() if (b / name).exists() else None
        tok[name] = ha == hb
    return {"tensors": len(wa), "weights_equal": bool(same_w), "files_equal": tok}


def main(argv=None) -> int:
    from detox_pa.assets import EMBEDDED_MODELS, _convert_gguf
    from detox_pa.cli import setup_logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(EMBEDDED_MODELS), help="comma-separated embedded aliases")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--prepare", action="store_true",
                    help="Time detox_pa.assets.prepare_models (every embedded model, empty cache) converting one "
                         "model after the other against each in its own process side by side (wall time).")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_setup.json"))
    a = ap.parse_args(argv)
    setup_logging()
    if a.prepare:
        return _bench_prepare()
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-setup-") as tmp:
        for alias in [m.strip() for m in a.models.split(",") if m.strip()]:
            spec = EMBEDDED_MODELS[alias]
            t = {}
            for way, read_once in (("three_parses", False), ("read_once", True)):
                dest = Path(tmp) / way / alias
                dest.parent.mkdir(parents=True, exist_ok=True)
                t0 = clock()
                _convert_gguf(spec, dest, read_once=read_once)
                t[way] = clock() - t0
            same = _same_folders(Path(tmp) / "three_parses" / alias, Path(tmp) / "read_once" / alias)
            rows.append({"model": alias, "seconds_three_parses": round(t["three_parses"], 1),
                         "seconds_read_once": round(t["read_once"], 1),
                         "ratio": round(t["read_once"] / t["three_parses"], 3), **same})
    print(f"{'model':<14} {'3 parses (s)':>12} {'read once (s)':>13} {'ratio':>6}  same weights / files ({a.clock} time)")
    for r in rows:
        print(f"{r['model']:<14} {r['seconds_three_parses']:>12.1f} {r['seconds_read_once']:>13.1f} {r['ratio']:>6.3f}  "
              f"{r['weights_equal']} / {all(r['files_equal'].values())} ({r['tensors']} tensors)")
    total_old = sum(r["seconds_three_parses"] for r in rows)
    total_new = sum(r["seconds_read_once"] for r in rows)
    print(f"{'both':<14} {total_old:>12.1f} {total_new:>13.1f} {total_new / total_old:>6.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"clock": a.clock, "rows": rows, "cpu_count": os.cpu_count()}, indent=2) + "\n")
    ok = all(r["weights_equal"] and all(r["files_equal"].values()) for r in rows)
    return 0 if ok else 1


def _bench_prepare() -> int:
    from detox_pa.assets import EMBEDDED_MODELS, prepare_models

    t = {}
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        for way, parallel in (("one_after_the_other", False), ("side_by_side", True)):
            os.environ["DETOX_PA_CACHE"] = str(Path(tmp) / way)
            t0 = time.perf_counter()
            prepare_models(parallel=parallel)
            t[way] = time.perf_counter() - t0
        same = all(_same_folders(Path(tmp) / "one_after_the_other" / "models" / m,
                                 Path(tmp) / "side_by_side" / "models" / m)["weights_equal"] for m in EMBEDDED_MODELS)
    print(f"prepare_models, {len(EMBEDDED_MODELS)} models from an empty cache (wall): one after the other "
          f"{t['one_after_the_other']:.1f} s, side by side {t['side_by_side']:.1f} s "
          f"({t['side_by_side'] / t['one_after_the_other']:.3f}x); same weights: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
