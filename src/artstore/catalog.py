"""The catalog: what the store knows about its projects, items and releases, as typed records.

The rules (``store.py``) keep everything they know here and the bytes in the blob store
(``blobs.py``); they never ask where either lives. This module holds the records, the
validation of a project's configuration, and the catalog's first home, ``FileCatalog``: the
state directory, where ``projects.json`` is the file of record for the projects'
configuration. Another home (PostgreSQL) implements the same methods with the same
guarantees:

- ``change_projects(mutate)``: an atomic read-modify-write of every project's
  configuration; ``mutate`` may raise to change nothing. Readers see the old or the new
  configurations, never a mix, and a crash at any instant leaves one of the two.
- ``item_lock(project, item)``: exclusive across every worker (and replica); held by every
  change to one item, so they serialise. A holder that dies releases it.
- ``save_item(project, item, state)``: the commit point of every publish, rollback and
  prune: atomic and durable when it returns; a crash leaves the old state or the new one.
- ``save_manifest``: durable before it returns, so a state saved after it never names a
  release without its manifest. Manifests never change once saved.
- ``project_lock(project)``: serialises a project's deletion with the writers of its pages.
- ``drop_item``, ``drop_project``, ``drop_manifest``: idempotent; the sweep finishes one
  that a crash cut short.
- ``mark_changed(project)`` and ``changes_since(cursor)``: which projects' configuration or
  published files changed, seen by every worker; a reader may be told "anything may have
  changed" at any time, never nothing when something did (short of a rare, bounded miss:
  see there).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import storage
from .errors import BadRequest, ConfigError
from .names import check_name

ITEM_TYPES = ("html", "tgz", "zip", "collection")
RELEASE_TYPES = ("html", "tgz", "zip")
MANIFESTS = ".manifests"  # items/<project>/<item>.manifests/<release>.json
MANIFEST_CACHE = 64  # manifests each worker keeps in memory (they never change)
# 1: every release a full copy (artstore before the blob store); 2: blobs and manifests.
FORMAT = 2

# A release's files: path -> (sha256, size).
Manifest = Mapping[str, "tuple[str, int]"]
# Where a reader of the changes is, read only by the home that made it: in the state
# directory, in the projects' configurations (epoch, count) and in changes.log (its inode,
# the offset read up to); in PostgreSQL, the database's store id and the last change's id.
Cursor = tuple[Any, ...]
CHANGES_LIMIT = 1 << 20  # bytes of changes.log before it is started anew
TOUCHED_LIMIT = 100_000  # project changes a worker remembers before it forgets them all


def cached_manifest(cache: dict[tuple[str, str, str], dict[str, tuple[str, int]]],
                    key: tuple[str, str, str],
                    load: Callable[[], Mapping[str, Any]]) -> dict[str, tuple[str, int]]:
    """A manifest from ``cache`` (the MANIFEST_CACHE latest read; manifests never change),
    else ``load``ed (path -> [sha256, size]) and kept. Safe from several threads."""
    found = cache.get(key)
    if found is None:
        found = {path: (sha, size) for path, (sha, size) in load().items()}
        while len(cache) >= MANIFEST_CACHE:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                cache.pop(next(iter(cache)))  # another thread may take it first
        cache[key] = found
    return found


# -------------------------------------------------------------------- records


@dataclass(frozen=True)
class ItemConfig:
    """An item as its project configures it: ``keep`` or ``depth`` only when set."""

    type: str
    keep: int | None = None  # html, tgz, zip: releases kept
    depth: int | None = None  # collection: files kept

    @property
    def is_collection(self) -> bool:
        return self.type == "collection"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for key in ("keep", "depth"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class Project:
    name: str
    description: str
    # An id given when the project is created: a project deleted and created again under
    # the same name is told apart from the old one ("" for projects stored before it).
    created: str
    items: Mapping[str, ItemConfig]

    def as_json(self) -> dict[str, Any]:
        """As ``projects.json`` holds it (the API's configuration plus ``created``)."""
        return {"description": self.description,
                "items": {name: conf.as_json() for name, conf in self.items.items()},
                "created": self.created}


@dataclass(frozen=True)
class Release:
    """One kept release of an html, tgz or zip item."""

    id: str
    created: str
    sha256: str  # of the upload
    size: int  # of the upload
    files: int
    bytes: int | None  # its files' size; None until an old store's release is upgraded
    metadata: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"release": self.id, "created": self.created, "sha256": self.sha256,
                "size": self.size, "files": self.files, "bytes": self.bytes,
                "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Release:
        return cls(data["release"], data["created"], data["sha256"], data["size"],
                   data["files"], data.get("bytes"), data.get("metadata", {}))


@dataclass(frozen=True)
class StoredFile:
    """One file of a collection."""

    name: str
    sha256: str
    size: int
    created: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size,
                "created": self.created, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredFile:
        return cls(data["name"], data["sha256"], data["size"], data["created"],
                   data.get("metadata", {}))


@dataclass(frozen=True)
class ItemState:
    """What an item holds: its releases (oldest first) and which is live, or a
    collection's files (oldest first) and the id of the generation that serves them."""

    type: str
    live: str | None = None
    releases: tuple[Release, ...] = ()
    files: tuple[StoredFile, ...] = ()

    def with_(self, **changes: Any) -> ItemState:
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        if self.type == "collection":
            return {"type": self.type, "live": self.live,
                    "files": [f.as_json() for f in self.files]}
        return {"type": self.type, "live": self.live,
                "releases": [r.as_json() for r in self.releases]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemState:
        return cls(data["type"], data.get("live"),
                   tuple(Release.from_json(r) for r in data.get("releases", [])),
                   tuple(StoredFile.from_json(f) for f in data.get("files", [])))


# ----------------------------------------------------------------- validation


def project_config(body: Any) -> tuple[str, dict[str, ItemConfig]]:
    """A project's configuration from a request: (description, items); 400 if invalid."""
    if not isinstance(body, dict):
        raise BadRequest("the project configuration must be a JSON object")
    unknown = sorted(set(body) - {"description", "items"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the project configuration")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 1000:
        raise BadRequest("'description' must be a string of at most 1000 characters")
    items = body.get("items", {})
    if not isinstance(items, dict):
        raise BadRequest("'items' must be an object mapping item names to their settings")
    return description, {check_name(name, "item name"): _item_config(name, conf)
                         for name, conf in sorted(items.items())}


def _item_config(name: str, conf: Any) -> ItemConfig:
    if not isinstance(conf, dict):
        raise BadRequest(f"item {name!r}: settings must be a JSON object")
    kind = conf.get("type")
    if kind not in ITEM_TYPES:
        raise BadRequest(f"item {name!r}: 'type' must be one of {', '.join(ITEM_TYPES)}")
    key = "depth" if kind == "collection" else "keep"
    unknown = sorted(set(conf) - {"type", key})
    if unknown:
        raise BadRequest(f"item {name!r}: unknown setting {unknown[0]!r} for a {kind} item")
    if key not in conf:
        return ItemConfig(kind)
    value = conf[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one kind of number: 5.0 is the integer 5
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise BadRequest(f"item {name!r}: {key!r} must be an integer from 1 to 10000")
    return ItemConfig(kind, **{key: value})


def _stored_project(name: str, data: Any) -> Project:
    """A project as ``projects.json`` holds it (``created`` is never set through the API)."""
    check_name(name, "project name")
    created = ""
    if isinstance(data, dict) and "created" in data:
        data = dict(data)
        created = data.pop("created")
        if not isinstance(created, str):
            raise BadRequest("'created' must be a string")
    description, items = project_config(data)
    return Project(name, description, created, items)


# ------------------------------------------------------------- the file home


class Registry:
    """Every project's configuration: ``projects.json``, plus ``projects.log``.

    ``projects.json`` is the file of record: it holds every project whenever the service
    is stopped (a human may edit it then). While it runs, a change to one project is one
    line appended to ``projects.log`` (flushed before the change is answered), so its cost
    does not grow with the number of projects; the log is folded into ``projects.json``
    every LOG_LIMIT changes, at every start and when a worker stops. A worker reads only
    the log's new lines, validates every project only on its first read of
    ``projects.json`` (a human may have edited it while the service was stopped), and
    builds a record only when asked for it.

    Crash safety: a line torn by a crash is not a whole line, so no reader applies it and
    the next writer cuts it off; folding writes ``projects.json`` atomically, then empties
    the log, and a log applied again on top of the file it was folded into changes
    nothing, as each line sets or removes a whole project.
    """

    LOG_LIMIT = 1000

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "projects.json"
        self.log_path = Path(state_dir) / "projects.log"
        self.lock_path = Path(state_dir) / "projects.lock"
        self._log: tuple[int, int] | None = None  # projects.log as followed: fd, inode
        self._offset = 0  # bytes of projects.log applied
        self._entries = 0  # lines of projects.log applied
        self._raw: dict[str, Any] = {}  # name -> its stored JSON
        self._records: dict[str, Project] = {}
        self._all: dict[str, Project] | None = None
        # The names set or removed since the projects were first read (the epoch), in
        # order: what changed since a cursor.
        self._epoch = 0
        self._touched: list[str] = []
        self._validated = False
        self._lock = threading.RLock()  # the request threads of a worker share this

    # -- reading

    def _refresh(self, locked: bool = False) -> None:
        """Apply what other workers changed. The log this worker follows is held open, so
        no other file can take its inode number: a log a fold started anew is always seen
        as another file. Reading takes the lock, shared (``locked``: the caller holds it
        already), so no fold or append runs between looking at the files and reading
        them, which would show a line of one log at an offset of another."""
        try:
            st = os.stat(self.log_path)
            now: tuple[int, int] | None = (st.st_ino, st.st_size)
        except FileNotFoundError:
            now = None
        applied = None if self._log is None else (self._log[1], self._offset)
        if self._validated and now == applied:
            return  # nothing changed: no lock needed to know that
        if locked:
            self._read()
        else:
            with storage.locked(self.lock_path, shared=True):
                self._read()

    def _read(self) -> None:
        """Called with the lock held."""
        try:
            fd: int | None = os.open(self.log_path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        st = None if fd is None else os.fstat(fd)
        ino, size = (None, 0) if st is None else (st.st_ino, st.st_size)
        if (not self._validated or ino != (None if self._log is None else self._log[1])
                or size < self._offset):
            self._load_file()  # the first read, or a fold began a new log
            self._follow(fd, ino)
        elif fd is not None:
            os.close(fd)  # the one already held
        if self._log is not None and size > self._offset:
            data = os.pread(self._log[0], size - self._offset, self._offset)
            whole = data.rfind(b"\n") + 1  # a torn last line is not applied
            for line in data[:whole].splitlines():
                entry = json.loads(line)
                self._set(entry["name"], entry["project"])
                self._entries += 1
            self._offset += whole

    def _follow(self, fd: int | None, ino: int | None) -> None:
        """Hold ``fd`` (the log now at ``log_path``, or None) as the log applied from 0."""
        if self._log is not None:
            os.close(self._log[0])
        self._log = None if fd is None or ino is None else (fd, ino)
        self._offset, self._entries = 0, 0

    def __del__(self) -> None:
        if getattr(self, "_log", None) is not None:
            os.close(self._log[0])  # type: ignore[index]

    def _load_file(self) -> None:
        raw: dict[str, Any] = {}
        try:
            raw = json.loads(self.path.read_bytes())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object of projects")
            if not self._validated:
                raw = {name: _stored_project(name, conf).as_json()
                       for name, conf in raw.items()}
        except FileNotFoundError:
            pass
        except (ValueError, BadRequest) as exc:
            detail = exc.detail if isinstance(exc, BadRequest) else str(exc)
            raise ConfigError(
                f"{self.path} is broken ({detail}); fix or restore it by hand while the "
                "service is stopped - it is never reset automatically"
            ) from None
        if not self._validated:  # the first read: nothing to compare with
            self._validated = True
            self._raw, self._records, self._all = raw, {}, None
            self._epoch, self._touched = self._epoch + 1, []
            return
        # Read anew (another worker folded the log): what differs is what changed.
        old = self._raw
        changed = sorted(n for n in old.keys() | raw.keys() if old.get(n) != raw.get(n))
        self._raw = raw
        for name in changed:
            self._records.pop(name, None)
        self._touched.extend(changed)
        if changed:
            self._all = None

    def _set(self, name: str, data: Any) -> None:
        self._records.pop(name, None)
        self._all = None
        if len(self._touched) >= TOUCHED_LIMIT:  # a new epoch: every reader looks at all
            self._epoch, self._touched = self._epoch + 1, []
        self._touched.append(name)
        if data is None:
            self._raw.pop(name, None)
        else:
            self._raw[name] = data

    def get(self, name: str) -> Project | None:
        with self._lock:
            self._refresh()
            return self._record(name)

    def _record(self, name: str) -> Project | None:
        found = self._records.get(name)
        if found is None and name in self._raw:
            found = self._records[name] = _trusted_project(name, self._raw[name])
        return found

    def load(self) -> dict[str, Project]:
        """All projects by name, in name order (the same object until something changes).
        Raises ConfigError if ``projects.json`` is broken."""
        with self._lock:
            self._refresh()
            if self._all is None:
                self._all = {n: self._record(n) for n in sorted(self._raw)}  # type: ignore
            return self._all

    def changed_since(self, cursor: tuple[int, int] | None
                      ) -> tuple[tuple[int, int], set[str] | None]:
        """The projects set or removed since ``cursor``, and the cursor for the next call;
        None instead of the names when they cannot be known (a cursor of another epoch:
        from before this worker first read them, or TOUCHED_LIMIT changes ago)."""
        with self._lock:
            self._refresh()
            now = (self._epoch, len(self._touched))
            if cursor is None or cursor[0] != self._epoch or cursor[1] > now[1]:
                return now, None
            return now, set(self._touched[cursor[1]:])

    # -- changing

    def change(self, mutate: Callable[[ProjectChanges], Any]) -> Any:
        """Run ``mutate`` on the projects under the lock, then record what it changed.

        ``mutate`` may raise to abandon the change; its return value is passed back.
        """
        with self._lock, storage.locked(self.lock_path):
            self._refresh(locked=True)
            # Just read under the lock: the records are current, and reading the files
            # again would wait on the lock this change holds.
            changes = ProjectChanges(self._record, lambda: list(self._raw))
            result = mutate(changes)
            if changes.changed:
                self._append(b"".join(
                    json.dumps({"name": name, "project": None if p is None else p.as_json()},
                               sort_keys=True).encode() + b"\n"
                    for name, p in changes.changed.items()))
                for name, p in changes.changed.items():
                    self._set(name, None if p is None else p.as_json())
                    if p is not None:
                        self._records[name] = p
                self._entries += len(changes.changed)
                if self._entries >= self.LOG_LIMIT:
                    self._fold()
            return result

    def _append(self, lines: bytes) -> None:
        fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with storage.disk_errors("recording the change"):
                os.ftruncate(fd, self._offset)  # cut off a line torn by a crash
                view, at = memoryview(lines), self._offset
                while view:
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
                os.fsync(fd)
            if self._log is None:  # the first change since the log began: follow it
                self._follow(fd, os.fstat(fd).st_ino)
                fd = -1
        finally:
            if fd != -1:
                os.close(fd)
        self._offset += len(lines)

    def fold(self) -> None:
        """Fold ``projects.log`` into ``projects.json``, if it holds anything."""
        with self._lock, storage.locked(self.lock_path):
            self._refresh(locked=True)
            if self._offset or (self._raw and not self.path.exists()):
                self._fold()

    def _fold(self) -> None:
        """Called with both locks held, just refreshed."""
        storage.write_json(self.path, dict(sorted(self._raw.items())))
        # A new, empty file, not the old one cut: every reader sees that the log began anew.
        storage.atomic_write(self.log_path, b"")
        fd = os.open(self.log_path, os.O_RDONLY)
        self._follow(fd, os.fstat(fd).st_ino)


class ProjectChanges:
    """The projects as a catalog's ``change_projects`` hands them to a change: read any,
    set or remove some; only what is set or removed is written. ``read`` and ``names``
    read the projects as they are under the lock the change holds."""

    def __init__(self, read: Callable[[str], Project | None],
                 names: Callable[[], Iterable[str]]) -> None:
        self._read = read
        self._names = names
        self.changed: dict[str, Project | None] = {}

    def get(self, name: str) -> Project | None:
        if name in self.changed:
            return self.changed[name]
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> Project:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __setitem__(self, name: str, project: Project) -> None:
        self.changed[name] = project

    def pop(self, name: str, default: Any = None) -> Any:
        found = self.get(name)
        if found is None:
            return default
        self.changed[name] = None
        return found

    def clear(self) -> None:
        for name in list(self._names()):
            self.changed[name] = None


def _trusted_project(name: str, data: Mapping[str, Any]) -> Project:
    """A project as artstore wrote it (validated before it was written)."""
    items = {item: ItemConfig(conf["type"], conf.get("keep"), conf.get("depth"))
             for item, conf in data["items"].items()}
    return Project(name, data["description"], data.get("created", ""), items)


class FileCatalog:
    """The catalog in the state directory (see the module's guarantees)::

        projects.json                               every project's configuration
        items/<project>/<item>.json                 an item's state
        items/<project>/<item>.manifests/<id>.json  a release's manifest
        items/<project>/<item>.lock, pages.lock     locks (flock)
        format.json                                 the store's format
        changed                                     rewritten after every change
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.registry = Registry(self.state_dir)
        self.items_dir = self.state_dir / "items"
        self.items_dir.mkdir(parents=True, exist_ok=True)
        self.format_path = self.state_dir / "format.json"
        # The names of projects whose published files changed, a line each, appended by
        # every worker: each worker's listing of projects looks again at only those.
        self.changes_path = self.state_dir / "changes.log"
        self._manifests: dict[tuple[str, str, str], dict[str, tuple[str, int]]] = {}
        self.registry.load()  # a broken projects.json stops start-up here
        self._split_legacy_tokens()
        if (not self.registry.path.exists() and not self.registry.log_path.exists()
                and not self.format_path.exists()):
            self.set_format(FORMAT)  # a new store: nothing in it is of an older format

    def close(self) -> None:
        """Nothing to close: the files are opened for each call (and the log a worker
        follows is closed with its registry)."""

    # -- projects

    def projects(self) -> dict[str, Project]:
        return self.registry.load()

    def project(self, name: str) -> Project | None:
        return self.registry.get(name)

    def change_projects(self, mutate: Callable[[ProjectChanges], Any]) -> Any:
        return self.registry.change(mutate)

    @contextlib.contextmanager
    def project_lock(self, project: str | None) -> Iterator[None]:
        """A project's lock (``None``: the lock of the list of projects)."""
        if project is None:
            with storage.locked(self.state_dir / "pages.lock"):
                yield
            return
        with self.locked(project, "pages.lock"):
            yield

    def drop_project(self, project: str) -> None:
        storage.remove_tree(self.items_dir / project)

    # -- items

    @contextlib.contextmanager
    def locked(self, project: str, name: str) -> Iterator[None]:
        folder = self.items_dir / project
        folder.mkdir(parents=True, exist_ok=True)
        with storage.locked(folder / name):
            yield

    @contextlib.contextmanager
    def item_lock(self, project: str, item: str) -> Iterator[None]:
        with self.locked(project, f"{item}.lock"):
            yield

    def _state_path(self, project: str, item: str) -> Path:
        return self.items_dir / project / f"{item}.json"

    def item(self, project: str, item: str, kind: str) -> ItemState:
        """The item's state; an empty one if it has none, or one of another type."""
        data = storage.read_json(self._state_path(project, item), None)
        if data is None or data.get("type") != kind:
            return ItemState(kind)
        return ItemState.from_json(data)

    def recorded_item(self, project: str, item: str) -> ItemState | None:
        """The item's state as saved, whatever its type; None if it has none."""
        data = storage.read_json(self._state_path(project, item), None)
        return None if data is None else ItemState.from_json(data)

    def save_item(self, project: str, item: str, state: ItemState) -> None:
        storage.write_json(self._state_path(project, item), state.as_json())

    def drop_item(self, project: str, item: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path(project, item))
        storage.remove_tree(self._manifest_dir(project, item))

    def items_on_record(self, project: str) -> set[str]:
        """The items that have a state or manifests."""
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.items_dir / project):
                for suffix in (".json", MANIFESTS):
                    if name.endswith(suffix) and not name.startswith(storage.TMP_PREFIX):
                        found.add(name[:-len(suffix)])
        return found

    # -- manifests

    def _manifest_dir(self, project: str, item: str) -> Path:
        return self.items_dir / project / f"{item}{MANIFESTS}"

    def save_manifest(self, project: str, item: str, release: str, manifest: Manifest) -> None:
        folder = self._manifest_dir(project, item)
        folder.mkdir(parents=True, exist_ok=True)
        storage.write_json(folder / f"{release}.json",
                           {"files": {path: list(entry) for path, entry in manifest.items()}})

    def manifest(self, project: str, item: str, release: str) -> dict[str, tuple[str, int]]:
        """A release's manifest ({} for one of an old store not upgraded yet)."""
        def load() -> Mapping[str, Any]:
            return storage.read_json(self._manifest_dir(project, item) / f"{release}.json",
                                     {"files": {}})["files"]  # type: ignore[no-any-return]

        return cached_manifest(self._manifests, (project, item, release), load)

    def manifest_ids(self, project: str, item: str) -> set[str]:
        with contextlib.suppress(FileNotFoundError):
            return {n[:-len(".json")] for n in os.listdir(self._manifest_dir(project, item))
                    if n.endswith(".json") and not n.startswith(storage.TMP_PREFIX)}
        return set()

    def drop_manifest(self, project: str, item: str, release: str) -> None:
        self._manifests.pop((project, item, release), None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._manifest_dir(project, item) / f"{release}.json")

    # -- tokens

    def _tokens_path(self, project: str) -> Path:
        return self.state_dir / "tokens" / f"{project}.json"

    @contextlib.contextmanager
    def _tokens_lock(self, project: str) -> Iterator[None]:
        folder = self.state_dir / "tokens"
        folder.mkdir(exist_ok=True)
        with storage.locked(folder / f"{project}.lock"):
            yield

    def tokens(self, project: str) -> list[dict[str, str]]:
        """A project's tokens: ``{"id", "hash", "created"}`` each (hashes, never tokens)."""
        return list(storage.read_json(self._tokens_path(project), {"tokens": []})["tokens"])

    def add_token(self, project: str, token: dict[str, str],
                  check: Callable[[], Any] | None = None) -> None:
        """Record a token; ``check`` (that the project exists) runs under the lock that
        ``drop_tokens`` takes, so a token is never recorded for a deleted project."""
        with self._tokens_lock(project):
            if check is not None:
                check()
            self._save_tokens(project, [*self.tokens(project), token])

    def revoke_token(self, project: str, token_id: str) -> bool:
        with self._tokens_lock(project):
            tokens = self.tokens(project)
            kept = [t for t in tokens if t["id"] != token_id]
            if len(kept) == len(tokens):
                return False
            self._save_tokens(project, kept)
            return True

    def drop_tokens(self, project: str) -> None:
        with self._tokens_lock(project), contextlib.suppress(FileNotFoundError):
            os.unlink(self._tokens_path(project))

    def token_projects(self) -> set[str]:
        with contextlib.suppress(FileNotFoundError):
            return {n[:-len(".json")] for n in os.listdir(self.state_dir / "tokens")
                    if n.endswith(".json") and not n.startswith(storage.TMP_PREFIX)}
        return set()

    def _save_tokens(self, project: str, tokens: list[dict[str, str]]) -> None:
        (self.state_dir / "tokens").mkdir(exist_ok=True)
        storage.write_json(self._tokens_path(project), {"tokens": tokens}, mode=0o600)

    def _split_legacy_tokens(self) -> None:
        """Move ``tokens.json`` (every project's tokens in one file, as artstore kept them
        before) into a file per project, so a token's check reads only its project's."""
        legacy = self.state_dir / "tokens.json"
        for project, tokens in storage.read_json(legacy, {}).items():
            with self._tokens_lock(project):  # a worker starting beside us does the same
                kept = self.tokens(project)
                self._save_tokens(project, [*kept, *(t for t in tokens if t not in kept)])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(legacy)

    # -- the store as a whole

    def format(self) -> int:
        """1 until a store written by an older artstore is upgraded."""
        return int(storage.read_json(self.format_path, {"format": 1})["format"])

    def set_format(self, number: int) -> None:
        storage.write_json(self.format_path, {"format": number})

    def mark_changed(self, project: str) -> None:
        """Note that what ``project`` has published changed, for ``changes_since`` in every
        worker. Not durable: after a crash every worker starts from nothing anyway."""
        fd = os.open(self.changes_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{project}\n".encode())  # one short append: never interleaved
            full = os.fstat(fd).st_size > CHANGES_LIMIT
        finally:
            os.close(fd)
        if full:  # a new, empty file: whoever reads it next looks at everything once
            storage.atomic_write(self.changes_path, b"", durable=False)

    def changes_since(self, cursor: Cursor | None) -> tuple[Cursor, set[str] | None]:
        """The projects whose configuration changed (created, changed, deleted) or that
        were marked changed since ``cursor`` (as a previous call returned it), and the
        cursor for the next call. None instead of the names when they cannot be known (no
        cursor, a cursor from too many changes ago, a changes.log begun anew): anything
        may have changed. Call it before reading the projects, so that they show every
        change the cursor covers.

        A project marked in the instant changes.log is begun anew can be missed; a reader
        looks at everything now and then (``Store.list_projects``)."""
        configured, names = self.registry.changed_since(None if cursor is None else cursor[0])
        published, marked = self._marked_since(None if cursor is None else cursor[1])
        if names is None or marked is None:
            return (configured, published), None
        return (configured, published), names | marked

    def _marked_since(self, cursor: tuple[int, int] | None
                      ) -> tuple[tuple[int, int], set[str] | None]:
        try:
            with open(self.changes_path, "rb") as f:
                st = os.fstat(f.fileno())
                if cursor is None or cursor[0] != st.st_ino or cursor[1] > st.st_size:
                    return (st.st_ino, st.st_size), None
                f.seek(cursor[1])
                data = f.read(st.st_size - cursor[1])
        except FileNotFoundError:
            return (0, 0), (set() if cursor == (0, 0) else None)
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written waits
        return ((st.st_ino, cursor[1] + len(whole)),
                {line.decode(errors="replace") for line in whole.split(b"\n") if line})

    @contextlib.contextmanager
    def maintenance_lock(self) -> Iterator[bool]:
        """True for the one worker that does the background maintenance now."""
        with storage.locked(self.state_dir / "maintenance.lock", blocking=False) as mine:
            yield mine

    def fold(self) -> None:
        """Fold the recent changes of projects into ``projects.json`` (at start and stop)."""
        self.registry.fold()

    def sweep(self, projects: Mapping[str, Project]) -> None:
        """Remove leftovers of writers that died, and the state of projects that are gone."""
        self.fold()
        storage.sweep_temp_entries(self.state_dir)
        storage.sweep_temp_entries(self.state_dir / "tokens")
        storage.sweep_temp_entries(self.items_dir)
        for entry in os.scandir(self.items_dir):
            if entry.name not in projects and not entry.name.startswith("."):
                storage.remove_tree(Path(entry.path))
        for name, project in projects.items():
            storage.sweep_temp_entries(self.items_dir / name)
            for item in project.items:
                storage.sweep_temp_entries(self._manifest_dir(name, item))
