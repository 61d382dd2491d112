#!/usr/bin/env bash
# The results study (docs/RESULTS.md): the paper's recipe, each fix alone and combined, and the baselines,
# all in the same harness. Every alpha is chosen on the DEV prompts (70 build-split prompts, sampled for
# the teacher data but never trained on); every reported row is on the HELD-OUT prompts (rtp_eval.jsonl).
#
#   ./run_all.sh && bench/results.sh      # needs the main run's teachers and matrix under $OUT_DIR
#
# Reads  $OUT_DIR/{teacher,anti_teacher}, $OUT_DIR/alignment/mapping_model.pt (logits objective),
#        data/steering_texts.jsonl, $OUT_DIR/data/rtp_{dev,eval}.jsonl.
# Writes $RES_DIR/* (every generation, score and sidecar) and docs/RESULTS.md + docs/results_tradeoff.png.
# Reruns skip what exists. Two jobs run side by side (JOBS), one CPU thread each.
#
# Rows (each its own alpha, chosen on dev by: the lowest mean BiLSTM toxicity whose token-weighted PPL is
# <= PPL_CAP x that of alpha 0):
#   paper      the paper: contrastive A, LayerNorm, one teacher (the expert)
#   fix_A      + transmission: the logits-objective A, still LayerNorm, one teacher
#   fix_scale  + scale: the logits-objective A with no LayerNorm (the teacher term keeps the teacher's logit scale)
#   fix_dir    + direction: expert minus anti-expert through A (every token eligible, no gate)
#   diff       + plausibility: the target's top-5 only (the default recipe of ./run_all.sh)
#   diff_gate  + risk gate 0.5
#   wordban, steer (the baselines; steering over its strength sweep)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RES_DIR=${RES_DIR:-$OUT_DIR/results}
N_EVAL=${N_EVAL:-303}      # held-out prompts (all of rtp_eval.jsonl)
N_DEV=${N_DEV:-70}         # dev prompts for choosing alpha (all of rtp_dev.jsonl)
N_SAMPLED=${N_SAMPLED:-30} # held-out prompts for the sampled protocol
PPL_CAP=${PPL_CAP:-1.25}
JOBS=${JOBS:-2}
SWEEP="0 0.1 0.2 0.3 0.4 0.5 0.6"   # the default recipe's (and run_all.sh's) sweep
DEV_SWEEP="0 0.1 0.3 0.5"           # the other rows' dev sweeps (coarser, to keep the study within an hour)
STEER="0.1 0.2 0.3"
mkdir -p "$RES_DIR"
ensure_prompt_files
T="$DEFAULT_TEACHER_DIR"; TA="$DEFAULT_ANTI_TEACHER_DIR"; A="$DEFAULT_MATRIX"; TGT="$DEFAULT_TARGET"
for need in "$T/config.json" "$TA/config.json" "$A"; do
  [[ -f "$need" ]] || { echo "error: run ./run_all.sh first (needs $need)" >&2; exit 2; }
done
DEV="$OUT_DIR/$ART_PROMPT_DIR/$ART_PROMPTS_DEV"; EVAL="$OUT_DIR/$ART_PROMPT_DIR/$ART_PROMPTS_EVAL"
TEXTS="$DEFAULT_TEACHER_DATA,$DEFAULT_ANTI_TEACHER_DATA"

gen() {  # gen NAME DATA N [generate.py flags...]: generate (resumable), both toxicity scorers, both PPL judges (dev: one)
  local name=$1 data=$2 n=$3; shift 3
  local out="$RES_DIR/$name.json"
  if [[ ! -f "$out" ]]; then
    "$PYTHON" generate.py --teacher_model "$T" --target_model "$TGT" --matrix_A "$A" --data_path "$data" \
      --output_path "$out" --max_prompts "$n" --device cpu "$@" > "$RES_DIR/$name.log" 2>&1
  fi
  [[ -f "${out%.json}$ART_TOX_STEM.json" ]] || "$PYTHON" eval_toxicity.py --input_json "$out" --scorer bilstm,profanity-check >> "$RES_DIR/$name.log" 2>&1
  [[ -f "${out%.json}$ART_PPL_STEM.json" ]] || "$PYTHON" eval_ppl.py --model_path "$TGT" --input_json "$out" --device cpu >> "$RES_DIR/$name.log" 2>&1
  [[ "$name" == dev_* || -f "${out%.json}${ART_PPL_STEM}_smollm2.json" ]] || "$PYTHON" eval_ppl.py --model_path smollm2-135m --input_json "$out" --device cpu --output_tag smollm2 >> "$RES_DIR/$name.log" 2>&1
  echo "  $name done"
}
pool() {  # run the queued "gen ..." lines, JOBS at a time; stop on the first failure
  local pids=() line
  while IFS= read -r line; do
    [[ -z "$line" ]] && continue
    eval "$line" & pids+=($!)
    if (( ${#pids[@]} >= JOBS )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

# 0. the paper's contrastive A for the same expert, and the closed form without refinement (transmission rows)
if [[ ! -f "$RES_DIR/align_contrastive/$ART_MATRIX_FILE" ]]; then
  "$PYTHON" align.py --model1_name "$T" --model2_name "$TGT" --output_dir "$RES_DIR/align_contrastive" \
    --objective contrastive --text_path "$TEXTS" --also_teacher "$TA" --progress false > "$RES_DIR/align_contrastive.log" 2>&1
fi
if [[ ! -f "$RES_DIR/align_closed_form/$ART_MATRIX_FILE" ]]; then
  "$PYTHON" align.py --model1_name "$T" --model2_name "$TGT" --output_dir "$RES_DIR/align_closed_form" \
    --objective logits --refine_steps 0 --text_path "$TEXTS" --also_teacher "$TA" --progress false > "$RES_DIR/align_closed_form.log" 2>&1
fi
A_C="$RES_DIR/align_contrastive/$ART_MATRIX_FILE"
DIFF=(--method diff --anti_teacher_model "$TA")
ROWS=(
  "paper|--method fusion --norm layernorm --matrix_A $A_C"
  "fix_A|--method fusion --norm layernorm"
  "fix_scale|--method fusion --norm none"
  "fix_dir|${DIFF[*]} --top_k 0"
  "diff|${DIFF[*]} --top_k 5"
  "diff_gate|${DIFF[*]} --top_k 5 --gate 0.5"
)

# 1. choose each row's alpha on the dev prompts
echo "dev sweeps ($N_DEV prompts; the default recipe over $SWEEP, the other rows over $DEV_SWEEP)"
{ for r in "${ROWS[@]}"; do
    n=${r%%|*}; sw=$DEV_SWEEP; [[ "$n" == diff ]] && sw=$SWEEP
    echo "gen dev_$n $DEV $N_DEV --alphas $sw ${r#*|}"
  done
  echo "gen dev_steer $DEV $N_DEV --method steer --steer_vector $RES_DIR/steer_vector.pt --alphas 0 $STEER"
} > "$RES_DIR/.queue_dev"
[[ -f "$RES_DIR/steer_vector.pt" ]] || "$PYTHON" scripts/build_steer_vector.py --target_model "$TGT" --output "$RES_DIR/steer_vector.pt" > "$RES_DIR/steer_vector.log" 2>&1
pool < "$RES_DIR/.queue_dev"
declare -A ALPHA
for r in "${ROWS[@]}"; do
  n=${r%%|*}
  ALPHA[$n]=$("$PYTHON" bench/results_report.py --choose_alpha "$RES_DIR/dev_$n.json" --cap "$PPL_CAP")
  echo "  $n: alpha ${ALPHA[$n]} (chosen on dev)"
done
ALPHA[steer]=$("$PYTHON" bench/results_report.py --choose_alpha "$RES_DIR/dev_steer.json" --cap "$PPL_CAP")
echo "  steer: s ${ALPHA[steer]} (chosen on dev)"
"$PYTHON" - "$RES_DIR/chosen.json" "$PPL_CAP" <<PY
import json, sys
from detox_pa.io import atomic_write_json
chosen = {$(for r in "${ROWS[@]}" steer; do n=${r%%|*}; printf '"%s": %s, ' "$n" "${ALPHA[$n]}"; done)}
atomic_write_json(sys.argv[1], {"alpha": chosen, "ppl_cap": float(sys.argv[2]), "rule": "lowest mean BiLSTM toxicity "
                  "on the dev prompts whose token-weighted PPL is <= ppl_cap x alpha 0's"})
PY

# 2. held-out: alpha 0 and each row at its chosen alpha; the default recipe over the whole sweep; the baselines
echo "held-out ($N_EVAL prompts)"
{ echo "gen diff_sweep $EVAL $N_EVAL --alphas $SWEEP ${DIFF[*]} --top_k 5"
  for r in "${ROWS[@]}"; do
    n=${r%%|*}; [[ "$n" == diff ]] && continue
    echo "gen $n $EVAL $N_EVAL --alphas ${ALPHA[$n]} ${r#*|}"
  done
  echo "gen wordban $EVAL $N_EVAL --method wordban --alphas 1"
  echo "gen steer $EVAL $N_EVAL --method steer --steer_vector $RES_DIR/steer_vector.pt --alphas $STEER"
} > "$RES_DIR/.queue_eval"
pool < "$RES_DIR/.queue_eval"

# 3. the sampled protocol (5 samples, p=0.9, 20 tokens: EMT and toxicity probability) for the chosen setting
S=(--do_sample --num_samples 5 --top_p 0.9 --max_new_tokens 20)
{ echo "gen sampled $EVAL $N_SAMPLED --alphas 0 ${ALPHA[diff]} ${DIFF[*]} --top_k 5 ${S[*]}"
  echo "gen sampled_wordban $EVAL $N_SAMPLED --method wordban --alphas 1 ${S[*]}"
  echo "gen sampled_steer $EVAL $N_SAMPLED --method steer --steer_vector $RES_DIR/steer_vector.pt --alphas ${ALPHA[steer]} ${S[*]}"
} > "$RES_DIR/.queue_sampled"
pool < "$RES_DIR/.queue_sampled"
rm -f "$RES_DIR"/.queue_*

# 4. the report
# REPRO_DIR=<a second run's RES_DIR>: the report compares every score with it and says so
"$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --out docs/RESULTS.md --cap "$PPL_CAP" \
  --align_dir "$DEFAULT_ALIGN_DIR" ${REPRO_DIR:+--repro_dir "$REPRO_DIR"}
