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


# Tokens a nucleus (top_p) is first looked for among: it is found there unless the distribution is
# flat, and partitioning out this many costs a fraction of sorting a vocabulary of 50-150k
NUCLEUS_FIRST = 256
DRAW_BLOCK = 1024
SCAN_BLOCK = 64
FLAT_SORTED = 4096  # below this many weights, sorting them beats bucketing them


def next_token(logits: np.ndarray, req: GenerationRequest, rng: np.random.Generator) -> int:
    """Greedy, or a draw from the tempered distribution cut by top_k and top_p. Per token and stream
    on the hot path, so in float32, and the vocabulary never sorted where a partition will do: a
    128k vocabulary took 17.4 ms a token with top_p 0.9 sorted whole in float64 and drawn by
    rng.choice, 2.7 ms without top_p (more than a decode step of a small model)."""
    best = logits.max()  # NaN if any is
    if np.isnan(best) or best == -np.inf:
        raise ValueError("the model's logits are not numbers (NaN, or no finite one)")
    if req.greedy:
        return int(np.argmax(logits))
    ids = None  # the candidates' token ids, when cut to fewer than the vocabulary
    if req.top_k and req.top_k < logits.size:
        ids = _largest(logits, req.top_k)
        logits = logits[ids]
    sharpness = 1.0 / req.temperature
    if sharpness > 1e30 or best == np.inf:  # a temperature near 0 (1e-300 is valid): the best token
        return int(ids[np.argmax(logits)]) if ids is not None else int(np.argmax(logits))
    # Shifted first: the best token's weight is 1, the others' in [0, 1], none overflows
    weights = np.exp((logits - best) * np.float32(sharpness), dtype=np.float32)
    if req.top_p < 1.0:
        keep = _nucleus(weights, req.top_p)
        weights = weights[keep]
        ids = keep if ids is None else ids[keep]
    pick = _draw(weights, rng)
    return int(ids[pick]) if ids is not None else pick


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn in proportion to `weights`: the block of DRAW_BLOCK it falls in first, from the
    blocks' sums, then its place in that block. A running sum is sequential (1.3 ms over 128k
    weights in float64); block sums vectorize, and only one block is summed running."""
    blocks = -(-weights.size // DRAW_BLOCK)
    padded = weights if weights.size == blocks * DRAW_BLOCK else np.pad(weights, (0, blocks * DRAW_BLOCK - weights.size))
    cdf = np.cumsum(padded.reshape(blocks, DRAW_BLOCK).sum(1, dtype=np.float64))
    target = rng.random() * cdf[-1]
    block = min(int(np.searchsorted(cdf, target, side="right")), blocks - 1)
    target -= cdf[block - 1] if block else 0.0
    start = block * DRAW_BLOCK
    within = np.cumsum(weights[start:start + DRAW_BLOCK], dtype=np.float64)
    return start + min(int(np.searchsorted(within, target, side="right")), within.size - 1)


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest `values` (in no order). Partitioning 128k values takes ~1 ms; the
    k-th largest of the blocks' maxima is at most the k-th largest value (k blocks have one at least
    as large), so only the values from it up are partitioned: a few times k."""
    if k >= values.size:
        return np.arange(values.size)
    blocks = -(-values.size // SCAN_BLOCK)
    if blocks <= 2 * k:
        return np.argpartition(values, -k)[-k:]
    padded = values if values.size == blocks * SCAN_BLOCK else np.pad(
        values, (0, blocks * SCAN_BLOCK - values.size), constant_values=-np.inf)
    floor = np.partition(padded.reshape(blocks, SCAN_BLOCK).max(1), -k)[-k]
    near = np.flatnonzero(values >= floor)
    return near[np.argpartition(values[near], -k)[-k:]]


def _nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most likely tokens whose mass reaches `top_p` of the whole."""
    target = top_p * weights.sum(dtype=np.float64)
    if weights.size > NUCLEUS_FIRST:
        head = _largest(weights, NUCLEUS_FIRST)
        order = head[np.argsort(-weights[head], kind="stable")]
        mass = np.cumsum(weights[order], dtype=np.float64)
        if mass[-1] >= target:
            return order[: int(np.searchsorted(mass, target)) + 1]
    return _nucleus_of_flat(weights, target)


def _nucleus_of_flat(weights: np.ndarray, target: float) -> np.ndarray:
    """The nucleus of a distribution the head misses (a flat one: random weights, a high temperature).
    A non-negative float32's bits order as its value does, so their top 16 cut the weights into
    buckets of 1/128 of an octave in order: one pass sums each bucket, a running sum over the ~16k
    buckets from the top finds the one the nucleus ends in, and only that bucket's weights are sorted
    (a 128k vocabulary: 0.8 ms a token against 4.1 sorting it all). Tokens tied with the last are kept."""
    if weights.size <= FLAT_SORTED:
        ranked = np.sort(weights)[::-1]
        least = ranked[min(int(np.searchsorted(np.cumsum(ranked, dtype=np.float64), target)), ranked.size - 1)]
        return np.flatnonzero(weights >= least)
    keys = (np.ascontiguousarray(weights, dtype=np.float32).view(np.int32) >> 16).astype(np.intp)  # bincount: 6x slower on int32
    from_top = np.cumsum(np.bincount(keys, weights=weights)[::-1])
    if target >= from_top[-1]:  # top_p a rounding error from 1
        return np.arange(weights.size)
    passed = int(np.searchsorted(from_top, target))  # buckets wholly inside the nucleus, from the top
    ranked = np.sort(weights[keys == from_top.size - 1 - passed])[::-1]
    above = from_top[passed - 1] if passed else 0.0
    least = ranked[min(int(np.searchsorted(above + np.cumsum(ranked, dtype=np.float64), target)), ranked.size - 1)]
    return np.flatnonzero(weights >= least)
