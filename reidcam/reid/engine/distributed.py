"""torchrun / DistributedDataParallel plumbing: one process per device, rank 0 writes files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from reidcam.devices import resolve_device

log = logging.getLogger(__name__)

PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(requested_device: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group when started by torchrun (nccl on GPUs, gloo on the CPU)."""
    if not launched_by_torchrun():
        return DistributedContext(), resolve_device(requested_device)
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates alone while the others wait at a barrier: allow a long evaluation.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    log.info("distributed: rank %d/%d on %s", rank, world_size, device)
    return DistributedContext(rank, local_rank, world_size, True), device


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def average_across_processes(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise mean over ranks (identity when not distributed)."""
    if not context.enabled:
        return values
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / context.world_size
