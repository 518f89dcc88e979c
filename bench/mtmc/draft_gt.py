"""Draft ground truth over the uncut view: detector + ByteTrack + gap filling, then contact sheets.

This is the automatic first pass. Its output (``gt/source/draft.txt``) is reviewed by eye on the
contact sheets and fixed through ``corrections.yaml``; ``build_benchmark.py`` applies the fixes.

The detector runs on the whole frame (seen at 0.83x at 640 px) and, for small and partly hidden
people, on four overlapping tiles (seen at 1.4x); the boxes are merged by NMS. Detections are
cached (``work/detections_tiled.npz``) so the tracking can be re-tuned without detecting again.

    python bench/mtmc/draft_gt.py                 # detect (cached), track, write draft + sheets
    python bench/mtmc/draft_gt.py --sheets-only bench/mtmc/gt/source/gt.txt --sheets /tmp/sheets
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gt_tools import GtBox, interpolate_gaps, read_frames, read_mot, write_contact_sheets, write_mot  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("REIDCAM_SHARED", HERE.parents[2] / "shared"))
DETECTOR = SHARED / "models" / "yolov8n-coco-int8" / "yolov8n_int8.tflite"
VIDEO = SHARED / "data" / "vtest.avi"
WORK = HERE / "work"
TILE_FRACTION = 0.6  # each tile covers 60 % of the width and height: 2x2 tiles overlap by 20 %
BORDER_MARGIN = 3.0  # a tile box this close to an inner tile edge is cut by the tile: dropped

logger = logging.getLogger("draft_gt")


def detect_video(video: Path, detector: Path, conf: float, tiles: bool) -> list[np.ndarray]:
    """Per frame, an (N, 5) array of x1, y1, x2, y2, confidence for class person."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    model = YOLO(str(detector), task="detect")
    results = []
    for frame, image in read_frames(video):
        boxes = [_predict(model, image, conf, (0, 0))]
        if tiles:
            boxes += [_predict_tile(model, image, conf, window) for window in _tile_windows(image.shape)]
        results.append(_nms(np.concatenate(boxes), iou=0.6))
        if frame % 100 == 0:
            logger.info("detected frame %d", frame)
    return results


def _predict(model, image: np.ndarray, conf: float, offset: tuple[int, int]) -> np.ndarray:
    result = model.predict(image, imgsz=640, conf=conf, classes=[0], verbose=False)[0]
    boxes = result.boxes.xyxy.cpu().numpy().astype(np.float64)
    boxes[:, [0, 2]] += offset[0]
    boxes[:, [1, 3]] += offset[1]
    return np.column_stack([boxes, result.boxes.conf.cpu().numpy()])


def _tile_windows(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    height, width = shape[:2]
    tile_w, tile_h = int(width * TILE_FRACTION), int(height * TILE_FRACTION)
    return [(x, y, x + tile_w, y + tile_h) for y in (0, height - tile_h) for x in (0, width - tile_w)]


def _predict_tile(model, image: np.ndarray, conf: float, window: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = window
    boxes = _predict(model, image[y1:y2, x1:x2], conf, (x1, y1))
    height, width = image.shape[:2]
    cut_left = (boxes[:, 0] < x1 + BORDER_MARGIN) & (x1 > 0)
    cut_top = (boxes[:, 1] < y1 + BORDER_MARGIN) & (y1 > 0)
    cut_right = (boxes[:, 2] > x2 - BORDER_MARGIN) & (x2 < width)
    cut_bottom = (boxes[:, 3] > y2 - BORDER_MARGIN) & (y2 < height)
    return boxes[~(cut_left | cut_top | cut_right | cut_bottom)]


def _nms(boxes: np.ndarray, iou: float) -> np.ndarray:
    order = np.argsort(-boxes[:, 4])
    keep: list[int] = []
    for index in order:
        if all(_iou(boxes[index, :4], boxes[k, :4]) < iou for k in keep):
            keep.append(int(index))
    return boxes[keep]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def drop_static(detections: list[np.ndarray], min_frames: int, iou: float = 0.7) -> list[np.ndarray]:
    """Remove boxes that stay put for ``min_frames`` frames or more: cones, posts, bollards.

    No one in this scene stands still that long with an unchanging box; the four places this
    removes (a sign post, a bollard, a cone, a road sign) were checked by eye.
    """
    from trackers.eval import box_iou

    boxes = np.concatenate(detections)
    frames = np.concatenate([np.full(len(d), i) for i, d in enumerate(detections)])
    support = np.zeros(len(boxes), dtype=int)
    for start in range(0, len(boxes), 1000):
        overlaps = box_iou(boxes[start:start + 1000, :4], boxes[:, :4]) > iou
        support[start:start + 1000] = [len(np.unique(frames[row])) for row in overlaps]
    keep = support < min_frames
    logger.info("dropped %d static boxes of %d", int((~keep).sum()), len(boxes))
    return [boxes[keep & (frames == i)] for i in range(len(detections))]


def track(detections: list[np.ndarray], fps: float, min_length: int, max_gap: int) -> list[GtBox]:
    """ByteTrack over the cached detections, gaps filled, tracks shorter than ``min_length`` dropped.

    Tuned to break a track rather than let it jump to someone else (short memory, IoU >= 0.3):
    fragments are cheap to merge in corrections.yaml, switches are dear to find.
    """
    import supervision as sv
    from trackers import ByteTrackTracker

    tracker = ByteTrackTracker(
        lost_track_buffer=30, frame_rate=fps, track_activation_threshold=0.45,
        minimum_consecutive_frames=2, minimum_iou_threshold=0.3, high_conf_det_threshold=0.45,
    )
    rows, unconfirmed = [], {}
    for frame, boxes in enumerate(detections, start=1):
        tracked = tracker.update(sv.Detections(xyxy=boxes[:, :4], confidence=boxes[:, 4]))
        unconfirmed[frame] = tracked.xyxy[tracked.tracker_id < 0]
        for (x1, y1, x2, y2), track_id in zip(tracked.xyxy, tracked.tracker_id):
            if track_id >= 0:
                rows.append(GtBox(frame, int(track_id), float(x1), float(y1), float(x2), float(y2)))
    rows = interpolate_gaps(rows + _first_boxes(rows, unconfirmed), max_gap)
    lengths: dict[int, int] = {}
    for row in rows:
        lengths[row.track_id] = lengths.get(row.track_id, 0) + 1
    return [row for row in rows if lengths[row.track_id] >= min_length]


def _first_boxes(rows: list[GtBox], unconfirmed: dict[int, np.ndarray]) -> list[GtBox]:
    """The box each track had the frame before it was confirmed (ByteTrack reports it with id -1)."""
    firsts: dict[int, GtBox] = {}
    for row in rows:
        if row.track_id not in firsts or row.frame < firsts[row.track_id].frame:
            firsts[row.track_id] = row
    found = []
    for first in firsts.values():
        candidates = unconfirmed.get(first.frame - 1, np.empty((0, 4)))
        overlaps = [_iou(np.asarray(first.box), box) for box in candidates]
        if overlaps and max(overlaps) >= 0.5:
            x1, y1, x2, y2 = candidates[int(np.argmax(overlaps))]
            found.append(GtBox(first.frame - 1, first.track_id, float(x1), float(y1), float(x2), float(y2)))
    return found


def load_or_detect(args: argparse.Namespace) -> list[np.ndarray]:
    cache = WORK / ("detections_tiled.npz" if args.tiles else "detections.npz")
    if cache.exists():
        stored = np.load(cache)
        return [stored[key] for key in sorted(stored.files, key=int)]
    detections = detect_video(args.video, args.detector, args.conf, args.tiles)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **{str(i): d for i, d in enumerate(detections)})
    return detections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--detector", type=Path, default=DETECTOR)
    parser.add_argument("--conf", type=float, default=0.1)
    parser.add_argument("--no-tiles", dest="tiles", action="store_false")
    parser.add_argument("--min-length", type=int, default=10, help="drop tracks shorter than this (frames)")
    parser.add_argument("--max-gap", type=int, default=15, help="fill gaps up to this many frames")
    parser.add_argument("--static-frames", type=int, default=120, help="boxes still this long are objects")
    parser.add_argument("--out", type=Path, default=HERE / "gt" / "source" / "draft.txt")
    parser.add_argument("--sheets", type=Path, default=WORK / "sheets", help="folder for contact sheets")
    parser.add_argument("--sheets-only", type=Path, default=None, metavar="MOT_FILE",
                        help="only draw contact sheets of this MOT file (e.g. gt/source/gt.txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.sheets_only:
        paths = write_contact_sheets(args.video, read_mot(args.sheets_only), args.sheets)
        logger.info("%d contact sheets in %s", len(paths), args.sheets)
        return
    detections = drop_static(load_or_detect(args), min_frames=args.static_frames)
    rows = track(detections, fps=10.0, min_length=args.min_length, max_gap=args.max_gap)
    write_mot(args.out, rows)
    logger.info("%d boxes, %d identities -> %s", len(rows), len({r.track_id for r in rows}), args.out)
    paths = write_contact_sheets(args.video, rows, args.sheets / "draft")
    logger.info("%d contact sheets in %s", len(paths), args.sheets / "draft")


if __name__ == "__main__":
    main()
