"""A disk cache of NVRTC's compiles (cuda_scan.compile_source): each GPU process would otherwise spend several
seconds of CPU compiling the same four .cu files at its start.

``REIDCAM_KERNEL_CACHE`` names the folder, or ``off``; the default is ``$XDG_CACHE_HOME/reidcam/kernels``, else
``~/.cache/reidcam/kernels``. An entry is keyed by the sha256 of everything that decides the cubin (``key``) and
holds the cubin and NVRTC's log, ptxas' register and spill report included, so a hit returns what the compile
returned. The cache only ever saves time: an entry that is truncated, garbled or unreadable is compiled again and
rewritten, and a folder that cannot be written leaves every compile running as without the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FORMAT = 1  # of the entries and of the key: a change leaves every older entry unused
# an entry: magic, FORMAT, the cubin's and the log's lengths, the sha256 of both; then the cubin, then the log
_HEADER = struct.Struct("<8sIQQ32s")
_MAGIC = b"RCKERNEL"
_warned_unwritable: set[Path] = set()  # a folder that could not be written is logged once per process


@dataclass(frozen=True)
class CompiledSource:
    cubin: bytes
    # NVRTC's log: ptxas' register and spill report, kept by this cache; absent on a hit of NVRTC's own in-process
    # cache (CUDA_CACHE_DISABLE=1 turns that one off)
    log: str


def cache_dir() -> Path | None:
    """The folder of ``REIDCAM_KERNEL_CACHE`` (read at each call), or None where it is ``off``."""
    value = os.environ.get("REIDCAM_KERNEL_CACHE", "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    try:
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores a relative one
    except RuntimeError:  # no home directory to be found
        return None
    return base / "reidcam" / "kernels"


def key(source: bytes, name: str, options: Sequence[str], nvrtc_version: tuple[int, int]) -> str:
    """sha256 of a compile's inputs: the source, its name (NVRTC's messages quote it), every NVRTC option, NVRTC's
    version and this cache's FORMAT."""
    inputs = json.dumps([FORMAT, list(nvrtc_version), name, list(options)]).encode()
    return hashlib.sha256(inputs + b"\0" + source).hexdigest()  # JSON holds no NUL: the split is unambiguous


def cached(entry_key: str, compile_fn: Callable[[], CompiledSource]) -> CompiledSource:
    """The entry of ``entry_key``, else ``compile_fn()``, stored under it. Compile errors propagate and are not
    stored."""
    folder = cache_dir()
    if folder is None:
        return compile_fn()
    path = folder / f"{entry_key}.bin"
    hit = _read(path)
    if hit is not None:
        logger.debug("kernel cache hit: %s", path)
        return hit
    compiled = compile_fn()
    # ptxas -v always reports, so an empty log means NVRTC answered from its own in-process cache without running
    # ptxas: storing it would serve a log without the report to every later process
    if compiled.log:
        _write(folder, path, compiled)
    return compiled


def _read(path: Path) -> CompiledSource | None:
    """The entry at ``path``; None where there is none, or (with a warning) where it is unreadable or damaged."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no entry, or no folder (_write tells of that once)
        return None
    except OSError as error:
        logger.warning("kernel cache: cannot read %s (%s); compiling again", path, error)
        return None
    if len(data) >= _HEADER.size:
        magic, version, cubin_size, log_size, digest = _HEADER.unpack_from(data)
        payload = data[_HEADER.size:]
        if (magic, version) == (_MAGIC, FORMAT) and len(payload) == cubin_size + log_size \
                and hashlib.sha256(payload).digest() == digest:
            return CompiledSource(cubin=payload[:cubin_size], log=payload[cubin_size:].decode(errors="replace"))
    logger.warning("kernel cache: damaged entry %s (%d bytes); compiling again", path, len(data))
    return None


def _write(folder: Path, path: Path, compiled: CompiledSource) -> None:
    """Writes the entry to a temporary file of the same folder and renames it into place: a reader, or a process
    compiling the same kernels at the same time, sees the whole entry or none. There is no fsync: what a power
    loss could leave torn, _read's checksum turns away. Failing, logs once per folder."""
    log = compiled.log.encode()
    payload = compiled.cubin + log
    data = _HEADER.pack(_MAGIC, FORMAT, len(compiled.cubin), len(log), hashlib.sha256(payload).digest()) + payload
    temporary = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.stem[:16]}-", suffix=".tmp")
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the entry from a shared folder's other users
            file.write(data)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if folder not in _warned_unwritable:
            _warned_unwritable.add(folder)
            logger.warning("kernel cache: cannot write %s (%s); the CUDA kernels compile at every start "
                           "(REIDCAM_KERNEL_CACHE names another folder, or off)", folder, error)
