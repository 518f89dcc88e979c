"""Cut one real video into several virtual cameras.

With no public multi-camera footage at hand, one wide static view stands in for a camera
network: each virtual camera is a window of the frame, with blind gaps between windows (so
people vanish between cameras), its own photometric look (brightness, contrast, colour
balance, blur, resolution) and its own start time. Because every camera is cut from the same
uncut view, who is who across cameras is known from that view: the mapping written beside the
clips (``cameras.json``) takes a box of the source frame into each camera's frame.

Used by the demo (``make demo``), the tests and the multi-camera benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

from reidcam.app.config import shared_dir
from reidcam.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = shared_dir() / "data" / "vtest.avi"
DEFAULT_EPOCH = datetime(2026, 1, 15, 9, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class VirtualCamera:
    """One window of the source view, with its own look and its own clock."""

    id: str
    window: tuple[int, int, int, int]  # x1, y1, x2, y2 in source pixels
    start_frame: int = 0  # first source frame this camera records (0-based)
    num_frames: int | None = None  # frames recorded; None = to the end of the source
    scale: float = 1.0  # output resolution relative to the window
    brightness: float = 0.0  # added to every channel, in grey levels
    contrast: float = 1.0
    gains_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour balance
    blur: int = 0  # Gaussian kernel size (odd), 0 = sharp
    clock_offset_s: float = 0.0  # error of this camera's clock against true time

    @property
    def output_size(self) -> tuple[int, int]:
        x1, y1, x2, y2 = self.window
        return round((x2 - x1) * self.scale), round((y2 - y1) * self.scale)


@dataclass(frozen=True)
class Preset:
    cameras: tuple[VirtualCamera, ...]
    description: str
    extra_config: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        description="two cameras, left and right of the plaza, 20 s each, 2 s apart",
        extra_config={"topology": [{"between": ["west", "east"], "min_transit_s": 0, "max_transit_s": 20}]},
        cameras=(
            VirtualCamera("west", (0, 60, 352, 480), start_frame=80, num_frames=200),
            VirtualCamera(
                "east", (432, 60, 768, 480), start_frame=100, num_frames=200,
                brightness=-18, contrast=1.1, gains_bgr=(1.08, 1.0, 0.92), blur=3,
            ),
        ),
    ),
    "benchmark": Preset(
        description="three cameras with blind gaps, different looks, resolutions and clocks",
        cameras=(
            VirtualCamera("cam1", (0, 48, 272, 496)),
            VirtualCamera(
                "cam2", (336, 48, 528, 496), start_frame=15, scale=0.8,
                brightness=20, contrast=0.9, gains_bgr=(0.9, 1.0, 1.1), blur=3,
            ),
            VirtualCamera(
                "cam3", (592, 48, 768, 496), start_frame=30, scale=1.25,
                brightness=-25, contrast=1.15, gains_bgr=(1.1, 0.95, 0.9),
                clock_offset_s=0.0,
            ),
        ),
    ),
}


def apply_look(window: np.ndarray, camera: VirtualCamera) -> np.ndarray:
    """The camera's own rendering of its window: resolution, blur, contrast, colour, brightness."""
    width, height = camera.output_size
    image = cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA)
    if camera.blur:
        image = cv2.GaussianBlur(image, (camera.blur, camera.blur), 0)
    pixels = image.astype(np.float32)
    pixels = (pixels - 128.0) * camera.contrast + 128.0 + camera.brightness
    pixels *= np.asarray(camera.gains_bgr, dtype=np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def box_to_camera(
    box: Sequence[float], camera: VirtualCamera, min_visible: float = 0.5
) -> tuple[float, float, float, float] | None:
    """A source-frame box in the camera's pixels, or None if less than ``min_visible`` of it shows."""
    x1, y1, x2, y2 = box
    wx1, wy1, wx2, wy2 = camera.window
    cx1, cy1, cx2, cy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    visible = (cx2 - cx1) * (cy2 - cy1) / max((x2 - x1) * (y2 - y1), 1e-9)
    if visible < min_visible:
        return None
    s = camera.scale
    return ((cx1 - wx1) * s, (cy1 - wy1) * s, (cx2 - wx1) * s, (cy2 - wy1) * s)


def camera_frame(source_frame: int, camera: VirtualCamera) -> int | None:
    """1-based frame number in the camera's clip of a 0-based source frame, or None if not recorded."""
    index = source_frame - camera.start_frame
    if index < 0 or (camera.num_frames is not None and index >= camera.num_frames):
        return None
    return index + 1


def make_virtual_cameras(
    source: Path,
    out_dir: Path,
    cameras: Sequence[VirtualCamera],
    epoch: datetime = DEFAULT_EPOCH,
    extra_config: dict | None = None,
) -> Path:
    """Write one MP4 per camera, ``cams.yaml`` and ``cameras.json`` into ``out_dir``; returns cams.yaml."""
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise DataError(f"cannot open video {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {cam.id: _open_writer(out_dir / f"{cam.id}.mp4", fps, cam.output_size) for cam in cameras}
    counts = {cam.id: 0 for cam in cameras}
    source_index = 0

    def write(cam: VirtualCamera, frame: np.ndarray) -> None:
        x1, y1, x2, y2 = cam.window
        writers[cam.id].write(apply_look(frame[y1:y2, x1:x2], cam))

    # cameras are encoded in parallel (OpenCV's encoder releases the interpreter lock): 16 clips of 1080p
    # took over a minute one after the other
    try:
        with ThreadPoolExecutor(max_workers=min(len(cameras), os.cpu_count() or 1) or 1) as pool:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                due = [cam for cam in cameras if camera_frame(source_index, cam) is not None]
                for cam in due:
                    counts[cam.id] += 1
                list(pool.map(write, due, [frame] * len(due)))
                source_index += 1
    finally:
        capture.release()
        for writer in writers.values():
            writer.release()
    if source_index == 0:
        raise DataError(f"no frame could be decoded from {source}")
    logger.info("cut %d source frames into %s", source_index, counts)
    _write_cams_yaml(out_dir, cameras, fps, epoch, extra_config or {})
    _write_camera_map(out_dir, source, cameras, fps, counts)
    return out_dir / "cams.yaml"


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise DataError(f"cannot write video {path}")
    return writer


def _camera_start_time(cam: VirtualCamera, fps: float, epoch: datetime) -> datetime:
    return epoch + timedelta(seconds=cam.start_frame / fps + cam.clock_offset_s)


def _write_cams_yaml(
    out_dir: Path, cameras: Sequence[VirtualCamera], fps: float, epoch: datetime, extra: dict
) -> None:
    document = {
        "cameras": [
            {
                "id": cam.id,
                "source": f"{cam.id}.mp4",
                "start_time": _camera_start_time(cam, fps, epoch).isoformat(),
            }
            for cam in cameras
        ],
        **extra,
    }
    (out_dir / "cams.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _write_camera_map(
    out_dir: Path, source: Path, cameras: Sequence[VirtualCamera], fps: float, counts: dict[str, int]
) -> None:
    document = {
        "source": str(source),
        "fps": fps,
        "cameras": [{**asdict(cam), "frames_written": counts[cam.id]} for cam in cameras],
    }
    (out_dir / "cameras.json").write_text(json.dumps(document, indent=2))


def load_camera_map(path: Path) -> tuple[float, list[VirtualCamera]]:
    """Read ``cameras.json`` back: the source fps and the cameras."""
    document = json.loads(path.read_text())
    fields = VirtualCamera.__dataclass_fields__
    cameras = [
        VirtualCamera(**{k: tuple(v) if isinstance(v, list) else v for k, v in cam.items() if k in fields})
        for cam in document["cameras"]
    ]
    return float(document["fps"]), cameras


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the uncut video")
    parser.add_argument("--out", type=Path, required=True, help="folder for the clips and cams.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    preset = PRESETS[args.preset]
    try:
        cams_yaml = make_virtual_cameras(args.source, args.out, preset.cameras, extra_config=preset.extra_config)
    except DataError as error:
        raise SystemExit(f"make_virtual_cameras: error: {error}") from None
    logger.info("%s: %s", cams_yaml, preset.description)


if __name__ == "__main__":
    main()
