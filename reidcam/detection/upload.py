"""Frames to the detector's GPU as one uint8 batch, by direct DMA where the frames live in a shared ring.

A frame decoded in a decoder process (``streams.decode: process``) is a view of its camera's ring of
slots, an ``mmap`` shared with that process. Page-locking the ring once (``cudaHostRegister``) turns every
later upload from it into a DMA that the host does not wait for. A frame in ordinary (pageable) memory is
copied by the driver through its own staging buffers while the host waits: 0.8 ms per 1080p frame on an
H200 host (BENCHMARKS.md, session 4), a third of the detector's time per frame.
"""

from __future__ import annotations

import logging
import mmap
import weakref
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


class FrameUploader:
    """Uploads frames of one shape as an (N, H, W, 3) uint8 tensor on ``device``, page-locking the shared
    rings the frames come from on first sight (CUDA only). A ring stays locked while the uploader lives."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._rings: dict[int, mmap.mmap] = {}  # id -> ring, kept alive until unlocked
        self._refused: set[int] = set()
        self._finalizer = weakref.finalize(self, _unlock_all, self._rings)

    def upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, device=self.device)
        for row, frame in zip(batch, frames):
            pinned = self._page_locked(frame)
            # asynchronous only from locked memory; the caller synchronises before the frames can go
            row.copy_(torch.from_numpy(np.ascontiguousarray(frame)), non_blocking=pinned)
        return batch

    @property
    def locked_rings(self) -> int:
        return len(self._rings)

    def _page_locked(self, frame: np.ndarray) -> bool:
        ring = frame.base
        if self.device.type != "cuda" or not isinstance(ring, mmap.mmap):
            return False
        key = id(ring)
        if key in self._rings:
            return True
        if key in self._refused:
            return False
        if _lock(ring):
            self._rings[key] = ring
            return True
        self._refused.add(key)
        return False


def _address(ring: mmap.mmap) -> int:
    return np.frombuffer(ring, dtype=np.uint8, count=1).ctypes.data


def _lock(ring: mmap.mmap) -> bool:
    result = torch.cuda.cudart().cudaHostRegister(_address(ring), len(ring), 0)
    if int(result) != 0:
        logger.info("cannot page-lock a frame ring (CUDA error %d); its frames are uploaded from pageable memory",
                    int(result))
        return False
    return True


def _unlock_all(rings: dict[int, mmap.mmap]) -> None:
    try:
        for ring in rings.values():
            torch.cuda.cudart().cudaHostUnregister(_address(ring))
    except RuntimeError:  # CUDA already shut down (the interpreter is exiting): nothing left to unlock
        pass
    rings.clear()
