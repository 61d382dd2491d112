"""The set-up's model conversion: each embedded GGUF model de-quantised into a Hugging Face folder, the way
``./setup.sh`` does it (``detox_pa.assets``: the GGUF file parsed once from a plain array,
:func:`detox_pa.assets.gguf_read_once`, and de-quantised by rows without a second copy,
:func:`detox_pa.assets.gguf_lean_dequantize`), against transformers' own loading (three parses through
``numpy.memmap`` slices, whole tensors, a copy of each), side by side in one run, each conversion in its own spawned
process, into temporary caches (the real cache is not touched).

    .venv/bin/python bench/bench_setup.py                 # both embedded models
    .venv/bin/python bench/bench_setup.py --models gemma-3-270m
    .venv/bin/python bench/bench_setup.py --prepare      # set-up's prepare_models: one after the other vs side by side

Prints each conversion's time (CPU time of its process by default, ``--clock wall`` for wall time) and peak RSS,
the ratios, and whether the two folders hold the same weights (every tensor equal) and the same tokenizer files.
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


def _peak_rss_kb() -> int:
    """This process's own peak RSS (kB): Linux's VmHWM, which starts afresh with the process's memory map.
    (``ru_maxrss`` does not: a spawned child starts from its parent's peak at the fork, so a parent that has read
    a model's weights would hide the child's.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _convert_measured(alias: str, dest: str, lean: bool, clock: str) -> tuple[float, int]:
    """One conversion in this (spawned) process: its seconds and this process's peak RSS (kB)."""
    from detox_pa.assets import EMBEDDED_MODELS, _convert_gguf
    from detox_pa.cli import setup_logging

    setup_logging()
    tick = time.process_time if clock == "cpu" else time.perf_counter
    t0 = tick()
    _convert_gguf(EMBEDDED_MODELS[alias], Path(dest), lean=lean)
    return tick() - t0, _peak_rss_kb()


def main(argv=None) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from detox_pa.assets import EMBEDDED_MODELS
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
    rows = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-setup-") as tmp:
        for alias in [m.strip() for m in a.models.split(",") if m.strip()]:
            if alias not in EMBEDDED_MODELS:
                raise SystemExit(f"error: --models: unknown alias {alias!r}; expected {', '.join(EMBEDDED_MODELS)}")
            t, rss = {}, {}
            for way, lean in (("transformers", False), ("ours", True)):
                dest = Path(tmp) / way / alias
                dest.parent.mkdir(parents=True, exist_ok=True)
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # a fresh process: its own peak
                    t[way], rss[way] = pool.submit(_convert_measured, alias, str(dest), lean, a.clock).result()
            same = _same_folders(Path(tmp) / "transformers" / alias, Path(tmp) / "ours" / alias)
            rows.append({"model": alias, "seconds_transformers": round(t["transformers"], 1),
                         "seconds_ours": round(t["ours"], 1), "ratio": round(t["ours"] / t["transformers"], 3),
                         "peak_rss_kb_transformers": rss["transformers"], "peak_rss_kb_ours": rss["ours"],
                         "rss_ratio": round(rss["ours"] / rss["transformers"], 3), **same})
    print(f"{'model':<14} {'transformers (s)':>16} {'ours (s)':>9} {'ratio':>6}  {'peak RSS GB':>17} {'ratio':>6}  "
          f"same weights / files ({a.clock} time)")
    for r in rows:
        print(f"{r['model']:<14} {r['seconds_transformers']:>16.1f} {r['seconds_ours']:>9.1f} {r['ratio']:>6.3f}  "
              f"{r['peak_rss_kb_transformers'] / 1e6:>8.2f} -> {r['peak_rss_kb_ours'] / 1e6:>5.2f} {r['rss_ratio']:>6.3f}  "
              f"{r['weights_equal']} / {all(r['files_equal'].values())} ({r['tensors']} tensors)")
    total_old = sum(r["seconds_transformers"] for r in rows)
    total_new = sum(r["seconds_ours"] for r in rows)
    print(f"{'both':<14} {total_old:>16.1f} {total_new:>9.1f} {total_new / total_old:>6.3f}")
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
