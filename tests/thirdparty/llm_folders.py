"""Local Hugging Face language-model folders no one here trained: seeded random weights from
`transformers` configurations of the architectures ONNX Runtime GenAI's builder supports, and a
byte-level BPE tokenizer trained here by `tokenizers`, with a chat template and a generation
config. Never a hub: these test the machinery (random weights write noise)."""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
# The shapes shared by every architecture here: small enough to build in seconds.
SHAPES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
ARCHITECTURES = ("llama", "qwen2", "mistral", "phi3")


def corpus() -> list[str]:
    """Text the tokenizer learns from: maintenance sentences and a little prose."""
    parts = ["spindle", "bearing", "belt", "pump", "valve", "motor", "gearbox", "sensor"]
    return [f"The {parts[i % 8]} {i} reports vibration of {i * 3 % 97} mm/s; replace the {parts[(i * 5) % 8]} "
            f"before shift {i % 3 + 1}. Temperature {290 + i % 20} K, torque {i % 70} Nm." for i in range(400)]


def train_tokenizer(out: Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer (tokenizer.json + config) written to `out`; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def config_for(architecture: str, vocab_size: int, tok, **shapes):
    """The `transformers` configuration of `architecture` at these shapes."""
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig, "phi3": transformers.Phi3Config}[architecture]
    sizes = {**SHAPES, **shapes}
    extra = {"original_max_position_embeddings": sizes["max_position_embeddings"]} if architecture == "phi3" else {}
    return cls(vocab_size=vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **sizes, **extra)


def make_folder(out: Path, architecture: str = "llama", seed: int = 0, vocab_size: int = 400, **shapes) -> Path:
    """A local folder like a downloaded checkpoint: config, safetensors, tokenizer, generation config."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out, vocab_size)
    config = config_for(architecture, len(tok), tok, **shapes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     do_sample=False).save_pretrained(out)
    return out
