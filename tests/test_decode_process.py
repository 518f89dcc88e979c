"""Decoding in worker processes (``streams.decode: process``): what shared slots must never do.

tests/test_sources.py runs every behaviour of the sources with both decoders; these tests are about
the process decoder's own risks: a frame overwritten while the run still reads it, a decoder that
dies, and a run that ends before it starts.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from reidcam.app import decode_process
from reidcam.app.config import CameraConfig, StreamConfig
from reidcam.app.decode_process import DecoderProcess
from reidcam.app.sources import CameraStream, open_cameras

pytestmark = pytest.mark.skipif(not decode_process.supported(), reason="process decoding needs Linux (memfd)")

PROCESS = StreamConfig(decode="process", retries=0, open_timeout_s=2, read_timeout_s=2)
RUN_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def decoded(path: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def camera(clips, camera_id: str) -> CameraConfig:
    return CameraConfig.model_validate(clips.cameras[camera_id])


def test_frames_held_by_the_run_are_never_overwritten(clips):
    """More frames kept than the ring has slots: every one still shows its own picture at the end."""
    east = camera(clips, "east")
    source = open_cameras([east], PROCESS, RUN_START)
    kept = [frame for step in source.steps() for frame in step]
    reference = decoded(str(east.source))
    assert len(kept) == len(reference) > 2 * decode_process.SLOTS
    for frame, expected in zip(kept, reference):
        assert np.array_equal(frame.image, expected), frame.index


def test_a_crop_keeps_its_frame_alive_after_the_frame_is_dropped(clips):
    """A view into a frame (a person crop) pins the frame's slot: the decoder cannot reuse it."""
    west = camera(clips, "west")
    reference = decoded(str(west.source))
    source = open_cameras([west], PROCESS, RUN_START)
    crops = []
    for step in source.steps():
        (frame,) = step
        if frame.index in (1, 2):
            crops.append((frame.index, frame.image[40:200, 30:150]))
        del frame, step  # only the crops stay; the rest of the clip streams through the slots
    for index, crop in crops:
        assert np.array_equal(crop, reference[index - 1][40:200, 30:150]), index


def test_frames_released_by_the_run_recycle_their_slots(clips):
    """A run that drops each frame after use gets views of shared memory, never copies, all clip long."""
    west = camera(clips, "west")
    source = open_cameras([west], PROCESS, RUN_START)
    copies = 0
    for step in source.steps():
        copies += sum(frame.image.base is None for frame in step)  # a copy owns its memory
    assert source.streams["west"].stats.frames_read == 40
    assert copies == 0


def test_a_decoder_that_dies_ends_its_camera_and_the_others_go_on(clips, caplog):
    west, east = camera(clips, "west"), camera(clips, "east")
    source = open_cameras([west, east], PROCESS, RUN_START)
    seen = {"west": 0, "east": 0}
    killed = False
    with caplog.at_level(logging.WARNING):
        for step in source.steps():
            for frame in step:
                seen[frame.camera_id] += 1
            if seen["east"] == 5 and not killed:
                os.kill(source.streams["east"]._process.pid, signal.SIGKILL)
                killed = True
    assert seen["west"] == 40
    assert 5 <= seen["east"] < 40
    assert "camera east: decoder process ended unexpectedly" in caplog.text


def test_a_run_that_ends_before_it_starts_stops_its_decoders_at_once(clips):
    source = open_cameras([camera(clips, "west"), camera(clips, "east")], PROCESS, RUN_START)
    processes = [stream._process for stream in source.streams.values()]
    started = time.perf_counter()
    source.close()
    assert time.perf_counter() - started < 1.5  # not the 2 s a stuck decoder gets
    assert not any(process.is_alive() for process in processes)


@pytest.mark.parametrize(("decode", "gpu", "feed"), [
    ("auto", True, DecoderProcess), ("auto", False, CameraStream), ("thread", True, CameraStream),
    ("process", False, DecoderProcess),
])
def test_auto_decodes_in_processes_where_frames_go_to_a_gpu(clips, decode, gpu, feed):
    source = open_cameras([camera(clips, "west")], PROCESS.model_copy(update={"decode": decode}), RUN_START, gpu=gpu)
    try:
        assert isinstance(source.streams["west"], feed)
    finally:
        source.close()


def test_ctrl_c_in_the_terminal_leaves_the_decoders_to_the_run(clips):
    """SIGINT reaches a terminal's whole process group; the decoders ignore it (no tracebacks from them,
    no lost frames), and the run stops them in order."""
    source = open_cameras([camera(clips, "west")], PROCESS, RUN_START)
    frames = 0
    for step in source.steps():
        frames += len(step)
        if frames == 3:
            os.kill(source.streams["west"]._process.pid, signal.SIGINT)
    assert frames == 40
