"""Image transforms of the ReIDMamba recipe (torchvision v1 API, which both torchvision majors keep)."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_train_transform(
    img_size: Sequence[int],
    pad: int = 10,
    flip_p: float = 0.5,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Bicubic resize, pad + random crop, horizontal flip, normalise, random erasing (random fill)."""
    height, width = img_size
    return T.Compose([
        T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
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
