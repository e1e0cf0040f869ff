"""The Open Inference Protocol (KServe v2) for every maas handler: tensors in, tensors out.

Requests ({"inputs": [{name, datatype, shape, data}]}, sent to /v2/models/NAME/infer) are
recognised per request (safe with TorchServe's batching), checked against the manifest's
I/O spec, batched with the others, and answered with the graph's output tensors.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from dtypes import BY_V2, DTYPES
from inputs import InputError, parse_json


class V2Request:
    """An Open Inference Protocol (KServe v2) request: tensors in, tensors out, per request."""

    def __init__(self, request_id: str | None, outputs: list[str] | None) -> None:
        self.id, self.outputs = request_id, outputs


def looks_like_v2(body: Any) -> Any:
    """The parsed v2 payload when `body` is an inference request of the Open Inference Protocol, else None."""
    if isinstance(body, (bytes, bytearray, str)):
        head = body[:4096] if isinstance(body, str) else bytes(body[:4096]).decode("utf-8", "replace")
        if not head.lstrip().startswith("{") or '"inputs"' not in head:
            return None
        try:
            body = parse_json(body)
        except InputError:
            return None
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        return body
    return None


def v2_tensors(payload: dict[str, Any], spec: list[dict[str, Any]], output_spec: list[dict[str, Any]],
               max_items: int, batched: bool = True) -> tuple[dict[str, np.ndarray], V2Request]:
    """Named tensors checked against the manifest's inputs (names, datatypes, shapes, finite values);
    `batched`: every input's axis 0 is the batch (a model served unbatched takes tensors as given)."""
    tensors = {}
    for i, t in enumerate(payload["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(t, dict) or not {"name", "datatype", "shape", "data"} <= set(t):
            raise InputError("each input needs name, datatype, shape and data (JSON tensors; the binary extension is not served)", where)
        tensors[t["name"]] = (t, where)
    wanted = [s["name"] for s in spec]
    if sorted(tensors) != sorted(wanted):
        raise InputError(f"inputs must be exactly {wanted}, got {sorted(tensors)}", "inputs")
    arrays, batch = {}, None
    for s in spec:
        t, where = tensors[s["name"]]
        dtype = BY_V2.get(str(t["datatype"]))
        if dtype != s["dtype"]:
            raise InputError(f"datatype must be {DTYPES[s['dtype']].v2}, got {t['datatype']!r}", where)
        shape = t["shape"]
        if (not isinstance(shape, list) or len(shape) != len(s["shape"])
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
                or any(isinstance(want, int) and d != want for d, want in zip(shape, s["shape"]))):
            raise InputError(f"shape must match {s['shape']}, got {shape}", where)
        if batched:
            if shape[0] > max_items:
                raise InputError(f"batch of {shape[0]}; the limit is {max_items}", where, 413)
            if batch is not None and shape[0] != batch:
                raise InputError("all inputs must have the same batch size", where)
            batch = shape[0]
        try:
            array = np.asarray(t["data"], dtype=np.float64 if dtype.startswith("float") else np.int64)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"data must be {dtype} numbers", where) from None
        if array.size != int(np.prod(shape)):
            raise InputError(f"data has {array.size} values; shape {shape} needs {int(np.prod(shape))}", where)
        if dtype.startswith("float") and not np.isfinite(array).all():
            raise InputError("data must be finite numbers (NaN and infinity are refused)", where)
        arrays[s["name"]] = array.reshape(shape).astype(dtype)
    outputs = payload.get("outputs")
    names = [o.get("name") for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else None
    known = [o["name"] for o in output_spec]
    for name in names or []:
        if name not in known:
            raise InputError(f"unknown output {name!r}; outputs are {known}", "outputs")
    request_id = payload.get("id")
    return arrays, V2Request(str(request_id) if request_id is not None else None, names)




def v2_response(outputs: dict[str, np.ndarray], request: V2Request, model_name: str, model_version: str) -> dict[str, Any]:
    """The answer: the graph's output tensors (all, or those the request named), flattened."""
    names = request.outputs or list(outputs)
    answer: dict[str, Any] = {
        "model_name": model_name, "model_version": model_version,
        "outputs": [{"name": n, "datatype": DTYPES[str(outputs[n].dtype)].v2, "shape": list(outputs[n].shape),
                     "data": outputs[n].ravel().tolist()} for n in names],
    }
    if request.id is not None:
        answer["id"] = request.id
    return answer


def v2_refusal(body: dict[str, Any], status: int, request_id: Any, model_name: str, model_version: str) -> dict[str, Any]:
    """A v2 request's error body that TorchServe 0.12's gRPC Open Inference frontend can carry.

    That frontend turns every answer to a gRPC ModelInfer into a ModelInferResponse by reading
    `id`, `model_name`, `model_version` and `outputs` from it, whatever its status; without them
    it throws, and TorchServe kills the worker with every request of its batch. So a refusal
    keeps the REST fields ({"error": ...} and ours) and adds those four; the message and status
    travel as two outputs, `error` (BYTES) and `error_code` (INT32), the only part of an answer
    that frontend copies (maas.grpc_client turns them back into a gRPC error).
    """
    message = str(body.get("error") or body.get("message") or "request refused")
    return {**body, "id": "" if request_id is None else str(request_id), "model_name": model_name,
            "model_version": model_version,
            "outputs": [{"name": "error", "datatype": "BYTES", "shape": [1], "data": [message]},
                        {"name": "error_code", "datatype": "INT32", "shape": [1], "data": [status]}]}
