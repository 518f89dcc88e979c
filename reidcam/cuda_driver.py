"""The few CUDA driver API calls (libcuda, over ctypes) that reidcam makes beside PyTorch, in PyTorch's context.

Two users: the CUDA kernels compiled at first use (reid/model/kernels/cuda_scan.py loads and launches them)
and the frame upload (detection/upload.py page-locks the decoders' shared rings). The driver API keeps no
"last error" the way the runtime does, so a refused call here never surfaces later as a failure of one of
PyTorch's own kernel launches.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence


class CudaUnavailable(RuntimeError):
    """libcuda could not be loaded, or a driver call failed."""


class CudaDriver:
    """libcuda's calls to load a cubin, launch its kernels and page-lock host memory."""

    HOST_REGISTER_PORTABLE = 0x01  # CU_MEMHOSTREGISTER_PORTABLE: locked for every context, not only the current one
    HOST_ALREADY_REGISTERED = 712  # CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
    NOT_FOUND = 500  # CUDA_ERROR_NOT_FOUND: no kernel of that name in the module
    MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as error:
            raise CudaUnavailable(f"libcuda not found: {error}") from None
        self.lib.cuLaunchKernel.argtypes = [
            ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_uint, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
        ]
        self.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor.argtypes = [
            ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t,
        ]
        self.lib.cuFuncSetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.lib.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        self.lib.cuMemHostUnregister.argtypes = [ctypes.c_void_p]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            message = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(message))
            raise CudaUnavailable(f"CUDA driver {what}: {(message.value or b'error').decode()} ({result})")

    def make_context_current(self, device: int) -> None:
        """PyTorch's (primary) context of the device, current on this thread as the driver API needs."""
        dev = ctypes.c_int()
        self.check(self.lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        context = ctypes.c_void_p()
        self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), dev), "cuDevicePrimaryCtxRetain")
        self.check(self.lib.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    def ensure_context(self, device: int) -> None:
        """Driver calls act in the current context: make it PyTorch's if this thread has none."""
        context = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(context)), "cuCtxGetCurrent")
        if not context.value:
            self.make_context_current(device)

    def load(self, cubin: bytes, names: list[str], optional: Sequence[str] = ()) -> dict[str, ctypes.c_void_p]:
        """The kernels ``names`` of ``cubin``, and those of ``optional`` that it has."""
        module = ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        functions = {}
        for name in [*names, *optional]:
            function = ctypes.c_void_p()
            result = self.lib.cuModuleGetFunction(ctypes.byref(function), module, name.encode())
            if result == self.NOT_FOUND and name in optional:
                continue
            self.check(result, name)
            functions[name] = function
        return functions

    def allow_dynamic_shared(self, function: ctypes.c_void_p, size: int) -> None:
        """Let launches of ``function`` pass up to ``size`` bytes of dynamic shared memory: above 48 KB a launch
        fails without this opt-in."""
        result = self.lib.cuFuncSetAttribute(function, self.MAX_DYNAMIC_SHARED_SIZE_BYTES, size)
        self.check(result, f"cuFuncSetAttribute (dynamic shared memory, {size} bytes)")

    def launch(self, function: ctypes.c_void_p, grid: tuple[int, int], threads: int, args: list, stream: int,
               shared_bytes: int = 0) -> None:
        """``shared_bytes``: the launch's dynamic shared memory (allow_dynamic_shared first where over 48 KB)."""
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        result = self.lib.cuLaunchKernel(function, grid[0], grid[1], 1, threads, 1, 1, shared_bytes, stream, pointers,
                                         None)
        self.check(result, "cuLaunchKernel")

    def max_active_blocks(self, function: ctypes.c_void_p, threads: int) -> int:
        """Blocks of ``threads`` threads of ``function`` that one SM holds at once (its registers, shared memory
        and launch bounds allow)."""
        blocks = ctypes.c_int()
        self.check(self.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(blocks), function, threads, 0),
                   "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        return blocks.value

    def host_register(self, address: int, size: int) -> int:
        """Page-lock ``size`` bytes at ``address`` for every context: 0, or the driver's error code (a refusal is
        an answer here, not an error)."""
        return self.lib.cuMemHostRegister_v2(address, size, self.HOST_REGISTER_PORTABLE)

    def host_unregister(self, address: int) -> int:
        return self.lib.cuMemHostUnregister(address)
