"""Filesystem primitives: atomic writes, inter-process locks, atomic swaps, sweeping.

Everything that changes a file the service depends on goes through here, so that a
crash at any instant leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import InsufficientStorage, TooLarge

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_function(name: str, *argtypes: Any) -> Any:
    """A Linux system call wrapper from libc that Python's ``os`` lacks, or None."""
    library = ctypes.util.find_library("c")
    if not library:
        return None
    func = getattr(ctypes.CDLL(library, use_errno=True), name, None)
    if func is not None:
        func.argtypes = list(argtypes)
    return func


_syncfs = _libc_function("syncfs", ctypes.c_int)
BLOCK = 1024 * 1024  # what StreamWriter hands to the disk at once
O_DIRECT = getattr(os, "O_DIRECT", 0)


def set_direct_io(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on or off for ``fd``; False where the filesystem refuses it."""
    if not O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return on


class StreamWriter:
    """Write a stream of pieces of any size to a new file, in blocks, from other threads.

    The pieces are gathered into page-aligned blocks of ``BLOCK`` bytes. A full block is
    handed on: one thread passes it to ``digest`` (a hash) while another writes it
    straight to the disk (``O_DIRECT``), and the caller goes on filling the next of
    ``BLOCKS`` buffers. So a big upload is on the disk when its last byte arrives,
    leaving the sync before a commit almost nothing to wait for, and it neither fills
    the page cache nor pays for copying into it (in a VM, page-cache memory touched for
    the first time costs ~3 s per GiB; docs/benchmarks.md). Where the filesystem refuses
    direct I/O, the same blocks go through the page cache, as does the last, partial
    block. An error of the other threads is raised by a later ``write`` or ``finish``.
    """

    BLOCKS = 4

    def __init__(self, fd: int, digest: Callable[[memoryview], object]) -> None:
        self.fd = fd
        self._digest = digest
        self._direct = set_direct_io(fd, True)
        self._blocks: list[mmap.mmap] = []
        self._jobs: list[list[Future[Any]]] = []
        self._current = 0
        self._filled = 0
        self._offset = 0  # where the next block handed on goes in the file
        self._threads: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def write(self, data: bytes | memoryview) -> None:
        """Take ``data``; it is copied, so the caller may reuse its buffer at once."""
        view = memoryview(data).cast("B")
        while view:
            if self._current == len(self._blocks):
                # Page-aligned, as O_DIRECT needs; private, so not counted as shared memory.
                self._blocks.append(mmap.mmap(-1, BLOCK, flags=mmap.MAP_PRIVATE))
                self._jobs.append([])
            n = min(len(view), BLOCK - self._filled)
            self._blocks[self._current][self._filled:self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == BLOCK:
                self._hand_off()

    def _hand_off(self) -> None:
        """Start hashing and storing the full current block; move on to the next one."""
        if self._threads is None:
            self._threads = (ThreadPoolExecutor(1, thread_name_prefix="artstore-sha256"),
                             ThreadPoolExecutor(1, thread_name_prefix="artstore-writer"))
        hasher, writer = self._threads
        block = memoryview(self._blocks[self._current])
        self._jobs[self._current] = [hasher.submit(self._digest, block),
                                     writer.submit(self._store, block, self._offset)]
        self._offset += BLOCK
        self._current = (self._current + 1) % self.BLOCKS
        self._filled = 0
        if self._current < len(self._jobs):
            self._wait(self._current)  # the next buffer must be free again

    def _wait(self, index: int) -> None:
        jobs, self._jobs[index] = self._jobs[index], []
        futures.wait(jobs)  # both done with the buffer before an error is raised
        for job in jobs:
            job.result()

    def _store(self, block: memoryview, offset: int) -> None:
        # At its own offset: a block that failed never shifts the ones after it.
        while block:
            try:
                written = os.pwrite(self.fd, block, offset)
                block, offset = block[written:], offset + written
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._direct = set_direct_io(self.fd, False)  # refused after all

    def finish(self) -> None:
        """Store what is left and wait until all of it is written; the file may then be
        read through ``fd`` (direct I/O is switched off again)."""
        for index in range(len(self._jobs)):
            self._wait(index)
        if self._direct:
            self._direct = set_direct_io(self.fd, False)
        if self._filled:
            last = memoryview(self._blocks[self._current])[:self._filled]
            self._digest(last)
            self._store(last, self._offset)
        self.close()

    def close(self) -> None:
        """Stop the other threads once the block each is on is done; idempotent."""
        if self._threads is not None:
            for pool in self._threads:
                pool.shutdown(cancel_futures=True)
            self._threads = None
        self._blocks, self._jobs, self._current, self._filled = [], [], 0, 0


def sync_filesystem(path: Path) -> None:
    """Flush every written file on the filesystem holding ``path``, in one call.

    One ``syncfs`` after extracting thousands of files is far cheaper than an
    ``fsync`` per file, and makes the staged release durable before it is swapped in.
    """
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@contextlib.contextmanager
def disk_errors(action: str) -> Iterator[None]:
    """Turn a full disk or quota into a 507 that says what could not be done."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(f"no space left on the device while {action}") from None
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file beside it, fsync, rename, fsync dir.

    ``durable=False`` skips the fsyncs, for files that only need to be whole, not to
    survive a power cut.
    """
    path = Path(path)
    # The temp file stays open, and so claimed, until it has been renamed into place.
    fd, tmp = claimed_file(path.parent, TMP_PREFIX + path.name + ".")
    try:
        with disk_errors(f"writing {path.name}"):
            _write_whole(fd, data, mode, durable)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    if durable:
        fsync_dir(path.parent)


def _write_whole(fd: int, data: bytes, mode: int, durable: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fchmod(fd, mode)
    if durable:
        os.fsync(fd)


def create_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` unless it exists; False if it did.

    The file is written whole under a temp name and then hard-linked to ``path``, which
    fails if it exists: a reader never sees ``path`` empty or half written, and of several
    processes racing to create it exactly one wins.
    """
    path = Path(path)
    fd, tmp = claimed_file(path.parent, TMP_PREFIX + path.name + ".")
    try:
        with disk_errors(f"writing {path.name}"):
            _write_whole(fd, data, mode, durable=True)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)


def write_json(path: Path, data: Any, mode: int = 0o644) -> None:
    # No indent: with one, json falls back to its pure-Python encoder, which made
    # every change to a 1,000-project projects.json take 10x longer.
    atomic_write(path, (json.dumps(data, sort_keys=True) + "\n").encode(), mode)


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """Hold an ``flock`` on ``path`` (created if needed): serialises worker processes.

    The kernel drops the lock when its holder dies, so a killed worker never leaves
    a stale lock behind. With ``blocking=False`` it yields False at once, holding
    nothing, if another process has it. ``shared``: a lock many readers hold at once,
    never while one exclusive holder does.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _claim(fd: int, path: str) -> bool:
    """Lock a new temp entry, then make sure a sweep did not remove it before that."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def claimed_file(directory: Path, prefix: str) -> tuple[int, str]:
    """A new temp file, open and locked: a sweep in another process leaves it alone.

    The lock goes with the descriptor, so a writer that dies releases its claim.
    """
    while True:
        fd, path = tempfile.mkstemp(dir=directory, prefix=prefix)
        if _claim(fd, path):
            return fd, path
        os.close(fd)


def claimed_dir(directory: Path, prefix: str) -> tuple[Path, int]:
    """A new temp directory and a locked descriptor on it (see ``claimed_file``)."""
    while True:
        path = tempfile.mkdtemp(dir=directory, prefix=prefix)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # swept before we could claim it: make another
            continue
        if _claim(fd, path):
            return Path(path), fd
        os.close(fd)


def _remove_if_abandoned(entry: os.DirEntry[str]) -> None:
    """Remove a temp entry nobody holds a claim on, keeping the lock while removing it."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def swapping_symlink(link: Path, target: str, tmp_tag: str) -> Iterator[None]:
    """Point ``link`` at ``target`` in one atomic step, once the body has run.

    The new symlink is made first, beside ``link`` (named ``.tmp-<tmp_tag>...`` so the
    sweep for that link finds it), so that after the body - a commit - only a rename over
    ``link`` is left, which needs no space. If the body fails, ``link`` stays as it was.
    """
    tmp = link.with_name(f"{TMP_PREFIX}{tmp_tag}{os.getpid()}.{os.urandom(4).hex()}")
    os.symlink(target, tmp)
    try:
        yield
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path, wait: bool = True, then: Callable[[], object] | None = None) -> None:
    """Remove a directory: first renamed away in one step, then deleted, then ``then``.

    With ``wait=False`` the deletion runs in a background thread, so a publish does
    not wait for thousands of unlinks of a release it pruned; if the process dies
    first, the renamed leftover is removed by the next sweep.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        if then is not None:
            then()
        return
    doomed = path.with_name(f"{TMP_PREFIX}{path.name}.gone.{os.urandom(4).hex()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:  # removed meanwhile (a sweep in another worker): gone is gone
        if then is not None:
            then()
        return

    def delete() -> None:
        if not doomed.is_dir() or doomed.is_symlink():
            doomed.unlink()
        else:
            shutil.rmtree(doomed, ignore_errors=True)
        if then is not None:
            then()

    if wait:
        delete()
    else:
        threading.Thread(target=_logged, args=(delete,), daemon=True).start()


def _logged(work: Callable[[], object]) -> None:
    """Background work: a failure is logged, and left to the next sweep."""
    try:
        work()
    except Exception:  # noqa: BLE001
        logging.getLogger("artstore").exception("background clean-up failed")


def sweep_temp_entries(directory: Path, symlink_tag: str | None = None) -> None:
    """Remove leftovers (``.tmp-*``) of writers that finished or died: not claimed ones.

    A temp symlink cannot carry a claim, so only those named ``.tmp-<symlink_tag>...``
    are removed, by a caller that holds the lock under which such links are made.
    """
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            if entry.is_symlink():
                if symlink_tag and entry.name.startswith(TMP_PREFIX + symlink_tag):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            else:
                _remove_if_abandoned(entry)


def read_json(path: Path, default: Any) -> Any:
    """Parse a JSON state file; a missing file gives ``default``, a broken one raises."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return default


def upload_too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than the limit of {limit} bytes")


class Incoming:
    """An upload being received into ``temp_path``: counted, hashed and written as it comes.

    It is the only copy of the body the service makes; publishing moves it into place
    when ``temp_path`` shares a filesystem with ``base_path``. The hashing and writing
    run in a second thread (``StreamWriter``), beside the receiving. While open
    it holds an ``flock``, so a sweep in another worker never removes it.
    """

    def __init__(self, temp_dir: Path, limit: int) -> None:
        fd, path = claimed_file(temp_dir, TMP_PREFIX + "upload-")
        self.path = Path(path)
        self.file = os.fdopen(fd, "w+b", buffering=0)
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self._writer = StreamWriter(fd, self._hash.update)

    def write(self, data: bytes | memoryview) -> int:
        """Take ``data`` (used only until this returns: it may be a reused buffer)."""
        size = len(data)
        self.size += size
        if self.size > self.limit:
            raise upload_too_large(self.limit)
        with disk_errors("receiving the upload"):
            self._writer.write(data)
        return size

    def finish(self) -> None:
        """Wait until every byte received is written; then ``sha256`` and ``read`` work."""
        with disk_errors("receiving the upload"):
            self._writer.finish()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and delete the temp file (if publishing did not move it away)."""
        self._writer.close()
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
