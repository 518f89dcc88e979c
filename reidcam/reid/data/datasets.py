"""Person ReID datasets on disk: Market-1501 layout and the benchmarks that use or convert to it.

A dataset is three lists of samples (train, query, gallery). Training identities are relabelled
to 0..C-1 in sorted order of their original ids; query and gallery keep the original ids, which
is all the evaluation protocol needs. Camera labels are mapped to contiguous indices 0..K-1 in
sorted order over all three splits, so a camera has the same index in training and at test time
(the camera embedding, SIE, is indexed by it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reidcam.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
PID_CAMERA_PATTERN = re.compile(r"(-?\d+)_c(\d+)")
JUNK_PID = -1


@dataclass(frozen=True)
class RawSample:
    """One image as parsed from disk, before identities and cameras are re-indexed."""

    path: Path
    pid: int
    camera: int


@dataclass(frozen=True)
class ReIDSample:
    """One image: ``pid`` is the training label (train split) or the original id (query/gallery)."""

    path: Path
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """The three splits of a dataset, with the camera labels behind the camera indices."""

    name: str
    root: Path
    train: list[ReIDSample]
    query: list[ReIDSample]
    gallery: list[ReIDSample]
    cameras: list[int] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({sample.pid for sample in self.train})

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    def summary(self) -> str:
        """One line per split: identities and images, as the papers' dataset tables count them."""
        lines = [f"{self.name} at {self.root} ({self.num_cameras} cameras)"]
        for split_name, samples in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            ids = len({sample.pid for sample in samples})
            lines.append(f"  {split_name:8s} {ids:6d} ids {len(samples):7d} images")
        return "\n".join(lines)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (deterministic order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_market_name(path: Path) -> tuple[int, int] | None:
    """(pid, camera) from a Market-style file name such as ``0002_c1s1_000451_03.jpg``."""
    match = PID_CAMERA_PATTERN.search(path.name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def parse_market_folder(folder: Path) -> list[RawSample]:
    """All images of one Market-layout split folder; junk (pid -1) is dropped, distractors (0) kept."""
    samples = []
    skipped = 0
    for path in list_images(folder):
        parsed = parse_market_name(path)
        if parsed is None:
            skipped += 1
            continue
        pid, camera = parsed
        if pid == JUNK_PID:
            continue
        samples.append(RawSample(path, pid, camera))
    if skipped:
        log.warning("%s: %d images without a '<pid>_c<cam>' name were skipped", folder, skipped)
    return samples


def require_market_layout(root: Path, dataset_name: str, splits: Sequence[str] = MARKET_SPLITS) -> None:
    """Raise DataError in one line unless ``root`` holds the Market-layout split folders."""
    if not root.is_dir():
        raise DataError(f"{dataset_name}: dataset folder {root} does not exist "
                        f"(expected it to contain {', '.join(s + '/' for s in splits)})")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{dataset_name}: {root} has no {', '.join(m + '/' for m in missing)} "
                        f"(expected the Market-1501 layout: {', '.join(s + '/' for s in splits)})")


def build_dataset(
    name: str,
    root: Path,
    train: Iterable[RawSample],
    query: Iterable[RawSample],
    gallery: Iterable[RawSample],
) -> ReIDDataset:
    """Relabel training ids contiguously and index cameras over all splits."""
    train, query, gallery = list(train), list(query), list(gallery)
    if not query or not gallery:
        empty = "query" if not query else "gallery"
        raise DataError(f"{name}: the {empty} split under {root} has no usable images")
    cameras = sorted({s.camera for s in (*train, *query, *gallery)})
    camera_index = {camera: index for index, camera in enumerate(cameras)}
    train_label = {pid: label for label, pid in enumerate(sorted({s.pid for s in train}))}

    def convert(samples: list[RawSample], relabel: bool) -> list[ReIDSample]:
        return [
            ReIDSample(s.path, train_label[s.pid] if relabel else s.pid, camera_index[s.camera])
            for s in samples
        ]

    return ReIDDataset(name, root, convert(train, True), convert(query, False), convert(gallery, False), cameras)


def load_market_layout(root: Path, name: str = "market", require_train: bool = True) -> ReIDDataset:
    """Any folder with ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``."""
    root = Path(root)
    splits = MARKET_SPLITS if require_train else MARKET_SPLITS[1:]
    require_market_layout(root, name, splits)
    train_dir = root / "bounding_box_train"
    train = parse_market_folder(train_dir) if train_dir.is_dir() else []
    if require_train and not train:
        raise DataError(f"{name}: {train_dir} has no images named '<pid>_c<cam>...jpg'")
    return build_dataset(
        name, root, train, parse_market_folder(root / "query"), parse_market_folder(root / "bounding_box_test")
    )


DatasetLoader = Callable[[Path, bool], ReIDDataset]


def _market_loader(name: str) -> DatasetLoader:
    def load(root: Path, require_train: bool = True) -> ReIDDataset:
        return load_market_layout(root, name, require_train)

    return load


def _msmt17(root: Path, require_train: bool = True) -> ReIDDataset:
    from reidcam.reid.data.msmt17 import load_msmt17

    return load_msmt17(root, require_train)


def _cuhk03(variant: str) -> DatasetLoader:
    def load(root: Path, require_train: bool = True) -> ReIDDataset:
        from reidcam.reid.data.cuhk03 import load_cuhk03

        return load_cuhk03(root, variant, require_train)

    return load


DATASETS: dict[str, DatasetLoader] = {
    "market": _market_loader("market"),
    "market1501": _market_loader("market1501"),
    "dukemtmc": _market_loader("dukemtmc"),
    "occluded_duke": _market_loader("occluded_duke"),
    "mined": _market_loader("mined"),
    "msmt17": _msmt17,
    "cuhk03": _cuhk03("labeled"),
    "cuhk03_labeled": _cuhk03("labeled"),
    "cuhk03_detected": _cuhk03("detected"),
}

ALIASES = {
    "market-1501": "market1501",
    "market1501_v15.09.15": "market1501",
    "duke": "dukemtmc",
    "dukemtmc-reid": "dukemtmc",
    "dukemtmc_reid": "dukemtmc",
    "occludedduke": "occluded_duke",
    "occluded-duke": "occluded_duke",
    "cuhk03-l": "cuhk03_labeled",
    "cuhk03-d": "cuhk03_detected",
    "cuhk03_np": "cuhk03_labeled",
}


def canonical_dataset_name(name: str) -> str:
    """The registry key for ``name`` (case-insensitive, common spellings accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return key


def load_dataset(name: str, root: Path | str, require_train: bool = True) -> ReIDDataset:
    """Load dataset ``name`` from its own folder ``root``; DataError if it is missing or misshapen."""
    key = canonical_dataset_name(name)
    dataset = DATASETS[key](Path(root).expanduser(), require_train)
    log.info("%s", dataset.summary())
    return dataset
