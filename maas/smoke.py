"""Answers every release candidate must get right before it is load-tested.

Each case: a title, a request body, its content type, and a check of the answer that
returns None when right or what is wrong. The inputs have known answers: records that
trigger a published failure rule, real digit scans with their labels, sentence pairs
whose similarity order is obvious.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from maas.demo_requests import HEAT_FAILURE, HEALTHY, OVERSTRAIN, THREE

Check = Callable[[Any], Optional[str]]
Case = tuple[str, bytes, str, Check]


def _failure(expected: bool, mode: str | None = None) -> Check:
    def check(answer: Any) -> Optional[str]:
        if not isinstance(answer, dict) or answer.get("failure") is not expected:
            return f"expected failure={expected}, got {str(answer)[:120]}"
        if mode and answer["failure_modes"].get(mode, 0) < 0.5:
            return f"expected {mode} >= 0.5, got {answer['failure_modes']}"
        return None
    return check


def _top1(label: str) -> Check:
    def check(answer: Any) -> Optional[str]:
        top = next(iter(answer), None) if isinstance(answer, dict) else None
        return None if top == label else f"expected top label {label}, got {str(answer)[:120]}"
    return check


def _minilm_cases() -> list[Case]:
    texts = ["The machine is overheating.", "The engine temperature is far too high.", "I would like a pizza."]

    def check(answer: Any) -> Optional[str]:
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(vectors, list) or len(vectors) != 3 or any(len(v) != 384 for v in vectors):
            return f"expected 3 embeddings of 384, got {str(answer)[:120]}"
        dot = [sum(a * b for a, b in zip(vectors[0], v)) for v in vectors[1:]]
        if not dot[0] > dot[1] + 0.1:
            return f"paraphrase similarity {dot[0]:.3f} not above unrelated {dot[1]:.3f}"
        return None

    return [("paraphrase closer than unrelated", json.dumps({"texts": texts}).encode(), "application/json", check)]


def cases(model: str) -> list[Case]:
    if model == "maintenance":
        return [
            ("healthy machine", json.dumps(HEALTHY).encode(), "application/json", _failure(False)),
            ("heat dissipation failure", json.dumps(HEAT_FAILURE).encode(), "application/json", _failure(True, "HDF")),
            ("overstrain failure", json.dumps(OVERSTRAIN).encode(), "application/json", _failure(True, "OSF")),
        ]
    if model == "digits":
        return [("a scanned 3", json.dumps({"pixels": THREE}).encode(), "application/json", _top1("3"))]
    if model == "minilm":
        return _minilm_cases()
    raise KeyError(f"no release smoke cases for model {model!r}")


def run_cases(client: Any, model: str, version: str) -> list[str]:
    """The failed cases, each as 'title: problem'; empty when the version answers them all."""
    problems = []
    for title, body, content_type, check in cases(model):
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
