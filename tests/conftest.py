"""Fixtures shared by the pipeline tests: the ../shared folder, its models, and virtual-camera clips.

The clips are cut once per session from ../shared/data/vtest.avi (a real street scene) with
``make_virtual_cameras``: short windows in which several people walk, so every test runs the
real detector, tracker and ReID model on real decoded video in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")
# Triton kernels run in Triton's CPU interpreter in the tests; it must be chosen before triton is first
# imported (other test modules import it indirectly), so it is set here rather than in the kernel tests.
os.environ.setdefault("TRITON_INTERPRET", "1")
# NVRTC 12.9+ caches compiled programs; a cache hit runs no ptxas, so the log holds no register and spill
# report, and the tests that read it found none on the GPU machine (session 8: the same kernel compiled
# earlier in the process). The driver's compute cache setting turns NVRTC's off too.
os.environ.setdefault("CUDA_CACHE_DISABLE", "1")
# Ultralytics gives its logger a handler on the sys.stdout of the moment it is first imported. Imported
# inside a test that uses capsys, that is the test's capture, closed when the test ends: a later test that
# loads a detector then logs into a closed file, and "--- Logging error ---" with a traceback lands in its
# stderr (test_run_overlap and test_run_tracker_processes failed so, depending on the order of the tests).
# Imported here, the handler writes to pytest's session-long capture instead. (The GPU machine runs the
# kernel tests without Ultralytics installed.)
try:
    import ultralytics.utils  # noqa: F401
except ImportError:
    pass

CLIP_FRAMES = 40
CLIP_START = 270  # source frame where 2 to 4 people walk in each half of the plaza
CLIP_FPS = 10.0
REPLAY_DELAY_S = 2.0  # the replay camera starts this long after the west camera's clip ends


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository, or ``$REIDCAM_SHARED``."""
    folder = Path(os.environ.get("REIDCAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    if not (folder / "models").is_dir():
        pytest.skip(f"no shared models at {folder} (set REIDCAM_SHARED)")
    return folder


@pytest.fixture(scope="session")
def detector_weights(shared_dir: Path) -> Path:
    return shared_dir / "models" / "yolov8n-coco-int8" / "yolov8n_int8.tflite"


@pytest.fixture(scope="session")
def osnet_onnx(shared_dir: Path) -> Path:
    return shared_dir / "models" / "osnet-x0.25-msmt17" / "osnet_x0_25_msmt17.onnx"


@pytest.fixture(scope="session")
def vtest_video(shared_dir: Path) -> Path:
    return shared_dir / "data" / "vtest.avi"


@dataclass(frozen=True)
class Clips:
    """The session's virtual cameras: their folder and the cams.yaml entry of each."""

    folder: Path
    cameras: dict[str, dict]

    def write_config(self, path: Path, camera_ids: list[str], **sections) -> Path:
        """A cams.yaml at ``path`` with the named cameras and extra top-level sections."""
        document = {"cameras": [self.cameras[camera_id] for camera_id in camera_ids], **sections}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory, vtest_video: Path) -> Clips:
    """Three cameras of ``CLIP_FRAMES`` frames each, cut from the same moment of vtest.avi.

    * ``west`` and ``east``: the two halves of the plaza, with a blind gap between them and
      different looks;
    * ``replay``: the very window of ``west``, with ``west``'s look, on a clock that starts
      ``REPLAY_DELAY_S`` after ``west``'s clip ends: the people of ``west`` walk through it again,
      later. Who is who between ``west`` and ``replay`` is known box by box.
    """
    from reidcam.app.virtual_cameras import VirtualCamera, make_virtual_cameras

    west_window = (0, 60, 352, 480)
    replay_offset = CLIP_FRAMES / CLIP_FPS + REPLAY_DELAY_S
    cameras = [
        VirtualCamera("west", west_window, start_frame=CLIP_START, num_frames=CLIP_FRAMES),
        VirtualCamera(
            "east",
            (432, 60, 768, 480),
            start_frame=CLIP_START,
            num_frames=CLIP_FRAMES,
            brightness=-15,
            contrast=1.1,
            gains_bgr=(1.05, 1.0, 0.95),
        ),
        VirtualCamera(
            "replay", west_window, start_frame=CLIP_START, num_frames=CLIP_FRAMES, clock_offset_s=replay_offset
        ),
    ]
    folder = tmp_path_factory.mktemp("clips")
    cams_yaml = make_virtual_cameras(vtest_video, folder, cameras)
    entries = yaml.safe_load(cams_yaml.read_text())["cameras"]
    by_id = {entry["id"]: {**entry, "source": str(folder / entry["source"])} for entry in entries}
    return Clips(folder=folder, cameras=by_id)


@pytest.fixture(scope="session")
def fast_settings(detector_weights: Path):
    """Makes cams.yaml sections for short runs: the INT8 detector, the tiny ReIDMamba model (random
    weights) on 128x64 crops, a few crops per tracklet, small commits.

    Keyword arguments add to or override a section: ``fast_settings(association={"mode": "spacetime"})``.
    """

    def sections(**overrides: dict) -> dict:
        settings = {
            "detector": {"weights": str(detector_weights)},
            "reid": {
                "model": "reidmamba_tiny",
                "img_size": [128, 64],
                "every_k_frames": 2,
                "max_crops_per_tracklet": 4,
            },
            "association": {"min_crops": 3},
            "storage": {"commit_every": 5},
        }
        for key, value in overrides.items():
            settings[key] = {**settings.get(key, {}), **value}
        return settings

    return sections


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Runs the real console entry point (``reidcam.app.cli:main``) in-process: ``cli("export", "--db", ...)``."""
    from reidcam.app.cli import main

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr("sys.argv", ["reidcam", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """NVRTC's compiles cached in a folder of the session (per xdist worker), never in the user's ~/.cache; a test
    may set REIDCAM_KERNEL_CACHE itself. Cached logs are those of identical compiles, ptxas' report included."""
    folder = tmp_path_factory.mktemp("kernel-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REIDCAM_KERNEL_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op torch thread per test: the test models are tiny, and on a shared 2-core machine
    two threads contend and can be ten times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
