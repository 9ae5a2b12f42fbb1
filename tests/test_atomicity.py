"""Publishing is atomic: under concurrent readers and writers, and when killed."""

from __future__ import annotations

import contextlib
import io
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

from artstore import settings as settings_mod
from artstore.store import Store

from .conftest import AUTH, Server, start_server, write_config
from .test_faults import check_store

MARKER_BYTES = 64 * 1024


def release_tgz(n: int, files: int = 3, size: int = MARKER_BYTES) -> bytes:
    """A site whose every file is ``size`` bytes of one marker line, so a mix is visible.

    Each file's line carries 1 KiB of random text, so that the archive compresses like a
    real site and not beyond the compression ratio limit (which would refuse it).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = ["index.html"] + [f"page{i}.html" for i in range(1, files)]
        for name in names:
            line = b"<!-- release %06d %s -->\n" % (n, os.urandom(512).hex().encode())
            data = line * max(1, size // len(line))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def marker(body: bytes) -> int:
    """The one release a file belongs to; fails on a torn or mixed file."""
    lines = set(body.splitlines())
    assert len(lines) == 1, f"a file mixes {len(lines)} releases"
    return int(lines.pop().split()[2])


def check_whole_live_release(base: Path, project: str, item: str) -> int:
    live = base / project / item
    found = {marker(p.read_bytes()) for p in live.iterdir()}
    assert len(found) == 1, f"the live directory mixes releases {found}"
    return found.pop()


def assert_no_leftovers(settings: settings_mod.Settings) -> None:
    """No temp or staging entry remains (pruned releases may take a moment to delete)."""
    deadline = time.monotonic() + 10
    while True:
        found = [p.name for p in settings.temp_path.iterdir()]
        for folder in [settings.base_path, *settings.base_path.glob("*"),
                       *settings.base_path.glob("*/.artstore/*")]:
            if folder.is_dir():
                found += [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found == []


@pytest.fixture
def site_server(tmp_path: Path) -> Any:
    config = write_config(tmp_path / "state", serve_files=True)
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "3"],
                       {"ARTSTORE_ADMIN_TOKEN": "test-admin-token"}, tmp_path / "server.log",
                       api_prefix="/artstore")
    requests.post(f"{srv.url}/demo", json={"items": {"docs": {"type": "tgz", "keep": 3},
                                                     "builds": {"type": "collection",
                                                                "depth": 4}}},
                  headers=AUTH).raise_for_status()
    yield srv
    srv.stop()


def _publish_many(url: str, numbers: list[int]) -> list[int]:
    return [requests.put(f"{url}/demo/docs", data=release_tgz(n), headers=AUTH,
                         timeout=60).status_code for n in numbers]


def test_readers_see_one_whole_release_while_20_publishes_race(site_server: Server,
                                                               tmp_path: Path) -> None:
    base = tmp_path / "state" / "public"
    assert requests.put(f"{site_server.url}/demo/docs", data=release_tgz(0),
                        headers=AUTH).status_code == 201
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read_http() -> None:
        session = requests.Session()
        while not stop.is_set():
            for page in ("index.html", "page2.html"):
                r = session.get(f"{site_server.root}/demo/docs/{page}")
                if r.status_code != 200:
                    problems.append(f"{page}: HTTP {r.status_code}")
                else:
                    try:
                        seen.append(marker(r.content))
                    except AssertionError as exc:
                        problems.append(str(exc))

    def read_disk() -> None:
        while not stop.is_set():
            try:
                seen.append(marker((base / "demo/docs/index.html").read_bytes()))
            except (OSError, AssertionError) as exc:
                problems.append(f"disk: {exc}")

    readers = [threading.Thread(target=read_http), threading.Thread(target=read_disk)]
    for t in readers:
        t.start()
    try:
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            codes = pool.starmap(_publish_many,
                                 [(site_server.url, list(range(1 + i, 21, 4))) for i in range(4)])
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert sorted(c for group in codes for c in group) == [201] * 20
    assert problems == []
    assert len(set(seen)) > 1, "the readers should have seen several releases"
    live = check_whole_live_release(base, "demo", "docs")
    info = requests.get(f"{site_server.url}/demo/docs").json()
    assert len(info["releases"]) == 3 and info["live"] == info["releases"][0]["release"]
    assert live in range(1, 21)


def _upload_files(url: str, names: list[str]) -> list[tuple[str, int]]:
    return [(n, requests.put(f"{url}/demo/builds", params={"filename": n}, data=n.encode(),
                             headers=AUTH, timeout=60).status_code) for n in names]


def test_concurrent_collection_uploads_keep_the_newest_and_the_index_matches(
        site_server: Server, tmp_path: Path) -> None:
    base = tmp_path / "state" / "public"
    names = [f"w{w}-{i:02d}.bin" for w in range(4) for i in range(10)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_upload_files,
                               [(site_server.url, names[w * 10:(w + 1) * 10]) for w in range(4)])
    assert all(code == 201 for group in results for _, code in group)
    kept = requests.get(f"{site_server.url}/demo/builds").json()["files"]
    assert len(kept) == 4
    on_disk = sorted(p.name for p in (base / "demo/builds").iterdir())
    assert on_disk == sorted([f["name"] for f in kept] + ["index.html", "index.json"])
    index = requests.get(f"{site_server.root}/demo/builds/index.json").json()
    assert [f["name"] for f in index["files"]] == [f["name"] for f in kept]
    # Each writer's own files went in order, so its newest kept file is its last upload
    # among those kept, and nothing it uploaded later than a kept file was dropped.
    for w in range(4):
        mine = [f["name"] for f in kept if f["name"].startswith(f"w{w}-")]
        if mine:
            assert max(mine) == f"w{w}-09.bin"


def test_sigkill_during_extraction_leaves_the_live_release_and_no_leftovers(
        site_server: Server, tmp_path: Path) -> None:
    base = tmp_path / "state" / "public"
    assert requests.put(f"{site_server.url}/demo/docs", data=release_tgz(1),
                        headers=AUTH).status_code == 201
    big = release_tgz(2, files=2000, size=16 * 1024)
    staging = base / "demo/.artstore/docs"
    sender = threading.Thread(target=lambda: _swallow(
        lambda: requests.put(f"{site_server.url}/demo/docs", data=big, headers=AUTH,
                             timeout=60)))
    sender.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stages = [p for p in staging.iterdir() if p.name.startswith(".tmp-stage-")]
        if stages and sum(1 for _ in stages[0].iterdir()) > 20:
            break
        time.sleep(0.005)
    else:
        pytest.fail("the extraction was never seen in progress")
    site_server.stop(signal.SIGKILL)
    sender.join()
    assert check_whole_live_release(base, "demo", "docs") == 1
    restarted = site_server.restart()
    try:
        settings = settings_mod.load(tmp_path / "state" / "artstore.json", environ={})
        assert_no_leftovers(settings)
        assert check_whole_live_release(base, "demo", "docs") == 1
        assert requests.get(f"{restarted.root}/demo/docs/").status_code == 200
        info = requests.get(f"{restarted.url}/demo/docs").json()
        assert len(info["releases"]) == 1
    finally:
        restarted.stop()


def _swallow(call: Any) -> None:
    with contextlib.suppress(requests.RequestException):
        call()


PUBLISH = """
import sys
from pathlib import Path
from artstore import settings
from artstore.store import Store
store = Store(settings.load(Path(sys.argv[1]), environ={}))
upload = store.receive()
upload.write(Path(sys.argv[2]).read_bytes())
store.publish("demo", "docs", upload, filename=None, metadata={}, sha256=None)
upload.discard()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian: strace)")
@pytest.mark.parametrize("syscall,when", [("rename", k) for k in range(1, 6)]
                         + [("link", k) for k in range(1, 4)]
                         + [("symlink", 1), ("rmdir", 1), ("fsync", 2)])
def test_sigkill_at_each_step_of_the_swap_then_restart_finds_a_whole_release(
        tmp_path: Path, syscall: str, when: int) -> None:
    """strace kills the publisher at the n-th rename (staging -> release, state file,
    symlink swap, page, pruning), while it links files to their blobs, and elsewhere; the
    restart's sweep must leave either the old or the new release live, whole, recorded,
    every kept file a link of its blob, and no leftovers."""
    config = write_config(tmp_path / "state")
    settings = settings_mod.load(config, environ={})
    store = Store(settings)
    store.create_project("demo", {"items": {"docs": {"type": "tgz", "keep": 2}}})
    for n in (1, 2):
        (tmp_path / f"v{n}.tgz").write_bytes(release_tgz(n))
        subprocess.run([sys.executable, "-c", PUBLISH, str(config), str(tmp_path / f"v{n}.tgz")],
                       check=True)
    (tmp_path / "v3.tgz").write_bytes(release_tgz(3))
    alias = {"rename": "rename,renameat,renameat2", "symlink": "symlink,symlinkat",
             "link": "link,linkat",
             "rmdir": "rmdir,unlinkat", "fsync": "fsync,fdatasync,syncfs"}[syscall]
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={alias}",
         "-e", f"inject={alias}:signal=SIGKILL:when={when}",
         sys.executable, "-c", PUBLISH, str(config), str(tmp_path / "v3.tgz")],
        capture_output=True)
    assert proc.returncode == -signal.SIGKILL, "the publisher should have been killed"

    restarted = Store(settings)  # what every worker does when it starts
    restarted.sweep()
    live = check_whole_live_release(settings.base_path, "demo", "docs")
    assert live in (2, 3)
    state = restarted.item_view("demo", "docs").state
    assert state.live == os.path.basename(os.readlink(settings.base_path / "demo/docs"))
    assert state.live in [r.id for r in state.releases]
    assert len(state.releases) <= 2
    kept = sorted(p.name for p in (settings.base_path / "demo/.artstore/docs").iterdir()
                  if not p.name.startswith(".tmp-"))
    assert kept == sorted(r.id for r in state.releases)
    assert_no_leftovers(settings)
    check_store(settings.state_dir)
