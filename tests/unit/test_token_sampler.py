"""The generation handler's sampler (handlers/token_sampler.py): pure logic."""
from __future__ import annotations

import numpy as np
import pytest
from openai_api import GenerationRequest
from token_sampler import generator_for, next_token

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))


def draws(req: GenerationRequest, n: int = 4000) -> np.ndarray:
    rng = generator_for(req)
    return np.bincount([next_token(LOGITS, req, rng) for _ in range(n)], minlength=4) / n


def test_greedy_takes_the_most_likely_token() -> None:
    assert next_token(LOGITS, GenerationRequest("completion", "x", temperature=0.0), generator_for(
        GenerationRequest("completion", "x"))) == 0


def test_sampling_follows_the_distribution_and_its_cuts() -> None:
    plain = draws(GenerationRequest("completion", "x", seed=1))
    assert np.allclose(plain, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    top_k = draws(GenerationRequest("completion", "x", seed=1, top_k=2))
    assert top_k[2:].sum() == 0 and np.allclose(top_k[:2], [0.625, 0.375], atol=0.03)
    top_p = draws(GenerationRequest("completion", "x", seed=1, top_p=0.7))  # 0.5 + 0.3 reach 0.7
    assert top_p[2:].sum() == 0 and np.allclose(top_p[:2], [0.625, 0.375], atol=0.03)
    cold = draws(GenerationRequest("completion", "x", seed=1, temperature=0.25))
    assert cold[0] > 0.85


def test_the_same_seed_gives_the_same_tokens() -> None:
    def tokens(seed: int) -> list[int]:
        req = GenerationRequest("completion", "x", seed=seed, top_p=0.95)
        rng = generator_for(req)
        return [next_token(LOGITS, req, rng) for _ in range(50)]

    assert tokens(7) == tokens(7) != tokens(8)


def test_a_temperature_near_zero_samples_the_best_token_and_bad_logits_are_an_error() -> None:
    for temperature in (1e-300, 1e-30, 5e-324):
        req = GenerationRequest("completion", "x", seed=1, temperature=temperature, top_p=0.5)
        assert next_token(LOGITS, req, generator_for(req)) == 0
    req = GenerationRequest("completion", "x", seed=1)
    for bad in (np.array([0.0, np.nan, 1.0], np.float32), np.full(3, -np.inf, np.float32)):
        with pytest.raises(ValueError, match="not numbers"):
            next_token(bad, req, generator_for(req))


def test_the_fast_paths_choose_what_a_full_sort_would_over_large_vocabularies() -> None:
    """The k largest by block maxima, the nucleus from a partitioned head (or the sorted values when
    the distribution is flat) and the two-level draw agree with the plain definitions."""
    from token_sampler import _draw, _largest, _nucleus

    rng = np.random.default_rng(0)
    for size in (50, 1000, 49_153, 128_256):
        for spread in (0.5, 8.0):  # flat (the head misses the nucleus) and peaked
            values = (rng.standard_normal(size) * spread).astype(np.float32)
            for k in (1, 40, 256):
                assert set(_largest(values, k)) == set(np.argsort(-values, kind="stable")[:k]), (size, k)
            weights = np.exp(values - values.max())
            order = np.argsort(-weights, kind="stable")
            for top_p in (0.5, 0.9):
                want = order[: int(np.searchsorted(np.cumsum(weights[order], dtype=np.float64),
                                                   top_p * weights.sum(dtype=np.float64))) + 1]
                got = _nucleus(weights, top_p)
                assert abs(len(got) - len(want)) <= 2 and len(set(got) ^ set(want)) <= 2, (size, spread, top_p)
    weights = np.zeros(5000, np.float32)
    weights[[3, 1030, 4999]] = [0.2, 0.5, 0.3]  # across blocks of 1024, one in the last, partial block
    draws = np.bincount([_draw(weights, rng) for _ in range(6000)], minlength=5000)
    assert draws.sum() == draws[[3, 1030, 4999]].sum()
    assert np.allclose(draws[[3, 1030, 4999]] / 6000, [0.2, 0.5, 0.3], atol=0.03)


def test_a_flat_distributions_nucleus_is_exactly_the_smallest_set_reaching_top_p() -> None:
    """Random weights give flat distributions whose nucleus the partitioned head misses; the bucketed
    search over the float32 bits finds the same set as sorting everything in float64 would."""
    from token_sampler import FLAT_SORTED, _nucleus

    rng = np.random.default_rng(3)
    for size in (FLAT_SORTED - 1, FLAT_SORTED + 1, 151_936):
        for spread in (0.3, 1.0, 2.0):
            values = (rng.standard_normal(size) * spread).astype(np.float32)
            weights = np.exp(values - values.max())
            order = np.argsort(-weights, kind="stable")
            mass = np.cumsum(weights[order], dtype=np.float64)
            for top_p in (0.2, 0.9, 0.999):
                want = order[: int(np.searchsorted(mass, top_p * weights.sum(dtype=np.float64))) + 1]
                assert set(_nucleus(weights, top_p).tolist()) == set(want.tolist()), (size, spread, top_p)
    assert len(_nucleus(np.ones(FLAT_SORTED * 2, np.float32), 1 - 1e-15)) == FLAT_SORTED * 2  # ties all kept


def test_sampling_a_large_vocabulary_takes_a_fraction_of_a_decode_step() -> None:
    """A 128k vocabulary (Llama 3's) sampled with temperature, top_k and top_p: the sort it no longer
    does took 17 ms a token. Not a timing test: 30 tokens in a generous 2 s."""
    import time

    logits = np.random.default_rng(1).standard_normal(128_256).astype(np.float32) * 2
    logits[:5] += 12  # a peaked distribution, as a trained model's
    req = GenerationRequest("completion", "x", seed=1, temperature=0.7, top_k=50, top_p=0.9)
    rng = generator_for(req)
    started = time.perf_counter()
    picked = {next_token(logits, req, rng) for _ in range(30)}
    assert time.perf_counter() - started < 2.0 and picked <= set(range(5)) | set(np.argsort(-logits)[:50].tolist())
