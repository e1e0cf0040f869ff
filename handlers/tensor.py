"""Generic tensor handler: any model packaged with `maas package` that brings no handler of its own.

Request:  {"inputs": {"<name>": nested lists, ...}}   (one array per input of the manifest)
          Each array has the input's full shape (a batch of items), or, when the model has a
          batch axis, the shape of one item (the batch axis left out).
          Or the arrays as NumPy files: a .npy body (a model with one input) or an .npz body
          (one array per input name), checked the same way (numpy_body.py).
          The Open Inference Protocol (v2) body at /v2/models/NAME/infer works too.
Response: {"outputs": {"<name>": nested lists, ...}}  shaped like the request (batch or item);
          outputs with labels in the spec add "predictions": {"<name>": top_k [{"label", "score"}]
          per item}.

Every array is checked against the spec: names, dtype (numbers of the right kind), rank, fixed
sizes, symbolic sizes consistent across inputs, finite values, declared ranges. Requests are
batched along the batch axis across TorchServe's batch; requests whose other dynamic sizes
differ run separately, unless the spec gives the input a `pad` value, in which case they are
padded to the longest and the outputs on those axes cut back.

To customise, subclass and override what you need (see docs: "Write a handler"):
    from tensor import TensorHandler
    class MyHandler(TensorHandler):
        def setup(self, model_dir): ...                  # read labels.txt, a tokenizer, ...
        def preprocess(self, body): ...                  # -> ({name: array with a batch axis}, meta)
        def postprocess(self, outputs, meta): ...        # -> the JSON answer for one request
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy_body import is_numpy_body, numpy_arrays
from ort_base import Arrays, InputError, OrtHandler, parse_json


class TensorHandler(OrtHandler):
    # ---- reading a request -------------------------------------------------------------
    def preprocess(self, body: Any) -> tuple[Arrays, bool]:
        payload = {"inputs": numpy_arrays(body, self.input_names())} if is_numpy_body(body) else parse_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            raise InputError('body must be {"inputs": {"<input name>": [...], ...}} '
                             f"with the inputs {self.input_names()}", "inputs")
        unknown = sorted(set(payload) - {"inputs"})
        if unknown:
            raise InputError("unknown field; expected only 'inputs'", unknown[0])
        given = payload["inputs"]
        for name in given:
            if name not in self.input_names():
                raise InputError(f"unknown input; the model's inputs are {self.input_names()}", f"inputs.{name}")
        for name in self.input_names():
            if name not in given:
                raise InputError("missing input", f"inputs.{name}")
        arrays, single = {}, None
        for spec in self.manifest["inputs"]:
            array, item = self.to_array(given[spec["name"]], spec)
            if single is not None and item != single:
                raise InputError("send every input as one item or every input as a batch, not a mix",
                                 f"inputs.{spec['name']}")
            single = item
            arrays[spec["name"]] = array
        self.check_tensors(arrays)
        return arrays, bool(single)

    def input_names(self) -> list[str]:
        return [t["name"] for t in self.manifest["inputs"]]

    def to_array(self, value: Any, spec: dict[str, Any]) -> tuple[np.ndarray, bool]:
        """A JSON value as an array of the input's dtype; (array with the batch axis, was one item)."""
        where = f"inputs.{spec['name']}"
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise InputError("must be a rectangular array of numbers (nested lists of equal length)", where) from None
        want = np.dtype(spec["dtype"])
        kind = raw.dtype.kind
        if kind not in "biuf" or raw.dtype == object:
            raise InputError(f"must be {spec['dtype']} numbers in nested lists of equal length", where)
        if want.kind == "b" and kind != "b":
            raise InputError("must be true/false values", where)
        if want.kind in "iu":
            if kind == "b":
                raise InputError(f"must be {spec['dtype']} integers, got true/false", where)
            if kind == "f":
                raise InputError(f"must be {spec['dtype']} integers, got fractional numbers", where)
            info = np.iinfo(want)
            if raw.size and (raw.min() < info.min or raw.max() > info.max):
                raise InputError(f"values outside the {spec['dtype']} range [{info.min}, {info.max}]", where)
        if want.kind == "f" and kind == "b":
            raise InputError(f"must be {spec['dtype']} numbers, got true/false", where)
        rank = len(spec["shape"])
        item = self.manifest.get("batch_axis") is not None and raw.ndim == rank - 1
        if raw.ndim != rank and not item:
            expected = f"{rank} (a batch)" + (f" or {rank - 1} (one item)" if self.manifest.get("batch_axis") else "")
            raise InputError(f"has {raw.ndim} dimensions; {spec['name']} {spec['shape']} takes {expected}", where)
        array = raw[None] if item else raw
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(want)
        if want.kind == "f" and array.size and not np.isfinite(cast).all():
            raise InputError(f"values must be finite {spec['dtype']} numbers (NaN, infinity and values beyond "
                             f"{spec['dtype']} are refused)", where)
        return cast, item

    def check_tensors(self, inputs: Arrays) -> None:
        """Shapes (fixed sizes, symbolic sizes agreeing across inputs, batch limit), finite values and
        ranges: for JSON requests and Open Inference Protocol ones alike."""
        batch_axis = self.manifest.get("batch_axis")
        sizes: dict[str, tuple[int, str]] = {}
        for spec in self.manifest["inputs"]:
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
        if batch_axis and batch_axis in sizes and sizes[batch_axis][0] > self.max_items():
            raise InputError(f"batch of {sizes[batch_axis][0]} items; the limit is {self.max_items()}", "inputs", 413)

    # ---- running a TorchServe batch ------------------------------------------------------
    def padded_axes(self) -> set[str]:
        return {d for t in self.manifest["inputs"] if t.get("pad") is not None for d in t["shape"]
                if isinstance(d, str) and d != self.manifest.get("batch_axis")}

    def signature(self, item: Arrays) -> tuple:
        """Requests with the same signature share one run: their shapes but for the batch axis and
        the padded axes."""
        padded, batch = self.padded_axes(), self.manifest.get("batch_axis")
        return tuple(tuple(n if not (d == batch or d in padded) else None
                           for d, n in zip(spec["shape"], item[spec["name"]].shape))
                     for spec in self.manifest["inputs"])

    def run(self, items: list[Arrays]) -> list[Arrays]:
        if not self.manifest.get("batch_axis"):
            return [self._run_group([it])[0] for it in items]
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self.signature(item), []).append(i)
        results: list[Arrays] = [{}] * len(items)
        for members in groups.values():
            for i, out in zip(members, self._run_group([items[i] for i in members])):
                results[i] = out
        return results

    def _run_group(self, items: list[Arrays]) -> list[Arrays]:
        feeds = self.collate(items)
        outputs = dict(zip(self.output_names, self._session_run(feeds)))
        counts = [len(next(iter(it.values()))) for it in items] if self.manifest.get("batch_axis") else [1]
        parts = self.split(outputs, counts) if self.manifest.get("batch_axis") else [outputs]
        return [self.unpad(part, item) for part, item in zip(parts, items)]

    def collate(self, items: list[Arrays]) -> Arrays:
        if len(items) == 1:
            return items[0]
        padded = self.padded_axes()
        feeds = {}
        for spec in self.manifest["inputs"]:
            arrays = [it[spec["name"]] for it in items]
            if padded:
                longest = np.max([a.shape for a in arrays], axis=0)
                widths = lambda a: [(0, int(longest[ax]) - a.shape[ax]) if d in padded else (0, 0)  # noqa: E731
                                    for ax, d in enumerate(spec["shape"])]
                arrays = [np.pad(a, widths(a), constant_values=spec.get("pad") or 0) for a in arrays]
            feeds[spec["name"]] = np.concatenate(arrays, axis=0)
        return feeds

    def unpad(self, outputs: Arrays, item: Arrays) -> Arrays:
        """Cut each output's padded axes back to this request's own sizes."""
        padded = self.padded_axes()
        if not padded:
            return outputs
        own = {d: n for spec in self.manifest["inputs"] for d, n in zip(spec["shape"], item[spec["name"]].shape)
               if d in padded}
        out = {}
        for spec in self.manifest["outputs"]:
            array = outputs[spec["name"]]
            index = tuple(slice(0, own[d]) if d in own and ax < array.ndim else slice(None)
                          for ax, d in enumerate(spec["shape"]))
            out[spec["name"]] = array[index]
        return out

    # ---- answering -------------------------------------------------------------------------
    def postprocess(self, outputs: Arrays, single: bool) -> dict[str, Any]:
        # arrays, not lists: orjson writes float32 in its shortest form (http_reply), half of tolist()'s bytes
        answer: dict[str, Any] = {"outputs": {name: _as_sent(array[0] if single else array)
                                              for name, array in outputs.items()}}
        predictions = {spec["name"]: self.top_labels(outputs[spec["name"]], spec, single)
                       for spec in self.manifest["outputs"] if spec.get("labels")}
        if predictions:
            answer["predictions"] = predictions
        return answer

    @staticmethod
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
