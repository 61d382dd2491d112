"""--method topk, the truncation control: the target alone with only its top-k tokens eligible, exactly the
restriction --method diff applies. Sampled, it equals diff with a zero offset (A = 0) token for token, and differs
from the unrestricted target; greedy, it equals the target alone."""

import json

import pytest
import torch

import tiny
from detox_pa import generation
from detox_pa.cli import run


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("topk")
    tiny.make_model_folder(d, "target", "gemma3", "sp", seed=1)
    tiny.make_model_folder(d, "expert", "llama", "bl", seed=2, hidden=24, layers=2)
    tiny.make_model_folder(d, "anti", "llama", "bl", seed=3, hidden=24, layers=2)
    torch.save({"mapping": torch.zeros(24, 32)}, d / "A0.pt")
    prompts = [" ".join(s.split()[:k]) for k, s in zip([2, 5, 3, 4], tiny.corpus(4, seed=9))]
    (d / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return d


def _gen(d, out, method, *extra):
    argv = ["--method", method, "--top_k", "3", "--target_model", str(d / "target"), "--data_path", str(d / "p.jsonl"),
            "--output_path", str(out), "--device", "cpu", "--max_new_tokens", "6", "--alphas", "0", "1", *extra]
    assert run(generation.run, generation.parse_args, argv) == 0
    return {e["alpha"]: [p["continuation"] for p in e["prompt-response pairs"]] for e in json.loads(out.read_text())}


SAMPLED = ("--do_sample", "--num_samples", "3", "--top_p", "0.9")


def test_sampled_topk_is_diffs_restriction_without_its_offset(d, tmp_path):
    ctl = _gen(d, tmp_path / "ctl.json", "topk", *SAMPLED)
    zero = _gen(d, tmp_path / "zero.json", "diff", *SAMPLED, "--teacher_model", str(d / "expert"),
                "--anti_teacher_model", str(d / "anti"), "--matrix_A", str(d / "A0.pt"))
    assert ctl[1.0] == zero[1.0]  # same seeds, same restriction, no offset: the same samples
    assert ctl[0.0] == zero[0.0]
    assert ctl[1.0] != ctl[0.0]  # and the restriction alone changes what is sampled


def test_greedy_topk_is_the_target_alone(d, tmp_path):
    res = _gen(d, tmp_path / "g.json", "topk")
    assert res[0.0] == res[1.0]
