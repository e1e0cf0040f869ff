"""Keys and values of recent prompts, kept so that a prompt beginning as one of them did is
prefilled only from where the two part (a system prompt, a chat template's head, a conversation
sent again with one more turn). llama.cpp's server keeps one prompt per slot and vLLM hashes
blocks of them; here the engine's staging row holds the last prompt, and this cache the ones
before it, least recently used dropped first, within a byte budget of its own beside the KV
cache's. Copying a kept prefix back costs a memory copy (~3.6 MB for 37 tokens of the 568M
Llama's fp32 cache) where computing it costs a pass over the weights per chunk.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

Tokens = tuple[int, ...]
# A prompt longer than this share of the budget is kept only up to it: its head is what others share
LONGEST_SHARE = 4
# Prompts kept at most, whatever their size: a request's lookup compares it with each of them
MOST_ENTRIES = 256


def shared_head(a: Tokens, b: Tokens, limit: int) -> int:
    """How many leading tokens `a` and `b` share, at most `limit`: a binary search over slice
    comparisons, which run in C (a 200-token system prompt shared with 256 kept ones: 256 x 8)."""
    low, high = 0, min(len(a), len(b), limit)
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PromptCache:
    """Prefixes (token ids) and their keys and values ([kv heads, tokens, head size] per cache array)."""

    def __init__(self, budget_bytes: int, bytes_per_token: int) -> None:
        self.budget, self.bytes_per_token = budget_bytes, bytes_per_token
        self.entries: OrderedDict[Tokens, list[np.ndarray]] = OrderedDict()  # least recently used first
        self.kept_tokens = 0

    @property
    def used_bytes(self) -> int:
        return self.kept_tokens * self.bytes_per_token

    def longest_tokens(self) -> int:
        """How many tokens of one prompt are kept at most."""
        return self.budget // (LONGEST_SHARE * self.bytes_per_token) if self.bytes_per_token else 0

    def match(self, prompt: Tokens | list[int], limit: int) -> tuple[Tokens, int]:
        """The kept prefix that shares the most leading tokens with `prompt` (at most `limit`), and
        how many it shares; ((), 0) when none does."""
        best: tuple[Tokens, int] = ((), 0)
        wanted = tuple(prompt)
        for tokens in self.entries:
            shared = shared_head(tokens, wanted, limit)
            if shared > best[1]:
                best = (tokens, shared)
        if best[1]:
            self.entries.move_to_end(best[0])
        return best

    def keep(self, tokens: list[int], arrays: list[np.ndarray]) -> None:
        """Keep `tokens`' keys and values (copied; cut to the longest kept) unless a kept prefix holds
        them already; drop the prefixes it extends, then the least recently used until it fits."""
        kept = tuple(tokens[: self.longest_tokens()])
        holder = next((t for t in self.entries if t[: len(kept)] == kept), None) if kept else ()
        if holder is not None:
            if holder:
                self.entries.move_to_end(holder)
            return
        for shorter in [t for t in self.entries if kept[: len(t)] == t]:
            self._drop(shorter)
        while self.entries and (self.used_bytes + len(kept) * self.bytes_per_token > self.budget
                                or len(self.entries) >= MOST_ENTRIES):
            self._drop(next(iter(self.entries)))
        self.entries[kept] = [array[:, : len(kept)].copy() for array in arrays]
        self.kept_tokens += len(kept)

    def values(self, tokens: Tokens) -> list[np.ndarray]:
        return self.entries[tokens]

    def _drop(self, tokens: Tokens) -> None:
        del self.entries[tokens]
        self.kept_tokens -= len(tokens)
