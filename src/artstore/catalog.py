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
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
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
    value = conf.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= 10_000):
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
    """``projects.json``: every project's configuration; reads cached until it changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "projects.json"
        self.lock_path = Path(state_dir) / "projects.lock"
        self._cache: tuple[tuple[int, int, int], dict[str, Project]] | None = None

    def load(self) -> dict[str, Project]:
        """All projects by name. Raises ConfigError if the file is broken."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of projects")
            projects = {name: _stored_project(name, conf) for name, conf in data.items()}
        except (ValueError, BadRequest) as exc:
            detail = exc.detail if isinstance(exc, BadRequest) else str(exc)
            raise ConfigError(
                f"{self.path} is broken ({detail}); fix or restore it by hand while the "
                "service is stopped - it is never reset automatically"
            ) from None
        self._cache = (key, projects)
        return projects

    def get(self, name: str) -> Project | None:
        return self.load().get(name)

    def change(self, mutate: Callable[[dict[str, Project]], Any]) -> Any:
        """Run ``mutate`` on a copy of all projects under the lock, then save it.

        ``mutate`` may raise to abandon the change; its return value is passed back.
        """
        with storage.locked(self.lock_path):
            self._cache = None
            projects = dict(self.load())
            result = mutate(projects)
            storage.write_json(self.path, {n: p.as_json() for n, p in sorted(projects.items())})
            return result


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
        # Rewritten with new random content after every change, so a worker knows when its
        # cached listing is stale (mtimes are too coarse for that).
        self.changed_path = self.state_dir / "changed"
        self._manifests: dict[tuple[str, str, str], dict[str, tuple[str, int]]] = {}
        self.registry.load()  # a broken projects.json stops start-up here
        if not self.registry.path.exists() and not self.format_path.exists():
            self.set_format(FORMAT)  # a new store: nothing in it is of an older format

    # -- projects

    def projects(self) -> dict[str, Project]:
        return self.registry.load()

    def project(self, name: str) -> Project | None:
        return self.registry.get(name)

    def change_projects(self, mutate: Callable[[dict[str, Project]], Any]) -> Any:
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
        key = (project, item, release)
        found = self._manifests.get(key)
        if found is None:
            data = storage.read_json(self._manifest_dir(project, item) / f"{release}.json",
                                     {"files": {}})
            found = {path: (sha, size) for path, (sha, size) in data["files"].items()}
            if len(self._manifests) >= MANIFEST_CACHE:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[key] = found
        return found

    def manifest_ids(self, project: str, item: str) -> set[str]:
        with contextlib.suppress(FileNotFoundError):
            return {n[:-len(".json")] for n in os.listdir(self._manifest_dir(project, item))
                    if n.endswith(".json") and not n.startswith(storage.TMP_PREFIX)}
        return set()

    def drop_manifest(self, project: str, item: str, release: str) -> None:
        self._manifests.pop((project, item, release), None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._manifest_dir(project, item) / f"{release}.json")

    # -- the store as a whole

    def format(self) -> int:
        """1 until a store written by an older artstore is upgraded."""
        return int(storage.read_json(self.format_path, {"format": 1})["format"])

    def set_format(self, number: int) -> None:
        storage.write_json(self.format_path, {"format": number})

    def mark_changed(self) -> None:
        storage.atomic_write(self.changed_path, os.urandom(8).hex().encode(), durable=False)

    def changes(self) -> bytes:
        """A value that differs after every ``mark_changed`` in any worker."""
        try:
            return self.changed_path.read_bytes()
        except FileNotFoundError:
            return b""

    @contextlib.contextmanager
    def maintenance_lock(self) -> Iterator[bool]:
        """True for the one worker that does the background maintenance now."""
        with storage.locked(self.state_dir / "maintenance.lock", blocking=False) as mine:
            yield mine

    def sweep(self, projects: Mapping[str, Project]) -> None:
        """Remove leftovers of writers that died, and the state of projects that are gone."""
        storage.sweep_temp_entries(self.state_dir)
        storage.sweep_temp_entries(self.items_dir)
        for entry in os.scandir(self.items_dir):
            if entry.name not in projects and not entry.name.startswith("."):
                storage.remove_tree(Path(entry.path))
        for name, project in projects.items():
            storage.sweep_temp_entries(self.items_dir / name)
            for item in project.items:
                storage.sweep_temp_entries(self._manifest_dir(name, item))
