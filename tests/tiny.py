"""Tiny random models and tokenizers built inside the tests (no hub, no network).

Two tokenizer families, trained in milliseconds on a small synthetic corpus:
- ``sp``: SentencePiece-style (Metaspace ``▁`` word boundaries, BOS added), like Gemma / Llama-2;
- ``bl``: byte-level BPE (``Ġ`` word boundaries, no BOS), like SmolLM2 / GPT-2.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ("the a an of to and in is was for on that with as by at from it he she they we you this be are "
         "not have has had but or will can would said people man woman dog cat house city day night time "
         "good bad big small new old first last long great little own other right left high low young "
         "happy quiet kind calm bright clean fresh warm gentle friendly polite nice lovely sunny river "
         "stupid idiot hate kill damn dirty ugly nasty angry shut up fool crap hell jerk loser trash "
         "walk run talk eat sleep read write think know see look want give take make go come tell ask "
         "hello world weather today morning garden music book friend family school work food water").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(3, 12)
        s = " ".join(rng.choice(WORDS) for _ in range(k))
        out.append(s.capitalize() + rng.choice([".", "!", "?", ",", ""]))
    return out


def make_tokenizer(kind: str = "bl", vocab_size: int = 300, folder: str | Path | None = None):
    """A fast tokenizer with offsets. ``kind`` is ``sp`` (▁, adds BOS) or ``bl`` (Ġ, no BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    if kind == "sp":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        alphabet = sorted(set("".join(corpus())) | set("▁") | set("abcdefghijklmnopqrstuvwxyz.,!?'"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
        tok.train_from_iterator(corpus(), trainer)
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    elif kind == "bl":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus(), trainer)
    else:
        raise ValueError(kind)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    if folder is not None:
        fast.save_pretrained(str(folder))
    return fast


def make_model(arch: str = "llama", vocab_size: int = 300, hidden: int = 32, layers: int = 4, seed: int = 0,
               folder: str | Path | None = None, tokenizer=None, tie: bool = True):
    """A tiny random causal LM: ``llama``, ``gpt2``, ``gemma3`` or ``qwen2``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        from transformers import LlamaConfig as C
        cfg = C(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie)
    elif arch == "qwen2":
        from transformers import Qwen2Config as C
        cfg = C(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie)
    elif arch == "gemma3":
        from transformers import Gemma3TextConfig as C
        cfg = C(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                sliding_window=8, tie_word_embeddings=tie)
    elif arch == "gpt2":
        from transformers import GPT2Config as C
        cfg = C(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                tie_word_embeddings=tie)
    else:
        raise ValueError(arch)
    if tokenizer is not None:
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    if folder is not None:
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
    return model


def make_model_folder(tmp_path: Path, name: str, arch: str = "llama", kind: str = "bl", **kw) -> Path:
    folder = Path(tmp_path) / name
    tok = make_tokenizer(kind)
    make_model(arch, vocab_size=len(tok), folder=folder, tokenizer=tok, **kw)
    return folder


def stub_python(tmp_path: Path, pipeline: bool = False) -> Path:
    """A fake ``python`` for the launchers (PYTHON=...): it prints ``ARGS <argv>`` instead of running a step. With
    ``pipeline``, ``-c`` / ``-`` / ``-m`` calls (the launchers' own checks) run the real interpreter, and an
    ``--output_dir`` is created, so run_all.sh can go through every step."""
    import sys

    stub = Path(tmp_path) / "python"
    body = "#!/usr/bin/env bash\n"
    if pipeline:
        body += (f'if [[ "${{1:-}}" == "-c" || "${{1:-}}" == "-" || "${{1:-}}" == "-m" ]]; then exec {sys.executable} "$@"; fi\n')
    body += 'echo "ARGS $*"\n'
    if pipeline:
        body += 'while (( $# > 1 )); do [[ "$1" == --output_dir ]] && mkdir -p "$2"; shift; done\n'
    stub.write_text(body)
    stub.chmod(0o755)
    return stub


def make_generation_assets(d: Path, prompts: list[str]) -> Path:
    """A tiny target (gemma3, sp), a teacher (llama, bl, hidden 24), a random A between them and a prompts file
    ``p.jsonl`` in folder ``d``: what generate.py needs."""
    import json

    import torch

    make_model_folder(d, "target", "gemma3", "sp", seed=1)
    make_model_folder(d, "teacher", "llama", "bl", seed=2, hidden=24, layers=2)
    torch.save({"mapping": torch.randn(24, 32, generator=torch.Generator().manual_seed(0)) * 0.3}, Path(d) / "A.pt")
    (Path(d) / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return Path(d)
