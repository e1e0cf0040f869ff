"""The Open Inference Protocol (KServe v2) for every maas handler: tensors in, tensors out.

Requests ({"inputs": [{name, datatype, shape, data}]}, sent to /v2/models/NAME/infer) are
recognised per request (safe with TorchServe's batching), checked against the manifest's
I/O spec, batched with the others, and answered with the graph's output tensors.

The binary tensor data extension (as Triton and KServe implement it; tritonclient's
`binary_data=True`) is served both ways: the body is the JSON header, then each binary input's
raw little-endian bytes in the order of `inputs` (`parameters.binary_data_size` each; the
header's length in the `Inference-Header-Content-Length` request header, or found by parsing);
outputs asked for with `parameters.binary_data` (per output) or `parameters.binary_data_output`
(all) come back the same way, 4-5x smaller than JSON numbers and without their parsing.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from dtypes import BY_V2, DTYPES
from inputs import InputError, parse_json
from tensor_form import check_values, json_numbers

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Request:
    """An Open Inference Protocol (KServe v2) request: tensors in, tensors out, per request."""

    def __init__(self, request_id: str | None, outputs: list[str] | None, binary: set[str] | bool = False) -> None:
        self.id, self.outputs, self.binary = request_id, outputs, binary


class V2Body(dict):
    """A v2 request's JSON header, with the binary tensor data that followed it."""

    binary: bytes = b""


class BinaryAnswer:
    """A v2 answer with binary outputs: the JSON header, then the outputs' raw bytes."""

    def __init__(self, header: dict[str, Any], data: bytes) -> None:
        self.header, self.data = header, data


def parsed_body(body: Any, header_length: Any = None) -> Any:
    """`body` parsed once when it is a JSON object naming "inputs" (the tensor form, or v2: then a
    V2Body with its binary tail under the binary extension; `header_length`: the request's
    Inference-Header-Content-Length); any other body as it came: a handler's own form, or one
    that does not parse, which its reader refuses in its own words."""
    if not isinstance(body, (bytes, bytearray, str)):
        return body
    head = body[:4096] if isinstance(body, str) else bytes(body[:4096]).decode("utf-8", "replace")
    if not head.lstrip().startswith("{") or '"inputs"' not in head:
        return body
    split = _split_binary(bytes(body), header_length) if isinstance(body, (bytes, bytearray)) else None
    try:
        parsed = parse_json(body if split is None else split[0])
    except InputError:
        return body
    if split is not None and isinstance(parsed, dict):
        parsed = V2Body(parsed)
        parsed.binary = split[1]
    return parsed


def is_v2(body: Any) -> bool:
    """A parsed body that is an inference request of the Open Inference Protocol."""
    return isinstance(body, dict) and isinstance(body.get("inputs"), list)


def _split_binary(data: bytes, header_length: Any) -> tuple[bytes, bytes] | None:
    """(JSON header, binary tail) of a binary-extension body; None when it is all JSON."""
    if header_length is not None:
        text = header_length.decode("ascii", "replace") if isinstance(header_length, bytes) else str(header_length)
        if not text.strip().isdigit():
            raise InputError(f"{HEADER_LENGTH} must be a byte count, got {text[:40]!r}", HEADER_LENGTH)
        length = int(text)
        if length > len(data):
            raise InputError(f"{HEADER_LENGTH} is {length}; the body has {len(data)} bytes", HEADER_LENGTH)
        return (data[:length], data[length:]) if length < len(data) else None
    if data.isascii():
        return None
    try:  # latin-1 maps each byte to one character, so the JSON's end offset is a byte offset
        _, end = json.JSONDecoder().raw_decode(data.decode("latin-1"))
    except ValueError:
        return None
    return (data[:end], data[end:]) if data[end:].strip() else None  # a newline after the JSON is no tensor data


def v2_tensors(payload: dict[str, Any], spec: list[dict[str, Any]], output_spec: list[dict[str, Any]],
               max_items: int, batched: bool = True) -> tuple[dict[str, np.ndarray], V2Request]:
    """Named tensors checked against the manifest's inputs (names, datatypes, shapes, finite values);
    `batched`: every input's axis 0 is the batch (a model served unbatched takes tensors as given)."""
    tensors, raw = {}, _binary_inputs(payload)
    for i, t in enumerate(payload["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(t, dict) or not {"name", "datatype", "shape"} <= set(t) or ("data" not in t and i not in raw):
            raise InputError("each input needs name, datatype, shape and data (or parameters.binary_data_size, "
                             "with the binary tensor data extension)", where)
        if not isinstance(t["name"], str):
            raise InputError("name must be a string", where)
        tensors[t["name"]] = (t, where, raw.get(i))
    wanted = [s["name"] for s in spec]
    if sorted(tensors) != sorted(wanted):
        raise InputError(f"inputs must be exactly {wanted}, got {sorted(tensors)}", "inputs")
    arrays, batch = {}, None
    for s in spec:
        t, where, binary = tensors[s["name"]]
        dtype = BY_V2.get(str(t["datatype"]))
        if dtype != s["dtype"]:
            raise InputError(f"datatype must be {DTYPES[s['dtype']].v2}, got {t['datatype']!r}", where)
        shape = t["shape"]
        if shape == [1] and not s["shape"]:  # a scalar input, sent as Triton clients send one: shape [1]
            shape = []
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
        if binary is not None:
            array = _from_bytes(binary, dtype, shape, where)
        else:
            array = json_numbers(t["data"], dtype, f"{where}.data")
            check_values(array, dtype, f"{where}.data")  # JSON values as they are: 300 is no UINT8, 1.7 no INT32
        if array.size != math.prod(shape):
            raise InputError(f"data has {array.size} values; shape {shape} needs {math.prod(shape)}", where)
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
    return arrays, V2Request(str(request_id) if request_id is not None else None, names, _binary_outputs(payload))


def _parameters(entry: Any) -> dict[str, Any]:
    params = entry.get("parameters") if isinstance(entry, dict) else None
    return params if isinstance(params, dict) else {}


def _binary_inputs(payload: dict[str, Any]) -> dict[int, bytes]:
    """Each binary input's bytes (by its index in `inputs`), cut from the body's tail in order."""
    tail, offset, cut = getattr(payload, "binary", b""), 0, {}
    for i, t in enumerate(payload["inputs"]):
        size = _parameters(t).get("binary_data_size")
        if size is None:
            continue
        where = f"inputs[{i}].parameters.binary_data_size"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError("binary_data_size must be a byte count", where)
        if "data" in t:
            raise InputError("give data or binary_data_size, not both", where)
        if offset + size > len(tail):
            raise InputError(f"the inputs' binary data needs {offset + size} bytes after the JSON header; "
                             f"the body has {len(tail)}", where)
        cut[i], offset = tail[offset:offset + size], offset + size
    if offset != len(tail):
        raise InputError(f"{len(tail) - offset} bytes follow the JSON header beyond the inputs' binary_data_size",
                         "inputs")
    return cut


def _from_bytes(data: bytes, dtype: str, shape: list[int], where: str) -> np.ndarray:
    item = np.dtype(dtype).newbyteorder("<")
    want = math.prod(shape) * item.itemsize  # Python integers: np.prod wraps around at 2**63
    if len(data) != want:
        raise InputError(f"binary data is {len(data)} bytes; shape {shape} of {dtype} needs {want}", where)
    return np.frombuffer(data, dtype=item).astype(dtype)


def _binary_outputs(payload: dict[str, Any]) -> set[str] | bool:
    """The outputs to send as binary data: True for all (binary_data_output), else those named."""
    if _parameters(payload).get("binary_data_output") is True:
        return True
    outputs = payload.get("outputs")
    return {o["name"] for o in outputs if isinstance(o, dict) and _parameters(o).get("binary_data") is True} \
        if isinstance(outputs, list) else set()




def v2_response(outputs: dict[str, np.ndarray], request: V2Request, model_name: str,
                model_version: str) -> dict[str, Any] | BinaryAnswer:
    """The answer: the graph's output tensors (all, or those the request named), flattened; those
    asked for as binary data as raw little-endian bytes after the JSON header (a BinaryAnswer)."""
    names = request.outputs or list(outputs)
    entries, tail = [], []
    for n in names:
        value = outputs[n]
        entry: dict[str, Any] = {"name": n, "datatype": DTYPES[str(value.dtype)].v2, "shape": list(value.shape)}
        if request.binary is True or (request.binary and n in request.binary):
            raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:  # the array itself: orjson writes float32 in its shortest form (http_reply), half of tolist()'s bytes
            entry["data"] = np.ascontiguousarray(value).ravel()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request.id is not None:
        answer["id"] = request.id
    return BinaryAnswer(answer, b"".join(tail)) if tail else answer


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
