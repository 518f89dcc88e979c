"""Person detection with Ultralytics YOLO: any format it loads (.pt, .onnx, .tflite, OpenVINO).

A PyTorch model on CUDA takes the *tensor path*: frames go to the GPU as one uint8 batch (by DMA from
page-locked memory where they come from a decoder process's ring: upload.py) and are letterboxed, run
(a CUDA graph per input shape: network_graphs.py) and suppressed there, with Ultralytics' own network and
box scaling. ``predict``
spends most of its time on the CPU (cv2 letterbox per frame, stacking, Results objects) while the
network itself is a fraction of it. Every other model and device goes through ``predict``.

Weights come from, in order: the ``detector.weights`` key of cams.yaml, the
``REIDCAM_DETECTOR_WEIGHTS`` variable, the INT8 TFLite model in ``../shared`` when the checkout
has one beside it (the offline demo default), and finally Ultralytics' own ``yolov8n.pt``, which
Ultralytics downloads where a network exists. Offline and without weights, loading fails with
a one-line error that says how to provide them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import supervision as sv
import torch
import torch.nn.functional as F

from reidcam.app.config import DETECTOR_WEIGHTS_VARIABLE, DetectorConfig, shared_dir
from reidcam.detection.base import DoneDetections, PendingDetections
from reidcam.detection.network_graphs import GraphedNetwork, prediction_of
from reidcam.detection.upload import FrameUploader
from reidcam.devices import on_stream, urgent_stream
from reidcam.errors import ConfigError, first_line

os.environ.setdefault("YOLO_OFFLINE", "1")

logger = logging.getLogger(__name__)

ULTRALYTICS_DEFAULT_WEIGHTS = "yolov8n.pt"
SHARED_DETECTOR = Path("models") / "yolov8n-coco-int8" / "yolov8n_int8.tflite"
FIXED_BATCH_SUFFIXES = (".tflite",)
PERSON = "person"
PADDING_VALUE = 114.0  # Ultralytics' LetterBox fill


class Letterbox(NamedTuple):
    """Where a frame lands in the network input: resized to ``resized`` and placed at (``top``, ``left``)
    in a ``shape`` canvas, all (height, width)."""

    shape: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int


def resolve_detector_weights(configured: str | None) -> str:
    """The weights to load: config key, environment variable, offline demo default, Ultralytics default."""
    if configured:
        return configured
    from_environment = os.environ.get(DETECTOR_WEIGHTS_VARIABLE)
    if from_environment:
        return from_environment
    offline_default = shared_dir() / SHARED_DETECTOR
    if offline_default.is_file():
        return str(offline_default)
    return ULTRALYTICS_DEFAULT_WEIGHTS


def ultralytics_device(device: str) -> str | int:
    """Ultralytics wants ``cpu`` or a CUDA index."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return int(index or 0)
    return device


def letterbox_geometry(height: int, width: int, imgsz: Sequence[int], stride: int) -> Letterbox:
    """Ultralytics' LetterBox geometry in ``predict`` for a PyTorch model: ``auto=True`` (the smallest
    stride-multiple canvas), ``scaleup=True``, centred with its ``round(d - 0.1)`` / ``round(d + 0.1)`` split."""
    scale = min(imgsz[0] / height, imgsz[1] / width)
    resized = max(round(height * scale), 1), max(round(width * scale), 1)
    pad_h, pad_w = (imgsz[0] - resized[0]) % stride, (imgsz[1] - resized[1]) % stride
    shape = resized[0] + pad_h, resized[1] + pad_w
    return Letterbox(shape, resized, round(pad_h / 2 - 0.1), round(pad_w / 2 - 0.1))


def letterbox_on_device(
    frame: np.ndarray, geometry: Letterbox, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """A BGR uint8 frame (H, W, 3) as the network's (3, h, w) RGB input in [0, 1], letterboxed on ``device``.

    Only the uint8 frame crosses to the device. Bilinear without antialiasing and with half-pixel centres is
    cv2's INTER_LINEAR; the result differs from Ultralytics' by cv2's rounding to uint8 after resizing.
    """
    return letterbox_batch(torch.from_numpy(np.ascontiguousarray(frame)).to(device)[None], geometry, dtype)[0]


def letterbox_batch(frames: torch.Tensor, geometry: Letterbox, dtype: torch.dtype) -> torch.Tensor:
    """``letterbox_on_device`` of a uint8 batch (N, H, W, 3) already on the device: (N, 3, h, w), one kernel
    per step for the whole batch."""
    image = frames.permute(0, 3, 1, 2).float()
    if geometry.resized != tuple(frames.shape[1:3]):
        image = F.interpolate(image, size=geometry.resized, mode="bilinear", align_corners=False, antialias=False)
    bottom = geometry.shape[0] - geometry.resized[0] - geometry.top
    right = geometry.shape[1] - geometry.resized[1] - geometry.left
    image = F.pad(image, (geometry.left, right, geometry.top, bottom), value=PADDING_VALUE)
    return image.flip(1).to(dtype).div_(255)


def uses_tensor_path(model_format: str, device: torch.device) -> bool:
    """The tensor path serves PyTorch models on CUDA; other formats and the CPU keep ``predict``."""
    return model_format == "pt" and device.type == "cuda"


def batches_by_shape(frame_shapes: Sequence[tuple[int, ...]], max_batch: int) -> list[list[int]]:
    """Indices of frames of one size, at most ``max_batch`` a batch, in first-seen order. Frames of one size
    share a network input and the mapping of boxes back to the frame, so a batch maps them in one go."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(frame_shapes):
        groups.setdefault(tuple(shape[:2]), []).append(index)
    return [group[start : start + max_batch] for group in groups.values() for start in range(0, len(group), max_batch)]


def person_nms(
    prediction: torch.Tensor, confidence: float, iou: float, person: int, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' ``non_max_suppression`` for one class over a whole batch at once: one torchvision
    ``batched_nms`` call where Ultralytics loops over the images in Python.

    ``prediction`` is the network's (batch, 4 + classes, anchors) output. As in Ultralytics, an anchor is
    a person when its best class is the person class with a score above ``confidence``. Returns the kept
    rows (x1, y1, x2, y2, confidence, class) in float32, grouped by image and best first within one, and
    the image of each row.
    """
    return suppress_candidates(person_candidates(prediction, confidence, person), iou, person, max_det)


def person_candidates(prediction: torch.Tensor, confidence: float, person: int) -> torch.Tensor:
    """The first half of ``person_nms``, which reads the whole network output and so runs where it lies:
    (n, 6) float32 rows (cx, cy, w, h, score, image) of the anchors that are persons."""
    scores, best = prediction[:, 4:].max(1)
    image, anchor = torch.nonzero((scores > confidence) & (best == person), as_tuple=True)
    return torch.cat(
        [prediction[image, :4, anchor].float(), scores[image, anchor, None].float(), image[:, None].float()], dim=1
    )


def suppress_candidates(
    candidates: torch.Tensor, iou: float, person: int, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second half of ``person_nms``: a few dozen candidates per frame, cheapest on the CPU (on a GPU,
    a dozen small launches and a wait inside torchvision's NMS)."""
    from torchvision.ops import batched_nms
    from ultralytics.utils.ops import xywh2xyxy

    boxes, scores, image = xywh2xyxy(candidates[:, :4]), candidates[:, 4], candidates[:, 5].long()
    kept = batched_nms(boxes, scores, image, iou)
    kept = kept[torch.sort(image[kept], stable=True).indices]  # by image, best first within each
    kept_image = image[kept]
    first_of_image = torch.searchsorted(kept_image, kept_image, right=False)
    kept = kept[torch.arange(len(kept), device=kept.device) - first_of_image < max_det]
    rows = torch.cat([boxes[kept], scores[kept, None], torch.full_like(scores[kept, None], person)], dim=1)
    return rows, image[kept]


class YoloDetector:
    """Person boxes from an Ultralytics model, batched over the frames of all cameras.

    Models exported with a fixed batch of one (TFLite) are run frame by frame inside
    ``detect``; callers always hand over the whole batch.

    ``tensor_path`` chooses how frames reach the network: None picks the tensor path for a PyTorch
    model on CUDA, True forces it (a PyTorch model on any device, as the CPU tests do), False keeps
    ``predict``.
    """

    def __init__(self, config: DetectorConfig, device: str, tensor_path: bool | None = None) -> None:
        self.weights = resolve_detector_weights(config.weights)
        self.config = config
        self.device = ultralytics_device(device)
        self.model = _load_model(self.weights, config.imgsz, self.device, half=self._half)
        # Ultralytics' ``names`` re-checks the whole dict at every read: read once, as an array by class id
        names = self.model.names
        self.person_class = _person_class(names, self.weights)
        self._class_names = np.array([names.get(i, str(i)) for i in range(max(names, default=-1) + 1)])
        fixed_batch = Path(self.weights).suffix.lower() in FIXED_BATCH_SUFFIXES
        self.max_batch = 1 if fixed_batch else config.batch_size
        predictor = self.model.predictor
        self._network = predictor.model  # the AutoBackend that predict runs, with predict's precision
        self._imgsz: tuple[int, int] = tuple(predictor.imgsz)
        self._max_det: int = predictor.args.max_det
        self._tensor_path = self._choose_tensor_path(tensor_path)
        # the tensor path's own CUDA stream: with detector.overlap its work runs beside the ReID stage's
        # on the GPU too, not queued behind it on the default stream
        self._stream = torch.cuda.Stream(self._network.device) if self._tensor_path and self.on_cuda else None
        # the NMS of a step is waited for at once, while the forward queued after it is read a step later
        self._nms_stream = urgent_stream(self._network.device) if self._stream is not None else None
        self._uploader = FrameUploader(self._network.device)
        graphs = config.cuda_graphs and self._stream is not None
        self._forward = GraphedNetwork(self._network, self._stream) if graphs else self._eager_forward
        logger.info("detector %s on %s: %s", self.weights, self._network.device, self._path_name)

    @property
    def on_cuda(self) -> bool:
        """Ultralytics runs some formats (TFLite) on the CPU whatever device was asked for."""
        return self._network.device.type == "cuda"

    @property
    def _half(self) -> bool:
        return self.device != "cpu"

    @property
    def _path_name(self) -> str:
        return "tensor path" if self._tensor_path else "Ultralytics predict"

    def _choose_tensor_path(self, requested: bool | None) -> bool:
        if requested is None:
            return uses_tensor_path(self._network.format, self._network.device)
        if requested and self._network.format != "pt":
            raise ConfigError(f"the tensor path needs a PyTorch model; {self.weights!r} is {self._network.format}")
        return requested

    def detect(self, images: Sequence[np.ndarray]) -> list[sv.Detections]:
        return self.submit(images).result()

    def warm_up(self, frame_shapes: Sequence[tuple[int, ...]]) -> None:
        """Detects blank frames in every batch that frames of these shapes make, twice: on a GPU, the first
        forward at a new input shape picks cuDNN's algorithms and the second captures its CUDA graph, half
        a second or more that would otherwise stall the cameras' first steps."""
        if not (self._tensor_path and self.on_cuda):
            return
        for indices in batches_by_shape(frame_shapes, self.max_batch):
            blank = [np.zeros(frame_shapes[index], dtype=np.uint8) for index in indices]
            for _ in range(2):
                self.detect(blank)

    def submit(self, images: Sequence[np.ndarray]) -> PendingDetections:
        """Starts detection on ``images``. On the GPU's tensor path it returns once the batch's work is queued
        (the frames must stay as they are until ``result``); ``predict`` detects before returning."""
        if self._tensor_path:
            return _InFlightBatches(self, len(images), self._launch_on_device(images))
        return DoneDetections(self._detect_with_predict(images))

    def _detect_with_predict(self, images: Sequence[np.ndarray]) -> list[sv.Detections]:
        detections: list[sv.Detections] = []
        for start in range(0, len(images), self.max_batch):
            chunk = list(images[start : start + self.max_batch])
            results = self.model.predict(
                chunk,
                imgsz=self.config.imgsz,
                conf=self.config.confidence,
                iou=self.config.iou,
                classes=[self.person_class],
                device=self.device,
                **precision_argument(self._half),
                verbose=False,
            )
            detections.extend(_to_detections(result) for result in results)
        return detections

    def _launch_on_device(self, images: Sequence[np.ndarray]) -> list[_Launched]:
        """The tensor path: frames grouped by input shape, each group one forward pass, queued.

        Every frame gets its own smallest canvas, which is what ``predict`` gives a chunk of frames of one
        shape (a chunk of mixed shapes it pads to the full ``imgsz`` square instead).
        """
        return [self._launch_batch(indices, [images[i] for i in indices])
                for indices in batches_by_shape([image.shape for image in images], self.max_batch)]

    def _launch_batch(self, indices: list[int], images: list[np.ndarray]) -> _Launched:
        """Upload, letterbox and forward pass of frames of one size, queued on the detector's stream."""
        network = self._network
        dtype = torch.half if network.fp16 else torch.float
        geometry = letterbox_geometry(*images[0].shape[:2], self._imgsz, int(network.stride))
        with torch.inference_mode(), on_stream(self._stream):
            batch = letterbox_batch(self._uploader.upload(images), geometry, dtype)
            prediction = self._forward(batch)
            if isinstance(self._forward, GraphedNetwork):  # the next replay would overwrite it
                prediction = prediction.clone()
            done = None
            if self._stream is not None:
                done = torch.cuda.Event()
                done.record(self._stream)
        return _Launched(indices, images, prediction, tuple(batch.shape[2:]), done)

    def _finish_batch(self, launched: _Launched) -> list[sv.Detections]:
        """The batch's person candidates, found and copied to the host on a stream of their own (waiting for
        them waits for this batch only, not for batches queued since on the detector's stream), then
        suppressed and mapped back to frame pixels on the CPU."""
        from ultralytics.utils.ops import scale_boxes

        stream = self._nms_stream
        with torch.inference_mode():
            with on_stream(stream):
                if launched.done is not None:  # set where the detector has its streams
                    stream.wait_event(launched.done)
                rows, image_of_row = self._suppress_to_host(launched.prediction)
            rows[:, :4] = scale_boxes(launched.canvas, rows[:, :4], launched.images[0].shape)
            on_host = torch.cat([rows, image_of_row[:, None].float()], dim=1).numpy()
        bounds = np.searchsorted(on_host[:, 6], np.arange(1, len(launched.images)))
        return [self._detections(found[:, :6]) for found in np.split(on_host, bounds)]

    def _eager_forward(self, batch: torch.Tensor) -> torch.Tensor:
        return prediction_of(self._network(batch))

    def _suppress_to_host(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept rows and the image of each, on the CPU: ``person_nms`` (its candidates found on the network's
        device, suppressed on the CPU), or Ultralytics' own for an end-to-end model (whose output needs no
        NMS, only its filters)."""
        if not getattr(self._network, "end2end", False):
            candidates = person_candidates(prediction, self.config.confidence, self.person_class).cpu()
            return suppress_candidates(candidates, self.config.iou, self.person_class, self._max_det)
        from ultralytics.utils.nms import non_max_suppression

        kept = non_max_suppression(prediction, self.config.confidence, self.config.iou, classes=[self.person_class],
                                   max_det=self._max_det, end2end=True)
        images = [torch.full((len(rows),), index, device=prediction.device) for index, rows in enumerate(kept)]
        return torch.cat(kept).float().cpu(), torch.cat(images).cpu()

    def _detections(self, rows: np.ndarray) -> sv.Detections:
        """Rows (x1, y1, x2, y2, confidence, class) in frame pixels as ``sv.Detections``, with the fields
        ``sv.Detections.from_ultralytics`` gives."""
        class_id = rows[:, 5].astype(int)
        return sv.Detections(
            xyxy=np.ascontiguousarray(rows[:, :4]),
            confidence=np.ascontiguousarray(rows[:, 4]),
            class_id=class_id,
            data={"class_name": self._class_names[class_id]},
        )


class _Launched(NamedTuple):
    """One batch of frames of one size whose forward pass is queued; ``done`` marks its end on the GPU."""

    indices: list[int]
    images: list[np.ndarray]  # kept alive until the upload from them has run
    prediction: torch.Tensor
    canvas: tuple[int, int]
    done: torch.cuda.Event | None


class _InFlightBatches:
    """``PendingDetections`` of the tensor path: the queued batches of one ``submit``, finished in order."""

    def __init__(self, detector: YoloDetector, count: int, launched: list[_Launched]) -> None:
        self._detector = detector
        self._count = count
        self._launched = launched
        self._detections: list[sv.Detections] | None = None

    def result(self) -> list[sv.Detections]:
        if self._detections is None:
            detections: list[sv.Detections] = [sv.Detections.empty()] * self._count
            for launched in self._launched:
                for index, boxes in zip(launched.indices, self._detector._finish_batch(launched)):
                    detections[index] = boxes
            self._detections, self._launched = detections, []
        return self._detections


def precision_argument(half: bool) -> dict[str, object]:
    """``predict``'s precision argument: ``quantize`` where this Ultralytics has it (it warns that ``half`` is
    deprecated, on every call), else ``half`` (Ultralytics 8.3)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if half else None}
    return {"half": half}


def _to_detections(result) -> sv.Detections:
    detections = sv.Detections.from_ultralytics(result)
    detections.xyxy = detections.xyxy.astype(np.float32)
    return detections


def _load_model(weights: str, imgsz: int = 640, device: str | int = "cpu", half: bool = False):
    """The model, with its backend built by one prediction on a blank image.

    Ultralytics opens some formats (TFLite, ONNX) only at the first prediction; doing that here
    turns a broken file into a one-line error now rather than a traceback mid-run. The prediction
    uses ``detect``'s device and precision, so its predictor (and network) is the one ``detect`` runs.
    """
    from ultralytics import YOLO

    how_to = (
        f"set detector.weights in cams.yaml or {DETECTOR_WEIGHTS_VARIABLE} to a local model file "
        f"(.pt, .onnx, .tflite or an OpenVINO folder)"
    )
    looks_like_path = os.sep in weights or "/" in weights
    if looks_like_path and not Path(weights).exists():
        raise ConfigError(f"detector weights not found: {weights}; {how_to}")
    try:
        model = YOLO(weights, task="detect")
        blank = np.zeros((imgsz, imgsz, 3), dtype=np.uint8)
        model.predict(blank, imgsz=imgsz, device=device, verbose=False, **precision_argument(half))
        return model
    except ConnectionError:
        raise ConfigError(
            f"detector weights {weights!r} are not on disk and cannot be downloaded (offline); {how_to}"
        ) from None
    except Exception as error:  # Ultralytics signals a bad file with many types (TypeError for a corrupt .pt)
        raise ConfigError(f"detector weights {weights!r} cannot be loaded ({first_line(error)}); {how_to}") from None


def _person_class(names: dict[int, str], weights: str) -> int:
    for index, name in names.items():
        if name == PERSON:
            return int(index)
    raise ConfigError(f"detector {weights!r} has no '{PERSON}' class; expected a COCO-style person detector")
