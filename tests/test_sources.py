"""Camera sources: real decoding of files, image folders and an HTTP stream; clock-ordered steps."""

from __future__ import annotations

import http.server
import logging
import socketserver
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import pytest

from reidcam.app.config import CameraConfig, StreamConfig
from reidcam.app.sources import open_cameras, with_decoder_threads
from reidcam.errors import DataError

FAST_RETRY = StreamConfig(retries=1, backoff_initial_s=0.05, backoff_max_s=0.1, open_timeout_s=2, read_timeout_s=2)
RUN_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def camera(clips, camera_id: str, **changes) -> CameraConfig:
    return CameraConfig.model_validate({**clips.cameras[camera_id], **changes})


@pytest.fixture(params=["thread", "process"])
def streams(request) -> StreamConfig:
    """Every test of a camera's frames runs with either decoder: a thread of the run, or a process."""
    return FAST_RETRY.model_copy(update={"decode": request.param})


def all_steps(cameras, streams, max_frames=None):
    source = open_cameras(cameras, streams, RUN_START, max_frames=max_frames)
    return list(source.steps())


def test_cameras_on_one_clock_share_steps(clips, streams):
    steps = all_steps([camera(clips, "west"), camera(clips, "east")], streams, max_frames=5)
    assert [[frame.camera_id for frame in step] for step in steps] == [["east", "west"]] * 5
    for number, step in enumerate(steps, start=1):
        assert {frame.index for frame in step} == {number}
        assert len({frame.timestamp for frame in step}) == 1


def test_cameras_on_different_clocks_are_replayed_in_time_order(clips, streams):
    west, replay = camera(clips, "west"), camera(clips, "replay")
    steps = all_steps([replay, west], streams, max_frames=6)
    order = [(frame.camera_id, frame.index) for step in steps for frame in step]
    assert order == [("west", i) for i in range(1, 7)] + [("replay", i) for i in range(1, 7)]
    times = [frame.timestamp for step in steps for frame in step]
    assert times == sorted(times)
    first_replay = steps[6][0]
    assert first_replay.time == replay.start_time
    assert steps[2][0].timestamp == pytest.approx(west.start_time.timestamp() + 2 / 10.0)


def test_frames_carry_images_of_the_clip(clips, streams):
    (step,) = all_steps([camera(clips, "east")], streams, max_frames=1)
    capture = cv2.VideoCapture(clips.cameras["east"]["source"])
    expected = capture.read()[1]
    capture.release()
    assert (step[0].image == expected).all()


def test_decoder_threads_share_the_cores_unless_configured(clips, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert with_decoder_threads(FAST_RETRY, 16).decoder_threads == 2
    assert with_decoder_threads(FAST_RETRY, 1).decoder_threads == 32
    assert with_decoder_threads(FAST_RETRY, 64).decoder_threads == 1
    assert with_decoder_threads(FAST_RETRY.model_copy(update={"decoder_threads": 3}), 16).decoder_threads == 3
    one_thread = FAST_RETRY.model_copy(update={"decoder_threads": 1})
    (step,) = all_steps([camera(clips, "east")], one_thread, max_frames=1)
    capture = cv2.VideoCapture(clips.cameras["east"]["source"])
    assert (step[0].image == capture.read()[1]).all()
    capture.release()


def test_image_folder_in_name_order_skipping_unreadable_files(clips, tmp_path, caplog, streams):
    capture = cv2.VideoCapture(clips.cameras["west"]["source"])
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"frame_{index:03d}.png"), capture.read()[1])
    capture.release()
    (tmp_path / "frame_001b.jpg").write_bytes(b"not an image")
    folder_camera = CameraConfig(id="stills", source=str(tmp_path), fps=2.0, start_time=RUN_START)
    with caplog.at_level(logging.WARNING):
        steps = all_steps([folder_camera], streams)
    assert [step[0].index for step in steps] == [1, 2, 3]
    assert [step[0].timestamp - RUN_START.timestamp() for step in steps] == [0.0, 0.5, 1.0]
    assert "frame_001b.jpg" in caplog.text


def test_missing_file_alone_is_an_error(tmp_path, streams):
    with pytest.raises(DataError, match=r"camera gone: source not found: .*gone\.mp4"):
        open_cameras([CameraConfig(id="gone", source=str(tmp_path / "gone.mp4"))], streams, RUN_START)


def test_unreadable_file_alone_is_an_error(tmp_path, streams):
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video")
    with pytest.raises(DataError, match="camera broken: .*broken.mp4: cannot be opened"):
        open_cameras([CameraConfig(id="broken", source=str(broken))], streams, RUN_START)


def test_a_missing_camera_among_several_is_a_warning(clips, tmp_path, caplog, streams):
    gone = CameraConfig(id="gone", source=str(tmp_path / "gone.mp4"))
    with caplog.at_level(logging.WARNING):
        steps = all_steps([gone, camera(clips, "west")], streams, max_frames=3)
    assert {frame.camera_id for step in steps for frame in step} == {"west"}
    assert "camera gone: source not found" in caplog.text and "going on without this camera" in caplog.text


def test_unreachable_stream_is_retried_then_an_error(caplog, streams):
    stream = CameraConfig(id="door", source="rtsp://127.0.0.1:9/door")
    with (
        caplog.at_level(logging.INFO),
        pytest.raises(DataError, match="camera door: stream unreachable after 2 attempts"),
    ):
        open_cameras([stream], streams, RUN_START)
    assert "retry in" in caplog.text


class PacedVideoServer:
    """Serves a video over HTTP at about ``fps`` frames of ``frames`` per second, as a camera would: a live
    source is read no faster than its camera films. With ``cut_first`` the first connection drops halfway
    and the second is whole; later ones get 404."""

    def __init__(self, video: bytes, frames: int, fps: float, cut_first: bool = True) -> None:
        self.requests = 0
        server = self
        chunk = -(-len(video) // frames)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.requests > (2 if cut_first else 1):
                    self.send_error(404)
                    return
                body = video[: len(video) // 2] if cut_first and server.requests == 1 else video
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(video)))
                self.end_headers()
                for start in range(0, len(body), chunk):
                    self.wfile.write(body[start:start + chunk])
                    self.wfile.flush()
                    time.sleep(1.0 / fps)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/cam.avi"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def mjpeg_clip(source: Path, path: Path, frames: int) -> bytes:
    capture = cv2.VideoCapture(str(source))
    first = capture.read()[1]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (first.shape[1], first.shape[0]))
    writer.write(first)
    for _ in range(frames - 1):
        writer.write(capture.read()[1])
    writer.release()
    capture.release()
    return path.read_bytes()


def test_dropped_stream_reconnects_while_other_cameras_go_on(clips, tmp_path, caplog, streams):
    server = PacedVideoServer(mjpeg_clip(Path(clips.cameras["east"]["source"]), tmp_path / "cam.avi", 20), 20, 20.0)
    try:
        stream = CameraConfig(id="door", source=server.url)
        with caplog.at_level(logging.INFO):
            steps = all_steps([stream, camera(clips, "west")], streams)
    finally:
        server.close()
    door = [frame for step in steps for frame in step if frame.camera_id == "door"]
    west = [frame for step in steps for frame in step if frame.camera_id == "west"]
    assert len(west) == 40
    # half of the first connection, then the second: indices go on across the reconnect (a live camera may
    # drop a frame while the run takes the file camera's earlier frames first)
    indices = [frame.index for frame in door]
    assert indices == sorted(set(indices)) and 10 < len(indices) < 40 and indices[-1] > 20
    assert "camera door: stream dropped, reconnecting" in caplog.text
    assert "camera door: reconnected" in caplog.text
    assert server.requests >= 3


def test_a_live_stream_read_slower_than_it_films_stays_current(clips, tmp_path, streams):
    """A 40-frame stream filmed at 40 fps, read at under 20 steps/s: the decoder drops frames rather than
    wait for the run, so what the run sees skips ahead and keeps up with the camera to its last frames (had
    the decoder waited, the run would see every frame, ever later)."""
    video = mjpeg_clip(Path(clips.cameras["east"]["source"]), tmp_path / "cam.avi", 40)
    server = PacedVideoServer(video, 40, 40.0, cut_first=False)
    try:
        source = open_cameras([CameraConfig(id="door", source=server.url)], streams, RUN_START)
        indices = []
        for step in source.steps():
            indices.extend(frame.index for frame in step)
            time.sleep(0.05)
    finally:
        server.close()
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert len(indices) < indices[-1]  # frames were skipped
    assert indices[-1] >= 35
