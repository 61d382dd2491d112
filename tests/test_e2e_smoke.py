"""One end-to-end smoke run of the real embedded default (SMOKE=1 ./run_all.sh), offline on CPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_all_smoke_on_the_embedded_default(tmp_path):
    out = tmp_path / "smoke"
    env = dict(os.environ, SMOKE="1", OUT_DIR=str(out), HF_HUB_OFFLINE="1")
    r = subprocess.run(["bash", str(REPO / "run_all.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    # every step left its artifact
    # both teachers, from one recipe on their own data
    teacher = json.loads((out / "teacher" / "detox_pa_teacher.json").read_text())
    anti = json.loads((out / "anti_teacher" / "detox_pa_teacher.json").read_text())
    assert teacher["layers_kept"] == 3 == anti["layers_kept"]
    assert teacher["data"]["sha256"] != anti["data"]["sha256"]
    import torch

    A = torch.load(out / "alignment" / "mapping_model.pt", weights_only=True)["mapping"]
    assert tuple(A.shape) == (576, 640) and torch.isfinite(A).all()
    side = json.loads((out / "alignment" / "mapping_model.json").read_text())
    assert side["objective"] == "logits"
    tr = side["metrics"]["transmission_after_tuning"]  # the tuned pair through the tuned A, what decoding reads
    assert set(tr) >= {"teacher", "also_teacher"} and tr["teacher"]["none"]["states"] > 100
    meta = json.loads((out / "generations.meta.json").read_text())
    # step 2 tuned the pair through the fusion; step 3 decoded with the pair the matrix's sidecar names
    assert side["tuned_pair"] and (out / "alignment" / "expert").is_dir() and (out / "alignment" / "anti_expert").is_dir()
    assert meta["method"] == "diff" and meta["teachers_from"] == "the matrix's sidecar"
    assert meta["anti_teacher_path"].endswith("anti_expert") and meta["teacher_path"].endswith("expert")
    # the tuned pair's center is stored beside A, so the default context and promote weights resolve to 0.25
    assert meta["context_weight"] == 0.25 and meta["promote_weight"] == 0.25 and meta["demote_z"] == -0.5
    gens = json.loads((out / "generations.json").read_text())
    assert [b["alpha"] for b in gens] == [0.0, 18.0]
    assert all(len(b["prompt-response pairs"]) == 8 for b in gens)
    assert gens[0]["prompt-response pairs"] != gens[1]["prompt-response pairs"]
    tox = json.loads((out / "generations_toxicity.json").read_text())
    assert [t["alpha"] for t in tox] == [0.0, 18.0]
    assert all(0.0 <= t["toxicity_score"] <= 1.0 for t in tox)
    assert tox[0]["scorer"].startswith(("bilstm", "detoxify"))
    ppl = json.loads((out / "generations_ppl.json").read_text())
    assert all(p["PPL"] > 1.0 for p in ppl)
    # the run ends with the per-alpha table
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 4, r.stdout[-2000:]
    assert (out / "generations_report.png").stat().st_size > 1000
