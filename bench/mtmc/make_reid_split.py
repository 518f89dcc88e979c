"""A ReID dataset from the benchmark footage whose test identities are never seen in training.

    .venv/bin/python bench/mtmc/build_benchmark.py --gt /tmp/rs/gt --clips /tmp/rs/clips
    YOLO_OFFLINE=1 .venv/bin/reidcam mine --sources /tmp/rs/clips/cams.yaml --out /tmp/rs/mined \\
        --crops-per-tracklet 32 --query-fraction 0 --min-height 48
    .venv/bin/python bench/mtmc/make_reid_split.py --mined /tmp/rs/mined --clips /tmp/rs/clips \\
        --out .gpu/reid_vtest

Why: ``reidcam mine`` gives one pid per tracklet and holds out a share of *tracklets*. The same
person is cut into several tracklets (three cameras, tracks broken at the sign), so its held-out
tracklets show people that are also in training. Here every mined crop is tied to a verified
ground-truth person, and whole *persons* are held out.

How:

1. Each crop of the mined folder is found again in its camera's clip (the crop is a pixel copy of
   the frame, so template matching gives its box exactly, up to JPEG noise).
2. The box is matched to the ground truth of that camera and frame (``gt/<cam>/gt.txt``, class 1
   and distractor rows alike): the GT person with the best IoU, if it is at least ``--min-iou``.
3. Each tracklet (mined pid) gets its majority GT person. Tracklets with no matched crop are dropped.
4. ``--held-out`` persons are drawn (seeded) among those with matched crops in at least two
   cameras (others only if too few), so that every query has a cross-camera match.
5. ``bounding_box_train/``: the tracklets whose majority person is a training person, labelled
   with the tracklet pid (the noisy labels a user has), without any crop matched to a held-out
   person and without unmatched crops that overlap a held-out person's box (``--guard-iou``: the
   GT misses people now and then, e.g. behind the sign). ``--train-labels person`` labels every
   training crop with its GT person instead (unmatched crops: the tracklet's majority person),
   to compare clean and noisy labels.
6. ``query/`` and ``bounding_box_test/``: every crop matched to a held-out person, with
   pid = GT person id and the real camera. Per (person, camera), ``--queries-per-camera`` crops
   spread over time are queries and the rest is gallery. The standard protocol drops gallery
   images of the query's own pid and camera, so what is left to find are the other cameras.

Images are moved as JPEG bytes (no re-encoding). ``summary.json`` records the counts, the
persons of each split and how the crops matched.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gt_tools import GtBox, read_frames, read_mot  # noqa: E402

HERE = Path(__file__).resolve().parent
MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MAX_LOCATE_ERROR = 12.0  # mean absolute grey-level difference of a crop found in its frame

logger = logging.getLogger("make_reid_split")


@dataclass(frozen=True)
class MinedCrop:
    """One image of the mined train folder: its tracklet pid, camera number and 1-based frame."""

    path: Path
    tracklet: int
    camera: int
    frame: int
    box: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 in the camera's pixels
    person: int | None = None  # matched GT person
    iou: float = 0.0
    locate_error: float = 0.0  # mean absolute grey-level difference where it was found


@dataclass(frozen=True)
class SplitOptions:
    held_out: int = 4
    seed: int = 0
    min_iou: float = 0.5
    guard_iou: float = 0.2
    queries_per_camera: int = 2
    train_labels: str = "tracklet"  # or "person"


@dataclass
class Placement:
    """Which crop goes where under which label."""

    train: list[tuple[MinedCrop, int]] = field(default_factory=list)
    query: list[MinedCrop] = field(default_factory=list)
    gallery: list[MinedCrop] = field(default_factory=list)


def parse_mined_name(path: Path) -> tuple[int, int, int]:
    """(tracklet pid, camera, frame) of ``<pid>_c<cam>s1_<frame>_00.jpg``."""
    pid, camera_part, frame, _ = path.stem.split("_")
    return int(pid), int(camera_part[1:].split("s")[0]), int(frame)


def read_mined(folder: Path) -> list[MinedCrop]:
    crops = []
    for path in sorted(folder.glob("*.jpg")):
        tracklet, camera, frame = parse_mined_name(path)
        crops.append(MinedCrop(path, tracklet, camera, frame))
    return crops


def locate_crop(frame: np.ndarray, crop: np.ndarray) -> tuple[tuple[int, int, int, int], float]:
    """Where ``crop`` sits in ``frame`` (x1, y1, x2, y2) and its mean absolute difference there."""
    scores = cv2.matchTemplate(frame, crop, cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(scores)
    height, width = crop.shape[:2]
    error = float(np.abs(frame[y : y + height, x : x + width].astype(np.float32) - crop).mean())
    return (x, y, x + width, y + height), error


def locate_all(crops: list[MinedCrop], clips: dict[int, Path]) -> list[MinedCrop]:
    """Every crop with its box, read from the camera clips; crops not found are dropped (logged)."""
    wanted: dict[tuple[int, int], list[MinedCrop]] = defaultdict(list)
    for crop in crops:
        wanted[(crop.camera, crop.frame)].append(crop)
    located = []
    for camera, clip in sorted(clips.items()):
        for frame_number, image in read_frames(clip):
            for crop in wanted.get((camera, frame_number), []):
                box, error = locate_crop(image, cv2.imread(str(crop.path)))
                if error > MAX_LOCATE_ERROR:
                    logger.warning("%s: not found in %s frame %d (error %.1f)",
                                   crop.path.name, clip, frame_number, error)
                    continue
                located.append(replace(crop, box=box, locate_error=error))
    return located


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def gt_by_frame(rows: Iterable[GtBox]) -> dict[int, list[GtBox]]:
    frames: dict[int, list[GtBox]] = defaultdict(list)
    for row in rows:
        frames[row.frame].append(row)
    return frames


def match_person(crop: MinedCrop, rows: list[GtBox], min_iou: float) -> MinedCrop:
    """The crop with its best-overlapping GT person, if the overlap reaches ``min_iou``."""
    best = max(((iou(crop.box, row.box), row.track_id) for row in rows), default=(0.0, None))
    person = best[1] if best[0] >= min_iou else None
    return replace(crop, person=person, iou=best[0])


def tracklet_majority(crops: Iterable[MinedCrop]) -> dict[int, int]:
    """Tracklet pid -> the GT person most of its matched crops show (ties: the lower id)."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for crop in crops:
        if crop.person is not None:
            votes[crop.tracklet][crop.person] += 1
    return {tracklet: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for tracklet, c in votes.items()}


def choose_held_out(crops: Iterable[MinedCrop], count: int, seed: int) -> list[int]:
    """``count`` persons, seeded, drawn first among those seen in two or more cameras."""
    cameras: dict[int, set[int]] = defaultdict(set)
    for crop in crops:
        if crop.person is not None:
            cameras[crop.person].add(crop.camera)
    multi = sorted(p for p, cams in cameras.items() if len(cams) >= 2)
    single = sorted(p for p, cams in cameras.items() if len(cams) < 2)
    rng = random.Random(seed)
    chosen = rng.sample(multi, min(count, len(multi)))
    chosen += rng.sample(single, min(count - len(chosen), len(single)))
    if len(chosen) >= len(cameras):
        raise SystemExit(f"make_reid_split: error: holding out {count} of {len(cameras)} persons "
                         "leaves none to train on")
    return sorted(chosen)


def spread(items: list, count: int) -> list[int]:
    """Indices of ``count`` items spread evenly from the first to the last."""
    if count <= 0:
        return []
    if len(items) <= count:
        return list(range(len(items)))
    return sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int).tolist()))


def place_crops(
    crops: list[MinedCrop], gt: dict[int, dict[int, list[GtBox]]], held_out: set[int], options: SplitOptions
) -> Placement:
    """Split matched crops into training (by tracklet) and held-out query / gallery (by person)."""
    placement = Placement()
    majority = tracklet_majority(crops)
    for crop in crops:
        owner = majority.get(crop.tracklet)
        if owner is None or owner in held_out or crop.person in held_out:
            continue
        rows = gt[crop.camera].get(crop.frame, [])
        if crop.person is None and _overlaps_person(crop, rows, held_out, options.guard_iou):
            continue
        label = crop.tracklet if options.train_labels == "tracklet" else (crop.person or owner)
        placement.train.append((crop, label))
    by_person_camera: dict[tuple[int, int], list[MinedCrop]] = defaultdict(list)
    for crop in crops:
        if crop.person in held_out:
            by_person_camera[(crop.person, crop.camera)].append(crop)
    for key in sorted(by_person_camera):
        group = sorted(by_person_camera[key], key=lambda c: (c.frame, c.tracklet))
        queries = set(spread(group, options.queries_per_camera)) if len(group) > 1 else set()
        for index, crop in enumerate(group):
            (placement.query if index in queries else placement.gallery).append(crop)
    return placement


def _overlaps_person(crop: MinedCrop, rows: list[GtBox], persons: set[int], threshold: float) -> bool:
    return any(row.track_id in persons and iou(crop.box, row.box) >= threshold for row in rows)


def write_layout(out_dir: Path, placement: Placement) -> None:
    """Copy the JPEGs into the Market folders; a counter keeps names unique within a frame."""
    for split in MARKET_SPLITS:
        folder = out_dir / split
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"make_reid_split: error: {folder} is not empty; choose a new --out")
        folder.mkdir(parents=True, exist_ok=True)
    _copy(out_dir / "bounding_box_train", placement.train)
    _copy(out_dir / "query", [(c, c.person) for c in placement.query])
    _copy(out_dir / "bounding_box_test", [(c, c.person) for c in placement.gallery])


def _copy(folder: Path, labelled: list[tuple[MinedCrop, int]]) -> None:
    used: Counter = Counter()
    for crop, pid in labelled:
        stem = f"{pid:04d}_c{crop.camera}s1_{crop.frame:06d}"
        shutil.copyfile(crop.path, folder / f"{stem}_{used[stem]:02d}.jpg")
        used[stem] += 1


def split_stats(pairs: Iterable[tuple[int, int]]) -> dict:
    """Ids, images and images per camera of (pid, camera) pairs."""
    pairs = list(pairs)
    return {
        "ids": len({pid for pid, _ in pairs}),
        "images": len(pairs),
        "images_per_camera": {f"c{cam}": n for cam, n in sorted(Counter(cam for _, cam in pairs).items())},
    }


def summarise(crops: list[MinedCrop], not_located: int, held_out: list[int], placement: Placement,
              cameras: dict[str, int], options: SplitOptions) -> dict:
    majority = tracklet_majority(crops)
    persons = sorted({c.person for c in crops if c.person is not None})
    matched = [c for c in crops if c.person is not None]
    votes = Counter((c.tracklet, c.person) for c in matched)
    matched_per_tracklet = Counter(c.tracklet for c in matched)
    purity = [votes[(t, p)] / matched_per_tracklet[t] for t, p in majority.items()]
    tracklets_per_person = Counter(majority.values())
    person_cameras = {p: sorted({c.camera for c in matched if c.person == p}) for p in persons}
    return {
        "options": asdict(options),
        "cameras": cameras,
        "mined_crops": len(crops) + not_located,
        "crops_not_found_in_clips": not_located,
        "max_locate_error": round(max((c.locate_error for c in crops), default=0.0), 2),
        "matched_crops": len(matched),
        "tracklets": len({c.tracklet for c in crops}),
        "tracklets_with_a_person": len(majority),
        "mean_tracklet_purity": round(float(np.mean(purity)), 3) if purity else None,
        "tracklets_per_person": {str(p): tracklets_per_person[p] for p in persons},
        "cameras_per_person": {str(p): person_cameras[p] for p in persons},
        "train_persons": [p for p in persons if p not in held_out],
        "held_out_persons": held_out,
        "train": split_stats((pid, c.camera) for c, pid in placement.train),
        "query": split_stats((c.person, c.camera) for c in placement.query),
        "gallery": split_stats((c.person, c.camera) for c in placement.gallery),
    }


def load_cameras(mined: Path, clips: Path) -> tuple[dict[str, int], dict[int, Path]]:
    """Camera names -> numbers (from the mined summary.json) and number -> clip file (cams.yaml)."""
    cameras = json.loads((mined / "summary.json").read_text())["cameras"]
    document = yaml.safe_load((clips / "cams.yaml").read_text())
    sources = {cam["id"]: clips / cam["source"] for cam in document["cameras"]}
    return cameras, {number: sources[name] for name, number in cameras.items()}


def make_split(mined: Path, clips: Path, gt_dir: Path, out_dir: Path, options: SplitOptions) -> dict:
    cameras, clip_files = load_cameras(mined, clips)
    gt = {number: gt_by_frame(read_mot(gt_dir / name / "gt.txt")) for name, number in cameras.items()}
    raw = read_mined(mined / "bounding_box_train")
    located = locate_all(raw, clip_files)
    crops = [match_person(c, gt[c.camera].get(c.frame, []), options.min_iou) for c in located]
    held_out = choose_held_out(crops, options.held_out, options.seed)
    placement = place_crops(crops, gt, set(held_out), options)
    write_layout(out_dir, placement)
    summary = summarise(crops, len(raw) - len(located), held_out, placement, cameras, options)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mined", type=Path, required=True, help="output of `reidcam mine` (--query-fraction 0)")
    parser.add_argument("--clips", type=Path, required=True, help="the clips and cams.yaml that were mined")
    parser.add_argument("--gt", type=Path, default=HERE / "gt", help="benchmark ground truth (gt/<cam>/gt.txt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--held-out", type=int, default=SplitOptions.held_out, help="persons kept out of training")
    parser.add_argument("--seed", type=int, default=SplitOptions.seed)
    parser.add_argument("--min-iou", type=float, default=SplitOptions.min_iou)
    parser.add_argument("--guard-iou", type=float, default=SplitOptions.guard_iou,
                        help="unmatched training crops overlapping a held-out person this much are dropped")
    parser.add_argument("--queries-per-camera", type=int, default=SplitOptions.queries_per_camera)
    parser.add_argument("--train-labels", choices=("tracklet", "person"), default=SplitOptions.train_labels,
                        help="tracklet: one pid per mined tracklet (noisy, as mined); person: the GT person")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = SplitOptions(args.held_out, args.seed, args.min_iou, args.guard_iou, args.queries_per_camera,
                           args.train_labels)
    summary = make_split(args.mined, args.clips, args.gt, args.out, options)
    for key, value in summary.items():
        print(f"{key}: {json.dumps(value)}")


if __name__ == "__main__":
    main()
