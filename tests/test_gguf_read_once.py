"""detox_pa.assets.gguf_read_once (one parse per GGUF file, the same fields and tensors as the gguf reader's own) and
gguf_lean_dequantize (by rows, no second copy: the same values)."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from detox_pa.assets import gguf_read_once  # noqa: E402


@pytest.fixture()
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    w.add_array("tokenizer.ggml.scores", [float(i) / 7 for i in range(300)])
    w.add_tensor("token_embd.weight", np.arange(24, dtype=np.float32).reshape(4, 6))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _summary(reader):
    fields = {k: [p.tolist() for p in f.parts] for k, f in reader.fields.items()}
    tensors = {t.name: np.array(t.data).tolist() for t in reader.tensors}
    return fields, tensors


def test_same_content_one_parse_and_restored(tiny_gguf):
    original = gguf.GGUFReader
    plain = _summary(gguf.GGUFReader(str(tiny_gguf)))
    with gguf_read_once():
        from gguf import GGUFReader  # what transformers does, inside its loader

        r1, r2 = GGUFReader(str(tiny_gguf)), GGUFReader(tiny_gguf)
        assert r1 is r2  # parsed once
        assert type(r1.data) is np.ndarray  # not a memmap subclass
        assert _summary(r1) == plain
        assert r1.fields["tokenizer.ggml.tokens"].contents()[299] == "tok299"
    assert gguf.GGUFReader is original
    assert type(gguf.GGUFReader(str(tiny_gguf)).data) is np.memmap


def test_restored_after_an_error(tiny_gguf):
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError):
        with gguf_read_once():
            raise RuntimeError("boom")
    assert gguf.GGUFReader is original
    assert type(gguf.GGUFReader(str(tiny_gguf)).data) is np.memmap


def test_lean_dequantize_gives_the_same_values_by_rows_and_no_second_copy(tmp_path):
    """A quantised tensor de-quantised 7 rows at a time equals the whole-tensor de-quantisation; transformers' loader's
    ``np.copy`` hands back a fresh owned array as is but still copies a view (of the file's mapping, a transpose) as numpy does;
    both are restored after the block, also after an error."""
    import transformers.modeling_gguf_pytorch_utils as loader

    from detox_pa.assets import gguf_lean_dequantize

    qtype = gguf.GGMLQuantizationType.Q8_0
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    data = gguf.quantize(x, qtype)
    whole = gguf.dequantize(data, qtype)
    original, original_np = gguf.dequantize, loader.np
    with gguf_lean_dequantize(rows=7):
        from gguf import dequantize  # what transformers does, inside its loader

        by_rows = dequantize(data, qtype)
        assert by_rows.flags.owndata and np.array_equal(by_rows, whole)
        assert loader.np.copy(by_rows) is by_rows
        view = by_rows.T
        copied = loader.np.copy(view)
        assert copied is not view and copied.strides == np.copy(view).strides and np.array_equal(copied, view)
        ro = np.frombuffer(by_rows.tobytes(), dtype=np.float32)  # a read-only buffer, as from a mapping
        assert loader.np.copy(ro) is not ro
    assert gguf.dequantize is original and loader.np is original_np
    with pytest.raises(RuntimeError):
        with gguf_lean_dequantize():
            raise RuntimeError("boom")
    assert gguf.dequantize is original and loader.np is original_np
