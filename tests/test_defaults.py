"""One source of truth for the recipe (issue 25, item 2): the scripts' dataclass defaults ARE the recommended
recipe, and each launcher's editable block restates them. A value that differs must say why in the launcher,
with a comment ``differs from <script> on purpose: <why>`` on its line or directly above it.

Data-driven: every ``NAME=${NAME:-value}`` line of a step launcher is evaluated by bash (with the launchers'
own scripts/common.sh, OUT_DIR=outputs so the default artifacts read as the scripts spell them) and compared
with the dataclass field the table below names. A new editable variable must be added to the table (or to
LAUNCHER_ONLY, with its reason), so a knob cannot slip in unchecked. Changing the recipe is a one-line change
in the dataclass and one in the launcher."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from pathlib import Path

import pytest

from detox_pa.alignment import AlignArguments
from detox_pa.generation import GenerateArguments
from detox_pa.ppl import PPLArguments
from detox_pa.pretraining import DataArguments, ModelArguments, TeacherTrainingArguments
from detox_pa.toxicity import ToxicityArguments

REPO = Path(__file__).resolve().parents[1]

G, A, P, T = GenerateArguments, AlignArguments, PPLArguments, ToxicityArguments
M, D, TR = ModelArguments, DataArguments, TeacherTrainingArguments

# launcher -> (the script it runs, {editable variable: (dataclass, field)})
TABLE = {
    "run_generation.sh": ("generate.py", {
        "TEACHER_MODEL": (G, "teacher_model"), "TARGET_MODEL": (G, "target_model"), "MATRIX_A": (G, "matrix_A"),
        "DEVICE": (G, "device"), "OUTPUT_PATH": (G, "output_path"), "DATA_PATH": (G, "data_path"),
        "METHOD": (G, "method"), "ALPHAS": (G, "alphas"), "ANTI_TEACHER_MODEL": (G, "anti_teacher_model"),
        "DIFF_SPACE": (G, "diff_space"), "TOP_K": (G, "top_k"), "GATE": (G, "gate"), "DRAFT_GATE": (G, "draft_gate"), "POOL": (G, "pool"),
        "CONTEXT_WEIGHT": (G, "context_weight"), "PROMOTE_WEIGHT": (G, "promote_weight"), "DEMOTE_Z": (G, "demote_z"),
        "STEER_VECTOR": (G, "steer_vector"), "MAX_NEW_TOKENS": (G, "max_new_tokens"),
        "GEN_BATCH_SIZE": (G, "batch_size"), "NUM_SAMPLES": (G, "num_samples"), "DO_SAMPLE": (G, "do_sample"),
        "TOP_P": (G, "top_p"), "GEN_TEMPERATURE": (G, "temperature"), "GEN_SEED": (G, "seed"),
        "GEN_DTYPE": (G, "dtype"), "TEACHER_DTYPE": (G, "teacher_dtype"), "NORM": (G, "norm"), "MAX_PROMPTS": (G, "max_prompts"), "SKIP_PROMPTS": (G, "skip_prompts"),
        "PROMPT_FIELD": (G, "prompt_field"), "PROMPT_SPLIT": (G, "prompt_split"),
        "PROMPT_FILTER": (G, "prompt_filter"), "GEN_OVERWRITE": (G, "overwrite"), "PROTOCOL": (G, "protocol")}),
    "run_alignment.sh": ("align.py", {
        "MODEL1_NAME": (A, "model1_name"), "MODEL2_NAME": (A, "model2_name"), "ALIGN_OUTPUT_DIR": (A, "output_dir"),
        "OBJECTIVE": (A, "objective"), "TEXT_PATH": (A, "text_path"), "TEXT_ROWS": (A, "text_rows"),
        "REFINE_STEPS": (A, "refine_steps"), "REFINE_LR": (A, "refine_lr"), "ALIGN_BATCH_SIZE": (A, "batch_size"),
        "EPOCHS": (A, "epochs"), "LR": (A, "lr"), "N_NEGATIVES": (A, "n_negatives"), "ALIGN_SEED": (A, "seed"),
        "INIT": (A, "init"), "EMBEDDING_SPACE": (A, "embedding_space"), "ALIGN_TEMPERATURE": (A, "temperature"),
        "ALIGN_OVERWRITE": (A, "overwrite"), "TUNE_LABEL_TEXTS": (A, "tune_label_texts"),
        "TUNE_PAIR": (A, "tune_pair"), "TUNE_TEXT_PATH": (A, "tune_text_path"), "TUNE_TEXT_ROWS": (A, "tune_text_rows"), "TUNE_TOP_K": (A, "tune_top_k"),
        "TUNE_ALPHA": (A, "tune_alpha"), "TUNE_MU": (A, "tune_mu"), "TUNE_LR": (A, "tune_lr"),
        "TUNE_LR_A": (A, "tune_lr_A"), "TUNE_EPOCHS": (A, "tune_epochs"), "TUNE_BATCH_TEXTS": (A, "tune_batch_texts"),
        "TUNE_LABEL_SCORER": (A, "tune_label_scorer"), "TUNE_HINGE_WEIGHT": (A, "tune_hinge_weight"),
        "TUNE_HINGE_ALPHA": (A, "tune_hinge_alpha"), "TUNE_HINGE_MARGIN": (A, "tune_hinge_margin"),
        "TUNE_HINGE_TOP_K": (A, "tune_hinge_top_k"), "TUNE_UL_WEIGHT": (A, "tune_ul_weight"),
        "TUNE_CONTRAST_WEIGHT": (A, "tune_contrast_weight"), "TUNE_CONTRAST_ALPHA": (A, "tune_contrast_alpha"),
        "TUNE_CONTRAST_BETA": (A, "tune_contrast_beta"), "TUNE_PROBE_QUANTILE": (A, "tune_probe_quantile"),
        "TUNE_POOL": (A, "tune_pool"), "TUNE_ADAM": (A, "tune_adam")}),
    "run_pretrain.sh": ("pretrain.py", {
        "MODEL_NAME_OR_PATH": (M, "model_name_or_path"), "TRAINING_DATA_PATH": (D, "training_data_path"),
        "PRETRAIN_OUTPUT_DIR": (TR, "output_dir"), "NUM_TEACHER_LAYERS": (M, "num_teacher_layers"),
        "PER_DEVICE_TRAIN_BATCH_SIZE": (TR, "per_device_train_batch_size"),
        "GRADIENT_ACCUMULATION_STEPS": (TR, "gradient_accumulation_steps"), "LEARNING_RATE": (TR, "learning_rate"),
        "NUM_TRAIN_EPOCHS": (TR, "num_train_epochs"), "MAX_STEPS": (TR, "max_steps"),
        "WARMUP_STEPS": (TR, "warmup_steps"), "PRETRAIN_MAX_LENGTH": (D, "max_length"),
        "FREEZE_EMBEDDINGS": (M, "freeze_embeddings"), "FREEZE_LM_HEAD": (M, "freeze_lm_head"),
        "APPEND_EOS": (D, "append_eos"), "LOGGING_STEPS": (TR, "logging_steps"), "SAVE_STEPS": (TR, "save_steps"),
        "SAVE_TOTAL_LIMIT": (TR, "save_total_limit"), "PRETRAIN_OVERWRITE": (TR, "overwrite_output_dir"),
        "PRETRAIN_SEED": (TR, "seed"), "REPORT_TO": (TR, "report_to")}),
    "run_tox_score.sh": ("eval_toxicity.py", {
        "DEVICE": (T, "device"), "INPUT_JSON": (T, "input_json"), "SCORER": (T, "scorer"),
        "TOX_BATCH_SIZE": (T, "batch_size"), "CHECKPOINT": (T, "checkpoint"), "HF_CONFIG_DIR": (T, "hf_config_dir"),
        "TOX_OUTPUT_TAG": (T, "output_tag")}),
    "run_ppl_score.sh": ("eval_ppl.py", {
        "MODEL_PATH": (P, "model_path"), "INPUT_JSON": (P, "input_json"), "PPL_DEVICE": (P, "device"),
        "PPL_BATCH_SIZE": (P, "batch_size"), "PPL_MAX_LENGTH": (P, "max_length"), "PPL_DTYPE": (P, "dtype"),
        "PPL_OUTPUT_TAG": (P, "output_tag")}),
}

# what the launcher decides and no script argument holds
LAUNCHER_ONLY = {
    "NPROC": "torchrun ranks", "TEACHERS": "which teachers run_pretrain.sh trains",
    "ANTI_TRAINING_DATA_PATH": "the anti-expert's data (a second pretrain.py run)",
    "PRETRAIN_ANTI_OUTPUT_DIR": "the anti-expert's folder (a second pretrain.py run)",
    "ZERO_STAGE": "written into a copy of ds_config.json", "DS_CONFIG": "the DeepSpeed config file",
    "RESUME": "becomes --resume_from_checkpoint last", "DS_ON_CPU": "the launch mode",
    "PRETRAIN_CONFIG": "becomes --config", "ALSO_TEACHER": "the default run's anti-expert, picked up by the launcher",
}

ON_PURPOSE = re.compile(r"differs from (\S+) on purpose: \S")


def editable_lines(text: str) -> list[tuple[str, str, list[str]]]:
    """``(name, line, comments)``: each ``NAME=${...`` line with its own comment and the comment lines directly
    above it."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Z][A-Z0-9_]*)=\$\{", line)
        if not m:
            continue
        above, k = [], i - 1
        while k >= 0 and lines[k].lstrip().startswith("#"):
            above.insert(0, lines[k])
            k -= 1
        own = line[line.index("  #"):] if "  #" in line else ""
        out.append((m.group(1), line, above + ([own] if own else [])))
    return out


def evaluate(text: str, tmp_path: Path) -> dict[str, str]:
    """Each editable variable's value with nothing set in the environment, as bash expands it."""
    entries = editable_lines(text)
    names = [n for n, _, _ in entries]
    script = "\n".join([f'source "{REPO}/scripts/common.sh"', "POS=()", f"unset {' '.join(names)}",
                        *[ln for _, ln, _ in entries],
                        *[f"printf '%s\\t%s\\n' {n} \"${n}\"" for n in names]])
    env = {"PATH": "/usr/bin:/bin", "OUT_DIR": "outputs", "PYTHON": "/nonexistent/python", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(ln.split("\t", 1) for ln in r.stdout.splitlines())


def field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def as_field_value(raw: str, default, name: str):
    """The launcher's string as the value the script would parse from it (comparable with ``default``)."""
    raw = raw.replace(f"{REPO}/", "")  # the launchers' repository files, as the scripts spell them
    if isinstance(default, bool) or name in ("freeze_lm_head",):
        return raw.lower() in ("1", "true")
    if isinstance(default, list):
        return [float(x) for x in raw.split()]
    if default is None and raw == "":
        return None
    if isinstance(default, (int, float)):
        return float(raw)
    return raw


def drifts(launcher: str, text: str, table: dict, values: dict[str, str]) -> list[str]:
    """The editable values that differ from the script's default without a comment saying why, and the editable
    variables nobody classified."""
    script, fields = table[launcher]
    problems = []
    for name, _, comments in editable_lines(text):
        if name not in fields:
            if name not in LAUNCHER_ONLY:
                problems.append(f"{launcher}: {name} is neither mapped to a {script} argument nor launcher-only "
                                f"(add it to tests/test_defaults.py)")
            continue
        cls, fname = fields[name]
        default = field_default(cls, fname)
        if fname == "freeze_lm_head" and default is None:  # None: the same as freeze_embeddings
            default = field_default(cls, "freeze_embeddings")
        got = as_field_value(values[name], default, fname)
        same = got == default or (isinstance(got, float) and isinstance(default, (int, float))
                                  and not isinstance(default, bool) and got == float(default))
        if same:
            continue
        why = [c for c in comments if ON_PURPOSE.search(c) and ON_PURPOSE.search(c).group(1) == script]
        if not why:
            problems.append(f"{launcher}: {name}={values[name]!r} but {script}'s --{fname} defaults to {default!r} "
                            f"(restate the default, or say 'differs from {script} on purpose: <why>')")
    return problems


@pytest.mark.parametrize("launcher", sorted(TABLE))
def test_launchers_restate_the_scripts_defaults(launcher, tmp_path):
    text = (REPO / launcher).read_text()
    assert not drifts(launcher, text, TABLE, evaluate(text, tmp_path))


def test_a_drift_is_caught_unless_the_launcher_says_why(tmp_path):
    base = "#!/usr/bin/env bash\nMETHOD=${METHOD:-diff}\n"
    table = {"x.sh": ("generate.py", {"METHOD": (G, "method"), "TOP_K": (G, "top_k"), "NORM": (G, "norm")})}
    for line, n_problems in [
            ("TOP_K=${TOP_K:-5}", 0),
            ("TOP_K=${TOP_K:-7}", 1),
            ("TOP_K=${TOP_K:-7}  # measured best", 1),
            ("TOP_K=${TOP_K:-7}  # differs from align.py on purpose: another script", 1),
            ("TOP_K=${TOP_K:-7}  # differs from generate.py on purpose: the paper's value, kept", 0),
            ("# differs from generate.py on purpose: the paper's value, kept\nTOP_K=${TOP_K:-7}", 0),
            ("NEW_KNOB=${NEW_KNOB:-1}", 1)]:
        text = base + line + "\n"
        found = drifts("x.sh", text, table, evaluate(text, tmp_path))
        assert len(found) == n_problems, (line, found)


def test_generate_logs_one_line_when_the_matrix_objective_is_not_its_methods(tmp_path, caplog):
    """The paper's fusion on the default run's logits matrix (or diff on a contrastive one) is a legitimate
    ablation, but not what a user calling the script expects: one log line says so."""
    import json

    import torch

    from detox_pa.methods import get_method
    from tests.tiny import make_model_folder

    teacher = make_model_folder(tmp_path, "teacher", "llama", "bl", hidden=24, layers=1)
    target = make_model_folder(tmp_path, "target", "llama", "sp", hidden=32, layers=1)
    (tmp_path / "al").mkdir()
    torch.save({"mapping": torch.zeros(24, 32)}, tmp_path / "al" / "mapping_model.pt")
    side = tmp_path / "al" / "mapping_model.json"

    def notes(method, objective, **kw):
        side.write_text(json.dumps({"objective": objective}))
        args = GenerateArguments(method=method, teacher_model=str(teacher), anti_teacher_model=str(teacher),
                                 target_model=str(target), matrix_A=str(tmp_path / "al" / "mapping_model.pt"), **kw)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            get_method(method)(args).check_inputs(str(target))
        return [r.getMessage() for r in caplog.records if "--objective" in r.getMessage()]

    (line,) = notes("fusion", "logits")
    assert "fitted with --objective logits" in line and "--method fusion --norm layernorm" in line
    assert "designed for an A from --objective contrastive" in line
    assert notes("fusion", "contrastive") == [] and notes("fusion", "contrastive", norm="rescale") == []
    (line,) = notes("diff", "contrastive")
    assert "--method diff" in line and "from --objective logits" in line
    assert notes("diff", "logits") == [] and notes("fusion", "logits", norm="none") == []


def test_the_context_weight_follows_the_matrix_unless_it_is_set(tmp_path, caplog):
    """Unset, --context_weight is 0.25 when the matrix holds its tuned pair's center and 1 (the difference read whole)
    otherwise, said in one log line and recorded; a weight set other than 1 without a center is refused before any
    model loads, naming the file and the fix."""
    import torch

    from detox_pa.errors import InputError
    from detox_pa.methods import DEFAULT_CONTEXT_WEIGHT, DEFAULT_PROMOTE_WEIGHT, get_method
    from tests.tiny import make_model_folder

    teacher = make_model_folder(tmp_path, "teacher", "llama", "bl", hidden=24, layers=1)
    target = make_model_folder(tmp_path, "target", "llama", "sp", hidden=32, layers=1)
    plain, tuned = tmp_path / "plain.pt", tmp_path / "tuned.pt"
    torch.save({"mapping": torch.zeros(24, 32)}, plain)
    torch.save({"mapping": torch.zeros(24, 32), "center": torch.ones(24)}, tuned)

    def resolve(matrix, **kw):
        args = GenerateArguments(method="diff", teacher_model=str(teacher), anti_teacher_model=str(teacher),
                                 target_model=str(target), matrix_A=str(matrix), **kw)
        m = get_method("diff")(args)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            m.check_inputs(str(target))
        return args.context_weight, m, [r.getMessage() for r in caplog.records if "context weight" in r.getMessage()]

    w, m, (line,) = resolve(tuned)
    assert w == DEFAULT_CONTEXT_WEIGHT == 0.25 and torch.equal(m.center, torch.ones(24)) and "center" in line
    assert m.describe()["context_weight"] == 0.25 and m.fingerprint()["context_weight"] == 0.25
    w, m, (line,) = resolve(plain)
    assert w == 1.0 and m.center is None and "read whole" in line and "context_weight" not in m.fingerprint()
    assert resolve(tuned, gate=0.0)[0] == 1.0  # a gate reads the teachers one by one: never shrunk
    assert resolve(tuned, context_weight=0.0)[0] == 0.0 and resolve(plain, context_weight=1.0)[0] == 1.0
    with pytest.raises(InputError, match=r"plain.pt holds no 'center'.*--context_weight 1"):
        resolve(plain, context_weight=0.5)
    # --promote_weight reads its threshold off the center too: loaded even when the difference is read whole, named
    # in the fingerprint (and only then, so earlier journals resume), refused without a center or with a gate
    w, m, _ = resolve(tuned, context_weight=1.0, promote_weight=0.25)
    assert w == 1.0 and torch.equal(m.center, torch.ones(24))
    assert m.fingerprint()["promote_weight"] == 0.25 and m.fingerprint()["demote_z"] == -0.5
    assert m.config(3.0).promote_weight == 0.25 and m.describe()["demote_z"] == -0.5
    assert "promote_weight" not in resolve(tuned, promote_weight=1.0)[1].fingerprint()
    assert "demote_z" not in resolve(tuned, promote_weight=1.0)[1].fingerprint()
    # unset, it follows the matrix as the context weight does: 0.25 with a center (even when the difference is read
    # whole), 1 without one or with a gate; said in one log line and recorded in the fingerprint when not 1
    def promote(matrix, **kw):
        args = GenerateArguments(method="diff", teacher_model=str(teacher), anti_teacher_model=str(teacher),
                                 target_model=str(target), matrix_A=str(matrix), **kw)
        m = get_method("diff")(args)
        m.check()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            m.check_inputs(str(target))
        return args.promote_weight, m, [r.getMessage() for r in caplog.records if "promote weight" in r.getMessage()]

    lam, m, (line,) = promote(tuned)
    assert lam == DEFAULT_PROMOTE_WEIGHT == 0.25 and "center" in line and m.config(3.0).promote_weight == 0.25
    assert m.fingerprint()["promote_weight"] == 0.25 and torch.equal(m.center, torch.ones(24))
    lam, m, _ = promote(tuned, context_weight=1.0)
    assert lam == 0.25 and torch.equal(m.center, torch.ones(24))
    lam, m, (line,) = promote(plain)
    assert lam == 1.0 and "read as it is" in line and "promote_weight" not in m.fingerprint()
    assert promote(tuned, gate=0.0)[0] == 1.0 and promote(tuned, diff_space="logits")[0] == 1.0
    assert promote(tuned, promote_weight=1.0)[0] == 1.0
    with pytest.raises(InputError, match=r"plain.pt holds no 'center'.*--promote_weight 1"):
        resolve(plain, promote_weight=0.0)
    for bad, msg in (({"promote_weight": 0.5, "gate": 0.0}, "no --gate"), ({"promote_weight": -1.0}, ">= 0"),
                     ({"promote_weight": 0.5, "demote_z": float("inf")}, "--demote_z")):
        with pytest.raises(InputError, match=msg):  # checked as the arguments are parsed, before any file is read
            get_method("diff")(GenerateArguments(method="diff", teacher_model=str(teacher), target_model=str(target),
                                                 anti_teacher_model=str(teacher), matrix_A=str(tuned), **bad)).check()
