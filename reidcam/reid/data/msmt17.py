"""MSMT17 in its original release layout, or already converted to the Market layout.

Original (V1 and V2)::

    MSMT17/
      train/ test/                 (V2: mask_train_v2/ mask_test_v2/)
      list_train.txt list_val.txt list_query.txt list_gallery.txt

Each list line is ``<path relative to train/ or test/> <pid>``; file names are
``<pid>_<index>_<camera>_...jpg`` (camera 1..15). As in TransReID, train and val are merged
into one training set (1,041 ids / 32,621 images).
"""

from __future__ import annotations

from pathlib import Path

from reidcam.errors import DataError
from reidcam.reid.data.datasets import (
    MARKET_SPLITS,
    RawSample,
    ReIDDataset,
    build_dataset,
    load_market_layout,
)

NAME = "msmt17"
IMAGE_FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def camera_from_msmt_name(name: str) -> int:
    """Camera number from ``<pid>_<index>_<camera>_...``."""
    parts = Path(name).name.split("_")
    if len(parts) < 3 or not parts[2].isdigit():
        raise DataError(f"{NAME}: file name {name!r} is not '<pid>_<index>_<camera>_...'")
    return int(parts[2])


def read_list_file(list_path: Path, image_dir: Path) -> list[RawSample]:
    """Samples of one ``list_*.txt``: each line is ``relative/path pid``."""
    samples = []
    for line_number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DataError(f"{NAME}: {list_path}:{line_number} is not '<relative path> <pid>'")
        relative, pid = fields
        samples.append(RawSample(image_dir / relative, int(pid), camera_from_msmt_name(relative)))
    return samples


def find_image_folders(root: Path) -> tuple[Path, Path]:
    for train_name, test_name in IMAGE_FOLDERS:
        if (root / train_name).is_dir() and (root / test_name).is_dir():
            return root / train_name, root / test_name
    raise DataError(
        f"{NAME}: {root} has neither train/ and test/ (MSMT17_V1) nor mask_train_v2/ and mask_test_v2/ "
        f"(V2) nor the Market layout ({', '.join(s + '/' for s in MARKET_SPLITS)})"
    )


def load_msmt17(root: Path, require_train: bool = True) -> ReIDDataset:
    """MSMT17 from ``root``: Market layout if present, else the original list files."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{NAME}: dataset folder {root} does not exist "
                        f"(expected train/, test/ and {', '.join(LIST_FILES)})")
    if (root / "query").is_dir() and (root / "bounding_box_test").is_dir():
        return load_market_layout(root, NAME, require_train)
    train_dir, test_dir = find_image_folders(root)
    missing = [name for name in LIST_FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"{NAME}: {root} lacks {', '.join(missing)} (expected the MSMT17 list files)")
    train = read_list_file(root / "list_train.txt", train_dir) + read_list_file(root / "list_val.txt", train_dir)
    query = read_list_file(root / "list_query.txt", test_dir)
    gallery = read_list_file(root / "list_gallery.txt", test_dir)
    absent = next((s.path for s in (*train[:1], *query[:1], *gallery[:1]) if not s.path.is_file()), None)
    if absent is not None:
        raise DataError(f"{NAME}: {absent} is listed but missing (list paths are relative to {train_dir.name}/ "
                        f"and {test_dir.name}/)")
    return build_dataset(NAME, root, train, query, gallery)
