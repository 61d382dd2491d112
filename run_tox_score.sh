#!/usr/bin/env bash
# Step 4a: toxicity of generated continuations, per alpha.
#
# Usage:  ./run_tox_score.sh [<device> <input_json_path>] [extra eval_toxicity.py flags...]
#         DEVICE=cpu INPUT_JSON=outputs/generations.json ./run_tox_score.sh
# Reads:  <input_json_path>: the paper's nested generations JSON (default: the embedded run's
#         $OUT_DIR/generations.json), or any texts: a .txt file (one a line), a JSONL of {"text"} (optionally with
#         "prompt"), or a DExperts JSONL {"prompt", "generations": [{"text"}]}.
# Writes: <input>_toxicity.json (per alpha: the paper's toxicity_score + EMT, toxicity probability,
#         toxic share, counts, scorer), <input>_toxicity_records.jsonl (one line per continuation)
#         and <input>_toxicity.meta.json (sidecar), all beside the input.
# Scorers: SCORER is one name or a comma list; the first is the primary (toxicity_score), the others
#         are recorded as toxicity_score_<name>. "auto" = Detoxify 'original' when its weights are
#         available locally or downloadable, else the embedded BiLSTM (announced in the log).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
retired_names BATCH_SIZE=TOX_BATCH_SIZE OUTPUT_TAG=TOX_OUTPUT_TAG

# ---- editable settings (each can be overridden from the environment) ----
split_positionals 2 "DEVICE INPUT_JSON" "<device> <input_json_path>" "$@"
DEVICE=${POS[0]:-${DEVICE:-auto}}        # auto = a CUDA GPU when one is visible, else the CPU
INPUT_JSON=${POS[1]:-${INPUT_JSON:-$DEFAULT_GENERATIONS}}  # differs from eval_toxicity.py on purpose: the script scores only a file it is given
SCORER=${SCORER:-auto,profanity-check}   # auto | detoxify-{original,unbiased,multilingual} | bilstm | profanity-check
TOX_BATCH_SIZE=${TOX_BATCH_SIZE:-0}      # texts per batch; 0 = each scorer's default
CHECKPOINT=${CHECKPOINT:-}               # local Detoxify checkpoint file (optional)
HF_CONFIG_DIR=${HF_CONFIG_DIR:-}         # local config.json + tokenizer folder for that checkpoint (optional)
TOX_OUTPUT_TAG=${TOX_OUTPUT_TAG:-}       # non-empty: write <input>_toxicity_<tag>.json instead
# -------------------------------------------------------------------------

extra=()
[[ -n "$CHECKPOINT" ]] && extra+=(--checkpoint "$CHECKPOINT")
[[ -n "$HF_CONFIG_DIR" ]] && extra+=(--hf_config_dir "$HF_CONFIG_DIR")
[[ -n "$TOX_OUTPUT_TAG" ]] && extra+=(--output_tag "$TOX_OUTPUT_TAG")

"$PYTHON" "$REPO_DIR/eval_toxicity.py" \
  --device "$DEVICE" \
  --input_json "$INPUT_JSON" \
  --scorer "$SCORER" \
  --batch_size "$TOX_BATCH_SIZE" \
  ${extra[@]+"${extra[@]}"} \
  ${PASS[@]+"${PASS[@]}"}
