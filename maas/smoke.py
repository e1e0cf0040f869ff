"""Answers every release candidate must get right before it is load-tested.

Each case: a title, a request body, its content type, and a check of the answer that returns
None when right or what is wrong. A zoo model's cases have known answers (records that trigger
a published failure rule, real digit scans with their labels, sentence pairs whose similarity
order is obvious: ZooModel.smoke_cases), plus the example request its manifest carries. A
packaged model's cases come from its archive: its samples, answered as ONNX Runtime answers
them in-process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from maas.core.bodies import Case, Check


def archive_cases(model_store: Path, model: str, version: str | None, rows: int = 4) -> list[Case]:
    """A packaged model's cases: its archive's first sample rows, each expected to answer what ONNX
    Runtime answers in-process on the archive's own model file (within the manifest's tolerance)."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from maas.core.bodies import tensor_bodies
    from maas.core.store import archive_manifest, archive_member, archive_samples, find_archive

    archive = find_archive(model_store, model, version)
    manifest = archive_manifest(archive)
    samples = archive_samples(archive, manifest)
    samples = {k: v[:rows] for k, v in samples.items()} if samples else None
    bodies = tensor_bodies(manifest, samples)[:rows]
    with tempfile.TemporaryDirectory() as tmp:
        for member in [manifest["model_file"], *(e["file"] for e in manifest.get("external_data", []))]:
            (Path(tmp) / member).write_bytes(archive_member(archive, member))
        session = ort.InferenceSession(str(Path(tmp) / manifest["model_file"]), providers=["CPUExecutionProvider"])
        batched = bool(manifest.get("batch_axis"))
        expected = []
        for body in bodies:
            feeds = {n: np.asarray(v, dtype=t["dtype"]) for (n, v), t in zip(json.loads(body)["inputs"].items(),
                                                                           manifest["inputs"])}
            outs = session.run(None, {n: a[None] if batched else a for n, a in feeds.items()})
            expected.append({o["name"]: (v[0] if batched else v) for o, v in zip(manifest["outputs"], outs)})

    def same_as(want: dict[str, Any]) -> Check:
        def check(answer: Any) -> Optional[str]:
            got = answer.get("outputs") if isinstance(answer, dict) else None
            if not isinstance(got, dict):
                return f"expected {{'outputs': ...}}, got {str(answer)[:120]}"
            for name, value in want.items():
                array = np.asarray(got.get(name), dtype=np.float64)
                bound = manifest["atol"] + manifest["rtol"] * float(np.max(np.abs(value)) if value.size else 0)
                if array.shape != value.shape or not np.all(np.abs(array - value) <= bound):
                    return f"output {name} differs from ONNX Runtime in-process on the archive's model"
            return None
        return check

    return [(f"sample {i} equals ONNX Runtime in-process", body, "application/json", same_as(want))
            for i, (body, want) in enumerate(zip(bodies, expected))]


def zoo_cases(model: str, model_store: Path | None = None, version: str | None = None) -> list[Case]:
    """A zoo model's known-answer cases, and its manifest's example request (answered as its load
    tests check every answer) when the archive is at hand."""
    from maas.export import zoo

    found = list(zoo.get(model).smoke_cases())
    if model_store is not None:
        from maas.core.store import archive_manifest, find_archive

        example = archive_manifest(find_archive(model_store, model, version)).get("example_request")
        if example is not None:
            check: Check = zoo.get(model).payloads(pool=1).check
            found.append(("the manifest's example request", json.dumps(example).encode(), "application/json", check))
    return found


def run_cases(client: Any, model: str, version: str, model_store: Path | None = None) -> list[str]:
    """The failed cases, each as 'title: problem'; empty when the version answers them all.
    The zoo's models have cases with known answers; a packaged model's come from its archive."""
    from maas.export import zoo

    problems = []
    if model in zoo.models():
        found = zoo_cases(model, model_store, version)
    elif model_store is not None:
        found = archive_cases(model_store, model, version)
    else:
        raise KeyError(f"no release smoke cases for model {model!r}: not a zoo model, and no model store given")
    for title, body, content_type, check in found:
        resp = client.predict(model, body, content_type, version)
        if resp.status_code != 200:
            problems.append(f"{title}: HTTP {resp.status_code} {resp.text[:120]}")
            continue
        try:
            problem = check(resp.json())
        except ValueError:
            problem = "answer is not JSON"
        if problem:
            problems.append(f"{title}: {problem}")
    return problems
