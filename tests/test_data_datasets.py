"""Dataset layouts: Market-style folders, MSMT17's list files, CUHK03 (converted and .mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reid_fixtures import synthetic_market, touch_images  # noqa: F401  (fixture)

from reidcam.errors import DataError
from reidcam.reid.data import load_dataset
from reidcam.reid.data.datasets import parse_market_name


def test_market_names_give_pid_and_camera():
    assert parse_market_name(Path("0002_c1s1_000451_03.jpg")) == (2, 1)
    assert parse_market_name(Path("-1_c3s2_012345_01.jpg")) == (-1, 3)
    assert parse_market_name(Path("0005_c8_f0046182.jpg")) == (5, 8)  # DukeMTMC
    assert parse_market_name(Path("Thumbs.db.jpg")) is None


def test_market_layout_relabels_train_and_keeps_test_ids(tmp_path):
    root = tmp_path / "Market1501"
    touch_images(root / "bounding_box_train",
                 ["0007_c1s1_1.jpg", "0007_c2s1_2.jpg", "0003_c2s1_3.jpg", "-1_c1s1_4.jpg"])
    touch_images(root / "query", ["0010_c1s1_5.jpg", "0011_c3s1_6.jpg"])
    touch_images(root / "bounding_box_test",
                 ["0010_c3s1_7.jpg", "0000_c1s1_8.jpg", "-1_c2s1_9.jpg", "0011_c5s1_10.png"])
    (root / "bounding_box_test" / "readme.txt").write_text("not an image")

    data = load_dataset("market1501", root)

    assert sorted((s.path.name, s.pid) for s in data.train) == [
        ("0003_c2s1_3.jpg", 0), ("0007_c1s1_1.jpg", 1), ("0007_c2s1_2.jpg", 1)]
    assert {s.pid for s in data.query} == {10, 11}
    assert sorted(s.pid for s in data.gallery) == [0, 10, 11]  # junk -1 dropped, distractor 0 kept
    assert data.cameras == [1, 2, 3, 5]
    camera_of = {s.path.name: s.camid for s in (*data.train, *data.query, *data.gallery)}
    assert camera_of["0007_c2s1_2.jpg"] == camera_of["0003_c2s1_3.jpg"] == 1
    assert camera_of["0011_c3s1_6.jpg"] == camera_of["0010_c3s1_7.jpg"] == 2
    assert camera_of["0011_c5s1_10.png"] == 3
    assert data.num_train_pids == 2


def test_synthetic_market_loads_with_every_query_matched(synthetic_market):
    data = load_dataset("market", synthetic_market)
    assert data.num_train_pids == 8 and len(data.train) == 32
    assert data.num_cameras == 3
    for query in data.query:
        assert any(g.pid == query.pid and g.camid != query.camid for g in data.gallery)


def test_missing_dataset_folder_is_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("market1501", tmp_path / "nowhere")
    message = str(caught.value)
    assert "\n" not in message and "nowhere" in message and "bounding_box_train/" in message


def test_misshapen_dataset_folder_names_missing_split(tmp_path):
    touch_images(tmp_path / "bounding_box_train", ["0001_c1_1.jpg"])
    touch_images(tmp_path / "bounding_box_test", ["0002_c1_1.jpg"])
    with pytest.raises(DataError, match=r"has no query/"):
        load_dataset("dukemtmc", tmp_path)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'viper'"):
        load_dataset("viper", tmp_path)


def test_evaluation_only_needs_query_and_gallery(tmp_path):
    touch_images(tmp_path / "query", ["0002_c1_1.jpg"])
    touch_images(tmp_path / "bounding_box_test", ["0002_c2_1.jpg"])
    data = load_dataset("market", tmp_path, require_train=False)
    assert data.train == [] and len(data.query) == 1


def _msmt_original(root: Path) -> None:
    lines = {
        "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303morning_0016_1.jpg 0",
                           "0002/0002_000_03_0303noon_0001_0.jpg 2"],
        "list_val.txt": ["0001/0001_000_15_0303morning_0020_0.jpg 1"],
        "list_query.txt": ["0000/0000_000_02_0303morning_0008_0.jpg 0"],
        "list_gallery.txt": ["0000/0000_001_07_0303morning_0009_0.jpg 0", "0001/0001_000_02_0303noon_0001_0.jpg 1"],
    }
    for list_name, entries in lines.items():
        folder = root / ("train" if list_name in ("list_train.txt", "list_val.txt") else "test")
        touch_images(folder, [])
        for entry in entries:
            relative = entry.split()[0]
            touch_images((folder / relative).parent, [Path(relative).name])
        (root / list_name).write_text("\n".join(entries) + "\n")


def test_msmt17_original_layout_merges_train_and_val(tmp_path):
    _msmt_original(tmp_path)
    data = load_dataset("msmt17", tmp_path)
    assert len(data.train) == 4 and data.num_train_pids == 3
    assert sorted({s.pid for s in data.train}) == [0, 1, 2]
    assert data.cameras == [1, 2, 3, 5, 7, 15]
    query = data.query[0]
    assert query.pid == 0 and data.cameras[query.camid] == 2
    assert query.path == tmp_path / "test" / "0000" / "0000_000_02_0303morning_0008_0.jpg"


def test_msmt17_bad_list_line(tmp_path):
    _msmt_original(tmp_path)
    (tmp_path / "list_val.txt").write_text("0001/0001_000_15_0303morning_0020_0.jpg\n")
    with pytest.raises(DataError, match=r"list_val.txt:1"):
        load_dataset("msmt17", tmp_path)


def test_msmt17_missing_lists(tmp_path):
    touch_images(tmp_path / "train", [])
    touch_images(tmp_path / "test", [])
    with pytest.raises(DataError, match="list_train.txt"):
        load_dataset("msmt17", tmp_path)


def test_msmt17_market_layout(synthetic_market):
    assert load_dataset("msmt17", synthetic_market).num_train_pids == 8


def test_cuhk03_converted_layouts(tmp_path):
    for variant, pid in (("labeled", 1), ("detected", 2)):
        touch_images(tmp_path / variant / "bounding_box_train", [f"{pid:04d}_c1_1.png", f"{pid:04d}_c2_2.png"])
        touch_images(tmp_path / variant / "query", ["0100_c1_1.png"])
        touch_images(tmp_path / variant / "bounding_box_test", ["0100_c2_1.png"])
    detected = load_dataset("cuhk03_detected", tmp_path)
    assert detected.train[0].path.parent == tmp_path / "detected" / "bounding_box_train"
    assert load_dataset("cuhk03", tmp_path).train[0].path.parent.parent.name == "labeled"
    assert load_dataset("cuhk03_labeled", tmp_path / "labeled").name == "cuhk03_labeled"


def test_cuhk03_without_any_layout(tmp_path):
    with pytest.raises(DataError, match=r"cuhk03_new_protocol_config_detected.mat"):
        load_dataset("cuhk03_detected", tmp_path)


def _write_cuhk03_release(root: Path) -> dict[str, np.ndarray]:
    """A miniature cuhk-03.mat (MATLAB v7.3 = HDF5 with object references) and a protocol file.

    Two camera pairs with 2 and 1 persons; images are stored transposed, as MATLAB does.
    """
    h5py = pytest.importorskip("h5py")
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = {}
    (root / "cuhk03_release").mkdir(parents=True)
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as mat:
        refs_group = mat.create_group("#refs#")
        pair_refs = mat.create_dataset("labeled", (1, 2), dtype=h5py.ref_dtype)
        for pair, persons in enumerate((2, 1), start=1):
            cells = np.empty((10, persons), dtype=object)  # MATLAB (persons x 10), stored transposed
            for person in range(1, persons + 1):
                for index in range(1, 11):
                    name = f"{pair}_{person:03d}_{1 if index <= 5 else 2}_{index:02d}"
                    if index in (4, 9):
                        data = refs_group.create_dataset(name, data=np.zeros(2, dtype=np.uint64))
                    else:
                        image = rng.integers(0, 256, (12, 6, 3), dtype=np.uint8)
                        images[name + ".png"] = image
                        data = refs_group.create_dataset(name, data=image.T)
                    cells[index - 1, person - 1] = data.ref
            cell_set = refs_group.create_dataset(f"pair{pair}", (10, persons), dtype=h5py.ref_dtype)
            cell_set[...] = cells
            pair_refs[0, pair - 1] = cell_set.ref
    names = sorted(images)
    labels = [{"1_001": 1, "1_002": 2, "2_001": 3}[name[:5]] for name in names]
    train = [i + 1 for i, label in enumerate(labels) if label in (1, 2)]
    test = [i + 1 for i, label in enumerate(labels) if label == 3]
    filelist = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        filelist[i, 0] = name
    savemat(root / "cuhk03_new_protocol_config_labeled.mat", {
        "filelist": filelist, "labels": np.array(labels)[:, None], "train_idx": np.array(train)[:, None],
        "query_idx": np.array(test[:2])[:, None], "gallery_idx": np.array(test[2:])[:, None],
    })
    return images


def test_cuhk03_release_is_converted_to_market_layout(tmp_path):
    images = _write_cuhk03_release(tmp_path)
    data = load_dataset("cuhk03_labeled", tmp_path)
    assert data.num_train_pids == 2 and len(data.train) == 16
    assert len(data.query) == 2 and len(data.gallery) == 6
    assert {s.pid for s in data.query} == {3}
    assert data.cameras == [1, 2]
    query = data.query[0]
    assert query.path.parent == tmp_path / "labeled" / "query"
    original = images["2_001_1_01.png"]
    assert query.path.name == "0003_c1_200101.png"
    np.testing.assert_array_equal(np.asarray(Image.open(query.path)), original)
    assert not list(tmp_path.glob(".labeled.partial"))
    assert load_dataset("cuhk03_labeled", tmp_path).num_train_pids == 2  # second time: converted folder
