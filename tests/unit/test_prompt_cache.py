"""The generation engine's cache of recent prompts (handlers/prompt_cache.py): pure logic."""
from __future__ import annotations

import numpy as np
from prompt_cache import MOST_ENTRIES, PromptCache, shared_head

TOKEN_BYTES = 2 * 3 * 4  # two cache arrays of [3 heads, tokens, 1] float32 below


def row(tokens: list[int]) -> list[np.ndarray]:
    """Two arrays of a staging row whose position i holds token i's id, past them junk."""
    values = np.full((3, 50, 1), -1.0, np.float32)
    values[:, : len(tokens), 0] = tokens
    return [values, values * 10]


def test_the_longest_shared_head_is_found_and_its_values_are_the_ones_kept() -> None:
    cache = PromptCache(100 * TOKEN_BYTES, TOKEN_BYTES)
    system, other = [1, 2, 3, 4, 5], [9, 8, 7]
    cache.keep([*system, 20, 21], row([*system, 20, 21]))
    cache.keep(other, row(other))
    tokens, shared = cache.match([*system, 30, 31], limit=6)
    assert (tokens, shared) == ((*system, 20, 21), 5)
    assert cache.values(tokens)[1][0, :, 0].tolist() == [10.0 * t for t in (*system, 20, 21)]
    assert cache.match([*system, 20, 21], limit=6)[1] == 6  # the last token is left to compute
    assert cache.match([5, 5], limit=1) == ((), 0)


def test_the_least_recently_used_go_first_and_a_prompt_replaces_the_heads_it_extends() -> None:
    cache = PromptCache(8 * TOKEN_BYTES, TOKEN_BYTES)  # one prompt up to 8 // 4 = 2 tokens
    assert cache.longest_tokens() == 2
    cache.keep([1], row([1]))
    cache.keep([1, 2, 3, 4], row([1, 2, 3, 4]))  # kept as its head, (1, 2), which replaces (1,)
    cache.keep([1], row([1]))  # held already
    for tokens in ([5, 6], [7, 8], [3, 4]):
        cache.keep(tokens, row(tokens))
    assert list(cache.entries) == [(1, 2), (5, 6), (7, 8), (3, 4)] and cache.used_bytes == cache.budget
    cache.match([1, 2, 9], limit=2)  # used: now the most recent
    cache.keep([9, 10, 11], row([9, 10, 11]))
    assert list(cache.entries) == [(7, 8), (3, 4), (1, 2), (9, 10)]
    cache.keep([3], row([3]))  # held by (3, 4), which is now the most recent
    assert list(cache.entries)[-1] == (3, 4)


def test_no_budget_keeps_nothing() -> None:
    cache = PromptCache(0, TOKEN_BYTES)
    cache.keep([1, 2, 3], row([1, 2, 3]))
    assert not cache.entries and cache.match([1, 2, 3], limit=2) == ((), 0)


def test_shared_heads_are_counted_up_to_the_limit() -> None:
    assert shared_head((1, 2, 3, 4), (1, 2, 3, 5), limit=10) == 3
    assert shared_head((1, 2, 3), (1, 2, 3, 4), limit=10) == 3
    assert shared_head((1, 2, 3), (1, 2, 3), limit=2) == 2
    assert shared_head((9,), (1,), limit=5) == 0 and shared_head((), (1,), limit=5) == 0
    long = tuple(range(1000))
    assert all(shared_head(long, long[:k] + (-1,), limit=2000) == k for k in (0, 1, 499, 500, 999))


def test_at_most_so_many_prompts_are_kept() -> None:
    cache = PromptCache(10**9, TOKEN_BYTES)
    for i in range(MOST_ENTRIES + 5):
        cache.keep([i, i], row([i, i]))
    assert len(cache.entries) == MOST_ENTRIES and (0, 0) not in cache.entries
    assert cache.used_bytes == 2 * MOST_ENTRIES * TOKEN_BYTES
