"""For the test modules that run Triton's kernels in its CPU interpreter.

The interpreter must be chosen before Triton is first imported: conftest chooses it (TRITON_INTERPRET=1) unless the
environment says otherwise. A session that compiles Triton kernels (TRITON_INTERPRET=0 on a GPU machine) skips
these modules: setting the variable in them, at collection, turned every Triton kernel of that session's other
modules into the interpreter.
"""

from __future__ import annotations

import os

import pytest


def require_interpreter() -> None:
    """Skip the calling module unless this session interprets Triton's kernels."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's CPU interpreter: needs TRITON_INTERPRET=1 from the session's start (conftest's "
                    "default)", allow_module_level=True)
