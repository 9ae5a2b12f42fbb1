"""The blob store's local home: every published file's bytes, stored once by their sha256,
and the trees nginx serves, made of links to them.

Layout, under ``base_path``::

    .artstore/blobs/<sha[:2]>/<sha>              one file per content (never served: a dot-path)
    <project>/.artstore/<item>/<release>/        a release tree: hard links to blobs
    <project>/.artstore/<item>/.tmp-stage-*      a release being built (claimed, swept)
    <project>/<item> -> .artstore/<item>/<id>    what is live: a symlink, swapped by rename
    index.html, <project>/index.html             the generated pages

Kept releases and collection files that share content share its storage, and a blob's link
count says how many trees hold it: a blob whose count is 1 is held by no tree and is garbage.
That makes the collector exact and cheap (one ``stat`` per blob), and the trees of publishes
still in flight count too, with nothing to register.

Guarantees:

- ``intern``: when it returns, every file it was given is a link of the blob of its sha256
  (the file's own inode becomes the blob if the store had none), or, where the filesystem
  refuses one more link to a blob (ext4: 65,000), keeps its own copy. The bytes at each path
  never change and the path never goes missing: a file is replaced by a link with one
  ``rename``.
- ``collect`` and ``forget``: delete only blobs no tree links to. A prefix directory is locked
  exclusively while it is collected and shared by ``intern``, so a blob a publish is about to
  link is never deleted under it. Killed at any point, they have deleted whole blobs only.
- ``making_live``: everything that needs space (the release moved into place, the new live
  link made beside the old) happens before its body - the catalog's commit point - and is
  undone if the body fails; after it only one ``rename`` over the live link is left.

The one limit of link counting: a file kept as its own copy (the link limit above) does not
count for its blob, so the blob may be collected while that release still holds the bytes in
its copy. Serving and rollback only ever use the trees, so nothing served is affected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .catalog import Manifest
from .names import NAME_RE
from .storage import TMP_PREFIX

log = logging.getLogger("artstore")
BOOKKEEPING = ".artstore"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Collected:
    blobs: int  # deleted
    bytes: int  # their size
    kept: int  # blobs still referenced


class LocalBlobStore:
    """Blobs and the served trees under ``base_path`` (see the module's guarantees)."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.root = self.base / BOOKKEEPING / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------- trees

    def _item_dir(self, project: str, item: str) -> Path:
        return self.base / project / BOOKKEEPING / item

    @contextlib.contextmanager
    def staging(self, project: str, item: str) -> Iterator[Path]:
        """A new, claimed directory to build a release in; removed unless it went live."""
        folder = self._item_dir(project, item)
        # Never the project's own folder: a project deleted meanwhile stays deleted.
        folder.parent.mkdir(exist_ok=True)
        folder.mkdir(exist_ok=True)
        stage, claim = storage.claimed_dir(folder, TMP_PREFIX + "stage-")
        try:
            os.chmod(stage, 0o755)
            yield stage
        finally:
            os.close(claim)
            if stage.exists():  # not moved into place: the publish failed
                shutil.rmtree(stage, ignore_errors=True)

    def seal(self, stage: Path, manifest: Manifest) -> None:
        """Make every file of a built release a link of its blob, and flush it all to
        disk: what a publish needs before its commit point."""
        self.intern((f"{stage}/{path}", sha) for path, (sha, _) in manifest.items())
        storage.sync_filesystem(stage)

    def place(self, source: Path, stage: Path, name: str) -> None:
        """Put a received file into ``stage`` under ``name``: moved (a hard link) where the
        filesystem allows, else copied."""
        target = stage / name
        try:
            os.link(source, target)
        except OSError:
            with open(source, "rb") as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        os.chmod(target, 0o644)

    def alias(self, stage: Path, name: str, other: str) -> None:
        """``other`` in ``stage`` is the same file as ``name`` (a link: no second copy)."""
        os.link(stage / name, stage / other)

    def write(self, stage: Path, name: str, data: bytes) -> None:
        """A generated file of a release (a collection's index pages)."""
        with open(stage / name, "xb") as fh:
            fh.write(data)
        os.chmod(stage / name, 0o644)

    def keep(self, stage: Path, name: str, sha256: str, project: str, item: str,
             live: str | None) -> None:
        """Put a kept collection file into a new generation: a link of its blob, or of the
        live generation's file where the blob is missing (an old store, not upgraded yet)."""
        target = stage / name
        if not target.exists() and not self.link(sha256, str(target)) and live:
            os.link(self._item_dir(project, item) / live / name, target)

    @contextlib.contextmanager
    def making_live(self, project: str, item: str, release: str,
                    stage: Path | None = None) -> Iterator[None]:
        """Make ``release`` (``stage`` moved into place, if given) what is live, around the
        body, which is the commit point (see the module's guarantees)."""
        folder = self._item_dir(project, item)
        with storage.swapping_symlink(self.base / project / item,
                                      f"{BOOKKEEPING}/{item}/{release}", tmp_tag=f"{item}+"):
            if stage is not None:
                os.rename(stage, folder / release)
            try:
                yield
            except BaseException:
                if stage is not None:  # back where the staging clean-up removes it
                    with contextlib.suppress(OSError):
                        os.rename(folder / release, stage)
                raise

    def point_live(self, project: str, item: str, release: str | None) -> None:
        """Make the live link point at ``release`` (None: remove it)."""
        if release is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.base / project / item)
            return
        with self.making_live(project, item, release):
            pass

    def live(self, project: str, item: str) -> str | None:
        """The release the live link points at."""
        try:
            return os.path.basename(os.readlink(self.base / project / item))
        except OSError:
            return None

    def published(self, project: str, item: str) -> str | None:
        """When the live release was swapped in: the time of the live link."""
        try:
            st = os.lstat(self.base / project / item)
        except FileNotFoundError:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))

    def trees(self, project: str, item: str) -> set[str]:
        """The releases (or generations) on disk."""
        with contextlib.suppress(FileNotFoundError):
            return {e.name for e in os.scandir(self._item_dir(project, item))
                    if not e.name.startswith(TMP_PREFIX)}
        return set()

    def discard(self, project: str, item: str, release: str, held: Iterable[str]) -> None:
        """Delete a tree nothing refers to any more, in the background, then the blobs only
        it ``held``; a failure is left to the sweep and the collector."""
        shas = list(held)
        try:
            storage.remove_tree(self._item_dir(project, item) / release, wait=False,
                                then=lambda: self.forget(shas))
        except OSError as exc:
            log.warning("could not delete %s/%s release %s (the next start's sweep will): %s",
                        project, item, release, exc)

    def remove_item(self, project: str, item: str) -> None:
        """Delete an item's live link and trees (``forget`` their blobs after)."""
        self.point_live(project, item, None)
        storage.remove_tree(self._item_dir(project, item))

    def add_project(self, project: str) -> None:
        (self.base / project).mkdir(exist_ok=True)

    def remove_project(self, project: str) -> None:
        """Delete a project's pages, live links and trees (``forget`` their blobs after)."""
        storage.remove_tree(self.base / project)

    def write_page(self, project: str | None, data: bytes) -> None:
        """Replace the root's (``project`` None) or a project's generated page, atomically,
        unless it already says exactly that."""
        folder = self.base if project is None else self.base / project
        path = folder / "index.html"
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        folder.mkdir(exist_ok=True)
        # Not flushed: a page is made again from the catalog at every start.
        storage.atomic_write(path, data, durable=False)

    def items_on_disk(self, project: str) -> set[str]:
        """The items that have a live link or trees."""
        found: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            found.update(e.name for e in os.scandir(self.base / project) if e.is_symlink())
        with contextlib.suppress(FileNotFoundError):
            found.update(os.listdir(self.base / project / BOOKKEEPING))
        return {n for n in found if not n.startswith(TMP_PREFIX)}

    def sweep(self, projects: Iterable[str]) -> None:
        """Remove leftovers under ``base_path``: of writers that died, of project deletes
        cut short. Claimed work in progress of other workers is left alone."""
        known = set(projects)
        storage.sweep_temp_entries(self.base)
        for entry in os.scandir(self.base):
            if (entry.is_dir(follow_symlinks=False) and entry.name not in known
                    and _is_project_dir(Path(entry.path))):
                storage.remove_tree(Path(entry.path))  # a delete that was cut short
        for name in known:
            for folder in (self.base / name, self.base / name / BOOKKEEPING):
                storage.sweep_temp_entries(folder)

    def sweep_item(self, project: str, item: str, keep: set[str]) -> None:
        """Remove an item's leftovers and every tree not in ``keep``. Called with the item
        lock held (temp live links are made under it)."""
        storage.sweep_temp_entries(self.base / project, symlink_tag=f"{item}+")
        storage.sweep_temp_entries(self._item_dir(project, item))
        for stray in self.trees(project, item) - keep:
            storage.remove_tree(self._item_dir(project, item) / stray)

    def adopt(self, project: str, item: str, release: str) -> dict[str, tuple[str, int]]:
        """Hash a tree written before the blob store and make its files links of their
        blobs (see ``intern``); its manifest."""
        tree = self._item_dir(project, item) / release
        manifest = {path: _hash_file(f"{tree}/{path}") for path in _tree_files(tree)}
        self.intern((f"{tree}/{path}", sha) for path, (sha, _) in manifest.items())
        return manifest

    def adopt_file(self, project: str, item: str, release: str, name: str) -> tuple[str, int]:
        path = str(self._item_dir(project, item) / release / name)
        sha, size = _hash_file(path)
        self.intern([(path, sha)])
        return sha, size

    def add_alias(self, project: str, item: str, release: str, name: str, other: str) -> None:
        """In a tree written before html releases had their index.html, add it."""
        self.alias(self._item_dir(project, item) / release, name, other)

    # ------------------------------------------------------------- blobs

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


def _hash_file(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _tree_files(tree: Path) -> list[str]:
    """The regular files below ``tree``, as manifest paths."""
    found = []
    for folder, _dirs, names in os.walk(tree):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(os.path.relpath(path, tree).replace(os.sep, "/"))
    return sorted(found)


def _is_project_dir(path: Path) -> bool:
    """True for a directory only artstore could have made: a project's, not a user's file."""
    if not NAME_RE.fullmatch(path.name):
        return False
    try:
        return all(e.name in ("index.html", BOOKKEEPING)
                   or e.name.startswith(TMP_PREFIX) for e in os.scandir(path))
    except FileNotFoundError:  # deleted meanwhile by a running worker
        return False


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
