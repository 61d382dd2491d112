#!/usr/bin/env bash
# Step 1: train the teacher = the first NUM_TEACHER_LAYERS decoder layers of a causal LM, fine-tuned on
# prompt -> safe-completion pairs (loss on completion tokens only). With TEACHERS=both (the default) the
# same recipe also trains the anti-expert on prompt -> toxic-completion pairs, for step 3's --method diff
# (expert minus anti-expert through A); TEACHERS=expert trains the paper's single teacher only.
# Reads:  $TRAINING_DATA_PATH  WildJailbreak TSV (vanilla, adversarial, completion) or JSONL (prompt, completion)
#         $ANTI_TRAINING_DATA_PATH  the same format with toxic completions (TEACHERS=both)
#         $MODEL_NAME_OR_PATH  the base model: an alias (smollm2-135m), a Hugging Face folder or a hub id
#         ds_config.json       DeepSpeed runs only (ZeRO stage from $ZERO_STAGE, batch sizes "auto")
# Writes: $PRETRAIN_OUTPUT_DIR the teacher, and $PRETRAIN_ANTI_OUTPUT_DIR the anti-expert laid out the same way
#                              (a plain Hugging Face folder: model + tokenizer), checkpoint-*/,
#                              detox_pa_teacher.json (sidecar: data hash, row/token counts, losses, time, args),
#                              ds_config.zero$ZERO_STAGE.json (the DeepSpeed config actually used, DeepSpeed runs)
# Usage:  ./run_pretrain.sh [extra pretrain.py flags, e.g. --max_steps 20]
#         NUM_TEACHER_LAYERS=4 LEARNING_RATE=1e-4 ./run_pretrain.sh
#         RESUME=1 ./run_pretrain.sh      continue from the newest checkpoint-* in $PRETRAIN_OUTPUT_DIR
# Launch: GPUs visible (NUM_GPUS overrides the probe) -> the `deepspeed` launcher on all visible GPUs
#         (restrict them with CUDA_VISIBLE_DEVICES) with ds_config.json and --bf16;
#         no GPU -> one plain CPU process;
#         no GPU and DS_ON_CPU=1 -> DeepSpeed on CPU over gloo in one process, to check a config before
#         renting GPUs (sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT and --use_cpu; the first run
#         compiles a small op, about 20 s, cached in ~/.cache/torch_extensions).
# ZeRO stage: ds_config.json keeps "stage": 0; this script writes a copy with "stage": $ZERO_STAGE into
#         $PRETRAIN_OUTPUT_DIR and passes that copy.
#
# The paper's settings (7 GPUs):
#   MODEL_NAME_OR_PATH=mistralai/Mistral-7B-v0.1 NUM_TEACHER_LAYERS=3 LEARNING_RATE=1e-5 \
#   PER_DEVICE_TRAIN_BATCH_SIZE=2 GRADIENT_ACCUMULATION_STEPS=4 NUM_TRAIN_EPOCHS=3 ZERO_STAGE=0 \
#   FREEZE_EMBEDDINGS=0 PRETRAIN_MAX_LENGTH=1024 TRAINING_DATA_PATH=/path/to/wildjailbreak/train.tsv TEACHERS=expert ./run_pretrain.sh
#   (bf16 is added on GPUs; batch 2 x 7 GPUs x grad-accum 4 = 56 rows per update; 3 epochs of ~262k rows)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
retired_names OUTPUT_DIR=PRETRAIN_OUTPUT_DIR ANTI_OUTPUT_DIR=PRETRAIN_ANTI_OUTPUT_DIR MAX_LENGTH=PRETRAIN_MAX_LENGTH \
  SEED=PRETRAIN_SEED OVERWRITE=PRETRAIN_OVERWRITE CONFIG=PRETRAIN_CONFIG

# ---- editable defaults: the embedded default (SmolLM2-135M-Instruct, 3 of its 30 layers: 38.9M parameters).
# ---- The sidecar records time, tokens/s and the loss of each run.
TEACHERS=${TEACHERS:-both}          # both (expert + anti-expert, for --method diff) | expert (the paper) | anti
MODEL_NAME_OR_PATH=${MODEL_NAME_OR_PATH:-$DEFAULT_TEACHER_BASE}
TRAINING_DATA_PATH=${TRAINING_DATA_PATH:-$DEFAULT_TEACHER_DATA}
PRETRAIN_OUTPUT_DIR=${PRETRAIN_OUTPUT_DIR:-$DEFAULT_TEACHER_DIR}
ANTI_TRAINING_DATA_PATH=${ANTI_TRAINING_DATA_PATH:-$DEFAULT_ANTI_TEACHER_DATA}
PRETRAIN_ANTI_OUTPUT_DIR=${PRETRAIN_ANTI_OUTPUT_DIR:-$DEFAULT_ANTI_TEACHER_DIR}
NUM_TEACHER_LAYERS=${NUM_TEACHER_LAYERS:-3}
PER_DEVICE_TRAIN_BATCH_SIZE=${PER_DEVICE_TRAIN_BATCH_SIZE:-16}
GRADIENT_ACCUMULATION_STEPS=${GRADIENT_ACCUMULATION_STEPS:-1}
LEARNING_RATE=${LEARNING_RATE:-1e-3}
NUM_TRAIN_EPOCHS=${NUM_TRAIN_EPOCHS:-3}
MAX_STEPS=${MAX_STEPS:--1}          # > 0 overrides the epochs (SMOKE=1 uses a few steps)
WARMUP_STEPS=${WARMUP_STEPS:-5}
PRETRAIN_MAX_LENGTH=${PRETRAIN_MAX_LENGTH:-128}
# Frozen embeddings/output layer (the default) keep the expert and the anti-expert on ONE output layer, so
# h_expert - h_anti is a logit difference that one matrix A carries. The paper trains them (FREEZE_EMBEDDINGS=0).
FREEZE_EMBEDDINGS=${FREEZE_EMBEDDINGS:-1}
FREEZE_LM_HEAD=${FREEZE_LM_HEAD:-$FREEZE_EMBEDDINGS}
APPEND_EOS=${APPEND_EOS:-0}
LOGGING_STEPS=${LOGGING_STEPS:-10}
SAVE_STEPS=${SAVE_STEPS:-50}
SAVE_TOTAL_LIMIT=${SAVE_TOTAL_LIMIT:-2}
ZERO_STAGE=${ZERO_STAGE:-0}
DS_CONFIG=${DS_CONFIG:-$REPO_DIR/ds_config.json}
RESUME=${RESUME:-0}
PRETRAIN_OVERWRITE=${PRETRAIN_OVERWRITE:-0}  # start over in an output folder that holds a teacher
DS_ON_CPU=${DS_ON_CPU:-0}
PRETRAIN_SEED=${PRETRAIN_SEED:-42}
REPORT_TO=${REPORT_TO:-none}        # TrainingArguments.report_to: none | tensorboard | wandb | ... (installed separately)
PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-}  # a JSON/YAML file of pretrain.py arguments: it overrides this block (not the
                                    # data paths and output folders, which stay the variables above), and the
                                    # flags given to this launcher override it
# ----

bool() { if [[ "$1" == 1 || "$1" == true ]]; then echo true; else echo false; fi; }

ARGS=(
  --model_name_or_path "$MODEL_NAME_OR_PATH"
  --num_teacher_layers "$NUM_TEACHER_LAYERS"
  --per_device_train_batch_size "$PER_DEVICE_TRAIN_BATCH_SIZE"
  --gradient_accumulation_steps "$GRADIENT_ACCUMULATION_STEPS"
  --learning_rate "$LEARNING_RATE"
  --num_train_epochs "$NUM_TRAIN_EPOCHS"
  --max_steps "$MAX_STEPS"
  --warmup_steps "$WARMUP_STEPS"
  --max_length "$PRETRAIN_MAX_LENGTH"
  --freeze_embeddings "$(bool "$FREEZE_EMBEDDINGS")"
  --freeze_lm_head "$(bool "$FREEZE_LM_HEAD")"
  --append_eos "$(bool "$APPEND_EOS")"
  --logging_steps "$LOGGING_STEPS"
  --save_strategy steps
  --save_steps "$SAVE_STEPS"
  --save_total_limit "$SAVE_TOTAL_LIMIT"
  --seed "$PRETRAIN_SEED"
  --report_to "$REPORT_TO"
)
if [[ -n "$PRETRAIN_CONFIG" ]]; then ARGS+=(--config "$PRETRAIN_CONFIG"); fi
if [[ "$(bool "$RESUME")" == true ]]; then ARGS+=(--resume_from_checkpoint last); fi
if [[ "$(bool "$PRETRAIN_OVERWRITE")" == true ]]; then ARGS+=(--overwrite_output_dir); fi

# The DeepSpeed config with the chosen ZeRO stage, kept next to the outputs.
ds_config_copy() {  # ds_config_copy OUT_DIR
  mkdir -p "$1"
  local dest="$1/ds_config.zero$ZERO_STAGE.json"
  "$PYTHON" - "$DS_CONFIG" "$ZERO_STAGE" "$dest" <<'PY'
import json, sys
src, stage, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if stage not in (0, 1, 2, 3):
    sys.exit(f"error: ZERO_STAGE must be 0, 1, 2 or 3, got {stage}")
cfg = json.load(open(src, encoding="utf-8"))
cfg.setdefault("zero_optimization", {})["stage"] = stage
with open(dest, "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
PY
  echo "$dest"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$TEACHERS" in
  both|expert|anti) ;;
  *) echo "error: TEACHERS must be both, expert or anti, got '$TEACHERS'" >&2; exit 2 ;;
esac
if [[ "$TEACHERS" != expert && "$(realpath -m "$PRETRAIN_OUTPUT_DIR")" == "$(realpath -m "$PRETRAIN_ANTI_OUTPUT_DIR")" ]]; then
  echo "error: PRETRAIN_OUTPUT_DIR and PRETRAIN_ANTI_OUTPUT_DIR are the same folder ($PRETRAIN_OUTPUT_DIR); the two teachers need their own" >&2
  exit 2
fi

NGPU=$(num_gpus)
train_one() {  # train_one DATA OUT [extra flags]: one teacher, on GPUs with DeepSpeed or on the CPU
  local data=$1 out=$2; shift 2
  local args=("${ARGS[@]}" --training_data_path "$data" --output_dir "$out")
  if (( NGPU > 0 )); then
    local ds; ds=$(ds_config_copy "$out")
    echo "run_pretrain.sh: $out: DeepSpeed ZeRO-$ZERO_STAGE on $NGPU GPU(s), bf16, config $ds" >&2
    "$PYTHON" -m deepspeed.launcher.runner --master_port "${MASTER_PORT:-29500}" \
      "$REPO_DIR/pretrain.py" "${args[@]}" --deepspeed "$ds" --bf16 "$@"
  elif [[ "$(bool "$DS_ON_CPU")" == true ]]; then
    local ds; ds=$(ds_config_copy "$out")
    export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-$(free_port)}
    echo "run_pretrain.sh: $out: DeepSpeed ZeRO-$ZERO_STAGE on CPU (gloo, one process), config $ds" >&2
    "$PYTHON" "$REPO_DIR/pretrain.py" "${args[@]}" --deepspeed "$ds" --use_cpu "$@"
  else
    echo "run_pretrain.sh: $out: one CPU process (no GPU visible)" >&2
    "$PYTHON" "$REPO_DIR/pretrain.py" "${args[@]}" "$@"
  fi
}

if [[ "$TEACHERS" != anti ]]; then
  echo "run_pretrain.sh: expert teacher on $TRAINING_DATA_PATH -> $PRETRAIN_OUTPUT_DIR" >&2
  train_one "$TRAINING_DATA_PATH" "$PRETRAIN_OUTPUT_DIR" "$@"
fi
if [[ "$TEACHERS" != expert ]]; then
  echo "run_pretrain.sh: anti-expert on $ANTI_TRAINING_DATA_PATH -> $PRETRAIN_ANTI_OUTPUT_DIR (same recipe)" >&2
  train_one "$ANTI_TRAINING_DATA_PATH" "$PRETRAIN_ANTI_OUTPUT_DIR" "$@"
fi
