# Sourced by bench/seeds.sh and bench/arms.sh (after scripts/common.sh): the dev sweep of one alignment folder.
#   dev_sweep DIR NAME ALIGN_DIR "ALPHAS" ["EXTRA generate.py FLAGS"]: greedy generation on the 160 dev prompts (rtp:dev; never held out) with
#   --method diff through ALIGN_DIR's matrix (its sidecar names the tuned pair), the target's top-5, then BiLSTM +
#   profanity-check toxicity and PPL under the target, into DIR/dev_NAME.json and its score files. Skips what exists.
#   Screening on dev needs pairs that never saw the dev prompts: the default run's step 2 also tunes on the dev
#   prompts' texts (bench/results.sh cross-fits it), so the pairs these benches train take the training prompts' texts
#   only (the default recipe's first 1,269), and dev_sweep refuses a pair tuned on any dev prompt.
export TUNE_TEXT_PATH=${TUNE_TEXT_PATH-$DEFAULT_TUNE_TEXTS_TRAIN} TUNE_TEXT_ROWS=${TUNE_TEXT_ROWS:-1269}
screening_default() {  # screening_default DIR: the default recipe's seed-42 pair for screening (tuned without the dev
  # prompts): the default run's own when it was, else one trained into DIR
  local dir=$1
  if [[ $("$PYTHON" bench/crossfit.py trained_on_dev "$DEFAULT_ALIGN_DIR") == 0 ]]; then echo "$DEFAULT_ALIGN_DIR"; return; fi
  [[ -f "$dir/$ART_MATRIX_FILE" ]] || ALIGN_OUTPUT_DIR="$dir" ALIGN_SEED=42 ./run_alignment.sh --progress false > "$dir.log" 2>&1
  echo "$dir"
}
dev_sweep() {
  local dir=$1 name=$2 align=$3 alphas=$4 extra=${5:-}
  local out="$dir/dev_$name.json" n
  n=$("$PYTHON" bench/crossfit.py trained_on_dev "$align")
  (( n == 0 )) || { echo "error: $align: its pair was tuned on $n dev prompts, so a dev sweep of it is in-sample (train it with TUNE_TEXT_PATH=$DEFAULT_TUNE_TEXTS_TRAIN, or cross-fit it as bench/results.sh does)" >&2; return 2; }
  [[ -f "$out" ]] || "$PYTHON" generate.py --target_model "$DEFAULT_TARGET" --data_path rtp:dev --output_path "$out" \
    --device cpu --method diff --matrix_A "$align/$ART_MATRIX_FILE" --top_k 5 --alphas $alphas $extra > "$dir/dev_$name.log" 2>&1
  [[ -f "${out%.json}$ART_TOX_STEM.json" ]] || "$PYTHON" eval_toxicity.py --input_json "$out" --scorer bilstm,profanity-check >> "$dir/dev_$name.log" 2>&1
  [[ -f "${out%.json}$ART_PPL_STEM.json" ]] || "$PYTHON" eval_ppl.py --model_path "$DEFAULT_TARGET" --input_json "$out" --device cpu >> "$dir/dev_$name.log" 2>&1
  echo "  dev_$name done"
}
