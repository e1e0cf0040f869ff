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
