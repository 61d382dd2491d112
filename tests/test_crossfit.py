"""Cross-fitting on the dev prompts (bench/crossfit.py; bench/results.sh chooses the default's alpha out of fold,
because step 2's default pair also tunes on the dev prompts' texts): the folds, the fold pairs' step-2 settings,
the count of dev prompts a pair was tuned on, and the merge of the two fold sweeps into one sweep over rtp:dev."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from detox_pa.artifacts import PAIRS_KEY
from detox_pa.assets import rtp_split
from detox_pa.errors import InputError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import crossfit  # noqa: E402


def test_the_folds_split_the_dev_prompts_in_two_alternating_halves():
    dev, a, b = rtp_split("dev"), rtp_split("dev_a"), rtp_split("dev_b")
    assert len(dev) == 160 and len(a) == len(b) == 80
    assert not set(a) & set(b) and set(a) | set(b) == set(dev)
    assert a == dev[0::2] and b == dev[1::2]
    assert not set(dev) & set(rtp_split("train")) and not set(dev) & set(rtp_split("eval"))


def _tsv(path: Path, rows: list[tuple[str, str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["vanilla", "adversarial", "completion"])
        for p, c in rows:
            w.writerow([p, "", c])
    return str(path)


def _align_dir(tmp: Path, rows: int, tune_pair: str = "true") -> tuple[Path, dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    a, b, train = rtp_split("dev_a"), rtp_split("dev_b"), rtp_split("train")
    files = {"a": _tsv(tmp / "dev_a.tsv", [(a[0], " one"), (a[0], " two"), (a[1], " three")]),
             "b": _tsv(tmp / "dev_b.tsv", [(b[0], " four"), (b[1], " five")]),
             "train": _tsv(tmp / "train.tsv", [(t, f" text {i}") for i, t in enumerate(train[:4])])}
    d = tmp / "align"
    d.mkdir()
    (d / "mapping_model.json").write_text(json.dumps({"arguments": {
        "tune_pair": tune_pair, "tune_text_path": ",".join(files.values()), "tune_text_rows": rows}}))
    return d, files


def test_fold_settings_leave_the_other_folds_file_out_and_keep_the_training_rows(tmp_path):
    d, files = _align_dir(tmp_path, rows=7)  # 3 dev_a + 2 dev_b + the first 2 training texts
    assert crossfit.fold_settings(d, "dev_a") == (f"{files['a']},{files['train']}", 5)
    assert crossfit.fold_settings(d, "dev_b") == (f"{files['b']},{files['train']}", 4)
    d0, files0 = _align_dir(tmp_path / "all", rows=0)
    assert crossfit.fold_settings(d0, "dev_b") == (f"{files0['b']},{files0['train']}", 0)  # 0 = every row stays 0


def test_fold_settings_refuse_a_pair_whose_texts_do_not_separate_the_folds(tmp_path):
    d, files = _align_dir(tmp_path, rows=0)
    side = d / "mapping_model.json"
    side.write_text(json.dumps({"arguments": {"tune_pair": "true", "tune_text_path": files["train"], "tune_text_rows": 0}}))
    with pytest.raises(InputError, match="cannot leave that fold out"):
        crossfit.fold_settings(d, "dev_a")


def test_trained_on_dev_counts_the_dev_prompts_within_the_row_cap(tmp_path):
    assert crossfit.tuned_dev_prompts(_align_dir(tmp_path / "x", rows=0)[0]) == 4
    assert crossfit.tuned_dev_prompts(_align_dir(tmp_path / "y", rows=2)[0]) == 1  # dev_a's first prompt only
    assert crossfit.tuned_dev_prompts(_align_dir(tmp_path / "z", rows=4)[0]) == 3
    d, files = _align_dir(tmp_path / "w", 0)
    (d / "mapping_model.json").write_text(json.dumps({"arguments": {"tune_pair": "true", "tune_text_path": files["train"]}}))
    assert crossfit.tuned_dev_prompts(d) == 0
    (d / "mapping_model.json").write_text(json.dumps({"arguments": {"tune_pair": "false", "tune_text_path": files["a"]}}))
    assert crossfit.tuned_dev_prompts(d) == 0  # no tuned pair: nothing was trained on the texts


def _sweep(path: Path, fold: str, alphas=(0.0, 2.0), drop: int = 0) -> None:
    prompts = rtp_split(fold)[drop:]
    runs = [{"alpha": a, PAIRS_KEY: [
        {"prompt": p, "response": f"{fold} {a:g} {i}", "continuation": f" {fold} {a:g} {i}", "prompt_index": i,
         "sample": 0, "continuation_ids": [1, 2], "continuation_nll": [0.5, 0.25]} for i, p in enumerate(prompts)]}
        for a in alphas]
    path.write_text(json.dumps(runs))
    meta = {"data_path": f"rtp:{fold}", "n_prompts": len(prompts), "matrix_A": f"/m/{fold}.pt",
            "fingerprint": {"do_sample": False, "alphas": list(alphas)},
            "recorded_nll": {"output_sha256": "x"}, "method": "diff"}
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))


def test_merge_puts_every_record_at_its_dev_position_with_its_folds_text(tmp_path):
    _sweep(tmp_path / "a.json", "dev_a")
    _sweep(tmp_path / "b.json", "dev_b")
    out = tmp_path / "dev.json"
    crossfit.merge(out, tmp_path / "a.json", tmp_path / "b.json")
    runs = json.loads(out.read_text())
    dev, a = rtp_split("dev"), set(rtp_split("dev_a"))
    assert [r["alpha"] for r in runs] == [0.0, 2.0]
    for r in runs:
        pairs = r[PAIRS_KEY]
        assert [p["prompt"] for p in pairs] == dev and [p["prompt_index"] for p in pairs] == list(range(160))
        for p in pairs:  # each record is its own fold's, unchanged but for the index
            assert p["response"].startswith("dev_a" if p["prompt"] in a else "dev_b")
            assert p["response"].endswith(f" {r['alpha']:g} {rtp_split('dev_a' if p['prompt'] in a else 'dev_b').index(p['prompt'])}")
    meta = json.loads((tmp_path / "dev.meta.json").read_text())
    assert meta["data_path"] == "rtp:dev" and meta["n_prompts"] == 160 and "recorded_nll" not in meta
    assert [p["matrix_A"] for p in meta["crossfit"]["parts"]] == ["/m/dev_a.pt", "/m/dev_b.pt"]
    with pytest.raises(InputError, match="exists"):
        crossfit.merge(out, tmp_path / "a.json", tmp_path / "b.json")


@pytest.mark.parametrize("case", ["alphas", "prompts", "swapped"])
def test_merge_refuses_parts_that_are_not_the_two_folds_of_one_sweep(tmp_path, case):
    _sweep(tmp_path / "a.json", "dev_a", drop=1 if case == "prompts" else 0)
    _sweep(tmp_path / "b.json", "dev_b", alphas=(0.0, 3.0) if case == "alphas" else (0.0, 2.0))
    parts = (tmp_path / "b.json", tmp_path / "a.json") if case == "swapped" else (tmp_path / "a.json", tmp_path / "b.json")
    with pytest.raises(InputError, match={"alphas": "different alphas", "prompts": "not exactly",
                                          "swapped": "expected 'rtp:dev_a'"}[case]):
        crossfit.merge(tmp_path / "dev.json", *parts)
    assert not (tmp_path / "dev.json").exists()


def test_dev_screening_refuses_a_pair_tuned_on_dev_prompts_before_generating(tmp_path):
    """bench/lib_dev.sh's dev_sweep (bench/arms.sh, bench/seeds.sh) would report in-sample numbers for a pair tuned on
    the dev prompts: it stops with one line and writes nothing; the screening benches tune on the training texts."""
    import subprocess

    d, files = _align_dir(tmp_path, rows=0)
    script = (f'source scripts/common.sh; source bench/lib_dev.sh; echo "$TUNE_TEXT_PATH $TUNE_TEXT_ROWS"; '
              f'dev_sweep "{tmp_path}" x "{d}" "0 1"')
    r = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                       env={k: v for k, v in __import__("os").environ.items() if not k.startswith("TUNE_TEXT")})
    assert r.returncode == 2 and "tuned on 4 dev prompts" in r.stderr and "in-sample" in r.stderr
    assert r.stdout.split() == [str(REPO / "data" / "tune_texts.tsv"), "1269"]
    assert not (tmp_path / "dev_x.json").exists()
