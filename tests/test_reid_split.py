"""bench/mtmc/make_reid_split.py: crops found in their clip, tied to GT persons, persons held out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from reidcam.reid.data.datasets import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "mtmc" / "make_reid_split.py"
FRAME_SIZE = (160, 120)  # width, height
PERSON_SIZE = (20, 60)
SEED_HOLDING_OUT_3_NOT_1 = 1  # draws persons 2 and 3 (asserted below)


@pytest.fixture(scope="module")
def split_module():
    spec = importlib.util.spec_from_file_location("make_reid_split", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def textured_frame(rng: np.random.Generator) -> np.ndarray:
    width, height = FRAME_SIZE
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)  # smooth enough for JPEG
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def test_a_jpeg_crop_is_found_at_its_exact_box(split_module):
    frame = textured_frame(np.random.default_rng(1))
    crop = frame[30:90, 70:95]
    decoded = cv2.imdecode(cv2.imencode(".jpg", crop)[1], cv2.IMREAD_COLOR)
    box, error = split_module.locate_crop(frame, decoded)
    assert box == (70, 30, 95, 90)
    assert error < split_module.MAX_LOCATE_ERROR


def person_box(person: int, frame: int) -> tuple[int, int, int, int]:
    """Person p walks right in their own column band, three pixels per frame."""
    x, y = 5 + 3 * frame + 35 * (person - 1), 5
    return x, y, x + PERSON_SIZE[0], y + PERSON_SIZE[1]


def build_mined_footage(root: Path, persons: list[int], frames: int = 4) -> None:
    """Two camera clips, their GT and a mined folder: one tracklet per (person, camera), plus one
    training tracklet that switches onto person 3 in its last frame and a box of nobody."""
    rng = np.random.default_rng(0)
    clips, gt_dir, mined = root / "clips", root / "gt", root / "mined" / "bounding_box_train"
    for folder in (clips, mined):
        folder.mkdir(parents=True)
    document = {"cameras": []}
    pid = 0
    for cam_number, cam in ((1, "camA"), (2, "camB")):
        writer = cv2.VideoWriter(str(clips / f"{cam}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, FRAME_SIZE)
        for _ in range(frames):
            writer.write(textured_frame(rng))
        writer.release()
        document["cameras"].append({"id": cam, "source": f"{cam}.mp4"})
        rows = []
        capture = cv2.VideoCapture(str(clips / f"{cam}.mp4"))
        decoded = [capture.read()[1] for _ in range(frames)]
        for person in persons:
            pid += 1
            for frame in range(1, frames + 1):
                x1, y1, x2, y2 = person_box(person, frame)
                rows.append(f"{frame},{person},{x1},{y1},{x2 - x1},{y2 - y1},1,1,1")
                switched = person == 3 and frame == frames and cam_number == 1
                name = f"0001_c1s1_{frame:06d}_01.jpg" if switched else f"{pid:04d}_c{cam_number}s1_{frame:06d}_00.jpg"
                cv2.imwrite(str(mined / name), decoded[frame - 1][y1:y2, x1:x2])
        cv2.imwrite(str(mined / f"0099_c{cam_number}s1_000001_00.jpg"), decoded[0][95:118, 130:155])
        (gt_dir / cam).mkdir(parents=True)
        (gt_dir / cam / "gt.txt").write_text("\n".join(rows) + "\n")
    (clips / "cams.yaml").write_text(yaml.safe_dump(document))
    (root / "mined" / "summary.json").write_text(json.dumps({"cameras": {"camA": 1, "camB": 2}}))


def test_held_out_persons_never_reach_training_and_load_as_a_market_dataset(split_module, tmp_path):
    build_mined_footage(tmp_path, persons=[1, 2, 3, 4])
    options = split_module.SplitOptions(held_out=2, seed=SEED_HOLDING_OUT_3_NOT_1, queries_per_camera=1)
    summary = split_module.make_split(tmp_path / "mined", tmp_path / "clips", tmp_path / "gt", tmp_path / "out",
                                      options)
    assert summary["crops_not_found_in_clips"] == 0
    held_out = set(summary["held_out_persons"])
    assert 3 in held_out and 1 not in held_out and len(held_out) == 2
    assert held_out | set(summary["train_persons"]) == {1, 2, 3, 4}

    dataset = load_dataset("mined", tmp_path / "out")
    assert {s.pid for s in dataset.query} == {s.pid for s in dataset.gallery} == held_out
    assert len(dataset.query) == 2 * 2  # one per (person, camera)
    assert len(dataset.gallery) == 2 * (8 - 2)  # every crop of the person, wherever it was tracked
    train_files = {p.name for p in (tmp_path / "out" / "bounding_box_train").iterdir()}
    assert len(train_files) == len(dataset.train) == 2 * 8  # without person 3 in tracklet 1, nor nobody's box
    assert "0001_c1s1_000004_01.jpg" not in train_files and not any(n.startswith("0099_") for n in train_files)
    assert summary["train"]["ids"] == 4  # one pid per tracklet: 2 persons x 2 cameras

    relabelled = split_module.make_split(
        tmp_path / "mined", tmp_path / "clips", tmp_path / "gt", tmp_path / "out_person",
        split_module.SplitOptions(held_out=2, seed=SEED_HOLDING_OUT_3_NOT_1, queries_per_camera=1,
                                  train_labels="person"),
    )
    train_ids = {int(p.name[:4]) for p in (tmp_path / "out_person" / "bounding_box_train").iterdir()}
    assert train_ids == {1, 2, 3, 4} - held_out and relabelled["train"]["ids"] == 2


def test_held_out_persons_are_drawn_among_those_seen_by_two_cameras(split_module):
    def crop(person: int, camera: int):
        return split_module.MinedCrop(Path("x.jpg"), person, camera, 1, (0, 0, 1, 1), person)

    crops = [crop(p, 1) for p in range(1, 7)] + [crop(p, 2) for p in (2, 4, 6)]
    draws = {tuple(split_module.choose_held_out(crops, 2, seed)) for seed in range(20)}
    assert all(set(draw) <= {2, 4, 6} for draw in draws) and len(draws) > 1
    assert split_module.choose_held_out(crops, 2, 7) == split_module.choose_held_out(crops, 2, 7)
    assert len(split_module.choose_held_out(crops, 4, 0)) == 4
