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

import logging
from typing import Any

import numpy as np
from ort_base import Arrays, OrtHandler, refusal_of
from tensor_form import check_spec, read_tensor_form, tensor_answer, top_labels

log = logging.getLogger(__name__)


class TensorHandler(OrtHandler):
    reads_tensor_form = False  # it is this handler's own form: preprocess() reads it (a subclass may override)

    # ---- reading a request -------------------------------------------------------------
    def preprocess(self, body: Any) -> tuple[Arrays, bool]:
        arrays, single = read_tensor_form(body, self.manifest)
        self.check_tensors(arrays)
        return arrays, single

    def input_names(self) -> list[str]:
        return [t["name"] for t in self.manifest["inputs"]]

    def check_tensors(self, inputs: Arrays) -> None:
        """Shapes, finite values and ranges as the spec says: for JSON requests and v2 ones alike."""
        check_spec(inputs, self.manifest, self.max_items())

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
        results: list[Any] = [{}] * len(items)
        for members in groups.values():
            try:
                outputs = self._run_group([items[i] for i in members])
            except Exception as exc:  # this group's failure is its own: the other groups keep their answers
                if len(members) == 1:
                    log.exception("request failed in ONNX Runtime")
                    outputs = [refusal_of(exc)]
                else:
                    log.warning("a run of %d requests failed in ONNX Runtime (%s); each runs alone", len(members),
                                " ".join(str(exc).split())[:200] or type(exc).__name__)
                    outputs = [self._run_alone(items[i]) for i in members]  # a group of one each
            for i, out in zip(members, outputs):
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
        return tensor_answer(outputs, self.manifest, single)

    @staticmethod
    def top_labels(scores: np.ndarray, spec: dict[str, Any], single: bool) -> Any:
        return top_labels(scores, spec, single)
