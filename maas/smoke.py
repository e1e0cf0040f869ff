"""Answers every release candidate must get right before it is load-tested.

Each case: a title, a request body, its content type, and a check of the answer that returns
None when right or what is wrong. A zoo model's cases have known answers (records that trigger
a published failure rule, real digit scans with their labels, sentence pairs whose similarity
order is obvious: ZooModel.smoke_cases), plus the example request its manifest carries. A
packaged model's cases come from its archive: its samples, answered as ONNX Runtime answers
them in-process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def run_cases(client: Any, model: str, version: str, model_store: Path | None = None) -> list[str]:
    """The failed cases, each as 'title: problem'; empty when the version answers them all.
    The zoo's models have cases with known answers; a packaged model's come from its archive."""
    from maas.export.clients import client_for

    problems = []
    found = client_for(model, model_store, version).smoke_cases()
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
