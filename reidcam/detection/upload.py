"""Frames to the detector's GPU as one uint8 batch, by direct DMA where the frames live in a shared ring.

A frame decoded in a decoder process (``streams.decode: process``) is a view of its camera's ring of
slots, an ``mmap`` shared with that process. Page-locking the ring once (the driver's ``cuMemHostRegister``) turns every
later upload from it into a DMA that the host does not wait for. A frame in ordinary (pageable) memory is
copied by the driver through its own staging buffers while the host waits: 0.8 ms per 1080p frame on an
H200 host (BENCHMARKS.md, session 4), a third of the detector's time per frame.

A ring that cannot be locked (a driver that refuses shared memory) is uploaded from pageable memory.
"""

from __future__ import annotations

import logging
import mmap
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from reidcam.cuda_driver import CudaDriver, CudaUnavailable
from reidcam.devices import device_index

logger = logging.getLogger(__name__)


class FrameUploader:
    """Uploads frames of one shape as an (N, H, W, 3) uint8 tensor on ``device``, page-locking the shared
    rings the frames come from on first sight (CUDA only). A ring stays locked while the uploader lives."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._rings: dict[int, mmap.mmap] = {}  # id -> ring this uploader locked, kept alive until unlocked
        self._others: dict[int, mmap.mmap] = {}  # rings found locked already (by another uploader)
        self._refused: dict[int, mmap.mmap] = {}  # kept too, so that their ids stay theirs
        self._finalizer = weakref.finalize(self, _unlock_all, self._rings, self.device)

    def upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, device=self.device)
        for row, frame in zip(batch, frames):
            pinned = self._page_locked(frame)
            # asynchronous only from locked memory; the caller synchronises before the frames can go
            row.copy_(torch.from_numpy(np.ascontiguousarray(frame)), non_blocking=pinned)
        return batch

    @property
    def locked_rings(self) -> int:
        return len(self._rings) + len(self._others)

    def _page_locked(self, frame: np.ndarray) -> bool:
        ring = frame.base
        if self.device.type != "cuda" or not isinstance(ring, mmap.mmap):
            return False
        key = id(ring)
        if key in self._rings or key in self._others:
            return True
        if key in self._refused:
            return False
        result = _LOCKER.lock(ring, self.device)
        if result == 0:
            self._rings[key] = ring
        elif result == CudaDriver.HOST_ALREADY_REGISTERED:
            self._others[key] = ring
        else:
            logger.info("cannot page-lock a frame ring (CUDA driver error %d); its frames are uploaded from "
                        "pageable memory", result)
            self._refused[key] = ring
        return key not in self._refused


def _address(ring: mmap.mmap) -> int:
    return np.frombuffer(ring, dtype=np.uint8, count=1).ctypes.data


class _Locker:
    """Page-locking through the CUDA driver API (``CudaDriver``), in PyTorch's context of the device.

    Not ``torch.cuda.cudart().cudaHostRegister``: a refusal there stays behind as the runtime's last error,
    which the next kernel launch check of PyTorch would report as its own failure; the driver API keeps no
    such state, so a refused ring just stays pageable.
    """

    def __init__(self) -> None:
        self._driver: CudaDriver | None = None

    def lock(self, ring: mmap.mmap, device: torch.device) -> int:
        """0 on success, else the CUDA driver's error code (-1: no driver library)."""
        driver = self._loaded()
        if driver is None:
            return -1
        driver.ensure_context(device_index(device))
        return driver.host_register(_address(ring), len(ring))

    def unlock(self, ring: mmap.mmap, device: torch.device) -> None:
        driver = self._loaded()
        if driver is not None:
            driver.ensure_context(device_index(device))
            driver.host_unregister(_address(ring))

    def _loaded(self) -> CudaDriver | None:
        if self._driver is None:
            try:
                self._driver = CudaDriver()
            except CudaUnavailable:
                return None
        return self._driver


_LOCKER = _Locker()


def _unlock_all(rings: dict[int, mmap.mmap], device: torch.device) -> None:
    try:
        for ring in rings.values():
            _LOCKER.unlock(ring, device)
    except (CudaUnavailable, RuntimeError):  # CUDA already shut down (the interpreter is exiting)
        pass
    rings.clear()
