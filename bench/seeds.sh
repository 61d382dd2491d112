#!/usr/bin/env bash
# Seed study of step 2 (issue 21): how much the default recipe's outcome moves with ALIGN_SEED alone, and whether
# averaging the tuned pairs of several seeds (a "soup": the mean of their weights and of their A, one pair to decode
# with, so generation costs the same) removes the spread. Everything on the DEV prompts (rtp:dev, 160), never
# held out; greedy 10 tokens, the target's top-5, BiLSTM toxicity, token-weighted PPL under Gemma.
#
#   ./run_all.sh && bench/seeds.sh          # SEEDS="1 2 3" by default; the default run (seed 42) is the reference
#
# Reads  $OUT_DIR/{teacher,anti_teacher} (step 1's LM pair) and $OUT_DIR/alignment (seed 42, the default run).
# Writes $SEEDS_DIR/align_s<seed> (align.py --seed <seed>, every other argument the launcher's), $SEEDS_DIR/soup
# (the average of all the seeds' tuned pairs), $SEEDS_DIR/dev_<name>.json with both score files, and
# $SEEDS_DIR/seeds.md (the table, copied to docs/SEEDS.md). Reruns skip what exists. About 7 min of 2 cores per seed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SEEDS_DIR=${SEEDS_DIR:-$OUT_DIR/seeds}
SEEDS=${SEEDS:-"1 2 3"}
ALPHAS=${ALPHAS:-"0 3 4"}
PPL_CAP=${PPL_CAP:-1.25}
[[ -f "$DEFAULT_ALIGN_DIR/$ART_TUNED_EXPERT/config.json" ]] || { echo "error: run ./run_all.sh first (needs $DEFAULT_ALIGN_DIR)" >&2; exit 2; }
mkdir -p "$SEEDS_DIR"

source bench/lib_dev.sh
dev() { dev_sweep "$SEEDS_DIR" "$1" "$2" "$ALPHAS"; }

S42=$(screening_default "$SEEDS_DIR/align_s42")  # the default run's pair, or (tuned on dev too) a screening one
DIRS=("$S42")
for s in $SEEDS; do
  d="$SEEDS_DIR/align_s$s"; DIRS+=("$d")
  if [[ ! -f "$d/$ART_MATRIX_FILE" ]]; then
    echo "align.py --seed $s"
    ALIGN_OUTPUT_DIR="$d" ALIGN_SEED=$s ./run_alignment.sh --progress false > "$SEEDS_DIR/align_s$s.log" 2>&1
  fi
done
[[ -f "$SEEDS_DIR/soup/$ART_MATRIX_FILE" ]] || "$PYTHON" bench/seeds.py soup "$SEEDS_DIR/soup" "${DIRS[@]}"

dev s42 "$S42"
for s in $SEEDS; do dev "s$s" "$SEEDS_DIR/align_s$s"; done
dev soup "$SEEDS_DIR/soup"
{
  echo "# Seed study of step 2 (made by bench/seeds.sh, $(date -u +%Y-%m-%d))"
  echo
  echo "The default recipe with ALIGN_SEED alone changed (s42 = the default run's pair, outputs/alignment), and the soup"
  echo "(the mean of the teacher weights and of A over all of them, decoded like one pair). Dev prompts (rtp:dev, 160),"
  echo "greedy 10 tokens, top-5, mean BiLSTM toxicity (change vs alpha 0) and token-weighted PPL ratio under Gemma; the"
  echo "rule column is the dev alpha rule at PPL <= ${PPL_CAP}x; the last column is the paired bootstrap difference of mean"
  echo "toxicity against s42 at alpha 4 (95% interval; negative = less toxic)."
  echo
  "$PYTHON" bench/seeds.py table "$SEEDS_DIR" s42 $(for s in $SEEDS; do echo "s$s"; done) soup --ppl_cap "$PPL_CAP"
  echo
  echo "## What stays toxic (dev, the default run's pair s42): continuations the BiLSTM scores >= 0.5, with or without a"
  echo "word of the word list that step 2's labels use"
  echo
  "$PYTHON" bench/seeds.py residual "$SEEDS_DIR/dev_s42.json"
  if [[ -f "$OUT_DIR/results/dev_steer$ART_TOX_STEM.json" ]]; then
    echo
    echo "The same for activation steering on the same dev prompts (bench/results.sh's dev_steer; alpha = strength s):"
    echo
    "$PYTHON" bench/seeds.py residual "$OUT_DIR/results/dev_steer.json"
  fi
} > "$SEEDS_DIR/seeds.md"
cp "$SEEDS_DIR/seeds.md" docs/SEEDS.md
cat docs/SEEDS.md
