"""A training step's forward, loss and backward replayed as one CUDA graph.

ReIDMamba's step launches about 2,000 kernels, most of them small: on an H200 the GPU was busy for
46 ms of an 82 ms eager step at batch 64 (BENCHMARKS.md, session 8), the rest waiting for Python to
launch the next kernel. A graph launches them all at once. The optimizer's step, gradient clipping and
the learning-rate schedule stay eager: they are a few multi-tensor kernels, and the learning rate
changes every iteration.

How it works (the "whole network" capture of PyTorch's CUDA-graph notes): the first ``warmup`` calls run
eagerly (the kernels compile, the autotuners pick their tiles, cuDNN and cuBLAS choose algorithms); the
next call copies its batch into static input tensors and captures ``body`` with every parameter's
gradient unset, so that the captured backward writes the gradients into the graph's own memory. Each
later call copies its batch in and replays. Between replays nothing may unset the gradients (an eager
``zero_grad(set_to_none=True)`` would detach them from the memory the graph writes), and the values
``body`` returns live in the graph's memory until the next replay, so the step returns a copy.

``body`` must have no host synchronisation and no data-dependent shapes (no ``.item()``, no boolean
indexing): reidcam's model and losses are written so (``losses/triplet.py`` says how). A batch of another
shape than the captured one runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

StepBody = Callable[..., torch.Tensor]


class GraphedStep:
    """``step(*inputs)`` unsets the gradients and runs ``body(*inputs)`` (forward, loss, backward; returns a
    tensor to report): eagerly for the first ``warmup`` calls, then as a CUDA graph captured on the next.
    With ``enabled`` False every call is eager."""

    def __init__(
        self, body: StepBody, parameters: Sequence[torch.nn.Parameter], enabled: bool = True, warmup: int = 3
    ) -> None:
        self.body = body
        self.parameters = list(parameters)
        self.enabled = enabled
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: list[torch.Tensor] = []
        self._static_output: torch.Tensor | None = None
        self._warned_shape = False

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.enabled or (self.graph is None and self.calls <= self.warmup):
            return self._eager(inputs)
        if self.graph is None:
            self._capture(inputs)
        elif not self._matches(inputs):
            return self._eager(inputs)
        for static, value in zip(self._static_inputs, inputs):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self._static_output.clone()

    def _eager(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for parameter in self.parameters:
            parameter.grad = None
        return self.body(*inputs)

    def _matches(self, inputs: Sequence[torch.Tensor]) -> bool:
        same = all(s.shape == v.shape and s.dtype == v.dtype for s, v in zip(self._static_inputs, inputs))
        if not same and not self._warned_shape:
            log.info("a batch of another shape than the captured step's runs eagerly")
            self._warned_shape = True
        return same

    def _capture(self, inputs: Sequence[torch.Tensor]) -> None:
        self._static_inputs = [value.detach().clone() for value in inputs]
        for parameter in self.parameters:
            parameter.grad = None  # the captured backward allocates them in the graph's memory
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pin-memory thread may allocate page-locked memory meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._static_output = self.body(*self._static_inputs)
        self.graph = graph
        log.info("training step captured as a CUDA graph")


def graphs_usable(device: torch.device, distributed: bool) -> str | None:
    """Why the training step cannot be a CUDA graph here, or None when it can.

    Distributed data parallel overlaps its gradient all-reduce with the backward through hooks that a
    graph would freeze. fp16's loss scaler is no obstacle: it multiplies the loss by a tensor that its
    ``update`` changes in place, and its host-side decision to skip a step comes after the replay.
    """
    if device.type != "cuda":
        return "not on a CUDA device"
    if distributed:
        return "distributed training"
    return None
