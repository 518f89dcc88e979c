"""Training progress for a person: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


class EpochProgress:
    """Shows iteration, loss and images/s; silent on non-main ranks."""

    def __init__(self, enabled: bool, log_every: int) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.bar = None
        self.task = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=False,
            )
            self.bar.start()

    def start_epoch(self, epoch: int, epochs: int, iterations: int) -> None:
        self.epoch, self.epochs, self.iterations = epoch, epochs, iterations
        if self.bar is not None:
            self.task = self.bar.add_task(f"epoch {epoch}/{epochs}", total=iterations, status="")

    def wants_values(self, step: int) -> bool:
        """Whether ``update`` at ``step`` (1-based) should be given the loss (costs a device sync)."""
        return self.enabled and (step % self.log_every == 0 or step == self.iterations)

    def update(self, step: int, loss: float | None, lr: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        status = f"loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.0f} img/s" if loss is not None else None
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"status": status} if status else {}))
        elif status is not None:
            log.info("epoch %d/%d iter %d/%d %s", self.epoch, self.epochs, step, self.iterations, status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
