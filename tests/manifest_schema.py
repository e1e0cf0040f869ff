"""Offline schema checks for Kubernetes and KServe manifests.

Core kinds go through kubernetes-validate (the upstream OpenAPI schemas, strict: unknown
fields fail). KServe's CRDs have no offline schema package, so their kinds are checked against
the API types KServe publishes in its Python SDK: every field must exist in the SDK's
`attribute_map`, have the declared type, and the SDK's own constructors must accept it (they
enforce required fields and enums). Pod parts embedded in KServe kinds (containers) are also
checked against the real Pod schema through kubernetes-validate.

The SDK check runs in a subprocess: importing `kserve` registers the v2 gRPC protos in
protobuf's default pool, and so does `tritonclient.grpc`; one process cannot hold both.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import kubernetes_validate

K8S_VERSION = "1.30.0"
KSERVE_KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
                ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


class ManifestError(Exception):
    pass


def _model_class(name: str) -> Any:
    import kserve.models as kserve_models  # only in the subprocess (see the module docstring)
    import kubernetes.client.models as k8s_models

    for module in (kserve_models, k8s_models):
        if hasattr(module, name):
            return getattr(module, name)
    raise ManifestError(f"unknown API type {name}")


def check_type(value: Any, type_name: str, path: str) -> None:
    """Raise ManifestError where `value` does not fit the SDK type `type_name`."""
    if type_name == "object":
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            raise ManifestError(f"{path}: expected {type_name}, got {value!r}")
        return
    if m := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list")
        for i, item in enumerate(value):
            check_type(item, m.group(1), f"{path}[{i}]")
        return
    if m := re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a map")
        for k, v in value.items():
            check_type(v, m.group(1) or m.group(2), f"{path}.{k}")
        return
    if type_name == "ResourceQuantity" or type_name.endswith("Quantity"):
        if not isinstance(value, (str, int)):
            raise ManifestError(f"{path}: expected a quantity")
        return
    cls = _model_class(type_name)
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {type_name} object")
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            raise ManifestError(f"{path}: unknown field {key!r} for {type_name}")
        check_type(item, cls.openapi_types[by_json[key]], f"{path}.{key}")
    try:  # the SDK's constructors check required fields and enum values
        cls(**{by_json[k]: v for k, v in value.items()})
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{path}: {type_name}: {exc}") from exc


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "ServingRuntime":
        return list(spec.get("containers", []))
    model = dict(spec.get("predictor", {}).get("model", {}))
    for kserve_only in ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"):
        model.pop(kserve_only, None)
    return [{"name": "kserve-container", "image": "placeholder", **model}]


def kserve_type_errors(docs: list[dict[str, Any]]) -> list[str | None]:
    """check_type for each KServe doc, in a subprocess; None where a doc is fine."""
    out = subprocess.run([sys.executable, __file__], input=json.dumps(docs), capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"KServe type check crashed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def problems(docs: list[dict[str, Any]]) -> list[str | None]:
    """What is wrong with each doc as a Kubernetes or KServe object (None where it is valid);
    the KServe SDK check runs once for all of them."""
    kserve_docs = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in KSERVE_KINDS]
    sdk_errors = iter(kserve_type_errors(kserve_docs) if kserve_docs else [])
    found: list[str | None] = []
    for doc in docs:
        checked = doc
        if doc in kserve_docs:  # then the Pod parts of a KServe kind, against the real Pod schema
            error = next(sdk_errors)
            if error:
                found.append(error)
                continue
            checked = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                       "spec": {"containers": _containers(doc)}}
        try:
            kubernetes_validate.validate(checked, K8S_VERSION, strict=True)
            found.append(None)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            found.append(f"{doc.get('kind')}: {getattr(exc, 'message', exc)}")
    return found


def validate_all(docs: list[dict[str, Any]]) -> None:
    """Raise ManifestError unless every doc is a valid Kubernetes or KServe object."""
    errors = [e for e in problems(docs) if e]
    if errors:
        raise ManifestError("; ".join(errors))


def validate(doc: dict[str, Any]) -> None:
    validate_all([doc])


def _check_each(docs: list[dict[str, Any]]) -> list[str | None]:
    results: list[str | None] = []
    for doc in docs:
        try:
            check_type(doc, KSERVE_KINDS[(doc.get("apiVersion"), doc.get("kind"))], doc["kind"])
            results.append(None)
        except ManifestError as exc:
            results.append(str(exc))
    return results


if __name__ == "__main__":
    print(json.dumps(_check_each(json.load(sys.stdin))))
