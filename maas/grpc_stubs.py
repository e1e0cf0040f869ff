"""TorchServe's gRPC stubs, generated on first use from the `.proto` files inside the installed
TorchServe's frontend jar: the contract of the server that runs, never a copy committed by hand.

They are compiled with grpcio-tools into a cache folder keyed by the jar's hash (MAAS_CACHE_DIR,
else ~/.cache/maas), as the package `torchserve_grpc`, so several processes (Locust workers)
can share one build; a build goes to a temporary folder and is renamed into place.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

from maas.core.errors import ServeError

PACKAGE = "torchserve_grpc"
PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")


class StubError(ServeError):
    """The stubs could not be generated (one line saying why)."""


def frontend_jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise StubError(f"TorchServe's frontend jar is missing at {jar}: reinstall torchserve")
    return jar


def cache_root() -> Path:
    return Path(os.environ.get("MAAS_CACHE_DIR") or Path.home() / ".cache" / "maas")


def _jar_digest(jar: Path) -> str:
    h = hashlib.sha256()
    with jar.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _compile(jar: Path, out: Path) -> None:
    """Extract the protos under `PACKAGE/` (so generated imports read `from torchserve_grpc import
    ...`) and run protoc with the well-known and google.rpc protos on the include path."""
    import google.rpc.status_pb2  # googleapis-common-protos: the Python side of google/rpc/status.proto
    from grpc_tools import protoc

    src = out / "proto"
    (src / PACKAGE).mkdir(parents=True)
    with zipfile.ZipFile(jar) as z:
        for name in PROTOS:
            text = z.read(f"proto/{name}").decode()
            for other in PROTOS:  # imports between them name the package folder
                text = text.replace(f'import "{other}"', f'import "{PACKAGE}/{other}"')
            (src / PACKAGE / name).write_text(text)
    googleapis = Path(google.rpc.status_pb2.__file__).parents[2]
    well_known = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{src}", f"-I{well_known}", f"-I{googleapis}", f"--python_out={out}",
            f"--grpc_python_out={out}", *(f"{PACKAGE}/{name}" for name in PROTOS)]
    if protoc.main(args) != 0:
        raise StubError(f"protoc could not compile TorchServe's protos from {jar}")
    shutil.rmtree(src)


@functools.lru_cache(maxsize=1)
def stubs() -> SimpleNamespace:
    """The generated modules: inference_pb2(_grpc), management_pb2(_grpc), open_inference_grpc_pb2(_grpc)."""
    jar = frontend_jar()
    home = cache_root() / "grpc" / _jar_digest(jar)
    if not (home / PACKAGE / "inference_pb2_grpc.py").is_file():
        try:
            home.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: this process's own copy
            home = Path(tempfile.mkdtemp(prefix="maas-grpc-")) / _jar_digest(jar)
            home.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home.parent))
        try:
            _compile(jar, tmp)
            try:
                tmp.rename(home)
            except OSError:  # another process got there first: its build is as good
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if str(home) not in sys.path:
        sys.path.insert(0, str(home))
    names = [f"{Path(p).stem}_pb2{suffix}" for p in PROTOS for suffix in ("", "_grpc")]
    return SimpleNamespace(**{n: importlib.import_module(f"{PACKAGE}.{n}") for n in names})
