"""The tensor request form every maas handler reads: {"inputs": {"<name>": array, ...}}.

The generic handler (tensor.py) serves nothing else; every other maas handler (the zoo's) also
serves it beside its own request form, so a client that speaks tensors can call any model the
same way. Arrays come as nested lists, or as a .npy / .npz body (numpy_body.py). Each is
checked against the manifest's spec: names, dtype kinds, rank, fixed sizes, symbolic sizes
agreeing across inputs, finite values, declared ranges, the item limit. The answer is
{"outputs": {"<name>": array}} shaped like the request (one item or a batch), plus
"predictions": the top_k labels of every output whose spec has labels.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from inputs import InputError, parse_json
from numpy_body import is_numpy_body, numpy_arrays

Arrays = dict[str, np.ndarray]


class TensorRequest:
    """A request in the tensor form; `single`: it sent one item (the batch axis left out)."""

    def __init__(self, single: bool) -> None:
        self.single = single


def looks_like_tensor_form(body: Any) -> bool:
    """Cheap test before parsing: a numpy body, or a JSON object that names "inputs"."""
    if isinstance(body, dict):
        return isinstance(body.get("inputs"), dict)
    if is_numpy_body(body):
        return True
    if isinstance(body, (bytes, bytearray, str)):
        head = body[:4096] if isinstance(body, str) else bytes(body[:4096]).decode("utf-8", "replace")
        return head.lstrip().startswith("{") and '"inputs"' in head
    return False


def read_tensor_form(body: Any, manifest: dict[str, Any]) -> tuple[Arrays, bool]:
    """({input name: array with the batch axis}, whether the request sent one item)."""
    names = [t["name"] for t in manifest["inputs"]]
    payload = {"inputs": numpy_arrays(body, names)} if is_numpy_body(body) else parse_json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise InputError('body must be {"inputs": {"<input name>": [...], ...}} '
                         f"with the inputs {names}", "inputs")
    unknown = sorted(set(payload) - {"inputs"})
    if unknown:
        raise InputError("unknown field; expected only 'inputs'", unknown[0])
    given = payload["inputs"]
    for name in given:
        if name not in names:
            raise InputError(f"unknown input; the model's inputs are {names}", f"inputs.{name}")
    for name in names:
        if name not in given:
            raise InputError("missing input", f"inputs.{name}")
    arrays, single = {}, None
    for spec in manifest["inputs"]:
        array, item = to_array(given[spec["name"]], spec, manifest.get("batch_axis") is not None)
        if single is not None and item != single:
            raise InputError("send every input as one item or every input as a batch, not a mix",
                             f"inputs.{spec['name']}")
        single = item
        arrays[spec["name"]] = array
    return arrays, bool(single)


_NUMBER_TYPES = {bool, int, float}


def json_numbers(value: Any, dtype: str, where: str) -> np.ndarray:
    """A JSON array as numbers, or a 400: never a string array (numpy would make one of len x count
    characters from one long string among many numbers: 56 GiB from a 100 kB string in a 150528-
    value image), never numbers read out of strings."""
    if isinstance(value, np.ndarray):  # from a .npy body: typed already, its values never made objects
        return value  # (a 31 kB .npz of 8 M zeros took 500 MB and a second as objects)
    try:
        cells = np.asarray(value, dtype=object)
    except (ValueError, TypeError, RecursionError):
        raise InputError("must be a rectangular array of numbers (nested lists of equal length)", where) from None
    flat = cells.ravel().tolist()
    types = set(map(type, flat))
    if list in types:  # numpy keeps the lists of a ragged array as its cells
        raise InputError("must be a rectangular array of numbers (nested lists of equal length)", where)
    if not types <= _NUMBER_TYPES or (bool in types and len(types) > 1):
        raise InputError(f"must be {dtype} numbers in nested lists of equal length (true/false only all "
                         "together)", where)
    kind = bool if bool in types else np.int64 if types == {int} else np.float64  # as JSON gave them
    try:
        return cells.astype(kind)  # from the cells, not the list again: 150528 floats 3.2 -> 1.6 ms
    except OverflowError:
        raise InputError(f"must be {dtype} numbers: an integer beyond 64 bits", where) from None


def check_values(raw: np.ndarray, dtype: str, where: str) -> None:
    """Refuse JSON values the cast to `dtype` would change: anything but numbers, true/false for
    numbers (and numbers for true/false), fractions for integers, integers beyond the type's range."""
    want, kind = np.dtype(dtype), raw.dtype.kind
    if kind not in "biuf" or raw.dtype == object:
        raise InputError(f"must be {dtype} numbers in nested lists of equal length", where)
    if want.kind == "b" and kind != "b":
        raise InputError("must be true/false values", where)
    if want.kind in "iu":
        if kind == "b":
            raise InputError(f"must be {dtype} integers, got true/false", where)
        if kind == "f" and raw.size:  # [] is read as float64: no number in it is fractional
            raise InputError(f"must be {dtype} integers, got fractional numbers", where)
        info = np.iinfo(want)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise InputError(f"values outside the {dtype} range [{info.min}, {info.max}]", where)
    if want.kind == "f" and kind == "b":
        raise InputError(f"must be {dtype} numbers, got true/false", where)


def to_array(value: Any, spec: dict[str, Any], batched: bool) -> tuple[np.ndarray, bool]:
    """A JSON value as an array of the input's dtype; (array with the batch axis, was one item)."""
    where = f"inputs.{spec['name']}"
    raw = json_numbers(value, spec["dtype"], where)
    check_values(raw, spec["dtype"], where)
    want = np.dtype(spec["dtype"])
    rank = len(spec["shape"])
    item = batched and raw.ndim == rank - 1
    if raw.ndim != rank and not item:
        expected = f"{rank} (a batch)" + (f" or {rank - 1} (one item)" if batched else "")
        raise InputError(f"has {raw.ndim} dimensions; {spec['name']} {spec['shape']} takes {expected}", where)
    array = raw[None] if item else raw
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(want)
    if want.kind == "f" and array.size and not np.isfinite(cast).all():
        raise InputError(f"values must be finite {spec['dtype']} numbers (NaN, infinity and values beyond "
                         f"{spec['dtype']} are refused)", where)
    return cast, item


def check_spec(inputs: Arrays, manifest: dict[str, Any], max_items: int) -> None:
    """Shapes (fixed sizes, symbolic sizes agreeing across inputs, batch limit), finite values and
    ranges, as the manifest's spec declares them."""
    batch_axis = manifest.get("batch_axis")
    sizes: dict[str, tuple[int, str]] = {}
    for spec in manifest["inputs"]:
        name, array, where = spec["name"], inputs[spec["name"]], f"inputs.{spec['name']}"
        for axis, (want, got) in enumerate(zip(spec["shape"], array.shape)):
            if isinstance(want, int):
                if got != want:
                    raise InputError(f"axis {axis} has size {got}; {name} {spec['shape']} needs {want}", where)
                continue
            if got < 1:
                raise InputError(f"axis {axis} ({want}) is empty", where)
            seen = sizes.setdefault(want, (got, name))
            if seen[0] != got:
                raise InputError(f"axis {want!r} is {got} here but {seen[0]} in {seen[1]}", where)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError("values must be finite numbers (NaN and infinity are refused)", where)
        bounds = spec.get("range")
        if bounds is not None and array.size and (array.min() < bounds[0] or array.max() > bounds[1]):
            raise InputError(f"values must be within [{bounds[0]:g}, {bounds[1]:g}]", where)
    if batch_axis and batch_axis in sizes and sizes[batch_axis][0] > max_items:
        raise InputError(f"batch of {sizes[batch_axis][0]} items; the limit is {max_items}", "inputs", 413)


def tensor_answer(outputs: Arrays, manifest: dict[str, Any], single: bool) -> dict[str, Any]:
    """{"outputs": ...} shaped like the request, and "predictions" for outputs with labels."""
    # arrays, not lists: orjson writes float32 in its shortest form (http_reply), half of tolist()'s bytes
    answer: dict[str, Any] = {"outputs": {name: _as_sent(array[0] if single else array)
                                          for name, array in outputs.items()}}
    predictions = {spec["name"]: top_labels(outputs[spec["name"]], spec, single)
                   for spec in manifest["outputs"] if spec.get("labels") and spec["name"] in outputs}
    if predictions:
        answer["predictions"] = predictions
    return answer


def top_labels(scores: np.ndarray, spec: dict[str, Any], single: bool) -> Any:
    """The top_k {"label", "score"} along the last axis, per item (the scores raw, or their
    softmax / sigmoid as the spec says)."""
    labels, k = spec["labels"], int(spec.get("top_k", 1))
    values = scores.astype(np.float64)
    if spec.get("scores") == "softmax":
        values = np.exp(values - values.max(axis=-1, keepdims=True))
        values /= values.sum(axis=-1, keepdims=True)
    elif spec.get("scores") == "sigmoid":
        values = 1.0 / (1.0 + np.exp(-values))

    def tops(v: np.ndarray) -> list:
        if v.ndim > 1:
            return [tops(row) for row in v]
        return [{"label": labels[j] if j < len(labels) else str(j), "score": _number(v[j])}
                for j in np.argsort(-v, kind="stable")[:k]]

    found = tops(values)
    return found[0] if single and values.ndim > 1 else found


def _as_sent(value: Any) -> Any:
    return np.ascontiguousarray(value) if isinstance(value, np.ndarray) and value.ndim else value


def _number(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None
