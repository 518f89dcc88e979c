"""The ReID embedder on real person crops (ultralytics' bundled bus.jpg)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reidcam.errors import DataError
from reidcam.reid.embedder import Embedder
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import save_reid_checkpoint

SMALL_INPUT = (128, 64)
PEOPLE_BOXES = [(50, 400, 250, 900), (220, 400, 350, 860), (670, 380, 810, 880)]  # x1, y1, x2, y2 in bus.jpg



@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        pytest.skip("ultralytics (and its bundled bus.jpg) is not installed")
    image = cv2.imread(str(Path(spec.origin).parent / "assets" / "bus.jpg"))
    assert image is not None
    return [image[y1:y2, x1:x2] for x1, y1, x2, y2 in PEOPLE_BOXES]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.create(None, model_name="reidmamba_tiny", img_size=SMALL_INPUT, batch_size=2)


def test_embeddings_are_unit_norm_float32_rows(embedder, crops):
    vectors = embedder.embed(crops)
    assert vectors.shape == (3, embedder.embed_dim) and vectors.dtype == np.float32
    assert embedder.embed_dim == 1728  # 3 branches x 12 tokens x 192 / 4
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_identical_crops_give_identical_embeddings_wherever_they_sit_in_the_batches(embedder, crops):
    alone = embedder.embed([crops[2]])
    batched = embedder.embed([crops[0], crops[2], crops[1], crops[2].copy()])
    np.testing.assert_allclose(batched[1], batched[3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched[1], alone[0], rtol=0, atol=1e-5)


def test_padding_batches_to_fixed_shapes_changes_no_embedding(embedder, crops):
    padded = Embedder(embedder.model, embedder.device, batch_size=2, pad_to=4)
    assert padded.batch_shapes() == [4]
    cameras = [0, -1, 3]
    np.testing.assert_allclose(padded.embed(crops, cameras), embedder.embed(crops, cameras), rtol=0, atol=1e-5)
    assert Embedder(embedder.model, embedder.device, batch_size=40, pad_to=16).batch_shapes() == [16, 32, 48]


def test_random_weights_are_seeded(embedder, crops):
    again = Embedder.create(None, model_name="reidmamba_tiny", img_size=SMALL_INPUT)
    np.testing.assert_array_equal(again.embed(crops[:1]), embedder.embed(crops[:1]))


def test_empty_input_and_bad_crops(embedder):
    assert embedder.embed([]).shape == (0, embedder.embed_dim)
    with pytest.raises(DataError):
        embedder.embed([np.zeros((0, 10, 3), dtype=np.uint8)])
    with pytest.raises(DataError):
        embedder.embed([np.zeros((20, 10), dtype=np.uint8)])
    with pytest.raises(DataError):
        embedder.embed([np.zeros((20, 10, 3), dtype=np.uint8)], camera_indices=[0, 1])


def test_weights_file_with_cameras_and_flip(tmp_path, crops):
    torch.manual_seed(1)
    model = build_model("reidmamba_tiny", img_size=SMALL_INPUT, num_cameras=2, depth=4)
    save_reid_checkpoint(tmp_path / "reid.pt", model)
    embedder = Embedder.create(tmp_path / "reid.pt", flip=True)
    assert embedder.img_size == SMALL_INPUT
    no_camera = embedder.embed(crops[:2])
    camera = embedder.embed(crops[:2], camera_indices=[1, 1])
    unseen = embedder.embed(crops[:2], camera_indices=[-1, 5])  # not training cameras: no SIE
    np.testing.assert_allclose(np.linalg.norm(camera, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(camera, no_camera)
    np.testing.assert_allclose(unseen, no_camera, rtol=0, atol=1e-6)
    mirrored = embedder.embed([np.ascontiguousarray(c[:, ::-1]) for c in crops[:2]])
    np.testing.assert_allclose(mirrored, no_camera, rtol=0, atol=1e-5)  # flip TTA is mirror-invariant


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_embedder_agrees_with_the_cpu_one(embedder, crops, monkeypatch):
    """On the GPU (crops uploaded in one page-locked copy, a stream of its own, CUDA graphs, bf16) the
    embeddings of the same model match the CPU's float32 ones, crop for crop; the uploaded crops are
    byte for byte the arrays, views of a larger image included."""
    from reidcam.reid.embedder import _upload_crops

    monkeypatch.delenv("REIDCAM_SCAN", raising=False)  # a forced GPU backend would refuse the CPU model
    on_gpu = Embedder(copy.deepcopy(embedder.model), torch.device("cuda"), batch_size=4)  # .to moves in place
    on_gpu.warm_up()
    many = crops * 7  # 21 crops: two batches, the second padded
    got, expected = on_gpu.embed(many), embedder.embed(many)
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() > 0.99, cosine
    for uploaded, crop in zip(_upload_crops(crops, torch.device("cuda")), crops):
        np.testing.assert_array_equal(uploaded.cpu().numpy(), crop)
