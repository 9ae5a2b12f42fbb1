"""Fault injection against a real ``artstore serve``: killed workers, a full disk, clients that
vanish mid-upload or lie about their length, and slow clients.

Every release written here carries one marker in every file (the publish number), so a live tree
that mixes two releases, or holds a torn file, is visible. After each fault the same invariants
are checked (``check_store``): every item's live tree is one whole release, the one its state
file names; kept releases are whole and are what their sha256 says; a collection's index.json,
index.html, state file and directory agree; ``projects.json`` is valid; and after a restart,
temp and staging hold no leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import ADMIN, AUTH, Server, start_server, stored_projects, write_config

ITEMS = {"docs": {"type": "tgz", "keep": 3}, "site": {"type": "zip", "keep": 3},
         "builds": {"type": "collection", "depth": 1000}}


# -- releases that show a mix --------------------------------------------------------------------


def body(n: int, size: int) -> bytes:
    line = b"<!-- release %08d -->\n" % n
    return line * max(1, size // len(line))


def release_tgz(n: int, files: int = 4, size: int = 8 * 1024) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ["index.html"] + [f"page{i}.html" for i in range(1, files)]:
            data = body(n, size)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def release_zip(n: int, files: int = 4, size: int = 8 * 1024) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ["index.html"] + [f"sub/page{i}.html" for i in range(1, files)]:
            archive.writestr(name, body(n, size))
    return buf.getvalue()


def line_marker(data: bytes) -> int:
    """The marker of a file from ``body`` or ``big_release``: every line starts with it."""
    found = {line.split(b"-->")[0] for line in data.splitlines()}
    assert len(found) == 1, f"a file mixes {len(found)} releases"
    return int(found.pop().split()[2])


marker = line_marker


@dataclass
class Ledger:
    """What the clients sent and what the server answered, to check the store against."""

    markers: dict[str, int] = field(default_factory=dict)  # sha256 of an upload -> its marker
    # (item, sha256, status or the kind of error), in the order the answers came
    answers: list[tuple[str, str, int | str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, item: str, data: bytes, n: int) -> str:
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.markers[sha] = n
        return sha

    def answer(self, item: str, sha: str, outcome: int | str) -> None:
        with self.lock:
            self.answers.append((item, sha, outcome))

    def statuses(self) -> set[int | str]:
        return {outcome for _, _, outcome in self.answers}

    def acknowledged(self, item: str) -> list[str]:
        return [sha for it, sha, outcome in self.answers if it == item and outcome == 201]

    def may_be_live(self, item: str) -> set[str]:
        """For an item one client publishes to in turn: its last acknowledged upload, or one
        sent after it whose answer was lost (its worker died after the commit point)."""
        mine = [(sha, outcome) for it, sha, outcome in self.answers if it == item]
        last = max(i for i, (_, outcome) in enumerate(mine) if outcome == 201)
        return {mine[last][0]} | {sha for sha, outcome in mine[last + 1:] if outcome != 201}


# -- the invariants ------------------------------------------------------------------------------


def tmp_entries(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def whole_release(folder: Path) -> int:
    """The one marker every file of a release directory carries."""
    found = {marker(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert len(found) == 1, f"{folder} mixes releases {found}"
    return found.pop()


def check_store(state: Path, ledger: Ledger | None = None, restarted: bool = True) -> None:
    """The invariants of the contract, read straight from disk."""
    base = state / "public"
    projects = stored_projects(state)  # valid, or this raises
    assert isinstance(projects, dict)
    if restarted:
        assert list((state / "tmp").iterdir()) == [], "uploads left in temp_path"
        for folder in [state, state / "items", *(state / "items").glob("*"), base,
                       *base.glob("*"), *base.glob("*/.artstore"), *base.glob("*/.artstore/*")]:
            assert tmp_entries(folder) == [], f"leftovers in {folder}: {tmp_entries(folder)}"
    for project, conf in projects.items():
        if restarted:  # a running server rewrites the list of projects soon after a change
            assert f'href="{project}/"' in (base / "index.html").read_text()
        for item, item_conf in conf["items"].items():
            check_item(state, project, item, item_conf, ledger, restarted)


def check_item(state: Path, project: str, item: str, conf: dict[str, Any],
               ledger: Ledger | None, restarted: bool = True) -> None:
    base = state / "public"
    state_file = state / "items" / project / f"{item}.json"
    if not state_file.exists():
        assert not os.path.lexists(base / project / item)
        return
    record = json.loads(state_file.read_text())
    link = base / project / item
    releases_dir = base / project / ".artstore" / item
    kept = sorted(p.name for p in releases_dir.iterdir() if not p.name.startswith(".tmp-"))
    if not restarted:
        # A worker killed after moving a release into place but before its commit point
        # leaves it behind until the next start: only the recorded ones are checked.
        ids = [r["release"] for r in record.get("releases", [])] or [record["live"]]
        kept = sorted(k for k in kept if k in ids)
    if record["live"] is None:
        assert not os.path.lexists(link)
        return
    if not restarted and os.readlink(link) != f".artstore/{item}/{record['live']}":
        # A worker killed between the commit point and the swap of the live link: it still
        # shows the release before, whole, until the next start points it at the state's.
        assert (base / project / os.readlink(link)).is_dir(), "the live link leads nowhere"
        return
    assert os.readlink(link) == f".artstore/{item}/{record['live']}", "live link != state"
    if conf["type"] == "collection":
        assert kept == [record["live"]], f"stray collection generations {kept}"
        check_collection(link, record, conf, ledger)
        return
    ids = [r["release"] for r in record["releases"]]
    assert kept == sorted(ids), f"kept releases on disk {kept} != state {ids}"
    assert record["live"] in ids
    assert len(ids) <= conf.get("keep", 5)
    for entry in record["releases"]:
        n = whole_release(releases_dir / entry["release"])
        files = [p for p in (releases_dir / entry["release"]).rglob("*") if p.is_file()]
        assert len(files) == entry["files"]
        manifest = json.loads((state / "items" / project / f"{item}.manifests"
                               / f"{entry['release']}.json").read_text())["files"]
        tree = releases_dir / entry["release"]
        assert sorted(manifest) == sorted(str(p.relative_to(tree)) for p in files)
        for path, (digest, size) in manifest.items():
            assert_a_link_of_its_blob(base, tree / path, digest, size)
        if ledger is not None:
            assert ledger.markers[entry["sha256"]] == n, "a release is not what was uploaded"


def assert_a_link_of_its_blob(base: Path, path: Path, digest: str, size: int) -> None:
    """A published file is stored once: the blob store holds it, and the tree links to it."""
    blob = base / ".artstore" / "blobs" / digest[:2] / digest
    assert blob.is_file(), f"{path}: its blob {digest} is missing"
    assert os.path.samefile(path, blob), f"{path} is not a link of its blob"
    assert blob.stat().st_size == size


def check_collection(live: Path, record: dict[str, Any], conf: dict[str, Any],
                     ledger: Ledger | None) -> None:
    on_disk = sorted(p.name for p in live.iterdir())
    names = [f["name"] for f in record["files"]]
    assert on_disk == sorted(names + ["index.html", "index.json"])
    assert len(names) <= conf.get("depth", 10)
    index = json.loads((live / "index.json").read_text())
    assert [f["name"] for f in index["files"]] == list(reversed(names))
    page = (live / "index.html").read_text()
    for entry in record["files"]:
        data = (live / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert_a_link_of_its_blob(live.parent.parent, live / entry["name"], entry["sha256"],
                                  entry["size"])
        assert entry["name"] in page
        if ledger is not None:
            assert ledger.markers[entry["sha256"]] == marker(data)


# -- servers -------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Server]:
    config = write_config(tmp_path / "state")
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "3"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    requests.post(f"{srv.url}/demo", json={"items": ITEMS}, headers=AUTH,
                  timeout=30).raise_for_status()
    yield srv
    srv.stop()


def workers(server: Server) -> list[int]:
    """The gunicorn workers: children of the ``artstore serve`` process (the arbiter)."""
    found: list[int] = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(pid) for pid in (task / "children").read_text().split()]
    return found


def publish(url: str, ledger: Ledger, item: str, n: int, session: requests.Session,
            timeout: float = 30) -> int | str:
    """One publish of release ``n`` to ``item``; the status, or the kind of error."""
    if item == "docs":
        data = release_tgz(n)
        call = {"method": "PUT", "data": data}
    elif item == "site":
        data = release_zip(n)
        call = {"method": "POST", "files": {"item": ("site.zip", data)}}
    else:
        data = body(n, 4096)
        call = {"method": "PUT", "data": data, "params": {"filename": f"build-{n:08d}.bin"}}
    sha = ledger.note(item, data, n)
    try:
        r = session.request(url=f"{url}/demo/{item}", headers=AUTH, timeout=timeout, **call)
        outcome: int | str = r.status_code
    except requests.RequestException as exc:
        outcome = type(exc).__name__
    ledger.answer(item, sha, outcome)
    return outcome


# -- workers killed at random --------------------------------------------------------------------


@dataclass
class Storm:
    """What happened while workers were killed at random, checked by the tests below."""

    state: Path
    ledger: Ledger
    kills: int
    problems: list[str]  # what the reader saw, and invariants broken before the restart
    projects: dict[str, list[int | str]]  # project churned -> answers to create, then delete
    after_restart: dict[str, Any]  # the restarted server's view of the items
    log: str


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Storm:
    """A few hundred publishes (tgz, zip, collection) from two clients, and projects created
    and deleted by a third, while a killer SIGKILLs a random gunicorn worker every 0.05-0.5 s.
    Then the server is stopped, the disk checked, and the server restarted (every new worker
    sweeps, so the killed workers' leftovers must go)."""
    folder = tmp_path_factory.mktemp("storm")
    state = folder / "state"
    srv = start_server(folder, ["--config", str(write_config(state)), "--workers", "3"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, folder / "server.log")
    requests.post(f"{srv.url}/demo", json={"items": ITEMS}, headers=AUTH,
                  timeout=30).raise_for_status()
    ledger = Ledger()
    stop = threading.Event()
    problems: list[str] = []
    kills = []
    projects: dict[str, list[int | str]] = {}
    seed = int(os.environ.get("ARTSTORE_FAULT_SEED", time.time_ns()))
    rng = random.Random(seed)
    per_client = int(os.environ.get("ARTSTORE_FAULT_PUBLISHES", "150"))

    def client(first: int, own_item: str) -> None:
        session = requests.Session()
        for i in range(per_client):
            outcome = publish(srv.url, ledger, own_item if i % 2 else "builds", first + i, session)
            if not isinstance(outcome, int):
                session = requests.Session()  # the connection died with its worker

    def churn() -> None:
        """Projects created and deleted: projects.json rewritten while workers die."""
        i = 0
        while not stop.is_set():
            name = f"churn{i}"
            answers = projects.setdefault(name, [])
            for method in ("POST", "DELETE") if i % 3 else ("POST",):
                try:
                    r = requests.request(method, f"{srv.url}/{name}", headers=AUTH, timeout=30,
                                         json={"items": {"docs": {"type": "tgz"}}})
                    answers.append(r.status_code)
                except requests.RequestException as exc:
                    answers.append(type(exc).__name__)
            i += 1

    def killer() -> None:
        while not stop.wait(rng.uniform(0.05, 0.5)):
            alive = workers(srv)
            if alive:
                try:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                    kills.append(1)
                except ProcessLookupError:
                    pass

    def reader() -> None:
        """The live trees, read the way nginx does: once an item has been seen, it never
        disappears and never shows a torn or mixed file."""
        seen = set()
        while not stop.is_set():
            for item, page in (("docs", "page2.html"), ("site", "sub/page2.html")):
                try:
                    marker((state / "public/demo" / item / page).read_bytes())
                    seen.add(item)
                except FileNotFoundError:
                    if item in seen:
                        problems.append(f"{item} vanished")
                except AssertionError as exc:
                    problems.append(f"reader: {exc}")

    clients = [threading.Thread(target=client, args=(1_000_000, "docs")),
               threading.Thread(target=client, args=(2_000_000, "site"))]
    helpers = [threading.Thread(target=f) for f in (churn, killer, reader)]
    for t in clients + helpers:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    for t in helpers:
        t.join()
    if srv.proc.poll() is not None:
        problems.append("the gunicorn arbiter died")
    try:
        check_store(state, ledger, restarted=False)
    except AssertionError as exc:
        problems.append(f"before the restart: {exc}")
    restarted = srv.restart()
    try:
        after = {item: requests.get(f"{restarted.url}/demo/{item}", timeout=30).json()
                 for item in ITEMS}
        after["projects"] = requests.get(f"{restarted.url}/", timeout=30).json()["projects"]
    finally:
        restarted.stop()
    return Storm(state, ledger, len(kills), problems, projects, after,
                 (folder / "server.log").read_text() + f"\n(seed {seed})")


@pytest.mark.slow
def test_killed_workers_leave_whole_releases_and_no_leftovers(storm: Storm) -> None:
    assert storm.kills >= 5, "the killer should have killed workers"
    assert storm.problems == []
    assert len(storm.ledger.answers) >= 300
    published = sum(1 for *_, outcome in storm.ledger.answers if outcome == 201)
    assert published >= len(storm.ledger.answers) // 2, "too few publishes got through"
    check_store(storm.state, storm.ledger)


@pytest.mark.slow
def test_killed_workers_lose_nothing_that_was_acknowledged(storm: Storm) -> None:
    """The collection keeps every file (its depth exceeds the uploads), and each archive item's
    live release is its last acknowledged one, or a later one whose answer died with its
    worker after the commit point."""
    files = {f["sha256"] for f in storm.after_restart["builds"]["files"]}
    assert set(storm.ledger.acknowledged("builds")) <= files, "an acknowledged file was lost"
    for item in ("docs", "site"):
        info = storm.after_restart[item]
        live = next(r for r in info["releases"] if r["release"] == info["live"])
        assert live["sha256"] in storm.ledger.may_be_live(item), "a newer release was lost"
    listed = {p["name"] for p in storm.after_restart["projects"]}
    for name, answers in storm.projects.items():
        if answers[-1] == 201:  # created, and no delete was tried or it came back lost
            assert name in listed, f"{name} was acknowledged and lost"
        if answers[-1] == 204:
            assert name not in listed, f"{name} was deleted and came back"
        if name in listed:
            assert (storm.state / "public" / name / "index.html").is_file()


def orphans(state: Path) -> list[str]:
    """Directories under base_path of projects that do not exist (``.artstore`` holds the
    blobs)."""
    projects = stored_projects(state)
    return sorted(p.name for p in (state / "public").iterdir()
                  if p.is_dir() and p.name not in projects and p.name != ".artstore")


@pytest.mark.slow
def test_deleted_projects_leave_no_directory_behind(storm: Storm) -> None:
    assert orphans(storm.state) == []


@pytest.mark.slow
def test_killed_workers_never_make_another_request_fail_with_a_5xx(storm: Storm) -> None:
    """A killed request loses its connection; every other answer is a success."""
    statuses = storm.ledger.statuses()
    errors = {s for s in statuses if isinstance(s, int) and s >= 500}
    assert errors == set(), storm.log[-6000:]
    assert statuses <= {201, "ConnectionError", "ChunkedEncodingError"}, statuses


@pytest.mark.parametrize("item", ["docs", "builds"])
def test_a_sweep_at_any_instant_never_breaks_a_publish_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item: str) -> None:
    """Another worker starting (and sweeping) right after this one created each of its temp
    files and staging directories, before it could claim them: the README promises a sweep
    is safe at any time, so the publish must still succeed, whole."""
    from artstore import storage

    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("demo", {"items": ITEMS})
    other_worker = Store(settings)
    real_mkstemp, real_mkdtemp = storage.tempfile.mkstemp, storage.tempfile.mkdtemp
    calls: list[str] = []
    swept = []

    def sweep_now(directory: str) -> None:
        calls.append(directory)
        if len(calls) % 2:  # every other one, so that a retry gets through
            swept.append(directory)
            storage.sweep_temp_entries(Path(directory))

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        sweep_now(os.path.dirname(path))
        return fd, path

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **kwargs)
        sweep_now(os.path.dirname(path))
        return path

    monkeypatch.setattr(storage.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(storage.tempfile, "mkdtemp", mkdtemp)
    publish_direct(store, "demo", item, release_tgz(7) if item == "docs" else body(7, 100))
    monkeypatch.undo()
    assert swept, "nothing was swept"
    other_worker.sweep()
    check_store(tmp_path / "state")
    live = tmp_path / "state/public/demo" / item / ("index.html" if item == "docs" else "f.bin")
    assert line_marker(live.read_bytes()) == 7


def _store(tmp_path: Path) -> Any:
    from artstore import settings as settings_mod
    from artstore.store import Store

    settings = settings_mod.load(write_config(tmp_path / "state"), environ={})
    return settings, Store


def test_a_sweep_racing_a_project_delete_leaves_no_directory_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker starts and loads the projects; another deletes one; the first goes on."""
    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("gone", {"items": {"docs": {"type": "tgz"}}})
    starting = Store(settings)
    loaded_before_the_delete = starting.catalog.registry.load()
    store.delete_project("gone")
    monkeypatch.setattr(starting.catalog.registry, "load", lambda: loaded_before_the_delete)
    starting.sweep()
    monkeypatch.undo()
    Store(settings).sweep()  # and the next start
    assert orphans(tmp_path / "state") == []


def test_a_project_delete_cut_short_is_finished_by_the_next_start(tmp_path: Path) -> None:
    """Killed between its commit point (projects.json) and removing the directory."""
    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("gone", {"items": {"docs": {"type": "tgz"}}})
    store.catalog.change_projects(lambda projects: projects.pop("gone"))
    Store(settings).sweep()
    assert orphans(tmp_path / "state") == []


def test_a_project_deleted_while_a_publish_commits_answers_both_without_a_5xx(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The delete arrives while the publish, past its last check, makes its release live:
    the publish is done first (it took effect: 201), then the delete removes it all."""
    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("gone", {"items": ITEMS})
    deleting = threading.Thread(target=store.delete_project, args=("gone",))
    real_save_item = store.catalog.save_item

    def save_item(*args: Any) -> None:
        deleting.start()
        deleting.join(timeout=1)  # given the time to remove the files, if it can
        real_save_item(*args)

    monkeypatch.setattr(store.catalog, "save_item", save_item)
    publish_direct(store, "gone", "docs", release_tgz(1))
    deleting.join()
    assert store.catalog.project("gone") is None
    assert orphans(tmp_path / "state") == []
    check_store(tmp_path / "state", restarted=False)


@pytest.mark.parametrize("at", ["staging", "extract"])
def test_a_project_deleted_while_its_upload_is_extracted_answers_409(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """The project's folder goes before or while the archive is unpacked into it: a
    conflict the client can understand, not a 500, and the folder is not made again."""
    from artstore import store as store_mod
    from artstore.errors import Conflict

    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("gone", {"items": ITEMS})
    owner = store.blobs if at == "staging" else store_mod.archive
    real = getattr(owner, at)

    def deleted_first(*args: Any, **kwargs: Any) -> Any:
        store.delete_project("gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, at, deleted_first)
    with pytest.raises(Conflict, match="removed, changed or created again"):
        publish_direct(store, "gone", "docs", release_tgz(1))
    assert orphans(tmp_path / "state") == []
    check_store(tmp_path / "state", restarted=False)


class Killed(BaseException):
    """The process dies here: nothing after this line of the code runs."""


def _killed(*args: Any, **kwargs: Any) -> None:
    raise Killed


@pytest.mark.parametrize("at", [1, 2], ids=["in-base_path", "in-the-state-dir"])
def test_a_project_delete_killed_while_removing_a_folder_is_finished_by_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """A delete renames each of the project's folders away, then removes it; killed in
    between, the renamed folder must not stay forever."""
    from artstore import storage

    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("gone", {"items": ITEMS})
    publish_direct(store, "gone", "docs", release_tgz(1))
    real_rmtree, calls = storage.shutil.rmtree, []

    def rmtree(*args: Any, **kwargs: Any) -> None:
        calls.append(args[0])
        if len(calls) == at:
            raise Killed
        real_rmtree(*args, **kwargs)

    monkeypatch.setattr(storage.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        store.delete_project("gone")
    monkeypatch.undo()
    assert any(".gone." in str(path) for path in calls), "the kill did not hit a removal"
    Store(settings).sweep()
    check_store(tmp_path / "state")
    assert orphans(tmp_path / "state") == []
    assert not (tmp_path / "state/items/gone").exists()


def _app(tmp_path: Path) -> Any:
    """A worker starting on the store in tmp_path (it sweeps first), through the API."""
    from artstore import settings as settings_mod
    from artstore.api import create_app

    settings = settings_mod.load(write_config(tmp_path / "state"), environ={})
    return create_app(settings, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})


def stored_tokens(tmp_path: Path) -> dict[str, Any]:
    """Every project's stored tokens, by project."""
    from artstore.catalog import FileCatalog

    catalog = FileCatalog(tmp_path / "state")
    return {project: catalog.tokens(project) for project in catalog.token_projects()}


def test_a_project_delete_killed_while_removing_its_files_has_ended_its_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker dies while it removes the releases (nginx answers 502): the tokens must
    already be gone, or the project created again under its name would accept them."""
    from artstore import storage

    client = _app(tmp_path).test_client()
    assert client.post("/gone", json={"items": ITEMS}, headers=AUTH).status_code == 201
    token = client.post("/gone/_tokens", headers=AUTH).get_json()["token"]
    own = {"Authorization": f"Bearer {token}"}
    assert client.put("/gone/docs", data=release_tgz(1, files=50), headers=own).status_code == 201
    monkeypatch.setattr(storage.shutil, "rmtree", _killed)
    with pytest.raises(Killed):
        client.delete("/gone", headers=AUTH)
    monkeypatch.undo()
    assert "gone" not in stored_projects(tmp_path / "state")
    assert "gone" not in stored_tokens(tmp_path)
    assert client.post("/gone", json={"items": ITEMS}, headers=AUTH).status_code == 201
    assert client.put("/gone/docs", data=release_tgz(2), headers=own).status_code == 401
    restarted = _app(tmp_path).test_client()
    assert restarted.put("/gone/docs", data=release_tgz(2), headers=own).status_code == 401
    assert restarted.get("/gone/docs").get_json()["releases"] == []


def test_the_start_up_sweep_ends_the_tokens_of_projects_that_do_not_exist(
        tmp_path: Path) -> None:
    """A delete killed between its commit point (projects.json) and ending the tokens."""
    client = _app(tmp_path).test_client()
    for name in ("gone", "kept"):
        assert client.post(f"/{name}", json={"items": ITEMS}, headers=AUTH).status_code == 201
    tokens = {name: client.post(f"/{name}/_tokens", headers=AUTH).get_json()["token"]
              for name in ("gone", "kept")}
    client.application.extensions["artstore"].store.catalog.change_projects(
        lambda projects: projects.pop("gone"))
    assert sorted(stored_tokens(tmp_path)) == ["gone", "kept"]
    restarted = _app(tmp_path).test_client()
    assert sorted(stored_tokens(tmp_path)) == ["kept"]
    assert restarted.post("/gone", json={"items": ITEMS}, headers=AUTH).status_code == 201
    for name, status in (("gone", 401), ("kept", 201)):
        r = restarted.put(f"/{name}/docs", data=release_tgz(1),
                          headers={"Authorization": f"Bearer {tokens[name]}"})
        assert r.status_code == status, r.get_json()


def test_a_token_is_never_created_for_a_project_deleted_while_it_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project is deleted right after the token call checked that it exists."""
    app = _app(tmp_path)
    client = app.test_client()
    assert client.post("/gone", json={"items": ITEMS}, headers=AUTH).status_code == 201
    services = app.extensions["artstore"]
    real_project = services.store.project
    calls = []

    def deleted_meanwhile(name: str) -> Any:
        found = real_project(name)
        calls.append(name)
        if len(calls) == 1:
            services.store.delete_project(name)  # as DELETE /gone does, in another worker
            services.tokens.drop_project(name)
        return found

    monkeypatch.setattr(services.store, "project", deleted_meanwhile)
    assert client.post("/gone/_tokens", headers=AUTH).status_code == 404
    monkeypatch.undo()
    assert "gone" not in stored_tokens(tmp_path)


@pytest.mark.parametrize("kill", ["before-the-removal", "during-the-removal"])
def test_an_item_removal_cut_short_is_finished_by_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str) -> None:
    """An item taken out of a project (``?prune=true``) after its commit point (projects.json):
    the next start removes its releases, live link and state, so the same name added again
    starts empty instead of bringing the old releases back."""
    from artstore import storage

    settings, Store = _store(tmp_path)
    store = Store(settings)
    store.create_project("demo", {"items": ITEMS})
    for n in (1, 2):
        publish_direct(store, "demo", "docs", release_tgz(n))
    if kill == "before-the-removal":
        monkeypatch.setattr(Store, "_remove_item", _killed)
    else:
        monkeypatch.setattr(storage.shutil, "rmtree", _killed)
    without_docs = {k: v for k, v in ITEMS.items() if k != "docs"}
    with pytest.raises(Killed):
        store.update_project("demo", {"items": without_docs}, prune=True)
    monkeypatch.undo()
    Store(settings).sweep()
    state, public = tmp_path / "state", tmp_path / "state/public/demo"
    check_store(state)
    assert not os.path.lexists(public / "docs")
    assert list((public / ".artstore").iterdir()) == []  # nothing else was published
    assert not (state / "items/demo/docs.json").exists()
    store.update_project("demo", {"items": ITEMS}, prune=False)
    state = store.item_view("demo", "docs").state
    assert (state.live, state.releases) == (None, ())


def publish_direct(store: Any, project: str, item: str, data: bytes) -> None:
    """Publish through the domain, without HTTP (a collection file is named f.bin)."""
    upload = store.receive()
    try:
        upload.write(data)
        store.publish(project, item, upload, filename="f.bin", metadata={}, sha256=None)
    finally:
        upload.discard()


# -- a filesystem that fills up ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs made for the test, holding state, base_path and temp_path alike."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def incompressible(n: int, size: int) -> bytes:
    """``size`` bytes that do not compress, carrying marker ``n`` in every line."""
    line = b"<!-- release %08d -->" % n
    out = bytearray()
    while len(out) < size:
        out += line + os.urandom(40).hex().encode() + b"\n"
    return bytes(out)


def big_release(kind: str, n: int, size: int) -> bytes:
    """An archive of one page and one big file; ``marker`` ignores the random tails."""
    entries = {"index.html": body(n, 1024), "blob.txt": incompressible(n, size)}
    buf = io.BytesIO()
    if kind == "tgz":
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
    return buf.getvalue()


def test_a_full_disk_answers_507_keeps_every_live_release_and_recovers(
        small_disk: Path, tmp_path: Path) -> None:
    state = small_disk / "state"
    srv = start_server(tmp_path, ["--config", str(write_config(state)), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    try:
        for name in ("demo", "filler"):
            requests.post(f"{srv.url}/{name}", json={"items": ITEMS}, headers=AUTH,
                          timeout=30).raise_for_status()
        answers: list[tuple[str, int, int]] = []  # (item, marker, status)
        live_markers: dict[str, int] = {}

        def publish_big(item: str, n: int, size: int) -> int:
            data = big_release("tgz" if item == "docs" else "zip", n, size)
            r = requests.put(f"{srv.url}/demo/{item}", data=data, headers=AUTH, timeout=60)
            answers.append((item, n, r.status_code))
            assert r.headers["Content-Type"].startswith(("application/json",
                                                         "application/problem+json"))
            if r.status_code == 201:
                live_markers[item] = n
            return r.status_code

        def fill(project: str, first: int) -> int:
            """Collection files until the disk says no; the number of 507s seen."""
            full = 0
            for n in range(first, first + 60):
                r = requests.put(f"{srv.url}/{project}/builds",
                                 params={"filename": f"fill-{n}.bin"},
                                 data=incompressible(n, 300 * 1024), headers=AUTH, timeout=60)
                assert r.status_code in (201, 507), r.text
                full += r.status_code == 507
                if full >= 3:
                    break
            return full

        assert publish_big("docs", 1, 200 * 1024) == 201
        assert publish_big("site", 2, 200 * 1024) == 201
        # Two clients fill the disk while a third keeps publishing releases.
        threads = [threading.Thread(target=fill, args=("filler", 1000)),
                   threading.Thread(target=fill, args=("demo", 2000))]
        for t in threads:
            t.start()
        n = 10
        while any(t.is_alive() for t in threads) or n < 16:
            status = publish_big(("docs", "site")[n % 2], n, 400 * 1024)
            assert status in (201, 507), status
            n += 1
        for t in threads:
            t.join()
        assert 507 in {status for *_, status in answers}, "the disk never filled"
        for item, n in live_markers.items():
            for page in ("index.html", "blob.txt"):
                assert line_marker((state / "public/demo" / item / page).read_bytes()) == n
        assert list((state / "tmp").iterdir()) == [], "a refused upload stayed in temp_path"

        # Freeing space is possible, and then publishing works again.
        r = requests.delete(f"{srv.url}/filler", headers=AUTH, timeout=30)
        assert r.status_code == 204, r.text
        assert publish_big("docs", 99, 200 * 1024) == 201
        assert line_marker((state / "public/demo/docs/blob.txt").read_bytes()) == 99
        # A start-up on a full disk works: fill it again and restart.
        fill("demo", 3000)
        srv = srv.restart()
        assert requests.get(f"{srv.url}/demo/docs", timeout=30).json()["live"]
        check_store(state)
    finally:
        srv.stop()
    assert server_errors(tmp_path / "server.log") == []


def server_errors(log: Path) -> list[str]:
    """Requests the access log shows answered with a 5xx other than 507 (disk full)."""
    return [line for line in log.read_text().splitlines()
            if re.search(r'HTTP/1\.[01]" 5(?!07)\d\d ', line)]


def test_deleting_a_collection_file_on_a_full_disk_answers_507_or_frees_space(
        small_disk: Path) -> None:
    from artstore import settings as settings_mod
    from artstore.api import create_app

    settings = settings_mod.load(write_config(small_disk / "state"), environ={})
    client = create_app(settings, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN}).test_client()
    client.post("/demo", json={"items": ITEMS}, headers=AUTH)
    n = 0
    while client.put(f"/demo/builds?filename=f{n}", data=incompressible(n, 256 * 1024),
                     headers=AUTH).status_code == 201:
        n += 1
    # Fill the last pages too, the way other files on the disk would.
    with open(small_disk / "ballast", "wb", buffering=0) as ballast:
        try:
            while True:
                ballast.write(b"\0" * 4096)
        except OSError:
            pass
    r = client.delete("/demo/builds/f0", headers=AUTH)
    assert r.status_code in (204, 507), (r.status_code, r.get_json())
    if r.status_code == 507:
        assert r.mimetype == "application/problem+json"
    check_store(small_disk / "state", restarted=False)


# -- clients that vanish, lie or crawl -----------------------------------------------------------


def raw_request(url: str, head: str, pieces: list[bytes], pause: float = 0.0,
                abort: str = "") -> str:
    """Send a request by hand: ``head``, then ``pieces`` with ``pause`` seconds between them.

    ``abort``: "" reads the answer; "close" half-closes and reads what comes; "reset" ends
    the connection with a TCP RST. Returns the status line, or "" if there was none.
    """
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head.encode("latin-1"))
            for piece in pieces:
                if pause:
                    time.sleep(pause)
                sock.sendall(piece)
            if abort == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                return ""
            if abort == "close":
                sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(65536)
        except OSError:
            return ""
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def head(method: str, path: str, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: artstore", f"Authorization: Bearer {ADMIN}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = "fault-boundary-7d1e"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"item\"; "
               f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
               ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return payload, f"multipart/form-data; boundary={boundary}"


def chunked(data: bytes, size: int = 4096) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
            for i in range(0, len(data), size)] + [b"0\r\n\r\n"]


WAYS = ["short", "short-reset", "chunked-cut", "chunked-cut-reset", "multipart-cut",
        "multipart-cut-reset", "headers-only", "mid-reset"]


def broken_upload(url: str, n: int, item: str, way: str, rng: random.Random) -> str:
    """One client that goes wrong in one of the ways a real one does: it sends less than its
    Content-Length, cuts a chunked or multipart body, sends headers only, and then either
    half-closes and waits for the answer or resets the connection."""
    data = {"docs": release_tgz, "site": release_zip}.get(item, lambda m: body(m, 20_000))(n)
    query = f"?filename=bad-{n}.bin" if item == "builds" else ""
    abort = "reset" if way.endswith("reset") else "close"
    cut = rng.randrange(1, len(data))
    if way.startswith("multipart-cut"):
        payload, kind = multipart(data, f"bad-{n}.bin")
        return raw_request(url, head("POST", f"/demo/{item}", {
            "Content-Type": kind, "Content-Length": str(len(payload))}),
            [payload[:rng.randrange(1, len(payload))]], abort=abort)
    if way.startswith("chunked-cut"):
        stream = b"".join(chunked(data))
        return raw_request(url, head("PUT", f"/demo/{item}{query}", {
            "Transfer-Encoding": "chunked"}), [stream[:rng.randrange(1, len(stream) - 5)]],
            abort=abort)
    length = {"Content-Length": str(len(data))}
    if way == "headers-only":
        return raw_request(url, head("PUT", f"/demo/{item}{query}", length), [], abort="close")
    if way == "mid-reset":
        return raw_request(url, head("PUT", f"/demo/{item}{query}", length),
                           [data[:cut], data[cut:cut + 10]], pause=0.05, abort="reset")
    return raw_request(url, head("PUT", f"/demo/{item}{query}", length), [data[:cut]],
                       abort=abort)


@dataclass
class Vanishing:
    state: Path
    ledger: Ledger
    bad_answers: dict[tuple[str, str], list[str]]  # (way, item) -> status lines
    temp_emptied: bool
    log: Path
    builds: list[str]


@pytest.fixture(scope="module")
def vanishing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vanishing]:
    """Every way of breaking an upload, to every item type, twice (48 broken uploads from four
    clients), racing thirty good publishes from two others."""
    folder = tmp_path_factory.mktemp("vanishing")
    state = folder / "state"
    srv = start_server(folder, ["--config", str(write_config(state)), "--workers", "3"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, folder / "server.log")
    try:
        requests.post(f"{srv.url}/demo", json={"items": ITEMS}, headers=AUTH,
                      timeout=30).raise_for_status()
        ledger = Ledger()
        rng = random.Random(int(os.environ.get("ARTSTORE_FAULT_SEED", time.time_ns())))
        plan = [(way, item) for way in WAYS for item in ITEMS] * 2
        rng.shuffle(plan)
        answers: dict[tuple[str, str], list[str]] = {}

        def bad_client(k: int) -> None:
            for i, (way, item) in enumerate(plan[k::4]):
                answer = broken_upload(srv.url, 9_000_000 + 100 * k + i, item, way, rng)
                answers.setdefault((way, item), []).append(answer)

        def good_client(first: int) -> None:
            session = requests.Session()
            for i in range(15):
                publish(srv.url, ledger, ("docs", "site", "builds")[i % 3], first + i, session)

        threads = [threading.Thread(target=bad_client, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=good_client, args=(first,)) for first in (1000, 2000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10
        while list((state / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        emptied = list((state / "tmp").iterdir()) == []
        builds = [f["name"] for f in requests.get(f"{srv.url}/demo/builds",
                                                  timeout=30).json()["files"]]
        yield Vanishing(state, ledger, answers, emptied, folder / "server.log", builds)
    finally:
        srv.stop()


def test_clients_that_vanish_or_send_less_than_they_said_publish_nothing(
        vanishing: Vanishing) -> None:
    """Only the good uploads are published, temp_path empties at once (no restart needed),
    and the good clients never see an error."""
    assert vanishing.ledger.statuses() == {201}
    assert vanishing.temp_emptied, "a vanished upload stayed in temp_path"
    check_store(vanishing.state, vanishing.ledger, restarted=False)
    for item in ("docs", "site"):
        live = vanishing.state / "public/demo" / item / "index.html"
        assert line_marker(live.read_bytes()) < 9_000_000, "a broken upload was published"
    assert not any(name.startswith("bad-") for name in vanishing.builds)


def test_a_body_cut_short_is_a_400_for_a_client_still_listening_never_a_5xx(
        vanishing: Vanishing) -> None:
    """A client that half-closes after sending too little is told why (400); one that resets
    gets nothing; the server logs no 5xx for either: it is the client's fault."""
    for (way, item), answers in sorted(vanishing.bad_answers.items()):
        for answer in answers:
            if answer:
                assert answer.split(" ")[1] == "400", (way, item, answer)
    assert server_errors(vanishing.log) == []


def test_slow_clients_do_not_hold_up_the_others_and_publish_whole(store: Server,
                                                                   tmp_path: Path) -> None:
    """Three clients trickle their uploads over about three seconds while another publishes
    twenty releases: the fast one is not held up (there are fewer slow clients than threads in
    a worker; SECURITY.md says what more of them do), and every slow upload lands whole."""
    state = tmp_path / "state"
    ledger = Ledger()
    slow_answers: dict[int, str] = {}
    fast_times: list[float] = []

    def slow_client(n: int) -> None:
        if n % 2:
            data = release_tgz(n)
            path, extra = "/demo/docs", {}
        else:
            data = body(n, 40_000)
            path, extra = f"/demo/builds?filename=slow-{n}.bin", {}
        ledger.note("slow", data, n)
        pieces = [data[i:i + len(data) // 15 + 1] for i in range(0, len(data), len(data) // 15 + 1)]
        slow_answers[n] = raw_request(store.url, head("PUT", path, {
            "Content-Length": str(len(data)), **extra}), pieces, pause=0.2)

    def fast_client() -> None:
        session = requests.Session()
        for i in range(20):
            started = time.monotonic()
            assert publish(store.url, ledger, ("site", "builds")[i % 2], 3000 + i, session) == 201
            fast_times.append(time.monotonic() - started)

    slow = [threading.Thread(target=slow_client, args=(n,)) for n in range(5001, 5004)]
    for t in slow:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    fast = threading.Thread(target=fast_client)
    fast.start()
    fast.join()
    fast_done = time.monotonic() - started
    for t in slow:
        t.join()
    assert len(fast_times) == 20 and ledger.statuses() == {201}
    assert all(answer.split(" ")[1] == "201" for answer in slow_answers.values()), slow_answers
    assert max(fast_times) < 2.5, f"a fast publish waited {max(fast_times):.1f} s"
    assert fast_done < 2.5 + 0.3 * 15, "the fast client finished only after the slow ones"
    assert line_marker((state / "public/demo/docs/index.html").read_bytes()) in (5001, 5003)
    names = {f["name"] for f in requests.get(f"{store.url}/demo/builds", timeout=30).json()[
        "files"]}
    assert "slow-5002.bin" in names
    check_store(state, ledger, restarted=False)
    restarted = store.restart()
    try:
        check_store(state, ledger)
    finally:
        restarted.stop()
