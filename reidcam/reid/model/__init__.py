"""The ReIDMamba network: selective-scan backends, bidirectional Mamba blocks, MGFE heads.

Public entry points: :func:`build_model`, :class:`ReIDMambaConfig`, :class:`ReIDOutput`, and
the checkpoint helpers in :mod:`reidcam.reid.model.checkpoint`.
"""

from reidcam.reid.model.reidmamba import PRESETS, ReIDMamba, ReIDMambaConfig, ReIDOutput, build_model

__all__ = ["PRESETS", "ReIDMamba", "ReIDMambaConfig", "ReIDOutput", "build_model"]
