"""Decoding engines for the generation handler: logits for the next token of many sequences.

`BatchEngine` (CPU): in-flight batching on the ONNX graph ONNX Runtime GenAI built. Its
GroupQueryAttention reads each row's own length from the attention mask, so sequences of
different lengths decode together in one run, one pass over the weights for all of them.
The KV cache is preallocated once ([slots, kv heads, max_len, head size] per layer and per K/V,
the worker's whole KV budget) and shared between past and present (IO binding), so a step
writes one new position per row in place and never allocates. Running sequences hold slots
0..n-1, so a batch is always a contiguous prefix; when one leaves, the last moves into its slot.
GroupQueryAttention refuses several rows of more than one new token with a past, so prompts
are prefilled one at a time, in chunks, in a staging row of their own, and copied into a
slot when done: a long prompt costs running streams one chunk per step, not a freeze.
The staging row keeps what the last prompt left there, and a `PromptCache` the prompts before
it: a new prompt that begins as one of them did (a shared system prompt, a chat template's head)
starts after that common part (`reuse_prefix`).

`GeneratorEngine`: one ONNX Runtime GenAI Generator per sequence, decoded one after another.
It is what CUDA archives run (GenAI keeps the KV cache on the device) and the baseline the
bench compares batching with.

Both return float32 logits of each sequence's last token; sampling is the handler's.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

try:  # flat, as inside an archive
    import kv_int8
    from derived import locked, writable
    from int4_vnni import prepare as prepare_int4_vnni
    from prompt_cache import PromptCache, shared_head
except ImportError:  # maas.handlers.llm_engine, as the bench imports it in process
    from . import kv_int8
    from .derived import locked, writable
    from .int4_vnni import prepare as prepare_int4_vnni
    from .prompt_cache import PromptCache, shared_head

log = logging.getLogger(__name__)

Logits = np.ndarray  # [vocab] float32
# The build's decoder with its LM head fed one position (`logits_at`): written beside model.onnx by
# maas package (export/batch_decoder.py); a prompt's chunk then computes one position's logits, not all
BATCH_DECODER = "batch_decoder.onnx"
_CACHE_TYPES = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}  # the KV cache's, by the graph's past inputs
LOGITS_AT = "logits_at"


class EngineFull(Exception):
    """No slot is free for another running sequence."""


class _Rows:
    """What both engines share: `slots` rows, the running sequences' keys in `key_at`."""

    slots: int
    key_at: list[str]

    @property
    def running(self) -> int:
        return len(self.key_at)

    def free_slots(self) -> int:
        return self.slots - len(self.key_at)


class BatchEngine(_Rows):
    """In-flight batching over the GenAI-built decoder graph, on ONNX Runtime's CPU provider."""

    kind = "batch"

    def __init__(self, model_dir: Path, slots: int, max_len: int, threads: int, budget_bytes: int,
                 batch_invariant: bool = True, allow_spinning: bool = True, reuse_prompt_prefix: bool = True,
                 prompt_cache_bytes: int = 0, int4_vnni: bool = True, kv_int8_text: list[int] | None = None) -> None:
        """`max_len` tokens per sequence, fewer if the cache's rows of them would not fit `budget_bytes`:
        `slots` (one more if odd where a batch-invariant step runs an even number of rows), the staging row, the lone row.
        `prompt_cache_bytes`: recent prompts' keys and values kept beyond the staging row's last one.
        `batch_invariant`: a sequence's logits do not depend on how many others decode beside it.
        `allow_spinning`: ONNX Runtime's intra-op threads spin between the ~150 parallel sections of a
        step instead of sleeping (568M Llama, int4, 2 cores: one row 15.3 -> 11.4 ms a step, 8 rows
        37 -> 27 ms, in process). `kv_int8_text`: tokens to calibrate an int8 KV cache on (kv_int8.py)."""
        import onnxruntime as ort

        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        names = decoder["inputs"], decoder["outputs"]
        self.input_ids, self.mask = names[0]["input_ids"], names[0]["attention_mask"]
        self.logits_name = names[1]["logits"]
        self.kv_pairs = [(names[0][f"past_{kv}_names"] % layer, names[1][f"present_{kv}_names"] % layer)
                         for layer in range(self.layers) for kv in ("key", "value")]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if threads > 1 and not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.ort = ort
        gathered = model_dir / BATCH_DECODER
        self.decoder_path = gathered if gathered.is_file() else model_dir / decoder["filename"]
        self.gathers = gathered.is_file()  # else the logits of every position come back (archives before it)
        prepared = prepare_int4_vnni(self.decoder_path) if int4_vnni else None
        self.decoder_path, self.custom_ops, left = prepared or (self.decoder_path, None, 0)  # custom_ops: its library
        if self.custom_ops:
            options.register_custom_ops_library(str(self.custom_ops))
        # MatMulNBits computes rows in pairs and a row alone on another kernel (see decode); the VNNI
        # kernel computes each row the same whatever the others: no spare rows when it has every product
        self.pairs_rows = batch_invariant and (not prepared or left > 0)
        self.int4_kernel = "int4_vnni" if prepared else "onnxruntime"
        dtype = self._open(options, (kv_int8_text or [])[: min(max_len, kv_int8.CALIBRATION_TOKENS)])
        token_bytes = len(self.kv_pairs) * self.kv_heads * self.head_size * np.dtype(dtype).itemsize
        # Rows 0..slots-1 (and a spare when slots is odd and rows pair) decode; then the staging row, the lone row
        self.staging = slots + slots % 2 * self.pairs_rows
        max_len = min(max_len, budget_bytes // ((self.staging + 2) * token_bytes))
        if max_len < 16:
            raise ValueError(f"a KV cache of {budget_bytes / 1e6:.0f} MB holds {max_len} tokens for each of {slots} "
                             f"streams ({token_bytes} bytes a token): raise kv_cache_mb or lower max_streams")
        self.slots, self.max_len = slots, max_len
        self.batch_invariant = batch_invariant
        # Row `staging` is where prompts are prefilled; `staging` + 1 the lone row (gRPC's generations)
        self.cache = [_resident_zeros((self.staging + 2, self.kv_heads, max_len, self.head_size), dtype) for _ in self.kv_pairs]
        self.key_at: list[str] = []  # running sequences, by slot
        self.length: dict[str, int] = {}  # tokens in the cache, per sequence (the staged one too)
        self.staged: str | None = None
        self.alone: str | None = None
        self.reuse_prompt_prefix = reuse_prompt_prefix
        self.held: dict[int, list[int]] = {self.staging: [], self.staging + 1: []}  # those rows' tokens, in order
        self.prompts = PromptCache(prompt_cache_bytes, self.bytes_per_token) if reuse_prompt_prefix else None

    def _open(self, options: Any, kv_int8_text: list[int] | None) -> Any:
        """The session of the decoder, or of its int8-cache copy (kv_int8.py) with `kv_int8_text`; -> the
        cache's dtype. The copy is made here, from the float cache's rows of those tokens, if it is not
        there yet, and kept only if its logits on them are within kv_int8.MAX_KL of the float cache's."""
        self.kv_int8_kl: float | None = None
        found = kv_int8.made(self.decoder_path) if kv_int8_text else None
        self.session = self.ort.InferenceSession(str(found[0] if found else self.decoder_path), options,
                                                 providers=["CPUExecutionProvider"])
        if found:
            self.decoder_path, self.kv_int8_kl = found
        past_type = {i.name: i.type for i in self.session.get_inputs()}[self.kv_pairs[0][0]]
        dtype = _CACHE_TYPES.get(past_type, np.float32)
        if not kv_int8_text or dtype != np.float32:
            if kv_int8_text and not found:
                log.info("int8 KV cache not used: this build's cache is %s (it applies to float32 ones)", np.dtype(dtype))
            return dtype
        source, tokens, float_session = self.decoder_path, kv_int8_text, self.session
        if not writable(source.parent):  # its copy keeps the weights in the decoder's data file, beside it
            log.warning("int8 KV cache not used: %s is read-only (the int4 kernel's copy of an int4 build, made "
                        "elsewhere, would take it; or a writable model store)", source.parent)
            return np.float32
        try:
            with locked(kv_int8.target_of(source)):
                if (found := kv_int8.made(source)) is None:  # not made by another worker meanwhile
                    reference, rows = self._prefilled(tokens, np.float32)
                    partial = kv_int8.rewrite(source, rows)
                    self.session = self.ort.InferenceSession(str(partial), options, providers=["CPUExecutionProvider"])
                    cost = kv_int8.kl(reference, self._prefilled(tokens, np.int8)[0])
                    if cost > kv_int8.MAX_KL:
                        partial.unlink()
                        raise ValueError(f"its logits on the calibration text are {cost:.4f} nats from the float "
                                         f"cache's (at most {kv_int8.MAX_KL})")
                    found = kv_int8.stamp(partial, source, cost), cost
                else:
                    self.session = self.ort.InferenceSession(str(found[0]), options, providers=["CPUExecutionProvider"])
            self.decoder_path, self.kv_int8_kl = found
            return np.int8
        except Exception:  # the float cache still serves
            log.exception("int8 KV cache not used; keys and values stay float")
            self.session = float_session
            return np.float32

    def _prefilled(self, tokens: list[int], dtype: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        """`tokens` through the session, 64 a run, in a cache of their own (`dtype`): (the logits at each
        run's last position, the cache's rows [kv heads, tokens, head size] per key and value)."""
        # _run reads self.cache: a small cache of their own stands in for it (at start-up there is none yet)
        kept, chunk = getattr(self, "cache", None), 64
        self.cache = [np.zeros((1, self.kv_heads, len(tokens), self.head_size), dtype) for _ in self.kv_pairs]
        try:
            logits = [self._run(np.asarray([tokens[start:start + chunk]], np.int64),
                                np.ones((1, min(start + chunk, len(tokens))), np.int64), 0, 1,
                                at=len(tokens[start:start + chunk]) - 1)[0] for start in range(0, len(tokens), chunk)]
            return np.stack(logits), [array[0] for array in self.cache]
        finally:
            self.cache = kept

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self.cache)

    @property
    def prompts_budget(self) -> int:
        return self.prompts.budget if self.prompts else 0

    @property
    def bytes_per_token(self) -> int:
        return sum(a.itemsize * a.shape[1] * a.shape[3] for a in self.cache)

    def prefill(self, key: str, tokens: list[int], alone: bool = False, exact: bool = True) -> Logits:
        """Append `tokens` to `key`'s sequence in the staging row, one sequence at a time, until it is
        activated; or (`alone`) in the row of a sequence that never joins the batch. `exact: False`
        (a sampled request without a seed) in that lone row: its logits need not be the batch's, one
        token runs as one row. The staging row is always exact: what it computes is kept for later
        prompts that begin alike (reuse_prefix), whoever they are."""
        row = self.staging + 1 if alone else self.staging
        holder = self.alone if alone else self.staged
        if holder not in (None, key):
            raise RuntimeError(f"{holder} holds that row")
        if alone:
            self.alone = key
        else:
            self.staged = key
        past, held = self.length.get(key, 0), self.held[row]
        if past + len(tokens) > self.max_len:
            raise ValueError(f"sequence of {past + len(tokens)} tokens exceeds the cache's {self.max_len}")
        run = tokens
        if self.pairs_rows and (exact or not alone) and len(tokens) % 2:
            if alone and len(tokens) == 1 and past > 0 and len(self.staging_tokens) < self.max_len:
                return self._decode_outside(key, tokens[0])
            # An odd chunk's last token would be the odd row out (int4's one-row kernel, see decode): a
            # copy runs beside it at the next position, which the sequence's next token overwrites
            # (nothing reads it before); at the cache's end, the token before the chunk, which the row
            # holds, is computed again in front of it, to the same values it has
            if past + len(tokens) < self.max_len:
                run = [*tokens, tokens[-1]]
            elif past > 0:
                tokens = run = [held[past - 1], *tokens]
                past -= 1
        ids = np.asarray([run], np.int64)
        mask = np.ones((1, past + len(run)), np.int64)
        del held[past:]  # what follows is overwritten now
        logits = self._run(ids, mask, row, row + 1, at=len(tokens) - 1)
        self.length[key] = past + len(tokens)
        held += tokens
        return logits[0].astype(np.float32)

    def _decode_outside(self, key: str, token: int) -> Logits:
        """One token of the sequence in the lone row (gRPC's generations), computed as the batch
        computes its tokens, one a row beside another (int4's numbers differ between a decode step and
        a prompt's chunk: 0.08-0.14 apart on the 568M Llama). The staging row is that other row; its
        next free position takes what it computes, which the next prompt's prefill overwrites."""
        past, spare = self.length[key], len(self.staging_tokens)
        mask = np.zeros((2, max(spare, past) + 1), np.int64)
        mask[0, : spare + 1] = 1
        mask[1, : past + 1] = 1
        logits = self._run(np.asarray([[token], [token]], np.int64), mask, self.staging, self.staging + 2, at=0)
        self.length[key] = past + 1
        self.held[self.staging + 1].append(token)
        return logits[1].astype(np.float32)

    @property
    def staging_tokens(self) -> list[int]:
        """The tokens whose keys and values the staging row holds, in order."""
        return self.held[self.staging]

    def reuse_prefix(self, key: str, prompt: list[int]) -> int:
        """Stage `key` with the longest head of `prompt` whose keys and values are at hand: in the
        staging row (the last prompt's are left there when it moves into a slot) or kept in the
        prompt cache (copied into the staging row); -> how many tokens need no prefill. The last
        token is always computed: its logits give the first answer token."""
        if self.staged not in (None, key) or self.length.get(key):
            raise RuntimeError(f"{key} cannot be staged now")
        shared, limit = 0, len(prompt) - 1
        if self.prompts is not None:
            held, wanted = self.staging_tokens, tuple(prompt)  # tuple() of a tuple is that tuple: converted once
            shared = shared_head(tuple(held), wanted, limit)
            staging = [array[self.staging] for array in self.cache]
            if shared < len(held):  # the last prompt is about to be overwritten
                self.prompts.keep(held, staging)
            tokens, kept = self.prompts.match(wanted, limit)
            if kept > shared:
                for array, values in zip(staging, self.prompts.values(tokens)):
                    array[:, :kept] = values[:, :kept]
                self.held[self.staging], shared = list(tokens[:kept]), kept
        self.staged, self.length[key] = key, shared
        return shared

    def activate(self, key: str) -> None:
        """Move the staged sequence into a free slot: from the next decode on it runs in the batch."""
        if self.staged != key:
            raise RuntimeError(f"{key} is not staged")
        if not self.free_slots():
            raise EngineFull("every slot holds a running sequence")
        self._copy(self.staging, len(self.key_at), self.length[key])
        self.key_at.append(key)
        self.staged = None

    def decode(self, tokens: dict[str, int], exact: bool = True) -> dict[str, Logits]:
        """One token for every running sequence (all of them: a batch is the running prefix). `exact:
        False` (no running request needs reproducible tokens): a lone row may run as one row."""
        if set(tokens) != set(self.key_at):
            raise ValueError("decode takes one token for every running sequence")
        n = len(self.key_at)
        pasts = [self.length[key] for key in self.key_at]
        if max(pasts) + 1 > self.max_len:
            raise ValueError("a sequence would exceed the cache")
        ids = np.asarray([[tokens[key]] for key in self.key_at], np.int64)
        rows = n
        if n % 2 and self.pairs_rows and exact:
            # An odd row runs with a free one beside it: int4 MatMulNBits computes rows in pairs and an
            # odd one out (M=1, or the last of 3, 5, 7) on another kernel, whose logits differ (up to
            # 0.12 measured on the 568M Llama), so a stream alone, or third of three, would not get the
            # tokens it gets among others. The spare row costs a lone stream 8-15 % (568M Llama, int4,
            # 2 cores), paid only for requests whose tokens are reproducible; what its step writes
            # there is overwritten when a sequence is moved into it (the row beyond an odd `slots`
            # is only ever that spare).
            ids, rows = np.concatenate([ids, ids[-1:]]), n + 1
        mask = np.zeros((rows, max(pasts) + 1), np.int64)  # each row's sum is its length: GQA reads it
        for row, past in enumerate(pasts):
            mask[row, : past + 1] = 1
        mask[n:, 0] = 1
        logits = self._run(ids, mask, 0, rows, at=0)
        for key in self.key_at:
            self.length[key] += 1
        return {key: logits[row].astype(np.float32) for row, key in enumerate(self.key_at)}

    def drop(self, key: str) -> None:
        """Forget `key`; the last running sequence moves into its slot."""
        if self.staged == key:
            self.staged = None
        elif self.alone == key:
            self.alone = None
        elif key in self.key_at:
            slot, last = self.key_at.index(key), len(self.key_at) - 1
            if slot != last:
                moved = self.key_at[last]
                self._copy(last, slot, self.length[moved])
                self.key_at[slot] = moved
            self.key_at.pop()
        self.length.pop(key, None)

    def _copy(self, source: int, target: int, length: int) -> None:
        for array in self.cache:
            array[target, :, :length] = array[source, :, :length]

    def _run(self, ids: np.ndarray, mask: np.ndarray, first: int, end: int, at: int = 0) -> np.ndarray:
        """Rows `first`..`end` of the cache fed `ids`: the logits of position `at` of each row, [rows, vocab]."""
        binding = self.session.io_binding()
        binding.bind_output(self.logits_name, "cpu")
        binding.bind_cpu_input(self.input_ids, ids)
        binding.bind_cpu_input(self.mask, mask)
        if self.gathers:
            binding.bind_cpu_input(LOGITS_AT, np.asarray([at], np.int64))
        for (past, present), array in zip(self.kv_pairs, self.cache):
            # past and present are one buffer: the graph writes the new positions in place
            rows = self.ort.OrtValue.ortvalue_from_numpy(array[first:end])
            binding.bind_ortvalue_input(past, rows)
            binding.bind_ortvalue_output(present, rows)
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits[:, 0] if self.gathers else logits[:, at]


def _resident_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros with every page written now, at start: a page's first write faults it in (the OS hands
    out zeroed memory lazily), which on a VM costs up to ~7 us a 4 KB page; left lazy, a stream's
    first positions in a row cost a decode step or a slot's copy up to 200 ms (568M Llama, 1 GB cache)."""
    array = np.zeros(shape, dtype)
    array.fill(0)
    return array


class GeneratorEngine(_Rows):
    """One ONNX Runtime GenAI Generator per sequence (CUDA archives; the unbatched baseline)."""

    kind = "generator"

    def __init__(self, og: Any, model: Any, slots: int, max_len: int) -> None:
        self.og, self.model, self.slots, self.max_len = og, model, slots, max_len
        self.generators: dict[str, Any] = {}
        self.key_at: list[str] = []  # running, in order
        self.staged: str | None = None

    cache_bytes = 0  # GenAI allocates per generator
    bytes_per_token = 0

    def prefill(self, key: str, tokens: list[int], alone: bool = False, exact: bool = True) -> Logits:
        generator = self.generators.get(key)
        if generator is None:
            params = self.og.GeneratorParams(self.model)
            params.set_search_options(max_length=self.max_len, do_sample=False)
            generator = self.generators[key] = self.og.Generator(self.model, params)
        if not alone:
            self.staged = key
        return self._append(generator, tokens)

    def reuse_prefix(self, key: str, prompt: list[int]) -> int:
        return 0  # each Generator holds its own cache

    def activate(self, key: str) -> None:
        if not self.free_slots():
            raise EngineFull("every slot holds a running sequence")
        self.key_at.append(key)
        self.staged = None

    def decode(self, tokens: dict[str, int], exact: bool = True) -> dict[str, Logits]:
        return {key: self._append(self.generators[key], [tokens[key]]) for key in self.key_at}

    def drop(self, key: str) -> None:
        self.generators.pop(key, None)
        if key in self.key_at:
            self.key_at.remove(key)
        if self.staged == key:
            self.staged = None

    @staticmethod
    def _append(generator: Any, tokens: list[int]) -> Logits:
        generator.append_tokens(tokens)
        logits = np.asarray(generator.get_logits())
        return logits.reshape(-1, logits.shape[-1])[-1].astype(np.float32)
