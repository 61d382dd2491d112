"""Teacher pretraining: exact completion mask, truncation, the training loop, DeepSpeed, resume, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from detox_pa import pretraining
from detox_pa.cli import run
from detox_pa.io import sha256_file
from detox_pa.artifacts import TEACHER_SIDECAR
from detox_pa.completion import (IGNORE_INDEX, CompletionCollator, CompletionLogits, completion_boundary,
                                  encode_pairs, join_prompt_completion)
from tests.tiny import WORDS, make_model, make_model_folder, make_tokenizer

REPO = Path(__file__).resolve().parent.parent
BASE_LAYERS = 4


# ------------------------------------------------------------------------------------ fixtures


def write_tsv(path: Path, rows, header=("vanilla", "adversarial", "completion")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def training_rows(n: int = 48):
    """Prompts vary, completions come from a tiny set: a tiny model learns them in a few steps."""
    comps = ["the kind friend is happy today.", "hello nice world, good morning.", "a calm quiet river."]
    rows = []
    for i in range(n):
        prompt = " ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3 + i % 5)).capitalize()
        adversarial = (prompt + " and then") if i % 4 == 0 else ""
        rows.append((prompt, adversarial, comps[i % 3]))
    rows.append(("A prompt with no completion", "", ""))  # skipped and counted
    return rows


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    base = make_model_folder(root, "llama", arch="llama", kind="sp", layers=BASE_LAYERS)
    data = write_tsv(root / "data.tsv", training_rows())
    return {"root": root, "base": base, "data": data}


def cli(argv, capsys):
    code = run(pretraining.train_teacher, pretraining.parse_args, [str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")]


def train_argv(work, out, *extra):
    return ["--model_name_or_path", work["base"], "--num_teacher_layers", 2, "--training_data_path", work["data"],
            "--output_dir", out, "--per_device_train_batch_size", 8, "--learning_rate", 5e-3, "--logging_steps", 2,
            "--save_steps", 2, "--probe_rows", 16, "--disable_tqdm", "true", "--seed", 0, *extra]


@pytest.fixture
def no_model_load(monkeypatch):
    """If any model were loaded the CLI would exit 1 (unexpected error), not 2."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)


# ---------------------------------------------------------------------------------- the mask


def test_join_puts_a_separator_only_where_needed():
    assert join_prompt_completion("Hello", "world") == ("Hello world", 6)
    assert join_prompt_completion("Hello ", "world") == ("Hello world", 6)
    assert join_prompt_completion("Hello", " world") == ("Hello world", 5)
    assert join_prompt_completion("Hello\n", "world") == ("Hello\nworld", 6)
    assert join_prompt_completion("Hello", "world", separator="\n") == ("Hello\nworld", 6)
    with pytest.raises(ValueError):
        join_prompt_completion("Hello", "world", separator="")


@pytest.mark.parametrize("kind", ["sp", "bl"])
@pytest.mark.parametrize("prompt, completion", [
    ("Hello world", "the good cat is happy."),    # separator added
    ("Hello world ", "the good cat is happy."),   # prompt ends with a space
    ("Hello world", " the good cat is happy."),   # completion starts with a space
])
def test_mask_boundary_is_exact_token_by_token(kind, prompt, completion):
    tok = make_tokenizer(kind)
    (ex,), stats = encode_pairs(tok, [(prompt, completion)], progress=False)
    ids, labels = ex["input_ids"], ex["labels"]
    b = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    # labels are a suffix of the ids: nothing masked after the boundary, nothing trained before it
    assert labels[:b] == [IGNORE_INDEX] * b and labels[b:] == ids[b:]
    # masked part == the prompt tokenised on its own (BOS included when the tokenizer adds one) ...
    prompt_ids = tok(prompt.rstrip())["input_ids"]
    assert ids[:b] == prompt_ids
    # ... and the trained part == " " + completion tokenised on its own: every completion token is trained
    comp_ids = tok(" " + completion.lstrip(), add_special_tokens=False)["input_ids"]
    assert ids[b:] == comp_ids
    tokens = tok.convert_ids_to_tokens(ids)
    if kind == "sp":  # BOS is added, masked, and counted in the prompt length (the paper's off-by-one)
        assert tokens[0] == "<bos>" and labels[0] == IGNORE_INDEX
        assert b == len(tok(prompt.rstrip(), add_special_tokens=False)["input_ids"]) + 1
        assert tokens[b].startswith("▁")
    else:
        assert tok.bos_token_id not in ids
        assert b == len(tok(prompt.rstrip(), add_special_tokens=False)["input_ids"])
        assert tokens[b].startswith("Ġ")
    assert labels[b - 1] == IGNORE_INDEX and labels[b] == ids[b]  # last prompt token masked, first completion trained
    assert tok.decode(ids[b:]).strip() == completion.strip()
    assert stats.tokens_trained == len(ids) - b and stats.rows_used == 1


def test_trailing_eos_is_trained_whether_added_by_the_tokenizer_or_appended():
    from tokenizers import processors

    tok = make_tokenizer("sp")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", tok.bos_token_id), ("<eos>", tok.eos_token_id)])
    (ex,), _ = encode_pairs(tok, [("Hello world", "the cat.")], progress=False)
    assert ex["input_ids"][0] == tok.bos_token_id and ex["labels"][0] == IGNORE_INDEX
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][-1] == tok.eos_token_id
    assert ex["input_ids"].count(tok.eos_token_id) == 1

    bl = make_tokenizer("bl")
    (plain,), _ = encode_pairs(bl, [("Hello world", "the cat.")], progress=False)
    (eos,), _ = encode_pairs(bl, [("Hello world", "the cat.")], append_eos=True, progress=False)
    assert eos["input_ids"] == plain["input_ids"] + [bl.eos_token_id]
    assert eos["labels"] == plain["labels"] + [bl.eos_token_id]


def test_boundary_ignores_special_tokens_and_tokens_ending_at_the_start():
    offsets = [(0, 0), (0, 5), (5, 6), (6, 11)]
    assert completion_boundary(offsets, [1, 0, 0, 0], 6) == 3  # (5, 6) ends at the start: prompt side
    assert completion_boundary(offsets, [1, 0, 0, 0], 5) == 2
    assert completion_boundary(offsets, [1, 0, 0, 0], 11) == 4  # nothing past the start


def test_truncation_keeps_bos_the_prompt_tail_and_completion_tokens():
    tok = make_tokenizer("sp")
    long_prompt = " ".join(WORDS[:40])
    long_comp = " ".join(WORDS[40:70])
    short_prompt = "Hello world"
    exs, stats = encode_pairs(tok, [(long_prompt, long_comp), (short_prompt, long_comp), ("Hi", "the cat.")],
                              max_length=16, progress=False)
    assert stats.rows_truncated == 2 and stats.rows_used == 3
    full_prompt = tok(long_prompt)["input_ids"]
    full_comp = tok(" " + long_comp, add_special_tokens=False)["input_ids"]

    ids, labels = exs[0]["input_ids"], exs[0]["labels"]
    b = labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))
    assert len(ids) == 16 and ids[0] == tok.bos_token_id
    assert ids[1:b] == full_prompt[-(b - 1):]          # the prompt's tail, right before the completion
    assert ids[b:] == full_comp[:16 - b] and 16 - b == 8  # the completion's head keeps half the budget

    ids, labels = exs[1]["input_ids"], exs[1]["labels"]
    p = tok(short_prompt)["input_ids"]
    assert len(ids) == 16 and ids[:len(p)] == p        # a short prompt is kept whole
    assert ids[len(p):] == full_comp[:16 - len(p)] and labels[len(p):] == ids[len(p):]
    assert len(exs[2]["input_ids"]) < 16                # short rows untouched


def test_collator_pads_right_and_masks_pads():
    col = CompletionCollator(pad_token_id=0)
    batch = col([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 6], "labels": [-100, 6]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 6, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("arch, kind", [("llama", "sp"), ("gpt2", "bl"), ("gemma3", "sp")])
def test_completion_only_logits_give_the_model_own_loss(arch, kind):
    tok = make_tokenizer(kind)
    model = make_model(arch, vocab_size=len(tok), tokenizer=tok)
    exs, _ = encode_pairs(tok, [("Hello world", "the cat is kind."), ("A long day", "good night.")], progress=False)
    batch = CompletionCollator(tok.pad_token_id)(exs)
    with torch.no_grad():
        reference = model(**batch).loss
        with CompletionLogits(model, batch["labels"]) as cl:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert cl.fired and logits.shape == (1, n, model.config.vocab_size)
    assert torch.allclose(cl.loss(logits), reference, atol=1e-5)


# ---------------------------------------------------------------------------------- bad input


def test_missing_data_file(work, capsys, no_model_load):
    code, errors = cli(["--training_data_path", work["root"] / "nope.tsv", "--model_name_or_path", work["base"]],
                       capsys)
    assert code == 2 and len(errors) == 1
    assert "nope.tsv" in errors[0] and "does not exist" in errors[0]


def test_tsv_without_the_needed_columns_names_the_columns_found(work, capsys, no_model_load, tmp_path):
    bad = write_tsv(tmp_path / "bad.tsv", [("hi", "there")], header=("prompt", "response"))
    code, errors = cli(["--training_data_path", bad, "--model_name_or_path", work["base"],
                        "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and len(errors) == 1
    assert "bad.tsv" in errors[0] and "completion" in errors[0] and "['prompt', 'response']" in errors[0]


@pytest.mark.parametrize("rows", [[], [("a prompt", "", ""), ("another", "", "  ")]], ids=["header-only", "all-empty"])
def test_empty_data(work, capsys, no_model_load, tmp_path, rows):
    empty = write_tsv(tmp_path / "empty.tsv", rows)
    code, errors = cli(["--training_data_path", empty, "--model_name_or_path", work["base"],
                        "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and len(errors) == 1
    assert "empty.tsv" in errors[0] and "no usable rows" in errors[0]


@pytest.mark.parametrize("n, expected", [(0, "at least 1"), (BASE_LAYERS + 1, "has 4 decoder layers")])
def test_bad_layer_count(work, capsys, no_model_load, tmp_path, n, expected):
    code, errors = cli(["--training_data_path", work["data"], "--model_name_or_path", work["base"],
                        "--num_teacher_layers", n, "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0]
    if n:
        assert str(work["base"]) in errors[0] and "config.json" in errors[0]


def test_missing_deepspeed_config(work, capsys, no_model_load, tmp_path, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": "29555"}[k])
    code, errors = cli(["--training_data_path", work["data"], "--deepspeed", tmp_path / "ds.json", "--use_cpu"], capsys)
    assert code == 2 and len(errors) == 1 and "ds.json" in errors[0] and "does not exist" in errors[0]


# ------------------------------------------------------------------------- training and resume


def test_loss_goes_down_and_a_loadable_teacher_is_saved(work, capsys, tmp_path):
    out = tmp_path / "teacher"
    code, errors = cli(train_argv(work, out, "--num_train_epochs", 3), capsys)
    assert code == 0, errors
    side = json.loads((out / TEACHER_SIDECAR).read_text())
    loss = side["loss"]
    assert loss["probe_after"] < loss["probe_before"] - 0.5
    assert loss["last_logged"] < loss["first_logged"] and loss["first_logged_step"] == 1
    assert loss["last_logged_step"] == side["training"]["global_step"] == 3 * 6  # 48 rows / 8 per step, 3 epochs
    d = side["data"]
    assert (d["rows_read"], d["rows_used"], d["skipped_empty_completion"]) == (49, 48, 1)
    assert d["sha256"] == sha256_file(work["data"])
    assert side["layers_kept"] == 2 and side["base_layers"] == BASE_LAYERS
    assert side["tokens"]["trained"] < side["tokens"]["total"] and side["training"]["tokens_per_second"] > 0
    assert side["arguments"]["num_teacher_layers"] == 2 and side["seed"] == 0
    import transformers

    assert side["versions"]["transformers"] == transformers.__version__

    teacher = AutoModelForCausalLM.from_pretrained(out)
    assert teacher.config.num_hidden_layers == 2
    assert sum(p.numel() for p in teacher.parameters()) == side["parameters"]
    assert not list(out.glob(".final.tmp"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).bos_token == "<bos>"


def test_frozen_embeddings_and_head_do_not_change_jsonl_data(work, capsys, tmp_path):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": a or v, "completion": c}) + "\n" for v, a, c in training_rows()))
    out = tmp_path / "frozen"
    argv = train_argv(work, out, "--max_steps", 3, "--freeze_embeddings", "true")
    argv[argv.index("--training_data_path") + 1] = jsonl
    code, errors = cli(argv, capsys)
    assert code == 0, errors
    base = AutoModelForCausalLM.from_pretrained(work["base"])
    teacher = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(teacher.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert not torch.equal(teacher.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    side = json.loads((out / TEACHER_SIDECAR).read_text())
    assert side["frozen"] == {"embeddings": True, "lm_head": True, "tied": True}
    assert side["trainable_parameters"] == side["parameters"] - base.get_input_embeddings().weight.numel()
    assert side["data"]["sha256"] == sha256_file(jsonl) and side["data"]["skipped_empty_completion"] == 1


def test_resume_continues_from_the_checkpoint_step(work, capsys, tmp_path):
    out = tmp_path / "resume"
    code, errors = cli(train_argv(work, out, "--max_steps", 4), capsys)
    assert code == 0, errors
    assert (out / "checkpoint-4").is_dir()
    # a second run into the same folder is refused unless resuming or overwriting
    code, errors = cli(train_argv(work, out, "--max_steps", 6), capsys)
    assert code == 2 and len(errors) == 1 and "already holds" in errors[0] and str(out) in errors[0]

    code, errors = cli(train_argv(work, out, "--max_steps", 6, "--resume_from_checkpoint", "last"), capsys)
    assert code == 0, errors
    side = json.loads((out / TEACHER_SIDECAR).read_text())
    assert side["training"]["resumed_from"].endswith("checkpoint-4")
    assert side["training"]["start_step"] == 4 and side["training"]["global_step"] == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps[0] == 1 and steps[-1] == 6  # the history of the first run carried over
    assert side["tokens"]["seen_total"] > side["tokens"]["seen_this_run"] > 0


# ------------------------------------------------------------------------------ DeepSpeed, CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_zero2_on_cpu_in_one_process(work, tmp_path):
    pytest.importorskip("deepspeed")
    cfg = json.loads((REPO / "ds_config.json").read_text())
    assert cfg["zero_optimization"]["stage"] == 0 and "optimizer" not in cfg
    assert cfg["train_micro_batch_size_per_gpu"] == "auto" and cfg["bf16"]["enabled"] == "auto"
    cfg["zero_optimization"]["stage"] = 2
    ds = tmp_path / "ds2.json"
    ds.write_text(json.dumps(cfg))
    out = tmp_path / "ds_teacher"
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), PYTHONPATH=str(REPO))
    argv = [sys.executable, str(REPO / "pretrain.py"), *map(str, train_argv(work, out, "--max_steps", 2)),
            "--deepspeed", str(ds), "--use_cpu"]
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # a DeepSpeed checkpoint
    side = json.loads((out / TEACHER_SIDECAR).read_text())
    assert side["training"]["deepspeed"] and side["training"]["zero_stage"] == 2
    assert side["training"]["global_step"] == 2
    teacher = AutoModelForCausalLM.from_pretrained(out)
    assert teacher.config.num_hidden_layers == 2
    base = AutoModelForCausalLM.from_pretrained(work["base"])
    assert not torch.equal(teacher.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


# ----------------------------------------------------------------------------------- launcher


def _stub_python(tmp_path: Path) -> Path:
    """A PYTHON that records its command line and environment (python -c / - still run for real)."""
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
if [[ "${{1:-}}" == "-c" || "${{1:-}}" == "-" ]]; then exec {sys.executable} "$@"; fi
echo "ARGS $*"
echo "ENV RANK=${{RANK:-}} WORLD_SIZE=${{WORLD_SIZE:-}} MASTER_PORT=${{MASTER_PORT:-}}"
""")
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize("mode", ["cpu", "ds_on_cpu", "gpus"])
def test_launcher_picks_the_launch_mode(tmp_path, mode):
    assert subprocess.run(["bash", "-n", str(REPO / "run_pretrain.sh")]).returncode == 0
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK")}
    env.update(PYTHON=str(_stub_python(tmp_path)), PRETRAIN_OUTPUT_DIR=str(out), ZERO_STAGE="2", RESUME="1",
               NUM_GPUS="2" if mode == "gpus" else "0", DS_ON_CPU="1" if mode == "ds_on_cpu" else "0")
    proc = subprocess.run(["bash", str(REPO / "run_pretrain.sh"), "--max_steps", "7"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = next(line for line in proc.stdout.splitlines() if line.startswith("ARGS "))
    envline = next(line for line in proc.stdout.splitlines() if line.startswith("ENV "))
    assert "pretrain.py" in args and args.endswith("--max_steps 7")
    assert "--num_teacher_layers 3" in args and "--model_name_or_path smollm2-135m" in args
    assert "--resume_from_checkpoint last" in args
    ds_copy = out / "ds_config.zero2.json"
    if mode == "cpu":
        assert "--deepspeed" not in args and "deepspeed.launcher" not in args
        assert envline == "ENV RANK= WORLD_SIZE= MASTER_PORT="
    else:
        assert f"--deepspeed {ds_copy}" in args
        assert json.loads(ds_copy.read_text())["zero_optimization"]["stage"] == 2
        assert json.loads((REPO / "ds_config.json").read_text())["zero_optimization"]["stage"] == 0
    if mode == "ds_on_cpu":
        assert "--use_cpu" in args and "RANK=0 WORLD_SIZE=1 MASTER_PORT=" in envline
        assert envline.split("MASTER_PORT=")[1].isdigit()
    if mode == "gpus":
        assert args.startswith("ARGS -m deepspeed.launcher.runner") and "--bf16" in args
        assert "--use_cpu" not in args
    for script in ("pretrain.py", "ds_config.json", "scripts/common.sh"):
        assert (REPO / script).exists()
    shutil.rmtree(out, ignore_errors=True)


def test_launcher_trains_expert_and_anti_expert_from_one_recipe(work, tmp_path):
    """TEACHERS=both (the default): the same recipe on the clean and on the toxic data, into two folders, with
    the output layer frozen by default so both teachers share the base's one (what --method diff needs)."""
    toxic = write_tsv(tmp_path / "toxic.tsv", [(p, a, "stupid idiot shut up, you fool.") for p, a, _ in training_rows(24)])
    env = dict(os.environ, PYTHON=sys.executable, MODEL_NAME_OR_PATH=str(work["base"]), NUM_TEACHER_LAYERS="2",
               TRAINING_DATA_PATH=str(work["data"]), ANTI_TRAINING_DATA_PATH=str(toxic),
               PRETRAIN_OUTPUT_DIR=str(tmp_path / "e"), PRETRAIN_ANTI_OUTPUT_DIR=str(tmp_path / "a"), MAX_STEPS="3", PER_DEVICE_TRAIN_BATCH_SIZE="8", NUM_GPUS="0",
               HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", str(REPO / "run_pretrain.sh"), "--disable_tqdm", "true"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sides = {n: json.loads((tmp_path / n / "detox_pa_teacher.json").read_text()) for n in ("e", "a")}
    assert sides["e"]["data"]["sha256"] == sha256_file(work["data"])
    assert sides["a"]["data"]["sha256"] == sha256_file(toxic)
    assert all(s["layers_kept"] == 2 and s["training"]["global_step"] == 3 for s in sides.values())
    assert sides["e"]["arguments"]["learning_rate"] == sides["a"]["arguments"]["learning_rate"]
    e, a = (AutoModelForCausalLM.from_pretrained(tmp_path / n) for n in ("e", "a"))
    base = AutoModelForCausalLM.from_pretrained(work["base"])
    assert torch.equal(e.get_output_embeddings().weight, a.get_output_embeddings().weight)
    assert torch.equal(e.get_output_embeddings().weight, base.get_output_embeddings().weight)
    assert not torch.equal(e.model.layers[0].mlp.up_proj.weight, a.model.layers[0].mlp.up_proj.weight)
    # the same folder for both is refused before anything runs; an unknown TEACHERS too
    for bad, msg in (({"PRETRAIN_ANTI_OUTPUT_DIR": str(tmp_path / "e")}, "are the same folder"),
                     ({"TEACHERS": "three"}, "TEACHERS must be")):
        p = subprocess.run(["bash", str(REPO / "run_pretrain.sh")], env={**env, **bad}, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and msg in p.stderr


def test_launcher_teachers_switch_on_gpus(tmp_path):
    """With GPUs each teacher is its own DeepSpeed launch; TEACHERS=expert (the paper) trains one."""
    base_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK")}
    base_env.update(PYTHON=str(_stub_python(tmp_path)), PRETRAIN_OUTPUT_DIR=str(tmp_path / "e"),
                    PRETRAIN_ANTI_OUTPUT_DIR=str(tmp_path / "a"),
                    NUM_GPUS="2")
    for teachers, outs in (("both", ["e", "a"]), ("expert", ["e"]), ("anti", ["a"])):
        proc = subprocess.run(["bash", str(REPO / "run_pretrain.sh")], env={**base_env, "TEACHERS": teachers},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        calls = [line for line in proc.stdout.splitlines() if line.startswith("ARGS ")]
        assert [c.split("--output_dir ")[1].split()[0] for c in calls] == [str(tmp_path / o) for o in outs]
        assert all("deepspeed.launcher.runner" in c and "--freeze_embeddings true" in c for c in calls)
        data = [c.split("--training_data_path ")[1].split()[0] for c in calls]
        assert [Path(d).name for d in data] == [{"e": "teacher_data.tsv", "a": "teacher_data_toxic.tsv"}[o] for o in outs]


def test_config_file_values_are_read_where_they_stand(work, tmp_path, capsys):
    """--config FILE (JSON or YAML): its values replace the flags before it, and flags after it win."""
    import yaml

    (tmp_path / "c.json").write_text(json.dumps({"learning_rate": 0.02, "num_teacher_layers": 1, "freeze_embeddings": True}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"learning_rate": 0.03, "seed": 7}))
    a = pretraining.parse_args([str(x) for x in train_argv(work, tmp_path / "o", "--config", tmp_path / "c.json")])
    assert a.training.learning_rate == 0.02 and a.model.num_teacher_layers == 1 and a.model.freeze_embeddings is True
    b = pretraining.parse_args(["--config", str(tmp_path / "c.yaml")] + [str(x) for x in train_argv(work, tmp_path / "o")])
    assert b.training.learning_rate == 5e-3 and b.training.seed == 0  # the flags after the file win
    c = pretraining.parse_args([str(x) for x in train_argv(work, tmp_path / "o")] + [f"--config={tmp_path / 'c.yaml'}"])
    assert c.training.learning_rate == 0.03 and c.training.seed == 7
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rat": 1}))
    code, err = cli(train_argv(work, tmp_path / "o", "--config", tmp_path / "bad.json"), capsys)
    assert code == 2 and len(err) == 1 and "unknown argument 'learning_rat'" in err[0] and "bad.json" in err[0]
    code, err = cli(train_argv(work, tmp_path / "o", "--config", tmp_path / "missing.yaml"), capsys)
    assert code == 2 and "no such file" in err[0]


def test_report_to_tensorboard_writes_event_files(work, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (REPORT_TO=tensorboard needs it)")
    out = tmp_path / "tb"
    code, err = cli(train_argv(work, out, "--max_steps", 2, "--report_to", "tensorboard"), capsys)
    assert code == 0, err
    events = list((out / "runs").rglob("events.out.tfevents.*"))  # transformers' default: <output_dir>/runs/<time>
    assert events and events[0].stat().st_size > 0
