"""A tiny synthetic person-ReID dataset in the Market-1501 layout, for tests, demos and benchmarks.

Each identity is a figure with its own shirt and trouser colours, a stripe pattern and a head
tone; each camera adds its own colour cast and brightness; each image adds a random shift,
scale and pixel noise. Easy enough that a model learns it in a few iterations, hard enough that
an untrained model does not score perfectly. Nothing here is real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Identity:
    shirt: np.ndarray
    trousers: np.ndarray
    head: np.ndarray
    stripe_period: int
    stripe_colour: np.ndarray


def _random_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        shirt=rng.uniform(0, 255, 3),
        trousers=rng.uniform(0, 255, 3),
        head=rng.uniform(120, 230, 3),
        stripe_period=int(rng.integers(3, 9)),
        stripe_colour=rng.uniform(0, 255, 3),
    )


def _render(identity: Identity, camera_cast: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = rng.uniform(60, 200, 3)  # background
    scale = rng.uniform(0.85, 1.0)
    body_h, body_w = int(height * scale), int(width * 0.5 * scale)
    top = int(rng.integers(0, height - body_h + 1))
    left = int(rng.integers(0, width - body_w + 1))
    head_h, shirt_h = body_h // 6, body_h * 5 // 12
    canvas[top:top + head_h, left + body_w // 4:left + 3 * body_w // 4] = identity.head
    shirt = canvas[top + head_h:top + head_h + shirt_h, left:left + body_w]
    shirt[:] = identity.shirt
    shirt[::identity.stripe_period] = identity.stripe_colour
    canvas[top + head_h + shirt_h:top + body_h, left + body_w // 8:left + 7 * body_w // 8] = identity.trousers
    canvas = canvas * camera_cast + rng.normal(0, 12, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def write_synthetic_market(
    root: Path | str,
    num_train_ids: int = 8,
    num_test_ids: int = 6,
    images_per_id: int = 4,
    num_cameras: int = 3,
    size: tuple[int, int] = (128, 64),
    num_distractors: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` under ``root``.

    Train and test identities are disjoint (ids 1..T and T+1..T+Q). Image j of an identity is
    seen by camera ``(pid + j) % num_cameras + 1``; for test identities image 0 is the query and
    the rest form the gallery, so every query has a true match in another camera. The gallery
    also holds ``num_distractors`` images of pid 0 and one junk image of pid -1.
    """
    if images_per_id < 2 or num_cameras < 2:
        raise ValueError("need at least 2 images per identity and 2 cameras")
    root = Path(root)
    rng = np.random.default_rng(seed)
    casts = [rng.uniform(0.75, 1.25, 3) for _ in range(num_cameras)]
    folders = {name: root / name for name in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)

    def save(folder: Path, pid: int, camera: int, index: int, pixels: np.ndarray) -> None:
        name = f"{pid:04d}_c{camera}s1_{index:06d}_00.jpg" if pid >= 0 else f"-1_c{camera}s1_{index:06d}_00.jpg"
        Image.fromarray(pixels).save(folder / name, quality=95)

    for pid in range(1, num_train_ids + num_test_ids + 1):
        identity = _random_identity(rng)
        is_test = pid > num_train_ids
        for index in range(images_per_id):
            camera = (pid + index) % num_cameras + 1
            pixels = _render(identity, casts[camera - 1], size, rng)
            folder = folders["bounding_box_train"]
            if is_test:
                folder = folders["query"] if index == 0 else folders["bounding_box_test"]
            save(folder, pid, camera, index, pixels)
    for index in range(num_distractors + 1):
        pid = 0 if index < num_distractors else -1
        camera = index % num_cameras + 1
        pixels = _render(_random_identity(rng), casts[camera - 1], size, rng)
        save(folders["bounding_box_test"], pid, camera, 1000 + index, pixels)
    return root
