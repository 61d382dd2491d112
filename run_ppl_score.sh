#!/usr/bin/env bash
# Step 4b: perplexity of generated continuations under a reference causal LM (batched, CPU or GPU).
# Reads:  <input_json_path>: the paper's nested generations JSON, a DExperts JSONL, a JSONL of {"prompt", "text"}
#         or a .txt file (texts scored from their start); the reference model <model_path>
#         (a Hugging Face folder, e.g. Llama-2-13B as in the paper, or an embedded alias).
# Writes: <stem>_ppl.json (per alpha: PPL as in the paper, token-weighted PPL, median, dist-1/2/3, counts),
#         <stem>_ppl_records.jsonl (per continuation) and <stem>_ppl.meta.json, where <stem> = input without .json.
# Usage:  ./run_ppl_score.sh <model_path> <input_json_path> [extra eval_ppl.py flags]
#         MODEL_PATH=... INPUT_JSON=... ./run_ppl_score.sh
#         ./run_ppl_score.sh    (embedded default: the unsteered target scores $OUT_DIR/generations.json)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
retired_names BATCH_SIZE=PPL_BATCH_SIZE MAX_LENGTH=PPL_MAX_LENGTH DTYPE=PPL_DTYPE OUTPUT_TAG=PPL_OUTPUT_TAG

# ---- editable defaults (environment overrides; positional arguments override both)
split_positionals 2 "MODEL_PATH INPUT_JSON" "<model_path> <input_json_path>" "$@"
MODEL_PATH=${POS[0]:-${MODEL_PATH:-$DEFAULT_TARGET}}
INPUT_JSON=${POS[1]:-${INPUT_JSON:-$DEFAULT_GENERATIONS}}  # differs from eval_ppl.py on purpose: the script scores only a file it is given
PPL_DEVICE=${PPL_DEVICE:-auto}       # auto = a CUDA GPU when one is visible, else the CPU
PPL_BATCH_SIZE=${PPL_BATCH_SIZE:-16}  # texts per forward pass
PPL_MAX_LENGTH=${PPL_MAX_LENGTH:-1024} # longest text in tokens (longer ones lose prompt tokens on the left)
PPL_DTYPE=${PPL_DTYPE:-auto}         # auto = bf16 on a GPU (fp16 where it has no bf16), fp32 on the CPU
PPL_OUTPUT_TAG=${PPL_OUTPUT_TAG:-}   # non-empty: write <stem>_ppl_<tag>.json (e.g. a second reference model)
# ----

"$PYTHON" "$REPO_DIR/eval_ppl.py" \
  --model_path "$MODEL_PATH" \
  --input_json "$INPUT_JSON" \
  --device "$PPL_DEVICE" \
  --batch_size "$PPL_BATCH_SIZE" \
  --max_length "$PPL_MAX_LENGTH" \
  --dtype "$PPL_DTYPE" \
  --output_tag "$PPL_OUTPUT_TAG" \
  ${PASS[@]+"${PASS[@]}"}
