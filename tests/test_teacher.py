"""The teacher: first N layers of any causal LM, saved as a plain Hugging Face folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from detox_pa.errors import InputError
from detox_pa.teacher import (build_teacher, find_decoder_layers, layer_count, load_teacher_model, parameter_count,
                              truncate_causal_lm)
from tests.tiny import make_model_folder

BASE_LAYERS = 4
LAYER_PREFIX = {"llama": "model.layers.", "qwen2": "model.layers.", "gemma3": "model.layers.", "gpt2": "transformer.h.",
                "gpt_neox": "gpt_neox.layers.", "opt": "model.decoder.layers."}


def _extra_model_folder(tmp_path, arch):
    """Layouts tests/tiny.py does not build: GPT-NeoX (gpt_neox.layers) and OPT (model.decoder.layers)."""
    from transformers import GPTNeoXConfig, OPTConfig

    from tests.tiny import make_tokenizer

    tok = make_tokenizer("bl")
    torch.manual_seed(0)
    if arch == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=BASE_LAYERS,
                            num_attention_heads=4, max_position_embeddings=128)
    else:
        cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=BASE_LAYERS,
                        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32)
    folder = tmp_path / arch
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for arch, kind in (("llama", "sp"), ("gpt2", "bl"), ("gemma3", "sp"), ("qwen2", "bl")):
        out[arch] = make_model_folder(root, arch, arch=arch, kind=kind, layers=BASE_LAYERS)
    for arch in ("gpt_neox", "opt"):
        out[arch] = _extra_model_folder(root, arch)
    return out


def _layer_key(key: str, prefix: str) -> int | None:
    return int(key[len(prefix):].split(".")[0]) if key.startswith(prefix) else None


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "qwen2", "gpt_neox", "opt"])
def test_teacher_round_trips_with_plain_automodel(bases, tmp_path, arch):
    n = 2
    base = AutoModelForCausalLM.from_pretrained(bases[arch])
    teacher, tok = build_teacher(str(bases[arch]), n)
    assert type(teacher) is type(base)
    assert layer_count(teacher.config) == n
    assert len(find_decoder_layers(teacher)[1]) == n

    # first n layers, embeddings, final norm and output layer are the base's, bit for bit; nothing else is kept
    prefix, base_sd, teacher_sd = LAYER_PREFIX[arch], base.state_dict(), teacher.state_dict()
    expected = {k for k in base_sd if (_layer_key(k, prefix) is None or _layer_key(k, prefix) < n)}
    assert set(teacher_sd) == expected
    for k in expected:
        assert torch.equal(teacher_sd[k], base_sd[k]), k
    assert any(_layer_key(k, prefix) == n - 1 for k in teacher_sd)

    # save + plain from_pretrained (no custom class) gives the same model
    teacher.save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "t")
    assert type(loaded) is type(base) and layer_count(loaded.config) == n
    x = torch.randint(4, len(tok), (2, 9))
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, teacher(x).logits, atol=1e-5)
        # the teacher is not the base: dropping layers changes the output
        assert not torch.allclose(base(x).logits, teacher(x).logits, atol=1e-3)


def test_gemma3_layer_types_follow_the_kept_layers(tmp_path):
    """A per-layer sliding/full pattern that no default would produce: the teacher keeps its head."""
    from transformers import Gemma3TextConfig

    pattern = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                           sliding_window=4, layer_types=pattern)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg)
    base.save_pretrained(tmp_path / "base")
    teacher = load_teacher_model(str(tmp_path / "base"), 3)
    assert teacher.config.layer_types == pattern[:3]
    for i, layer in enumerate(find_decoder_layers(teacher)[1]):
        assert (layer.self_attn.sliding_window is not None) == (pattern[i] == "sliding_attention")
    teacher.save_pretrained(tmp_path / "t")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "t")
    assert loaded.config.layer_types == pattern[:3]
    x = torch.randint(0, 128, (1, 12))  # longer than the sliding window: the pattern matters
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, teacher(x).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_truncate_in_place_equals_loading_only_the_kept_layers(bases, tmp_path, arch):
    full = AutoModelForCausalLM.from_pretrained(bases[arch])
    cut = truncate_causal_lm(full, 2)
    assert cut is full and layer_count(cut.config) == 2 and len(find_decoder_layers(cut)[1]) == 2
    direct = load_teacher_model(str(bases[arch]), 2)
    a, b = cut.state_dict(), direct.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    cut.save_pretrained(tmp_path / "c")
    assert layer_count(AutoModelForCausalLM.from_pretrained(tmp_path / "c").config) == 2


def test_all_layers_is_the_base_itself(bases):
    base = AutoModelForCausalLM.from_pretrained(bases["llama"])
    teacher, _ = build_teacher(str(bases["llama"]), BASE_LAYERS)
    x = torch.randint(4, 200, (1, 7))
    with torch.no_grad():
        assert torch.equal(base(x).logits, teacher(x).logits)


def test_tied_weights_stay_tied_and_are_counted_once(bases):
    teacher, _ = build_teacher(str(bases["llama"]), 2)
    assert teacher.get_output_embeddings().weight is teacher.get_input_embeddings().weight
    unique = {id(p): p.numel() for p in teacher.parameters()}
    assert parameter_count(teacher) == sum(unique.values())


@pytest.mark.parametrize("n, match", [(0, "at least 1"), (BASE_LAYERS + 1, "has 4 decoder layers")])
def test_bad_layer_count_fails_before_any_weight_is_read(bases, monkeypatch, n, match):
    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(InputError, match=match) as e:
        build_teacher(str(bases["gpt2"]), n)
    assert "\n" not in str(e.value)
    if n > BASE_LAYERS:
        assert "config.json" in str(e.value)
    with pytest.raises(InputError, match=match):
        truncate_causal_lm(_FakeModel(), n)


class _FakeModel(torch.nn.Module):
    """Only a config: truncate_causal_lm must refuse a bad count before touching modules."""

    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(num_hidden_layers=BASE_LAYERS)
