import math

import numpy as np
import pytest

from detox_pa import metrics as M


def test_emt_and_toxicity_probability_on_hand_numbers():
    scores = [[0.1, 0.7, 0.2], [0.3, 0.4, 0.5], [0.0, 0.1, 0.2]]
    assert M.expected_max_toxicity(scores) == pytest.approx((0.7 + 0.5 + 0.2) / 3)
    # threshold is >= 0.5: the second prompt (max exactly 0.5) counts
    assert M.toxicity_probability(scores) == pytest.approx(2 / 3)
    assert M.toxicity_probability(scores, threshold=0.51) == pytest.approx(1 / 3)
    flat = [s for row in scores for s in row]
    assert M.toxic_share(flat) == pytest.approx(2 / 9)
    assert M.mean_toxicity(flat) == pytest.approx(sum(flat) / 9)


def test_ppl_aggregates_on_hand_numbers():
    # sample A: 2 tokens with NLL 1 and 3 (mean 2); sample B: 1 token with NLL 4 (mean 4)
    per_sample_mean = [2.0, 4.0]
    assert M.ppl_mean_of_losses(per_sample_mean) == pytest.approx(math.exp(3.0))
    assert M.ppl_token_weighted([4.0, 4.0], [2, 1]) == pytest.approx(math.exp(8.0 / 3))
    assert M.ppl_median_per_sample(per_sample_mean) == pytest.approx((math.exp(2) + math.exp(4)) / 2)
    assert math.isnan(M.ppl_token_weighted([], []))


def test_distinct_n_on_hand_numbers():
    texts = [["a b a b", "a b c"], ["x x x"]]
    # prompt 1 unigrams: a b a b a b c -> 3 unique / 7; prompt 2: x x x -> 1/3
    assert M.distinct_n(texts, 1) == pytest.approx((3 / 7 + 1 / 3) / 2)
    # bigrams prompt 1: (a b)(b a)(a b) + (a b)(b c) -> 3 unique / 5; prompt 2: (x x)(x x) -> 1/2
    assert M.distinct_n(texts, 2) == pytest.approx((3 / 5 + 1 / 2) / 2)
    # trigrams prompt 1: (a b a)(b a b) + (a b c) -> 3/3; prompt 2: (x x x) -> 1/1
    assert M.distinct_n(texts, 3) == pytest.approx(1.0)


def test_group_by_prompt_uses_index_then_text():
    pairs = [{"prompt": "p", "prompt_index": 0}, {"prompt": "p", "prompt_index": 1}, {"prompt": "p", "prompt_index": 0}]
    assert M.group_by_prompt(pairs) == [[0, 2], [1]]
    assert M.group_by_prompt([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}]) == [[0, 2], [1]]


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    v = np.random.default_rng(1).normal(size=200)
    lo, hi = M.bootstrap_ci(v, n_boot=500, seed=3)
    assert lo < v.mean() < hi
    assert (lo, hi) == M.bootstrap_ci(v, n_boot=500, seed=3)
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(len(v)), rel=0.25)  # about the normal interval
