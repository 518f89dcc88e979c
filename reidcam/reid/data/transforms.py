"""Image transforms of the ReIDMamba recipe (torchvision v1 API, which both torchvision majors keep)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CameraLook:
    """Random changes of how a camera renders a person: colour, sharpness, resolution.

    Not part of the published recipe (all zero there). On footage from a few cameras the network
    otherwise learns each camera's look instead of the person: with these on, the look stops
    telling identities apart within a batch. ``jitter`` scales brightness, contrast and saturation
    changes (hue gets a fifth of it); ``blur_p`` is the chance of a Gaussian blur (sigma 0.1-2);
    ``lowres_p`` the chance of a down-and-up-scale to between a quarter and all of the size.
    """

    jitter: float = 0.0
    blur_p: float = 0.0
    lowres_p: float = 0.0

    def transforms(self, img_size: Sequence[int]) -> list:
        steps: list = []
        if self.lowres_p > 0:
            steps.append(RandomLowResolution(img_size, p=self.lowres_p))
        if self.jitter > 0:
            j = self.jitter
            steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 5)))
        if self.blur_p > 0:
            steps.append(T.RandomApply([T.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=self.blur_p))
        return steps


class RandomLowResolution:
    """With probability p, shrink the image by a random factor in [min_scale, 1] and scale it back."""

    def __init__(self, size: Sequence[int], p: float, min_scale: float = 0.25) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.p = p
        self.min_scale = min_scale

    def __call__(self, image):
        if torch.rand(()) >= self.p:
            return image
        scale = float(torch.empty(()).uniform_(self.min_scale, 1.0))
        small = (max(4, round(self.size[0] * scale)), max(2, round(self.size[1] * scale)))
        image = T.functional.resize(image, list(small), interpolation=InterpolationMode.BILINEAR)
        return T.functional.resize(image, list(self.size), interpolation=InterpolationMode.BICUBIC)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, min_scale={self.min_scale})"


def build_train_transform(
    img_size: Sequence[int],
    pad: int = 10,
    flip_p: float = 0.5,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    look: CameraLook = CameraLook(),
) -> T.Compose:
    """Bicubic resize, [camera look], pad + random crop, horizontal flip, normalise, random erasing."""
    height, width = img_size
    return T.Compose([
        T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
        *look.transforms(img_size),
        T.Pad(pad, fill=0, padding_mode="constant"),
        T.RandomCrop((height, width)),
        T.RandomHorizontalFlip(p=flip_p),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
        T.RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 3.33), value="random"),
    ])


def build_test_transform(
    img_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Bicubic resize and normalise."""
    height, width = img_size
    return T.Compose([
        T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
    ])
