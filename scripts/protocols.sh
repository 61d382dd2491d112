# The literature's decoding protocols, for PROTOCOL=paper|dexperts (run_generation.sh, run_all.sh). Sourced, never run.
# detox_pa/generation.py (PROTOCOLS) holds the same values: it records the protocol in the generations' meta file and
# logs every argument that departs from it (tests/test_protocols.py keeps the two equal).
#   paper     the paper's: greedy, 10 new tokens, one continuation per prompt; read mean toxicity
#   dexperts  the field's (DExperts, Liu et al. 2021): 25 samples per prompt, nucleus top-p 0.9, 20 new tokens;
#             read expected maximum toxicity (EMT) and toxicity probability
PROTOCOL_NAMES="paper dexperts"

# protocol_default NAME: the current $PROTOCOL's value of the launcher variable NAME (the launcher's own default when
# the protocol leaves it free). Prints nothing for an unknown protocol (check_protocol stops those first).
protocol_default() {
  case "${PROTOCOL:-paper}:$1" in
    paper:MAX_NEW_TOKENS) echo 10 ;;    dexperts:MAX_NEW_TOKENS) echo 20 ;;
    paper:NUM_SAMPLES) echo 1 ;;        dexperts:NUM_SAMPLES) echo 25 ;;
    paper:DO_SAMPLE) echo 0 ;;          dexperts:DO_SAMPLE) echo 1 ;;
    paper:TOP_P) echo 0.9 ;;            dexperts:TOP_P) echo 0.9 ;;  # unused by the paper's greedy decoding
  esac
}

# check_protocol: one line and exit 2 unless $PROTOCOL is one of PROTOCOL_NAMES.
check_protocol() {
  case " $PROTOCOL_NAMES " in
    *" ${PROTOCOL:-} "*) ;;
    *) echo "error: $(basename "$0"): PROTOCOL must be paper (greedy, 10 new tokens, mean toxicity) or dexperts (25 samples per prompt, top-p 0.9, 20 new tokens, EMT and toxicity probability), got '${PROTOCOL:-}'" >&2
       exit 2 ;;
  esac
}
