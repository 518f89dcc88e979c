"""Fused kernels for the bidirectional Mamba mixer core (Triton, and the forward scan in CUDA): the
"triton" scan backend.

Importing this package registers ``triton`` with :func:`reidcam.reid.model.scan.register_backend`
(the scan module imports it lazily when that backend is asked for; it raises ImportError where
Triton is not installed, which the registry treats as "not available").

It is the default on CUDA tensors (``REIDCAM_SCAN=auto``); ``REIDCAM_SCAN=triton`` or
``model.set_scan_backend("triton")`` asks for it. On the CPU it runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which the tests use.
"""

from reidcam.reid.model.kernels.mixer_core import bidirectional_mixer_core_triton
from reidcam.reid.model.scan import register_backend

register_backend("triton", bidirectional_mixer_core_triton)

__all__ = ["bidirectional_mixer_core_triton"]
