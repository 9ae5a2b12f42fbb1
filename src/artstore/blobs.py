"""The blob store's local home: every published file's bytes, stored once by their sha256.

Layout, under ``base_path`` (a dot-directory, so never served)::

    base_path/.artstore/blobs/<sha[:2]>/<sha>     one file per content

A release tree (``<project>/.artstore/<item>/<release>/``) is made of hard links to these
files, so kept releases and collection files that share content share its storage, and a
file's link count says how many trees hold it: a blob whose count is 1 is referenced by no
tree and is garbage. That makes the collector exact and cheap (one ``stat`` per blob), and
the trees of publishes still in flight count too, with nothing to register.

Guarantees:

- ``intern``: when it returns, every file it was given is a link of the blob of its sha256
  (the file's own inode becomes the blob if the store had none), or, where the filesystem
  refuses one more link to a blob (ext4: 65,000), keeps its own copy. The bytes at each path
  never change and the path never goes missing: a file is replaced by a link with one
  ``rename``.
- ``collect``: deletes blobs no tree links to. A prefix directory is locked exclusively while
  it is collected and shared by ``intern``, so a blob a publish is about to link is never
  deleted under it. Killed at any point, it has deleted whole blobs only.

The one limit of link counting: a file kept as its own copy (the link limit above) does not
count for its blob, so the blob may be collected while that release still holds the bytes in
its copy. Serving and rollback only ever use the trees, so nothing served is affected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .storage import TMP_PREFIX


@dataclass(frozen=True)
class Collected:
    blobs: int  # deleted
    bytes: int  # their size
    kept: int  # blobs still referenced


class LocalBlobStore:
    """Blobs under ``base_path/.artstore/blobs``, on the filesystem of the release trees."""

    def __init__(self, base: Path) -> None:
        self.root = Path(base) / ".artstore" / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    @contextlib.contextmanager
    def _prefix(self, prefix: str, mode: int) -> Iterator[str]:
        """Hold the lock of one prefix directory (``flock`` on the directory itself)."""
        folder = self.root / prefix
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            folder.mkdir(exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, mode)
            yield str(folder)
        finally:
            os.close(fd)

    def intern(self, files: Iterable[tuple[str, str]]) -> None:
        """Make each ``(path, sha256)`` file a link of its blob (see the module's guarantees).

        The caller vouches that each file holds exactly the bytes of its sha256 (it hashed
        them as it wrote them) and that nothing else writes to it.
        """
        by_prefix: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for path, sha in files:
            by_prefix[sha[:2]].append((path, sha))
        for prefix, entries in by_prefix.items():
            with self._prefix(prefix, fcntl.LOCK_SH) as folder:
                for path, sha in entries:
                    _intern_one(path, f"{folder}/{sha}")

    def link(self, sha256: str, target: str) -> bool:
        """Create ``target`` as a new link of blob ``sha256``; False if the store lacks it
        (or it can take no more links)."""
        with self._prefix(sha256[:2], fcntl.LOCK_SH) as folder:
            try:
                os.link(f"{folder}/{sha256}", target)
            except FileNotFoundError:
                return False
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                return False
        return True

    def collect(self) -> Collected:
        """Delete every blob that no tree links to."""
        deleted = size = kept = 0
        prefixes: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            prefixes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        for prefix in prefixes:
            with self._prefix(prefix, fcntl.LOCK_EX) as folder:
                for entry in os.scandir(folder):
                    if entry.name.startswith("."):
                        if entry.name.startswith(TMP_PREFIX):  # see _intern_one
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)
                        continue
                    freed = _delete_if_unlinked(entry.path)
                    if freed is None:
                        kept += 1
                    else:
                        deleted += 1
                        size += freed
        return Collected(deleted, size, kept)

    def forget(self, shas: Iterable[str]) -> None:
        """Delete those of ``shas`` that no tree links to any more: the blobs of trees just
        removed, so their space is free at once rather than at the next collection."""
        by_prefix: dict[str, set[str]] = defaultdict(set)
        for sha in shas:
            by_prefix[sha[:2]].add(sha)
        for prefix, group in by_prefix.items():
            with self._prefix(prefix, fcntl.LOCK_EX) as folder:
                for sha in group:
                    _delete_if_unlinked(f"{folder}/{sha}")

    def stored_bytes(self) -> int:
        """The size of every blob: what the store holds once, whatever links to it."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for prefix in os.scandir(self.root):
                if prefix.is_dir():
                    total += sum(e.stat(follow_symlinks=False).st_size
                                 for e in os.scandir(prefix.path) if not e.name.startswith("."))
        return total


def _delete_if_unlinked(blob: str) -> int | None:
    """Delete ``blob`` if no tree links to it; its size if deleted (or already gone: 0),
    None if it is in use. Called with its prefix locked exclusively."""
    try:
        st = os.lstat(blob)
        if st.st_nlink > 1:
            return None
        os.unlink(blob)
    except FileNotFoundError:
        return 0
    return st.st_size


def _intern_one(path: str, blob: str) -> None:
    try:
        os.link(path, blob)  # new content: this file's inode becomes the blob
        return
    except FileExistsError:
        pass
    if os.path.samefile(path, blob):
        return  # already a link of it (an upgrade that was cut short, run again)
    # The new link is made beside the blob, never in the tree (where it could clash with
    # a member's name), and renamed over the file: the path never goes missing. A
    # leftover of a killed process is removed by the collector, under the exclusive lock.
    tmp = f"{os.path.dirname(blob)}/{TMP_PREFIX}{os.getpid()}.{threading.get_ident()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a dead process's with our pid and thread id
    try:
        os.link(blob, tmp)
    except OSError as exc:
        if exc.errno == errno.EMLINK:
            return  # the blob takes no more links: this file stays a copy
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
