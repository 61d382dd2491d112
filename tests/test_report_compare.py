"""report.py comparing runs (issue 25, item 4): runs that cannot be compared are refused unless asked, each run's
reference point is drawn, the header names both teachers of diff, no interval below 20 prompts, and scored files
of texts (DExperts JSONL, .txt) are reported instead of failing with a misleading JSON error."""

import hashlib
import json

import pytest

from detox_pa import report
from detox_pa.cli import run


def make_run(folder, name, tox, ppl, n_prompts=21, max_new_tokens=10, reference="tiny-ref", scorer="bilstm",
             meta_extra=None, prompts=None):
    """A generations file with a generate.py-style sidecar and score files as the scorers write them."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = prompts or [f"prompt {i}" for i in range(n_prompts)]
    gen = folder / f"{name}.json"
    gen.write_text(json.dumps([{"alpha": a, "prompt-response pairs": [
        {"prompt": p, "response": "x", "continuation": " x", "prompt_index": i, "sample": 0}
        for i, p in enumerate(prompts)]} for a in tox]))
    meta = {"method": "diff", "target_model": "tiny", "teacher_model": "runs/expert", "anti_teacher_model": "runs/anti",
            "matrix_A": "runs/A.pt", "arguments": {"max_new_tokens": max_new_tokens, "do_sample": False,
                                                    "num_samples": 1, "top_p": 0.9, "temperature": 1.0}}
    meta.update(meta_extra or {})
    (folder / f"{name}.meta.json").write_text(json.dumps(meta))
    recs = "".join(json.dumps({"alpha": a, "prompt_index": i, "scores": {scorer: t + 0.05 * (i % 3 - 1)}}) + "\n"
                   for a, t in tox.items() for i in range(len(prompts)))
    sha = hashlib.sha256(recs.encode()).hexdigest()
    (folder / f"{name}_toxicity_records.jsonl").write_text(recs)
    (folder / f"{name}_toxicity.json").write_text(json.dumps(
        [{"alpha": a, "toxicity_score": t, "scorer": scorer, f"toxicity_score_{scorer}": t, "n": len(prompts),
          "by_scorer": {scorer: {"version": f"{scorer} 1", "toxicity_score": t}}, "records_sha256": sha}
         for a, t in tox.items()]))
    (folder / f"{name}_ppl.json").write_text(json.dumps(
        [{"alpha": a, "PPL": p + 0.1, "ppl_token_weighted": p, "dist_2": 0.9, "n": len(prompts),
          "reference_model": reference} for a, p in ppl.items()]))
    return gen


def cli(argv, capsys):
    code = run(report.run, report.parse_args, [str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, [ln for ln in cap.err.splitlines() if ln.startswith("error:")]


def test_runs_with_other_prompts_and_token_budget_are_refused_unless_asked(tmp_path, capsys):
    a = make_run(tmp_path / "a", "gens", {0.0: 0.30, 0.3: 0.20}, {0.0: 4.0, 0.3: 4.5})
    b = make_run(tmp_path / "b", "mine", {0.0: 0.40, 0.3: 0.25}, {0.0: 5.0, 0.3: 5.5}, n_prompts=2, max_new_tokens=5)
    out = tmp_path / "cmp.md"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, errors = cli([a, b, "--out_md", out], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert "prompt set (gens: 21 prompts" in errors[0] and "mine: 2 prompts" in errors[0]
    assert "token budget (gens: 10 new tokens; mine: 5 new tokens)" in errors[0] and "--allow_mismatch" in errors[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    code, md, errors = cli([a, b, "--out_md", out, "--allow_mismatch"], capsys)
    assert code == 0 and not errors
    assert "**the runs differ in prompt set" in md and "token budget" in md
    # both runs' reference points are drawn, each at its own alpha 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert sorted((x, y) for _, x, y in meta["plot"]["references"]) == [(4.0, 0.30), (5.0, 0.40)]
    labels = [lab for lab, _, _ in meta["plot"]["references"]]
    assert any("of gens" in lab for lab in labels) and any("of mine" in lab for lab in labels)


@pytest.mark.parametrize("what,kw,phrase", [
    ("PPL judge", {"reference": "llama-2-13b"}, "PPL judge (gens: tiny-ref; other: llama-2-13b)"),
    ("toxicity scorer version", {"meta_extra": {}}, None),
    ("decoding", {"meta_extra": {"arguments": {"max_new_tokens": 10, "do_sample": True, "num_samples": 1,
                                               "top_p": 0.9, "temperature": 1.0}}}, "decoding (gens: greedy; other: nucleus"),
])
def test_a_different_judge_or_decoding_is_refused(tmp_path, capsys, what, kw, phrase):
    a = make_run(tmp_path / "a", "gens", {0.0: 0.30, 0.3: 0.20}, {0.0: 4.0, 0.3: 4.5})
    b = make_run(tmp_path / "b", "other", {0.0: 0.30, 0.3: 0.22}, {0.0: 4.0, 0.3: 4.4}, **kw)
    if phrase is None:  # the same scorer name, another version of it
        rows = json.loads((tmp_path / "b" / "other_toxicity.json").read_text())
        for r in rows:
            r["by_scorer"]["bilstm"]["version"] = "bilstm 2"
        (tmp_path / "b" / "other_toxicity.json").write_text(json.dumps(rows))
        phrase = "toxicity judge (gens: bilstm (bilstm 1); other: bilstm (bilstm 2))"
    code, _, errors = cli([a, b, "--out_md", tmp_path / "c.md"], capsys)
    assert code == 2 and len(errors) == 1 and phrase in errors[0], errors


def test_same_setup_compares_draws_every_reference_and_names_both_teachers(tmp_path, capsys):
    a = make_run(tmp_path / "a", "gens", {0.0: 0.30, 0.3: 0.20}, {0.0: 4.0, 0.3: 4.5})
    b = make_run(tmp_path / "b", "other_target", {0.0: 0.35, 0.5: 0.20}, {0.0: 6.0, 0.5: 6.5},
                 meta_extra={"target_model": "tiny-2"})
    out = tmp_path / "cmp.md"
    code, md, errors = cli([a, b, "--out_md", out], capsys)
    assert code == 0 and not errors
    line = next(ln for ln in md.splitlines() if ln.startswith("- gens:"))
    assert "teacher=runs/expert" in line and "anti-expert=runs/anti" in line
    assert "- the same for every run: prompt set: 21 prompts" in md and "token budget: 10 new tokens" in md
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert sorted((x, y) for _, x, y in meta["plot"]["references"]) == [(4.0, 0.30), (6.0, 0.35)]
    # identical alpha-0 points (same target, greedy, same prompts) share one star that names both runs
    c = make_run(tmp_path / "c", "again", {0.0: 0.30, 0.6: 0.18}, {0.0: 4.0, 0.6: 4.9})
    code, md, _ = cli([a, c, "--out_md", tmp_path / "cmp2.md"], capsys)
    refs = json.loads((tmp_path / "cmp2.meta.json").read_text())["plot"]["references"]
    assert code == 0 and len(refs) == 1 and "of gens, again" in refs[0][0]


def test_no_interval_below_twenty_prompts(tmp_path, capsys):
    a = make_run(tmp_path / "a", "small", {0.0: 0.30, 0.3: 0.20}, {0.0: 4.0, 0.3: 4.5}, n_prompts=19)
    b = make_run(tmp_path / "b", "small2", {0.0: 0.30, 0.5: 0.15}, {0.0: 4.0, 0.5: 4.9}, n_prompts=19)
    code, md, _ = cli([a, b, "--out_md", tmp_path / "cmp.md"], capsys)
    assert code == 0
    rows = [ln for ln in md.splitlines() if ln.startswith("| small")]
    assert len(rows) == 4 and all("| n too small |" in r for r in rows), rows
    single = report.build_report(a)
    table = [ln for ln in single.splitlines() if ln.startswith("| ")]
    assert "95% CI (bilstm)" in table[0] and all("n too small" in r for r in table[2:])
    big = make_run(tmp_path / "c", "big", {0.0: 0.30, 0.3: 0.20}, {0.0: 4.0, 0.3: 4.5}, n_prompts=20)
    table = [ln for ln in report.build_report(big).splitlines() if ln.startswith("| ")]
    assert not any("n too small" in r for r in table) and all("–" in r for r in table[2:])


def test_a_scored_dexperts_file_gets_its_report(tmp_path, capsys):
    from detox_pa import toxicity

    dx = tmp_path / "dexperts.jsonl"
    dx.write_text(json.dumps({"prompt": {"text": "So I told him"}, "generations": [{"text": " you are a stupid idiot"},
                                                                                   {"text": " have a nice day"}]}) + "\n"
                  + json.dumps({"prompt": "The weather", "generations": [{"text": " is nice"}, {"text": " damn it"}]})
                  + "\n")
    code, _, errors = cli([dx], capsys)
    assert code == 2 and errors == [f"error: no score files found for {dx}: expected {tmp_path / 'dexperts'}_toxicity.json "
                                    f"and/or {tmp_path / 'dexperts'}_ppl.json (run run_tox_score.sh and "
                                    f"run_ppl_score.sh first)"]
    assert run(toxicity.run, toxicity.parse_args, ["--input", str(dx), "--scorer", "profanity-check"]) == 0
    capsys.readouterr()
    code, md, errors = cli([dx], capsys)
    assert code == 0 and not errors, errors
    summary = json.loads((tmp_path / "dexperts_toxicity.json").read_text())[0]
    row = next(ln for ln in md.splitlines() if ln.startswith("| -"))
    assert f"{summary['toxicity_score']:.4f}" in row and f"{summary['expected_max_toxicity']:.4f}" in row
    assert "n too small" in row  # 2 prompts
    assert (tmp_path / "dexperts_report.md").exists()
    # a score file given by mistake is named as one
    code, _, errors = cli([tmp_path / "dexperts_toxicity.json"], capsys)
    assert code == 2 and "is a score file; report.py reads the file that was scored" in errors[0]
