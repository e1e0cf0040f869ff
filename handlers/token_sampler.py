"""The next token from a sequence's logits: greedy, or sampled with temperature, top-k and top-p.

Each sequence samples with its own generator (seeded from the request's `seed`), so its tokens
depend on nothing but its own logits: the same seed gives the same text alone or among others.
"""
from __future__ import annotations

import os

import numpy as np
from openai_api import GenerationRequest, seed_for_sampling


def generator_for(req: GenerationRequest) -> np.random.Generator:
    seed = seed_for_sampling(req.seed) if req.seed is not None else int.from_bytes(os.urandom(8), "little")
    return np.random.default_rng(seed)


def next_token(logits: np.ndarray, req: GenerationRequest, rng: np.random.Generator) -> int:
    if not np.isfinite(logits).any() or np.isnan(logits).any():
        raise ValueError("the model's logits are not numbers (NaN, or no finite one)")
    if req.greedy:
        return int(np.argmax(logits))
    # Shifted before the division: the best token's score is 0 and the others' are <= 0, so a
    # temperature near 0 (1e-300 is valid) makes them -inf, not inf - inf = NaN.
    scores = logits.astype(np.float64)
    with np.errstate(over="ignore"):
        scores = (scores - scores.max()) / req.temperature
    if req.top_k and req.top_k < scores.size:
        kth = np.partition(scores, -req.top_k)[-req.top_k]
        scores[scores < kth] = -np.inf
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if req.top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
        order = np.argsort(-probs, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), req.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))
