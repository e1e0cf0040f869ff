"""`notes`: the demo's language model, trained here in about a minute and a half, so `make demo` streams
text a person can read (random weights write noise).

What it is, plainly: a 4-layer Llama of 0.8 million parameters with a 512-token byte-level
BPE tokenizer, both trained from nothing on maintenance notes this module writes from the
`maintenance` zoo model's AI4I 2020 records (a machine's readings in, a note in the style of a
shift log out). It has learned the notes' form and vocabulary; its numbers and judgments are
not to be trusted. It exists to show the road: a local Hugging Face folder (config, safetensors,
tokenizer, chat template, generation config) -> `maas package --llm` -> OpenAI API.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NAME = "notes"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
SHAPES = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
DEMO_QUESTION = "Machine M-1042 (type L): 1408 rpm at 52.3 Nm, tool wear 212 min, 8.1 K between process and air. Write a maintenance note."


def note(machine: str, t: str, speed: float, torque: float, wear: float, delta_k: float, modes: np.ndarray) -> str:
    """A shift-log note on one record, from the AI4I 2020 failure modes it shows."""
    power = torque * speed * 2 * np.pi / 60
    said = []
    if modes[0]:
        said.append(f"Replace the tool on {machine}: wear is {wear:.0f} min, past the 200 min mark.")
    if modes[1]:
        said.append(f"Heat dissipation on {machine} is poor: only {delta_k:.1f} K between process and air at "
                    f"{speed:.0f} rpm. Clean the cooling fins.")
    if modes[2]:
        said.append(f"Power on {machine} is out of range at {power:.0f} W. Check the drive and the load.")
    if modes[3]:
        said.append(f"{machine} is overstrained: {wear:.0f} min of wear at {torque:.1f} Nm is over the type {t} "
                    "limit. Reduce the load or change the tool.")
    if not said:
        said.append(f"{machine} runs within limits: {speed:.0f} rpm at {torque:.1f} Nm, tool wear {wear:.0f} min. "
                    + ("No action needed before the next shift." if wear < 180 else
                       "Plan a tool change within the next shifts."))
    return " ".join(said)


def dialogues(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """n chats: a machine's readings asked about, a note answered."""
    from maas.export.zoo.maintenance import generate

    records = generate(n, seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        air, proc, speed, torque, wear = (float(v) for v in records.numeric[i])
        t = str(records.product_type[i])
        machine = f"M-{rng.integers(1000, 9999)}"
        question = (f"Machine {machine} (type {t}): {speed:.0f} rpm at {torque:.1f} Nm, tool wear {wear:.0f} min, "
                    f"{proc - air:.1f} K between process and air. Write a maintenance note.")
        out.append([{"role": "user", "content": question},
                    {"role": "assistant", "content": note(machine, t, speed, torque, wear, proc - air, records.modes[i])}])
    return out


def train_tokenizer(texts: list[str], out: Path, vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def train(out: Path, steps: int = 400, seed: int = 0, batch: int = 24, window: int = 128, records: int = 6000) -> dict[str, Any]:
    """Train the notes model and write it to `out` as a Hugging Face folder; returns what happened."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    chats = dialogues(records, seed)
    texts = ["".join(f"<|{m['role']}|>{m['content']}</s>" for m in chat) for chat in chats]
    tok = train_tokenizer(texts, out)
    ids = np.concatenate([np.asarray(tok(t, add_special_tokens=False).input_ids, dtype=np.int64) for t in texts])
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **SHAPES)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    bar = tqdm(range(steps), desc=f"training {NAME} (a small Llama on maintenance notes)", unit="step")
    loss_value = float("nan")
    for _ in bar:
        starts = rng.integers(0, len(ids) - window - 1, batch)
        x = torch.from_numpy(np.stack([ids[s:s + window] for s in starts]))
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     do_sample=False).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    seconds = time.perf_counter() - started
    log.info("%s: %d parameters, %d steps, final loss %.3f, %.0f s", NAME, params, steps, loss_value, seconds)
    return {"parameters": params, "steps": steps, "final_loss": round(loss_value, 4), "seconds": round(seconds, 1),
            "tokens_trained": steps * batch * window}
