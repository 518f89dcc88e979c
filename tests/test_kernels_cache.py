"""The disk cache of NVRTC's compiles (kernels/kernel_cache.py, used by cuda_scan.compile_source).

Real compiles for sm_90 on this machine (skipped where no NVRTC is found), of a one-kernel source and of the conv
forward; NVRTC's compile calls are counted, so a hit is shown to run none. Each test has its own cache folder.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from pathlib import Path

import pytest

from reidcam.reid.model.kernels import cuda_scan, kernel_cache

SOURCE = """extern "C" __global__ void scale(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= REIDCAM_SCALE;
}
"""


class CountingNvrtc:
    """libnvrtc with its nvrtcCompileProgram calls counted."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._library = library
        self.compiles = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        function = getattr(self._library, name)
        if name != "nvrtcCompileProgram":
            return function

        def counted(*args):
            with self._lock:
                self.compiles += 1
            return function(*args)

        return counted


@pytest.fixture
def nvrtc(monkeypatch) -> CountingNvrtc:
    try:
        counting = CountingNvrtc(cuda_scan._nvrtc_library())
    except cuda_scan.CudaKernelUnavailable as error:
        pytest.skip(str(error))
    monkeypatch.setattr(cuda_scan, "_nvrtc_library", lambda: counting)
    return counting


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("REIDCAM_KERNEL_CACHE", str(folder))
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "scale.cu"
    path.write_text(SOURCE)
    return path


def compile_scale(source: Path, arch: int = 90, scale: int = 2) -> cuda_scan.CompiledSource:
    return cuda_scan.compile_source(source, arch, {"REIDCAM_SCALE": scale})


def same_compile(a: cuda_scan.CompiledSource, b: cuda_scan.CompiledSource) -> bool:
    """The same cubin and log but for ptxas' "Compile time = ... ms" lines: two real compiles differ only there."""
    return a.cubin == b.cubin and re.sub(r"Compile time = .*", "", a.log) == re.sub(r"Compile time = .*", "", b.log)


def entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_second_compile_is_a_hit_that_runs_no_nvrtc_compile(nvrtc, cache, source):
    first = compile_scale(source)
    assert nvrtc.compiles == 1
    assert [p.suffix for p in entries(cache)] == [".bin"]
    assert "Compiling entry function 'scale'" in first.log  # ptxas' report, stored with the cubin
    second = compile_scale(source)
    assert nvrtc.compiles == 1
    assert second == first


def test_another_define_arch_or_source_is_a_miss(nvrtc, cache, source):
    first = compile_scale(source)
    assert compile_scale(source, scale=3).cubin != first.cubin
    assert compile_scale(source, arch=80).cubin != first.cubin
    source.write_text(SOURCE.replace("*=", "+="))
    assert compile_scale(source).cubin != first.cubin
    assert nvrtc.compiles == 4
    assert len(entries(cache)) == 4


def test_the_key_covers_every_input():
    base = dict(source=b"src", name="a.cu", options=["--gpu-architecture=sm_90", "-DX=1"], nvrtc_version=(13, 0))
    keys = {kernel_cache.key(**base)}
    for change in ({"source": b"src2"}, {"name": "b.cu"}, {"options": ["--gpu-architecture=sm_80", "-DX=1"]},
                   {"options": ["--gpu-architecture=sm_90", "-DX=2"]}, {"nvrtc_version": (13, 1)}):
        keys.add(kernel_cache.key(**{**base, **change}))
    assert len(keys) == 6
    assert kernel_cache.key(**base) == kernel_cache.key(**base)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256))


def _flip_a_cubin_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[kernel_cache._HEADER.size + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _garble, _flip_a_cubin_byte, _empty])
def test_a_damaged_entry_is_compiled_again_and_repaired(nvrtc, cache, source, damage, caplog):
    first = compile_scale(source)
    [entry] = entries(cache)
    damage(entry)
    with caplog.at_level(logging.WARNING, logger=kernel_cache.__name__):
        again = compile_scale(source)
    assert same_compile(again, first)
    assert nvrtc.compiles == 2
    assert "damaged entry" in caplog.text
    assert kernel_cache._read(entry) == again and entries(cache) == [entry]  # repaired: the new compile's entry
    assert compile_scale(source) == again and nvrtc.compiles == 2


def test_an_unreadable_entry_compiles_without_the_cache(nvrtc, cache, source, caplog):
    first = compile_scale(source)
    [entry] = entries(cache)
    entry.unlink()
    entry.mkdir()  # reading it fails, and so does replacing it
    with caplog.at_level(logging.WARNING, logger=kernel_cache.__name__):
        assert same_compile(compile_scale(source), first)
    assert nvrtc.compiles == 2
    assert "cannot read" in caplog.text and "cannot write" in caplog.text
    assert entries(cache) == [entry]  # no temporary file left behind


def test_off_writes_nothing(nvrtc, source, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("REIDCAM_KERNEL_CACHE", "off")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    assert kernel_cache.cache_dir() is None
    assert same_compile(compile_scale(source), compile_scale(source))
    assert nvrtc.compiles == 2
    assert not home.exists()


def test_an_unwritable_folder_still_compiles_and_warns_once(nvrtc, source, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("REIDCAM_KERNEL_CACHE", str(blocker / "kernels"))  # mkdir fails, even for root
    with caplog.at_level(logging.WARNING, logger=kernel_cache.__name__):
        assert same_compile(compile_scale(source), compile_scale(source))
    assert nvrtc.compiles == 2
    assert [r.message.startswith("kernel cache: cannot write") for r in caplog.records] == [True]


def test_a_denied_rename_leaves_no_temporary_file(nvrtc, cache, source, monkeypatch, caplog):
    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(kernel_cache.os, "replace", denied)
    with caplog.at_level(logging.WARNING, logger=kernel_cache.__name__):
        compiled = compile_scale(source)
    assert compiled.cubin and "cannot write" in caplog.text
    assert entries(cache) == []


def test_concurrent_compiles_of_one_kernel_leave_one_whole_entry(nvrtc, cache, source):
    results: list[cuda_scan.CompiledSource] = []
    threads = [threading.Thread(target=lambda: results.append(compile_scale(source))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len({r.cubin for r in results}) == 1
    [entry] = entries(cache)
    assert kernel_cache._read(entry) in results  # one compile's whole entry, the last to be renamed into place


def test_a_compile_without_ptxas_report_is_not_stored(cache):
    """An empty log is NVRTC's own cache answering: stored, it would serve no report to every later process."""
    compiled = kernel_cache.CompiledSource(cubin=b"cubin", log="")
    assert kernel_cache.cached("0" * 64, lambda: compiled) is compiled
    assert entries(cache) == []


def test_the_folder_defaults_to_the_xdg_cache_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("REIDCAM_KERNEL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache.cache_dir() == tmp_path / "xdg" / "reidcam" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec says to ignore it
    assert kernel_cache.cache_dir() == tmp_path / "home" / ".cache" / "reidcam" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernel_cache.cache_dir() == tmp_path / "home" / ".cache" / "reidcam" / "kernels"
    monkeypatch.setenv("REIDCAM_KERNEL_CACHE", "~/kernels")
    assert kernel_cache.cache_dir() == tmp_path / "home" / "kernels"
    monkeypatch.setenv("REIDCAM_KERNEL_CACHE", "OFF")
    assert kernel_cache.cache_dir() is None


def test_the_conv_forward_loads_from_the_cache_with_its_report(nvrtc, cache):
    """The real kernel path: CudaConv's compile, then a new CudaConv (as a new process would make) hits."""
    first = cuda_scan.CudaConv().compile(90)
    assert nvrtc.compiles == 1
    second = cuda_scan.CudaConv().compile(90)
    assert nvrtc.compiles == 1
    assert second.cubin == first.cubin and second.log == first.log
    assert "Used" in second.log and "registers" in second.log
