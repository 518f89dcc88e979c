"""Fused kernels for the bidirectional Mamba mixer core (Triton, and the forward scan in CUDA): the
"triton" scan backend.

Importing this package registers ``triton`` (and its packed entry point, which the model calls with
in_proj's output whole) with :func:`reidcam.reid.model.scan.register_backend`
(the scan module imports it lazily when that backend is asked for; it raises ImportError where
Triton is not installed, which the registry treats as "not available").

It is the default on CUDA tensors (``REIDCAM_SCAN=auto``); ``REIDCAM_SCAN=triton`` or
``model.set_scan_backend("triton")`` asks for it. On the CPU it runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which the tests use.

``with weight_memo(WeightTableMemo()):`` keeps the weight-derived tables from one forward to the next,
for weights that the scope's owner keeps frozen (mixer_core.py says why it is opt-in); code that must
run where Triton is missing uses the wrappers of the same names in reidcam.reid.model.scan.
"""

from reidcam.reid.model.kernels.mixer_core import (
    WeightTableMemo, bidirectional_mixer_core_triton, bidirectional_mixer_core_triton_packed, weight_memo,
)
from reidcam.reid.model.scan import register_backend

register_backend("triton", bidirectional_mixer_core_triton, packed=bidirectional_mixer_core_triton_packed)

__all__ = [
    "WeightTableMemo", "bidirectional_mixer_core_triton", "bidirectional_mixer_core_triton_packed", "weight_memo",
]
