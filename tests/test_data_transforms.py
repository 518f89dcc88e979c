"""The recipe's train and test transforms."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from reidcam.reid.data import IMAGENET_MEAN, IMAGENET_STD, CameraLook, build_test_transform, build_train_transform


def test_train_transform_follows_the_recipe():
    steps = build_train_transform((256, 128)).transforms
    assert [type(s) for s in steps] == [T.Resize, T.Pad, T.RandomCrop, T.RandomHorizontalFlip,
                                         T.ToTensor, T.Normalize, T.RandomErasing]
    resize, pad, crop, flip, _, normalize, erasing = steps
    assert resize.size == (256, 128) and resize.interpolation == T.InterpolationMode.BICUBIC
    assert pad.padding == 10 and crop.size == (256, 128) and flip.p == 0.5
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD
    assert (erasing.p, erasing.scale, erasing.ratio, erasing.value) == (0.5, (0.02, 0.4), (0.3, 3.33), "random")


def test_test_transform_resizes_and_normalises():
    image = Image.new("RGB", (40, 90), (255, 0, 128))
    tensor = build_test_transform((64, 32))(image)
    assert tensor.shape == (3, 64, 32)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_train_transform_without_randomness_equals_test_transform():
    pixels = np.random.default_rng(0).integers(0, 256, (90, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    quiet = build_train_transform((64, 32), pad=0, flip_p=0.0, erasing_p=0.0)
    torch.testing.assert_close(quiet(image), build_test_transform((64, 32))(image))


def test_train_transform_augments():
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 64, 3), dtype=np.uint8))
    transform = build_train_transform((128, 64))
    outputs = [transform(image) for _ in range(4)]
    assert all(o.shape == (3, 128, 64) for o in outputs)
    assert not torch.equal(outputs[0], outputs[1])


def test_camera_look_is_off_in_the_recipe_and_inserted_before_the_crop_when_on():
    assert CameraLook().transforms((256, 128)) == []
    steps = build_train_transform((128, 64), look=CameraLook(jitter=0.4, blur_p=0.5, lowres_p=0.5)).transforms
    names = [type(s).__name__ for s in steps]
    assert names[:5] == ["Resize", "RandomLowResolution", "ColorJitter", "RandomApply", "Pad"]


def test_camera_look_changes_colour_and_sharpness_but_not_the_size():
    torch.manual_seed(0)
    pixels = np.random.default_rng(2).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    look = CameraLook(jitter=0.5, blur_p=1.0, lowres_p=1.0)
    plain = build_train_transform((128, 64), pad=0, flip_p=0.0, erasing_p=0.0)(image)
    looked = build_train_transform((128, 64), pad=0, flip_p=0.0, erasing_p=0.0, look=look)(image)
    assert looked.shape == plain.shape
    # blur and low resolution remove fine detail: neighbouring pixels differ less than in the original
    def roughness(t):
        return (t[:, 1:, :] - t[:, :-1, :]).abs().mean()
    assert roughness(looked) < 0.5 * roughness(plain)


def test_low_resolution_keeps_the_size_and_smooths():
    from reidcam.reid.data.transforms import RandomLowResolution

    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    out = RandomLowResolution((64, 32), p=1.0, min_scale=0.25)(image)
    assert out.size == image.size
    assert RandomLowResolution((64, 32), p=0.0)(image) is image
