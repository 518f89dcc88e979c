"""Frames to the detector's device: one uint8 batch, page-locked where the frames live in a decoder's ring."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from reidcam.detection.upload import FrameUploader

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def ring_frames(count: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[mmap.mmap, list[np.ndarray]]:
    """Frames as a decoder process hands them out: views of slots of one shared mapping, random pixels."""
    ring = mmap.mmap(-1, count * int(np.prod(shape)))
    frames = [np.ndarray(shape, np.uint8, buffer=ring, offset=i * int(np.prod(shape))) for i in range(count)]
    generator = np.random.default_rng(seed)
    for frame in frames:
        frame[...] = generator.integers(0, 256, shape, dtype=np.uint8)
    return ring, frames


def test_a_batch_of_ring_and_ordinary_frames_arrives_whole_and_in_order():
    ring, frames = ring_frames(3, (6, 10, 3))
    ordinary = np.random.default_rng(1).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    mixed = [frames[2], ordinary, frames[0][::1]]
    batch = FrameUploader("cpu").upload(mixed)
    assert batch.dtype == torch.uint8 and batch.shape == (3, 6, 10, 3)
    for row, frame in zip(batch, mixed):
        assert np.array_equal(row.numpy(), frame)


def test_frames_on_the_cpu_are_never_page_locked():
    _, frames = ring_frames(2, (4, 4, 3))
    uploader = FrameUploader("cpu")
    uploader.upload(frames)
    assert uploader.locked_rings == 0


@gpu
def test_a_ring_is_page_locked_once_and_its_frames_arrive_intact():
    ring, frames = ring_frames(4, (1080, 1920, 3))
    uploader = FrameUploader("cuda")
    for _ in range(2):
        batch = uploader.upload(frames)
        torch.cuda.synchronize()
        assert uploader.locked_rings == 1
        for row, frame in zip(batch, frames):
            assert torch.equal(row.cpu(), torch.from_numpy(frame))
    del uploader  # unlocks the ring, which can then go
    torch.cuda.synchronize()
