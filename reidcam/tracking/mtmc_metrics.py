"""Multi-target multi-camera (MTMC) tracking metrics.

Per camera: HOTA, CLEAR (MOTA, ID switches) and Identity (IDF1, IDP, IDR) from the ``trackers``
package, which reproduces TrackEval's matching and arithmetic; the cameras are also combined
the way TrackEval combines sequences. Across cameras: the DukeMTMC / AI City convention, in
which all cameras together form one long sequence (every camera's frames laid end to end) and
the Identity metrics are computed with the global ids. A person who keeps one global id through
every camera scores as in a single camera; a person who gets a new id in the next camera loses
the boxes of the shorter part in the cross-camera figure, while every per-camera figure stays
the same.

Ground-truth boxes may be marked as distractors (``scored=False``; MOTChallenge classes 2, 7, 8,
12), e.g. people only partly inside a camera's window: a prediction matched to one is removed
before scoring, so it is neither a false positive nor a true positive.
"""

from __future__ import annotations

import configparser
import csv
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from trackers.eval import (
    aggregate_clear_metrics,
    aggregate_hota_metrics,
    aggregate_identity_metrics,
    box_iou,
    compute_clear_metrics,
    compute_hota_metrics,
    compute_identity_metrics,
)

from reidcam.errors import DataError

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
MOT_PEDESTRIAN = 1
MOT_DISTRACTOR_CLASSES = frozenset({2, 7, 8, 12})
_EPS = np.finfo(float).eps


@dataclass(frozen=True)
class Sighting:
    """One person box in one frame of one camera (a ground-truth box or a prediction)."""

    camera_id: str
    frame: int  # 1-based index in the camera's own clip
    identity: int  # ground-truth person id, or the predicted global id
    xyxy: tuple[float, float, float, float]
    scored: bool = True  # False: a ground-truth distractor region


@dataclass(frozen=True)
class CameraGroundTruth:
    camera_id: str
    num_frames: int
    sightings: tuple[Sighting, ...]


@dataclass(frozen=True)
class TrackingScores:
    """Single-camera tracking figures (or several cameras combined as TrackEval does)."""

    hota: float
    deta: float
    assa: float
    mota: float
    idf1: float
    idp: float
    idr: float
    id_switches: int
    true_positives: int
    false_positives: int
    false_negatives: int
    gt_identities: int
    predicted_identities: int


@dataclass(frozen=True)
class IdentityScores:
    idf1: float
    idp: float
    idr: float
    idtp: int
    idfp: int
    idfn: int
    gt_identities: int
    predicted_identities: int


@dataclass(frozen=True)
class MtmcReport:
    cameras: dict[str, TrackingScores]
    combined: TrackingScores  # the per-camera figures of all cameras together
    cross_camera: IdentityScores  # global ids over all cameras as one sequence

    def to_dict(self) -> dict[str, Any]:
        return {
            "cameras": {camera: asdict(scores) for camera, scores in self.cameras.items()},
            "combined": asdict(self.combined),
            "cross_camera": asdict(self.cross_camera),
        }


@dataclass(frozen=True)
class _Frame:
    ids: np.ndarray
    boxes: np.ndarray  # (N, 4) xyxy
    scored: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class _Prepared:
    """What the ``trackers`` metric functions take: per frame, 0-based ids and IoU matrices."""

    gt_ids: list[np.ndarray]
    tracker_ids: list[np.ndarray]
    similarity: list[np.ndarray]
    num_gt_ids: int
    num_tracker_ids: int


def evaluate_mtmc(
    ground_truth: Sequence[CameraGroundTruth],
    predictions: Iterable[Sighting],
    iou_threshold: float = IOU_THRESHOLD,
) -> MtmcReport:
    """Score predicted global identities against multi-camera ground truth.

    Predictions on a camera without ground truth are ignored (with a warning); a camera with
    ground truth and no prediction scores all its boxes as misses.
    """
    if not ground_truth:
        raise DataError("no ground-truth camera to evaluate")
    predicted = _group_by_camera(predictions)
    unknown = sorted(set(predicted) - {cam.camera_id for cam in ground_truth})
    if unknown:
        logger.warning("predictions for cameras without ground truth ignored: %s", ", ".join(unknown))
    gt_frames = {cam.camera_id: _frames(cam.sightings, cam.num_frames) for cam in ground_truth}
    predicted_frames = {
        cam.camera_id: _frames(predicted.get(cam.camera_id, ()), cam.num_frames) for cam in ground_truth
    }
    per_camera_raw = {
        camera: _raw_tracking_metrics(_prepare(gt_frames[camera], predicted_frames[camera]), iou_threshold)
        for camera in gt_frames
    }
    cross = _prepare(
        [frame for camera in gt_frames for frame in gt_frames[camera]],
        [frame for camera in gt_frames for frame in predicted_frames[camera]],
    )
    cross_identity = compute_identity_metrics(cross.gt_ids, cross.tracker_ids, cross.similarity, iou_threshold)
    return MtmcReport(
        cameras={camera: _tracking_scores(*raw) for camera, raw in per_camera_raw.items()},
        combined=_combined_scores(list(per_camera_raw.values())),
        cross_camera=_identity_scores(cross_identity, cross.num_gt_ids, cross.num_tracker_ids),
    )


def _group_by_camera(sightings: Iterable[Sighting]) -> dict[str, list[Sighting]]:
    groups: dict[str, list[Sighting]] = defaultdict(list)
    for sighting in sightings:
        groups[sighting.camera_id].append(sighting)
    return groups


def _frames(sightings: Iterable[Sighting], num_frames: int) -> list[_Frame]:
    """Sightings laid out by frame 1..num_frames (boxes outside that range are dropped)."""
    per_frame: list[list[Sighting]] = [[] for _ in range(num_frames)]
    for sighting in sightings:
        if 1 <= sighting.frame <= num_frames:
            per_frame[sighting.frame - 1].append(sighting)
    return [
        _Frame(
            ids=np.array([s.identity for s in items], dtype=np.int64),
            boxes=np.array([s.xyxy for s in items], dtype=np.float64).reshape(-1, 4),
            scored=np.array([s.scored for s in items], dtype=bool),
        )
        for items in per_frame
    ]


def _prepare(gt_frames: list[_Frame], predicted_frames: list[_Frame]) -> _Prepared:
    """TrackEval's MOT preprocessing: drop predictions on distractors, IoU per frame, 0-based ids."""
    kept = [_without_distractor_matches(gt, pred) for gt, pred in zip(gt_frames, predicted_frames)]
    scored_gt = [(gt.ids[gt.scored], gt.boxes[gt.scored]) for gt in gt_frames]
    gt_index = _index_of(np.concatenate([ids for ids, _ in scored_gt] or [np.empty(0, np.int64)]))
    tracker_index = _index_of(np.concatenate([ids for ids, _ in kept] or [np.empty(0, np.int64)]))
    return _Prepared(
        gt_ids=[_remap(ids, gt_index) for ids, _ in scored_gt],
        tracker_ids=[_remap(ids, tracker_index) for ids, _ in kept],
        similarity=[box_iou(gt_boxes, pred_boxes) for (_, gt_boxes), (_, pred_boxes) in zip(scored_gt, kept)],
        num_gt_ids=len(gt_index),
        num_tracker_ids=len(tracker_index),
    )


def _without_distractor_matches(gt: _Frame, predicted: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (ids, boxes) less those that match a distractor box (IoU >= 0.5, one to one)."""
    if gt.scored.all() or len(predicted.ids) == 0:
        return predicted.ids, predicted.boxes
    iou = box_iou(gt.boxes, predicted.boxes)
    iou[iou < 0.5 - _EPS] = 0
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols] > _EPS
    on_distractor = cols[matched][~gt.scored[rows[matched]]]
    keep = np.ones(len(predicted.ids), dtype=bool)
    keep[on_distractor] = False
    return predicted.ids[keep], predicted.boxes[keep]


def _index_of(ids: np.ndarray) -> dict[int, int]:
    return {int(identity): index for index, identity in enumerate(np.unique(ids))}


def _remap(ids: np.ndarray, index: dict[int, int]) -> np.ndarray:
    return np.array([index[int(i)] for i in ids], dtype=np.intp)


def _raw_tracking_metrics(prepared: _Prepared, iou_threshold: float) -> tuple[dict, dict, dict, int, int]:
    args = (prepared.gt_ids, prepared.tracker_ids, prepared.similarity)
    return (
        compute_hota_metrics(*args),
        compute_clear_metrics(*args, threshold=iou_threshold),
        compute_identity_metrics(*args, threshold=iou_threshold),
        prepared.num_gt_ids,
        prepared.num_tracker_ids,
    )


def _combined_scores(raw: list[tuple[dict, dict, dict, int, int]]) -> TrackingScores:
    return _tracking_scores(
        aggregate_hota_metrics([hota for hota, *_ in raw]),
        aggregate_clear_metrics([clear for _, clear, *_ in raw]),
        aggregate_identity_metrics([identity for _, _, identity, *_ in raw]),
        sum(gt_ids for *_, gt_ids, _ in raw),
        sum(tracker_ids for *_, tracker_ids in raw),
    )


def _tracking_scores(hota: dict, clear: dict, identity: dict, gt_ids: int, tracker_ids: int) -> TrackingScores:
    return TrackingScores(
        hota=float(hota["HOTA"]),
        deta=float(hota["DetA"]),
        assa=float(hota["AssA"]),
        mota=float(clear["MOTA"]),
        idf1=float(identity["IDF1"]),
        idp=float(identity["IDP"]),
        idr=float(identity["IDR"]),
        id_switches=int(clear["IDSW"]),
        true_positives=int(clear["CLR_TP"]),
        false_positives=int(clear["CLR_FP"]),
        false_negatives=int(clear["CLR_FN"]),
        gt_identities=gt_ids,
        predicted_identities=tracker_ids,
    )


def _identity_scores(identity: dict, gt_ids: int, tracker_ids: int) -> IdentityScores:
    return IdentityScores(
        idf1=float(identity["IDF1"]),
        idp=float(identity["IDP"]),
        idr=float(identity["IDR"]),
        idtp=int(identity["IDTP"]),
        idfp=int(identity["IDFP"]),
        idfn=int(identity["IDFN"]),
        gt_identities=gt_ids,
        predicted_identities=tracker_ids,
    )


# ---------------------------------------------------------------------------------------------
# Reading ground truth (MOTChallenge folders) and predictions (trajectory CSV rows)
# ---------------------------------------------------------------------------------------------


def load_ground_truth(gt_dir: Path) -> list[CameraGroundTruth]:
    """Cameras of a multi-camera MOTChallenge folder.

    Layout: ``gt_dir/<camera>/gt.txt`` or ``gt_dir/<camera>/gt/gt.txt``, with an optional
    ``seqinfo.ini`` (``seqLength`` = frames in the camera's clip) beside ``gt.txt`` or in the
    camera folder; ``gt_dir/seqmap.txt`` (one camera per line) lists the cameras to score,
    otherwise every camera folder is scored.
    """
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder not found: {gt_dir}")
    cameras = _camera_names(gt_dir)
    if not cameras:
        raise DataError(f"no <camera>/gt.txt under {gt_dir}")
    return [_load_camera(gt_dir / camera) for camera in cameras]


def _camera_names(gt_dir: Path) -> list[str]:
    seqmap = gt_dir / "seqmap.txt"
    if seqmap.exists():
        names = [line.strip() for line in seqmap.read_text().splitlines()]
        return [name for name in names if name and not name.startswith("#") and name.lower() != "name"]
    return sorted(p.name for p in gt_dir.iterdir() if p.is_dir() and _gt_file(p) is not None)


def _gt_file(camera_dir: Path) -> Path | None:
    for candidate in (camera_dir / "gt.txt", camera_dir / "gt" / "gt.txt"):
        if candidate.exists():
            return candidate
    return None


def _load_camera(camera_dir: Path) -> CameraGroundTruth:
    gt_file = _gt_file(camera_dir)
    if gt_file is None:
        raise DataError(f"no gt.txt in {camera_dir}")
    camera_id = camera_dir.name
    sightings = tuple(_read_mot_gt(gt_file, camera_id))
    num_frames = _sequence_length(camera_dir) or max((s.frame for s in sightings), default=0)
    return CameraGroundTruth(camera_id=camera_id, num_frames=num_frames, sightings=sightings)


def _read_mot_gt(path: Path, camera_id: str) -> Iterable[Sighting]:
    """MOTChallenge gt rows ``frame,id,x,y,w,h,conf,class,visibility``; conf 0 rows are ignored."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.replace(" ", "").split(",")]
        except ValueError as error:
            raise DataError(f"{path}:{number}: not a MOTChallenge row: {line!r}") from error
        if len(values) < 6:
            raise DataError(f"{path}:{number}: expected at least 6 values, got {len(values)}")
        frame, identity, x, y, w, h = values[:6]
        conf = values[6] if len(values) > 6 else 1.0
        label = int(values[7]) if len(values) > 7 else MOT_PEDESTRIAN
        distractor = label in MOT_DISTRACTOR_CLASSES
        if not distractor and (conf == 0 or label != MOT_PEDESTRIAN):
            continue
        yield Sighting(camera_id, int(frame), int(identity), (x, y, x + w, y + h), scored=not distractor)


def _sequence_length(camera_dir: Path) -> int | None:
    for ini in (camera_dir / "seqinfo.ini", camera_dir / "gt" / "seqinfo.ini"):
        if ini.exists():
            parser = configparser.ConfigParser()
            parser.read(ini)
            if parser.has_option("Sequence", "seqLength"):
                return parser.getint("Sequence", "seqLength")
    return None


def sightings_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Sighting]:
    """Predictions from rows of the trajectory CSV contract (``global_id, camera_id, frame, x1..y2``)."""
    sightings = []
    for number, row in enumerate(rows, start=1):
        try:
            sightings.append(
                Sighting(
                    camera_id=str(row["camera_id"]),
                    frame=int(float(row["frame"])),
                    identity=int(float(row["global_id"])),
                    xyxy=(float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"trajectory row {number} is not in the CSV contract: {error}") from error
    return sightings


def load_trajectories_csv(path: Path) -> list[Sighting]:
    if not path.exists():
        raise DataError(f"trajectory CSV not found: {path}")
    with path.open(newline="") as handle:
        return sightings_from_rows(csv.DictReader(handle))
