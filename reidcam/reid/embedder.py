"""Inference API of the ReID model: person crops in, L2-normalised embeddings out.

Crops are BGR uint8 arrays (as OpenCV decodes frames) of any size. Each is moved to the model's
device as uint8, resized there to the model input with antialiased bicubic interpolation (what
torchvision does for training), converted to RGB and normalised with the ImageNet mean and std.

On a GPU, batches are padded to a multiple of ``pad_to`` crops (16 by default) and the model runs
once per padded size when the embedder is made: the Triton kernels are compiled for, and picked
by, the integer arguments they see, so a stream of ever-changing batch sizes would otherwise keep
compiling in the middle of a run. In eval mode every crop's embedding is independent of the others
in its batch, so the padding changes no result.

Each padded size is then captured as a CUDA graph: the model launches ~700 kernels per forward,
and launching them from Python cost ~20 ms per call whatever the batch (session 4), far more than
the GPU work of a few dozen crops. A replay launches them all at once. Camera indices travel in
the graph's own buffer, with -1 (no camera embedding) where none are given.

The weights are frozen once the embedder is made, so every forward it makes (warm-up, graph capture,
eager) runs in the scope of a weight memo it owns (``scan.weight_memo``): the triton backend computes
its weight-derived tables (~340 small kernels per forward) once, and the graphs read those tables for
as long as the embedder lives. The memo is opt-in because only the weights' owner knows they stay
frozen: a memo misses updates that bump no version counter (``p.data.mul_``, fused optimiser steps).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reidcam.devices import on_stream, resolve_device, urgent_stream
from reidcam.errors import ConfigError, DataError
from reidcam.reid.model import ReIDMamba, build_model
from reidcam.reid.model.checkpoint import load_reid_checkpoint
from reidcam.reid.model.scan import new_weight_memo, weight_memo

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
GPU_BATCH_MULTIPLE = 16


class Embedder:
    """Batched ReIDMamba inference on one device; build it with :meth:`create`.

    Assumes the model's weights stay frozen while the embedder lives: it changes none of them itself
    (eval mode, inference mode, no optimiser; ``model.to(device)`` happens before any forward), and
    caches what derives from them: the triton backend's weight tables in the memo it owns, and the
    weights' memory in its CUDA graphs. Whoever changes ``model``'s weights must make a new Embedder.
    """

    def __init__(
        self,
        model: ReIDMamba,
        device: torch.device,
        batch_size: int = 64,
        flip: bool = False,
        pad_to: int | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.flip = flip
        self.pad_to = pad_to if pad_to is not None else (GPU_BATCH_MULTIPLE if device.type == "cuda" else 1)
        if self.pad_to < 1:
            raise ConfigError(f"pad_to must be >= 1, got {self.pad_to}")
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._graphs: dict[int, _GraphedEmbed] = {}
        self._warned_unseen = False
        self._weight_memo = new_weight_memo()  # None where the triton kernels do not import
        # ahead of the detector's stream on a shared GPU: the main job waits for every embedding batch at
        # once, while it reads the detector's work only a step later
        self._stream = urgent_stream(device) if device.type == "cuda" else None
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def create(
        cls,
        weights: Path | None,
        model_name: str = "reidmamba_tiny",
        device: str = "cpu",
        img_size: tuple[int, int] | None = None,
        batch_size: int = 64,
        flip: bool = False,
    ) -> Embedder:
        """Loads ``weights`` (a reidcam ReID checkpoint), or builds a seeded random model if None."""
        torch_device = resolve_device(device)
        if weights is None:
            model = _random_model(model_name, img_size)
        else:
            model, _ = load_reid_checkpoint(weights, map_location="cpu")
            if img_size is not None and tuple(img_size) != model.config.img_size:
                log.warning(
                    "%s was trained at %s; using that instead of %s", weights, model.config.img_size, tuple(img_size)
                )
        embedder = cls(model, torch_device, batch_size=batch_size, flip=flip)
        if torch_device.type == "cuda":
            embedder.warm_up()
        return embedder

    def batch_shapes(self) -> list[int]:
        """The batch sizes the model ever sees: multiples of ``pad_to`` up to the padded ``batch_size``."""
        largest = _round_up(self.batch_size, self.pad_to)
        return list(range(self.pad_to, largest + 1, self.pad_to))

    def warm_up(self) -> None:
        """One forward at every batch shape, so that first-use kernel compilation happens now; then,
        with ``cuda_graphs``, one CUDA graph per shape (largest first, all in one memory pool)."""
        log.info("preparing the ReID model's GPU kernels (the first run on a machine compiles them: minutes)")
        height, width = self.img_size
        with self._inference():
            for size in self.batch_shapes():
                self.model.embed(torch.zeros(size, 3, height, width, device=self.device), None, flip=self.flip)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.cuda_graphs:
            pool = torch.cuda.graph_pool_handle()
            for size in reversed(self.batch_shapes()):
                self._graphs[size] = self._capture(size, pool)

    def _capture(self, size: int, pool) -> _GraphedEmbed:
        height, width = self.img_size
        images = torch.zeros(size, 3, height, width, device=self.device)
        camids = torch.full((size,), -1, dtype=torch.long, device=self.device)
        graph = torch.cuda.CUDAGraph()
        with self._inference(), torch.cuda.graph(graph, pool=pool):
            output = self.model.embed(images, camids, flip=self.flip)
        return _GraphedEmbed(images, camids, output, graph)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def img_size(self) -> tuple[int, int]:
        return self.model.config.img_size

    def embed(self, crops: Sequence[np.ndarray], camera_indices: Sequence[int] | None = None) -> np.ndarray:
        """(N, embed_dim) float32 unit-norm embeddings of N BGR uint8 crops.

        ``camera_indices`` selects the model's camera embedding (SIE) per crop: an index into the
        cameras the model was trained on; -1, an index beyond them, or None adds none.
        """
        if camera_indices is not None and len(camera_indices) != len(crops):
            raise DataError(f"{len(camera_indices)} camera indices for {len(crops)} crops")
        out = np.empty((len(crops), self.embed_dim), dtype=np.float32)
        with on_stream(self._stream):
            for start in range(0, len(crops), self.batch_size):
                stop = min(start + self.batch_size, len(crops))
                cams = None if camera_indices is None else self._camera_tensor(camera_indices[start:stop])
                out[start:stop] = self._embed_batch(crops[start:stop], cams)
        return out

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Where every model forward of the embedder runs: inference mode, bf16 autocast on a GPU, and
        the scope of the embedder's weight memo (its graphs read the memo's tables: it lives as long)."""
        with torch.inference_mode(), self._autocast(), weight_memo(self._weight_memo):
            yield

    def _embed_batch(self, crops: Sequence[np.ndarray], camids: Tensor | None) -> np.ndarray:
        images = self._preprocess(crops)
        count = images.shape[0]
        padding = _round_up(count, self.pad_to) - count
        if padding:
            images = F.pad(images, (0, 0, 0, 0, 0, 0, 0, padding))
            camids = None if camids is None else F.pad(camids, (0, padding), value=-1)
        graphed = self._graphs.get(images.shape[0])
        if graphed is not None:
            embedding = graphed.run(images, camids)
        else:
            with self._inference():
                embedding = self.model.embed(images, camids, flip=self.flip)
        return embedding[:count].float().cpu().numpy()

    def _preprocess(self, crops: Sequence[np.ndarray]) -> Tensor:
        """Resizes each crop (bicubic, antialiased, rounded to uint8 levels), BGR->RGB, normalises."""
        height, width = self.img_size
        uploaded = _upload_crops(crops, self.device)
        batch = torch.stack([_resize_crop(crop, height, width, self.device) for crop in uploaded])
        return (batch - self._mean) / self._std

    def _camera_tensor(self, indices: Sequence[int]) -> Tensor:
        """Camera indices for the SIE; those outside the model's training cameras become -1 (unseen)."""
        cams = torch.as_tensor(list(indices), dtype=torch.long)
        known = self.model.config.num_cameras
        unseen = cams >= known
        if bool(unseen.any()) and known and not self._warned_unseen:
            log.warning("camera indices >= %d are not training cameras of the model: no camera embedding", known)
            self._warned_unseen = True
        return cams.masked_fill(unseen, -1).to(self.device)


@dataclass(frozen=True)
class _GraphedEmbed:
    """A captured ``model.embed`` at one batch size: inputs are copied into its buffers, then replayed."""

    images: Tensor
    camids: Tensor
    output: Tensor
    graph: torch.cuda.CUDAGraph

    def run(self, images: Tensor, camids: Tensor | None) -> Tensor:
        """The embeddings of ``images`` (this graph's batch size); valid until the next run."""
        with torch.inference_mode():
            self.images.copy_(images)
            if camids is None:
                self.camids.fill_(-1)
            else:
                self.camids.copy_(camids)
        self.graph.replay()
        return self.output


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_crop(crop: np.ndarray) -> None:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise DataError("a crop must be a uint8 BGR array of shape (H, W, 3)")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise DataError(f"empty crop of shape {crop.shape}")


def _upload_crops(crops: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """Each BGR uint8 crop as an (H, W, 3) uint8 tensor on ``device``.

    On a GPU, all crops travel in one copy from page-locked memory that the host does not wait for:
    one pageable copy per crop made the host wait for the GPU before each (the resize kernels of the
    crop before it queue behind the detector's work), dozens of times per step of the main job.
    """
    for crop in crops:
        _check_crop(crop)
    if device.type != "cuda":
        return [torch.from_numpy(np.ascontiguousarray(crop)) for crop in crops]
    sizes = [crop.size for crop in crops]
    staging = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    flat = staging.numpy()
    offset = 0
    for crop, size in zip(crops, sizes):
        flat[offset:offset + size].reshape(crop.shape)[...] = crop
        offset += size
    on_device = staging.to(device, non_blocking=True)  # the pinned allocator keeps staging until it is read
    return [part.view(crop.shape) for part, crop in zip(torch.split(on_device, sizes), crops)]


def _resize_crop(crop: np.ndarray | Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """(3, height, width) float RGB levels of one BGR crop (an array, or a uint8 tensor on ``device``),
    resized on ``device``.

    The crop travels as uint8 and is resized where the model runs: on a GPU host the CPU's many
    threads are busy decoding and tracking, and there a crop's bicubic resize took 20-25 ms on the
    CPU against well under a millisecond on the GPU (BENCHMARKS.md, session 4).
    """
    if isinstance(crop, np.ndarray):
        (crop,) = _upload_crops([crop], device)
    rgb = crop.permute(2, 0, 1).flip(0)[None].float()
    if rgb.shape[-2:] == (height, width):
        return rgb[0]
    resized = F.interpolate(rgb, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized[0].round_().clamp_(0.0, 255.0)


def _random_model(model_name: str, img_size: tuple[int, int] | None) -> ReIDMamba:
    """A randomly initialised model, seeded so that every run gives the same embeddings."""
    log.warning("no ReID weights given: using a randomly initialised %s (embeddings carry little identity)", model_name)
    overrides = {} if img_size is None else {"img_size": tuple(img_size)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_model(model_name, **overrides)
