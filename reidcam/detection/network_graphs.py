"""The detector's network as CUDA graphs, one per input shape.

Why: in the main job on 16 cameras, a third of the main thread's time was spent inside the ~60 cuDNN
convolution launches of each YOLOv8n forward, while the GPU waited (py-spy, BENCHMARKS.md, session 6).
A graph replays all of a forward's kernels with one launch.

A shape is run eagerly the first time it is seen (the warm-up capture needs: cuDNN picks its algorithms,
Ultralytics builds its anchors) and captured the second time; from then on it is replayed. Where a graph
of more images of the same size exists, the first sight replays it instead, padded: the GPU then works on
the missing images too, where a first eager forward at a new batch size costs the host tens of
milliseconds (cuDNN's algorithm search). A step's batch is whatever frames the cameras have ready, so its
size varies at a run's start and end, and wherever cameras' clocks or frame rates differ. Ultralytics'
Detect head caches its anchors for the last input shape and builds them from CPU tensors, which a capture
cannot do: a capture therefore follows an eager run at its shape, and its record keeps the anchors that
run made, so that a later shape's anchors never take their memory while the graph reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from reidcam.errors import first_line

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8  # input shapes captured; any further shape runs eagerly


@dataclass(frozen=True)
class _Graphed:
    """One captured forward: the input is copied into its buffer, then replayed."""

    images: torch.Tensor
    prediction: torch.Tensor
    graph: torch.cuda.CUDAGraph
    constants: tuple[torch.Tensor, ...]  # tensors the graph reads but did not allocate (the anchors)

    @property
    def batch(self) -> int:
        return self.images.shape[0]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The network's prediction for ``images`` (as many as the graph takes, or fewer: the rest of its input
        holds earlier images, whose predictions are left out); valid until the next replay of this graph."""
        count = images.shape[0]
        self.images[:count].copy_(images)
        self.graph.replay()
        return self.prediction[:count]


class GraphedNetwork:
    """Calls ``network`` (an Ultralytics AutoBackend on CUDA) on a batch and returns its prediction tensor,
    replaying a CUDA graph per input shape; ``stream`` is the detector's own stream, where captures run."""

    def __init__(self, network: torch.nn.Module, stream: torch.cuda.Stream) -> None:
        self._network = network
        self._stream = stream
        self._heads = detect_heads(network)
        self._seen: set[tuple[int, ...]] = set()
        self._graphs: dict[tuple[int, ...], _Graphed] = {}
        self._refused: set[tuple[int, ...]] = set()  # shapes whose capture failed: they run eagerly

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(images.shape)
        graphed = self._graphs.get(shape)
        if graphed is None and self._capturable(shape):
            graphed = self._try_capture(images)
        if graphed is None:
            graphed = self._padded_graph(shape)
            self._seen.add(shape)
        if graphed is not None:
            return graphed.run(images)
        return prediction_of(self._network(images))

    def _padded_graph(self, shape: tuple[int, ...]) -> _Graphed | None:
        """The captured graph for the fewest images more than this batch has, of the same image size."""
        larger = [graphed for key, graphed in self._graphs.items() if key[1:] == shape[1:] and key[0] > shape[0]]
        return min(larger, key=lambda graphed: graphed.batch, default=None)

    def _capturable(self, shape: tuple[int, ...]) -> bool:
        return shape in self._seen and shape not in self._refused and len(self._graphs) < MAX_GRAPHS and bool(
            self._heads)

    def _try_capture(self, images: torch.Tensor) -> _Graphed | None:
        shape = tuple(images.shape)
        try:
            graphed = self._graphs[shape] = self._capture(images)
            return graphed
        except RuntimeError as error:  # a network the capture cannot take: this shape stays eager
            self._refused.add(shape)
            logger.warning("detector input %s runs without a CUDA graph (%s)", shape, first_line(error))
            return None

    def _capture(self, images: torch.Tensor) -> _Graphed:
        buffer = images.clone()
        self._network(buffer)  # the heads' anchors for this shape, made eagerly
        constants = tuple(t for head in self._heads for t in (head.anchors, head.strides) if torch.is_tensor(t))
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread (ReID, with detector.overlap) may allocate on the GPU meanwhile
        with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
            prediction = prediction_of(self._network(buffer))
        logger.debug("detector graph captured for input %s", tuple(images.shape))
        return _Graphed(buffer, prediction, graph, constants)


def detect_heads(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The Detect heads of an AutoBackend's model (Ultralytics 8.4 keeps it in ``backend.model``, which is
    not a submodule; earlier versions in ``model``). None found: nothing is captured."""
    from ultralytics.nn.modules.head import Detect

    places = [network, getattr(network, "model", None), getattr(getattr(network, "backend", None), "model", None)]
    heads = {id(m): m for place in places if isinstance(place, torch.nn.Module) for m in place.modules()
             if isinstance(m, Detect)}
    return list(heads.values())


def prediction_of(output) -> torch.Tensor:
    """The prediction tensor of a network's output (some heads also return their feature maps)."""
    return output[0] if isinstance(output, (list, tuple)) else output
