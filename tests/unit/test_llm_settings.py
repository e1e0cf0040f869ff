"""model-config.yaml's `handler:` block for language models (handlers/llm_settings.py): what a
user writes there is checked when the worker loads, every mistake named in one line."""
import pytest
from llm_settings import DEFAULT_SETTINGS, SettingsError, read_settings


def test_nothing_given_is_the_defaults_and_yaml_or_quoted_values_convert() -> None:
    assert read_settings(None) == DEFAULT_SETTINGS
    settings = read_settings({"max_streams": "4", "kv_cache_mb": 512.5, "batch_invariant": "off",
                              "allow_spinning": False, "prefill_chunk_tokens": 32.0, "engine": "generator",
                              "prompt_cache_mb": "0"})
    assert settings["max_streams"] == 4 and isinstance(settings["max_streams"], int)
    assert settings["kv_cache_mb"] == 512.5 and settings["prefill_chunk_tokens"] == 32
    assert settings["batch_invariant"] is False and settings["allow_spinning"] is False
    assert settings["engine"] == "generator" and settings["max_waiting"] == DEFAULT_SETTINGS["max_waiting"]
    assert settings["prompt_cache_mb"] == 0.0


def test_every_mistake_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        read_settings({"max_stream": 4, "batch_invariant": "flase", "prefill_chunk_tokens": "sixteen",
                       "max_streams": 0, "kv_cache_mb": float("nan"), "engine": "vllm", "max_waiting": 2.5,
                       "intra_op_threads": True, "prompt_cache_mb": -1})
    message = str(caught.value)
    for part in ("unknown setting 'max_stream'", "batch_invariant must be true or false, not 'flase'",
                 "prefill_chunk_tokens must be an integer of at least 1, not 'sixteen'",
                 "max_streams must be an integer of at least 1, not 0", "kv_cache_mb must be a number",
                 "engine must be one of batch, generator, not 'vllm'", "max_waiting must be an integer",
                 "intra_op_threads must be an integer", "prompt_cache_mb must be a number of at least 0, not -1"):
        assert part in message, message
    assert message.startswith("model-config.yaml handler: ") and "settings: max_streams, max_waiting" in message
