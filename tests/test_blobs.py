"""Content-addressed storage: every published file stored once by its sha256, release trees made
of links to the blobs, a collector that deletes only what no tree holds, and the upgrade of a
store written before all this."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from artstore import blobs as blobs_mod
from artstore import settings as settings_mod
from artstore.blobs import LocalBlobStore
from artstore.store import Store

from .archives import site_tgz, site_zip
from .conftest import ADMIN, AUTH, start_server, write_config

DATA = Path(__file__).parent / "data"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_files(base: Path) -> dict[str, os.stat_result]:
    root = base / ".artstore" / "blobs"
    return {p.name: p.stat() for p in root.glob("*/*") if not p.name.startswith(".")}


def release_dirs(base: Path, project: str, item: str) -> list[Path]:
    folder = base / project / ".artstore" / item
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".tmp-"))


def site(n: int, pages: int = 20) -> dict[str, bytes]:
    """Release ``n``: ``pages`` pages of which only index.html changes."""
    files = {f"page{i}.html": b"<p>page %d</p>\n" % i * 50 for i in range(pages)}
    return {**files, "index.html": b"<h1>release %d</h1>" % n}


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- sharing --------------------------------------------------------------------------------------


def test_a_republished_site_shares_the_bytes_of_unchanged_files(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project()
    for n in (1, 2):
        assert client.put("/demo/docs", data=site_tgz(site(n)), headers=AUTH).status_code == 201
    first, second = release_dirs(settings.base_path, "demo", "docs")
    for i in range(20):
        assert os.path.samefile(first / f"page{i}.html", second / f"page{i}.html")
    assert not os.path.samefile(first / "index.html", second / "index.html")
    found = blob_files(settings.base_path)
    assert len(found) == 22  # 20 shared pages, two index pages
    for path in [*first.rglob("*"), *second.rglob("*")]:
        assert os.path.samefile(path, settings.base_path / ".artstore" / "blobs"
                                / sha(path.read_bytes())[:2] / sha(path.read_bytes()))


def test_releases_and_items_report_their_bytes_counting_each_content_once(
        client: Any, make_project: Any) -> None:
    make_project()
    sizes = []
    for n in (1, 2, 3):
        files = site(n)
        sizes.append(sum(map(len, files.values())))
        assert client.put("/demo/docs", data=site_tgz(files), headers=AUTH).status_code == 201
    item = client.get("/demo/docs").get_json()
    assert [r["bytes"] for r in item["releases"]] == sizes[::-1]
    pages = sum(len(v) for k, v in site(1).items() if k != "index.html")
    indexes = sum(len(site(n)["index.html"]) for n in (1, 2, 3))
    assert item["stored_bytes"] == pages + indexes
    assert client.put("/demo/site", data=site_zip(site(1)), headers=AUTH).status_code == 201
    project = client.get("/demo").get_json()
    assert project["items"]["docs"]["stored_bytes"] == pages + indexes
    assert project["items"]["site"]["stored_bytes"] == sizes[0]
    assert project["stored_bytes"] == pages + indexes  # the zip holds nothing new


def test_collection_files_with_the_same_bytes_are_stored_once(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project()
    for name in ("a.bin", "b.bin"):
        r = client.put(f"/demo/builds?filename={name}", data=b"same bytes", headers=AUTH)
        assert r.status_code == 201
    live = settings.base_path / "demo" / "builds"
    assert os.path.samefile(live / "a.bin", live / "b.bin")
    assert client.get("/demo/builds").get_json()["stored_bytes"] == len(b"same bytes")


def test_a_pruned_release_frees_the_blobs_only_it_held(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project(items={"docs": {"type": "tgz", "keep": 2}})
    for n in (1, 2, 3):
        assert client.put("/demo/docs", data=site_tgz(site(n)), headers=AUTH).status_code == 201
    gone = sha(site(1)["index.html"])
    wait_until(lambda: gone not in blob_files(settings.base_path))  # deleted in the background
    assert len(blob_files(settings.base_path)) == 22
    assert sha(site(2)["index.html"]) in blob_files(settings.base_path)


def test_removing_an_item_or_a_project_frees_its_blobs(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project()
    assert client.put("/demo/docs", data=site_tgz(site(1)), headers=AUTH).status_code == 201
    assert client.put("/demo/builds?filename=x.bin", data=b"x", headers=AUTH).status_code == 201
    r = client.put("/demo?prune=true", json={"items": {"builds": {"type": "collection"}}},
                   headers=AUTH)
    assert r.status_code == 200
    assert set(blob_files(settings.base_path)) == {sha(b"x")}
    assert client.delete("/demo", headers=AUTH).status_code == 204
    assert blob_files(settings.base_path) == {}


# -- the collector --------------------------------------------------------------------------------


def test_the_collector_deletes_exactly_the_blobs_no_tree_links_to(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("kept", "dropped"):
        (tree / name).write_bytes(name.encode())
    store.intern([(str(tree / n), sha(n.encode())) for n in ("kept", "dropped")])
    (tree / "dropped").unlink()
    leftover = store.path(sha(b"kept")).parent / ".tmp-12.34"  # a killed intern's link
    os.link(store.path(sha(b"kept")), leftover)
    done = store.collect()
    assert (done.blobs, done.bytes, done.kept) == (1, len(b"dropped"), 1)
    assert store.has(sha(b"kept")) and not store.has(sha(b"dropped"))
    assert not leftover.exists()
    assert (tree / "kept").read_bytes() == b"kept"


def test_the_collector_waits_for_a_publish_that_is_linking_a_blob(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob no tree holds (its last release was pruned) is found by a publish with the same
    content: the collector must not delete it between the publish finding it and linking it."""
    store = LocalBlobStore(tmp_path)
    old = tmp_path / "old"
    old.write_bytes(b"content")
    store.intern([(str(old), sha(b"content"))])
    old.unlink()  # the blob is unreferenced now
    new = tmp_path / "new"
    new.write_bytes(b"content")
    found, go_on = threading.Event(), threading.Event()
    real_samefile = os.path.samefile

    def paused(a: str, b: str) -> bool:  # called once intern knows the blob exists
        found.set()
        go_on.wait(10)
        return real_samefile(a, b)

    monkeypatch.setattr(blobs_mod.os.path, "samefile", paused)
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            store.intern([(str(new), sha(b"content"))])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert found.wait(10)
    collector = threading.Thread(target=store.collect)
    collector.start()
    collector.join(0.5)
    assert collector.is_alive(), "the collector did not wait for the publish"
    go_on.set()
    publisher.join(10)
    collector.join(10)
    assert errors == []
    assert store.has(sha(b"content"))
    assert os.path.samefile(new, store.path(sha(b"content")))


def _collect_forever(base: str, stop: Any) -> None:
    store = LocalBlobStore(Path(base))
    while not stop.is_set():
        store.collect()


@pytest.mark.slow
def test_a_collector_racing_publishes_in_two_workers_never_deletes_a_used_blob(
        tmp_path: Path) -> None:
    """Two clients publish sites that share most of their files, through a server with two
    workers, while another process collects without pause; afterwards every file of every kept
    release and collection is a link of its blob, and the blob store holds every content."""
    config = write_config(tmp_path / "state")
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    base = tmp_path / "state" / "public"
    stop = multiprocessing.Event()
    collector = multiprocessing.Process(target=_collect_forever, args=(str(base), stop))
    try:
        items = {"docs": {"type": "tgz", "keep": 2}, "builds": {"type": "collection",
                                                                "depth": 4}}
        requests.post(f"{srv.url}/demo", json={"items": items}, headers=AUTH,
                      timeout=30).raise_for_status()
        collector.start()

        def client(offset: int) -> None:
            with requests.Session() as session:
                for n in range(offset, offset + 30):
                    r = session.put(f"{srv.url}/demo/docs", data=site_tgz(site(n % 3)),
                                    headers=AUTH, timeout=60)
                    assert r.status_code == 201, r.text
                    r = session.put(f"{srv.url}/demo/builds", params={"filename": f"b{n}"},
                                    data=b"build %d" % (n % 2), headers=AUTH, timeout=60)
                    assert r.status_code == 201, r.text

        threads = [threading.Thread(target=client, args=(k * 100,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        collector.join(30)
        srv.stop()
    state = tmp_path / "state"
    blobs = LocalBlobStore(base)
    for item in ("docs", "builds"):
        for tree in release_dirs(base, "demo", item):
            for path in tree.rglob("*"):
                if path.name in ("index.html", "index.json") and item == "builds":
                    continue  # a collection's generated pages are not uploads
                digest = sha(path.read_bytes())
                assert blobs.has(digest), f"{path} lost its blob"
                assert os.path.samefile(path, blobs.path(digest))
    record = json.loads((state / "items" / "demo" / "docs.json").read_text())
    for release in record["releases"]:
        manifest = json.loads((state / "items" / "demo" / "docs.manifests"
                               / f"{release['release']}.json").read_text())
        assert all(blobs.has(digest) for digest, _ in manifest["files"].values())


# -- upgrading a store written by an older artstore -----------------------------------------------


def old_store(tmp_path: Path) -> Path:
    """The store ``tests/data/make_format1_store.py`` made with artstore before the blob store."""
    with tarfile.open(DATA / "format1-store.tgz") as tar:
        tar.extractall(tmp_path)  # noqa: S202 - our own fixture
    return tmp_path / "state"


def upgraded(before: dict[str, bytes]) -> dict[str, bytes]:
    """What is served after the upgrade: the same, plus each html report as its item's
    index.html too, as an html item is published now."""
    return {**before, **{f"{p}/report/index.html": before[f"{p}/report/report.html"]
                         for p in ("alpha", "beta")}}


def served(base: Path) -> dict[str, bytes]:
    """Every published file as nginx would serve it: through the live links."""
    found = {}
    for project in ("alpha", "beta"):
        for item in ("docs", "site", "report", "builds"):
            live = base / project / item
            for path in live.rglob("*"):
                if path.is_file():
                    found[str(path.relative_to(base))] = path.read_bytes()
    return found


def test_a_store_written_by_artstore_0_1_is_upgraded_in_place(tmp_path: Path) -> None:
    state = old_store(tmp_path)
    base = state / "public"
    before = served(base)
    old_items = {i: json.loads((state / "items" / "alpha" / f"{i}.json").read_text())
                 for i in ("docs", "site", "report", "builds")}
    srv = start_server(tmp_path, ["--config", str(state / "artstore.json"), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    try:
        wait_until(lambda: (state / "format.json").exists(), timeout=60)
        assert json.loads((state / "format.json").read_text()) == {"format": 2}
        assert served(base) == upgraded(before)
        blobs = LocalBlobStore(base)
        for project in ("alpha", "beta"):
            for item in ("docs", "site", "report", "builds"):
                for tree in release_dirs(base, project, item):
                    for path in tree.rglob("*"):
                        if path.is_file() and not (item == "builds" and path.name.startswith(
                                "index.")):
                            assert os.path.samefile(path, blobs.path(sha(path.read_bytes())))
        docs = requests.get(f"{srv.url}/alpha/docs", timeout=30).json()
        assert [r["release"] for r in docs["releases"]] == [
            r["release"] for r in reversed(old_items["docs"]["releases"])]
        assert all(r["bytes"] == sum(map(len, _tree(base, "alpha", "docs",
                                                    r["release"]).values()))
                   for r in docs["releases"])
        # style.css and the other shared files are stored once across the three kept releases
        unique = {sha(d): len(d) for r in docs["releases"]
                  for d in _tree(base, "alpha", "docs", r["release"]).values()}
        assert docs["stored_bytes"] == sum(unique.values())
        # and everything works on the upgraded store
        assert requests.post(f"{srv.url}/alpha/docs/rollback", headers=AUTH,
                             timeout=30).status_code == 200
        r = requests.put(f"{srv.url}/alpha/builds", params={"filename": "tool-9.bin"},
                         data=b"tool 1\n", headers=AUTH, timeout=30)
        assert r.status_code == 201
        live = base / "alpha" / "builds"
        assert os.path.samefile(live / "tool-9.bin", live / "tool-3.bin")  # same bytes
    finally:
        srv.stop()


def _tree(base: Path, project: str, item: str, release: str) -> dict[str, bytes]:
    root = base / project / ".artstore" / item / release
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


UPGRADE_KILLED_AFTER = """
import os, signal, sys
from pathlib import Path
from artstore import blobs, settings
from artstore.store import Store
count, real = [0], blobs._intern_one
def dying(path, blob):
    count[0] += 1
    if count[0] > int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, blob)
blobs._intern_one = dying
Store(settings.load(Path(sys.argv[1]), environ={})).upgrade()
"""


def test_an_upgrade_killed_half_way_keeps_every_served_file_and_finishes_later(
        tmp_path: Path) -> None:
    state = old_store(tmp_path)
    base = state / "public"
    before = served(base)
    reader_saw: list[str] = []
    stop = threading.Event()

    def reader() -> None:  # a reader of the live files all along
        while not stop.is_set():
            for path, data in before.items():
                try:
                    if (base / path).read_bytes() != data:
                        reader_saw.append(f"{path} changed")
                except FileNotFoundError:
                    reader_saw.append(f"{path} missing")

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        killed = subprocess.run([sys.executable, "-c", UPGRADE_KILLED_AFTER,
                                 str(state / "artstore.json"), "25"])
        assert killed.returncode == -signal.SIGKILL
        assert not (state / "format.json").exists()
        half = json.loads((state / "items" / "alpha" / "docs.json").read_text())
        assert all("bytes" in r for r in half["releases"])  # the first items are done
        Store(settings_mod.load(state / "artstore.json", environ={})).sweep()  # a restart
        Store(settings_mod.load(state / "artstore.json", environ={})).upgrade()
    finally:
        stop.set()
        watcher.join()
    assert reader_saw == []
    assert served(base) == upgraded(before)
    assert json.loads((state / "format.json").read_text()) == {"format": 2}
    for project in ("alpha", "beta"):
        record = json.loads((state / "items" / project / "docs.json").read_text())
        for release in record["releases"]:
            assert release["bytes"] == sum(map(len, _tree(base, project, "docs",
                                                          release["release"]).values()))
    leftovers = [p for p in (base / ".artstore" / "blobs").rglob(".tmp-*")]
    assert len(leftovers) <= 1  # the killed intern's link, removed by the next collection
    LocalBlobStore(base).collect()
    assert list((base / ".artstore" / "blobs").rglob(".tmp-*")) == []
    assert served(base) == upgraded(before)
    shutil.rmtree(state)


COLLECT = """
import sys
from pathlib import Path
from artstore.blobs import LocalBlobStore
LocalBlobStore(Path(sys.argv[1])).collect()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian: strace)")
@pytest.mark.parametrize("when", [1, 2, 3])
def test_a_collector_killed_at_any_delete_leaves_every_used_blob(tmp_path: Path,
                                                                 when: int) -> None:
    base = tmp_path / "public"
    store = LocalBlobStore(base)
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(6):
        (tree / f"f{n}").write_bytes(b"content %d" % n)
    store.intern([(str(tree / f"f{n}"), sha(b"content %d" % n)) for n in range(6)])
    for n in range(3):
        (tree / f"f{n}").unlink()  # three blobs are garbage now
    proc = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlink,unlinkat",
                           "-e", f"inject=unlink,unlinkat:signal=SIGKILL:when={when}",
                           sys.executable, "-c", COLLECT, str(base)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    for n in range(3, 6):
        assert os.path.samefile(tree / f"f{n}", store.path(sha(b"content %d" % n)))
    assert store.collect().kept == 3
    assert set(blob_files(base)) == {sha(b"content %d" % n) for n in range(3, 6)}
