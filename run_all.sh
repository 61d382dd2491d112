#!/usr/bin/env bash
# The main job: the whole pipeline on the embedded default, offline on CPU, ending with a per-alpha table.
#
#   ./run_all.sh            # full run (<= 20 minutes on 2 CPU cores)
#   SMOKE=1 ./run_all.sh    # a few prompts, two alphas, a few training steps (~3 minutes)
#
# Sets up first (./setup.sh: venv, requirements, embedded models), then runs
#   1 run_pretrain.sh -> 2 run_alignment.sh -> 3 run_generation.sh -> 4a run_tox_score.sh -> 4b run_ppl_score.sh
# and report.py. Everything is written under OUT_DIR (default outputs/, or outputs/smoke with SMOKE=1).
# A step whose output already exists is skipped (FORCE=1 redoes everything); generation resumes
# from its journal if it was interrupted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SMOKE=${SMOKE:-0}
FORCE=${FORCE:-0}
if [[ "$SMOKE" == 1 ]]; then export OUT_DIR=${OUT_DIR:-outputs/smoke}; else export OUT_DIR=${OUT_DIR:-outputs}; fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

./setup.sh
source scripts/common.sh
mkdir -p "$OUT_DIR"
t_start=$SECONDS
step() { echo; echo "=== [$(( SECONDS - t_start ))s] $*"; }

if [[ "$SMOKE" == 1 ]]; then
  # tiny budget: a few training steps, one alignment epoch, 8 prompts, two alphas
  export MAX_STEPS=${MAX_STEPS:-6} EPOCHS=${EPOCHS:-1} MAX_PROMPTS=${MAX_PROMPTS:-8} ALPHAS=${ALPHAS:-"0 0.4"}
fi

if [[ "$FORCE" == 1 ]]; then rm -rf "$DEFAULT_TEACHER_DIR" "$DEFAULT_ALIGN_DIR" "${DEFAULT_GENERATIONS%.json}"*; fi

step "1/5 pretrain the teacher -> $DEFAULT_TEACHER_DIR"
if [[ -f "$DEFAULT_TEACHER_DIR/detox_pa_teacher.json" ]]; then echo "exists; skipped (FORCE=1 to redo)"; else ./run_pretrain.sh; fi

step "2/5 train the alignment matrix -> $DEFAULT_MATRIX"
if [[ -f "$DEFAULT_MATRIX" ]]; then echo "exists; skipped (FORCE=1 to redo)"; else ./run_alignment.sh; fi

step "3/5 generate with fusion -> $DEFAULT_GENERATIONS"
if [[ -f "$DEFAULT_GENERATIONS" ]]; then echo "exists; skipped (FORCE=1 to redo)"; else ./run_generation.sh; fi

step "4a/5 toxicity"
./run_tox_score.sh cpu "$DEFAULT_GENERATIONS"

step "4b/5 perplexity under the unsteered target"
./run_ppl_score.sh "$DEFAULT_TARGET" "$DEFAULT_GENERATIONS"

step "5/5 report"
"$PYTHON" "$REPO_DIR/report.py" "$DEFAULT_GENERATIONS"
echo
echo "done in $(( SECONDS - t_start ))s; artifacts under $OUT_DIR/"
