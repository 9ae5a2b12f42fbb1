"""The filesystem primitives: claims protect work in progress from a concurrent sweep."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from artstore import storage


def test_a_sweep_leaves_claimed_temp_entries_and_removes_abandoned_ones(tmp_path: Path) -> None:
    fd, path = storage.claimed_file(tmp_path, storage.TMP_PREFIX + "upload-")
    stage, dir_fd = storage.claimed_dir(tmp_path, storage.TMP_PREFIX + "stage-")
    (stage / "file").write_text("x")
    storage.sweep_temp_entries(tmp_path)
    assert os.path.exists(path) and stage.is_dir()
    os.close(fd)
    os.close(dir_fd)
    storage.sweep_temp_entries(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_never_breaks_an_atomic_write_in_progress(tmp_path: Path) -> None:
    """Workers sweep when they start while others write: no write may lose its temp file."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            storage.sweep_temp_entries(tmp_path)

    def write() -> None:
        try:
            for i in range(400):
                storage.write_json(tmp_path / "state.json", {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    writers = [threading.Thread(target=write) for _ in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    sweeper.join()
    assert errors == []
    assert json.loads((tmp_path / "state.json").read_text()) == {"i": 399}


def test_atomic_write_sets_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    storage.atomic_write(tmp_path / "secret", b"s", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_a_failing_start_up_sweep_does_not_stop_the_worker(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    """gunicorn stops the whole service when a worker fails to boot."""
    from artstore import settings as settings_mod
    from artstore.api import create_app
    from artstore.store import Store

    from .conftest import ADMIN, write_config

    def broken(self: Store) -> None:
        raise FileNotFoundError("a directory vanished under the sweep")

    monkeypatch.setattr(Store, "sweep", broken)
    app = create_app(settings_mod.load(write_config(tmp_path / "s"), environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    assert app.test_client().get("/_health").status_code == 200


def stream(path: Path, data: bytes, piece_sizes: list[int]) -> str:
    """Write ``data`` through a StreamWriter in pieces of the given sizes, from one buffer
    that is overwritten after every piece (as the socket reader does); returns the hash.

    The digest checks that no block changes while it is being hashed (a buffer handed on
    too early would), taking its time so that a missing wait would show.
    """
    digest = hashlib.sha256()

    def slow_digest(block: memoryview) -> None:
        before = bytes(block)
        time.sleep(0.002)
        assert bytes(block) == before, "a block was overwritten while it was hashed"
        digest.update(before)

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    writer = storage.StreamWriter(fd, slow_digest)
    try:
        buffer = bytearray(max(piece_sizes))
        at = 0
        for size in itertools.cycle(piece_sizes):
            if at >= len(data):
                break
            piece = data[at:at + size]
            buffer[:len(piece)] = piece
            writer.write(memoryview(buffer)[:len(piece)])
            buffer[:len(piece)] = bytes(len(piece))  # reused at once
            at += len(piece)
        writer.finish()
    finally:
        writer.close()
        os.close(fd)
    return digest.hexdigest()


def direct_io_works(folder: Path) -> bool:
    """Whether O_DIRECT writes bypass the page cache in ``folder`` (not on tmpfs, which
    takes the flag and keeps the data in memory all the same)."""
    probe = folder / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        direct = storage.set_direct_io(fd, True)
    finally:
        os.close(fd)
        probe.unlink()
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(folder)], capture_output=True,
                          text=True).stdout.strip()
    return direct and kind != "tmpfs"


BLOCK = storage.BLOCK


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 4 * BLOCK,
                                  9 * BLOCK + 12345])
def test_a_stream_is_stored_and_hashed_exactly_whatever_its_size(tmp_path: Path,
                                                                 size: int) -> None:
    data = os.urandom(size)
    digest = stream(tmp_path / "f", data, [1, 4095, 65536, 1000003, 3 * BLOCK])
    assert (tmp_path / "f").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_a_big_stream_goes_straight_to_the_disk_not_through_the_page_cache(
        tmp_path: Path) -> None:
    """What makes big uploads fast here: no copy into (first-touched) page-cache memory,
    and nothing left for the sync before the commit to write."""
    if not direct_io_works(tmp_path) or not shutil.which("fincore"):
        pytest.skip("needs a disk filesystem with O_DIRECT and util-linux's fincore")
    data = os.urandom(8 * BLOCK + 100)
    stream(tmp_path / "f", data, [BLOCK])
    resident = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                               str(tmp_path / "f")], capture_output=True, text=True, check=True)
    assert int(resident.stdout) <= os.sysconf("SC_PAGE_SIZE")  # the last, partial block
    assert (tmp_path / "f").read_bytes() == data


def test_where_direct_io_is_refused_the_stream_goes_through_the_page_cache(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A filesystem that takes O_DIRECT but refuses the writes (a double: every local
    filesystem here accepts them)."""
    if not direct_io_works(tmp_path):
        pytest.skip("needs a filesystem that takes O_DIRECT")
    real_pwrite = os.pwrite
    refused = []

    def refuse_direct(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & storage.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_direct)
    data = os.urandom(3 * BLOCK + 7)
    digest = stream(tmp_path / "f", data, [65536])
    assert refused == [0]  # refused once, then through the page cache
    assert (tmp_path / "f").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_removing_a_tree_that_another_worker_removes_meanwhile_is_not_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A project delete racing a sweep that removes the same folder (seen as a 500)."""
    folder = tmp_path / "demo"
    (folder / "sub").mkdir(parents=True)
    real_rename, done = os.rename, []

    def swept_first(src: Any, dst: Any) -> None:
        shutil.rmtree(src)  # the other worker wins the race
        real_rename(src, dst)

    monkeypatch.setattr(storage.os, "rename", swept_first)
    storage.remove_tree(folder, then=lambda: done.append(True))
    assert not folder.exists() and done == [True]
