"""``reidcam mine``: crop selection, the held-out split, and the real CLI on a short clip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from reidcam.app.mine import (
    Crop,
    MiningOptions,
    StagedTracklet,
    TrackletCrops,
    query_gallery_frames,
    split_held_out,
    usable_boxes,
)
from reidcam.app.virtual_cameras import VirtualCamera, make_virtual_cameras
from reidcam.errors import ConfigError

SHARED = Path(os.environ.get("REIDCAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MARKET_NAME = re.compile(r"^(\d{4})_c(\d+)s(\d)_(\d{6})_00\.jpg$")


def test_a_long_tracklet_keeps_a_bounded_evenly_spread_set_of_crops():
    tracklet = TrackletCrops("cam1", 3, capacity=32)
    for frame in range(1, 1001):
        tracklet.offer(Crop(frame, np.zeros((1, 1, 3), np.uint8)))
        assert len(tracklet.crops) <= 32
    picked = [crop.frame for crop in tracklet.pick(8)]
    assert len(picked) == 8
    assert picked[0] <= 40 and picked[-1] >= 950
    gaps = np.diff(picked)
    assert gaps.min() > 0.6 * gaps.mean()


def test_small_cut_and_covered_boxes_are_not_used():
    options = MiningOptions(min_height=64)
    boxes = np.array([
        [100, 100, 140, 200],  # fine
        [300, 100, 340, 150],  # 50 px tall: too small
        [0, 100, 40, 200],     # touches the left border: cut
        [500, 300, 540, 400],  # fine, but ...
        [505, 310, 545, 410],  # ... these two cover each other
    ], dtype=float)
    assert usable_boxes(boxes, 640, 480, options).tolist() == [True, False, False, False, False]
    assert usable_boxes(boxes[:1], 640, 480, MiningOptions(min_height=128)).tolist() == [False]


def test_held_out_tracklets_split_in_time_with_a_gap():
    tracklets = [StagedTracklet("cam1", i, Path("."), tuple(range(10 * i, 10 * i + 8))) for i in range(10)]
    held = split_held_out(tracklets, fraction=0.3, seed=1)
    assert len(held) == 3 and held == split_held_out(tracklets, fraction=0.3, seed=1)
    assert split_held_out(tracklets[:1], fraction=0.3, seed=1) == set()
    query, gallery = query_gallery_frames(tuple(range(1, 9)))
    assert query == (1, 2) and gallery == (5, 6, 7, 8)
    assert query_gallery_frames((4, 9)) == ((4,), (9,))
    with pytest.raises(ConfigError):
        MiningOptions(query_fraction=1.0)


@pytest.mark.slow
def test_cli_mines_a_market_dataset_from_two_short_cameras(tmp_path):
    video = SHARED / "data" / "vtest.avi"
    if not video.exists():
        pytest.skip(f"{video} not available")
    cameras = (
        VirtualCamera("left", (0, 60, 384, 560), start_frame=100, num_frames=60),
        VirtualCamera("right", (384, 60, 768, 560), start_frame=100, num_frames=60),
    )
    cams_yaml = make_virtual_cameras(video, tmp_path / "cams", cameras)
    out = tmp_path / "mined"
    command = [sys.executable, "-m", "reidcam", "mine", "--sources", str(cams_yaml), "--out", str(out),
               "--device", "cpu", "--crops-per-tracklet", "4", "--min-height", "70", "--query-fraction", "0.3"]
    subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})

    summary = json.loads((out / "summary.json").read_text())
    assert summary["cameras"] == {"left": 1, "right": 2}
    assert summary["train_ids"] >= 2 and summary["query_ids"] >= 1
    names = {split: sorted(p.name for p in (out / split).iterdir()) for split in
             ("bounding_box_train", "query", "bounding_box_test")}
    assert all(MARKET_NAME.match(name) for split in names.values() for name in split)
    per_pid: dict[str, int] = {}
    for name in names["bounding_box_train"]:
        per_pid[name[:4]] = per_pid.get(name[:4], 0) + 1
        assert name[5:7] in ("c1", "c2")
    assert max(per_pid.values()) <= 4 and len(per_pid) == summary["train_ids"]
    for name in names["query"]:
        pid, cam, _, frame = MARKET_NAME.match(name).groups()
        later = [MARKET_NAME.match(g).groups() for g in names["bounding_box_test"] if g.startswith(pid)]
        assert later and all(int(g[1]) == int(cam) + 2 and int(g[3]) > int(frame) for g in later)
        assert pid not in per_pid
    for split in names:
        for name in names[split]:
            assert cv2.imread(str(out / split / name)).shape[0] >= 70

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr
