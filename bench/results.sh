#!/usr/bin/env bash
# The results study (docs/RESULTS.md): the default recipe (the pair tuned through the fusion) against the paper's
# recipe, the default before tuning (the LM pair), and the baselines (word-ban, activation steering), all in one
# harness. Every alpha is chosen on the DEV prompts (160 build-split prompts no step-1 file uses; the default pair also
# tunes on their texts, so its alpha is chosen out of fold, below); every reported row is on the HELD-OUT prompts
# (rtp:eval, 303).
#
#   ./run_all.sh && bench/results.sh      # needs the main run's teachers, tuned pair and matrix under $OUT_DIR
#
# Reads  $OUT_DIR/{teacher,anti_teacher} (step 1's LM pair), $OUT_DIR/alignment (the tuned pair and its A),
#        data/steering_texts.jsonl, the embedded rtp:dev / rtp:eval splits.
# Writes $RES_DIR/* (every artifact, generation, score and sidecar) and docs/RESULTS.md + docs/results_tradeoff.png.
# Reruns skip what exists. JOBS jobs run side by side, one CPU thread each.
#
# Rows (each at its own alpha, chosen on dev by the rule: the lowest mean BiLSTM toxicity whose token-weighted PPL
# is <= PPL_CAP x that of alpha 0):
#   default  the tuned pair through its jointly trained A, each teacher's mean state over the text so far, the offset
#            read against its center's threshold (promote weight PROMOTE), the target's top-5 (./run_all.sh's recipe)
#   lm       the default before tuning: the LM pair (each teacher on its own class) through the logits A refined by KL,
#            the teachers' last-token states (as it was then)
#   paper    the paper: one teacher with every weight trained, the contrastive A, LayerNorm fusion
#   wordban, steer (baselines; steering over its strength sweep); topk (the truncation control, sampled protocol)
#   sampled_wide  the default when sampling with the offset on the target's top-k chosen on dev (dev_sampled_*), and
#            its truncation control (sampled_topk_wide)
#   sampled2_*  the sampled protocol with each method's strength chosen on sampled dev text (dev_sampled_alpha,
#            dev_sampled_s), held out on rtp:eval's prompts after the first N_SAMPLED; sampled2s2_* the same runs with
#            a second sampling seed (SEED2)
#   prev     the previous default: the same pair with its offset read as it is (generate.py --promote_weight PREV_W,
#            1): its greedy dev and held-out sweeps (2c), its sampled dev screen and held-out runs (dev_sampled_prev,
#            sampled2_prev, sampled2s2_prev: 3d)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RES_DIR=${RES_DIR:-$OUT_DIR/results}
N_EVAL=${N_EVAL:-0}          # held-out prompts (0 = all 303 of rtp:eval)
N_DEV=${N_DEV:-0}            # dev prompts for choosing alpha (0 = all 160 of rtp:dev)
N_SAMPLED=${N_SAMPLED:-150}  # held-out prompts for the sampled protocol
SAMPLES=${SAMPLES:-5}
PPL_CAP=${PPL_CAP:-1.25}
JOBS=${JOBS:-2}
SWEEP=${SWEEP:-"0 1 2 4 6 8 10 12 15 18 22 26 30"}  # the default recipe's sweep (run_all.sh's and more: low alphas for word-ban's PPL)
PROMOTE=${PROMOTE:-0.25}     # the default's promote weight (generate.py's unset --promote_weight with a tuned pair) ...
DEMOTE_Z=${DEMOTE_Z:--0.5}   # ... and its threshold
PREV_W=${PREV_W:-1}          # 2c / 3d: the comparison row's promote weight (1: the previous default)
PREV_SWEEP=${PREV_SWEEP:-"0 1 2 3 4 5 6 7 8"}
LM_SWEEP="0 0.1 0.2 0.3 0.4 0.5 0.6"      # the LM pair's (the previous default's) sweep
PAPER_SWEEP="0 0.1 0.2 0.3 0.5"
STEER=${STEER:-"0.1 0.2 0.3 0.4 0.5"}  # 0.5: the draft-gated steering control chooses it on dev
SAMPLED_ALPHAS=${SAMPLED_ALPHAS:-"12 18 26 36"}  # the default's alphas screened for sampling (3b)
mkdir -p "$RES_DIR"
T="$DEFAULT_TEACHER_DIR"; TA="$DEFAULT_ANTI_TEACHER_DIR"; A="$DEFAULT_MATRIX"; TGT="$DEFAULT_TARGET"
for need in "$T/config.json" "$TA/config.json" "$A" "$DEFAULT_ALIGN_DIR/$ART_TUNED_EXPERT/config.json"; do
  [[ -f "$need" ]] || { echo "error: run ./run_all.sh first (needs $need)" >&2; exit 2; }
done
TEXTS="$DEFAULT_TEACHER_DATA,$DEFAULT_ANTI_TEACHER_DATA"

gen() {  # gen NAME DATA N [generate.py flags...]: generate (resumable), both toxicity scorers, both PPL judges (dev: one)
  local name=$1 data=$2 n=$3; shift 3
  local out="$RES_DIR/$name.json"
  if [[ ! -f "$out" ]]; then
    "$PYTHON" generate.py --target_model "$TGT" --data_path "$data" --output_path "$out" --max_prompts "$n" \
      --device cpu "$@" > "$RES_DIR/$name.log" 2>&1
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

# 0. the other rows' artifacts: the paper's teacher (every weight trained) and its contrastive A; the LM pair's A
#    (closed form refined by KL, no tuning: the default before this change); the steering vector
PT="$RES_DIR/paper_teacher"
if [[ ! -f "$PT/$ART_TEACHER_SIDECAR" ]]; then
  TEACHERS=expert FREEZE_EMBEDDINGS=0 PRETRAIN_OUTPUT_DIR="$PT" RESUME=1 ./run_pretrain.sh > "$RES_DIR/paper_teacher.log" 2>&1
fi
if [[ ! -f "$RES_DIR/align_contrastive/$ART_MATRIX_FILE" ]]; then
  "$PYTHON" align.py --model1_name "$PT" --model2_name "$TGT" --output_dir "$RES_DIR/align_contrastive" \
    --objective contrastive --text_path "$TEXTS" --tune_pair false --progress false > "$RES_DIR/align_contrastive.log" 2>&1
fi
if [[ ! -f "$RES_DIR/align_lm/$ART_MATRIX_FILE" ]]; then
  "$PYTHON" align.py --model1_name "$T" --also_teacher "$TA" --model2_name "$TGT" --output_dir "$RES_DIR/align_lm" \
    --objective logits --refine_steps 150 --text_path "$TEXTS" --tune_pair false --progress false > "$RES_DIR/align_lm.log" 2>&1
fi
[[ -f "$RES_DIR/steer_vector.pt" ]] || "$PYTHON" scripts/build_steer_vector.py --target_model "$TGT" --output "$RES_DIR/steer_vector.pt" > "$RES_DIR/steer_vector.log" 2>&1
diff_at() {  # diff_at A K [W]: the default's flags with any A, top-K and promote weight W (the default's unless given)
  echo "--method diff --matrix_A $1 --top_k $2 --pool mean --context_weight 0.25 --promote_weight ${3:-$PROMOTE} --demote_z $DEMOTE_Z"
}
read -ra DEFAULT <<< "$(diff_at "$A" 5)"  # the tuned pair comes from the matrix's sidecar
LM=(--method diff --teacher_model "$T" --anti_teacher_model "$TA" --matrix_A "$RES_DIR/align_lm/$ART_MATRIX_FILE" --top_k 5 --pool last --context_weight 1)
PAPER=(--method fusion --norm layernorm --teacher_model "$PT" --matrix_A "$RES_DIR/align_contrastive/$ART_MATRIX_FILE")
STEERV=(--method steer --steer_vector "$RES_DIR/steer_vector.pt")
fold_sweeps() {  # fold_sweeps NAME K W ALPHAS...: queue lines for the out-of-fold dev sweeps (the offset on the top-K,
  local name=$1 k=$2 w=$3 f o; shift 3  # promote weight W): the pair tuned with dev_a's texts sweeps rtp:dev_b into
  for f in a b; do                      # NAME_b, and the other way
    o=a; [[ $f == a ]] && o=b
    echo "[[ -f $RES_DIR/${name}_$o.json ]] || $PYTHON generate.py --target_model $TGT --data_path rtp:dev_$o --output_path $RES_DIR/${name}_$o.json --device cpu --alphas $* $(diff_at "$RES_DIR/align_fold_$f/$ART_MATRIX_FILE" "$k" "$w") > $RES_DIR/${name}_$o.log 2>&1"
  done
}
merge_folds() {  # merge_folds NAME: NAME.json from NAME_a.json and NAME_b.json (bench/crossfit.py merge)
  [[ -f "$RES_DIR/$1.json" ]] || "$PYTHON" bench/crossfit.py merge "$RES_DIR/$1.json" "$RES_DIR/$1_a.json" "$RES_DIR/$1_b.json"
}

# 1. choose each row's alpha on the dev prompts. The default pair trains on the dev prompts' texts too (step 2's
#    TUNE_TEXT_PATH): then its dev sweep is out of fold. Two more pairs, each tuned as step 2 tuned the default but with
#    one fold's dev texts only (bench/crossfit.py fold_settings), each sweep the other fold, and bench/crossfit.py merge
#    makes dev_default.json of the two: every dev prompt decoded by a pair that never saw it.
N_TUNED_DEV=$("$PYTHON" bench/crossfit.py trained_on_dev "$DEFAULT_ALIGN_DIR")
FOLD_DIRS=""
if (( N_TUNED_DEV > 0 )); then
  (( N_DEV == 0 )) || { echo "error: N_DEV=$N_DEV: the default pair was tuned on $N_TUNED_DEV dev prompts, so its sweep is cross-fitted over all of rtp:dev (N_DEV=0)" >&2; exit 2; }
  echo "cross-fit: the default pair was tuned on $N_TUNED_DEV dev prompts; its alpha is chosen out of fold"
  for f in a b; do
    d="$RES_DIR/align_fold_$f"
    if [[ ! -f "$d/$ART_MATRIX_FILE" ]]; then
      { read -r fpath; read -r frows; } < <("$PYTHON" bench/crossfit.py fold_settings "$DEFAULT_ALIGN_DIR" "dev_$f")
      TUNE_TEXT_PATH="$fpath" TUNE_TEXT_ROWS="$frows" ALIGN_OUTPUT_DIR="$d" ./run_alignment.sh --progress false > "$d.log" 2>&1
    fi
    FOLD_DIRS+="${FOLD_DIRS:+,}$d"
  done
  fold_sweeps dev_default 5 "$PROMOTE" $SWEEP > "$RES_DIR/.queue_folds"  # the default's flags (DEFAULT) with each fold's A
  pool < "$RES_DIR/.queue_folds"
  merge_folds dev_default
fi
echo "dev sweeps (rtp:dev)"
{ echo "gen dev_default rtp:dev $N_DEV --alphas $SWEEP ${DEFAULT[*]}"
  echo "gen dev_lm rtp:dev $N_DEV --alphas $LM_SWEEP ${LM[*]}"
  echo "gen dev_paper rtp:dev $N_DEV --alphas $PAPER_SWEEP ${PAPER[*]}"
  echo "gen dev_steer rtp:dev $N_DEV --alphas 0 $STEER ${STEERV[*]}"
} > "$RES_DIR/.queue_dev"
pool < "$RES_DIR/.queue_dev"
declare -A ALPHA
for n in default lm paper steer; do
  ALPHA[$n]=$("$PYTHON" bench/results_report.py --choose_alpha "$RES_DIR/dev_$n.json" --cap "$PPL_CAP")
  echo "  $n: alpha ${ALPHA[$n]} (chosen on dev)"
done
"$PYTHON" - "$RES_DIR/chosen.json" "$PPL_CAP" <<PY
import json, sys
from detox_pa.io import atomic_write_json
chosen = {$(for n in default lm paper steer; do printf '"%s": %s, ' "$n" "${ALPHA[$n]}"; done)}
atomic_write_json(sys.argv[1], {"alpha": chosen, "ppl_cap": float(sys.argv[2]), "rule": "lowest mean BiLSTM toxicity "
                  "on the dev prompts whose token-weighted PPL is <= ppl_cap x alpha 0's"})
PY

# 2. held-out: the default over its whole sweep (alpha 0 = the target alone), every other row at its chosen alpha,
#    the baselines (steering over its sweep, for the equal-PPL comparisons)
echo "held-out (rtp:eval)"
{ echo "gen default rtp:eval $N_EVAL --alphas $SWEEP ${DEFAULT[*]}"
  echo "gen steer rtp:eval $N_EVAL --alphas $STEER ${STEERV[*]}"
  echo "gen lm rtp:eval $N_EVAL --alphas ${ALPHA[lm]} ${LM[*]}"
  echo "gen paper rtp:eval $N_EVAL --alphas ${ALPHA[paper]} ${PAPER[*]}"
  echo "gen wordban rtp:eval $N_EVAL --alphas 1 --method wordban"
} > "$RES_DIR/.queue_eval"
pool < "$RES_DIR/.queue_eval"

# 2b. past the cap, on dev (read, never chosen from): the default's sweep beyond its chosen alpha with the offset on the
#     target's top-5 / 10 / 20, out of fold as in 1, against steering's dev sweep: can a larger strength or eligible set
#     reach steering's strongest point (s 0.5), where the held-out comparison of goal 2 misses?
HIGH_SWEEP=${HIGH_SWEEP:-"0 12 18 26 36 50 70"}
HIGH_KS="5 10 20"
if [[ -n "$FOLD_DIRS" ]]; then
  for k in $HIGH_KS; do fold_sweeps "dev_high_k$k" "$k" "$PROMOTE" $HIGH_SWEEP; done > "$RES_DIR/.queue_high"
  pool < "$RES_DIR/.queue_high"
  for k in $HIGH_KS; do merge_folds "dev_high_k$k"; done
  for k in $HIGH_KS; do echo "gen dev_high_k$k rtp:dev 0"; done > "$RES_DIR/.queue_high_score"  # scores the merged file
  pool < "$RES_DIR/.queue_high_score"
fi

# 2c. the previous default: the same pair with its offset read as it is (generate.py --promote_weight PREV_W, 1): its
#     dev sweep out of fold as in 1, its alpha chosen there by the same rule (the report does it), its held-out sweep
#     read against the default and against the baselines at equal PPL as goal 2 reads the default's
read -ra PREV <<< "$(diff_at "$A" 5 "$PREV_W")"
if [[ -n "$FOLD_DIRS" ]]; then
  fold_sweeps dev_prev 5 "$PREV_W" $PREV_SWEEP > "$RES_DIR/.queue_prev"
  pool < "$RES_DIR/.queue_prev"
  merge_folds dev_prev
  { echo "gen dev_prev rtp:dev 0"  # scores the merged file
    echo "gen prev rtp:eval $N_EVAL --alphas $PREV_SWEEP ${PREV[*]}"
  } > "$RES_DIR/.queue_prev_eval"
  pool < "$RES_DIR/.queue_prev_eval"
fi

# 3. the sampled protocol (SAMPLES samples, top-p 0.9, 20 tokens: EMT and toxicity probability), with the truncation
#    control: the target alone under exactly the default's restriction (its top-5, then top-p)
S=(--do_sample --num_samples "$SAMPLES" --top_p 0.9 --max_new_tokens 20 --batch_size 32)
# 3a. the eligible set the offset acts on when sampling (greedy only picks among the target's top few, so the default's
#     top-5 costs nothing there; sampling draws from the whole nucleus), screened on dev out of fold: the pair tuned
#     with dev_a's texts (the default's own pair when it never saw dev prompts) on rtp:dev_b, at the default's alpha,
#     top-5/10/20 and every token (also at a lower alpha, K0_LOW), each top-k's truncation control, and steering at its alpha
FA="$A"; [[ -n "$FOLD_DIRS" ]] && FA="$RES_DIR/align_fold_a/$ART_MATRIX_FILE"
K0_LOW=${K0_LOW:-8}  # every token eligible: also a lower alpha
{ echo "gen dev_sampled_k5 rtp:dev_b 0 --alphas 0 ${ALPHA[default]} $(diff_at "$FA" 5) ${S[*]}"
  echo "gen dev_sampled_k10 rtp:dev_b 0 --alphas ${ALPHA[default]} $(diff_at "$FA" 10) ${S[*]}"
  echo "gen dev_sampled_k20 rtp:dev_b 0 --alphas ${ALPHA[default]} $(diff_at "$FA" 20) ${S[*]}"
  echo "gen dev_sampled_k0 rtp:dev_b 0 --alphas $K0_LOW ${ALPHA[default]} $(diff_at "$FA" 0) ${S[*]}"
  for k in 5 10 20; do echo "gen dev_sampled_topk$k rtp:dev_b 0 --alphas 1 --method topk --top_k $k ${S[*]}"; done
  echo "gen dev_sampled_steer rtp:dev_b 0 --alphas ${ALPHA[steer]} ${STEERV[*]} ${S[*]}"
} > "$RES_DIR/.queue_sampled_dev"
pool < "$RES_DIR/.queue_sampled_dev"
WIDE_K=$("$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --choose_sampled_k "${ALPHA[default]}" --cap "$PPL_CAP")
echo "  sampling: the offset on the target's top-$WIDE_K (0 = every token; chosen on dev_b)"
{ echo "gen sampled rtp:eval $N_SAMPLED --alphas 0 ${ALPHA[default]} ${DEFAULT[*]} ${S[*]}"
  echo "gen sampled_topk rtp:eval $N_SAMPLED --alphas 1 --method topk --top_k 5 ${S[*]}"
  echo "gen sampled_steer rtp:eval $N_SAMPLED --alphas ${ALPHA[steer]} ${STEERV[*]} ${S[*]}"
  echo "gen sampled_wordban rtp:eval $N_SAMPLED --alphas 1 --method wordban ${S[*]}"
  if [[ "$WIDE_K" != 5 ]]; then
    echo "gen sampled_wide rtp:eval $N_SAMPLED --alphas ${ALPHA[default]} $(diff_at "$A" "$WIDE_K") ${S[*]}"
    [[ "$WIDE_K" == 0 ]] || echo "gen sampled_topk_wide rtp:eval $N_SAMPLED --alphas 1 --method topk --top_k $WIDE_K ${S[*]}"
  fi
} > "$RES_DIR/.queue_sampled"
pool < "$RES_DIR/.queue_sampled"
# 3b. each method's strength for sampling, chosen on sampled dev text by a rule stated before its held-out run: the
#     lowest dev EMT (rtp:dev_b, sampled as above) whose PPL is <= PPL_CAP x the same decoding without the method (the
#     default: its truncation control at the chosen top-k; steering: the target alone). Held out on the prompts of
#     rtp:eval after the first N_SAMPLED (which no sampled run above decodes): the default at its alpha with the target
#     alone, its truncation control, steering at its s, word-ban.
{ echo "gen dev_sampled_alpha rtp:dev_b 0 --alphas $SAMPLED_ALPHAS $(diff_at "$FA" "$WIDE_K") ${S[*]}"
  echo "gen dev_sampled_s rtp:dev_b 0 --alphas $STEER ${STEERV[*]} ${S[*]}"
} > "$RES_DIR/.queue_sampled_strength"
pool < "$RES_DIR/.queue_sampled_strength"
SA=$("$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --choose_sampled_strength default --cap "$PPL_CAP")
SS=$("$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --choose_sampled_strength steer --cap "$PPL_CAP")
echo "  sampling, strengths chosen on sampled dev text: the default's alpha $SA, steering's s $SS"
H2=(--skip_prompts "$N_SAMPLED" --alphas)
sampled2_queue() {  # sampled2_queue NAME [generate.py flags]: the held-out runs below, named NAME, NAME_topk, ...
  local name=$1; shift
  echo "gen $name rtp:eval 0 ${H2[*]} 0 $SA $(diff_at "$A" "$WIDE_K") ${S[*]} $*"
  [[ "$WIDE_K" == 0 ]] || echo "gen ${name}_topk rtp:eval 0 ${H2[*]} 1 --method topk --top_k $WIDE_K ${S[*]} $*"
  echo "gen ${name}_steer rtp:eval 0 ${H2[*]} $SS ${STEERV[*]} ${S[*]} $*"
  echo "gen ${name}_wordban rtp:eval 0 ${H2[*]} 1 --method wordban ${S[*]} $*"
}
sampled2_queue sampled2 > "$RES_DIR/.queue_sampled2"
pool < "$RES_DIR/.queue_sampled2"
# 3c. the same held-out runs with a second sampling seed (generate.py --seed; 3b's is the default 2025): does 3b's
#     verdict hold on other samples of the same prompts? Nothing is chosen here: the strengths are 3b's.
SEED2=${SEED2:-2026}
sampled2_queue sampled2s2 --seed "$SEED2" > "$RES_DIR/.queue_sampled2s2"
pool < "$RES_DIR/.queue_sampled2s2"
# 3d. the previous default (2c) in the sampled protocol as it was deployed: the offset on the eligible set 3a chose for
#     it (PREV_WIDE_K: the target's top-20 at its alpha 7, when it was the default), its alpha chosen on sampled dev
#     text by 3b's rule (the pair tuned with dev_a's texts on rtp:dev_b, EMT within PPL_CAP x its truncation control),
#     then held out on 3b's prompts and paired with 3b's rows there (and with 3c's second sampling seed)
PREV_WIDE_K=${PREV_WIDE_K:-20}
PREV_SAMPLED_ALPHAS=${PREV_SAMPLED_ALPHAS:-"5 7 10 14"}
{ [[ "$PREV_WIDE_K" == 0 ]] || echo "gen dev_sampled_topk$PREV_WIDE_K rtp:dev_b 0 --alphas 1 --method topk --top_k $PREV_WIDE_K ${S[*]}"
  echo "gen dev_sampled_prev rtp:dev_b 0 --alphas $PREV_SAMPLED_ALPHAS $(diff_at "$FA" "$PREV_WIDE_K" "$PREV_W") ${S[*]}"
} > "$RES_DIR/.queue_prev_sampled_dev"  # (its truncation control: 3a's when it screened that top-k)
pool < "$RES_DIR/.queue_prev_sampled_dev"
SP=$("$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --choose_sampled_strength prev --cap "$PPL_CAP")
echo "  sampling, the previous default's alpha chosen on sampled dev text: $SP"
{ echo "gen sampled2_prev rtp:eval 0 ${H2[*]} $SP $(diff_at "$A" "$PREV_WIDE_K" "$PREV_W") ${S[*]}"
  echo "gen sampled2s2_prev rtp:eval 0 ${H2[*]} $SP $(diff_at "$A" "$PREV_WIDE_K" "$PREV_W") ${S[*]} --seed $SEED2"
} > "$RES_DIR/.queue_prev_sampled"
pool < "$RES_DIR/.queue_prev_sampled"
rm -f "$RES_DIR"/.queue_*

# 4. the mechanism (direction on teacher-forced dev states) and the report
[[ -f "$RES_DIR/direction.json" ]] || "$PYTHON" bench/direction.py --res_dir "$RES_DIR" --out_dir "$OUT_DIR" \
  ${FOLD_DIRS:+--folds "$FOLD_DIRS"} --promote_weight "$PROMOTE" --demote_z "$DEMOTE_Z" --compare_promote_weight "$PREV_W" \
  > "$RES_DIR/direction.log" 2>&1
# what the constant offsets (the default pair's center, steering's vector) promote and demote over the vocabulary
[[ -f "$RES_DIR/offset_vocab.json" ]] || "$PYTHON" bench/offset_vocab.py --steer "$RES_DIR/steer_vector.pt" \
  --matrix "the default pair's center=$DEFAULT_ALIGN_DIR/$ART_MATRIX_FILE" --json "$RES_DIR/offset_vocab.json" > "$RES_DIR/offset_vocab.log" 2>&1
# REPRO_DIR=<a second run's RES_DIR>: the report compares every score with it and says so
"$PYTHON" bench/results_report.py --res_dir "$RES_DIR" --out docs/RESULTS.md --cap "$PPL_CAP" \
  --align_dir "$DEFAULT_ALIGN_DIR" ${REPRO_DIR:+--repro_dir "$REPRO_DIR"}
