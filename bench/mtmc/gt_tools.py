"""Shared pieces of the benchmark scripts: MOT rows, corrections, interpolation, contact sheets.

A ground-truth row is one person box in one frame: ``GtBox(frame, track_id, x1, y1, x2, y2)``
with the frame 1-based (MOTChallenge). Files are written in MOTChallenge form,
``frame,id,x,y,w,h,conf,class,visibility``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import yaml

PEDESTRIAN = 1
DISTRACTOR = 8  # MOTChallenge "distractor": detections on it are neither rewarded nor penalised


@dataclass(frozen=True)
class GtBox:
    frame: int  # 1-based
    track_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    label: int = PEDESTRIAN

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def read_mot(path: Path) -> list[GtBox]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        values = [float(v) for v in line.split(",")]
        frame, track_id, x, y, w, h = values[:6]
        label = int(values[7]) if len(values) > 7 and values[7] > 0 else PEDESTRIAN
        rows.append(GtBox(int(frame), int(track_id), x, y, x + w, y + h, label))
    return rows


def write_mot(path: Path, rows: Iterable[GtBox]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{r.frame},{r.track_id},{r.x1:.1f},{r.y1:.1f},{r.x2 - r.x1:.1f},{r.y2 - r.y1:.1f},1,{r.label},1"
        for r in sorted(rows, key=lambda r: (r.frame, r.track_id))
    ]
    path.write_text("\n".join(lines) + "\n")


def by_track(rows: Iterable[GtBox]) -> dict[int, list[GtBox]]:
    tracks: dict[int, list[GtBox]] = defaultdict(list)
    for row in rows:
        tracks[row.track_id].append(row)
    return {tid: sorted(boxes, key=lambda r: r.frame) for tid, boxes in sorted(tracks.items())}


def interpolate_gaps(rows: Iterable[GtBox], max_gap: int) -> list[GtBox]:
    """Fill missing frames inside each track (gaps up to ``max_gap`` frames) linearly."""
    filled: list[GtBox] = []
    for boxes in by_track(rows).values():
        for before, after in zip(boxes, boxes[1:]):
            filled.append(before)
            gap = after.frame - before.frame
            if 1 < gap <= max_gap + 1:
                start, end = np.asarray(before.box), np.asarray(after.box)
                for step in range(1, gap):
                    x1, y1, x2, y2 = start + (end - start) * step / gap
                    filled.append(replace(before, frame=before.frame + step, x1=x1, y1=y1, x2=x2, y2=y2))
        filled.append(boxes[-1])
    return filled


def apply_corrections(rows: list[GtBox], corrections: dict) -> list[GtBox]:
    """Apply the reviewed fixes, in this order: deletions, splits, merges, relabels.

    ``corrections`` (corrections.yaml) may hold:
      delete: [id, ...]                              false tracks
      delete_frames: [{id, from, to}, ...]           a wrong stretch of a track (frames inclusive)
      split: [{id, frame, new_id}, ...]              frames >= frame of id become new_id
      merge: [[keep_id, other_id, ...], ...]         fragments of one person
      distractor: [id, ...]                          real but unscorable people (e.g. mostly hidden)
    """
    deleted = set(corrections.get("delete") or [])
    rows = [r for r in rows if r.track_id not in deleted]
    for cut in corrections.get("delete_frames") or []:
        rows = [r for r in rows if not (r.track_id == cut["id"] and cut["from"] <= r.frame <= cut["to"])]
    for split in corrections.get("split") or []:
        rows = [
            replace(r, track_id=split["new_id"]) if r.track_id == split["id"] and r.frame >= split["frame"] else r
            for r in rows
        ]
    merged_into = {other: group[0] for group in corrections.get("merge") or [] for other in group[1:]}
    rows = [replace(r, track_id=merged_into.get(r.track_id, r.track_id)) for r in rows]
    distractors = set(corrections.get("distractor") or [])
    rows = [replace(r, label=DISTRACTOR) if r.track_id in distractors else r for r in rows]
    return _drop_duplicate_frames(rows)


def _drop_duplicate_frames(rows: list[GtBox]) -> list[GtBox]:
    """After a merge two fragments may overlap in time; keep one box per (id, frame)."""
    seen: dict[tuple[int, int], GtBox] = {}
    for row in rows:
        seen.setdefault((row.track_id, row.frame), row)
    return list(seen.values())


def load_corrections(path: Path) -> dict:
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def read_frames(video: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(1-based frame number, BGR image) for every frame of the video."""
    capture = cv2.VideoCapture(str(video))
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            index += 1
            yield index, image
    finally:
        capture.release()


def write_contact_sheets(
    video: Path, rows: list[GtBox], out_dir: Path, per_sheet: int = 24, thumb: tuple[int, int] = (64, 128)
) -> list[Path]:
    """One PNG per identity: ``per_sheet`` crops evenly spread over its life, each labelled with its frame."""
    tracks = by_track(rows)
    wanted: dict[int, list[GtBox]] = defaultdict(list)
    for boxes in tracks.values():
        picks = np.unique(np.linspace(0, len(boxes) - 1, min(per_sheet, len(boxes))).round().astype(int))
        for pick in picks:
            wanted[boxes[pick].frame].append(boxes[pick])
    crops: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for frame, image in read_frames(video):
        for row in wanted.get(frame, []):
            crops[row.track_id].append((frame, _thumbnail(image, row, thumb)))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for track_id, items in sorted(crops.items()):
        boxes = tracks[track_id]
        title = f"id {track_id}: frames {boxes[0].frame}-{boxes[-1].frame}, {len(boxes)} boxes"
        path = out_dir / f"id_{track_id:04d}.png"
        cv2.imwrite(str(path), _sheet(items, title, thumb))
        paths.append(path)
    return paths


def _thumbnail(image: np.ndarray, row: GtBox, size: tuple[int, int]) -> np.ndarray:
    height, width = image.shape[:2]
    x1, y1 = max(int(row.x1), 0), max(int(row.y1), 0)
    x2, y2 = min(int(row.x2), width), min(int(row.y2), height)
    crop = image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    thumb = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
    cv2.putText(thumb, str(row.frame), (2, size[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    return thumb


def _sheet(items: list[tuple[int, np.ndarray]], title: str, size: tuple[int, int], columns: int = 12) -> np.ndarray:
    rows = -(-len(items) // columns)
    sheet = np.zeros((20 + rows * size[1], columns * size[0], 3), np.uint8)
    cv2.putText(sheet, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    for index, (_, thumb) in enumerate(items):
        r, c = divmod(index, columns)
        sheet[20 + r * size[1]:20 + (r + 1) * size[1], c * size[0]:(c + 1) * size[0]] = thumb
    return sheet
