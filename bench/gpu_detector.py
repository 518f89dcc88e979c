"""Where the detector's time goes per 1080p frame: upload, letterbox, network, NMS, boxes to the host.

    PYTHONPATH=. python bench/gpu_detector.py --detector $PWD/.gpu/shared/models/yolov8n-from-tflite.pt
    PYTHONPATH=. python bench/gpu_detector.py --device cpu --batches 1 --detector model.pt   # a CPU check

The frames are vtest.avi cut to 16:9 and scaled to 1920x1080 (as ``bench/gpu_pipeline.py`` makes its
cameras). For each batch size the script times ``YoloDetector.detect`` on the tensor path and on
Ultralytics' ``predict``, then the tensor path's parts one by one, each drained on the device before
and after (so the parts add up to more than the whole, where the GPU overlapped them). Rows go to
stdout and to ``OUT/detector.md`` when $OUT is set.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from reidcam.app.config import DetectorConfig
from reidcam.app.virtual_cameras import DEFAULT_SOURCE
from reidcam.detection.yolo import YoloDetector, letterbox_geometry, letterbox_on_device

from gpu_embedder import timed  # sibling bench scripts (run as ``python bench/gpu_detector.py``)
from gpu_pipeline import WINDOW_16_9


def hd_frames(count: int) -> list[np.ndarray]:
    """``count`` consecutive vtest.avi frames, cut to 16:9 and scaled to 1920x1080."""
    capture = cv2.VideoCapture(str(DEFAULT_SOURCE))
    frames = []
    x0, y0, x1, y1 = WINDOW_16_9
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"{DEFAULT_SOURCE}: only {len(frames)} frames")
        frames.append(cv2.resize(frame[y0:y1, x0:x1], (1920, 1080), interpolation=cv2.INTER_LINEAR))
    return frames


def median_ms(run: Callable[[], object], device: torch.device, repeats: int = 7) -> float:
    """Median of ``repeats`` drained timings of ``run`` after one untimed call."""
    run()
    return statistics.median(timed(run, device) for _ in range(repeats))


def stage_times(detector: YoloDetector, frames: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds of each part of the tensor path for one batch of ``frames`` (of one size)."""
    network = detector._network
    device = network.device
    dtype = torch.half if network.fp16 else torch.float
    at = letterbox_geometry(*frames[0].shape[:2], detector._imgsz, int(network.stride))
    with torch.inference_mode():
        batch = torch.stack([letterbox_on_device(f, at, device, dtype) for f in frames])
        raw = network(batch)
        rows, _ = detector._suppress(raw)
        return {
            "upload": median_ms(lambda: [torch.from_numpy(f).to(device) for f in frames], device),
            "upload + letterbox": median_ms(
                lambda: torch.stack([letterbox_on_device(f, at, device, dtype) for f in frames]), device),
            "network": median_ms(lambda: network(batch), device),
            "NMS": median_ms(lambda: detector._suppress(raw), device),
            "boxes to host": median_ms(lambda: rows.cpu(), device),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True, help="PyTorch weights (.pt) for the tensor path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,4,16")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batches.split(",")]
    frames = hd_frames(max(sizes))
    config = DetectorConfig(weights=args.detector, batch_size=max(sizes))
    tensor = YoloDetector(config, args.device, tensor_path=True)
    predict = YoloDetector(config, args.device, tensor_path=False)
    device = tensor._network.device
    lines = [f"YoloDetector on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
             f"{os.cpu_count()} CPU cores, 1920x1080 frames; ms per frame (per batch / batch size)", ""]
    parts = ["upload", "upload + letterbox", "network", "NMS", "boxes to host"]
    lines += ["| batch | detect, tensor path | detect, predict | " + " | ".join(parts) + " |",
              "|---" * (3 + len(parts)) + "|"]
    for size in sizes:
        batch = frames[:size]
        whole = median_ms(lambda: tensor.detect(batch), device) / size
        via_predict = median_ms(lambda: predict.detect(batch), device) / size
        stages = stage_times(tensor, batch)
        lines.append(f"| {size} | {whole:.2f} | {via_predict:.2f} | "
                     + " | ".join(f"{stages[p] / size:.2f}" for p in parts) + " |")
        print(lines[-1], flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "detector.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
