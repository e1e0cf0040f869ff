"""TorchServe handler for `digits`: an image or JSON pixels -> top-5 digits with probabilities.

Request:  PNG/JPEG bytes (any size; see image_input.py for the conversion), or
          {"pixels": [[8 rows of 8 values 0-16]]}.
Response: {"7": 0.98, "1": 0.01, ...}: the top 5 labels, highest first, like TorchServe's
          own image classifier.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from image_input import decode_grey, looks_like_image, to_digit_grid
from ort_base import Arrays, InputError, OrtHandler, finite_number, parse_json


class DigitsHandler(OrtHandler):
    def pixels_from_json(self, payload: Any) -> np.ndarray:
        size, top = self.manifest["image"]["size"], self.manifest["image"]["max_value"]
        if not isinstance(payload, dict) or "pixels" not in payload:
            raise InputError('send a PNG/JPEG image, or JSON {"pixels": [[...8 rows of 8 values 0-16...]]}', "pixels")
        unknown = sorted(set(payload) - {"pixels"})
        if unknown:
            raise InputError("unknown field; expected only 'pixels'", unknown[0])
        rows = payload["pixels"]
        if not isinstance(rows, list) or len(rows) != size or not all(isinstance(r, list) and len(r) == size for r in rows):
            raise InputError(f"must be {size} rows of {size} numbers", "pixels")
        return np.array([[finite_number(v, f"pixels[{i}][{j}]", (0.0, top)) for j, v in enumerate(row)]
                         for i, row in enumerate(rows)], dtype=np.float32)

    def preprocess(self, body: Any) -> tuple[Arrays, None]:
        image = self.manifest["image"]
        if isinstance(body, (bytes, bytearray)) and looks_like_image(bytes(body)):
            grey = decode_grey(bytes(body), tuple(image["formats"]), image["max_pixels"])
            grid = to_digit_grid(grey, image["size"], image["max_value"])
        else:
            try:
                payload = parse_json(body)
            except InputError as err:
                raise InputError(f"body is neither a PNG/JPEG image nor JSON pixels: {err.message}") from None
            grid = self.pixels_from_json(payload)
        return {"pixels": grid[None, None, :, :]}, None

    def check_tensors(self, inputs: Arrays) -> None:
        top = self.manifest["image"]["max_value"]
        if inputs["pixels"].min() < 0 or inputs["pixels"].max() > top:
            raise InputError(f"pixel values must be in [0, {top}]", "pixels")

    def postprocess(self, outputs: Arrays, meta: None) -> dict[str, float]:
        probs = outputs["probabilities"][0]
        spec = self.manifest["outputs"][0]  # the spec's labels and top_k
        labels, k = spec["labels"], int(spec["top_k"])
        return {labels[i]: round(float(probs[i]), 6) for i in np.argsort(-probs, kind="stable")[:k]}

    def explain(self, inputs: Arrays, meta: None) -> dict[str, Any]:
        """Occlusion map: how much the predicted digit's probability falls when each pixel is
        blanked (set to 0, the background). 64 occluded copies + the image in ONE session.run."""
        grid = inputs["pixels"][0, 0]
        size = grid.shape[0]
        batch = np.repeat(grid[None, None, :, :], size * size + 1, axis=0)
        for k in range(size * size):
            batch[k + 1, 0, k // size, k % size] = 0.0
        probs = self._session_run({"pixels": batch})[0]
        label = int(np.argmax(probs[0]))
        drop = (probs[0, label] - probs[1:, label]).reshape(size, size)
        return {
            "label": self.manifest["outputs"][0]["labels"][label],
            "probability": round(float(probs[0, label]), 6),
            "occlusion": [[round(float(v), 6) for v in row] for row in drop],
            "method": f"occlusion: each of the {size}x{size} pixels set to 0 in turn; value = drop in "
                      "the predicted digit's probability (positive = the pixel supports the prediction)",
        }
