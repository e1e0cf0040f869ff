"""The generation handler's settings (model-config.yaml `handler:`) and their defaults: read by the
handler and written into every language-model archive by the build (export/llm_build.py)."""
from typing import Any

# model-config.yaml `handler:` settings and their defaults. The KV cache is allocated once, at start:
# (max_streams + 2) rows of max_sequence_tokens tokens (0: the model's context), cut to fit kv_cache_mb.
DEFAULT_SETTINGS: dict[str, Any] = {
    "max_streams": 8,  # sequences decoded together (KV cache rows)
    "max_waiting": 8,  # requests queued for a row; beyond them a 429 with Retry-After
    "max_sequence_tokens": 0,  # prompt + output per sequence; 0: the model's context length
    "kv_cache_mb": 1024,
    "prefill_chunk_tokens": 16,  # prompt tokens prefilled per step, between decode steps (bench: 16 beat 64)
    "idle_prefill_tokens": 512,  # ... and per step while no stream decodes (nobody to keep waiting)
    "intra_op_threads": 0,  # 0: cores // workers
    # true: a stream gets the same tokens alone as among others (a lone stream decodes with a spare
    # row, 15 % slower: int4 computes one row on another kernel than several); false: that 15 % back
    "batch_invariant": True,
    # ONNX Runtime's threads spin between a step's parallel sections instead of sleeping: a step is
    # ~150 of them back to back (bench: one stream and 8 streams a quarter faster in process)
    "allow_spinning": True,
    "engine": "batch",  # or "generator": one ONNX Runtime GenAI Generator per sequence (CUDA always)
}
