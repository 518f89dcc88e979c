"""Rebuild the multi-camera benchmark: corrected ground truth, per-camera ground truth, clips.

    python bench/mtmc/build_benchmark.py                      # ground truth only (committed files)
    python bench/mtmc/build_benchmark.py --clips /tmp/mtmc    # also cut the camera clips + cams.yaml

From the reviewed draft of the uncut view (``gt/source/draft.txt``) and ``corrections.yaml`` it
writes ``gt/source/gt.txt``; then, for each virtual camera of the preset (see
``reidcam.app.virtual_cameras``), ``gt/<camera>/gt.txt`` with frames counted in the camera's own
clip (1-based), boxes in the camera's pixels and the same person ids in every camera, plus
``seqinfo.ini`` and ``gt/seqmap.txt`` (the cameras to score). A person less than half inside a
camera's window is written as a distractor (MOTChallenge class 8): a detection of the visible
part is then neither rewarded nor penalised.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gt_tools import (  # noqa: E402
    DISTRACTOR,
    PEDESTRIAN,
    GtBox,
    apply_corrections,
    interpolate_gaps,
    load_corrections,
    read_mot,
    write_mot,
)

from reidcam.app.virtual_cameras import (  # noqa: E402
    DEFAULT_SOURCE,
    PRESETS,
    VirtualCamera,
    box_to_camera,
    camera_frame,
    make_virtual_cameras,
)

HERE = Path(__file__).resolve().parent
MAX_GAP_AFTER_MERGE = 10  # frames (1 s): short occlusions are bridged, longer absences stay gaps
MIN_VISIBLE_SCORED = 0.5
MIN_VISIBLE_DISTRACTOR = 0.05

logger = logging.getLogger("build_benchmark")


def corrected_source_gt(draft: Path, corrections: Path) -> list[GtBox]:
    rows = apply_corrections(read_mot(draft), load_corrections(corrections))
    return renumber(interpolate_gaps(rows, MAX_GAP_AFTER_MERGE))


def renumber(rows: list[GtBox]) -> list[GtBox]:
    """Person ids 1..N in order of first appearance."""
    first_seen: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: (r.frame, r.track_id)):
        first_seen.setdefault(row.track_id, len(first_seen) + 1)
    return [replace(row, track_id=first_seen[row.track_id]) for row in rows]


def camera_gt(rows: list[GtBox], camera: VirtualCamera) -> list[GtBox]:
    """The source ground truth as ``camera`` sees it."""
    out = []
    for row in rows:
        frame = camera_frame(row.frame - 1, camera)
        if frame is None or row.label != PEDESTRIAN:
            continue
        box = box_to_camera(row.box, camera, min_visible=MIN_VISIBLE_SCORED)
        label = PEDESTRIAN
        if box is None:
            box = box_to_camera(row.box, camera, min_visible=MIN_VISIBLE_DISTRACTOR)
            label = DISTRACTOR
        if box is not None:
            out.append(GtBox(frame, row.track_id, *box, label=label))
    return out


def write_seqinfo(folder: Path, name: str, length: int, fps: float, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nframeRate={fps:g}\nseqLength={length}\n"
        f"imWidth={size[0]}\nimHeight={size[1]}\nimExt=.jpg\n"
    )


def video_info(video: Path) -> tuple[int, float, tuple[int, int]]:
    capture = cv2.VideoCapture(str(video))
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        capture.release()
    if frames <= 0:
        raise SystemExit(f"build_benchmark: error: cannot read {video}")
    return frames, fps, size


def recorded_frames(camera: VirtualCamera, source_frames: int) -> int:
    available = max(source_frames - camera.start_frame, 0)
    return available if camera.num_frames is None else min(camera.num_frames, available)


def build(args: argparse.Namespace) -> None:
    source_frames, fps, size = video_info(args.source)
    rows = corrected_source_gt(args.draft, args.corrections)
    write_mot(args.gt / "source" / "gt.txt", rows)
    write_seqinfo(args.gt / "source", "source", source_frames, fps, size)
    logger.info("source: %d boxes, %d people", len(rows), len({r.track_id for r in rows}))
    cameras = PRESETS[args.preset].cameras
    for camera in cameras:
        boxes = camera_gt(rows, camera)
        write_mot(args.gt / camera.id / "gt.txt", boxes)
        write_seqinfo(args.gt / camera.id, camera.id, recorded_frames(camera, source_frames), fps, camera.output_size)
        scored = [b for b in boxes if b.label == PEDESTRIAN]
        logger.info("%s: %d boxes (+%d distractor), %d people", camera.id, len(scored),
                    len(boxes) - len(scored), len({b.track_id for b in scored}))
    (args.gt / "seqmap.txt").write_text("name\n" + "".join(f"{camera.id}\n" for camera in cameras))
    if args.clips:
        cams_yaml = make_virtual_cameras(args.source, args.clips, cameras, extra_config=PRESETS[args.preset].extra_config)
        logger.info("clips and %s written", cams_yaml)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the uncut video (vtest.avi)")
    parser.add_argument("--draft", type=Path, default=HERE / "gt" / "source" / "draft.txt")
    parser.add_argument("--corrections", type=Path, default=HERE / "corrections.yaml")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="benchmark")
    parser.add_argument("--gt", type=Path, default=HERE / "gt", help="where the ground-truth folders go")
    parser.add_argument("--clips", type=Path, default=None, help="also cut the camera clips into this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args)


if __name__ == "__main__":
    main()
