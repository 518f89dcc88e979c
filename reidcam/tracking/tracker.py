"""Per-camera multi-object tracking with Roboflow's ``trackers`` package.

Each camera has its own tracker instance and so its own state and its own local track ids.
ByteTrack is the default; BoT-SORT (with camera motion compensation, which needs the frame),
OC-SORT and SORT are selectable with ``tracker.type`` in cams.yaml, and ``tracker.params`` goes
straight to the tracker's constructor.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
from trackers import BoTSORTTracker, ByteTrackTracker, OCSORTTracker, SORTTracker

from reidcam.app.config import TrackerConfig
from reidcam.errors import ConfigError

TRACKER_CLASSES = {
    "bytetrack": ByteTrackTracker,
    "botsort": BoTSORTTracker,
    "ocsort": OCSORTTracker,
    "sort": SORTTracker,
}
# The library's activation thresholds (0.7) suit full-precision detectors; an INT8 model scores
# people lower, so new tracks start from 0.4 here. Anything in tracker.params overrides these.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "bytetrack": {"track_activation_threshold": 0.4, "high_conf_det_threshold": 0.5, "minimum_consecutive_frames": 2},
    "botsort": {"track_activation_threshold": 0.4, "high_conf_det_threshold": 0.5, "enable_cmc": False},
    "ocsort": {"high_conf_det_threshold": 0.4},
    "sort": {},
}
USES_FRAME = {"botsort"}


@dataclass(frozen=True)
class TrackerSpec:
    """Which tracker to build for every camera, with its resolved parameters."""

    kind: str
    params: dict[str, Any]

    @classmethod
    def from_config(cls, config: TrackerConfig) -> TrackerSpec:
        tracker_class = TRACKER_CLASSES[config.type]
        accepted = set(inspect.signature(tracker_class.__init__).parameters) - {"self", "frame_rate"}
        unknown = sorted(set(config.params) - accepted)
        if unknown:
            expected = ", ".join(sorted(accepted))
            key = f"tracker.params.{unknown[0]}"
            raise ConfigError(f"{key}: unknown parameter of {config.type}; expected one of {expected}")
        return cls(kind=config.type, params={**DEFAULT_PARAMS[config.type], **config.params})

    @property
    def uses_frame(self) -> bool:
        """Whether the tracker reads the image (BoT-SORT's camera motion compensation, when enabled)."""
        return self.kind in USES_FRAME and bool(self.params.get("enable_cmc", True))


class CameraTracker:
    """One camera's tracker: detections of a frame in, confirmed tracks out.

    Local track ids start at 1 (the tracker counts from 0; MOTChallenge files and people count
    from 1); unconfirmed boxes (the tracker's -1) are left out.
    """

    def __init__(self, spec: TrackerSpec, frame_rate: float) -> None:
        try:
            self._tracker = TRACKER_CLASSES[spec.kind](frame_rate=frame_rate, **spec.params)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"tracker.params: {error}") from None
        self._uses_frame = spec.uses_frame
        self._clock_origin: float | None = None

    def update(self, detections: sv.Detections, image: np.ndarray | None, timestamp: float) -> sv.Detections:
        """Track one frame; ``timestamp`` (seconds) lets the Kalman step follow dropped frames. ``image`` is read
        only by a tracker that ``uses_frame``."""
        if self._clock_origin is None:
            self._clock_origin = timestamp
        elapsed = max(timestamp - self._clock_origin, 0.0)
        tracked = self._tracker.update(detections, frame=image if self._uses_frame else None, timestamp=elapsed)
        if tracked.tracker_id is None or len(tracked) == 0:
            return empty_tracks()
        confirmed = tracked[tracked.tracker_id >= 0]
        confirmed.tracker_id = confirmed.tracker_id + 1
        return confirmed


def empty_tracks() -> sv.Detections:
    """No tracks, with the fields (tracker_id, confidence) that tracks of a frame have."""
    empty = sv.Detections.empty()
    empty.tracker_id = np.empty(0, dtype=int)
    empty.confidence = np.empty(0, dtype=np.float32)
    return empty
