"""Where a camera looks: its region of interest and its image-to-ground homography.

The foot point of a box (bottom centre) is where a person stands; the ROI test and the
trajectory's ground coordinates both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import supervision as sv

from reidcam.app.config import CameraConfig
from reidcam.errors import ConfigError


@dataclass(frozen=True)
class CameraGeometry:
    roi: np.ndarray | None  # (K, 2) float32 polygon in pixels
    homography: np.ndarray | None  # (3, 3) image -> ground plane

    @classmethod
    def from_config(cls, camera: CameraConfig) -> CameraGeometry:
        roi = np.asarray(camera.roi, dtype=np.float32) if camera.roi else None
        homography = None
        if camera.homography is not None:
            image = np.asarray(camera.homography.image_points, dtype=np.float32)
            ground = np.asarray(camera.homography.ground_points, dtype=np.float32)
            try:
                homography = cv2.getPerspectiveTransform(image, ground)
            except cv2.error:
                homography = np.zeros((3, 3))
            if not np.all(np.isfinite(homography)) or abs(np.linalg.det(homography)) < 1e-12:
                raise ConfigError(
                    f"camera {camera.id}: homography points are degenerate; expected 4 points, no 3 on a line"
                )
        return cls(roi=roi, homography=homography)

    def foot_points(self, xyxy: np.ndarray) -> np.ndarray:
        """(N, 2) bottom centres of the boxes, in pixels."""
        return np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, xyxy[:, 3]], axis=1).astype(np.float32)

    def ground_points(self, xyxy: np.ndarray) -> np.ndarray:
        """(N, 2) foot points on the ground plane, or in pixels where the camera has no homography."""
        feet = self.foot_points(xyxy)
        if self.homography is None or len(feet) == 0:
            return feet
        return cv2.perspectiveTransform(feet.reshape(-1, 1, 2), self.homography).reshape(-1, 2)

    def inside_roi(self, detections: sv.Detections) -> sv.Detections:
        """The detections whose foot point lies in the ROI (all of them without one)."""
        if self.roi is None or len(detections) == 0:
            return detections
        feet = self.foot_points(detections.xyxy)
        keep = np.array([cv2.pointPolygonTest(self.roi, (float(x), float(y)), False) >= 0 for x, y in feet], dtype=bool)
        return detections[keep]
