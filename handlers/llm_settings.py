"""The generation handler's settings (model-config.yaml `handler:`) and their defaults: read by the
handler and written into every language-model archive by the build (export/llm_build.py)."""
import math
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
    # the next step's decode starts as a step's answers go out, and runs while they travel and the
    # next step comes back (TorchServe's round trip); the same tokens either way
    "overlap_decode": True,
    # a prompt that begins as the last one did (a system prompt, a chat template's head) is prefilled
    # from where they part: the staging row still holds the last prompt's keys and values
    "reuse_prompt_prefix": True,
    # ... or as one of the prompts before it did: their keys and values are kept, least recently used
    # dropped first, up to this many MB beside the KV cache (one prompt is kept up to a quarter of it)
    "prompt_cache_mb": 128,
    # an int4 build's products on maas's own AVX-512 VNNI kernel (int4_vnni.c, built with gcc at load)
    # where the CPU has it: 8 streams' step ~1.4x faster than ONNX Runtime's MatMulNBits, and a
    # stream's logits the same alone as among others without a spare row; false: MatMulNBits
    "int4_vnni": True,
    # keys and values cached as int8 (kv_int8.py, the batch engine): a quarter of the memory a token, and
    # attention reads a quarter of the bytes; scales calibrated once at first load, checked against the float cache
    "kv_cache_int8": False,
    "engine": "batch",  # or "generator": one ONNX Runtime GenAI Generator per sequence (CUDA always)
}

# The smallest value each numeric setting takes
_LEAST = {"max_streams": 1, "max_waiting": 0, "max_sequence_tokens": 0, "kv_cache_mb": 0.01, "prompt_cache_mb": 0,
          "prefill_chunk_tokens": 1, "idle_prefill_tokens": 1, "intra_op_threads": 0}
_MEGABYTES = ("kv_cache_mb", "prompt_cache_mb")  # may be fractional
_ENGINES = ("batch", "generator")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class SettingsError(ValueError):
    """model-config.yaml's `handler:` block holds a setting this handler cannot use."""


def read_settings(given: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overlaid with `given` (model-config.yaml's `handler:`), each checked and
    converted: an unknown name (a typo), a number that is not one, a boolean that is not one. Every
    problem is named in one error, so the worker's log says what to fix instead of a traceback."""
    problems, settings = [], dict(DEFAULT_SETTINGS)
    for name, value in (given or {}).items():
        default = DEFAULT_SETTINGS.get(name)
        if name not in DEFAULT_SETTINGS:
            problems.append(f"unknown setting {name!r}")
        elif isinstance(default, bool):
            if str(value).strip().lower() not in _TRUE + _FALSE:
                problems.append(f"{name} must be true or false, not {value!r}")
            settings[name] = is_true(value)
        elif name == "engine":
            if value not in _ENGINES:
                problems.append(f"engine must be one of {', '.join(_ENGINES)}, not {value!r}")
            settings[name] = value
        else:
            number = _number(value, float if name in _MEGABYTES else int)
            if number is None or number < _LEAST[name]:
                problems.append(f"{name} must be {'a number' if name in _MEGABYTES else 'an integer'} of at "
                                f"least {_LEAST[name]}, not {value!r}")
            settings[name] = number
    if problems:
        raise SettingsError(f"model-config.yaml handler: {'; '.join(problems)} (settings: {', '.join(DEFAULT_SETTINGS)})")
    return settings


def is_true(value: Any) -> bool:
    """A YAML boolean, or a quoted one ("true", "yes", "on", "1")."""
    return str(value).strip().lower() in _TRUE


def _number(value: Any, kind: type) -> float | int | None:
    """`value` as `kind` (int or float), from YAML's number or a quoted one; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or (kind is int and value != int(value)):
        return None
    return kind(value)
