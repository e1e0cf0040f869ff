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


class PromptCache:
    """Prefixes (token ids) and their keys and values ([kv heads, tokens, head size] per cache array)."""

    def __init__(self, budget_bytes: int, bytes_per_token: int) -> None:
        self.budget, self.bytes_per_token = budget_bytes, bytes_per_token
        self.entries: OrderedDict[Tokens, list[np.ndarray]] = OrderedDict()  # least recently used first

    @property
    def used_bytes(self) -> int:
        return sum(len(tokens) for tokens in self.entries) * self.bytes_per_token

    def longest_tokens(self) -> int:
        """How many tokens of one prompt are kept at most."""
        return self.budget // (LONGEST_SHARE * self.bytes_per_token) if self.bytes_per_token else 0

    def match(self, prompt: list[int], limit: int) -> tuple[Tokens, int]:
        """The kept prefix that shares the most leading tokens with `prompt` (at most `limit`), and
        how many it shares; ((), 0) when none does."""
        best: tuple[Tokens, int] = ((), 0)
        for tokens in self.entries:
            shared, end = 0, min(limit, len(tokens))
            while shared < end and tokens[shared] == prompt[shared]:
                shared += 1
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
            del self.entries[shorter]
        while self.entries and self.used_bytes + len(kept) * self.bytes_per_token > self.budget:
            self.entries.popitem(last=False)
        self.entries[kept] = [array[:, : len(kept)].copy() for array in arrays]

    def values(self, tokens: Tokens) -> list[np.ndarray]:
        return self.entries[tokens]
