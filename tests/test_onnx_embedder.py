"""The ONNX ReID embedder (the OSNet baseline): the Embedder interface on real crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reidcam.errors import ConfigError
from reidcam.reid.onnx_embedder import OnnxEmbedder


@pytest.fixture(scope="module")
def crops(vtest_video: Path) -> list[np.ndarray]:
    """Two people of vtest.avi, twice each, a few frames apart, plus a patch of pavement."""
    capture = cv2.VideoCapture(str(vtest_video))
    frames = [capture.read()[1] for _ in range(104)]
    capture.release()
    first, later = frames[100], frames[103]
    boxes = [(376, 176, 410, 257), (489, 148, 516, 221)]  # two walkers in frame 100 (detector output)
    people = [image[y1:y2, x1:x2] for image in (first, later) for x1, y1, x2, y2 in boxes]
    return people + [first[480:560, 20:60]]


def test_embeddings_are_unit_vectors_of_the_model_width(osnet_onnx, crops):
    embedder = OnnxEmbedder(osnet_onnx)
    vectors = embedder.embed(crops, camera_indices=[0] * len(crops))
    assert vectors.shape == (len(crops), 512) == (len(crops), embedder.embed_dim)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.img_size == (256, 128)


def test_a_person_is_closer_to_themself_a_moment_later_than_to_others(osnet_onnx, crops):
    vectors = OnnxEmbedder(osnet_onnx).embed(crops)
    similarity = vectors @ vectors.T
    first_a, first_b, later_a, later_b, pavement = range(5)
    assert similarity[first_a, later_a] > max(similarity[first_a, first_b], similarity[first_a, pavement])
    assert similarity[first_b, later_b] > max(similarity[first_b, first_a], similarity[first_b, pavement])


def test_batching_does_not_change_the_result(osnet_onnx, crops):
    embedder = OnnxEmbedder(osnet_onnx)
    together = embedder.embed(crops)
    one_by_one = np.concatenate([embedder.embed([crop]) for crop in crops])
    assert np.allclose(together, one_by_one, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ONNX model not found"):
        OnnxEmbedder(tmp_path / "none.onnx")
