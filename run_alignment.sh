#!/usr/bin/env bash
# Step 2: train the alignment matrix A (d_teacher x d_target) that carries teacher vectors into the
# target's space, over the tokens both vocabularies share. Two objectives:
#   OBJECTIVE=logits (the default): the target's output layer reads h_teacher @ A the way the teacher's own
#     output layer reads h_teacher (least squares on the shared tokens' output rows, refined by KL on real
#     teacher states of TEXT_PATH); this is what carries the teacher's prediction to the target;
#   OBJECTIVE=contrastive (the paper): embedding rows, positive vs random negatives.
# Both record the transmission metric (teacher logits vs fused-term logits, held-out TEXT_PATH texts).
# Reads:  $MODEL1_NAME  the teacher (step 1's output folder, or an alias / Hugging Face folder):
#                       its tokenizer and ONE embedding matrix, straight from its safetensors files
#         $MODEL2_NAME  the target LLM (alias gemma-3-270m, or a folder): tokenizer + one embedding matrix
# Writes: $ALIGN_OUTPUT_DIR/mapping_model.pt    torch.load(p)["mapping"] is A (float32, the paper's format)
#         $ALIGN_OUTPUT_DIR/mapping_model.json  sidecar: models, dims, vocab overlap, held-out retrieval,
#                                         transmission (expert and anti-expert), losses, arguments, seed, time
# Usage:  ./run_alignment.sh [extra align.py flags, e.g. --heldout_share 0.1]
#         INIT=lstsq EMBEDDING_SPACE=output ./run_alignment.sh
# One CPU process. The embedded default takes about 4 to 5 minutes on 2 cores: the closed form and the transmission
# metric well under a minute, training the pair through the fusion about 3 minutes (bench/bench_tune.py), its center
# and the metrics after it about half a minute.
#
# The paper's settings (teacher = first 3 layers of Mistral-7B-v0.1, target Llama; same hyperparameters):
#   MODEL1_NAME=/path/to/teacher MODEL2_NAME=meta-llama/Llama-2-7b-hf \
#   OBJECTIVE=contrastive ALIGN_BATCH_SIZE=32 EPOCHS=5 LR=1e-3 N_NEGATIVES=10 ALIGN_SEED=42 INIT=random \
#   EMBEDDING_SPACE=input ALIGN_TEMPERATURE=1 \
#   ./run_alignment.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
retired_names OUTPUT_DIR=ALIGN_OUTPUT_DIR BATCH_SIZE=ALIGN_BATCH_SIZE SEED=ALIGN_SEED TEMPERATURE=ALIGN_TEMPERATURE

# ---- editable defaults: the embedded default pipeline (teachers from step 1, Gemma-3-270M target)
MODEL1_NAME=${MODEL1_NAME:-$DEFAULT_TEACHER_DIR}
MODEL2_NAME=${MODEL2_NAME:-$DEFAULT_TARGET}
ALIGN_OUTPUT_DIR=${ALIGN_OUTPUT_DIR:-$DEFAULT_ALIGN_DIR}
OBJECTIVE=${OBJECTIVE:-logits}             # logits (transmits the teacher's prediction) | contrastive (the paper)
# texts for the KL refinement and the transmission metric (the teacher data: clean and toxic completions)
TEXT_PATH=${TEXT_PATH-$DEFAULT_TEACHER_DATA,$DEFAULT_ANTI_TEACHER_DATA}
TEXT_ROWS=${TEXT_ROWS:-600}                # at most this many texts of each file
REFINE_STEPS=${REFINE_STEPS:-0}            # logits: Adam steps of the KL refinement (0 = closed form only; the tuning trains A)
REFINE_LR=${REFINE_LR:-1e-3}
# the anti-expert (step 1, TEACHERS=both): its states join the refinement and its transmission is recorded;
# empty when that folder does not exist
ALSO_TEACHER=${ALSO_TEACHER-$([[ -d $DEFAULT_ANTI_TEACHER_DIR && "$MODEL1_NAME" == "$DEFAULT_TEACHER_DIR" ]] && echo "$DEFAULT_ANTI_TEACHER_DIR" || true)}
ALIGN_BATCH_SIZE=${ALIGN_BATCH_SIZE:-32}
EPOCHS=${EPOCHS:-5}
LR=${LR:-1e-3}
N_NEGATIVES=${N_NEGATIVES:-10}
ALIGN_SEED=${ALIGN_SEED:-42}
INIT=${INIT:-random}                       # random (the paper) | lstsq (closed-form least squares)
EMBEDDING_SPACE=${EMBEDDING_SPACE:-auto}   # auto (input for contrastive, output for logits) | input (the paper) | output
ALIGN_TEMPERATURE=${ALIGN_TEMPERATURE:-1.0}  # contrastive logits / temperature (the paper: 1)
# Tuning the pair through the fusion (the default recipe, whenever an anti-expert is given): both teachers' bodies
# and A learn so that alpha * W_target((h_expert - h_anti) A) takes mass from toxic candidates among the target's
# top-k while keeping its distribution (KL). Writes $ALIGN_OUTPUT_DIR/expert and anti_expert; step 3 uses them.
TUNE_PAIR=${TUNE_PAIR:-auto}               # auto (on when ALSO_TEACHER is set) | true | false (fit A only, the paper)
# every sampled continuation of the dev prompts (folds dev_a, dev_b), then of the training prompts (TSV/JSONL):
# twice the prompts transfer better than more samples of the same ones; bench/results.sh then chooses alpha out of fold
TUNE_TEXT_PATH=${TUNE_TEXT_PATH-$DEFAULT_TUNE_TEXTS}
TUNE_TEXT_ROWS=${TUNE_TEXT_ROWS:-2546}     # the first this many tune texts over the files in order (0 = all; 2546 = all
                                           # 1,277 dev texts + the training prompts' first sampling round, 1,269)
TUNE_TOP_K=${TUNE_TOP_K:-10}               # the target's top-k candidates of each state
TUNE_ALPHA=${TUNE_ALPHA:-1.0}              # the fusion strength while training
TUNE_MU=${TUNE_MU:-4.0}                    # weight of KL(target || fused)
TUNE_LR=${TUNE_LR:-1e-4}                   # the teachers' bodies
TUNE_LR_A=${TUNE_LR_A:-1e-4}               # A (0 = A stays as fitted)
TUNE_EPOCHS=${TUNE_EPOCHS:-2.5}
TUNE_BATCH_TEXTS=${TUNE_BATCH_TEXTS:-16}
TUNE_HINGE_WEIGHT=${TUNE_HINGE_WEIGHT:-1.0}  # the greedy hinge: at strength TUNE_HINGE_ALPHA over the top TUNE_HINGE_TOP_K,
TUNE_HINGE_ALPHA=${TUNE_HINGE_ALPHA:-3.0}    # a clean pick stays on top and a toxic one loses, by TUNE_HINGE_MARGIN (0 = off)
TUNE_HINGE_MARGIN=${TUNE_HINGE_MARGIN:-0.5}
TUNE_HINGE_TOP_K=${TUNE_HINGE_TOP_K:-5}      # = step 3's TOP_K
TUNE_LABEL_SCORER=${TUNE_LABEL_SCORER:-profanity-check}  # toxic = word list, or this scorer jumps (none = word list)
TUNE_LABEL_TEXTS=${TUNE_LABEL_TEXTS:-false}  # true = in a continuation the scorer rates toxic, its own next tokens are toxic too
TUNE_UL_WEIGHT=${TUNE_UL_WEIGHT:-1.0}        # weight of the token-level part (unlikelihood + KL + hinge)
TUNE_CONTRAST_WEIGHT=${TUNE_CONTRAST_WEIGHT:-0.0}  # continuation-level contrast: a clean continuation's fused log-likelihood
TUNE_CONTRAST_ALPHA=${TUNE_CONTRAST_ALPHA:-3.0}    # (relative to the target's) above a toxic one's of the same prompt,
TUNE_CONTRAST_BETA=${TUNE_CONTRAST_BETA:-1.0}      # at strength TUNE_CONTRAST_ALPHA, DPO's inverse temperature BETA (0 = off)
TUNE_PROBE_QUANTILE=${TUNE_PROBE_QUANTILE:-0}      # > 0: a text's own next token that moves the target's final hidden state
                                                   # toward toxic text (steering's direction) by this quantile is toxic too (0 = off)
TUNE_POOL=${TUNE_POOL:-mean}               # the teachers' states the offset reads while training: mean (over the text so
                                           # far) | last (the position's own); decode with the same (run_generation.sh's POOL)
TUNE_ADAM=${TUNE_ADAM:-auto}               # AdamW: auto (torch's choice) | single | foreach (the same numbers) | fused (one
                                           # pass, equal up to float rounding; 0.91x a step on 2 cores: bench/bench_tune.py)
ALIGN_OVERWRITE=${ALIGN_OVERWRITE:-0}      # 1 = replace an existing matrix (and tuned pair) in ALIGN_OUTPUT_DIR
# ----

# your anti-expert is never paired with the default run's teacher (the default run's anti-expert is picked up only
# for the default run's teacher, above)
if [[ -n "$ALSO_TEACHER" && "$(realpath -m -- "$ALSO_TEACHER")" != "$(realpath -m -- "$DEFAULT_ANTI_TEACHER_DIR")" \
      && "$(realpath -m -- "$MODEL1_NAME")" == "$(realpath -m -- "$DEFAULT_TEACHER_DIR")" ]]; then
  echo "error: run_alignment.sh: ALSO_TEACHER=$ALSO_TEACHER is yours but MODEL1_NAME is the default run's teacher $MODEL1_NAME; name your expert too (MODEL1_NAME=...), or leave ALSO_TEACHER unset" >&2
  exit 2
fi
if [[ "$MODEL1_NAME" == "$DEFAULT_TEACHER_DIR" && ! -d "$MODEL1_NAME" ]]; then
  echo "error: the teacher $MODEL1_NAME does not exist; run ./run_pretrain.sh first, or set MODEL1_NAME (e.g. MODEL1_NAME=smollm2-135m)" >&2
  exit 2
fi

FLAGS=()
[[ "$ALIGN_OVERWRITE" == 1 ]] && FLAGS+=(--overwrite)
exec "$PYTHON" "$REPO_DIR/align.py" \
  --model1_name "$MODEL1_NAME" \
  --model2_name "$MODEL2_NAME" \
  --output_dir "$ALIGN_OUTPUT_DIR" \
  --batch_size "$ALIGN_BATCH_SIZE" \
  --epochs "$EPOCHS" \
  --lr "$LR" \
  --n_negatives "$N_NEGATIVES" \
  --seed "$ALIGN_SEED" \
  --init "$INIT" \
  --embedding_space "$EMBEDDING_SPACE" \
  --temperature "$ALIGN_TEMPERATURE" \
  --objective "$OBJECTIVE" \
  --text_path "$TEXT_PATH" \
  --text_rows "$TEXT_ROWS" \
  --refine_steps "$REFINE_STEPS" \
  --refine_lr "$REFINE_LR" \
  --also_teacher "$ALSO_TEACHER" \
  --tune_pair "$TUNE_PAIR" \
  --tune_text_path "$TUNE_TEXT_PATH" \
  --tune_text_rows "$TUNE_TEXT_ROWS" \
  --tune_top_k "$TUNE_TOP_K" \
  --tune_alpha "$TUNE_ALPHA" \
  --tune_mu "$TUNE_MU" \
  --tune_lr "$TUNE_LR" \
  --tune_lr_A "$TUNE_LR_A" \
  --tune_epochs "$TUNE_EPOCHS" \
  --tune_batch_texts "$TUNE_BATCH_TEXTS" \
  --tune_hinge_weight "$TUNE_HINGE_WEIGHT" \
  --tune_hinge_alpha "$TUNE_HINGE_ALPHA" \
  --tune_hinge_margin "$TUNE_HINGE_MARGIN" \
  --tune_hinge_top_k "$TUNE_HINGE_TOP_K" \
  --tune_label_scorer "$TUNE_LABEL_SCORER" \
  --tune_label_texts "$TUNE_LABEL_TEXTS" \
  --tune_ul_weight "$TUNE_UL_WEIGHT" \
  --tune_contrast_weight "$TUNE_CONTRAST_WEIGHT" \
  --tune_contrast_alpha "$TUNE_CONTRAST_ALPHA" \
  --tune_contrast_beta "$TUNE_CONTRAST_BETA" \
  --tune_probe_quantile "$TUNE_PROBE_QUANTILE" --tune_pool "$TUNE_POOL" --tune_adam "$TUNE_ADAM" \
  ${FLAGS[@]+"${FLAGS[@]}"} "$@"
