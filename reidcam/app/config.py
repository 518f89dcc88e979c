"""cams.yaml: the cameras of a run and the settings of every stage, validated with pydantic.

The smallest valid file names the cameras and nothing else::

    cameras:
      - {id: cam1, source: videos/entrance.mp4}
      - {id: cam2, source: rtsp://127.0.0.1:8554/cam2}

Everything else has a default. Unknown keys are errors (a typo must not silently fall back to a
default), and every error comes out as one line naming the file, the key and what was expected.
Relative paths (video files, image folders, weights, the output folder, a database file) are
resolved against the folder of the YAML file, so a config can travel with its footage.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from reidcam.errors import ConfigError
from reidcam.weights import DEFAULT_REID_MODEL

SHARED_DIR_VARIABLE = "REIDCAM_SHARED"
DETECTOR_WEIGHTS_VARIABLE = "REIDCAM_DETECTOR_WEIGHTS"
URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class StrictModel(BaseModel):
    """Unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Point = tuple[float, float]


class HomographyConfig(StrictModel):
    """Four image points (pixels) and the four ground-plane points (any unit) they map to."""

    image_points: list[Point] = Field(min_length=4, max_length=4)
    ground_points: list[Point] = Field(min_length=4, max_length=4)


class CameraConfig(StrictModel):
    id: str = Field(pattern=CAMERA_ID_PATTERN, description="unique camera name (letters, digits, _ . -)")
    source: str | int = Field(description="video file, image folder, stream URL, or webcam index")
    start_time: datetime | None = Field(default=None, description="wall clock of the first frame, ISO 8601")
    fps: float | None = Field(default=None, gt=0, description="overrides the frame rate the source reports")
    roi: list[Point] | None = Field(
        default=None, min_length=3, description="polygon; boxes whose foot is outside are ignored"
    )
    homography: HomographyConfig | None = None

    @field_validator("start_time")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        """A start time without a zone is taken as UTC; any other zone is converted to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @property
    def is_live(self) -> bool:
        """Streams and webcams: frames arrive in real time and a drop is retried."""
        return isinstance(self.source, int) or bool(URL_PATTERN.match(self.source))


class TopologyLink(StrictModel):
    """Two cameras people pass between (either way), with the transit times that are possible."""

    between: tuple[str, str]
    min_transit_s: float = Field(default=0.0, ge=0)
    max_transit_s: float = Field(default=60.0, gt=0)
    overlap: bool = Field(default=False, description="the views overlap: a person may be in both at once")

    @model_validator(mode="after")
    def _ordered(self) -> TopologyLink:
        if self.max_transit_s < self.min_transit_s:
            raise ValueError("max_transit_s must be >= min_transit_s")
        if self.between[0] == self.between[1]:
            raise ValueError("a link joins two different cameras")
        return self


class DetectorConfig(StrictModel):
    weights: str | None = Field(default=None, description="Ultralytics weights (.pt, .onnx, .tflite, OpenVINO folder)")
    confidence: float = Field(default=0.25, gt=0, lt=1)
    iou: float = Field(default=0.5, gt=0, lt=1, description="non-maximum suppression IoU")
    imgsz: int = Field(default=640, ge=32, le=4096)
    device: str | None = Field(default=None, description="auto, cpu, cuda or cuda:N (default: the CLI's --device)")
    batch_size: int = Field(default=16, ge=1, description="frames per forward pass, over all cameras")
    overlap: bool = Field(
        default=False,
        description="detect and track the next step in a background thread while the current one is embedded, "
        "associated and stored (off by default: it measured no faster on a GPU host, BENCHMARKS.md)",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="on a GPU, replay the network as a CUDA graph per input shape (a PyTorch model)",
    )


class TrackerConfig(StrictModel):
    type: Literal["bytetrack", "botsort", "ocsort", "sort"] = "bytetrack"
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the trackers class")
    processes: Annotated[StrictInt, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="worker processes that run the cameras' trackers off the main thread (0: in the main thread); "
        "auto: none below 8 cameras or 8 CPUs, else min(4, cameras // 4, CPUs // 4). A tracker that needs the "
        "frame (BoT-SORT with enable_cmc) always tracks in the main thread",
    )


class ReidConfig(StrictModel):
    model: str = Field(default=DEFAULT_REID_MODEL, description="ReIDMamba variant name, or the path of an .onnx model")
    weights: str | None = None
    img_size: tuple[int, int] | None = Field(default=None, description="(height, width) of the model's input")
    batch_size: int = Field(default=64, ge=1)
    flip: bool = False
    device: str | None = None
    every_k_frames: int = Field(default=5, ge=1, description="embedding cadence of a live track")
    max_crops_per_tracklet: int | None = Field(
        default=10, ge=1, description="stop embedding a tracklet after this many crops (None: never)"
    )
    min_crop_height: int = Field(default=40, ge=1)
    min_crop_width: int = Field(default=12, ge=1)
    edge_margin: int = Field(default=2, ge=0, description="boxes this close to the frame border are cut: skipped")
    max_overlap: float = Field(default=0.3, ge=0, le=1, description="skip crops this much covered by another box")
    reference_height: int = Field(default=128, ge=1, description="crop height of full quality weight")
    crops_per_tracklet_kept: int = Field(default=4, ge=0, description="best crops kept per tracklet for contact sheets")

    @property
    def is_onnx(self) -> bool:
        return self.model.lower().endswith(".onnx")


class AssociationConfig(StrictModel):
    mode: Literal["combined", "appearance", "spacetime"] = "combined"
    threshold: float = Field(default=0.3, gt=0, le=2, description="largest cosine distance of a match")
    min_crops: int = Field(default=3, ge=1, description="good crops before a tracklet is associated")
    min_tracklet_frames: int = Field(default=3, ge=1, description="shorter tracklets without a match stay unassigned")
    tracklet_timeout_s: float = Field(default=2.0, gt=0, description="a track unseen this long is closed")
    overlap_tolerance_s: float = Field(default=0.5, ge=0, description="clock slack of the same-moment rule")
    min_transit_s: float = Field(default=0.0, ge=0, description="cross-camera transit, when no topology is given")
    max_transit_s: float | None = Field(default=None, gt=0, description="None: unbounded (spacetime mode: 10 s)")
    refine: bool = True
    merge_threshold: float = Field(default=0.2, ge=0, le=2, description="end-of-run merge of identities")
    split_threshold: float = Field(default=0.7, ge=0, le=2, description="end-of-run split of a stray tracklet")


class StorageConfig(StrictModel):
    db: str | None = Field(default=None, description="SQLAlchemy URL or SQLite file (default: OUT/reidcam.db)")
    commit_every: int = Field(default=25, ge=1, description="processing steps per transaction")


class StreamConfig(StrictModel):
    """How sources are decoded, and how a live source that cannot be opened, or drops, is retried."""

    retries: int = Field(default=5, ge=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    # FFmpeg decoding threads per camera; None shares the machine's cores among the cameras (FFmpeg's
    # own default gives every decoder all of them, and 16 cameras then run hundreds of threads)
    decoder_threads: int | None = Field(default=None, ge=1)
    # where each camera decodes: a thread of the run, or a process of its own that writes frames into
    # shared memory (Linux), off the run's interpreter lock and page-locked for the upload to a GPU;
    # auto: processes where detection runs on a GPU (12 % more frames/s on 16 cameras), threads elsewhere
    decode: Literal["auto", "thread", "process"] = "auto"


class CamsConfig(StrictModel):
    cameras: list[CameraConfig] = Field(min_length=1)
    topology: list[TopologyLink] = Field(default_factory=list)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    reid: ReidConfig = Field(default_factory=ReidConfig)
    association: AssociationConfig = Field(default_factory=AssociationConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    streams: StreamConfig = Field(default_factory=StreamConfig)
    sync_tolerance_s: float | None = Field(
        default=None, ge=0, description="frames this close in time share a step (default: one frame period)"
    )
    out: str | None = None

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.id in seen:
                raise ValueError(f"duplicate camera id {camera.id!r}; expected unique ids")
            seen.add(camera.id)
        return cameras

    @model_validator(mode="after")
    def _links_name_cameras(self) -> CamsConfig:
        known = {camera.id for camera in self.cameras}
        for link in self.topology:
            unknown = [name for name in link.between if name not in known]
            if unknown:
                raise ValueError(f"topology names unknown camera {unknown[0]!r}; expected one of {sorted(known)}")
        return self

    def camera(self, camera_id: str) -> CameraConfig:
        return next(camera for camera in self.cameras if camera.id == camera_id)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def load_config(path: Path) -> CamsConfig:
    """Read, validate and resolve a cams.yaml; any problem is a one-line ``ConfigError``."""
    document = _read_yaml(path)
    try:
        config = CamsConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(f"{path}: {_describe(error)}") from None
    return _resolve_paths(config, path.resolve().parent)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'cameras' list at the top")
    return document


def _describe(error: ValidationError) -> str:
    """All of pydantic's complaints on one line: ``key: what was expected (got value)``.

    A value that fails every member of a union (``source: str | int``) gives one complaint per
    member; those are folded into one, so each key is named once.
    """
    by_location: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        location, message = _describe_one(item)
        messages = by_location.setdefault(location, [])
        if message not in messages:
            messages.append(message)
    return "; ".join(f"{location}: {' or '.join(messages)}" for location, messages in by_location.items())


def _describe_one(item: dict[str, Any]) -> tuple[str, str]:
    location = _location(item["loc"]) or "top level"
    kind = item["type"]
    if kind == "extra_forbidden":
        return location, f"unknown key; expected one of {_allowed_keys(item['loc'])}"
    if kind == "missing":
        return location, "required key is missing"
    message = item["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    got = item.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return location, f"{message}{shown}"


def _location(loc: tuple[Any, ...]) -> str:
    """``cameras[1].fps`` from pydantic's location, without its tags for union members."""
    text = ""
    model: type[BaseModel] | None = CamsConfig
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif model is not None and part in model.model_fields:
            text += f".{part}" if text else str(part)
            model = _model_inside(model.model_fields[part].annotation)
        elif model is not None:
            text += f".{part}" if text else str(part)
            model = None
    return text


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    """The keys the section holding an unknown key accepts, to point at the likely typo."""
    model: type[BaseModel] = CamsConfig
    for part in loc[:-1]:
        if isinstance(part, str) and part in model.model_fields:
            inner = _model_inside(model.model_fields[part].annotation)
            if inner is None:
                break
            model = inner
    return ", ".join(model.model_fields)


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_inside(argument)
        if found is not None:
            return found
    return None


def _resolve_paths(config: CamsConfig, base: Path) -> CamsConfig:
    cameras = [
        camera if camera.is_live else camera.model_copy(update={"source": str(_resolve(camera.source, base))})
        for camera in config.cameras
    ]
    updates: dict[str, Any] = {"cameras": cameras}
    if config.out is not None:
        updates["out"] = str(_resolve(config.out, base))
    if config.detector.weights is not None and not URL_PATTERN.match(config.detector.weights):
        weights = _resolve_if_exists(config.detector.weights, base)
        updates["detector"] = config.detector.model_copy(update={"weights": weights})
    reid_updates: dict[str, Any] = {}
    if config.reid.weights is not None:
        reid_updates["weights"] = str(_resolve(config.reid.weights, base))
    if config.reid.is_onnx:
        reid_updates["model"] = str(_resolve(config.reid.model, base))
    if reid_updates:
        updates["reid"] = config.reid.model_copy(update=reid_updates)
    if config.storage.db is not None and not URL_PATTERN.match(config.storage.db):
        updates["storage"] = config.storage.model_copy(update={"db": str(_resolve(config.storage.db, base))})
    return config.model_copy(update=updates)


def _resolve(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_if_exists(value: str, base: Path) -> str:
    """Detector weights may be a model name Ultralytics knows (``yolov8n.pt``): keep those as given."""
    resolved = _resolve(value, base)
    looks_like_path = resolved.exists() or "/" in value or os.sep in value
    return str(resolved) if looks_like_path else value


def shared_dir() -> Path:
    """``../shared`` beside the checkout (or ``$REIDCAM_SHARED``): models and footage for the demo."""
    return Path(os.environ.get(SHARED_DIR_VARIABLE, Path(__file__).resolve().parents[3] / "shared"))
