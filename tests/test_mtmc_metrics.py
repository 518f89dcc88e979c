"""MTMC metrics on small hand-made cases, and parity with the ``trackers`` file-based evaluator."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trackers.eval import evaluate_mot_sequence

from reidcam.errors import DataError
from reidcam.tracking.mtmc_metrics import (
    CameraGroundTruth,
    Sighting,
    evaluate_mtmc,
    load_ground_truth,
    load_trajectories_csv,
)


def walk(camera: str, identity: int, frames: range, x0: float, y0: float = 50.0, dx: float = 4.0) -> list[Sighting]:
    """A person 40x100 px walking right, one box per frame."""
    return [
        Sighting(camera, f, identity, (x0 + dx * i, y0, x0 + dx * i + 40, y0 + 100)) for i, f in enumerate(frames)
    ]


def relabel(sightings: list[Sighting], identity: int) -> list[Sighting]:
    return [Sighting(s.camera_id, s.frame, identity, s.xyxy, s.scored) for s in sightings]


def two_cameras() -> tuple[list[CameraGroundTruth], dict[tuple[str, int], list[Sighting]]]:
    """Persons 1 and 2 seen by cam_a (frames 1-20) and then by cam_b (frames 11-30)."""
    parts = {
        ("a", 1): walk("a", 1, range(1, 21), 0),
        ("a", 2): walk("a", 2, range(1, 21), 200),
        ("b", 1): walk("b", 1, range(11, 31), 0),
        ("b", 2): walk("b", 2, range(11, 31), 200),
    }
    gt = [
        CameraGroundTruth("a", 30, tuple(parts["a", 1] + parts["a", 2])),
        CameraGroundTruth("b", 30, tuple(parts["b", 1] + parts["b", 2])),
    ]
    return gt, parts


def test_perfect_prediction_scores_one_everywhere():
    gt, parts = two_cameras()
    report = evaluate_mtmc(gt, [s for part in parts.values() for s in part])
    for scores in [*report.cameras.values(), report.combined]:
        assert scores.mota == pytest.approx(1.0)
        assert scores.idf1 == pytest.approx(1.0)
        assert scores.hota == pytest.approx(1.0, abs=1e-6)
        assert scores.id_switches == 0
    assert report.cross_camera.idf1 == pytest.approx(1.0)
    assert report.cross_camera.idtp == 80
    assert report.cross_camera.gt_identities == report.cross_camera.predicted_identities == 2


def test_new_id_in_the_next_camera_costs_only_the_cross_camera_figure():
    gt, parts = two_cameras()
    predictions = parts["a", 1] + parts["a", 2] + relabel(parts["b", 1], 7) + relabel(parts["b", 2], 8)
    report = evaluate_mtmc(gt, predictions)
    assert all(s.idf1 == pytest.approx(1.0) for s in report.cameras.values())
    assert report.combined.idf1 == pytest.approx(1.0)
    # each person's 40 boxes are split 20 / 20 over two ids: IDTP 40, IDFP 40, IDFN 40
    cross = report.cross_camera
    assert (cross.idtp, cross.idfp, cross.idfn) == (40, 40, 40)
    assert cross.idf1 == pytest.approx(0.5)
    assert cross.predicted_identities == 4


def test_ids_swapped_between_cameras_lower_cross_camera_idf1():
    gt, parts = two_cameras()
    predictions = parts["a", 1] + parts["a", 2] + relabel(parts["b", 1], 2) + relabel(parts["b", 2], 1)
    report = evaluate_mtmc(gt, predictions)
    assert report.combined.idf1 == pytest.approx(1.0)
    assert report.cross_camera.idf1 == pytest.approx(0.5)


def test_single_camera_cross_camera_identity_equals_the_per_camera_figure():
    rng = np.random.default_rng(0)
    gt_boxes = walk("a", 1, range(1, 41), 0) + walk("a", 2, range(5, 41), 150) + walk("a", 3, range(1, 25), 300)
    predictions = []
    for s in gt_boxes:
        if rng.random() < 0.1:
            continue  # a miss
        identity = s.identity + (10 if s.identity == 1 and s.frame > 25 else 0)  # a mid-track switch
        jitter = rng.normal(0, 3, 4)
        predictions.append(Sighting("a", s.frame, identity, tuple(np.add(s.xyxy, jitter))))
    predictions += walk("a", 99, range(1, 6), 500)  # a false track
    report = evaluate_mtmc([CameraGroundTruth("a", 40, tuple(gt_boxes))], predictions)
    camera = report.cameras["a"]
    assert 0.5 < camera.idf1 < 1.0
    assert report.cross_camera.idf1 == pytest.approx(camera.idf1)
    assert report.cross_camera.idp == pytest.approx(camera.idp)
    assert report.cross_camera.idr == pytest.approx(camera.idr)


def test_cross_camera_idtp_never_exceeds_the_per_camera_sum():
    gt, parts = two_cameras()
    rng = np.random.default_rng(1)
    predictions = [
        Sighting(s.camera_id, s.frame, int(rng.integers(1, 4)) if s.frame % 7 == 0 else s.identity, s.xyxy)
        for part in parts.values() for s in part
    ]
    report = evaluate_mtmc(gt, predictions)
    per_camera_idtp = sum(round(s.idr * (s.true_positives + s.false_negatives)) for s in report.cameras.values())
    assert report.cross_camera.idtp <= per_camera_idtp
    assert report.cross_camera.idf1 <= report.combined.idf1 + 1e-9


def test_prediction_on_a_distractor_is_neither_false_nor_true_positive():
    person = walk("a", 1, range(1, 11), 0)
    half_seen = [Sighting("a", s.frame, 2, s.xyxy, scored=False) for s in walk("a", 2, range(1, 11), 300)]
    gt = [CameraGroundTruth("a", 10, tuple(person + half_seen))]
    with_distractor = evaluate_mtmc(gt, person + relabel(half_seen, 5))
    far_away = [Sighting("a", s.frame, 6, (600, 400, 640, 500)) for s in person]
    with_false_track = evaluate_mtmc(gt, person + far_away)
    assert with_distractor.cameras["a"].false_positives == 0
    assert with_distractor.cameras["a"].mota == pytest.approx(1.0)
    assert with_false_track.cameras["a"].false_positives == 10


def write_mot(path: Path, sightings: list[Sighting], label_of=lambda s: 1 if s.scored else 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{s.frame},{s.identity},{s.xyxy[0]},{s.xyxy[1]},{s.xyxy[2] - s.xyxy[0]},{s.xyxy[3] - s.xyxy[1]},1,{label_of(s)},1"
        for s in sightings
    ]
    path.write_text("\n".join(lines) + "\n")


def noisy_sequence(seed: int) -> tuple[list[Sighting], list[Sighting]]:
    rng = np.random.default_rng(seed)
    gt = walk("cam", 1, range(1, 31), 0) + walk("cam", 2, range(3, 31), 120, dx=-2) + walk("cam", 3, range(10, 28), 260)
    gt += [Sighting("cam", s.frame, 4, s.xyxy, scored=False) for s in walk("cam", 4, range(1, 15), 400)]
    predictions = []
    for s in gt:
        if rng.random() < 0.15:
            continue
        identity = s.identity * 10 + (1 if s.frame > 18 and s.identity == 2 else 0)
        predictions.append(Sighting("cam", s.frame, identity, tuple(np.add(s.xyxy, rng.normal(0, 6, 4)))))
    predictions += walk("cam", 77, range(20, 26), 600)
    return gt, predictions


def test_per_camera_figures_match_the_trackers_file_evaluator(tmp_path):
    gt, predictions = noisy_sequence(seed=3)
    write_mot(tmp_path / "gt" / "cam" / "gt.txt", gt)
    write_mot(tmp_path / "pred.txt", predictions, label_of=lambda s: -1)
    reference = evaluate_mot_sequence(tmp_path / "gt" / "cam" / "gt.txt", tmp_path / "pred.txt",
                                      metrics=["CLEAR", "HOTA", "Identity"])
    ours = evaluate_mtmc(load_ground_truth(tmp_path / "gt"), predictions).cameras["cam"]
    assert ours.hota == pytest.approx(reference.HOTA.HOTA)
    assert ours.mota == pytest.approx(reference.CLEAR.MOTA)
    assert ours.idf1 == pytest.approx(reference.Identity.IDF1)
    assert ours.id_switches == reference.CLEAR.IDSW
    assert ours.false_positives == reference.CLEAR.CLR_FP
    assert 0.3 < ours.hota < 0.95


def test_ground_truth_folder_follows_seqmap_and_seqinfo(tmp_path):
    write_mot(tmp_path / "cam1" / "gt.txt", walk("cam1", 1, range(1, 5), 0))
    write_mot(tmp_path / "cam2" / "gt" / "gt.txt", walk("cam2", 1, range(1, 5), 0))
    write_mot(tmp_path / "source" / "gt.txt", walk("source", 1, range(1, 9), 0))
    (tmp_path / "cam1" / "seqinfo.ini").write_text("[Sequence]\nname=cam1\nseqLength=12\n")
    (tmp_path / "seqmap.txt").write_text("name\ncam1\ncam2\n")
    cameras = load_ground_truth(tmp_path)
    assert [c.camera_id for c in cameras] == ["cam1", "cam2"]
    assert [c.num_frames for c in cameras] == [12, 4]
    (tmp_path / "seqmap.txt").unlink()
    assert [c.camera_id for c in load_ground_truth(tmp_path)] == ["cam1", "cam2", "source"]


def test_bad_inputs_raise_data_error(tmp_path):
    with pytest.raises(DataError):
        load_ground_truth(tmp_path / "missing")
    (tmp_path / "cam1").mkdir()
    (tmp_path / "cam1" / "gt.txt").write_text("1,2,three,4,5,6\n")
    with pytest.raises(DataError):
        load_ground_truth(tmp_path)
    (tmp_path / "t.csv").write_text("global_id,camera_id,frame\n1,cam1,3\n")
    with pytest.raises(DataError):
        load_trajectories_csv(tmp_path / "t.csv")


def write_trajectories(path: Path, sightings: list[Sighting]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["global_id", "camera_id", "local_track_id", "frame", "timestamp",
                         "x1", "y1", "x2", "y2", "confidence", "foot_x", "foot_y"])
        for s in sightings:
            x1, y1, x2, y2 = s.xyxy
            writer.writerow([s.identity, s.camera_id, s.identity, s.frame, "2026-01-15T09:00:00+00:00",
                             x1, y1, x2, y2, 0.9, (x1 + x2) / 2, y2])


def test_cli_eval_mtmc_prints_json_from_a_trajectories_csv(tmp_path):
    gt, parts = two_cameras()
    for camera in gt:
        write_mot(tmp_path / "gt" / camera.camera_id / "gt.txt", list(camera.sightings))
    predictions = parts["a", 1] + parts["a", 2] + relabel(parts["b", 1], 7) + relabel(parts["b", 2], 8)
    write_trajectories(tmp_path / "trajectories.csv", predictions)
    command = [sys.executable, "-m", "reidcam", "eval-mtmc", "--gt", str(tmp_path / "gt"),
               "--db", str(tmp_path / "trajectories.csv"), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["combined"]["idf1"] == pytest.approx(1.0)
    assert report["cross_camera"]["idf1"] == pytest.approx(0.5)
    table = subprocess.run(command[:-1], capture_output=True, text=True, check=True).stdout
    assert "Cross camera" in table and "combined" in table
    missing = subprocess.run(command[:5] + [str(tmp_path / "nope")] + command[6:], capture_output=True, text=True)
    assert missing.returncode == 2 and "reidcam: error:" in missing.stderr


@pytest.mark.slow
def test_eval_mtmc_reads_a_real_run_database(tmp_path):
    """``reidcam run`` (spacetime, no ReID) on two short virtual cameras, scored against its own MOT export."""
    import os

    from reidcam.app.virtual_cameras import DEFAULT_SOURCE, VirtualCamera, make_virtual_cameras

    if not DEFAULT_SOURCE.exists():
        pytest.skip(f"{DEFAULT_SOURCE} not available")
    cameras = (
        VirtualCamera("left", (0, 60, 384, 560), start_frame=200, num_frames=25),
        VirtualCamera("right", (384, 60, 768, 560), start_frame=210, num_frames=25),
    )
    cams_yaml = make_virtual_cameras(DEFAULT_SOURCE, tmp_path / "cams", cameras,
                                     extra_config={"association": {"mode": "spacetime"}})
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    reidcam = [sys.executable, "-m", "reidcam"]
    subprocess.run(reidcam + ["run", "--sources", str(cams_yaml), "--out", str(tmp_path / "out"), "--device", "cpu"],
                   check=True, capture_output=True, env=env)
    db = str(tmp_path / "out" / "reidcam.db")
    subprocess.run(reidcam + ["export", "--db", db, "--out", str(tmp_path / "mot"), "--format", "mot"],
                   check=True, capture_output=True, env=env)
    for camera in ("left", "right"):
        rows = (tmp_path / "mot" / f"{camera}.txt").read_text().splitlines()
        assert rows, f"no tracked person in {camera}"
        gt_rows = [",".join(line.split(",")[:6] + ["1", "1", "1"]) for line in rows]
        (tmp_path / "gt" / camera).mkdir(parents=True)
        (tmp_path / "gt" / camera / "gt.txt").write_text("\n".join(gt_rows) + "\n")
    result = subprocess.run(reidcam + ["eval-mtmc", "--gt", str(tmp_path / "gt"), "--db", db, "--json"],
                            check=True, capture_output=True, text=True, env=env)
    report = json.loads(result.stdout)
    assert report["combined"]["mota"] == pytest.approx(1.0)
    assert report["cross_camera"]["idf1"] == pytest.approx(1.0)
    assert set(report["cameras"]) == {"left", "right"}


def test_committed_benchmark_ground_truth_is_what_the_build_script_makes(tmp_path):
    """bench/mtmc/gt must follow from draft.txt + corrections.yaml + the virtual-camera preset."""
    from reidcam.app.virtual_cameras import DEFAULT_SOURCE

    if not DEFAULT_SOURCE.exists():
        pytest.skip(f"{DEFAULT_SOURCE} not available")
    bench = Path(__file__).resolve().parents[1] / "bench" / "mtmc"
    subprocess.run([sys.executable, str(bench / "build_benchmark.py"), "--gt", str(tmp_path)],
                   check=True, capture_output=True)
    committed = sorted(p.relative_to(bench / "gt") for p in (bench / "gt").rglob("*") if p.is_file()
                       and p.name != "draft.txt")
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for relative in committed:
        assert (tmp_path / relative).read_text() == (bench / "gt" / relative).read_text(), relative
    cameras = load_ground_truth(bench / "gt")
    assert [c.camera_id for c in cameras] == ["cam1", "cam2", "cam3"]
    people = [{s.identity for s in c.sightings if s.scored} for c in cameras]
    assert len(set.union(*people)) == 12 and all(len(p) >= 10 for p in people)
