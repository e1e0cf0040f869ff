"""The one registry of what a client of a served model needs from maas: varied request bodies
with a check of each answer (load tests), cases with known answers (the release gate's smoke
check), demo requests and a one-line answer summary (`maas demo`).

Every model gets them from its archive (ArchiveClient: the generic tensor handler's bodies from
the archive's samples, each answer compared with ONNX Runtime in-process on the archive's own
model, its top labels as the summary). A zoo model (maas.export.zoo) adds what it knows on top:
its own request generator, answers known in advance, richer demo requests. `client_for` is the
only place that asks whether a model is in the zoo.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from maas.core.bodies import Case, Check, Payloads, encoded, tensor_items, tensor_payloads
from maas.core.errors import UnknownModel
from maas.core.spec import ModelSpec
from maas.core.store import Archive, archive_manifest, archive_member, archive_samples, find_archive, packaged_models
from maas.export import zoo


class ArchiveClient:
    """What the archive of any model maas built tells a client (the defaults)."""

    def __init__(self, model: str, model_store: Path | None, version: str | None = None) -> None:
        self.model, self.model_store, self.version = model, model_store, version

    def archive(self) -> Archive:
        if self.model_store is None:
            raise UnknownModel(f"model {self.model!r}: not a zoo model, and no model store to find its archive in")
        return find_archive(self.model_store, self.model, self.version)

    def example_request(self) -> dict[str, Any] | None:
        """The request body the archive's manifest carries (None without one, or without a store)."""
        return archive_manifest(self.archive()).get("example_request") if self.model_store is not None else None

    def payloads(self, seed: int = 0, **options: Any) -> Payloads:
        archive = self.archive()
        manifest = archive_manifest(archive)
        return tensor_payloads(manifest, archive_samples(archive, manifest), seed)

    def smoke_cases(self) -> list[Case]:
        return archive_cases(self.archive())

    def demo_requests(self, example: Any) -> list[tuple[str, bytes, str]]:
        return []

    def answer_summary(self, answer: Any) -> str:
        return top_labels(answer)


class ZooClient(ArchiveClient):
    """A zoo model's own requests and known answers, with the archive's example request checked too."""

    def __init__(self, model: zoo.ZooModel, model_store: Path | None, version: str | None = None) -> None:
        super().__init__(model.name, model_store, version)
        self.zoo_model = model

    def payloads(self, seed: int = 0, **options: Any) -> Payloads:
        return self.zoo_model.payloads(seed, **options)

    def smoke_cases(self) -> list[Case]:
        found = list(self.zoo_model.smoke_cases())
        example = self.example_request()
        if example is not None:  # answered as its load tests check every answer
            check: Check = self.zoo_model.payloads(pool=1).check
            found.append(("the manifest's example request", json.dumps(example).encode(), "application/json", check))
        return found

    def demo_requests(self, example: Any) -> list[tuple[str, bytes, str]]:
        return self.zoo_model.demo_requests(example)

    def answer_summary(self, answer: Any) -> str:
        return self.zoo_model.answer_summary(answer)


class LlmClient(ArchiveClient):
    """A language model (handlers/llm.py): OpenAI-style chat requests, each answer a finished generation."""

    PROMPTS = ("Write a maintenance note for machine M-{i}.", "Which part of pump {i} wears first?",
               "Summarise the last shift on line {i} in two sentences.", "Is a torque of {i} Nm too high?",
               "List three checks before restarting the gearbox.", "What does a rising bearing temperature mean?")

    def payloads(self, seed: int = 0, max_tokens: int = 64, seeded: bool = True, **options: Any) -> Payloads:
        """Sampled chat completions; `seeded`: each with its own `seed` (reproducible tokens, which the
        server keeps equal alone and among others), else none, as most chat clients send them."""
        bodies = [json.dumps({"model": self.model, "messages": [{"role": "user", "content": p.format(i=seed * 7 + i)}],
                              "max_tokens": max_tokens, "temperature": 0.7, **({"seed": seed * 100 + i} if seeded else {}),
                              "stream": True, "stream_options": {"include_usage": True}}).encode()
                  for i, p in enumerate(self.PROMPTS * 4)]
        return Payloads(bodies, "application/json", generation_check)

    def smoke_cases(self) -> list[Case]:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Say something."}],
                           "max_tokens": 8, "temperature": 0}).encode()
        return [("a short greedy chat completion", body, "application/json", chat_check)]

    def answer_summary(self, answer: Any) -> str:
        from maas.core.summary import compact

        choices = answer.get("choices") if isinstance(answer, dict) else None
        return compact(choices[0].get("message", choices[0]) if choices else answer, 80)


def generation_check(answer: Any) -> Optional[str]:
    """A streamed generation as the load test assembles it: {"finish_reason", "completion_tokens"}."""
    if not isinstance(answer, dict) or answer.get("finish_reason") not in ("stop", "length"):
        return f"the stream did not finish: {str(answer)[:120]}"
    return None if answer.get("completion_tokens", 0) >= 1 else "no completion tokens"


def chat_check(answer: Any) -> Optional[str]:
    try:
        choice = answer["choices"][0]
        ok = choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    except (KeyError, IndexError, TypeError):
        ok = False
    return None if ok and answer.get("usage", {}).get("completion_tokens", 0) >= 1 else \
        f"not a chat completion: {str(answer)[:120]}"


def client_for(model: str, model_store: Path | None = None, version: str | None = None) -> ArchiveClient:
    """The registry: a zoo model's client, a language model's, else the defaults its archive gives."""
    found = zoo.models().get(model)
    if found:
        return ZooClient(found, model_store, version)
    if model_store is not None and is_generative_model(model_store, model, version):
        return LlmClient(model, model_store, version)
    return ArchiveClient(model, model_store, version)


def is_generative_model(model_store: Path, model: str, version: str | None = None) -> bool:
    """Whether the store's archive of `model` is a language model (False when there is none)."""
    from maas.core.store import StoreError, is_generative

    try:
        return is_generative(find_archive(model_store, model, version))
    except StoreError:
        return False


def spec_for(model: str, model_store: Path) -> ModelSpec:
    """A model's spec: the zoo's declaration (no archive needed), else read back from its archive."""
    import yaml

    found = zoo.models().get(model)
    if found is not None:
        return found.spec
    if model not in packaged_models(model_store):
        raise UnknownModel(f"unknown model {model}: not in the zoo ({', '.join(zoo.models())}) and no archive "
                           f"packaged by maas in {model_store}")
    archive = find_archive(model_store, model, None)
    return ModelSpec.from_archive(archive_manifest(archive), yaml.safe_load(archive_member(archive, "model-config.yaml")))


def model_names(model_store: Path) -> list[str]:
    """Every model maas knows here: the zoo's, then those packaged into the store."""
    return [*zoo.models(), *(m for m in packaged_models(model_store) if m not in zoo.models())]


def archive_cases(archive: Archive, rows: int = 4) -> list[Case]:
    """A packaged model's cases: its archive's first sample rows, each expected to answer what ONNX
    Runtime answers in-process on the archive's own model file (within the manifest's tolerance)."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    manifest = archive_manifest(archive)
    samples = archive_samples(archive, manifest)
    if samples and manifest.get("batch_axis"):
        samples = {k: v[:rows] for k, v in samples.items()}
    items = tensor_items(manifest, samples)[:rows]
    bodies, content_type = encoded(items)
    with tempfile.TemporaryDirectory() as tmp:
        for member in [manifest["model_file"], *(e["file"] for e in manifest.get("external_data", []))]:
            (Path(tmp) / member).write_bytes(archive_member(archive, member))
        session = ort.InferenceSession(str(Path(tmp) / manifest["model_file"]), providers=["CPUExecutionProvider"])
        batched = bool(manifest.get("batch_axis"))
        expected = []
        for item in items:
            feeds = {t["name"]: np.asarray(item[t["name"]], dtype=t["dtype"]) for t in manifest["inputs"]}
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

    return [(f"sample {i} equals ONNX Runtime in-process", body, content_type, same_as(want))
            for i, (body, want) in enumerate(zip(bodies, expected))]


def top_labels(answer: Any) -> str:
    """A packaged model's answer: its top labels when it has them, else its outputs' shapes."""
    from maas.core.summary import compact

    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if predictions:
        name, top = next(iter(predictions.items()))
        while top and isinstance(top[0], list):  # a batch: its first item
            top = top[0]
        return f"{name}: " + ", ".join(f"{t['label']} ({t['score']:.3f})" for t in top)
    return compact(answer.get("outputs", answer) if isinstance(answer, dict) else answer, 80)
