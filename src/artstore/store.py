"""The store: projects, items, releases and collections on disk.

Layout, for project ``p`` and item ``i``::

    base_path/p/i                -> symlink to .artstore/i/<release>   (what is live)
    base_path/p/.artstore/i/<release>/   kept releases (or the collection's files)
    base_path/p/.artstore/i/.tmp-*       staging, swept when abandoned
    state_dir/items/p/i.json             the item's releases or files, and which is live
    state_dir/items/p/i.lock             serialises changes to the item across processes

Publishing stages a release beside the live tree, records it in the item's state file
(the commit point), then swaps the symlink in one atomic rename. Whatever instant a
process dies at, the next start (``sweep``) brings the symlink and the state file back
into agreement and removes leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from . import archive, htmlrefs, pages, storage
from .blobs import Collected, LocalBlobStore
from .errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    NotFound,
    TooLarge,
    Unprocessable,
    UnsupportedType,
)
from .names import NAME_RE, check_filename, check_name, filename_problem
from .registry import RELEASE_TYPES, Registry, normalise_project
from .settings import Settings

log = logging.getLogger("artstore")
BOOKKEEPING = ".artstore"
MANIFEST_CACHE = 64  # manifests each worker keeps in memory
MANIFESTS = ".manifests"  # state/items/<project>/<item>.manifests/<release>.json
# 1: every release a full copy (artstore before the blob store); 2: blobs and manifests.
FORMAT = 2
CHUNK = 1024 * 1024
META_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_META_ITEMS = 50
MAX_META_VALUE = 1024


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_metadata(fields: dict[str, str]) -> dict[str, str]:
    """Metadata sent with an upload: a few short string fields with plain keys."""
    if len(fields) > MAX_META_ITEMS:
        raise BadRequest(f"at most {MAX_META_ITEMS} metadata fields are accepted")
    for key, value in fields.items():
        if not META_KEY_RE.fullmatch(key):
            raise BadRequest(f"invalid metadata key {key!r}: use letters, digits, . _ -")
        if len(value) > MAX_META_VALUE:
            raise BadRequest(f"metadata field {key!r} is longer than {MAX_META_VALUE} characters")
    return dict(fields)


def upload_too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than the limit of {limit} bytes")


class Incoming:
    """An upload being received into ``temp_path``: counted, hashed and written as it comes.

    It is the only copy of the body the service makes; publishing moves it into place
    when ``temp_path`` shares a filesystem with ``base_path``. The hashing and writing
    run in a second thread (``storage.StreamWriter``), beside the receiving. While open
    it holds an ``flock``, so a sweep in another worker never removes it.
    """

    def __init__(self, temp_dir: Path, limit: int) -> None:
        fd, path = storage.claimed_file(temp_dir, storage.TMP_PREFIX + "upload-")
        self.path = Path(path)
        self.file = os.fdopen(fd, "w+b", buffering=0)
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self._writer = storage.StreamWriter(fd, self._hash.update)

    def write(self, data: bytes | memoryview) -> int:
        """Take ``data`` (used only until this returns: it may be a reused buffer)."""
        size = len(data)
        self.size += size
        if self.size > self.limit:
            raise upload_too_large(self.limit)
        with storage.disk_errors("receiving the upload"):
            self._writer.write(data)
        return size

    def finish(self) -> None:
        """Wait until every byte received is written; then ``sha256`` and ``read`` work."""
        with storage.disk_errors("receiving the upload"):
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


class Store:
    """The domain: every operation the API offers, on the filesystem, no HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.base_path
        self.registry = Registry(settings.state_dir)
        self.items_state = settings.state_dir / "items"
        self.limits = archive.Limits(
            max_bytes=settings.max_extract_bytes,
            max_members=settings.max_members,
            max_path_bytes=settings.max_path_bytes,
            max_depth=settings.max_path_depth,
            max_component_bytes=settings.max_name_bytes,
            max_ratio=settings.max_ratio,
        )
        for path in (self.base, settings.temp_path, self.items_state):
            path.mkdir(parents=True, exist_ok=True)
        self.registry.load()  # a broken projects.json stops start-up here
        # Rewritten with new random content after every change, so a worker knows when
        # its cached project listing is stale (mtimes are too coarse for that).
        self.changed_marker = settings.state_dir / "changed"
        self._listing: tuple[dict[str, Any], bytes, list[dict[str, Any]]] | None = None
        self.blobs = LocalBlobStore(self.base)
        self._manifests: dict[tuple[str, str, str], dict[str, tuple[str, int]]] = {}
        self.format_path = settings.state_dir / "format.json"
        if not self.registry.path.exists() and not self.format_path.exists():
            self._write_format()  # a new store: nothing written in an older format

    # ------------------------------------------------------------------ paths

    def _item_dir(self, project: str, item: str) -> Path:
        return self.base / project / BOOKKEEPING / item

    def _state_path(self, project: str, item: str) -> Path:
        return self.items_state / project / f"{item}.json"

    def _manifest_dir(self, project: str, item: str) -> Path:
        return self.items_state / project / f"{item}{MANIFESTS}"

    def _write_manifest(self, project: str, item: str, release: str,
                        manifest: dict[str, tuple[str, int]]) -> None:
        """Record what a release holds (path -> sha256, size) before its commit point."""
        folder = self._manifest_dir(project, item)
        folder.mkdir(parents=True, exist_ok=True)
        storage.write_json(folder / f"{release}.json",
                           {"files": {path: list(entry) for path, entry in manifest.items()}})

    def _manifest(self, project: str, item: str, release: str) -> dict[str, tuple[str, int]]:
        """A release's manifest ({} for one of an old store not upgraded yet). Manifests
        never change, so each worker keeps the last few it read."""
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

    def _stored(self, project: str, item: str, state: dict[str, Any]) -> dict[str, int]:
        """The distinct contents an item holds: sha256 -> size."""
        if state["type"] == "collection":
            return {f["sha256"]: f["size"] for f in state["files"]}
        held: dict[str, int] = {}
        for release in state["releases"]:
            held.update(self._manifest(project, item, release["release"]).values())
        return held

    @contextlib.contextmanager
    def _item_lock(self, project: str, item: str) -> Iterator[None]:
        folder = self.items_state / project
        folder.mkdir(parents=True, exist_ok=True)
        with storage.locked(folder / f"{item}.lock"):
            yield

    def _read_state(self, project: str, item: str, kind: str) -> dict[str, Any]:
        state = storage.read_json(self._state_path(project, item), None)
        if state is None or state.get("type") != kind:
            key = "files" if kind == "collection" else "releases"
            state = {"type": kind, "live": None, key: []}
        return state

    def _write_state(self, project: str, item: str, state: dict[str, Any]) -> None:
        storage.write_json(self._state_path(project, item), state)

    def _point_live(self, project: str, item: str, release: str | None) -> None:
        link = self.base / project / item
        if release is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            return
        with self._swapping_live(project, item, release):
            pass

    def _swapping_live(self, project: str, item: str,
                       release: str) -> contextlib.AbstractContextManager[None]:
        return storage.swapping_symlink(self.base / project / item,
                                        f"{BOOKKEEPING}/{item}/{release}", tmp_tag=f"{item}+")

    def _commit(self, project: str, item: str, state: dict[str, Any], *,
                stage: Path | None = None, doomed: Iterable[str] = (),
                freed: Iterable[str] | None = None) -> None:
        """Make ``state`` the item's, and its ``live`` release live: the step that publishes.

        What can fail for want of space - moving ``stage`` in as the new release, making
        the new symlink - happens before the state file is replaced (the commit point) and
        is undone if that fails. After it only the rename over the live symlink and the
        deletion of the ``doomed`` releases are left, and neither can turn the change into
        an error: nothing may answer 507 for a change that took effect. ``freed``: the blobs
        the doomed held, when they are not in manifests (a collection's). Called with the
        item lock held.
        """
        folder = self._item_dir(project, item)
        release = state["live"]
        with self._swapping_live(project, item, release):
            if stage is not None:
                os.rename(stage, folder / release)
            try:
                self._write_state(project, item, state)  # the commit point
            except BaseException:
                if stage is not None:  # back where the staging clean-up removes it
                    with contextlib.suppress(OSError):
                        os.rename(folder / release, stage)
                raise
        for gone in doomed:
            self._discard_release(project, item, gone, freed)

    def _discard_release(self, project: str, item: str, release: str,
                         freed: Iterable[str] | None = None) -> None:
        """Delete a release nothing refers to any more, then the blobs only it held; a
        failure is left to the sweep and the collector."""
        manifest = self._manifest_dir(project, item) / f"{release}.json"
        if freed is None:
            freed = [sha for sha, _ in self._manifest(project, item, release).values()]
        shas = list(freed)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(manifest)
            storage.remove_tree(self._item_dir(project, item) / release, wait=False,
                                then=lambda: self.blobs.forget(shas))
        except OSError as exc:
            log.warning("could not delete %s/%s release %s (the next start's sweep will): %s",
                        project, item, release, exc)

    def _live_target(self, project: str, item: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self.base / project / item))
        except (FileNotFoundError, OSError):
            return None

    @contextlib.contextmanager
    def _staging(self, project: str, item: str) -> Iterator[Path]:
        """A claimed staging directory beside the item's releases, removed unless used."""
        folder = self._item_dir(project, item)
        folder.mkdir(parents=True, exist_ok=True)
        stage, claim = storage.claimed_dir(folder, storage.TMP_PREFIX + "stage-")
        try:
            os.chmod(stage, 0o755)
            yield stage
        finally:
            os.close(claim)
            if stage.exists():  # not renamed into place: the publish failed
                shutil.rmtree(stage, ignore_errors=True)

    # --------------------------------------------------------------- projects

    def _project(self, name: str) -> dict[str, Any]:
        check_name(name, "project name")
        conf = self.registry.get(name)
        if conf is None:
            raise NotFound(f"project {name!r} does not exist")
        return conf

    def _item_conf(self, project: str, item: str) -> dict[str, Any]:
        conf = self._project(project)
        check_name(item, "item name")
        if item not in conf["items"]:
            raise NotFound(f"project {project!r} has no item {item!r}")
        return conf["items"][item]

    def item_type(self, project: str, item: str) -> str:
        """The item's type; 404 if the project or item does not exist."""
        return str(self._item_conf(project, item)["type"])

    def project_created(self, name: str) -> str:
        """The project's creation id: a project deleted and created again has a new one."""
        return str(self._project(name)["created"])

    def _effective(self, conf: dict[str, Any]) -> dict[str, Any]:
        if conf["type"] == "collection":
            return {"type": "collection", "depth": conf.get("depth", self.settings.default_depth)}
        return {"type": conf["type"], "keep": conf.get("keep", self.settings.default_keep)}

    def last_publish(self, project: str, item: str) -> str | None:
        """When the live release was swapped in: the mtime of the live symlink."""
        try:
            st = os.lstat(self.base / project / item)
        except FileNotFoundError:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))

    def list_projects(self) -> list[dict[str, Any]]:
        """All projects; computed again only after something changed (in any worker)."""
        projects, marker = self.registry.load(), _read_marker(self.changed_marker)
        cached = self._listing
        if cached is not None and cached[0] is projects and cached[1] == marker:
            return cached[2]
        out = []
        for name, conf in sorted(projects.items()):
            times = [t for t in (self.last_publish(name, i) for i in conf["items"]) if t]
            out.append({"name": name, "description": conf["description"],
                        "items": sorted(conf["items"]), "last_publish": max(times, default=None)})
        self._listing = (projects, marker, out)
        return out

    def get_project(self, name: str) -> dict[str, Any]:
        conf = self._project(name)
        items = {}
        held: dict[str, int] = {}
        for item, item_conf in sorted(conf["items"].items()):
            state = self._read_state(name, item, item_conf["type"])
            stored = self._stored(name, item, state)
            held.update(stored)
            items[item] = {**self._effective(item_conf), "live": state["live"],
                           "last_publish": self.last_publish(name, item),
                           "stored_bytes": sum(stored.values())}
        return {"name": name, "description": conf["description"], "created": conf["created"],
                "stored_bytes": sum(held.values()), "items": items}

    def create_project(self, name: str, body: Any) -> dict[str, Any]:
        check_name(name, "project name")
        conf = {**normalise_project(body), "created": _new_id(set())}

        def add(projects: dict[str, Any]) -> None:
            if name in projects:
                raise Conflict(f"project {name!r} already exists")
            projects[name] = conf

        self.registry.change(add)
        (self.base / name).mkdir(exist_ok=True)
        self._write_project_page(name)
        self._write_root_page()
        return self.get_project(name)

    def update_project(self, name: str, body: Any, prune: bool) -> dict[str, Any]:
        """Replace a project's configuration. Never deletes data unless ``prune`` says so."""
        check_name(name, "project name")
        new = normalise_project(body)

        def replace(projects: dict[str, Any]) -> dict[str, Any]:
            if name not in projects:
                raise NotFound(f"project {name!r} does not exist")
            old = projects[name]
            affected = sorted(
                item for item, conf in old["items"].items()
                if item not in new["items"] or new["items"][item]["type"] != conf["type"]
            )
            if affected and not prune:
                raise Conflict(
                    "this change would delete the published data of "
                    f"{', '.join(map(repr, affected))}; repeat it with ?prune=true to do so",
                    items=affected,
                )
            projects[name] = {**new, "created": old["created"]}
            return old

        old = self.registry.change(replace)
        for item, conf in old["items"].items():
            if item not in new["items"] or new["items"][item]["type"] != conf["type"]:
                self._drop_item(name, item)
        for item, conf in new["items"].items():
            self._prune(name, item, conf)
        self._write_project_page(name)
        self._write_root_page()
        return self.get_project(name)

    def delete_project(self, name: str, forget: Callable[[], None] | None = None) -> None:
        """Delete a project and its files; ``forget`` runs right after the commit point
        (projects.json), before the slow removal of the files, to end its tokens."""
        conf = self._project(name)
        folder = self.items_state / name
        folder.mkdir(parents=True, exist_ok=True)
        held: set[str] = set()
        for item in set(conf["items"]) | self._items_on_disk(name):
            held |= self._held_blobs(name, item)

        def remove(projects: dict[str, Any]) -> None:
            if projects.pop(name, None) is None:
                raise NotFound(f"project {name!r} does not exist")

        # Under the project's page lock, so no page writer recreates its directory.
        with storage.locked(folder / "pages.lock"):
            self.registry.change(remove)
            if forget is not None:
                forget()
            storage.remove_tree(self.base / name)
        storage.remove_tree(folder)
        self.blobs.forget(held)
        self._write_root_page()

    # ----------------------------------------------------------------- upload

    def receive(self) -> Incoming:
        return Incoming(self.settings.temp_path, self.settings.max_upload_bytes)

    def publish(
        self,
        project: str,
        item: str,
        upload: Incoming,
        *,
        filename: str | None,
        metadata: dict[str, str],
        sha256: str | None,
        site_url: str,
        project_created: str | None = None,
        check: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Publish a received upload to an item; the caller discards ``upload`` afterwards.

        ``project_created`` is the project's ``project_created()`` when the upload began
        (default: now); ``check`` runs at the commit point, under the item lock, and may
        raise to publish nothing (the caller's token was revoked meanwhile).
        """
        conf = self._item_conf(project, item)
        started = project_created
        if started is None:
            started = self._project(project)["created"]

        def may_commit() -> None:
            if check is not None:
                check()
            self._still_configured(project, item, conf, started)

        metadata = check_metadata(metadata)
        upload.finish()
        if sha256 is not None and sha256.strip().lower() != upload.sha256:
            raise Unprocessable(
                f"sha256 mismatch: the client said {sha256.strip()!r}, the upload has "
                f"{upload.sha256!r}; nothing was published"
            )
        entry = {"sha256": upload.sha256, "size": upload.size, "created": now(),
                 "metadata": metadata}
        if conf["type"] == "collection":
            result = self._publish_collection_file(project, item, conf, upload, filename, entry,
                                                   may_commit)
        else:
            result = self._publish_release(project, item, conf, upload, filename, entry,
                                           may_commit)
        result["warnings"] = [*result["warnings"], *self._refresh_project_page(project)]
        return {"project": project, "item": item, "sha256": entry["sha256"],
                "size": entry["size"], "metadata": metadata,
                **result, "url": site_url + result["url"]}

    def _publish_release(self, project: str, item: str, conf: dict[str, Any],
                         upload: Incoming, filename: str | None, entry: dict[str, Any],
                         may_commit: Callable[[], None]) -> dict[str, Any]:
        with self._staging(project, item) as stage, storage.disk_errors("extracting the upload"):
            warnings: list[str] = []
            unwrapped = None
            if conf["type"] == "html":
                name = _html_name(filename)
                _check_html(upload)
                warnings = _html_warnings(upload, name)
                _place(upload, stage / name)
                if name != "index.html":
                    # The item's URL, which the project page links, shows it on any static
                    # server: the same file under a second name, not a copy.
                    os.link(stage / name, stage / "index.html")
                files, page = 1, ("" if name == "index.html" else quote(name))
                manifest = dict.fromkeys({name, "index.html"}, (upload.sha256, upload.size))
                size = upload.size
            else:
                if not archive.sniff(conf["type"], str(upload.path)):
                    expected = ("a gzip-compressed tar archive" if conf["type"] == "tgz"
                                else "a zip archive")
                    raise UnsupportedType(f"item {item!r} takes {expected}; "
                                          "the upload is not one")
                done = archive.extract(conf["type"], str(upload.path), str(stage),
                                       self.limits)
                warnings, files, page = list(done.warnings), done.files, ""
                unwrapped = done.root or None
                manifest, size = done.manifest, done.bytes
            self.blobs.intern((f"{stage}/{path}", sha) for path, (sha, _) in manifest.items())
            storage.sync_filesystem(stage)
            entry = {**entry, "files": files, "bytes": size}
            with self._item_lock(project, item):
                may_commit()
                state = self._read_state(project, item, conf["type"])
                release = _new_id({r["release"] for r in state["releases"]})
                self._write_manifest(project, item, release, manifest)
                state["releases"].append({"release": release, **entry})
                state["live"] = release
                doomed = self._beyond_keep(conf, state)
                try:
                    self._commit(project, item, state, stage=stage, doomed=doomed)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(self._manifest_dir(project, item) / f"{release}.json")
                    raise
        return {"release": release, "files": files, "warnings": warnings,
                "unwrapped": unwrapped, "url": f"{quote(project)}/{quote(item)}/{page}"}

    def _publish_collection_file(self, project: str, item: str, conf: dict[str, Any],
                                 upload: Incoming, filename: str | None,
                                 entry: dict[str, Any],
                                 may_commit: Callable[[], None]) -> dict[str, Any]:
        if not filename:
            raise BadRequest("a collection upload needs a file name "
                             "(the multipart file name, or ?filename= with PUT)")
        name = check_filename(filename)
        self._refuse_existing(project, item, conf, name)
        with self._staging(project, item) as stage, storage.disk_errors("storing the upload"):
            _place(upload, stage / name)
            self.blobs.intern([(str(stage / name), upload.sha256)])
            storage.sync_filesystem(stage)
            with self._item_lock(project, item):
                may_commit()
                state = self._refuse_existing(project, item, conf, name)
                files = state["files"] + [{"name": name, **entry}]
                state = self._commit_collection(project, item, conf, state, files, stage)
        return {"release": name, "files": len(state["files"]), "warnings": [],
                "unwrapped": None, "url": f"{quote(project)}/{quote(item)}/{quote(name)}"}

    def _refuse_existing(self, project: str, item: str, conf: dict[str, Any],
                         name: str) -> dict[str, Any]:
        state = self._read_state(project, item, conf["type"])
        if any(f["name"] == name for f in state["files"]):
            raise Conflict(f"{project}/{item} already has a file named {name!r}; "
                           "delete it first to replace it")
        return state

    def _commit_collection(self, project: str, item: str, conf: dict[str, Any],
                           state: dict[str, Any], files: list[dict[str, Any]],
                           stage: Path) -> dict[str, Any]:
        """Make ``files`` (oldest first) the collection, keeping the newest ``depth``.

        ``stage`` already holds any new file; the kept ones are hard-linked in from the
        live generation, so the cost follows ``depth``, not the collection's history.
        Called with the item lock held.
        """
        with storage.disk_errors("writing the collection"):
            return self._commit_collection_files(project, item, conf, state, files, stage)

    def _commit_collection_files(self, project: str, item: str, conf: dict[str, Any],
                                 state: dict[str, Any], files: list[dict[str, Any]],
                                 stage: Path) -> dict[str, Any]:
        depth = self._effective(conf)["depth"]
        files = files[-depth:]
        live_dir = self._item_dir(project, item) / state["live"] if state["live"] else None
        for f in files:
            target = stage / f["name"]
            if (not target.exists() and not self.blobs.link(f["sha256"], str(target))
                    and live_dir is not None):
                os.link(live_dir / f["name"], target)  # a blob of an old store
        newest_first = list(reversed(files))
        listing = [{**f, "url": quote(f["name"])} for f in newest_first]
        _write_file(stage / "index.html", pages.collection_page(project, item, newest_first))
        index = {"project": project, "item": item, "files": listing,
                 "latest": listing[0] if listing else None}
        _write_file(stage / "index.json",
                    (json.dumps(index, indent=1) + "\n").encode())
        storage.sync_filesystem(stage)
        generation = _new_id({state["live"]} if state["live"] else set())
        old, old_files = state["live"], state["files"]
        state = {"type": "collection", "live": generation, "files": files}
        self._commit(project, item, state, stage=stage, doomed=[old] if old else [],
                     freed=[f["sha256"] for f in old_files])
        return state

    def _still_configured(self, project: str, item: str, conf: dict[str, Any],
                          created: str) -> None:
        """A project or item deleted, retyped or deleted and created again while the upload
        ran wins over the upload."""
        current = self.registry.get(project)
        if (current is None or current["created"] != created
                or current["items"].get(item, {}).get("type") != conf["type"]):
            raise Conflict(f"{project}/{item} was removed, changed or created again while "
                           "uploading; nothing was published")

    # ------------------------------------------------------------ item reads

    def item_info(self, project: str, item: str, site_url: str) -> dict[str, Any]:
        conf = self._item_conf(project, item)
        state = self._read_state(project, item, conf["type"])
        stored = sum(self._stored(project, item, state).values())
        if conf["type"] == "collection":
            prefix = f"{site_url}{quote(project)}/{quote(item)}/"
            files = [{**f, "url": prefix + quote(f["name"])} for f in reversed(state["files"])]
            return {"name": item, "type": "collection", **self._effective(conf),
                    "live": state["live"], "stored_bytes": stored, "url": prefix,
                    "files": files}
        releases = [{"bytes": None, **r} for r in reversed(state["releases"])]
        return {"name": item, **self._effective(conf), "live": state["live"],
                "stored_bytes": stored, "url": f"{site_url}{quote(project)}/{quote(item)}/",
                "releases": releases}

    def latest_url(self, project: str, item: str, site_url: str) -> str:
        info = self.item_info(project, item, site_url)
        if info["type"] != "collection":
            raise NotFound(f"{project}/{item} is not a collection")
        if not info["files"]:
            raise NotFound(f"{project}/{item} has no files yet")
        return str(info["files"][0]["url"])

    # -------------------------------------------------------- item changes

    def rollback(self, project: str, item: str, release: str | None,
                 site_url: str) -> dict[str, Any]:
        conf = self._item_conf(project, item)
        if conf["type"] not in RELEASE_TYPES:
            raise Conflict(f"{project}/{item} is a collection; collections have no releases "
                           "to roll back to")
        with self._item_lock(project, item):
            state = self._read_state(project, item, conf["type"])
            ids = [r["release"] for r in state["releases"]]
            if release is None:
                position = ids.index(state["live"]) if state["live"] in ids else 0
                if position == 0:
                    raise Conflict(f"{project}/{item} has no release before the live one "
                                   "to roll back to")
                release = ids[position - 1]
            elif release not in ids:
                raise NotFound(f"{project}/{item} has no kept release {release!r}")
            elif release == state["live"]:
                raise Conflict(f"release {release!r} is already live")
            state["live"] = release
            self._commit(project, item, state)
        self._refresh_project_page(project)
        return self.item_info(project, item, site_url)

    def delete_file(self, project: str, item: str, filename: str) -> None:
        conf = self._item_conf(project, item)
        if conf["type"] != "collection":
            raise Conflict(f"{project}/{item} is not a collection; files are removed by "
                           "publishing a new release")
        with self._item_lock(project, item):
            state = self._read_state(project, item, conf["type"])
            files = [f for f in state["files"] if f["name"] != filename]
            if len(files) == len(state["files"]):
                raise NotFound(f"{project}/{item} has no file named {filename!r}")
            with self._staging(project, item) as stage:
                self._commit_collection(project, item, conf, state, files, stage)
        self._refresh_project_page(project)

    def _prune(self, project: str, item: str, conf: dict[str, Any]) -> None:
        with self._item_lock(project, item):
            state = self._read_state(project, item, conf["type"])
            self._prune_locked(project, item, conf, state)

    def _prune_locked(self, project: str, item: str, conf: dict[str, Any],
                      state: dict[str, Any]) -> None:
        """Apply ``keep`` or ``depth`` to an item; the live release always stays."""
        if conf["type"] == "collection":
            depth = self._effective(conf)["depth"]
            if len(state["files"]) > depth:
                with self._staging(project, item) as stage:
                    self._commit_collection(project, item, conf, state, state["files"], stage)
            return
        doomed = self._beyond_keep(conf, state)
        if doomed:
            self._write_state(project, item, state)
            for release in doomed:
                self._discard_release(project, item, release)

    def _beyond_keep(self, conf: dict[str, Any], state: dict[str, Any]) -> list[str]:
        """Drop from ``state`` the releases ``keep`` no longer keeps (never the live one);
        their ids."""
        keep = self._effective(conf)["keep"]
        releases = state["releases"]
        kept = {state["live"]} if state["live"] else set()
        for r in reversed(releases):
            if len(kept) >= keep:
                break
            kept.add(r["release"])
        state["releases"] = [r for r in releases if r["release"] in kept]
        return [r["release"] for r in releases if r["release"] not in kept]

    def _drop_item(self, project: str, item: str) -> None:
        with self._item_lock(project, item):
            self._remove_item_data(project, item)

    def _remove_item_data(self, project: str, item: str) -> None:
        """Delete an item's live link, releases and state, then the blobs only it held.
        Called with the item lock held."""
        held = self._held_blobs(project, item)
        self._point_live(project, item, None)
        storage.remove_tree(self._item_dir(project, item))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path(project, item))
        storage.remove_tree(self._manifest_dir(project, item))
        self.blobs.forget(held)

    def _held_blobs(self, project: str, item: str) -> set[str]:
        """Every blob an item's state file and manifests name, whatever its type."""
        state = storage.read_json(self._state_path(project, item), None) or {}
        held = {f["sha256"] for f in state.get("files", [])}
        for r in state.get("releases", []):
            held.update(sha for sha, _ in self._manifest(project, item, r["release"]).values())
        return held

    # ---------------------------------------------------------------- pages

    def _refresh_project_page(self, project: str) -> list[str]:
        """Rewrite the project's page after a change that has taken effect. A full disk
        only leaves the page behind until the next change or start, so it is a warning."""
        try:
            with storage.disk_errors("writing the project's index page"):
                self._write_project_page(project)
        except InsufficientStorage as exc:
            log.warning("project %s: %s", project, exc.detail)
            return [f"the project's index page was not updated: {exc.detail}"]
        return []

    def _write_project_page(self, project: str) -> None:
        folder = self.items_state / project
        folder.mkdir(parents=True, exist_ok=True)
        with storage.locked(folder / "pages.lock"):
            conf = self.registry.get(project)
            if conf is None:
                return
            (self.base / project).mkdir(exist_ok=True)
            items = [{"name": name, "type": c["type"],
                      "published": self.last_publish(project, name)}
                     for name, c in sorted(conf["items"].items())]
            _write_page(self.base / project / "index.html",
                        pages.project_page(project, conf["description"], items))
        _mark_changed(self.changed_marker)

    def _write_root_page(self) -> None:
        with storage.locked(self.settings.state_dir / "pages.lock"):
            projects = [{"name": n, "description": c["description"], "items": c["items"]}
                        for n, c in sorted(self.registry.load().items())]
            _write_page(self.base / "index.html", pages.root_page(projects))

    # ---------------------------------------------------------- maintenance

    def _write_format(self) -> None:
        storage.write_json(self.format_path, {"format": FORMAT})

    def format(self) -> int:
        """The store's format: 1 until a store written by an older artstore is upgraded."""
        return int(storage.read_json(self.format_path, {"format": 1})["format"])

    def maintain(self) -> Collected | None:
        """The background work, done by one worker at a time (None when another is at it):
        finish upgrading a store of an older format, then collect unreferenced blobs."""
        with storage.locked(self.settings.state_dir / "maintenance.lock",
                            blocking=False) as mine:
            if not mine:
                return None
            if self.format() < FORMAT:
                self.upgrade()
            collected = self.blobs.collect()
        if collected.blobs:
            log.info("collected %d unreferenced blobs (%d bytes); %d in use",
                     collected.blobs, collected.bytes, collected.kept)
        return collected

    def upgrade(self) -> None:
        """Bring a store written by an older artstore (format 1: every release a full copy)
        to the blob store, in place, while it serves.

        Item by item under the item lock: each kept release's files become links of their
        blobs, one ``rename`` each, so a served file never goes missing or changes; then the
        release gets its manifest and the item's state its ``bytes``. Killed at any point,
        it starts again at the next start: files already linked are passed over, and the
        format is recorded only when every item is done.
        """
        for name, conf in self.registry.load().items():
            for item, item_conf in conf["items"].items():
                with self._item_lock(name, item):
                    if self.registry.get(name) is not None:  # not deleted meanwhile
                        self._upgrade_item(name, item, item_conf)
        self._write_format()
        log.info("the store is upgraded to format %d", FORMAT)

    def _upgrade_item(self, project: str, item: str, conf: dict[str, Any]) -> None:
        state = self._read_state(project, item, conf["type"])
        folder = self._item_dir(project, item)
        changed = False
        if conf["type"] == "collection":
            live = folder / state["live"] if state["live"] else None
            for f in state["files"] if live else []:
                path = str(live / f["name"])
                sha, size = _hash_file(path)
                if (sha, size) != (f["sha256"], f["size"]):
                    log.warning("%s/%s: %s does not hold what was uploaded; recorded as it is",
                                project, item, f["name"])
                    f.update(sha256=sha, size=size)
                    changed = True
                self.blobs.intern([(path, sha)])
        for release in state.get("releases", []):
            if release.get("bytes") is not None:
                continue
            tree = folder / release["release"]
            paths = _tree_files(tree)
            if conf["type"] == "html" and paths and "index.html" not in paths:
                os.link(tree / paths[0], tree / "index.html")  # as an html release is now
                paths.append("index.html")
            manifest = {path: _hash_file(f"{tree}/{path}") for path in paths}
            self.blobs.intern((f"{tree}/{path}", sha) for path, (sha, _) in manifest.items())
            self._write_manifest(project, item, release["release"], manifest)
            release["bytes"] = sum(size for path, (_, size) in manifest.items()
                                   if conf["type"] != "html" or path == paths[0])
            changed = True
        if changed:
            self._write_state(project, item, state)

    # ---------------------------------------------------------------- sweep

    def sweep(self) -> None:
        """Bring disk and state back into agreement after a crash; remove leftovers.

        Safe to run while other workers serve: uploads and staging in use are claimed
        with ``flock``, and each item is swept under its lock.
        """
        storage.sweep_temp_entries(self.settings.temp_path)
        storage.sweep_temp_entries(self.base)
        storage.sweep_temp_entries(self.settings.state_dir)
        storage.sweep_temp_entries(self.items_state)
        projects = self.registry.load()
        for entry in os.scandir(self.base):
            if (entry.is_dir(follow_symlinks=False) and entry.name not in projects
                    and _is_project_dir(Path(entry.path))):
                storage.remove_tree(Path(entry.path))  # a delete that was cut short
        if self.items_state.is_dir():
            for entry in os.scandir(self.items_state):
                if entry.name not in projects and not entry.name.startswith("."):
                    storage.remove_tree(Path(entry.path))
        for name, conf in projects.items():
            for folder in (self.base / name, self.base / name / BOOKKEEPING,
                           self.items_state / name):
                storage.sweep_temp_entries(folder)
            for item in sorted(self._items_on_disk(name) - set(conf["items"])):
                self._sweep_removed_item(name, item)
            for item, item_conf in conf["items"].items():
                self._sweep_item(name, item, item_conf)
            self._write_project_page(name)
        self._write_root_page()

    def _items_on_disk(self, project: str) -> set[str]:
        """The items that have a live link, releases or a state file."""
        found: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            found.update(e.name for e in os.scandir(self.base / project) if e.is_symlink())
        with contextlib.suppress(FileNotFoundError):
            found.update(os.listdir(self.base / project / BOOKKEEPING))
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(self.items_state / project):
                for suffix in (".json", MANIFESTS):
                    if n.endswith(suffix):
                        found.add(n[:-len(suffix)])
        return {n for n in found if not n.startswith(storage.TMP_PREFIX)}

    def _sweep_removed_item(self, project: str, item: str) -> None:
        """Finish taking an item out of a project: the change was cut short after its
        commit point (projects.json), so the same name added again would bring back the
        old releases."""
        with self._item_lock(project, item):
            conf = self.registry.get(project)  # again: it may have been added back since
            if conf is not None and item not in conf["items"]:
                self._remove_item_data(project, item)

    def _sweep_item(self, project: str, item: str, conf: dict[str, Any]) -> None:
        with self._item_lock(project, item):
            storage.sweep_temp_entries(self.base / project, symlink_tag=f"{item}+")
            folder = self._item_dir(project, item)
            storage.sweep_temp_entries(folder)
            state = self._read_state(project, item, conf["type"])
            before = json.dumps(state, sort_keys=True)
            on_disk = set()
            if folder.is_dir():
                on_disk = {e.name for e in os.scandir(folder)
                           if not e.name.startswith(storage.TMP_PREFIX)}
            if conf["type"] == "collection":
                if state["live"] not in on_disk:
                    state = {"type": "collection", "live": None, "files": []}
                known = {state["live"]} if state["live"] else set()
            else:
                state["releases"] = [r for r in state["releases"] if r["release"] in on_disk]
                known = {r["release"] for r in state["releases"]}
                if state["live"] not in known:
                    state["live"] = state["releases"][-1]["release"] if known else None
            for stray in on_disk - known:
                storage.remove_tree(folder / stray)
            manifests = self._manifest_dir(project, item)
            storage.sweep_temp_entries(manifests)
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(manifests):
                    release = name[:-len(".json")]
                    if conf["type"] == "collection" or release not in known:
                        os.unlink(manifests / name)  # of a publish killed before its commit
            if json.dumps(state, sort_keys=True) != before:
                self._write_state(project, item, state)
            if self._live_target(project, item) != state["live"]:
                self._point_live(project, item, state["live"])
            if state["live"]:
                self._prune_locked(project, item, conf, state)


# -------------------------------------------------------------------- helpers


def _new_id(taken: set[str]) -> str:
    """A release id: sortable by time, readable, unique within the item."""
    while True:
        release = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
        if release not in taken:
            return release


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
    return found


def _base_name(filename: str) -> str:
    # Browsers and some clients send a path; only its last component is a name.
    return re.split(r"[/\\]", filename)[-1]


def _html_name(filename: str | None) -> str:
    name = _base_name(filename) if filename else "index.html"
    # Not check_filename: its reserved names are a collection's generated indexes, and
    # an html item's page is rightly called index.html.
    problem = filename_problem(name)
    if problem:
        raise BadRequest(f"invalid file name {name!r}: {problem}")
    if not name.lower().endswith((".html", ".htm")):
        raise UnsupportedType(f"an html item takes one .html or .htm file, not {name!r}")
    return name


def _check_html(upload: Incoming) -> None:
    upload.seek(0)
    while True:
        chunk = upload.read(CHUNK)
        if not chunk:
            return
        if b"\0" in chunk:
            raise UnsupportedType("an html item takes a text .html file; the upload holds "
                                  "NUL bytes, so it is not one")


def _html_warnings(upload: Incoming, name: str) -> list[str]:
    """A page that needs files an html item cannot hold is published, with a warning."""
    upload.seek(0)
    missing = htmlrefs.missing_files(iter(lambda: upload.read(CHUNK), b""), name)
    said = htmlrefs.warning(name, missing)
    return [said] if said else []


def _place(upload: Incoming, target: Path) -> None:
    """Move the received file into staging; copy only across filesystems."""
    try:
        os.link(upload.path, target)
    except OSError:
        upload.seek(0)
        with open(target, "xb") as out:
            shutil.copyfileobj(upload.file, out, CHUNK)
    os.chmod(target, 0o644)


def _is_project_dir(path: Path) -> bool:
    """True for a directory only artstore could have made: a project's, not a user's file."""
    if not NAME_RE.fullmatch(path.name):
        return False
    try:
        return all(e.name in ("index.html", BOOKKEEPING)
                   or e.name.startswith(storage.TMP_PREFIX) for e in os.scandir(path))
    except FileNotFoundError:  # deleted meanwhile by a running worker
        return False


def _mark_changed(marker: Path) -> None:
    storage.atomic_write(marker, os.urandom(8).hex().encode(), durable=False)


def _read_marker(marker: Path) -> bytes:
    try:
        return marker.read_bytes()
    except FileNotFoundError:
        return b""


def _write_page(path: Path, data: bytes) -> None:
    """Atomically replace a generated page, unless it already says exactly that."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    storage.atomic_write(path, data)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
    os.chmod(path, 0o644)
