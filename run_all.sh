#!/usr/bin/env bash
# The main job: the whole pipeline on the embedded default, offline on CPU, ending with a per-alpha table.
#
#   ./run_all.sh                # full run (its measured time on 2 CPU cores: README.md, "Costs and timings")
#   RECIPE=paper ./run_all.sh   # the paper's exact recipe instead (one teacher, contrastive A, LayerNorm fusion)
#   SMOKE=1 ./run_all.sh        # a few prompts, two alphas, a few training steps
#   PROTOCOL=dexperts ./run_all.sh  # the field's protocol (25 samples per prompt, top-p 0.9, 20 new tokens; EMT and
#                               # toxicity probability) instead of the paper's (greedy, 10 tokens): the same teachers and
#                               # A, its generations and scores under OUT_DIR/dexperts/ (see the README for its cost)
#
# The default recipe (RECIPE=diff): an expert teacher on the clean completions and an anti-expert on the
# toxic ones (3 layers of SmolLM2, frozen output layer), A fitted so the target's output layer reads the
# teachers' states as the teachers do (OBJECTIVE=logits), both teachers and A then tuned through the fusion, and
# the target's logits moved by alpha * W_target((h_expert - h_anti) A) over its top-5 tokens (the difference shrunk
# toward its center, and what the pair would promote scaled to a quarter: README). Alpha 0 is the target alone.
# On a CPU with 2+ cores and no GPU, generation runs as 2 single-thread ranks (NPROC=2, the same output
# as one process, about 25% faster); NPROC=1 turns that off.
#
# Sets up first (./setup.sh: venv, requirements, embedded models), then runs
#   1 run_pretrain.sh -> 2 run_alignment.sh -> 3 run_generation.sh -> 4a run_tox_score.sh -> 4b run_ppl_score.sh
# and report.py. Everything is written under OUT_DIR (default outputs/, or outputs/smoke with SMOKE=1).
# A step whose output already exists is skipped (FORCE=1 redoes everything); generation resumes
# from its journal if it was interrupted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
case "${1:-}" in -h|--help) source scripts/common.sh ;; esac  # prints the help and exits 0
SMOKE=${SMOKE:-0}        # 1 = a few prompts, two alphas, a few training steps, under OUT_DIR/smoke
FORCE=${FORCE:-0}        # 1 = redo every step (else a step whose output exists is skipped)
RECIPE=${RECIPE:-diff}   # diff (the default recipe) | paper (the paper's exact recipe)
PROTOCOL=${PROTOCOL:-paper}  # step 3's decoding: paper (greedy, 10 new tokens) | dexperts (25 samples, top-p 0.9, 20 new tokens)
PPL_CAP=${PPL_CAP:-1.25}  # the alpha rule's PPL budget, x alpha 0's token-weighted PPL (report.py --ppl_cap)
source scripts/protocols.sh
check_protocol  # an unknown PROTOCOL: one line, exit 2, before the set-up
if ! [[ "$PPL_CAP" =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ "$PPL_CAP" =~ ^0+([.]0+)?$ ]]; then
  echo "error: run_all.sh: PPL_CAP must be a positive number (a multiple of alpha 0's PPL, e.g. 1.25), got '$PPL_CAP'" >&2; exit 2
fi
export PROTOCOL
if [[ "${METHOD:-}" == paper ]]; then
  echo "error: run_all.sh: the paper's recipe is RECIPE=paper (METHOD is run_generation.sh's decoding method)" >&2; exit 2
fi
case "$RECIPE" in
  diff) SUB="" ; export METHOD=${METHOD:-diff} ;;
  paper) SUB="/paper"  # one teacher with every weight trained, the contrastive A, LayerNorm fusion
         export TEACHERS=expert FREEZE_EMBEDDINGS=${FREEZE_EMBEDDINGS:-0} OBJECTIVE=contrastive METHOD=fusion NORM=layernorm ;;
  *) echo "error: run_all.sh: RECIPE must be diff (the default) or paper, got '$RECIPE'" >&2; exit 2 ;;
esac
if [[ "$SMOKE" == 1 ]]; then export OUT_DIR=${OUT_DIR:-outputs/smoke$SUB}; else export OUT_DIR=${OUT_DIR:-outputs$SUB}; fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

./setup.sh
source scripts/common.sh
mkdir -p "$OUT_DIR"
# The teachers and A do not depend on the protocol; the generations and their scores do (PROTOCOL=paper: OUT_DIR itself)
GENERATIONS=$DEFAULT_GENERATIONS
[[ "$PROTOCOL" == paper ]] || GENERATIONS="$OUT_DIR/$PROTOCOL/$ART_GENERATIONS"
t_start=$SECONDS
step() { echo; echo "=== [$(( SECONDS - t_start ))s] $*"; }

if [[ "$SMOKE" == 1 ]]; then
  # tiny budget: a few training steps, one alignment epoch, 8 prompts, two alphas
  export MAX_STEPS=${MAX_STEPS:-6} EPOCHS=${EPOCHS:-1} MAX_PROMPTS=${MAX_PROMPTS:-8} TEXT_ROWS=${TEXT_ROWS:-40}
  export TUNE_TEXT_ROWS=${TUNE_TEXT_ROWS:-48} TUNE_EPOCHS=${TUNE_EPOCHS:-1}
  if [[ "$RECIPE" == paper ]]; then export ALPHAS=${ALPHAS:-"0 0.4"}; else export ALPHAS=${ALPHAS:-"0 18"}; fi
fi

if [[ "$FORCE" == 1 ]]; then
  rm -rf "$DEFAULT_TEACHER_DIR" "$DEFAULT_ANTI_TEACHER_DIR" "$DEFAULT_ALIGN_DIR" "${DEFAULT_GENERATIONS%.json}"*
  for p in $PROTOCOL_NAMES; do [[ "$p" == paper ]] || rm -rf "${OUT_DIR:?}/$p"; done  # made with the teachers redone here
fi

NEED=()  # the teachers still to train (a killed run resumes from its newest checkpoint)
[[ -f "$DEFAULT_TEACHER_DIR/$ART_TEACHER_SIDECAR" ]] || NEED+=(expert)
if [[ "$RECIPE" == diff ]]; then
  step "1/5 pretrain the teachers -> $DEFAULT_TEACHER_DIR (expert), $DEFAULT_ANTI_TEACHER_DIR (anti-expert)"
  [[ -f "$DEFAULT_ANTI_TEACHER_DIR/$ART_TEACHER_SIDECAR" ]] || NEED+=(anti)
else
  step "1/5 pretrain the teacher -> $DEFAULT_TEACHER_DIR"
fi
case "${#NEED[@]}" in
  0) echo "exists; skipped (FORCE=1 to redo)" ;;
  1) TEACHERS=${NEED[0]} RESUME=1 ./run_pretrain.sh ;;
  *) TEACHERS=both RESUME=1 ./run_pretrain.sh ;;
esac

step "2/5 train the alignment matrix -> $DEFAULT_MATRIX"
if [[ -f "$DEFAULT_MATRIX" ]]; then echo "exists; skipped (FORCE=1 to redo)"; else ./run_alignment.sh; fi

step "3/5 generate (--method $METHOD, PROTOCOL=$PROTOCOL) -> $GENERATIONS"
if [[ -f "$GENERATIONS" ]]; then echo "exists; skipped (FORCE=1 to redo)"
elif [[ -z "${NPROC:-}" && "$(num_gpus)" == 0 && "$(nproc 2>/dev/null || echo 1)" -ge 2 ]]; then
  NPROC=2 OMP_NUM_THREADS=1 OUTPUT_PATH=$GENERATIONS ./run_generation.sh
else OUTPUT_PATH=$GENERATIONS ./run_generation.sh; fi

step "4a/5 toxicity"
./run_tox_score.sh auto "$GENERATIONS"

step "4b/5 perplexity under the unsteered target"
./run_ppl_score.sh "$DEFAULT_TARGET" "$GENERATIONS"

step "5/5 report"
"$PYTHON" "$REPO_DIR/report.py" "$GENERATIONS" --ppl_cap "$PPL_CAP"
echo
echo "done in $(( SECONDS - t_start ))s; artifacts under $OUT_DIR/"
