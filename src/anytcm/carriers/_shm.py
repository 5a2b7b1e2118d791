"""The `shm` carrier: every input in its own POSIX shared-memory segment (contract §9).

The request then carries only `SHMReference` items (name, key, offset 0, byte_size, shape,
dtype) and the manager maps the segment itself, so tensors of any size travel without JSON and
without the 64 KiB frame cap. The rules come from the real manager (contract §9):

* **Same machine.** The manager opens ``/dev/shm/<key>`` on *its* host, so the carrier is usable
  only when the manager granted ``shm`` and the connection says it shares this machine's
  ``/dev/shm`` (`CarrierContext.same_host`).
* **Every input, never mixed.** When any input of a request is an SHMReference the manager
  silently drops the inline JSON ones, so this carrier stages all of them.
* **A fresh key per input per request.** With ``allow_transient`` the manager builds a new Triton
  client per request and Triton refuses a second region on a key it has seen
  (``TRITON_SHM_REGISTRATION_FAILED``); a random key never collides. Keys are
  ``/anytcm-<pid>-<random hex>``; the segment is unlinked by `StagedInputs.release()`.
* **Offset 0, byte_size > 0.** Triton registers the region ``byte_size`` long at offset 0 (any
  other offset fails), and the manager refuses ``byte_size == 0``: an empty tensor gets a
  1-byte segment of which Triton reads nothing (0 elements x itemsize).
* **0-d tensors are sent as shape [1]**, like the json carrier: Triton model inputs have at
  least one dimension, and a request must not change shape when it switches carrier.
* **BYTES** use Triton's serialised layout: each element is a 4-byte little-endian length
  followed by its bytes (``str`` elements UTF-8 encoded).

Segments are made with ``os.open(O_CREAT | O_EXCL, 0o600)`` + ``ftruncate`` rather than
`multiprocessing.shared_memory`, whose resource tracker warns about and unlinks segments a
second time. The data is written with ``pwrite`` when the array is C-contiguous and native
(the kernel fills the tmpfs pages directly, where a fresh ``mmap`` page-faults every 4 KiB),
else with one `numpy.copyto` into an ``mmap`` of the segment (strided or byte-swapped arrays,
in a single pass).

While a segment lives, its creator holds a shared ``flock`` on it. `sweep_stale_segments`
removes leftovers of crashed processes (``anytcm-<pid>-*`` whose pid is gone) only when
nobody holds that lock, so it cannot delete the live segment of a process in another PID
namespace (a container sharing ``/dev/shm`` with ``--ipc=host``) whose pid merely looks dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import re
import secrets
import stat
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import numpy as np
import numpy.typing as npt

from .. import wire
from ..errors import InvalidInput
from ..tensors import input_array, numpy_dtype, triton_datatype
from . import SHM_CAPABILITY, CarrierContext, InputTensor, StagedInputs, is_granted

__all__ = (
    "KEY_PREFIX",
    "SHM_DIR",
    "THREAD_THRESHOLD_BYTES",
    "ShmCarrier",
    "ShmStaged",
    "sweep_stale_segments",
)

#: Every segment this carrier creates is ``/dev/shm/anytcm-<pid>-<random hex>``.
KEY_PREFIX: Final = "anytcm-"
SHM_DIR: Final = "/dev/shm"

#: Inputs whose write costs at least this many bytes of ``pwrite`` run on a worker thread, not
#: on the event loop (a strided or byte-swapped array, copied through an mmap, counts double).
#: Below it a thread hop costs about as much as the write it would move; above it the loop
#: would stall for longer than a hop takes.
THREAD_THRESHOLD_BYTES: Final = 512 * 1024
#: BYTES tensors with more elements than this are serialised on a worker thread.
_THREAD_THRESHOLD_ELEMENTS: Final = 4096

_NAME_PATTERN: Final = re.compile(re.escape(KEY_PREFIX) + r"(\d+)-[0-9a-f]+\Z")
_CREATE_FLAGS: Final = os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
_MAP_FLAGS: Final = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
_MAX_WRITE: Final = 1 << 30  # Linux writes at most ~2 GiB per call
_LENGTH: Final = struct.Struct("<I")

# The one piece of module state: the stale sweep runs once per process, on first use.
_swept = False


# -- the stale sweep ---------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could have written: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def sweep_stale_segments() -> int:
    """Unlink ``/dev/shm/anytcm-<pid>-*`` segments left by processes that no longer exist.

    Only names of exactly this carrier's form are considered, only files owned by this user,
    and only when the pid is not alive and no process holds the segment's lock (see the module
    docstring). Never raises for a segment it cannot inspect: it skips it. Returns how many
    segments it removed.
    """
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return 0
    uid = os.getuid()
    removed = 0
    for entry in entries:
        match = _NAME_PATTERN.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if info.st_uid != uid or not stat.S_ISREG(info.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its creator is alive (in another PID namespace)
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
        finally:
            os.close(fd)
    return removed


# -- staged segments ---------------------------------------------------------------------


def _free(segments: list[tuple[str, int]]) -> None:
    """Unlink and close every segment; never raises. The list is emptied as it goes."""
    while segments:
        try:
            path, fd = segments.pop()
        except IndexError:  # emptied concurrently
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.close(fd)  # releases the lock


class ShmStaged:
    """The `StagedInputs` of the shm carrier: its segments live until `release()`.

    `release()` is idempotent, thread-safe and never raises; it also runs if the object is
    garbage-collected unreleased, and at interpreter exit.
    """

    __slots__ = ("__weakref__", "_finalizer", "_items", "_segments")

    def __init__(self) -> None:
        self._items: list[wire.InputItem] = []
        self._segments: list[tuple[str, int]] = []
        self._finalizer = weakref.finalize(self, _free, self._segments)

    @property
    def items(self) -> Sequence[wire.InputItem]:
        return self._items

    @property
    def keys(self) -> list[str]:
        """The shm keys of the staged inputs (``/anytcm-...``)."""
        return [item.shm_key for item in self._items if isinstance(item, wire.SHMReference)]

    def release(self) -> None:
        self._finalizer()  # runs `_free` at most once, whoever calls first


def _new_key() -> str:
    return f"/{KEY_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def _create(key: str, size: int, segments: list[tuple[str, int]]) -> int:
    """Create the segment file, locked and `size` bytes long; recorded in `segments` at once,
    so that a failure from here on unlinks it."""
    path = SHM_DIR + key
    fd = os.open(path, _CREATE_FLAGS, 0o600)
    segments.append((path, fd))
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.ftruncate(fd, size)
    return fd


def _write_numeric(fd: int, array: npt.NDArray[Any]) -> None:
    if array.size == 0:
        return  # the 1-byte segment of an empty tensor holds nothing to read
    if array.flags.c_contiguous and array.dtype.isnative:
        _pwrite_all(fd, array.data.cast("B"))
        return
    with mmap.mmap(fd, array.nbytes, flags=_MAP_FLAGS) as region:
        target: npt.NDArray[Any] = np.ndarray(
            array.shape, dtype=array.dtype.newbyteorder("="), buffer=region
        )
        try:
            np.copyto(target, array)
        finally:
            del target  # the mapping cannot close while a view of it exists


def _pwrite_all(fd: int, data: memoryview) -> None:
    done, total = 0, len(data)
    while done < total:
        done += os.pwrite(fd, data[done : done + _MAX_WRITE], done)


def _serialise_bytes(name: str, array: npt.NDArray[Any]) -> bytes:
    """Triton's BYTES layout: per element, a 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    append = parts.append
    pack = _LENGTH.pack
    for index, item in enumerate(array.ravel().tolist()):
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            try:
                data = item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput(
                    f"input {name!r}: BYTES element {index} is not encodable as UTF-8 "
                    f"({exc.reason}); pass bytes for binary data",
                    expected="str or bytes",
                    given=repr(item[:32]),
                ) from None
        elif isinstance(item, bytearray | memoryview):
            data = bytes(item)
        else:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} is {type(item).__name__}, "
                "expected str or bytes",
                expected="str or bytes",
                given=type(item).__name__,
            )
        if len(data) > 0xFFFFFFFF:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} is {len(data)} bytes; Triton's "
                "serialised layout holds at most 4 GiB - 1 per element",
                expected="< 4 GiB per element",
                given=len(data),
            )
        append(pack(len(data)))
        append(data)
    return b"".join(parts)


def _prepare(tensor: InputTensor) -> tuple[npt.NDArray[Any], str, list[int]]:
    """The array to write, its Triton datatype and the shape to declare; InvalidInput if bad."""
    name = tensor.name
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            f"input names are non-empty strings, got {name!r}",
            expected="non-empty str",
            given=name,
        )
    target = None if tensor.datatype is None else numpy_dtype(tensor.datatype)
    array = input_array(name, tensor.array, target)
    datatype = triton_datatype(array)  # InvalidInput for complex, datetime, void, ...
    if array.ndim == 0:
        array = array.reshape(1)
    return array, datatype, [int(n) for n in array.shape]


# -- the carrier ------------------------------------------------------------------------------


class ShmCarrier:
    """Stages every input of a request in a fresh ``/dev/shm`` segment (see the module doc)."""

    name = "shm"
    capability = SHM_CAPABILITY
    auto_rank = 200  # after json: only what does not fit a frame is worth a segment
    serves_streams = False  # the manager refuses SHM references in gRPC streams (contract §9)

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        if not is_granted(self.capability, context):
            return (
                "the manager did not grant the 'shm' capability (it offers shm only when it "
                "can use /dev/shm; a manager without capability negotiation grants nothing)"
            )
        if not context.same_host:
            return (
                "the manager is not on this host, so it cannot read this machine's /dev/shm; "
                "set same_host=True in anytcm.connect() if it shares this machine's /dev/shm "
                "(same host or IPC namespace), or use json"
            )
        if not os.path.isdir(SHM_DIR):
            return f"this machine has no {SHM_DIR}; use json"
        return None

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        global _swept
        if not _swept:
            _swept = True
            await anyio.to_thread.run_sync(sweep_stale_segments)
        prepared = [_prepare(tensor) for tensor in inputs]  # dtype/shape checks, before any segment
        staged = ShmStaged()
        try:
            for tensor, (array, datatype, shape) in zip(inputs, prepared, strict=True):
                await self._stage_one(staged, tensor.name, array, datatype, shape)
            # A cancellation delivered while the last write ran on a thread lands here, where
            # the segments are still ours to free, not in the caller after we returned.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            staged.release()
            raise
        return staged

    async def _stage_one(
        self,
        staged: ShmStaged,
        name: str,
        array: npt.NDArray[Any],
        datatype: str,
        shape: list[int],
    ) -> None:
        key = _new_key()
        segments = staged._segments
        sizes: list[int] = []
        write: Callable[[], None]
        if datatype == "BYTES":
            count = math.prod(shape)

            def write() -> None:
                data = _serialise_bytes(name, array)
                fd = _create(key, max(len(data), 1), segments)
                if data:
                    _pwrite_all(fd, memoryview(data))
                sizes.append(max(len(data), 1))

            offload = count > _THREAD_THRESHOLD_ELEMENTS
        else:

            def write() -> None:
                fd = _create(key, max(array.nbytes, 1), segments)
                _write_numeric(fd, array)
                sizes.append(max(array.nbytes, 1))

            direct = array.flags.c_contiguous and array.dtype.isnative
            offload = array.nbytes * (1 if direct else 2) >= THREAD_THRESHOLD_BYTES
        if offload:
            await anyio.to_thread.run_sync(write)
        else:
            write()
        staged._items.append(
            wire.SHMReference(
                name=name, shm_key=key, offset=0, byte_size=sizes[0], shape=shape, dtype=datatype
            )
        )
