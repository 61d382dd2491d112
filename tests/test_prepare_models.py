"""detox_pa.assets.prepare_models: which embedded models it converts, and where (side by side when more than one is
missing, in this process otherwise), with the conversion itself replaced by a stub (the real one needs the GGUF
packages and about 3 GB; bench/bench_setup.py --prepare checks that both ways give the same weights)."""

import json

import pytest

from detox_pa import assets


@pytest.fixture()
def stubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_PA_CACHE", str(tmp_path / "cache"))
    calls = {"pool": [], "here": []}

    def fake_convert(spec, dest, lean=True):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")
        (dest / "detox_pa_source.json").write_text(json.dumps({"alias": spec.alias}))
        calls["here"].append(spec.alias)

    class FakePool:  # stands in for the spawned processes; runs the same function here
        def __init__(self, n, mp_context=None):
            assert mp_context is not None and mp_context.get_start_method() == "spawn"
            self.n = n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, items):
            items = list(items)
            calls["pool"].append((self.n, items))
            return [fn(x) for x in items]

    monkeypatch.setattr(assets, "_convert_gguf", fake_convert)
    monkeypatch.setattr("concurrent.futures.ProcessPoolExecutor", FakePool)
    monkeypatch.setattr(assets, "_convert_in_child", lambda alias: str(assets.ensure_embedded_model(alias)))
    return calls


def test_both_missing_convert_side_by_side_then_nothing_to_do(stubbed, tmp_path):
    paths = assets.prepare_models()
    assert stubbed["pool"] == [(2, list(assets.EMBEDDED_MODELS))]
    assert sorted(stubbed["here"]) == sorted(assets.EMBEDDED_MODELS)
    assert paths == {a: tmp_path / "cache" / "models" / a for a in assets.EMBEDDED_MODELS}
    stubbed["pool"].clear(), stubbed["here"].clear()
    assert assets.prepare_models() == paths  # converted already: no pool, no conversion
    assert stubbed["pool"] == [] and stubbed["here"] == []


def test_one_missing_converts_here_and_parallel_off_never_pools(stubbed):
    first, second = list(assets.EMBEDDED_MODELS)
    assets.ensure_embedded_model(first)
    stubbed["here"].clear()
    assets.prepare_models()
    assert stubbed["pool"] == [] and stubbed["here"] == [second]
    import shutil

    shutil.rmtree(assets.cache_dir() / "models")
    stubbed["here"].clear()
    assets.prepare_models(parallel=False)
    assert stubbed["pool"] == [] and stubbed["here"] == list(assets.EMBEDDED_MODELS)
