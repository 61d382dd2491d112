"""bench/results_report.py: the alpha rule, the rerun comparison and the records check, on small made-up score files."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_report", REPO / "bench" / "results_report.py")
R = importlib.util.module_from_spec(spec)
spec.loader.exec_module(R)


def write_set(res: Path, name: str, tox: dict[float, float], ppl: dict[float, float], seconds: float = 1.0) -> None:
    res.mkdir(parents=True, exist_ok=True)
    recs = "".join(json.dumps({"alpha": a, "prompt_index": i, "scores": {"bilstm": t + 0.01 * i}}) + "\n"
                   for a, t in tox.items() for i in range(3))
    sha = hashlib.sha256(recs.encode()).hexdigest()
    (res / f"{name}_toxicity_records.jsonl").write_text(recs)
    (res / f"{name}_toxicity.json").write_text(json.dumps(
        [{"alpha": a, "toxicity_score": t, "scorer": "bilstm", "toxicity_score_bilstm": t, "records_sha256": sha,
          "input": str(res / f"{name}.json")} for a, t in tox.items()]))
    (res / f"{name}_ppl.json").write_text(json.dumps([{"alpha": a, "ppl_token_weighted": p, "PPL": p} for a, p in ppl.items()]))
    (res / f"{name}.json").write_text("[]")
    (res / f"{name}.meta.json").write_text(json.dumps({"generation_seconds_per_alpha": {str(a): seconds for a in tox}}))


def test_alpha_rule_takes_the_lowest_toxicity_within_the_ppl_cap(tmp_path):
    write_set(tmp_path, "select_build", {0.0: 0.30, 0.1: 0.25, 0.2: 0.20, 0.3: 0.10},
              {0.0: 10.0, 0.1: 11.0, 0.2: 13.0, 0.3: 13.1})
    assert R.choose_alpha(tmp_path / "select_build.json") == 0.2  # 0.3 is cheaper in toxicity but over 1.3x PPL


def test_compare_ignores_timings_and_paths_but_finds_a_changed_score(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_set(a, "fusion", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.5}, seconds=1.0)
    write_set(b, "fusion", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.5}, seconds=9.0)
    n, diffs = R.compare(a, b)
    assert n > 10 and diffs == []
    write_set(b, "fusion", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.6})
    n, diffs = R.compare(a, b)
    assert len(diffs) == 2 and all("fusion_ppl.json [1]" in d and "5.5 vs 5.6" in d for d in diffs)


def test_a_records_file_that_does_not_match_its_summary_is_refused(tmp_path):
    write_set(tmp_path, "fusion", {0.0: 0.3}, {0.0: 5.0})
    assert R.load_set(tmp_path / "fusion.json")["recs"][0.0] == {0: [0.3], 1: [0.31], 2: [0.32]}
    recs = tmp_path / "fusion_toxicity_records.jsonl"
    recs.write_text(recs.read_text().splitlines()[0] + "\n")  # a partial file from another run
    with pytest.raises(SystemExit, match="does not belong to"):
        R.load_set(tmp_path / "fusion.json")
