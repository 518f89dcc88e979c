"""A torch Dataset over ReID samples: (image tensor, pid, camid)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from reidcam.errors import DataError
from reidcam.reid.data.datasets import ReIDSample


def read_rgb(path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error


class ImageDataset(Dataset):
    """Loads each sample's image as RGB and applies ``transform``."""

    def __init__(self, samples: Sequence[ReIDSample], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    @property
    def pids(self) -> list[int]:
        return [sample.pid for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        return self.transform(read_rgb(sample.path)), sample.pid, sample.camid
