"""What only the trained zoo models can show (the unit tier runs on untrained stand-ins): held-out
quality in the manifests, answers that are right, not just well-formed, through the handlers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HDF, call, png, zoo_handlers
from maas.export.zoo import digits as digits_model
from maas.export.zoo import minilm as minilm_model


@pytest.fixture(scope="module")
def handlers(built_models, tmp_path_factory):
    return zoo_handlers(built_models, tmp_path_factory)


def test_maintenance_held_out_quality(built_models) -> None:
    metrics = json.loads((built_models["maintenance"].build_dir / "manifest.json").read_text())["metrics"]
    assert metrics["accuracy"] > 0.95 and metrics["roc_auc"] > 0.95 and metrics["f1"] > 0.7
    assert "untrained_stand_in" not in metrics


def test_shapley_values_blame_heat_dissipation(handlers) -> None:
    (answer,), ctx = call(handlers["maintenance"], HDF, explain=True)
    assert answer["failure_probability"] > 0.5  # the rule fires and the model sees it
    phi = answer["attributions"]
    heat = abs(phi["air_temperature_k"]) + abs(phi["process_temperature_k"]) + abs(phi["rotational_speed_rpm"])
    assert heat >= 0.7 * sum(abs(v) for v in phi.values()), phi
    assert phi["rotational_speed_rpm"] > 0


def test_digits_accuracy_meets_the_bar(built_models) -> None:
    manifest = json.loads((built_models["digits"].build_dir / "manifest.json").read_text())
    assert manifest["metrics"]["accuracy"] >= 0.97 and manifest["metrics"]["test_images"] == 360


@pytest.mark.parametrize("fmt,mode,dark_ink,scale", [("PNG", "L", True, 12), ("JPEG", "RGB", True, 20),
                                                     ("PNG", "RGBA", True, 5), ("PNG", "L", False, 8)])
def test_digits_images_are_read_like_the_training_scans(handlers, fmt, mode, dark_ink, scale) -> None:
    x_tr, y_tr, x_te, y_te = digits_model._split(*digits_model._arrays(), 0)
    answers, ctx = call(handlers["digits"], *[png(x_te[i, 0], scale, fmt, mode, dark_ink) for i in range(40)])
    assert ctx.status == {}
    assert np.mean([int(next(iter(a))) == y for a, y in zip(answers, y_te[:40])]) >= 0.9


def test_digits_occlusion_names_the_right_digit(handlers) -> None:
    from sklearn.datasets import load_digits

    image = load_digits().images[7]
    (answer,), _ = call(handlers["digits"], {"pixels": image.astype(int).tolist()}, explain=True)
    assert answer["label"] == str(load_digits().target[7])


def test_minilm_build_matched_sentence_transformers(built_models) -> None:
    manifest = json.loads((built_models["minilm"].build_dir / "manifest.json").read_text())
    assert manifest["metrics"]["worst_cosine"] >= 0.9999
    assert manifest["parity"]["cases"][-1] == "batch 64, sequence 256"
    assert (built_models["minilm"].build_dir / "model.onnx").stat().st_size > 80e6  # weights inside, one file


def test_minilm_answers_equal_sentence_transformers(handlers) -> None:
    texts = minilm_model.SENTENCES
    reference = minilm_model.reference_embeddings(texts)
    singles, ctx = call(handlers["minilm"], *[{"text": t} for t in texts])
    (batched,), _ = call(handlers["minilm"], {"texts": texts})
    for got in (np.array([a["embedding"] for a in singles]), np.array(batched["embeddings"])):
        cos = np.sum(got * reference, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() >= 0.9999, cos.min()
    assert ctx.status == {}
