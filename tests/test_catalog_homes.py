"""The catalog's guarantees (catalog.py's docstring), held by both homes: the state
directory (FileCatalog) and PostgreSQL (PostgresCatalog, on a fresh database per test).

Each test opens the store through two catalogs, as two workers would; some start real
processes, to kill one holding a lock or to race at start.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from artstore.catalog import FORMAT, FileCatalog, ItemConfig, ItemState, Project, Release
from artstore.errors import Conflict

ROOT = Path(__file__).resolve().parent.parent


def open_catalog(spec: str) -> Any:
    """A catalog on ``spec``: a database URL, else a state directory."""
    if spec.startswith("postgresql://"):
        from artstore.pgcatalog import PostgresCatalog

        return PostgresCatalog(spec)
    return FileCatalog(Path(spec))


@pytest.fixture(params=["file", "postgres"])
def spec(request: Any, tmp_path: Path) -> str:
    """Where the store's catalog is, as ``open_catalog`` takes it."""
    if request.param == "file":
        return str(tmp_path / "state")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def open_worker(spec: str) -> Iterator[Callable[[], Any]]:
    """Opens another catalog on the same store, as another worker would."""
    opened: list[Any] = []

    def open_() -> Any:
        opened.append(open_catalog(spec))
        return opened[-1]

    yield open_
    for catalog in opened:
        if hasattr(catalog, "close"):
            catalog.close()


def project(name: str, description: str = "", **items: str) -> Project:
    return Project(name, description, "c1", {i: ItemConfig(t) for i, t in items.items()})


def in_child(spec: str, code: str) -> subprocess.Popen[str]:
    """A process running ``code`` with ``catalog`` open on ``spec``; it prints "ready"
    once ``catalog`` is open and ``code`` has started."""
    script = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'src')!r}]\n"
              "from tests.test_catalog_homes import open_catalog\n"
              f"catalog = open_catalog({spec!r})\n" + textwrap.dedent(code))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen[str]) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")


def takes_within(lock: Callable[[], Any], seconds: float) -> bool:
    """Whether the context manager ``lock()`` is entered within ``seconds`` (a thread
    keeps waiting for it otherwise, and leaves it at once when it gets it)."""
    got = threading.Event()

    def take() -> None:
        with lock():
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)


# ------------------------------------------------------------------ projects


def test_change_projects_is_seen_by_another_worker(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    assert one.projects() == {} and two.project("demo") is None

    def add(projects: Any) -> str:
        assert "demo" not in projects
        projects["demo"] = project("demo", "first", docs="tgz")
        projects["b"] = project("b")
        return "added"

    assert one.change_projects(add) == "added"
    assert two.project("demo") == project("demo", "first", docs="tgz")
    assert list(two.projects()) == ["b", "demo"]
    before = two.projects()
    assert two.projects() is before  # the same object until something changes
    one.change_projects(lambda projects: projects.pop("b"))
    after = two.projects()
    assert list(after) == ["demo"] and after["demo"] is before["demo"]


def test_change_projects_that_raises_changes_nothing(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    one.change_projects(lambda projects: projects.__setitem__("keep", project("keep")))

    def half_done(projects: Any) -> None:
        projects["new"] = project("new")
        projects.pop("keep")
        raise Conflict("no")

    with pytest.raises(Conflict):
        one.change_projects(half_done)
    assert list(two.projects()) == ["keep"] and list(one.projects()) == ["keep"]

    def clear(projects: Any) -> None:
        projects.clear()
        assert "keep" not in projects

    one.change_projects(clear)
    assert two.projects() == {}


def test_concurrent_changes_from_several_workers_lose_none(
        spec: str, open_worker: Callable[[], Any]) -> None:
    """Read-modify-writes of one counter from threads of two workers and from two other
    processes: every increment is kept."""
    catalogs = [open_worker(), open_worker()]
    catalogs[0].change_projects(lambda p: p.__setitem__("counter", project("counter", "0")))

    def bump(projects: Any) -> None:
        current = projects["counter"]
        time.sleep(0.001)  # widen the window a lost update would need
        projects["counter"] = project("counter", str(int(current.description) + 1))

    children = [in_child(spec, """
        from tests.test_catalog_homes import project
        print("ready", flush=True)
        def bump(projects):
            current = projects["counter"]
            projects["counter"] = project("counter", str(int(current.description) + 1))
        for _ in range(20):
            catalog.change_projects(bump)
        """) for _ in range(2)]

    def run(catalog: Any) -> None:
        for _ in range(20):
            catalog.change_projects(bump)

    threads = [threading.Thread(target=run, args=(catalogs[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert open_worker().project("counter").description == str(4 * 20 + 2 * 20)


# --------------------------------------------------------------------- locks


def test_item_lock_excludes_another_worker(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    with one.item_lock("demo", "docs"):
        assert not takes_within(lambda: two.item_lock("demo", "docs"), 0.5)
        assert takes_within(lambda: two.item_lock("demo", "site"), 5)  # another item
        assert takes_within(lambda: two.project_lock("demo"), 5)  # another lock
    assert takes_within(lambda: two.item_lock("demo", "docs"), 5)


def test_item_lock_excludes_another_thread_of_one_worker(
        open_worker: Callable[[], Any]) -> None:
    one = open_worker()
    with one.item_lock("demo", "docs"):
        assert not takes_within(lambda: one.item_lock("demo", "docs"), 0.5)


def test_project_lock_excludes_another_worker(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    with one.project_lock("demo"):
        assert not takes_within(lambda: two.project_lock("demo"), 0.5)
        assert takes_within(lambda: two.project_lock(None), 5)
    with one.project_lock(None):
        assert not takes_within(lambda: two.project_lock(None), 0.5)


def test_locks_are_released_when_their_holder_is_killed(
        spec: str, open_worker: Callable[[], Any]) -> None:
    child = in_child(spec, """
        import time
        with catalog.item_lock("demo", "docs"), catalog.maintenance_lock() as mine:
            assert mine
            print("ready", flush=True)
            time.sleep(600)
        """)
    try:
        wait_ready(child)
        mine = open_worker()
        assert not takes_within(lambda: mine.item_lock("demo", "docs"), 0.5)
        with mine.maintenance_lock() as got:
            assert got is False
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert takes_within(lambda: mine.item_lock("demo", "docs"), 10)
        deadline = time.monotonic() + 10
        while True:  # the server notices the dead connection in a moment
            with mine.maintenance_lock() as got:
                if got or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert got is True
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream:
                stream.close()


def test_one_worker_at_a_time_does_maintenance(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    with one.maintenance_lock() as first, two.maintenance_lock() as second:
        assert (first, second) == (True, False)
    with two.maintenance_lock() as again:
        assert again is True


# --------------------------------------------------------------------- items

def save(catalog: Any, project: str, item: str, state: ItemState) -> None:
    """As the store saves a state: under the item's lock."""
    with catalog.item_lock(project, item):
        catalog.save_item(project, item, state)


RELEASE = Release("r1", "2024-01-01T00:00:00Z", "ab" * 32, 10, 2, 20, {"ci": "42"})


def test_item_state_round_trips_through_another_worker(
        open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    assert two.item("demo", "docs", "tgz") == ItemState("tgz")
    assert two.recorded_item("demo", "docs") is None
    state = ItemState("tgz", "r1", (RELEASE,))
    save(one, "demo", "docs", state)
    assert two.item("demo", "docs", "tgz") == state
    assert two.item("demo", "docs", "zip") == ItemState("zip")  # of another type: empty
    assert two.recorded_item("demo", "docs") == state
    save(one, "demo", "docs", state.with_(live=None))
    assert two.item("demo", "docs", "tgz").live is None
    assert two.items_on_record("demo") == {"docs"}
    one.drop_item("demo", "docs")
    one.drop_item("demo", "docs")  # idempotent
    assert two.recorded_item("demo", "docs") is None
    assert two.items_on_record("demo") == set()


def test_manifests_round_trip_and_are_dropped_with_their_item(
        open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    files = {"index.html": ("ab" * 32, 10), "a/b.css": ("cd" * 32, 3)}
    one.save_manifest("demo", "docs", "r1", files)
    one.save_manifest("demo", "docs", "r2", {})
    assert two.manifest("demo", "docs", "r1") == files
    assert two.manifest("demo", "docs", "nope") == {}
    assert two.manifest_ids("demo", "docs") == {"r1", "r2"}
    assert two.items_on_record("demo") == {"docs"}  # manifests only: still on record
    one.drop_manifest("demo", "docs", "r2")
    one.drop_manifest("demo", "docs", "r2")
    assert two.manifest_ids("demo", "docs") == {"r1"}
    one.drop_item("demo", "docs")
    assert two.manifest_ids("demo", "docs") == set()


def test_drop_project_and_sweep_forget_the_items_of_projects_gone(
        open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    for name in ("gone", "swept", "kept"):
        save(one, name, "docs", ItemState("tgz", "r1", (RELEASE,)))
        one.save_manifest(name, "docs", "r1", {"a": ("ab" * 32, 1)})
    one.change_projects(lambda p: p.__setitem__("kept", project("kept", docs="tgz")))
    one.drop_project("gone")
    one.drop_project("gone")
    assert two.items_on_record("gone") == set()
    two.sweep(two.projects())
    assert one.items_on_record("swept") == set()
    assert one.items_on_record("kept") == {"docs"}
    assert one.manifest("kept", "docs", "r1") == {"a": ("ab" * 32, 1)}


# -------------------------------------------------------------------- tokens


def test_tokens_are_added_revoked_and_dropped(open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    first = {"id": "t1", "hash": "h1", "created": "2024-01-01T00:00:00Z"}
    second = {"id": "t2", "hash": "h2", "created": "2024-01-02T00:00:00Z"}
    one.add_token("demo", first)
    one.add_token("demo", second, check=lambda: None)
    one.add_token("other", first)
    assert two.tokens("demo") == [first, second]
    assert two.token_projects() == {"demo", "other"}
    assert two.revoke_token("demo", "t1") is True
    assert two.revoke_token("demo", "t1") is False
    assert one.tokens("demo") == [second]
    one.drop_tokens("demo")
    one.drop_tokens("demo")
    assert two.tokens("demo") == [] and two.token_projects() == {"other"}


def test_a_token_whose_check_fails_is_not_recorded(open_worker: Callable[[], Any]) -> None:
    one = open_worker()

    def project_gone() -> None:
        raise Conflict("gone")

    with pytest.raises(Conflict):
        one.add_token("demo", {"id": "t1", "hash": "h", "created": "x"}, check=project_gone)
    assert open_worker().tokens("demo") == []


# ------------------------------------------------------------ the whole store


def test_a_new_store_is_of_the_current_format(open_worker: Callable[[], Any]) -> None:
    one = open_worker()
    assert one.format() == FORMAT
    one.set_format(1)
    assert open_worker().format() == 1


def test_changes_are_seen_by_every_worker_from_their_cursor(
        open_worker: Callable[[], Any]) -> None:
    one, two = open_worker(), open_worker()
    one.mark_changed("before")
    cursor, names = two.changes_since(None)
    assert names is None  # no cursor: anything may have changed
    cursor, names = two.changes_since(cursor)
    assert names == set()
    one.mark_changed("demo")
    one.mark_changed("other")
    one.mark_changed("demo")
    cursor, names = two.changes_since(cursor)
    assert names == {"demo", "other"}
    cursor, names = two.changes_since(cursor)
    assert names == set()
    one.mark_changed("third")
    assert two.changes_since(cursor)[1] == {"third"}


def test_changes_name_the_projects_whose_configuration_changed(
        open_worker: Callable[[], Any]) -> None:
    """Created, changed, deleted: a change abandoned by raising names nothing."""
    one, two = open_worker(), open_worker()
    cursor, _ = two.changes_since(None)
    one.change_projects(lambda p: p.__setitem__("new", project("new")))
    cursor, names = two.changes_since(cursor)
    assert names == {"new"}

    def abandoned(projects: Any) -> None:
        projects.pop("new")
        projects["x"] = project("x")
        raise Conflict("no")

    with pytest.raises(Conflict):
        one.change_projects(abandoned)
    one.change_projects(lambda p: None)  # changes nothing
    cursor, names = two.changes_since(cursor)
    assert names == set()
    one.change_projects(lambda p: p.pop("new"))
    assert two.changes_since(cursor)[1] == {"new"}


# ------------------------------------------------------- PostgreSQL's own


def test_workers_starting_together_migrate_the_database_once(pg_url: str) -> None:
    import psycopg

    from artstore.pgcatalog import MIGRATIONS

    children = [in_child(pg_url, 'print("ready", flush=True)') for _ in range(4)]
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0 and out.strip() == "ready", err
    open_catalog(pg_url).close()  # and again, on a database already migrated
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
        stores = conn.execute("SELECT count(*) FROM store").fetchone()
    assert versions == [(n,) for n in range(1, len(MIGRATIONS) + 1)] and stores == (1,)


def test_a_database_migrated_by_a_newer_artstore_stops_start_up(pg_url: str) -> None:
    import psycopg

    from artstore.errors import ConfigError

    open_catalog(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(ConfigError, match="schema version 99"):
        open_catalog(pg_url)


def test_an_unreachable_database_is_a_clear_start_up_error(postgres: Any) -> None:
    from artstore.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot use the catalog database"):
        open_catalog(postgres.url("no_such_database"))


def test_a_manifest_saved_again_keeps_the_first(pg_url: str) -> None:
    one, two = open_catalog(pg_url), open_catalog(pg_url)
    one.save_manifest("demo", "docs", "r1", {"a": ("ab" * 32, 1)})
    two.save_manifest("demo", "docs", "r1", {"b": ("cd" * 32, 2)})
    assert open_catalog(pg_url).manifest("demo", "docs", "r1") == {"a": ("ab" * 32, 1)}


def test_a_cursor_older_than_the_changes_kept_or_of_another_database_reads_none(
        pg_url: str, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from artstore import pgcatalog

    monkeypatch.setattr(pgcatalog, "CHANGES_KEPT", 5)
    monkeypatch.setattr(pgcatalog, "CHANGES_PRUNE_EVERY", 5)
    one, two = open_catalog(pg_url), open_catalog(pg_url)
    one.mark_changed("first")
    old, _ = two.changes_since(None)
    for n in range(10):
        one.mark_changed(f"p{n}")
    assert two.changes_since(old)[1] is None  # "p0"... were pruned
    recent, _ = two.changes_since(None)
    one.mark_changed("new")
    assert two.changes_since(recent)[1] == {"new"}
    other = open_catalog(postgres.new_database())
    assert other.changes_since(recent)[1] is None


def test_the_catalog_setting_picks_the_home(tmp_path: Path, pg_url: str) -> None:
    from artstore import settings as settings_mod
    from artstore.pgcatalog import PostgresCatalog
    from artstore.store import Store

    config = tmp_path / "artstore.json"
    config.write_text(json.dumps({"base_path": "public", "temp_path": "tmp"}))
    assert isinstance(Store(settings_mod.load(config, environ={})).catalog, FileCatalog)
    in_db = Store(settings_mod.load(config, environ={"ARTSTORE_CATALOG": pg_url}))
    assert isinstance(in_db.catalog, PostgresCatalog)
    in_db.create_project("demo", {"items": {"docs": {"type": "tgz"}}})
    assert list(open_catalog(pg_url).projects()) == ["demo"]
    assert not (tmp_path / "projects.json").exists()
    assert not (tmp_path / "projects.log").exists()


def test_after_the_server_ends_its_connections_one_call_fails_and_the_next_reconnect(
        pg_url: str) -> None:
    import psycopg

    catalog = open_catalog(pg_url)
    busy = threading.Barrier(3)

    def hold() -> None:  # three connections at once: three idle in the pool afterwards
        with catalog.item_lock("demo", threading.current_thread().name):
            busy.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(psycopg.OperationalError):
        catalog.format()
    assert catalog.format() == FORMAT
    assert catalog.projects() == {}


def test_a_server_of_several_workers_keeps_its_catalog_in_postgresql(
        tmp_path: Path, pg_url: str) -> None:
    """Uploads to one item from many clients at once, across three workers sharing the
    database: each is kept, in one order; a token revoked is refused at once."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.archives import member, tgz_bytes
    from tests.conftest import ADMIN, AUTH, start_server, write_config

    config = write_config(tmp_path / "state")
    server = start_server(tmp_path, ["--config", str(config), "--workers", "3"],
                          {"ARTSTORE_ADMIN_TOKEN": ADMIN, "ARTSTORE_CATALOG": pg_url},
                          tmp_path / "server.log")
    try:
        items = {"docs": {"type": "tgz", "keep": 20}}
        assert requests.post(server.url + "/demo", json={"items": items},
                             headers=AUTH).status_code == 201
        token = requests.post(server.url + "/demo/_tokens", headers=AUTH).json()
        bearer = {"Authorization": f"Bearer {token['token']}"}

        def publish(n: int) -> int:
            body = tgz_bytes([member("index.html", f"v{n}".encode())])
            return requests.put(f"{server.url}/demo/docs?filename=site.tgz", data=body,
                                headers=bearer, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(publish, range(12))) == [201] * 12
        releases = [requests.get(server.url + "/demo/docs").json()["releases"]
                    for _ in range(6)]  # asked of every worker, all agree
        assert all(len(r) == 12 and r == releases[0] for r in releases)
        assert [p["name"] for p in requests.get(server.url + "/").json()["projects"]] == [
            "demo"]
        assert not (tmp_path / "state" / "projects.json").exists()
        assert requests.delete(f"{server.url}/demo/_tokens/{token['id']}",
                               headers=AUTH).status_code == 204
        assert {publish(99) for _ in range(6)} == {401}
    finally:
        server.stop()


def test_a_catalog_database_out_of_reach_stops_serve_with_a_clear_error(
        tmp_path: Path, postgres: Any) -> None:
    import os

    from tests.conftest import ADMIN, write_config

    config = write_config(tmp_path / "state")
    proc = subprocess.run(
        [sys.executable, "-m", "artstore.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ARTSTORE_ADMIN_TOKEN": ADMIN,
             "ARTSTORE_CATALOG": postgres.url("no_such_database")})
    assert proc.returncode != 0
    assert "cannot use the catalog database" in proc.stderr
    assert "no_such_database" in proc.stderr
