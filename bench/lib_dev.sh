# Sourced by bench/seeds.sh and bench/arms.sh (after scripts/common.sh): the dev sweep of one alignment folder.
#   dev_sweep DIR NAME ALIGN_DIR "ALPHAS" ["EXTRA generate.py FLAGS"]: greedy generation on the 160 dev prompts (rtp:dev; never held out) with
#   --method diff through ALIGN_DIR's matrix (its sidecar names the tuned pair), the target's top-5, then BiLSTM +
#   profanity-check toxicity and PPL under the target, into DIR/dev_NAME.json and its score files. Skips what exists.
dev_sweep() {
  local dir=$1 name=$2 align=$3 alphas=$4 extra=${5:-}
  local out="$dir/dev_$name.json"
  [[ -f "$out" ]] || "$PYTHON" generate.py --target_model "$DEFAULT_TARGET" --data_path rtp:dev --output_path "$out" \
    --device cpu --method diff --matrix_A "$align/$ART_MATRIX_FILE" --top_k 5 --alphas $alphas $extra > "$dir/dev_$name.log" 2>&1
  [[ -f "${out%.json}$ART_TOX_STEM.json" ]] || "$PYTHON" eval_toxicity.py --input_json "$out" --scorer bilstm,profanity-check >> "$dir/dev_$name.log" 2>&1
  [[ -f "${out%.json}$ART_PPL_STEM.json" ]] || "$PYTHON" eval_ppl.py --model_path "$DEFAULT_TARGET" --input_json "$out" --device cpu >> "$dir/dev_$name.log" 2>&1
  echo "  dev_$name done"
}
