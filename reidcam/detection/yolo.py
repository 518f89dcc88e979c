"""Person detection with Ultralytics YOLO: any format it loads (.pt, .onnx, .tflite, OpenVINO).

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

import numpy as np
import supervision as sv

from reidcam.app.config import DETECTOR_WEIGHTS_VARIABLE, DetectorConfig, shared_dir
from reidcam.errors import ConfigError

os.environ.setdefault("YOLO_OFFLINE", "1")

logger = logging.getLogger(__name__)

ULTRALYTICS_DEFAULT_WEIGHTS = "yolov8n.pt"
SHARED_DETECTOR = Path("models") / "yolov8n-coco-int8" / "yolov8n_int8.tflite"
FIXED_BATCH_SUFFIXES = (".tflite",)
PERSON = "person"


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


class YoloDetector:
    """Person boxes from an Ultralytics model, batched over the frames of all cameras.

    Models exported with a fixed batch of one (TFLite) are run frame by frame inside
    ``detect``; callers always hand over the whole batch.
    """

    def __init__(self, config: DetectorConfig, device: str) -> None:
        self.weights = resolve_detector_weights(config.weights)
        self.config = config
        self.device = ultralytics_device(device)
        self.model = _load_model(self.weights, config.imgsz, self.device)
        self.person_class = _person_class(self.model.names, self.weights)
        fixed_batch = Path(self.weights).suffix.lower() in FIXED_BATCH_SUFFIXES
        self.max_batch = 1 if fixed_batch else config.batch_size

    def detect(self, images: Sequence[np.ndarray]) -> list[sv.Detections]:
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
                half=self.device != "cpu",
                verbose=False,
            )
            detections.extend(_to_detections(result) for result in results)
        return detections


def _to_detections(result) -> sv.Detections:
    detections = sv.Detections.from_ultralytics(result)
    detections.xyxy = detections.xyxy.astype(np.float32)
    return detections


def _load_model(weights: str, imgsz: int = 640, device: str | int = "cpu"):
    """The model, with its backend built by one prediction on a blank image.

    Ultralytics opens some formats (TFLite, ONNX) only at the first prediction; doing that here
    turns a broken file into a one-line error now rather than a traceback mid-run.
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
        model.predict(np.zeros((imgsz, imgsz, 3), dtype=np.uint8), imgsz=imgsz, device=device, verbose=False)
        return model
    except ConnectionError:
        raise ConfigError(
            f"detector weights {weights!r} are not on disk and cannot be downloaded (offline); {how_to}"
        ) from None
    except Exception as error:  # Ultralytics signals a bad file with many types (TypeError for a corrupt .pt)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"detector weights {weights!r} cannot be loaded ({first_line}); {how_to}") from None


def _person_class(names: dict[int, str], weights: str) -> int:
    for index, name in names.items():
        if name == PERSON:
            return int(index)
    raise ConfigError(f"detector {weights!r} has no '{PERSON}' class; expected a COCO-style person detector")
