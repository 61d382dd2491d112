#!/usr/bin/env bash
# Design study of step 2 (issue 21): each arm of bench/arms.txt is the default recipe with a few settings changed
# (a new training term, labels, data, teacher depth), trained with each seed of ARM_SEEDS and swept on the 160 DEV
# prompts (rtp:dev; never held out): greedy 10 tokens, top-5, BiLSTM toxicity, token-weighted PPL under Gemma.
#
#   ./run_all.sh && bench/arms.sh                      # every arm, seed 42
#   ARMS="contrast3" ARM_SEEDS="42 1 2 3" bench/arms.sh   # one arm on four seeds (an arm's SEEDS=42,1 in the file wins)
#   HELDOUT_RUN=contrast3_L6_s42 bench/arms.sh          # also one run held out (after bench/results.sh)
#
# Writes $ARMS_DIR/align_<arm>_s<seed> (align.py with the arm's settings; the arm "default" at seed 42 is the default
# run's own $OUT_DIR/alignment), $ARMS_DIR/dev_<arm>_s<seed>.json with both score files, and $ARMS_DIR/arms.md (copied
# to docs/ARMS.md): the sweep table with the dev alpha rule and the paired difference against the default at the same
# seed, where each run pays its PPL (bench/seeds.py cost), and what stays toxic. Reruns skip what exists. About 7 min
# of 2 cores per arm and seed (an arm with NUM_TEACHER_LAYERS pretrains its teachers once first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
source bench/lib_dev.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
ARMS_DIR=${ARMS_DIR:-$OUT_DIR/arms}
ARMS_FILE=${ARMS_FILE:-bench/arms.txt}
ARMS=${ARMS:-}                 # empty = every arm of ARMS_FILE
ARM_SEEDS=${ARM_SEEDS:-42}
ALPHAS=${ALPHAS:-"0 3 4"}
PPL_CAP=${PPL_CAP:-1.25}
[[ -f "$DEFAULT_ALIGN_DIR/$ART_TUNED_EXPERT/config.json" ]] || { echo "error: run ./run_all.sh first (needs $DEFAULT_ALIGN_DIR)" >&2; exit 2; }
[[ -f "$ARMS_FILE" ]] || { echo "error: ARMS_FILE=$ARMS_FILE does not exist" >&2; exit 2; }
mkdir -p "$ARMS_DIR"

declare -A SETTINGS
ORDER=()
while read -r name rest; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ "$name" =~ ^[A-Za-z0-9_]+$ ]] || { echo "error: $ARMS_FILE: arm name '$name' (letters, digits, _)" >&2; exit 2; }
  for kv in $rest; do
    [[ "$kv" =~ ^[A-Z_][A-Z0-9_]*=[^[:space:]]*$ ]] || { echo "error: $ARMS_FILE: arm $name: '$kv' is not NAME=VALUE" >&2; exit 2; }
  done
  SETTINGS[$name]="$rest"
  ORDER+=("$name")
done < "$ARMS_FILE"
if [[ -n "$ARMS" ]]; then
  for a in $ARMS; do [[ -n "${SETTINGS[$a]+x}" ]] || { echo "error: no arm '$a' in $ARMS_FILE" >&2; exit 2; }; done
  ORDER=($ARMS)
fi
[[ " ${ORDER[*]} " == *" default "* ]] || ORDER=(default "${ORDER[@]}")  # the reference is always swept
SETTINGS[default]=${SETTINGS[default]:-}

RUNS=()
declare -A ALIGN_OF GEN_FLAGS  # each run's alignment folder and its decoding flags
for arm in "${ORDER[@]}"; do
  seeds="$ARM_SEEDS"
  for kv in ${SETTINGS[$arm]}; do [[ $kv == SEEDS=* ]] && seeds=${kv#*=} && seeds=${seeds//,/ }; done  # the arm's own seeds
  for seed in $seeds; do
    run="${arm}_s$seed"; RUNS+=("$run")
    env_kv=() gen_flags=""
    for kv in ${SETTINGS[$arm]}; do
      case $kv in
        SEEDS=*|ALPHAS=*) ;;
        POOL=*) gen_flags+=" --pool ${kv#*=}" ;;  # decoding settings (run_generation.sh's POOL, CONTEXT_WEIGHT, TOP_K)
        CONTEXT_WEIGHT=*) gen_flags+=" --context_weight ${kv#*=}" ;;
        TOP_K=*) gen_flags+=" --top_k ${kv#*=}" ;;
        *) env_kv+=("$kv") ;;
      esac
    done
    layers="" alphas="$ALPHAS"
    for kv in ${SETTINGS[$arm]}; do
      [[ $kv == NUM_TEACHER_LAYERS=* ]] && layers=${kv#*=}
      [[ $kv == ALPHAS=* ]] && alphas=${kv#*=} && alphas=${alphas//,/ }  # the arm's own sweep (comma-separated)
    done
    if [[ ${#env_kv[@]} == 0 && "$seed" == 42 ]]; then  # the default recipe's step 2 (decoding settings aside)
      d=$(screening_default "$ARMS_DIR/align_default_s42")
    elif [[ ${#env_kv[@]} == 0 && "$arm" != default ]]; then  # decoding settings only: the default's pair of this seed
      d="$ARMS_DIR/align_default_s$seed"
      [[ -f "$d/$ART_MATRIX_FILE" ]] || ALIGN_OUTPUT_DIR="$d" ALIGN_SEED=$seed ./run_alignment.sh --progress false > "$ARMS_DIR/align_default_s$seed.log" 2>&1
    else
      d="$ARMS_DIR/align_$run"
      if [[ -n "$layers" ]]; then
        t="$ARMS_DIR/teachers_L$layers"
        if [[ ! -f "$t/anti_teacher/config.json" ]]; then
          echo "pretrain both teachers at $layers layers"
          env "${env_kv[@]}" PRETRAIN_OUTPUT_DIR="$t/teacher" PRETRAIN_ANTI_OUTPUT_DIR="$t/anti_teacher" \
            ./run_pretrain.sh > "$ARMS_DIR/teachers_L$layers.log" 2>&1
        fi
        env_kv+=(MODEL1_NAME="$t/teacher" ALSO_TEACHER="$t/anti_teacher")
      fi
      if [[ ! -f "$d/$ART_MATRIX_FILE" ]]; then
        echo "align $run: ${SETTINGS[$arm]:-(the default recipe)} ALIGN_SEED=$seed"
        env ${env_kv[@]+"${env_kv[@]}"} ALIGN_OUTPUT_DIR="$d" ALIGN_SEED=$seed ./run_alignment.sh --progress false > "$ARMS_DIR/align_$run.log" 2>&1
      fi
    fi
    dev_sweep "$ARMS_DIR" "$run" "$d" "$alphas" "$gen_flags"
    ALIGN_OF[$run]=$d GEN_FLAGS[$run]=$gen_flags
  done
done

# a held-out check of one run (chosen on dev: HELDOUT_RUN), at HELDOUT_ALPHAS, against bench/results.sh's held-out
# steering and default sweeps on the same 303 prompts (both PPL judges)
HELDOUT_RUN=${HELDOUT_RUN:-}
HELDOUT_ALPHAS=${HELDOUT_ALPHAS:-"0 2 2.5 3"}
HELDOUT_PAIRS=${HELDOUT_PAIRS:-"2.5:steer:0.3 2.5:steer:0.4 2.5:default:3 2.5:default:4"}
if [[ -n "$HELDOUT_RUN" ]]; then
  [[ -f "$OUT_DIR/results/steer$ART_TOX_STEM.json" ]] || { echo "error: HELDOUT_RUN needs bench/results.sh's held-out runs" >&2; exit 2; }
  [[ -n "${ALIGN_OF[$HELDOUT_RUN]+x}" ]] || { echo "error: HELDOUT_RUN=$HELDOUT_RUN is none of this run's arms and seeds: ${RUNS[*]}" >&2; exit 2; }
  h="$ARMS_DIR/heldout_$HELDOUT_RUN.json"
  [[ -f "$h" ]] || "$PYTHON" generate.py --target_model "$DEFAULT_TARGET" --data_path rtp:eval --output_path "$h" --device cpu \
    --method diff --matrix_A "${ALIGN_OF[$HELDOUT_RUN]}/$ART_MATRIX_FILE" --top_k 5 --alphas $HELDOUT_ALPHAS ${GEN_FLAGS[$HELDOUT_RUN]} > "${h%.json}.log" 2>&1
  [[ -f "${h%.json}$ART_TOX_STEM.json" ]] || "$PYTHON" eval_toxicity.py --input_json "$h" --scorer bilstm,profanity-check >> "${h%.json}.log" 2>&1
  [[ -f "${h%.json}$ART_PPL_STEM.json" ]] || "$PYTHON" eval_ppl.py --model_path "$DEFAULT_TARGET" --input_json "$h" --device cpu >> "${h%.json}.log" 2>&1
  [[ -f "${h%.json}${ART_PPL_STEM}_smollm2.json" ]] || "$PYTHON" eval_ppl.py --model_path smollm2-135m --input_json "$h" --device cpu --output_tag smollm2 >> "${h%.json}.log" 2>&1
fi

# the mechanism of every run (bench/direction.py on the teacher-forced dev states; steering and the default included)
PAIRS=()
read -r DEFAULT_POOL DEFAULT_CW < <("$PYTHON" -c 'from detox_pa.generation import GenerateArguments as G
from detox_pa.methods import DEFAULT_CONTEXT_WEIGHT as W
print(G.__dataclass_fields__["pool"].default, W)')
for run in "${RUNS[@]}"; do
  [[ "$run" == default_s42 ]] && continue
  pool=$DEFAULT_POOL cw=$DEFAULT_CW
  [[ "${GEN_FLAGS[$run]}" =~ --pool\ ([a-z]+) ]] && pool=${BASH_REMATCH[1]}
  [[ "${GEN_FLAGS[$run]}" =~ --context_weight\ ([0-9.]+) ]] && cw=${BASH_REMATCH[1]}
  # the pool and context weight each run decodes with
  PAIRS+=(--pair "$run=${ALIGN_OF[$run]}" --pool "$run=$pool" --context_weight "$run=$cw")
done
# (re)measured when a run is missing from it
if [[ ! -f "$ARMS_DIR/direction.json" ]] || ! "$PYTHON" -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
sys.exit(any(r not in rows for r in sys.argv[2:] if r != "default_s42"))' "$ARMS_DIR/direction.json" "${RUNS[@]}"; then
  echo "mechanism (bench/direction.py)"
  "$PYTHON" bench/direction.py --res_dir "$OUT_DIR/results" --out_dir "$OUT_DIR" "${PAIRS[@]}" \
    --output "$ARMS_DIR/direction.json" > "$ARMS_DIR/direction.log" 2>&1
fi

{
  echo "# Design arms of step 2 (made by bench/arms.sh, $(date -u +%Y-%m-%d))"
  echo
  echo "Each arm is the default recipe with the settings below changed ($ARMS_FILE); every run is swept on the 160 dev"
  echo "prompts (rtp:dev), greedy 10 tokens, top-5: mean BiLSTM toxicity (change vs alpha 0) and token-weighted PPL ratio"
  echo "under Gemma; the rule column is the dev alpha rule at PPL <= ${PPL_CAP}x; the last column is the paired bootstrap"
  echo "difference of mean toxicity against the default at seed 42, alpha 4 (95% interval; negative = less toxic)."
  echo
  echo "| arm | settings |"
  echo "|---|---|"
  for arm in "${ORDER[@]}"; do echo "| $arm | ${SETTINGS[$arm]:-(the default recipe)} |"; done
  echo
  "$PYTHON" bench/seeds.py table "$ARMS_DIR" "${RUNS[@]}" --ppl_cap "$PPL_CAP" --ref default_s42
  if [[ -f "$OUT_DIR/results/dev_steer$ART_TOX_STEM.json" ]]; then
    echo
    echo "The reference to beat, activation steering on the same dev prompts (bench/results.sh's dev_steer; alpha = s):"
    echo
    "$PYTHON" bench/seeds.py table "$OUT_DIR/results" steer --ppl_cap "$PPL_CAP" --at 0.3
  fi
  echo
  echo "## At the alpha the dev rule picks (PPL <= ${PPL_CAP}x): where each run pays its PPL (bench/seeds.py cost: prompts"
  echo "where the target alone wrote a clean continuation, BiLSTM < 0.1, so that every change there is pure cost; in"
  echo "between; a toxic one, >= 0.5), and what stays toxic (BiLSTM >= 0.5, of 42 with the target alone: with a word of"
  echo "the word list step 2's token labels use, and without)"
  echo
  echo "| run | alpha | PPL ratio: clean | between | toxic | still toxic: with a listed word | without |"
  echo "|---|---|---|---|---|---|---|"
  for run in "${RUNS[@]}"; do
    g="$ARMS_DIR/dev_$run.json"
    a=$("$PYTHON" bench/seeds.py pick "$g" --ppl_cap "$PPL_CAP")
    c=$("$PYTHON" bench/seeds.py cost "$g" | awk -F'|' -v a=" $a " '$2 == a {print $3 "|" $4 "|" $5}')
    r=$("$PYTHON" bench/seeds.py residual "$g" | awk -F'|' -v a=" $a " '$2 == a {print $4 "|" $5}')
    echo "| $run | $a |${c:- - | - | - }|${r:- 0 | 0 }|"
  done
  if [[ -n "$HELDOUT_RUN" ]]; then
    echo
    echo "## Held out: $HELDOUT_RUN (chosen on dev) on the 303 rtp:eval prompts, against bench/results.sh's held-out runs"
    echo
    "$PYTHON" bench/seeds.py heldout "$ARMS_DIR/heldout_$HELDOUT_RUN.json" "$OUT_DIR/results" $HELDOUT_PAIRS
  fi
  echo
  echo "## Mechanism on teacher-forced dev states (bench/direction.py; 24k states of 1,278 sampled dev continuations)"
  echo
  echo "Whole continuations: over the (clean, toxic) pairs of sampled continuations of one dev prompt, how often the"
  echo "offset favours the clean one (0.5 = no preference; text labels by profanity-check, the data filter, and by the"
  echo "BiLSTM); tokens: AUC and d' of the offset ranking word-list candidates below the others."
  echo
  "$PYTHON" - "$ARMS_DIR/direction.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("| offset | clean favoured (profanity-check) | d' | clean favoured (BiLSTM) | d' | word list: AUC | d' |")
print("|---|---|---|---|---|---|---|")
for name, by in d["rows"].items():
    pc = next((m for k, m in by.items() if k.startswith("continuation pairs [profanity")), {})
    bl = next((m for k, m in by.items() if k.startswith("continuation pairs [BiLSTM")), {})
    wl = by.get("word list", {})
    cells = [pc.get("pair_acc"), pc.get("d_prime"), bl.get("pair_acc"), bl.get("d_prime"), wl.get("auc"), wl.get("d_prime")]
    print(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
PY
} > "$ARMS_DIR/arms.md"
cp "$ARMS_DIR/arms.md" docs/ARMS.md
cat docs/ARMS.md
