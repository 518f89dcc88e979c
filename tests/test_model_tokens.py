"""Class-token layout of ReIDMamba (method doc 2a, 2b): positions, sequence lengths, gathers."""

from __future__ import annotations

import pytest
import torch

from reidcam.reid.model import build_model
from reidcam.reid.model.tokens import interleave_layout, patch_grid, regroup_index


def test_256x128_stride16_has_12_class_tokens_every_tenth_position():
    rows, cols = patch_grid((256, 128), 16, 16)
    layout = interleave_layout(rows * cols, 12)
    assert (rows, cols) == (16, 8)
    assert layout.cls_positions == tuple(range(9, 120, 10))
    assert layout.length == 140


def test_384x128_stride12_layouts_of_the_three_branches():
    rows, cols = patch_grid((384, 128), 16, 12)
    assert (rows, cols) == (31, 10)
    full, six, three = (interleave_layout(rows * cols, n) for n in (12, 6, 3))
    assert full.cls_positions == tuple(range(23, 288, 24)) and full.length == 322
    assert six.cls_positions == (44, 89, 134, 179, 224, 269) and six.length == 316
    assert three.cls_positions == (77, 155, 233) and three.length == 313
    trailing = full.length - 1 - full.cls_positions[-1]
    assert trailing == 34


def test_gather_index_places_class_tokens_and_keeps_patches_in_raster_order():
    layout = interleave_layout(23, 4)
    source = list(range(23)) + [100 + k for k in range(4)]  # patches, then class tokens
    sequence = [source[i] for i in layout.gather_index()]
    assert [sequence[p] for p in layout.cls_positions] == [100, 101, 102, 103]
    assert [v for v in sequence if v < 100] == list(range(23))


def test_regroup_index_moves_patches_and_places_fused_tokens():
    source, target = interleave_layout(40, 8), interleave_layout(40, 2)
    sequence = [("patch", i) for i in range(40)]
    for k, position in enumerate(source.cls_positions):
        sequence.insert(position, ("cls", k))
    extended = sequence + [("fused", 0), ("fused", 1)]
    regrouped = [extended[i] for i in regroup_index(source, target)]
    assert [regrouped[p] for p in target.cls_positions] == [("fused", 0), ("fused", 1)]
    assert [t for t in regrouped if t[0] == "patch"] == [("patch", i) for i in range(40)]
    assert not any(t[0] == "cls" for t in regrouped)


def test_model_precomputes_the_layouts_of_every_branch():
    model = build_model("reidmamba_tiny", depth=2, img_size=(384, 128), stride=12)
    assert model.cls_index_0.tolist() == list(range(23, 288, 24))
    assert model.cls_index_1.tolist() == [44, 89, 134, 179, 224, 269]
    assert model.cls_index_2.tolist() == [77, 155, 233]


def test_model_regroup_max_pools_consecutive_class_tokens():
    torch.manual_seed(0)
    model = build_model("reidmamba_tiny", depth=2, img_size=(64, 32), num_cls_tokens=4)
    stream = torch.randn(2, model.interleave_index.numel(), model.config.dim)
    base = model.layouts[0]
    cls_tokens = stream[:, list(base.cls_positions)]
    for b, expected_groups in ((1, [[0, 1], [2, 3]]), (2, [[0, 1, 2, 3]])):
        regrouped = model._regroup(stream, model.branches[b], b)
        layout = model.layouts[b]
        for k, group in enumerate(expected_groups):
            expected = cls_tokens[:, group].amax(dim=1)
            torch.testing.assert_close(regrouped[:, layout.cls_positions[k]], expected, rtol=0, atol=0)
        patches = regrouped[:, list(layout.patch_positions)]
        torch.testing.assert_close(patches, stream[:, list(base.patch_positions)], rtol=0, atol=0)


@pytest.mark.parametrize("img_size", [(8, 8), (16, 4)])
def test_too_small_images_are_refused(img_size):
    with pytest.raises(ValueError):
        patch_grid(img_size, 16, 16)
