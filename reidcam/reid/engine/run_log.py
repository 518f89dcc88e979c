"""What a training run leaves behind besides weights: OUT/log.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_scalars(f"{prefix}{key}/", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class RunLog:
    """Appends one JSON object per epoch to ``log.jsonl`` and mirrors the numbers to TensorBoard."""

    def __init__(self, output: Path, tensorboard: bool = True) -> None:
        self.path = output / "log.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(output / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; writing log.jsonl only")

    def iteration(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in _scalars("iter/", values).items():
                self.writer.add_scalar(key, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.writer is not None:
            epoch = int(record["epoch"])
            for key, value in _scalars("", {k: v for k, v in record.items() if k != "epoch"}).items():
                self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
