"""The results study's report: the alpha rule, the rerun comparison, the records check and the paired
interval (package functions), and bench/results_report.py run as a script, on small made-up score files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from detox_pa.errors import InputError
from detox_pa.metrics import paired_difference
from detox_pa.report import choose_alpha, compare_score_dirs, load_scored_run

REPO = Path(__file__).resolve().parents[1]


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


def write_sampled_set(res: Path, name: str, emt: dict[float, float], ppl: dict[float, float], args: dict) -> None:
    """:func:`write_set` with each alpha's EMT (and half of it as the toxicity probability) in its toxicity summary
    and generation arguments in its sidecar."""
    write_set(res, name, emt, ppl)
    rows = json.loads((res / f"{name}_toxicity.json").read_text())
    for r in rows:
        r["expected_max_toxicity"] = emt[r["alpha"]]
        r["toxicity_probability"] = emt[r["alpha"]] / 2
    (res / f"{name}_toxicity.json").write_text(json.dumps(rows))
    meta = json.loads((res / f"{name}.meta.json").read_text())
    meta["arguments"] = args
    (res / f"{name}.meta.json").write_text(json.dumps(meta))


def test_alpha_rule_takes_the_lowest_toxicity_within_the_ppl_cap(tmp_path):
    write_set(tmp_path, "dev_diff", {0.0: 0.30, 0.1: 0.25, 0.2: 0.20, 0.3: 0.10},
              {0.0: 10.0, 0.1: 11.0, 0.2: 13.0, 0.3: 13.1})
    assert choose_alpha(tmp_path / "dev_diff.json", cap=1.3) == 0.2  # 0.3 is lower in toxicity but over 1.3x PPL
    assert choose_alpha(tmp_path / "dev_diff.json", cap=1.25) == 0.1
    write_set(tmp_path, "dev_paper", {0.0: 0.30, 0.1: 0.35}, {0.0: 10.0, 0.1: 20.0})
    assert choose_alpha(tmp_path / "dev_paper.json", cap=1.25) == 0.0  # nothing within the cap: the target alone
    r = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), "--choose_alpha",
                        str(tmp_path / "dev_diff.json"), "--cap", "1.3"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "0.2", r.stderr


def test_compare_ignores_timings_and_paths_but_finds_a_changed_score(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_set(a, "diff_sweep", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.5}, seconds=1.0)
    write_set(b, "diff_sweep", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.5}, seconds=9.0)
    n, diffs = compare_score_dirs(a, b, ["diff_sweep", "steer"])
    assert n > 10 and diffs == []
    write_set(b, "diff_sweep", {0.0: 0.3, 0.1: 0.2}, {0.0: 5.0, 0.1: 5.6})
    n, diffs = compare_score_dirs(a, b, ["diff_sweep", "steer"])
    assert len(diffs) == 2 and all("diff_sweep_ppl.json [1]" in d and "5.5 vs 5.6" in d for d in diffs)


def test_a_records_file_that_does_not_match_its_summary_is_refused(tmp_path):
    write_set(tmp_path, "diff_sweep", {0.0: 0.3}, {0.0: 5.0})
    assert load_scored_run(tmp_path / "diff_sweep.json").records[0.0] == {0: [0.3], 1: [0.31], 2: [0.32]}
    recs = tmp_path / "diff_sweep_toxicity_records.jsonl"
    recs.write_text(recs.read_text().splitlines()[0] + "\n")  # a partial file from another run
    with pytest.raises(InputError, match="does not belong to"):
        load_scored_run(tmp_path / "diff_sweep.json")


def test_paired_difference_and_its_interval():
    a = {i: [0.1] for i in range(50)}
    b = {i: [0.3 + (0.01 if i % 2 else -0.01)] for i in range(50)}
    d, lo, hi, n = paired_difference(a, b)
    assert n == 50 and d == pytest.approx(-0.2) and lo < d < hi and hi < 0


def study_report(res: Path) -> str:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), "--res_dir", str(res), "--out",
                        str(res / "RESULTS.md"), "--align_dir", ""], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return (res / "RESULTS.md").read_text(encoding="utf-8")


def write_uniform_set(res: Path, name: str, tox: dict[float, float], ppl: dict[float, float], n: int = 30) -> None:
    """:func:`write_set` with ``n`` prompts per alpha, each at the summary's mean."""
    write_set(res, name, tox, ppl)
    recs = "".join(json.dumps({"alpha": a, "prompt_index": i, "scores": {"bilstm": t}}) + "\n"
                   for a, t in tox.items() for i in range(n))
    sha = hashlib.sha256(recs.encode()).hexdigest()
    (res / f"{name}_toxicity_records.jsonl").write_text(recs)
    rows = json.loads((res / f"{name}_toxicity.json").read_text())
    for r in rows:
        r["records_sha256"] = sha
    (res / f"{name}_toxicity.json").write_text(json.dumps(rows))


def test_report_reads_the_study_and_says_whether_the_goals_are_met(tmp_path):
    """A made-up study where the default is 58% lower at 1.1x PPL and below both baselines at their PPL: goals 1 and 2
    met; then a steering curve that is lower at the same PPL: goal 2 not met."""
    def ws(name, tox, ppl):
        write_uniform_set(tmp_path, name, tox, ppl)
    ws("default", {0.0: 0.30, 1.0: 0.20, 3.0: 0.126}, {0.0: 4.0, 1.0: 4.1, 3.0: 4.4})
    ws("lm", {0.5: 0.20}, {0.5: 4.8})
    ws("paper", {0.3: 0.31}, {0.3: 4.5})
    ws("wordban", {1.0: 0.25}, {1.0: 4.2})
    ws("steer", {0.1: 0.25, 0.2: 0.18}, {0.1: 4.1, 0.2: 4.8})
    ws("dev_default", {0.0: 0.3, 3.0: 0.2}, {0.0: 4.0, 3.0: 4.5})
    (tmp_path / "chosen.json").write_text(json.dumps({"alpha": {"default": 3, "lm": 0.5, "paper": 0.3, "steer": 0.2}}))
    (tmp_path / "direction.json").write_text(json.dumps({
        "states": 10, "texts": 2, "dev_prompts": 1, "toxic_candidates": {"word list": 3}, "toxic_pick_states": {"word list": 1},
        "rows": {"activation steering": {"word list": {"auc": 0.9, "d_prime": 2.4, "scale": 1.5,
                                                       "flips": {"5%": 0.3, "10%": 0.45, "20%": 0.7},
                                                       "p_pick": {"toxic": [0.5, 0.4], "other": [0.5, 0.5]}}}}}))
    text = study_report(tmp_path)
    assert "| activation steering | word list | 0.900 | 2.40 | 30% / 45% / 70% | 0.500 -> 0.400 | 0.500 -> 0.500 | 1.50 |" in text
    assert "58.0% lower" in text and "1.10x" in text
    assert "Goal 1 (>= 55% lower at <= 1.25x PPL): **met**" in text and "excludes 0): **met**" in text
    assert "| the paper's recipe | 0.3 | 0.310" in text and "+3% tox, 1.12x PPL" in text
    assert "| activation steering (baseline) 0.2 | 4.80 | 0.180 | 0.126 | yes |" in text  # past the sweep: its best point
    assert (tmp_path / "results_tradeoff.png").stat().st_size > 1000
    ws("steer", {0.1: 0.14, 0.2: 0.10}, {0.1: 4.1, 0.2: 4.8})
    text = study_report(tmp_path)
    goal2 = next(line for line in text.splitlines() if "Goal 2" in line)
    assert "excludes 0): **not met** (the default's sweep is not less toxic at the PPL of: activation steering (baseline) " \
        "0.1, activation steering (baseline) 0.2; the table below)" in goal2, goal2  # the points it misses, named
    assert "| activation steering (baseline) 0.1 | 4.10 | 0.140 | 0.200 | no |" in text


def test_previous_default_section_chooses_its_alpha_on_dev_and_reads_it_held_out(tmp_path):
    """bench/results.sh 2c's section (the previous default, promote weight 1): the alpha rule on its own dev sweep (not
    the held-out one), its held-out row at that alpha beside the default's, goal 1 read for it, and its sweep against
    the baselines at their PPL."""
    def ws(name, tox, ppl):
        write_uniform_set(tmp_path, name, tox, ppl)
    ws("default", {0.0: 0.30, 1.0: 0.20, 3.0: 0.15}, {0.0: 4.0, 1.0: 4.1, 3.0: 4.4})
    ws("steer", {0.1: 0.25, 0.2: 0.18}, {0.1: 4.1, 0.2: 4.8})
    ws("wordban", {1.0: 0.25}, {1.0: 4.2})
    (tmp_path / "chosen.json").write_text(json.dumps({"alpha": {"default": 3, "steer": 0.2}}))
    # dev: alpha 12 is the least toxic but over the cap (5.2 > 1.25 x 4.0); held out alpha 12 would be the best
    ws("dev_prev", {0.0: 0.30, 4.0: 0.20, 8.0: 0.15, 12.0: 0.12}, {0.0: 4.0, 4.0: 4.2, 8.0: 4.6, 12.0: 5.2})
    ws("prev", {0.0: 0.30, 4.0: 0.20, 8.0: 0.12, 12.0: 0.05}, {0.0: 4.0, 4.0: 4.1, 8.0: 4.3, 12.0: 5.0})
    meta = json.loads((tmp_path / "prev.meta.json").read_text())
    meta["arguments"] = {"promote_weight": 1.0, "demote_z": -0.5}
    (tmp_path / "prev.meta.json").write_text(json.dumps(meta))
    text = study_report(tmp_path)
    assert "## The previous default: the offset read as it is" in text
    assert "Chosen by the alpha rule: **8**." in text
    label = "the tuned pair, promote weight 1 (the previous default)"
    assert f"| {label} | 8 | 0.120 (0.120–0.120) | -60% tox, 1.07x PPL |" in text
    assert "goal 1 reads 60.0% lower at 1.07x (**met**)" in text
    # steering 0.2 at PPL 4.8: the sweep between (4.3, 0.12) and (5.0, 0.05) in log PPL
    import math
    at = 0.12 + (math.log(4.8) - math.log(4.3)) / (math.log(5.0) - math.log(4.3)) * (0.05 - 0.12)
    assert f"| activation steering (baseline) 0.2 | 4.80 | 0.180 | {at:.3f} | yes |" in text
    assert "less toxic than every baseline point at equal PPL" in text
    assert "| the default at 3 vs promote weight 1 (the previous default) at 8 | +0.030 |" in text
    # another weight is named by its value (a file written before the flag existed reads as 1)
    meta["arguments"] = {"promote_weight": 0.5}
    (tmp_path / "prev.meta.json").write_text(json.dumps(meta))
    assert "| the default at 3 vs promote weight 0.5 at 8 | +0.030 |" in study_report(tmp_path)
    meta["arguments"] = {}
    (tmp_path / "prev.meta.json").write_text(json.dumps(meta))
    assert f"| {label} | 8 |" in study_report(tmp_path)
    # a held-out sweep without the dev-chosen alpha is said, not silently read at another
    ws("prev", {0.0: 0.30, 4.0: 0.20, 12.0: 0.05}, {0.0: 4.0, 4.0: 4.1, 12.0: 5.0})
    assert "Its dev-chosen alpha 8 is not in the held-out sweep" in study_report(tmp_path)


def test_sampled_eligible_set_rule_and_its_dev_table(tmp_path):
    """The sampled protocol's eligible set is the lowest dev EMT at the default's alpha within the PPL cap (x the
    target alone's, alpha 0 of dev_sampled_k5): every token is least toxic here but over 1.25x, so top-20; with a
    looser cap, every token. The report's dev table pairs each row's EMT with steering's."""
    sys.path.insert(0, str(REPO / "bench"))
    import results_report as rr

    def ws(name, emt, ppl, top_k):
        write_sampled_set(tmp_path, name, emt, ppl, {"top_k": top_k})

    with pytest.raises(InputError, match="dev screen"):
        rr.choose_sampled_k(tmp_path, 7.0, 1.25)
    ws("dev_sampled_k5", {0.0: 0.45, 7.0: 0.26}, {0.0: 13.0, 7.0: 5.1}, 5)
    ws("dev_sampled_k10", {7.0: 0.25}, {7.0: 6.4}, 10)
    ws("dev_sampled_k20", {7.0: 0.23}, {7.0: 7.5}, 20)
    ws("dev_sampled_k0", {3.0: 0.30, 7.0: 0.19}, {3.0: 14.3, 7.0: 19.7}, 0)
    ws("dev_sampled_steer", {0.3: 0.21}, {0.3: 17.0}, 0)
    assert rr.choose_sampled_k(tmp_path, 7.0, 1.25) == 20
    assert rr.choose_sampled_k(tmp_path, 7.0, 1.6) == 0
    with pytest.raises(InputError, match="no dev_sampled_k"):
        rr.choose_sampled_k(tmp_path, 5.0, 1.25)  # no set has alpha 5
    r = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), "--res_dir", str(tmp_path),
                        "--choose_sampled_k", "7", "--cap", "1.25"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "20", r.stderr[-1000:]
    sets = {n: rr.load_set(tmp_path / f"{n}.json") for n in rr.DEV_SAMPLED if (tmp_path / f"{n}.json").exists()}
    lines = "\n".join(rr.sampled_dev_lines(tmp_path, sets, 7.0, 1.25))
    assert "| the tuned pair (fold a's) | 20 | 7 | 0.230 |" in lines and "(0.58x)" in lines
    assert "| the tuned pair (fold a's) | every token | 7 | 0.190 |" in lines
    assert "Chosen eligible set for sampling: **top-20**" in lines
    # write_set's records: prompt i scores emt + 0.01 i, so against steering the difference is exactly emt - 0.21
    assert "| the tuned pair (fold a's) | 20 | 7 | 0.230 | 0.115 | 0.240 | 7.50 (0.58x) | n/a | +0.020 (+0.020 to +0.020) |" in lines


def test_sampled_strength_rule_caps_each_method_against_its_own_decoding(tmp_path):
    """Each method's sampled strength: the lowest dev EMT within the cap x the PPL of the same decoding without the
    method. The default's reference is its truncation control (top-20 only, PPL 6.4), not the target alone (13): alpha
    10 (8.3 = 1.30x the control) is out although it is under 1.25 x 13; steering's is the target alone, so s 0.3
    (1.31x) is out and s 0.2 chosen. Then the held-out section pairs the default's per-prompt max with each row's."""
    sys.path.insert(0, str(REPO / "bench"))
    import results_report as rr

    def ws(name, emt, ppl, args):
        write_sampled_set(tmp_path, name, emt, ppl, args)

    with pytest.raises(InputError, match="dev screens"):
        rr.choose_sampled_strength(tmp_path, "default", 1.25)
    ws("dev_sampled_k5", {0.0: 0.45}, {0.0: 13.0}, {"top_k": 5})
    ws("dev_sampled_topk20", {1.0: 0.44}, {1.0: 6.4}, {"top_k": 20})
    ws("dev_sampled_alpha", {5.0: 0.26, 7.0: 0.23, 10.0: 0.21}, {5.0: 7.0, 7.0: 7.9, 10.0: 8.3}, {"top_k": 20})
    ws("dev_sampled_s", {0.1: 0.33, 0.2: 0.29, 0.3: 0.21}, {0.1: 13.1, 0.2: 15.1, 0.3: 17.0}, {})
    assert rr.choose_sampled_strength(tmp_path, "default", 1.25) == 7.0
    assert rr.choose_sampled_strength(tmp_path, "steer", 1.25) == 0.2
    assert rr.choose_sampled_strength(tmp_path, "steer", 1.35) == 0.3
    with pytest.raises(InputError, match="within 1.05x"):
        rr.choose_sampled_strength(tmp_path, "default", 1.05)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), "--res_dir", str(tmp_path),
                        "--choose_sampled_strength", "steer", "--cap", "1.25"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "0.2", r.stderr[-1000:]
    held = {"sampled2": ({0.0: 0.40, 7.0: 0.15}, {0.0: 14.0, 7.0: 7.5}, {"top_k": 20, "skip_prompts": 150}),
            "sampled2_topk": ({1.0: 0.39}, {1.0: 6.5}, {"top_k": 20}),
            "sampled2_steer": ({0.2: 0.24}, {0.2: 16.0}, {}), "sampled2_wordban": ({1.0: 0.30}, {1.0: 14.5}, {})}
    for name, (emt, ppl, args) in held.items():
        ws(name, emt, ppl, args)
    sets = {n: rr.load_set(tmp_path / f"{n}.json") for n in rr.SETS if (tmp_path / f"{n}.json").exists()}
    lines = "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25))
    assert "| the tuned pair (fold a's), alpha | **7** (chosen) | 0.230 |" in lines and "| 7.90 | 1.23x | yes |" in lines
    assert "| the tuned pair (fold a's), alpha | 10 | 0.210 |" in lines and "| 8.30 | 1.30x | no |" in lines
    assert "| activation steering, s | **0.2** (chosen) | 0.290 |" in lines
    assert "after the first 150 (3 prompts" in lines
    # write_set's records: prompt i scores emt + 0.01 i in every set, so each paired difference is the EMTs' difference
    assert "| the default vs activation steering 0.2 | -0.090 | -0.090 to -0.090 | 3 |" in lines
    assert "| the default vs word-ban decoding 1 | -0.150 | -0.150 to -0.150 | 3 |" in lines
    assert "from 0.400 to 0.390: 4% of the default's change (0.400 -> 0.150)" in lines
    assert "paired EMT interval below 0): **met**." in lines
    ws("sampled2_wordban", {1.0: 0.12}, {1.0: 14.5}, {})  # word-ban now below the default
    sets["sampled2_wordban"] = rr.load_set(tmp_path / "sampled2_wordban.json")
    lines = "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25))
    assert "paired EMT interval below 0): **not met** against word-ban decoding 1." in lines
    # a second sampling seed of the same held-out runs gets its own table and verdict, read from its own files
    held2 = {"sampled2s2": ({0.0: 0.42, 7.0: 0.20}, {0.0: 14.0, 7.0: 7.5}, {"top_k": 20, "skip_prompts": 150, "seed": 2026}),
             "sampled2s2_topk": ({1.0: 0.41}, {1.0: 6.5}, {"top_k": 20}),
             "sampled2s2_steer": ({0.2: 0.18}, {0.2: 16.0}, {}), "sampled2s2_wordban": ({1.0: 0.31}, {1.0: 14.5}, {})}
    for name, (emt, ppl, args) in held2.items():
        ws(name, emt, ppl, args)
        sets[name] = rr.load_set(tmp_path / f"{name}.json")
    lines = "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25))
    first, second = lines.split("a second sampling seed (`--seed 2026`")
    assert "**not met** against word-ban decoding 1." in first  # the first seed's verdict stays its own
    assert "| the default vs activation steering 0.2 | +0.020 | +0.020 to +0.020 | 3 |" in second
    assert "| the default vs word-ban decoding 1 | -0.110 | -0.110 to -0.110 | 3 |" in second
    # 3d, the previous default: its strength capped against its own truncation control (top-20: 6.4), so alpha 36
    # (8.5 = 1.33x) is out and 26 (7.9) chosen; its held-out run paired with 3b's rows on the same prompts
    assert "previous default" not in lines  # absent until 3d has run: the section does not need it
    ws("dev_sampled_prev", {12.0: 0.22, 18.0: 0.21, 26.0: 0.19, 36.0: 0.17}, {12.0: 7.3, 18.0: 7.3, 26.0: 7.9, 36.0: 8.5},
       {"top_k": 20, "promote_weight": 1.0})
    assert rr.choose_sampled_strength(tmp_path, "prev", 1.25) == 26.0
    assert rr.choose_sampled_strength(tmp_path, "prev", 1.35) == 36.0
    ws("sampled2_prev", {26.0: 0.13}, {26.0: 7.4}, {"top_k": 20, "promote_weight": 1.0, "skip_prompts": 150})
    sets.update({n: rr.load_set(tmp_path / f"{n}.json") for n in ("dev_sampled_prev", "sampled2_prev")})
    lines = "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25))
    prev = "promote weight 1 (the previous default)"
    assert f"| the tuned pair (fold a's), {prev}, alpha | **26** (chosen) | 0.190 |" in lines
    assert f"| the tuned pair (fold a's), {prev}, alpha | 36 | 0.170 |" in lines and "| 1.33x | no |" in lines
    assert "EMT 0.130, toxicity probability 0.065" in lines and "(1.14x its truncation control's)" in lines
    assert f"| the tuned pair, {prev} 26 vs the tuned pair (the default) 7 | -0.020 | -0.020 to -0.020 | 3 |" in lines
    assert f"| the tuned pair, {prev} 26 vs activation steering 0.2 | -0.110 |" in lines
    # with 3c's second sampling seed, paired with that seed's rows (its default 0.20, its steering 0.18)
    ws("sampled2s2_prev", {26.0: 0.15}, {26.0: 7.4}, {"top_k": 20, "promote_weight": 1.0, "seed": 2026})
    sets["sampled2s2_prev"] = rr.load_set(tmp_path / "sampled2s2_prev.json")
    second = "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25)).split("a second sampling seed (`--seed 2026`")[1]
    assert f"| the tuned pair, {prev} 26 vs the tuned pair (the default) 7 | -0.050 |" in second
    assert f"| the tuned pair, {prev} 26 vs activation steering 0.2 | -0.030 |" in second
    ws("sampled2_prev", {18.0: 0.13}, {18.0: 7.4}, {"top_k": 20, "promote_weight": 1.0})  # not the chosen alpha
    sets["sampled2_prev"] = rr.load_set(tmp_path / "sampled2_prev.json")
    assert "not the dev-chosen 26: rerun 3d" in "\n".join(rr.sampled2_lines(tmp_path, sets, 1.25))
    assert "**not met** against activation steering 0.2." in second and "word-ban decoding 1." not in second


def test_sampled_held_out_section_with_every_token_eligible_needs_no_truncation_run(tmp_path):
    """When the dev screen makes every token eligible (top-k 0) there is no restriction to control for: the held-out
    table reads without a _topk run, says the target alone is the control, and the verdict still reads the baselines;
    with a top-k the truncation run stays required."""
    sys.path.insert(0, str(REPO / "bench"))
    import results_report as rr

    held = {"sampled2": ({0.0: 0.44, 18.0: 0.17}, {0.0: 13.3, 18.0: 16.2}, {"top_k": 0, "skip_prompts": 150}),
            "sampled2_steer": ({0.2: 0.26}, {0.2: 15.6}, {}), "sampled2_wordban": ({1.0: 0.28}, {1.0: 14.1}, {})}
    for name, (emt, ppl, args) in held.items():
        write_sampled_set(tmp_path, name, emt, ppl, args)
    sets = {n: rr.load_set(tmp_path / f"{n}.json") for n in held}
    lines = "\n".join(rr.sampled2_held_lines(sets, "sampled2"))
    assert "the offset on every token (no truncation: the target alone is its control):" in lines
    assert "truncation control)" not in lines and "top-0" not in lines
    assert "none of the change (0.440 -> 0.170) is a restriction's" in lines
    assert "| the default vs activation steering 0.2 | -0.090 | -0.090 to -0.090 | 3 |" in lines
    assert "paired EMT interval below 0): **met**." in lines
    write_sampled_set(tmp_path, "sampled2", {0.0: 0.44, 18.0: 0.17}, {0.0: 13.3, 18.0: 16.2},
                      {"top_k": 20, "skip_prompts": 150})
    sets["sampled2"] = rr.load_set(tmp_path / "sampled2.json")
    assert rr.sampled2_held_lines(sets, "sampled2") == []  # a top-k without its truncation run: not read


def test_equal_ppl_difference_redraws_the_ppls_with_the_toxicities():
    """The sweep read at a point's PPL minus the point's toxicity, under a bootstrap that redraws both runs' PPLs:
    at a point on alpha 1's NLL but 0.05 more toxic than alpha 1, the sweep is 0.05 less toxic in every resample; a point whose per-prompt NLL sits halfway (in log PPL) between the sweep's two points and whose
    toxicity is their mean lies on the curve (difference 0 in every resample); a point cheaper than the target alone
    is read at the sweep's cheapest point and counted."""
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    import results_report as rr

    rng = np.random.default_rng(1)
    n = 40
    t0 = rng.uniform(0.1, 0.6, n)
    tok = rng.integers(5, 15, n)

    def run(alpha_tox_nll):
        return {"recs": {a: {i: [float(t[i])] for i in range(n)} for a, (t, _) in alpha_tox_nll.items()},
                "nll": {a: {i: (float(m * tok[i]), int(tok[i])) for i in range(n)} for a, (_, m) in alpha_tox_nll.items()}}

    sweep = run({0.0: (t0, 1.0), 1.0: (t0 - 0.1, 1.2)})
    on_a1 = run({0.3: (t0 - 0.05, 1.2)})
    d, lo, hi, share, below, k = rr.equal_ppl_difference(sweep, [0.0, 1.0], on_a1, 0.3, n_boot=200)
    assert k == n and below == 0 and share == 1.0
    assert d == pytest.approx(-0.05) and lo == pytest.approx(-0.05) and hi == pytest.approx(-0.05)
    halfway = run({0.2: (t0 - 0.05, 1.1)})
    d, lo, hi, share, below, _ = rr.equal_ppl_difference(sweep, [0.0, 1.0], halfway, 0.2, n_boot=200)
    assert below == 0 and abs(d) < 1e-9 and abs(lo) < 1e-9 and abs(hi) < 1e-9
    cheaper = run({0.1: (t0 - 0.2, 0.9)})
    d, lo, hi, share, below, _ = rr.equal_ppl_difference(sweep, [0.0, 1.0], cheaper, 0.1, n_boot=200)
    assert below == 200 and d == pytest.approx(0.2) and share == 0.0  # read at the target alone: 0.2 more toxic
    # a point on the curve on average but not per prompt: the interval has width and straddles 0
    noise = rng.normal(0, 0.1, n)
    noisy = run({0.5: (t0 - 0.05 + noise - noise.mean(), 1.1)})
    d, lo, hi, share, below, _ = rr.equal_ppl_difference(sweep, [0.0, 1.0], noisy, 0.5, n_boot=500)
    assert abs(d) < 1e-9 and lo < -0.01 and hi > 0.01 and 0.2 < share < 0.8
    assert rr.equal_ppl_difference({"recs": sweep["recs"], "nll": {}}, [0.0, 1.0], noisy, 0.5) is None  # no NLL records


def test_scored_run_sums_each_prompts_nll_over_its_samples_and_checks_the_records(tmp_path):
    write_set(tmp_path, "s", {0.0: 0.3}, {0.0: 5.0})
    recs = "".join(json.dumps({"alpha": 0.0, "prompt_index": i // 2, "sample": i % 2, "status": "ok", "sum_nll": 1.0 + i,
                               "n_tokens": 10}) + "\n" for i in range(4))
    recs += json.dumps({"alpha": 0.0, "prompt_index": 1, "sample": 2, "status": "empty"}) + "\n"  # skipped, as eval_ppl does
    (tmp_path / "s_ppl_records.jsonl").write_text(recs)
    rows = [{"alpha": 0.0, "ppl_token_weighted": 5.0, "records_sha256": hashlib.sha256(recs.encode()).hexdigest()}]
    (tmp_path / "s_ppl.json").write_text(json.dumps(rows))
    assert load_scored_run(tmp_path / "s.json").nll == {0.0: {0: (3.0, 20), 1: (7.0, 20)}}
    (tmp_path / "s_ppl_records.jsonl").write_text(recs.splitlines()[0] + "\n")
    with pytest.raises(InputError, match="s_ppl_records.jsonl does not belong to .*rerun eval_ppl.py"):
        load_scored_run(tmp_path / "s.json")


def test_list_word_mass_counts_the_toxicity_of_continuations_without_a_list_word(tmp_path, monkeypatch):
    import detox_pa.assets

    sys.path.insert(0, str(REPO / "bench"))
    import results_report as rr

    monkeypatch.setattr(detox_pa.assets, "profanity_words", lambda: ["darn", "heck"])
    rows = [(0.0, "oh darn it", 0.9), (0.0, "a fine day", 0.3), (0.0, "Heck, no", 0.8), (0.0, "darnation", 0.5),
            (1.0, "a fine day", 0.1), (1.0, "what the heck", 0.4)]
    (tmp_path / "r_toxicity_records.jsonl").write_text("".join(
        json.dumps({"alpha": a, "prompt_index": i, "response": t, "scores": {"bilstm": sc}}) + "\n"
        for i, (a, t, sc) in enumerate(rows)))
    got = rr.list_word_mass(tmp_path, "r")
    # alpha 0: "a fine day" (0.3) and "darnation" (0.5: not the word "darn") carry it, over 4 continuations
    assert got == {0.0: pytest.approx(0.2), 1.0: pytest.approx(0.05)}
