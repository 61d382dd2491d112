#!/usr/bin/env bash
# Step 3: generate continuations with projection-alignment fusion, sweeping alpha.
# METHOD=diff (the default): the target's next-token logits move by alpha * W_target((h_expert - h_anti) A),
#   the expert/anti-expert difference carried through A (step 2, OBJECTIVE=logits), with the target's top-k
#   tokens eligible (TOP_K, default 5) and an optional risk gate (GATE). <teacher_model_path> is the expert;
#   ANTI_TEACHER_MODEL the anti-expert (step 1 trains both).
# METHOD=fusion: the paper's fusion, alpha * LayerNorm(h_teacher @ A) + (1 - alpha) * h_target (NORM).
# METHOD=wordban / steer: the baselines (a bad-word list; a steering vector STEER_VECTOR, strength = alpha).
# Alpha is each method's strength; 0 is the target alone, and the default sweep is the same for all.
#
#   ./run_generation.sh <teacher_model_path> <target_model_path> <matrix_A_path> <device> <output_path> <data_path>
#
# Reads  a teacher (step 1), a target LLM, the alignment matrix (step 2) and the prompts: rtp:eval (the embedded
#        held-out split, the default), a file (JSONL {"prompt": ...} or RealToxicityPrompts {"prompt": {"text": ...}},
#        .txt one a line, .csv, .tsv, .parquet), a Dataset.save_to_disk folder, or a hub dataset id, e.g.
#        DATA_PATH=allenai/real-toxicity-prompts PROMPT_FILTER=challenging=true MAX_PROMPTS=1000 (with a network).
# Writes <output_path> in the paper's nested JSON, <output>.meta.json (models, arguments, timings),
#        and, while running, <output_path>.journal.jsonl; rerunning the same command resumes from it.
# With no arguments it uses the embedded default run's artifacts under $OUT_DIR (default outputs/). A teacher or target
# you name is never paired with the default run's anti-expert or matrix: name those too (or METHOD=fusion / wordban).
# Any positional argument can also come from the environment: TEACHER_MODEL TARGET_MODEL MATRIX_A
# DEVICE OUTPUT_PATH DATA_PATH. With several GPUs, NPROC=N shards the prompts over N ranks (torchrun).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
retired_names BATCH_SIZE=GEN_BATCH_SIZE TEMPERATURE=GEN_TEMPERATURE SEED=GEN_SEED DTYPE=GEN_DTYPE OVERWRITE=GEN_OVERWRITE

split_positionals 6 "TEACHER_MODEL TARGET_MODEL MATRIX_A DEVICE OUTPUT_PATH DATA_PATH" \
  "<teacher_model_path> <target_model_path> <matrix_A_path> <device> <output_path> <data_path>" "$@"
TEACHER_MODEL=${POS[0]:-${TEACHER_MODEL:-}}  # empty = the teacher(s) the matrix names (step 2's tuned pair)
TARGET_MODEL=${POS[1]:-${TARGET_MODEL:-$DEFAULT_TARGET}}
MATRIX_A=${POS[2]:-${MATRIX_A:-$DEFAULT_MATRIX}}
DEVICE=${POS[3]:-${DEVICE:-auto}}  # auto = a CUDA GPU when one is visible, else the CPU
OUTPUT_PATH=${POS[4]:-${OUTPUT_PATH:-$DEFAULT_GENERATIONS}}
DATA_PATH=${POS[5]:-${DATA_PATH:-$DEFAULT_EVAL_PROMPTS}}  # rtp:eval = the embedded held-out split, read in place

# ---- editable hyperparameters (the environment overrides each one) --------------------------
# The paper: alphas 0..0.6 (its fusion's), 10 new tokens, greedy, one prompt at a time, seed 2025.
PROTOCOL=${PROTOCOL:-paper}     # paper: greedy, 10 new tokens, 1 sample, mean toxicity | dexperts (the field's): 25 samples, top-p 0.9, 20 new tokens, EMT and toxicity probability. Presets the four below; a variable set explicitly wins (logged, recorded in the meta file)
check_protocol                  # an unknown PROTOCOL: one line, exit 2
METHOD=${METHOD:-diff}          # diff | fusion (the paper) | wordban | steer
ALPHAS=${ALPHAS:-}               # empty = the method's own sweep: diff 0 4 8 12 18 22 26, fusion 0 0.1 .. 0.6 (the paper), steer 0 0.1 .. 0.4
ANTI_TEACHER_MODEL=${ANTI_TEACHER_MODEL:-}  # diff: the anti-expert (empty = the one the matrix names; name both or neither)
DIFF_SPACE=${DIFF_SPACE:-hidden}  # diff: hidden (through A, reaches every target token) | logits (shared tokens)
TOP_K=${TOP_K:-5}               # diff: only the target's top-k tokens are eligible (0 = all; 5 measured best on dev greedy;
                                # when sampling (PROTOCOL=dexperts) 0, every token, measured best on dev: docs/RESULTS.md)
POOL=${POOL:-mean}              # diff: mean (each teacher's mean state over the text so far; measured better on dev) | last (at the last token)
CONTEXT_WEIGHT=${CONTEXT_WEIGHT:-}  # diff: shrink the teachers' difference d toward its mean c over the training texts
                                   # (step 2's center): c + w (d - c); 1 = d as it is; 0 = the constant c alone.
                                   # Empty: 0.25 (measured best on dev) when the matrix holds its pair's center, else 1
PROMOTE_WEIGHT=${PROMOTE_WEIGHT:-}  # diff (needs the pair's center): the offset above a fixed threshold (what the pair would
                                   # promote) is scaled by this, below it (what it demotes) acts in full; 1 = as it is, 0 = demote only.
                                   # Empty: 0.25 (measured best on dev) when the matrix holds its pair's center and no GATE, else 1
DEMOTE_Z=${DEMOTE_Z:--0.5}          # diff: that threshold, the center's logit bias mean + DEMOTE_Z standard deviations
GATE=${GATE:-}                  # diff: act only where log p_anti(pick) - log p_expert(pick) >= GATE (empty = always)
DRAFT_GATE=${DRAFT_GATE:-}      # any method: keep the target's own continuation where profanity-check scores it below
                                # DRAFT_GATE, the method's elsewhere (detect, then revise; needs alpha 0; empty = off)
STEER_VECTOR=${STEER_VECTOR:-}  # steer: a .pt file {'vector': [d_target]} (scripts/build_steer_vector.py)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-$(protocol_default MAX_NEW_TOKENS)}  # PROTOCOL's: paper 10, dexperts 20
GEN_BATCH_SIZE=${GEN_BATCH_SIZE:-16}   # sequences per generate() call
NUM_SAMPLES=${NUM_SAMPLES:-$(protocol_default NUM_SAMPLES)}  # continuations per prompt; PROTOCOL's: paper 1, dexperts 25
DO_SAMPLE=${DO_SAMPLE:-$(protocol_default DO_SAMPLE)}        # 1 = nucleus sampling, 0 = greedy; PROTOCOL's: paper 0, dexperts 1
TOP_P=${TOP_P:-$(protocol_default TOP_P)}                    # nucleus p when sampling; PROTOCOL's: 0.9 (paper: unused, greedy)
GEN_TEMPERATURE=${GEN_TEMPERATURE:-1.0}  # sampling temperature (DO_SAMPLE=1)
GEN_SEED=${GEN_SEED:-2025}      # each (alpha, batch) is seeded from it
GEN_DTYPE=${GEN_DTYPE:-auto}    # auto = bf16 on a GPU (fp16 where it has no bf16), fp32 on the CPU
TEACHER_DTYPE=${TEACHER_DTYPE:-auto}  # the teachers' (diff, fusion): auto = GEN_DTYPE's | float32 | bfloat16 | float16
NORM=${NORM:-layernorm}         # fusion: layernorm (paper) | rescale (to the norm of h_target) | none
MAX_PROMPTS=${MAX_PROMPTS:-0}   # 0 = all prompts (counted after PROMPT_FILTER)
SKIP_PROMPTS=${SKIP_PROMPTS:-0} # leave out the first N prompts (after PROMPT_FILTER), before MAX_PROMPTS counts
PROMPT_FIELD=${PROMPT_FIELD:-auto}  # the prompt's field, dotted for nested ones (prompt.text for RealToxicityPrompts)
PROMPT_SPLIT=${PROMPT_SPLIT:-train} # the split of a hub dataset id or a save_to_disk folder
PROMPT_FILTER=${PROMPT_FILTER:-}    # keep rows where key=value, e.g. challenging=true (RTP's challenging subset)
NPROC=${NPROC:-1}               # >1: torchrun over NPROC ranks (one per GPU)
GEN_OVERWRITE=${GEN_OVERWRITE:-0}   # 1 = replace an existing <output_path> (and its journal)
# ----------------------------------------------------------------------------------------------

# A teacher, anti-expert or target you name is never paired with the default run's artifacts (its anti-expert,
# its matrix A, fitted for its own teachers and target): name those too, or use a method that does not need them.
# With no teacher named, generate.py decodes with the teacher(s) the matrix's sidecar names (a matrix and its
# teachers are one unit: step 2 tunes the pair together with A).
if [[ "$METHOD" == diff || "$METHOD" == fusion ]] && [[ -z "$ALPHAS" || " $ALPHAS " =~ [[:space:]][0-9.]*[1-9] ]]; then
  mine() { [[ "$(realpath -m -- "$1")" != "$(realpath -m -- "$2")" ]]; }  # named by the user, not the default
  if [[ "$METHOD" == diff && -n "$TEACHER_MODEL" && -z "$ANTI_TEACHER_MODEL" ]]; then
    echo "error: run_generation.sh: METHOD=diff with your teacher $TEACHER_MODEL needs your anti-expert too (never the default run's): name yours with ANTI_TEACHER_MODEL=..., or use METHOD=fusion (one teacher, the paper's)" >&2; exit 2
  fi
  if [[ "$METHOD" == diff && -z "$TEACHER_MODEL" && -n "$ANTI_TEACHER_MODEL" ]]; then
    echo "error: run_generation.sh: METHOD=diff with your anti-expert $ANTI_TEACHER_MODEL needs your expert too: name the expert too (TEACHER_MODEL=..., or <teacher_model_path>)" >&2; exit 2
  fi
  yours=""
  mine "$TARGET_MODEL" "$DEFAULT_TARGET" && yours="target $TARGET_MODEL"
  [[ -n "$TEACHER_MODEL" ]] && yours="teacher $TEACHER_MODEL"
  if [[ -n "$yours" && ( "$METHOD" == fusion || "$DIFF_SPACE" == hidden ) ]] && ! mine "$MATRIX_A" "$DEFAULT_MATRIX"; then
    echo "error: run_generation.sh: your $yours would be paired with the default run's matrix $MATRIX_A (fitted for its own teacher and target); name the matrix step 2 fitted for yours (MATRIX_A=..., or <matrix_A_path>)" >&2; exit 2
  fi
fi

FLAGS=(--teacher_model "$TEACHER_MODEL" --target_model "$TARGET_MODEL" --matrix_A "$MATRIX_A"
       --device "$DEVICE" --output_path "$OUTPUT_PATH" --data_path "$DATA_PATH"
       --max_new_tokens "$MAX_NEW_TOKENS" --batch_size "$GEN_BATCH_SIZE"
       --num_samples "$NUM_SAMPLES" --top_p "$TOP_P" --temperature "$GEN_TEMPERATURE" --seed "$GEN_SEED"
       --dtype "$GEN_DTYPE" --teacher_dtype "$TEACHER_DTYPE" --norm "$NORM" --max_prompts "$MAX_PROMPTS" --skip_prompts "$SKIP_PROMPTS" --method "$METHOD"
       --prompt_field "$PROMPT_FIELD" --prompt_split "$PROMPT_SPLIT" --prompt_filter "$PROMPT_FILTER" --protocol "$PROTOCOL")
case "$METHOD" in
  diff) FLAGS+=(--anti_teacher_model "$ANTI_TEACHER_MODEL" --diff_space "$DIFF_SPACE" --top_k "$TOP_K" --pool "$POOL")
        [[ -n "$CONTEXT_WEIGHT" ]] && FLAGS+=(--context_weight "$CONTEXT_WEIGHT")
        [[ -n "$PROMOTE_WEIGHT" ]] && FLAGS+=(--promote_weight "$PROMOTE_WEIGHT")
        FLAGS+=(--demote_z "$DEMOTE_Z")
        [[ -n "$GATE" ]] && FLAGS+=(--gate "$GATE") ;;
  steer) [[ -n "$STEER_VECTOR" ]] && FLAGS+=(--steer_vector "$STEER_VECTOR") ;;
esac
[[ -n "$ALPHAS" ]] && FLAGS+=(--alphas $ALPHAS)
[[ -n "$DRAFT_GATE" ]] && FLAGS+=(--draft_gate "$DRAFT_GATE")
[[ "$DO_SAMPLE" == 1 ]] && FLAGS+=(--do_sample)
[[ "$GEN_OVERWRITE" == 1 ]] && FLAGS+=(--overwrite)

if (( NPROC > 1 )); then
  exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" "$REPO_DIR/generate.py" "${FLAGS[@]}" ${PASS[@]+"${PASS[@]}"}
else
  exec "$PYTHON" "$REPO_DIR/generate.py" "${FLAGS[@]}" ${PASS[@]+"${PASS[@]}"}
fi
