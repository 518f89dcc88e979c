"""Turning a ``--device`` value into a torch device, the same way for every command."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from reidcam.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if there is one, else the CPU; ``cuda`` is ``cuda:<local_rank>``.

    A named device that does not exist here (``cuda`` without a GPU, a misspelt name) is a
    ``ConfigError``. Torch is imported here, not at module level, so the CLI stays light.
    """
    import torch

    requested = requested.strip().lower()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def device_index(device: torch.device) -> int:
    """The CUDA device's index; for a bare ``cuda``, the current device's."""
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def urgent_stream(device: torch.device) -> torch.cuda.Stream:
    """A CUDA stream whose kernels the GPU runs before those of PyTorch's ordinary streams (priority 0, the
    lowest): for work the host is about to wait for, beside work it reads only later."""
    import torch

    return torch.cuda.Stream(device, priority=-1)


def on_stream(stream: torch.cuda.Stream | None) -> AbstractContextManager:
    """``torch.cuda.stream(stream)``, or nothing for None (a CPU device, or no stream of its own)."""
    import torch

    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
