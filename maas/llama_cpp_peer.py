"""The fast CPU peer for language models: llama.cpp's own server, built here from PyPI's sources.

`llama-cpp-python`'s sdist vendors llama.cpp whole; pip downloads it from the package index and
CMake builds `llama-server` and `llama-quantize` from it (about 5 minutes on 2 cores, once: the
build is cached). The Hugging Face folder is converted with the converter of the same tree
(`convert_hf_to_gguf.py`) to GGUF f32 (what parity is checked on) and quantized to Q4_0 (the
nearest to maas's int4: 4-bit, blocks of 32). The converter recognises a byte-level BPE
pre-tokenizer by the hash of its ids on a test text, so it refuses any tokenizer trained anew;
llama.cpp's own remedy is to add the hash (convert_hf_to_gguf_update.py): this names the
pre-tokenizer instead, "gpt-2" (the GPT-2 split regex, which `tokenizers`' ByteLevel uses).

The server runs as its docs advise for CPU: threads = cores, continuous batching, `--parallel`
slots with the context divided among them, its own chat template through Jinja (`--jinja`).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
PACKAGE = "llama-cpp-python==0.3.36"
TARGETS = ("llama-server", "llama-quantize")


def vendor_tree(cache: Path) -> Path:
    """llama.cpp's source tree from the llama-cpp-python sdist (downloaded once)."""
    trees = sorted(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if trees:
        return trees[-1]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary", ":all:", "-d",
                    str(cache)], check=True, capture_output=True)
    with tarfile.open(next(cache.glob("llama_cpp_python-*.tar.gz"))) as sdist:
        sdist.extractall(cache, filter="data")
    return sorted(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def build(cache: Path) -> Path:
    """The folder holding llama-server and llama-quantize, built once (Release, this CPU's ISA)."""
    tree = vendor_tree(cache)
    out = cache / "build"
    binaries = out / "bin"
    if all((binaries / t).is_file() for t in TARGETS):
        return binaries
    started = time.perf_counter()
    log.info("llama.cpp: building %s from %s (about 5 minutes on 2 cores) ...", ", ".join(TARGETS), tree)
    subprocess.run(["cmake", "-S", str(tree), "-B", str(out), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(out), "--target", *TARGETS, "-j", str(os.cpu_count() or 1)],
                   check=True, capture_output=True)
    log.info("llama.cpp: built in %.0f s", time.perf_counter() - started)
    return binaries


CONVERT = """
import sys
from pathlib import Path
tree = Path(sys.argv.pop(1))
sys.path[:0] = [str(tree), str(tree / "gguf-py")]
from conversion import base
# a tokenizer trained anew has no registered hash; name its pre-tokenizer (see llama_cpp_peer.py)
for cls in vars(base).values():
    if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
        cls.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import runpy
sys.argv[0] = str(tree / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(source: Path, cache: Path, out: Path, quantization: str = "Q4_0") -> dict[str, Path]:
    """GGUF files of `source`: f32 (parity) and `quantization` (speed); kept when present."""
    tree, binaries = vendor_tree(cache), build(cache)
    out.mkdir(parents=True, exist_ok=True)
    f32, quantized = out / "model-f32.gguf", out / f"model-{quantization}.gguf"
    if not f32.is_file():
        log.info("llama.cpp: converting %s to GGUF f32 ...", source)
        done = subprocess.run([sys.executable, "-c", CONVERT, str(tree), str(source), "--outtype", "f32", "--outfile",
                               str(f32)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed: {done.stderr[-2000:]}")
    if not quantized.is_file():
        subprocess.run([str(binaries / "llama-quantize"), str(f32), str(quantized), quantization], check=True,
                       capture_output=True)
    return {"f32": f32, quantization: quantized}


class LlamaServer:
    """llama-server on a loopback port, for one GGUF file."""

    def __init__(self, binaries: Path, gguf: Path, port: int, threads: int, parallel: int, context: int,
                 log_file: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.command = [str(binaries / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                        "-t", str(threads), "-tb", str(threads), "--parallel", str(parallel), "-c", str(context * parallel),
                        "--cont-batching", "--jinja", "--no-webui", "--log-disable",
                        # A request's own sampling, as OpenAI's API means it (and maas and transformers do): a
                        # body without top_k/top_p samples the whole distribution; llama-server would otherwise
                        # cut it with its defaults, top_k 40, top_p 0.95, min_p 0.05
                        "--top-k", "0", "--top-p", "1.0", "--min-p", "0.0"]
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LlamaServer:
        import requests

        self.log_handle = open(self.log_file, "w")  # closed in __exit__
        self.process = subprocess.Popen(self.command, stdout=self.log_handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log_file.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("llama-server was not healthy within 300 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log_handle.close()

    def greedy_ids(self, prompt: str, tokens: int) -> tuple[list[int], list[int]]:
        """(prompt ids, greedy answer ids) from the native /completion endpoint."""
        import requests

        prompt_ids = requests.post(f"{self.url}/tokenize", json={"content": prompt, "add_special": True},
                                   timeout=60).json()["tokens"]
        answer = requests.post(f"{self.url}/completion", json={"prompt": prompt, "n_predict": tokens, "temperature": 0,
                                                                "return_tokens": True, "cache_prompt": False},
                               timeout=600).json()
        return prompt_ids, answer["tokens"]


def available() -> bool:
    return shutil.which("cmake") is not None and (shutil.which("ninja") is not None)
