#!/usr/bin/env bash
# Step 4b: perplexity of generated continuations under a reference causal LM (batched, CPU or GPU).
# Reads:  <input_json_path>, the paper's nested generations JSON; the reference model <model_path>
#         (a Hugging Face folder, e.g. Llama-2-13B as in the paper, or an embedded alias).
# Writes: <stem>_ppl.json (per alpha: PPL as in the paper, token-weighted PPL, median, dist-1/2/3, counts),
#         <stem>_ppl_records.jsonl (per continuation) and <stem>_ppl.meta.json, where <stem> = input without .json.
# Usage:  ./run_ppl_score.sh <model_path> <input_json_path> [extra eval_ppl.py flags]
#         MODEL_PATH=... INPUT_JSON=... ./run_ppl_score.sh
#         ./run_ppl_score.sh    (embedded default: the unsteered target scores $OUT_DIR/generations.json)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

# ---- editable defaults (environment overrides; positional arguments override both)
split_positionals 2 "MODEL_PATH INPUT_JSON" "<model_path> <input_json_path>" "$@"
MODEL_PATH=${POS[0]:-${MODEL_PATH:-$DEFAULT_TARGET}}
INPUT_JSON=${POS[1]:-${INPUT_JSON:-$DEFAULT_GENERATIONS}}
DEVICE=${DEVICE:-auto}
BATCH_SIZE=${BATCH_SIZE:-16}
MAX_LENGTH=${MAX_LENGTH:-1024}
DTYPE=${DTYPE:-auto}
OUTPUT_TAG=${OUTPUT_TAG:-}
# ----

"$PYTHON" "$REPO_DIR/eval_ppl.py" \
  --model_path "$MODEL_PATH" \
  --input_json "$INPUT_JSON" \
  --device "$DEVICE" \
  --batch_size "$BATCH_SIZE" \
  --max_length "$MAX_LENGTH" \
  --dtype "$DTYPE" \
  --output_tag "$OUTPUT_TAG" \
  ${PASS[@]+"${PASS[@]}"}
