"""The rules: projects, items, releases and collections, and who wins when they meet.

Everything the API offers, as one call each: keep and depth, rollback, conflicts, what a
publish checks before and at its commit point. What the store knows is kept in the catalog
(``catalog.py``), the bytes and what is served in the blob store (``blobs.py``); the rules
never ask where either lives, and answer with typed records that the HTTP layer turns into
bodies and URLs.

Publishing builds the release in the blob store's staging (extracted and checked by
``archive.py``), seals it (every file a blob, flushed), then, under the item's lock, saves
its manifest and the item's new state in the catalog - the commit point - while the blob
store makes it live around that step. Whatever instant a process dies at, ``sweep`` at the
next start brings the blob store back into agreement with the catalog.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar
from urllib.parse import quote

from . import archive, htmlrefs, pages, storage
from .blobs import Collected, LocalBlobStore
from .catalog import (
    FORMAT,
    RELEASE_TYPES,
    Cursor,
    FileCatalog,
    ItemConfig,
    ItemState,
    Manifest,
    Project,
    Release,
    StoredFile,
    project_config,
)
from .errors import (
    BadRequest,
    ConfigError,
    Conflict,
    InsufficientStorage,
    NotFound,
    Unprocessable,
    UnsupportedType,
)
from .names import check_filename, check_name, filename_problem
from .settings import Settings
from .storage import Incoming, upload_too_large

if TYPE_CHECKING:
    from .pgcatalog import PostgresCatalog

__all__ = ["Incoming", "Store", "upload_too_large"]

log = logging.getLogger("artstore")
CHUNK = 1024 * 1024
META_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_META_ITEMS = 50
MAX_META_VALUE = 1024
ROOT_PAGE_INLINE = 0.005  # seconds: a rewrite of the list of projects this cheap is inline
ROOT_PAGE_DELAY = 1.0  # else at most one a second, in the background (servers only)
ROOT_PAGE_SETTLE = 0.1  # seconds the background rewrite waits after a change
LISTING_REFRESH = 60.0  # seconds: GET / looks at every project at least this often
BLOCK = 128  # projects per block of the listing (up to twice as many after inserts)
T = TypeVar("T")


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


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class ProjectSummary:
    name: str
    description: str
    items: tuple[str, ...]
    last_publish: str | None


@dataclass(frozen=True)
class ItemView:
    name: str
    config: ItemConfig  # with keep or depth filled in from the defaults
    state: ItemState
    published: str | None  # when the live release went live
    stored_bytes: int  # each content it holds counted once


@dataclass(frozen=True)
class ProjectView:
    project: Project
    items: tuple[ItemView, ...]
    stored_bytes: int


@dataclass(frozen=True)
class Published:
    """What an upload published: a release, or a collection file."""

    project: str
    item: str
    release: str  # the release id; for a collection, the file name
    sha256: str
    size: int
    files: int  # in the release; for a collection, in the collection now
    metadata: dict[str, str]
    warnings: list[str]
    unwrapped: str | None
    page: str  # below the item's URL: "" or the (quoted) file to open


# ------------------------------------------------------------------ store


class Store:
    """The rules, over a catalog and a blob store chosen by the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.blob_store:  # never keep bytes on disk while the settings say a bucket
            raise ConfigError("setting 'blob_store': the S3 blob store is not wired into the "
                              "store yet (issue 17); leave it empty to keep bytes under "
                              "base_path")
        settings.temp_path.mkdir(parents=True, exist_ok=True)
        self.catalog = open_catalog(settings)  # a broken projects.json stops us
        self.blobs = LocalBlobStore(settings.base_path)
        self.limits = archive.Limits(
            max_bytes=settings.max_extract_bytes,
            max_members=settings.max_members,
            max_path_bytes=settings.max_path_bytes,
            max_depth=settings.max_path_depth,
            max_component_bytes=settings.max_name_bytes,
            max_ratio=settings.max_ratio,
        )
        self._summaries = PerProject(self.catalog, self._summary)  # GET /
        self._root_rows = PerProject(self.catalog, _root_row)  # base_path/index.html
        self._root_page_wanted: threading.Event | None = None
        self._root_page_cost = 0.0  # seconds the last rewrite of the list of projects took

    # ----------------------------------------------------------- lookups

    def project(self, name: str) -> Project:
        check_name(name, "project name")
        found = self.catalog.project(name)
        if found is None:
            raise NotFound(f"project {name!r} does not exist")
        return found

    def _item_conf(self, project: str, item: str) -> ItemConfig:
        found = self.project(project)
        check_name(item, "item name")
        if item not in found.items:
            raise NotFound(f"project {project!r} has no item {item!r}")
        return found.items[item]

    def item_type(self, project: str, item: str) -> str:
        """The item's type; 404 if the project or item does not exist."""
        return self._item_conf(project, item).type

    def project_created(self, name: str) -> str:
        """The project's creation id: a project deleted and created again has a new one."""
        return self.project(name).created

    def _effective(self, conf: ItemConfig) -> ItemConfig:
        if conf.is_collection:
            return ItemConfig(conf.type, depth=conf.depth or self.settings.default_depth)
        return ItemConfig(conf.type, keep=conf.keep or self.settings.default_keep)

    def _stored(self, project: str, item: str, state: ItemState) -> dict[str, int]:
        """The distinct contents an item holds: sha256 -> size."""
        if state.type == "collection":
            return {f.sha256: f.size for f in state.files}
        held: dict[str, int] = {}
        for release in state.releases:
            held.update(self.catalog.manifest(project, item, release.id).values())
        return held

    def _held(self, project: str, item: str) -> set[str]:
        """Every blob an item's recorded state names, whatever its type now."""
        state = self.catalog.recorded_item(project, item)
        return set() if state is None else set(self._stored(project, item, state))

    # ----------------------------------------------------------- projects

    def list_projects(self) -> tuple[Block[ProjectSummary], ...]:
        """All projects, in name order, in blocks: the same blocks until something changes
        in them, in any worker (see ``PerProject``)."""
        return self._summaries.current()

    def _summary(self, name: str, project: Project) -> ProjectSummary:
        times = [t for t in (self.blobs.published(name, i) for i in project.items) if t]
        return ProjectSummary(name, project.description, tuple(sorted(project.items)),
                              max(times, default=None))

    def project_view(self, name: str) -> ProjectView:
        project = self.project(name)
        items = []
        held: dict[str, int] = {}
        for item, conf in project.items.items():
            state = self.catalog.item(name, item, conf.type)
            stored = self._stored(name, item, state)
            held.update(stored)
            items.append(ItemView(item, self._effective(conf), state,
                                  self.blobs.published(name, item), sum(stored.values())))
        return ProjectView(project, tuple(items), sum(held.values()))

    def create_project(self, name: str, body: Any) -> ProjectView:
        check_name(name, "project name")
        description, items = project_config(body)
        project = Project(name, description, _new_id(set()), items)

        def add(projects: dict[str, Project]) -> None:
            if name in projects:
                raise Conflict(f"project {name!r} already exists")
            projects[name] = project

        self.catalog.change_projects(add)
        self.blobs.add_project(name)
        self._write_project_page(name)
        self._write_root_page()
        return self.project_view(name)

    def update_project(self, name: str, body: Any, prune: bool) -> ProjectView:
        """Replace a project's configuration. Never deletes data unless ``prune`` says so."""
        check_name(name, "project name")
        description, items = project_config(body)

        def replace(projects: dict[str, Project]) -> Project:
            if name not in projects:
                raise NotFound(f"project {name!r} does not exist")
            old = projects[name]
            affected = sorted(item for item, conf in old.items.items()
                              if item not in items or items[item].type != conf.type)
            if affected and not prune:
                raise Conflict(
                    "this change would delete the published data of "
                    f"{', '.join(map(repr, affected))}; repeat it with ?prune=true to do so",
                    items=affected,
                )
            projects[name] = Project(name, description, old.created, items)
            return old

        old = self.catalog.change_projects(replace)
        for item, conf in old.items.items():
            if item not in items or items[item].type != conf.type:
                with self.catalog.item_lock(name, item):
                    self._remove_item(name, item)
        for item, conf in items.items():
            with self.catalog.item_lock(name, item):
                self._prune(name, item, conf, self.catalog.item(name, item, conf.type))
        self._write_project_page(name)
        self._write_root_page()
        return self.project_view(name)

    def delete_project(self, name: str, forget: Callable[[], None] | None = None) -> None:
        """Delete a project and its files; ``forget`` runs right after the commit point
        (the catalog's change), before the slow removal of the files, to end its tokens."""
        project = self.project(name)
        held: set[str] = set()
        for item in set(project.items) | self.catalog.items_on_record(name):
            held |= self._held(name, item)

        def remove(projects: dict[str, Project]) -> None:
            if projects.pop(name, None) is None:
                raise NotFound(f"project {name!r} does not exist")

        # Under the project's lock, so no page writer recreates its directory.
        with self.catalog.project_lock(name):
            self.catalog.change_projects(remove)
            if forget is not None:
                forget()
            # A publish past its last check (under the item lock) finishes its commit
            # before the files go; any later one finds the project gone and answers 409.
            for item in project.items:
                with self.catalog.item_lock(name, item):
                    pass
            self.blobs.remove_project(name)
        self.catalog.drop_project(name)
        self.blobs.forget(held)
        self._write_root_page()

    # ------------------------------------------------------------- uploads

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
        project_created: str | None = None,
        check: Callable[[], None] | None = None,
    ) -> Published:
        """Publish a received upload to an item; the caller discards ``upload`` afterwards.

        ``project_created`` is the project's ``project_created()`` when the upload began
        (default: now); ``check`` runs at the commit point, under the item lock, and may
        raise to publish nothing (the caller's token was revoked meanwhile).
        """
        conf = self._item_conf(project, item)
        started = project_created if project_created is not None else \
            self.project_created(project)

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
        try:
            if conf.is_collection:
                result = self._publish_file(project, item, conf, upload, filename, metadata,
                                            may_commit)
            else:
                result = self._publish_release(project, item, conf, upload, filename,
                                               metadata, may_commit)
        except FileNotFoundError:
            # The project's folder went while the upload was built in it: a delete won.
            self._still_configured(project, item, conf, started)
            raise
        result.warnings.extend(self._refresh_project_page(project))
        return result

    def _publish_release(self, project: str, item: str, conf: ItemConfig, upload: Incoming,
                         filename: str | None, metadata: dict[str, str],
                         may_commit: Callable[[], None]) -> Published:
        with self.blobs.staging(project, item) as stage, \
                storage.disk_errors("extracting the upload"):
            warnings: list[str] = []
            unwrapped = None
            if conf.type == "html":
                name = _html_name(filename)
                _check_html(upload)
                warnings = _html_warnings(upload, name)
                self.blobs.place(upload.path, stage, name)
                if name != "index.html":
                    # The item's URL, which the project page links, shows it on any static
                    # server: the same file under a second name, not a copy.
                    self.blobs.alias(stage, name, "index.html")
                files, page = 1, ("" if name == "index.html" else quote(name))
                manifest: Manifest = dict.fromkeys({name, "index.html"},
                                                   (upload.sha256, upload.size))
                size = upload.size
            else:
                if not archive.sniff(conf.type, str(upload.path)):
                    expected = ("a gzip-compressed tar archive" if conf.type == "tgz"
                                else "a zip archive")
                    raise UnsupportedType(f"item {item!r} takes {expected}; "
                                          "the upload is not one")
                done = archive.extract(conf.type, str(upload.path), str(stage), self.limits)
                warnings, files, page = list(done.warnings), done.files, ""
                unwrapped = done.root or None
                manifest, size = done.manifest, done.bytes
            self.blobs.seal(stage, manifest)
            with self.catalog.item_lock(project, item):
                may_commit()
                state = self.catalog.item(project, item, conf.type)
                release = Release(_new_id({r.id for r in state.releases}), now(),
                                  upload.sha256, upload.size, files, size, metadata)
                self.catalog.save_manifest(project, item, release.id, manifest)
                try:
                    self._commit(project, item, conf,
                                 state.with_(releases=(*state.releases, release),
                                             live=release.id), stage)
                except BaseException:
                    self.catalog.drop_manifest(project, item, release.id)
                    raise
        return Published(project, item, release.id, upload.sha256, upload.size, files,
                         metadata, warnings, unwrapped, page)

    def _publish_file(self, project: str, item: str, conf: ItemConfig, upload: Incoming,
                      filename: str | None, metadata: dict[str, str],
                      may_commit: Callable[[], None]) -> Published:
        if not filename:
            raise BadRequest("a collection upload needs a file name "
                             "(the multipart file name, or ?filename= with PUT)")
        name = check_filename(filename)
        self._refuse_existing(project, item, conf, name)
        entry = StoredFile(name, upload.sha256, upload.size, now(), metadata)
        with self.blobs.staging(project, item) as stage, \
                storage.disk_errors("storing the upload"):
            self.blobs.place(upload.path, stage, name)
            self.blobs.seal(stage, {name: (upload.sha256, upload.size)})
            with self.catalog.item_lock(project, item):
                may_commit()
                state = self._refuse_existing(project, item, conf, name)
                state = self._commit_collection(project, item, conf, state,
                                                (*state.files, entry), stage)
        return Published(project, item, name, upload.sha256, upload.size, len(state.files),
                         metadata, [], None, quote(name))

    def _refuse_existing(self, project: str, item: str, conf: ItemConfig,
                         name: str) -> ItemState:
        state = self.catalog.item(project, item, conf.type)
        if any(f.name == name for f in state.files):
            raise Conflict(f"{project}/{item} already has a file named {name!r}; "
                           "delete it first to replace it")
        return state

    def _still_configured(self, project: str, item: str, conf: ItemConfig,
                          created: str) -> None:
        """A project or item deleted, retyped or deleted and created again while the upload
        ran wins over the upload."""
        current = self.catalog.project(project)
        if (current is None or current.created != created or item not in current.items
                or current.items[item].type != conf.type):
            raise Conflict(f"{project}/{item} was removed, changed or created again while "
                           "uploading; nothing was published")

    # ------------------------------------------------------------- commits

    def _commit(self, project: str, item: str, conf: ItemConfig, state: ItemState,
                stage: Path | None = None) -> None:
        """Make ``state`` the item's, with the releases beyond ``keep`` dropped (never the
        live one), and its live release live: the step that publishes.

        What can fail for want of space happens before the catalog's commit point and is
        undone if it fails (see ``LocalBlobStore.making_live``); after it only the swap of
        the live link and the deletion of the dropped releases are left, and neither can
        turn the change into an error: nothing may answer 507 for a change that took
        effect. Called with the item lock held.
        """
        state, doomed = self._beyond_keep(conf, state)
        with self.blobs.making_live(project, item, state.live or "", stage):
            self.catalog.save_item(project, item, state)  # the commit point
        self._discard(project, item, doomed)

    def _discard(self, project: str, item: str, releases: Iterable[Release]) -> None:
        """Delete releases the catalog no longer names, and the blobs only they held."""
        for release in releases:
            held = [sha for sha, _ in self.catalog.manifest(project, item, release.id).values()]
            self.catalog.drop_manifest(project, item, release.id)
            self.blobs.discard(project, item, release.id, held)

    def _beyond_keep(self, conf: ItemConfig,
                     state: ItemState) -> tuple[ItemState, list[Release]]:
        """``state`` without the releases ``keep`` no longer keeps, and those."""
        keep = self._effective(conf).keep or 1
        kept = {state.live} if state.live else set()
        for release in reversed(state.releases):
            if len(kept) >= keep:
                break
            kept.add(release.id)
        return (state.with_(releases=tuple(r for r in state.releases if r.id in kept)),
                [r for r in state.releases if r.id not in kept])

    def _commit_collection(self, project: str, item: str, conf: ItemConfig,
                           state: ItemState, files: Iterable[StoredFile],
                           stage: Path) -> ItemState:
        """Make ``files`` (oldest first) the collection, keeping the newest ``depth``, in a
        new generation built in ``stage`` (which already holds any new file): the kept files
        are linked in from their blobs, so the cost follows ``depth``, not the history.
        Called with the item lock held."""
        depth = self._effective(conf).depth or 1
        kept = tuple(files)[-depth:]
        with storage.disk_errors("writing the collection"):
            for f in kept:
                self.blobs.keep(stage, f.name, f.sha256, project, item, state.live)
            newest_first = [f.as_json() for f in reversed(kept)]
            listing = [{**f, "url": quote(f["name"])} for f in newest_first]
            self.blobs.write(stage, "index.html",
                             pages.collection_page(project, item, newest_first))
            index = {"project": project, "item": item, "files": listing,
                     "latest": listing[0] if listing else None}
            self.blobs.write(stage, "index.json", (json.dumps(index, indent=1) + "\n").encode())
            storage.sync_filesystem(stage)
            new = ItemState("collection", _new_id({state.live} if state.live else set()),
                            files=kept)
            with self.blobs.making_live(project, item, new.live or "", stage):
                self.catalog.save_item(project, item, new)  # the commit point
        if state.live:
            self.blobs.discard(project, item, state.live, [f.sha256 for f in state.files])
        return new

    # ---------------------------------------------------------- item reads

    def item_view(self, project: str, item: str) -> ItemView:
        conf = self._item_conf(project, item)
        state = self.catalog.item(project, item, conf.type)
        return ItemView(item, self._effective(conf), state, self.blobs.published(project, item),
                        sum(self._stored(project, item, state).values()))

    def latest(self, project: str, item: str) -> StoredFile:
        """A collection's newest file."""
        view = self.item_view(project, item)
        if view.state.type != "collection":
            raise NotFound(f"{project}/{item} is not a collection")
        if not view.state.files:
            raise NotFound(f"{project}/{item} has no files yet")
        return view.state.files[-1]

    # -------------------------------------------------------- item changes

    def rollback(self, project: str, item: str, release: str | None) -> ItemView:
        conf = self._item_conf(project, item)
        if conf.type not in RELEASE_TYPES:
            raise Conflict(f"{project}/{item} is a collection; collections have no releases "
                           "to roll back to")
        with self.catalog.item_lock(project, item):
            state = self.catalog.item(project, item, conf.type)
            ids = [r.id for r in state.releases]
            if release is None:
                position = ids.index(state.live) if state.live in ids else 0
                if position == 0:
                    raise Conflict(f"{project}/{item} has no release before the live one "
                                   "to roll back to")
                release = ids[position - 1]
            elif release not in ids:
                raise NotFound(f"{project}/{item} has no kept release {release!r}")
            elif release == state.live:
                raise Conflict(f"release {release!r} is already live")
            self._commit(project, item, conf, state.with_(live=release))
        self._refresh_project_page(project)
        return self.item_view(project, item)

    def delete_file(self, project: str, item: str, filename: str) -> None:
        conf = self._item_conf(project, item)
        if not conf.is_collection:
            raise Conflict(f"{project}/{item} is not a collection; files are removed by "
                           "publishing a new release")
        with self.catalog.item_lock(project, item):
            state = self.catalog.item(project, item, conf.type)
            files = [f for f in state.files if f.name != filename]
            if len(files) == len(state.files):
                raise NotFound(f"{project}/{item} has no file named {filename!r}")
            with self.blobs.staging(project, item) as stage:
                self._commit_collection(project, item, conf, state, files, stage)
        self._refresh_project_page(project)

    def _prune(self, project: str, item: str, conf: ItemConfig, state: ItemState) -> None:
        """Apply ``keep`` or ``depth`` to an item; the live release always stays. Called
        with the item lock held."""
        if conf.is_collection:
            if len(state.files) > (self._effective(conf).depth or 1):
                with self.blobs.staging(project, item) as stage:
                    self._commit_collection(project, item, conf, state, state.files, stage)
            return
        kept, doomed = self._beyond_keep(conf, state)
        if doomed:
            self.catalog.save_item(project, item, kept)
            self._discard(project, item, doomed)

    def _remove_item(self, project: str, item: str) -> None:
        """Delete an item's data, then the blobs only it held. Called with the item lock."""
        held = self._held(project, item)
        self.blobs.remove_item(project, item)
        self.catalog.drop_item(project, item)
        self.blobs.forget(held)

    # --------------------------------------------------------------- pages

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
        with self.catalog.project_lock(project):
            found = self.catalog.project(project)
            if found is None:
                return
            items = [{"name": name, "type": conf.type,
                      "published": self.blobs.published(project, name)}
                     for name, conf in found.items.items()]
            self.blobs.write_page(project, pages.project_page(project, found.description,
                                                              items))
        self.catalog.mark_changed(project)

    def _write_root_page(self) -> None:
        """Rewrite the list of projects with the change while that is cheap; once it is
        not (thousands of projects) and the servers' ``start_page_writer`` runs, in its
        thread, at most once every ROOT_PAGE_DELAY: the list of every project is the one
        thing a change to one project would otherwise pay for by the number of projects."""
        if self._root_page_wanted is not None and self._root_page_cost > ROOT_PAGE_INLINE:
            self._root_page_wanted.set()
            return
        self.write_root_page()

    def start_page_writer(self) -> None:
        """Start the thread that rewrites the list of projects when that is too costly to do
        with each change (see ``_write_root_page``)."""
        self._root_page_wanted = threading.Event()
        threading.Thread(target=self._keep_root_page_written, args=(self._root_page_wanted,),
                         name="artstore-pages", daemon=True).start()

    def _keep_root_page_written(self, wanted: threading.Event) -> None:
        """Rewrite the list of projects after changes, one rewrite for however many came
        meanwhile."""
        while True:
            wanted.wait()
            # Not at once: the requests right after a change (the GET / that follows a
            # POST) go first, rather than share the worker with a 1 MB page's making.
            time.sleep(ROOT_PAGE_SETTLE)
            wanted.clear()
            try:
                self.write_root_page()
            except Exception:  # noqa: BLE001 - logged; the next change or start rewrites it
                log.exception("could not rewrite the list of projects")
            time.sleep(ROOT_PAGE_DELAY)  # changes that come meanwhile share the next one

    def write_root_page(self) -> None:
        started = time.monotonic()
        with self.catalog.project_lock(None):
            rows = [row for block in self._root_rows.current() for row in block.values]
            self.blobs.write_page(None, pages.root_page(rows))
        self._root_page_cost = time.monotonic() - started

    # --------------------------------------------------------- maintenance

    def format(self) -> int:
        return self.catalog.format()

    def maintain(self) -> Collected | None:
        """The background work, done by one worker at a time (None when another is at it):
        finish upgrading a store of an older format, then collect unreferenced blobs."""
        with self.catalog.maintenance_lock() as mine:
            if not mine:
                return None
            if self.catalog.format() < FORMAT:
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
        for name, project in self.catalog.projects().items():
            for item, conf in project.items.items():
                with self.catalog.item_lock(name, item):
                    if self.catalog.project(name) is not None:  # not deleted meanwhile
                        self._upgrade_item(name, item, conf)
        self.catalog.set_format(FORMAT)
        log.info("the store is upgraded to format %d", FORMAT)

    def _upgrade_item(self, project: str, item: str, conf: ItemConfig) -> None:
        state = self.catalog.item(project, item, conf.type)
        changed = False
        files = []
        for f in state.files if state.live else ():
            sha, size = self.blobs.adopt_file(project, item, state.live or "", f.name)
            if (sha, size) != (f.sha256, f.size):
                log.warning("%s/%s: %s does not hold what was uploaded; recorded as it is",
                            project, item, f.name)
                f = StoredFile(f.name, sha, size, f.created, f.metadata)
                changed = True
            files.append(f)
        releases = []
        for release in state.releases:
            if release.bytes is None:
                manifest = self.blobs.adopt(project, item, release.id)
                if conf.type == "html" and manifest and "index.html" not in manifest:
                    page = next(iter(manifest))  # as an html release is now:
                    self.blobs.add_alias(project, item, release.id, page, "index.html")
                    manifest = {**manifest, "index.html": manifest[page]}
                self.catalog.save_manifest(project, item, release.id, manifest)
                if conf.type == "html":  # one file, under one or two names
                    size = next(iter(manifest.values()), ("", 0))[1]
                else:
                    size = sum(s for _, s in manifest.values())
                release = Release(release.id, release.created, release.sha256, release.size,
                                  release.files, size, release.metadata)
                changed = True
            releases.append(release)
        if changed:
            self.catalog.save_item(project, item, state.with_(files=tuple(files),
                                                              releases=tuple(releases)))

    # --------------------------------------------------------------- sweep

    def sweep(self) -> None:
        """Bring the blob store and the catalog back into agreement after a crash and
        remove leftovers. Safe while other workers serve: work in progress is claimed,
        and each item is swept under its lock."""
        storage.sweep_temp_entries(self.settings.temp_path)
        projects = self.catalog.projects()
        self.blobs.sweep(projects)
        self.catalog.sweep(projects)
        for name, project in projects.items():
            on_record = self.blobs.items_on_disk(name) | self.catalog.items_on_record(name)
            for item in sorted(on_record - set(project.items)):
                self._sweep_removed_item(name, item)
            for item, conf in project.items.items():
                self._sweep_item(name, item, conf)
            self._write_project_page(name)
        self._write_root_page()

    def _sweep_removed_item(self, project: str, item: str) -> None:
        """Finish taking an item out of a project: the change was cut short after its
        commit point (the catalog's change), so the same name added again would bring back
        the old releases."""
        with self.catalog.item_lock(project, item):
            current = self.catalog.project(project)  # again: it may be back meanwhile
            if current is not None and item not in current.items:
                self._remove_item(project, item)

    def _sweep_item(self, project: str, item: str, conf: ItemConfig) -> None:
        with self.catalog.item_lock(project, item):
            state = self.catalog.item(project, item, conf.type)
            on_disk = self.blobs.trees(project, item)
            if conf.is_collection:
                fixed = state if state.live in on_disk else ItemState("collection")
                keep = {fixed.live} if fixed.live else set()
            else:
                releases = tuple(r for r in state.releases if r.id in on_disk)
                ids = [r.id for r in releases]
                fixed = state.with_(releases=releases, live=state.live if state.live in ids
                                    else (ids[-1] if ids else None))
                keep = set(ids)
            self.blobs.sweep_item(project, item, keep)
            for stray in self.catalog.manifest_ids(project, item) - (
                    set() if conf.is_collection else keep):
                self.catalog.drop_manifest(project, item, stray)  # a publish killed early
            if fixed != state:
                self.catalog.save_item(project, item, fixed)
            if self.blobs.live(project, item) != fixed.live:
                self.blobs.point_live(project, item, fixed.live)
            if fixed.live:
                self._prune(project, item, conf, fixed)


class PerProject(Generic[T]):
    """What ``make`` makes of every project, in name order, in blocks of about BLOCK: made
    again only for the projects the catalog says changed since the last look (in any
    worker), and for all of them when it cannot say and once every LISTING_REFRESH
    seconds. A change to one project of 10,000 makes one block again, and a user of the
    blocks (the JSON of ``GET /``) redoes its part of only that block."""

    def __init__(self, catalog: FileCatalog | PostgresCatalog,
                 make: Callable[[str, Project], T]) -> None:
        self._catalog, self._make = catalog, make
        self._cursor: Cursor | None = None
        self._due = 0.0
        self._blocks: tuple[Block[T], ...] = ()
        self._lock = threading.Lock()

    def current(self) -> tuple[Block[T], ...]:
        """The blocks: the same tuple, and the same unchanged blocks, until a change."""
        with self._lock:
            cursor, changed = self._catalog.changes_since(self._cursor)
            if changed is None or self._cursor is None or time.monotonic() >= self._due:
                projects = self._catalog.projects()  # never older than the cursor
                names = list(projects)
                self._blocks = tuple(
                    Block(tuple(names[i:i + BLOCK]),
                          tuple(self._make(n, projects[n]) for n in names[i:i + BLOCK]))
                    for i in range(0, len(names), BLOCK))
                self._due = time.monotonic() + LISTING_REFRESH
            elif changed:
                blocks = list(self._blocks)
                for name in sorted(changed):
                    self._remake(blocks, name, self._catalog.project(name))
                self._blocks = tuple(blocks)
            self._cursor = cursor
            return self._blocks

    def _remake(self, blocks: list[Block[T]], name: str, project: Project | None) -> None:
        at = max(0, bisect.bisect_right([b.names[0] for b in blocks], name) - 1)
        names, values = (list(blocks[at].names), list(blocks[at].values)) if blocks else \
            ([], [])
        i = bisect.bisect_left(names, name)
        present = i < len(names) and names[i] == name
        if project is None:
            if not present:
                return
            del names[i], values[i]
        elif present:
            values[i] = self._make(name, project)
        else:
            names.insert(i, name)
            values.insert(i, self._make(name, project))
        if len(names) > 2 * BLOCK:  # split in two
            new = [Block(tuple(names[:BLOCK]), tuple(values[:BLOCK])),
                   Block(tuple(names[BLOCK:]), tuple(values[BLOCK:]))]
        else:
            new = [Block(tuple(names), tuple(values))] if names else []
        blocks[at:at + 1] = new


@dataclass(frozen=True, eq=False)
class Block(Generic[T]):
    """Consecutive projects (in name order) and what was made of each."""

    names: tuple[str, ...]
    values: tuple[T, ...]


def _root_row(name: str, project: Project) -> str:
    return pages.root_row({"name": name, "items": project.items,
                           "description": project.description})


# -------------------------------------------------------------------- helpers


def open_catalog(settings: Settings) -> FileCatalog | PostgresCatalog:
    """The catalog the ``catalog`` setting names: the state directory, or a database."""
    if settings.catalog:
        from .pgcatalog import PostgresCatalog  # psycopg only when a database is named

        return PostgresCatalog(settings.catalog)
    return FileCatalog(settings.state_dir)


def _new_id(taken: set[str]) -> str:
    """A release id: sortable by time, readable, unique within the item."""
    while True:
        release = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        if release not in taken:
            return release


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
