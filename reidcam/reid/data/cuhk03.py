"""CUHK03 (labeled or detected boxes) under the 767/700 "new protocol" (Zhong et al., CVPR 2017).

Accepted layouts, for ``variant`` in {labeled, detected}:

* ``ROOT`` itself in the Market layout (e.g. ``CUHK03/labeled/`` or ``cuhk03-np/detected/``);
* ``ROOT/<variant>/`` in the Market layout (``CUHK03/`` or ``cuhk03-np/``);
* the original release, as torchreid documents it: ``ROOT/cuhk03_release/cuhk-03.mat`` (MATLAB v7.3,
  read with h5py) plus ``ROOT/cuhk03_new_protocol_config_<variant>.mat``. It is converted once into
  ``ROOT/<variant>/`` in the Market layout, file names ``<pid>_c<view>_<pair><index>.png``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from reidcam.errors import DataError
from reidcam.reid.data.datasets import MARKET_SPLITS, ReIDDataset, load_market_layout

log = logging.getLogger(__name__)

VARIANTS = ("labeled", "detected")
RAW_MAT_CANDIDATES = ("cuhk03_release/cuhk-03.mat", "cuhk-03.mat")
SPLIT_FOLDERS = {"train_idx": "bounding_box_train", "query_idx": "query", "gallery_idx": "bounding_box_test"}


def _has_market_layout(folder: Path) -> bool:
    return all((folder / split).is_dir() for split in MARKET_SPLITS)


def _expected_layouts(root: Path, variant: str) -> str:
    return (f"expected {root}/{variant}/ with {', '.join(s + '/' for s in MARKET_SPLITS)}, or "
            f"{root}/cuhk03_release/cuhk-03.mat with {root}/cuhk03_new_protocol_config_{variant}.mat")


def load_cuhk03(root: Path, variant: str = "labeled", require_train: bool = True) -> ReIDDataset:
    """CUHK03 ``variant`` from any accepted layout, converting the original .mat release once."""
    if variant not in VARIANTS:
        raise DataError(f"cuhk03: variant must be one of {VARIANTS}, not {variant!r}")
    name = f"cuhk03_{variant}"
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name}: dataset folder {root} does not exist ({_expected_layouts(root, variant)})")
    if _has_market_layout(root):
        return load_market_layout(root, name, require_train)
    if _has_market_layout(root / variant):
        return load_market_layout(root / variant, name, require_train)
    raw_mat = next((root / c for c in RAW_MAT_CANDIDATES if (root / c).is_file()), None)
    protocol_mat = root / f"cuhk03_new_protocol_config_{variant}.mat"
    if raw_mat is None or not protocol_mat.is_file():
        raise DataError(f"{name}: no usable layout in {root} ({_expected_layouts(root, variant)})")
    convert_cuhk03_release(raw_mat, protocol_mat, variant, root / variant)
    return load_market_layout(root / variant, name, require_train)


def _read_protocol(protocol_mat: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        config = loadmat(str(protocol_mat))
    except Exception as error:  # scipy raises several types for a bad file
        raise DataError(f"cuhk03: cannot read {protocol_mat}: {error}") from error
    missing = [key for key in ("filelist", "labels", *SPLIT_FOLDERS) if key not in config]
    if missing:
        raise DataError(f"cuhk03: {protocol_mat} lacks {', '.join(missing)} (not a new-protocol config file)")
    return config


def _open_raw_mat(raw_mat: Path):
    try:
        import h5py
    except ImportError as error:
        raise DataError(
            f"cuhk03: reading {raw_mat} (MATLAB v7.3) needs the h5py package (pip install h5py); "
            f"or supply the converted Market layout {raw_mat.parent}/labeled/ and detected/"
        ) from error
    try:
        return h5py.File(raw_mat, "r")
    except OSError as error:
        raise DataError(f"cuhk03: cannot read {raw_mat} as a MATLAB v7.3 file: {error}") from error


def _protocol_file_name(entry) -> str:
    """The ``<pair>_<pid>_<view>_<index>.png`` name stored in one ``filelist`` cell."""
    value = entry
    while isinstance(value, np.ndarray):
        value = value.flat[0]
    return str(value)


class _ReleaseImages:
    """Reads images out of an open cuhk-03.mat, caching each camera pair's cell array of references."""

    def __init__(self, mat, variant: str) -> None:
        self.mat, self.variant = mat, variant
        self.pairs: dict[int, np.ndarray] = {}

    def image(self, file_name: str) -> np.ndarray:
        """The HxWx3 uint8 image that ``file_name`` (pair_pid_view_index, 1-based) names."""
        pair, pid_in_pair, _view, index = (int(part) for part in Path(file_name).stem.split("_"))
        if pair not in self.pairs:  # (num_pids_in_pair, 10) object references, stored transposed
            self.pairs[pair] = self.mat[self.mat[self.variant][0][pair - 1]][:].T
        image = self.mat[self.pairs[pair][pid_in_pair - 1, index - 1]][:].T
        if image.ndim != 3:
            raise DataError(f"cuhk03: {file_name} is listed by the protocol but empty in the .mat file")
        return np.ascontiguousarray(image.astype(np.uint8))


def convert_cuhk03_release(raw_mat: Path, protocol_mat: Path, variant: str, out_dir: Path) -> None:
    """Write the 767/700 split of ``variant`` as a Market-layout folder ``out_dir``.

    Files are ``<pid:04d>_c<view>_<pair><pid_in_pair:03d><index:02d>.png`` where pid is the protocol's
    global label; the work goes to a sibling folder that is renamed at the end, so an interrupted
    conversion never looks finished.
    """
    from PIL import Image

    config = _read_protocol(protocol_mat)
    filelist = config["filelist"].flatten()
    labels = config["labels"].flatten().astype(int)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        for folder in SPLIT_FOLDERS.values():
            (partial / folder).mkdir(parents=True)
    except OSError as error:
        raise DataError(f"cuhk03: cannot write the converted layout next to {out_dir}: {error}") from error
    log.info("converting %s (%s) into %s", raw_mat, variant, out_dir)
    with _open_raw_mat(raw_mat) as mat:
        if variant not in mat:
            raise DataError(f"cuhk03: {raw_mat} has no '{variant}' images")
        release = _ReleaseImages(mat, variant)
        for key, folder in SPLIT_FOLDERS.items():
            for index in config[key].flatten().astype(int) - 1:
                file_name = _protocol_file_name(filelist[index])
                pair, pid_in_pair, view, image_index = (int(p) for p in Path(file_name).stem.split("_"))
                target = f"{labels[index]:04d}_c{view}_{pair}{pid_in_pair:03d}{image_index:02d}.png"
                image = release.image(file_name)
                Image.fromarray(image).save(partial / folder / target)
    partial.rename(out_dir)
