"""The catalog's second home: a PostgreSQL database (the ``catalog`` setting's URL).

The same methods as ``FileCatalog``, with the guarantees the ``catalog`` module states,
held across every worker of every replica that uses the database::

    store           one row: the store's id, its format, the projects' version
    projects        name -> its configuration (JSON, as projects.json holds it)
    items           (project, item) -> its state
    manifests       (project, item, release) -> its files; never changed once saved
    tokens          (project, id) -> hash, created (hashes, never tokens)
    changes         id (the cursor), project: which projects' published files changed
    schema_version  the migrations applied

Every write is one transaction, committed (durable, with PostgreSQL's default
``synchronous_commit``) when the method returns. Locks are advisory locks: a lock held
for a block is a session lock on a connection kept for the block, so a holder that dies
(its connection closes) releases it; a lock held for one write is a transaction lock.
The schema is brought up to date at start by ``MIGRATIONS``, under an advisory lock, so
workers starting together apply each migration once.

Needs ``psycopg`` (the ``postgres`` extra); nothing else in artstore imports this module
unless the ``catalog`` setting names a database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import psycopg
from psycopg.types.json import Json

from .catalog import (
    Cursor,
    ItemState,
    Manifest,
    Project,
    ProjectChanges,
    _trusted_project,
    cached_manifest,
)
from .errors import ConfigError

POOL_IDLE = 8  # idle connections a worker keeps
CHANGES_KEPT = 10_000  # rows of the changes table kept; a cursor older than them reads None
CHANGES_PRUNE_EVERY = 1_000  # changes between two prunings

# Each a list of statements, run in one transaction; never edited once released (a
# database records the number it has applied), only appended to.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE store (
               one boolean PRIMARY KEY DEFAULT true CHECK (one),
               id bigint NOT NULL,
               format integer NOT NULL,
               projects_version bigint NOT NULL DEFAULT 0)""",
        # A new store holds nothing of an older format (2: blobs and manifests).
        "INSERT INTO store (id, format) VALUES (%(store_id)s, 2)",
        "CREATE TABLE projects (name text PRIMARY KEY, data json NOT NULL)",
        """CREATE TABLE items (
               project text NOT NULL, item text NOT NULL, state json NOT NULL,
               PRIMARY KEY (project, item))""",
        """CREATE TABLE manifests (
               project text NOT NULL, item text NOT NULL, release text NOT NULL,
               files json NOT NULL,
               PRIMARY KEY (project, item, release))""",
        """CREATE TABLE tokens (
               seq bigserial, project text NOT NULL, id text NOT NULL, hash text NOT NULL,
               created text NOT NULL,
               PRIMARY KEY (project, id))""",
        "CREATE TABLE changes (id bigserial PRIMARY KEY, project text NOT NULL)",
    ),
)


def lock_key(*names: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of a lock named by ``names``."""
    digest = hashlib.blake2b("\0".join(names).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


MIGRATION_LOCK = lock_key("artstore", "migrations")
MAINTENANCE_LOCK = lock_key("artstore", "maintenance")


class _Pool:
    """A few idle connections shared by a worker's threads (autocommit: a transaction is
    always explicit). A connection is used by one thread at a time; one left in a
    transaction, broken, or made in another process (a fork) is never reused. One found
    broken (the server restarted, or ended it) closes the idle ones too, as they most
    likely are: the call that found it fails, the next ones connect again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = None
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                conn = self._idle.pop()
        if conn is None:
            conn = psycopg.connect(self.url, autocommit=True)
        try:
            yield conn
        finally:
            broken = conn.closed  # by the server, or by _held after a failed unlock
            idle = (not conn.closed
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
            stale: list[psycopg.Connection[Any]] = []
            with self._lock:
                if broken:
                    stale, self._idle = self._idle, []
                elif (idle and not self._closed and len(self._idle) < POOL_IDLE
                        and self._pid == os.getpid()):
                    self._idle.append(conn)
                    conn = None
            for dead in [*stale, *([conn] if conn is not None else [])]:
                dead.close()

    def close(self) -> None:
        """Close the idle connections, and each one in use when it is done with."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for conn in idle:
            conn.close()


class PostgresCatalog:
    """The catalog in a PostgreSQL database (see the module's guarantees)."""

    def __init__(self, url: str) -> None:
        self._pool = _Pool(url)
        self._manifests: dict[tuple[str, str, str], dict[str, tuple[str, int]]] = {}
        # projects(): the version it was read at, each one's JSON, the records.
        self._projects: tuple[int, dict[str, Any], dict[str, Project]] | None = None
        self._projects_lock = threading.Lock()
        try:
            self.migrate()
        except psycopg.OperationalError as exc:
            raise ConfigError(f"cannot use the catalog database: {exc}") from None

    def close(self) -> None:
        """Close the connections (one holding a lock when the lock is released)."""
        self._pool.close()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.close()

    def migrate(self) -> None:
        """Apply the migrations the database has not had, in one transaction each, under
        an advisory lock: of workers starting together, one applies them, the others then
        find them applied. A database migrated by a newer artstore stops start-up."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                         "version integer PRIMARY KEY, applied timestamptz NOT NULL "
                         "DEFAULT now())")
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            applied = row.fetchone()[0]  # type: ignore[index]
            if applied > len(MIGRATIONS):
                raise ConfigError(
                    f"the catalog database is at schema version {applied}, newer than this "
                    f"artstore knows ({len(MIGRATIONS)}): run the artstore that migrated it")
            for number, statements in enumerate(MIGRATIONS[applied:], applied + 1):
                for statement in statements:
                    conn.execute(statement, {"store_id": secrets.randbits(52)}
                                 if "%(" in statement else None)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    def _query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    @contextlib.contextmanager
    def _transaction(self, *lock: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction, committed when the block ends without an exception, holding
        the advisory lock named by ``lock`` (if any) until then."""
        with self._pool.connection() as conn, conn.transaction():
            if lock:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(*lock),))
            yield conn

    @contextlib.contextmanager
    def _held(self, key: int, blocking: bool = True) -> Iterator[bool]:
        """A session advisory lock on a connection kept for the block: released at its
        end, or by PostgreSQL when the connection dies with its process."""
        with self._pool.connection() as conn:
            if blocking:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                mine = True
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                mine = bool(row and row[0])
            try:
                yield mine
            finally:
                if mine:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    except BaseException:
                        conn.close()  # never back in the pool holding the lock
                        raise

    # -- projects

    def projects(self) -> dict[str, Project]:
        """All projects by name, in name order: the same object, and the same record of
        each project, until a change is made (by any worker)."""
        with self._projects_lock:
            version = self._query("SELECT projects_version FROM store")[0][0]
            if self._projects is not None and self._projects[0] == version:
                return self._projects[2]
            with self._pool.connection() as conn, conn.transaction():
                # One snapshot for the version and the rows.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                version = conn.execute("SELECT projects_version FROM store").fetchone()[0]  # type: ignore[index]
                rows = conn.execute("SELECT name, data FROM projects").fetchall()
            old_raw, old = ({}, {}) if self._projects is None else self._projects[1:]
            raw = dict(sorted(rows))
            records = {name: old[name] if old_raw.get(name) == data
                       else _trusted_project(name, data) for name, data in raw.items()}
            self._projects = (version, raw, records)
            return records

    def project(self, name: str) -> Project | None:
        rows = self._query("SELECT data FROM projects WHERE name = %s", (name,))
        return _trusted_project(name, rows[0][0]) if rows else None

    def change_projects(self, mutate: Callable[[ProjectChanges], Any]) -> Any:
        """Run ``mutate`` on the projects, then write what it changed, in one transaction
        that holds the store's row lock: changes are serialised across every worker, and
        one that raises changes nothing. The projects changed are marked changed in the
        same transaction (``changes_since`` names them). ``mutate``'s return value is
        passed back."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT projects_version FROM store FOR UPDATE")

            def read(name: str) -> Project | None:
                rows = conn.execute("SELECT data FROM projects WHERE name = %s",
                                    (name,)).fetchall()
                return _trusted_project(name, rows[0][0]) if rows else None

            def names() -> list[str]:
                return [n for n, in conn.execute("SELECT name FROM projects").fetchall()]

            changes = ProjectChanges(read, names)
            result = mutate(changes)
            for name, project in changes.changed.items():
                if project is None:
                    conn.execute("DELETE FROM projects WHERE name = %s", (name,))
                else:
                    conn.execute("INSERT INTO projects (name, data) VALUES (%s, %s) "
                                 "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                                 (name, Json(project.as_json())))
            if changes.changed:
                conn.execute("UPDATE store SET projects_version = projects_version + 1")
                self._mark(conn, changes.changed)
        return result

    @contextlib.contextmanager
    def project_lock(self, project: str | None) -> Iterator[None]:
        """A project's lock (``None``: the lock of the list of projects)."""
        key = lock_key("projects") if project is None else lock_key("project", project)
        with self._held(key):
            yield

    def drop_project(self, project: str) -> None:
        """Forget the items and manifests of a project (its configuration is gone)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM items WHERE project = %s", (project,))
            conn.execute("DELETE FROM manifests WHERE project = %s", (project,))

    # -- items

    @contextlib.contextmanager
    def item_lock(self, project: str, item: str) -> Iterator[None]:
        with self._held(lock_key("item", project, item)):
            yield

    def item(self, project: str, item: str, kind: str) -> ItemState:
        """The item's state; an empty one if it has none, or one of another type."""
        state = self.recorded_item(project, item)
        return ItemState(kind) if state is None or state.type != kind else state

    def recorded_item(self, project: str, item: str) -> ItemState | None:
        """The item's state as saved, whatever its type; None if it has none."""
        rows = self._query("SELECT state FROM items WHERE project = %s AND item = %s",
                           (project, item))
        return ItemState.from_json(rows[0][0]) if rows else None

    def save_item(self, project: str, item: str, state: ItemState) -> None:
        """The commit point: committed, so durable, when it returns."""
        self._query("INSERT INTO items (project, item, state) VALUES (%s, %s, %s) "
                    "ON CONFLICT (project, item) DO UPDATE SET state = excluded.state",
                    (project, item, Json(state.as_json())))

    def drop_item(self, project: str, item: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM items WHERE project = %s AND item = %s",
                         (project, item))
            conn.execute("DELETE FROM manifests WHERE project = %s AND item = %s",
                         (project, item))

    def items_on_record(self, project: str) -> set[str]:
        """The items that have a state or manifests."""
        return {item for item, in self._query(
            "SELECT item FROM items WHERE project = %s "
            "UNION SELECT item FROM manifests WHERE project = %s", (project, project))}

    # -- manifests

    def save_manifest(self, project: str, item: str, release: str, manifest: Manifest) -> None:
        """Committed when it returns. A release's manifest saved again keeps the first:
        manifests never change (every worker keeps the ones it read)."""
        self._query("INSERT INTO manifests (project, item, release, files) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (project, item, release,
                     Json({path: list(entry) for path, entry in manifest.items()})))

    def manifest(self, project: str, item: str, release: str) -> dict[str, tuple[str, int]]:
        """A release's manifest ({} if it has none)."""
        key = (project, item, release)

        def load() -> Mapping[str, Any]:
            rows = self._query("SELECT files FROM manifests "
                               "WHERE project = %s AND item = %s AND release = %s", key)
            return rows[0][0] if rows else {}  # type: ignore[no-any-return]

        return cached_manifest(self._manifests, key, load)

    def manifest_ids(self, project: str, item: str) -> set[str]:
        return {release for release, in self._query(
            "SELECT release FROM manifests WHERE project = %s AND item = %s",
            (project, item))}

    def drop_manifest(self, project: str, item: str, release: str) -> None:
        self._manifests.pop((project, item, release), None)
        self._query("DELETE FROM manifests WHERE project = %s AND item = %s AND release = %s",
                    (project, item, release))

    # -- tokens

    def tokens(self, project: str) -> list[dict[str, str]]:
        """A project's tokens: ``{"id", "hash", "created"}`` each (hashes, never tokens),
        oldest first."""
        return [{"id": i, "hash": h, "created": c} for i, h, c in self._query(
            "SELECT id, hash, created FROM tokens WHERE project = %s ORDER BY seq",
            (project,))]

    def add_token(self, project: str, token: dict[str, str],
                  check: Callable[[], Any] | None = None) -> None:
        """Record a token; ``check`` (that the project exists) runs under the lock that
        ``drop_tokens`` takes, so a token is never recorded for a deleted project."""
        with self._transaction("tokens", project) as conn:
            if check is not None:
                check()
            conn.execute("INSERT INTO tokens (project, id, hash, created) "
                         "VALUES (%s, %s, %s, %s)",
                         (project, token["id"], token["hash"], token["created"]))

    def revoke_token(self, project: str, token_id: str) -> bool:
        """Committed when it returns: every worker refuses the token from then on."""
        return bool(self._query("DELETE FROM tokens WHERE project = %s AND id = %s "
                                "RETURNING id", (project, token_id)))

    def drop_tokens(self, project: str) -> None:
        with self._transaction("tokens", project) as conn:
            conn.execute("DELETE FROM tokens WHERE project = %s", (project,))

    def token_projects(self) -> set[str]:
        return {project for project, in self._query("SELECT DISTINCT project FROM tokens")}

    # -- the store as a whole

    def format(self) -> int:
        """1 until a store written by an older artstore is upgraded."""
        return int(self._query("SELECT format FROM store")[0][0])

    def set_format(self, number: int) -> None:
        self._query("UPDATE store SET format = %s", (number,))

    def mark_changed(self, project: str) -> None:
        """Note that what ``project`` has published changed, for ``changes_since`` in every
        worker. Marks are serialised, so their ids commit in order and a reader that has
        seen one has seen every one before it."""
        with self._transaction() as conn:
            self._mark(conn, [project])

    def _mark(self, conn: psycopg.Connection[Any], projects: Iterable[str]) -> None:
        """Record ``projects`` as changed, in the caller's transaction; the lock, held to
        its commit, makes the ids commit in order."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("artstore", "changes"),))
        for project in projects:
            row = conn.execute("INSERT INTO changes (project) VALUES (%s) RETURNING id",
                               (project,)).fetchone()
            if row is not None and row[0] % CHANGES_PRUNE_EVERY == 0:
                conn.execute("DELETE FROM changes WHERE id <= %s", (row[0] - CHANGES_KEPT,))

    def changes_since(self, cursor: Cursor | None) -> tuple[Cursor, set[str] | None]:
        """The projects whose configuration changed (created, changed, deleted) or that
        were marked changed since ``cursor`` (as a previous call returned it),
        and the cursor for the next call. None instead of the names when they cannot be
        known (no cursor, one of another database, or one older than the changes kept):
        anything may have changed."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            store_id = conn.execute("SELECT id FROM store").fetchone()[0]  # type: ignore[index]
            oldest, last = conn.execute("SELECT min(id), max(id) FROM changes").fetchone()  # type: ignore[misc]
            last = last or 0
            if (cursor is None or cursor[0] != store_id or cursor[1] > last
                    or (oldest is not None and cursor[1] < oldest - 1)):
                return (store_id, last), None
            rows = conn.execute("SELECT project FROM changes WHERE id > %s",
                                (cursor[1],)).fetchall()
        return (store_id, last), {project for project, in rows}

    @contextlib.contextmanager
    def maintenance_lock(self) -> Iterator[bool]:
        """True for the one worker (of every replica) that does the background
        maintenance now."""
        with self._held(MAINTENANCE_LOCK, blocking=False) as mine:
            yield mine

    def fold(self) -> None:
        """Nothing to fold: every change is in its table when it returns."""

    def sweep(self, projects: Mapping[str, Project]) -> None:
        """Remove the items and manifests of projects that are gone (a delete cut short
        after its commit point): gone from ``projects`` and from the database both."""
        names = list(projects)
        with self._transaction() as conn:
            for table in ("items", "manifests"):
                conn.execute(f"DELETE FROM {table} t WHERE NOT (project = ANY(%s)) "
                             "AND NOT EXISTS (SELECT 1 FROM projects p "
                             "WHERE p.name = t.project)", (names,))
