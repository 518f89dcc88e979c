"""A ReID embedder from an ONNX model (for baselines such as OSNet), with the ``Embedder`` interface.

The model takes float [N, 3, H, W] RGB crops normalised with the ImageNet mean and std and
returns [N, D] features; the input size is read from the model (256x128 where it is dynamic).
Models exported with a fixed batch dimension are run crop by crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from reidcam.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_SIZE = (256, 128)


class OnnxEmbedder:
    """Crops (BGR uint8) in, L2-normalised float32 embeddings out, through onnxruntime."""

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        batch_size: int = 64,
        img_size: tuple[int, int] | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                "reid.model is an ONNX file but onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        if not Path(path).is_file():
            raise ConfigError(f"reid.model: ONNX model not found: {path}")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise ConfigError(f"reid.model: cannot load ONNX model {path}: {str(error).splitlines()[0]}") from None
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        batch, _, height, width = model_input.shape
        self.img_size = img_size or (
            (height, width) if isinstance(height, int) and isinstance(width, int) else DEFAULT_SIZE
        )
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else batch_size
        self.embed_dim = int(self._session.get_outputs()[0].shape[-1])

    def embed(self, crops: Sequence[np.ndarray], camera_indices: Sequence[int] | None = None) -> np.ndarray:
        """``camera_indices`` is accepted for interface parity and ignored (the model has no camera input)."""
        if len(crops) == 0:
            return np.empty((0, self.embed_dim), dtype=np.float32)
        batch = np.stack([self._prepare(crop) for crop in crops])
        outputs = [
            self._session.run(None, {self._input_name: batch[start : start + self.batch_size]})[0]
            for start in range(0, len(batch), self.batch_size)
        ]
        features = np.concatenate(outputs).astype(np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)

    def _prepare(self, crop: np.ndarray) -> np.ndarray:
        height, width = self.img_size
        resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
